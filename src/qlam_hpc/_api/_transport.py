"""How the httpx clients reach the API: timeouts, TLS trust, proxies, headers.

Proxies come from the environment the way httpx (and curl, and requests) read
them: ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``, through
``trust_env``. Trust is the token fetch's (``_tls``): ``SSL_CERT_FILE``, else
``SSL_CERT_DIR``, else ``REQUESTS_CA_BUNDLE``, so a site that set up any of them for
its proxy's CA works as its users expect; a directory of hashed certificates works too.
"""

from __future__ import annotations

import contextlib
import contextvars
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx

from .._version import __version__
from ._settings import ApiSettings

# Connections kept open for reuse: enough for an AsyncQlamClient polling dozens of tasks
# at once without opening a new TLS connection per request. An idle connection is
# dropped after 4 s, before servers that close idle ones at 5 s (uvicorn's and many
# proxies' default) do so under our feet: a request sent on a connection the server
# is closing fails, and for a POST that failure is ambiguous.
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=4.0)


def user_agent() -> str:
    """``qlam-hpc/<version> httpx/<version>``: QuEra can tell these requests apart."""
    return f"qlam-hpc/{__version__} httpx/{httpx.__version__}"


def ssl_context(settings: ApiSettings) -> ssl.SSLContext:
    """A context trusting ``settings.ca_bundle``, else certifi's bundle (httpx's default)."""
    from .._tls import context

    return context(settings.ca_bundle)


def client_options(settings: ApiSettings, *, auth: httpx.Auth | None, transport: Any = None) -> dict[str, Any]:
    """Keyword arguments shared by ``httpx.Client`` and ``httpx.AsyncClient``."""
    options: dict[str, Any] = {
        "base_url": settings.base_url,
        "auth": auth,
        "timeout": httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
        "verify": ssl_context(settings),
        "trust_env": settings.trust_env,
        "headers": {"User-Agent": user_agent(), "Accept": "application/json"},
        "limits": LIMITS,
        # A redirect would carry the request elsewhere; the API does not redirect, so
        # one is reported rather than followed.
        "follow_redirects": False,
    }
    if transport is not None:
        options["transport"] = transport
    return options


#: Connection failures after which the server cannot have seen the request: safe to repeat even a POST.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Transport failures that no retry can fix.
PERMANENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


def retryable(exc: httpx.TransportError) -> bool:
    if isinstance(exc, PERMANENT):
        return False
    from .._tls import failure, unresolved

    # A certificate the client does not trust stays untrusted on the next attempt, a
    # plain-http server does not learn TLS, and a host name DNS does not know stays unknown.
    return failure(exc, "") is None and unresolved(exc) is None


# --- one deadline per request ----------------------------------------------------------------
#
# httpx's timeouts bound each read, write and connect; nothing bounds a request as a whole,
# so a server (or proxy) that sends a byte a second holds it for ever, headers included.
# The clients' connection pools get a network backend whose streams give every read, write
# and connect at most what is left of the current request's deadline, and fail once it is
# spent. The deadline is a context variable, set around each attempt (``deadline``): per
# thread for ``QlamClient``, per task for ``AsyncQlamClient``'s concurrent polls.

_deadline: contextvars.ContextVar[tuple[float, float, str] | None] = contextvars.ContextVar(
    "qlam_api_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float, url: str) -> Iterator[None]:
    """Everything the pooled connections do inside ends within ``seconds``."""
    token = _deadline.set((time.monotonic() + seconds, seconds, url))
    try:
        yield
    finally:
        _deadline.reset(token)


def _left(timeout: float | None, error: type[httpcore.TimeoutException]) -> tuple[float | None, bool]:
    """``(timeout for this operation, whether the deadline shortened it)``."""
    current = _deadline.get()
    if current is None:
        return timeout, False
    left = current[0] - time.monotonic()
    if left <= 0:
        raise error(_overdue(current))
    if timeout is None or left < timeout:
        return left, True
    return timeout, False


def _overdue(current: tuple[float, float, str]) -> str:
    from ._requests import overdue

    return overdue(current[2], current[1])


def _timed_out(error: type[httpcore.TimeoutException], shortened: bool, exc: httpcore.TimeoutException) -> Exception:
    current = _deadline.get()
    return error(_overdue(current)) if shortened and current is not None else exc


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        timeout, shortened = _left(timeout, httpcore.ReadTimeout)
        try:
            return self._stream.read(max_bytes, timeout)
        except httpcore.ReadTimeout as exc:
            raise _timed_out(httpcore.ReadTimeout, shortened, exc) from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        timeout, shortened = _left(timeout, httpcore.WriteTimeout)
        try:
            self._stream.write(buffer, timeout)
        except httpcore.WriteTimeout as exc:
            raise _timed_out(httpcore.WriteTimeout, shortened, exc) from None

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        timeout, _ = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        timeout, _ = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - the API is never a unix socket
        return _Stream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        timeout, shortened = _left(timeout, httpcore.ReadTimeout)
        try:
            return await self._stream.read(max_bytes, timeout)
        except httpcore.ReadTimeout as exc:
            raise _timed_out(httpcore.ReadTimeout, shortened, exc) from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        timeout, shortened = _left(timeout, httpcore.WriteTimeout)
        try:
            await self._stream.write(buffer, timeout)
        except httpcore.WriteTimeout as exc:
            raise _timed_out(httpcore.WriteTimeout, shortened, exc) from None

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        timeout, _ = _left(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        timeout, _ = _left(timeout, httpcore.ConnectTimeout)
        return _AsyncStream(await self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - the API is never a unix socket
        return _AsyncStream(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def bound_requests(client: httpx.Client | httpx.AsyncClient) -> None:
    """Put the deadline's backend under every connection pool ``client`` owns (its transport
    and the proxies' it mounted from the environment). A transport given by the caller that
    has no httpcore pool (a mock, an ASGI app) is left as it is."""
    transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, (_Backend, _AsyncBackend)) or backend is None:
            continue
        if isinstance(backend, httpcore.AsyncNetworkBackend):
            pool._network_backend = _AsyncBackend(backend)  # type: ignore[union-attr]
        elif isinstance(backend, httpcore.NetworkBackend):
            pool._network_backend = _Backend(backend)  # type: ignore[union-attr]


def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``response``, refused (``ApiError``) past ``limit`` bytes; kept
    on the response, so ``response.content`` and ``.json()`` work as after ``read()``."""
    from ._requests import too_large

    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(response.status_code, limit, str(response.url))
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_large(response.status_code, limit, str(response.url))
        chunks.append(chunk)
    return _keep(response, b"".join(chunks))


async def aread_capped(response: httpx.Response, limit: int) -> bytes:
    """``read_capped`` for an ``AsyncClient``'s response."""
    from ._requests import too_large

    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(response.status_code, limit, str(response.url))
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_large(response.status_code, limit, str(response.url))
        chunks.append(chunk)
    return _keep(response, b"".join(chunks))


def _keep(response: httpx.Response, body: bytes) -> bytes:
    # What ``Response.read`` stores: httpx has no public way to hand it a body read in pieces.
    response._content = body
    return body
