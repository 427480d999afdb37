"""The HTTP adapter for token requests: sends, retries within bounds, maps failures.

httpx is imported here and only here on the token path, so a warm cache hit
never pays for it.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from ._errors import IdentityProviderUnreachable, RateLimited
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
    """One token from the identity provider.

    Connection errors and 5xx are retried with full-jitter backoff; 429 waits as long as
    the IdP asks, if that fits in the policy's deadline. OAuth errors are never retried.
    """
    import httpx

    request = token_request(settings)
    policy = settings.retry
    started = clock()
    with httpx.Client(timeout=settings.http_timeout, transport=transport, trust_env=True) as client:
        for attempt in range(1, policy.attempts + 1):
            sent_at = clock()
            requested_wait: float | None = None
            try:
                response = client.post(request.url, data=request.form, headers=request.headers)
            except httpx.TransportError as exc:
                failure: Exception = IdentityProviderUnreachable(
                    f"identity provider {request.url} is unreachable ({_describe(exc)})"
                )
            else:
                status = response.status_code
                if status == 429:
                    requested_wait = server_wait(response.headers, clock())
                    failure = _rate_limited(request.url, requested_wait)
                elif status >= 500:
                    failure = IdentityProviderUnreachable(
                        f"identity provider {request.url} answered HTTP {status} {response.reason_phrase}"
                    )
                else:
                    return parse_token_response(
                        status, response.headers, response.content, request.url, sent_at, obtained_by
                    )
            delay = requested_wait if requested_wait is not None else backoff_delay(policy, attempt - 1, rng)
            spent = clock() - started
            if attempt == policy.attempts or spent + delay > policy.deadline:
                if attempt > 1:
                    log("warning", f"gave up after {attempt} attempts in {spent:.1f}s")
                raise failure
            log("warning", f"{failure}; retrying in {delay:.1f}s (attempt {attempt} of {policy.attempts})")
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises


def _rate_limited(url: str, wait: float | None) -> RateLimited:
    from ._durations import format_duration

    after = f"; the limit resets in {format_duration(wait)}" if wait is not None else ""
    return RateLimited(f"identity provider {url} is rate limiting token requests (HTTP 429){after}", wait)


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
