"""User context: a person's device login, refreshed single-flight by every process.

Everything runs against the real sandbox over HTTP: device authorization, the
approval, refresh tokens that rotate, reuse detection that revokes the login,
revocation. The CLI runs as a real process, as in a batch script.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST_RETRY, QLAM_HPC, run_cli
from qlam_hpc import CacheError, ConfigurationError, LoginRequired, Settings, TokenProvider
from qlam_hpc._login import login, logout
from qlam_hpc._stores._file import FileStore
from qlam_hpc.sandbox import Sandbox

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sandbox(user_sandbox):
    return user_sandbox


@pytest.fixture
def env(user_env):
    return user_env


def _provider(env: dict[str, str], **overrides) -> TokenProvider:
    return TokenProvider(Settings.from_env(env, **overrides).with_(retry=FAST_RETRY))


def _login(env: dict[str, str], **overrides) -> TokenProvider:
    provider = _provider(env, **overrides)
    login(provider, on_code=lambda authorization: None)
    return provider


def _entry_text(directory: str | Path) -> str:
    (entry,) = Path(directory).glob("*.entry")
    return entry.read_text()


def _expire_access_token(sandbox: Sandbox, env: dict[str, str]) -> None:
    """Log in with 2 s access tokens and wait until the shared one may no longer be handed out."""
    sandbox.set_faults(token_lifetime=2)
    _login(env)
    sandbox.set_faults(token_lifetime=86400)
    time.sleep(1.7)  # a 2 s token's margin is 0.5 s


# --- settings ------------------------------------------------------------------------------


def test_device_flow_needs_only_a_public_client_and_the_identity_provider(sandbox):
    """QLAM_AUTH_FLOW=device: no secret; scope, device and revocation endpoints from AUTH_BASE_URL."""
    settings = Settings.from_env(sandbox.env(flow="device"))
    assert settings.user_context and settings.client_secret is None
    assert settings.scope == "openid email profile offline_access"
    assert settings.device_authorization_url == sandbox.url + "/oauth/device/code"
    assert settings.revocation_url == sandbox.url + "/oauth/revoke"


def test_discovery_gives_the_device_and_revocation_endpoints(env, sandbox):
    """With QLAM_DISCOVERY=on, a standard server's endpoints are read from its document."""
    provider = _login({**env, "QLAM_DISCOVERY": "on"})
    assert provider.settings.device_authorization_url is None  # read from the document
    assert logout(provider).revoked_at == sandbox.url + "/oauth/revoke"


def test_a_redis_store_is_refused_for_refresh_tokens_unless_allowed(sandbox):
    """A refresh token in a shared Redis could be read by others: refused, with the way out named."""
    env = {**sandbox.env(flow="device"), "QLAM_TOKEN_STORE": "redis://127.0.0.1:6390/0"}
    with pytest.raises(ConfigurationError, match="QLAM_SHARED_REFRESH_TOKENS=allow"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "QLAM_SHARED_REFRESH_TOKENS": "allow"}).token_store
    assert Settings.from_env({**env, "QLAM_REFRESH_TOKEN_DIR": "/tmp/logins"}).token_store


def test_the_cache_cannot_be_off_in_user_context(sandbox):
    with pytest.raises(ConfigurationError, match="QLAM_TOKEN_CACHE=off cannot be used in user context"):
        Settings.from_env({**sandbox.env(flow="device"), "QLAM_TOKEN_CACHE": "off"})


# --- login ----------------------------------------------------------------------------------


def test_cli_login_shows_url_and_code_then_every_command_works(env, sandbox, tmp_path):
    """auth login prints where to approve on stderr; then token and status work as with M2M."""
    result = run_cli("auth", "login", env=env)
    assert result.code == 0, result.err
    assert result.out == ""
    assert "/activate?user_code=" in result.err and "logged in as ada@example.org" in result.err
    token = run_cli("token", env=env)
    assert token.code == 0 and token.out.count(".") == 2
    status = run_cli("auth", "status", env=env)
    assert "flow        user context (device login)" in status.out
    assert "user        ada@example.org (auth0|sandbox-user-1)" in status.out
    assert "(15d left)" in status.out  # as auth login and doctor write it
    entry = _entry_text(tmp_path / "cache")
    refresh_token = next(line for line in entry.splitlines() if line.startswith("refresh_token=")).partition("=")[2]
    for output in (result.out, result.err, token.err, status.out, status.err):
        assert refresh_token not in output
    assert token.out.strip() not in status.out
    assert (next((tmp_path / "cache").glob("*.entry")).stat().st_mode & 0o077) == 0


def test_cli_login_json_is_one_object_for_portals(env, sandbox):
    """--json: the code and URLs as a JSON line on stdout first, then the outcome."""
    result = run_cli("auth", "login", "--json", env=env)
    assert result.code == 0, result.err
    first, last = (json.loads(line) for line in result.out.splitlines())
    assert {"verification_uri", "verification_uri_complete", "user_code", "expires_in"} <= set(first)
    assert first["verification_uri_complete"].endswith(first["user_code"])
    assert last["logged_in"] is True and last["email"] == "ada@example.org"


def test_login_json_interval_is_an_integer(env, sandbox):
    """RFC 8628 makes interval an integer number of seconds: 1, not 1.0."""
    result = run_cli("auth", "login", "--json", env=env)
    assert result.code == 0, result.err
    assert result.out.splitlines()[0].endswith('"interval": 1}')
    assert type(json.loads(result.out.splitlines()[0])["interval"]) is int


def test_a_second_login_says_it_replaced_and_revoked_the_first(env, sandbox):
    """Logging in again ends the earlier login: one line names whose it was and that it was revoked."""
    assert run_cli("auth", "login", env=env).code == 0
    again = run_cli("auth", "login", env=env)
    assert again.code == 0, again.err
    assert "replaced the earlier login of ada@example.org in " in again.err
    assert again.err.rstrip().endswith("and revoked it at the identity provider")
    assert sandbox.stats()["revocations"] == 1
    first = run_cli("auth", "login", "--json", env=env)
    assert json.loads(first.out.splitlines()[-1])["replaced"] == "ada@example.org"


def test_an_unusable_login_directory_fails_before_any_device_code(env, sandbox, tmp_path):
    """QLAM_REFRESH_TOKEN_DIR that cannot be written: exit 8 before anyone is asked to approve."""
    (tmp_path / "a-file").write_text("")
    result = run_cli("auth", "login", env={**env, "QLAM_REFRESH_TOKEN_DIR": str(tmp_path / "a-file" / "logins")})
    assert result.code == 8, result.err
    assert "To log in" not in result.err and "/activate" not in result.err
    assert result.err.strip().splitlines()[-1].startswith("qlam-hpc: error: ")
    assert str(tmp_path / "a-file" / "logins") in result.err
    assert sandbox.stats()["device_authorizations"] == 0


def test_a_login_that_cannot_be_kept_after_approval_is_revoked(env, sandbox):
    """The store breaks while the person approves: the new refresh token is revoked, and one line says so."""
    from test_cli import _tmpfs

    sandbox.set_faults(auto_approve=False)
    with _tmpfs() as mountpoint:
        logins = mountpoint / "logins"
        process = subprocess.Popen(
            [QLAM_HPC, "auth", "login", "--json"],
            env={**env, "QLAM_REFRESH_TOKEN_DIR": str(logins)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        code = json.loads(process.stdout.readline())["user_code"]
        assert logins.is_dir()  # tried before the code was asked for
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        sandbox.approve(code)
        _out, err = process.communicate(timeout=30)
        subprocess.run(["mount", "-o", "remount,rw", str(mountpoint)], check=True)
    assert process.returncode == 8, err
    assert "the login of ada@example.org could not be kept, so it was revoked at " in err
    assert err.strip().splitlines()[-1].startswith("qlam-hpc: error: ")
    assert sandbox.stats()["device_logins"] == 1 and sandbox.stats()["revocations"] == 1


def test_auth_check_without_a_login_does_not_call_a_valid_token_expired(env, sandbox):
    """A login without a refresh token leaves a valid access token: auth check says it expires
    at that time (in the future), not that it expired."""
    env = {**env, "QLAM_SCOPE": "openid email"}  # no offline_access: no refresh token
    assert run_cli("auth", "login", env=env).code == 0
    result = run_cli("auth", "check", env=env)
    assert result.code == 16, result.err
    assert " expires at 20" in result.err and "expired at" not in result.err
    assert "there is no login in" in result.err


def test_a_denied_login_exits_4_with_one_line(env, sandbox):
    sandbox.set_faults(auto_approve=False)
    process = subprocess.Popen(
        [QLAM_HPC, "auth", "login", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    code = json.loads(process.stdout.readline())["user_code"]
    sandbox.deny(code)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 4
    assert err.strip().count("\n") == 0 and "access_denied" in err


def test_an_expired_device_code_exits_17_with_one_line(env, sandbox):
    """The server answers expired_token (nobody approved in time): one line, exit 17."""
    sandbox.set_faults(
        auto_approve=False,
        script=[{"status": 403, "body": '{"error":"expired_token"}', "content_type": "application/json"}],
    )
    result = run_cli("auth", "login", env=env)
    assert result.code == 17
    assert result.err.strip().splitlines()[-1].startswith("qlam-hpc: error: the login with code")
    assert "run qlam-hpc auth login again" in result.err


def test_login_timeout_option_ends_the_wait(env, sandbox):
    sandbox.set_faults(auto_approve=False)
    started = time.monotonic()
    result = run_cli("auth", "login", "--timeout", "1s", env=env)
    assert result.code == 17 and time.monotonic() - started < 4


def test_slow_down_adds_five_seconds_to_the_interval(env, sandbox):
    """RFC 8628: after slow_down, every later poll waits 5 s more (sleeps recorded, not slept)."""
    from qlam_hpc._http import poll_device_login, start_device_login

    sandbox.set_faults(auto_approve=False)
    settings = Settings.from_env(env)
    authorization = start_device_login(settings)
    slow = {
        "status": 429,
        "body": '{"error":"slow_down","error_description":"too fast"}',
        "content_type": "application/json",
    }
    pending = {"status": 403, "body": '{"error":"authorization_pending"}', "content_type": "application/json"}
    sandbox.set_faults(script=[pending, slow, pending])
    sandbox.approve(authorization.user_code)
    slept: list[float] = []
    tokens = poll_device_login(settings, authorization, sleep=slept.append)
    assert slept == [1.0, 1.0, 6.0, 6.0]
    assert tokens.refresh_token and tokens.id_claims["email"] == "ada@example.org"


def test_approval_through_the_html_form(env, sandbox):
    """A person approves on the verification page: a real form POST, as a browser sends it."""
    import httpx

    from qlam_hpc._http import poll_device_login, start_device_login

    sandbox.set_faults(auto_approve=False)
    settings = Settings.from_env(env)
    authorization = start_device_login(settings)
    page = httpx.get(authorization.verification_uri_complete)
    assert page.status_code == 200 and "<form" in page.text and authorization.user_code in page.text
    approved = httpx.post(
        authorization.verification_uri,
        data={"user_code": authorization.user_code, "action": "approve"},
        headers=sandbox.control_headers(),  # only the sandbox's owner may approve
    )
    assert approved.status_code == 200
    assert poll_device_login(settings, authorization).token.access_token


# --- refresh --------------------------------------------------------------------------------


def test_an_expired_access_token_is_refreshed_once_and_the_next_refresh_token_kept(env, sandbox, tmp_path):
    _expire_access_token(sandbox, env)
    before = _entry_text(tmp_path / "cache")
    first, second = _provider(env), _provider(env)  # two processes sharing the store
    token = first.get_token()
    assert second.get_token() == token
    stats = sandbox.stats()
    assert (stats["refreshes"], stats["refresh_requests"], stats["reuse_detections"]) == (1, 1, 0)
    after = _entry_text(tmp_path / "cache")
    old = [line for line in before.splitlines() if line.startswith("refresh_token=")]
    new = [line for line in after.splitlines() if line.startswith("refresh_token=")]
    assert old and new and old != new  # rotated, and the next one published
    assert "intent_at" not in after


def test_write_ahead_an_unwritable_store_leaves_the_refresh_token_unspent(env, sandbox):
    """If the store cannot take the intent, it could not take the next refresh token: nothing is sent."""
    from test_cli import _tmpfs

    with _tmpfs() as mountpoint:
        env = {**env, "QLAM_TOKEN_CACHE_DIR": str(mountpoint / "cache")}
        _expire_access_token(sandbox, env)
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        result = run_cli("token", env=env)
        assert result.code == 8 and "not refreshing" in result.err
        assert sandbox.stats()["refresh_requests"] == 0
        subprocess.run(["mount", "-o", "remount,rw", str(mountpoint)], check=True)
        assert run_cli("token", env=env).code == 0  # the refresh token was never spent
    assert sandbox.stats()["refreshes"] == 1


def test_a_revoked_login_fails_every_process_at_once_with_exit_16(env, sandbox):
    """The first process meets invalid_grant; the login is dropped, so the others ask nobody."""
    _expire_access_token(sandbox, env)
    sandbox.revoke_logins()
    results = [run_cli("token", env=env) for _ in range(3)]
    assert [r.code for r in results] == [16, 16, 16]
    assert all(r.err.count("\n") == 1 and "run qlam-hpc auth login" in r.err for r in results)
    assert sandbox.stats()["refresh_requests"] == 1
    assert "refused the login of ada@example.org (invalid_grant" in results[1].err


def test_logout_revokes_and_forgets_the_login(env, sandbox, tmp_path):
    assert run_cli("auth", "login", env=env).code == 0
    result = run_cli("auth", "logout", env=env)
    assert result.code == 0 and "revoked it at" in result.err
    assert sandbox.stats()["revocations"] == 1 and not list((tmp_path / "cache").glob("*.entry"))
    assert run_cli("token", env=env).code == 16


def test_user_context_commands_refuse_an_m2m_configuration(sandbox, tmp_path):
    env = {**sandbox.env(), "QLAM_TOKEN_CACHE_DIR": str(tmp_path)}
    result = run_cli("auth", "login", env=env)
    assert result.code == 3 and "is for user context" in result.err


# --- killed mid-refresh ----------------------------------------------------------------------


def _killed_mid_refresh(sandbox: Sandbox, env: dict[str, str], overlap: float) -> None:
    """A refresher SIGKILLed after the server rotated the refresh token, before it could publish."""
    _expire_access_token(sandbox, env)
    sandbox.set_faults(refresh_token_overlap=overlap, response_delay=3)
    victim = subprocess.Popen([QLAM_HPC, "token"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while sandbox.stats()["refreshes"] < 1:  # the server has rotated; its answer is delayed
        assert time.monotonic() < deadline and victim.poll() is None
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    sandbox.set_faults(response_delay=0)


def test_killed_refresher_with_an_overlap_period_the_next_process_saves_the_login(env, sandbox):
    _killed_mid_refresh(sandbox, env, overlap=10)
    result = run_cli("token", env=env)
    assert result.code == 0, result.err
    assert "did not finish" in result.err  # the intent the killed process left is named
    stats = sandbox.stats()
    assert (stats["reuse_detections"], stats["families_revoked"]) == (0, 0)
    assert run_cli("auth", "check", env=env).code == 0  # the login is alive


def test_killed_refresher_without_overlap_the_login_is_lost_and_said_once(env, sandbox):
    """Overlap 0 (Auth0's default): the spent token is refused; one more request, then none."""
    _killed_mid_refresh(sandbox, env, overlap=0)
    results = [run_cli("token", env=env) for _ in range(3)]
    assert [r.code for r in results] == [16, 16, 16]
    stats = sandbox.stats()
    assert stats["refresh_requests"] == 2 and stats["reuse_detections"] == 1


# --- a login node keeps it fresh; jobs only read ------------------------------------------------


def test_keep_fresh_mode_keeps_refresh_tokens_off_the_shared_cache(env, sandbox, tmp_path):
    """QLAM_REFRESH_TOKEN_DIR on the login node: the shared cache holds access tokens only."""
    login_node = {**env, "QLAM_REFRESH_TOKEN_DIR": str(tmp_path / "login-node")}
    sandbox.set_faults(token_lifetime=2)
    assert run_cli("auth", "login", env=login_node).code == 0
    assert "refresh_token=" not in _entry_text(tmp_path / "cache")
    assert "refresh_token=" in _entry_text(tmp_path / "login-node")
    job = {**env, "QLAM_REFRESH_TOKEN_DIR": str(tmp_path / "not-on-this-node")}
    assert run_cli("token", env=job).code == 0
    time.sleep(1.7)
    stale = run_cli("token", env=job)
    assert stale.code == 16 and "keep-fresh" in stale.err
    assert sandbox.stats()["refresh_requests"] == 0  # the job never refreshes
    refresher = run_cli("auth", "keep-fresh", "--once", env=login_node)
    assert refresher.code == 0, refresher.err
    assert run_cli("token", env=job).code == 0
    assert sandbox.stats()["refreshes"] == 1


def test_a_job_without_the_login_names_the_keep_fresh_that_stopped(env, sandbox, tmp_path):
    """A job that never set QLAM_REFRESH_TOKEN_DIR, whose token went stale, is told which
    keep-fresh (host and pid) kept it and when it last refreshed, not to log in again."""
    login_node = {**env, "QLAM_REFRESH_TOKEN_DIR": str(tmp_path / "login-node")}
    sandbox.set_faults(token_lifetime=3)
    assert run_cli("auth", "login", env=login_node).code == 0
    time.sleep(1.6)  # past half the token's life: keep-fresh refreshes, and names itself
    kept = run_cli("auth", "keep-fresh", "--once", env=login_node)
    assert kept.code == 0 and sandbox.stats()["refreshes"] == 1, kept.err
    time.sleep(3.2)
    stale = run_cli("token", env=env)  # no QLAM_REFRESH_TOKEN_DIR at all
    assert stale.code == 16
    assert "kept fresh by qlam-hpc auth keep-fresh on " in stale.err and "is it still running?" in stale.err
    assert len(stale.err.strip().splitlines()) == 1
    assert "kept fresh  by qlam-hpc auth keep-fresh on " in run_cli("auth", "status", env=env).out


def test_keep_fresh_loop_refreshes_at_half_life(env, sandbox, tmp_path):
    login_node = {**env, "QLAM_REFRESH_TOKEN_DIR": str(tmp_path / "login-node")}
    sandbox.set_faults(token_lifetime=4)
    assert run_cli("auth", "login", env=login_node).code == 0
    refresher = subprocess.Popen([QLAM_HPC, "auth", "keep-fresh"], env=login_node, stderr=subprocess.PIPE)
    try:
        time.sleep(9)  # at least two half-lives even when a loaded machine starts the loop late
    finally:
        refresher.terminate()
        refresher.wait()
    assert 2 <= sandbox.stats()["refreshes"] <= 5


# --- attribution ----------------------------------------------------------------------------


def test_tasks_created_in_user_context_name_the_user(env, sandbox, monkeypatch):
    """Per-user attribution: the qlam_hpc block names who logged in, besides the array task."""
    from qlam_hpc import ApiSettings, QlamClient

    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "812345")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    provider = _login(env)
    definition = {"programs": [{"content": "x"}], "subtasks": [{"program_index": 0, "num_shots": 1}]}
    with QlamClient(ApiSettings.from_env(env), provider=provider) as client:
        task = client.create_task(definition)
    block = json.loads(task.model_extra["system_metadata"])["qlam_hpc"]
    assert block["principal"] == {"subject": "auth0|sandbox-user-1", "email": "ada@example.org"}
    assert block["slurm"]["array_task_id"] == "7"


def test_two_threads_of_one_process_share_one_refresh(env, sandbox):
    _expire_access_token(sandbox, env)
    provider = _provider(env)
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda: tokens.append(provider.get_token())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(tokens)) == 1 and sandbox.stats()["refresh_requests"] == 1


def test_the_login_store_is_read_under_the_lock_never_from_memory(env, sandbox, tmp_path):
    """A provider that refreshed once, then sees another process refresh, uses the newest refresh token."""
    _expire_access_token(sandbox, env)
    first, second = _provider(env), _provider(env)
    first.get_token()
    sandbox.set_faults(token_lifetime=2)
    second.check()  # another process refreshes: the refresh token rotates again
    time.sleep(1.7)
    assert first.get_token()
    assert sandbox.stats()["reuse_detections"] == 0


def test_login_status_warns_in_the_last_two_days(env, sandbox):
    result = run_cli("auth", "login", env={**env, "QLAM_REFRESH_TOKEN_LIFETIME": "1d"})
    assert result.code == 0
    status = run_cli("auth", "status", "--json", env=env)
    report = json.loads(status.out)
    assert report["login"]["days_left"] <= 1 and "less than 2 days" in report["login"]["warning"]


def test_a_login_store_in_another_users_directory_is_refused(env, sandbox, tmp_path):
    store = tmp_path / "foreign"
    store.mkdir(mode=0o700)
    os.chown(store, 12345, 12345)
    with pytest.raises(CacheError):
        _login({**env, "QLAM_REFRESH_TOKEN_DIR": str(store)})
    assert isinstance(FileStore(store), FileStore)


def test_no_login_is_a_one_line_error(env, sandbox):
    with pytest.raises(LoginRequired, match="not logged in"):
        _provider(env).get_token()


def test_doctor_shows_the_flow_and_the_login(env, sandbox):
    """doctor names the flow; without a login it fails with exit 16, with one it says who and until when."""
    before = run_cli("doctor", env=env)
    assert before.code == 16
    assert "flow                user context (device login)" in before.out
    assert "FAIL  login" in before.out and "run qlam-hpc auth login" in before.out
    assert run_cli("auth", "login", env=env).code == 0
    after = run_cli("doctor", env=env)
    assert after.code == 0 and "ok    login               ada@example.org, until" in after.out


def test_auth_clear_keeps_the_login_and_drops_the_access_token(env, sandbox, tmp_path):
    """auth clear forgets the token and says the login stays; the next call refreshes with it."""
    assert run_cli("auth", "login", env=env).code == 0
    cleared = run_cli("auth", "clear", env=env)
    assert cleared.code == 0
    assert cleared.out == (
        f"cleared the access token cached in {tmp_path / 'cache'}; kept the login of ada@example.org "
        "(auth logout ends it)\n"
    )
    entry = _entry_text(tmp_path / "cache")
    assert "refresh_token=" in entry and "access_token=" not in entry
    assert run_cli("token", env=env).code == 0
    assert sandbox.stats()["refreshes"] == 1


def test_python_login_and_logout(env, sandbox, capsys):
    """TokenProvider.login() shows the URL and code on stderr; logout() revokes."""
    provider = _provider(env)
    login_record = provider.login()
    assert login_record is not None and login_record.email == "ada@example.org"
    assert "/activate?user_code=" in capsys.readouterr().err
    assert provider.get_token()
    assert provider.logout().refresh_token == login_record.refresh_token
    assert sandbox.stats()["revocations"] == 1


def test_a_job_without_the_login_directory_says_so_without_locking_it(env, sandbox, tmp_path):
    """keep-fresh mode: a compute node where QLAM_REFRESH_TOKEN_DIR does not exist creates nothing there."""
    login_node = {**env, "QLAM_REFRESH_TOKEN_DIR": str(tmp_path / "login-node")}
    sandbox.set_faults(token_lifetime=2)
    assert run_cli("auth", "login", env=login_node).code == 0
    time.sleep(1.7)
    elsewhere = tmp_path / "not-on-this-node"
    result = run_cli("token", env={**env, "QLAM_REFRESH_TOKEN_DIR": str(elsewhere)})
    assert result.code == 16 and "keep-fresh" in result.err
    assert not elsewhere.exists()


def test_min_ttl_job_warns_when_the_job_outlives_the_login(env, sandbox):
    """A job ending in 2 h with a login that lasts 1 h: the token is printed, with a warning."""
    assert run_cli("auth", "login", env={**env, "QLAM_REFRESH_TOKEN_LIFETIME": "1h"}).code == 0
    job = {**env, "SLURM_JOB_ID": "99", "SLURM_JOB_END_TIME": str(int(time.time()) + 7200)}
    result = run_cli("token", "--min-ttl", "job", env=job)
    assert result.code == 0 and result.out.count(".") == 2
    assert "this job ends after the login of ada@example.org" in result.err


def test_api_and_tasks_commands_work_in_user_context(env, sandbox):
    """After a login, qlam-hpc api and tasks authenticate as the user, as with M2M credentials."""
    assert run_cli("auth", "login", env=env).code == 0
    listed = run_cli("tasks", "list", "--json", env=env)
    assert listed.code == 0, listed.err
    called = run_cli("api", "GET", "/userinfo", env=env)
    assert called.code == 0 and json.loads(called.out)["email"] == "ada@example.org"
