"""QuEra's own SDK (PyPI ``qlam-core``) against the sandbox: the referee for "the sandbox speaks QLAM".

Its ``TasksClient`` is used exactly as a user of the SDK would use it, unchanged:
every operation it offers (create in both modes, list, list_page, iter_pages,
list_all, get, cancel) and the error cases.  It validates every answer with the
models generated from the real service's OpenAPI document, so a field the
sandbox gets wrong fails here.  Version 0.10's ``TasksClient`` has no ``delete``;
its generated spec has the operation, so delete goes through the SDK's own
executor with that spec.

Authentication without the SDK's OAuth (which refuses plain-http identity
providers): the SDK resolves, after any configured provider, the context's own
``AppContext.auth`` when it is authenticated.  ``QlamHpcToken`` is such a provider;
it hands the SDK a bearer token from qlam-hpc (the library's ``TokenProvider``, or
``qlam-hpc token``), and the context's ``api_base_url`` points at the sandbox.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("qlam_core")

from qlam_core.auth.base import BaseAuthProvider, LoginLogoutMixin
from qlam_core.auth.credentials.models import CredentialBase
from qlam_core.common.context import AppContext
from qlam_core.config.config import Config
from qlam_core.config.config_models import Context, Defaults, QshClientConfig
from qlam_core.errors import APIError
from qlam_core.plugins.tasks import TasksClient
from qlam_core.plugins.tasks.api.tasks_models import (
    CompilationReference,
    ErrorResponse,
    Program,
    Subtask,
    Task,
    TaskCreationRequest,
    TaskDefinition,
    TaskDefinitionReference,
    TaskMetadata,
    TaskStatus,
)
from qlam_core.plugins.tasks.api.tasks_spec import TASKS_SPEC
from qlam_core.sdk import http_executor

from conftest import run_cli
from qlam_hpc import TokenProvider
from qlam_hpc.sandbox import Sandbox

QPU = "squin-256q"


class QlamHpcToken(BaseAuthProvider, LoginLogoutMixin):
    """An SDK auth provider whose bearer token comes from qlam-hpc (``get_token`` is called per request)."""

    def __init__(self, get_token: Callable[[], str]) -> None:
        self._get_token = get_token

    @property
    def description(self) -> str:
        return "bearer token from qlam-hpc"

    def is_authenticated(self) -> bool:
        return True

    def get_auth_context(self) -> dict[str, Any]:
        return {"provider": "qlam-hpc"}

    def get_credential(self) -> CredentialBase | None:
        return None

    def get_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._get_token()}"}


def sdk_context(url: str, get_token: Callable[[], str], qpu_mode: str = QPU) -> AppContext:
    """An SDK context for the sandbox at ``url``: nothing read from ``~/.qsh``, no SDK OAuth."""
    context = Context(name="sandbox", qpu="sandbox", defaults=Defaults(api_base_url=url, qpu_mode=qpu_mode))
    ctx = AppContext(cached_config=Config(QshClientConfig(current_context="sandbox", contexts=[context])))
    ctx.auth = QlamHpcToken(get_token)
    return ctx


@pytest.fixture
def ctx(sandbox: Sandbox, provider: TokenProvider) -> AppContext:
    return sdk_context(sandbox.url, provider.get_token)


@pytest.fixture
def tasks(ctx: AppContext) -> Iterator[TasksClient]:
    with TasksClient(ctx) as client:
        yield client


def definition(
    *, language: str | None = "squin", group: uuid.UUID | None = None, content: str = "ok"
) -> TaskCreationRequest:
    return TaskCreationRequest(
        TaskDefinition(
            program_language=language,
            programs=[Program(content=content, program_metadata=TaskMetadata(user_metadata="p0"))],
            subtasks=[
                Subtask(program_index=0, num_shots=10, arguments={"theta": 0.5, "n": 3}),
                Subtask(program_index=0, num_shots=5, subtask_metadata=TaskMetadata(system_metadata="{}")),
            ],
            group_id=group,
        )
    )


def delete(ctx: AppContext, task_id: str) -> dict[str, Any]:
    """DELETE through the SDK's executor and its generated spec (TasksClient 0.10 has no delete method)."""
    return http_executor(ctx, resource="tasks").execute(TASKS_SPEC, "delete", qpu_mode=QPU, id=task_id)


def api_error(call: Callable[[], Any]) -> tuple[int | None, ErrorResponse]:
    with pytest.raises(APIError) as raised:
        call()
    return raised.value.status_code, ErrorResponse.model_validate(raised.value.response_data)


# -- create ---------------------------------------------------------------------


def test_create_from_a_definition(tasks: TasksClient) -> None:
    """create with a TaskDefinition answers a Task the SDK's model accepts, in the caller's default group."""
    task = tasks.create(body=definition())
    assert isinstance(task, Task) and task.task_status is TaskStatus.CREATED
    assert task.id and task.definition_id and task.error_reasons == []
    assert task.created_date.tzinfo is not None and task.group.id
    assert tasks.create(body=definition()).group.id == task.group.id  # a stable default group


def test_create_without_program_language(tasks: TasksClient) -> None:
    """program_language is optional in the real schema; the SDK leaves it out and the sandbox takes it."""
    body = definition(language=None)
    assert "program_language" not in body.model_dump(mode="json", exclude_none=True)
    assert tasks.create(body=body).task_status is TaskStatus.CREATED


def test_create_in_a_group_and_from_references(tasks: TasksClient) -> None:
    """A group_id is the task's group; definition and compilation references make tasks too."""
    group = uuid.uuid4()
    first = tasks.create(body=definition(group=group))
    assert first.group.id == group
    again = tasks.create(body=TaskCreationRequest(TaskDefinitionReference(definition_id=first.definition_id)))
    assert again.definition_id == first.definition_id and again.id != first.id
    compiled = tasks.create(body=TaskCreationRequest(CompilationReference(compilation_id=uuid.uuid4(), group_id=group)))
    assert compiled.compilation_id and compiled.group.id == group


def test_create_in_raw_mode(tasks: TasksClient) -> None:
    """The SDK's raw mode (a dict body) sends the dict as is and returns the answer unvalidated."""
    raw = tasks.create(body={"programs": [{"content": "ok"}], "subtasks": [{"program_index": 0, "num_shots": 1}]})
    assert Task.model_validate(raw).task_status is TaskStatus.CREATED


# -- list -----------------------------------------------------------------------


def test_list_with_paging(tasks: TasksClient) -> None:
    """list_page, iter_pages, list_all and list page through a group's tasks, newest first by default."""
    group = uuid.uuid4()
    ids = [tasks.create(body=definition(group=group)).id for _ in range(7)]
    page = tasks.list_page(page=1, size=3, group_id=[group])
    assert (page.page_number, page.page_size, page.total_items, page.has_next) == (1, 3, 7, True)
    assert [t.id for t in page.items] == ids[::-1][3:6]
    pages = list(tasks.iter_pages(size=3, group_id=[group]))
    assert [len(p.items) for p in pages] == [3, 3, 1]
    assert [t.id for t in tasks.list_all(size=2, group_id=[group], sort="created_date,asc")] == ids
    assert [t.id for t in tasks.list(size=10, group_id=[str(group)])] == ids[::-1]


def test_list_group_filters(tasks: TasksClient) -> None:
    """group_id values are ORed; malformed ones are ignored; none left valid means an empty list."""
    one, two = uuid.uuid4(), uuid.uuid4()
    in_one = {tasks.create(body=definition(group=one)).id for _ in range(2)}
    in_two = {tasks.create(body=definition(group=two)).id}
    tasks.create(body=definition())
    assert {t.id for t in tasks.list_all(group_id=[one, two])} == in_one | in_two
    assert {t.id for t in tasks.list_all(group_id=[one, "not-a-uuid"])} == in_one
    empty = tasks.list_page(group_id=["not-a-uuid"])
    assert (empty.items, empty.total_items) == ([], 0)
    assert len(tasks.list(size=5)) == 5  # no filter: everything of the caller


# -- get, cancel, delete ----------------------------------------------------------


def test_get(tasks: TasksClient) -> None:
    created = tasks.create(body=definition())
    got = tasks.get(id=created.id)
    assert (got.id, got.created_by, got.group) == (created.id, created.created_by, created.group)
    assert tasks.get(id=created.id, raw=True)["id"] == created.id


def test_cancel(sandbox: Sandbox, tasks: TasksClient) -> None:
    """cancel returns None on the 202; the task is Cancelled; a second cancel is a 409 ErrorResponse."""
    sandbox.set_faults(task_duration=60)
    task = tasks.create(body=definition())
    assert tasks.cancel(id=task.id) is None
    assert tasks.get(id=task.id).task_status is TaskStatus.CANCELLED
    status, error = api_error(lambda: tasks.cancel(id=task.id))
    assert (status, error.code) == (409, 1409)


def test_delete(sandbox: Sandbox, ctx: AppContext, tasks: TasksClient) -> None:
    """DELETE answers 204 with no body, for a running and a finished task; then the task is 404."""
    sandbox.set_faults(task_duration=60)
    running = tasks.create(body=definition()).id
    sandbox.set_faults(task_duration=0)
    finished = tasks.create(body=definition()).id
    for task_id in (running, finished):
        assert delete(ctx, task_id) == {"status_code": 204}
        status, error = api_error(lambda task_id=task_id: tasks.get(id=task_id))
        assert (status, error.code) == (404, 1404)


# -- errors -------------------------------------------------------------------------


def test_errors_are_error_responses(sandbox: Sandbox, ctx: AppContext, tasks: TasksClient) -> None:
    """Unknown tasks, invalid bodies, unknown modes and bad tokens: APIError carrying an ErrorResponse."""
    unknown = str(uuid.uuid4())
    for call in (lambda: tasks.get(id=unknown), lambda: tasks.cancel(id=unknown), lambda: delete(ctx, unknown)):
        assert api_error(call)[0] == 404
    status, error = api_error(lambda: tasks.create(body={"programs": [], "subtasks": []}))
    assert (status, error.code) == (400, 1300) and len(error.messages) == 2
    status, error = api_error(lambda: tasks.list_page(qpu_mode="aquila-256q"))
    assert (status, error.code) == (404, 1404)
    with TasksClient(sdk_context(sandbox.url, lambda: "not-a-token")) as stranger:
        status, error = api_error(stranger.list_page)
    assert (status, error.code) == (401, 1000)


def test_the_token_of_qlam_hpc_token(sandbox: Sandbox, env: dict[str, str]) -> None:
    """As the issue was reported: a token printed by ``qlam-hpc token`` serves QuEra's SDK for a whole round."""
    printed = run_cli("token", env=env)
    assert printed.code == 0, printed.err
    with TasksClient(sdk_context(sandbox.url, lambda: printed.out.strip())) as tasks:
        task = tasks.create(body=definition(language=None))
        assert tasks.get(id=task.id).id == task.id
        assert task.id in {t.id for t in tasks.list(size=100)}
        assert tasks.cancel(id=task.id) is None
    assert delete(sdk_context(sandbox.url, lambda: printed.out.strip()), task.id) == {"status_code": 204}
