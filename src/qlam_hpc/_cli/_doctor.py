"""``qlam-hpc doctor``: is this machine set up to get tokens? One line per check.

It says where each setting came from (never a value), reads the secret or key from
its source (never showing it), asks the identity provider and the QLAM API whether
they answer, looks at the cache directory (owner, mode, filesystem, whether locks
work there) and compares the clock with the identity provider's ``Date`` header.
It never asks for a token, so it costs no quota (``qlam-hpc auth check`` does that).

Each line is ``verdict  check  detail``; the verdicts are ``ok``, ``warn`` (works,
but worth knowing), ``FAIL`` and ``skip`` (could not be checked because of an
earlier failure). The exit code is that of the first failed check: 3 for
settings, secrets and the clock, 15 for a secret store, 5 for the identity
provider, 14 for the QLAM API, 18 for a TLS failure with either, 8 for the cache
(15 for a token store in Vault);
0 when nothing failed. Its connections trust what the token fetch and the tasks
client trust (``_tls``: SSL_CERT_FILE, SSL_CERT_DIR, REQUESTS_CA_BUNDLE).

Reading a secret proves it is there, not that the identity provider accepts it: the
last line says so when nothing failed, and names ``qlam-hpc auth check``, which
verifies it at the cost of one token request.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections import namedtuple
from collections.abc import Mapping

import click

from .._errors import ConfigurationError, QlamError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import Any

    import httpx

__all__ = ["doctor", "diagnose", "Check"]

# Clock skew: shared-cache expiry is compared across nodes' clocks, and a client
# assertion lives 60 s, so a few seconds are fine and a minute is not.
SKEW_OK = 10.0
SKEW_FAIL = 60.0


class Check(namedtuple("_CheckFields", "verdict name detail code", defaults=(0,))):
    """One line of the report; ``code`` is the exit code a FAIL stands for."""

    __slots__ = ()

    def line(self) -> str:
        return f"{self.verdict:<5} {self.name:<19} {self.detail}"


@click.command()
@click.pass_obj
def doctor(config) -> None:  # type: ignore[no-untyped-def]
    """Check the set-up: settings' sources, secrets, identity provider, API, cache, clock.

    Never prints a secret, a key or a token, and makes no token request (no quota
    is used). Exits non-zero, with the code of the first failed check, when
    something is wrong.
    """
    checks = diagnose(os.environ, config.overrides)
    for check in checks:
        click.echo(check.line())
    failed = [c for c in checks if c.verdict == "FAIL"]
    warned = sum(c.verdict == "warn" for c in checks)
    if failed:
        click.echo(f"doctor: {len(failed)} problem{'s' * (len(failed) > 1)} found; the first is {failed[0].name}")
        click.get_current_context().exit(failed[0].code)
    noted = f" ({warned} warning{'s' * (warned > 1)})" if warned else ""
    click.echo(f"doctor: no problems found{noted}; {NOT_VERIFIED}")


# The last line of a clean report: doctor spends no token request, so a wrong secret (or a
# revoked login) passes every check above; say so where a batch script's log shows it.
NOT_VERIFIED = "the credentials were not verified: qlam-hpc auth check does that, at the cost of one token request"


def diagnose(
    environ: Mapping[str, str], overrides: dict[str, Any], *, transport: httpx.BaseTransport | None = None
) -> list[Check]:
    """Every check, in order; a check that cannot run after an earlier failure says ``skip``."""
    from .._settings import build_settings, default_cache_dir

    checks: list[Check] = []
    origins: dict[str, str] = {}
    settings = None
    try:
        settings = build_settings(environ, overrides, origins)
    except ConfigurationError as error:
        checks.append(Check("FAIL", "settings", str(error), error.exit_code))
    checks.extend(_origins(origins, settings))
    if settings is not None:
        checks.extend(_login(settings) if settings.user_context else _credentials(settings))
        idp = _identity_provider(settings, transport)
        checks.extend(idp)
    else:
        checks.append(Check("skip", "identity provider", "needs the settings above"))
        checks.append(Check("skip", "clock", "needs the identity provider"))
    checks.append(_api(environ, transport))
    from .._audit import checks as audit_checks  # where audit events go, and whose setting that is

    checks.extend(Check(verdict, "audit", detail) for verdict, detail in audit_checks(environ))
    if settings is not None and settings.token_store and settings.cache_enabled:
        # The shared store is elsewhere: the file cache's directory and locks do not matter.
        if settings.token_store.strip().lower().startswith("vault://"):
            store_checks = _vault_store(settings)
        else:
            store_checks = [_other_store(settings)]
        checks.extend(store_checks)
        if any(c.verdict == "FAIL" for c in store_checks):
            checks.append(Check("skip", "cached token", "needs the token store"))
            return checks
    else:
        cache_dir = settings.cache_path if settings is not None else _cache_dir(environ, overrides, default_cache_dir)
        checks.extend(_cache(cache_dir))
    if settings is not None:
        checks.append(_cached_token(settings))
    return checks


# --- where each setting came from -----------------------------------------------------------

_SHOWN = (
    ("auth_flow", "flow"),
    ("context", "context"),
    ("client_id", "client id"),
    ("auth_base_url", "auth base URL"),
    ("token_url", "token endpoint"),
    ("discovery_url", "discovery"),
    ("audience", "audience"),
    ("scope", "scope"),
    ("device_authorization_url", "device login"),
    ("revocation_url", "revocation"),
    ("cache_dir", "cache location"),
    ("refresh_token_dir", "login location"),
)


def _origins(origins: dict[str, str], settings) -> list[Check]:  # type: ignore[no-untyped-def]
    from .._settings import flow_label

    lines = [Check("ok", label, _from(origins[name])) for name, label in _SHOWN if name in origins]
    if lines and lines[0].name == "flow" and settings is not None:
        lines[0] = lines[0]._replace(detail=f"{flow_label(settings.auth_flow)}, {lines[0].detail}")
    if settings is not None and settings.user_context:
        lines.append(Check("ok", "client auth", "none: a public client, the user's login is the credential"))
    elif settings is not None:
        method = settings.client_auth
        detail = f"{method}, from QLAM_CLIENT_AUTH_METHOD" if method else _default_method(settings)
        lines.append(Check("ok", "client auth", detail))
        if settings.assertion_audience:
            lines.append(
                Check("ok", "assertion audience", f"{settings.assertion_audience}, from QLAM_CLIENT_ASSERTION_AUD")
            )
        if settings.audience_param != "audience":
            lines.append(
                Check("ok", "audience parameter", f"{settings.audience_param} (RFC 8707), from QLAM_AUDIENCE_PARAM")
            )
    return lines


def _from(origin: str) -> str:
    return "the default" if origin == "default" else f"from {origin}"


def _default_method(settings) -> str:  # type: ignore[no-untyped-def]
    if settings.private_key is not None:
        return "private_key_jwt, because a private key is configured"
    if settings.discovery_url:
        return "chosen from the discovery document's token_endpoint_auth_methods_supported"
    return "client_secret_post (the default; QLAM_CLIENT_AUTH_METHOD changes it)"


# --- the secret or key ----------------------------------------------------------------------


def _credentials(settings) -> list[Check]:  # type: ignore[no-untyped-def]
    from .._client_auth import load_private_key, uses_private_key
    from .._secrets import SecretStoreUnreachable

    with_key = uses_private_key(settings)
    name, label = ("private_key", "private key") if with_key else ("client_secret", "client secret")
    source = getattr(settings, name)
    checks = []
    other = settings.client_secret if with_key else settings.private_key
    if other is not None:
        unused = "client secret" if with_key else "private key"
        checks.append(Check("warn", unused, f"{other.describe()} is configured but not used ({label} is)"))
    if source is None:
        needed = (
            "QLAM_CLIENT_PRIVATE_KEY_FILE or QLAM_CLIENT_PRIVATE_KEY"
            if with_key
            else "QLAM_CLIENT_SECRET, QLAM_CLIENT_SECRET_FILE or QLAM_CLIENT_PRIVATE_KEY_FILE"
        )
        checks.append(Check("FAIL", label, f"none configured ({needed}): only an already cached token can be used", 3))
        return checks
    try:
        value = source.resolve(fresh=True)
        detail = f"{source.describe()}: readable"
        if with_key:
            key, alg = load_private_key(value, settings.assertion_alg)
            size = getattr(key, "key_size", None)
            kid = f", kid {settings.key_id}" if settings.key_id else ", no kid"
            kind = type(key).__name__.lstrip("_").replace("PrivateKey", "")
            detail = f"{source.describe()}: {kind} {size}-bit key, {alg}{kid}"
    except SecretStoreUnreachable as error:
        checks.append(Check("FAIL", label, str(error), error.exit_code))
    except QlamError as error:
        checks.append(Check("FAIL", label, str(error), error.exit_code))
    else:
        checks.append(Check("ok", label, detail))
    return checks


def _login(settings) -> list[Check]:  # type: ignore[no-untyped-def]
    """User context: is someone logged in, and for how long still? (Read from the store; no request.)"""
    from .._durations import format_duration
    from .._errors import LoginRequired
    from .._login import LOGIN_WARNING
    from .._provider import TokenProvider

    try:
        provider = TokenProvider(settings)
        login = provider.current_login()
    except QlamError as error:
        return [Check("FAIL", "login", str(error), error.exit_code)]
    if login is None:
        message = f"none in {provider.login_store.location}: run qlam-hpc auth login"
        if settings.refresh_token_dir is None:
            return [Check("FAIL", "login", message, LoginRequired.exit_code)]
        # Jobs on compute nodes read access tokens only: the login lives on the refreshing node.
        return [Check("warn", "login", f"{message} (on the node that keeps it fresh, if not this one)")]
    left = login.expires_at - time.time()
    detail = f"{login.who}, until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(login.expires_at))}"
    if left <= 0:
        return [Check("FAIL", "login", f"{detail}: ended; run qlam-hpc auth login", LoginRequired.exit_code)]
    if left < LOGIN_WARNING:
        return [Check("warn", "login", f"{detail}: ends in {format_duration(left)}; run qlam-hpc auth login")]
    return [Check("ok", "login", f"{detail} ({format_duration(left)} left; not verified: qlam-hpc auth check does)")]


# --- the identity provider, the clock, the API ----------------------------------------------


def _identity_provider(settings, transport) -> list[Check]:  # type: ignore[no-untyped-def]
    """GET the discovery document if one is configured, else the token endpoint itself:
    any HTTP answer proves it reachable, and none of them is a token request. The GET has
    the token fetch's client, deadline and body cap."""
    import httpx

    from .._errors import TlsError
    from .._http import _ACCEPT, _client, _exchange, _Overdue

    url = settings.discovery_url or settings.token_url
    try:
        with _client(settings, transport) as client:
            sent = time.time()
            response = _exchange(
                client,
                client.build_request("GET", url, headers=_ACCEPT),
                url,
                settings.http_timeout,
                trust=settings.tls_trust,
            )
            received = time.time()
    except (httpx.HTTPError, _Overdue, TlsError, QlamError) as exc:
        if isinstance(exc, QlamError):
            failed = Check("FAIL", "identity provider", str(exc), exc.exit_code)
        elif isinstance(exc, _Overdue):
            failed = Check("FAIL", "identity provider", str(exc), 5)
        else:
            failed = Check("FAIL", "identity provider", f"{url} is unreachable ({type(exc).__name__})", 5)
        return [failed, Check("skip", "clock", "needs an answer from the identity provider")]
    took = f"in {(received - sent) * 1000:.0f} ms"
    if response.status_code >= 500:
        checks = [Check("FAIL", "identity provider", f"{url} answered HTTP {response.status_code} {took}", 5)]
    elif settings.discovery_url:
        checks = [_discovery(url, response, took)]
    else:
        checks = [Check("ok", "identity provider", f"{url} answers (HTTP {response.status_code} to a GET) {took}")]
    checks.append(_clock(response.headers.get("date"), sent, received))
    return checks


def _discovery(url: str, response, took: str) -> Check:  # type: ignore[no-untyped-def]
    from .._discovery import parse_discovery

    try:
        found = parse_discovery(response.status_code, response.headers, response.content, url)
    except QlamError as error:
        return Check("FAIL", "identity provider", str(error), error.exit_code)
    methods = ", ".join(found.auth_methods)
    return Check("ok", "identity provider", f"{url} {took}: token endpoint {found.token_endpoint}; accepts {methods}")


def _clock(date: str | None, sent: float, received: float) -> Check:
    from email.utils import parsedate_to_datetime

    if not date:
        return Check("warn", "clock", "the identity provider sent no Date header to compare with")
    try:
        theirs = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return Check("warn", "clock", "the identity provider's Date header is unreadable")
    # Date has whole seconds: compare with the middle of the exchange, give half a second.
    skew = theirs + 0.5 - (sent + received) / 2
    behind = "behind" if skew > 0 else "ahead of"
    detail = f"this machine is {abs(skew):.1f} s {behind} the identity provider (its Date header)"
    if abs(skew) <= SKEW_OK:
        return Check("ok", "clock", detail)
    if abs(skew) <= SKEW_FAIL:
        return Check("warn", "clock", f"{detail}: run NTP (chrony) on every node")
    return Check("FAIL", "clock", f"{detail}: tokens shared between nodes and client assertions need NTP", 3)


def _api(environ: Mapping[str, str], transport: httpx.BaseTransport | None) -> Check:
    import httpx

    from .._tls import failure as tls_failure
    from .._tls import verify_from_env

    try:
        from .._api._settings import ApiSettings

        base = ApiSettings.from_env(environ).base_url
    except Exception:  # the tasks client's settings are not ours to diagnose; fall back to the variable
        base = (environ.get("QLAM_API_URL") or "https://api.quera.com").rstrip("/")
    try:
        trusted = verify_from_env(environ)
    except QlamError as error:
        return Check("FAIL", "QLAM API", str(error), error.exit_code)
    try:
        with httpx.Client(timeout=10.0, transport=transport, trust_env=True, verify=trusted) as client:
            sent = time.time()
            response = client.get(base + "/")
            took = (time.time() - sent) * 1000
    except httpx.HTTPError as exc:
        tls = tls_failure(exc, base + "/", _trust(environ))
        if tls is not None:
            return Check("FAIL", "QLAM API", str(tls), tls.exit_code)
        return Check("FAIL", "QLAM API", f"{base} is unreachable ({type(exc).__name__})", 14)
    if response.status_code >= 500:
        return Check("warn", "QLAM API", f"{base} answered HTTP {response.status_code} in {took:.0f} ms")
    return Check("ok", "QLAM API", f"{base} answers (HTTP {response.status_code} without a token) in {took:.0f} ms")


def _trust(environ: Mapping[str, str]):  # type: ignore[no-untyped-def]
    from .._tls import ca_setting

    return ca_setting(environ)


# --- the cache ------------------------------------------------------------------------------


def _cache_dir(
    environ: Mapping[str, str], overrides: dict[str, Any], default: Callable[[Mapping[str, str]], str]
) -> str:
    given = overrides.get("cache_dir") or environ.get("QLAM_TOKEN_CACHE_DIR")
    return os.path.expanduser(given) if given else default(environ)


def _cache(directory: str) -> list[Check]:
    directory = os.path.abspath(directory)
    fs = _filesystem(directory)
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        parent = _existing_ancestor(directory)
        if not os.access(parent, os.W_OK | os.X_OK):
            return [
                Check("FAIL", "cache directory", f"{directory} does not exist and cannot be made in {parent}", 8),
                Check("skip", "cache locking", "needs the cache directory"),
            ]
        made = Check(
            "ok", "cache directory", f"{directory} does not exist yet; it is made (0700) at the first fetch; {fs}"
        )
        return [made, _locking(parent, fs)]
    except OSError as exc:
        return [Check("FAIL", "cache directory", f"{directory} cannot be used ({exc.strerror})", 8)]
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        return [Check("FAIL", "cache directory", f"{directory} is not a directory", 8)]
    if info.st_uid != os.geteuid():
        return [
            Check(
                "FAIL",
                "cache directory",
                f"{directory} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})",
                8,
            )
        ]
    if mode & 0o077:
        first = Check(
            "warn",
            "cache directory",
            f"{directory} is yours but mode {mode:04o}: it is made 0700 at the next use; {fs}",
        )
    else:
        first = Check("ok", "cache directory", f"{directory}: yours, mode {mode:04o}; {fs}")
    return [first, _locking(directory, fs)]


def _locking(directory: str, fs: str) -> Check:
    """Take a POSIX lock on a scratch file there, as the cache's refresh lock does."""
    import fcntl
    import tempfile

    try:
        fd, path = tempfile.mkstemp(prefix=".qlam-doctor-", suffix=".lock", dir=directory)
    except OSError as exc:
        return Check("FAIL", "cache locking", f"cannot create a file in {directory} ({exc.strerror})", 8)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            return Check(
                "warn",
                "cache locking",
                f"the filesystem refuses locks ({exc.strerror}): tasks coordinate per node only, "
                "expect up to one token request per node",
            )
        return Check("FAIL", "cache locking", f"lockf failed in {directory} ({exc.strerror})", 8)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
    if "node-local locks" in fs:
        return Check(
            "warn", "cache locking", "lockf works, but the mount keeps locks on this node: about one fetch per node"
        )
    return Check("ok", "cache locking", "lockf works here")


def _filesystem(path: str) -> str:
    """``filesystem nfs4`` from /proc/self/mounts (longest mount point above ``path``), noting
    mount options that make locks node-local."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return "filesystem unknown"
    real = os.path.realpath(_existing_ancestor(path))
    best: list[str] | None = None
    for fields in entries:
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and (best is None or len(point) > len(best[1])):
            best = fields
    if best is None:
        return "filesystem unknown"
    fstype, options = best[2], best[3].split(",")
    local = [o for o in options if o in ("nolock", "localflock", "local_lock=all", "local_lock=posix")]
    return f"filesystem {fstype}" + (f" (node-local locks: {', '.join(local)})" if local else "")


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _other_store(settings) -> Check:  # type: ignore[no-untyped-def]
    """A Redis or file:// store: is the URL one qlam-hpc can use? (The cached-token line below
    then reads through it.) A mistyped scheme fails here, where it was written."""
    from .._stores import open_store

    try:
        store = open_store(settings)
    except QlamError as error:
        return Check("FAIL", "token store", str(error), error.exit_code)
    return Check("ok", "token store", f"{store.location} (QLAM_TOKEN_STORE; the cache directory is not used)")


def _vault_store(settings) -> list[Check]:  # type: ignore[no-untyped-def]
    """The Vault token store: reachable and unsealed, the login, the mount, the policy's
    capabilities on the store's paths (asked of Vault, nothing written), and what a read costs."""
    from .._cache import Identity
    from .._stores import open_store
    from .._stores._vault import VaultStore

    try:
        store = open_store(settings)
        assert isinstance(store, VaultStore)  # a vault:// store is always one
        found = store.check(Identity.of(settings))
    except QlamError as error:
        return [Check("FAIL", "token store", str(error), error.exit_code)]
    checks = [Check("ok", "token store", f"{store.location} (QLAM_TOKEN_STORE; the cache directory is not used)")]
    for good, detail in found:
        checks.append(Check("ok" if good else "FAIL", "token store", detail, 0 if good else 15))
    return checks


def _cached_token(settings) -> Check:  # type: ignore[no-untyped-def]
    from .._durations import format_duration
    from .._provider import TokenProvider
    from ._output import utc

    if not settings.cache_enabled:
        return Check("ok", "cached token", "the cache is off (QLAM_TOKEN_CACHE=off): every process fetches")
    try:
        provider = TokenProvider(settings)
        entry = provider.store.load(provider.identity)
    except QlamError as error:
        return Check("FAIL", "cached token", str(error), error.exit_code)
    now = time.time()
    failure = entry.failure if entry is not None else None
    if failure is not None and now < failure.until:
        return Check(
            "warn",
            "cached token",
            f"a refusal is repeated to every task until {utc(failure.until)}: {failure.to_error()}",
        )
    token = entry.token if entry is not None else None
    if token is None:
        return Check("ok", "cached token", "none yet: the first task to need one fetches it")
    if token.usable(now):
        return Check(
            "ok", "cached token", f"valid until {utc(token.expires_at)} (in {format_duration(token.remaining(now))})"
        )
    return Check("ok", "cached token", f"expired at {utc(token.expires_at)}: the next task fetches a new one")
