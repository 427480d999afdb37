"""The tasks API's request and response shapes, as pydantic models.

Request models validate creation bodies; response models document the answers in
``/openapi.json`` (the routes build their JSON themselves, see ``_tasks_api``, so
the download and the JSON pages of results come from one builder).

The referee is the real service's OpenAPI document, as QuEra's SDK (``qlam-core``)
ships it in generated models: which fields are required and which optional, and
their types, are the same here (the test suite validates every answer against
the SDK's models and runs the SDK's own client against the sandbox).  Where the
public document says nothing (the results, the limits on shots and page sizes)
the sandbox decides, and docs/sandbox.md says so.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal, get_args
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema

__all__ = [
    "MAX_SHOTS",
    "TASK_STATUSES",
    "CompilationRefCreate",
    "DefinitionRefCreate",
    "ErrorBody",
    "Group",
    "ResultsDownload",
    "ResultsPage",
    "Task",
    "TaskCreate",
    "TaskDefinitionCreate",
    "TaskPage",
]

MAX_SHOTS = 10_000

TaskStatus = Literal[
    "Created",
    "PayloadProcessing",
    "Scheduled",
    "ExecutionStarted",
    "ExecutionCompleted",
    "Completed",
    "Cancelled",
    "PayloadProcessingError",
    "Failed",
]
TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)


def _json_text(value: str) -> str:
    try:
        json.loads(value)
    except ValueError:
        raise ValueError("must be a JSON string (JSON text such as '{}')") from None
    return value


def _argument(value: Any) -> Any:
    # The real schema's arguments are numbers (JSON Schema "number": no strings, no booleans).
    # One check with one message, and the value kept as sent (1 stays 1, not 1.0).
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ValueError("must be a number")


JsonText = Annotated[str, AfterValidator(_json_text), Field(description="JSON text, for SDK and server use")]
ArgumentValue = Annotated[
    Any,
    AfterValidator(_argument),
    WithJsonSchema({"type": "number"}),
]


# -- requests ---------------------------------------------------------------


class Metadata(BaseModel):
    """``user_metadata`` passes through untouched; ``system_metadata`` must be JSON text."""

    model_config = ConfigDict(extra="allow")

    user_metadata: str | None = None
    system_metadata: JsonText | None = None


class Program(BaseModel):
    model_config = ConfigDict(extra="allow")

    content: str = Field(description="the program text")
    program_metadata: Metadata | None = None


class Subtask(BaseModel):
    model_config = ConfigDict(extra="allow")

    program_index: int = Field(strict=True, ge=0, description="index into programs")
    num_shots: int = Field(strict=True, ge=1, le=MAX_SHOTS)
    arguments: dict[str, ArgumentValue] | None = None
    subtask_metadata: Metadata | None = None


class _CreateCommon(BaseModel):
    # Unknown fields are kept (and stored), not refused: a newer client may send more.
    model_config = ConfigDict(extra="allow")

    group_id: UUID | None = None
    profile_id: UUID | None = None
    user_metadata: str | None = None
    system_metadata: JsonText | None = None


class TaskDefinitionCreate(_CreateCommon):
    """A task from an inline definition: at least one program and one subtask.

    ``program_language`` is optional, as in the real schema: without it the
    language follows from the ``qpu_mode`` (``squin`` for ``squin-256q``)."""

    program_language: str | None = Field(default=None, description="only if it differs from the qpu_mode's")
    programs: list[Program] = Field(min_length=1)
    subtasks: list[Subtask] = Field(min_length=1)


class DefinitionRefCreate(_CreateCommon):
    """A task from a stored definition."""

    definition_id: UUID


class CompilationRefCreate(_CreateCommon):
    """A task from a compilation."""

    compilation_id: UUID


def body_form(value: Any) -> str:
    """Which of the three creation bodies ``value`` is meant to be (validation errors then
    speak of that form only, not of all three)."""
    if isinstance(value, dict):
        if value.get("definition_id") is not None:
            return "DefinitionRef"
        if value.get("compilation_id") is not None:
            return "CompilationRef"
    return "TaskDefinition"


BODY_FORMS = ("TaskDefinition", "DefinitionRef", "CompilationRef")

TaskCreate = Annotated[
    Annotated[TaskDefinitionCreate, Tag("TaskDefinition")]
    | Annotated[DefinitionRefCreate, Tag("DefinitionRef")]
    | Annotated[CompilationRefCreate, Tag("CompilationRef")],
    Discriminator(body_form),
]


# -- responses --------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error of the tasks API: 1000 generic, 1300 invalid request, 1404 not found, 1409 conflict."""

    messages: list[str]
    code: int


class Group(BaseModel):
    """The group a task belongs to; every task has one (the caller's default group if none was given)."""

    id: UUID
    name: str
    deactivated: bool


class Task(BaseModel):
    """What the real schema has, plus the sandbox's own fields from ``qpu_mode`` on
    (extensions: the real service may not send them)."""

    id: UUID
    task_status: TaskStatus
    definition_id: UUID
    compilation_id: UUID | None
    created_by: UUID
    created_date: datetime
    modified_date: datetime
    modified_by: UUID
    scheduled_date: datetime | None
    group: Group
    profile_id: UUID | None = Field(default=None, description="omitted when the task has no profile")
    error_reasons: list[str]
    qpu_mode: str
    user_metadata: str | None
    system_metadata: str | None
    num_subtasks: int
    total_shots: int


class TaskPage(BaseModel):
    elements: list[Task]
    page: int
    size: int
    total: int


class ShotMeasurement(BaseModel):
    bitstring: str = Field(description="one character per qubit, '0' or '1'")
    measurement_time: datetime


class ShotResult(BaseModel):
    shot_index: int
    shot_start_time: datetime
    measurements: list[ShotMeasurement]


class SubtaskResult(BaseModel):
    subtask_order: int
    program_index: int
    num_shots: int
    arguments: dict[str, ArgumentValue]
    completed_date: datetime
    shots_page: int
    shots_size: int
    shots_total: int
    shots: list[ShotResult]


class ResultsPage(BaseModel):
    task_id: UUID
    elements: list[SubtaskResult]
    page: int
    size: int
    total: int = Field(description="the number of subtasks")


class SubtaskResultFull(BaseModel):
    subtask_order: int
    program_index: int
    num_shots: int
    arguments: dict[str, ArgumentValue]
    completed_date: datetime
    shots_total: int
    shots: list[ShotResult]


class ResultsDownload(BaseModel):
    """The body of the ``application/octet-stream`` download: every subtask with all its shots."""

    task_id: UUID
    subtasks: list[SubtaskResultFull]
