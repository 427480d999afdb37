"""``qlam-hpc tasks ...`` and ``qlam-hpc api`` as batch scripts run them: the installed command
in its own process, against the sandbox on loopback, with real tokens."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import QLAM_HPC, Run, run_cli
from crowd import Crowd

FAST_RETRIES = {"QLAM_RETRY_ATTEMPTS": "4", "QLAM_RETRY_DEADLINE": "5s"}
DEFINITION = {
    "program_language": "squin",
    "programs": [{"content": "circuit ok"}],
    "subtasks": [{"program_index": 0, "num_shots": 120}, {"program_index": 0, "num_shots": 5, "arguments": {"x": 1}}],
}


def one_error_line(stderr: str) -> str:
    """The error line; also asserts there is no traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("qlam-hpc: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def run_with_stdin(*args: str, env: dict[str, str], stdin_text: str) -> Run:
    done = subprocess.run([QLAM_HPC, *args], env=env, input=stdin_text, capture_output=True, text=True, timeout=60)
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def job(tmp_path) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(DEFINITION))
    return path


def write_job(tmp_path: Path, **changes) -> Path:
    path = tmp_path / f"job-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({**DEFINITION, **changes}))
    return path


@pytest.fixture
def quick(sandbox):
    sandbox.set_faults(task_duration=0.2)


def submit(env, job: Path) -> str:
    result = run_cli("tasks", "submit", "-q", str(job), env=env)
    assert result.code == 0, result.err
    return result.out.strip()


# --- submit and wait --------------------------------------------------------------------------


def test_submit_quiet_prints_just_the_id_for_command_substitution(env, job, sandbox):
    """`ID=$(qlam-hpc tasks submit -q job.json)`: one line, the id; get --json shows the task."""
    task_id = submit(env, job)
    uuid.UUID(task_id)
    shown = run_cli("tasks", "get", task_id, "--json", env=env)
    assert shown.code == 0 and json.loads(shown.out)["id"] == task_id
    assert sandbox.stats()["tasks_created"] == 1


def test_submit_and_wait_in_a_batch_log_prints_one_line_per_change(env, job, quick):
    """Not on a terminal: 'submitted', then one line per status change, then the final task; exit 0."""
    result = run_cli("tasks", "submit", str(job), "--wait", "--poll", "0.05", env=env)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].endswith(" submitted") and " task " in lines[0]
    changes = [line for line in lines if line.startswith("20") and " task " in line]
    assert changes[-1].endswith(" Completed") and len(changes) == len(set(changes))
    assert any(line.startswith("status") and "Completed" in line for line in lines)


def test_submit_wait_json_prints_only_the_final_task(env, job, quick):
    """--wait --json: stdout is one JSON document, the completed task; stdin works as FILE '-'."""
    result = run_with_stdin(
        "tasks", "submit", "-", "--wait", "--json", "--poll", "0.05", env=env, stdin_text=job.read_text()
    )
    assert result.code == 0, result.err
    task = json.loads(result.out)
    assert task["task_status"] == "Completed"
    assert "qlam_hpc" in json.loads(task["system_metadata"])


def test_a_failed_task_exits_10_with_its_reason(env, tmp_path, quick):
    """A task that fails: exit 10 and one error line naming the task and the reason."""
    job = write_job(tmp_path, programs=[{"content": "FAIL now"}])
    result = run_cli("tasks", "submit", str(job), "--wait", "--poll", "0.05", env=env)
    assert result.code == 10
    assert "ended Failed: execution failed" in one_error_line(result.err)


def test_an_invalid_definition_is_one_line_and_exit_13(env, tmp_path, sandbox):
    """The API's 400 messages on one error line, exit 13, nothing on stdout, no task created."""
    job = write_job(tmp_path, programs=[])
    result = run_cli("tasks", "submit", str(job), env=env)
    assert result.code == 13 and result.out == ""
    line = one_error_line(result.err)
    assert "HTTP 400" in line and "programs" in line
    assert sandbox.stats()["tasks_created"] == 0


def test_a_file_that_is_not_json_is_a_usage_error(env, tmp_path, sandbox):
    """Not JSON: exit 2 before any request."""
    bad = tmp_path / "job.json"
    bad.write_text("program_language: squin")
    result = run_cli("tasks", "submit", str(bad), env=env)
    assert result.code == 2 and "is not JSON" in result.err
    assert sandbox.stats()["api_requests"] == 0


def test_wait_times_out_with_exit_12_and_the_last_states(env, job, sandbox):
    """--timeout ran out: exit 12, and --json still prints where each task was."""
    sandbox.set_faults(task_duration=30)
    task_id = submit(env, job)
    result = run_cli("tasks", "wait", task_id, "--timeout", "0.5", "--json", env=env)
    assert result.code == 12
    assert "1 of 1 task still running after 0.5s" in one_error_line(result.err)
    assert json.loads(result.out)[0]["id"] == task_id


def test_wait_for_several_tasks(env, job, quick):
    """Several ids: exit 0 once all completed; --json prints them in order."""
    ids = [submit(env, job) for _ in range(2)]
    result = run_cli("tasks", "wait", *ids, "--poll", "0.05", "--json", env=env)
    assert result.code == 0, result.err
    assert [t["id"] for t in json.loads(result.out)] == ids


# --- cancel, delete ---------------------------------------------------------------------------


def test_cancel_then_wait_exits_11_and_a_second_cancel_exits_13(env, job, sandbox):
    """Cancelling a running task; waiting for it exits 11; cancelling it again is a 409, exit 13."""
    sandbox.set_faults(task_duration=30)
    task_id = submit(env, job)
    cancelled = run_cli("tasks", "cancel", task_id, env=env)
    assert cancelled.code == 0 and cancelled.out.strip() == f"task {task_id}: Cancelled"
    waited = run_cli("tasks", "wait", task_id, env=env)
    assert waited.code == 11 and "ended Cancelled" in one_error_line(waited.err)
    again = run_cli("tasks", "cancel", task_id, env=env)
    assert again.code == 13 and "HTTP 409" in one_error_line(again.err)


def test_delete_then_get_is_not_found(env, job):
    """After delete, get exits 13 with the 404 message."""
    task_id = submit(env, job)
    deleted = run_cli("tasks", "delete", task_id, "--json", env=env)
    assert deleted.code == 0 and json.loads(deleted.out) == {"id": task_id, "deleted": True}
    gone = run_cli("tasks", "get", task_id, env=env)
    assert gone.code == 13 and "HTTP 404" in one_error_line(gone.err)


# --- list -------------------------------------------------------------------------------------


def test_list_all_walks_every_page(env, tmp_path):
    """--all --size 2 over five tasks of a group: all five, newest first; one page holds two."""
    group = str(uuid.uuid4())
    job = write_job(tmp_path, group_id=group)
    ids = [submit(env, job) for _ in range(5)]
    everything = run_cli("tasks", "list", "--all", "--size", "2", "--group-id", group, "--json", env=env)
    assert everything.code == 0, everything.err
    data = json.loads(everything.out)
    assert [t["id"] for t in data["elements"]] == ids[::-1] and data["total"] == 5
    page = json.loads(
        run_cli("tasks", "list", "--page", "1", "--size", "2", "--group-id", group, "--json", env=env).out
    )
    assert (page["page"], page["size"], page["total"]) == (1, 2, 5)
    assert [t["id"] for t in page["elements"]] == ids[::-1][2:4]


def test_list_prints_a_table(env, job):
    """Without --json: a header row, the task's id and status, and which page it is."""
    task_id = submit(env, job)
    result = run_cli("tasks", "list", "--size", "1", env=env)
    assert result.code == 0
    assert result.out.splitlines()[0].split()[:2] == ["ID", "STATUS"]
    assert task_id in result.out and "page 1 of" in result.out


# --- results ----------------------------------------------------------------------------------


def test_results_json_pages_equal_the_streamed_download(env, job, quick, tmp_path):
    """The subtasks from the JSON pages (small pages of shots) equal the -o download's."""
    task_id = submit(env, job)
    assert run_cli("tasks", "wait", task_id, "--poll", "0.05", env=env).code == 0
    paged = run_cli("tasks", "results", task_id, "--size", "1", "--shots-size", "50", env=env)
    assert paged.code == 0, paged.err
    target = tmp_path / "out" / "results.json"
    target.parent.mkdir()
    written = run_cli("tasks", "results", task_id, "-o", str(target), "--json", env=env)
    assert written.code == 0, written.err
    assert json.loads(written.out) == {"task_id": task_id, "path": str(target), "bytes": target.stat().st_size}
    assert json.loads(paged.out) == json.loads(target.read_text())
    assert [len(s["shots"]) for s in json.loads(paged.out)["subtasks"]] == [120, 5]
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


def test_results_of_a_running_task_are_an_error_and_no_file(env, job, sandbox, tmp_path):
    """Not completed yet: exit 13 (HTTP 409), and -o leaves no file behind."""
    sandbox.set_faults(task_duration=30)
    task_id = submit(env, job)
    target = tmp_path / "out" / "results.json"
    target.parent.mkdir()
    result = run_cli("tasks", "results", task_id, "-o", str(target), env=env)
    assert result.code == 13 and "HTTP 409" in one_error_line(result.err)
    assert list(target.parent.iterdir()) == []


# --- retries and failures -----------------------------------------------------------------------


def test_503_and_429_are_retried(env, sandbox):
    """A 503 then a 429 (Retry-After: 1): the command still succeeds, with warnings on stderr."""
    busy = {"body": "busy", "content_type": "text/plain"}
    sandbox.set_faults(api_script=[{"status": 503, **busy}, {"status": 429, **busy, "headers": {"Retry-After": "1"}}])
    started = time.monotonic()
    result = run_cli("tasks", "list", "--json", env={**env, **FAST_RETRIES})
    assert result.code == 0, result.err
    assert time.monotonic() - started >= 1.0
    assert result.err.count("retrying in") == 2 and sandbox.stats()["api_scripted_responses"] == 2


def test_an_unreachable_api_exits_14(env):
    """Nothing listening at QLAM_API_URL: exit 14 after the retries, one line."""
    result = run_cli("tasks", "list", env={**env, **FAST_RETRIES, "QLAM_API_URL": "http://127.0.0.1:9"})
    assert result.code == 14
    assert "is unreachable after 4 attempts" in one_error_line(result.err)


def test_plain_http_to_a_remote_api_is_refused(env):
    """QLAM_API_URL over plain http off loopback: exit 3, before any token leaves."""
    result = run_cli("tasks", "list", env={**env, "QLAM_API_URL": "http://api.example.com"})
    assert result.code == 3 and "https is required" in one_error_line(result.err)


# --- qlam-hpc api -------------------------------------------------------------------------------


def test_api_prints_the_body(env, job):
    """GET with {qpu_mode} in the path prints the API's JSON; POST --data @FILE creates a task."""
    created = run_cli("api", "POST", "/v2/squin-256q/tasks", "--data", f"@{job}", env=env)
    assert created.code == 0, created.err
    task_id = json.loads(created.out)["id"]
    listed = run_cli("api", "GET", "/v2/{qpu_mode}/tasks?size=1", env=env)
    assert listed.code == 0 and json.loads(listed.out)["elements"][0]["id"] == task_id


def test_api_4xx_prints_the_body_and_exits_13(env):
    """A 404: the error body on stdout (for jq), one error line, exit 13."""
    result = run_cli("api", "GET", "/v2/squin-256q/tasks/nope", env=env)
    assert result.code == 13
    assert json.loads(result.out)["code"] == 1404
    assert "HTTP 404" in one_error_line(result.err)


def test_api_unreachable_exits_14(env):
    """Nothing listening: exit 14."""
    result = run_cli("api", "GET", "/userinfo", env={**env, **FAST_RETRIES, "QLAM_API_URL": "http://127.0.0.1:9"})
    assert result.code == 14


@pytest.mark.parametrize(
    "args, message",
    [
        (["GET", "https://elsewhere.example/x"], "the token is sent to that API only"),
        (["GET", "/userinfo", "-H", "Authorization: Bearer x"], "adds the Authorization header itself"),
        (["GET", "/userinfo", "-H", "no colon"], "is not 'Name: value'"),
    ],
)
def test_api_refuses_what_would_leak_or_break_the_token(env, sandbox, args, message):
    """Another host, a hand-made Authorization header, a malformed header: usage errors, no request."""
    result = run_cli("api", *args, env=env)
    assert result.code == 2 and message in result.err
    assert sandbox.stats()["api_requests"] == 0


# --- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["tasks"], *[["tasks", c] for c in ("submit", "list", "get", "wait", "cancel", "delete", "results")], ["api"]],
)
def test_every_command_has_help_with_examples_and_exit_codes(env, command):
    """--help shows examples (qlam-hpc ...) and the exit codes."""
    result = run_cli(*command, "--help", env=env)
    assert result.code == 0
    assert "qlam-hpc " in result.out and "Exit codes" in result.out


# --- tokens -------------------------------------------------------------------------------------


def test_no_token_appears_in_any_output_even_at_debug(env, job, quick, tmp_path):
    """With -vv, no command prints the access token on stdout or stderr."""
    token = run_cli("token", env=env).out.strip()
    task_id = submit(env, job)
    outputs = []
    for args in (
        ["tasks", "submit", str(job), "--wait", "--poll", "0.05"],
        ["tasks", "list", "--all"],
        ["tasks", "get", task_id, "--json"],
        ["tasks", "wait", task_id],
        ["tasks", "results", task_id],
        ["tasks", "results", task_id, "-o", str(tmp_path / "r.json")],
        ["tasks", "get", "nope"],
        ["api", "GET", "/userinfo", "-i"],
    ):
        result = run_cli("-vv", *args, env=env)
        outputs.append(result.out + result.err)
    assert any("HTTP Request:" in text for text in outputs)  # -vv did log the requests
    assert len(token) > 100 and not any(token in text or token[-40:] in text for text in outputs)


@pytest.mark.slow
@pytest.mark.timeout(900)  # 50 interpreters starting on a small, busy machine take a while
def test_fifty_processes_meeting_a_revoked_token_cause_one_token_request(env, sandbox, tmp_path):
    """50 `tasks list` processes start together with a revoked token in the cache: all succeed,
    and the identity provider sees exactly one more token request."""
    token = run_cli("token", env=env).out.strip()
    assert sandbox.stats()["token_requests"] == 1
    time.sleep(0.01)
    sandbox.set_faults(revoke_tokens_before=time.time())
    crowd = Crowd(tmp_path, 50, ["tasks", "list", "--json"], env)
    try:
        crowd.wait_ready()
        crowd.release()
        results = crowd.finish()
    finally:
        crowd.kill_all()
    assert [r.code for r in results] == [0] * 50, results[0].err
    assert all("elements" in json.loads(r.out) for r in results)
    stats = sandbox.stats()
    assert stats["token_requests"] == 2
    # A process that meets the revoked token makes two calls (401, retry); one that starts
    # after the refresh reads the new token from the cache and makes one.
    assert 50 < stats["api_requests"] <= 100
    assert not any(token in r.out + r.err for r in results)
    assert not any(token in " ".join(map(str, p.args)) for p in crowd.processes)


def test_wait_on_a_terminal_shows_a_live_display_and_the_final_table(env, job, quick):
    """On a terminal (a pty), wait draws its live display and ends with the table; exit 0."""
    import os
    import pty

    task_id = submit(env, job)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [QLAM_HPC, "tasks", "wait", task_id, "--poll", "0.05"],
        env={**env, "COLUMNS": "160"},
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert task_id in screen and "Completed" in screen and "\x1b[" in screen  # drawn with terminal codes
