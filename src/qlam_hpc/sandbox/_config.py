"""What a sandbox serves: its clients, users, audiences, token lifetime, quota and faults.

Plain value objects, standard library only, so the CLI can build and validate a
configuration before it imports FastAPI.  Invalid settings raise
``ConfigurationError`` with a message that names the setting (and the file).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError

__all__ = [
    "SandboxClient",
    "SandboxConfig",
    "SandboxUser",
    "DEFAULT_AUDIENCE",
    "DEFAULT_DEVICE_CLIENTS",
    "DEFAULT_QPU_MODES",
    "DEFAULT_USERS",
    "check_issuer_url",
    "is_loopback",
]

DEFAULT_AUDIENCE = "https://api.quera.com"
DEFAULT_QPU_MODES = ("squin-256q",)
# QLAM's qpu_mode is <language>-<constraint>, e.g. squin-256q.
QPU_MODE_PATTERN = r"^[a-z0-9]+-[a-z0-9]+$"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals: the only addresses a sandbox may bind."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_issuer_url(url: str) -> str:
    """An issuer (or JWKS) URL the sandbox may fetch keys from: https, or plain http on a
    loopback host only. ``ValueError`` otherwise."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host and is_loopback(host):
        return url
    raise ValueError(f"exchange issuer {url!r} must be an https URL (plain http only on a loopback host)")


def _strings(value: Any, what: str) -> tuple[str, ...]:
    # Accept any iterable of strings (lists come from JSON) but not a bare string,
    # which would silently become a tuple of characters.
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{what} must be a list of strings, not {value!r}")
    items = tuple(value)
    if not all(isinstance(item, str) and item for item in items):
        raise ConfigurationError(f"{what} must hold non-empty strings, not {list(items)!r}")
    return items


# How a client may authenticate at the token endpoint (see _client_auth.py).
CLIENT_AUTH_METHODS = ("client_secret_post", "client_secret_basic", "private_key_jwt")


@dataclass(frozen=True)
class SandboxClient:
    """One M2M application: its credentials, the scopes it was granted and the
    audiences it may ask for (``None`` means every audience the sandbox serves).

    A client has a secret, public keys for ``private_key_jwt`` (``jwks``: a JWK set;
    ``public_keys``: PEM texts), or both. ``auth_methods`` limits how it may
    authenticate; ``None`` allows every method its credentials support.
    """

    client_id: str
    client_secret: str | None = field(default=None, repr=False)  # repr() must never show a secret
    scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] | None = None
    jwks: Any = field(default=None, repr=False, compare=False)
    public_keys: tuple[str, ...] = field(default=(), repr=False)
    auth_methods: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("client_id", "client_secret"):
            value = getattr(self, name)
            if name == "client_secret" and value is None:
                continue
            if not isinstance(value, str) or not value or value != value.strip():
                raise ConfigurationError(f"client {name} must be a non-empty string without surrounding blanks")
        self._check_keys()
        scopes = _strings(self.scopes, f"scopes of client {self.client_id!r}")
        if any(len(scope.split()) != 1 for scope in scopes):
            raise ConfigurationError(f"scopes of client {self.client_id!r} must not contain blanks")
        object.__setattr__(self, "scopes", scopes)
        if self.audiences is not None:
            audiences = _strings(self.audiences, f"audiences of client {self.client_id!r}")
            object.__setattr__(self, "audiences", audiences)

    def may_access(self, audience: str) -> bool:
        return self.audiences is None or audience in self.audiences

    def _check_keys(self) -> None:
        """Shapes only: the keys themselves are parsed when a sandbox is created (``_client_auth``)."""
        keys = self.jwks.get("keys") if isinstance(self.jwks, dict) else None
        if self.jwks is not None and not (isinstance(keys, list) and all(isinstance(k, dict) for k in keys)):
            raise ConfigurationError(f'jwks of client {self.client_id!r} must be a JWK set: {{"keys": [...]}}')
        object.__setattr__(self, "public_keys", _strings(self.public_keys, f"public_keys of client {self.client_id!r}"))
        if self.client_secret is None and not keys and not self.public_keys:
            raise ConfigurationError(
                f"client {self.client_id!r} needs a client_secret or public keys (jwks, jwks_file, public_key_file)"
            )
        if self.auth_methods is not None:
            methods = _strings(self.auth_methods, f"auth_methods of client {self.client_id!r}")
            unknown = [m for m in methods if m not in CLIENT_AUTH_METHODS]
            if unknown or not methods:
                raise ConfigurationError(
                    f"auth_methods of client {self.client_id!r} must name some of {', '.join(CLIENT_AUTH_METHODS)}"
                )
            object.__setattr__(self, "auth_methods", methods)


@dataclass(frozen=True)
class SandboxUser:
    """A person who can approve a device login (``/activate``); their tokens carry ``sub`` = ``subject``."""

    subject: str
    email: str
    name: str

    def __post_init__(self) -> None:
        for name in ("subject", "email", "name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or value != value.strip():
                raise ConfigurationError(f"user {name} must be a non-empty string without surrounding blanks")
        if "@" not in self.email or any(c.isspace() for c in self.email):
            raise ConfigurationError(f"user email {self.email!r} is not an e-mail address")

    def is_named(self, name: str) -> bool:
        """Whether ``name`` is this user's subject or (case-insensitively) e-mail address."""
        return name == self.subject or name.lower() == self.email.lower()


# One user and one public client, so the device flow works with no configuration at all.
DEFAULT_USERS = (SandboxUser("auth0|sandbox-user-1", "ada@example.org", "Ada Lovelace"),)
DEFAULT_DEVICE_CLIENTS = ("qlam-sandbox-device",)


@dataclass(frozen=True)
class SandboxConfig:
    """Everything a sandbox identity provider serves; immutable once built.

    ``latency``, ``error_rate``, ``token_lifetime`` and ``task_duration`` are the
    starting values: tests change them at run time through ``Sandbox.set_faults``
    or ``POST /_sandbox/faults``.  ``seed`` makes the ``error_rate`` draws repeatable.
    ``qpu_modes`` are the modes the tasks API serves; ``state_dir`` keeps tasks
    (and, without ``signing_key_file``, the signing key) across restarts.

    User context (device code flow, rotating refresh tokens): ``users`` may approve
    device logins; ``device_clients`` are public client ids (no secret) allowed the
    device_code and refresh_token grants.  ``refresh_token_overlap`` is Auth0's
    rotation overlap period (0, the default, as on Auth0: any reuse revokes the
    login); ``refresh_token_lifetime`` the absolute lifetime of a login, which
    rotation does not extend; ``auto_approve`` approves a device login as the first
    user at its first poll.  ``refresh_token_overlap``, ``device_poll_interval`` and
    ``auto_approve`` are starting values too.

    Token exchange (RFC 8693): ``exchange_issuers`` are the issuers whose JWTs a client may
    exchange (https, or http on loopback; keys found by OpenID discovery);
    ``exchange_audience`` is what their ``aud`` must hold (default: the sandbox's URL).
    """

    clients: tuple[SandboxClient, ...]
    audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,)
    token_lifetime: int = 86400
    monthly_quota: int | None = None
    latency: float = 0.0
    error_rate: float = 0.0
    seed: int | None = None
    host: str = "127.0.0.1"
    port: int = 0
    signing_key_file: Path | None = None
    qpu_modes: tuple[str, ...] = DEFAULT_QPU_MODES
    task_duration: float = 2.0
    state_dir: Path | None = None
    users: tuple[SandboxUser, ...] = DEFAULT_USERS
    device_clients: tuple[str, ...] = DEFAULT_DEVICE_CLIENTS
    refresh_token_overlap: float = 0.0
    refresh_token_lifetime: int = 15 * 86400
    device_code_lifetime: int = 600
    device_poll_interval: int = 5
    auto_approve: bool = False
    exchange_issuers: tuple[str, ...] = ()
    exchange_audience: str | None = None

    def __post_init__(self) -> None:
        clients = tuple(self.clients)
        if not clients or not all(isinstance(c, SandboxClient) for c in clients):
            raise ConfigurationError("a sandbox needs at least one SandboxClient")
        ids = [c.client_id for c in clients]
        if len(set(ids)) != len(ids):
            raise ConfigurationError("client ids must be unique")
        object.__setattr__(self, "clients", clients)
        audiences = _strings(self.audiences, "audiences")
        if not audiences:
            raise ConfigurationError("a sandbox needs at least one audience")
        object.__setattr__(self, "audiences", audiences)
        for client in clients:
            unknown = [a for a in client.audiences or () if a not in audiences]
            if unknown:
                raise ConfigurationError(f"client {client.client_id!r} names unknown audiences {unknown}")
        self._check_numbers()
        if not is_loopback(self.host):
            raise ConfigurationError(f"host {self.host!r} is not a loopback address: the sandbox serves 127.0.0.1 only")
        if self.signing_key_file is not None:
            object.__setattr__(self, "signing_key_file", Path(self.signing_key_file))
        self._check_tasks_settings()
        self._check_user_settings()
        self._check_exchange_settings()

    def _check_exchange_settings(self) -> None:
        issuers = _strings(self.exchange_issuers, "exchange_issuers")
        try:
            object.__setattr__(self, "exchange_issuers", tuple(dict.fromkeys(check_issuer_url(i) for i in issuers)))
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        audience = self.exchange_audience
        if audience is not None and (not isinstance(audience, str) or not audience.strip()):
            raise ConfigurationError(f"exchange_audience must be a non-empty string, not {audience!r}")

    def _check_user_settings(self) -> None:
        users = tuple(self.users) if isinstance(self.users, Iterable) else ()
        if not users or not all(isinstance(u, SandboxUser) for u in users):
            raise ConfigurationError("users must hold at least one SandboxUser")
        for attribute in ("subject", "email"):
            values = [getattr(u, attribute).lower() for u in users]
            if len(set(values)) != len(values):
                raise ConfigurationError(f"users must have unique {attribute}s")
        object.__setattr__(self, "users", users)
        device_clients = _strings(self.device_clients, "device_clients")
        if len(set(device_clients)) != len(device_clients):
            raise ConfigurationError("device_clients must be unique")
        shared = [c for c in device_clients if self.client(c) is not None]
        if shared:
            raise ConfigurationError(f"device_clients {shared} are also M2M clients: a client is one or the other")
        object.__setattr__(self, "device_clients", device_clients)
        overlap = self.refresh_token_overlap
        if not _is_number(overlap) or not math.isfinite(overlap) or overlap < 0:
            raise ConfigurationError(f"refresh_token_overlap must be a finite number of seconds >= 0, not {overlap!r}")
        object.__setattr__(self, "refresh_token_overlap", float(overlap))
        for name in ("refresh_token_lifetime", "device_code_lifetime"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
        if not _is_int(self.device_poll_interval) or self.device_poll_interval < 0:
            raise ConfigurationError(
                f"device_poll_interval must be a whole number of seconds >= 0, not {self.device_poll_interval!r}"
            )
        if not isinstance(self.auto_approve, bool):
            raise ConfigurationError(f"auto_approve must be true or false, not {self.auto_approve!r}")

    def user(self, name: str | None = None) -> SandboxUser | None:
        """The user with this subject or e-mail address (the first user for ``None``), if any."""
        if name is None:
            return self.users[0]
        return next((u for u in self.users if u.is_named(name)), None)

    def _check_tasks_settings(self) -> None:
        modes = _strings(self.qpu_modes, "qpu_modes")
        if not modes:
            raise ConfigurationError("qpu_modes must name at least one mode")
        bad = [m for m in modes if not re.fullmatch(QPU_MODE_PATTERN, m)]
        if bad:
            raise ConfigurationError(f"qpu_modes must look like <language>-<constraint> (e.g. squin-256q), not {bad}")
        object.__setattr__(self, "qpu_modes", tuple(dict.fromkeys(modes)))
        duration = self.task_duration
        number = isinstance(duration, (int, float)) and not isinstance(duration, bool)
        if not number or not math.isfinite(duration) or duration < 0:
            raise ConfigurationError(f"task_duration must be a finite number of seconds >= 0, not {duration!r}")
        object.__setattr__(self, "task_duration", float(duration))
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", Path(self.state_dir))

    def _check_numbers(self) -> None:
        is_int = _is_int
        if not is_int(self.token_lifetime) or self.token_lifetime <= 0:
            raise ConfigurationError(
                f"token_lifetime must be a positive number of seconds, not {self.token_lifetime!r}"
            )
        if self.monthly_quota is not None and (not is_int(self.monthly_quota) or self.monthly_quota < 0):
            raise ConfigurationError(f"monthly_quota must be None or an integer >= 0, not {self.monthly_quota!r}")
        if not isinstance(self.latency, (int, float)) or not math.isfinite(self.latency) or self.latency < 0:
            raise ConfigurationError(f"latency must be a finite number of seconds >= 0, not {self.latency!r}")
        if not isinstance(self.error_rate, (int, float)) or not 0.0 <= self.error_rate <= 1.0:
            raise ConfigurationError(f"error_rate must be between 0 and 1, not {self.error_rate!r}")
        if not is_int(self.port) or not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port must be between 0 and 65535, not {self.port!r}")

    def client(self, client_id: str) -> SandboxClient | None:
        """The registered client with this id, if any."""
        return next((c for c in self.clients if c.client_id == client_id), None)

    def replace(self, **changes: Any) -> SandboxConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def default(
        cls,
        *,
        client_id: str | None = None,
        scopes: Iterable[str] = (),
        public_keys: Iterable[str] = (),
        **settings: Any,
    ) -> SandboxConfig:
        """One client with a random id (unless given) and a random secret; ``settings`` are the other fields.
        ``public_keys`` (PEM texts) let it use private_key_jwt too."""
        client = SandboxClient(
            client_id=client_id or secrets.token_urlsafe(24),
            client_secret=secrets.token_urlsafe(48),
            scopes=tuple(scopes),
            public_keys=tuple(public_keys),
        )
        return cls(clients=(client,), **settings)

    @classmethod
    def from_file(cls, path: str | Path, **settings: Any) -> SandboxConfig:
        """Clients (and optionally audiences, users and device clients) from a JSON file;
        ``settings`` are the other fields.

        The file: ``{"clients": [{"client_id": "...", "client_secret": "...", "scopes": [...],
        "audiences": [...]}], "audiences": [...], "users": [{"subject", "email", "name"}],
        "device_clients": [...]}``; all but ``clients`` and their ids and secrets are optional.
        A keyword argument wins over the file's value.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"cannot read sandbox clients from {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("clients"), list):
            raise ConfigurationError(f'{path} must hold a JSON object with a "clients" list')
        clients = []
        for number, entry in enumerate(data["clients"], start=1):
            if not isinstance(entry, dict):
                raise ConfigurationError(f"{path}: client #{number} must be a JSON object")
            unknown = set(entry) - {"client_id", "client_secret", "scopes", "audiences", *_KEY_ENTRIES}
            if unknown:
                raise ConfigurationError(f"{path}: client #{number} has unknown keys {sorted(unknown)}")
            try:
                clients.append(SandboxClient(**_read_key_files(entry, path.parent)))
            except TypeError:
                raise ConfigurationError(f"{path}: client #{number} needs client_id and client_secret") from None
            except OSError as exc:
                raise ConfigurationError(
                    f"{path}: client #{number}: cannot read {exc.filename}: {exc.strerror}"
                ) from None
            except ConfigurationError as exc:
                raise ConfigurationError(f"{path}: client #{number}: {exc}") from None
        if "audiences" in data and "audiences" not in settings:
            settings["audiences"] = data["audiences"]
        if "users" in data and "users" not in settings:
            settings["users"] = _users_from(data["users"], path)
        if "device_clients" in data and "device_clients" not in settings:
            settings["device_clients"] = data["device_clients"]
        try:
            return cls(clients=tuple(clients), **settings)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _users_from(entries: Any, path: Path) -> tuple[SandboxUser, ...]:
    """A clients file's ``users``: ``[{"subject", "email", "name"}, ...]``."""
    if not isinstance(entries, list):
        raise ConfigurationError(f"{path}: users must be a list of objects")
    users = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or set(entry) != {"subject", "email", "name"}:
            raise ConfigurationError(f"{path}: user #{number} must be an object with subject, email and name")
        try:
            users.append(SandboxUser(**entry))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}: user #{number}: {exc}") from None
    return tuple(users)


# Keys of a clients-file entry for private_key_jwt clients: an inline JWK set, or files
# (relative to the clients file) holding a JWK set or a PEM public key.
_KEY_ENTRIES = ("jwks", "jwks_file", "public_key_file", "auth_methods")


def _read_key_files(entry: dict[str, Any], directory: Path) -> dict[str, Any]:
    """A clients-file entry with ``jwks_file`` and ``public_key_file`` read into ``jwks`` and ``public_keys``."""
    entry = dict(entry)
    jwks_file = entry.pop("jwks_file", None)
    if jwks_file is not None:
        if "jwks" in entry:
            raise ConfigurationError("give jwks or jwks_file, not both")
        try:
            entry["jwks"] = json.loads((directory / str(jwks_file)).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigurationError(f"jwks_file {jwks_file} is not a JSON JWK set") from None
    key_files = entry.pop("public_key_file", None)
    if key_files is not None:
        paths = [key_files] if isinstance(key_files, str) else list(_strings(key_files, "public_key_file"))
        entry["public_keys"] = tuple((directory / p).read_text(encoding="utf-8") for p in paths)
    return entry
