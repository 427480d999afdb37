"""A local, offline, Auth0-compatible identity provider, and an emulated QLAM tasks
API that accepts its tokens, to test qlam-hpc against.

``SandboxConfig`` and ``SandboxClient`` need only the standard library;
``Sandbox`` and ``create_app`` need the ``sandbox`` extra (FastAPI, uvicorn,
PyJWT) and are imported on first use, so ``qlam-hpc --help`` never pays for them.
See docs/sandbox.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import SandboxClient, SandboxConfig, SandboxUser

if TYPE_CHECKING:
    from ._app import create_app
    from ._server import Sandbox

__all__ = ["Sandbox", "SandboxConfig", "SandboxClient", "SandboxUser", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "Sandbox":
        from ._server import Sandbox

        return Sandbox
    if name == "create_app":
        from ._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
