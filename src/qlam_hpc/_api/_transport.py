"""How the httpx clients reach the API: timeouts, TLS trust, proxies, headers.

Proxies come from the environment the way httpx (and curl, and requests) read
them: ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``, through
``trust_env``. Trust is the token fetch's (``_tls``): ``SSL_CERT_FILE``, else
``SSL_CERT_DIR``, else ``REQUESTS_CA_BUNDLE``, so a site that set up any of them for
its proxy's CA works as its users expect; a directory of hashed certificates works too.
"""

from __future__ import annotations

import ssl
from typing import Any

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


def ssl_context(settings: ApiSettings) -> ssl.SSLContext | bool:
    """A context trusting ``settings.ca_bundle``, or ``True`` for httpx's default trust."""
    from .._tls import verify

    return verify(settings.ca_bundle)


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
    from .._tls import failure

    # A certificate the client does not trust stays untrusted on the next attempt, and a
    # plain-http server does not learn TLS.
    return failure(exc, "") is None
