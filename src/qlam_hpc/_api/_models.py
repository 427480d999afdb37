"""Typed views of what the QLAM API sends and takes (pydantic v2).

Every model keeps fields it does not know (``extra="allow"``): the API grows,
and a client that drops what it does not understand loses data on the way
through (``tasks get --json`` must print what the server said). For the same
reason a status this client has never heard of stays a plain string instead of
failing validation.

The referee is the real service's OpenAPI document, as QuEra's SDK (``qlam-core``)
ships it in generated models: what it makes optional in an answer is optional
here too, and what we send carries every field it requires
(``tests/test_api_models_conformance.py`` checks both against the SDK's models).
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

T = TypeVar("T")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict of the fields that were given (unknown ones included): what
        the server said, not this client's defaults."""
        return self.model_dump(mode="json", exclude_unset=True)


class TaskStatus(str, Enum):
    """A task's place in its lifecycle: Created → PayloadProcessing → Scheduled →
    ExecutionStarted → ExecutionCompleted → Completed, or one of the failure ends."""

    CREATED = "Created"
    PAYLOAD_PROCESSING = "PayloadProcessing"
    SCHEDULED = "Scheduled"
    EXECUTION_STARTED = "ExecutionStarted"
    EXECUTION_COMPLETED = "ExecutionCompleted"
    COMPLETED = "Completed"
    CANCELLED = "Cancelled"
    PAYLOAD_PROCESSING_ERROR = "PayloadProcessingError"
    FAILED = "Failed"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        return self.value in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.value == "Completed"


# The statuses a task never leaves, and the failures among them: a protocol rule, kept with
# the others in ``_requests`` (which the CLI's light path imports without pydantic).
from ._requests import TERMINAL  # noqa: E402


class Group(_Model):
    id: str | None = None
    name: str | None = None
    deactivated: bool | None = None


class Task(_Model):
    """One task as the API describes it. ``task_status`` is a ``TaskStatus``, or the raw
    string for a status newer than this client. The real schema requires only
    ``task_status``, ``created_by``, ``created_date``, ``group`` and ``error_reasons``;
    every task it returns has an ``id``, but an answer without one is still read."""

    id: str | None = None
    task_status: TaskStatus | str = Field(union_mode="left_to_right")
    definition_id: str | None = None
    compilation_id: str | None = None
    created_by: str | None = None
    created_date: datetime | None = None
    modified_date: datetime | None = None
    modified_by: str | None = None
    scheduled_date: datetime | None = None
    group: Group | None = None
    profile_id: str | None = None
    error_reasons: list[str] = Field(default_factory=list)

    @property
    def status(self) -> str:
        """The status as a plain string (``"Completed"``)."""
        return str(self.task_status.value if isinstance(self.task_status, TaskStatus) else self.task_status)

    @property
    def terminal(self) -> bool:
        """True once the task can change no more: Completed, Cancelled, Failed, PayloadProcessingError."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "Completed"


class Metadata(_Model):
    """``user_metadata`` is free text passed through; ``system_metadata`` a JSON string for tools."""

    user_metadata: str | None = None
    system_metadata: str | None = None


class Program(_Model):
    content: str
    program_metadata: Metadata | None = None


class SubtaskDefinition(_Model):
    """``arguments`` are numbers, as in the real schema (an int stays an int on the wire)."""

    program_index: int = 0
    num_shots: int
    arguments: dict[str, StrictInt | StrictFloat] = Field(default_factory=dict)
    subtask_metadata: Metadata | None = None


class TaskDefinition(_Model):
    """What ``create_task`` sends: programs and subtasks, or a ``definition_id``, or a
    ``compilation_id``. The server decides what is valid (an invalid one is an
    ``InvalidTaskDefinition`` carrying its messages); this model only types the fields.

    >>> TaskDefinition(
    ...     program_language="squin", programs=[Program(content=source)], subtasks=[SubtaskDefinition(num_shots=100)]
    ... )
    """

    program_language: str | None = None
    programs: list[Program] | None = None
    subtasks: list[SubtaskDefinition] | None = None
    definition_id: str | None = None
    compilation_id: str | None = None
    group_id: str | None = None
    profile_id: str | None = None
    user_metadata: str | None = None
    system_metadata: str | None = None


class Page(_Model, Generic[T]):
    """One page of a listing: ``elements``, the 0-based ``page``, its ``size`` and the ``total``."""

    elements: list[T]
    page: int = 0
    size: int = 0
    total: int = 0

    @property
    def last(self) -> bool:
        """True when no page follows this one."""
        return not self.elements or self.size <= 0 or (self.page + 1) * self.size >= self.total


class Measurement(_Model):
    bitstring: str
    measurement_time: datetime | None = None


class Shot(_Model):
    shot_index: int
    shot_start_time: datetime | None = None
    measurements: list[Measurement] = Field(default_factory=list)


class SubtaskResult(_Model):
    """A subtask's results. In a results page ``shots`` is one page of shots
    (``shots_page``, ``shots_size``, ``shots_total``); in a download or from
    ``iter_results`` it holds every shot and the two paging fields are ``None``."""

    subtask_order: int
    program_index: int | None = None
    num_shots: int | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    completed_date: datetime | None = None
    shots_page: int | None = None
    shots_size: int | None = None
    shots_total: int | None = None
    shots: list[Shot] = Field(default_factory=list)


class ResultsPage(Page[SubtaskResult]):
    """One page of subtask results, each with one page of its shots."""

    task_id: str | None = None


class Results(_Model):
    """A task's whole result set: what ``download_results`` writes to its file."""

    task_id: str
    subtasks: list[SubtaskResult] = Field(default_factory=list)
