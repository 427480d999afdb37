"""Results: JSON pages, the octet-stream download, and how they line up; determinism."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx
import pytest

from qlam_hpc.sandbox._tasks_api import _wants_download
from qlam_hpc.sandbox._tasks_models import ResultsDownload, ResultsPage

from .test_tasks_api import (
    TasksApi,
    alice,
    body,
    sandbox,
    tasks_server,
)

DOWNLOAD = {"Accept": "application/octet-stream"}
SUBTASKS = [
    {"program_index": 0, "num_shots": 7, "arguments": {"theta": 0.25, "n": 3, "phi": -2.5}},
    {"program_index": 1, "num_shots": 5},
    {"program_index": 0, "num_shots": 1, "arguments": {"theta": 1e-9}},
    {"program_index": 1, "num_shots": 10, "arguments": {"theta": 0.5}},
    {"program_index": 0, "num_shots": 3, "arguments": {"theta": 0.25, "n": 4}},
]
PROGRAMS = [{"content": "program zero"}, {"content": "program one"}]


def completed(api: TasksApi, subtasks: list[dict[str, Any]] = SUBTASKS) -> str:
    """A Completed task (task_duration 0) with these subtasks; its id."""
    api.sandbox.set_faults(task_duration=0)
    task = api.create(body(programs=PROGRAMS, subtasks=subtasks))
    assert task["task_status"] == "Completed"
    return task["id"]


def results(api: TasksApi, task_id: str, **params: Any) -> dict[str, Any]:
    response = api.request("GET", f"/{task_id}/results", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def download(api: TasksApi, task_id: str) -> httpx.Response:
    response = api.request("GET", f"/{task_id}/results", headers=DOWNLOAD)
    assert response.status_code == 200, response.text
    return response


def reassemble(api: TasksApi, task_id: str, *, size: int, shots_size: int) -> dict[str, Any]:
    """The download rebuilt from JSON pages, as a client would: every page of subtasks (ascending),
    for each subtask every shots page until shots_total, shots concatenated, page keys dropped."""
    subtasks: list[dict[str, Any]] = []
    page = 0
    while True:
        first = results(api, task_id, page=page, size=size, shots_size=shots_size)
        if not first["elements"]:
            break
        for index, element in enumerate(first["elements"]):
            shots, shots_page = list(element["shots"]), 1
            while len(shots) < element["shots_total"]:
                more = results(api, task_id, page=page, size=size, shots_page=shots_page, shots_size=shots_size)
                shots += more["elements"][index]["shots"]
                shots_page += 1
            whole = {k: v for k, v in element.items() if k not in ("shots_page", "shots_size")}
            subtasks.append({**whole, "shots": shots})
        page += 1
    return {"task_id": first["task_id"], "subtasks": subtasks}


def test_download_equals_the_pages(alice: TasksApi) -> None:
    """The octet-stream download is exactly all JSON pages (every subtask, every shot page) joined."""
    task_id = completed(alice)
    response = download(alice, task_id)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers.get("transfer-encoding") == "chunked"
    whole = json.loads(response.content.decode("utf-8"))
    ResultsDownload.model_validate(whole)
    assert [s["subtask_order"] for s in whole["subtasks"]] == list(range(5))
    for size, shots_size in [(2, 3), (1, 1), (10, 100)]:
        assert reassemble(alice, task_id, size=size, shots_size=shots_size) == whole


def test_page_shape(alice: TasksApi) -> None:
    """A page holds `size` subtasks, each with the `shots_page`-th slice of its shots; total counts subtasks."""
    task_id = completed(alice)
    page = results(alice, task_id, page=1, size=2, shots_page=1, shots_size=4)
    ResultsPage.model_validate(page)
    assert (page["task_id"], page["page"], page["size"], page["total"]) == (task_id, 1, 2, 5)
    first, second = page["elements"]
    assert (first["subtask_order"], first["program_index"], first["num_shots"]) == (2, 0, 1)
    assert (first["shots_page"], first["shots_size"], first["shots_total"], first["shots"]) == (1, 4, 1, [])
    assert second["arguments"] == {"theta": 0.5}
    assert [s["shot_index"] for s in second["shots"]] == [4, 5, 6, 7]
    shot = second["shots"][0]
    assert set(shot) == {"shot_index", "shot_start_time", "measurements"}
    (measurement,) = shot["measurements"]
    assert len(measurement["bitstring"]) == 8 and set(measurement["bitstring"]) <= {"0", "1"}
    assert results(alice, task_id)["elements"][1]["arguments"] == {}
    assert results(alice, task_id, page=3, size=2)["elements"] == []


def test_results_sort_descending(alice: TasksApi) -> None:
    """sort=subtask_order,desc pages the subtasks from the last one."""
    task_id = completed(alice)
    orders = [e["subtask_order"] for e in results(alice, task_id, sort="subtask_order,desc", size=3)["elements"]]
    assert orders == [4, 3, 2]


def test_timestamps_lie_in_the_execution_window(alice: TasksApi) -> None:
    """Subtasks complete in order, shots start in order, and everything is done by the task's completion."""
    alice.sandbox.set_faults(task_duration=0.2)
    task = alice.create(body(programs=PROGRAMS, subtasks=SUBTASKS))
    done = alice.wait_for(task["id"], "Completed")
    whole = json.loads(download(alice, task["id"]).content)
    created, finished = (datetime.fromisoformat(done[k]) for k in ("created_date", "modified_date"))
    times = []
    for subtask in whole["subtasks"]:
        for shot in subtask["shots"]:
            (measurement,) = shot["measurements"]
            times += [shot["shot_start_time"], measurement["measurement_time"]]
        times.append(subtask["completed_date"])
    parsed = [datetime.fromisoformat(t) for t in times]
    assert parsed == sorted(parsed)
    assert created < parsed[0] and parsed[-1] < finished


def test_results_are_deterministic(alice: TasksApi) -> None:
    """The same task gives byte-identical results every time; another task with the same definition differs."""
    first = completed(alice)
    assert download(alice, first).content == download(alice, first).content
    assert results(alice, first, size=3, shots_size=2) == results(alice, first, size=3, shots_size=2)
    second = completed(alice)
    bits = [
        [shot["measurements"][0]["bitstring"] for s in json.loads(download(alice, t).content)["subtasks"]
         for shot in s["shots"]]
        for t in (first, second)
    ]  # fmt: skip
    assert bits[0] != bits[1]


def test_results_depend_on_arguments(alice: TasksApi) -> None:
    """Subtasks that differ only in their arguments get different bitstrings."""
    task_id = completed(alice, [{"program_index": 0, "num_shots": 20, "arguments": {"theta": t}} for t in (0.1, 0.2)])
    one, two = (s["shots"] for s in json.loads(download(alice, task_id).content)["subtasks"])
    assert [s["measurements"][0]["bitstring"] for s in one] != [s["measurements"][0]["bitstring"] for s in two]


def test_results_of_unfinished_task_conflict(alice: TasksApi) -> None:
    """Results before Completed are 409 code 1409, in both forms."""
    alice.sandbox.set_faults(task_duration=60)
    task_id = alice.create()["id"]
    for headers in ({}, DOWNLOAD):
        response = alice.request("GET", f"/{task_id}/results", headers=headers)
        assert response.status_code == 409
        assert response.json() == {"messages": ["task is Created, results are not available"], "code": 1409}
    alice.request("PUT", f"/{task_id}/cancel")
    assert alice.request("GET", f"/{task_id}/results").json()["messages"] == [
        "task is Cancelled, results are not available"
    ]


@pytest.mark.parametrize(
    "params",
    [{"page": -1}, {"size": 0}, {"size": 1001}, {"sort": "created_date,asc"}, {"shots_page": -1}, {"shots_size": 0}],
)
def test_results_reject_bad_parameters(alice: TasksApi, params: dict[str, Any]) -> None:
    """Bad results parameters get 400 code 1300 naming the parameter."""
    task_id = completed(alice)
    response = alice.request("GET", f"/{task_id}/results", params=params)
    assert response.status_code == 400
    assert response.json()["code"] == 1300
    assert [m.partition(":")[0] for m in response.json()["messages"]] == list(params)


def test_large_download_streams(alice: TasksApi) -> None:
    """Megabytes of results (subtasks of the maximum 10000 shots) stream in chunks and equal their pages."""
    task_id = completed(alice, [{"program_index": 0, "num_shots": 10_000}] * 2)
    with alice.http.stream("GET", f"{alice.base}/{task_id}/results", headers={**alice.headers, **DOWNLOAD}) as response:
        chunks = list(response.iter_raw())
    assert len(chunks) > 1
    whole = json.loads(b"".join(chunks))
    assert sum(len(s["shots"]) for s in whole["subtasks"]) == 20_000
    assert reassemble(alice, task_id, size=1, shots_size=10_000) == whole


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        ("application/octet-stream", True),
        ("application/json", False),
        ("*/*", False),
        ("", False),
        ("application/json;q=0.5, application/octet-stream", True),
        ("application/octet-stream;q=0.2, application/json", False),
        ("application/octet-stream;q=0", False),
    ],
)
def test_accept_chooses_the_form(accept: str, wanted: bool) -> None:
    """The download is chosen when Accept prefers application/octet-stream at least as much as JSON."""
    assert _wants_download(accept) is wanted
