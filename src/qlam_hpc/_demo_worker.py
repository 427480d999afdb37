"""One task of the demo's job array: a token through the shared cache, then the real workflow —
submit a small task, wait for it, save its results in the demo's scratch directory.

Prints one JSON line: ``{"ok", "source", "task_id", "status", "results"}``, never the token.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def definition(array_task: int) -> dict[str, Any]:
    """A small task: one program, one subtask of 100 shots, an argument per array task."""
    return {
        "program_language": "squin",
        "programs": [{"content": f"# qlam-hpc demo, array task {array_task}\nmeasure all"}],
        "subtasks": [{"program_index": 0, "num_shots": 100, "arguments": {"array_task": array_task}}],
    }


def main() -> int:
    from ._api._client import QlamClient
    from ._errors import QlamError
    from ._provider import TokenProvider

    array_job = os.environ.get("SLURM_ARRAY_JOB_ID", "0")
    array_task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    results_dir = os.environ.get("QLAM_DEMO_RESULTS", ".")
    result: dict[str, Any] = {"ok": False}
    try:
        provider = TokenProvider.from_env()
        result["source"] = provider.get().source
        principal = provider.principal()
        if principal:
            result["principal"] = principal.get("email") or principal.get("subject")
        with QlamClient(provider=provider) as client:
            # The key makes a resubmitted array task find its earlier task instead of making another.
            task = client.create_task(definition(array_task), idempotency_key=f"demo-{array_job}-{array_task}")
            result["task_id"] = task.id
            task = client.wait(task, timeout=300, poll_interval=0.2, max_poll_interval=2.0)
            result["status"] = task.status
            path = client.download_results(task, os.path.join(results_dir, f"results-{array_task:04d}.json"))
            result.update(ok=True, results=str(path))
    except QlamError as error:
        result.update(error=str(error), exit_code=error.exit_code)
        status = getattr(error, "status", None)  # TaskFailed and TaskCancelled have one
        if status and isinstance(status, str):
            result["status"] = status
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
