"""How the sandbox authenticates clients at the token endpoint, and how tests rotate their secrets.

Three methods, one per request (RFC 6749 section 2.3 forbids mixing them):

* ``client_secret_post``: ``client_id`` and ``client_secret`` in the body (Auth0's default);
* ``client_secret_basic``: ``Authorization: Basic`` with the form-urlencoded id and secret;
* ``private_key_jwt`` (RFC 7523 section 3): a JWT assertion signed with a key registered
  for the client (from a JWK set or PEM public keys). It is checked as a real server
  does: the algorithm (RS256, PS256, ES256: never ``none`` or an HMAC), the signature,
  ``iss`` = ``sub`` = the client, ``aud`` naming the token endpoint (or the issuer),
  ``exp`` in the future and no further away than ``MAX_ASSERTION_LIFETIME``, and a
  ``jti`` never seen before while its assertion lives: a replay is ``invalid_client``.

Secrets and keys can be changed while the sandbox runs (``POST /_sandbox/clients``),
so tests can rotate credentials between two fetches. As on Auth0, a client may hold two
secrets during a rotation: ``keep_previous`` keeps the replaced secret valid until
``revoke_previous``; a client holds two keys by listing both in its JWK set. Every answer names codes and
client ids only, never a secret or an assertion.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
import time
from dataclasses import replace
from typing import Any
from urllib.parse import unquote_plus

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import JSONResponse

from .._errors import ConfigurationError
from ._config import CLIENT_AUTH_METHODS, SandboxClient, SandboxConfig
from ._context import require_owner

__all__ = ["ClientAuthenticator", "ClientAuthError", "authenticator_of", "router", "ASSERTION_TYPE"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = {"RS256": rsa.RSAPublicKey, "PS256": rsa.RSAPublicKey, "ES256": ec.EllipticCurvePublicKey}
# An assertion that lives longer than this is refused: a long-lived one is a reusable password.
MAX_ASSERTION_LIFETIME = 300
# Clock skew tolerated on exp and iat, in seconds.
LEEWAY = 5


class ClientAuthError(Exception):
    """The token endpoint's answer when a client cannot be authenticated."""

    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}


def _invalid_client(description: str, basic: bool = False) -> ClientAuthError:
    # RFC 6749 section 5.2: a client that tried Basic gets 401 with a WWW-Authenticate challenge.
    headers = {"WWW-Authenticate": 'Basic realm="qlam-hpc sandbox"'} if basic else None
    return ClientAuthError(401, "invalid_client", description, headers)


def _invalid_request(description: str) -> ClientAuthError:
    return ClientAuthError(400, "invalid_request", description)


class _PublicKey:
    __slots__ = ("kid", "key")

    def __init__(self, kid: str | None, key: Any) -> None:
        self.kid, self.key = kid, key


def _public_keys(client: SandboxClient) -> list[_PublicKey]:
    """The client's registered keys, parsed; ``ConfigurationError`` names the client."""
    keys = []
    for jwk in (client.jwks or {}).get("keys", []):
        try:
            parsed = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise ConfigurationError(f"a JWK of client {client.client_id!r} is unusable ({exc})") from None
        keys.append(_PublicKey(jwk.get("kid"), _public_half(parsed)))
    for pem in client.public_keys:
        try:
            parsed = serialization.load_pem_public_key(pem.encode("utf-8"))
        except ValueError:
            raise ConfigurationError(f"a public key of client {client.client_id!r} is not a PEM public key") from None
        keys.append(_PublicKey(None, parsed))
    for key in keys:
        if not isinstance(key.key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise ConfigurationError(f"client {client.client_id!r} has a key that is neither RSA nor EC")
    return keys


def _public_half(key: Any) -> Any:
    # A JWK may carry a private key; only its public half is needed to verify.
    return key.public_key() if hasattr(key, "public_key") and not hasattr(key, "verify") else key


class ClientAuthenticator:
    """The registered clients' credentials, changeable at run time, and the ``jti`` values
    seen. Thread-safe: the event loop authenticates while tests change credentials."""

    def __init__(self, config: SandboxConfig) -> None:
        self._lock = threading.Lock()
        self._clients = {c.client_id: c for c in config.clients}
        self._keys = {c.client_id: _public_keys(c) for c in config.clients}
        self._seen: dict[tuple[str, str], float] = {}  # (client id, jti) -> the assertion's exp
        # A secret replaced with keep_previous, still accepted until revoke_previous.
        self._previous: dict[str, str] = {}

    def methods_supported(self) -> list[str]:
        return list(CLIENT_AUTH_METHODS)

    def client(self, client_id: str) -> SandboxClient | None:
        with self._lock:
            return self._clients.get(client_id)

    def update(
        self,
        client_id: str,
        *,
        client_secret: str | None = None,
        jwks: Any = None,
        keep_previous: bool = False,
        revoke_previous: bool = False,
    ) -> list[str]:
        """Replace a client's secret and/or keys; returns what changed. ``KeyError`` for an unknown
        client, ``ConfigurationError`` for an unusable value (and then nothing changes).

        ``keep_previous``: the replaced secret stays valid beside the new one (a rotation without
        downtime); ``revoke_previous``: it stops being accepted."""
        with self._lock:
            client = self._clients[client_id]
        changes: dict[str, Any] = {}
        done: list[str] = []
        if revoke_previous:
            with self._lock:
                if self._previous.pop(client_id, None) is not None:
                    done.append("previous_secret_revoked")
        if keep_previous and client_secret is not None and client.client_secret:
            with self._lock:
                self._previous[client_id] = client.client_secret
            done.append("previous_secret_kept")
        if client_secret is not None:
            changes["client_secret"] = client_secret
        if jwks is not None:
            changes["jwks"] = jwks
        updated = replace(client, **changes)  # validates
        keys = _public_keys(updated)
        with self._lock:
            self._clients[client_id] = updated
            self._keys[client_id] = keys
        return sorted([*changes, *done])

    # --- authentication ------------------------------------------------------------------

    def authenticate(
        self, params: dict[str, str], authorization: str | None, *, token_url: str, issuer: str
    ) -> SandboxClient:
        """The client the request authenticates as, or ``ClientAuthError``."""
        basic_credentials = (
            authorization[6:].strip() if authorization is not None and authorization[:6].lower() == "basic " else None
        )
        basic = basic_credentials is not None
        assertion = "client_assertion" in params or "client_assertion_type" in params
        posted = "client_secret" in params
        if basic + assertion + posted > 1:
            raise _invalid_request("The client used more than one authentication method")
        if basic_credentials is not None:
            return self._basic(params, basic_credentials)
        if assertion:
            return self._private_key_jwt(params, token_url=token_url, issuer=issuer)
        client_id = params.get("client_id")
        if not client_id:
            raise _invalid_request("Missing required parameter: client_id")
        if not posted:
            raise _invalid_request(
                "Missing client authentication: client_secret, an Authorization: Basic header, or client_assertion"
            )
        client = self._allowed(client_id, "client_secret_post")
        self._check_secret(client, params["client_secret"])
        return client

    def _allowed(self, client_id: str, method: str, basic: bool = False) -> SandboxClient:
        client = self.client(client_id)
        if client is None:
            raise _invalid_client("Unknown client", basic)
        allowed = client.auth_methods
        if allowed is None:
            has_keys = bool(self._keys.get(client_id))
            allowed = (("client_secret_post", "client_secret_basic") if client.client_secret else ()) + (
                ("private_key_jwt",) if has_keys else ()
            )
        if method not in allowed:
            raise _invalid_client(f"Client authentication method {method} is not allowed for this client", basic)
        return client

    def _check_secret(self, client: SandboxClient, secret: str, basic: bool = False) -> None:
        with self._lock:
            previous = self._previous.get(client.client_id)
        given = secret.encode("utf-8")
        # Constant time, so response timing cannot be used to guess the secret byte by byte;
        # both secrets are compared, so timing does not tell which one matched either.
        matches = [hmac.compare_digest(given, s.encode("utf-8")) for s in (client.client_secret, previous) if s]
        if not any(matches):
            raise _invalid_client("Client authentication failed", basic)

    def _basic(self, params: dict[str, str], credentials: str) -> SandboxClient:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise _invalid_client("The Authorization: Basic header is malformed", basic=True) from None
        raw_id, separator, raw_secret = decoded.partition(":")
        if not separator:
            raise _invalid_client("The Authorization: Basic header is malformed", basic=True)
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if params.get("client_id") not in (None, client_id):
            raise _invalid_request("client_id in the body differs from the one in the Authorization header")
        client = self._allowed(client_id, "client_secret_basic", basic=True)
        self._check_secret(client, secret, basic=True)
        return client

    def _private_key_jwt(self, params: dict[str, str], *, token_url: str, issuer: str) -> SandboxClient:
        if params.get("client_assertion_type") != ASSERTION_TYPE:
            raise _invalid_request(f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = params.get("client_assertion")
        if not assertion:
            raise _invalid_request("Missing required parameter: client_assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _invalid_client("The client assertion is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise _invalid_client(f"Client assertion algorithm {alg!r} is not accepted (RS256, PS256, ES256)")
        client_id = params.get("client_id") or unverified.get("iss")
        if not isinstance(client_id, str) or not client_id:
            raise _invalid_client("The client assertion names no client (iss)")
        client = self._allowed(client_id, "private_key_jwt")
        claims = self._verified(assertion, client_id, header, alg, audiences=[token_url, issuer])
        if claims.get("sub") != client_id:
            raise _invalid_client("The client assertion's sub must be the client id")
        now = time.time()
        if claims["exp"] - now > MAX_ASSERTION_LIFETIME:
            raise _invalid_client(f"The client assertion lives longer than {MAX_ASSERTION_LIFETIME} seconds")
        self._remember_jti(client_id, str(claims["jti"]), float(claims["exp"]), now)
        return client

    def _verified(
        self, assertion: str, client_id: str, header: dict[str, Any], alg: str, audiences: list[str]
    ) -> dict[str, Any]:
        with self._lock:
            keys = list(self._keys.get(client_id, ()))
        kid = header.get("kid")
        candidates = [k for k in keys if isinstance(k.key, ALGORITHMS[alg]) and (kid is None or k.kid in (None, kid))]
        if not candidates:
            raise _invalid_client("No registered key of this client fits the client assertion (kid, alg)")
        for key in candidates:
            try:
                return jwt.decode(
                    assertion,
                    key.key,
                    algorithms=[alg],
                    audience=audiences,
                    issuer=client_id,
                    leeway=LEEWAY,
                    options={"require": ["iss", "sub", "aud", "exp", "jti"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise _invalid_client("The client assertion has expired") from None
            except jwt.InvalidAudienceError:
                raise _invalid_client("The client assertion's aud must be the token endpoint") from None
            except jwt.InvalidIssuerError:
                raise _invalid_client("The client assertion's iss must be the client id") from None
            except jwt.MissingRequiredClaimError as exc:
                raise _invalid_client(f"The client assertion lacks the {exc.claim} claim") from None
            except jwt.PyJWTError as exc:
                raise _invalid_client(f"The client assertion is invalid ({type(exc).__name__})") from None
        raise _invalid_client("The client assertion's signature does not verify")

    def _remember_jti(self, client_id: str, jti: str, exp: float, now: float) -> None:
        with self._lock:
            # Forget assertions that have expired: they would be refused for that anyway.
            for old in [k for k, until in self._seen.items() if until + LEEWAY < now]:
                del self._seen[old]
            if (client_id, jti) in self._seen:
                raise _invalid_client("The client assertion was already used (jti replayed)")
            self._seen[(client_id, jti)] = exp


def authenticator_of(request: Request) -> ClientAuthenticator:
    """The app's authenticator (``create_app`` makes it; an app made otherwise gets one here)."""
    state = request.app.state
    authenticator = getattr(state, "client_auth", None)
    if authenticator is None:
        authenticator = state.client_auth = ClientAuthenticator(state.sandbox.config)
    return authenticator


# --- the control endpoint -------------------------------------------------------------------

router = APIRouter(prefix="/_sandbox")


@router.post("/clients", dependencies=[Depends(require_owner)])
async def update_client(request: Request) -> JSONResponse:
    """Change a client's secret and/or keys at run time: ``{"client_id", "client_secret"?, "jwks"?,
    "keep_previous"?: bool, "revoke_previous"?: bool}``.

    The answer names what changed, never the new values.
    """
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("client_id"), str):
        return _control_error(400, "the body must be a JSON object with a client_id")
    unknown = set(body) - {"client_id", "client_secret", "jwks", "keep_previous", "revoke_previous"}
    if unknown:
        return _control_error(400, f"unknown fields {sorted(unknown)}")
    flags = {name: body.get(name, False) for name in ("keep_previous", "revoke_previous")}
    if not all(isinstance(value, bool) for value in flags.values()):
        return _control_error(400, "keep_previous and revoke_previous must be true or false")
    try:
        updated = authenticator_of(request).update(
            body["client_id"], client_secret=body.get("client_secret"), jwks=body.get("jwks"), **flags
        )
    except KeyError:
        return _control_error(404, f"no client {body['client_id']!r}")
    except ConfigurationError as exc:
        return _control_error(400, str(exc))
    return JSONResponse({"client_id": body["client_id"], "updated": updated})


def _control_error(status: int, description: str) -> JSONResponse:
    return JSONResponse({"error": "invalid_request", "error_description": description}, status_code=status)
