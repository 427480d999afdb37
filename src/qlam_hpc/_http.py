"""The HTTP adapter for token requests: sends, retries within bounds, maps failures.

httpx is imported here and only here on the token path, so a warm cache hit
never pays for it.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from ._errors import ConfigurationError, IdentityProviderUnreachable, RateLimited
from ._log import log
from ._oauth import backoff_delay, parse_token_response, server_wait, token_request
from ._settings import Settings
from ._tokens import Token


def fetch_token(
    settings: Settings,
    *,
    obtained_by: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    transport=None,
) -> Token:
    """One token from the identity provider, with settings whose credential is resolved
    (``_client_auth.resolve_credentials``; a still-unresolved source is read here).

    Connection errors and 5xx are retried with full-jitter backoff; 429 waits as long as
    the IdP asks, if that fits in the policy's deadline. OAuth errors are never retried.
    With discovery, the document is read first (once per process), within the same budget.
    """
    import httpx

    from ._client_auth import choose_method, client_authentication

    retry = _Retrying(settings, sleep=sleep, clock=clock, rng=rng)
    with httpx.Client(timeout=settings.http_timeout, transport=transport, trust_env=True) as client:
        endpoint, supported, issuer = settings.token_url, None, None
        if settings.discovery_url:
            from ._discovery import discover

            def get(url: str) -> tuple:
                response, _ = retry.send(url, lambda: client.get(url, headers={"Accept": "application/json"}))
                return response.status_code, response.headers, response.content

            found = discover(settings.discovery_url, get)
            supported, issuer = found.auth_methods, found.issuer
            if settings.discovers_endpoint:
                endpoint = found.token_endpoint
        assertion_audience = None
        if settings.assertion_audience == "issuer":
            if not issuer:
                raise ConfigurationError(
                    "QLAM_CLIENT_ASSERTION_AUD=issuer, but the discovery document names no issuer"
                )
            assertion_audience = issuer
        # Built before the first attempt, so a bad key fails at once, not after retries.
        auth = client_authentication(settings, choose_method(settings, supported))

        def post():
            # A request per attempt: a private_key_jwt assertion must never be sent twice.
            request = token_request(
                settings, endpoint=endpoint, auth=auth, now=clock(), assertion_audience=assertion_audience
            )
            return client.post(request.url, data=request.form, headers=request.headers)

        response, sent_at = retry.send(endpoint, post)
        return parse_token_response(
            response.status_code, response.headers, response.content, endpoint, sent_at, obtained_by
        )


class _Retrying:
    """One retry budget (attempts per request, one deadline for everything) over several requests."""

    def __init__(self, settings: Settings, *, sleep, clock, rng) -> None:
        self.policy = settings.retry
        self.sleep, self.clock, self.rng = sleep, clock, rng
        self.started = clock()

    def send(self, url: str, attempt_once: Callable, *, spends: str | None = None):
        """``(response, sent_at)`` for the first answer that is neither 5xx nor 429.

        ``spends`` names what a request uses up (a rotating refresh token): such a request
        is repeated only when the server cannot have acted on it — no connection made,
        429, or 503 — since repeating a refresh the server did make would replay a spent
        token, and the identity provider would revoke the whole login.
        """
        import httpx

        policy, clock = self.policy, self.clock
        for attempt in range(1, policy.attempts + 1):
            sent_at = clock()
            requested_wait: float | None = None
            final = False
            try:
                response = attempt_once()
            except httpx.TransportError as exc:
                failure: Exception = IdentityProviderUnreachable(
                    f"identity provider {url} is unreachable ({_describe(exc)})"
                )
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
                if attempt > 1:
                    log("warning", f"gave up after {attempt} attempts in {spent:.1f}s")
                raise failure
            log("warning", f"{failure}; retrying in {delay:.1f}s (attempt {attempt} of {policy.attempts})")
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises


def _rate_limited(url: str, wait: float | None) -> RateLimited:
    from ._durations import format_duration

    after = f"; the limit resets in {format_duration(wait)}" if wait is not None else ""
    return RateLimited(f"identity provider {url} is rate limiting token requests (HTTP 429){after}", wait)


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- user context -------------------------------------------------------------------------


def _client(settings: Settings, transport):
    import httpx

    return httpx.Client(timeout=settings.http_timeout, transport=transport, trust_env=True)


def _user_endpoint(settings: Settings, client, retry: _Retrying, name: str) -> str | None:
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

    def get(url: str) -> tuple:
        response, _ = retry.send(url, lambda: client.get(url, headers={"Accept": "application/json"}))
        return response.status_code, response.headers, response.content

    found = discover(settings.discovery_url, get)
    return found.token_endpoint if name == "token" else getattr(found, f"{name}_endpoint")


def start_device_login(settings: Settings, *, transport=None, clock: Callable[[], float] = time.time):
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
        response, _ = retry.send(url, lambda: client.post(url, data=request.form, headers=request.headers))
        return parse_device_authorization(response.status_code, response.headers, response.content, url)


def poll_device_login(
    settings: Settings,
    authorization,
    *,
    obtained_by: str | None = None,
    timeout: float | None = None,
    transport=None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
):
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
                response = client.post(url, data=request.form, headers=request.headers)
            except httpx.TransportError as exc:
                log("warning", f"identity provider {url} is unreachable ({_describe(exc)}); polling again")
                continue
            data = _json_object(response.content) or {}
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


def _not_approved(authorization, waited: float) -> str:
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
    transport=None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
):
    """One refresh (RFC 6749 section 6): ``UserTokens`` with the next refresh token.

    Repeated only where the server cannot have spent the refresh token (see ``_Retrying``).
    """
    from ._oauth import parse_user_tokens, refresh_request

    retry = _Retrying(settings, sleep=sleep, clock=clock, rng=None)
    with _client(settings, transport) as client:
        url = _user_endpoint(settings, client, retry, "token")
        assert url is not None
        request = refresh_request(settings, url, refresh_token)
        response, sent_at = retry.send(
            url, lambda: client.post(url, data=request.form, headers=request.headers), spends="refresh token"
        )
        return parse_user_tokens(response.status_code, response.headers, response.content, url, sent_at, obtained_by)


def revoke_refresh_token(settings: Settings, refresh_token: str, *, transport=None) -> str | None:
    """Revoke a refresh token (RFC 7009); the endpoint used, or None when the server has none."""
    from ._oauth import parse_token_response, revocation_request

    retry = _Retrying(settings, sleep=time.sleep, clock=time.time, rng=None)
    with _client(settings, transport) as client:
        url = _user_endpoint(settings, client, retry, "revocation")
        if url is None:
            return None
        request = revocation_request(settings, url, refresh_token)
        response, _ = retry.send(url, lambda: client.post(url, data=request.form, headers=request.headers))
        if response.status_code >= 400:
            # An OAuth error body gives a precise message; anything else is a bad answer.
            parse_token_response(response.status_code, response.headers, response.content, url, 0.0, None)
        return url
