"""Authentication hooks for HTTP clients: bearer tokens from the shared provider.

On a 401 the hook asks the provider for a token other than the refused one —
through the single-flight cache, so many processes meeting a revoked token
cause one new token request — and retries once. Never a loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from ._provider import TokenProvider


class QlamAuth(httpx.Auth):
    """``httpx.Auth`` that sends ``Authorization: Bearer <token>`` from a ``TokenProvider``.

    >>> client = httpx.Client(auth=QlamAuth(TokenProvider.from_env()))
    """

    def __init__(self, provider: TokenProvider | None = None, *, min_ttl: float = 0.0) -> None:
        if provider is None:
            from ._provider import TokenProvider

            provider = TokenProvider.from_env()
        self.provider = provider
        self.min_ttl = min_ttl

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.provider.get_token(min_ttl=self.min_ttl)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.provider.invalidate(token)}"
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        import anyio.to_thread

        # The provider may wait on a lock held by another process: keep that off the event loop.
        token = await anyio.to_thread.run_sync(lambda: self.provider.get_token(min_ttl=self.min_ttl))
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            fresh = await anyio.to_thread.run_sync(self.provider.invalidate, token)
            request.headers["Authorization"] = f"Bearer {fresh}"
            yield request
