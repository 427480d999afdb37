"""The identity provider's routes: ``/oauth/token``, discovery, JWKS and ``/userinfo``.

Answers copy Auth0's for the M2M (``client_credentials``) flow: RFC 6749 error
bodies, ``Cache-Control: no-store``, Auth0's 403 wording for audiences and
scopes, and Auth0's ``X-RateLimit-*`` headers on 429.  Nothing here logs, and
no answer ever repeats a secret or a token it was sent.

Clients authenticate with client_secret_post, client_secret_basic or
private_key_jwt (``_client_auth.py``); the API is named by Auth0's ``audience``
parameter or by RFC 8707's ``resource``, so standard clients work too.

The user context (device code and refresh token grants, revocation, the
``/activate`` page) is in ``_user_flows.py`` and ``_activate.py``; the token
endpoint here only dispatches to it, so that faults apply to every grant alike.
Token exchange (RFC 8693, Auth0's Custom Token Exchange) verifies its subject token
in ``_exchange.py`` and is granted here, to a client that authenticates as for M2M.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import _activate, _client_auth, _user_flows
from ._bearer import bearer_claims
from ._client_auth import ClientAuthError, authenticator_of
from ._config import SandboxClient
from ._context import SandboxContext, context_of
from ._exchange import (
    ACCESS_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    ExchangeRefusal,
    ExchangeVerifier,
    check_subject_token_type,
)
from ._faults import Faults
from ._keys import ALGORITHM
from ._params import NO_STORE, Refusal, read_params, requested_audience
from ._quota import next_month_start
from ._tokens import issue_access_token, issue_user_access_token
from ._user_flows import DEVICE_CODE_GRANT, USER_SCOPES

__all__ = ["router"]

router = APIRouter()
# POST /_sandbox/clients (rotating a client's credentials) comes with the identity provider,
# and so do the device flow, revocation and the page where a person approves a device.
router.include_router(_client_auth.router)
router.include_router(_user_flows.router)
router.include_router(_activate.router)

GRANT_TYPES = ("client_credentials", DEVICE_CODE_GRANT, "refresh_token", TOKEN_EXCHANGE_GRANT)


@router.post("/oauth/token")
async def token_endpoint(request: Request) -> Response:
    ctx = context_of(request)
    # Counted on arrival, before any injected latency, so a client that gives
    # up (or is killed) mid-request still shows up in the stats.  The body is
    # read at once so that refresh requests are counted on arrival too.
    ctx.state.count_token_request()
    try:
        params, unreadable = await read_params(request), None
    except Refusal as refusal:
        params, unreadable = {}, refusal
    if params.get("grant_type") == "refresh_token":
        ctx.state.logins.count("refresh_requests")
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
        if unreadable is not None:
            raise unreadable
        if faults.latency > 0 and await request.is_disconnected():
            # A client that gave up during the latency would never see a token: grant nothing.
            raise Refusal(400, "invalid_request", "The client disconnected before sending its body")
        body, headers = await _dispatch(request, ctx, params, faults)
    except Refusal as refusal:
        ctx.state.count_token_error(refusal.error)
        if params.get("grant_type") == TOKEN_EXCHANGE_GRANT:
            ctx.state.count_exchange_refusal(refusal.reason if isinstance(refusal, ExchangeRefusal) else refusal.error)
        return refusal.response()
    if faults.response_delay > 0:
        # The grant is committed (a refresh token rotated, a device code used up):
        # a client killed now has lost its answer, as over a real network.
        await asyncio.sleep(faults.response_delay)
    return JSONResponse(body, headers={**NO_STORE, **headers})


async def _dispatch(
    request: Request, ctx: SandboxContext, params: dict[str, str], faults: Faults
) -> tuple[dict[str, Any], dict[str, str]]:
    """The grant type first (as Auth0 checks it), then the grant's own checks."""
    grant_type = params.get("grant_type")
    if not grant_type:
        raise Refusal(400, "invalid_request", "Missing required parameter: grant_type")
    issuer = ctx.issuer(request)
    if grant_type == DEVICE_CODE_GRANT:
        return _user_flows.device_code_grant(ctx, params, issuer=issuer, faults=faults), {}
    if grant_type == "refresh_token":
        return _user_flows.refresh_token_grant(ctx, params, issuer=issuer, faults=faults), {}
    if grant_type == TOKEN_EXCHANGE_GRANT:
        client = _authenticate(request, ctx, params)
        verifier: ExchangeVerifier = request.app.state.exchange
        # The subject token's issuer may have to be asked for its keys: not on the event loop.
        return await asyncio.to_thread(
            _exchange_grant,
            ctx,
            verifier,
            client,
            params,
            issuer=issuer,
            lifetime=faults.token_lifetime,
            default_audience=ctx.base(request),
        )
    if grant_type != "client_credentials":
        raise Refusal(400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}")
    client = _authenticate(request, ctx, params)
    return _grant(ctx, client, params, issuer=issuer, lifetime=faults.token_lifetime)


def _grant(
    ctx: SandboxContext, client: SandboxClient, params: dict[str, str], *, issuer: str, lifetime: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """The client_credentials token response body and extra headers, or ``Refusal``."""
    audience = _permitted_audience(ctx, client, params)
    scope = _granted_scope(client, params.get("scope"))
    return _charged_token_response(
        ctx,
        client,
        scope,
        lifetime,
        lambda now: issue_access_token(
            ctx.key,
            issuer=issuer,
            client_id=client.client_id,
            audience=audience,
            scope=scope,
            lifetime=lifetime,
            now=now,
        ),
    )


def _exchange_grant(
    ctx: SandboxContext,
    verifier: ExchangeVerifier,
    client: SandboxClient,
    params: dict[str, str],
    *,
    issuer: str,
    lifetime: int,
    default_audience: str,
) -> tuple[dict[str, Any], dict[str, str]]:
    """RFC 8693: an access token for the user the subject token names, or a ``Refusal``.

    The client must be allowed the audience, as for client_credentials; the scope may hold
    the client's granted scopes and OpenID Connect's. The user is a configured one whose
    e-mail or subject the subject token carries, else ``exchange|<iss>|<sub>``.
    """
    check_subject_token_type(params.get("subject_token_type"))
    subject_token = params.get("subject_token")
    if not subject_token:
        raise ExchangeRefusal("missing_parameter", 400, "invalid_request", "Missing required parameter: subject_token")
    if params.get("actor_token") and not params.get("actor_token_type"):
        raise ExchangeRefusal("missing_parameter", 400, "invalid_request", "actor_token needs actor_token_type")
    audience = _permitted_audience(ctx, client, params)
    requested = params.get("scope")
    user_scopes = [s for s in (requested or "").split() if s in USER_SCOPES]
    api_scope = " ".join(s for s in (requested or "").split() if s not in USER_SCOPES)
    scope = " ".join(dict.fromkeys([*user_scopes, *_granted_scope(client, api_scope or None).split()]))
    claims = verifier.verify(subject_token, default_audience=default_audience)
    subject = _exchanged_subject(ctx, claims)
    answer = _charged_token_response(
        ctx,
        client,
        scope,
        lifetime,
        lambda now: issue_user_access_token(
            ctx.key,
            issuer=issuer,
            subject=subject,
            client_id=client.client_id,
            audience=audience,
            scope=scope,
            lifetime=lifetime,
            now=now,
        ),
        issued_token_type=ACCESS_TOKEN_TYPE,
    )
    ctx.state.count_exchange()
    return answer


def _permitted_audience(ctx: SandboxContext, client: SandboxClient, params: dict[str, str]) -> str:
    """The API the request names, if the client has a grant for it; else Auth0's 403."""
    audience = requested_audience(ctx.config, params)
    if not client.may_access(audience):
        raise Refusal(
            403,
            "access_denied",
            f'Client is not authorized to access "{audience}". '
            'You need to create a "client-grant" associated to this API.',
        )
    return audience


def _charged_token_response(
    ctx: SandboxContext, client: SandboxClient, scope: str, lifetime: int, mint: Callable[[int], str], **fields: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Takes one token request from the client's monthly quota (a 429 once it is used up), then
    the response body with the token ``mint`` signs at the time charged, and the rate headers.

    ``fields`` are the grant's own response fields (token exchange's ``issued_token_type``),
    which follow ``access_token`` in the body.
    """
    now = time.time()
    limit = ctx.config.monthly_quota
    used = ctx.state.take_quota(client.client_id, limit, now)
    if used is None:
        raise _quota_refusal(limit or 0, now)
    body: dict[str, Any] = {"access_token": mint(int(now)), **fields, "token_type": "Bearer", "expires_in": lifetime}
    if scope:
        body["scope"] = scope
    headers = _rate_headers(limit, limit - used, next_month_start(now)) if limit is not None else {}
    return body, headers


def _exchanged_subject(ctx: SandboxContext, claims: dict[str, Any]) -> str:
    """A configured user by the token's e-mail, then by its subject; else one per issuer and subject."""
    email, sub = claims.get("email"), claims["sub"]
    if isinstance(email, str) and email:
        user = next((u for u in ctx.config.users if u.email.lower() == email.lower()), None)
        if user is not None:
            return user.subject
    user = next((u for u in ctx.config.users if u.subject == sub), None)
    if user is not None:
        return user.subject
    return f"exchange|{claims['iss']}|{sub}"


def _authenticate(request: Request, ctx: SandboxContext, params: dict[str, str]) -> SandboxClient:
    """The M2M client, by whichever method it used."""
    try:
        return authenticator_of(request).authenticate(
            params,
            request.headers.get("authorization"),
            token_url=ctx.base(request) + "/oauth/token",
            issuer=ctx.issuer(request),
        )
    except ClientAuthError as failure:
        raise Refusal(failure.status, failure.error, failure.description, failure.headers) from None


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
        "device_authorization_endpoint": f"{base}/oauth/device/code",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": authenticator_of(request).methods_supported(),
        "token_endpoint_auth_signing_alg_values_supported": sorted(_client_auth.ALGORITHMS),
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "scopes_supported": [*USER_SCOPES, *sorted({s for c in ctx.config.clients for s in c.scopes} - {*USER_SCOPES})],
    }


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> dict[str, Any]:
    return {"keys": [context_of(request).key.jwk]}


@router.get("/userinfo")
async def userinfo(request: Request, claims: Annotated[dict[str, Any], Depends(bearer_claims)]) -> dict[str, Any]:
    """Who a user's token belongs to (OpenID Connect's standard claims); for an M2M token,
    its client and scope."""
    user = next((u for u in context_of(request).config.users if u.subject == claims["sub"]), None)
    if user is not None:
        return {"sub": user.subject, "email": user.email, "name": user.name, "email_verified": True}
    return {"sub": claims["sub"], "client_id": claims.get("azp"), "scope": claims.get("scope", "")}
