"""``qlam-hpc demo``: an emulated job array against the embedded sandbox.

N worker processes start together, each with the environment a Slurm array task
has. Each gets a token through the shared cache and runs the real workflow:
submit a small task, wait for it, save its results to a file. The summary shows
what matters on a real cluster: the tasks completed, and how many token
requests the identity provider saw for the whole array (1, not N).

``--user-context`` runs the same array as a person would: one device login
(approved by the sandbox on its own), an access token that has expired by the
time the array starts, and N tasks that must refresh it with one rotating
refresh token: 1 refresh, 0 reuse detections, not N refreshes and a revoked login.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from rich.console import Console

    from .sandbox import Sandbox

ARRAY_JOB_ID = "4242"


@click.command("demo")
@click.option("-n", "--workers", default=32, show_default=True, type=click.IntRange(1, 1000), help="Array tasks.")
@click.option("--latency", default=0.2, show_default=True, type=float, help="Seconds the sandbox IdP takes per token.")
@click.option(
    "--task-duration",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 600),
    help="Seconds each emulated QPU task runs.",
)
@click.option(
    "--cache-dir",
    "demo_cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Token cache for the run [default: a new temporary directory].",
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep each task's results here [default: the run's scratch directory, removed at the end].",
)
@click.option(
    "--user-context",
    is_flag=True,
    help="Log in once as a person (device flow), let the access token expire, then run the array: "
    "every task must refresh with one rotating refresh token.",
)
def demo_command(
    workers: int,
    latency: float,
    task_duration: float,
    demo_cache: Path | None,
    results_dir: Path | None,
    user_context: bool,
) -> None:
    """Run an emulated N-task job array against the embedded sandbox.

    Starts the sandbox identity provider and tasks API on 127.0.0.1 and
    launches the workers at once. Each submits a small task, waits for it and
    saves its results to a file. The summary: tasks completed, and the token
    requests the identity provider saw (the point: 1, not N).

    \b
    qlam-hpc demo
    qlam-hpc demo -n 200 --task-duration 0.5 --results-dir ./demo-results
    qlam-hpc demo --user-context             # one login, N tasks, 1 refresh
    """
    from rich.console import Console

    from .sandbox import SandboxConfig
    from .sandbox._extra import sandbox_class

    # Without the sandbox extra: the same one line and exit code (3) as `qlam-hpc sandbox`.
    server = sandbox_class()
    console = Console(stderr=False, highlight=False)
    config = SandboxConfig.default(
        latency=latency, task_duration=task_duration, device_poll_interval=1, auto_approve=True
    )
    with tempfile.TemporaryDirectory(prefix="qlam-hpc-demo-") as scratch, server(config) as sandbox:
        cache_dir = demo_cache or Path(scratch) / "cache"
        saved = results_dir or Path(scratch) / "results"
        saved.mkdir(parents=True, exist_ok=True)
        console.print(f"sandbox identity provider and tasks API on [bold]{sandbox.url}[/]")
        console.print(f"shared token cache: {cache_dir}")
        env = {
            **os.environ,
            **sandbox.env(flow="device" if user_context else "m2m"),
            "QLAM_TOKEN_CACHE_DIR": str(cache_dir),
            "QLAM_DEMO_RESULTS": str(saved),
        }
        for variable in ("QLAM_TOKEN_CACHE", "QLAM_QPU_MODE", "QLAM_ATTRIBUTION", "QLAM_TOKEN_STORE"):
            env.pop(variable, None)
        if user_context:
            _log_in_and_let_expire(sandbox, env, console)
        console.print(f"launching a {workers}-task job array (array job {ARRAY_JOB_ID})")
        started = time.monotonic()
        results = _run_array(workers, env, console)
        wall = time.monotonic() - started
        stats = sandbox.stats()
        files = len(list(saved.glob("results-*.json")))
    _summary(console, workers, results, stats, wall, files, saved if results_dir else None, user_context)
    if sum(1 for r in results if r.get("ok")) != workers:
        raise SystemExit(1)


def _log_in_and_let_expire(sandbox: Sandbox, env: dict[str, str], console: Console) -> None:
    """One device login, as a person runs it on a login node; then the access token expires
    (the sandbox issues it for 2 s), so every task of the array finds it stale at once."""
    sandbox.set_faults(token_lifetime=2)
    login = subprocess.run(
        [sys.executable, "-m", "qlam_hpc", "auth", "login"], env=env, capture_output=True, text=True, timeout=60
    )
    sandbox.set_faults(token_lifetime=86400)
    if login.returncode != 0:
        raise click.ClickException(f"the demo's login failed: {login.stderr.strip()}")
    console.print(f"[dim]{login.stderr.strip()}[/]")
    console.print("(approved by the sandbox, as you would in a browser)")
    time.sleep(1.7)  # the access token is now inside its refresh margin: the array must refresh it
    console.print("the access token has expired: every task of the array needs a refresh")


def _run_array(workers: int, env: dict[str, str], console: Console) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    processes = []
    for task in range(workers):
        task_env = {
            **env,
            "SLURM_JOB_ID": str(int(ARRAY_JOB_ID) + task + 1),
            "SLURM_ARRAY_JOB_ID": ARRAY_JOB_ID,
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_ARRAY_TASK_COUNT": str(workers),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "qlam_hpc._demo_worker"],
                env=task_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results: list[dict[str, Any]] = []
    columns = (TextColumn("array tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        bar = progress.add_task("tasks", total=workers)
        for task, process in enumerate(processes):
            out, err = process.communicate()
            results.append(_result(task, process.returncode, out, err))
            progress.advance(bar)
            if not console.is_terminal and (task + 1) % max(1, workers // 4) == 0:
                console.print(f"{task + 1}/{workers} array tasks done")
    return results


def _result(task: int, code: int, out: str, err: str) -> dict[str, Any]:
    result: dict[str, Any]
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"ok": False, "error": err.strip().splitlines()[-1] if err.strip() else f"exit {code}"}
    result["task"] = task
    return result


def _summary(
    console: Console,
    workers: int,
    results: list[dict[str, Any]],
    stats: dict[str, Any],
    wall: float,
    files: int,
    kept: Path | None,
    user_context: bool = False,
) -> None:
    from rich.table import Table

    sources: dict[str, int] = {}
    for result in results:
        sources[result.get("source", "error")] = sources.get(result.get("source", "error"), 0) + 1
    ok = sum(1 for r in results if r.get("ok"))
    completed = sum(1 for r in results if r.get("status") == "Completed")
    table = Table(title="job array summary", show_header=False)
    table.add_row("array tasks", str(workers))
    table.add_row("succeeded", f"{ok}/{workers}")
    table.add_row("QPU tasks submitted", str(stats.get("tasks_created", 0)))
    table.add_row("QPU tasks completed", f"[bold]{completed}[/]")
    table.add_row("results files saved", f"{files}" + (f" in {kept}" if kept else ""))
    if user_context:
        table.add_row("logins (device flow)", str(stats.get("device_logins", 0)))
        table.add_row("refresh requests seen by the IdP", f"[bold]{stats.get('refresh_requests', 0)}[/]")
        table.add_row("reuse detections", f"[bold]{stats.get('reuse_detections', 0)}[/]")
        table.add_row("logins revoked", str(stats.get("families_revoked", 0)))
        users = sorted({r["principal"] for r in results if r.get("principal")})
        table.add_row("tasks attributed to", ", ".join(users) or "-")
    else:
        table.add_row("token requests seen by the IdP", f"[bold]{stats['token_requests']}[/]")
    table.add_row("tokens from", ", ".join(f"{k}: {v}" for k, v in sorted(sources.items())))
    table.add_row("authenticated API calls", str(stats.get("api_requests", 0)))
    table.add_row("wall time", f"{wall:.2f} s")
    console.print(table)
    for failure in [r for r in results if not r.get("ok")][:5]:
        console.print(f"task {failure['task']} failed: {failure.get('error')}")
