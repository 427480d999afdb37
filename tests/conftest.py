"""Shared fixtures: a real sandbox on loopback, a fresh cache directory, and ways to run
the real ``qlam-hpc`` command in other processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from qlam_hpc import RetryPolicy, Settings, TokenProvider
from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig

pytest_plugins = ["sdk_conformance"]  # every sandbox answer checked against QuEra's generated models
pytest_plugins += ["leak_check"]  # no sandbox secret or token where it does not belong

QLAM_HPC = str(Path(sys.executable).with_name("qlam-hpc"))

# Retries as in production, but with delays short enough for a test suite.
FAST_RETRY = RetryPolicy(attempts=4, deadline=5.0, initial_delay=0.05, max_delay=0.2)

SECOND_CLIENT = SandboxClient("other-client", "other-secret-value-0123456789")


@pytest.fixture(scope="session")
def sandbox_server():
    config = SandboxConfig.default(client_id="test-client", scopes=("read:tasks", "write:tasks"))
    config = config.replace(clients=(*config.clients, SECOND_CLIENT))
    with Sandbox(config) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server):
    """The running sandbox, with stats and faults reset for this test."""
    sandbox_server.reset()
    yield sandbox_server
    sandbox_server.reset()


@pytest.fixture(scope="session")
def user_idp():
    """A sandbox for user context: logins approved at the first poll, which comes after 1 s."""
    config = SandboxConfig.default(
        client_id="m2m-client", device_poll_interval=1, device_code_lifetime=60, task_duration=1.0
    )
    with Sandbox(config) as server:
        yield server


@pytest.fixture
def user_sandbox(user_idp):
    """The user-context sandbox with stats reset, no overlap period (Auth0's default), 24 h tokens."""
    user_idp.reset()
    user_idp.set_faults(auto_approve=True, refresh_token_overlap=0, response_delay=0, token_lifetime=86400)
    yield user_idp
    user_idp.reset()


@pytest.fixture
def user_env(user_sandbox, cache_dir) -> dict[str, str]:
    """A clean environment for a qlam-hpc process in user context (QLAM_AUTH_FLOW=device)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_"))}
    return {**base, **user_sandbox.env(flow="device"), "QLAM_TOKEN_CACHE_DIR": str(cache_dir)}


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def env(sandbox, cache_dir) -> dict[str, str]:
    """A clean environment for a qlam-hpc process pointed at the sandbox and the test cache."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_"))}
    return {**base, **sandbox.env(), "QLAM_TOKEN_CACHE_DIR": str(cache_dir)}


@pytest.fixture
def settings(sandbox, cache_dir) -> Settings:
    return Settings.from_env(sandbox.env(), cache_dir=str(cache_dir)).with_(retry=FAST_RETRY)


@pytest.fixture
def provider(settings) -> TokenProvider:
    return TokenProvider(settings)


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> Run:
    """Run the installed ``qlam-hpc`` console script, as a batch script would."""
    done = subprocess.run(
        [QLAM_HPC, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return Run(done.returncode, done.stdout, done.stderr)


# The CLI in a fresh interpreter that reports, last on stderr, which of the modules it was
# given (argv[1], comma-separated) it imported: what a light path must not load.
_REPORTING_CLI = (
    "import sys; from qlam_hpc._cli import main; watched = sys.argv.pop(1).split(','); "
    "code = main(sys.argv[1:]); sys.stdout.flush(); "
    "print('LOADED', *[m for m in watched if m in sys.modules], file=sys.stderr); sys.exit(code)"
)


def run_cli_watching(
    modules: tuple[str, ...], *args: str, env: dict[str, str], timeout: float = 60
) -> tuple[Run, list[str]]:
    """Run the CLI as ``run_cli`` does, in-process of a fresh interpreter; and which of
    ``modules`` it imported."""
    done = subprocess.run(
        [sys.executable, "-c", _REPORTING_CLI, ",".join(modules), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    line = next(line for line in done.stderr.splitlines() if line.startswith("LOADED"))
    return Run(done.returncode, done.stdout, done.stderr), line.split()[1:]


@pytest.fixture(autouse=True)
def private_config_home(tmp_path_factory, monkeypatch) -> Path:
    """Each test's own XDG_CONFIG_HOME, inherited by its processes: the user-context store key
    (~/.config/qlam-hpc/store.key) is made there, never in the home of whoever runs the suite."""
    home = tmp_path_factory.mktemp("config-home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


# --- CI: a skipped real-service test is a failure -----------------------------------------
#
# scripts/test-services.sh starts Redis, OpenBao and Slurm and installs Lmod and zsh, but never
# fails `make test` itself: where one is missing, the tests that need it skip with the reason.
# Locally that is a skip; with CI=true (.ci/run) it fails the run, so a green CI proves that
# every real-service tier ran.

SERVICE_MARKERS = ("redis", "vault", "slurm")
# Skip reasons of tests that need the machine rather than a service: root, a tmpfs, Lmod, zsh,
# Node.js (the third-party OIDC issuer). A skip naming Slurm comes from tests that reach the
# cluster without the marker (doc blocks).
MACHINE_SKIP = re.compile(
    r"\broot\b|tmpfs|\blmod\b|module load|\bzsh\b|two Unix users|\bslurm\b|oauth2-mock-server", re.IGNORECASE
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def required_skip(item: pytest.Item, reason: str) -> str | None:
    """Why this skip hides a tier CI must run (a service marker or a machine need), else None."""
    markers = [name for name in SERVICE_MARKERS if item.get_closest_marker(name) is not None]
    if markers:
        return f"needs {'/'.join(markers)}"
    if MACHINE_SKIP.search(reason):
        return "needs root, a tmpfs, Lmod, zsh or Node.js"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not _in_ci():
        return
    reason = _skip_reason(report)
    need = required_skip(item, reason)
    if need is not None:
        report.outcome = "failed"
        report.longrepr = f"CI=true: this test {need} and was skipped, which CI does not allow: {reason}"
