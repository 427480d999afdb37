"""qlam-hpc's API models against QuEra's generated ones (PyPI ``qlam-core``, from the service's OpenAPI).

Two directions, because a client must work against the real service unchanged:

- answers: everything the real schema allows, we read. A field it makes optional
  is optional for us too (else a valid answer would fail in our client after the
  task was created); we require nothing it does not.
- requests: what we send is something it allows. A field it requires is never
  missing from our bodies, and each body validates against its request models.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import BaseModel

pytest.importorskip("qlam_core")

from qlam_core.plugins.tasks.api import tasks_models as real

from qlam_hpc._api import _models as ours
from qlam_hpc._api._requests import task_body

# (our model, the generated one it reads)
ANSWERS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (ours.Task, real.Task),
    (ours.Group, real.GroupSummary),
    (ours.Page[ours.Task], real.PageTask),
]
# (our model, the generated one it must produce)
REQUESTS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (ours.Program, real.Program),
    (ours.SubtaskDefinition, real.Subtask),
    (ours.Metadata, real.TaskMetadata),
]


def required(model: type[BaseModel]) -> set[str]:
    return {name for name, field in model.model_fields.items() if field.is_required()}


@pytest.mark.parametrize(("mine", "theirs"), ANSWERS, ids=lambda m: m.__name__)
def test_we_require_nothing_the_real_schema_makes_optional(mine: type[BaseModel], theirs: type[BaseModel]) -> None:
    assert required(mine) <= required(theirs), f"{mine.__name__} requires what the real schema does not"
    assert mine.model_config.get("extra") == "allow"  # fields we do not know are kept, not refused


@pytest.mark.parametrize(("mine", "theirs"), ANSWERS[:2], ids=lambda m: m.__name__)
def test_we_know_every_field_of_the_answers(mine: type[BaseModel], theirs: type[BaseModel]) -> None:
    assert set(theirs.model_fields) <= set(mine.model_fields)


def _minimal_task() -> dict[str, Any]:
    task = real.Task(
        task_status=real.TaskStatus.CREATED,
        created_by=uuid.uuid4(),
        created_date="2025-01-31T12:00:00+00:00",
        group=real.GroupSummary(id=uuid.uuid4()),
        error_reasons=[],
    )
    return task.model_dump(mode="json", exclude_none=True)


def test_a_minimal_real_task_is_read() -> None:
    """A Task with only the fields the real schema requires (no id even) is read, status and all."""
    data = _minimal_task()
    task = ours.Task.model_validate(data)
    assert (task.status, task.id, task.group.id) == ("Created", None, data["group"]["id"])
    page = ours.Page[ours.Task].model_validate({"elements": [data], "page": 0, "size": 10, "total": 1})
    assert page.elements[0].created_by == data["created_by"]


def test_a_full_real_task_is_read_with_every_field() -> None:
    data = {
        **_minimal_task(),
        "id": str(uuid.uuid4()), "definition_id": str(uuid.uuid4()), "compilation_id": str(uuid.uuid4()),
        "modified_date": "2025-01-31T12:00:01+00:00", "modified_by": str(uuid.uuid4()),
        "scheduled_date": "2025-01-31T12:00:02+00:00", "profile_id": str(uuid.uuid4()),
        "group": {"id": str(uuid.uuid4()), "name": None, "deactivated": None}, "future_field": {"x": 1},
    }  # fmt: skip
    real.Task.model_validate(data)
    task = ours.Task.model_validate(data)
    assert set(task.to_json()) == set(data) and task.model_extra == {"future_field": {"x": 1}}
    assert task.scheduled_date is not None and task.scheduled_date.isoformat() == data["scheduled_date"]
    assert (task.id, task.profile_id) == (data["id"], data["profile_id"])


@pytest.mark.parametrize(("mine", "theirs"), REQUESTS, ids=lambda m: m.__name__)
def test_what_we_send_has_every_required_field(mine: type[BaseModel], theirs: type[BaseModel]) -> None:
    """Each field the real schema requires is one of ours, required or with a default that is sent."""
    for name in required(theirs):
        assert name in mine.model_fields, f"{mine.__name__} cannot send {name}"
        field = mine.model_fields[name]
        assert field.is_required() or field.get_default(call_default_factory=True) is not None, name


def test_what_the_real_schema_makes_optional_we_may_leave_out() -> None:
    """program_language (the qpu_mode's by default), group_id, profile_id and the metadata are optional for us too."""
    optional = set(real.TaskDefinition.model_fields) - required(real.TaskDefinition)
    assert optional <= set(ours.TaskDefinition.model_fields) - required(ours.TaskDefinition)
    for mine, theirs in REQUESTS:
        assert set(theirs.model_fields) - required(theirs) <= set(mine.model_fields) - required(mine)


PROGRAM = ours.Program(content="kernel main() {}")
# fmt: off
BODIES = {
    "minimal definition": ours.TaskDefinition(programs=[PROGRAM], subtasks=[ours.SubtaskDefinition(num_shots=10)]),
    "full definition": ours.TaskDefinition(
        program_language="squin",
        programs=[ours.Program(content="x", program_metadata=ours.Metadata(user_metadata="p", system_metadata="{}"))],
        subtasks=[
            ours.SubtaskDefinition(
                program_index=0, num_shots=10, arguments={"theta": 0.5, "n": 3},
                subtask_metadata=ours.Metadata(user_metadata="s"),
            )
        ],
        group_id=str(uuid.uuid4()), profile_id=str(uuid.uuid4()), user_metadata="run 7", system_metadata="{}",
    ),
    "definition reference": ours.TaskDefinition(definition_id=str(uuid.uuid4()), group_id=str(uuid.uuid4())),
    "compilation reference": ours.TaskDefinition(compilation_id=str(uuid.uuid4()), profile_id=str(uuid.uuid4())),
}
# fmt: on
FORMS = {
    "minimal definition": real.TaskDefinition,
    "full definition": real.TaskDefinition,
    "definition reference": real.TaskDefinitionReference,
    "compilation reference": real.CompilationReference,
}


@pytest.mark.parametrize("name", list(BODIES))
def test_our_bodies_are_valid_creation_requests(name: str) -> None:
    """What create_task sends for each body form validates as that form of the real TaskCreationRequest."""
    body = task_body(BODIES[name])
    assert None not in body.values()
    parsed = real.TaskCreationRequest.model_validate(body).root
    assert isinstance(parsed, FORMS[name])
    FORMS[name].model_validate(body)
    if isinstance(parsed, real.TaskDefinition):
        assert required(real.Subtask) <= set(body["subtasks"][0])


@pytest.mark.parametrize("value", [True, "0.5", [1], None])
def test_subtask_arguments_are_numbers(value: Any) -> None:
    """The real schema's arguments are numbers; our model sends nothing else (ints stay ints)."""
    with pytest.raises(ValueError):
        ours.SubtaskDefinition(num_shots=1, arguments={"x": value})
    sent = ours.SubtaskDefinition(num_shots=1, arguments={"n": 3, "theta": 0.5}).model_dump(mode="json")
    assert sent["arguments"] == {"n": 3, "theta": 0.5} and isinstance(sent["arguments"]["n"], int)
    real.Subtask.model_validate(sent)
