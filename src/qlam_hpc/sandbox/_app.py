"""``create_app``: the sandbox as an ASGI application, for uvicorn or any ASGI server."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import _control, _idp, _tasks_api
from ._bearer import ApiError, api_error_response
from ._client_auth import ClientAuthenticator
from ._config import SandboxConfig
from ._context import SandboxContext
from ._exchange import ExchangeVerifier
from ._keys import SigningKey
from ._state import SandboxState
from ._tasks_store import TaskStore, state_dir_signing_key

__all__ = ["create_app"]


def create_app(config: SandboxConfig | None = None, *, base_url: str | None = None) -> FastAPI:
    """The sandbox identity provider for ``config`` (default: one random client).

    ``base_url`` (e.g. ``http://127.0.0.1:43123``) fixes the issuer and the URLs in
    the discovery document; without it they follow each request's own URL.
    The signing key is made here: from ``config.signing_key_file``, else from (or
    into) ``config.state_dir``, else freshly generated.  Tasks go to SQLite in
    ``config.state_dir``, or in memory; ``app.state.tasks_store`` holds the store.
    """
    config = config or SandboxConfig.default()
    if config.signing_key_file:
        key = SigningKey.load(config.signing_key_file)
    elif config.state_dir:
        key = state_dir_signing_key(config.state_dir)
    else:
        key = SigningKey.generate()
    # /openapi.json describes the emulated QLAM tasks API only: the identity
    # provider's and the control routes stay out of it (the real identity
    # provider publishes no OpenAPI, and clients must not come to depend on one).
    app = FastAPI(
        title="qlam-hpc sandbox: emulated QLAM API",
        version="2",
        description="The QLAM v2 tasks API as the qlam-hpc sandbox emulates it. See docs/sandbox.md.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    state = SandboxState(config)
    app.state.sandbox = SandboxContext(
        config=config, key=key, state=state, base_url=base_url.rstrip("/") if base_url else None
    )
    # Clients' secrets and public keys, changeable at run time; unusable keys fail here, at start.
    app.state.client_auth = ClientAuthenticator(config)
    app.state.exchange = ExchangeVerifier(config.exchange_issuers, config.exchange_audience)
    app.state.tasks_store = TaskStore.open(config.state_dir)
    app.add_exception_handler(ApiError, api_error_response)
    app.add_exception_handler(StarletteHTTPException, _tasks_api.http_error_response)
    app.add_middleware(_tasks_api.TokenIssueRecorder, state=state)
    app.include_router(_idp.router, include_in_schema=False)
    app.include_router(_control.router, include_in_schema=False)
    app.include_router(_tasks_api.router)
    _tasks_api.install_openapi(app, config.qpu_modes)
    return app
