"""Every identity-provider request has an overall deadline and a body cap.

A server that sends one byte at a time never trips a per-read timeout: each read
gets its byte in time. Only a deadline on the whole request ends it, bounded by
``QLAM_HTTP_TIMEOUT`` per request and ``QLAM_RETRY_DEADLINE`` overall. An answer far
larger than any token is refused while it streams in, never read whole.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from loopback_servers import RawServer, drip, flood, token_answer_bytes
from qlam_hpc import RetryPolicy, Settings, TokenProvider
from qlam_hpc._errors import IdentityProviderUnreachable, InvalidTokenResponse, LockTimeout
from qlam_hpc._http import fetch_token, refresh_tokens, revoke_refresh_token, start_device_login

pytestmark = pytest.mark.timeout(90)

# 2 s per request, 3 s for everything: the numbers of the report that found the hole.
LIMITS = {"QLAM_HTTP_TIMEOUT": "2s", "QLAM_RETRY_DEADLINE": "3s", "QLAM_RETRY_ATTEMPTS": "5"}


def _settings(url: str, tmp_path, **extra: str) -> Settings:
    env = {
        "QLAM_CLIENT_ID": "drip-client",
        "QLAM_CLIENT_SECRET": "drip-secret-value",
        "AUTH_BASE_URL": url,
        "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache"),
        **LIMITS,
        **extra,
    }
    return Settings.from_env(env)


DEVICE = {"QLAM_AUTH_FLOW": "device"}
DISCOVERY = {"QLAM_DISCOVERY": "on"}
REQUESTS = {
    "client_credentials": (lambda s: fetch_token(s), {}),
    "discovery": (lambda s: fetch_token(s), DISCOVERY),
    "device": (lambda s: start_device_login(s), DEVICE),
    "refresh": (lambda s: refresh_tokens(s, "a-refresh-token"), DEVICE),
    "revocation": (lambda s: revoke_refresh_token(s, "a-refresh-token"), DEVICE),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_a_dripping_server_cannot_hold_a_request_past_the_deadline(name, tmp_path):
    call, extra = REQUESTS[name]
    answer = (
        token_answer_bytes()
        if name != "discovery"
        else token_answer_bytes({"token_endpoint": "https://idp.example/oauth/token", "padding": "x" * 100})
    )
    with RawServer(drip(answer, every=0.1)) as server:
        settings = _settings(server.url, tmp_path, **extra)
        started = time.monotonic()
        with pytest.raises(IdentityProviderUnreachable) as caught:
            call(settings)
        took = time.monotonic() - started
    assert took < 3.8, f"{name} took {took:.1f}s with a 3 s retry deadline"
    assert "did not answer within" in str(caught.value), caught.value
    assert "QLAM_HTTP_TIMEOUT" in str(caught.value)


def test_each_request_is_bounded_by_the_http_timeout(tmp_path):
    """With a long retry deadline, one request still ends after QLAM_HTTP_TIMEOUT."""
    with RawServer(drip(token_answer_bytes(), every=0.1)) as server:
        settings = _settings(server.url, tmp_path, QLAM_HTTP_TIMEOUT="1s", QLAM_RETRY_DEADLINE="2.5s")
        started = time.monotonic()
        with pytest.raises(IdentityProviderUnreachable):
            fetch_token(settings.with_(retry=settings.retry._replace(initial_delay=0.01, max_delay=0.01)))
        took = time.monotonic() - started
        assert server.connections >= 2, "a timed-out attempt is retried within the deadline"
    assert took < 3.3


def test_a_token_answer_over_64_kib_is_refused(tmp_path):
    """A valid-looking token of a megabyte: before the cap it was accepted whole."""
    big = json.dumps({"access_token": "a" * (1 << 20), "token_type": "Bearer", "expires_in": 3600}).encode()
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(big) + big

    def send(connection, stop):
        connection.sendall(answer)

    with RawServer(send) as server:
        with pytest.raises(InvalidTokenResponse, match="over 64 KiB"):
            fetch_token(_settings(server.url, tmp_path))
        assert server.connections == 1, "refused, not retried"


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "until-close"])
def test_an_endless_answer_is_refused_as_it_streams(tmp_path, content_length):
    with RawServer(flood(content_length=content_length, size=1 << 40)) as server:
        started = time.monotonic()
        with pytest.raises(InvalidTokenResponse, match="over 64 KiB"):
            fetch_token(_settings(server.url, tmp_path))
        assert time.monotonic() - started < 15  # refused early: reading 1 TiB would take far longer


def test_a_dripping_holder_releases_the_lock_before_the_waiters_give_up(tmp_path):
    """The array's view: one task fetches from a dripping server under the lock; another
    waits for it. The holder gives up at the retry deadline, so the waiter gets an answer
    (the shared outage), not LockTimeout."""
    with RawServer(drip(token_answer_bytes(), every=0.2)) as server:
        settings = _settings(server.url, tmp_path, QLAM_LOCK_TIMEOUT="6s")
        results: dict[str, BaseException] = {}

        def task(name: str) -> None:
            try:
                TokenProvider(settings).get_token()
            except BaseException as error:  # recorded for the assertions
                results[name] = error

        holder = threading.Thread(target=task, args=("holder",))
        holder.start()
        time.sleep(0.3)
        waiter = threading.Thread(target=task, args=("waiter",))
        waiter.start()
        holder.join(30)
        waiter.join(30)
    assert isinstance(results["holder"], IdentityProviderUnreachable)
    assert not isinstance(results["waiter"], LockTimeout), results["waiter"]
    assert isinstance(results["waiter"], IdentityProviderUnreachable)
