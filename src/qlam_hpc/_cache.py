"""What a shared cache entry holds, how it is encoded, and what to do with it. Pure: no I/O.

One entry per identity (token endpoint, client id, audience, scope). It holds
the current token and, after a failed fetch, a *failure record*: the error the
identity provider gave, whose credentials it was given for, and until when the
other processes should repeat it instead of asking again. A failure record is
ignored once its cool-down ends or when the credentials differ, so a rotated
secret is tried at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from . import _errors
from ._tokens import Token

FORMAT = 1


@dataclass(frozen=True, slots=True)
class Identity:
    """What a token is for; one cache entry per identity."""

    token_url: str
    client_id: str
    audience: str
    scope: str | None = None

    def key(self) -> str:
        """A file-name-safe key: the first 32 hex digits of a SHA-256 of the identity."""
        import hashlib

        material = "\0".join((self.token_url, self.client_id, self.audience, self.scope or ""))
        return hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Failure:
    """A fetch failure shared with the other processes until ``until`` (epoch seconds)."""

    error: str  # class name in qlam_hpc._errors
    args: tuple
    at: float
    until: float
    credentials: str  # fingerprint of the credentials the IdP refused
    by: str | None = None

    def active(self, now: float, credentials: str) -> bool:
        return now < self.until and credentials == self.credentials

    def to_error(self) -> _errors.QlamError:
        cls = getattr(_errors, self.error, None)
        if not (isinstance(cls, type) and issubclass(cls, _errors.QlamError)):
            return _errors.QlamError(f"a previous token request failed ({self.error})")
        try:
            return cls(*self.args)
        except TypeError:
            return _errors.QlamError(f"a previous token request failed ({self.error})")

    @classmethod
    def from_error(
        cls, error: _errors.QlamError, *, at: float, cooldown: float, credentials: str, by: str | None
    ) -> Failure:
        reduced = error.__reduce__()
        args = reduced[1] if isinstance(reduced, tuple) and len(reduced) > 1 else (error.message,)
        return cls(type(error).__name__, tuple(args), at, at + cooldown, credentials, by)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    identity: Identity
    token: Token | None = None
    failure: Failure | None = None

    def with_token(self, token: Token) -> CacheEntry:
        return replace(self, token=token, failure=None)

    def with_failure(self, failure: Failure) -> CacheEntry:
        return replace(self, failure=failure)


def cached_token(
    entry: CacheEntry | None, now: float, min_ttl: float = 0.0, rejected: str | None = None
) -> Token | None:
    """The entry's token if it may be handed out: usable for ``min_ttl`` and not the one rejected."""
    if entry is None or entry.token is None:
        return None
    token = entry.token
    if rejected is not None and token.access_token == rejected:
        return None
    return token if token.usable(now, min_ttl) else None


def fallback_token(entry: CacheEntry | None, now: float, rejected: str | None = None) -> Token | None:
    """A still-valid token to hand out, with a warning, when a refresh failed.

    The one exception to the refresh margin: a token inside its margin is still valid,
    and a job is better served by it than by an error. Half the margin must remain
    (30 s of a 24 h token), so the token does not expire on its way to the API.
    """
    if entry is None or entry.token is None:
        return None
    token = entry.token
    if rejected is not None and token.access_token == rejected:
        return None
    return token if token.remaining(now) > token.margin / 2 else None


def active_failure(entry: CacheEntry | None, now: float, credentials: str) -> Failure | None:
    if entry is None or entry.failure is None:
        return None
    return entry.failure if entry.failure.active(now, credentials) else None


def cooldown_for(error: _errors.QlamError, *, rejected_cooldown: float, transient_cooldown: float) -> float:
    """How long other processes repeat this failure instead of asking the IdP again.

    Rejected credentials will not fix themselves: repeat them for the long cool-down.
    A rate limit lasts as long as the IdP said.  Other failures (unreachable, garbage
    answers) are repeated only briefly, so a job array started during an outage does
    not queue up behind the lock for minutes, one retry budget after another.
    """
    if isinstance(error, _errors.OAuthError):
        return rejected_cooldown
    if isinstance(error, _errors.RateLimited) and error.retry_after:
        return min(error.retry_after, rejected_cooldown)
    return transient_cooldown


# --- encoding -----------------------------------------------------------------------------


def encode_entry(entry: CacheEntry) -> bytes:
    data: dict = {"format": FORMAT, **_identity_dict(entry.identity)}
    if entry.token is not None:
        t = entry.token
        data["token"] = {
            "access_token": t.access_token,
            "token_type": t.token_type,
            "expires_at": t.expires_at,
            "obtained_at": t.obtained_at,
            "scope": t.scope,
            "obtained_by": t.obtained_by,
        }
    if entry.failure is not None:
        f = entry.failure
        data["failure"] = {
            "error": f.error,
            "args": list(f.args),
            "at": f.at,
            "until": f.until,
            "credentials": f.credentials,
            "by": f.by,
        }
    return json.dumps(data, separators=(",", ":")).encode()


def decode_entry(raw: bytes, identity: Identity) -> CacheEntry:
    """Parse an entry; ``ValueError`` if it is corrupt or belongs to another identity."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("unknown format")
    if {k: data.get(k) for k in _identity_dict(identity)} != _identity_dict(identity):
        raise ValueError("entry belongs to another identity")
    try:
        token = _decode_token(data.get("token"))
        failure = _decode_failure(data.get("failure"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed field ({exc.__class__.__name__})") from None
    return CacheEntry(identity, token, failure)


def _identity_dict(identity: Identity) -> dict:
    return {
        "token_url": identity.token_url,
        "client_id": identity.client_id,
        "audience": identity.audience,
        "scope": identity.scope,
    }


def _decode_token(data) -> Token | None:
    if data is None:
        return None
    access_token = data["access_token"]
    if not isinstance(access_token, str) or not access_token:
        raise ValueError("access_token")
    return Token(
        access_token=access_token,
        expires_at=float(data["expires_at"]),
        obtained_at=float(data["obtained_at"]),
        token_type=str(data.get("token_type") or "Bearer"),
        scope=data.get("scope"),
        obtained_by=data.get("obtained_by"),
    )


def _decode_failure(data) -> Failure | None:
    if data is None:
        return None
    return Failure(
        error=str(data["error"]),
        args=tuple(data["args"]),
        at=float(data["at"]),
        until=float(data["until"]),
        credentials=str(data["credentials"]),
        by=data.get("by"),
    )


__all__ = [
    "Identity",
    "Failure",
    "CacheEntry",
    "cached_token",
    "fallback_token",
    "active_failure",
    "cooldown_for",
    "encode_entry",
    "decode_entry",
]
