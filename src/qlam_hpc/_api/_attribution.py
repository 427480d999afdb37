"""Attribution: which host, user and batch job submitted a task. Pure: the caller passes
the environment, host and user in.

QuEra sees many tasks from one M2M client when a whole job array shares it; the
``qlam_hpc`` block in each task's ``system_metadata`` lets both sides tell them
apart afterwards (which Slurm array task made this one?). In user context the
block also names the person whose login made the task (``principal``: subject and
email), for audits that need per-user attribution. Only what is known appears,
so the block stays small.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing costs the CLI's light tasks submit path its import time
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import Any

_SLURM = (
    ("job_id", "SLURM_JOB_ID"),
    ("array_job_id", "SLURM_ARRAY_JOB_ID"),
    ("array_task_id", "SLURM_ARRAY_TASK_ID"),
    ("cluster", "SLURM_CLUSTER_NAME"),
    ("user", "SLURM_JOB_USER"),
)
# PBS Pro names the index PBS_ARRAY_INDEX; Torque calls it PBS_ARRAYID.
_PBS = (("job_id", "PBS_JOBID"), ("array_index", "PBS_ARRAY_INDEX"), ("array_index", "PBS_ARRAYID"))


def attribution(
    env: Mapping[str, str],
    *,
    version: str,
    host: str | None,
    user: str | None,
    principal: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{"qlam_hpc": {"version", "host", "user", "principal", "slurm": {...}, "pbs": {...}}}``, set keys only."""
    block: dict[str, Any] = {"version": version}
    if host:
        block["host"] = host
    if user:
        block["user"] = user
    if principal:
        block["principal"] = dict(principal)
    for name, table in (("slurm", _SLURM), ("pbs", _PBS)):
        found: dict[str, str] = {}
        for key, variable in table:
            if env.get(variable) and key not in found:
                found[key] = env[variable]
        if found:
            block[name] = found
    return {"qlam_hpc": block}


def this_process(principal: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The block for this process: its environment, host name and user (the impure edge)."""
    import os
    import socket

    from .._version import __version__

    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if not user:
        try:
            import pwd

            user = pwd.getpwuid(os.getuid()).pw_name
        except (ImportError, KeyError):
            user = None
    return attribution(os.environ, version=__version__, host=socket.gethostname(), user=user, principal=principal)


def merge_system_metadata(existing: Any, ours: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The ``system_metadata`` string to send, and whether ours is in it.

    No existing value: ours alone. A JSON object: ours merged in (our key wins, the
    user's other keys stay). Anything else is the user's data in a form we cannot
    extend, so it is sent unchanged and attribution is skipped rather than lost data.
    """
    if existing is None or existing == "":
        return _dump(ours), True
    if isinstance(existing, str):
        try:
            parsed = json.loads(existing)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return _dump({**parsed, **ours}), True
    return existing, False


def with_attribution(body: Mapping[str, Any], ours: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A copy of a task-creation body whose top-level ``system_metadata`` carries ``ours``."""
    merged, attributed = merge_system_metadata(body.get("system_metadata"), ours)
    copy = dict(body)
    if merged is not None:
        copy["system_metadata"] = merged
    return copy, attributed


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
