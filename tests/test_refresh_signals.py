"""Signals during a refresh: SIGTERM, SIGINT and SIGHUP wait until the next refresh token is kept.

A rotating refresh token is spent when the identity provider answers; the next one exists
only in that answer until it is published. A `qlam-hpc token` process is stopped while its
refresh is in flight (the sandbox holds the answer back for a few seconds, after it has
rotated the token, or holds the request before acting on it): it must publish the next
refresh token first, then stop as the signal meant. The sandbox runs with no overlap period
(Auth0's default), so had the process died at once, the next one would have spent the
refresh token a second time and the sandbox would have revoked the login.

SIGKILL cannot be held: the next process takes over, and whether the login survives depends
on whether the server had acted; when it is lost, that is one line and exit 16.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST_RETRY, QLAM_HPC, run_cli
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._login import login
from qlam_hpc.sandbox import Sandbox

pytestmark = pytest.mark.timeout(120)

DELAY = 2.5  # seconds the refresh is in flight

# The signals start at their defaults in the CLI process, whatever the test runner ignores
# (a shell started without job control ignores SIGINT in background children, nohup SIGHUP).
WITH_DEFAULT_SIGNALS = (
    "import os, signal, sys\n"
    "for name in ('SIGTERM', 'SIGINT', 'SIGHUP'):\n"
    "    signal.signal(getattr(signal, name), signal.SIG_DFL)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)

# The library, refreshing in a worker thread while the main thread waits for it.
IN_A_THREAD = (
    "import threading\n"
    "from qlam_hpc import TokenProvider\n"
    "provider = TokenProvider.from_env()\n"
    "worker = threading.Thread(target=provider.get_token)\n"
    "worker.start()\n"
    "worker.join()\n"
)


def _expire_and_hold(sandbox: Sandbox, env: dict[str, str], fault: dict[str, float]) -> None:
    """Log in with 2 s access tokens, wait until the shared one may no longer be handed out, and
    make the next refresh wait at the sandbox as ``fault`` says (AFTER or BEFORE, below)."""
    sandbox.set_faults(token_lifetime=2)
    login(TokenProvider(Settings.from_env(env).with_(retry=FAST_RETRY)), on_code=lambda authorization: None)
    sandbox.set_faults(token_lifetime=86400)
    time.sleep(1.7)  # a 2 s token's margin is 0.5 s
    sandbox.set_faults(**fault)


def _refresh_token(cache_dir: Path) -> str:
    (entry,) = cache_dir.glob("*.entry")
    lines = entry.read_text().splitlines()
    assert not any(line.startswith("intent_") for line in lines), "an intent was left behind"
    return next((line.partition("=")[2] for line in lines if line.startswith("refresh_token=")), "")


def _popen(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``qlam-hpc ARGS``, with SIGTERM, SIGINT and SIGHUP at their defaults."""
    return _popen([sys.executable, "-c", WITH_DEFAULT_SIGNALS, QLAM_HPC, *args], env)


def _in_flight(sandbox: Sandbox, process: subprocess.Popen[str], counter: str) -> float:
    """Wait until the sandbox's ``counter`` shows the refresh; the time it did."""
    deadline = time.monotonic() + 20
    while sandbox.stats()[counter] < 1:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no {counter} at the sandbox"
        time.sleep(0.01)
    return time.monotonic()


def _signal_in_flight(
    sandbox: Sandbox, process: subprocess.Popen[str], signum: int, counter: str = "refreshes"
) -> tuple[str, str, float]:
    """Once the sandbox's ``counter`` shows the refresh of ``process``, send it ``signum`` and wait
    for its end: its stdout and stderr, and the seconds from the signal to its end."""
    signalled = _in_flight(sandbox, process, counter)
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    return out, err, time.monotonic() - signalled


def _counters(sandbox: Sandbox) -> tuple[int, int, int, int]:
    stats = sandbox.stats()
    return stats["refresh_requests"], stats["refreshes"], stats["reuse_detections"], stats["families_revoked"]


# Where the refresh waits: "after" the server rotated the token (its answer is held back: the
# window in which a death loses the login), or "before" it acted (the request sleeps first).
AFTER, BEFORE = {"response_delay": DELAY}, {"latency": DELAY}


@pytest.mark.parametrize(
    ("signum", "ends", "fault", "counter"),
    [
        (signal.SIGTERM, -signal.SIGTERM, AFTER, "refreshes"),
        (signal.SIGTERM, -signal.SIGTERM, BEFORE, "refresh_requests"),
        (signal.SIGHUP, -signal.SIGHUP, AFTER, "refreshes"),
        (signal.SIGINT, 130, AFTER, "refreshes"),  # KeyboardInterrupt: the CLI's "interrupted", 130
    ],
    ids=["SIGTERM-after-rotation", "SIGTERM-before-rotation", "SIGHUP-after-rotation", "SIGINT-after-rotation"],
)
def test_a_signal_during_the_refresh_waits_until_the_next_refresh_token_is_published(
    user_sandbox, user_env, cache_dir, signum, ends, fault, counter
):
    """The process publishes the next refresh token, then stops by the signal with one warning
    line; the next process uses the published token: no takeover, 1 refresh, 0 reuse."""
    _expire_and_hold(user_sandbox, user_env, fault)
    spent = _refresh_token(cache_dir)
    refresher = _start(user_env, "token")
    out, err, took = _signal_in_flight(user_sandbox, refresher, signum, counter)

    assert refresher.returncode == ends, err
    assert out == ""  # stopped before handing out the token, as the signal meant
    name = signal.Signals(signum).name
    warnings = [line for line in err.splitlines() if "arrived while" in line]
    assert warnings == [line for line in err.splitlines() if "warning" in line], err
    assert len(warnings) == 1 and f"{name} arrived while refreshing the login of ada@example.org" in warnings[0]
    if signum == signal.SIGINT:
        assert err.splitlines()[1:] == ["qlam-hpc: error: interrupted"], err
    else:
        assert err.count("\n") == 1, err
    assert took > 0.5  # it did wait for the answer (DELAY s after the request at most)
    published = _refresh_token(cache_dir)
    assert published and published != spent  # the next refresh token is kept

    user_sandbox.set_faults(response_delay=0, latency=0)
    after = run_cli("token", env=user_env)
    assert after.code == 0 and after.err == "", after.err  # no takeover: nothing "did not finish"
    assert _counters(user_sandbox) == (1, 1, 0, 0)
    check = run_cli("auth", "check", env=user_env)  # the published refresh token is the live one
    assert check.code == 0, check.err
    assert _counters(user_sandbox) == (2, 2, 0, 0)


# As a shell without job control starts a command with `&`: SIGINT ignored.
WITH_SIGINT_IGNORED = WITH_DEFAULT_SIGNALS.replace("os.execv", "signal.signal(signal.SIGINT, signal.SIG_IGN)\nos.execv")


def test_an_ignored_signal_stays_ignored_after_the_refresh(user_sandbox, user_env):
    """A process that ignores SIGINT (started with & by a script) is not stopped by one that
    arrives during the refresh, nor warned about it: it hands out the token, exit 0."""
    _expire_and_hold(user_sandbox, user_env, AFTER)
    refresher = _popen([sys.executable, "-c", WITH_SIGINT_IGNORED, QLAM_HPC, "token"], user_env)
    out, err, _ = _signal_in_flight(user_sandbox, refresher, signal.SIGINT)
    assert refresher.returncode == 0 and out.count(".") == 2, err
    assert err == ""  # no warning about a signal that changed nothing
    assert _counters(user_sandbox) == (1, 1, 0, 0)


def test_sigkill_after_the_server_rotated_loses_the_login_and_says_so_in_one_line(user_sandbox, user_env):
    """SIGKILL cannot be held. Killed once the server has spent the refresh token (overlap 0):
    the next process takes over, is refused, and exits 16 with one line naming the cut-short
    refresh; the ones after it exit 16 without asking the identity provider."""
    _expire_and_hold(user_sandbox, user_env, AFTER)
    victim = _start(user_env, "token")
    _signal_in_flight(user_sandbox, victim, signal.SIGKILL)
    assert victim.returncode == -signal.SIGKILL
    user_sandbox.set_faults(response_delay=0)

    results = [run_cli("token", env=user_env) for _ in range(3)]
    assert [r.code for r in results] == [16, 16, 16]
    assert all(r.out == "" and r.err.count("\n") == 1 for r in results), [r.err for r in results]
    first = results[0].err
    assert "refused the login of ada@example.org (invalid_grant" in first
    assert "was cut short" in first and "run qlam-hpc auth login" in first
    assert "Traceback" not in "".join(r.err for r in results)
    assert _counters(user_sandbox) == (2, 1, 1, 1)  # the killed one's and the takeover's; then none


def test_sigkill_before_the_server_acted_the_next_process_takes_over_and_keeps_the_login(
    user_sandbox, user_env, cache_dir
):
    """Killed while the request waits at the server (before it acted): the sandbox, seeing the
    client gone, grants nothing, so the takeover's refresh token still works and the login lives."""
    _expire_and_hold(user_sandbox, user_env, BEFORE)
    victim = _start(user_env, "token")
    _signal_in_flight(user_sandbox, victim, signal.SIGKILL, "refresh_requests")
    assert victim.returncode == -signal.SIGKILL
    time.sleep(DELAY + 0.5)  # the sandbox ends the dead request
    user_sandbox.set_faults(latency=0)

    taken_over = run_cli("token", env=user_env)
    assert taken_over.code == 0, taken_over.err
    assert taken_over.err.count("\n") == 1 and "did not finish (killed?)" in taken_over.err
    assert _counters(user_sandbox) == (2, 1, 0, 0)
    assert run_cli("token", env=user_env).code == 0
    assert _counters(user_sandbox) == (2, 1, 0, 0)


def test_in_a_worker_thread_nothing_is_held_and_sigterm_stops_the_process_at_once(user_sandbox, user_env):
    """Documented limit: only the main thread may install signal handlers, so a library
    refreshing in another thread is stopped mid-refresh by SIGTERM's default action; with
    overlap 0 the login is then lost, and the next process says so in one line (exit 16)."""
    _expire_and_hold(user_sandbox, user_env, AFTER)
    worker = _popen([sys.executable, "-c", IN_A_THREAD], user_env)
    out, err, took = _signal_in_flight(user_sandbox, worker, signal.SIGTERM)
    assert worker.returncode == -signal.SIGTERM and (out, err) == ("", "")
    assert took < DELAY - 1  # at once: it did not wait for the answer
    user_sandbox.set_faults(response_delay=0)
    lost = run_cli("token", env=user_env)
    assert lost.code == 16 and lost.err.count("\n") == 1 and "was cut short" in lost.err, lost.err
    assert _counters(user_sandbox)[2:] == (1, 1)
