"""OAuth2 client_credentials messages: building the request, reading the answer. Pure: no I/O.

The HTTP adapter (``_http.py``) sends what ``token_request`` builds and hands the
answer to ``parse_token_response``; retry timing is decided here too, so every
rule about the identity provider's protocol sits in one place and is tested
without a network.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from ._cache import is_b64token, is_vschar
from ._client_auth import credential_material
from ._errors import AuthError, InvalidTokenResponse, oauth_error
from ._settings import RetryPolicy, Settings
from ._tokens import Token

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from ._client_auth import ClientSecretBasic, ClientSecretPost, PrivateKeyJwt

# A token that claims to live longer than a year, or less than a second, is a bug
# somewhere: caching it would either pin a broken token or hammer the IdP.
MIN_EXPIRES_IN = 1
MAX_EXPIRES_IN = 366 * 86400


@dataclass(frozen=True)
class TokenRequest:
    url: str
    form: dict[str, str]
    headers: dict[str, str]


# The fingerprint's KDF: a failure record is readable by whoever can read the store, so a
# fingerprint must not let them test guesses of a weak secret at SHA-256 speed. scrypt at
# N=2**14, r=8 (16 MiB, about 20-40 ms, see bench/fingerprint_cost.py) is computed only
# when a fetch fails or a standing record must be compared, never on the warm path.
# PBKDF2 stands in where Python's OpenSSL has no scrypt (LibreSSL); both are read.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 2**20, "dklen": 16}
_PBKDF2_ROUNDS = 600_000


def _extra(extra: str) -> bytes:
    """What a fingerprint covers besides the client's credentials (token exchange: the subject
    token, so a record made for an earlier one does not stand); nothing changes without it."""
    return b"\0extra\0" + extra.encode() if extra else b""


def _derive(kdf: str, salt: bytes, material: bytes) -> bytes | None:
    import hashlib

    if kdf == "scrypt1":
        try:
            return hashlib.scrypt(material, salt=salt, **_SCRYPT)
        except (AttributeError, ValueError):  # no scrypt in this OpenSSL, or too little memory
            return None
    if kdf == "pbkdf2-1":
        return hashlib.pbkdf2_hmac("sha256", material, salt, _PBKDF2_ROUNDS, dklen=16)
    return None


def credentials_fingerprint(settings: Settings, *, extra: str = "") -> str:
    """Names the credentials without revealing them, so a shared failure record can tell
    whether it was written for the credentials in use now (a rotated secret or key differs).

    ``<kdf>$<salt>$<digest>``: a random salt per record and a deliberately slow KDF, so
    that whoever reads the store cannot precompute, nor test a guess cheaply. Compare
    with ``credentials_match``, never with ``==`` (two fingerprints of one secret differ).
    It covers the credential in use only (the private key's PEM for private_key_jwt,
    else the secret), read from its source if ``settings`` still hold a reference: the
    provider calls it only when a fetch has failed.
    """
    import os

    material = credential_material(settings) + _extra(extra)
    salt = os.urandom(16)
    for kdf in ("scrypt1", "pbkdf2-1"):
        digest = _derive(kdf, salt, material)
        if digest is not None:
            return f"{kdf}${salt.hex()}${digest.hex()}"
    raise AssertionError("unreachable: PBKDF2 is always available")


def credentials_match(settings: Settings, recorded: object, *, extra: str = "") -> bool:
    """Was ``recorded`` (a ``credentials_fingerprint``) made for these credentials?

    False for anything else: an unsalted fingerprint of an older release (the record is
    then ignored, and the IdP asked once more), a broken one, a KDF this Python lacks.
    """
    import hmac

    kdf, _, rest = recorded.partition("$") if isinstance(recorded, str) else ("", "", "")
    salt_hex, _, digest_hex = rest.partition("$")
    try:
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except ValueError:
        return False
    if len(salt) < 16 or len(digest) < 16:
        return False
    derived = _derive(kdf, salt, credential_material(settings) + _extra(extra))
    return derived is not None and hmac.compare_digest(derived, digest)


def token_request(
    settings: Settings,
    *,
    endpoint: str | None = None,
    auth: ClientSecretPost | ClientSecretBasic | PrivateKeyJwt | None = None,
    now: float | None = None,
    assertion_audience: str | None = None,
) -> TokenRequest:
    """The client_credentials request for ``endpoint`` (default: ``settings.token_url``).

    ``auth`` is a ``_client_auth`` method object (default: the one the settings choose,
    without discovery): client_secret_post puts the secret in the body, Auth0's way.
    The audience goes out as Auth0's ``audience``, or as RFC 8707's ``resource``.
    ``now`` dates a private_key_jwt assertion, whose ``aud`` is ``assertion_audience``,
    else ``settings.assertion_audience``, else the endpoint.
    """
    import time

    from ._client_auth import choose_method, client_authentication

    if auth is None:
        auth = client_authentication(settings, choose_method(settings))
    url = endpoint or settings.token_url
    form = {"grant_type": "client_credentials", settings.audience_param or "audience": settings.audience}
    if settings.scope:
        form["scope"] = settings.scope
    headers = {"Accept": "application/json"}
    configured = (
        settings.assertion_audience if settings.assertion_audience != "issuer" else None
    )  # "issuer": discovered
    audience = assertion_audience or configured or url
    auth.apply(form, headers, audience=audience, now=time.time() if now is None else now)
    return TokenRequest(url, form, headers)


def parse_token_response(
    status: int, headers: Mapping[str, str], body: bytes, url: str, obtained_at: float, obtained_by: str | None
) -> Token:
    """A ``Token`` from a 2xx answer; an ``OAuthError`` or ``InvalidTokenResponse`` otherwise.

    ``obtained_at`` is the time the request was *sent*, so the computed expiry errs early.
    5xx and 429 are the caller's to retry before calling this.
    """
    content_type = headers.get("content-type", "").lower()
    data = _json_object(body, url)
    if status >= 400:
        raise _refusal(status, headers, body, url, data, ", not an OAuth error: is AUTH_BASE_URL right?")
    if data is None:
        raise InvalidTokenResponse(
            f"identity provider {url} answered HTTP {status} {_what(content_type, body)}, not a token"
        )
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token.strip():
        raise InvalidTokenResponse(f"identity provider {url} answered without an access_token")
    if not is_b64token(access_token):
        # RFC 6750's b64token, ASCII only: anything else would be cached and shared, then
        # fail in every process that builds the Authorization header.
        raise InvalidTokenResponse(f"identity provider {url} answered with a malformed access_token")
    token_type = data.get("token_type") or "Bearer"
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise InvalidTokenResponse(f"identity provider {url} issued a {token_type!r} token, not a Bearer token")
    expires_at = _expiry(access_token, obtained_at + _expires_in(data.get("expires_in"), url), obtained_at)
    scope = data.get("scope")
    scope = " ".join(scope.split()) or None if isinstance(scope, str) else None
    return Token(
        access_token=access_token,
        expires_at=expires_at,
        obtained_at=obtained_at,
        token_type="Bearer",
        scope=scope,
        obtained_by=obtained_by,
    )


def _expiry(access_token: str, from_expires_in: float, obtained_at: float) -> float:
    """``sent + expires_in``, moved back to the JWT's own ``exp`` when that is up to 2 s earlier.

    IdPs write ``iat``/``exp`` in whole seconds, so a token can expire up to a second
    before ``sent + expires_in``; short-lived tokens notice. A larger difference means
    the two clocks disagree, and then ``expires_in``, measured on our clock, is right.
    """
    from ._tokens import unverified_claims

    exp = (unverified_claims(access_token) or {}).get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and 0 < from_expires_in - exp <= 2:
        return max(float(exp), obtained_at)
    return from_expires_in


def _refusal(
    status: int, headers: Mapping[str, str], body: bytes, url: str, data: dict[str, Any] | None, hint: str
) -> AuthError:
    """The error for a 4xx answer: the RFC 6749 error it carries, else what it was, and ``hint``."""
    if data is not None and isinstance(data.get("error"), str):
        description = data.get("error_description")
        return oauth_error(data["error"], description if isinstance(description, str) else None, status, url)
    what = _what(headers.get("content-type", "").lower(), body)
    return InvalidTokenResponse(f"identity provider {url} answered HTTP {status} {what}{hint}")


#: The largest answer read from the identity provider (``_http`` stops reading there).
ANSWER_LIMIT = 64 * 1024


def _json_object(body: bytes, url: str) -> dict[str, Any] | None:
    """The JSON object ``body`` holds, or None when it holds none; ``InvalidTokenResponse``
    when it is JSON over the size or depth limits (which ``json`` alone would meet with a
    ``RecursionError``)."""
    from ._jsonlimits import JsonLimitError, parse_json

    try:
        data = parse_json(body, max_bytes=ANSWER_LIMIT)
    except JsonLimitError as exc:
        raise InvalidTokenResponse(f"identity provider {url} answered with {exc}; refusing it") from None
    except ValueError:  # UnicodeDecodeError included
        return None
    return data if isinstance(data, dict) else None


def _what(content_type: str, body: bytes) -> str:
    head = body.lstrip()[:64].lower()
    if "html" in content_type or head.startswith((b"<!doctype", b"<html")):
        return "with an HTML page"
    if not body.strip():
        return "with an empty body"
    if "json" in content_type:
        return "with malformed JSON"
    return f"with a {content_type or 'untyped'} body"


def _expires_in(value: object, url: str) -> float:
    """RFC 6749 says a number of seconds. A JSON number is taken (a bool is not one, though
    Python calls it an int: ``true`` used to be 1 s); so is a string of ASCII digits, which
    some Auth0-compatible servers send. Nothing else (``"1e3"``, ``"nan"``, ``" 60"``)."""
    if value is None:
        raise InvalidTokenResponse(f"identity provider {url} answered without expires_in")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        seconds: float = int(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value
    else:
        raise InvalidTokenResponse(f"identity provider {url} answered with expires_in={value!r:.40}")
    if not (MIN_EXPIRES_IN <= seconds <= MAX_EXPIRES_IN):  # compared before float(): 10**400 is an int
        raise InvalidTokenResponse(f"identity provider {url} answered with an absurd expires_in={value!r:.40}")
    return float(seconds)


# --- retry timing ---------------------------------------------------------------------------


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_delay, initial * 2**attempt)]."""
    ceiling = min(policy.max_delay, policy.initial_delay * (2**attempt))
    return (rng or random).uniform(0, ceiling)


def server_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the server asked us to wait, from ``Retry-After`` or ``X-RateLimit-Reset``.

    Capped at a year: a server that says ``inf`` means "not soon", not an overflow.
    """
    retry_after = headers.get("retry-after")
    if retry_after:
        try:
            return _bounded_wait(float(retry_after))
        except ValueError:
            try:
                return _bounded_wait(parsedate_to_datetime(retry_after).timestamp() - now)
            except (TypeError, ValueError):
                pass
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            return _bounded_wait(float(reset) - now)
        except ValueError:
            pass
    return None


def _bounded_wait(seconds: float) -> float:
    if seconds != seconds:
        raise ValueError("NaN")
    return min(max(0.0, seconds), MAX_EXPIRES_IN)


# --- user context: device authorization (RFC 8628), refresh (RFC 6749 section 6), revocation (RFC 7009)
#
# A user-context client is *public*: it authenticates with its client_id alone, as QuEra's
# tools and any native app do. Only standard parameters are sent; Auth0 reads ``audience``
# from the device authorization request, other servers ignore it (RFC 8707 ``resource``
# when QLAM_AUDIENCE_PARAM says so).

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 section 3.2: without ``interval``, poll every 5 seconds; section 3.5: slow_down adds 5.
DEFAULT_POLL_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float

    def __repr__(self) -> str:  # the device code is a credential until it expires
        return f"DeviceAuthorization(user_code={self.user_code!r}, verification_uri={self.verification_uri!r})"


@dataclass(frozen=True)
class UserTokens:
    """A user-context token answer: the access token, the next refresh token (if any), the
    ID token's claims (unverified: for display and attribution only), and the refresh
    token's lifetime where the server says it (``refresh_token_expires_in`` or Keycloak's
    ``refresh_expires_in``)."""

    token: Token
    refresh_token: str | None
    id_claims: dict[str, Any]
    refresh_expires_in: float | None

    def __repr__(self) -> str:
        return f"UserTokens(token={self.token!r}, refresh_token={'<hidden>' if self.refresh_token else None})"


def _form(url: str, form: dict[str, str]) -> TokenRequest:
    return TokenRequest(url, form, {"Accept": "application/json"})


def device_authorization_request(settings: Settings, url: str) -> TokenRequest:
    form = {"client_id": settings.client_id, "scope": settings.scope or ""}
    form[settings.audience_param or "audience"] = settings.audience
    return _form(url, form)


def device_token_request(settings: Settings, url: str, device_code: str) -> TokenRequest:
    return _form(url, {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code, "client_id": settings.client_id})


def refresh_request(settings: Settings, url: str, refresh_token: str) -> TokenRequest:
    # No scope: the refreshed token keeps the login's (RFC 6749 section 6).
    return _form(url, {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": settings.client_id})


def revocation_request(settings: Settings, url: str, refresh_token: str) -> TokenRequest:
    return _form(url, {"token": refresh_token, "token_type_hint": "refresh_token", "client_id": settings.client_id})


def parse_device_authorization(status: int, headers: Mapping[str, str], body: bytes, url: str) -> DeviceAuthorization:
    """The device authorization answer (RFC 8628 section 3.2), or a one-line error."""
    data = _json_object(body, url)
    if status >= 400:
        raise _refusal(
            status, headers, body, url, data, ": does it support the device flow (QLAM_DEVICE_AUTHORIZATION_URL)?"
        )
    if data is None:
        raise InvalidTokenResponse(f"identity provider {url} answered without a JSON device authorization")
    texts = {}
    for name in ("device_code", "user_code", "verification_uri"):
        value = data.get(name) or (data.get("verification_url") if name == "verification_uri" else None)
        if not isinstance(value, str) or not value.strip() or not value.isprintable():
            raise InvalidTokenResponse(f"identity provider {url} answered without a usable {name}")
        texts[name] = value
    complete = data.get("verification_uri_complete")
    interval = data.get("interval", DEFAULT_POLL_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 3600:
        interval = DEFAULT_POLL_INTERVAL
    return DeviceAuthorization(
        device_code=texts["device_code"],
        user_code=texts["user_code"],
        verification_uri=texts["verification_uri"],
        verification_uri_complete=complete if isinstance(complete, str) and complete.isprintable() else None,
        expires_in=_expires_in(data.get("expires_in"), url),
        interval=float(interval),
    )


def parse_user_tokens(
    status: int, headers: Mapping[str, str], body: bytes, url: str, obtained_at: float, obtained_by: str | None
) -> UserTokens:
    """A device-grant or refresh answer: ``parse_token_response``'s checks, plus what a login keeps."""
    token = parse_token_response(status, headers, body, url, obtained_at, obtained_by)
    data = _json_object(body, url) or {}
    refresh_token = data.get("refresh_token")
    if refresh_token is not None and refresh_token != "" and not is_vschar(refresh_token):
        raise InvalidTokenResponse(f"identity provider {url} answered with a malformed refresh_token")
    id_token = data.get("id_token")
    claims = _id_claims(id_token, url) if isinstance(id_token, str) else None
    lifetime = next((data[k] for k in ("refresh_token_expires_in", "refresh_expires_in") if k in data), None)
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not 0 < lifetime <= MAX_EXPIRES_IN:
        lifetime = None
    return UserTokens(token, refresh_token or None, claims or {}, float(lifetime) if lifetime else None)


def _id_claims(id_token: str, url: str) -> dict[str, Any] | None:
    """The ID token's claims, unverified; None when it is not a JWT (it is only displayed).

    Claims over the limits of ``_tokens.unverified_claims`` are an ``InvalidTokenResponse``:
    the identity provider sent something no ID token is, and the login would keep it."""
    import base64

    from ._jsonlimits import JsonLimitError, parse_json
    from ._tokens import CLAIMS_MAX_BYTES, CLAIMS_MAX_DEPTH

    parts = id_token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = parse_json(payload, max_bytes=CLAIMS_MAX_BYTES, max_depth=CLAIMS_MAX_DEPTH)
    except JsonLimitError as exc:
        raise InvalidTokenResponse(f"identity provider {url} answered with an id_token holding {exc}") from None
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None
