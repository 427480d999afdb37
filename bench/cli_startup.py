"""Whole-process wall time of the CLI's batch-job commands with a warm cache, side by side
in one run, interleaved, against ``python -c pass`` and ``qlam-hpc token --header | curl``;
and the module files each imports beyond ``python -c pass`` (on a cluster's shared
filesystem every one is a metadata round trip).

Targets: warm ``qlam-hpc token`` at most 2.5x ``python -c pass`` (aim 2x); ``api GET``,
``tasks get`` and ``tasks list`` at most 3x ``token --header | curl`` (aim 2x);
``tasks submit`` at most 4x. ``qlam-hpc --version`` (the full CLI: click) and the
``tasks get`` table (rich, pydantic) are shown for comparison.

    python bench/cli_startup.py [rounds]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QLAM_HPC, clean_env, median, table
from qlam_hpc.sandbox import Sandbox

DEFINITION = {
    "program_language": "squin",
    "programs": [{"content": "bench"}],
    "subtasks": [{"program_index": 0, "num_shots": 10}],
}
COUNT_FILES = (
    "import sys\nbefore = {{n for n, m in sys.modules.items() if getattr(m, '__file__', None)}}\n"
    "{body}\n"
    "after = {{n for n, m in sys.modules.items() if getattr(m, '__file__', None)}}\n"
    "print(len(after - before), file=sys.stderr)"
)


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def module_files(args: list[str] | None, env: dict) -> int:
    """Module files loaded by the CLI's entry point with ``args`` (by nothing, for None), as
    the console script runs it."""
    body = "pass" if args is None else f"from qlam_hpc._cli import main\nmain({args!r})"
    done = subprocess.run(
        [sys.executable, "-c", COUNT_FILES.format(body=body)], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stderr.strip().splitlines()[-1])


def main(rounds: int = 20) -> None:
    # An installed package has byte-code compiled by pip; an editable checkout may not
    # (PYTHONDONTWRITEBYTECODE), and compiling on every run is not what users see.
    import compileall

    import qlam_hpc

    compileall.compile_dir(Path(qlam_hpc.__file__).parent, quiet=1)
    curl = shutil.which("curl")
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        sandbox.set_faults(task_duration=3600)
        env = clean_env(sandbox, Path(tmp) / "cache")
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps(DEFINITION))
        subprocess.run([QLAM_HPC, "token"], env=env, stdout=subprocess.DEVNULL, check=True)  # warm the cache
        task_id = subprocess.run(
            [QLAM_HPC, "tasks", "submit", "-q", str(job)], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        tasks_url = f"{env['QLAM_API_URL']}/v2/squin-256q/tasks"
        commands: dict[str, list[str] | None] = {
            "python -c pass": None,
            "qlam-hpc token": ["token"],
            "qlam-hpc token --header | curl": None,
            "qlam-hpc api GET .../tasks": ["api", "GET", "/v2/squin-256q/tasks"],
            "qlam-hpc tasks get ID --json": ["tasks", "get", task_id, "--json"],
            "qlam-hpc tasks list --json": ["tasks", "list", "--json"],
            "qlam-hpc tasks submit -q FILE": ["tasks", "submit", "-q", str(job)],
            "qlam-hpc tasks get ID (table)": ["tasks", "get", task_id],
            "qlam-hpc --version (full CLI)": ["--version"],
        }
        argv = {
            name: [QLAM_HPC, *args] if args is not None else [sys.executable, "-c", "pass"]
            for name, args in commands.items()
        }
        if curl:
            argv["qlam-hpc token --header | curl"] = [
                "sh",
                "-c",
                f"{QLAM_HPC} token --header | {curl} -sf -H @- {tasks_url}",
            ]
        else:
            del argv["qlam-hpc token --header | curl"]
        samples: dict[str, list[float]] = {name: [] for name in argv}
        for command in argv.values():  # warm the page cache
            timed(command, env)
        for _ in range(rounds):
            for name, command in argv.items():
                samples[name].append(timed(command, env))
        base_files = module_files(None, env)
        files = {name: module_files(args, env) - base_files for name, args in commands.items() if args is not None}
    python = median(samples["python -c pass"])
    pipe = median(samples.get("qlam-hpc token --header | curl", [float("nan")]))
    rows = [
        [name, f"{median(s) * 1000:.1f}", f"{median(s) / python:.2f}x", f"{median(s) / pipe:.2f}x", files.get(name, "")]
        for name, s in samples.items()
    ]
    print(f"whole-process wall time with a warm cache, median of {rounds} interleaved runs")
    print(table(["command", "median ms", "vs python -c pass", "vs token | curl", "module files"], rows))
    token = median(samples["qlam-hpc token"]) / python
    print(f"target: warm token <= 2.5x python -c pass: {token:.2f}x, {'met' if token <= 2.5 else 'MISSED'}")
    for name, limit in (
        ("qlam-hpc api GET .../tasks", 3),
        ("qlam-hpc tasks get ID --json", 3),
        ("qlam-hpc tasks list --json", 3),
        ("qlam-hpc tasks submit -q FILE", 4),
    ):
        ratio = median(samples[name]) / pipe
        print(f"target: {name} <= {limit}x token | curl: {ratio:.2f}x, {'met' if ratio <= limit else 'MISSED'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
