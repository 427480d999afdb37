"""Settings as value objects. The environment is read in one place: ``Settings.from_env``.

The warm ``qlam-hpc token`` path builds a Settings, so this module imports
nothing beyond ``os`` and ``collections``: value objects are namedtuples (as the
standard library's own ``urllib.parse.SplitResult`` and ``os.stat_result`` are),
and URLs are split by hand rather than through ``urllib.parse``.
"""

from __future__ import annotations

import os
from collections import namedtuple

from ._errors import ConfigurationError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Mapping

DEFAULT_AUDIENCE = "https://api.quera.com"


class Secret:
    """A secret value that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):
        # Secrets do not travel through pickles (multiprocessing, logging queues).
        raise TypeError("a Secret cannot be pickled")


class RetryPolicy(
    namedtuple("_RetryFields", "attempts deadline initial_delay max_delay", defaults=(5, 60.0, 0.5, 10.0))
):
    """Bounds for retrying transient failures: ``attempts``, total seconds (``deadline``),
    and the backoff curve (``initial_delay`` doubling up to ``max_delay``, with full jitter)."""

    __slots__ = ()


_SETTINGS_FIELDS = (
    "client_id",  # the M2M client id
    "audience",  # the API the token is for
    "token_url",  # {AUTH_BASE_URL}/oauth/token
    "client_secret",  # Secret | None: needed only to fetch
    "scope",  # space-separated scopes to request, or None
    "cache_dir",  # str | None: None means default_cache_dir()
    "cache_enabled",  # False: no sharing at all (QLAM_TOKEN_CACHE=off)
    "token_budget",  # int | None: monthly token requests to warn about above 80 %
    "lock_timeout",  # seconds a waiter waits for another process's fetch
    "http_timeout",  # seconds per HTTP request
    "retry",  # RetryPolicy
    "rejected_cooldown",  # seconds other processes repeat a rejection (invalid_client, ...)
    "transient_cooldown",  # seconds other processes repeat an outage or a garbage answer
)


class Settings(
    namedtuple(
        "_SettingsFields",
        _SETTINGS_FIELDS,
        defaults=(None, None, None, True, None, 90.0, 10.0, RetryPolicy(), 300.0, 15.0),
    )
):
    """Everything qlam-hpc needs to obtain and cache a token. Immutable; ``with_`` copies."""

    __slots__ = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Settings from ``QLAM_*`` variables; keyword overrides (CLI flags) win over them.

        Overrides whose value is ``None`` are ignored, so CLI options can be passed as-is.
        """
        env = os.environ if environ is None else environ
        given = {k: v for k, v in overrides.items() if v is not None}

        def pick(name: str, variable: str) -> str | None:
            if name in given:
                return given.pop(name)
            return env.get(variable) or None

        client_id = pick("client_id", "QLAM_CLIENT_ID")
        audience = pick("audience", "QLAM_AUDIENCE") or DEFAULT_AUDIENCE
        base_url = pick("auth_base_url", "AUTH_BASE_URL")
        if not client_id:
            raise ConfigurationError("QLAM_CLIENT_ID is not set (the M2M client id from your QLAM admin)")
        if not base_url:
            raise ConfigurationError(
                "AUTH_BASE_URL is not set (the identity provider's host, e.g. quera-identity.us.auth0.com)"
            )
        secret = env.get("QLAM_CLIENT_SECRET")
        cache_dir = pick("cache_dir", "QLAM_TOKEN_CACHE_DIR")
        settings = cls(
            client_id=client_id,
            audience=audience,
            token_url=token_url_for(base_url),
            client_secret=Secret(secret) if secret else None,
            scope=pick("scope", "QLAM_SCOPE"),
            cache_dir=os.path.expanduser(cache_dir) if cache_dir else default_cache_dir(env),
            cache_enabled=_flag(env.get("QLAM_TOKEN_CACHE") or "on", "QLAM_TOKEN_CACHE"),
            token_budget=_positive_int(env.get("QLAM_TOKEN_BUDGET"), "QLAM_TOKEN_BUDGET"),
            lock_timeout=_seconds(env.get("QLAM_LOCK_TIMEOUT"), "QLAM_LOCK_TIMEOUT", 90.0),
            http_timeout=_seconds(env.get("QLAM_HTTP_TIMEOUT"), "QLAM_HTTP_TIMEOUT", 10.0),
            retry=RetryPolicy(
                attempts=_positive_int(env.get("QLAM_RETRY_ATTEMPTS"), "QLAM_RETRY_ATTEMPTS") or 5,
                deadline=_seconds(env.get("QLAM_RETRY_DEADLINE"), "QLAM_RETRY_DEADLINE", 60.0),
            ),
        )
        return settings._replace(**given) if given else settings

    def with_(self, **changes) -> Settings:
        return self._replace(**changes)

    @property
    def cache_path(self) -> str:
        """The cache directory in use: ``cache_dir``, or the per-user default."""
        return self.cache_dir or default_cache_dir(os.environ)


def default_cache_dir(env: Mapping[str, str]) -> str:
    """``$XDG_CACHE_HOME/qlam-hpc``, else ``~/.cache/qlam-hpc``: per user, and on clusters
    usually on the shared home filesystem, so every node of a job array sees it."""
    base = env.get("XDG_CACHE_HOME")
    if base and os.path.isabs(base):
        return os.path.join(base, "qlam-hpc")
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".cache", "qlam-hpc")


def token_url_for(auth_base_url: str) -> str:
    """``{AUTH_BASE_URL}/oauth/token``; a bare host means https; plain http only on loopback."""
    text = auth_base_url.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "https", text
    scheme = scheme.lower()
    host = _host_of(rest)
    if scheme not in ("https", "http") or not host or any(c in rest for c in "?#"):
        raise ConfigurationError(f"AUTH_BASE_URL {auth_base_url!r} is not a host name or an http(s) URL")
    if scheme == "http" and not is_loopback(host):
        raise ConfigurationError(
            f"AUTH_BASE_URL {auth_base_url!r} uses plain http: https is required except on a loopback address"
        )
    return f"{scheme}://{rest.rstrip('/')}/oauth/token"


def _host_of(rest: str) -> str:
    """The host of ``authority/path``: the authority ends at the first '/', '?' or '#' (RFC 3986)."""
    authority = rest
    for end in "/?#":
        authority = authority.split(end, 1)[0]
    authority = authority.rsplit("@", 1)[-1]
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.split(":", 1)[0]


def is_loopback(host: str) -> bool:
    """``localhost``, ``::1`` or a dotted-quad 127.x.y.z address (not a name like 127.evil.example)."""
    if host.lower() in ("localhost", "::1"):
        return True
    parts = host.split(".")
    return (
        len(parts) == 4
        and parts[0] == "127"
        and all(part.isdigit() and part.isascii() and int(part) <= 255 for part in parts)
    )


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "on", "true", "yes"):
        return True
    if lowered in ("0", "off", "false", "no"):
        return False
    raise ConfigurationError(f"{name}={value!r}: use on or off")


def _positive_int(value: str | None, name: str) -> int | None:
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ConfigurationError(f"{name}={value!r}: expected a positive whole number")
    return number


def _seconds(value: str | None, name: str, default: float) -> float:
    if not value:
        return default
    from ._durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None
