"""The light CLI path (``qlam-hpc api GET`` and ``qlam-hpc token`` on a warm cache) and a
token fetch, ended the ways a shell ends them: an API that does not answer, a reader that
goes away (``| head -c1``), Ctrl-C, and SIGINT/SIGTERM while the refresh lock is held.

Each ends with its documented exit code (README: 14 API unreachable, 130 interrupted; a
closed pipe is 141, 128 + SIGPIPE, as for any Unix filter) and at most one error line, never
a traceback; an interrupted fetch leaves nothing behind that stops the next process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import QLAM_HPC, run_cli

pytestmark = pytest.mark.timeout(120)

FAST_RETRIES = {"QLAM_RETRY_ATTEMPTS": "2", "QLAM_RETRY_DEADLINE": "2s"}
TASKS = "/v2/squin-256q/tasks"

# SIGINT and SIGTERM at their defaults in the CLI process, whatever the test runner ignores
# (a shell without job control starts background children with SIGINT ignored).
WITH_DEFAULT_SIGNALS = (
    "import os, signal, sys\n"
    "for name in ('SIGTERM', 'SIGINT'):\n"
    "    signal.signal(getattr(signal, name), signal.SIG_DFL)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def no_traceback_at_most_one_line(stderr: str) -> list[str]:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) <= 1, stderr
    return lines


def start(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WITH_DEFAULT_SIGNALS, QLAM_HPC, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture
def warm(env):
    assert run_cli("token", env=env).code == 0
    return env


@pytest.fixture
def silent_api():
    """A loopback server that accepts connections and never answers: ``(url, listener)``."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", listener


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the probe is


# --- the API does not answer -----------------------------------------------------------------


def test_api_get_with_an_unreachable_api_exits_14_with_one_line(warm):
    """Connection refused on the light path: exit 14 (the QLAM API is unreachable), one error
    line (after a warning per retry), no traceback."""
    port = _closed_port()
    env = {**warm, **FAST_RETRIES, "QLAM_API_URL": f"http://127.0.0.1:{port}"}
    done = run_cli("api", "GET", TASKS, env=env)
    assert done.code == 14, done.err
    assert "Traceback" not in done.err
    lines = [line for line in done.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("qlam-hpc: error: ")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "unreachable" in errors[0], done.err
    assert all(line.startswith("qlam-hpc: warning: ") for line in lines if line not in errors), done.err
    assert done.out == ""


# --- the reader goes away --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["token"], id="token"),
        pytest.param(["api", "GET", TASKS], id="api-get"),
    ],
)
def test_a_closed_stdout_exits_141_without_a_traceback(warm, sandbox, args):
    """stdout is a pipe whose reader has already gone (``| head -c1`` once head is done):
    the write fails with EPIPE; exit 141, nothing on stderr."""
    if args[0] == "api":
        assert run_cli("api", "POST", TASKS, "--data", "{}", env=warm).code in (0, 13)  # a list to print
    read, write = os.pipe()
    os.close(read)
    try:
        process = start(args, warm, stdout=write)
    finally:
        os.close(write)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 141, err
    assert no_traceback_at_most_one_line(err) == []


def test_token_piped_to_head_ends_cleanly(warm):
    """The shell's own ``qlam-hpc token | head -c1``: head gets its byte, and qlam-hpc ends
    with 0 (it wrote before head left) or 141 (it did not), never a traceback."""
    script = f'set -o pipefail; "{QLAM_HPC}" token | head -c1; echo " status ${{PIPESTATUS[0]}}"'
    done = subprocess.run(["bash", "-c", script], env=warm, capture_output=True, text=True, timeout=60)
    assert re.fullmatch(r"\S status (0|141)\n", done.stdout), done.stdout
    assert no_traceback_at_most_one_line(done.stderr) == []


# --- Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_during_api_get_exits_130_with_one_line(warm, silent_api):
    """SIGINT while the light path waits for the API: exit 130, ``interrupted``, no traceback."""
    url, listener = silent_api
    env = {**warm, "QLAM_API_URL": url, "QLAM_API_TIMEOUT": "30"}
    process = start(["api", "GET", TASKS], env, stdout=subprocess.PIPE)
    listener.settimeout(30)
    connection, _ = listener.accept()  # the request is on its way: the process is waiting
    with connection:
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert no_traceback_at_most_one_line(err) == ["qlam-hpc: error: interrupted"]
    assert out == ""


# --- a signal to the process holding the refresh lock ----------------------------------------


def _wait_for_the_fetch(sandbox, cache_dir: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while sandbox.stats()["token_requests"] < 1:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no token request reached the identity provider"
        time.sleep(0.02)
    assert list(cache_dir.glob("*.lock")), "the fetching process holds no lock file"


def _leftovers(cache_dir: Path) -> list[str]:
    """What an interrupted fetch may not leave: temporary files, intents, anything unknown."""
    expected = (".entry", ".lock", ".jsonl")
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(expected) or p.name.startswith("."))


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_to_the_lock_holder_leaves_nothing_that_stops_the_next_process(sandbox, env, cache_dir, sig, code):
    """The identity provider is slow (3 s); the process fetching the token, and holding the
    refresh lock, is stopped: SIGINT gives 130 and one line, SIGTERM its default end. No
    temporary or intent file is left in the cache directory, and the next process gets a
    token at once instead of waiting for a lock."""
    sandbox.set_faults(latency=3.0)
    process = start(["token"], env, stdout=subprocess.PIPE)
    _wait_for_the_fetch(sandbox, cache_dir, process)
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert process.returncode == code, err
    assert out == ""
    lines = no_traceback_at_most_one_line(err)
    if sig == signal.SIGINT:
        assert lines == ["qlam-hpc: error: interrupted"]
    time.sleep(3.5)  # the abandoned request's answer lands: nothing may be written for it
    assert _leftovers(cache_dir) == []

    sandbox.set_faults(latency=0)
    started = time.monotonic()
    after = run_cli("token", env=env)
    took = time.monotonic() - started
    assert after.code == 0 and after.out.count(".") == 2, after.err
    assert took < 10, f"the next process waited {took:.1f} s"  # a held lock would be QLAM_LOCK_TIMEOUT
    assert _leftovers(cache_dir) == []
