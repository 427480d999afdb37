"""A job array in user context on the real three-node Slurm, against the sandbox.

The user logs in once before submitting (the sandbox approves at once), the access
token expires, then examples/array-user-context.sbatch runs 50 tasks over 3 nodes.
Refresh tokens rotate with no overlap period, as on Auth0 by default: had two tasks
refreshed with the same one, the login would be revoked and the array would fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from qlam_hpc import Settings, TokenProvider
from qlam_hpc._login import login
from slurm_service import Slurm

from .conftest import EXAMPLES, JobArea
from .test_job_arrays import QLAM_HPC, _assert_no_secrets, _failures, _finished, _nodes, _results, _submit

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(900)]

TASKS = 50
SCRIPT = "array-user-context.sbatch"


@pytest.fixture
def sandbox(user_sandbox):
    return user_sandbox


def _user_env(area: JobArea) -> dict[str, str]:
    """The environment the user has on the login node: the settings file's, nothing else."""
    return {**area.plain_env(), **area.user_settings()}


def _tokens(area: JobArea) -> list[str]:
    """The refresh and access tokens the cache holds now."""
    found = []
    for entry_file in area.cache_dir.rglob("*.entry"):
        for line in entry_file.read_text().splitlines():
            if line.startswith(("refresh_token=", "access_token=")):
                found.append(line.partition("=")[2])
    return found


def _users_tasks(area: JobArea, job: str) -> list[dict]:
    """The user's QLAM tasks of array job ``job``, read through the API in user context
    (the tasks are the user's: an M2M client would not see them)."""
    done = subprocess.run(
        [QLAM_HPC, "tasks", "list", "--all", "--json"], env=_user_env(area), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    blocks = [
        json.loads(t.get("system_metadata") or "{}").get("qlam_hpc", {}) for t in json.loads(done.stdout)["elements"]
    ]
    return [b for b in blocks if b.get("slurm", {}).get("array_job_id") == job]


def test_a_50_task_user_context_array_over_3_nodes_makes_one_refresh(slurm: Slurm, user_area: JobArea, sandbox):
    """Logged in once, access token expired: 50 tasks on 3 nodes all succeed with 1 refresh,
    0 reuse detections, every QLAM task names the user and its array task, no token left where
    Slurm keeps job data."""
    area = user_area
    sandbox.set_faults(token_lifetime=2)
    login(TokenProvider(Settings.from_env(_user_env(area))), on_code=lambda authorization: None)
    sandbox.set_faults(token_lifetime=86400)
    before, logged_in = _tokens(area), sandbox.stats()["token_requests"]  # the device code's polls
    time.sleep(1.7)  # a 2 s token's refresh margin is 0.5 s: every task meets an expired one

    started = time.monotonic()
    env = area.submit_env(slurm, QLAM_SETTINGS=str(area.root / "user-context"))
    job, scheduler_view = _submit(slurm, area, SCRIPT, f"--array=0-{TASKS - 1}", env=env)
    outputs = _finished(slurm, job, area, TASKS)
    took = time.monotonic() - started

    assert _failures(outputs, "results in ") == []
    assert len(_results(area)) == TASKS
    assert all(json.loads(path.read_text())["task_id"] for path in _results(area))
    stats = sandbox.stats()
    assert (stats["refresh_requests"], stats["refreshes"]) == (1, 1)
    assert (stats["reuse_detections"], stats["families_revoked"]) == (0, 0)
    assert stats["token_requests"] - logged_in == 1  # the refresh, and nothing else
    nodes = _nodes(outputs)
    assert sorted(nodes) == ["node1", "node2", "node3"] and min(nodes.values()) >= 5, nodes

    blocks = _users_tasks(area, job)
    assert len(blocks) == TASKS
    assert all(b["principal"]["email"] == "ada@example.org" for b in blocks)
    assert sorted(int(b["slurm"]["array_task_id"]) for b in blocks) == list(range(TASKS))
    assert len({b["slurm"]["job_id"] for b in blocks}) == TASKS  # each array task is a job of its own

    after = _tokens(area)
    assert len(before) == 2 and len(after) == 2 and not set(before) & set(after)  # rotated, published
    _assert_no_secrets(
        {
            "the job script": (EXAMPLES / SCRIPT).read_text(),
            "the settings file": (area.root / "user-context").read_text(),
            "the job output files": "\n".join(outputs),
            "scontrol show job and slurmctld's stored job files": scheduler_view,
        },
        before + after,
    )
    print(f"\n50-task user-context array on 3 nodes: {took:.1f}s submit to finish, 1 refresh, nodes {nodes}")


def test_a_settings_file_others_can_write_is_refused(tmp_path):
    """The settings hold no secret, but whoever can edit them can send the login elsewhere: exit 3."""
    loose = tmp_path / "user-context"
    loose.write_text("QLAM_AUTH_FLOW=device\n")
    loose.chmod(0o664)
    env = {"PATH": os.defpath, "HOME": str(tmp_path), "QLAM_SETTINGS": str(loose), "QLAM_RESULTS_DIR": str(tmp_path)}
    run = ["bash", str(EXAMPLES / SCRIPT)]
    done = subprocess.run(run, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 3 and "only you can write" in done.stderr
    loose.chmod(0o644)
    readable = subprocess.run(run, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert readable.returncode != 3  # readable by others is fine: no secret; it fails later (no qlam-hpc on PATH)
    assert Path(EXAMPLES / SCRIPT).read_text().count("QLAM_CLIENT_SECRET") == 0
