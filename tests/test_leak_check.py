"""The leak check itself (tests/leak_check.py): run on a small generated suite that plants
leaks, it fails exactly the tests that leak, says where and what, and never shows the secret."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# What the generated suites share: a sandbox (with the suite's EXTRA_CLIENTS besides its own
# client), a clean environment for qlam-hpc, and the secrets they plant written to $PLANTED.
SUITE_HEAD = r'''
import logging, os, subprocess, sys
import pytest
from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig

QLAM_HPC = os.path.join(os.path.dirname(sys.executable), "qlam-hpc")
EXTRA_CLIENTS = ()


@pytest.fixture(scope="module")
def idp():
    config = SandboxConfig.default(client_id="planted-client")
    config = config.replace(clients=(*config.clients, *EXTRA_CLIENTS))
    with Sandbox(config) as server:
        yield server


@pytest.fixture
def env(idp, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_"))}
    return {**base, **idp.env(), "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache")}


def token(env):
    done = subprocess.run([QLAM_HPC, "token"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    plant(done.stdout.strip())
    return done.stdout.strip()


def plant(secret):
    """What was planted, for the test that runs this suite to look for in its output."""
    with open(os.environ["PLANTED"], "a") as file:
        file.write(secret + "\n")
'''


def run_suite(
    pytester, monkeypatch, *, planted: Path | None = None, timeout: int = 180, **files: str
) -> tuple[pytest.RunResult, str]:
    """Run the generated test ``files`` in a child pytest with the leak check, the secrets they
    plant written to ``planted`` (if given): its result, and its output (stdout and stderr)."""
    if planted is not None:
        monkeypatch.setenv("PLANTED", str(planted))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    pytester.makepyfile(**files)
    result = pytester.runpytest_subprocess("-p", "leak_check", "-p", "no:cacheprovider", "-q", timeout=timeout)
    return result, result.stdout.str() + result.stderr.str()


def check_reports(
    pytester, monkeypatch, tmp_path: Path, suite: str, reports: dict[str, str | None]
) -> tuple[str, list[str]]:
    """Run ``suite`` in a child pytest with the leak check: every test of ``reports`` passes; then
    each one whose value says what it leaked where fails at teardown with that report, and those
    with None have no error; the summary counts the leaks; no secret the suite planted is shown.
    The child's output, and the secrets the suite planted."""
    planted = tmp_path / "planted.txt"
    result, output = run_suite(pytester, monkeypatch, planted=planted, test_suite=suite)
    leaks = {test: leak for test, leak in reports.items() if leak}
    result.assert_outcomes(passed=len(reports), errors=len(leaks))
    for test, leak in leaks.items():
        assert f"secret leak in test_suite.py::{test}:\n  {leak}" in output, output
    for test in reports.keys() - leaks.keys():
        assert f"ERROR test_suite.py::{test}" not in output
    assert f"; {len(leaks)} leaks found" in output and "leak check: " in output
    secrets = planted.read_text().split()
    assert not [s for s in secrets if s in output]
    return output, secrets


# What the leak check says of each test of the suite below: what it leaked where, or None.
PLANTING_REPORTS = {
    "test_prints_the_client_secret": "a client secret in the stdout call section",
    "test_logs_a_token": "an access token in the log call section",
    "test_leaves_a_token_in_a_file": "an access token in the file notes.txt under tmp_path",
    "test_raises_with_a_token": "an access token in the text of a ValueError caught by pytest.raises",
    "test_a_process_prints_the_secret": "a client secret in the stdout of process #1 (python",
    "test_token_command_output_a_cache_and_an_expected_file_are_fine": None,
    "test_a_settings_file_named_by_the_marker_is_fine": None,
}

PLANTING_SUITE = (
    SUITE_HEAD
    + r"""

def test_prints_the_client_secret(idp):
    plant(idp.client.client_secret)
    print("the secret is", idp.client.client_secret)


def test_logs_a_token(env):
    logging.getLogger("planted").warning("got %s", token(env))


def test_leaves_a_token_in_a_file(env, tmp_path):
    (tmp_path / "notes.txt").write_text(token(env))


def test_raises_with_a_token(env):
    with pytest.raises(ValueError):
        raise ValueError("refused " + token(env))


def test_a_process_prints_the_secret(env):
    plant(env["QLAM_CLIENT_SECRET"])
    code = "import os; print(os.environ['QLAM_CLIENT_SECRET'])"
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)


def test_token_command_output_a_cache_and_an_expected_file_are_fine(env, tmp_path, leak_check):
    token(env)
    secret = tmp_path / "secret"
    secret.write_text(env["QLAM_CLIENT_SECRET"])
    leak_check.expect(secret)


@pytest.mark.leak_check_expect("settings.env")
def test_a_settings_file_named_by_the_marker_is_fine(env, tmp_path):
    (tmp_path / "settings.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
"""
)


def test_planted_leaks_fail_their_tests_naming_place_and_kind_never_the_secret(pytester, tmp_path, monkeypatch):
    """Five planted leaks: five teardown errors that say which kind of secret and where; the two
    tests that hold secrets legitimately pass; the summary counts five leaks; no secret shown."""
    output, secrets = check_reports(pytester, monkeypatch, tmp_path, PLANTING_SUITE, PLANTING_REPORTS)
    assert "the secret is [client secret]" in output  # captured output is shown redacted
    assert len(secrets) >= 5


@pytest.mark.skipif(sys.platform != "linux", reason="the summary line is checked on one platform")
def test_the_summary_line_counts_secrets_places_and_leaks(pytester, monkeypatch):
    """A suite without leaks ends with 'N secrets known (...); M places checked; 0 leaks found'."""
    quiet = """
        from qlam_hpc.sandbox import Sandbox

        def test_a_sandbox_starts():
            with Sandbox() as server:
                assert server.client.client_secret
        """
    result, _ = run_suite(pytester, monkeypatch, timeout=120, test_quiet=quiet)
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines(
        [r"leak check: \d+ secrets known \(client secret \d+, signing key 2\); \d+ places checked; 0 leaks found"]
    )


# What the leak check says of each test of the suite below: what it leaked where, or None.
CHILDREN_REPORTS = {
    "test_a_token_on_a_command_line": "an access token in the argv of process (true --token)",
    "test_a_token_in_a_childs_environment": "an access token in the environment of process (true)",
    "test_a_short_secret_in_a_message": "a client secret in the stdout call section",
    "test_a_short_secret_inside_a_longer_word_is_no_leak": None,
    "test_a_client_secret_in_the_environment_and_after_env_is_fine": None,
}

CHILDREN_SUITE = (
    SUITE_HEAD
    + r"""
EXTRA_CLIENTS = (SandboxClient("bob", "bob-secret"),)


def test_a_token_on_a_command_line(env):
    subprocess.run(["true", "--token", token(env)], check=True)


def test_a_token_in_a_childs_environment(env):
    subprocess.run(["true"], env={**env, "ACCESS_TOKEN": token(env)}, check=True)


def test_a_short_secret_in_a_message(env):
    print("refused: bob-secret")


def test_a_short_secret_inside_a_longer_word_is_no_leak(env):
    print("bob-secret-rotated and xbob-secret")


def test_a_client_secret_in_the_environment_and_after_env_is_fine(env):
    secret = env["QLAM_CLIENT_SECRET"]
    subprocess.run(["env", "-i", f"QLAM_CLIENT_SECRET={secret}", "true"], env=env, check=True)
"""
)


def test_argv_environment_and_short_secrets_of_children_are_checked(pytester, tmp_path, monkeypatch):
    """A token in a child's argv (``ps`` shows it to everyone) or environment, and a short
    secret (``bob-secret``) as a word, are leaks; a short secret inside a longer word, and a
    client secret in the environment (also after ``env`` in argv), are not."""
    output, _ = check_reports(pytester, monkeypatch, tmp_path, CHILDREN_SUITE, CHILDREN_REPORTS)
    assert "refused: [client secret]" in output
