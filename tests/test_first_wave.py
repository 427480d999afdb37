"""The first wave of a job array: many CLI processes start together on a cold (or expired)
cache. One fetches; the others wait for its token on the light path, with the standard
library only, and never load click, httpx, pydantic or rich. Whatever the provider decides
(a failure record, a hung or killed holder) is still said as the full CLI says it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST_RETRY, run_cli
from crowd import Crowd
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._cache import Identity
from qlam_hpc._login import login

HEAVY = ("httpx", "click", "pydantic", "rich")

# The crowd's CLI script, reporting on stderr which heavy modules the process loaded.
CLI_LOADED = r"""
import os, sys, pathlib
barrier = pathlib.Path(sys.argv[1])
from qlam_hpc._cli import main
(barrier / f"ready-{os.getpid()}").touch()
os.close(os.open(barrier / "go", os.O_RDONLY))
code = main(sys.argv[2:])
sys.stdout.flush()
print("LOADED", *[m for m in HEAVY if m in sys.modules], file=sys.stderr)
sys.exit(code)
""".replace("HEAVY", repr(HEAVY))

# Takes the refresh lock of the identity in QLAM_* (as a fetching process would), says so,
# and holds it until killed.
HOLDER = r"""
import sys, time
from qlam_hpc import Settings
from qlam_hpc._cache import Identity
from qlam_hpc._stores._file import FileStore
settings = Settings.from_env()
lock = FileStore(settings.cache_path).try_lock(Identity.of(settings))
print("locked" if lock is not None else "busy", flush=True)
time.sleep(600)
"""


def heavy_of(err: str) -> list[str]:
    return next(line for line in err.splitlines() if line.startswith("LOADED")).split()[1:]


def errors_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("qlam-hpc: error:")]


def crowd_run(tmp_path, count: int, args: list[str], env: dict[str, str]) -> list:
    crowd = Crowd(tmp_path / "crowd", count, args, env, script=CLI_LOADED)
    crowd.wait_ready()
    crowd.release()
    return crowd.finish()


@pytest.fixture
def holder(env):
    """A process holding the refresh lock (a fetch in progress, hung, or about to be killed)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


@pytest.mark.parametrize(
    "args",
    [["api", "GET", "/v2/squin-256q/tasks"], ["token"], ["tasks", "list", "--json"]],
    ids=["api", "token", "tasks"],
)
def test_of_processes_started_together_on_a_cold_cache_only_the_fetcher_loads_the_heavy_stack(
    tmp_path, sandbox, env, args
):
    """8 processes released together while the identity provider takes 1 s: one token
    request, every process succeeds, and only one of them imports click/httpx."""
    sandbox.set_faults(latency=1.0)
    results = crowd_run(tmp_path, 8, args, env)
    assert [r.code for r in results] == [0] * 8, [r.err for r in results]
    assert sandbox.stats()["token_requests"] == 1
    loaded = [heavy_of(r.err) for r in results]
    assert sum(1 for heavy in loaded if heavy) == 1, loaded
    assert sorted(loaded, key=len)[:7] == [[]] * 7
    if args == ["token"]:
        assert len({r.out for r in results}) == 1  # one token for all


def test_a_failure_record_met_while_waiting_is_said_as_the_full_cli_says_it(tmp_path, sandbox, env):
    """The fetch is refused while the others wait: each waiter exits with the code and the
    line of the process that met the refusal, and of a process that reads the record later."""
    refused = {"status": 401, "body": json.dumps({"error": "invalid_client"}), "content_type": "application/json"}
    sandbox.set_faults(latency=1.0, script=[refused])
    results = crowd_run(tmp_path, 6, ["api", "GET", "/v2/squin-256q/tasks"], env)
    later = run_cli("-v", "api", "GET", "/v2/squin-256q/tasks", env=env)  # the full CLI, replaying
    assert sandbox.stats()["token_requests"] == 1
    assert later.code != 0
    assert {r.code for r in results} == {later.code}
    assert {errors_of(r.err)[-1] for r in results} == {errors_of(later.err)[-1]}


def test_waiters_take_over_from_a_holder_killed_mid_fetch(tmp_path, sandbox, env, holder):
    """The lock holder dies without publishing: the kernel drops its lock and the waiters
    fetch one token between them, within the lock rules, without waiting for the timeout."""
    crowd = Crowd(tmp_path / "crowd", 6, ["api", "GET", "/v2/squin-256q/tasks"], env, script=CLI_LOADED)
    crowd.wait_ready()
    crowd.release()
    time.sleep(1.0)  # the crowd is waiting for the holder
    assert all(p.poll() is None for p in crowd.processes)
    killed_at = time.monotonic()
    holder.send_signal(signal.SIGKILL)
    results = crowd.finish()
    assert time.monotonic() - killed_at < 30
    assert [r.code for r in results] == [0] * 6, [r.err for r in results]
    assert sandbox.stats()["token_requests"] == 1


def test_a_hung_holder_times_out_light_with_the_full_cli_line_and_exit_code(env, holder):
    """QLAM_LOCK_TIMEOUT ends the light wait with the provider's LockTimeout: exit 9 and the
    line the full CLI prints, after one wait, not two."""
    timed_env = {**env, "QLAM_LOCK_TIMEOUT": "1"}
    started = time.monotonic()
    light = run_cli("token", env=timed_env)
    light_took = time.monotonic() - started
    full = run_cli("-v", "token", env=timed_env)
    assert light.code == full.code == 9
    assert errors_of(light.err) == errors_of(full.err) != []
    assert "held the token refresh lock" in light.err and f":{holder.pid}" in light.err
    assert light_took < 1.0 + 5  # one timeout and a start-up, not two timeouts


def test_a_waiter_interrupted_says_interrupted_and_exits_130(env, holder):
    """Ctrl-C (SIGINT) while waiting light: the full CLI's one line and exit code, no traceback."""
    waiter = subprocess.Popen(
        [sys.executable, "-m", "qlam_hpc", "token"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(1.5)  # started, and waiting for the holder
    assert waiter.poll() is None
    waiter.send_signal(signal.SIGINT)
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 130
    assert err == "qlam-hpc: error: interrupted\n" and out == ""


def test_a_waiter_that_finds_the_lock_free_leaves_it_to_the_full_cli_it_hands_over_to(env, sandbox):
    """The light path takes the free lock and keeps it for the full CLI of the same process,
    which fetches under it: one token request, and the lock is free afterwards."""
    result = run_cli("token", env=env)
    assert result.code == 0 and sandbox.stats()["token_requests"] == 1
    from qlam_hpc._stores._file import FileStore

    settings = Settings.from_env(env)
    lock = FileStore(settings.cache_path).try_lock(Identity.of(settings))
    assert lock is not None
    lock.release()


# --- user context: the access token expires under a running array ------------------------------


@pytest.mark.slow
def test_user_context_waiters_at_access_token_expiry_stay_light(tmp_path, user_sandbox, user_env):
    """8 `qlam-hpc token` after the access token expired, the refresh taking 1 s: one refresh
    request, one process loads the heavy stack, the rest read the refreshed token."""
    user_sandbox.set_faults(token_lifetime=2)
    login(TokenProvider(Settings.from_env(user_env).with_(retry=FAST_RETRY)), on_code=lambda authorization: None)
    user_sandbox.set_faults(token_lifetime=86400, response_delay=1.0)
    time.sleep(1.7)  # a 2 s token's refresh margin is 0.5 s
    before = user_sandbox.stats()["refresh_requests"]
    results = crowd_run(tmp_path, 8, ["token"], user_env)
    assert [r.code for r in results] == [0] * 8, [r.err for r in results]
    assert user_sandbox.stats()["refresh_requests"] - before == 1
    assert user_sandbox.stats()["reuse_detections"] == 0
    loaded = [heavy_of(r.err) for r in results]
    assert sum(1 for heavy in loaded if heavy) == 1, loaded
    assert len({r.out for r in results}) == 1


def test_redis_and_vault_stores_keep_the_full_path(env, monkeypatch):
    """The light wait covers the file store only (bench/first_wave.py --store measures why): with
    QLAM_TOKEN_STORE set, a store without a usable entry (here: no Redis at all) hands the whole
    call to the full CLI at once. A warm Redis entry is read light (tests/test_redis_light.py)."""
    from qlam_hpc._cli import _fast

    for name, value in {**env, "QLAM_TOKEN_STORE": "redis://127.0.0.1:9/0"}.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    assert _fast._cached() is None
    assert time.monotonic() - started < 5  # no light wait: that would sit out a holder
