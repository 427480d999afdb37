"""Reading OAuth requests and answering their errors, for every endpoint of the identity provider.

The token, device authorization and revocation endpoints take the same bodies
(a form, the standard, or a JSON object of strings, as Auth0 accepts both) and
answer errors the same way (RFC 6749 section 5.2, ``Cache-Control: no-store``), so
that lives here once.  A ``Refusal`` carries codes and descriptions only: no
answer ever repeats a secret or a token it was sent.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from ._config import SandboxConfig

__all__ = ["NO_STORE", "Refusal", "read_params", "requested_audience"]

# RFC 6749 section 5.1: token responses must not be cached by anyone.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Refusal(Exception):
    """An RFC 6749 error answer (or Auth0's 429) of an OAuth endpoint."""

    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=self.status, headers={**NO_STORE, **self.headers})


async def read_params(request: Request) -> dict[str, str]:
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


def requested_audience(config: SandboxConfig, params: dict[str, str]) -> str:
    """The API a request names, by Auth0's ``audience`` or RFC 8707's ``resource``, refused
    with Auth0's 403 wording when it names none or one the sandbox does not serve."""
    audience, resource = params.get("audience"), params.get("resource")
    if audience and resource and audience != resource:
        raise Refusal(400, "invalid_request", "audience and resource name different APIs")
    if resource and not audience:
        if resource not in config.audiences:
            raise Refusal(400, "invalid_target", f"Unknown resource: {resource}")
        audience = resource
    if not audience:
        raise Refusal(
            403, "access_denied", "No audience parameter was provided, and no default audience has been configured"
        )
    if audience not in config.audiences:
        raise Refusal(403, "access_denied", f"Service not found: {audience}")
    return audience
