"""Submit-and-wait throughput: N tasks one after another with ``QlamClient``, against the same
N with ``AsyncQlamClient`` and bounded concurrency, side by side in one run.

The sandbox runs in its own process (``qlam-hpc sandbox``), so the server does not
share this process's interpreter lock with the clients being measured.

    python bench/tasks_throughput.py                 # 1,000 tasks, 32 at a time, 0.2 s each
    python bench/tasks_throughput.py -n 200 -c 32 --task-duration 0.1

Target: the concurrent client completes tasks at least 3x faster than the sequential one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QLAM_HPC, table
from qlam_hpc import ApiSettings, AsyncQlamClient, QlamClient, Settings, TokenProvider

DEFINITION = {
    "program_language": "squin",
    "programs": [{"content": "benchmark circuit"}],
    "subtasks": [{"program_index": 0, "num_shots": 10}],
}
# Polling starts at 50 ms and grows to 200 ms: close to what a task of 0.2 s needs.
POLL = {"poll_interval": 0.05, "max_poll_interval": 0.2}


def start_sandbox(directory: Path, task_duration: float) -> tuple[subprocess.Popen, dict[str, str]]:
    env_file = directory / "sandbox.env"
    server = subprocess.Popen(
        [QLAM_HPC, "sandbox", "--task-duration", str(task_duration), "--env-file", str(env_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (env_file.exists() and env_file.stat().st_size):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the sandbox did not start")
        time.sleep(0.05)
    env = {}
    for line in env_file.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name:
            env[name] = value.strip("'\"")
    return server, env


def sequential(settings: ApiSettings, provider: TokenProvider, count: int) -> tuple[float, list[float]]:
    latencies = []
    with QlamClient(settings, provider=provider) as client:
        started = time.perf_counter()
        for _ in range(count):
            begun = time.perf_counter()
            client.wait(client.create_task(DEFINITION), **POLL)
            latencies.append(time.perf_counter() - begun)
        return time.perf_counter() - started, latencies


async def concurrent(
    settings: ApiSettings, provider: TokenProvider, count: int, limit: int
) -> tuple[float, list[float]]:
    import anyio

    latencies: list[float] = []
    limiter = anyio.CapacityLimiter(limit)
    async with AsyncQlamClient(settings, provider=provider) as client:

        async def one() -> None:
            async with limiter:
                begun = time.perf_counter()
                await client.wait(await client.create_task(DEFINITION), **POLL)
                latencies.append(time.perf_counter() - begun)

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(one)
        return time.perf_counter() - started, latencies


def row(name: str, count: int, wall: float, latencies: list[float]) -> list[str]:
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else latencies[0]
    return [name, str(count), f"{wall:.1f}", f"{count / wall:.1f}", f"{statistics.median(latencies):.3f}", f"{p95:.3f}"]


def main() -> None:
    import anyio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--tasks", type=int, default=1000, help="tasks per mode (default 1000)")
    parser.add_argument("-c", "--concurrency", type=int, default=32, help="async tasks in flight (default 32)")
    parser.add_argument("--task-duration", type=float, default=0.2, help="seconds each sandbox task runs (default 0.2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server, sandbox_env = start_sandbox(Path(tmp), args.task_duration)
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_"))}
            env.update(sandbox_env)
            provider = TokenProvider(Settings.from_env(env, cache_dir=str(Path(tmp) / "cache")))
            provider.get_token()
            settings = ApiSettings.from_env(env)
            seq_wall, seq_lat = sequential(settings, provider, args.tasks)
            con_wall, con_lat = anyio.run(concurrent, settings, provider, args.tasks, args.concurrency)
        finally:
            server.terminate()
            server.wait(timeout=30)
    speedup = seq_wall / con_wall
    print(f"submit-and-wait of {args.tasks} tasks of {args.task_duration:g} s against the sandbox")
    print(
        table(
            ["client", "tasks", "wall s", "tasks/s", "median s/task", "p95 s/task"],
            [
                row("QlamClient, sequential", args.tasks, seq_wall, seq_lat),
                row(f"AsyncQlamClient, {args.concurrency} at a time", args.tasks, con_wall, con_lat),
            ],
        )
    )
    print(f"concurrent / sequential throughput: {speedup:.1f}x")
    print(f"target: concurrent >= 3x sequential: {'met' if speedup >= 3 else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
