"""With CI=true a skipped real-service test fails the run (the reason in the message); locally
it stays a skip. Each case runs pytest in a subprocess on a tiny planted test file that uses
this suite's own conftest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).parent

PLANTED = """
import pytest

@pytest.mark.redis
def test_needs_redis():
    pytest.skip("redis-server is not installed and could not be installed: planted")

def test_needs_root():
    pytest.skip("needs root to chown to another user")

@pytest.mark.skipif(True, reason="cannot mount a tmpfs here: planted")
def test_needs_tmpfs():
    pass

def test_needs_a_third_party_issuer():
    pytest.skip("oauth2-mock-server (npm) cannot be installed here: Node.js or the npm registry is missing")

def test_ordinary_skip():
    pytest.skip("only on macOS")

@pytest.mark.xfail(reason="a known bug, not a missing service")
@pytest.mark.redis
def test_known_bug():
    assert False

def test_passes():
    pass
"""


def _run(tmp_path: Path, ci: str | None, *select: str) -> subprocess.CompletedProcess[str]:
    # The suite's conftest with the plugins it loads, and the planted file next to it.
    for name in ("conftest.py", "sdk_conformance.py", "leak_check.py"):
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_planted.py").write_text(textwrap.dedent(PLANTED))
    # A clean environment: what earlier tests of the suite left in os.environ is no business of the child's.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_CONFIG_HOME", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    if ci is not None:
        env["CI"] = ci
    try:
        return _pytest(tmp_path, env, select)
    finally:
        # The suite's own conftest holds the test secrets it plants on purpose: not left behind
        # for the leak check of this test's directory.
        for name in ("conftest.py", "sdk_conformance.py", "leak_check.py"):
            (tmp_path / name).unlink(missing_ok=True)
        shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)


def _pytest(tmp_path: Path, env: dict[str, str], select: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rfs",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            "-o",
            "markers=redis",
            *select,
            str(tmp_path / "test_planted.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_ci_a_missing_service_is_a_skip_with_its_reason(tmp_path):
    done = _run(tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 5 skipped, 1 xfailed" in done.stdout
    assert "redis-server is not installed and could not be installed: planted" in done.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_skipped_service_or_machine_test_fails_the_run_with_the_reason(tmp_path, ci):
    done = _run(tmp_path, ci)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    # A skipif is decided at setup, so that one is reported as an error: a failed run all the same.
    assert "3 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in out
    assert "CI=true: this test needs redis and was skipped" in out
    assert "redis-server is not installed and could not be installed: planted" in out
    assert "needs root to chown to another user" in out
    assert "cannot mount a tmpfs here: planted" in out
    assert "needs root, a tmpfs, Lmod, zsh or Node.js and was skipped" in out
    assert "Node.js or the npm registry is missing" in out


def test_in_ci_a_plain_skip_and_an_xfail_still_pass(tmp_path):
    done = _run(tmp_path, "true", "-k", "ordinary or known_bug or passes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped, 4 deselected, 1 xfailed" in done.stdout


@pytest.mark.vault
def test_openbao_start_failure_with_the_binary_present_is_an_error_not_a_skip(tmp_path):
    """Exit 3 (skip) is kept for a missing bao binary; a server that will not start (here: its
    port is taken) exits 1 with the server's own error line."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                "bash",
                str(HERE.parent / "scripts" / "openbao-server.sh"),
                "start",
                "--port",
                str(port),
                "--dir",
                str(tmp_path / "bao"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 1, done.stderr
    assert "address already in use" in done.stderr
    assert "root-" not in done.stderr  # the dev root token is in the same log: never echoed
