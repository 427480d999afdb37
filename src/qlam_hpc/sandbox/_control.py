"""Control endpoints under ``/_sandbox/`` for tests and demos: stats, faults, reset,
and the user context (approve device logins, revoke logins) without a browser.

The sandbox listens on loopback only, but on a shared login node every local user
reaches loopback: whatever changes the sandbox (faults, reset, approvals, the list of
pending user codes) needs its owner's control token (``require_owner``); the
counters and the current faults stay readable by anyone, as harmless.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import JSONResponse

from ._context import context_of, require_owner

__all__ = ["router"]

router = APIRouter(prefix="/_sandbox")


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    """Counters since start or the last reset."""
    return context_of(request).state.stats()


@router.get("/faults")
async def get_faults(request: Request) -> dict[str, Any]:
    return context_of(request).state.public_faults()


@router.post("/faults", dependencies=[Depends(require_owner)])
async def set_faults(request: Request) -> JSONResponse:
    """Change ``latency``, ``error_rate``, ``token_lifetime``, ``task_duration``, ``revoke_tokens_before``,
    ``refresh_token_overlap``, ``device_poll_interval``, ``auto_approve``, ``response_delay``
    and/or replace the ``script`` or the ``api_script``."""
    try:
        changes = json.loads(await request.body() or b"{}")
        if not isinstance(changes, dict):
            raise ValueError("the body must be a JSON object")
        state = context_of(request).state
        state.update_faults(changes)
    except ValueError as exc:  # includes json.JSONDecodeError
        return JSONResponse({"error": "invalid_request", "error_description": str(exc)}, status_code=400)
    return JSONResponse(state.public_faults())


@router.post("/reset", dependencies=[Depends(require_owner)])
async def reset(request: Request) -> dict[str, Any]:
    """Zero the stats and quota usage, clear the scripts, restore the configured faults
    (tasks, device codes and logins stay)."""
    state = context_of(request).state
    state.reset()
    return {"stats": state.stats(), "faults": state.public_faults()}


@router.get("/device/pending", dependencies=[Depends(require_owner)])
async def pending_device_logins(request: Request) -> dict[str, Any]:
    """The user codes of device logins waiting for a decision."""
    return {"user_codes": context_of(request).state.logins.pending_user_codes(now=time.time())}


@router.post("/device/approve", dependencies=[Depends(require_owner)])
async def approve_device_login(request: Request) -> JSONResponse:
    """``{"user_code", "user"?: e-mail or subject (default: the first user), "deny"?: bool}``."""
    try:
        body = _json_object(await request.body(), {"user_code", "user", "deny"})
        user_code, user, deny = body.get("user_code"), body.get("user"), body.get("deny", False)
        if not isinstance(user_code, str) or not isinstance(user, (str, type(None))) or not isinstance(deny, bool):
            raise ValueError("user_code and user must be strings, deny true or false")
        logins = context_of(request).state.logins
        logins.decide(user_code, user, deny=deny, now=time.time())
    except ValueError as exc:
        return _invalid(400, str(exc))
    except LookupError as exc:
        return _invalid(404, str(exc))
    return JSONResponse({"user_code": user_code, "status": "denied" if deny else "approved"})


@router.post("/refresh-tokens/revoke", dependencies=[Depends(require_owner)])
async def revoke_logins(request: Request) -> JSONResponse:
    """Revoke every login, or every login of ``{"user": e-mail or subject}``: their refresh tokens stop working."""
    try:
        user = _json_object(await request.body(), {"user"}).get("user")
        if not isinstance(user, (str, type(None))):
            raise ValueError("user must be a string")
        revoked = context_of(request).state.logins.revoke_families(user)
    except ValueError as exc:
        return _invalid(400, str(exc))
    return JSONResponse({"families_revoked": revoked})


def _json_object(raw: bytes, allowed: set[str]) -> dict[str, Any]:
    body = json.loads(raw or b"{}")  # a JSONDecodeError is a ValueError
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    return body


def _invalid(status: int, description: str) -> JSONResponse:
    return JSONResponse({"error": "invalid_request", "error_description": description}, status_code=status)
