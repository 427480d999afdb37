"""Token exchange (RFC 8693) on the client: where the subject token comes from, whom it names,
and what the exchange request carries.

A job proves who it is with a short-lived token it already has, and exchanges it at the
identity provider for an API token, with client authentication as for M2M. The subject
token is read from its source *every time* an exchange is needed, never kept:

- ``QLAM_SUBJECT_TOKEN_FILE``: a file (Kubernetes' projected service-account token, which
  the kubelet rewrites before it expires; a file a site script refreshes);
- ``QLAM_SUBJECT_TOKEN_COMMAND``: the standard output of a site command, split with
  ``shlex`` and run without a shell, within ``COMMAND_TIMEOUT`` seconds;
- GitHub Actions: ``GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD`` with
  ``$ACTIONS_ID_TOKEN_REQUEST_TOKEN`` (the job needs ``permissions: id-token: write``);
- GitLab CI: the variable ``id_tokens:`` fills (``QLAM_SUBJECT_TOKEN_VARIABLE``, default
  ``QLAM_ID_TOKEN`` when ``GITLAB_CI`` is set).

The subject's ``iss`` and ``sub`` (read from its claims, which the identity provider
verifies) are part of the cache identity: two subjects never share a token, and every
process of one subject shares one. A subject token never goes into argv, a log, the store
or a message: messages name its source only. Imported when the flow is in use, and by
``_qsh`` (QLAM Shell's config names sources too), never on the warm path of M2M.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple

from ._errors import ConfigurationError, SubjectTokenError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping
    from typing import Any, NamedTuple

    from ._secrets import Secret
    from ._settings import Settings
    from ._tokens import Token

    class _SourceFields(NamedTuple):
        kind: str  # file | command | github | variable
        where: str  # the path, the command line, the request URL, the variable's name
        audience: str | None = None  # GitHub's audience parameter

else:
    _SourceFields = namedtuple("_SourceFields", "kind where audience", defaults=(None,))

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "COMMAND_TIMEOUT",
    "DEFAULT_SUBJECT_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT",
    "SubjectSource",
    "SubjectToken",
    "exchange_form",
    "fetch_exchanged_token",
    "read_subject",
    "source_from_env",
    "subject_principal",
]

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
DEFAULT_SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def is_token_type(value: str) -> bool:
    """Whether ``value`` can be a ``subject_token_type``: a URI (``urn:...``, ``https://...``)."""
    return ":" in value and not any(c.isspace() for c in value)


ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
#: Seconds a QLAM_SUBJECT_TOKEN_COMMAND may take.
COMMAND_TIMEOUT = 30.0
#: The largest subject token read: JWTs are a few kilobytes.
MAX_SUBJECT_BYTES = 64 * 1024
GITLAB_DEFAULT_VARIABLE = "QLAM_ID_TOKEN"
_GITHUB_URL = "ACTIONS_ID_TOKEN_REQUEST_URL"
_GITHUB_TOKEN = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"


class SubjectSource(_SourceFields):
    """Where the subject token is read from; holds no secret (GitHub's request token is read
    from the environment at each use)."""

    __slots__ = ()

    def describe(self) -> str:
        """The source, as messages name it (never the token, never a command's arguments)."""
        if self.kind == "file":
            return f"QLAM_SUBJECT_TOKEN_FILE {self.where}"
        if self.kind == "command":
            program = self.where.split()[0] if self.where.split() else self.where
            return f"QLAM_SUBJECT_TOKEN_COMMAND ({program})"
        if self.kind == "github":
            return "GitHub Actions' ID token (ACTIONS_ID_TOKEN_REQUEST_URL)"
        return f"the CI variable {self.where} (GitLab id_tokens)"


class SubjectToken:
    """A subject token just read, with its unverified claims; its repr shows no token."""

    __slots__ = ("value", "claims", "source")

    def __init__(self, value: Secret, claims: dict[str, Any], source: SubjectSource) -> None:
        self.value, self.claims, self.source = value, claims, source

    @property
    def issuer(self) -> str:
        return str(self.claims["iss"])

    @property
    def subject(self) -> str:
        return str(self.claims["sub"])

    @property
    def principal(self) -> str:
        """The cache identity's principal: ``exchange:<iss>|<sub>``."""
        return f"exchange:{self.issuer}|{self.subject}"

    def __repr__(self) -> str:
        return f"SubjectToken(iss={self.issuer!r}, sub={self.subject!r}, source={self.source.describe()!r})"


# The variables that name the subject token's source, and the kind of source each names.
SOURCE_VARIABLES = (
    ("QLAM_SUBJECT_TOKEN_FILE", "file"),
    ("QLAM_SUBJECT_TOKEN_COMMAND", "command"),
    ("QLAM_SUBJECT_TOKEN_VARIABLE", "variable"),
)


def source_from_env(env: Mapping[str, str], default_audience: str) -> SubjectSource:
    """The subject token's source: the one ``QLAM_SUBJECT_TOKEN_*`` variable set, else GitHub
    Actions or GitLab CI from their documented variables. ``ConfigurationError`` otherwise."""
    explicit = [
        SubjectSource(kind, os.path.expanduser(env[name]) if kind == "file" else env[name])
        for name, kind in SOURCE_VARIABLES
        if (env.get(name) or "").strip()
    ]
    if len(explicit) > 1:
        raise ConfigurationError(
            "set one of QLAM_SUBJECT_TOKEN_FILE, QLAM_SUBJECT_TOKEN_COMMAND and QLAM_SUBJECT_TOKEN_VARIABLE, "
            "not several"
        )
    if explicit:
        source = explicit[0]
        if source.kind == "command":
            import shlex

            try:
                argv = shlex.split(source.where)
            except ValueError as exc:
                raise ConfigurationError(f"QLAM_SUBJECT_TOKEN_COMMAND cannot be split into words: {exc}") from None
            if not argv:
                raise ConfigurationError("QLAM_SUBJECT_TOKEN_COMMAND names no command")
        return source
    if env.get(_GITHUB_URL) and env.get(_GITHUB_TOKEN):
        audience = (env.get("QLAM_SUBJECT_TOKEN_AUDIENCE") or "").strip() or default_audience
        return SubjectSource("github", env[_GITHUB_URL], audience)
    if (env.get("GITLAB_CI") or "").strip():
        return SubjectSource("variable", GITLAB_DEFAULT_VARIABLE)
    hint = " (in GitHub Actions the job needs permissions: id-token: write)" if env.get("GITHUB_ACTIONS") else ""
    raise ConfigurationError(
        "QLAM_AUTH_FLOW=token-exchange needs a subject token: set QLAM_SUBJECT_TOKEN_FILE, "
        f"QLAM_SUBJECT_TOKEN_COMMAND or QLAM_SUBJECT_TOKEN_VARIABLE, or run in GitHub Actions or GitLab CI{hint}"
    )


def read_subject(source: SubjectSource, *, timeout: float = COMMAND_TIMEOUT, now: float | None = None) -> SubjectToken:
    """The subject token, read from its source now, as a JWT that names ``iss`` and ``sub``
    and has not expired. ``SubjectTokenError`` (one line, naming the source) otherwise."""
    from ._secrets import Secret
    from ._tokens import unverified_claims

    where = source.describe()
    if source.kind == "file":
        raw = _read_file(source.where, where)
    elif source.kind == "command":
        raw = _run_command(source.where, where, timeout)
    elif source.kind == "github":
        raw = _ask_github(source, where, timeout)
    else:
        raw = os.environ.get(source.where, "")
        if not raw.strip():
            hint = " (GitLab CI sets it from the job's id_tokens:)" if os.environ.get("GITLAB_CI") else ""
            raise SubjectTokenError(f"{where} is not set or empty{hint}")
    token = raw.strip()
    if not token:
        raise SubjectTokenError(f"{where} gave an empty subject token")
    claims = unverified_claims(token)
    if claims is None:
        raise SubjectTokenError(f"{where} does not hold a JWT")
    for name in ("iss", "sub"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise SubjectTokenError(f"the subject token from {where} has no {name} claim")
    exp = claims.get("exp")
    moment = time.time() if now is None else now
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp <= moment:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
        raise SubjectTokenError(f"the subject token from {where} expired at {when}")
    return SubjectToken(Secret(token, where), claims, source)


def _read_file(path: str, where: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SUBJECT_BYTES + 1)
    except FileNotFoundError:
        raise SubjectTokenError(f"{where}: no such file") from None
    except OSError as exc:
        raise SubjectTokenError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    return _text(data, where)


def _text(data: bytes, where: str) -> str:
    if len(data) > MAX_SUBJECT_BYTES:
        raise SubjectTokenError(f"{where} gave more than {MAX_SUBJECT_BYTES // 1024} KiB: not a subject token")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise SubjectTokenError(f"{where} gave something other than a JWT (not ASCII)") from None


def _run_command(command: str, where: str, timeout: float) -> str:
    """The command's standard output; its standard error goes to ours (the site's messages)."""
    import shlex
    import subprocess

    argv = shlex.split(command)
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SubjectTokenError(f"{where}: no such command") from None
    except subprocess.TimeoutExpired:
        raise SubjectTokenError(f"{where} did not finish within {timeout:g}s") from None
    except OSError as exc:
        raise SubjectTokenError(f"{where} cannot be run ({exc.strerror or exc})") from None
    if done.returncode != 0:
        raise SubjectTokenError(f"{where} failed with exit status {done.returncode}")
    return _text(done.stdout, where)


def _ask_github(source: SubjectSource, where: str, timeout: float) -> str:
    """GitHub's documented request: the URL plus ``&audience=``, the request token as a bearer."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    request_token = os.environ.get(_GITHUB_TOKEN, "")
    url = source.where
    if source.audience:
        url += ("&" if "?" in url else "?") + "audience=" + urllib.parse.quote(source.audience, safe="")
    request = urllib.request.Request(
        url, headers={"Authorization": f"bearer {request_token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read(MAX_SUBJECT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise SubjectTokenError(
            f"{where}: the runner answered HTTP {exc.code} (does the job have permissions: id-token: write?)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SubjectTokenError(f"{where}: the runner cannot be reached ({reason})") from None
    try:
        value = json.loads(_text(body, where)).get("value")
    except (ValueError, AttributeError):
        value = None
    if not isinstance(value, str):
        raise SubjectTokenError(f"{where}: the runner's answer holds no token")
    return value


# The principal each source named in this process: Identity.of is called more than once per
# process (the store's owner, the provider), and a GitHub source costs a request each time.
_principals: dict[SubjectSource, str] = {}


def subject_principal(settings: Settings) -> str:
    """``exchange:<iss>|<sub>`` of the subject token the settings name, read once per process."""
    source = settings.subject_source
    if source is None:
        raise ConfigurationError("QLAM_AUTH_FLOW=token-exchange needs a subject token source")
    found = _principals.get(source)
    if found is None:
        found = _principals[source] = read_subject(source, timeout=settings.http_timeout).principal
    return found


def exchange_form(settings: Settings, subject: SubjectToken, actor: str | None = None) -> dict[str, str]:
    """What an exchange request adds to a client-authenticated token request (RFC 8693 section 2.1).

    The audience and scope are the settings', as for M2M; the actor token, if any, is
    described with the subject token's type."""
    token_type = settings.subject_token_type or DEFAULT_SUBJECT_TOKEN_TYPE
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": subject.value.reveal(),
        "subject_token_type": token_type,
    }
    if actor:
        form["actor_token"] = actor
        form["actor_token_type"] = token_type
    return form


def read_actor(settings: Settings) -> str | None:
    """QLAM_ACTOR_TOKEN_FILE's token, read now, or None when unset."""
    if not settings.actor_token_file:
        return None
    where = f"QLAM_ACTOR_TOKEN_FILE {settings.actor_token_file}"
    token = _read_file(settings.actor_token_file, where).strip()
    if not token:
        raise SubjectTokenError(f"{where} is empty")
    return token


def fetch_exchanged_token(
    settings: Settings,
    *,
    obtained_by: str | None = None,
    clock: Callable[[], float] = time.time,
    expected_principal: str | None = None,
    **http: Any,
) -> Token:
    """One exchange: the subject (and actor) token read from their sources now, sent with the
    client's authentication to the token endpoint; the access token it answers.

    ``expected_principal`` is the cache identity's: a source that now names another subject
    is refused, so a token is never published under another subject's entry."""
    if settings.subject_source is None:
        raise ConfigurationError("QLAM_AUTH_FLOW=token-exchange needs a subject token source")
    subject = read_subject(settings.subject_source, timeout=settings.http_timeout, now=clock())
    if expected_principal is not None and subject.principal != expected_principal:
        raise SubjectTokenError(
            f"{subject.source.describe()} now names another subject than when this process started "
            f"({subject.subject} of {subject.issuer}); start it again"
        )
    from ._http import fetch_token

    form = exchange_form(settings, subject, read_actor(settings))
    return fetch_token(settings, obtained_by=obtained_by, clock=clock, grant=form, **http)
