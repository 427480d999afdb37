"""Settings as value objects. The environment is read in one place: ``Settings.from_env``.

Kept free of heavy imports: the warm ``qlam-hpc token`` path builds a Settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from ._errors import ConfigurationError

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


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for retrying transient failures: attempts, total time, and the backoff curve."""

    attempts: int = 5
    deadline: float = 60.0
    initial_delay: float = 0.5
    max_delay: float = 10.0


@dataclass(frozen=True)
class Settings:
    """Everything qlam-hpc needs to obtain and cache a token."""

    client_id: str
    audience: str
    token_url: str
    client_secret: Secret | None = field(default=None, repr=False)
    scope: str | None = None
    cache_dir: Path = field(default_factory=lambda: default_cache_dir(os.environ))
    cache_enabled: bool = True
    token_budget: int | None = None
    lock_timeout: float = 90.0
    http_timeout: float = 10.0
    retry: RetryPolicy = RetryPolicy()
    rejected_cooldown: float = 300.0
    transient_cooldown: float = 15.0

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
            cache_dir=Path(cache_dir).expanduser() if cache_dir else default_cache_dir(env),
            cache_enabled=_flag(env.get("QLAM_TOKEN_CACHE", "on"), "QLAM_TOKEN_CACHE"),
            token_budget=_positive_int(env.get("QLAM_TOKEN_BUDGET"), "QLAM_TOKEN_BUDGET"),
            lock_timeout=_seconds(env.get("QLAM_LOCK_TIMEOUT"), "QLAM_LOCK_TIMEOUT", 90.0),
            http_timeout=_seconds(env.get("QLAM_HTTP_TIMEOUT"), "QLAM_HTTP_TIMEOUT", 10.0),
            retry=RetryPolicy(
                attempts=_positive_int(env.get("QLAM_RETRY_ATTEMPTS"), "QLAM_RETRY_ATTEMPTS") or 5,
                deadline=_seconds(env.get("QLAM_RETRY_DEADLINE"), "QLAM_RETRY_DEADLINE", 60.0),
            ),
        )
        return replace(settings, **given) if given else settings

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/qlam-hpc``, else ``~/.cache/qlam-hpc``: per user, and on clusters
    usually on the shared home filesystem, so every node of a job array sees it."""
    base = env.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path(env.get("HOME") or Path.home()) / ".cache"
    return root / "qlam-hpc"


def token_url_for(auth_base_url: str) -> str:
    """``{AUTH_BASE_URL}/oauth/token``; a bare host means https; plain http only on loopback."""
    base = auth_base_url.strip().rstrip("/")
    if "://" not in base:
        base = "https://" + base
    scheme, _, rest = base.partition("://")
    host = _host_of(rest)
    if scheme not in ("https", "http") or not host:
        raise ConfigurationError(f"AUTH_BASE_URL {auth_base_url!r} is not a host name or an http(s) URL")
    if scheme == "http" and not is_loopback(host):
        raise ConfigurationError(
            f"AUTH_BASE_URL {auth_base_url!r} uses plain http: https is required except on a loopback address"
        )
    return f"{scheme}://{rest}/oauth/token"


def _host_of(authority_and_path: str) -> str:
    authority = authority_and_path.split("/", 1)[0].rsplit("@", 1)[-1]
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.split(":", 1)[0]


def is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


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
