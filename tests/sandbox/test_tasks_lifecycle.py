"""Task lifecycle: statuses over task_duration, the FAIL and INVALID_PAYLOAD markers, cancellability."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from qlam_hpc.sandbox._tasks_lifecycle import CANCELLABLE, FAIL, INVALID, OK, TERMINAL, Timeline, outcome_of

from .test_tasks_api import (
    TasksApi,
    alice,
    body,
    sandbox,
    tasks_server,
)

OK_PATH = ["Created", "PayloadProcessing", "Scheduled", "ExecutionStarted", "ExecutionCompleted", "Completed"]


def _date(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_task_runs_to_completed_over_task_duration(alice: TasksApi) -> None:
    """With task_duration 0.5 s a task walks Created ... Completed in order and completes 0.5 s after creation."""
    created = time.monotonic()
    task = alice.create()
    seen = [task["task_status"]]
    while seen[-1] != "Completed":
        assert time.monotonic() - created < 5, seen
        status = alice.get(task["id"])["task_status"]
        if status != seen[-1]:
            seen.append(status)
        time.sleep(0.01)
    assert time.monotonic() - created >= 0.5
    assert seen[0] == "Created" and seen == [s for s in OK_PATH if s in seen], seen  # in order, never back
    done = alice.get(task["id"])
    start = _date(done["created_date"])
    assert _date(done["modified_date"]) - start == timedelta(seconds=0.5)
    assert _date(done["scheduled_date"]) - start == timedelta(seconds=0.2)
    assert done["error_reasons"] == []


def test_fail_marker_ends_failed(alice: TasksApi) -> None:
    """A program containing FAIL ends Failed, with an error reason, after being scheduled; no results."""
    task = alice.create(body(content="measure(q) // FAIL here"))
    done = alice.wait_for(task["id"], "Failed")
    assert done["error_reasons"] == ["execution failed: program 0 contains FAIL"]
    assert done["scheduled_date"] is not None
    assert _date(done["modified_date"]) - _date(done["created_date"]) == timedelta(seconds=0.4)
    results = alice.request("GET", f"/{task['id']}/results")
    assert (results.status_code, results.json()) == (
        409,
        {"messages": ["task is Failed, results are not available"], "code": 1409},
    )


def test_invalid_payload_marker_ends_payload_processing_error(alice: TasksApi) -> None:
    """A program containing INVALID_PAYLOAD ends PayloadProcessingError, never scheduled."""
    alice.sandbox.set_faults(task_duration=0.1)
    task = alice.create(body(content="INVALID_PAYLOAD"))
    done = alice.wait_for(task["id"], "PayloadProcessingError")
    assert done["error_reasons"] == ["payload processing failed: program 0 contains INVALID_PAYLOAD"]
    assert done["scheduled_date"] is None
    assert alice.request("PUT", f"/{task['id']}/cancel").status_code == 409


def test_task_duration_is_fixed_at_creation(alice: TasksApi) -> None:
    """Changing task_duration affects tasks created afterwards only; 0 completes a task at once."""
    alice.sandbox.set_faults(task_duration=60)
    slow = alice.create()
    alice.sandbox.set_faults(task_duration=0)
    quick = alice.create()
    assert quick["task_status"] == "Completed"
    assert alice.get(slow["id"])["task_status"] == "Created"


def test_cancel_early_keeps_no_schedule(alice: TasksApi) -> None:
    """A task cancelled before it was scheduled shows no scheduled_date, and stays Cancelled."""
    alice.sandbox.set_faults(task_duration=60)
    task = alice.create()
    cancelled = alice.request("PUT", f"/{task['id']}/cancel").json()
    assert (cancelled["task_status"], cancelled["scheduled_date"], cancelled["error_reasons"]) == (
        "Cancelled",
        None,
        [],
    )
    assert alice.get(task["id"]) == cancelled


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (OK, OK_PATH),
        (FAIL, ["Created", "PayloadProcessing", "Scheduled", "ExecutionStarted", "Failed", "Failed"]),
        (INVALID, ["Created", "PayloadProcessing", "PayloadProcessingError"] + ["PayloadProcessingError"] * 3),
    ],
)
def test_status_at_each_step(outcome: str, expected: list[str]) -> None:
    """Each fifth of the duration moves a task one status on its outcome's path, exactly at the boundary."""
    timeline = Timeline(created_us=1_000_000, duration_us=500_000, outcome=outcome, error_reason="why")
    statuses = [timeline.at(1_000_000 + k * 100_000).status for k in range(6)]
    assert statuses == expected
    assert [timeline.at(1_000_000 + k * 100_000 - 1).status for k in range(1, 6)] == expected[:5]
    final = timeline.at(10_000_000)
    assert final.error_reasons == (() if outcome == OK else ("why",))
    assert final.status in TERMINAL


def test_only_unfinished_executions_are_cancellable() -> None:
    """Tasks can be cancelled up to ExecutionStarted, not from ExecutionCompleted on; Cancelled is final."""
    assert {"Created", "PayloadProcessing", "Scheduled", "ExecutionStarted"} == CANCELLABLE
    timeline = Timeline(created_us=0, duration_us=500_000, outcome=OK, cancelled_us=350_000)
    for later in (350_000, 900_000, 10**12):
        cancelled = timeline.at(later)
        assert (cancelled.status, cancelled.modified_us, cancelled.scheduled_us) == ("Cancelled", 350_000, 200_000)
    early = Timeline(created_us=0, duration_us=500_000, outcome=OK, cancelled_us=50_000).at(10**12)
    assert (early.status, early.scheduled_us) == ("Cancelled", None)


@pytest.mark.parametrize(
    ("contents", "outcome"),
    [
        (["ok"], OK),
        (["ok", "x FAIL y"], FAIL),
        (["FAIL", "INVALID_PAYLOAD"], INVALID),
        (["fail", "invalid_payload"], OK),
    ],
)
def test_markers_decide_the_outcome(contents: list[str], outcome: str) -> None:
    """INVALID_PAYLOAD wins over FAIL; markers are case-sensitive."""
    assert outcome_of(contents)[0] == outcome
