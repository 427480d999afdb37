"""The emulated QLAM tasks API: ``/v2/{qpu_mode}/tasks`` and below.

Every route of ``router`` goes through ``TasksRoute``, which, per request and in
this order: serves the next ``api_script`` item if there is one (counting it as an
``api_request``); verifies the bearer token (``_bearer.bearer_claims``, which counts
the request) and refuses revoked ones; answers 404 for a ``qpu_mode`` the sandbox
does not serve; then runs the route.  Whatever goes wrong on the way is answered
in QLAM's error shape (the real schema's ``ErrorResponse``, ``{"messages": [...],
"code": ...}``) and never FastAPI's ``{"detail": ...}``:

====  ====  =====================================================
400   1300  invalid body or query parameter (one message per problem)
401   1000  no, bad, expired or revoked token
404   1404  unknown qpu_mode; task unknown or another client's
409   1409  cancelling a task that is past cancelling; results of an unfinished task
500   1000  a bug in the sandbox
====  ====  =====================================================

Statuses and shapes follow the real service's OpenAPI document as QuEra's SDK
ships it: every task belongs to a group (the caller's default group when the
creation names none), cancel answers 202, ``group_id`` filters ignore malformed
values.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

import jwt
from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._bearer import ApiError, bearer_claims
from ._config import QPU_MODE_PATTERN
from ._context import context_of
from ._results import TaskResults, dumps
from ._state import SandboxState
from ._tasks_lifecycle import CANCELLABLE, iso_date, outcome_of
from ._tasks_models import (
    BODY_FORMS,
    CompilationRefCreate,
    DefinitionRefCreate,
    ErrorBody,
    ResultsDownload,
    ResultsPage,
    Task,
    TaskCreate,
    TaskDefinitionCreate,
    TaskPage,
)
from ._tasks_store import StoredTask, TaskStore

__all__ = ["TokenIssueRecorder", "http_error_response", "install_openapi", "router"]

log = logging.getLogger(__name__)

GENERIC, INVALID_REQUEST, NOT_FOUND, CONFLICT = 1000, 1300, 1404, 1409

# created_by/modified_by are UUIDs in QLAM; the sandbox derives one per token subject,
# and from it the subject's default group (every real task has a group).
_USER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/qlam-hpc/sandbox/users")
_GROUP_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/qlam-hpc/sandbox/default-groups")
# Definitions for a definition_id the sandbox never saw, or a compilation_id (it
# compiles nothing): one program, one subtask of 100 shots.
_PLACEHOLDER_SHOTS = 100


class ApiProblem(Exception):
    """An error answer with one or more messages."""

    def __init__(self, status: int, messages: Sequence[str], code: int, headers: dict[str, str] | None = None):
        super().__init__("; ".join(messages))
        self.status, self.messages, self.code, self.headers = status, list(messages), code, headers or {}

    def response(self) -> Response:
        return _json({"messages": self.messages, "code": self.code}, self.status, self.headers)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(content), status_code=status, media_type="application/json", headers=headers)


def user_id_of(sub: str) -> str:
    """The UUID a token subject has as ``created_by``: the same for the same ``sub``, every time."""
    return str(uuid.uuid5(_USER_NAMESPACE, sub))


def default_group_of(sub: str) -> str:
    """The group a subject's tasks go to when their creation names none (stable per ``sub``)."""
    return str(uuid.uuid5(_GROUP_NAMESPACE, sub))


def group_json(group_id: str) -> dict[str, Any]:
    """The Task's ``group``: made up from its id, never deactivated."""
    return {"id": group_id, "name": f"sandbox-group-{group_id[:8]}", "deactivated": False}


def valid_group_ids(values: Sequence[str]) -> list[str]:
    """The ``group_id`` filter values that are UUIDs, normalised; malformed ones are ignored, as QLAM does."""
    groups = []
    for value in values:
        try:
            groups.append(str(UUID(value.strip())))
        except ValueError:
            continue
    return list(dict.fromkeys(groups))


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's ``sub`` owns the tasks it creates."""

    sub: str

    @property
    def user_id(self) -> str:
        return user_id_of(self.sub)

    @property
    def default_group(self) -> str:
        return default_group_of(self.sub)


class TasksRoute(APIRoute):
    """Script, authentication, qpu_mode check and QLAM-shaped errors around every tasks route."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            ctx = context_of(request)
            scripted = ctx.state.next_api_scripted()
            if scripted is not None:
                ctx.state.count_api_request()
                # A canned answer is whatever the script says, not the API's: say so to
                # middleware that checks answers against the API's schema.
                request.state.sandbox_scripted = True
                return Response(
                    scripted.body,
                    status_code=scripted.status,
                    media_type=scripted.content_type,
                    headers=dict(scripted.headers),
                )
            try:
                claims = await bearer_claims(request)
                if ctx.state.is_revoked(claims):
                    challenge = 'Bearer error="invalid_token", error_description="token has been revoked"'
                    raise ApiError(401, "token has been revoked", headers={"WWW-Authenticate": challenge})
                mode = request.path_params.get("qpu_mode", "")
                if mode not in ctx.config.qpu_modes:
                    raise ApiProblem(404, [f"qpu_mode {mode} not found"], NOT_FOUND)
                request.state.qlam_caller = Caller(sub=str(claims["sub"]))
                return await handler(request)
            except ApiError as exc:
                return _json({"messages": [exc.message], "code": exc.code}, exc.status, exc.headers)
            except ApiProblem as exc:
                return exc.response()
            except RequestValidationError as exc:
                return _validation_problem(request, exc).response()
            except StarletteHTTPException as exc:
                return _http_problem(exc).response()
            except Exception:
                log.exception("the sandbox tasks API failed on %s %s", request.method, request.url.path)
                return ApiProblem(500, ["internal error in the sandbox"], GENERIC).response()

        return guarded


def _validation_problem(request: Request, exc: RequestValidationError) -> ApiProblem:
    """400 with one ``"<field>: <what is wrong>"`` per problem; a malformed path is a 404."""
    messages: list[str] = []
    for error in exc.errors():
        where, *loc = error.get("loc") or ("body",)
        if where == "path":
            task_id = request.path_params.get("task_id", "")
            return ApiProblem(404, [f"task {task_id} not found"], NOT_FOUND)
        messages.append(_message(where, loc, error, request))
    body = getattr(exc, "body", None)
    if request.method == "POST" and isinstance(body, dict):
        messages.extend(definition_problems(body))
    return ApiProblem(400, list(dict.fromkeys(messages)) or ["request: invalid"], INVALID_REQUEST)


def _message(where: str, loc: list[Any], error: dict[str, Any], request: Request) -> str:
    if where == "body" and loc and loc[0] in BODY_FORMS:
        loc = loc[1:]  # the union's tag, not a field
    if where == "body" and loc and isinstance(loc[0], int) and error.get("type") == "json_invalid":
        loc = []
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    field = field or where
    kind = error.get("type")
    if kind == "json_invalid":
        return "body: is not valid JSON"
    if where == "body" and not loc and kind in ("model_type", "model_attributes_type", "dict_type"):
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type:
            return "body: must be a JSON object sent with Content-Type: application/json"
        return "body: must be a JSON object"
    text = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    if text[1:2].islower():  # "Input should be" -> "input should be", but "UUID ..." stays
        text = text[:1].lower() + text[1:]
    return f"{field}: {text}"


def definition_problems(body: dict[str, Any]) -> list[str]:
    """What field validation cannot see: mixed body forms and program indexes out of range.

    A field set to ``null`` counts as absent: clients that serialize one model for
    all three forms send the other forms' fields as ``null``.
    """
    forms = [
        any(body.get(k) is not None for k in ("program_language", "programs", "subtasks")),
        body.get("definition_id") is not None,
        body.get("compilation_id") is not None,
    ]
    if sum(forms) > 1:
        return ["body: give either a task definition (program_language, programs, subtasks), "
                "a definition_id or a compilation_id, not several"]  # fmt: skip
    programs, subtasks = body.get("programs"), body.get("subtasks")
    if not isinstance(programs, list) or not programs or not isinstance(subtasks, list):
        return []
    problems = []
    for number, subtask in enumerate(subtasks):
        index = subtask.get("program_index") if isinstance(subtask, dict) else None
        if isinstance(index, int) and not isinstance(index, bool) and index >= len(programs):
            count = f"{len(programs)} program" + ("s" if len(programs) > 1 else "")
            problems.append(f"subtasks[{number}].program_index: {index} is out of range: the definition has {count}")
    return problems


def _http_problem(exc: StarletteHTTPException) -> ApiProblem:
    code = {404: NOT_FOUND, 409: CONFLICT, 400: INVALID_REQUEST}.get(exc.status_code, GENERIC)
    return ApiProblem(exc.status_code, [str(exc.detail)], code, dict(exc.headers or {}))


async def http_error_response(request: Request, exc: Exception) -> Response:
    """App-wide handler for Starlette's HTTP errors: QLAM's shape under ``/v2/`` (say, a 405
    for a method no route takes), FastAPI's default elsewhere."""
    assert isinstance(exc, StarletteHTTPException)
    if request.url.path.startswith("/v2/"):
        return _http_problem(exc).response()
    return await http_exception_handler(request, exc)


# -- dependencies and parameters ---------------------------------------------

# Declared so /openapi.json shows the bearer scheme; TasksRoute does the checking.
_bearer_scheme = HTTPBearer(auto_error=False, description="An access token from this sandbox's /oauth/token")


async def current_caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)]
) -> Caller:
    caller: Caller = request.state.qlam_caller
    return caller


def _store(request: Request) -> TaskStore:
    store: TaskStore = request.app.state.tasks_store
    return store


def _state(request: Request) -> SandboxState:
    return context_of(request).state


def _now_us() -> int:
    return time.time_ns() // 1000


CallerDep = Annotated[Caller, Depends(current_caller)]
QpuMode = Annotated[str, Path(pattern=QPU_MODE_PATTERN, description="<language>-<constraint>, e.g. squin-256q")]
TaskId = Annotated[UUID, Path()]
Page = Annotated[int, Query(ge=0, description="0-based page number")]

TASK_SORT = r"^(created_date|modified_date)(,(asc|desc))?$"
RESULTS_SORT = r"^subtask_order(,(asc|desc))?$"

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request (code 1300)"},
    401: {"model": ErrorBody, "description": "Missing, invalid, expired or revoked token (code 1000)"},
    404: {"model": ErrorBody, "description": "Unknown qpu_mode or task (code 1404)"},
}
CONFLICT_ERROR: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "Not possible in the task's current status (code 1409)"}
}

router = APIRouter(prefix="/v2/{qpu_mode}/tasks", route_class=TasksRoute, tags=["tasks"], responses=ERRORS)


# -- routes ------------------------------------------------------------------


@router.post("", status_code=201, response_model=Task, summary="Create a task")
async def create_task(
    qpu_mode: QpuMode, body: Annotated[TaskCreate, Body()], request: Request, caller: CallerDep
) -> Response:
    """From an inline task definition, a ``definition_id`` or a ``compilation_id``."""
    raw: dict[str, Any] = await request.json()
    problems = definition_problems(raw)
    if problems:
        raise ApiProblem(400, problems, INVALID_REQUEST)
    store = _store(request)
    definition_id, definition, new_definition = _definition_for(store, caller, qpu_mode, body)
    outcome, reason = outcome_of(str(p.get("content", "")) for p in definition["programs"])
    subtasks = [
        {"program_index": s["program_index"], "num_shots": s["num_shots"], "arguments": s.get("arguments") or {}}
        for s in definition["subtasks"]
    ]
    task = StoredTask(
        id=str(uuid.uuid4()),
        owner=caller.sub,
        qpu_mode=qpu_mode,
        created_us=_now_us(),
        duration_us=round(_state(request).task_faults().task_duration * 1_000_000),
        outcome=outcome,
        error_reason=reason,
        cancelled_us=None,
        cancelled_by=None,
        created_by=caller.user_id,
        definition_id=definition_id,
        compilation_id=str(body.compilation_id) if isinstance(body, CompilationRefCreate) else None,
        group_id=str(body.group_id) if body.group_id else caller.default_group,
        profile_id=str(body.profile_id) if body.profile_id else None,
        user_metadata=body.user_metadata,
        system_metadata=body.system_metadata,
        subtasks=subtasks,
    )
    store.add(task, raw, definition if new_definition else None)
    _state(request).count_task_created()
    return _json(task_json(task, task.created_us), 201)


def _definition_for(store: TaskStore, caller: Caller, qpu_mode: str, body: Any) -> tuple[str, dict[str, Any], bool]:
    """``(definition_id, definition, whether it is new)`` for any of the three body forms.

    Raw JSON values (not pydantic's) go into the definition, so what a client sent
    (say, ``1.0`` vs ``1``) is what it gets back in the results.
    """
    if isinstance(body, TaskDefinitionCreate):
        raw = body.model_dump(mode="json", include={"program_language", "programs", "subtasks"})
        raw["program_language"] = body.program_language or default_language(qpu_mode)
        for dumped, given in zip(raw["subtasks"], body.subtasks, strict=True):
            dumped["arguments"] = dict(given.arguments or {})
        return str(uuid.uuid4()), raw, True
    if isinstance(body, DefinitionRefCreate):
        definition_id = str(body.definition_id)
        known = store.definition(caller.sub, definition_id)
        if known is not None:
            return definition_id, known, False
        return definition_id, _placeholder(qpu_mode), True
    assert isinstance(body, CompilationRefCreate)
    return str(uuid.uuid5(body.compilation_id, "definition")), _placeholder(qpu_mode), False


def default_language(qpu_mode: str) -> str:
    """The program language a ``qpu_mode`` implies: ``squin`` for ``squin-256q``."""
    return qpu_mode.split("-")[0]


def _placeholder(qpu_mode: str) -> dict[str, Any]:
    return {
        "program_language": default_language(qpu_mode),
        "programs": [{"content": "sandbox placeholder program"}],
        "subtasks": [{"program_index": 0, "num_shots": _PLACEHOLDER_SHOTS, "arguments": {}}],
    }


@router.get("", response_model=TaskPage, summary="List your tasks")
async def list_tasks(
    qpu_mode: QpuMode,
    request: Request,
    caller: CallerDep,
    page: Page = 0,
    size: Annotated[int, Query(ge=1, le=1000)] = 10,
    sort: Annotated[str, Query(pattern=TASK_SORT, description="created_date or modified_date, then ,asc or ,desc")] = (
        "created_date,desc"
    ),
    group_id: Annotated[
        list[str] | None,
        Query(
            description="only tasks of these groups; repeatable, values ORed; malformed UUIDs are ignored, "
            "and when none is left the answer is empty"
        ),
    ] = None,
) -> Response:
    """The caller's tasks of this qpu_mode, a page at a time."""
    now = _now_us()
    if group_id is None:
        tasks = _store(request).list(caller.sub, qpu_mode, default_group=caller.default_group)
    else:
        groups = valid_group_ids(group_id)
        tasks = _store(request).list(caller.sub, qpu_mode, groups, default_group=caller.default_group) if groups else []
    key, _, direction = sort.partition(",")
    rows = [(task, task.timeline.at(now)) for task in tasks]
    if key == "created_date":
        rows.sort(key=lambda r: (r[0].created_us, r[0].id), reverse=direction == "desc")
    else:
        rows.sort(key=lambda r: (r[1].modified_us, r[0].id), reverse=direction == "desc")
    start = min(page * size, len(rows))
    elements = [task_json(task, now) for task, _ in rows[start : start + size]]
    return _json({"elements": elements, "page": page, "size": size, "total": len(rows)})


@router.get("/{task_id}", response_model=Task, summary="Get a task and its status")
async def get_task(qpu_mode: QpuMode, task_id: TaskId, request: Request, caller: CallerDep) -> Response:
    return _json(task_json(_task_or_404(request, caller, qpu_mode, task_id), _now_us()))


@router.put(
    "/{task_id}/cancel", status_code=202, response_model=Task, responses=CONFLICT_ERROR, summary="Cancel a task"
)
async def cancel_task(qpu_mode: QpuMode, task_id: TaskId, request: Request, caller: CallerDep) -> Response:
    """Cancels a task that has not finished executing (202, as QLAM answers; the body is the
    task as it is now); 409 once it has (or has ended otherwise)."""
    now = _now_us()
    task, cancelled = _store(request).cancel(
        caller.sub,
        qpu_mode,
        str(task_id),
        when_us=now,
        by=caller.user_id,
        allowed=lambda t: t.timeline.at(now).status in CANCELLABLE,
    )
    if task is None:
        raise _not_found(task_id)
    if not cancelled:
        status = task.timeline.at(now).status
        raise ApiProblem(409, [f"task {task_id} is {status} and can no longer be cancelled"], CONFLICT)
    return _json(task_json(task, now), 202)


@router.delete("/{task_id}", status_code=204, response_class=Response, summary="Delete a task")
async def delete_task(qpu_mode: QpuMode, task_id: TaskId, request: Request, caller: CallerDep) -> Response:
    """Deletes the task (one still running is cancelled first: it never completes); then it is 404."""
    store, now = _store(request), _now_us()
    store.cancel(
        caller.sub,
        qpu_mode,
        str(task_id),
        when_us=now,
        by=caller.user_id,
        allowed=lambda t: t.timeline.at(now).status in CANCELLABLE,
    )
    if not store.delete(caller.sub, qpu_mode, str(task_id)):
        raise _not_found(task_id)
    return Response(status_code=204)


@router.get(
    "/{task_id}/results",
    response_model=ResultsPage,
    summary="Get a completed task's results",
    responses={
        **CONFLICT_ERROR,
        200: {
            "description": "A JSON page by default; the whole result set (a ResultsDownload as UTF-8 JSON) "
            "with Accept: application/octet-stream",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
    },
)
def task_results(
    qpu_mode: QpuMode,
    task_id: TaskId,
    request: Request,
    caller: CallerDep,
    page: Page = 0,
    size: Annotated[int, Query(ge=1, le=1000, description="subtasks per page")] = 10,
    sort: Annotated[str, Query(pattern=RESULTS_SORT)] = "subtask_order,asc",
    shots_page: Annotated[int, Query(ge=0, description="0-based page of each subtask's shots")] = 0,
    shots_size: Annotated[int, Query(ge=1, le=10_000, description="shots per subtask per page")] = 100,
) -> Response:
    """Results of a ``Completed`` task (else 409). Sync, so building big pages runs in the thread pool."""
    task = _task_or_404(request, caller, qpu_mode, task_id)
    status = task.timeline.at(_now_us()).status
    if status != "Completed":
        raise ApiProblem(409, [f"task is {status}, results are not available"], CONFLICT)
    results = TaskResults(task)
    if _wants_download(request.headers.get("accept", "")):
        return StreamingResponse(results.download(), media_type="application/octet-stream")
    descending = sort.endswith(",desc")
    return _json(
        results.page(page=page, size=size, descending=descending, shots_page=shots_page, shots_size=shots_size)
    )


def _wants_download(accept: str) -> bool:
    """``Accept`` asks for the octet stream, and at least as much as for JSON (``*/*`` counts for neither)."""
    weights: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[media.lower()] = weight
    octet = weights.get("application/octet-stream", 0.0)
    return octet > 0 and octet >= weights.get("application/json", 0.0)


def _task_or_404(request: Request, caller: Caller, qpu_mode: str, task_id: UUID) -> StoredTask:
    task = _store(request).get(caller.sub, qpu_mode, str(task_id))
    if task is None:
        raise _not_found(task_id)
    return task


def _not_found(task_id: UUID) -> ApiProblem:
    return ApiProblem(404, [f"task {task_id} not found"], NOT_FOUND)


def task_json(task: StoredTask, now_us: int) -> dict[str, Any]:
    """The Task as the API shows it at ``now_us``. ``profile_id`` is left out when unset, as
    QLAM does; a task stored before every task had a group is in its owner's default group."""
    snapshot = task.timeline.at(now_us)
    shown: dict[str, Any] = {
        "id": task.id,
        "task_status": snapshot.status,
        "definition_id": task.definition_id,
        "compilation_id": task.compilation_id,
        "created_by": task.created_by,
        "created_date": iso_date(task.created_us),
        "modified_date": iso_date(snapshot.modified_us),
        "modified_by": task.cancelled_by if snapshot.status == "Cancelled" and task.cancelled_by else task.created_by,
        "scheduled_date": iso_date(snapshot.scheduled_us) if snapshot.scheduled_us is not None else None,
        "group": group_json(task.group_id or default_group_of(task.owner)),
        "profile_id": task.profile_id,
        "error_reasons": list(snapshot.error_reasons),
        "qpu_mode": task.qpu_mode,
        "user_metadata": task.user_metadata,
        "system_metadata": task.system_metadata,
        "num_subtasks": task.num_subtasks,
        "total_shots": task.total_shots,
    }
    if task.profile_id is None:
        del shown["profile_id"]
    return shown


# -- wiring ------------------------------------------------------------------


def install_openapi(app: FastAPI, qpu_modes: Sequence[str]) -> None:
    """Make ``/openapi.json`` name the served qpu modes (an ``enum``) and the download's schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    # FastAPI documents a 422 for every route; the tasks API answers 400 instead.
                    operation.get("responses", {}).pop("422", None)
                    for parameter in operation.get("parameters", []):
                        if parameter.get("name") == "qpu_mode" and parameter.get("in") == "path":
                            parameter["schema"]["enum"] = list(qpu_modes)
            download = ResultsDownload.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            for name, definition in download.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["ResultsDownload"] = download
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class TokenIssueRecorder:
    """ASGI middleware that notes when ``/oauth/token`` hands out each token (by ``jti``).

    Tokens carry ``iat`` in whole seconds only; ``revoke_tokens_before`` needs to
    tell a token issued just before the cut-off from one issued just after it in
    the same second.  The time noted is the request's arrival, which is never
    later than the token's real issue time.  Answers pass through untouched.
    """

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/oauth/token":
            await self.app(scope, receive, send)
            return
        arrived = time.time()
        status, chunks = 0, []

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self._note(b"".join(chunks), arrived)
            await send(message)

        await self.app(scope, receive, noting)

    def _note(self, body: bytes, arrived: float) -> None:
        try:
            token = json.loads(body)["access_token"]
            jti = jwt.decode(token, options={"verify_signature": False}).get("jti")
        except Exception:  # a scripted body, say: nothing to note
            return
        if isinstance(jti, str):
            self.state.record_token_issued(jti, arrived)
