"""What a shared cache entry holds, how it is encoded, and what to do with it. Pure: no I/O.

One entry per identity (token endpoint, client id, audience, scope, and in user
context the local user). It holds the current token and, after a failed fetch, a
*failure record*: the error the identity provider gave, whose credentials it was
given for, and until when the other processes should repeat it instead of asking
again. A failure record is ignored once its cool-down ends or when the
credentials differ, so a rotated secret is tried at once.

In user context the entry also holds the *login*: the refresh token, when the
user logged in, until when the login lasts and who it is. A refresh token
rotates (each use returns the next one and spends the old), so it must be
published with the access token it came with, in one atomic write; and before
it is spent, the refresher writes an *intent* (who, since when), so that the
next holder knows when a refresh was cut short (see ``_provider.py``).

The entry is text, one ``name=value`` per line, readable with ``cat`` and parsed
with ``str.partition``: the warm ``qlam-hpc token`` path then needs neither
``json`` nor ``re``. Only the failure record, which carries free text, is JSON.
"""

from __future__ import annotations

from collections import namedtuple

from . import _errors
from ._tokens import Token

TYPE_CHECKING = False  # typing itself costs the warm token path milliseconds
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import Any, NamedTuple, Protocol

    from ._settings import Settings

    class _Digest(Protocol):
        def hexdigest(self) -> str: ...

    # The fields as the type checker reads them; the namedtuples below are what runs.
    class _IdentityFields(NamedTuple):
        token_url: str
        client_id: str
        audience: str
        scope: str | None = None
        principal: str | None = None

    class _FailureFields(NamedTuple):
        error: str
        args: tuple[Any, ...]
        at: float
        until: float
        credentials: str
        by: str | None = None

    class _LoginFields(NamedTuple):
        refresh_token: str
        logged_in_at: float
        expires_at: float
        subject: str | None = None
        email: str | None = None

    class _IntentFields(NamedTuple):
        at: float
        by: str

    class _CacheEntryFields(NamedTuple):
        identity: Identity
        token: Token | None = None
        failure: Failure | None = None
        login: Login | None = None
        intent: Intent | None = None
        confirm_after: float | None = None
        keeper: str | None = None

else:
    _IdentityFields = namedtuple(
        "_IdentityFields", "token_url client_id audience scope principal", defaults=(None, None)
    )
    _FailureFields = namedtuple("_FailureFields", "error args at until credentials by", defaults=(None,))
    _LoginFields = namedtuple(
        "_LoginFields", "refresh_token logged_in_at expires_at subject email", defaults=(None, None)
    )
    _IntentFields = namedtuple("_IntentFields", "at by")
    _CacheEntryFields = namedtuple(
        "_CacheEntryFields",
        "identity token failure login intent confirm_after keeper",
        defaults=(None, None, None, None, None, None),
    )

MAGIC = "qlam-hpc token cache v1"
_END = "end"

# How far in the reader's future a failure record may be dated and still be believed:
# ordinary NTP-level skew between nodes, not a clock that is days out.
MAX_CLOCK_SKEW = 60.0

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
# RFC 6749 appendix A.17: refresh-token = 1*VSCHAR, VSCHAR = %x20-7E
_VSCHAR = bytes(range(0x20, 0x7F))

_IDENTITY_FIELDS = _IdentityFields._fields


class Identity(_IdentityFields):
    """What a token is for; one cache entry per identity. An empty scope means none.

    ``principal`` is None for M2M (the client is the principal), ``device:<user>``
    in user context, so that two people who share a store never share a login, and
    ``exchange:<iss>|<sub>`` for token exchange (the subject token's claims, read from
    its source), so that two subjects never share a token and one subject's processes do.
    """

    __slots__ = ()

    @classmethod
    def of(cls, settings: Settings) -> Identity:
        principal = f"device:{local_user()}" if settings.auth_flow == "device" else None
        if settings.auth_flow == "token-exchange":
            from ._exchange import subject_principal

            principal = subject_principal(settings)
        return cls(settings.token_url, settings.client_id, settings.audience, settings.scope, principal)

    def key(self) -> str:
        """A file-name-safe key: the first 32 hex digits of a SHA-256 of the identity."""
        parts = [self.token_url, self.client_id, self.audience, self.scope or ""]
        if self.principal:  # M2M keys stay what they were
            parts.append(self.principal)
        return _sha256("\0".join(parts).encode()).hexdigest()[:32]


def local_user() -> str:
    import os

    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid{os.geteuid()}"


def _sha256(data: bytes) -> _Digest:
    global _sha256_constructor
    if _sha256_constructor is None:
        _sha256_constructor = _builtin_sha256()
    return _sha256_constructor(data)


_sha256_constructor: Callable[[bytes], _Digest] | None = None


def _builtin_sha256() -> Callable[[bytes], _Digest]:
    # hashlib loads OpenSSL, a few milliseconds the warm token path cannot spare; the
    # interpreter's built-in SHA-256 gives the same digest. Looked up once: a failed
    # import is not cached by Python and would search sys.path on every call.
    try:  # the interpreter's private modules have no type stubs
        from _sha2 import sha256  # type: ignore[import-not-found]  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found]  # Python <= 3.11
        except ImportError:
            from hashlib import sha256
    constructor: Callable[[bytes], _Digest] = sha256
    return constructor


class Failure(_FailureFields):
    """A fetch failure shared with the other processes until ``until`` (epoch seconds).

    ``error`` is the class name in ``qlam_hpc._errors`` and ``args`` rebuild it;
    ``credentials`` is the fingerprint of the credentials the IdP refused.

    ``at`` and ``until`` are the *writer's* clock, and whoever can write the store writes
    them: a reader believes a record only as far as it would have written it itself. A
    record dated more than ``MAX_CLOCK_SKEW`` in the reader's future is ignored (a node
    whose clock ran two days ahead once made every process repeat ``invalid_client`` for
    48 h), and one standing longer than the reader's longest cool-down ends at
    ``at + longest``.
    """

    __slots__ = ()

    def ends(self, longest: float) -> float:
        """When the record stops standing, for a reader whose longest cool-down is ``longest``."""
        return min(self.until, self.at + longest)

    def stands(self, now: float, *, longest: float) -> bool:
        return self.at <= now + MAX_CLOCK_SKEW and now < self.ends(longest)

    def active(self, now: float, matches: Callable[[str], object], *, longest: float) -> bool:
        """Does the record stand, for the credentials in use? ``matches(recorded)`` compares
        them with the recorded fingerprint; it may be slow (a KDF), so it is asked last."""
        return self.stands(now, longest=longest) and bool(matches(self.credentials))

    def to_error(self) -> _errors.QlamError:
        cls = getattr(_errors, self.error, None)
        if isinstance(cls, type) and issubclass(cls, _errors.QlamError):
            try:
                return cls(*self.args)
            except TypeError:
                pass
        return _errors.QlamError(f"a previous token request failed ({self.error})")

    @classmethod
    def from_error(
        cls, error: _errors.QlamError, *, at: float, cooldown: float, credentials: str, by: str | None
    ) -> Failure:
        reduced = error.__reduce__()
        args = reduced[1] if isinstance(reduced, tuple) and len(reduced) > 1 else (error.message,)
        return cls(type(error).__name__, tuple(args), at, at + cooldown, credentials, by)


class Login(_LoginFields):
    """A user's login: the current refresh token, when the user logged in, when the login
    ends (the refresh token's absolute lifetime: rotation does not extend it), and who it is."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Login(subject={self.subject!r}, expires_at={self.expires_at!r}, refresh_token=<hidden>)"

    @property
    def who(self) -> str:
        return self.email or self.subject or "an unknown user"

    def rotated(self, refresh_token: str | None, lifetime: float | None, now: float) -> Login:
        """The login after a refresh: the next refresh token (or this one, where the server
        does not rotate), and the end the server gave, else the same absolute end."""
        expires_at = now + lifetime if lifetime is not None else self.expires_at
        return self._replace(refresh_token=refresh_token or self.refresh_token, expires_at=expires_at)


class Intent(_IntentFields):
    """A refresh under way: written before the refresh token is spent, cleared with its result."""

    __slots__ = ()


class CacheEntry(_CacheEntryFields):
    """One identity's shared state. In user context, ``confirm_after`` is set by a refresh that
    took over from a refresher cut short: that one's request may still reach the server after
    ours and make it revoke the login (reuse detection), so once its deadline has passed the
    next process refreshes once more, to learn at once whether the login survived. ``keeper``
    names the ``qlam-hpc auth keep-fresh`` that refreshes the login, where one does."""

    __slots__ = ()

    def with_token(self, token: Token) -> CacheEntry:
        return self._replace(token=token, failure=None)

    def with_failure(self, failure: Failure) -> CacheEntry:
        return self._replace(failure=failure)

    def with_login(self, login: Login | None, token: Token | None) -> CacheEntry:
        """The entry after a login or a refresh: the login and its access token, nothing pending."""
        return self._replace(login=login, token=token, failure=None, intent=None, confirm_after=None)


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


def active_failure(
    entry: CacheEntry | None, now: float, matches: Callable[[str], object], *, longest: float
) -> Failure | None:
    """The entry's failure record if it stands at ``now`` for the credentials ``matches`` accepts."""
    if entry is None or entry.failure is None:
        return None
    return entry.failure if entry.failure.active(now, matches, longest=longest) else None


def foreign_token(token: Token, identity: Identity, now: float, *, subject: str | None = None) -> str | None:
    """Why a token read from a store that others can write is not ours to hand out, or None.

    Whoever can write a shared store (Redis) can plant an entry; the token in it must be a
    JWT whose claims name this client (``azp``, RFC 9068's ``client_id``, Okta's ``cid``,
    or Auth0's ``sub`` = ``<client>@clients`` for M2M) and this audience (``aud``, a string
    or a list), and have not expired by its own ``exp``. The claims are *not verified*: a
    forged token passes, but it is only ever sent to the QLAM API, which refuses it (one
    401, then one refresh through the cache). What the check stops is the planted token
    that works: someone else's, for their client, which would send the user's tasks and
    results to their account. An opaque (non-JWT) token cannot be checked, so it is refused.
    In user context ``subject`` is the login's: another person's token for the same public
    client is refused too. Entries in such stores are also sealed (``_sealing``); this check
    is the second line, for a store made without a seal.
    """
    from ._tokens import unverified_claims

    claims = unverified_claims(token.access_token)
    if claims is None:
        return "not a JWT"
    client = identity.client_id
    if (
        client not in (claims.get("azp"), claims.get("client_id"), claims.get("cid"))
        and claims.get("sub") != f"{client}@clients"
    ):
        return "it names another client, or none"
    audiences = claims.get("aud")
    if identity.audience not in (audiences if isinstance(audiences, list) else [audiences]):
        return "it is for another audience, or none"
    if subject is not None and claims.get("sub") != subject:
        # Every device login shares one public client and audience: only the subject tells
        # one person's token from another's.
        return "it is for another subject than the login's"
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return "it has no exp"
    if exp <= now:
        return "it has expired by its own exp"
    return None


def identity_of(raw: bytes) -> Identity | None:
    """The identity an encoded entry names, or None if it is not an entry: lets a store
    tell whose an entry is without knowing the identity its key was hashed from."""
    try:
        lines = raw.decode().split("\n")
    except UnicodeDecodeError:
        return None
    if lines[0] != MAGIC or lines[-2:] != [_END, ""]:
        return None
    fields = dict(line.partition("=")[::2] for line in lines[1:-2])
    token_url, client_id, audience, scope, principal = (fields.get(name) or None for name in _IDENTITY_FIELDS)
    if token_url is None or client_id is None or audience is None:
        return None
    return Identity(token_url, client_id, audience, scope, principal)


def cooldown_for(error: _errors.QlamError, *, rejected_cooldown: float, transient_cooldown: float) -> float:
    """How long other processes repeat this failure instead of asking the IdP again.

    Rejected credentials will not fix themselves: repeat them for the long cool-down.
    A rate limit lasts as long as the IdP said.  Other failures (unreachable, garbage
    answers) are repeated only briefly, so a job array started during an outage does
    not queue up behind the lock for minutes, one retry budget after another.
    """
    if isinstance(error, _errors.OAuthError):
        return rejected_cooldown
    if isinstance(error, _errors.RateLimited) and error.retry_after is not None:
        return min(error.retry_after, rejected_cooldown)
    return transient_cooldown


# --- encoding -----------------------------------------------------------------------------


def encode_entry(entry: CacheEntry) -> bytes:
    fields = dict(zip(_IDENTITY_FIELDS, entry.identity, strict=True))
    if fields["principal"] is None:  # M2M entries read the same in every release
        del fields["principal"]
    token = entry.token
    if token is not None:
        fields.update(
            access_token=token.access_token,
            token_type=token.token_type,
            expires_at=repr(float(token.expires_at)),
            obtained_at=repr(float(token.obtained_at)),
            token_scope=token.scope,
            obtained_by=token.obtained_by,
        )
    login = entry.login
    if login is not None:
        fields.update(
            refresh_token=login.refresh_token,
            login_at=repr(float(login.logged_in_at)),
            login_expires_at=repr(float(login.expires_at)),
            login_subject=login.subject,
            login_email=login.email,
        )
    if entry.intent is not None:
        fields.update(intent_at=repr(float(entry.intent.at)), intent_by=entry.intent.by)
    if entry.confirm_after is not None:
        fields["confirm_after"] = repr(float(entry.confirm_after))
    if entry.keeper is not None:
        fields["kept_by"] = entry.keeper
    if entry.failure is not None:
        import json

        fields["failure"] = json.dumps(entry.failure._asdict(), separators=(",", ":"))
    lines = [MAGIC]
    for name, value in fields.items():
        text = "" if value is None else str(value)
        if "\n" in text or "\r" in text:
            raise ValueError(f"cache field {name} holds a line break")
        lines.append(f"{name}={text}")
    lines.append(_END)  # a copy cut short, even at a line boundary, is never mistaken for an entry
    return ("\n".join(lines) + "\n").encode()


MAX_ENTRY_BYTES = 64 * 1024  # a real entry is a few KiB: anything larger was not written by us


def decode_entry(raw: bytes, identity: Identity) -> CacheEntry:
    """Parse an entry; ``ValueError`` if it is corrupt or belongs to another identity."""
    if len(raw) > MAX_ENTRY_BYTES:
        raise ValueError("larger than any entry")
    try:
        lines = raw.decode().split("\n")
    except UnicodeDecodeError:
        raise ValueError("not text") from None
    if lines[0] != MAGIC or lines[-2:] != [_END, ""]:
        raise ValueError("unknown format or truncated")
    fields: dict[str, str] = {}
    for line in lines[1:-2]:
        name, equals, value = line.partition("=")
        if not equals:
            raise ValueError("a line without '='")
        fields[name] = value
    if tuple(fields.get(name) or None for name in _IDENTITY_FIELDS) != tuple(v or None for v in identity):
        raise ValueError("entry belongs to another identity")
    try:
        return CacheEntry(
            identity,
            _decode_token(fields),
            _decode_failure(fields.get("failure")),
            _decode_login(fields),
            Intent(_finite(fields["intent_at"]), fields.get("intent_by") or "") if "intent_at" in fields else None,
            _finite(fields["confirm_after"]) if "confirm_after" in fields else None,
            fields.get("kept_by") or None,
        )
    except (KeyError, TypeError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested to poison
        raise ValueError(f"malformed field ({exc.__class__.__name__})") from None


def _decode_token(fields: dict[str, str]) -> Token | None:
    if "access_token" not in fields:
        return None
    if not is_b64token(fields["access_token"]):  # an older release's, or planted: no header can carry it
        raise ValueError("access_token")
    return Token(
        access_token=fields["access_token"],
        expires_at=_finite(fields["expires_at"]),
        obtained_at=_finite(fields["obtained_at"]),
        token_type=fields.get("token_type") or "Bearer",
        scope=fields.get("token_scope") or None,
        obtained_by=fields.get("obtained_by") or None,
    )


def _decode_login(fields: dict[str, str]) -> Login | None:
    if "refresh_token" not in fields:
        return None
    if not is_vschar(fields["refresh_token"]):
        raise ValueError("refresh_token")
    return Login(
        refresh_token=fields["refresh_token"],
        logged_in_at=_finite(fields["login_at"]),
        expires_at=_finite(fields["login_expires_at"]),
        subject=fields.get("login_subject") or None,
        email=fields.get("login_email") or None,
    )


def is_b64token(text: object) -> bool:
    """An RFC 6750 ``b64token``: what an ``Authorization: Bearer`` header can carry.

    Tested with ``bytes.translate`` rather than ``re``: this runs on the warm ``qlam-hpc
    token`` path, for every entry read (about 1 us for a 800-character JWT; ``str.strip``
    with the alphabet took 13 us).
    """
    if not isinstance(text, str) or not text.isascii():
        return False
    body = text.rstrip("=")
    return bool(body) and not body.encode().translate(None, _B64TOKEN)


def is_vschar(text: object) -> bool:
    """An RFC 6749 refresh token: one or more printable ASCII characters (space included)."""
    return isinstance(text, str) and text.isascii() and bool(text) and not text.encode().translate(None, _VSCHAR)


def _finite(text: str | float) -> float:
    number = float(text)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return number


def _decode_failure(text: str | None) -> Failure | None:
    if not text:
        return None
    import json

    data = json.loads(text)
    return Failure(
        error=str(data["error"]),
        args=tuple(data["args"]),
        at=_finite(data["at"]),
        until=_finite(data["until"]),
        credentials=str(data["credentials"]),
        by=data.get("by"),
    )
