"""Bearer-token authentication for the sandbox's API routes, shared by every route
that stands in for the QLAM API (``/userinfo`` now, the tasks API later).

Use it as a FastAPI dependency::

    @router.get("/v2/{qpu_mode}/tasks")
    async def list_tasks(claims: dict = Depends(bearer_claims)): ...

Failures are ``ApiError``s, answered in the QLAM error shape
``{"messages": [...], "code": ...}`` by ``api_error_response``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ._context import context_of
from ._tokens import InvalidToken, verify_access_token

__all__ = ["ApiError", "api_error_response", "bearer_claims"]

GENERIC_ERROR = 1000  # the QLAM API's code for "no more specific code applies"


class ApiError(Exception):
    """An error answered in the QLAM API's shape."""

    def __init__(self, status: int, message: str, *, code: int = GENERIC_ERROR, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


async def api_error_response(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler for ``ApiError`` (registered by ``create_app``)."""
    assert isinstance(exc, ApiError)
    return JSONResponse({"messages": [exc.message], "code": exc.code}, status_code=exc.status, headers=exc.headers)


async def bearer_claims(request: Request) -> dict[str, Any]:
    """The verified claims of the request's ``Authorization: Bearer`` token, else a 401 ``ApiError``.

    Counts the request as an ``api_requests`` stat whatever the outcome.
    """
    ctx = context_of(request)
    ctx.state.count_api_request()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        # RFC 6750 section 3.1: a request without credentials gets no error code.
        raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": 'Bearer realm="qlam-sandbox"'})
    try:
        return verify_access_token(token, ctx.key, issuer=ctx.issuer(request), audiences=ctx.config.audiences)
    except InvalidToken as exc:
        challenge = f'Bearer error="invalid_token", error_description="{exc}"'
        raise ApiError(401, str(exc), headers={"WWW-Authenticate": challenge}) from None
