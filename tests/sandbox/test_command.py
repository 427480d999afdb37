"""``qlam-hpc sandbox``: the foreground command, its export lines, env file and signals."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from qlam_hpc.sandbox._command import sandbox_command

ENV_NAMES = {"AUTH_BASE_URL", "QLAM_CLIENT_ID", "QLAM_CLIENT_SECRET", "QLAM_AUDIENCE", "QLAM_API_URL"}


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


def test_command_prints_exports_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """The command writes a 0600 env file, prints the same exports, serves tokens, and exits 0 on SIGTERM."""
    env_file = tmp_path / "sandbox.env"
    code = "from qlam_hpc.sandbox._command import sandbox_command; sandbox_command()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--env-file", str(env_file), "--client-id", "job-array"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not env_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the sandbox did not write its env file"
            time.sleep(0.05)
        assert env_file.stat().st_mode & 0o777 == 0o600
        env = _parse_exports(env_file.read_text())
        assert set(env) == ENV_NAMES
        assert env["QLAM_CLIENT_ID"] == "job-array"
        response = httpx.post(
            env["AUTH_BASE_URL"] + "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": env["QLAM_CLIENT_ID"],
                "client_secret": env["QLAM_CLIENT_SECRET"],
                "audience": env["QLAM_AUDIENCE"],
            },
        )
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert _parse_exports(stdout) == env
    assert env["QLAM_CLIENT_SECRET"] not in stderr
    assert "qlam-hpc sandbox serving" in stderr


def test_env_file_is_private_even_if_it_existed(tmp_path: Path) -> None:
    """An existing world-readable env file is replaced by a 0600 one."""
    from qlam_hpc.sandbox._command import _write_private

    path = tmp_path / "old.env"
    path.write_text("stale")
    os.chmod(path, 0o644)
    _write_private(path, ["export A=1"])
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == "export A=1\n"
