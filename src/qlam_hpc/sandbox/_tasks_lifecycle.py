"""A task's status as a pure function of the time: no background threads, and it survives restarts.

A task stores when it was created, how long it runs (``task_duration`` at creation),
its outcome (fixed at creation from its programs) and when it was cancelled, if it
was.  Its status at any moment follows from those.  The run is split into five
equal steps; step *k* ends at ``created + duration * k / 5``::

    ok: Created | PayloadProcessing | Scheduled | ExecutionStarted | ExecutionCompleted | Completed
    invalid: Created | PayloadProcessing | PayloadProcessingError
    fail: Created | PayloadProcessing | Scheduled | ExecutionStarted | Failed

Times are integer microseconds since the epoch, so results derived from them
(``_results``) are exactly the same on every call and after a restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = [
    "CANCELLABLE",
    "FAIL",
    "INVALID",
    "OK",
    "TERMINAL",
    "Outcome",
    "Snapshot",
    "Timeline",
    "iso_date",
    "outcome_of",
]

OK, FAIL, INVALID = "ok", "fail", "invalid"
Outcome = str  # one of OK, FAIL, INVALID

FAIL_MARKER = "FAIL"
INVALID_MARKER = "INVALID_PAYLOAD"

_PATHS: dict[str, tuple[str, ...]] = {
    OK: ("Created", "PayloadProcessing", "Scheduled", "ExecutionStarted", "ExecutionCompleted", "Completed"),
    INVALID: ("Created", "PayloadProcessing", "PayloadProcessingError"),
    FAIL: ("Created", "PayloadProcessing", "Scheduled", "ExecutionStarted", "Failed"),
}
STEPS = 5  # the ok path has five transitions

TERMINAL = frozenset({"Completed", "Cancelled", "PayloadProcessingError", "Failed"})
# Once execution has completed there is nothing left to cancel.
CANCELLABLE = frozenset({"Created", "PayloadProcessing", "Scheduled", "ExecutionStarted"})


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def iso_date(us: int) -> str:
    """``2025-01-31T12:00:00.000000+00:00``: exact to the microsecond (no float on the way)."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds")


def outcome_of(program_contents: Iterable[str]) -> tuple[Outcome, str | None]:
    """The outcome the programs' text asks for, and the error reason it will show.

    ``INVALID_PAYLOAD`` anywhere in a program fails payload processing; otherwise
    ``FAIL`` fails the execution.  The first program with a marker names the reason.
    """
    contents = list(program_contents)
    for index, content in enumerate(contents):
        if INVALID_MARKER in content:
            return INVALID, f"payload processing failed: program {index} contains {INVALID_MARKER}"
    for index, content in enumerate(contents):
        if FAIL_MARKER in content:
            return FAIL, f"execution failed: program {index} contains {FAIL_MARKER}"
    return OK, None


@dataclass(frozen=True)
class Snapshot:
    """A task's status at one moment, with the dates the API shows for it."""

    status: str
    modified_us: int
    scheduled_us: int | None
    error_reasons: tuple[str, ...]


@dataclass(frozen=True)
class Timeline:
    created_us: int
    duration_us: int
    outcome: Outcome
    error_reason: str | None = None
    cancelled_us: int | None = None

    def step_end(self, k: int) -> int:
        """When step ``k`` (1..5) ends, i.e. when the task takes its ``k``-th transition."""
        return self.created_us + self.duration_us * k // STEPS

    @property
    def completed_us(self) -> int:
        """When an ``ok`` task turns ``Completed``."""
        return self.step_end(STEPS)

    @property
    def execution_window(self) -> tuple[int, int]:
        """From ``ExecutionStarted`` to ``ExecutionCompleted``: when the shots run."""
        return self.step_end(3), self.step_end(4)

    def at(self, now_us: int) -> Snapshot:
        """The status at ``now_us``."""
        path = _PATHS[self.outcome]
        if self.cancelled_us is not None:
            reached = self._reached(path, self.cancelled_us)
            scheduled = self.step_end(2) if "Scheduled" in path[: reached + 1] else None
            return Snapshot("Cancelled", self.cancelled_us, scheduled, ())
        reached = self._reached(path, now_us)
        status = path[reached]
        modified = self.step_end(reached) if reached else self.created_us
        scheduled = self.step_end(2) if "Scheduled" in path[: reached + 1] else None
        failed = status in ("Failed", "PayloadProcessingError")
        reasons = (self.error_reason,) if failed and self.error_reason else ()
        return Snapshot(status, modified, scheduled, reasons)

    def _reached(self, path: tuple[str, ...], now_us: int) -> int:
        """The index in ``path`` of the status at ``now_us``."""
        reached = 0
        for k in range(1, len(path)):
            if self.step_end(k) <= now_us:
                reached = k
        return reached
