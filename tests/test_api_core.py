"""The tasks API's pure core: settings, request building, error mapping, retry and wait
timing, attribution, idempotency keys, result reassembly and the models. No network."""

from __future__ import annotations

import json
import random

import pytest

from qlam_hpc import (
    ApiError,
    ApiSettings,
    ApiUnreachable,
    ConfigurationError,
    InvalidTaskDefinition,
    NotFound,
    Page,
    RetryPolicy,
    Task,
    TaskCancelled,
    TaskDefinition,
    TaskFailed,
    TaskStatus,
    WaitTimeout,
)
from qlam_hpc._api import _requests as rq
from qlam_hpc._api._attribution import attribution, merge_system_metadata, with_attribution
from qlam_hpc._api._files import AtomicFile
from qlam_hpc._api._models import ResultsPage
from qlam_hpc._api._transport import ssl_context, user_agent

SETTINGS = ApiSettings.from_env({})


# --- settings ---------------------------------------------------------------------------------


def test_defaults_are_the_real_service():
    """Without variables: https://api.quera.com, squin-256q, attribution on."""
    assert (SETTINGS.base_url, SETTINGS.qpu_mode, SETTINGS.attribution) == ("https://api.quera.com", "squin-256q", True)
    assert SETTINGS.tasks_path == "/v2/squin-256q/tasks"


def test_settings_come_from_the_environment():
    """QLAM_API_URL, QLAM_QPU_MODE, QLAM_ATTRIBUTION and the timeouts are read; a trailing slash goes."""
    settings = ApiSettings.from_env(
        {
            "QLAM_API_URL": "https://api.example.com/prefix/",
            "QLAM_QPU_MODE": "qasm-64q",
            "QLAM_ATTRIBUTION": "off",
            "QLAM_API_TIMEOUT": "2m",
            "QLAM_API_CONNECT_TIMEOUT": "3",
            "QLAM_RETRY_ATTEMPTS": "2",
        }
    )
    assert settings.base_url == "https://api.example.com/prefix"
    assert (settings.qpu_mode, settings.attribution, settings.timeout, settings.connect_timeout) == (
        "qasm-64q",
        False,
        120.0,
        3.0,
    )
    assert settings.retry.attempts == 2


def test_overrides_win_and_none_is_ignored():
    """Keyword overrides (CLI flags) beat the environment; None leaves the variable's value."""
    env = {"QLAM_API_URL": "https://a.example.com", "QLAM_QPU_MODE": "squin-256q"}
    settings = ApiSettings.from_env(env, base_url="api.other.example", qpu_mode=None)
    assert (settings.base_url, settings.qpu_mode) == ("https://api.other.example", "squin-256q")


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://api.example.com", "https is required"),
        ("ftp://api.example.com", "not a host name"),
        ("https://api.example.com/?x=1", "not a host name"),
    ],
)
def test_unsafe_api_urls_are_refused(url, message):
    """Plain http off loopback (the token would travel in clear) and non-URLs are configuration errors."""
    with pytest.raises(ConfigurationError, match=message):
        ApiSettings.from_env({"QLAM_API_URL": url})


def test_plain_http_is_allowed_on_loopback():
    """http://127.0.0.1:port is fine: the sandbox and SSH tunnels live there."""
    assert ApiSettings.from_env({"QLAM_API_URL": "http://127.0.0.1:8080"}).base_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("mode", ["", "../admin", "a/b", "squin 256q"])
def test_a_qpu_mode_cannot_leave_its_path_segment(mode):
    """A QPU mode with a slash, space or dot-dot is refused before any request."""
    with pytest.raises(ConfigurationError, match="QPU mode"):
        ApiSettings.from_env({}, qpu_mode=mode or "/")


def test_ca_bundle_prefers_ssl_cert_file_then_requests_ca_bundle():
    """SSL_CERT_FILE (httpx's variable) wins; REQUESTS_CA_BUNDLE is honoured when it is alone."""
    both = ApiSettings.from_env({"SSL_CERT_FILE": "/a.pem", "REQUESTS_CA_BUNDLE": "/b.pem"})
    only_requests = ApiSettings.from_env({"REQUESTS_CA_BUNDLE": "/b.pem"})
    assert (both.ca_bundle, only_requests.ca_bundle) == ("/a.pem", "/b.pem")


def test_a_missing_ca_bundle_is_a_clear_configuration_error(tmp_path):
    """A CA bundle that does not exist names the file and both variables."""
    settings = SETTINGS.with_(ca_bundle=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match=r"missing.pem .from SSL_CERT_FILE or REQUESTS_CA_BUNDLE"):
        ssl_context(settings)


def test_a_ca_bundle_is_loaded_into_the_context():
    """A real PEM bundle becomes an SSL context that trusts it."""
    import certifi

    context = ssl_context(SETTINGS.with_(ca_bundle=certifi.where()))
    assert context.cert_store_stats()["x509_ca"] > 10


def test_user_agent_names_qlam_hpc_and_httpx():
    """User-Agent: qlam-hpc/<version> httpx/<version>."""
    import httpx

    from qlam_hpc import __version__

    assert user_agent() == f"qlam-hpc/{__version__} httpx/{httpx.__version__}"


# --- building requests ------------------------------------------------------------------------


def test_list_request_carries_paging_sort_and_repeated_group_ids():
    """group_id repeats once per group; the sort defaults to newest first."""
    request = rq.list_tasks(SETTINGS, page=2, size=50, group_ids=["g1", "g2"])
    assert (request.method, request.path) == ("GET", "/v2/squin-256q/tasks")
    assert request.params == (
        ("page", "2"),
        ("size", "50"),
        ("sort", "created_date,desc"),
        ("group_id", "g1"),
        ("group_id", "g2"),
    )


def test_task_ids_are_escaped_into_one_path_segment():
    """An id with a slash or a query cannot reach another path; '.' and '..' are refused."""
    assert rq.get_task(SETTINGS, "a/../b?x").path == "/v2/squin-256q/tasks/a%2F..%2Fb%3Fx"
    assert rq.cancel_task(SETTINGS, "t1").path == "/v2/squin-256q/tasks/t1/cancel"
    for bad in ("", " ", ".", ".."):
        with pytest.raises(ValueError):
            rq.delete_task(SETTINGS, bad)


def test_only_creation_is_not_idempotent():
    """POST create is not retried blindly; GET, PUT cancel and DELETE are."""
    assert not rq.create_task(SETTINGS, {}).idempotent
    assert all(
        r.idempotent for r in (rq.get_task(SETTINGS, "t"), rq.cancel_task(SETTINGS, "t"), rq.delete_task(SETTINGS, "t"))
    )


def test_results_requests_page_subtasks_and_shots():
    """A results page names its subtask page, sort and shot page; a download asks for octet-stream."""
    page = rq.task_results(SETTINGS, "t", page=1, size=5, shots_page=3, shots_size=20)
    assert dict(page.params) == {
        "page": "1",
        "size": "5",
        "sort": "subtask_order,asc",
        "shots_page": "3",
        "shots_size": "20",
    }
    assert dict(rq.download_results(SETTINGS, "t").headers) == {"Accept": "application/octet-stream"}


def test_raw_requests_take_paths_only():
    """`qlam-hpc api` and client.request() refuse absolute and scheme-relative URLs."""
    assert rq.raw_request("get", "/userinfo").method == "GET"
    assert not rq.raw_request("POST", "/x").idempotent
    for bad in ("https://evil.example/x", "//evil.example/x", "userinfo"):
        with pytest.raises(ValueError):
            rq.raw_request("GET", bad)


def test_a_task_definition_model_becomes_a_body_without_nulls():
    """A TaskDefinition is sent without the fields left unset."""
    definition = TaskDefinition(
        program_language="squin", programs=[{"content": "x"}], subtasks=[{"program_index": 0, "num_shots": 10}]
    )
    assert rq.task_body(definition) == {
        "program_language": "squin",
        "programs": [{"content": "x"}],
        "subtasks": [{"program_index": 0, "num_shots": 10, "arguments": {}}],
    }
    with pytest.raises(TypeError):
        rq.task_body("not a definition")


# --- reading answers --------------------------------------------------------------------------


def _error(status: int, body: object, creates: bool = False):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = rq.create_task(SETTINGS, {}) if creates else rq.get_task(SETTINGS, "t")
    return rq.error_for(status, raw, "https://api.example/x", request)


def test_a_400_on_creation_is_an_invalid_definition_with_its_messages():
    """The server's messages are in the one-line message; the class says what it is."""
    error = _error(400, {"messages": ["programs: at least 1 item", "subtasks: missing"], "code": 1300}, creates=True)
    assert type(error) is InvalidTaskDefinition and error.exit_code == 13
    assert error.code == 1300 and str(error).endswith("HTTP 400: programs: at least 1 item; subtasks: missing")


def test_status_codes_map_to_the_error_tree():
    """404 NotFound, 409 ApiError with its code, 5xx ApiUnreachable (exit 14)."""
    assert type(_error(404, {"messages": ["no such task"], "code": 1404})) is NotFound
    conflict = _error(409, {"messages": ["task is Completed"], "code": 1409})
    assert type(conflict) is ApiError and conflict.code == 1409
    assert type(_error(503, b"busy")) is ApiUnreachable and "HTTP 503: busy" in str(_error(503, b"busy"))


def test_an_html_error_page_is_named_not_dumped():
    """A proxy's HTML page becomes a short hint, not 5 kB of markup."""
    error = _error(403, b"<!DOCTYPE html><html>" + b"x" * 5000)
    assert "an HTML page" in str(error) and len(str(error)) < 200


def test_a_2xx_that_is_not_json_is_an_api_error():
    """HTML with status 200 (a captive portal, a wrong URL) is reported, not parsed."""
    with pytest.raises(ApiError, match="the answer is an HTML page"):
        rq.read_json(200, "text/html", b"<html>login</html>", "https://api.example/x")
    assert rq.read_json(204, "", b"", "u") is None


# --- retry timing -----------------------------------------------------------------------------

POLICY = RetryPolicy(attempts=4, deadline=60.0, initial_delay=0.5, max_delay=4.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idempotent_calls_are_retried_up_to_the_attempts():
    """Three retries for four attempts, with delays within the backoff ceiling."""
    retry = rq.Retry(POLICY, clock=Clock(), rng=random.Random(1))
    delays = [retry.delay(status=503, headers={}) for _ in range(4)]
    assert delays[3] is None and all(0 <= d <= 4.0 for d in delays[:3])


def test_retry_after_is_honoured_for_429_and_503():
    """The server's Retry-After replaces the backoff."""
    retry = rq.Retry(POLICY, clock=Clock())
    assert retry.delay(status=429, headers={"retry-after": "3"}) == 3.0
    assert retry.delay(status=503, headers={"retry-after": "2"}) == 2.0


def test_a_wait_beyond_the_deadline_gives_up_at_once():
    """A Retry-After longer than the deadline is not slept through."""
    retry = rq.Retry(POLICY, clock=Clock())
    assert retry.delay(status=429, headers={"retry-after": "3600"}) is None


def test_creation_is_retried_only_when_the_server_cannot_have_acted():
    """POST: retried after a connection that never opened or a 429, never after a 503 or a lost answer."""
    for status, sent, retried in ((503, True, False), (None, True, False), (None, False, True), (429, True, True)):
        retry = rq.Retry(POLICY, idempotent=False, clock=Clock())
        assert (retry.delay(status=status, headers={}, sent=sent) is not None) is retried, (status, sent)


# --- waiting ----------------------------------------------------------------------------------


def _task(task_id: str, status: str, **extra) -> Task:
    return Task(id=task_id, task_status=status, **extra)


def test_the_poll_interval_grows_while_nothing_changes_and_resets_on_a_change():
    """1, 1.5, 2.25 ... capped at the maximum; back to the start after a status change."""
    clock = Clock()
    waiter = rq.Waiter(["a"], poll_interval=1.0, max_poll_interval=3.0, clock=clock)
    waiter.update(_task("a", "Created"))
    assert waiter.next_delay() == 1.0
    waiter.update(_task("a", "Created"))
    assert [waiter.next_delay() for _ in range(4)] == [1.5, 2.25, 3.0, 3.0]
    waiter.update(_task("a", "Scheduled"))
    assert waiter.next_delay() == 1.0


def test_a_wait_times_out_with_what_it_saw():
    """WaitTimeout (exit 12) names the pending tasks and their last status, and carries them."""
    clock = Clock()
    waiter = rq.Waiter(["a", "b"], timeout=10, clock=clock)
    waiter.update(_task("a", "Completed"))
    waiter.update(_task("b", "ExecutionStarted"))
    assert waiter.pending == ["b"]
    assert waiter.next_delay() == 1.0
    clock.now += 9.5
    assert waiter.next_delay() == pytest.approx(0.5)  # never sleeps past the deadline
    clock.now += 0.5
    with pytest.raises(WaitTimeout, match=r"1 of 2 tasks still running after 10s: b \(ExecutionStarted\)") as caught:
        waiter.next_delay()
    assert caught.value.exit_code == 12 and [t.id for t in caught.value.tasks] == ["a", "b"]


def test_outcomes_raise_failed_before_cancelled():
    """Any Failed or PayloadProcessingError task: TaskFailed (10); else any Cancelled: TaskCancelled (11)."""
    rq.raise_for_outcome([_task("a", "Completed")])
    with pytest.raises(TaskCancelled) as cancelled:
        rq.raise_for_outcome([_task("a", "Completed"), _task("b", "Cancelled")])
    assert cancelled.value.exit_code == 11
    with pytest.raises(TaskFailed, match="task c ended Failed: out of qubits") as failed:
        rq.raise_for_outcome([_task("b", "Cancelled"), _task("c", "Failed", error_reasons=["out of qubits"])])
    assert type(failed.value) is TaskFailed and failed.value.exit_code == 10


# --- results reassembly -----------------------------------------------------------------------


def _shots(first: int, count: int) -> list[dict]:
    return [{"shot_index": i, "measurements": [{"bitstring": "01"}]} for i in range(first, first + count)]


def test_shot_pages_are_merged_into_whole_subtasks():
    """Shot pages 0..n of one subtask page become subtasks with every shot, without paging fields."""
    page0 = {
        "elements": [
            {"subtask_order": 0, "shots_page": 0, "shots_size": 2, "shots_total": 5, "shots": _shots(0, 2)},
            {"subtask_order": 1, "shots_page": 0, "shots_size": 2, "shots_total": 1, "shots": _shots(0, 1)},
        ]
    }
    page1 = {
        "elements": [
            {"subtask_order": 0, "shots_page": 1, "shots_size": 2, "shots_total": 5, "shots": _shots(2, 2)},
            {"subtask_order": 1, "shots_page": 1, "shots_size": 2, "shots_total": 1, "shots": []},
        ]
    }
    page2 = {
        "elements": [{"subtask_order": 0, "shots_page": 2, "shots_size": 2, "shots_total": 5, "shots": _shots(4, 1)}]
    }
    assert rq.shot_pages(page0) == 3
    merged = rq.merge_shot_pages([page0, page1, page2])
    assert [[s["shot_index"] for s in m["shots"]] for m in merged] == [[0, 1, 2, 3, 4], [0]]
    assert all("shots_page" not in m and "shots_size" not in m and "shots_total" in m for m in merged)


def test_the_last_page_is_recognised():
    """A page is last when it reaches the total or is empty."""
    assert not rq.page_is_last({"elements": [1], "page": 0, "size": 1, "total": 2})
    assert rq.page_is_last({"elements": [1], "page": 1, "size": 1, "total": 2})
    assert rq.page_is_last({"elements": [], "page": 5, "size": 1, "total": 99})


# --- attribution ------------------------------------------------------------------------------


def test_attribution_holds_only_what_is_set():
    """Slurm and PBS blocks appear only with their variables; Torque's PBS_ARRAYID counts as the index."""
    env = {"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "42", "SLURM_ARRAY_TASK_ID": "1", "SLURM_CLUSTER_NAME": "c1"}
    assert attribution(env, version="1.0", host="n1", user="ada") == {
        "qlam_hpc": {
            "version": "1.0",
            "host": "n1",
            "user": "ada",
            "slurm": {"job_id": "43", "array_job_id": "42", "array_task_id": "1", "cluster": "c1"},
        }
    }
    pbs = attribution({"PBS_JOBID": "7[3].pbs", "PBS_ARRAYID": "3"}, version="1.0", host=None, user=None)
    assert pbs == {"qlam_hpc": {"version": "1.0", "pbs": {"job_id": "7[3].pbs", "array_index": "3"}}}


OURS = {"qlam_hpc": {"version": "1.0"}}


def test_attribution_merges_into_a_json_object_and_keeps_the_users_keys():
    """The user's own JSON keys stay; ours is added under qlam_hpc."""
    merged, attributed = merge_system_metadata('{"pipeline": "vqe", "qlam_hpc": "theirs"}', OURS)
    assert attributed and json.loads(merged) == {"pipeline": "vqe", "qlam_hpc": {"version": "1.0"}}
    assert merge_system_metadata(None, OURS) == ('{"qlam_hpc":{"version":"1.0"}}', True)


def test_system_metadata_that_is_not_a_json_object_is_left_alone():
    """A JSON list or plain text is the user's: sent unchanged, without attribution."""
    assert merge_system_metadata("[1, 2]", OURS) == ("[1, 2]", False)
    assert merge_system_metadata("free text", OURS) == ("free text", False)


def test_attribution_does_not_touch_the_callers_body():
    """with_attribution returns a copy; the definition passed in is unchanged."""
    body = {"definition_id": "d"}
    copy, _ = with_attribution(body, OURS)
    assert body == {"definition_id": "d"} and json.loads(copy["system_metadata"]) == OURS


# --- idempotency keys -------------------------------------------------------------------------


def test_an_idempotency_key_goes_into_user_metadata_and_is_found_again():
    """The key is a JSON field of user_metadata; a task listing finds the task that carries it."""
    body = rq.with_idempotency_key({"user_metadata": '{"run": 7}'}, "job-42-3")
    assert json.loads(body["user_metadata"]) == {"run": 7, "idempotency_key": "job-42-3"}
    tasks = [
        Task(id="a", task_status="Created", user_metadata="plain"),
        Task(id="b", task_status="Created", user_metadata=body["user_metadata"]),
    ]
    assert rq.find_idempotency_key(tasks, "job-42-3").id == "b"
    assert rq.find_idempotency_key(tasks, "job-42-4") is None


def test_an_idempotency_key_never_overwrites_free_text_metadata():
    """user_metadata that is not a JSON object is refused rather than overwritten."""
    with pytest.raises(ValueError, match="user_metadata"):
        rq.with_idempotency_key({"user_metadata": "my notes"}, "k")
    with pytest.raises(ValueError):
        rq.with_idempotency_key({}, " ")


# --- models -----------------------------------------------------------------------------------


def test_unknown_fields_and_statuses_are_kept():
    """A newer server's fields survive a round trip; an unknown status stays a string."""
    task = Task.model_validate(
        {"id": "t", "task_status": "Teleporting", "qpu_mode": "squin-256q", "compilation_id": None}
    )
    assert task.status == "Teleporting" and not task.terminal
    assert task.to_json() == {"id": "t", "task_status": "Teleporting", "qpu_mode": "squin-256q", "compilation_id": None}


def test_known_statuses_are_enum_members():
    """task_status is a TaskStatus when the client knows it; terminal and succeeded follow the lifecycle."""
    task = Task(id="t", task_status="Completed")
    assert task.task_status is TaskStatus.COMPLETED and task.terminal and task.succeeded
    assert [s.value for s in TaskStatus if s.terminal] == ["Completed", "Cancelled", "PayloadProcessingError", "Failed"]


def test_pages_know_when_they_are_last():
    """Page[Task].last compares page, size and total."""
    page = Page[Task].model_validate(
        {"elements": [{"id": "t", "task_status": "Created"}], "page": 0, "size": 1, "total": 2}
    )
    assert not page.last and isinstance(page.elements[0], Task)
    assert ResultsPage.model_validate({"task_id": "t", "elements": [], "page": 0, "size": 10, "total": 0}).last


# --- atomic files -----------------------------------------------------------------------------


def test_an_atomic_file_replaces_the_target_only_when_complete(tmp_path):
    """Success renames the whole file into place; nothing is left beside it."""
    target = tmp_path / "r.json"
    target.write_text("old")
    with AtomicFile(target) as out:
        out.write(b"part")
        out.restart()
        out.write(b"new")
        assert target.read_text() == "old"
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_failed_atomic_file_leaves_the_old_content_and_no_temporary(tmp_path):
    """An error inside the block removes the partial file; the target keeps its old bytes."""
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), AtomicFile(target) as out:
        out.write(b"half")
        raise RuntimeError("connection lost")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
