"""The user context at the identity provider: device authorization, the device_code and
refresh_token grants, and revocation, with Auth0's paths, status codes and wording.

* ``POST /oauth/device/code`` (RFC 8628 section 3.1) starts a device login for a
  public client (``SandboxConfig.device_clients``: no secret, as a CLI on a login
  node cannot keep one); a person approves it at ``/activate`` (``_activate.py``).
* ``POST /oauth/token`` hands its ``device_code`` and ``refresh_token`` grants to
  ``device_code_grant`` and ``refresh_token_grant`` here; the state they change is
  in ``_users.UserLogins``, which decides under one lock.
* ``POST /oauth/revoke`` (RFC 7009) ends a login by one of its refresh tokens.

Tokens go into answers only, never into a log or an error description.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._client_auth import ClientAuthError, authenticator_of
from ._context import SandboxContext, context_of
from ._faults import Faults
from ._params import NO_STORE, Refusal, read_params, requested_audience
from ._tokens import issue_id_token, issue_user_access_token
from ._users import Grant

__all__ = ["DEVICE_CODE_GRANT", "USER_SCOPES", "device_code_grant", "refresh_token_grant", "router"]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# The OpenID Connect scopes a login may ask for, besides an API's own.
USER_SCOPES = ("openid", "email", "profile", "offline_access")

router = APIRouter()


@router.post("/oauth/device/code")
async def device_authorization(request: Request) -> Response:
    ctx = context_of(request)
    try:
        params = await read_params(request)
        client_id = _public_client(ctx, params, DEVICE_CODE_GRANT)
        audience = requested_audience(ctx.config, params)
    except Refusal as refusal:
        return refusal.response()
    scope = _scope(params.get("scope"))
    faults = ctx.state.faults()
    started = ctx.state.logins.start_device_login(
        client_id,
        audience,
        scope,
        now=time.time(),
        interval=faults.device_poll_interval,
        auto_approve=faults.auto_approve,
    )
    activate = ctx.base(request) + "/activate"
    body = {
        "device_code": started.device_code,
        "user_code": started.user_code,
        "verification_uri": activate,
        "verification_uri_complete": f"{activate}?user_code={started.user_code}",
        "expires_in": started.expires_in,
        "interval": started.interval,
    }
    return JSONResponse(body, headers=NO_STORE)


def device_code_grant(ctx: SandboxContext, params: dict[str, str], *, issuer: str, faults: Faults) -> dict[str, Any]:
    """The token response once the user approved (RFC 8628 section 3.4), else a ``Refusal``."""
    client_id = _public_client(ctx, params, DEVICE_CODE_GRANT)
    device_code = _required(params, "device_code")
    grant = ctx.state.logins.poll(device_code, client_id, now=time.time(), auto_approve=faults.auto_approve)
    return _token_response(ctx, grant, issuer=issuer, lifetime=faults.token_lifetime)


def refresh_token_grant(ctx: SandboxContext, params: dict[str, str], *, issuer: str, faults: Faults) -> dict[str, Any]:
    """A new access token and a new refresh token of the same login (rotation), else a ``Refusal``."""
    client_id = _public_client(ctx, params, "refresh_token")
    refresh_token = _required(params, "refresh_token")
    grant = ctx.state.logins.rotate(
        refresh_token,
        client_id,
        scope=_scope(params.get("scope")),
        now=time.time(),
        overlap=faults.refresh_token_overlap,
    )
    return _token_response(ctx, grant, issuer=issuer, lifetime=faults.token_lifetime)


@router.post("/oauth/revoke")
async def revoke(request: Request) -> Response:
    """RFC 7009: 200 with an empty body whether or not the token was known (section 2.2)."""
    ctx = context_of(request)
    ctx.state.logins.count("revocations")
    try:
        params = await read_params(request)
        token = _required(params, "token")
        client_id = _revoking_client(request, ctx, params)
    except Refusal as refusal:
        return refusal.response()
    ctx.state.logins.revoke_token(token, client_id)
    return Response(status_code=200, headers=NO_STORE)


def _token_response(ctx: SandboxContext, grant: Grant, *, issuer: str, lifetime: int) -> dict[str, Any]:
    now = int(time.time())
    scopes = grant.scope.split()
    body: dict[str, Any] = {
        "access_token": issue_user_access_token(
            ctx.key,
            issuer=issuer,
            subject=grant.user.subject,
            client_id=grant.client_id,
            audience=grant.audience,
            scope=grant.scope,
            lifetime=lifetime,
            now=now,
        )
    }
    if "openid" in scopes:
        body["id_token"] = issue_id_token(
            ctx.key, issuer=issuer, user=grant.user, client_id=grant.client_id, lifetime=lifetime, now=now
        )
    if grant.refresh_token is not None:
        body["refresh_token"] = grant.refresh_token
    body["token_type"] = "Bearer"
    body["expires_in"] = lifetime
    if grant.scope:
        body["scope"] = grant.scope
    ctx.state.count_token_issued()
    return body


def _public_client(ctx: SandboxContext, params: dict[str, str], grant_type: str) -> str:
    """The device client the request names: it needs no authentication, having no secret."""
    client_id = _required(params, "client_id")
    if client_id in ctx.config.device_clients:
        return client_id
    if ctx.config.client(client_id) is not None:
        raise Refusal(403, "unauthorized_client", f"Grant type '{grant_type}' not allowed for the client.")
    raise Refusal(401, "invalid_client", "Unknown client")


def _revoking_client(request: Request, ctx: SandboxContext, params: dict[str, str]) -> str:
    """A device client by its id; an M2M client authenticates as at the token endpoint."""
    client_id = params.get("client_id")
    if client_id in ctx.config.device_clients:
        return client_id
    if client_id and ctx.config.client(client_id) is None:
        raise Refusal(401, "invalid_client", "Unknown client")
    try:
        return (
            authenticator_of(request)
            .authenticate(
                params,
                request.headers.get("authorization"),
                token_url=ctx.base(request) + "/oauth/token",
                issuer=ctx.issuer(request),
            )
            .client_id
        )
    except ClientAuthError as failure:
        raise Refusal(failure.status, failure.error, failure.description, failure.headers) from None


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise Refusal(400, "invalid_request", f"Missing required parameter: {name}")
    return value


def _scope(requested: str | None) -> str:
    """Space-separated scopes, each once, in the order asked."""
    return " ".join(dict.fromkeys((requested or "").split()))
