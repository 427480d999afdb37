"""The examples' job arrays on a real Slurm cluster of three nodes, against the sandbox.

Each test submits an example from examples/ with sbatch, exactly as a user would,
and checks what matters on a cluster: every task completes, the identity provider
sees one token request for the whole array, each QLAM task names its array job
and task, and no secret or token is left where Slurm keeps job data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlam_hpc import Settings, TokenProvider
from qlam_hpc._stores._file import FileStore
from slurm_service import Slurm

from .conftest import EXAMPLES, JobArea

QLAM_HPC = str(Path(sys.executable).with_name("qlam-hpc"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.timeout(900),
    # The job area's 0600 credentials file, which the jobs source: the secret is there on purpose.
    pytest.mark.leak_check_expect("*credentials", kinds=["client secret"]),
]

TASKS = 50


def _submit(slurm: Slurm, area: JobArea, script: str, *args: str, env: dict | None = None) -> tuple[str, str]:
    """sbatch an example with its output in the area; the job id and, at once, `scontrol show job`."""
    job = slurm.sbatch(
        f"--output={area.root}/out/%A_%a.out",
        *args,
        str(EXAMPLES / script),
        env=env or area.submit_env(slurm),
    )
    return job, slurm.show_job(job) + _stored_job_files(slurm, job)


def _stored_job_files(slurm: Slurm, job: str) -> str:
    """What slurmctld wrote to disk for the job (its environment and script), while it exists."""
    texts = []
    for path in slurm.run_dir.glob(f"state/hash.*/job.{job}/*"):
        texts.append(path.read_bytes().decode(errors="replace"))
    assert texts, f"slurmctld stored nothing for job {job}: the check below would prove nothing"
    return "\n".join(texts)


def _finished(slurm: Slurm, job: str, area: JobArea, count: int) -> list[str]:
    slurm.wait(job, timeout=600)
    outputs = area.outputs()
    assert len(outputs) == count, f"{len(outputs)} output files for {count} tasks"
    return outputs


def _failures(outputs: list[str], done_marker: str) -> list[str]:
    return [text[-800:] for text in outputs if done_marker not in text]


def _tasks_of(area: JobArea, job: str) -> list[dict]:
    """The QLAM tasks the sandbox holds for array job ``job``, read back through its API."""
    env = {**area.plain_env(), **area.sandbox.env(), "QLAM_TOKEN_CACHE_DIR": str(area.root / "reader")}
    done = subprocess.run(
        [QLAM_HPC, "tasks", "list", "--all", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    tasks = []
    for task in json.loads(done.stdout)["elements"]:
        block = json.loads(task.get("system_metadata") or "{}").get("qlam_hpc", {})
        if block.get("slurm", {}).get("array_job_id") == job:
            tasks.append(task)
    return tasks


def _secrets(area: JobArea) -> list[str]:
    """The client secret and every token the cache holds now."""
    found = [area.sandbox.client.client_secret]
    for entry_file in area.cache_dir.rglob("*.entry"):
        for line in entry_file.read_text().splitlines():
            if line.startswith("access_token="):
                found.append(line.partition("=")[2])
    return found


def _assert_no_secrets(texts: dict[str, str], secrets: list[str]) -> None:
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret or token is in {name}"


def _nodes(outputs: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for text in outputs:
        match = re.search(r" on node (\S+)", text)
        assert match, text[-500:]
        counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def _results(area: JobArea) -> list[Path]:
    return sorted((area.root / "results").glob("*.json"))


@pytest.fixture
def quick_tasks(sandbox):
    """QLAM tasks that run 1 s, so that the arrays are about the scheduler, not the QPU."""
    sandbox.set_faults(task_duration=1.0)
    return sandbox


# --- the bash example -------------------------------------------------------------------------


def test_a_50_task_bash_array_over_3_nodes_makes_one_token_request(slurm, area, quick_tasks):
    """examples/array-bash.sbatch, 50 tasks on 3 nodes: all complete, 1 token request, tasks attributed."""
    sandbox = quick_tasks
    started = time.monotonic()
    job, scheduler_view = _submit(slurm, area, "array-bash.sbatch", f"--array=0-{TASKS - 1}")
    outputs = _finished(slurm, job, area, TASKS)
    took = time.monotonic() - started

    assert _failures(outputs, "results in ") == []
    assert len(_results(area)) == TASKS
    assert all(json.loads(path.read_text())["task_id"] for path in _results(area))
    assert sandbox.stats()["token_requests"] == 1
    nodes = _nodes(outputs)
    assert sorted(nodes) == ["node1", "node2", "node3"] and min(nodes.values()) >= 5, nodes

    tasks = _tasks_of(area, job)
    assert len(tasks) == TASKS
    slurm_blocks = [json.loads(t["system_metadata"])["qlam_hpc"]["slurm"] for t in tasks]
    assert sorted(int(b["array_task_id"]) for b in slurm_blocks) == list(range(TASKS))
    assert len({b["job_id"] for b in slurm_blocks}) == TASKS  # each array task is a job of its own
    assert all(t["task_status"] == "Completed" for t in tasks)

    _assert_no_secrets(
        {
            "the job script": (EXAMPLES / "array-bash.sbatch").read_text(),
            "the job output files": "\n".join(outputs),
            "scontrol show job and slurmctld's stored job files": scheduler_view,
        },
        _secrets(area),
    )
    print(f"\n50-task bash array on 3 nodes: {took:.1f}s submit to finish, nodes {nodes}")


# --- the Python example -----------------------------------------------------------------------


def test_a_python_array_makes_one_token_request(slurm, area, quick_tasks):
    """examples/array-python.sbatch + array_task.py: all complete, 1 token request, results saved."""
    sandbox = quick_tasks
    env = area.submit_env(slurm, QLAM_PYTHON=sys.executable, QLAM_TASK_SCRIPT=str(EXAMPLES / "array_task.py"))
    job, scheduler_view = _submit(slurm, area, "array-python.sbatch", f"--array=0-{TASKS - 1}", env=env)
    outputs = _finished(slurm, job, area, TASKS)

    assert _failures(outputs, "Completed; results in ") == []
    assert len(_results(area)) == TASKS
    assert sandbox.stats()["token_requests"] == 1
    assert len(_nodes(outputs)) == 3
    tasks = _tasks_of(area, job)
    assert sorted(int(json.loads(t["system_metadata"])["qlam_hpc"]["slurm"]["array_task_id"]) for t in tasks) == list(
        range(TASKS)
    )
    _assert_no_secrets(
        {
            "the job scripts": (EXAMPLES / "array-python.sbatch").read_text()
            + (EXAMPLES / "array_task.py").read_text(),
            "the job output files": "\n".join(outputs),
            "scontrol show job and slurmctld's stored job files": scheduler_view,
        },
        _secrets(area),
    )


# --- the prefetch example ---------------------------------------------------------------------


def test_a_prefetch_job_fetches_the_arrays_token_before_it_starts(slurm, area, quick_tasks):
    """prefetch.sbatch, then the array with --dependency=afterok: the prefetch job made the 1 request."""
    sandbox = quick_tasks
    env = area.submit_env(slurm, QLAM_PREFETCH_MIN_TTL="2h")
    prefetch = slurm.sbatch(f"--output={area.root}/prefetch.out", str(EXAMPLES / "prefetch.sbatch"), env=env)
    array, scheduler_view = _submit(
        slurm,
        area,
        "array-bash.sbatch",
        "--array=0-19",
        f"--dependency=afterok:{prefetch}",
        "--kill-on-invalid-dep=yes",
        env=env,
    )
    outputs = _finished(slurm, array, area, 20)

    assert _failures(outputs, "results in ") == []
    assert sandbox.stats()["token_requests"] == 1
    entry = FileStore(area.cache_dir).load(area.identity())
    assert f"(job {prefetch})" in entry.token.obtained_by  # the prefetch job fetched it
    assert entry.token.remaining(time.time()) > 2 * 3600 - 120
    prefetch_log = (area.root / "prefetch.out").read_text()
    # Exactly one: "11 token requests" must not pass for it.
    assert re.search(r"^requests    1 token request in \d{4}-\d{2}\b", prefetch_log, re.MULTILINE), prefetch_log
    _assert_no_secrets(
        {
            "the job scripts": (EXAMPLES / "prefetch.sbatch").read_text(),
            "the prefetch job's output": prefetch_log,
            "the array's output files": "\n".join(outputs),
            "scontrol show job and slurmctld's stored job files": scheduler_view,
        },
        _secrets(area),
    )


def test_a_failed_prefetch_cancels_the_array_before_it_starts(slurm, area, quick_tasks):
    """Wrong secret: the prefetch job fails after 1 request, and the dependent array never runs."""
    sandbox = quick_tasks
    area.write_credentials(QLAM_CLIENT_SECRET="not-the-secret")
    env = area.submit_env(slurm)
    prefetch = slurm.sbatch(f"--output={area.root}/prefetch.out", str(EXAMPLES / "prefetch.sbatch"), env=env)
    array = slurm.sbatch(
        f"--output={area.root}/out/%A_%a.out",
        "--array=0-19",
        f"--dependency=afterok:{prefetch}",
        "--kill-on-invalid-dep=yes",
        str(EXAMPLES / "array-bash.sbatch"),
        env=env,
    )
    slurm.wait(prefetch, timeout=120)
    slurm.wait(array, timeout=120)

    assert "invalid_client" in (area.root / "prefetch.out").read_text()
    assert area.outputs() == []
    assert sandbox.stats()["token_requests"] == 1
    assert _tasks_of(area, array) == []


# --- tokens shorter than the array's run ------------------------------------------------------


def test_tokens_shorter_than_the_run_are_refreshed_about_once_per_lifetime(slurm, area, sandbox):
    """8 s tokens, 50 tasks each waiting ~10 s for its QLAM task: at most ~1 request per 6 s, no task fails."""
    sandbox.set_faults(token_lifetime=8, task_duration=10.0)
    started = time.monotonic()
    job, _ = _submit(slurm, area, "array-bash.sbatch", f"--array=0-{TASKS - 1}")
    outputs = _finished(slurm, job, area, TASKS)
    took = time.monotonic() - started

    assert _failures(outputs, "results in ") == []
    requests = sandbox.stats()["token_requests"]
    # A token is handed out until a quarter of its lifetime is left (refresh margin 2 s), so
    # one lasts about 6 s; +2 for the first fetch and a refresh racing the end of the run.
    assert 2 <= requests <= took / 6 + 2, (requests, took)
    print(f"\n8 s tokens over a {took:.0f}s array: {requests} token requests")


# --- Redis instead of a shared filesystem -----------------------------------------------------


def test_a_50_task_array_with_redis_and_node_local_caches_makes_one_token_request(
    slurm, area, quick_tasks, tmp_path_factory
):
    """QLAM_TOKEN_STORE=redis://..., a separate cache directory per node: still exactly 1 request."""
    from redis_service import start_redis

    sandbox = quick_tasks
    server = start_redis(tmp_path_factory.mktemp("slurm-redis"))
    try:
        node_caches = area.root / "node-caches"
        area.write_credentials(
            QLAM_TOKEN_STORE=server.url,
            REDIS_PASSWORD=server.password,
            QLAM_TOKEN_CACHE_DIR=f"{node_caches}/$SLURMD_NODENAME",
        )
        wired = Settings.from_env({**sandbox.env(), "QLAM_TOKEN_STORE": server.url, "REDIS_PASSWORD": server.password})
        store = type(TokenProvider(wired).store).__name__
        assert store == "RedisStore", f"QLAM_TOKEN_STORE=redis://... gave a {store}"
        job, scheduler_view = _submit(slurm, area, "array-bash.sbatch", f"--array=0-{TASKS - 1}")
        outputs = _finished(slurm, job, area, TASKS)

        assert _failures(outputs, "results in ") == []
        assert sandbox.stats()["token_requests"] == 1
        assert len(_nodes(outputs)) == 3
        assert list(node_caches.rglob("*.entry")) == []  # nothing went through the file store
        token = server.client().get(f"qlam-hpc:{area.identity().key()}:entry").decode()
        access_token = next(line for line in token.splitlines() if line.startswith("access_token=")).partition("=")[2]
        _assert_no_secrets(
            {"the job output files": "\n".join(outputs), "slurmctld's job files": scheduler_view},
            [sandbox.client.client_secret, server.password, access_token],
        )
    finally:
        server.stop()


def test_slurm_is_really_three_nodes(slurm):
    """The cluster under these tests: three nodes, each idle or busy, with 32 CPUs."""
    out = slurm.command("sinfo", "-h", "-N", "-o", "%N %c")
    assert sorted(line.split()[0] for line in out.splitlines()) == ["node1", "node2", "node3"]
    assert shutil.which("sbatch")
