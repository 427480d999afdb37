"""``QlamRequestsAuth``: the shared token for code written with ``requests``.

``requests`` is not a dependency of qlam-hpc: this module is imported only when
``qlam_hpc.QlamRequestsAuth`` is first used, and then needs ``requests`` installed.

Redirects: ``requests`` follows them and copies this module's response hook onto each
redirected request, but strips ``Authorization`` when the redirect leaves the host. A 401
from such a host is not a refusal of our token, and answering it with a fresh token would
hand a valid token to whoever the API (or an attacker in its place) redirected to — and
spend a token request of the array's quota. So the retry happens only when the refused
request carried *our* token to the origin it was given for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import requests
import requests.auth

if TYPE_CHECKING:
    from .._provider import TokenProvider

# Marks the one retry, so a second 401 is returned instead of retried again.
_RETRIED = "_qlam_hpc_retried"


class QlamRequestsAuth(requests.auth.AuthBase):
    """``requests`` auth sending ``Authorization: Bearer <token>`` from a ``TokenProvider``.

    On a 401 it asks the provider for a token other than the refused one — through the
    single-flight cache, so a job array meeting a revoked token makes one token request —
    and sends the request once more. A second 401 is the caller's answer. Never a loop.

    >>> session = requests.Session()
    >>> session.auth = QlamRequestsAuth()
    >>> session.get("https://api.quera.com/v2/squin-256q/tasks")
    """

    def __init__(self, provider: TokenProvider | None = None, *, min_ttl: float = 0.0) -> None:
        if provider is None:
            from .._provider import TokenProvider

            provider = TokenProvider.from_env()
        self.provider = provider
        self.min_ttl = min_ttl

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.provider.get_token(min_ttl=self.min_ttl)
        request.headers["Authorization"] = f"Bearer {token}"
        # A streamed body (a file) must be rewound to be sent again after a 401.
        body = request.body
        position = body.tell() if body is not None and hasattr(body, "tell") and hasattr(body, "seek") else None
        request.register_hook("response", _RetryOnce(self.provider, token, position, _origin(request.url)))
        return request


def _origin(url: str | None) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in: what "the same server" means."""
    from urllib.parse import urlsplit

    parts = urlsplit(url or "")
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    return (scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme))


class _RetryOnce:
    def __init__(
        self, provider: TokenProvider, token: str, position: int | None, origin: tuple[str, str, int | None]
    ) -> None:
        self.provider = provider
        self.token = token
        self.position = position
        self.origin = origin

    def __call__(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if response.status_code != 401 or getattr(request, _RETRIED, False):
            return response
        # Only a refusal of the token we sent, by the server we sent it to: a redirect to
        # another host arrives here without it (requests stripped it), or with another
        # credential (netrc), and must get neither a refresh nor a token.
        if request.headers.get("Authorization") != f"Bearer {self.token}" or _origin(request.url) != self.origin:
            return response
        body = request.body
        if hasattr(body, "read") and self.position is None:
            return response  # a one-shot stream: cannot be sent twice
        fresh = self.provider.invalidate(self.token)
        # Free the connection for the retry (the same pattern as requests' HTTPDigestAuth).
        response.content  # noqa: B018
        response.close()
        retry = request.copy()
        if self.position is not None:
            body.seek(self.position)  # type: ignore[union-attr]
        retry.headers["Authorization"] = f"Bearer {fresh}"
        # copy() keeps the hooks, this one included: the flag stops it retrying twice.
        setattr(retry, _RETRIED, True)
        second = response.connection.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        return second
