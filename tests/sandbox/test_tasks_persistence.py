"""state_dir: tasks in SQLite and the signing key on disk survive a restart; the command's options."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from qlam_hpc import ConfigurationError
from qlam_hpc.sandbox import Sandbox, SandboxConfig

from .conftest import ALICE, fetch_token
from .test_tasks_api import BODY, QPU, TasksApi, body

DOWNLOAD = {"Accept": "application/octet-stream"}


def _config(state_dir: Path | None, **settings: object) -> SandboxConfig:
    return SandboxConfig(clients=(ALICE,), state_dir=state_dir, **settings)  # type: ignore[arg-type]


def _port(sandbox: Sandbox) -> int:
    """A restart must keep the port: the issuer (``iss`` of every token) is the sandbox's URL."""
    return int(sandbox.url.rsplit(":", 1)[1])


def test_tasks_and_tokens_survive_a_restart(http: httpx.Client, tmp_path: Path) -> None:
    """With a state_dir, tasks, their statuses and their results, and the tokens, outlive the sandbox."""
    state_dir = tmp_path / "state"
    with Sandbox(_config(state_dir, task_duration=0)) as first:
        token = fetch_token(http, first)
        api = TasksApi(http, first, token)
        done = api.create(body(group_id=str(uuid.uuid4())))
        first.set_faults(task_duration=3600)
        running, cancelled = api.create(), api.create()
        api.request("PUT", f"/{cancelled['id']}/cancel").raise_for_status()
        before = {t: api.get(t) for t in (done["id"], running["id"], cancelled["id"])}
        listed = api.list(sort="created_date,asc")
        results = api.request("GET", f"/{done['id']}/results", headers=DOWNLOAD).content
        page = api.request("GET", f"/{done['id']}/results", params={"shots_size": 3}).json()
    assert not first.running
    with Sandbox(_config(state_dir, port=_port(first))) as second:
        api = TasksApi(http, second, token)  # the old token: the key was kept in state_dir
        assert {t: api.get(t) for t in before} == before
        assert api.list(sort="created_date,asc") == listed
        assert api.request("GET", f"/{done['id']}/results", headers=DOWNLOAD).content == results
        assert api.request("GET", f"/{done['id']}/results", params={"shots_size": 3}).json() == page
        api.request("DELETE", f"/{running['id']}").raise_for_status()
    with Sandbox(_config(state_dir, port=_port(first))) as third:
        api = TasksApi(http, third, token)
        assert api.request("GET", f"/{running['id']}").status_code == 404
        assert api.list()["total"] == 2


def test_state_dir_keeps_the_key_private(tmp_path: Path) -> None:
    """The state dir is made 0700, the key and database files 0600, and a restart reuses the key (same kid)."""
    state_dir = tmp_path / "new" / "state"
    with Sandbox(_config(state_dir)) as first:
        kid = httpx.get(first.url + "/.well-known/jwks.json").json()["keys"][0]["kid"]
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    key_file = state_dir / "signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "tasks.sqlite3").stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert sorted(p.name for p in state_dir.iterdir()) == ["signing-key.pem", "tasks.sqlite3"]
    with Sandbox(_config(state_dir)) as second:
        assert httpx.get(second.url + "/.well-known/jwks.json").json()["keys"][0]["kid"] == kid


def test_signing_key_file_wins_over_state_dir(http: httpx.Client, tmp_path: Path, key_file: Path) -> None:
    """With signing_key_file given, that key signs and none is written to the state dir."""
    with Sandbox(_config(tmp_path, signing_key_file=key_file)) as sandbox:
        assert TasksApi(http, sandbox, fetch_token(http, sandbox)).request("GET").status_code == 200
    assert not (tmp_path / "signing-key.pem").exists()


def test_without_state_dir_tasks_are_in_memory(http: httpx.Client, key_file: Path) -> None:
    """Without a state_dir a new sandbox starts with no tasks."""
    with Sandbox(_config(None, signing_key_file=key_file)) as first:
        token = fetch_token(http, first)
        TasksApi(http, first, token).create()
    with Sandbox(_config(None, signing_key_file=key_file, port=_port(first))) as second:
        assert TasksApi(http, second, token).list()["total"] == 0


def test_creation_body_is_stored_whole(http: httpx.Client, tmp_path: Path) -> None:
    """The creation body is stored as sent, unknown fields included."""
    with Sandbox(_config(tmp_path)) as sandbox:
        api = TasksApi(http, sandbox, fetch_token(http, sandbox))
        payload = {**BODY, "priority": "high", "programs": [{"content": "x", "annotations": {"a": [1, None]}}]}
        task_id = api.create(payload)["id"]
    with sqlite3.connect(tmp_path / "tasks.sqlite3") as db:
        (stored,) = db.execute("SELECT request FROM tasks WHERE id = ?", (task_id,)).fetchone()
    assert json.loads(stored) == payload


def test_unusable_state_dir_is_a_configuration_error(tmp_path: Path) -> None:
    """A state_dir that is a file, or holds a file that is no database, is refused at start."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ConfigurationError, match=r"state dir .* is not a directory"):
        Sandbox(_config(not_a_dir)).start()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tasks.sqlite3").write_text("this is not a database" * 100)
    (broken / "tasks.sqlite3").chmod(0o600)
    with pytest.raises(ConfigurationError, match="cannot keep tasks"):
        Sandbox(_config(broken)).start()


@pytest.mark.parametrize(
    "settings",
    [{"qpu_modes": ()}, {"qpu_modes": ("Squin-256Q",)}, {"qpu_modes": "squin-256q"}, {"task_duration": -1}],
)
def test_invalid_tasks_settings(settings: dict) -> None:
    """Bad qpu_modes or task_duration are configuration errors."""
    with pytest.raises(ConfigurationError):
        SandboxConfig(clients=(ALICE,), **settings)


def test_command_keeps_tasks_in_state_dir(tmp_path: Path) -> None:
    """`qlam-hpc sandbox --state-dir` serves the tasks API and keeps its tasks and key across a restart."""
    state_dir, env_file = tmp_path / "state", tmp_path / "sandbox.env"

    def run(port: str = "0") -> tuple[subprocess.Popen, dict[str, str]]:
        env_file.unlink(missing_ok=True)
        code = "from qlam_hpc.sandbox._command import sandbox_command; sandbox_command()"
        args = ["--env-file", str(env_file), "--client-id", "job", "--state-dir", str(state_dir), "--port", port]
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args, "--task-duration", "0", "--qpu-mode", QPU, "--qpu-mode", "gemini-260q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while not env_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        env = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
        return process, {k: v.strip("'") for k, v in env.items()}

    def stop(process: subprocess.Popen) -> None:
        process.terminate()
        assert process.wait(timeout=10) == 0

    process, env = run()
    try:
        form = {
            "grant_type": "client_credentials",
            "client_id": env["QLAM_CLIENT_ID"],
            "client_secret": env["QLAM_CLIENT_SECRET"],
            "audience": env["QLAM_AUDIENCE"],
        }
        token = httpx.post(env["AUTH_BASE_URL"] + "/oauth/token", data=form).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{env['QLAM_API_URL']}/v2/gemini-260q/tasks", json=BODY, headers=headers)
        assert (created.status_code, created.json()["task_status"]) == (201, "Completed")
    finally:
        stop(process)
    process, env = run(port=env["QLAM_API_URL"].rsplit(":", 1)[1])  # a new secret; the same port, key and tasks
    try:
        again = httpx.get(f"{env['QLAM_API_URL']}/v2/gemini-260q/tasks/{created.json()['id']}", headers=headers)
        assert again.json() == created.json()
    finally:
        stop(process)
    assert os.path.exists(state_dir / "signing-key.pem")


def test_tasks_stored_without_a_group_are_in_the_default_group(http: httpx.Client, tmp_path: Path) -> None:
    """A task a sandbox stored before every task had a group shows, and filters as, its owner's default group."""
    state_dir = tmp_path / "state"
    with Sandbox(_config(state_dir, task_duration=0)) as sandbox:
        api = TasksApi(http, sandbox, fetch_token(http, sandbox))
        old, new = api.create()["id"], api.create()
        with sqlite3.connect(state_dir / "tasks.sqlite3") as db:
            db.execute("UPDATE tasks SET group_id = NULL WHERE id = ?", (old,))
        assert api.get(old)["group"] == new["group"]
        in_default = api.list(group_id=new["group"]["id"])
        assert {t["id"] for t in in_default["elements"]} == {old, new["id"]}
        assert api.list(group_id=str(uuid.uuid4()))["total"] == 0
