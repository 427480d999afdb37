"""QLAM Shell compatibility: the client of a context in ``~/.qsh/config.json``.

Users of QuEra's own tools already describe their clients there::

    {
        "current_context": "production",
        "contexts": [
            {
                "name": "production",
                "defaults": {"api_base_url": "...", "auth_provider": "m2m"},
                "auth_providers": [
                    {
                        "name": "m2m",
                        "provider": "oauth",
                        "grant_type": "client_credentials",
                        "auth_base_url": "...",
                        "client_id": "...",
                        "client_secret": "env:QLAM_CLIENT_SECRET",
                        "audience": "...",
                    }
                ],
            }
        ],
    }

The file is ``$QSH_CONFIG``, else ``$QSH_CONFIG_DIR/config.json``, else
``~/.qsh/config.json``. The context is the one asked for (``--context``,
``QLAM_CONTEXT``), else ``current_context``; its provider is the context's default
``auth_provider`` when that one uses ``client_credentials`` or ``token_exchange``, else
the first ``client_credentials`` provider; a context without one gives its
``device_code`` provider, else its ``token_exchange`` one (``QLAM_AUTH_FLOW=device`` or
``token-exchange`` asks for that kind in any context). A ``device_code`` provider
selects user context (``auth_flow = "device"``), and its ``tenant`` goes into the
login's scope as ``organization:<tenant>``, as QuEra's tools do. A ``token_exchange``
provider selects token exchange (``auth_flow = "token-exchange"``, RFC 8693).
``Settings.from_env`` reads the file only when asked for a context or when the
environment does not name the client, and lets every environment variable win.

``client_secret`` may be a literal, ``env:NAME`` as QuEra's tools write it, or any
other secret reference of ``_secrets.py``; ``private_key`` and ``key_id`` are
qlam-hpc's own additions, for ``private_key_jwt`` clients. A literal secret is
refused when the file is readable by group or others.

A ``token_exchange`` provider authenticates its client as an M2M one does, and names
where the subject token is read at each exchange: QuEra's ``subject_token``
(``env:NAME``, a variable the job sets), or qlam-hpc's own ``subject_token_file`` or
``subject_token_command`` (a list of words, or a string split as a shell would, run
without one), as ``QLAM_SUBJECT_TOKEN_VARIABLE``, ``_FILE`` and ``_COMMAND`` do; one of
them at most. ``subject_token_type`` (a URI) and qlam-hpc's ``actor_token_file`` are as
``QLAM_SUBJECT_TOKEN_TYPE`` and ``QLAM_ACTOR_TOKEN_FILE``. QuEra's tools refuse keys
they do not know: a file they also read should name the subject token with
``subject_token`` and leave qlam-hpc's keys to the environment.

The file says where the secret goes (``auth_base_url``), so it is trusted as a secret
file is (``_secrets.check_trusted_file``): refused when someone other than its reader or
root owns it or could write it or the directories above it. A file of the wrong shape
(``"contexts": 5``) is a ``ConfigurationError`` naming the file and the key.
"""

from __future__ import annotations

import os
from collections import namedtuple

from ._errors import ConfigurationError
from ._exchange import SubjectSource, is_token_type

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import Any, NamedTuple

    from ._secrets import Secret, SecretSource

    # The fields as the type checker reads them; the namedtuples below are what runs.
    # What a context says for the tasks plugin (qlam-hpc's part of QLAM Shell): ``defaults``,
    # overridden by ``plugins.tasks``, as QuEra's tools read them.
    class _QshContextFields(NamedTuple):
        path: str
        context: str
        auth_provider: str | None
        api_base_url: str | None
        qpu_mode: str | None
        group: str | None
        timeout: float | None
        verify_ssl: str | None  # a CA bundle's path; None for true or absent

    class _QshClientFields(NamedTuple):
        path: str
        context: str
        provider: str
        auth_base_url: str | None
        client_id: str | None
        client_secret: str | None  # a literal or a secret reference (env:NAME, ...)
        private_key: str | None
        key_id: str | None
        audience: str | None
        scope: str | None
        api_base_url: str | None
        mode: int
        grant_type: str = "client_credentials"
        tenant: str | None = None
        timeout: float | None = None
        verify_ssl: str | None = None
        # token_exchange: one source of the subject token at most (a command line as shlex.join
        # writes it), its type, and an actor token's file
        subject_token_variable: str | None = None
        subject_token_file: str | None = None
        subject_token_command: str | None = None
        subject_token_type: str | None = None
        actor_token_file: str | None = None

else:
    _QshContextFields = namedtuple(
        "_QshContextFields", "path context auth_provider api_base_url qpu_mode group timeout verify_ssl"
    )
    _QshClientFields = namedtuple(
        "_QshClientFields",
        "path context provider auth_base_url client_id client_secret private_key key_id audience scope api_base_url "
        "mode grant_type tenant timeout verify_ssl subject_token_variable subject_token_file subject_token_command "
        "subject_token_type actor_token_file",
        defaults=("client_credentials", None, None, None, None, None, None, None, None),
    )

# The grant types qlam-hpc can serve, and the flow (Settings.auth_flow) each stands for; in
# this order when the context names none of them (M2M first, then a user's login).
_FLOWS = {"client_credentials": "client_credentials", "device_code": "device", "token_exchange": "token-exchange"}


class QshSubjectSource(SubjectSource):
    """A subject token source the config file names: messages say the file's key, not a variable
    the user never set."""

    __slots__ = ()

    def describe(self) -> str:
        if self.kind == "file":
            return f"subject_token_file {self.where} (QLAM Shell config)"
        if self.kind == "command":
            import shlex

            return f"subject_token_command ({shlex.split(self.where)[0]}) (QLAM Shell config)"
        return f"subject_token env:{self.where} (QLAM Shell config)"


class QshContext(_QshContextFields):
    """A context's settings for the tasks plugin (``None`` when absent): its auth provider's
    name, the API's base URL, the ``qpu_mode``, the default ``group``, the HTTP timeout
    (``http_client.request_timeout_seconds``) and ``http_client.verify_ssl`` (a CA bundle's
    path, or True)."""

    __slots__ = ()

    @property
    def origin(self) -> str:
        return f"QLAM Shell context {self.context!r} in {self.path}"


class QshClient(_QshClientFields):
    """The pieces of one context's auth provider (``None`` when absent); ``mode`` is the
    config file's permission bits; ``tenant`` is the device login's organization."""

    __slots__ = ()

    @property
    def flow(self) -> str:
        return _FLOWS[self.grant_type]

    @property
    def origin(self) -> str:
        return f"QLAM Shell context {self.context!r} in {self.path}"

    def subject_source(self) -> SubjectSource | None:
        """Where the subject token is read (``None``: the file names no source). No I/O."""
        if self.subject_token_file:
            return QshSubjectSource("file", os.path.expanduser(self.subject_token_file))
        if self.subject_token_command:
            return QshSubjectSource("command", self.subject_token_command)
        if self.subject_token_variable:
            return QshSubjectSource("variable", self.subject_token_variable)
        return None

    def credentials(self, env: Mapping[str, str]) -> tuple[Secret | SecretSource | None, Secret | SecretSource | None]:
        """``(secret, private_key)`` sources for this client, each possibly ``None``. No I/O."""
        from ._secrets import SECRET_REFERENCE_PREFIXES, secret_source

        sources: list[Secret | SecretSource | None] = []
        for name in ("client_secret", "private_key"):
            value = getattr(self, name)
            if not value:
                sources.append(None)
                continue
            if not value.startswith(SECRET_REFERENCE_PREFIXES) and self.mode & 0o044:
                raise ConfigurationError(
                    f"{self.path} holds a literal {name} and is readable by group or others "
                    f"(mode {self.mode & 0o777:04o}): chmod 600 {self.path}, or write {name} as env:NAME"
                )
            sources.append(secret_source(value, f"{name} of {self.origin}", env))
        return sources[0], sources[1]


def config_path(env: Mapping[str, str]) -> str:
    explicit = env.get("QSH_CONFIG")
    if explicit:
        return os.path.expanduser(explicit)
    home = env.get("HOME") or os.path.expanduser("~")
    directory = env.get("QSH_CONFIG_DIR") or os.path.join(home, ".qsh")
    return os.path.join(os.path.expanduser(directory), "config.json")


def load_client(env: Mapping[str, str], context: str | None = None, flow: str | None = None) -> QshClient | None:
    """The client of ``context`` (else the current one) for ``flow`` (else the context's
    default provider's); ``None`` when there is no config file and no context was asked
    for. ``ConfigurationError`` names whatever is missing."""
    found = _read(env, context)
    return select_client(found[0], found[1], context, found[2], flow) if found is not None else None


def load_context(env: Mapping[str, str], context: str | None = None) -> QshContext | None:
    """What ``context`` (else the current one) says for the tasks plugin; ``None`` when there
    is no config file and no context was asked for."""
    found = _read(env, context)
    return select_context(found[0], found[1], context, found[2]) if found is not None else None


#: The largest config file read: QuEra's tools write a few KiB; a larger one is not a config.
CONFIG_LIMIT = 1024 * 1024


def _too_large(path: str) -> str:
    return f"the QLAM Shell config {path} is larger than {CONFIG_LIMIT // 1024 // 1024} MiB: not a config file"


def _read(env: Mapping[str, str], context: str | None) -> tuple[Any, str, int] | None:
    """``(parsed JSON, path, mode)`` of the config file, or None when there is none (and no
    context was asked for)."""
    path = config_path(env)
    try:
        # Non-blocking: opening a FIFO (or a device) put where the file should be would
        # otherwise wait for a writer for ever. Only a regular file is read, and at most
        # CONFIG_LIMIT bytes of it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb") as file:
            info = os.fstat(file.fileno())
            mode = info.st_mode
            from ._secrets import check_trusted_file

            check_trusted_file(path, info, "QLAM Shell config", private=False)
            if info.st_size > CONFIG_LIMIT:
                raise ConfigurationError(_too_large(path))
            raw = file.read(CONFIG_LIMIT + 1)
    except FileNotFoundError:
        if context:
            raise ConfigurationError(
                f"context {context!r} was asked for, but there is no QLAM Shell config at {path} "
                "(QSH_CONFIG or QSH_CONFIG_DIR say where it is)"
            ) from None
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read the QLAM Shell config {path} ({exc.strerror})") from None
    if len(raw) > CONFIG_LIMIT:  # it grew after the fstat
        raise ConfigurationError(_too_large(path))
    import json

    from ._jsonlimits import JsonLimitError, parse_json

    try:
        data = parse_json(raw, max_bytes=CONFIG_LIMIT)
    except UnicodeDecodeError:
        raise ConfigurationError(f"the QLAM Shell config {path} is not UTF-8 text") from None
    except JsonLimitError as exc:
        raise ConfigurationError(f"the QLAM Shell config {path} is {exc}: not a config file") from None
    except ValueError as exc:
        # JSONDecodeError's msg and position, never its document: the file may hold a secret.
        where = f" ({exc.msg}, line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigurationError(f"the QLAM Shell config {path} is not valid JSON{where}") from None
    return data, path, mode


def select_context(data: Any, path: str, context: str | None, mode: int = 0o600) -> QshContext:
    """The context asked for (else the current one) and what it says for the tasks plugin. Pure."""
    return _tasks_settings(path, *_chosen(data, path, context))


def _tasks_settings(path: str, chosen: dict[str, Any], context: str, where: str) -> QshContext:
    defaults = _object(chosen, "defaults", where)
    plugins = _object(chosen, "plugins", where)
    tasks = _object(plugins, "tasks", f"the plugins of {where}")

    def pick(key: str, *sources: tuple[dict[str, Any], str]) -> str | None:
        for source, name in sources:
            value = _string(source, key, name)
            if value:
                return value
        return None

    overrides = ((tasks, f"plugins.tasks of {where}"), (defaults, f"the defaults of {where}"))
    http_client = _object(defaults, "http_client", f"the defaults of {where}")
    timeouts = _object(defaults, "timeouts", f"the defaults of {where}")
    timeout = http_client.get("request_timeout_seconds", timeouts.get("request_seconds"))
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0.1 <= timeout <= 300
    ):
        raise ConfigurationError(f"request_timeout_seconds of {where} must be a number of seconds from 0.1 to 300")
    verify = http_client.get("verify_ssl")
    if verify is False or (isinstance(verify, str) and verify.strip().lower() in ("false", "0", "no")):
        # Turning verification off would send the secret and the tokens to whoever answers.
        raise ConfigurationError(
            f"http_client.verify_ssl of {where} turns certificate checks off, which qlam-hpc does not do: "
            "give it the path of your site's CA bundle instead (or set SSL_CERT_FILE)"
        )
    if verify is not None and not isinstance(verify, (bool, str)):
        raise ConfigurationError(f"http_client.verify_ssl of {where} must be true, false or a CA bundle's path")
    return QshContext(
        path=path,
        context=context,
        auth_provider=pick("auth_provider", *overrides),
        api_base_url=pick("api_base_url", *overrides),
        qpu_mode=pick("qpu_mode", *overrides),
        group=pick("group", *overrides),
        timeout=float(timeout) if timeout is not None else None,
        verify_ssl=os.path.expanduser(verify) if isinstance(verify, str) and verify.strip().lower() != "true" else None,
    )


# Auth providers QuEra's tools accept in a context that give qlam-hpc no OAuth token.
_NOT_OAUTH = {
    "token": "a static-token provider (QuEra's tools no longer use it)",
    "basic": "a username/password provider",
}


def select_client(data: Any, path: str, context: str | None, mode: int = 0o600, flow: str | None = None) -> QshClient:
    """Pick the context and its provider out of a parsed config. Pure.

    With ``flow``, the provider must serve it (``client_credentials``, ``device`` or
    ``token-exchange``). Without, M2M stays the default: the provider the context selects
    for tasks (``plugins.tasks.auth_provider``, else ``defaults.auth_provider``) if it uses
    client_credentials or token_exchange, else its first client_credentials provider; only
    a context without one selects user context (its selected device_code provider, else the
    first), and one with neither its first token_exchange provider.
    """
    chosen, context, where = _chosen(data, path, context)
    settings = _tasks_settings(path, chosen, context, where)
    providers = _objects(chosen.get("auth_providers"), "auth_providers", where)
    for p in providers:
        _string(p, "name", f"an auth provider of {where}")
    preferred = settings.auth_provider
    wanted = [g for g, f in _FLOWS.items() if flow is None or f == flow]
    usable = [p for p in providers if p.get("grant_type") in wanted]
    named = next((p for p in usable if p.get("name") == preferred), None)
    if named is not None and named.get("grant_type") == "token_exchange":
        # Taken when the context names it: M2M first is there so that a context's device login
        # never replaces a batch job's client secret, and an exchange is as unattended as M2M.
        provider: dict[str, Any] | None = named
    else:
        provider = None
        for grant in wanted:  # M2M first: a job that has a client secret keeps working as it did
            candidates = [p for p in usable if p.get("grant_type") == grant]
            provider = next((p for p in candidates if p.get("name") == preferred), None) or next(iter(candidates), None)
            if provider is not None:
                break
    if provider is None:
        selected = next((p for p in providers if p.get("name") == preferred), None)
        kind = _NOT_OAUTH.get(str(selected.get("provider"))) if selected is not None else None
        if kind is not None:
            raise ConfigurationError(
                f"the auth provider {preferred!r} that {where} selects is {kind}, which gives no OAuth token: "
                "add an oauth provider with grant_type client_credentials (M2M), device_code (a user login) "
                "or token_exchange (a subject token the job has)"
            )
        found = ", ".join(f"{p.get('name')} ({p.get('grant_type') or p.get('provider')})" for p in providers) or "none"
        grants = ", ".join(wanted[:-1]) + " or " + wanted[-1] if len(wanted) > 1 else "".join(wanted)
        raise ConfigurationError(
            f"{where} has no auth provider with grant_type {grants} (it has: {found}); qlam-hpc needs a "
            "machine-to-machine client (client_credentials), a user login (device_code) or a subject token "
            "to exchange (token_exchange)"
        )
    name = str(provider.get("name") or "?")

    def text(key: str, source: dict[str, Any] = provider) -> str | None:
        value = source.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigurationError(f"{key} of auth provider {name!r} in {where} must be a string")
        return value

    def command(key: str) -> str | None:
        """A command given as a list of words or as one string split as QLAM_SUBJECT_TOKEN_COMMAND
        is; kept as the command line shlex.join writes, which the exchange splits back into the
        same words."""
        import shlex

        value = provider.get(key)
        if value is None or value == "" or value == []:
            return None
        if isinstance(value, list) and all(isinstance(word, str) for word in value):
            words = value
        elif isinstance(value, str):
            try:
                words = shlex.split(value)
            except ValueError as exc:  # shlex's reason ("No closing quotation"), never the command
                raise ConfigurationError(
                    f"{key} of auth provider {name!r} in {where} cannot be split into words: {exc}"
                ) from None
        else:
            raise ConfigurationError(
                f"{key} of auth provider {name!r} in {where} must be a list of strings or a command line, "
                f"not {_kind(value)}"
            )
        if not words or not words[0]:
            raise ConfigurationError(f"{key} of auth provider {name!r} in {where} names no command")
        return shlex.join(words)

    subject = text("subject_token")
    # A variable's name, checked before it can appear in a message: anything else may be a
    # token pasted after env:.
    name_after = subject[4:] if subject is not None and subject.startswith("env:") else ""
    if subject is not None and not (name_after.isascii() and name_after.isidentifier()):
        # Never shown: it may be a token pasted into the file.
        raise ConfigurationError(
            f"subject_token of auth provider {name!r} in {where} must be env:VARIABLE_NAME "
            "(the variable the job puts its subject token in)"
        )
    subject_file, subject_command = text("subject_token_file"), command("subject_token_command")
    sources = [
        key
        for key, value in (
            ("subject_token", subject),
            ("subject_token_file", subject_file),
            ("subject_token_command", subject_command),
        )
        if value
    ]
    if len(sources) > 1:
        raise ConfigurationError(f"auth provider {name!r} in {where} names {' and '.join(sources)}: keep one")
    token_type = text("subject_token_type")
    if token_type is not None and not is_token_type(token_type):
        raise ConfigurationError(
            f"subject_token_type of auth provider {name!r} in {where} must be a URI such as urn:example:ci-jwt"
        )

    scope = provider.get("scope", provider.get("scopes"))
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        scope = " ".join(scope)
    elif scope is not None and not isinstance(scope, str):
        raise ConfigurationError(f"scope of auth provider {name!r} in {where} must be a string or a list of strings")
    return QshClient(
        path=path,
        context=context,
        provider=name,
        auth_base_url=text("auth_base_url"),
        client_id=text("client_id"),
        client_secret=text("client_secret"),
        private_key=text("private_key"),
        key_id=text("key_id"),
        audience=text("audience"),
        scope=scope or None,
        api_base_url=settings.api_base_url,
        mode=mode,
        grant_type=provider["grant_type"],
        tenant=text("tenant"),
        timeout=settings.timeout,
        verify_ssl=settings.verify_ssl,
        subject_token_variable=name_after or None,
        subject_token_file=subject_file,
        subject_token_command=subject_command,
        subject_token_type=token_type,
        actor_token_file=text("actor_token_file"),
    )


def _chosen(data: Any, path: str, context: str | None) -> tuple[dict[str, Any], str, str]:
    """``(the context's object, its name, "context 'x' of <path>")``: the one asked for, else the current one."""
    if not isinstance(data, dict):
        raise ConfigurationError(f"the QLAM Shell config {path} is not a JSON object")
    contexts = _objects(data.get("contexts"), "contexts", f"the QLAM Shell config {path}")
    for c in contexts:
        _string(c, "name", f"a context in the QLAM Shell config {path}")
    names = ", ".join(str(c.get("name")) for c in contexts) or "none"
    if not context:
        context = data.get("current_context")
        if not isinstance(context, str) or not context:
            raise ConfigurationError(
                f"the QLAM Shell config {path} has no current_context: name one with --context or QLAM_CONTEXT "
                f"(contexts: {names})"
            )
    chosen = next((c for c in contexts if c.get("name") == context), None)
    if chosen is None:
        raise ConfigurationError(f"there is no context {context!r} in the QLAM Shell config {path} (contexts: {names})")
    return chosen, context, f"context {context!r} of {path}"


def _object(source: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """The JSON object under ``key`` (absent or null: an empty one)."""
    value = source.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigurationError(f"{key} of {where} must be a JSON object, not {_kind(value)}")
    return value


def _objects(value: Any, key: str, where: str) -> list[dict[str, Any]]:
    """The JSON objects of the list ``key`` (absent: none); other entries are skipped, as
    QuEra's tools skip them; anything but a list is an error naming the key."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigurationError(f"{key} in {where} must be a list of objects, not {_kind(value)}")
    return [item for item in value if isinstance(item, dict)]


def _string(source: dict[str, Any], key: str, where: str) -> str | None:
    value = source.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"{key} of {where} must be a string, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    """The JSON type of ``value``, for messages (never the value: the file may hold a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"
