"""A 2,000-task job array of `qlam-hpc token` on the local Slurm: token requests and time.

Each array task runs `qlam-hpc token` once through the shared file cache (one directory
that all three nodes see), the way examples/array-bash.sbatch calls qlam-hpc: a subshell
sources the 0600 credentials file and becomes qlam-hpc. The task times that call itself
with bash's `time` (wall and CPU) and writes it to its output. Reported: token requests
seen by the sandbox's identity provider, tasks that got a token and exited 0, wall time
from submit to the last task's end, the share of the array's task time spent in
qlam-hpc (the timed calls summed, over each task's time from the allocation of its CPU
to its end as slurmctld logs them: this cluster keeps no accounting for sacct), the
median and p95 of the call's wall time, its median CPU time, and the share of the
machine's CPU that went to qlam-hpc. The floor run is the same array with the venv's
`python -c print` in place of `qlam-hpc token` (same subshell, same credentials file):
the share of task time that starting any Python program takes on this machine, below
which no Python CLI can go. A smaller array then runs with the cache on and with
QLAM_TOKEN_CACHE=off, for the token requests the cache saves.

It takes a few minutes, so `make bench` leaves it out; `python bench/run_all.py --scale`
runs it too.

    python bench/slurm_scale.py [--tasks 2000] [--small 200] [--no-floor]   (--small 0: no comparison;
                                 needs root or a running scripts/local-slurm.sh cluster,
                                 whose MaxArraySize allows 5,000 tasks)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import table
from slurm_array import IDP_LATENCY, RUN_DIR, queued, slurm_env, start_slurm, submit_array, write_credentials

# One array task. bash's `time` reports the call's wall and CPU time (qlam-hpc and the
# subshell that sources the credentials) on stderr, which goes to the task's output; the
# token goes into a variable, never into the output.
TASK_SCRIPT = """#!/bin/bash
set -euo pipefail
begin=$EPOCHREALTIME
credentials=$QLAM_CREDENTIALS
TIMEFORMAT='call: real=%3R user=%3U sys=%3S'
time token=$( set -a; . "$credentials"; set +a; exec @COMMAND@ )
[ -n "$token" ] || { echo "empty token" >&2; exit 1; }
echo "task=$SLURM_ARRAY_TASK_ID node=$SLURMD_NODENAME begin=$begin end=$EPOCHREALTIME"
"""
# The floor: the same call with Python doing nothing but print, for what starting any
# Python program costs on this machine (the share qlam-hpc cannot go below).
COMMANDS = {"token": "qlam-hpc token", "floor": "python -c 'print(\"no token\")'"}
CPUS = os.cpu_count() or 1  # the machine's, which all three nodes share
WAIT_LIMIT = 1800.0  # seconds an array may take before the benchmark cancels it
# slurmctld's log: when each task got its CPU and when it ended, to the millisecond.
LOG_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)\] (sched: Allocate|sched/backfill: _start_job: Started|_job_complete:)"
    r" JobId=(\d+)_(\d+)\(\d+\) ?(WEXITSTATUS \d+|WTERMSIG \d+|done)?"
)


def _seconds(text: str) -> float:
    return float(text.replace(",", "."))  # EPOCHREALTIME uses the locale's decimal point


def parse_output(text: str) -> dict | None:
    """What a task wrote about itself, or None when it did not get a token."""
    timed = re.search(r"^call: real=(\S+) user=(\S+) sys=(\S+)$", text, re.M)
    done = re.search(r"^task=\S+ node=(\S+) begin=(\S+) end=(\S+)$", text, re.M)
    if not (timed and done):
        return None
    return {
        "node": done.group(1),
        "begin": _seconds(done.group(2)),
        "end": _seconds(done.group(3)),
        "qlam": _seconds(timed.group(1)),
        "cpu": _seconds(timed.group(2)) + _seconds(timed.group(3)),
    }


def slurm_task_times(job: str) -> dict[int, dict] | None:
    """Per array task, from slurmctld's log: start, end and exit status; None if unreadable.

    The cluster keeps no accounting (no sacct): this is what sacct's Start, End and
    ExitCode would say.
    """
    try:
        lines = (RUN_DIR / "log" / "slurmctld.log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    tasks: dict[int, dict] = {}
    for line in lines:
        match = LOG_LINE.match(line)
        if not match or match.group(4) != job:
            continue
        when = time.mktime(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")) + float(match.group(2))
        task = tasks.setdefault(int(match.group(5)), {})
        what = match.group(6)
        if not match.group(3).startswith("_job_complete"):
            task["start"] = when
        elif what == "done":
            task["end"] = when
        elif what is not None:  # WEXITSTATUS n, or WTERMSIG n (never 0: a failure)
            task["status"] = int(what.split()[1]) if what.startswith("WEXIT") else -int(what.split()[1])
    return tasks


def run_array(sandbox, tasks: int, work: Path, credentials: dict[str, str], command: str = "token") -> dict:
    """Submit the array, wait until the queue has none of it left; what the IdP and the outputs say."""
    (work / "out").mkdir(parents=True)
    script = work / "token-task.sh"
    script.write_text(TASK_SCRIPT.replace("@COMMAND@", COMMANDS[command]))
    write_credentials(work / "credentials", sandbox, credentials)
    sandbox.reset()
    sandbox.set_faults(latency=IDP_LATENCY)
    env = slurm_env({"QLAM_CREDENTIALS": str(work / "credentials")})
    submitted = time.time()
    job = submit_array(script, f"0-{tasks - 1}", f"{work}/out/%a.out", env)
    deadline = time.monotonic() + WAIT_LIMIT
    while queued(job, env):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], env=env)
            sys.exit(f"the {tasks}-task array was not done after {WAIT_LIMIT:g} s: cancelled")
        time.sleep(1.0)
    results = {int(path.stem): parse_output(path.read_text(errors="replace")) for path in (work / "out").iterdir()}
    slurm = slurm_task_times(job)
    if slurm is not None:  # Slurm's view: from the CPU's allocation to the task's end
        ok = {i: r for i, r in results.items() if r is not None and slurm.get(i, {}).get("status") == 0}
        spans = [(t["start"], t["end"]) for t in slurm.values() if "start" in t and "end" in t]
    else:  # the tasks' own view: from bash's start to its last line
        ok = {i: r for i, r in results.items() if r is not None}
        spans = [(r["begin"], r["end"]) for r in ok.values()]
    for index in sorted(set(range(tasks)) - set(ok))[:3]:  # what went wrong, briefly
        path = work / "out" / f"{index}.out"
        text = path.read_text(errors="replace")[-400:] if path.exists() else "(no output file)"
        status = (slurm or {}).get(index, {}).get("status", "?")
        print(f"    task {index} failed (exit status {status}):\n      {text.strip()}", file=sys.stderr)
    calls = sorted(r["qlam"] for r in ok.values())
    nodes: dict[str, int] = {}
    for r in ok.values():
        nodes[r["node"]] = nodes.get(r["node"], 0) + 1
    nan = float("nan")
    return {
        "succeeded": len(ok),
        "requests": sandbox.stats()["token_requests"],
        "wall": max(end for _, end in spans) - submitted if spans else nan,
        "first": min(start for start, _ in spans) - submitted if spans else nan,
        "task_time": sum(end - start for start, end in spans),
        "source": "slurmctld" if slurm is not None else "outputs",
        "qlam_time": sum(calls),
        "cpu_time": sum(r["cpu"] for r in ok.values()),
        "median": statistics.median(calls) if calls else nan,
        "p95": statistics.quantiles(calls, n=100)[94] if len(calls) > 1 else nan,
        "cpu_median": statistics.median(r["cpu"] for r in ok.values()) if ok else nan,
        "nodes": nodes,
    }


def main(tasks: int, small: int, floor: bool) -> None:
    from qlam_hpc.sandbox import Sandbox, SandboxConfig

    start_slurm()
    runs = [("shared file cache", tasks, False, "token")]
    if floor:
        runs.append(("floor: python -c print", tasks, False, "floor"))
    if small:
        runs += [("shared file cache", small, False, "token"), ("cache off", small, True, "token")]
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
        for index, (name, size, off, command) in enumerate(runs):
            print(f"  running the {size}-task array, {name} ...", file=sys.stderr, flush=True)
            work = scratch / f"run-{index}"
            credentials = {"QLAM_TOKEN_CACHE_DIR": str(scratch / f"cache-{index}")}
            if off:
                credentials["QLAM_TOKEN_CACHE"] = "off"
            r = run_array(sandbox, size, work, credentials, command)
            print(f"    tasks per node: {dict(sorted(r['nodes'].items()))}", file=sys.stderr)
            rows.append(
                [
                    name,
                    size,
                    r["succeeded"],
                    r["requests"],
                    f"{r['wall']:.1f}",
                    f"{r['first']:.1f}",
                    f"{size / r['wall']:.1f}",
                    f"{r['qlam_time']:.0f} / {r['task_time']:.0f}",
                    f"{100 * r['qlam_time'] / r['task_time']:.0f} %",
                    f"{1000 * r['median']:.0f} / {1000 * r['p95']:.0f}",
                    f"{1000 * r['cpu_median']:.0f}",
                    f"{100 * r['cpu_time'] / (CPUS * r['wall']):.0f} %",
                ]
            )
    print(
        "job arrays of `qlam-hpc token` on the local Slurm (3 nodes x 32 CPUs: 96 tasks at once, "
        f"on {CPUS} real CPUs), IdP latency {IDP_LATENCY:g} s; task time from {r['source']}"
    )
    print(
        table(
            [
                "token cache",
                "tasks",
                "succeeded",
                "token requests",
                "submit to last end s",
                "to 1st start s",
                "tasks/s",
                "in qlam-hpc / task time s",
                "share",
                "call median / p95 ms",
                "call CPU ms",
                "machine CPU in qlam-hpc",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="array size with the shared cache (default 2000)")
    parser.add_argument(
        "--small", type=int, default=200, help="size of the cache on / cache off comparison (default 200; 0: none)"
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="leave out the floor: the same array with `python -c print` instead of qlam-hpc",
    )
    args = parser.parse_args()
    main(args.tasks, args.small, args.floor)
