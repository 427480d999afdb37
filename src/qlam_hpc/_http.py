"""The HTTP adapter for token requests: sends, retries within bounds, maps failures.

httpx is imported here and only here on the token path, so a warm cache hit
never pays for it.

Every request to the identity provider (client_credentials, device, refresh, revocation,
discovery) goes through ``_exchange``, which bounds it two ways httpx does not:

- **a deadline for the whole request**, ``QLAM_HTTP_TIMEOUT`` and never past what is left
  of ``QLAM_RETRY_DEADLINE``. httpx's timeouts apply to each read, so a server (or proxy)
  that sends a byte a second keeps a request, and the refresh lock with it, for as long
  as it likes. At the deadline a timer shuts the request's socket down;
- **a cap on the answer**, ``BODY_LIMIT``: a token answer is a few kilobytes, so a larger
  one is refused as it streams in, never read whole.

TLS trust is ``_tls``'s, the same as the tasks client's; a TLS failure is a ``TlsError``
at once, never retried as if the network were down, and so is a host name that does not
resolve. Each retry is an info line (``-v``); the failure that ends them is the one line a
user sees, and it says how many attempts were made. Answers are parsed within
``_jsonlimits``' bounds.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import namedtuple
from collections.abc import Callable

from ._errors import ConfigurationError, IdentityProviderUnreachable, InvalidTokenResponse, RateLimited
from ._log import log
from ._oauth import ANSWER_LIMIT, backoff_delay, parse_token_response, server_wait, token_request
from ._settings import Settings
from ._tls import unresolved
from ._tokens import Token

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import socket
    from collections.abc import Mapping
    from typing import Any, NamedTuple

    import httpx

    from ._oauth import DeviceAuthorization, TokenRequest, UserTokens

    class _AnswerFields(NamedTuple):  # the fields as the type checker reads them
        status_code: int
        reason_phrase: str
        headers: httpx.Headers
        content: bytes

else:
    _AnswerFields = namedtuple("_AnswerFields", "status_code reason_phrase headers content")


def fetch_token(
    settings: Settings,
    *,
    obtained_by: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    transport: httpx.BaseTransport | None = None,
    grant: Mapping[str, str] | None = None,
) -> Token:
    """One token from the identity provider, with settings whose credential is resolved
    (``_client_auth.resolve_credentials``; a still-unresolved source is read here).

    ``grant`` replaces the client_credentials grant's fields of the request (token exchange:
    ``_exchange.exchange_form``); endpoint, client authentication, retries and checks stay.

    Connection errors and 5xx are retried with full-jitter backoff; 429 waits as long as
    the IdP asks, if that fits in the policy's deadline. OAuth errors are never retried.
    With discovery, the document is read first (once per process), within the same budget.
    """
    from ._client_auth import choose_method, client_authentication

    retry = _Retrying(settings, sleep=sleep, clock=clock, rng=rng)
    with _client(settings, transport) as client:
        endpoint, supported, issuer = settings.token_url, None, None
        if settings.discovery_url:
            from ._discovery import discover

            def get(url: str) -> tuple[int, Mapping[str, str], bytes]:
                response, _ = retry.send(client, url, lambda: client.build_request("GET", url, headers=_ACCEPT))
                return response.status_code, response.headers, response.content

            found = discover(settings.discovery_url, get)
            supported, issuer = found.auth_methods, found.issuer
            if settings.discovers_endpoint:
                endpoint = found.token_endpoint
        assertion_audience = None
        if settings.assertion_audience == "issuer":
            if not issuer:
                raise ConfigurationError("QLAM_CLIENT_ASSERTION_AUD=issuer, but the discovery document names no issuer")
            assertion_audience = issuer
        # Built before the first attempt, so a bad key fails at once, not after retries.
        auth = client_authentication(settings, choose_method(settings, supported))

        def post() -> httpx.Request:
            # A request per attempt: a private_key_jwt assertion must never be sent twice.
            request = token_request(
                settings, endpoint=endpoint, auth=auth, now=clock(), assertion_audience=assertion_audience
            )
            form = {**request.form, **grant} if grant else request.form
            return client.build_request("POST", request.url, data=form, headers={**_ACCEPT, **request.headers})

        response, sent_at = retry.send(client, endpoint, post)
        return parse_token_response(
            response.status_code, response.headers, response.content, endpoint, sent_at, obtained_by
        )


class _Retrying:
    """One retry budget (attempts per request, one deadline for everything) over several requests."""

    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        rng: random.Random | None,
    ) -> None:
        self.policy = settings.retry
        self.http_timeout = settings.http_timeout
        self.trust = settings.tls_trust
        self.sleep, self.clock, self.rng = sleep, clock, rng
        self.started = clock()
        # The deadline of requests in flight is real time, whatever clock the caller gave.
        self.began = time.monotonic()

    def send(
        self, client: httpx.Client, url: str, build: Callable[[], httpx.Request], *, spends: str | None = None
    ) -> tuple[_Answer, float]:
        """``(answer, sent_at)`` for the first answer that is neither 5xx nor 429; ``build()``
        makes the ``httpx.Request`` of each attempt.

        ``spends`` names what a request uses up (a rotating refresh token): such a request
        is repeated only when the server cannot have acted on it — no connection made,
        429, or 503 — since repeating a refresh the server did make would replay a spent
        token, and the identity provider would revoke the whole login.
        """
        import httpx

        policy, clock = self.policy, self.clock
        failure: Exception | None = None
        for attempt in range(1, policy.attempts + 1):
            seconds = min(self.http_timeout, policy.deadline - (time.monotonic() - self.began))
            if seconds <= 0 and failure is not None:
                raise failure
            seconds = max(seconds, 0.001)
            sent_at = clock()
            requested_wait: float | None = None
            final = False
            try:
                response = _exchange(client, build(), url, seconds, trust=self.trust)
            except _Overdue as exc:
                failure = IdentityProviderUnreachable(str(exc))
                final = spends is not None and exc.sent
            except httpx.TransportError as exc:
                reason = unresolved(exc)
                if reason is not None:
                    raise IdentityProviderUnreachable(_unresolved_message("identity provider", url, reason)) from None
                failure = IdentityProviderUnreachable(f"identity provider {url} is unreachable ({_describe(exc)})")
                final = spends is not None and not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            else:
                status = response.status_code
                if status == 429:
                    requested_wait = server_wait(response.headers, clock())
                    failure = _rate_limited(url, requested_wait)
                elif status >= 500:
                    failure = IdentityProviderUnreachable(
                        f"identity provider {url} answered HTTP {status} {response.reason_phrase}"
                    )
                    final = spends is not None and status != 503
                else:
                    return response, sent_at
            if final:
                raise IdentityProviderUnreachable(
                    f"{failure}; not repeated: the identity provider may have spent the {spends} already"
                )
            delay = requested_wait if requested_wait is not None else backoff_delay(policy, attempt - 1, self.rng)
            spent = clock() - self.started
            if attempt == policy.attempts or spent + delay > policy.deadline:
                raise _gave_up(failure, attempt, spent) if attempt > 1 else failure
            # Info, shown with -v: the failure that ends the retries is the one line a user sees.
            log("info", f"{failure}; retrying in {delay:.1f}s (attempt {attempt} of {policy.attempts})")
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises


# --- one request: a deadline, a body cap, TLS failures named ---------------------------------

#: The largest answer read from the identity provider. Token answers are a few kilobytes
#: (an Auth0 access token about 1 KiB, with an ID and refresh token under 8 KiB), discovery
#: documents under 16 KiB; anything bigger is not what was asked for.
BODY_LIMIT = ANSWER_LIMIT
# Plain bytes: a compressed answer could hide any size behind a small one.
_ACCEPT = {"Accept": "application/json", "Accept-Encoding": "identity"}


class _Answer(_AnswerFields):
    """An identity provider's answer, read in full (it fit under ``BODY_LIMIT``)."""

    __slots__ = ()


class _Overdue(Exception):
    """A request outlived its deadline; ``sent``: the request may have reached the server."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _Watchdog:
    """Ends a request at its deadline, whatever it is waiting for.

    httpcore reports each new connection through the request's ``trace`` extension; the
    watchdog keeps a duplicate of its socket, and when the timer fires shuts it down,
    which wakes the read (or TLS handshake) in progress with an error. Connections are
    not kept alive between requests (see ``_client``), so every request has its own.
    """

    def __init__(self, seconds: float) -> None:
        import threading

        self.fired = False
        self.connected = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            return
        # A duplicate: TLS takes over the original socket object, not the connection.
        duplicate = sock.dup()
        with self._lock:
            self.connected = True
            self._sockets.append(duplicate)
            if self.fired:
                _shut(duplicate)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    import socket

    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _exchange(
    client: httpx.Client, request: httpx.Request, url: str, seconds: float, *, trust: tuple[str, str] | None = None
) -> _Answer:
    """Send ``request`` and read its answer within ``seconds`` and ``BODY_LIMIT``.

    ``_Overdue`` at the deadline; ``TlsError`` for a certificate failure or a plain-http
    server; ``InvalidTokenResponse`` for an answer over the cap (a 5xx or 429 answer's body
    is cut there instead: only its status and headers are used); ``httpx.TransportError``
    for the rest, for the caller to retry.
    """
    import httpx

    from ._tls import failure as tls_failure

    request.extensions["timeout"] = httpx.Timeout(seconds).as_dict()
    watchdog = _Watchdog(seconds)
    request.extensions["trace"] = watchdog.trace
    overdue = _Overdue(
        f"identity provider {url} did not answer within {seconds:.3g}s "
        "(QLAM_HTTP_TIMEOUT per request, QLAM_RETRY_DEADLINE in all)",
        sent=True,
    )
    with watchdog:
        try:
            response = client.send(request, stream=True)
            try:
                content = _read_capped(response, url)
            finally:
                response.close()
        except httpx.TransportError as exc:
            if watchdog.fired:
                overdue.sent = watchdog.connected
                raise overdue from None
            tls = tls_failure(exc, url, trust)
            if tls is not None:
                raise tls from None
            raise
        except httpx.DecodingError:
            raise InvalidTokenResponse(f"identity provider {url} sent an answer that cannot be decoded") from None
        if watchdog.fired:  # the socket was shut down as the answer ended: it may be cut short
            raise overdue
    return _Answer(response.status_code, response.reason_phrase, response.headers, content)


def _read_capped(response: httpx.Response, url: str) -> bytes:
    status = response.status_code
    disposable = status == 429 or status >= 500
    too_big = InvalidTokenResponse(
        f"identity provider {url} sent an answer over {BODY_LIMIT // 1024} KiB (HTTP {status}); refusing it"
    )
    declared = response.headers.get("content-length", "")
    if not disposable and declared.isdigit() and int(declared) > BODY_LIMIT:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > BODY_LIMIT:
            if disposable:
                break
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _rate_limited(url: str, wait: float | None) -> RateLimited:
    from ._durations import format_duration

    after = f"; the limit resets in {format_duration(wait)}" if wait is not None else ""
    return RateLimited(f"identity provider {url} is rate limiting token requests (HTTP 429){after}", wait)


def _gave_up(failure: Exception, attempts: int, spent: float) -> Exception:
    """``failure`` saying how long it was retried, in its own one line."""
    after = f" (gave up after {attempts} attempts in {spent:.1f}s)"
    if isinstance(failure, RateLimited):
        return RateLimited(f"{failure}{after}", failure.retry_after)
    if isinstance(failure, IdentityProviderUnreachable):
        return IdentityProviderUnreachable(f"{failure}{after}")
    return failure


def _unresolved_message(what: str, url: str, reason: str) -> str:
    from ._urls import host_of

    host = host_of(url.partition("://")[2])
    return f"{what} {url} is unreachable: the host name {host} does not resolve ({reason}); not retried"


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- user context -------------------------------------------------------------------------


def _client(settings: Settings, transport: httpx.BaseTransport | None) -> httpx.Client:
    """The httpx client of one exchange with the identity provider: the site's TLS trust
    (``_tls``), proxies from the environment, and no kept-alive connections, so that each
    request has its own socket for its deadline (see ``_Watchdog``)."""
    import httpx

    from ._tls import context

    trust = settings.tls_trust
    return httpx.Client(
        timeout=settings.http_timeout,
        transport=transport,
        trust_env=True,
        verify=context(trust[1], trust[0]) if trust else context(None),
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def _user_endpoint(settings: Settings, client: httpx.Client, retry: _Retrying, name: str) -> str | None:
    """``token``, ``device_authorization`` or ``revocation`` endpoint: from the settings, else
    from the discovery document (read once per process). None: the server has none."""
    configured = {
        "token": None if settings.discovers_endpoint else settings.token_url,
        "device_authorization": settings.device_authorization_url,
        "revocation": settings.revocation_url,
    }[name]
    if configured or not settings.discovery_url:
        return configured
    from ._discovery import discover

    def get(url: str) -> tuple[int, Mapping[str, str], bytes]:
        response, _ = retry.send(client, url, lambda: client.build_request("GET", url, headers=_ACCEPT))
        return response.status_code, response.headers, response.content

    found = discover(settings.discovery_url, get)
    return {
        "token": found.token_endpoint,
        "device_authorization": found.device_authorization_endpoint,
        "revocation": found.revocation_endpoint,
    }[name]


def _post(client: httpx.Client, url: str, request: TokenRequest) -> httpx.Request:
    """The ``httpx.Request`` of a form POST (``_oauth``'s request objects)."""
    return client.build_request("POST", url, data=request.form, headers={**_ACCEPT, **request.headers})


def start_device_login(
    settings: Settings, *, transport: httpx.BaseTransport | None = None, clock: Callable[[], float] = time.time
) -> DeviceAuthorization:
    """Ask for a device code and a user code (RFC 8628 section 3.1)."""
    from ._oauth import device_authorization_request, parse_device_authorization

    retry = _Retrying(settings, sleep=time.sleep, clock=clock, rng=None)
    with _client(settings, transport) as client:
        url = _user_endpoint(settings, client, retry, "device_authorization")
        if url is None:
            raise ConfigurationError(
                f"the discovery document at {settings.discovery_url} names no device_authorization_endpoint: "
                "this server does not offer the device flow (or set QLAM_DEVICE_AUTHORIZATION_URL)"
            )
        request = device_authorization_request(settings, url)
        response, _ = retry.send(client, url, lambda: _post(client, url, request))
        return parse_device_authorization(response.status_code, response.headers, response.content, url)


def poll_device_login(
    settings: Settings,
    authorization: DeviceAuthorization,
    *,
    obtained_by: str | None = None,
    timeout: float | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> UserTokens:
    """Poll the token endpoint until the user approves (RFC 8628 section 3.4-3.5): every
    ``interval`` seconds, 5 more after each ``slow_down``; ``UserTokens`` when approved.

    ``access_denied`` raises ``AccessDenied``; ``expired_token``, or the code's lifetime or
    ``timeout`` running out, ``DeviceCodeExpired``. Connection trouble and 5xx answers
    are waited out until then: the approval may still come.
    """
    import httpx

    from ._errors import DeviceCodeExpired
    from ._oauth import SLOW_DOWN_STEP, _json_object, device_token_request, parse_user_tokens

    started = clock()
    ends = started + authorization.expires_in
    if timeout is not None:
        ends = min(ends, started + timeout)
    interval = authorization.interval
    retry = _Retrying(settings, sleep=sleep, clock=clock, rng=None)
    with _client(settings, transport) as client:
        url = _user_endpoint(settings, client, retry, "token")
        assert url is not None  # a token endpoint is always configured or discovered
        request = device_token_request(settings, url, authorization.device_code)
        while True:
            if clock() + interval > ends:
                raise DeviceCodeExpired(_not_approved(authorization, clock() - started))
            sleep(interval)
            sent_at = clock()
            try:
                response = _exchange(
                    client, _post(client, url, request), url, settings.http_timeout, trust=settings.tls_trust
                )
            except _Overdue as exc:
                log("warning", f"{exc}; polling again")
                continue
            except httpx.TransportError as exc:
                log("warning", f"identity provider {url} is unreachable ({_describe(exc)}); polling again")
                continue
            data = _json_object(response.content, url) or {}
            error = data.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += SLOW_DOWN_STEP
                log("info", f"the identity provider asked to poll more slowly: every {interval:g}s")
                continue
            if error == "expired_token":
                raise DeviceCodeExpired(_not_approved(authorization, clock() - started))
            if response.status_code >= 500:
                log("warning", f"identity provider {url} answered HTTP {response.status_code}; polling again")
                continue
            return parse_user_tokens(
                response.status_code, response.headers, response.content, url, sent_at, obtained_by
            )


def _not_approved(authorization: DeviceAuthorization, waited: float) -> str:
    from ._durations import format_duration

    return (
        f"the login with code {authorization.user_code} was not approved within {format_duration(waited)} "
        "and has expired: run qlam-hpc auth login again"
    )


def refresh_tokens(
    settings: Settings,
    refresh_token: str,
    *,
    obtained_by: str | None = None,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> UserTokens:
    """One refresh (RFC 6749 section 6): ``UserTokens`` with the next refresh token.

    Repeated only where the server cannot have spent the refresh token (see ``_Retrying``).
    """
    from ._oauth import parse_user_tokens, refresh_request

    retry = _Retrying(settings, sleep=sleep, clock=clock, rng=None)
    with _client(settings, transport) as client:
        url = _user_endpoint(settings, client, retry, "token")
        assert url is not None
        request = refresh_request(settings, url, refresh_token)
        response, sent_at = retry.send(client, url, lambda: _post(client, url, request), spends="refresh token")
        return parse_user_tokens(response.status_code, response.headers, response.content, url, sent_at, obtained_by)


def revoke_refresh_token(
    settings: Settings, refresh_token: str, *, transport: httpx.BaseTransport | None = None
) -> str | None:
    """Revoke a refresh token (RFC 7009); the endpoint used, or None when the server has none."""
    from ._oauth import parse_token_response, revocation_request

    retry = _Retrying(settings, sleep=time.sleep, clock=time.time, rng=None)
    with _client(settings, transport) as client:
        url = _user_endpoint(settings, client, retry, "revocation")
        if url is None:
            return None
        request = revocation_request(settings, url, refresh_token)
        response, _ = retry.send(client, url, lambda: _post(client, url, request))
        if response.status_code >= 400:
            # An OAuth error body gives a precise message; anything else is a bad answer.
            parse_token_response(response.status_code, response.headers, response.content, url, 0.0, None)
        return url
