"""What every route needs: the configuration, the signing key and the mutable state."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from ._config import SandboxConfig
from ._keys import SigningKey
from ._state import SandboxState

__all__ = ["SandboxContext", "context_of"]


@dataclass(frozen=True)
class SandboxContext:
    """Stored on ``app.state.sandbox`` by ``create_app``."""

    config: SandboxConfig
    key: SigningKey
    state: SandboxState
    base_url: str | None = None

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


def context_of(request: Request) -> SandboxContext:
    context: SandboxContext = request.app.state.sandbox
    return context
