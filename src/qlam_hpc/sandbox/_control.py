"""Control endpoints under ``/_sandbox/`` for tests and demos: stats, faults, reset.

They need no authentication: the sandbox only ever listens on loopback.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from ._context import context_of

__all__ = ["router"]

router = APIRouter(prefix="/_sandbox")


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    """Counters since start or the last reset."""
    return context_of(request).state.stats()


@router.get("/faults")
async def get_faults(request: Request) -> dict[str, Any]:
    return context_of(request).state.public_faults()


@router.post("/faults")
async def set_faults(request: Request) -> JSONResponse:
    """Change ``latency``, ``error_rate``, ``token_lifetime``, ``task_duration``, ``revoke_tokens_before``
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


@router.post("/reset")
async def reset(request: Request) -> dict[str, Any]:
    """Zero the stats and quota usage, clear the scripts, restore the configured faults (tasks stay)."""
    state = context_of(request).state
    state.reset()
    return {"stats": state.stats(), "faults": state.public_faults()}
