"""One task of a job array: submit a QLAM task, wait for it, save its results.

Run by array-python.sbatch, once per array task. The token comes from the shared
cache, so the whole array costs one token request; the credentials come from the
environment the sbatch script gives this process (QLAM_CLIENT_ID, ...).

    QLAM_RESULTS_DIR   where results go (default ./results)
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from qlam_hpc import QlamClient, QlamError, TokenProvider


def main() -> int:
    task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID", "local")
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    results = Path(os.environ.get("QLAM_RESULTS_DIR", "results"))
    results.mkdir(parents=True, exist_ok=True)
    print(f"array task {task} of job {array_job} on node {node}", flush=True)

    # The program text is a placeholder: put your own program here.
    definition = {
        "program_language": "squin",
        "programs": [{"content": "circuit ok"}],
        "subtasks": [{"program_index": 0, "num_shots": 100, "arguments": {"theta": task}}],
    }
    provider = TokenProvider.from_env()  # one per process; it keeps the token in memory too
    try:
        with QlamClient(provider=provider) as client:
            # The idempotency key keeps a submission retried after a network failure from
            # creating a second task; the job and array task ids are added for us.
            created = client.create_task(definition, idempotency_key=f"{array_job}-{task}")
            final = client.wait(created, timeout=25 * 60)
            path = client.download_results(final, results / f"{task}.json")
    except QlamError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"QLAM task {final.id} {final.status}; results in {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
