"""What every route needs: the configuration, the signing key and the mutable state."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from starlette.requests import Request

from ._config import SandboxConfig
from ._keys import SigningKey
from ._state import SandboxState

__all__ = ["SandboxContext", "context_of", "is_owner", "require_owner"]


@dataclass(frozen=True)
class SandboxContext:
    """Stored on ``app.state.sandbox`` by ``create_app``."""

    config: SandboxConfig
    key: SigningKey
    state: SandboxState
    base_url: str | None = None
    # Who may change the sandbox through /_sandbox/ (faults, clients, approvals): its owner.
    # On a shared login node every local user reaches loopback, so the control routes want it.
    control_token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    def base(self, request: Request) -> str:
        """The sandbox's URL without a trailing slash.

        A runner that knows its URL fixes it, so the issuer never depends on the
        Host header a client sent (``localhost`` vs ``127.0.0.1`` would otherwise
        give two issuers); a bare ``create_app`` falls back to the request's URL.
        """
        return (self.base_url or str(request.base_url)).rstrip("/")

    def issuer(self, request: Request) -> str:
        """Auth0 style: the tenant URL with a trailing slash."""
        return self.base(request) + "/"

    @property
    def approver_cookie(self) -> str:
        """The value of the cookie that lets a browser approve device logins at ``/activate``.

        Derived from the control token, not the token itself: browsers send a cookie for
        127.0.0.1 to every port of it, so another user's server there may see it, and then
        it must not open the control routes.  It dies with this run (a new token each start).
        """
        return hmac.new(self.control_token.encode(), b"approve device logins at /activate", "sha256").hexdigest()


def is_owner(request: Request) -> bool:
    """Whether the request carries ``Authorization: Bearer <control token>`` (compared in constant time)."""
    expected = f"Bearer {context_of(request).control_token}"
    given = request.headers.get("authorization", "")
    return secrets.compare_digest(given.encode(), expected.encode())


def require_owner(request: Request) -> None:
    """A FastAPI dependency of the control routes: ``Authorization: Bearer <control token>``."""
    from fastapi import HTTPException

    if not is_owner(request):
        raise HTTPException(
            status_code=401,
            detail="the control routes need Authorization: Bearer $QLAM_SANDBOX_CONTROL_TOKEN (the sandbox owner's)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def context_of(request: Request) -> SandboxContext:
    context: SandboxContext = request.app.state.sandbox
    return context
