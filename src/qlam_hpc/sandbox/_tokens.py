"""Signing and verifying the sandbox's tokens: RS256 JWTs with Auth0's claim sets, for
applications (M2M) and for users (access and ID tokens of the device code flow)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import jwt

from ._config import SandboxUser
from ._keys import ALGORITHM, SigningKey

__all__ = ["InvalidToken", "issue_access_token", "issue_id_token", "issue_user_access_token", "verify_access_token"]


class InvalidToken(Exception):
    """A bearer token the sandbox does not accept; the message says why, never what the token was."""


def issue_access_token(
    key: SigningKey,
    *,
    issuer: str,
    client_id: str,
    audience: str,
    scope: str,
    lifetime: int,
    now: int,
) -> str:
    """A signed access token as Auth0 issues for ``client_credentials``."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": f"{client_id}@clients",
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
        "azp": client_id,
        "gty": "client-credentials",
    }
    if scope:
        claims["scope"] = scope
    return _sign(key, claims)


def issue_user_access_token(
    key: SigningKey,
    *,
    issuer: str,
    subject: str,
    client_id: str,
    audience: str,
    scope: str,
    lifetime: int,
    now: int,
) -> str:
    """A signed access token as Auth0 issues to a user's application: with ``openid`` in
    the scope its ``aud`` also names the tenant's ``/userinfo``, as a list."""
    aud: str | list[str] = [audience, f"{issuer}userinfo"] if "openid" in scope.split() else audience
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": aud,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
        "azp": client_id,
    }
    if scope:
        claims["scope"] = scope
    return _sign(key, claims)


def issue_id_token(key: SigningKey, *, issuer: str, user: SandboxUser, client_id: str, lifetime: int, now: int) -> str:
    """An OpenID Connect ID token: who the user is, for the application (``aud`` = its client id)."""
    claims = {
        "iss": issuer,
        "sub": user.subject,
        "aud": client_id,
        "iat": now,
        "exp": now + lifetime,
        "email": user.email,
        "name": user.name,
        "email_verified": True,
    }
    return _sign(key, claims)


def _sign(key: SigningKey, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


# PyJWT's exceptions, most specific first, and what a caller is told for each.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidAlgorithmError, "token algorithm is not accepted"),
    (jwt.DecodeError, "token is malformed"),
)


def verify_access_token(token: str, key: SigningKey, *, issuer: str, audiences: Iterable[str]) -> dict[str, Any]:
    """The claims of ``token`` if the sandbox signed it for one of ``audiences`` and it has not
    expired; otherwise ``InvalidToken``. No leeway: the sandbox and its tests share one clock."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("kid") != key.kid:
            raise InvalidToken("token was signed by an unknown key")
        return jwt.decode(
            token,
            key.public_key,
            algorithms=[ALGORITHM],
            audience=list(audiences),
            issuer=issuer,
            options={"require": ["iss", "sub", "aud", "iat", "exp"]},
        )
    except jwt.PyJWTError as exc:
        reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "token is invalid")
        raise InvalidToken(reason) from None
