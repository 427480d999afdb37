"""``qlam-hpc sandbox``: the foreground command, its export lines, env file, flows and signals."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from qlam_hpc.sandbox._command import sandbox_command

# The owner also gets the control token for POST /_sandbox/... (see _control.py), and the
# link that lets a browser approve device logins at /activate (see _activate.py).
ENV_NAMES = {
    "AUTH_BASE_URL",
    "QLAM_CLIENT_ID",
    "QLAM_CLIENT_SECRET",
    "QLAM_AUDIENCE",
    "QLAM_API_URL",
    "QLAM_SANDBOX_CONTROL_TOKEN",
    "QLAM_SANDBOX_APPROVE_URL",
}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_ENV_NAMES = {
    "AUTH_BASE_URL",
    "QLAM_CLIENT_ID",
    "QLAM_AUDIENCE",
    "QLAM_API_URL",
    "QLAM_AUTH_FLOW",
    "QLAM_SANDBOX_CONTROL_TOKEN",
    "QLAM_SANDBOX_APPROVE_URL",
}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])
def test_non_loopback_host_is_refused(host: str) -> None:
    """A non-loopback --host is a usage error that says why, and nothing is served."""
    result = CliRunner().invoke(sandbox_command, ["--host", host])
    assert result.exit_code == 2
    assert "not a loopback address" in result.output


def test_clients_file_and_client_id_conflict(tmp_path: Path) -> None:
    """--clients-file and --client-id together are a usage error."""
    path = tmp_path / "clients.json"
    path.write_text('{"clients": [{"client_id": "a", "client_secret": "s"}]}')
    result = CliRunner().invoke(sandbox_command, ["--clients-file", str(path), "--client-id", "b"])
    assert result.exit_code == 2
    assert "not both" in result.output


def test_bad_clients_file_exits_3(tmp_path: Path) -> None:
    """An unusable clients file is a configuration error: exit code 3, message names the file."""
    path = tmp_path / "clients.json"
    path.write_text('{"clients": []}')
    result = CliRunner().invoke(sandbox_command, ["--clients-file", str(path)])
    assert result.exit_code == 3
    assert str(path) in result.output


def test_help_describes_every_option() -> None:
    """--help documents every option."""
    result = CliRunner().invoke(sandbox_command, ["--help"])
    assert result.exit_code == 0
    for option in sandbox_command.params:
        for flag in option.opts:
            assert flag in result.output


def _parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = shlex.split(line)[1].partition("=")
            env[name] = value
    return env


CODE = "from qlam_hpc.sandbox._command import sandbox_command; sandbox_command()"


@contextlib.contextmanager
def _running(*args: str) -> Iterator[subprocess.Popen]:
    """``qlam-hpc sandbox`` in a child process; killed at the end if it is still running."""
    process = subprocess.Popen(
        [sys.executable, "-c", CODE, "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _wait_for(env_file: Path, process: subprocess.Popen) -> dict[str, str]:
    deadline = time.monotonic() + 20
    while not env_file.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sandbox did not write its env file"
        time.sleep(0.02)
    return _parse_exports(env_file.read_text())


def _fetch(env: dict[str, str]) -> httpx.Response:
    return httpx.post(
        env["AUTH_BASE_URL"] + "/oauth/token",
        timeout=60,
        data={
            "grant_type": "client_credentials",
            "client_id": env["QLAM_CLIENT_ID"],
            "client_secret": env["QLAM_CLIENT_SECRET"],
            "audience": env["QLAM_AUDIENCE"],
        },
    )


def _fetch_ignoring_errors(env: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        _fetch(env)


def test_command_prints_exports_serves_and_exits_0_on_sigterm() -> None:
    """Without --env-file the exports go to stdout; the sandbox serves them tokens and exits 0 on SIGTERM."""
    with _running("--client-id", "job-array") as process:
        assert process.stdout is not None
        env = _parse_exports("".join(process.stdout.readline() for _ in ENV_NAMES))
        assert set(env) == ENV_NAMES
        assert env["QLAM_CLIENT_ID"] == "job-array"
        assert _fetch(env).status_code == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert env["QLAM_CLIENT_SECRET"] not in stderr and env["QLAM_SANDBOX_CONTROL_TOKEN"] not in stderr
    assert f"qlam-hpc sandbox serving {env['AUTH_BASE_URL']}" in stderr
    assert "open $QLAM_SANDBOX_APPROVE_URL (printed above)" in stderr
    token = env["QLAM_SANDBOX_CONTROL_TOKEN"]
    assert env["QLAM_SANDBOX_APPROVE_URL"] == f"{env['AUTH_BASE_URL']}/activate?token={token}"


def test_env_file_gets_the_exports_and_stdout_stays_empty(tmp_path: Path) -> None:
    """With --env-file the exports (with the secret, the control token and the approve link) go to the
    0600 file only; stderr, which may be a log others read, says where, and holds neither."""
    env_file = tmp_path / "sandbox.env"
    with _running("--env-file", str(env_file)) as process:
        env = _wait_for(env_file, process)
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert set(env) == ENV_NAMES
        assert _fetch(env).status_code == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert stdout == ""
    assert env["QLAM_CLIENT_SECRET"] not in stderr and env["QLAM_SANDBOX_CONTROL_TOKEN"] not in stderr
    serving, approving = stderr.splitlines()
    assert env["AUTH_BASE_URL"] in serving and str(env_file) in serving
    assert approving == f"to approve device logins in a browser, open $QLAM_SANDBOX_APPROVE_URL (in {env_file}) once"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_env_file_is_removed_when_the_sandbox_exits(tmp_path: Path, sig: signal.Signals) -> None:
    """The env file goes away with the sandbox, so a later run cannot source a dead port."""
    env_file = tmp_path / "sandbox.env"
    with _running("--env-file", str(env_file)) as process:
        _wait_for(env_file, process)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert not env_file.exists()


def test_env_file_replaced_by_someone_else_is_left_alone(tmp_path: Path) -> None:
    """On exit the sandbox removes only the file it wrote, not one another run put there since."""
    env_file = tmp_path / "sandbox.env"
    with _running("--env-file", str(env_file)) as process:
        _wait_for(env_file, process)
        (tmp_path / "other.env").write_text("export AUTH_BASE_URL=http://127.0.0.1:1\n")
        os.replace(tmp_path / "other.env", env_file)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    assert env_file.read_text() == "export AUTH_BASE_URL=http://127.0.0.1:1\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_sandbox_within_a_second_even_mid_request(tmp_path: Path, sig: signal.Signals) -> None:
    """A token request sleeping an injected latency does not hold up the exit, nor print a traceback."""
    env_file = tmp_path / "sandbox.env"
    with _running("--env-file", str(env_file), "--latency", "30") as process:
        env = _wait_for(env_file, process)
        threading.Thread(target=_fetch_ignoring_errors, args=(env,), daemon=True).start()
        deadline = time.monotonic() + 10
        while httpx.get(env["AUTH_BASE_URL"] + "/_sandbox/stats").json()["token_requests"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=15)
        took = time.monotonic() - started
    assert process.returncode == 0, stderr
    assert took < 10, f"took {took:.2f}s to exit"  # not the 30 s of the request in flight
    assert "Traceback" not in stderr


def test_device_flow_exports_a_public_client_and_auto_approves() -> None:
    """--flow device exports the device client and QLAM_AUTH_FLOW, no secret; --auto-approve logs in at once."""
    with _running("--flow", "device", "--auto-approve", "--refresh-token-overlap", "2") as process:
        assert process.stdout is not None
        names = DEVICE_ENV_NAMES
        env = _parse_exports("".join(process.stdout.readline() for _ in names))
        assert set(env) == names
        assert (env["QLAM_CLIENT_ID"], env["QLAM_AUTH_FLOW"]) == ("qlam-sandbox-device", "device")
        base, client = env["AUTH_BASE_URL"], {"client_id": env["QLAM_CLIENT_ID"]}
        start = httpx.post(
            base + "/oauth/device/code", data={**client, "audience": env["QLAM_AUDIENCE"], "scope": "offline_access"}
        ).json()
        grant = {**client, "grant_type": DEVICE_GRANT, "device_code": start["device_code"]}
        tokens = httpx.post(base + "/oauth/token", data=grant)
        assert tokens.status_code == 200 and "refresh_token" in tokens.json()
        assert httpx.get(base + "/_sandbox/faults").json()["refresh_token_overlap"] == 2.0
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    assert process.returncode == 0


def test_device_login_is_approved_in_the_owners_browser_only(tmp_path: Path) -> None:
    """Without --auto-approve, a browser that has not opened $QLAM_SANDBOX_APPROVE_URL gets 403 and the
    login stays pending; once it has (the owner's, who has the env file), its Approve logs the device in."""
    env_file = tmp_path / "sandbox.env"
    with _running("--flow", "device", "--env-file", str(env_file)) as process:
        env = _wait_for(env_file, process)
        base, client = env["AUTH_BASE_URL"], {"client_id": env["QLAM_CLIENT_ID"]}
        start = httpx.post(
            base + "/oauth/device/code", data={**client, "audience": env["QLAM_AUDIENCE"], "scope": "offline_access"}
        ).json()
        grant = {**client, "grant_type": DEVICE_GRANT, "device_code": start["device_code"]}
        form = {"user_code": start["user_code"], "action": "approve"}
        with httpx.Client(follow_redirects=True) as stranger:
            assert stranger.get(start["verification_uri_complete"]).status_code == 200  # viewable
            assert stranger.post(base + "/activate", data=form).status_code == 403
        control = {"Authorization": f"Bearer {env['QLAM_SANDBOX_CONTROL_TOKEN']}"}
        pending = httpx.get(base + "/_sandbox/device/pending", headers=control).json()["user_codes"]
        assert pending == [start["user_code"]]
        with httpx.Client(follow_redirects=True) as owner:
            assert owner.get(env["QLAM_SANDBOX_APPROVE_URL"]).status_code == 200
            assert owner.post(base + "/activate", data=form).status_code == 200
        assert "refresh_token" in httpx.post(base + "/oauth/token", data=grant).json()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr


def test_refresh_token_lifetime_takes_a_duration() -> None:
    """--refresh-token-lifetime takes 15m, 2h, 1d like --token-lifetime, and refuses nonsense."""
    result = CliRunner().invoke(sandbox_command, ["--refresh-token-lifetime", "soon"])
    assert result.exit_code == 2
    assert "--refresh-token-lifetime" in result.output


def test_env_file_is_private_even_if_it_existed(tmp_path: Path) -> None:
    """An existing world-readable env file is replaced by a 0600 one."""
    from qlam_hpc.sandbox._command import _write_private

    path = tmp_path / "old.env"
    path.write_text("stale")
    os.chmod(path, 0o644)
    _write_private(path, ["export A=1"])
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == "export A=1\n"
