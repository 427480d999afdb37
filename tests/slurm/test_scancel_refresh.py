"""scancel during a refresh, on the real three-node Slurm.

A user-context array meets an expired access token; one task refreshes the login while the
sandbox holds its answer back after rotating the refresh token (the window in which a task
that died would take the login with it: the sandbox rotates with no overlap period, as
Auth0 by default). The array is cancelled right then. Slurm sends SIGTERM to every process
of every task; qlam-hpc holds it until the next refresh token is published.

But a batch script's shell dies at once on SIGTERM, and once a step's task (the script)
has exited, slurmstepd SIGKILLs whatever is left of the step at once, without waiting
KillWait: with ProctrackType=proctrack/cgroup (the usual setting) that includes a
`qlam-hpc` still refreshing. So the script must let it finish: `trap 'exit 143' TERM` at its
top makes bash run the trap only once the command in the foreground has ended (or run
qlam-hpc as a step of its own with srun, or leave refreshing to `qlam-hpc auth keep-fresh`).
The first test runs a script with that trap; the second shows that a script without it
ends the job while the refresh is still in flight (the local cluster uses
proctrack/linuxproc, whose clean-up misses the orphaned process, so here it survives).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from qlam_hpc import Settings, TokenProvider
from qlam_hpc._login import login
from slurm_service import Slurm

from .conftest import JobArea
from .test_job_arrays import QLAM_HPC
from .test_user_context_array import _tokens, _user_env

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(600)]

TASKS = 20
HELD_ANSWER = 4.0  # seconds the sandbox holds the refresh answer; Slurm's KillWait must be longer

HEAD = """#!/bin/bash
set -a; . "$QLAM_SETTINGS"; set +a
echo "task ${SLURM_ARRAY_TASK_ID} started"
"""

# scancel sends SIGTERM to the script and to qlam-hpc alike; once the script exits, Slurm
# kills what is left of the job. With a trap set, bash runs it only once the command in the
# foreground has ended: qlam-hpc finishes its refresh, stops, and then the script does.
WAITING = (
    HEAD
    + """trap 'exit 143' TERM
qlam-hpc token >/dev/null
echo "task ${SLURM_ARRAY_TASK_ID} token exit $?"
"""
)

PLAIN = (
    HEAD
    + """qlam-hpc token >/dev/null
echo "task ${SLURM_ARRAY_TASK_ID} token exit $?"
"""
)


@pytest.fixture
def sandbox(user_sandbox):
    return user_sandbox


def _kill_wait(slurm: Slurm) -> float:
    """Slurm's KillWait (seconds between SIGTERM and SIGKILL), 30 when slurm.conf leaves it out."""
    found = re.search(r"(?im)^\s*KillWait\s*=\s*(\d+)", slurm.conf.read_text())
    return float(found.group(1)) if found else 30.0


def _counters(sandbox) -> tuple[int, int, int, int]:
    stats = sandbox.stats()
    return stats["refresh_requests"], stats["refreshes"], stats["reuse_detections"], stats["families_revoked"]


def _intent(area: JobArea) -> str | None:
    """Who the cache entry names as refreshing right now (``intent_by``), if anyone."""
    for entry in area.cache_dir.rglob("*.entry"):
        for line in entry.read_text().splitlines():
            if line.startswith("intent_by="):
                return line.partition("=")[2]
    return None


def _cancelled_mid_refresh(slurm: Slurm, area: JobArea, sandbox, script: str) -> tuple[float, str | None, list[str]]:
    """Log in, let the access token expire, submit ``script`` (its text) as a TASKS-task array with the
    refresh answer held back, scancel it once the sandbox has rotated the refresh token, and
    wait until Slurm no longer lists the job. Seconds from scancel to the job's end, who was
    still refreshing then, and the refresh and access tokens before the array."""
    assert _kill_wait(slurm) > HELD_ANSWER + 5, "KillWait would SIGKILL the refresher before its answer"
    env = _user_env(area)
    sandbox.set_faults(token_lifetime=2)
    login(TokenProvider(Settings.from_env(env)), on_code=lambda authorization: None)
    sandbox.set_faults(token_lifetime=86400)
    before = _tokens(area)
    time.sleep(1.7)  # a 2 s token's refresh margin is 0.5 s: every task meets an expired one
    sandbox.set_faults(response_delay=HELD_ANSWER)

    job_script = area.root / "job.sbatch"
    job_script.write_text(script)
    submit = area.submit_env(slurm, QLAM_SETTINGS=str(area.root / "user-context"))
    job = slurm.sbatch(f"--output={area.root}/out/%A_%a.out", f"--array=0-{TASKS - 1}", str(job_script), env=submit)
    deadline = time.monotonic() + 120
    while _counters(sandbox)[1] < 1:  # the sandbox has rotated; its answer is held back
        assert time.monotonic() < deadline, f"no refresh at the sandbox: {slurm.show_job(job)}"
        time.sleep(0.02)
    slurm.command("scancel", job)
    cancelled = time.monotonic()
    slurm.wait(job, timeout=120)
    return time.monotonic() - cancelled, _intent(area), before


def _login_survived(area: JobArea, sandbox, before: list[str]) -> None:
    """The next refresh token was published: `qlam-hpc token` outside the job works with no
    takeover, auth status shows the login, and it refreshes once more without a reuse."""
    sandbox.set_faults(response_delay=0)
    after = _tokens(area)
    assert len(before) == 2 and len(after) == 2 and not set(before) & set(after)  # rotated and published
    env = _user_env(area)
    token = _run(env, "token")
    assert token.returncode == 0 and token.stderr == "", token.stderr  # no takeover, nothing lost
    status = _run(env, "auth", "status")
    assert status.returncode == 0, status.stderr
    assert "user        ada@example.org" in status.stdout and "login       since" in status.stdout, status.stdout
    assert _counters(sandbox) == (1, 1, 0, 0)
    check = _run(env, "auth", "check")  # the published refresh token is the live one
    assert check.returncode == 0, check.stderr
    assert _counters(sandbox) == (2, 2, 0, 0)


def test_scancel_while_a_task_refreshes_keeps_the_login(slurm: Slurm, user_area: JobArea, sandbox):
    """20-task array whose script traps TERM (so bash waits for qlam-hpc); the answer is held 4 s
    after the rotation; scancel then. The job lasts until the refreshing task has published
    the next refresh token and stopped by SIGTERM with one warning line; afterwards qlam-hpc
    token outside the job works without a takeover, auth status shows the login, and the
    sandbox counted 1 refresh and 0 reuse."""
    area = user_area
    took, refreshing, before = _cancelled_mid_refresh(slurm, area, sandbox, WAITING)
    assert refreshing is None, f"the job ended while {refreshing} was still refreshing"
    assert took < _kill_wait(slurm), "the array ended by SIGKILL, not by SIGTERM"

    outputs = area.outputs()
    assert all("Traceback" not in text for text in outputs), outputs
    exits = re.findall(r"token exit (\d+)", "".join(outputs))  # bash may run one more line before its trap
    assert set(exits) <= {"143"}, exits  # every qlam-hpc was stopped by SIGTERM
    refresher = [text for text in outputs if "arrived while" in text]
    assert len(refresher) == 1, outputs
    (text,) = refresher
    assert "qlam-hpc: warning: SIGTERM arrived while refreshing the login of ada@example.org" in text
    assert text.count("qlam-hpc:") == 1, text
    _login_survived(area, sandbox, before)
    print(f"\nscancel during the refresh: the array ended {took:.1f}s after scancel; login kept, 0 reuse")


def test_a_script_that_does_not_wait_ends_the_job_while_its_refresh_is_in_flight(
    slurm: Slurm, user_area: JobArea, sandbox
):
    """The same with `qlam-hpc token` run plainly by the script: the script's shell dies at
    SIGTERM and Slurm ends the job at once, while qlam-hpc still waits for its answer. Under
    proctrack/cgroup slurmstepd SIGKILLs that process then (the login is lost, as when a
    refresher is SIGKILLed); proctrack/linuxproc, used here, misses it and it finishes."""
    area = user_area
    took, refreshing, before = _cancelled_mid_refresh(slurm, area, sandbox, PLAIN)
    assert refreshing is not None and took < HELD_ANSWER - 1, (took, refreshing)
    pid = int(refreshing.partition(":")[2].partition(" ")[0])
    deadline = time.monotonic() + HELD_ANSWER + 10
    while _process_exists(pid):  # no process of this test is left running
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.05)
    assert _intent(area) is None
    _login_survived(area, sandbox, before)  # here only: a cgroup would have SIGKILLed it


def _process_exists(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``qlam-hpc ARGS`` on the login node, outside any job."""
    return subprocess.run([QLAM_HPC, *args], env=env, capture_output=True, text=True, timeout=60)
