"""pytest plugin: every tasks-API answer a sandbox in this test process gives is checked
against QuEra's own generated models (PyPI ``qlam-core``).

The sandbox stands in for the QLAM service, so an answer the real service's schema
would not allow is a sandbox bug, whichever test happened to provoke it.  At session
start ``create_app`` is wrapped so that every sandbox app gets ``SdkConformance``, an
ASGI middleware that validates each JSON answer under ``/v2/{qpu_mode}/tasks``:

=======================  =========  ===================================
request                  success    model
=======================  =========  ===================================
POST   .../tasks         201        ``Task``
GET    .../tasks         200        ``PageTask``
GET    .../tasks/{id}    200        ``Task``
PUT    .../{id}/cancel   202        ``Task`` (the SDK reads no body)
DELETE .../tasks/{id}    204        no body
GET    .../{id}/results  200        not checked: the public schema has no results shape
any                      4xx, 5xx   ``ErrorResponse``
=======================  =========  ===================================

A success with another status is a mismatch too.  Canned ``api_script`` answers are
the test's, not the API's, and are skipped.  A mismatch fails the test during which
the answer was given; the session ends with the count of answers validated.
Registered from ``tests/conftest.py``; without qlam-core or the sandbox extra it does nothing.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

try:
    from pydantic import BaseModel, ValidationError
    from qlam_core.plugins.tasks.api.tasks_models import ErrorResponse, PageTask, Task
except ImportError:  # qlam-core is a test dependency; a partial install checks nothing
    Task = None  # type: ignore[assignment,misc]

_TASKS = re.compile(r"^/v2/[^/]+/tasks(?:/(?P<id>[^/]+)(?:/(?P<tail>cancel|results))?)?/?$")

# (operation, the success status the real service answers, the model of its body; None: no body)
_SUCCESS: dict[str, tuple[int, Any]] = {}
if Task is not None:
    _SUCCESS = {
        "create": (201, Task),
        "list": (200, PageTask),
        "get": (200, Task),
        "cancel": (202, Task),
        "delete": (204, None),
    }


def operation(method: str, path: str) -> str | None:
    """Which tasks operation a request is, or None for anything else (results, unknown)."""
    match = _TASKS.match(path)
    if match is None:
        return None
    task_id, tail = match.group("id"), match.group("tail")
    if task_id is None:
        return {"POST": "create", "GET": "list"}.get(method)
    if tail == "cancel":
        return "cancel" if method == "PUT" else None
    if tail == "results":
        return "results" if method == "GET" else None
    return {"GET": "get", "DELETE": "delete"}.get(method)


def check(op: str | None, status: int, body: bytes) -> tuple[str | None, str | None]:
    """``(what it was validated as, None)``, ``(None, mismatch)``, or ``(None, None)`` when there is
    nothing the public schema says about this answer."""
    if status >= 400:
        return _validate(ErrorResponse, body, f"{status} error")
    if op is None or op == "results":
        return None, None
    expected, model = _SUCCESS[op]
    if status != expected:
        return None, f"{op} answered {status}; the real service answers {expected}"
    if model is None:
        return ("empty 204", None) if not body.strip() else (None, f"{op} answered {status} with a body")
    return _validate(model, body, op)


def _validate(model: type[BaseModel], body: bytes, what: str) -> tuple[str | None, str | None]:
    try:
        model.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        return None, f"{what}: not a valid {model.__name__}: {problems}"
    return model.__name__, None


class Record:
    """What the middleware saw, across every sandbox and thread of the session."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.validated: Counter[str] = Counter()
        self.skipped = 0
        self.mismatches: list[str] = []
        self.reported: set[int] = set()  # indexes of the mismatches already failing a test

    def unreported(self) -> list[str]:
        return [m for n, m in enumerate(self.mismatches) if n not in self.reported]

    def note(self, validated_as: str | None, mismatch: str | None) -> None:
        with self.lock:
            if validated_as:
                self.validated[validated_as] += 1
            elif mismatch:
                self.mismatches.append(mismatch)
            else:
                self.skipped += 1


RECORD = Record()


class SdkConformance:
    """ASGI middleware: buffers each tasks-API JSON answer, validates it, then sends it on.

    Validation happens before the answer leaves, so a test that has its answer in hand
    also has the verdict recorded.  Streams (the results download) pass through untouched.
    """

    def __init__(self, app: Callable[..., Any], record: Record = RECORD) -> None:
        self.app, self.record = app, record

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _TASKS.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        op = operation(scope["method"], scope["path"])
        state = scope.setdefault("state", {})
        start: dict[str, Any] = {}
        chunks: list[bytes] = []
        passing = False

        async def buffering(message: dict[str, Any]) -> None:
            nonlocal passing
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                streamed = b"json" not in headers.get(b"content-type", b"") and message["status"] < 400
                if (streamed and op == "results") or state.get("sandbox_scripted"):
                    passing = True
                    self.record.note(None, None)
                    await send(message)
                else:
                    start.update(message)
                return
            if passing or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            validated_as, mismatch = check(op, start["status"], body)
            if mismatch:
                mismatch = f"{scope['method']} {scope['path']}: {mismatch}"
            self.record.note(validated_as, mismatch)
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, buffering)


def _wrap(create_app: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(create_app)
    def create_checked_app(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)
        app.add_middleware(SdkConformance)
        return app

    create_checked_app.__wrapped_for_sdk_conformance__ = True  # type: ignore[attr-defined]
    return create_checked_app


def pytest_configure(config: pytest.Config) -> None:
    if Task is None:
        return
    try:
        from qlam_hpc.sandbox import _app, _server
    except ImportError:  # no sandbox extra: no sandbox to check
        return
    if getattr(_app.create_app, "__wrapped_for_sdk_conformance__", False):
        return
    checked = _wrap(_app.create_app)
    _app.create_app = checked  # type: ignore[assignment]
    _server.create_app = checked  # type: ignore[assignment]
    config.stash[_ACTIVE] = True


_ACTIVE = pytest.StashKey[bool]()
_SEEN = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    with RECORD.lock:
        item.stash[_SEEN] = len(RECORD.mismatches)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield
    with RECORD.lock:
        first = item.stash.get(_SEEN, 0)
        new = RECORD.mismatches[first:]
        RECORD.reported.update(range(first, len(RECORD.mismatches)))
    if new:
        shown = "\n  ".join(new[:10]) + (f"\n  ... and {len(new) - 10} more" if len(new) > 10 else "")
        pytest.fail(f"the sandbox answered what QuEra's SDK models do not allow:\n  {shown}", pytrace=False)
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Mismatches outside a test's call (in a fixture's teardown, say) fail the session."""
    with RECORD.lock:
        unreported = RECORD.unreported()
    if unreported and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not config.stash.get(_ACTIVE, False):
        return
    with RECORD.lock:
        total = sum(RECORD.validated.values())
        kinds = ", ".join(f"{name} {count}" for name, count in sorted(RECORD.validated.items()))
        line = (
            f"sdk conformance: {total} sandbox responses validated against qlam-core's generated models"
            + (f" ({kinds})" if kinds else "")
            + f"; {len(RECORD.mismatches)} mismatches; {RECORD.skipped} not covered by the public schema"
            " (results, scripted answers)"
        )
    terminalreporter.write_line(line)
    with RECORD.lock:
        unreported = RECORD.unreported()
    for mismatch in unreported:
        terminalreporter.write_line(f"sdk conformance: outside any test: {mismatch}", red=True)
