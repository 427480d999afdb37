"""``create_app``: the sandbox as an ASGI application, for uvicorn or any ASGI server."""

from __future__ import annotations

from fastapi import FastAPI

from . import _control, _idp
from ._bearer import ApiError, api_error_response
from ._config import SandboxConfig
from ._context import SandboxContext
from ._keys import SigningKey
from ._state import SandboxState

__all__ = ["create_app"]


def create_app(config: SandboxConfig | None = None, *, base_url: str | None = None) -> FastAPI:
    """The sandbox identity provider for ``config`` (default: one random client).

    ``base_url`` (e.g. ``http://127.0.0.1:43123``) fixes the issuer and the URLs in
    the discovery document; without it they follow each request's own URL.
    The signing key is made here: from ``config.signing_key_file`` or freshly generated.
    """
    config = config or SandboxConfig.default()
    key = SigningKey.load(config.signing_key_file) if config.signing_key_file else SigningKey.generate()
    # No /docs or /openapi.json: the real identity provider has none, and clients
    # must not come to depend on them.
    app = FastAPI(title="qlam-hpc sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = SandboxContext(
        config=config, key=key, state=SandboxState(config), base_url=base_url.rstrip("/") if base_url else None
    )
    app.add_exception_handler(ApiError, api_error_response)
    app.include_router(_idp.router)
    app.include_router(_control.router)
    return app
