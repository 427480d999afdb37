"""TokenProvider in one process: memory, refresh rules, fallbacks, failure records, the lock.

The identity provider is the real sandbox; the clock is injected where a test needs
hours to pass.
"""

from __future__ import annotations

import http.server
import logging
import subprocess
import sys
import threading
import time
import traceback

import httpx
import pytest

from qlam_hpc import (
    FileStore,
    IdentityProviderUnreachable,
    InvalidClient,
    LockTimeout,
    QlamAuth,
    TokenProvider,
)
from qlam_hpc._cache import CacheEntry
from qlam_hpc._tokens import Token


class Clock:
    """A clock that starts at the real time and moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class CountingStore(FileStore):
    """The real file store, counting how often it is read."""

    loads = 0

    def load(self, identity):
        self.loads += 1
        return super().load(identity)


def _503s(count: int) -> list[dict]:
    return [{"status": 503, "body": "down", "content_type": "text/plain", "headers": {}}] * count


def test_a_warm_get_token_touches_neither_disk_nor_lock(settings, cache_dir, sandbox):
    """Once warm, get_token() answers from memory even with the cache directory gone."""
    store = CountingStore(cache_dir)
    provider = TokenProvider(settings, store=store)
    token = provider.get_token()
    loads = store.loads
    cache_dir.rename(cache_dir.with_name("moved"))
    assert all(provider.get_token() == token for _ in range(1000))
    assert store.loads == loads
    assert provider.get().source == "memory"


def test_threads_of_one_process_share_one_fetch(provider, sandbox):
    """16 threads asking at once on a cold cache cause one token request."""
    sandbox.set_faults(latency=0.3)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(provider.get_token())) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16 and len(set(results)) == 1
    assert sandbox.stats()["token_requests"] == 1


def test_a_token_is_not_handed_out_within_a_minute_of_expiry(settings, sandbox):
    """A 24 h token is replaced once less than 60 s of it remain."""
    clock = Clock()
    provider = TokenProvider(settings, clock=clock)
    first = provider.get()
    clock.now = first.token.expires_at - 61
    assert provider.get().token == first.token
    clock.now = first.token.expires_at - 59
    second = provider.get()
    assert second.source == "fetched" and second.token != first.token
    assert sandbox.stats()["token_requests"] == 2


def test_min_ttl_refreshes_a_token_that_would_expire_too_soon(settings, sandbox):
    """A token with 30 min left is replaced for a caller that needs 40 min."""
    sandbox.set_faults(token_lifetime=3600)
    clock = Clock()
    provider = TokenProvider(settings, clock=clock)
    first = provider.get_token()
    clock.now += 1800
    assert provider.get_token(min_ttl=600) == first
    assert provider.get_token(min_ttl=2400) != first
    assert sandbox.stats()["token_requests"] == 2


def test_a_failed_early_refresh_hands_out_the_still_valid_token_and_says_so(settings, sandbox, caplog):
    """When a refresh fails while the cached token is still valid, that token is used, with a warning."""
    clock = Clock()
    provider = TokenProvider(settings, clock=clock)
    token = provider.get().token
    clock.now = token.expires_at - 45
    sandbox.set_faults(script=_503s(10))
    with caplog.at_level(logging.WARNING, logger="qlam_hpc"):
        result = provider.get()
    assert result.source == "fallback" and result.token == token
    assert "could not refresh the token" in caplog.text and "still valid for 45s" in caplog.text


def test_a_failed_refresh_of_an_almost_expired_token_is_an_error(settings, sandbox):
    """With under half the margin left, a failed refresh raises instead of handing out the token."""
    clock = Clock()
    provider = TokenProvider(settings, clock=clock)
    token = provider.get().token
    clock.now = token.expires_at - 20
    sandbox.set_faults(script=_503s(10))
    with pytest.raises(IdentityProviderUnreachable):
        provider.get()


def test_a_rejected_token_costs_one_new_request_for_every_process(settings, sandbox, cache_dir):
    """After a 401, the first process fetches a new token; the next one meeting it reads the cache."""
    one, two = TokenProvider(settings), TokenProvider(settings)
    old = one.get_token()
    assert two.get_token() == old
    new = one.invalidate(old)
    assert new != old
    assert two.invalidate(old) == new
    assert sandbox.stats()["token_requests"] == 2


def test_a_hung_lock_holder_makes_waiters_time_out_with_a_clear_error(settings, cache_dir):
    """A process that holds the refresh lock and never publishes: waiters give up after lock_timeout."""
    store = FileStore(cache_dir)
    provider = TokenProvider(settings.with_(lock_timeout=1.0), store=store)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from qlam_hpc import FileStore, TokenProvider, Settings\n"
            f"p = TokenProvider(Settings.from_env(cache_dir={str(cache_dir)!r}))\n"
            "lock = p.store.try_lock(p.identity); print('locked', flush=True); time.sleep(60)",
        ],
        env={"QLAM_CLIENT_ID": settings.client_id, "AUTH_BASE_URL": settings.token_url.rsplit("/oauth", 1)[0]},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            provider.get_token()
        assert 1.0 <= time.monotonic() - started < 5
        assert f":{holder.pid}" in str(caught.value) and "QLAM_LOCK_TIMEOUT" in str(caught.value)
        assert caught.value.exit_code == 9
    finally:
        holder.kill()
        holder.wait()
    assert provider.get_token()  # the lock died with its holder


def test_a_rejection_is_repeated_until_the_cooldown_ends(settings, sandbox):
    """invalid_client is repeated from the cache, without asking, until the cool-down has passed."""
    clock = Clock()
    wrong = settings.with_(client_secret=type(settings.client_secret)("wrong"))
    provider = TokenProvider(wrong, clock=clock)
    for _ in range(3):
        with pytest.raises(InvalidClient):
            provider.get()
    assert sandbox.stats()["token_requests"] == 1
    clock.now += settings.rejected_cooldown + 1
    with pytest.raises(InvalidClient):
        provider.get()
    assert sandbox.stats()["token_requests"] == 2


def test_new_credentials_are_tried_at_once_despite_a_recorded_rejection(settings, sandbox):
    """A recorded rejection does not apply to a different (e.g. rotated) secret."""
    wrong = settings.with_(client_secret=type(settings.client_secret)("wrong"))
    with pytest.raises(InvalidClient):
        TokenProvider(wrong).get()
    assert TokenProvider(settings).get().source == "fetched"


def test_an_outage_is_shared_briefly_so_waiters_do_not_queue_behind_the_lock(settings, sandbox):
    """After one process exhausts its retries, the next one repeats the failure without asking."""
    sandbox.set_faults(script=_503s(20))
    with pytest.raises(IdentityProviderUnreachable):
        TokenProvider(settings).get()
    asked = sandbox.stats()["token_requests"]
    with pytest.raises(IdentityProviderUnreachable):
        TokenProvider(settings).get()
    assert sandbox.stats()["token_requests"] == asked


def test_errors_never_carry_the_secret(settings, sandbox):
    """The text, repr and traceback of a rejection hold no secret."""
    wrong = settings.with_(client_secret=type(settings.client_secret)("s3cr3t-value-never-shown"))
    with pytest.raises(InvalidClient) as caught:
        TokenProvider(wrong).get()
    text = "".join(traceback.format_exception(caught.value)) + repr(caught.value) + repr(wrong)
    assert "s3cr3t-value-never-shown" not in text


def test_cache_off_means_every_process_fetches(settings, sandbox):
    """QLAM_TOKEN_CACHE=off: nothing is shared between providers (the baseline for the benchmarks)."""
    off = settings.with_(cache_enabled=False)
    assert TokenProvider(off).get_token() != TokenProvider(off).get_token()
    assert sandbox.stats()["token_requests"] == 2


# --- the httpx hook --------------------------------------------------------------------------


def test_httpx_auth_refreshes_once_after_a_401(settings, sandbox, cache_dir):
    """A cached token the API refuses is replaced once, and the request retried with the new one."""
    provider = TokenProvider(settings)
    stale = Token("not.a-valid.jwt", expires_at=time.time() + 3600, obtained_at=time.time())
    provider.store.save(CacheEntry(provider.identity, token=stale))
    with httpx.Client(base_url=sandbox.url, auth=QlamAuth(provider)) as client:
        response = client.get("/userinfo")
    assert response.status_code == 200 and response.json()["sub"] == "test-client@clients"
    assert sandbox.stats()["token_requests"] == 1


class _Always401(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        type(self).seen += 1
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_httpx_auth_never_loops_on_401(provider, sandbox):
    """An API that refuses every token gets two requests, not a loop; the 401 reaches the caller."""
    _Always401.seen = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always401)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with httpx.Client(auth=QlamAuth(provider)) as client:
            response = client.get(f"http://127.0.0.1:{server.server_port}/v2/squin-256q/tasks")
    finally:
        server.shutdown()
    assert response.status_code == 401
    assert _Always401.seen == 2
    assert sandbox.stats()["token_requests"] == 2


def test_async_httpx_auth_works_from_an_event_loop(provider, sandbox):
    """QlamAuth also drives an httpx.AsyncClient."""
    import asyncio

    async def call() -> int:
        async with httpx.AsyncClient(base_url=sandbox.url, auth=QlamAuth(provider)) as client:
            return (await client.get("/userinfo")).status_code

    assert asyncio.run(call()) == 200
