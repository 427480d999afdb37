"""The tasks API's run-time knobs: task duration, a script of canned answers, token revocation.

They travel through the same doors as the identity provider's faults
(``POST /_sandbox/faults``, ``Sandbox.set_faults``); ``SandboxState`` splits a
change into the keys parsed here and the ones ``_faults.parse_fault_changes`` parses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._faults import ScriptedResponse

__all__ = ["TASK_FAULT_KEYS", "TaskFaults", "parse_task_fault_changes"]

TASK_FAULT_KEYS = frozenset({"task_duration", "api_script", "revoke_tokens_before"})


@dataclass(frozen=True)
class TaskFaults:
    """``task_duration``: seconds from creation to a terminal status, for tasks created from now on.
    ``api_script``: canned answers the tasks API serves, in order, before processing requests.
    ``revoke_tokens_before``: epoch seconds; tokens issued earlier are answered 401 (``None``: off).
    """

    task_duration: float
    api_script: tuple[ScriptedResponse, ...] = ()
    revoke_tokens_before: float | None = None

    def public(self) -> dict[str, Any]:
        """The keys these settings add to ``GET /_sandbox/faults``."""
        return {
            "task_duration": self.task_duration,
            "api_script_pending": len(self.api_script),
            "revoke_tokens_before": self.revoke_tokens_before,
        }


def parse_task_fault_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validated changes for ``TaskFaults``; ``None`` means "leave as is". Raises ``ValueError``.

    ``revoke_tokens_before`` is the exception: ``0`` turns revocation off (no token has iat < 0).
    """
    parsed: dict[str, Any] = {}
    duration = changes.get("task_duration")
    if duration is not None:
        if not _is_number(duration) or not math.isfinite(duration) or duration < 0:
            raise ValueError("task_duration must be a finite number of seconds >= 0")
        parsed["task_duration"] = float(duration)
    script = changes.get("api_script")
    if script is not None:
        if isinstance(script, (str, bytes, Mapping)) or not hasattr(script, "__iter__"):
            raise ValueError("api_script must be a list of responses")
        try:
            parsed["api_script"] = tuple(ScriptedResponse.parse(item, n) for n, item in enumerate(script, start=1))
        except ValueError as exc:
            raise ValueError(f"api_script: {exc}") from None
    revoke = changes.get("revoke_tokens_before")
    if revoke is not None:
        if not _is_number(revoke) or not math.isfinite(revoke) or revoke < 0:
            raise ValueError("revoke_tokens_before must be epoch seconds >= 0 (0 turns revocation off)")
        parsed["revoke_tokens_before"] = float(revoke) if revoke > 0 else None
    return parsed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
