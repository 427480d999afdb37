"""One API call over the standard library's ``http.client``: the CLI's single-request path.

A batch job that runs ``qlam-hpc api GET ...`` or ``qlam-hpc tasks get ...`` once per
array task pays the interpreter's start-up in every task. httpx (with httpcore, h11,
anyio and, through its command-line module, click and rich) and the pydantic models
cost about ten times what the request itself does, and on a cluster every module file
is a metadata round trip to the shared filesystem. One request on one connection needs
none of them: ``http.client`` is the standard library's HTTP/1.1 client, and the
protocol — what is retried, how long, which error each answer is — is ``_requests``'s,
the same as ``QlamClient``'s.

``send`` serves only what it fully covers: a direct connection (no proxy variable set:
the caller checks ``proxied``), http on loopback or https with the trust of ``_tls``
(certifi's bundle when no CA variable is set, as httpx does). A 401 gets one fresh
token through the provider's single-flight cache, as ``QlamAuth`` does.

Each attempt is bounded as the httpx clients' are: ``QLAM_API_DEADLINE`` for the whole
exchange (a timer shuts the socket down, which ends a read however slowly the server
sends), ``QLAM_API_MAX_BODY`` for the answer; a redirect is an ``ApiError``, not followed.
"""

from __future__ import annotations

import json
import time
from collections import namedtuple

from .._log import log
from .._version import __version__
from . import _requests as rq
from ._settings import ApiSettings

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import http.client
    import ssl
    from collections.abc import Callable, Mapping
    from typing import Any, NamedTuple

#: Variables that route a request through a proxy (httpx, curl and requests read them).
PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")


# The type checker reads the fields, typed, from a NamedTuple that never runs (typing
# costs the light path its import time).
if TYPE_CHECKING:  # pragma: no cover

    class _AnswerFields(NamedTuple):
        status: int
        reason: str
        headers: list[tuple[str, str]]
        body: bytes
        url: str

else:
    _AnswerFields = namedtuple("_AnswerFields", ("status", "reason", "headers", "body", "url"))


class Answer(_AnswerFields):
    """An answer: ``headers`` are (name, value) pairs with lower-case names, as httpx gives them."""

    __slots__ = ()

    def header(self, name: str, default: str = "") -> str:
        return next((v for k, v in self.headers if k == name), default)


def proxied(settings: ApiSettings, environ: Mapping[str, str]) -> bool:
    """True when the environment may route the API through a proxy: then httpx, which
    reads every proxy variable and ``NO_PROXY``, makes the call."""
    return settings.trust_env and any(environ.get(v) or environ.get(v.upper()) for v in PROXY_VARIABLES)


def user_agent() -> str:
    import sys

    return f"qlam-hpc/{__version__} python/{sys.version_info[0]}.{sys.version_info[1]}"


def send(
    settings: ApiSettings,
    request: rq.ApiRequest,
    token: str,
    refresh: Callable[[str], str],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Answer:
    """Send ``request`` with ``token``, within ``settings.retry``; ``refresh(token)`` is asked for
    another token once, after a 401. Returns the answer whatever its status (a 429 or 5xx
    only once the retries are spent); raises ``ApiUnreachable`` or ``TlsError`` when no
    answer came."""
    url = settings.base_url + request.path
    if request.params:
        from urllib.parse import urlencode

        url += ("&" if "?" in request.path else "?") + urlencode(request.params)
    body, headers = _body(request)
    answer = _with_retries(settings, request, url, body, headers, token, sleep)
    if answer.status == 401:
        answer = _with_retries(settings, request, url, body, headers, refresh(token), sleep)
    if rq.is_redirect(answer.status):
        raise rq.redirected(answer.status, answer.header("location"), url)
    if request.method != "GET":  # a state-changing call: audited when auditing is on
        from .._audit import api_answer

        api_answer(request, answer.status, answer.headers, answer.body)
    return answer


def _body(request: rq.ApiRequest) -> tuple[bytes | None, dict[str, str]]:
    headers = {"User-Agent": user_agent(), "Accept": "application/json"}
    headers.update(request.headers)
    body = request.content
    if request.json is not None:
        # httpx's encoding of json=, so both paths send the same bytes.
        body = json.dumps(request.json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        headers["Content-Type"] = "application/json"
    return body, headers


def _with_retries(
    settings: ApiSettings,
    request: rq.ApiRequest,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    token: str,
    sleep: Callable[[float], None],
) -> Answer:
    retry = rq.Retry(settings.retry, idempotent=request.idempotent)
    headers = {**headers, "Authorization": f"Bearer {token}"}
    while True:
        try:
            answer = _exchange(settings, request.method, url, body, headers)
        except _Failed as failed:
            from .._tls import failure, unresolved

            # A certificate stays untrusted, and a host name that does not resolve stays
            # unknown: neither is retried.
            if failure(failed.error, "") is not None or unresolved(failed.error) is not None:
                retry.give_up()
                delay = None
            else:
                delay = retry.delay(sent=failed.sent)
            if delay is None:
                raise rq.unreachable(url, failed.error, retry.attempt) from None
            log("warning", f"QLAM API {url}: {rq.describe(failed.error)}; {rq.retrying(delay, retry)}")
            sleep(delay)
            continue
        if answer.status in rq.RETRY_STATUSES:
            delay = retry.delay(status=answer.status, headers=dict(answer.headers))
            if delay is not None:
                log("warning", f"QLAM API {url} answered HTTP {answer.status}; {rq.retrying(delay, retry)}")
                sleep(delay)
                continue
        return answer


class _Failed(Exception):
    def __init__(self, error: BaseException, sent: bool) -> None:
        self.error, self.sent = error, sent


class _Watchdog:
    """Shuts the connection's socket down at the request's deadline: that wakes whatever read
    is waiting (headers or body), where a per-read timeout never fires for a server that
    sends a byte a second."""

    def __init__(self, seconds: float) -> None:
        import threading

        self.fired = False
        self.sock: Any = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: Any) -> None:
        with self._lock:
            self.sock = sock
            if self.fired:
                self._shut()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shut()

    def _shut(self) -> None:
        import contextlib
        import socket

        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _exchange(settings: ApiSettings, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Answer:
    """One attempt on a new connection, within ``settings.deadline`` and ``settings.max_body``.
    A failure before the request was written is ``sent=False``: the server cannot have acted
    on it, so even a POST may be repeated."""
    watchdog = _Watchdog(settings.deadline)
    try:
        return _attempt(settings, method, url, body, headers, watchdog)
    except _Failed as failed:
        if watchdog.fired:
            raise _Failed(TimeoutError(rq.overdue(url, settings.deadline)), failed.sent) from None
        raise
    finally:
        watchdog.cancel()


def _attempt(
    settings: ApiSettings, method: str, url: str, body: bytes | None, headers: dict[str, str], watchdog: _Watchdog
) -> Answer:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname is not None  # the API's base URL is checked when the settings are read
    connection: http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=settings.connect_timeout, context=_context(settings)
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=settings.connect_timeout)
    try:
        try:
            connection.connect()
        except (OSError, http.client.HTTPException) as exc:
            raise _Failed(exc, sent=False) from None
        watchdog.watch(connection.sock)
        connection.sock.settimeout(settings.timeout)
        try:
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            content = _read_capped(response, settings.max_body, url)
        except (OSError, http.client.HTTPException) as exc:
            raise _Failed(exc, sent=True) from None
        if watchdog.fired:  # the socket was shut down as the answer ended: it may be cut short
            raise _Failed(TimeoutError(rq.overdue(url, settings.deadline)), sent=True)
        merged: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return Answer(response.status, response.reason, list(merged.items()), content, url)
    finally:
        connection.close()


def _read_capped(response: http.client.HTTPResponse, limit: int, url: str) -> bytes:
    """The body, refused (``ApiError``) past ``limit`` bytes without reading more than that."""
    declared = response.getheader("content-length") or ""
    if declared.isdigit() and int(declared) > limit:
        raise rq.too_large(response.status, limit, url)
    content = response.read(limit + 1)
    if len(content) > limit:
        raise rq.too_large(response.status, limit, url)
    return content


def _context(settings: ApiSettings) -> ssl.SSLContext:
    """The trust httpx would use: the CA bundle ``_tls`` names, else certifi's."""
    from .._tls import context

    return context(settings.ca_bundle)
