"""RFC 8693 token exchange, as Auth0's Custom Token Exchange answers it: a job proves who it
is with a JWT another identity provider signed (a CI job's OIDC token, a Kubernetes
service-account token, a site provider's token), and gets an access token for that user.

What Auth0 leaves to an Action, the sandbox does itself, for the issuers it was told to
trust (``--exchange-issuer``): the subject token's signature against the issuer's JWKS
(found by OpenID discovery), its ``iss``, ``aud`` (``--exchange-audience``, default the
sandbox's own URL) and ``exp``/``nbf``. ``alg=none`` and HMAC algorithms are refused: a
JWKS holds public keys, and an HMAC "verified" with a public key proves nothing.

``subject_token_type`` follows Auth0: any URI the tenant owns (``urn:...`` or
``https://...``), except Auth0's reserved namespaces (``urn:ietf``, ``urn:auth0``,
``urn:okta``, ``http(s)://auth0.com``, ``http(s)://okta.com``), so the RFC's own
``urn:ietf:params:oauth:token-type:jwt`` is refused here as it is by Auth0.

Every refusal is counted by reason (``exchange_refusals`` in ``/_sandbox/stats``); no
answer and no counter ever holds the subject token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt

from ._config import check_issuer_url
from ._params import Refusal

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "RESERVED_TYPE_PREFIXES",
    "TOKEN_EXCHANGE_GRANT",
    "ExchangeRefusal",
    "ExchangeVerifier",
    "check_issuer_url",
    "check_subject_token_type",
]

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# Auth0's Custom Token Exchange refuses these: a profile's type must be a URI the tenant owns.
RESERVED_TYPE_PREFIXES = (
    "urn:ietf",
    "urn:auth0",
    "urn:okta",
    "http://auth0.com",
    "https://auth0.com",
    "http://okta.com",
    "https://okta.com",
)
# Public-key algorithms only: what a JWKS can verify.
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
# How often an unknown ``kid`` may make the sandbox read an issuer's JWKS again (key rotation).
_REFETCH_AFTER = 5.0
_HTTP_TIMEOUT = 5.0


class ExchangeRefusal(Refusal):
    """A refused exchange; ``reason`` is the counter it goes to (``alg_none``, ``expired``, ...)."""

    def __init__(self, reason: str, status: int, error: str, description: str) -> None:
        super().__init__(status, error, description)
        self.reason = reason


def _bad_subject(reason: str, description: str) -> ExchangeRefusal:
    # RFC 8693 section 2.2.2: an invalid subject token is invalid_request; Auth0 answers a
    # token its Action rejects with invalid_grant-like 400s. The description says why, never what.
    return ExchangeRefusal(reason, 400, "invalid_request", f"Invalid subject_token: {description}")


def check_subject_token_type(token_type: str | None) -> str:
    """The ``subject_token_type`` if Auth0 would take it as a profile's type, else an ``ExchangeRefusal``."""
    if not token_type:
        raise ExchangeRefusal(
            "missing_parameter", 400, "invalid_request", "Missing required parameter: subject_token_type"
        )
    lowered = token_type.lower()
    if any(lowered.startswith(prefix) for prefix in RESERVED_TYPE_PREFIXES):
        raise ExchangeRefusal(
            "reserved_token_type",
            400,
            "invalid_request",
            f"subject_token_type {token_type!r} is in a reserved namespace (urn:ietf, urn:auth0, urn:okta, "
            "auth0.com, okta.com): use a URI your tenant owns, such as urn:example:ci-jwt",
        )
    if not lowered.startswith(("urn:", "https://", "http://")):
        raise ExchangeRefusal(
            "invalid_token_type", 400, "invalid_request", "subject_token_type must be a URI (urn: or https://)"
        )
    return token_type


_Key = tuple[jwt.PyJWK, "str | None"]


@dataclass
class _IssuerKeys:
    # kid -> (key, the alg its JWK names, if any)
    keys: dict[str | None, _Key] = field(default_factory=dict)
    fetched_at: float = float("-inf")


class ExchangeVerifier:
    """Verifies subject tokens of the trusted issuers; reads each issuer's JWKS through its
    discovery document on first use, and again (at most every few seconds) for an unknown ``kid``.

    Blocking (it fetches over HTTP): the token endpoint calls it in a worker thread.
    """

    def __init__(self, issuers: tuple[str, ...], audience: str | None) -> None:
        self.issuers = tuple(issuers)
        self.audience = audience
        self._lock = threading.Lock()
        self._keys: dict[str, _IssuerKeys] = {}

    def verify(self, token: str, *, default_audience: str) -> dict[str, Any]:
        """The subject token's claims, or an ``ExchangeRefusal`` naming the reason."""
        if not self.issuers:
            raise ExchangeRefusal(
                "not_configured", 400, "unsupported_grant_type", "Token exchange is not enabled (--exchange-issuer)"
            )
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _bad_subject("malformed", "not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _bad_subject("alg_none", "unsigned tokens (alg none) are refused")
        if alg.upper().startswith("HS"):
            raise _bad_subject("alg_hmac", f"{alg} is refused: the issuer's keys are public keys")
        if alg not in ASYMMETRIC:
            raise _bad_subject("alg_unsupported", f"algorithm {alg} is not accepted")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in self.issuers:
            raise _bad_subject("issuer", "its issuer is not trusted for token exchange")
        key = self._key(issuer, header.get("kid"), alg)
        audience = self.audience or default_audience
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
                options={"require": ["iss", "sub", "aud", "exp"]},
            )
        except jwt.PyJWTError as exc:
            raise _bad_subject(*_reason(exc)) from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise _bad_subject("missing_claim", "it has no sub")
        return claims

    def _key(self, issuer: str, kid: object, alg: str) -> jwt.PyJWK:
        with self._lock:
            known = self._keys.setdefault(issuer, _IssuerKeys())
            found = _pick(known.keys, kid)
            if found is None and time.monotonic() - known.fetched_at >= _REFETCH_AFTER:
                known.keys = _fetch_keys(issuer)
                known.fetched_at = time.monotonic()
                found = _pick(known.keys, kid)
        if found is None:
            raise _bad_subject("unknown_key", "it was signed by a key its issuer does not publish")
        key, published = found
        expected = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}.get(key.key_type or "", ())
        if not alg.startswith(expected) or (published is not None and published != alg):
            raise _bad_subject("alg_key_mismatch", f"{alg} does not fit the issuer's {key.key_type} key")
        return key


def _pick(keys: dict[str | None, _Key], kid: object) -> _Key | None:
    if isinstance(kid, str) and kid in keys:
        return keys[kid]
    if kid is None and len(keys) == 1:
        return next(iter(keys.values()))
    return None


def _fetch_keys(issuer: str) -> dict[str | None, _Key]:
    """The issuer's signing keys, by ``kid``, through ``{issuer}/.well-known/openid-configuration``."""
    import httpx

    discovery = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with httpx.Client(timeout=_HTTP_TIMEOUT, follow_redirects=False) as client:
            document = client.get(discovery).raise_for_status().json()
            if not isinstance(document, dict) or document.get("issuer") != issuer:
                raise _bad_subject("discovery", "its issuer's discovery document names another issuer")
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise _bad_subject("discovery", "its issuer's discovery document has no jwks_uri")
            try:
                check_issuer_url(jwks_uri)
            except ValueError:
                raise _bad_subject("discovery", "its issuer's jwks_uri is neither https nor loopback") from None
            jwks = client.get(jwks_uri).raise_for_status().json()
    except (httpx.HTTPError, ValueError):
        raise ExchangeRefusal(
            "issuer_unreachable", 503, "temporarily_unavailable", "The subject token's issuer cannot be reached"
        ) from None
    keys: dict[str | None, _Key] = {}
    for entry in jwks.get("keys", []) if isinstance(jwks, dict) else []:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue  # an HMAC secret has no business in a JWKS; never verify with one
        try:
            alg = entry.get("alg")
            keys[entry.get("kid")] = (jwt.PyJWK(entry), alg if isinstance(alg, str) else None)
        except jwt.PyJWTError:
            continue
    return keys


# PyJWT's exceptions, most specific first: the counter and what the caller is told.
_REASONS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "it has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "it is not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "audience", "its aud does not name this identity provider"),
    (jwt.InvalidIssuerError, "issuer", "its issuer is not trusted for token exchange"),
    (jwt.MissingRequiredClaimError, "missing_claim", "it lacks a required claim (iss, sub, aud, exp)"),
    (jwt.InvalidSignatureError, "signature", "its signature does not verify"),
    (jwt.InvalidAlgorithmError, "alg_key_mismatch", "its algorithm does not fit the issuer's key"),
    (jwt.DecodeError, "malformed", "not a JWT"),
)


def _reason(exc: Exception) -> tuple[str, str]:
    for kind, reason, text in _REASONS:
        if isinstance(exc, kind):
            return reason, text
    return "invalid", "it is not valid"
