"""QlamClient and AsyncQlamClient against the sandbox on loopback: real HTTP, real tokens.

Each test runs twice, once per client: the async one is driven through an anyio
blocking portal, so one test body pins the behaviour both must share.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
import uuid

import httpx
import pytest
from anyio.from_thread import start_blocking_portal

from conftest import FAST_RETRY
from qlam_hpc import (
    ApiError,
    ApiSettings,
    ApiUnreachable,
    AsyncQlamClient,
    InvalidTaskDefinition,
    NotFound,
    QlamClient,
    Task,
    TaskCancelled,
    TaskDefinition,
    TaskFailed,
    TaskStatus,
    WaitTimeout,
)
from qlam_hpc._api._models import Results

DEFINITION = {
    "program_language": "squin",
    "programs": [{"content": "circuit ok"}],
    "subtasks": [{"program_index": 0, "num_shots": 7, "arguments": {"theta": 0.5}}],
}
FAST = {"poll_interval": 0.05, "max_poll_interval": 0.2}


def definition(content: str = "circuit ok", shots: tuple[int, ...] = (7,)) -> dict:
    return {
        "program_language": "squin",
        "programs": [{"content": content}],
        "subtasks": [{"program_index": 0, "num_shots": n, "arguments": {"i": i}} for i, n in enumerate(shots)],
    }


class Blocking:
    """An AsyncQlamClient called like a QlamClient: coroutines and async iterators run in a portal."""

    def __init__(self, client: AsyncQlamClient, portal) -> None:
        self._client = client
        self._portal = portal

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if inspect.isasyncgenfunction(attribute):
            return lambda *a, **k: iter(self._portal.call(_collect, attribute(*a, **k)))
        if inspect.iscoroutinefunction(attribute):
            return lambda *a, **k: self._portal.call(functools.partial(attribute, *a, **k))
        return attribute

    def close(self) -> None:
        self._portal.call(self._client.aclose)


async def _collect(iterator) -> list:
    return [item async for item in iterator]


@pytest.fixture
def api_settings(sandbox) -> ApiSettings:
    return ApiSettings.from_env(sandbox.env()).with_(retry=FAST_RETRY)


@pytest.fixture(params=["sync", "async"])
def make_client(request, api_settings, provider):
    """A factory of clients of one kind, closed after the test."""
    made = []
    with start_blocking_portal() as portal:

        def make(settings: ApiSettings | None = None, **options):
            settings = settings or api_settings
            if request.param == "sync":
                client = QlamClient(settings, provider=provider, **options)
            else:
                client = Blocking(AsyncQlamClient(settings, provider=provider, **options), portal)
            made.append(client)
            return client

        yield make
        for client in made:
            client.close()


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def quick(sandbox):
    """Tasks that end within a fifth of a second."""
    sandbox.set_faults(task_duration=0.2)


# --- create, get, wait ------------------------------------------------------------------------


def test_a_task_runs_to_completion(client, sandbox, quick):
    """create → get → wait gives a Completed task with typed fields and the server's extra fields."""
    task = client.create_task(DEFINITION)
    assert isinstance(task, Task) and task.task_status is TaskStatus.CREATED
    assert client.get_task(task.id).id == task.id
    done = client.wait(task, **FAST)
    assert done.task_status is TaskStatus.COMPLETED and done.succeeded
    assert done.model_extra["total_shots"] == 7
    assert sandbox.stats()["tasks_created"] == 1


def test_a_task_definition_model_is_accepted(client, quick):
    """A TaskDefinition built in Python is submitted like a dict."""
    model = TaskDefinition.model_validate(DEFINITION)
    assert client.wait(client.create_task(model), **FAST).succeeded


def test_every_task_carries_attribution(make_client, monkeypatch):
    """system_metadata holds the qlam_hpc block with the Slurm job, merged into the user's JSON."""
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_JOB_ID", "4250")
    monkeypatch.delenv("PBS_JOBID", raising=False)
    client = make_client()
    task = client.create_task({**DEFINITION, "system_metadata": '{"pipeline": "vqe"}'})
    metadata = json.loads(task.model_extra["system_metadata"])
    assert metadata["pipeline"] == "vqe"
    block = metadata["qlam_hpc"]
    assert block["slurm"] == {"job_id": "4250", "array_job_id": "4242", "array_task_id": "7"}
    assert {"version", "host"} <= set(block) and "pbs" not in block


def test_attribution_can_be_turned_off(make_client, api_settings):
    """QLAM_ATTRIBUTION=off: system_metadata is what the user sent, or nothing."""
    client = make_client(api_settings.with_(attribution=False))
    assert client.create_task(DEFINITION).model_extra["system_metadata"] is None


def test_an_invalid_definition_says_what_is_wrong(client, sandbox):
    """HTTP 400 becomes InvalidTaskDefinition (exit 13) carrying the server's messages."""
    with pytest.raises(InvalidTaskDefinition) as caught:
        client.create_task({"program_language": "squin", "programs": []})
    error = caught.value
    assert error.exit_code == 13 and error.status == 400 and error.code == 1300
    assert any("programs" in m for m in error.messages) and any("subtasks" in m for m in error.messages)
    assert sandbox.stats()["tasks_created"] == 0


def test_a_failed_task_raises_task_failed_with_its_reasons(client, quick):
    """wait() raises TaskFailed (exit 10) with error_reasons; check=False returns the task instead."""
    task = client.create_task(definition("FAIL here"))
    with pytest.raises(TaskFailed) as caught:
        client.wait(task, **FAST)
    assert type(caught.value) is TaskFailed and caught.value.exit_code == 10
    assert caught.value.reasons and "FAIL" in caught.value.reasons[0]
    assert client.wait(task, check=False, **FAST).status == "Failed"


def test_wait_gives_up_at_its_timeout(client, sandbox):
    """A task still running at the timeout: WaitTimeout (exit 12) after about that long."""
    sandbox.set_faults(task_duration=30)
    task = client.create_task(DEFINITION)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"1 of 1 task still running after 0.3s"):
        client.wait(task, timeout=0.3, **FAST)
    assert 0.3 <= time.monotonic() - started < 10  # the task runs 30 s


def test_wait_follows_several_tasks_and_reports_changes(client, quick):
    """Several ids: the final tasks in the order given; on_change sees each status change once."""
    tasks = [client.create_task(DEFINITION) for _ in range(3)]
    seen: list[tuple[str, str]] = []
    done = client.wait([t.id for t in tasks], on_change=lambda t: seen.append((t.id, t.status)), **FAST)
    assert [t.id for t in done] == [t.id for t in tasks] and all(t.succeeded for t in done)
    assert len(seen) == len(set(seen)) and {(t.id, "Completed") for t in tasks} <= set(seen)


# --- list -------------------------------------------------------------------------------------


def test_listing_pages_and_the_iterator_covers_every_page(client):
    """Five tasks in pages of two: three pages, newest first; the iterator yields all five once."""
    group = [str(uuid.uuid4())]  # the sandbox keeps tasks across tests: list only this test's
    created = [client.create_task({**DEFINITION, "group_id": group[0]}).id for _ in range(5)]
    first = client.list_tasks(size=2, group_ids=group)
    assert (first.page, first.size, first.total, len(first.elements)) == (0, 2, 5, 2) and not first.last
    last = client.list_tasks(page=2, size=2, group_ids=group)
    assert len(last.elements) == 1 and last.last
    assert [t.id for t in client.iter_tasks(size=2, group_ids=group)] == created[::-1]
    oldest_first = [t.id for t in client.iter_tasks(size=2, sort="created_date,asc", group_ids=group)]
    assert oldest_first == created


def test_listing_filters_by_group(client):
    """group_ids keeps the tasks of those groups only."""
    group = str(uuid.uuid4())
    mine = client.create_task({**DEFINITION, "group_id": group})
    client.create_task(DEFINITION)
    listed = client.list_tasks(group_ids=[group])
    assert [t.id for t in listed.elements] == [mine.id] and listed.elements[0].group.id == group


# --- cancel, delete ---------------------------------------------------------------------------


def test_cancel_ends_a_running_task_and_a_second_cancel_conflicts(client, sandbox):
    """A running task becomes Cancelled; wait raises TaskCancelled (11); cancelling again is a 409."""
    sandbox.set_faults(task_duration=30)
    task = client.create_task(DEFINITION)
    assert client.cancel_task(task.id).status == "Cancelled"
    with pytest.raises(TaskCancelled) as cancelled:
        client.wait(task, **FAST)
    assert cancelled.value.exit_code == 11
    with pytest.raises(ApiError) as conflict:
        client.cancel_task(task)
    assert (conflict.value.status, conflict.value.code) == (409, 1409)


def test_delete_removes_the_task(client, sandbox):
    """After delete, get and delete answer NotFound (404); a running task is deleted too."""
    sandbox.set_faults(task_duration=30)
    task = client.create_task(DEFINITION)
    client.delete_task(task)
    with pytest.raises(NotFound):
        client.get_task(task.id)
    with pytest.raises(NotFound) as again:
        client.delete_task(task.id)
    assert again.value.exit_code == 13 and again.value.code == 1404


# --- results ----------------------------------------------------------------------------------


def test_results_pages_reassemble_into_the_download(client, quick, tmp_path):
    """Subtask pages times shot pages, merged, equal the streamed download; a page has the documented shape."""
    task = client.wait(client.create_task(definition(shots=(250, 3, 101))), **FAST)
    page = client.results(task, size=2, shots_size=100)
    assert (page.total, len(page.elements), page.elements[0].shots_total, len(page.elements[0].shots)) == (
        3,
        2,
        250,
        100,
    )
    assembled = list(client.iter_results(task, size=2, shots_size=40))
    assert [len(s.shots) for s in assembled] == [250, 3, 101]
    assert [s.shot_index for s in assembled[0].shots] == list(range(250))
    out = tmp_path / "out"
    out.mkdir()
    path = client.download_results(task.id, out / "results.json")
    downloaded = Results.model_validate_json(path.read_bytes())
    assert downloaded == Results(task_id=task.id, subtasks=assembled)
    assert [p.name for p in out.iterdir()] == ["results.json"]


def test_results_of_an_unfinished_task_conflict_and_write_no_file(client, sandbox, tmp_path):
    """Results before completion are a 409 ApiError; the download leaves no file, not even a partial one."""
    sandbox.set_faults(task_duration=30)
    task = client.create_task(DEFINITION)
    with pytest.raises(ApiError) as caught:
        client.results(task)
    assert caught.value.status == 409
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ApiError):
        client.download_results(task, out / "results.json")
    assert list(out.iterdir()) == []


# --- retries ----------------------------------------------------------------------------------


def _answers(*statuses: int, **headers: str) -> list[dict]:
    return [{"status": s, "body": '{"messages": ["busy"], "code": 1000}', "headers": dict(headers)} for s in statuses]


def test_busy_answers_are_retried_for_reads(client, sandbox):
    """503, 502 and 504 before the real answer: the GET succeeds after four requests."""
    sandbox.set_faults(api_script=_answers(503, 502, 504))
    assert client.list_tasks().page == 0
    assert sandbox.stats()["api_scripted_responses"] == 3 and sandbox.stats()["api_requests"] == 4


def test_429_is_retried_after_retry_after(client, sandbox):
    """A 429 with Retry-After: 1 is waited out, then the answer comes."""
    sandbox.set_faults(api_script=_answers(429, **{"Retry-After": "1"}))
    started = time.monotonic()
    client.list_tasks()
    assert time.monotonic() - started >= 1.0


def test_retries_are_bounded(client, sandbox):
    """503s beyond the attempts: ApiUnreachable (exit 14) after exactly that many requests."""
    sandbox.set_faults(api_script=_answers(*[503] * 10))
    with pytest.raises(ApiUnreachable, match="HTTP 503: busy") as caught:
        client.get_task("00000000-0000-0000-0000-000000000000")
    assert caught.value.exit_code == 14
    assert sandbox.stats()["api_requests"] == FAST_RETRY.attempts


def test_creation_is_not_retried_after_a_server_error(client, sandbox):
    """POST answered 503: one request, ApiUnreachable; the server might have acted, so no blind retry."""
    sandbox.set_faults(api_script=_answers(503))
    with pytest.raises(ApiUnreachable):
        client.create_task(DEFINITION)
    assert sandbox.stats()["api_requests"] == 1


def test_creation_is_retried_after_429(client, sandbox):
    """A 429 means the server refused before acting: the POST is sent again, one task results."""
    sandbox.set_faults(api_script=_answers(429, **{"Retry-After": "0"}))
    client.create_task(DEFINITION)
    assert sandbox.stats()["tasks_created"] == 1


def test_an_unreachable_api_is_exit_14(make_client, api_settings):
    """Nothing listening: ApiUnreachable after the retries, naming the URL."""
    client = make_client(api_settings.with_(base_url="http://127.0.0.1:9"))
    with pytest.raises(ApiUnreachable, match=r"127.0.0.1:9/v2/squin-256q/tasks is unreachable after 4 attempts"):
        client.list_tasks()


# --- creation with an idempotency key ---------------------------------------------------------


class LoseFirstAnswer(httpx.HTTPTransport):
    """Forwards requests, but the first POST's answer is lost after the server acted on it."""

    lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and not self.lost:
            self.lost += 1
            response.read()
            response.close()
            raise httpx.ReadError("connection reset by peer")
        return response


class AsyncLoseFirstAnswer(httpx.AsyncHTTPTransport):
    lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST" and not self.lost:
            self.lost += 1
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("connection reset by peer")
        return response


def _losing_transport(make_client):
    is_async = make_client().__class__ is Blocking
    return AsyncLoseFirstAnswer() if is_async else LoseFirstAnswer()


def test_a_lost_answer_without_a_key_is_not_retried(make_client, sandbox):
    """The server created the task but the answer was lost: ApiUnreachable, and no duplicate."""
    client = make_client(transport=_losing_transport(make_client))
    with pytest.raises(ApiUnreachable, match="ReadError"):
        client.create_task(DEFINITION)
    assert sandbox.stats()["tasks_created"] == 1


def test_an_idempotency_key_finds_the_task_a_lost_answer_created(make_client, sandbox):
    """With a key, the lost answer's task is found by listing: returned, not created twice."""
    client = make_client(transport=_losing_transport(make_client))
    task = client.create_task(DEFINITION, idempotency_key="job-4242-7")
    assert sandbox.stats()["tasks_created"] == 1
    assert json.loads(task.model_extra["user_metadata"]) == {"idempotency_key": "job-4242-7"}


# --- authentication ---------------------------------------------------------------------------


def test_a_revoked_token_is_refreshed_once(client, sandbox, provider):
    """401 for a revoked token: one new token through the cache, the call succeeds; later calls reuse it."""
    client.list_tasks()
    assert sandbox.stats()["token_requests"] == 1
    sandbox.set_faults(revoke_tokens_before=time.time())
    client.list_tasks()
    client.list_tasks()
    assert sandbox.stats()["token_requests"] == 2


def test_a_second_401_is_an_error_not_a_loop(client, sandbox):
    """Two 401s in a row: one refresh, one retry, then ApiError 401 — two API requests in all."""
    client.list_tasks()
    before = sandbox.stats()
    sandbox.set_faults(api_script=[{"status": 401, "body": '{"messages": ["revoked"], "code": 1000}'}] * 2)
    with pytest.raises(ApiError) as caught:
        client.list_tasks()
    assert caught.value.status == 401
    after = sandbox.stats()
    assert after["api_requests"] - before["api_requests"] == 2
    assert after["token_requests"] - before["token_requests"] == 1


def test_userinfo_names_the_client(client, sandbox):
    """GET /userinfo answers the M2M client's profile."""
    assert client.userinfo()["client_id"] == sandbox.client.client_id


def test_every_request_says_who_it_is(client):
    """The raw request() helper returns the response; User-Agent names qlam-hpc and httpx."""
    response = client.request("GET", "/v2/squin-256q/tasks", params={"size": "1"})
    assert response.status_code == 200
    assert response.request.headers["user-agent"].startswith("qlam-hpc/")
    assert " httpx/" in response.request.headers["user-agent"]


# --- proxies ----------------------------------------------------------------------------------


def test_proxies_come_from_the_environment(make_client, provider, monkeypatch):
    """HTTP_PROXY is used (a dead proxy makes the API unreachable) and NO_PROXY exempts a host."""
    provider.get_token()  # the identity provider is reached through the proxy settings too
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(ApiUnreachable):
        make_client().list_tasks()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert make_client().list_tasks().page == 0


# --- downloads that break off -----------------------------------------------------------------


class _Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that delivers a few bytes, then loses the connection."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __iter__(self):
        for chunk in self.inner:
            yield chunk[:10]
            raise httpx.ReadError("connection lost mid-stream")

    async def __aiter__(self):
        async for chunk in self.inner:
            yield chunk[:10]
            raise httpx.ReadError("connection lost mid-stream")

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()


class BreakDownloads(httpx.HTTPTransport):
    def __init__(self, breaks: int) -> None:
        super().__init__()
        self.breaks = breaks

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.headers.get("accept") != "application/octet-stream" or not self.breaks:
            return response
        self.breaks -= 1
        return httpx.Response(response.status_code, headers=response.headers, stream=_Broken(response.stream))


class AsyncBreakDownloads(httpx.AsyncHTTPTransport):
    def __init__(self, breaks: int) -> None:
        super().__init__()
        self.breaks = breaks

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.headers.get("accept") != "application/octet-stream" or not self.breaks:
            return response
        self.breaks -= 1
        return httpx.Response(response.status_code, headers=response.headers, stream=_Broken(response.stream))


def _breaking(make_client, breaks: int):
    is_async = make_client().__class__ is Blocking
    return make_client(transport=(AsyncBreakDownloads if is_async else BreakDownloads)(breaks))


def test_a_download_cut_off_midway_starts_again(make_client, client, quick, tmp_path):
    """One broken-off stream: the download restarts and the file is whole, as an unbroken one."""
    task = client.wait(client.create_task(definition(shots=(300,))), **FAST)
    whole = client.download_results(task, tmp_path / "whole.json").read_bytes()
    again = _breaking(make_client, 1).download_results(task, tmp_path / "again.json")
    assert again.read_bytes() == whole


def test_a_download_that_keeps_breaking_leaves_the_old_file(make_client, client, quick, tmp_path):
    """Every attempt cut off: ApiUnreachable, the old file untouched and no partial file beside it."""
    task = client.wait(client.create_task(DEFINITION), **FAST)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("previous run")
    with pytest.raises(ApiUnreachable, match="connection lost mid-stream"):
        _breaking(make_client, 100).download_results(task, out / "results.json")
    assert [p.name for p in out.iterdir()] == ["results.json"]
    assert (out / "results.json").read_text() == "previous run"
