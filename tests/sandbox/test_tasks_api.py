"""The emulated QLAM tasks API: creation, validation, listing, get, cancel, delete, auth, faults, stats.

Everything goes over HTTP to a real sandbox on loopback, with real tokens from
its own /oauth/token.  ``TasksApi``, ``BODY`` and the fixtures here are shared
with the other test_tasks_* modules.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from qlam_hpc.sandbox import Sandbox, SandboxConfig
from qlam_hpc.sandbox._tasks_models import Task, TaskPage

from .conftest import ALICE, API, BOB, OTHER_API, fetch_token, jwks_key

QPU = "squin-256q"

BODY: dict[str, Any] = {
    "program_language": "squin",
    "programs": [{"content": "kernel main() { measure_all() }", "program_metadata": {"user_metadata": "p0"}}],
    "subtasks": [
        {"program_index": 0, "num_shots": 7, "arguments": {"theta": 0.25, "n": 3, "phi": -1e-9}},
        {"program_index": 0, "num_shots": 5, "arguments": {"theta": 0.5}},
    ],
}


def body(*, content: str | None = None, **changes: Any) -> dict[str, Any]:
    """``BODY`` with top-level ``changes``; ``content`` replaces the program text."""
    result = {**BODY, **changes}
    if content is not None:
        result["programs"] = [{"content": content}]
    return {k: v for k, v in result.items() if v is not None}


class TasksApi:
    """The tasks API of one sandbox as seen by one bearer token."""

    def __init__(self, http: httpx.Client, sandbox: Sandbox, token: str, qpu: str = QPU) -> None:
        self.http, self.sandbox, self.token, self.qpu = http, sandbox, token, qpu

    @property
    def base(self) -> str:
        return f"{self.sandbox.url}/v2/{self.qpu}/tasks"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.http.request(method, self.base + path, headers=headers, **kwargs)

    def create(self, payload: Any = None, expect: int = 201) -> dict[str, Any]:
        response = self.request("POST", json=BODY if payload is None else payload)
        assert response.status_code == expect, response.text
        return response.json()

    def get(self, task_id: str) -> dict[str, Any]:
        response = self.request("GET", f"/{task_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def list(self, **params: Any) -> dict[str, Any]:
        response = self.request("GET", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, task_id: str, status: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            if task["task_status"] == status:
                return task
            assert time.monotonic() < deadline, f"task stayed {task['task_status']}, never {status}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def tasks_server(key_file: Path) -> Iterator[Sandbox]:
    """One sandbox per test module: tasks take 0.5 s unless a test changes task_duration."""
    config = SandboxConfig(
        clients=(ALICE, BOB),
        audiences=(API, OTHER_API),
        signing_key_file=key_file,
        task_duration=0.5,
        qpu_modes=(QPU, "gemini-260q"),
    )
    with Sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(tasks_server: Sandbox) -> Sandbox:
    """The module's sandbox with zeroed stats and no faults (tasks of earlier tests remain)."""
    tasks_server.reset()
    return tasks_server


@pytest.fixture
def alice(http: httpx.Client, sandbox: Sandbox) -> TasksApi:
    return TasksApi(http, sandbox, fetch_token(http, sandbox, client=ALICE))


@pytest.fixture
def bob(http: httpx.Client, sandbox: Sandbox) -> TasksApi:
    return TasksApi(http, sandbox, fetch_token(http, sandbox, client=BOB))


def _aware(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


# -- creation -----------------------------------------------------------------


def test_create_from_definition(alice: TasksApi, bob: TasksApi) -> None:
    """An inline definition makes a Created task with every Task field, owned by a UUID derived from the client."""
    group, profile = str(uuid.uuid4()), str(uuid.uuid4())
    task = alice.create(body(group_id=group, profile_id=profile, user_metadata="run 7", system_metadata='{"sdk": 1}'))
    Task.model_validate(task)
    assert task["task_status"] == "Created"
    assert (task["num_subtasks"], task["total_shots"], task["qpu_mode"]) == (2, 12, QPU)
    assert task["group"] == {"id": group, "name": f"sandbox-group-{group[:8]}", "deactivated": False}
    assert task["group"] != alice.create()["group"]
    assert (task["profile_id"], task["user_metadata"], task["system_metadata"]) == (profile, "run 7", '{"sdk": 1}')
    assert (task["compilation_id"], task["scheduled_date"], task["error_reasons"]) == (None, None, [])
    assert task["created_by"] == task["modified_by"] == alice.create()["created_by"]
    assert task["created_by"] != bob.create()["created_by"]
    assert _aware(task["created_date"]) == _aware(task["modified_date"])


def test_every_task_has_a_group(alice: TasksApi, bob: TasksApi) -> None:
    """Without a group_id a task is in its creator's default group: the same each time, not another client's."""
    first, second, theirs = alice.create(), alice.create({"definition_id": str(uuid.uuid4())}), bob.create()
    group = first["group"]
    assert group == second["group"] != theirs["group"]
    assert group == {"id": group["id"], "name": f"sandbox-group-{group['id'][:8]}", "deactivated": False}
    assert uuid.UUID(group["id"]) and group["id"] != first["created_by"]
    in_default = {t["id"] for t in alice.list(group_id=group["id"], size=1000)["elements"]}
    assert {first["id"], second["id"]} <= in_default
    assert "profile_id" not in first  # QLAM leaves it out when a task has no profile


def test_program_language_defaults_to_the_qpu_modes(http: httpx.Client, alice: TasksApi) -> None:
    """program_language is optional: without it the definition runs in the qpu_mode's language."""
    without = {k: v for k, v in BODY.items() if k != "program_language"}
    squin = alice.create(without)
    gemini = TasksApi(http, alice.sandbox, alice.token, qpu="gemini-260q").create(without)
    store = alice.sandbox._store
    assert store is not None
    assert store.definition("alice@clients", squin["definition_id"])["program_language"] == "squin"
    assert store.definition("alice@clients", gemini["definition_id"])["program_language"] == "gemini"
    given = alice.create(body(program_language="flair.v1"))
    assert store.definition("alice@clients", given["definition_id"])["program_language"] == "flair.v1"


def test_create_from_known_definition_id(alice: TasksApi) -> None:
    """A definition_id of an earlier task runs that same definition again."""
    first = alice.create()
    again = alice.create({"definition_id": first["definition_id"], "user_metadata": "again"})
    assert again["definition_id"] == first["definition_id"] and again["id"] != first["id"]
    assert (again["num_subtasks"], again["total_shots"], again["user_metadata"]) == (2, 12, "again")


def test_create_from_unknown_definition_id(alice: TasksApi) -> None:
    """A definition_id the sandbox never saw runs a placeholder: one subtask of 100 shots."""
    definition_id = str(uuid.uuid4())
    task = alice.create({"definition_id": definition_id})
    assert (task["definition_id"], task["num_subtasks"], task["total_shots"]) == (definition_id, 1, 100)


def test_create_from_compilation_id(alice: TasksApi) -> None:
    """A compilation_id is echoed, with a definition_id derived from it (the same one each time)."""
    compilation_id = str(uuid.uuid4())
    first = alice.create({"compilation_id": compilation_id, "group_id": str(uuid.uuid4())})
    second = alice.create({"compilation_id": compilation_id})
    assert first["compilation_id"] == second["compilation_id"] == compilation_id
    assert first["definition_id"] == second["definition_id"] != compilation_id
    assert (first["num_subtasks"], first["total_shots"]) == (1, 100)


def test_null_fields_of_other_forms_are_ignored(alice: TasksApi) -> None:
    """Fields of the other body forms sent as null do not count as mixing forms."""
    nulls = {"program_language": None, "programs": None, "subtasks": None, "compilation_id": None}
    definition_id = str(uuid.uuid4())
    assert alice.create({**nulls, "definition_id": definition_id})["definition_id"] == definition_id
    assert alice.create({**BODY, "definition_id": None, "compilation_id": None})["total_shots"] == 12


def test_unknown_fields_are_accepted(alice: TasksApi) -> None:
    """Fields the sandbox does not know, at any level, do not make a request invalid."""
    payload = body(priority="high", subtasks=[{"program_index": 0, "num_shots": 1, "future": [1, 2]}])
    assert alice.create(payload)["total_shots"] == 1


@pytest.mark.parametrize(
    ("payload", "messages"),
    [
        (
            {"program_language": 7, "programs": [], "subtasks": [{"program_index": 0, "num_shots": 0}]},
            [
                "program_language: input should be a valid string",
                "programs: list should have at least 1 item after validation, not 0",
                "subtasks[0].num_shots: input should be greater than or equal to 1",
            ],
        ),
        (
            body(subtasks=[{"program_index": 1, "num_shots": 10_001}, {"program_index": -1, "num_shots": 5}]),
            [
                "subtasks[0].num_shots: input should be less than or equal to 10000",
                "subtasks[1].program_index: input should be greater than or equal to 0",
                "subtasks[0].program_index: 1 is out of range: the definition has 1 program",
            ],
        ),
        (
            body(
                subtasks=[{"program_index": 0, "num_shots": 1, "arguments": {"x": [1], "s": "0.5", "b": True}}],
                system_metadata="{nope",
            ),
            [
                "system_metadata: must be a JSON string (JSON text such as '{}')",
                "subtasks[0].arguments.x: must be a number",
                "subtasks[0].arguments.s: must be a number",
                "subtasks[0].arguments.b: must be a number",
            ],
        ),
        ({"programs": [{"content": "x"}]}, ["subtasks: field required"]),
        ({"definition_id": "not-a-uuid"}, None),
        ({"compilation_id": 42, "group_id": "g"}, None),
        (body(definition_id=str(uuid.uuid4())), None),
        ([BODY], ["body: must be a JSON object"]),
    ],
    ids=["empty", "ranges", "types", "missing", "bad-definition-id", "bad-compilation-id", "mixed", "not-object"],
)
def test_invalid_bodies_get_every_problem(alice: TasksApi, payload: Any, messages: list[str] | None) -> None:
    """An invalid body gets 400, code 1300 and one "<field>: <problem>" message per problem; nothing is created."""
    response = alice.request("POST", json=payload)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == 1300 and error["messages"]
    assert all(": " in message for message in error["messages"])
    if messages is not None:
        for message in messages:
            assert message in error["messages"]
    assert alice.sandbox.stats()["tasks_created"] == 0


def test_body_must_be_json(alice: TasksApi) -> None:
    """Malformed JSON, or a body without a JSON content type, gets 400 with a message that says so."""
    broken = alice.request("POST", content=b'{"programs": [', headers={"content-type": "application/json"})
    assert broken.json() == {"messages": ["body: is not valid JSON"], "code": 1300}
    form = alice.request("POST", data={"program_language": "squin"})
    assert form.status_code == 400
    assert form.json()["messages"] == ["body: must be a JSON object sent with Content-Type: application/json"]


@pytest.mark.parametrize("qpu", ["aquila-256q", "Squin-256q", "squin", "squin-256q-x"])
def test_unserved_qpu_mode_is_404(http: httpx.Client, alice: TasksApi, qpu: str) -> None:
    """A qpu_mode the sandbox does not serve, or one that is not <language>-<constraint>, is 404 code 1404."""
    other = TasksApi(http, alice.sandbox, alice.token, qpu=qpu)
    for response in (other.request("GET"), other.request("POST", json=BODY)):
        assert response.status_code == 404
        assert response.json() == {"messages": [f"qpu_mode {qpu} not found"], "code": 1404}


def test_tasks_belong_to_their_qpu_mode(http: httpx.Client, alice: TasksApi) -> None:
    """Each served qpu_mode has its own tasks: a task is not found under another mode."""
    gemini = TasksApi(http, alice.sandbox, alice.token, qpu="gemini-260q")
    task = gemini.create()
    assert task["qpu_mode"] == "gemini-260q"
    assert alice.request("GET", f"/{task['id']}").status_code == 404
    assert task["id"] not in {t["id"] for t in alice.list(size=1000)["elements"]}


def test_concurrent_creates_are_all_kept(alice: TasksApi) -> None:
    """Many threads creating at once all get their task stored (SQLite behind one lock)."""
    group = str(uuid.uuid4())
    ids: list[str] = []

    def create_some() -> None:
        with httpx.Client(timeout=10) as client:
            mine = TasksApi(client, alice.sandbox, alice.token)
            ids.extend(mine.create(body(group_id=group))["id"] for _ in range(5))

    threads = [threading.Thread(target=create_some) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = alice.list(group_id=group, size=100)
    assert listed["total"] == 30 == len(set(ids))
    assert {t["id"] for t in listed["elements"]} == set(ids)


# -- listing ------------------------------------------------------------------


def test_list_pages_in_both_orders(alice: TasksApi) -> None:
    """Pages of `size` tasks cover every task once, newest first by default, oldest first with ,asc."""
    group = str(uuid.uuid4())
    ids = [alice.create(body(group_id=group))["id"] for _ in range(7)]
    pages = [alice.list(group_id=group, size=3, page=p) for p in range(4)]
    assert [len(p["elements"]) for p in pages] == [3, 3, 1, 0]
    assert {(p["page"], p["size"], p["total"]) for p in pages} == {(n, 3, 7) for n in range(4)}
    TaskPage.model_validate(pages[0])
    assert [t["id"] for p in pages for t in p["elements"]] == ids[::-1]
    ascending = [alice.list(group_id=group, size=3, page=p, sort="created_date,asc") for p in range(3)]
    assert [t["id"] for p in ascending for t in p["elements"]] == ids
    assert [t["id"] for t in alice.list(group_id=group, size=10, sort="created_date")["elements"]] == ids


def test_list_defaults(alice: TasksApi) -> None:
    """Without parameters: page 0, size 10, total counts every task of the caller."""
    for _ in range(11):
        alice.create()
    listed = alice.list()
    assert (listed["page"], listed["size"], len(listed["elements"])) == (0, 10, 10)
    assert listed["total"] >= 11


def test_list_sorts_by_modified_date(alice: TasksApi) -> None:
    """modified_date moves with each status change: a task cancelled last sorts last ascending."""
    alice.sandbox.set_faults(task_duration=60)
    group = str(uuid.uuid4())
    first, second, third = (alice.create(body(group_id=group))["id"] for _ in range(3))
    assert alice.request("PUT", f"/{first}/cancel").status_code == 202
    by_modified = alice.list(group_id=group, sort="modified_date,asc")["elements"]
    assert [t["id"] for t in by_modified] == [second, third, first]
    dates = [_aware(t["modified_date"]) for t in by_modified]
    assert dates == sorted(dates)
    newest_change = alice.list(group_id=group, sort="modified_date,desc")["elements"]
    assert [t["id"] for t in newest_change] == [first, third, second]


def test_list_filters_by_groups(alice: TasksApi) -> None:
    """group_id keeps tasks of that group; repeated, of any of the groups."""
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    in_one = {alice.create(body(group_id=one))["id"] for _ in range(2)}
    in_two = {alice.create(body(group_id=two))["id"]}
    alice.create()
    assert {t["id"] for t in alice.list(group_id=one)["elements"]} == in_one
    both = alice.list(group_id=[one, two])
    assert both["total"] == 3 and {t["id"] for t in both["elements"]} == in_one | in_two
    assert alice.list(group_id=str(uuid.uuid4()))["total"] == 0


def test_list_ignores_malformed_group_ids(alice: TasksApi) -> None:
    """Malformed group_id values are ignored; when no valid one is left the list is empty, never everything."""
    group = str(uuid.uuid4())
    mine = {alice.create(body(group_id=group))["id"] for _ in range(2)}
    alice.create()
    listed = alice.list(group_id=["not-a-uuid", group.upper(), ""])
    assert listed["total"] == 2 and {t["id"] for t in listed["elements"]} == mine
    for malformed in (["not-a-uuid"], ["", "42"]):
        nothing = alice.list(group_id=malformed)
        assert (nothing["total"], nothing["elements"]) == (0, [])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": -1}, "page"),
        ({"page": "first"}, "page"),
        ({"size": 0}, "size"),
        ({"size": 1001}, "size"),
        ({"sort": "name,asc"}, "sort"),
        ({"sort": "created_date,up"}, "sort"),
    ],
)
def test_list_rejects_bad_parameters(alice: TasksApi, params: dict[str, Any], field: str) -> None:
    """A bad list parameter gets 400 code 1300 naming the parameter (never FastAPI's 422)."""
    response = alice.request("GET", params=params)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == 1300
    assert [m.partition(":")[0] for m in error["messages"]] == [field]


def test_list_reports_several_bad_parameters(alice: TasksApi) -> None:
    """Several bad parameters get one message each."""
    error = alice.request("GET", params={"page": -1, "size": 0, "sort": "x"}).json()
    assert sorted(m.partition(":")[0] for m in error["messages"]) == ["page", "size", "sort"]


# -- one task -----------------------------------------------------------------


def test_tasks_are_private_to_their_client(alice: TasksApi, bob: TasksApi) -> None:
    """Another client can neither see, cancel, delete nor read the results of a task: 404 each time."""
    alice.sandbox.set_faults(task_duration=60)
    task_id = alice.create()["id"]
    not_found = {"messages": [f"task {task_id} not found"], "code": 1404}
    for method, path in [
        ("GET", f"/{task_id}"),
        ("PUT", f"/{task_id}/cancel"),
        ("DELETE", f"/{task_id}"),
        ("GET", f"/{task_id}/results"),
    ]:
        response = bob.request(method, path)
        assert (response.status_code, response.json()) == (404, not_found), (method, path)
    assert task_id not in {t["id"] for t in bob.list(size=1000)["elements"]}
    assert alice.get(task_id)["task_status"] == "Created"  # bob's cancel and delete did nothing


@pytest.mark.parametrize("task_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_task_is_404(alice: TasksApi, task_id: str) -> None:
    """An unknown task id, or one that is no UUID, gets 404 code 1404."""
    response = alice.request("GET", f"/{task_id}")
    assert (response.status_code, response.json()) == (404, {"messages": [f"task {task_id} not found"], "code": 1404})


def test_cancel_then_conflict(alice: TasksApi, bob: TasksApi) -> None:
    """Cancelling a running task answers 202, as QLAM does, with it Cancelled; cancelling it again is 409 code 1409."""
    alice.sandbox.set_faults(task_duration=60)
    task = alice.create()
    cancelled = alice.request("PUT", f"/{task['id']}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["task_status"] == "Cancelled"
    assert cancelled.json()["modified_by"] == task["created_by"]
    assert _aware(cancelled.json()["modified_date"]) > _aware(task["created_date"])
    assert alice.get(task["id"]) == cancelled.json()
    again = alice.request("PUT", f"/{task['id']}/cancel")
    assert again.status_code == 409
    assert again.json() == {
        "messages": [f"task {task['id']} is Cancelled and can no longer be cancelled"],
        "code": 1409,
    }


def test_cancel_completed_task_conflicts(alice: TasksApi) -> None:
    """A Completed task cannot be cancelled: 409, and it stays Completed."""
    alice.sandbox.set_faults(task_duration=0)
    task = alice.create()
    response = alice.request("PUT", f"/{task['id']}/cancel")
    assert (response.status_code, response.json()["code"]) == (409, 1409)
    assert alice.get(task["id"])["task_status"] == "Completed"


def test_delete_removes_the_task(alice: TasksApi) -> None:
    """DELETE answers 204 with no body, for running and finished tasks; then the task is 404 everywhere."""
    alice.sandbox.set_faults(task_duration=60)
    running = alice.create()["id"]
    alice.sandbox.set_faults(task_duration=0)
    finished = alice.create()["id"]
    for task_id in (running, finished):
        response = alice.request("DELETE", f"/{task_id}")
        assert (response.status_code, response.content) == (204, b"")
        assert alice.request("GET", f"/{task_id}").status_code == 404
        assert alice.request("DELETE", f"/{task_id}").status_code == 404
        assert alice.request("GET", f"/{task_id}/results").status_code == 404
        assert task_id not in {t["id"] for t in alice.list(size=1000)["elements"]}


def test_unsupported_method_in_qlam_shape(alice: TasksApi) -> None:
    """A method no tasks route takes gets 405 in the QLAM error shape."""
    response = alice.request("PATCH")
    assert response.status_code == 405
    assert set(response.json()) == {"messages", "code"}


# -- authentication -----------------------------------------------------------


def _forge(http: httpx.Client, sandbox: Sandbox, key: rsa.RSAPrivateKey, **changes: Any) -> str:
    """A token signed with the sandbox's own key, with claims changed."""
    now = int(time.time())
    claims = {
        "iss": sandbox.issuer, "sub": "alice@clients", "aud": API, "iat": now, "exp": now + 600, "azp": "alice",
    }  # fmt: skip
    claims.update(changes)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": jwks_key(http, sandbox).key_id})


def _tampered(token: str) -> str:
    header, _payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.utils.base64url_encode(jwt.api_jws.json.dumps({**claims, "sub": "bob@clients"}).encode()).decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize("case", ["missing", "not-bearer", "garbage", "expired", "tampered", "wrong-audience"])
def test_bad_tokens_get_401(http: httpx.Client, alice: TasksApi, private_key: rsa.RSAPrivateKey, case: str) -> None:
    """Without a valid token (signature, aud, exp) every tasks route answers 401 code 1000 with a Bearer challenge."""
    past = int(time.time()) - 7200
    authorization = {
        "missing": None,
        "not-bearer": "Basic YWxpY2U6c2VjcmV0",
        "garbage": "Bearer not-a-jwt",
        "expired": "Bearer " + _forge(http, alice.sandbox, private_key, iat=past, exp=past + 60),
        "tampered": "Bearer " + _tampered(alice.token),
        "wrong-audience": "Bearer " + _forge(http, alice.sandbox, private_key, aud="https://elsewhere.example"),
    }[case]
    task_id = str(uuid.uuid4())
    for method, path in [("GET", ""), ("POST", ""), ("GET", f"/{task_id}"), ("GET", f"/{task_id}/results")]:
        headers = {"Authorization": authorization} if authorization else {}
        response = http.request(method, alice.base + path, headers=headers, json=BODY if method == "POST" else None)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer")
        if case in ("expired", "tampered", "wrong-audience", "garbage"):
            assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert response.json()["code"] == 1000 and len(response.json()["messages"]) == 1
    assert alice.sandbox.stats()["tasks_created"] == 0


def test_token_of_other_audience_is_accepted(http: httpx.Client, sandbox: Sandbox) -> None:
    """A token for any audience the sandbox serves is good for the tasks API."""
    api = TasksApi(http, sandbox, fetch_token(http, sandbox, audience=OTHER_API))
    assert api.request("GET").status_code == 200


def test_revoked_tokens_get_401_until_refreshed(http: httpx.Client, alice: TasksApi) -> None:
    """revoke_tokens_before refuses tokens issued earlier, even within the same second, and not newer ones."""
    task_id = alice.create()["id"]
    alice.sandbox.set_faults(revoke_tokens_before=time.time())
    refused = alice.request("GET", f"/{task_id}")
    assert refused.status_code == 401
    assert refused.json() == {"messages": ["token has been revoked"], "code": 1000}
    assert refused.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    fresh = TasksApi(http, alice.sandbox, fetch_token(http, alice.sandbox))  # very likely the same second
    assert fresh.get(task_id)["id"] == task_id
    assert (
        http.post(
            alice.sandbox.url + "/_sandbox/faults",
            headers=alice.sandbox.control_headers(),
            json={"revoke_tokens_before": 0},
        ).status_code
        == 200
    )
    assert alice.request("GET", f"/{task_id}").status_code == 200


def test_revocation_of_unrecorded_tokens_goes_by_iat(
    sandbox: Sandbox, http: httpx.Client, private_key: rsa.RSAPrivateKey
) -> None:
    """Tokens the sandbox did not see issued (say, before a restart) are judged by their iat."""
    now = int(time.time())
    old = TasksApi(http, sandbox, _forge(http, sandbox, private_key, iat=now - 10))
    new = TasksApi(http, sandbox, _forge(http, sandbox, private_key, iat=now))
    sandbox.set_faults(revoke_tokens_before=now - 5)
    assert old.request("GET").status_code == 401
    assert new.request("GET").status_code == 200


# -- faults and stats -----------------------------------------------------------


def test_api_script_is_served_in_order_then_normal(http: httpx.Client, alice: TasksApi) -> None:
    """Canned answers (status, body, type, headers) come first, even before authentication; then normal service."""
    alice.sandbox.set_faults(
        api_script=[
            {"status": 503, "body": '{"messages": ["busy"], "code": 1000}'},
            {"status": 429, "body": "slow down", "content_type": "text/plain", "headers": {"Retry-After": "1"}},
        ]
    )
    assert http.post(alice.sandbox.token_url, data={"grant_type": "x"}).status_code == 400  # token endpoint untouched
    unavailable = http.get(alice.base)  # no token at all: still the script's answer
    assert (unavailable.status_code, unavailable.json()) == (503, {"messages": ["busy"], "code": 1000})
    limited = alice.request("POST", json=BODY)
    assert (limited.status_code, limited.text, limited.headers["retry-after"]) == (429, "slow down", "1")
    assert limited.headers["content-type"].startswith("text/plain")
    assert alice.request("POST", json=BODY).status_code == 201
    stats = alice.sandbox.stats()
    assert (stats["api_requests"], stats["api_scripted_responses"], stats["tasks_created"]) == (3, 2, 1)
    assert stats["scripted_responses"] == 0


def test_stats_count_api_requests_and_tasks(http: httpx.Client, alice: TasksApi) -> None:
    """api_requests counts every tasks API call, accepted or not; tasks_created only tasks made."""
    task_id = alice.create()["id"]
    alice.create()
    alice.request("POST", json={"programs": []})
    alice.request("GET", f"/{task_id}")
    alice.request("GET", f"/{uuid.uuid4()}")
    http.get(alice.base)
    http.get(alice.sandbox.url + "/userinfo", headers=alice.headers)
    stats = http.get(alice.sandbox.url + "/_sandbox/stats").json()
    assert (stats["api_requests"], stats["tasks_created"]) == (7, 2)


def test_task_faults_over_http(http: httpx.Client, sandbox: Sandbox) -> None:
    """POST /_sandbox/faults sets the task knobs, GET shows them, reset restores them."""
    url = sandbox.url + "/_sandbox/faults"
    reply = http.post(
        url,
        headers=sandbox.control_headers(),
        json={"task_duration": 3, "api_script": [{"status": 500}], "revoke_tokens_before": 5.5},
    )
    assert reply.status_code == 200
    shown = http.get(url).json()
    assert (shown["task_duration"], shown["api_script_pending"], shown["revoke_tokens_before"]) == (3.0, 1, 5.5)
    reset = http.post(sandbox.url + "/_sandbox/reset", headers=sandbox.control_headers()).json()["faults"]
    assert (reset["task_duration"], reset["api_script_pending"], reset["revoke_tokens_before"]) == (0.5, 0, None)


@pytest.mark.parametrize(
    "change",
    [
        {"task_duration": -1},
        {"task_duration": "2"},
        {"api_script": {"status": 500}},
        {"api_script": [{"status": 99}]},
        {"revoke_tokens_before": "now"},
        {"revoke_tokens_before": -1},
    ],
)
def test_invalid_task_faults_are_refused(http: httpx.Client, sandbox: Sandbox, change: dict[str, Any]) -> None:
    """Invalid task knobs get 400 and change nothing, over HTTP and in Python."""
    response = http.post(
        sandbox.url + "/_sandbox/faults", headers=sandbox.control_headers(), json={"latency": 1.0, **change}
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert http.get(sandbox.url + "/_sandbox/faults").json()["latency"] == 0.0
    with pytest.raises(ValueError):
        sandbox.set_faults(**change)


# -- OpenAPI --------------------------------------------------------------------


def test_openapi_describes_the_tasks_api(http: httpx.Client, sandbox: Sandbox) -> None:
    """/openapi.json has every tasks operation with real schemas, the served modes, and no control routes."""
    doc = http.get(sandbox.url + "/openapi.json").json()
    operations = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert operations == {
        ("POST", "/v2/{qpu_mode}/tasks"),
        ("GET", "/v2/{qpu_mode}/tasks"),
        ("GET", "/v2/{qpu_mode}/tasks/{task_id}"),
        ("PUT", "/v2/{qpu_mode}/tasks/{task_id}/cancel"),
        ("DELETE", "/v2/{qpu_mode}/tasks/{task_id}"),
        ("GET", "/v2/{qpu_mode}/tasks/{task_id}/results"),
    }
    schemas = doc["components"]["schemas"]
    assert {"Task", "TaskPage", "ResultsPage", "ResultsDownload", "ErrorBody", "TaskDefinitionCreate"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    assert set(schemas["Task"]["required"]) == set(Task.model_fields) - {"profile_id"}
    cancel = doc["paths"]["/v2/{qpu_mode}/tasks/{task_id}/cancel"]["put"]
    assert set(cancel["responses"]) == {"202", "400", "401", "404", "409"}
    create = doc["paths"]["/v2/{qpu_mode}/tasks"]["post"]
    assert set(create["responses"]) == {"201", "400", "401", "404"}
    (qpu_param,) = create["parameters"]
    assert qpu_param["schema"]["enum"] == [QPU, "gemini-260q"]
    results = doc["paths"]["/v2/{qpu_mode}/tasks/{task_id}/results"]["get"]["responses"]["200"]["content"]
    assert set(results) == {"application/json", "application/octet-stream"}
