"""The identity provider's routes: ``/oauth/token``, discovery, JWKS and ``/userinfo``.

Answers copy Auth0's for the M2M (``client_credentials``) flow: RFC 6749 error
bodies, ``Cache-Control: no-store``, Auth0's 403 wording for audiences and
scopes, and Auth0's ``X-RateLimit-*`` headers on 429.  Nothing here logs, and
no answer ever repeats a secret or a token it was sent.

Clients authenticate with client_secret_post, client_secret_basic or
private_key_jwt (``_client_auth.py``); the API is named by Auth0's ``audience``
parameter or by RFC 8707's ``resource``, so standard clients work too.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from . import _client_auth
from ._bearer import bearer_claims
from ._client_auth import ClientAuthError, authenticator_of
from ._config import SandboxClient
from ._context import SandboxContext, context_of
from ._keys import ALGORITHM
from ._quota import next_month_start
from ._tokens import issue_access_token

__all__ = ["router"]

router = APIRouter()
# POST /_sandbox/clients (rotating a client's credentials) comes with the identity provider.
router.include_router(_client_auth.router)

# RFC 6749 section 5.1: token responses must not be cached by anyone.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Refusal(Exception):
    """An RFC 6749 error answer (or Auth0's 429) for the token endpoint."""

    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=self.status, headers={**NO_STORE, **self.headers})


@router.post("/oauth/token")
async def token_endpoint(request: Request) -> Response:
    ctx = context_of(request)
    # Counted on arrival, before any injected latency, so a client that gives
    # up (or is killed) mid-request still shows up in the stats.
    ctx.state.count_token_request()
    faults = ctx.state.faults()
    if faults.latency > 0:
        await asyncio.sleep(faults.latency)
    scripted = ctx.state.next_scripted()
    if scripted is not None:
        return Response(
            scripted.body, status_code=scripted.status, media_type=scripted.content_type, headers=dict(scripted.headers)
        )
    try:
        if ctx.state.draw_error():
            raise Refusal(500, "server_error", "Injected fault (error_rate)")
        params = await _read_params(request)
        client = _authenticate(request, ctx, params)
        body, headers = _grant(ctx, client, params, issuer=ctx.issuer(request), lifetime=faults.token_lifetime)
    except Refusal as refusal:
        ctx.state.count_token_error(refusal.error)
        return refusal.response()
    return JSONResponse(body, headers={**NO_STORE, **headers})


async def _read_params(request: Request) -> dict[str, str]:
    """The request's parameters from a form body (the standard) or a JSON body (Auth0 accepts both)."""
    try:
        raw = await request.body()
    except ClientDisconnect:
        # A client that gave up (timeout, killed mid-request) is routine under load: no traceback.
        raise Refusal(400, "invalid_request", "The client disconnected before sending its body") from None
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            data = json.loads(raw)
        except ValueError:
            raise Refusal(400, "invalid_request", "The request body is not valid JSON") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise Refusal(400, "invalid_request", "The JSON body must be an object of string parameters")
        return data
    if content_type not in ("application/x-www-form-urlencoded", ""):
        raise Refusal(
            400, "invalid_request", "Send parameters as application/x-www-form-urlencoded or application/json"
        )
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise Refusal(400, "invalid_request", "The request body is not UTF-8") from None
    params = dict(pairs)
    if len(params) != len(pairs):  # RFC 6749 section 3.2: no parameter may repeat
        raise Refusal(400, "invalid_request", "A parameter is included more than once")
    return params


def _grant(
    ctx: SandboxContext, client: SandboxClient, params: dict[str, str], *, issuer: str, lifetime: int
) -> tuple[dict, dict]:
    """The token response body and extra headers for an authenticated client's request, or ``Refusal``."""
    audience = _requested_audience(ctx, params)
    if not audience:
        raise Refusal(
            403, "access_denied", "No audience parameter was provided, and no default audience has been configured"
        )
    if audience not in ctx.config.audiences:
        raise Refusal(403, "access_denied", f"Service not found: {audience}")
    if not client.may_access(audience):
        raise Refusal(
            403,
            "access_denied",
            f'Client is not authorized to access "{audience}". '
            'You need to create a "client-grant" associated to this API.',
        )
    scope = _granted_scope(client, params.get("scope"))
    now = time.time()
    limit = ctx.config.monthly_quota
    used = ctx.state.take_quota(client.client_id, limit, now)
    if used is None:
        raise _quota_refusal(limit or 0, now)
    token = issue_access_token(
        ctx.key,
        issuer=issuer,
        client_id=client.client_id,
        audience=audience,
        scope=scope,
        lifetime=lifetime,
        now=int(now),
    )
    body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}
    if scope:
        body["scope"] = scope
    headers = {}
    if limit is not None:
        headers = _rate_headers(limit, limit - used, next_month_start(now))
    return body, headers


def _authenticate(request: Request, ctx: SandboxContext, params: dict[str, str]) -> SandboxClient:
    """The grant type first (as Auth0 checks it), then the client, by whichever method it used."""
    grant_type = params.get("grant_type")
    if not grant_type:
        raise Refusal(400, "invalid_request", "Missing required parameter: grant_type")
    if grant_type != "client_credentials":
        raise Refusal(400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}")
    try:
        return authenticator_of(request).authenticate(
            params,
            request.headers.get("authorization"),
            token_url=ctx.base(request) + "/oauth/token",
            issuer=ctx.issuer(request),
        )
    except ClientAuthError as failure:
        raise Refusal(failure.status, failure.error, failure.description, failure.headers) from None


def _requested_audience(ctx: SandboxContext, params: dict[str, str]) -> str | None:
    """Auth0's ``audience``, or RFC 8707's ``resource`` (an unknown resource is ``invalid_target``)."""
    audience, resource = params.get("audience"), params.get("resource")
    if audience and resource and audience != resource:
        raise Refusal(400, "invalid_request", "audience and resource name different APIs")
    if resource and not audience:
        if resource not in ctx.config.audiences:
            raise Refusal(400, "invalid_target", f"Unknown resource: {resource}")
        return resource
    return audience


def _granted_scope(client: SandboxClient, requested: str | None) -> str:
    """No ``scope`` parameter means every granted scope (Auth0's M2M behaviour); asking for
    a scope the client was not granted is refused rather than silently narrowed."""
    if not requested or not requested.strip():
        return " ".join(client.scopes)
    wanted = list(dict.fromkeys(requested.split()))
    missing = [s for s in wanted if s not in client.scopes]
    if missing:
        raise Refusal(403, "access_denied", f"Client has not been granted scopes: {' '.join(missing)}")
    return " ".join(wanted)


def _rate_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(reset)}


def _quota_refusal(limit: int, now: float) -> Refusal:
    reset = next_month_start(now)
    when = datetime.fromtimestamp(reset, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = _rate_headers(limit, 0, reset)
    headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
    return Refusal(
        429,
        "too_many_requests",
        f"Monthly quota of {limit} token requests for this client is used up; it resets at {when}",
        headers,
    )


@router.get("/.well-known/openid-configuration")
async def discovery(request: Request) -> dict[str, Any]:
    ctx = context_of(request)
    base = ctx.base(request)
    return {
        "issuer": ctx.issuer(request),
        "token_endpoint": f"{base}/oauth/token",
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "userinfo_endpoint": f"{base}/userinfo",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": authenticator_of(request).methods_supported(),
        "token_endpoint_auth_signing_alg_values_supported": sorted(_client_auth.ALGORITHMS),
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "scopes_supported": sorted({s for c in ctx.config.clients for s in c.scopes}),
    }


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> dict[str, Any]:
    return {"keys": [context_of(request).key.jwk]}


@router.get("/userinfo")
async def userinfo(claims: Annotated[dict[str, Any], Depends(bearer_claims)]) -> dict[str, Any]:
    return {"sub": claims["sub"], "client_id": claims.get("azp"), "scope": claims.get("scope", "")}
