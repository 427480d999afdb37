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

    def send(self, url: str, attempt_once: Callable):
        """``(response, sent_at)`` for the first answer that is neither 5xx nor 429."""
        import httpx

        policy, clock = self.policy, self.clock
        for attempt in range(1, policy.attempts + 1):
            sent_at = clock()
            requested_wait: float | None = None
            try:
                response = attempt_once()
            except httpx.TransportError as exc:
                failure: Exception = IdentityProviderUnreachable(
                    f"identity provider {url} is unreachable ({_describe(exc)})"
                )
            else:
                status = response.status_code
                if status == 429:
                    requested_wait = server_wait(response.headers, clock())
                    failure = _rate_limited(url, requested_wait)
                elif status >= 500:
                    failure = IdentityProviderUnreachable(
                        f"identity provider {url} answered HTTP {status} {response.reason_phrase}"
                    )
                else:
                    return response, sent_at
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
