"""Who is running: host, process and the batch job, read from the scheduler's environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def job_id(env: Mapping[str, str] | None = None) -> str | None:
    """``ARRAYJOB_TASK`` for a Slurm array task, the Slurm job id, or the PBS job id."""
    env = os.environ if env is None else env
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    return env.get("PBS_JOBID") or None


def process_label(env: Mapping[str, str] | None = None) -> str:
    """``host:pid`` plus the job, for "who fetched this token" in the cache and the ledger."""
    label = f"{socket.gethostname()}:{os.getpid()}"
    job = job_id(env)
    return f"{label} (job {job})" if job else label
