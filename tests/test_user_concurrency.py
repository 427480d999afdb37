"""User context under a crowd: real processes released together share one rotating login.

Each test logs in once (the sandbox approves at once), lets the access token expire,
then releases a crowd of real processes (tests/crowd.py) at the same instant. The
refresh token rotates with no overlap period, as on Auth0 by default: had two processes
sent the same one, the identity provider would count a reuse and revoke the login, so
its counters show whether the processes took turns.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST_RETRY, run_cli
from crowd import LOOPER, Crowd, json_lines
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._login import login
from qlam_hpc.sandbox import Sandbox

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def sandbox(user_sandbox):
    return user_sandbox


@pytest.fixture
def env(user_env):
    return user_env


def _log_in(sandbox: Sandbox, env: dict[str, str], token_lifetime: int) -> None:
    """One device login (auto-approved) that hands out access tokens of ``token_lifetime`` seconds."""
    sandbox.set_faults(token_lifetime=token_lifetime)
    login(TokenProvider(Settings.from_env(env).with_(retry=FAST_RETRY)), on_code=lambda authorization: None)


def _expire_access_token(sandbox: Sandbox, env: dict[str, str], wait: float = 1.7) -> None:
    """Log in with 2 s access tokens, go back to long ones, and wait until the shared token
    may no longer be handed out (a 2 s token's refresh margin is 0.5 s)."""
    _log_in(sandbox, env, token_lifetime=2)
    sandbox.set_faults(token_lifetime=86400)
    time.sleep(wait)


def _entry_values(cache_dir: Path, name: str) -> list[str]:
    """``name=`` values of every cache entry (refresh_token, access_token)."""
    return [
        line.partition("=")[2]
        for entry in cache_dir.glob("*.entry")
        for line in entry.read_text().splitlines()
        if line.startswith(name + "=")
    ]


def _counters(stats: dict) -> tuple[int, int, int, int]:
    return stats["refresh_requests"], stats["refreshes"], stats["reuse_detections"], stats["families_revoked"]


# --- one expired access token, one refresh ---------------------------------------------------


def test_200_processes_meeting_an_expired_access_token_make_one_refresh(sandbox, env, tmp_path):
    """200 `qlam-hpc token` released together after the access token expired, overlap 0:
    1 refresh request, no reuse, 200 successes with one token, and the login still alive."""
    crowd = Crowd(tmp_path, 200, ["token", "--json"], env)
    crowd.wait_ready(timeout=300)
    _expire_access_token(sandbox, env)
    sandbox.set_faults(latency=0.5)  # the refresher holds the lock while the crowd arrives
    started = time.monotonic()
    crowd.release()
    results = crowd.finish(timeout=300)
    took = time.monotonic() - started

    assert [r.code for r in results] == [0] * 200, [r.err for r in results if r.code][:3]
    stats = sandbox.stats()
    assert _counters(stats) == (1, 1, 0, 0)
    outputs = json_lines(results)
    assert len({o["access_token"] for o in outputs}) == 1
    assert [o["source"] for o in outputs].count("fetched") == 1
    assert all(o["expires_in"] > 3600 for o in outputs)  # the refreshed token, not the expired one
    # The refresh token the crowd published is the live one: it refreshes once more, no reuse.
    sandbox.set_faults(latency=0)
    assert run_cli("auth", "check", env=env).code == 0
    assert _counters(sandbox.stats()) == (2, 2, 0, 0)
    print(f"\n200 processes, expired access token: {stats['refresh_requests']} refresh request in {took:.1f}s")


# --- short access tokens, a long run ---------------------------------------------------------

RUN = 60.0
LIFETIME = 5


def test_long_running_processes_refresh_about_once_per_lifetime_without_reuse(sandbox, env, tmp_path):
    """20 library processes calling get_token() for 60 s with 5 s access tokens: about one
    refresh per token lifetime, never a reuse, never an expired token handed out."""
    crowd = Crowd(tmp_path, 20, [str(RUN)], env, script=LOOPER)
    crowd.wait_ready()
    _log_in(sandbox, env, token_lifetime=LIFETIME)
    crowd.release()
    results = crowd.finish(timeout=RUN + 120)

    assert [r.code for r in results] == [0] * 20, [r.err for r in results if r.code][:3]
    seen = json_lines(results)
    assert sum(s["expired"] for s in seen) == 0
    assert all(s["calls"] > 500 for s in seen)
    requests, refreshes, reuses, revoked = _counters(sandbox.stats())
    assert (reuses, revoked) == (0, 0)
    assert requests == refreshes  # none refused
    # A 5 s token is handed out until a quarter of its life is left: ~60 / 3.75 = 16.
    assert RUN / LIFETIME * 0.5 <= requests <= RUN / LIFETIME * 2 + 2, requests
    print(f"\n20 processes, {RUN:g}s of {LIFETIME} s access tokens: {requests} refreshes, 0 reuse")


# --- a revoked login ------------------------------------------------------------------------


def test_a_revoked_login_stops_50_processes_with_one_line_and_one_refresh_request(sandbox, env, tmp_path):
    """The login is revoked while the access token is expired: every process exits 16 with the
    same line. Bound: 1 refresh request, since the first refusal drops the login from the store."""
    crowd = Crowd(tmp_path, 50, ["token"], env)
    crowd.wait_ready()
    _expire_access_token(sandbox, env, wait=2.2)  # expired outright: no cached token to fall back on
    assert sandbox.revoke_logins() >= 1  # this test's login (and those of earlier tests: logins outlive a reset)
    sandbox.set_faults(latency=0.3)
    crowd.release()
    results = crowd.finish()

    assert [r.code for r in results] == [16] * 50, [r.err for r in results if r.code != 16][:3]
    assert all(r.out == "" and r.err.count("\n") == 1 for r in results), [r.err for r in results][:3]
    messages = {r.err for r in results}
    assert len(messages) == 1, messages
    (message,) = messages
    assert "refused the login of ada@example.org (invalid_grant" in message
    assert "run qlam-hpc auth login" in message
    stats = sandbox.stats()
    assert stats["refresh_requests"] == 1
    assert (stats["refreshes"], stats["reuse_detections"]) == (0, 0)
    assert _entry_values(tmp_path / "cache", "refresh_token") == []  # the dead login is forgotten


def test_tasks_starting_after_the_failure_cooldown_are_still_told_the_login_was_refused(sandbox, env):
    """An array throttled with %N starts tasks for hours: the ones that start 16 s after the
    refusal must still say why, not point at keep-fresh (which this set-up does not use)."""
    _expire_access_token(sandbox, env, wait=2.2)
    sandbox.revoke_logins()
    first = run_cli("token", env=env)
    assert first.code == 16 and "refused the login of ada@example.org" in first.err
    time.sleep(16)  # longer than the 15 s transient cool-down
    late = run_cli("token", env=env)
    assert late.code == 16
    assert sandbox.stats()["refresh_requests"] == 1  # bounded either way: the login was dropped
    assert "keep-fresh" not in late.err and "refused the login of ada@example.org" in late.err, late.err


# --- no token where others can see it --------------------------------------------------------


class _ProcSampler(threading.Thread):
    """Reads every process's argv and environment from /proc until stopped (as `ps e` shows
    them); ``watched`` counts the processes whose argv holds ``marker``."""

    def __init__(self, marker: bytes) -> None:
        super().__init__(daemon=True)
        self.marker = marker
        self.seen: set[bytes] = set()
        self.watched: set[str] = set()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for process in Path("/proc").glob("[0-9]*"):
                for name in ("cmdline", "environ"):
                    with contextlib.suppress(OSError):
                        text = (process / name).read_bytes()
                        self.seen.add(text)
                        if name == "cmdline" and self.marker in text:
                            self.watched.add(process.name)
            time.sleep(0.02)

    def stop(self) -> set[bytes]:
        self._done.set()
        self.join()
        return self.seen


def test_no_refresh_or_access_token_in_argv_stderr_or_files_outside_the_cache(sandbox, env, tmp_path, cache_dir):
    """While `qlam-hpc auth login` and 50 `qlam-hpc token` run (one of them refreshing for 1 s),
    no /proc/<pid>/cmdline or environ holds a token; nor does stderr, nor any file under the
    test's directory outside the cache."""
    crowd = Crowd(tmp_path, 50, ["token"], env)
    crowd.wait_ready()
    sampler = _ProcSampler(str(crowd.barrier).encode())
    sampler.start()
    try:
        sandbox.set_faults(token_lifetime=2)
        logged_in = run_cli("auth", "login", env=env)
        assert logged_in.code == 0, logged_in.err
        first = _entry_values(cache_dir, "refresh_token") + _entry_values(cache_dir, "access_token")
        sandbox.set_faults(token_lifetime=86400, response_delay=1.0)
        time.sleep(1.7)
        crowd.release()
        results = crowd.finish()
    finally:
        seen = sampler.stop()

    assert [r.code for r in results] == [0] * 50, [r.err for r in results if r.code][:3]
    assert _counters(sandbox.stats()) == (1, 1, 0, 0)
    after = _entry_values(cache_dir, "refresh_token") + _entry_values(cache_dir, "access_token")
    tokens = {*first, *after, *(r.out.strip() for r in results)}
    assert len(first) == 2 and len(after) == 2 and len(tokens) == 4  # two logins' worth: before and after
    assert len(sampler.watched) == 50  # every process of the crowd was watched
    assert any(b"auth\0login" in text for text in seen)  # and so was the login
    for token in tokens:
        secret = token.encode()
        assert not any(secret in text for text in seen), "a token is in a process's argv or environment"
        for text in (logged_in.out, logged_in.err, *(r.err for r in results)):
            assert token not in text, "a token is on stderr (or the login's stdout)"
        for path in tmp_path.rglob("*"):
            if path.is_file() and cache_dir not in path.parents:
                assert secret not in path.read_bytes(), f"a token is in {path.relative_to(tmp_path)}"


# --- a Redis store, accepted for the login on purpose ---------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from redis_service import start_redis

    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def test_a_redis_store_accepted_for_the_login_refreshes_once_for_50_processes(sandbox, env, redis_server, tmp_path):
    """QLAM_SHARED_REFRESH_TOKENS=allow: the Redis lease is the single flight; 1 refresh, 0 reuse."""
    redis_server.client().flushdb()
    store_env = {
        **env,
        "QLAM_TOKEN_STORE": redis_server.url,
        "REDIS_PASSWORD": redis_server.password,
        "QLAM_SHARED_REFRESH_TOKENS": "allow",
    }
    _log_in(sandbox, store_env, token_lifetime=2)
    sandbox.set_faults(token_lifetime=86400, latency=0.3)
    time.sleep(2.2)
    crowd = Crowd(tmp_path, 50, ["token"], store_env)
    crowd.wait_ready()
    crowd.release()
    results = crowd.finish()
    assert [r.code for r in results].count(0) == 50, [r.err for r in results if r.code]
    assert len({r.out for r in results}) == 1
    stats = sandbox.stats()
    assert (stats["refresh_requests"], stats["reuse_detections"]) == (1, 0)
