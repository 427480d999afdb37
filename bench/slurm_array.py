"""A 200-task job array on the local Slurm cluster: token requests and end-to-end time.

The same array of examples/array-bash.sbatch (each task submits a QLAM task,
waits for it, fetches its results) runs twice against the sandbox, side by side:
with the shared token cache, then with QLAM_TOKEN_CACHE=off, every qlam-hpc
process fetching its own token. With QLAM_TOKEN_STORE wired into the settings, a
third run uses Redis with a separate cache directory per node.

    python bench/slurm_array.py [TASKS]        (default 200; needs root or a running
                                                 scripts/local-slurm.sh cluster)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import table

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "array-bash.sbatch"
RUN_DIR = Path(os.environ.get("QLAM_SLURM_DIR", "/tmp/qlam-hpc-slurm"))
IDP_LATENCY = 0.2  # seconds per token request, as in the other benchmarks
TASK_DURATION = 1.0  # seconds each emulated QPU task runs


def slurm_env(extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "SBATCH_", "REDIS_"))}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', os.defpath)}"
    return {**base, "SLURM_CONF": str(RUN_DIR / "slurm.conf"), **extra}


def start_slurm() -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "local-slurm.sh"), "start"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the local Slurm cluster could not be started:\n{done.stderr}")


def write_credentials(path: Path, sandbox, lines: dict[str, str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        for name, value in {**sandbox.env(), **lines}.items():
            file.write(f"{name}={value}\n")


def submit_array(script: Path, array: str, output: str, env: dict[str, str]) -> str:
    """``sbatch --array=ARRAY`` of ``script``, its tasks writing to ``output``; the job id."""
    return subprocess.run(
        ["sbatch", "--parsable", f"--array={array}", f"--output={output}", str(script)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def queued(job: str, env: dict[str, str]) -> bool:
    """Whether any task of the job is still pending or running."""
    return bool(
        subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], env=env, capture_output=True, text=True).stdout.strip()
    )


def run_array(sandbox, tasks: int, work: Path, credentials: dict[str, str], env: dict[str, str]) -> dict:
    """Submit the array, wait until no task is left in the queue; what the IdP and the outputs say."""
    for name in ("out", "results"):
        (work / name).mkdir(parents=True)
    write_credentials(work / "credentials", sandbox, credentials)
    sandbox.reset()
    sandbox.set_faults(latency=IDP_LATENCY, task_duration=TASK_DURATION)
    created_before = sandbox.stats().get("tasks_created", 0)
    env = slurm_env({"QLAM_CREDENTIALS": str(work / "credentials"), "QLAM_RESULTS_DIR": str(work / "results"), **env})
    started = time.monotonic()
    job = submit_array(EXAMPLE, f"0-{tasks - 1}", f"{work}/out/%A_%a.out", env)
    while queued(job, env):
        time.sleep(0.25)
    wall = time.monotonic() - started
    outputs = [p.read_text() for p in (work / "out").iterdir()]
    return {
        "completed": sum("results in " in text for text in outputs),
        "requests": sandbox.stats()["token_requests"],
        "created": sandbox.stats().get("tasks_created", 0) - created_before,
        "wall": wall,
    }


def redis_wired(sandbox, url: str, password: str) -> bool:
    from qlam_hpc import Settings, TokenProvider

    settings = Settings.from_env({**sandbox.env(), "QLAM_TOKEN_STORE": url, "REDIS_PASSWORD": password})
    return type(TokenProvider(settings).store).__name__ == "RedisStore"


def main(tasks: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from qlam_hpc.sandbox import Sandbox, SandboxConfig
    from redis_service import start_redis

    start_slurm()
    rows = []
    with Sandbox(SandboxConfig.default()) as sandbox, tempfile.TemporaryDirectory(prefix="qlam-bench-") as tmp:
        scratch = Path(tmp)
        # The first job after slurmctld starts waits a few seconds: not the arrays' business.
        warm_up = subprocess.run(
            ["sbatch", "--wait", "--wrap=true", f"--output={scratch}/warm-up.out"],
            env=slurm_env({}),
            capture_output=True,
        )
        if warm_up.returncode != 0:
            sys.exit("a trivial job did not run on the local Slurm cluster")
        variants = [
            ("shared file cache", {"QLAM_TOKEN_CACHE_DIR": str(scratch / "cache")}, {}),
            ("cache off", {"QLAM_TOKEN_CACHE_DIR": str(scratch / "cache-off")}, {"QLAM_TOKEN_CACHE": "off"}),
        ]
        redis = None
        try:
            redis = start_redis(scratch / "redis")
        except BaseException as exc:  # pytest.skip outside pytest: no redis-server here
            print(f"  no Redis run: {exc}", file=sys.stderr)
        if redis is not None and redis_wired(sandbox, redis.url, redis.password):
            variants.insert(
                1,
                (
                    "Redis, per-node caches",
                    {
                        "QLAM_TOKEN_STORE": redis.url,
                        "REDIS_PASSWORD": redis.password,
                        "QLAM_TOKEN_CACHE_DIR": f"{scratch}/node-caches/$SLURMD_NODENAME",
                    },
                    {},
                ),
            )
        elif redis is not None:
            print("  no Redis run: QLAM_TOKEN_STORE is not wired into the settings yet", file=sys.stderr)
        try:
            for name, credentials, env in variants:
                print(f"  running the {tasks}-task array, {name} ...", file=sys.stderr, flush=True)
                result = run_array(sandbox, tasks, scratch / name.replace(" ", "-").replace(",", ""), credentials, env)
                rows.append(
                    [
                        name,
                        tasks,
                        result["completed"],
                        result["created"],
                        result["requests"],
                        f"{result['wall']:.1f}",
                        f"{tasks / result['wall']:.1f}",
                    ]
                )
        finally:
            if redis is not None:
                redis.stop()
    print(
        f"{tasks}-task array of examples/array-bash.sbatch on the local Slurm (3 nodes x 32 CPUs), "
        f"IdP latency {IDP_LATENCY:g} s, QPU task {TASK_DURATION:g} s"
    )
    print(
        table(["token store", "tasks", "completed", "QLAM tasks", "token requests", "submit to end s", "tasks/s"], rows)
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
