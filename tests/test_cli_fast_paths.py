"""The light paths of ``qlam-hpc api`` and ``qlam-hpc tasks get|list|submit``: with a warm
cache they are served without click, httpx, pydantic or rich, and say what the full CLI
says — same output, same errors, same exit codes, same retries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import run_cli

HEAVY = ("httpx", "click", "pydantic", "rich")
DEFINITION = {
    "program_language": "squin",
    "programs": [{"content": "c"}],
    "subtasks": [{"program_index": 0, "num_shots": 3}],
}


def loaded(args: list[str], env: dict[str, str]) -> tuple[int, str, list[str]]:
    """Run the CLI's entry point in a fresh interpreter; the heavy modules it imported."""
    code = (
        "import sys\nfrom qlam_hpc._cli import main\ncode = main(sys.argv[1:])\n"
        f"print('LOADED', *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\nsys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)
    line = next(line for line in done.stderr.splitlines() if line.startswith("LOADED"))
    return done.returncode, done.stdout, line.split()[1:]


@pytest.fixture
def warm(env):
    assert run_cli("token", env=env).code == 0
    return env


@pytest.fixture
def job(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps(DEFINITION))
    return path


def test_a_warm_cache_serves_api_and_tasks_without_heavy_imports(warm, job):
    code, out, heavy = loaded(["tasks", "submit", str(job), "-q"], warm)
    assert code == 0 and heavy == []
    task_id = out.strip()
    for args in (
        ["api", "GET", f"/v2/squin-256q/tasks/{task_id}"],
        ["api", "GET", "/v2/{qpu_mode}/tasks?size=1", "-i"],
        ["tasks", "get", task_id, "--json"],
        ["tasks", "list", "--size", "5", "--json"],
        ["tasks", "--qpu-mode", "squin-256q", "list", "--page=0", "--json"],
    ):
        code, out, heavy = loaded(args, warm)
        assert code == 0 and heavy == [], args
        assert json.loads(out)


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "api", "GET", "/userinfo"],  # a root option
        ["api", "GET", "/userinfo", "--help"],
        ["tasks", "list"],  # a table
        ["tasks", "list", "--all", "--json"],
        ["tasks", "get", "x", "--json", "--bogus"],
    ],
)
def test_anything_else_goes_to_the_full_cli(warm, args):
    _, _, heavy = loaded(args, warm)
    assert "click" in heavy


def test_a_cold_cache_loads_the_token_fetching_stack_only_and_a_proxy_the_full_cli(env, sandbox):
    """Alone on a cold cache, the process fetches through the provider (which imports httpx)
    and still calls the API on the light path: the full CLI (``_app``, pydantic) is never
    loaded. A proxy takes the full CLI."""
    code = (
        "import sys\nfrom qlam_hpc._cli import main\ncode = main(sys.argv[1:])\n"
        "print('LOADED', *[m for m in ('httpx', 'pydantic', 'qlam_hpc._cli._app') if m in sys.modules], "
        "file=sys.stderr)\nsys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "tasks", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "elements" in json.loads(done.stdout)
    assert done.stderr.split() == ["LOADED", "httpx"]
    assert sandbox.stats()["token_requests"] == 1
    _, _, heavy = loaded(["tasks", "list", "--json"], {**env, "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert "httpx" in heavy


def test_both_paths_print_the_same(warm, job, sandbox):
    """`-v` takes the full CLI: the same JSON, the same error line and exit code."""
    sandbox.set_faults(task_duration=3600)  # the task does not change between the two calls
    task_id = run_cli("tasks", "submit", "-q", str(job), env=warm).out.strip()
    for args in (["tasks", "get", task_id, "--json"], ["api", "GET", f"/v2/squin-256q/tasks/{task_id}"]):
        light, full = run_cli(*args, env=warm), run_cli("-v", *args, env=warm)
        assert (light.code, light.out) == (full.code, full.out) == (0, full.out)
    for args in (["tasks", "get", "nope", "--json"], ["api", "GET", "/v2/squin-256q/tasks/nope"]):
        light, full = run_cli(*args, env=warm), run_cli("-v", *args, env=warm)
        assert light.code == full.code == 13
        assert (light.out, light.err) == (full.out, full.err)


def test_a_refused_token_is_replaced_once_through_the_cache(warm, sandbox):
    """A revoked token: one 401, one new token through the provider, the call repeated."""
    import time

    time.sleep(0.01)
    sandbox.set_faults(revoke_tokens_before=time.time())
    before = sandbox.stats()
    code, out, _heavy = loaded(["tasks", "list", "--json"], warm)
    after = sandbox.stats()
    assert code == 0 and "elements" in json.loads(out)
    assert after["token_requests"] - before["token_requests"] == 1
    assert after["api_requests"] - before["api_requests"] == 2


def test_busy_answers_are_retried_with_the_library_policy(warm, sandbox):
    busy = {"body": "busy", "content_type": "text/plain"}
    sandbox.set_faults(api_script=[{"status": 503, **busy}, {"status": 429, **busy, "headers": {"Retry-After": "0"}}])
    result = run_cli("api", "GET", "/v2/squin-256q/tasks", env={**warm, "QLAM_RETRY_ATTEMPTS": "4"})
    assert result.code == 0 and result.err.count("retrying in") == 2
