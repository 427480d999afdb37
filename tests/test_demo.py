"""``qlam-hpc demo``: a small emulated job array running the real workflow end to end."""

from __future__ import annotations

import json
import os
import re

from conftest import run_cli


def _row(out: str, label: str) -> str:
    match = re.search(rf"{re.escape(label)}\s*│\s*([^│]*?)\s*│", out)
    assert match, out
    return match.group(1)


def test_every_array_task_submits_waits_and_saves_its_results(tmp_path):
    """Four workers: four tasks completed, four results files of 100 shots, one token request."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_"))}
    results = tmp_path / "results"
    result = run_cli(
        "demo",
        "-n",
        "4",
        "--task-duration",
        "0.2",
        "--latency",
        "0.05",
        "--results-dir",
        str(results),
        env=env,
        timeout=120,
    )
    assert result.code == 0, result.out + result.err
    assert _row(result.out, "succeeded") == "4/4"
    assert _row(result.out, "QPU tasks submitted") == "4"
    assert _row(result.out, "QPU tasks completed") == "4"
    assert _row(result.out, "token requests seen by the IdP") == "1"
    assert _row(result.out, "tokens from") == "cache: 3, fetched: 1"
    files = sorted(p.name for p in results.iterdir())
    assert files == [f"results-{i:04d}.json" for i in range(4)]
    for index, name in enumerate(files):
        data = json.loads((results / name).read_text())
        (subtask,) = data["subtasks"]
        assert subtask["arguments"] == {"array_task": index} and len(subtask["shots"]) == 100


def test_the_user_context_demo_logs_in_once_and_the_array_refreshes_once(tmp_path):
    """--user-context: one device login, an expired access token, N tasks: 1 refresh, 0 reuse detections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_"))}
    result = run_cli(
        "demo", "-n", "6", "--user-context", "--task-duration", "0.2", "--latency", "0.05", env=env, timeout=120
    )
    assert result.code == 0, result.out + result.err
    assert "/activate?user_code=" in result.out
    assert _row(result.out, "succeeded") == "6/6"
    assert _row(result.out, "logins (device flow)") == "1"
    assert _row(result.out, "refresh requests seen by the IdP") == "1"
    assert _row(result.out, "reuse detections") == "0"
    assert _row(result.out, "tasks attributed to") == "ada@example.org"
