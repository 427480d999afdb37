"""User logins: device codes (RFC 8628) and refresh-token families with Auth0's rotation.

This is the state that makes user context hard for batch jobs, so it is emulated
exactly: each refresh returns a new refresh token and uses up the old one;
exchanging a used token again (outside the overlap period) is *reuse*, and Auth0
then revokes the whole login (the token family), so every job holding one of its
tokens fails.  Tests of clients that refresh from many jobs at once need to see
that happen, and see it not happen when the clients take turns.

Every decision (poll a device code, approve it, exchange or revoke a refresh
token) happens in one method call under the store's one lock, so two jobs racing
with the same refresh token see exactly one winner, as on Auth0.  No method is
async, so the lock is never held across an ``await``; signing the tokens happens
outside.  Only SHA-256 digests of device codes and refresh tokens are kept, so
the store never holds a credential that could leak through a debugger or a dump.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass
from typing import Literal

from ._config import SandboxConfig, SandboxUser
from ._params import Refusal

__all__ = ["DeviceAuthorization", "Family", "Grant", "UserLogins", "format_user_code", "new_user_code"]

# RFC 8628 section 6.1: consonants only (no vowels, so no words), easy to read and type.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
# RFC 8628 section 3.5: each slow_down adds 5 seconds to the interval, for good.
SLOW_DOWN_STEP = 5
# Opaque credentials: 32 random bytes, URL-safe (43 characters).
CREDENTIAL_BYTES = 32
# Auth0's wording for every refresh token it will not exchange, whatever the reason.
INVALID_REFRESH_TOKEN = "Unknown or invalid refresh token."
INVALID_DEVICE_CODE = "Invalid or expired device code."

UserCode = str


def new_user_code() -> UserCode:
    """A fresh user code such as ``BCDF-GHJK``."""
    letters = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return f"{letters[:4]}-{letters[4:]}"


def format_user_code(text: str) -> UserCode | None:
    """``text`` as a user code, ignoring case, blanks and dashes (RFC 8628 section 6.1),
    or ``None`` when it cannot be one."""
    letters = "".join(c for c in text.upper() if c not in " -\t")
    if len(letters) != USER_CODE_LENGTH or any(c not in USER_CODE_ALPHABET for c in letters):
        return None
    return f"{letters[:4]}-{letters[4:]}"


def _digest(credential: str) -> str:
    return hashlib.sha256(credential.encode("utf-8")).hexdigest()


@dataclass
class Family:
    """One login: every refresh token it ever had shares its fate (revocation) and its age."""

    user: SandboxUser
    client_id: str
    audience: str
    scope: str
    created_at: float
    revoked: bool = False


@dataclass
class _RefreshToken:
    family: Family
    used_at: float | None = None  # the first exchange; the overlap period counts from it


@dataclass
class _DeviceLogin:
    user_code: UserCode
    client_id: str
    audience: str
    scope: str
    expires_at: float
    interval: int
    status: Literal["pending", "approved", "denied", "done"] = "pending"
    user: SandboxUser | None = None
    last_poll: float | None = None
    expiry_reported: bool = False


@dataclass(frozen=True)
class Grant:
    """What a successful device_code or refresh_token grant hands out; the caller signs the tokens.

    ``scope`` is the login's, or the narrower one a refresh asked for; ``refresh_token``
    is ``None`` when the login has no ``offline_access``.
    """

    user: SandboxUser
    client_id: str
    audience: str
    scope: str
    refresh_token: str | None


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: UserCode
    expires_in: int
    interval: int


_COUNTERS = (
    "device_authorizations",
    "device_logins",
    "refresh_requests",
    "refreshes",
    "reuse_detections",
    "families_revoked",
    "revocations",
)


class UserLogins:
    """Device codes, refresh-token families and their counters, in memory; thread-safe.

    ``reset_counters()`` zeroes the counters only: device codes and logins stay,
    like access tokens already handed out, so a refresh token from before a reset
    still works.
    """

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._devices: dict[str, _DeviceLogin] = {}  # digest of the device code -> login
        self._user_codes: dict[UserCode, _DeviceLogin] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}  # digest of the token -> token
        self._families: list[Family] = []
        self._counts = dict.fromkeys(_COUNTERS, 0)

    def reset_counters(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(_COUNTERS, 0)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def count(self, counter: Literal["refresh_requests", "revocations"]) -> None:
        with self._lock:
            self._counts[counter] += 1

    # --- the device code flow ----------------------------------------------------------

    def start_device_login(
        self, client_id: str, audience: str, scope: str, *, now: float, interval: int, auto_approve: bool = False
    ) -> DeviceAuthorization:
        """A new pending device login (``POST /oauth/device/code``); with ``auto_approve`` it is
        approved as the first user already, so the client's first poll, however soon, gets its tokens."""
        device_code = secrets.token_urlsafe(CREDENTIAL_BYTES)
        lifetime = self._config.device_code_lifetime
        with self._lock:
            user_code = new_user_code()
            while user_code in self._user_codes:
                user_code = new_user_code()
            login = _DeviceLogin(user_code, client_id, audience, scope, expires_at=now + lifetime, interval=interval)
            if auto_approve:
                login.status, login.user = "approved", self._config.users[0]
            self._devices[_digest(device_code)] = login
            self._user_codes[user_code] = login
            self._counts["device_authorizations"] += 1
        return DeviceAuthorization(device_code, user_code, lifetime, interval)

    def pending_user_codes(self, *, now: float) -> list[UserCode]:
        """User codes still waiting for a person's decision, oldest first."""
        with self._lock:
            return [code for code, login in self._user_codes.items() if self._is_pending(login, now)]

    def decide(self, user_code: str, user: str | SandboxUser | None = None, *, deny: bool = False, now: float) -> None:
        """Approve a pending login as ``user`` (subject or e-mail; the first user by default), or deny it.

        ``ValueError`` for an unknown user; ``LookupError`` when ``user_code`` names no
        pending login (unknown, expired, or already decided).
        """
        person = user if isinstance(user, SandboxUser) else self._config.user(user)
        if person is None:
            raise ValueError(f"the sandbox has no user {user!r}")
        code = format_user_code(user_code)
        with self._lock:
            login = self._user_codes.get(code) if code else None
            if login is None or not self._is_pending(login, now):
                raise LookupError("no pending device login has this user code (unknown, expired or already decided)")
            login.status, login.user = ("denied", None) if deny else ("approved", person)

    def poll(self, device_code: str, client_id: str, *, now: float, auto_approve: bool) -> Grant:
        """The device_code grant: a ``Grant`` once the user approved, else a ``Refusal``
        (``authorization_pending``, ``slow_down``, ``expired_token``, ``access_denied``, ``invalid_grant``)."""
        with self._lock:
            login = self._devices.get(_digest(device_code))
            if login is None or login.client_id != client_id or login.status == "done":
                raise Refusal(403, "invalid_grant", INVALID_DEVICE_CODE)
            if now >= login.expires_at:
                if login.expiry_reported:
                    raise Refusal(403, "invalid_grant", INVALID_DEVICE_CODE)
                login.expiry_reported = True
                raise Refusal(403, "expired_token", "The device code has expired; start a new login")
            previous, login.last_poll = login.last_poll, now
            if previous is not None and now - previous < login.interval:
                login.interval += SLOW_DOWN_STEP
                wait = f"wait {login.interval} seconds between polls"
                raise Refusal(429, "slow_down", f"You are polling faster than allowed: {wait}")
            if login.status == "pending" and auto_approve:  # a code issued before auto_approve was switched on
                login.status, login.user = "approved", self._config.users[0]
            if login.status == "pending":
                raise Refusal(403, "authorization_pending", "User has yet to authorize device code.")
            approved, login.status = login.status == "approved", "done"
            if not approved:
                raise Refusal(403, "access_denied", "The user denied the device login")
            assert login.user is not None
            self._counts["device_logins"] += 1
            refresh_token = None
            if "offline_access" in login.scope.split():
                family = Family(login.user, client_id, login.audience, login.scope, created_at=now)
                self._families.append(family)
                refresh_token = self._new_refresh_token(family)
            return Grant(login.user, client_id, login.audience, login.scope, refresh_token)

    # --- refresh tokens -----------------------------------------------------------------

    def rotate(self, refresh_token: str, client_id: str, *, scope: str = "", now: float, overlap: float) -> Grant:
        """The refresh_token grant with rotation: the token is used up and a new one of its
        family handed out; a used token outside the overlap period revokes the family.
        ``scope`` narrows the new access token to a subset of the login's scope.

        Every reuse counts in ``reuse_detections``, also once the family is revoked:
        50 jobs refreshing with one token make 49 detections and one revocation.
        """
        with self._lock:
            token = self._refresh_tokens.get(_digest(refresh_token))
            if token is None or token.family.client_id != client_id or self._has_expired(token.family, now):
                raise Refusal(403, "invalid_grant", INVALID_REFRESH_TOKEN)
            family = token.family
            if token.used_at is not None and not (overlap > 0 and now - token.used_at <= overlap):
                # Reuse: someone holds a token that was already exchanged. Auth0 takes
                # it as a breach and ends the whole login.
                self._counts["reuse_detections"] += 1
                if not family.revoked:
                    family.revoked = True
                    self._counts["families_revoked"] += 1
                raise Refusal(403, "invalid_grant", INVALID_REFRESH_TOKEN)
            if family.revoked:
                raise Refusal(403, "invalid_grant", INVALID_REFRESH_TOKEN)
            excess = [s for s in scope.split() if s not in family.scope.split()]
            if excess:  # checked before the token is used up: a bad request costs nothing
                raise Refusal(400, "invalid_scope", f"Scope exceeds what the login was granted: {' '.join(excess)}")
            if token.used_at is None:
                token.used_at = now
            self._counts["refreshes"] += 1
            new_token = self._new_refresh_token(family)
            return Grant(family.user, client_id, family.audience, scope or family.scope, new_token)

    def revoke_token(self, refresh_token: str, client_id: str) -> bool:
        """RFC 7009: revoke the login of ``refresh_token`` if it is one of ``client_id``'s."""
        with self._lock:
            token = self._refresh_tokens.get(_digest(refresh_token))
            if token is None or token.family.client_id != client_id or token.family.revoked:
                return False
            token.family.revoked = True
            self._counts["families_revoked"] += 1
            return True

    def revoke_families(self, user: str | SandboxUser | None = None) -> int:
        """Revoke every login, or every login of ``user`` (subject or e-mail); the number revoked.
        ``ValueError`` for an unknown user."""
        if user is not None and not isinstance(user, SandboxUser):
            person = self._config.user(user)
            if person is None:
                raise ValueError(f"the sandbox has no user {user!r}")
            user = person
        with self._lock:
            families = [f for f in self._families if not f.revoked and (user is None or f.user == user)]
            for family in families:
                family.revoked = True
            self._counts["families_revoked"] += len(families)
            return len(families)

    # --- helpers (called with the lock held) -------------------------------------------

    def _new_refresh_token(self, family: Family) -> str:
        token = secrets.token_urlsafe(CREDENTIAL_BYTES)
        self._refresh_tokens[_digest(token)] = _RefreshToken(family)
        return token

    def _has_expired(self, family: Family, now: float) -> bool:
        return now - family.created_at >= self._config.refresh_token_lifetime

    @staticmethod
    def _is_pending(login: _DeviceLogin, now: float) -> bool:
        return login.status == "pending" and now < login.expires_at
