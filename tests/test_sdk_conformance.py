"""The conformance check itself (``sdk_conformance``): it must catch what the real schema
forbids, or its count of validated answers means nothing.  The sandbox's own answers
before the fix (``"group": null``, cancel 200, FastAPI's ``{"detail": ...}``) are the cases."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("qlam_core")

from sdk_conformance import Record, SdkConformance, check, operation

TASK = {
    "id": "9a1c512f-59db-417e-9118-13998a17be61", "task_status": "Created",
    "created_by": "708b4201-742f-5216-973e-93bfc216bd26", "created_date": "2025-01-31T12:00:00.174560+00:00",
    "group": {"id": "5b1c7f5e-2f63-4c3e-9d0b-1f1f8a6e2a10"}, "error_reasons": [],
}  # fmt: skip


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v2/squin-256q/tasks", "create"),
        ("GET", "/v2/squin-256q/tasks", "list"),
        ("GET", "/v2/squin-256q/tasks/abc", "get"),
        ("DELETE", "/v2/squin-256q/tasks/abc", "delete"),
        ("PUT", "/v2/squin-256q/tasks/abc/cancel", "cancel"),
        ("GET", "/v2/squin-256q/tasks/abc/results", "results"),
        ("PATCH", "/v2/squin-256q/tasks", None),
        ("GET", "/userinfo", None),
    ],
)
def test_operations(method: str, path: str, expected: str | None) -> None:
    assert operation(method, path) == expected


def test_conforming_answers_pass() -> None:
    assert check("create", 201, body(TASK)) == ("Task", None)
    assert check("cancel", 202, body(TASK)) == ("Task", None)
    assert check("list", 200, body({"elements": [TASK], "page": 0, "size": 10, "total": 1})) == ("PageTask", None)
    assert check("delete", 204, b"") == ("empty 204", None)
    assert check("get", 404, body({"messages": ["task x not found"], "code": 1404})) == ("ErrorResponse", None)
    assert check("results", 200, b"{}") == (None, None)  # no public schema for results


@pytest.mark.parametrize(
    ("op", "status", "answer", "problem"),
    [
        ("create", 201, {**TASK, "group": None}, "group"),
        ("get", 200, {k: v for k, v in TASK.items() if k != "created_by"}, "created_by"),
        ("get", 200, {**TASK, "created_date": "2025-01-31T12:00:00"}, "created_date"),
        ("cancel", 200, TASK, "real service answers 202"),
        ("delete", 204, {"ok": True}, "with a body"),
        ("list", 200, {"elements": [TASK], "page": 0, "size": 10}, "total"),
        ("get", 422, {"detail": [{"msg": "field required"}]}, "ErrorResponse"),
    ],
)
def test_mismatches_are_caught(op: str, status: int, answer: Any, problem: str) -> None:
    validated_as, mismatch = check(op, status, body(answer))
    assert validated_as is None and mismatch and problem in mismatch


def test_middleware_records_and_passes_answers_through() -> None:
    """Answers reach the client unchanged; a mismatch and a scripted answer are told apart."""
    record = Record()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (b"x-scripted", b"1") in scope["headers"]:  # as TasksRoute marks a canned answer
            scope["state"]["sandbox_scripted"] = True
        status, content = {"GET": (200, body({**TASK, "group": None})), "PUT": (202, body(TASK))}[scope["method"]]
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content[:10], "more_body": True})
        await send({"type": "http.response.body", "body": content[10:]})

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=SdkConformance(app, record))
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
            return [
                await client.put("/v2/squin-256q/tasks/abc/cancel"),
                await client.get("/v2/squin-256q/tasks/abc"),
                await client.get("/v2/squin-256q/tasks/abc", headers={"x-scripted": "1"}),
            ]

    cancelled, bad, _ = anyio.run(main)
    assert (cancelled.status_code, cancelled.json()) == (202, TASK)
    assert bad.json()["group"] is None
    assert dict(record.validated) == {"Task": 1}
    assert len(record.mismatches) == 1 and "group" in record.mismatches[0]
    assert record.skipped == 1
