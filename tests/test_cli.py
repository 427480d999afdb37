"""``qlam-hpc token`` and ``qlam-hpc auth`` as a batch script runs them: the installed
command in its own process, against the sandbox on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import QLAM_HPC, run_cli

FAST_RETRIES = {"QLAM_RETRY_ATTEMPTS": "4", "QLAM_RETRY_DEADLINE": "3s"}


def one_error_line(stderr: str) -> str:
    """The error line; also asserts there is no traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("qlam-hpc: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


# --- printing a token ---------------------------------------------------------------------


def test_token_prints_just_the_token_for_command_substitution(env, sandbox):
    """`TOKEN=$(qlam-hpc token)` gets one line holding a JWT and nothing on stderr."""
    result = run_cli("token", env=env)
    assert result.code == 0 and result.err == ""
    assert len(result.out.splitlines()) == 1 and result.out.count(".") == 2


def test_second_call_comes_from_the_shared_cache(env, sandbox):
    """A second process reuses the first one's token: one request in all."""
    first = json.loads(run_cli("token", "--json", env=env).out)
    second = json.loads(run_cli("token", "--json", env=env).out)
    assert (first["source"], second["source"]) == ("fetched", "cache")
    assert first["access_token"] == second["access_token"]
    assert 86000 < second["expires_in"] <= 86400
    assert sandbox.stats()["token_requests"] == 1


def test_header_mode_prints_an_authorization_line_for_curl(env):
    """--header prints 'Authorization: Bearer <token>' for `curl -H @-`."""
    out = run_cli("token", "--header", env=env).out
    assert out.startswith("Authorization: Bearer ey") and out.endswith("\n")


def test_min_ttl_longer_than_the_token_lifetime_is_a_clear_configuration_error(env, sandbox):
    """--min-ttl beyond what the IdP issues exits 3, and a second try costs no new request."""
    sandbox.set_faults(token_lifetime=3600)
    first = run_cli("token", "--min-ttl", "2h", env=env)
    second = run_cli("token", "--min-ttl", "2h", env=env)
    assert (first.code, second.code) == (3, 3)
    assert "--min-ttl 2h is longer than the tokens the identity provider issues (1h)" in one_error_line(second.err)
    assert sandbox.stats()["token_requests"] == 1


def test_a_bad_min_ttl_is_a_usage_error(env):
    """--min-ttl soon is rejected by the option parser with exit 2."""
    result = run_cli("token", "--min-ttl", "soon", env=env)
    assert result.code == 2 and "invalid duration" in result.err


# --- failures: one line, a documented exit code -------------------------------------------


def _script(*items: dict) -> list[dict]:
    return [{"content_type": "application/json", "headers": {}, **item} for item in items]


FAILURES = {
    "wrong secret": (
        {"QLAM_CLIENT_SECRET": "not-the-secret"},
        None,
        4,
        "refused the token request (invalid_client",
    ),
    "unknown client": ({"QLAM_CLIENT_ID": "nobody-knows-me"}, None, 4, "(invalid_client"),
    "identity provider down": ({"AUTH_BASE_URL": "http://127.0.0.1:9"}, None, 5, "is unreachable"),
    "rate limited for an hour": (
        {},
        _script({"status": 429, "body": '{"error":"too_many_requests"}', "headers": {"Retry-After": "3600"}}),
        6,
        "rate limiting token requests (HTTP 429); the limit resets in 1h",
    ),
    "malformed JSON": ({}, _script({"status": 200, "body": '{"access_token": "abc'}), 7, "with malformed JSON"),
    "missing expires_in": (
        {},
        _script({"status": 200, "body": '{"access_token": "abc", "token_type": "Bearer"}'}),
        7,
        "answered without expires_in",
    ),
    "an HTML page": (
        {},
        _script({"status": 200, "body": "<!DOCTYPE html><html>Login</html>", "content_type": "text/html"}),
        7,
        "with an HTML page, not a token",
    ),
    "server errors outlast the retries": (
        {},
        _script(*[{"status": 503, "body": "busy"}] * 6),
        5,
        "answered HTTP 503",
    ),
    "no client id": ({"QLAM_CLIENT_ID": ""}, None, 3, "QLAM_CLIENT_ID is not set"),
    "plain http to a remote host": ({"AUTH_BASE_URL": "http://idp.example.com"}, None, 3, "https is required"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_each_failure_gives_its_message_and_exit_code(case, env, sandbox):
    """Every failure is one 'qlam-hpc: error:' line with its documented exit code, never a traceback."""
    changes, script, code, message = FAILURES[case]
    if script:
        sandbox.set_faults(script=script)
    result = run_cli("token", env={**env, **FAST_RETRIES, **changes})
    assert result.code == code, result.err
    assert message in one_error_line(result.err)
    assert result.out == ""


def test_server_errors_then_success_are_retried(env, sandbox):
    """Two 500s, then a token: exit 0 after 3 requests; the retries are said with -v only."""
    sandbox.set_faults(script=_script({"status": 500, "body": "oops"}, {"status": 500, "body": "oops"}))
    result = run_cli("-v", "token", env={**env, **FAST_RETRIES})
    assert result.code == 0
    assert sandbox.stats()["token_requests"] == 3
    assert result.err.count("retrying in") == 2
    sandbox.set_faults(script=_script({"status": 500, "body": "oops"}))
    quiet = run_cli("token", env={**env, **FAST_RETRIES, "QLAM_TOKEN_CACHE": "off"})
    assert quiet.code == 0 and "retrying in" not in quiet.err


def test_429_with_retry_after_is_honoured(env, sandbox):
    """A 429 with Retry-After: 1 is waited out, then the token comes."""
    sandbox.set_faults(script=_script({"status": 429, "body": "{}", "headers": {"Retry-After": "1"}}))
    started = time.monotonic()
    result = run_cli("token", env={**env, **FAST_RETRIES})
    assert result.code == 0
    assert time.monotonic() - started >= 1.0
    assert sandbox.stats()["token_requests"] == 2


# --- the cache on disk ----------------------------------------------------------------------


def _entry(cache_dir: Path) -> Path:
    return next(cache_dir.glob("*.entry"))


def test_a_corrupt_entry_is_replaced_with_a_warning(env, cache_dir, sandbox):
    """A corrupt cache entry: a warning, a fresh token, and a valid entry afterwards."""
    run_cli("token", env=env)
    _entry(cache_dir).write_bytes(b"\x00garbage{")
    result = run_cli("token", env=env)
    assert result.code == 0 and result.out.count(".") == 2
    assert "is corrupt" in result.err and "discarded" in result.err
    assert f"access_token={result.out.strip()}" in _entry(cache_dir).read_text()


@pytest.mark.leak_check_expect("elsewhere.json", kinds=["access token"])  # the entry, moved out of the cache on purpose
def test_a_symlinked_entry_is_refused(env, cache_dir, tmp_path):
    """A cache entry that is a symlink is refused (exit 8); its target is left alone."""
    run_cli("token", env=env)
    entry = _entry(cache_dir)
    target = tmp_path / "elsewhere.json"
    target.write_bytes(entry.read_bytes())
    entry.unlink()
    entry.symlink_to(target)
    result = run_cli("token", env=env)
    assert result.code == 8
    assert "is a symbolic link" in one_error_line(result.err)
    assert target.read_text().startswith("qlam-hpc token cache v1\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_a_cache_directory_owned_by_another_user_is_refused(env, cache_dir):
    """A cache directory owned by another user is refused with exit 8, before any token request."""
    cache_dir.mkdir(mode=0o700)
    os.chown(cache_dir, 65534, 65534)
    result = run_cli("token", env=env)
    assert result.code == 8
    assert "belongs to uid 65534, not to you" in one_error_line(result.err)


@contextlib.contextmanager
def _tmpfs(size: str = "1m"):
    """A small real filesystem, or a skip where this machine does not allow mounting."""
    mountpoint = Path(tempfile.mkdtemp(prefix="qlam-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], capture_output=True
    )
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


def test_a_read_only_cache_still_returns_the_token_with_a_warning(env, sandbox):
    """On a read-only filesystem the token is still printed, with a warning that it is not shared."""
    with _tmpfs() as mountpoint:
        (mountpoint / "cache").mkdir(mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        result = run_cli("token", env={**env, "QLAM_TOKEN_CACHE_DIR": str(mountpoint / "cache")})
    assert result.code == 0 and result.out.count(".") == 2
    assert "not shared with other processes" in result.err


def test_in_a_batch_job_an_unwritable_cache_is_an_error_before_any_request(env, sandbox):
    """Inside a Slurm job, a read-only cache would cost one request per array task: exit 8 at once."""
    with _tmpfs() as mountpoint:
        (mountpoint / "cache").mkdir(mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        job = {**env, "QLAM_TOKEN_CACHE_DIR": str(mountpoint / "cache"), "SLURM_JOB_ID": "77"}
        result = run_cli("token", env=job)
        opted_out = run_cli("token", env={**job, "QLAM_TOKEN_CACHE": "off"})
    assert result.code == 8 and result.out == ""
    assert "every task of this job would fetch its own token" in one_error_line(result.err)
    assert "QLAM_TOKEN_CACHE=off" in result.err
    assert opted_out.code == 0  # the explicit opt-in: one request per task, knowingly
    assert sandbox.stats()["token_requests"] == 1


def test_in_a_batch_job_a_full_cache_disk_is_an_error_before_any_request(env, sandbox):
    with _tmpfs("64k") as mountpoint:
        with contextlib.suppress(OSError):
            (mountpoint / "filler").write_bytes(b"x" * 1024 * 1024)
        result = run_cli("token", env={**env, "QLAM_TOKEN_CACHE_DIR": str(mountpoint / "cache"), "PBS_JOBID": "9.pbs"})
    assert result.code == 8 and "cannot be used" in result.err
    assert sandbox.stats()["token_requests"] == 0


def test_a_full_disk_still_returns_the_token_with_a_warning(env, sandbox):
    """With the cache's filesystem full (ENOSPC) the token is still printed, with a warning."""
    with _tmpfs("64k") as mountpoint:
        with contextlib.suppress(OSError):
            (mountpoint / "filler").write_bytes(b"x" * 1024 * 1024)
        result = run_cli("token", env={**env, "QLAM_TOKEN_CACHE_DIR": str(mountpoint / "cache")})
    assert result.code == 0 and result.out.count(".") == 2
    assert "No space left on device" in result.err and "not shared" in result.err


# --- secrets stay secret -------------------------------------------------------------------


def _argv_of(pid: int) -> bytes | None:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return None


def _sample_argvs_while(process: subprocess.Popen[bytes], secrets: list[bytes]) -> dict[int, bytes]:
    """Every process's argv, sampled until ``process`` ends, checked for ``secrets``; returns
    the argv of each pid seen."""
    seen: dict[int, bytes] = {}
    while process.poll() is None:
        for entry in Path("/proc").glob("[0-9]*"):
            argv = _argv_of(int(entry.name))
            if argv:
                seen[int(entry.name)] = argv
                for secret in secrets:
                    assert secret not in argv, f"pid {entry.name}: {argv[:60]!r}..."
        time.sleep(0.05)
    return seen


def test_the_secret_never_reaches_a_command_line(env, sandbox):
    """While a token is fetched, no process's /proc/<pid>/cmdline holds the secret, the
    fetching process's own among them (sampled while it ran)."""
    sandbox.set_faults(latency=1.5)
    secret = env["QLAM_CLIENT_SECRET"].encode()
    process = subprocess.Popen([QLAM_HPC, "token"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = _sample_argvs_while(process, [secret])
    process.communicate()
    assert process.returncode == 0
    assert process.pid in seen, "qlam-hpc token ended before its argv was sampled"
    assert sandbox.stats()["token_requests"] == 1


def test_token_header_piped_to_curl_keeps_the_token_off_every_command_line(env, sandbox):
    """The README's ``qlam-hpc token --header | curl -H @-``: curl sends the token, and neither
    the secret nor the token is in the argv of the shell, qlam-hpc or curl while they run."""
    import http.server
    import threading

    warm = run_cli("token", env=env)  # the token the pipeline will use, from the cache
    assert warm.code == 0
    token = warm.out.strip()
    received: list[str] = []

    class SlowApi(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(self.headers.get("Authorization", ""))
            time.sleep(1.0)  # curl is sampled while it holds the token
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowApi) as api:
        threading.Thread(target=api.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{api.server_address[1]}/v2/squin-256q/tasks"
        pipeline = f'"{QLAM_HPC}" token --header | curl -sf -o /dev/null -w "%{{http_code}}" -H @- "{url}"'
        process = subprocess.Popen(["bash", "-c", pipeline], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = _sample_argvs_while(process, [token.encode(), env["QLAM_CLIENT_SECRET"].encode()])
        out, err = process.communicate()
        api.shutdown()
    assert process.returncode == 0 and out == b"200", err
    assert received == [f"Bearer {token}"]
    assert process.pid in seen
    assert any(argv.startswith(b"curl\0") for argv in seen.values()), "curl was not sampled while it ran"


def test_debug_logs_never_show_the_secret_or_the_token(env, sandbox, tmp_path):
    """At -vv, through retries and a rejection, stderr never holds the secret or the token."""
    sandbox.set_faults(script=_script({"status": 500, "body": "oops"}))
    good = run_cli("-vv", "token", env={**env, **FAST_RETRIES})
    wrong = {"QLAM_CLIENT_SECRET": "wrong-secret-xyz", "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "other")}
    bad = run_cli("-vv", "token", env={**env, **FAST_RETRIES, **wrong})
    assert good.code == 0 and bad.code == 4
    assert "HTTP Request: POST" in good.err  # the debug log really was on
    token = good.out.strip()
    for stderr in (good.err, bad.err):
        assert env["QLAM_CLIENT_SECRET"] not in stderr and "wrong-secret-xyz" not in stderr
        assert token not in stderr


# --- auth status and clear ------------------------------------------------------------------


def test_auth_status_describes_the_token_without_showing_it(env, sandbox, cache_dir):
    """auth status names cache, expiry, subject, scopes and this month's requests, never the token."""
    token = run_cli("token", env=env).out.strip()
    result = run_cli("auth", "status", env={**env, "QLAM_TOKEN_BUDGET": "1"})
    assert result.code == 0
    assert token not in result.out and env["QLAM_CLIENT_SECRET"] not in result.out
    assert str(cache_dir) in result.out
    assert "token       valid, expires" in result.out
    assert "subject     test-client@clients" in result.out
    assert "scopes      read:tasks write:tasks" in result.out
    assert "1 token request in" in result.out and "WARNING: above 80% of the monthly budget" in result.out


def test_auth_status_json_reports_a_recorded_failure(env, sandbox):
    """After a rejection, auth status --json shows the failure the other tasks will repeat."""
    run_cli("token", env={**env, "QLAM_CLIENT_SECRET": "wrong"})
    report = json.loads(run_cli("auth", "status", "--json", env=env).out)
    assert report["token"] is None
    assert "invalid_client" in report["failure"]["error"]
    assert report["requests"]["count"] == 1


def test_auth_clear_forgets_the_token(env, sandbox):
    """After auth clear the next token is fetched anew."""
    run_cli("token", env=env)
    cleared = run_cli("auth", "clear", env=env)
    assert cleared.code == 0 and "removed 1 cache entry" in cleared.out
    assert json.loads(run_cli("token", "--json", env=env).out)["source"] == "fetched"
    assert sandbox.stats()["token_requests"] == 2


# --- start-up cost ------------------------------------------------------------------------------


def test_a_warm_token_imports_no_http_client_no_cli_framework_no_rich(env):
    """A cache hit loads neither httpx, click, rich nor pydantic."""
    run_cli("token", env=env)
    probe = (
        "import sys\n"
        "from qlam_hpc._cli import main\n"
        "code = main(['token'])\n"
        "heavy_names = {'httpx', 'click', 'rich', 'pydantic', 'logging'}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in heavy_names)\n"
        "print(heavy, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.count(".") == 2
    assert done.stderr.strip() == "[]"


def test_help_lists_every_command_and_the_exit_codes(env):
    """--help is complete: commands and exit codes."""
    result = run_cli("--help", env=env)
    assert result.code == 0
    for word in ("token", "auth", "sandbox", "demo", "Exit codes:", "rate limited"):
        assert word in result.out
    assert "doctor" in result.out and "15  a secret store" in result.out


# --- credentials from their sources ---------------------------------------------------------------


@pytest.mark.leak_check_expect("secret", kinds=["client secret"])  # the 0600 secret file the test reads
def test_a_warm_token_with_a_secret_file_loads_no_secret_machinery(env, tmp_path):
    """With QLAM_CLIENT_SECRET_FILE set, a cache hit still loads no HTTP, key, JSON or secret-store module."""
    path = tmp_path / "secret"
    path.write_text(env["QLAM_CLIENT_SECRET"])
    path.chmod(0o600)
    case = {k: v for k, v in env.items() if k != "QLAM_CLIENT_SECRET"}
    case["QLAM_CLIENT_SECRET_FILE"] = str(path)
    assert run_cli("token", env=case).code == 0
    heavy = {"httpx", "click", "logging", "json", "re", "threading", "hvac", "boto3", "cryptography", "jwt", "typing"}
    probe = (
        "import sys\n"
        "from qlam_hpc._cli import main\n"
        "code = main(['token'])\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=case, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr.strip() == "[]"


# --- auth check -------------------------------------------------------------------------------------


def test_auth_check_asks_before_spending_quota(env, sandbox):
    """Without a terminal and without --yes, auth check refuses (exit 2) and makes no request."""
    result = run_cli("auth", "check", env=env)
    assert result.code == 2 and "counts against the monthly quota" in result.err and "--yes" in result.err
    assert sandbox.stats()["token_requests"] == 0


def test_auth_check_makes_one_request_and_shares_the_token(env, sandbox):
    """auth check --yes: one token request, an ok line naming method and source, the token cached for the others."""
    result = run_cli("auth", "check", "--yes", env=env)
    assert result.code == 0, result.err
    assert result.out.startswith(
        "ok: the identity provider accepted client test-client (client_secret_post from QLAM_CLIENT_SECRET)"
    )
    assert env["QLAM_CLIENT_SECRET"] not in result.out + result.err
    assert json.loads(run_cli("token", "--json", env=env).out)["source"] == "cache"
    assert run_cli("auth", "check", "-y", env=env).code == 0  # checks again even with a cached token
    assert sandbox.stats()["token_requests"] == 2


def test_auth_check_reports_a_refusal(env, sandbox):
    """A wrong secret: exit 4 with the IdP's reason, even when a valid token is cached."""
    run_cli("token", env=env)
    result = run_cli("auth", "check", "--yes", env={**env, "QLAM_CLIENT_SECRET": "wrong-secret-xyz"})
    assert result.code == 4 and "invalid_client" in one_error_line(result.err)
    assert "wrong-secret-xyz" not in result.err


def test_basic_authentication_through_the_cli_never_logs_the_header(env, sandbox):
    """QLAM_CLIENT_AUTH_METHOD=client_secret_basic gets a token; -vv shows neither secret nor header."""
    import base64

    result = run_cli("-vv", "token", env={**env, "QLAM_CLIENT_AUTH_METHOD": "client_secret_basic"})
    assert result.code == 0, result.err
    header = base64.b64encode(f"{env['QLAM_CLIENT_ID']}:{env['QLAM_CLIENT_SECRET']}".encode()).decode()
    assert header not in result.err and env["QLAM_CLIENT_SECRET"] not in result.err
    assert "HTTP Request: POST" in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["token", "--bogus"], "No such option '--bogus'. (see qlam-hpc token --help)"),
        (["tasks", "get"], "Missing argument 'ID'. (see qlam-hpc tasks get --help)"),
        (["bogus"], "No such command 'bogus'. (see qlam-hpc --help)"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(env, args, message):
    """Usage errors read like every other error: one line on stderr, naming where help is."""
    result = run_cli(*args, env=env)
    assert result.code == 2 and result.out == ""
    assert result.err == f"qlam-hpc: error: {message}\n"
