"""Every input from outside is read within bounds: JSON nesting and size, files that are not
files, answers that never end. Each bad input gets one line and its documented exit code.

``json`` recurses once per level, so ``[[[[...]]]]`` 100,000 deep is a ``RecursionError``
(exit 1, a traceback) wherever it is parsed unchecked: a token planted in a store, an
identity provider's answer, the QLAM Shell config. These tests plant exactly that.
"""

from __future__ import annotations

import base64
import json
import os
import time

import pytest

from conftest import QLAM_HPC, run_cli
from loopback_servers import RawServer, token_answer_bytes
from qlam_hpc import FileStore
from qlam_hpc._cache import CacheEntry, Identity, foreign_token
from qlam_hpc._errors import ConfigurationError, InvalidTokenResponse
from qlam_hpc._jsonlimits import JsonLimitError, parse_json
from qlam_hpc._tokens import Token, unverified_claims

pytestmark = pytest.mark.timeout(120)

DEEP = 100_000


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _jwt(payload: bytes) -> str:
    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(b'{}')}.{part(payload)}.{part(b'signature')}"


def _clean_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_", "QSH_"))}
    return {**base, **extra}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- parse_json ------------------------------------------------------------------------------


def test_parse_json_reads_what_is_within_its_limits():
    """Brackets inside strings, escaped quotes included, do not count as nesting."""
    text = json.dumps({"a": [1, {"b": "[[[[" * 20, "c": 'say \\"[[[[[["'}], "d": "]]]" * 40})
    assert parse_json(text, max_bytes=10_000, max_depth=3) == json.loads(text)
    assert parse_json(text.encode(), max_bytes=10_000, max_depth=3) == json.loads(text)


@pytest.mark.parametrize("depth", [33, 1000, DEEP])
def test_parse_json_refuses_nesting_deeper_than_its_limit(depth):
    with pytest.raises(JsonLimitError, match="nested deeper than 32 levels"):
        parse_json(_nested(depth), max_bytes=1 << 20)


def test_parse_json_accepts_exactly_its_depth():
    assert parse_json(_nested(32), max_bytes=1 << 20) == json.loads(_nested(32))


def test_parse_json_refuses_a_document_over_its_size_before_reading_it():
    with pytest.raises(JsonLimitError, match="larger than 1 KiB"):
        parse_json(b'"' + b"a" * 2000 + b'"', max_bytes=1024)


def test_parse_json_errors_are_value_errors_and_malformed_json_stays_one():
    assert issubclass(JsonLimitError, ValueError)
    with pytest.raises(ValueError):
        parse_json(b"{not json", max_bytes=100)
    with pytest.raises(ValueError):
        parse_json(b"\xff\xfe", max_bytes=100)


def test_parse_json_does_not_import_json_before_it_is_needed():
    """The module costs nothing at import: the warm token path imports it through _tokens."""
    import subprocess
    import sys

    code = "import sys, qlam_hpc._jsonlimits; print('json' in sys.modules, 're' in sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False", out


# --- a token planted in a store ----------------------------------------------------------------


def test_a_jwt_payload_nested_100000_deep_is_not_a_jwt():
    assert unverified_claims(_jwt(_nested(DEEP).encode())) is None


def test_a_jwt_payload_over_16_kib_is_not_a_jwt():
    assert unverified_claims(_jwt(json.dumps({"sub": "x" * 20_000}).encode())) is None
    assert unverified_claims(_jwt(json.dumps({"sub": "x" * 1000}).encode())) == {"sub": "x" * 1000}


def test_a_planted_deeply_nested_token_is_refused_by_the_shared_store_check(settings):
    """The check every reader of a shared store makes says "not a JWT" instead of crashing."""
    now = time.time()
    token = Token(_jwt(_nested(DEEP).encode()), expires_at=now + 3600, obtained_at=now)
    assert foreign_token(token, Identity.of(settings), now) == "not a JWT"


def test_a_planted_deeply_nested_token_does_not_crash_the_cli(settings, env):
    """`qlam-hpc auth status` reads the cached token's claims: a planted one is shown, not a traceback."""
    now = time.time()
    token = Token(_jwt(_nested(DEEP).encode()), expires_at=now + 3600, obtained_at=now, obtained_by="planted:1")
    FileStore(settings.cache_path).save(CacheEntry(Identity.of(settings), token))
    for command in (["auth", "status"], ["token"]):
        result = run_cli(*command, env=env)
        assert result.code == 0, (command, result.err)
        assert "Traceback" not in result.err and "RecursionError" not in result.err


# --- the identity provider's answers -------------------------------------------------------------


def _answer(body: bytes, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def _serve(body: bytes):
    def answer(connection, stop) -> None:
        connection.sendall(_answer(body))

    return answer


NESTED_TOKEN_ANSWER = (
    b'{"access_token": "abc", "token_type": "Bearer", "expires_in": 3600, "x": ' + _nested(30_000).encode() + b"}"
)


def _idp_env(url: str, tmp_path, **extra: str) -> dict[str, str]:
    return _clean_env(
        QLAM_CLIENT_ID="nested-client",
        QLAM_CLIENT_SECRET="nested-secret-value",
        AUTH_BASE_URL=url,
        QLAM_TOKEN_CACHE_DIR=str(tmp_path / "cache"),
        HOME=str(tmp_path),
        **{"QLAM_RETRY_ATTEMPTS": "1", **extra},
    )


def test_a_token_answer_nested_30000_deep_exits_7_in_one_line(tmp_path):
    with RawServer(_serve(NESTED_TOKEN_ANSWER)) as server:
        result = run_cli("token", env=_idp_env(server.url, tmp_path))
    assert result.code == 7, result.err
    assert "nested deeper than 32 levels" in _one_line(result.err)


def test_a_discovery_document_nested_deep_exits_7_in_one_line(tmp_path):
    body = b'{"token_endpoint": "http://127.0.0.1:1/t", "x": ' + _nested(30_000).encode() + b"}"
    with RawServer(_serve(body)) as server:
        result = run_cli("token", env=_idp_env(server.url, tmp_path, QLAM_DISCOVERY="on"))
    assert result.code == 7, result.err
    assert "nested deeper than 32 levels" in _one_line(result.err)


def test_an_id_token_nested_deep_is_an_invalid_token_response(tmp_path):
    """A refresh answer whose id_token payload nests 100,000 deep: exit 7's error, not a crash."""
    from qlam_hpc import Settings
    from qlam_hpc._http import refresh_tokens

    answer = {
        "access_token": "abc",
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": "next-refresh",
        "id_token": _jwt(_nested(1000).encode()),
    }
    with RawServer(_serve(json.dumps(answer).encode())) as server:
        settings = Settings.from_env(_idp_env(server.url, tmp_path, QLAM_AUTH_FLOW="device"))
        with pytest.raises(InvalidTokenResponse, match="id_token holding JSON nested deeper") as caught:
            refresh_tokens(settings, "a-refresh-token")
    assert caught.value.exit_code == 7


def test_a_device_authorization_nested_deep_is_an_invalid_token_response(tmp_path):
    from qlam_hpc import Settings
    from qlam_hpc._http import start_device_login

    body = b'{"device_code": "d", "user_code": "u", "verification_uri": "https://x", "x": ' + _nested(30_000).encode()
    with RawServer(_serve(body + b"}")) as server:
        settings = Settings.from_env(_idp_env(server.url, tmp_path, QLAM_AUTH_FLOW="device"))
        with pytest.raises(InvalidTokenResponse, match="nested deeper than 32 levels"):
            start_device_login(settings)


def test_a_good_token_answer_still_works(tmp_path):
    with RawServer(lambda connection, stop: connection.sendall(token_answer_bytes())) as server:
        result = run_cli("token", env=_idp_env(server.url, tmp_path))
    assert result.code == 0, result.err
    assert result.out.strip() == "loopback-token-value"


# --- the QLAM Shell config ---------------------------------------------------------------------


def _qsh_home(tmp_path):
    directory = tmp_path / "home" / ".qsh"
    directory.mkdir(parents=True)
    return directory / "config.json"


def test_a_fifo_at_the_qsh_config_path_exits_3_at_once(tmp_path):
    """Opening a FIFO waits for a writer for ever; the config is opened without waiting and refused."""
    path = _qsh_home(tmp_path)
    os.mkfifo(path, 0o600)
    started = time.monotonic()
    result = run_cli("token", env=_clean_env(HOME=str(tmp_path / "home")), timeout=20)
    took = time.monotonic() - started
    assert result.code == 3, result.err
    assert "not a regular file" in _one_line(result.err)
    assert took < 10


def test_a_qsh_config_nested_100000_deep_exits_3_in_one_line(tmp_path):
    path = _qsh_home(tmp_path)
    path.write_text('{"contexts": ' + _nested(DEEP) + "}")
    path.chmod(0o600)
    result = run_cli("token", env=_clean_env(HOME=str(tmp_path / "home")))
    assert result.code == 3, result.err
    line = _one_line(result.err)
    assert "nested deeper than 32 levels" in line and str(path) in line


def test_a_qsh_config_over_1_mib_is_refused_without_reading_it(tmp_path):
    from qlam_hpc import Settings

    path = _qsh_home(tmp_path)
    path.write_text('{"contexts": [], "padding": "' + "x" * (2 << 20) + '"}')
    path.chmod(0o600)
    with pytest.raises(ConfigurationError, match="larger than 1 MiB") as caught:
        Settings.from_env({"HOME": str(tmp_path / "home")})
    assert caught.value.exit_code == 3


def test_the_cli_is_installed():
    assert os.access(QLAM_HPC, os.X_OK)


# --- the QLAM API's answers ----------------------------------------------------------------------
#
# Each misbehaving server is met by every way an answer is read: the one-shot light path
# (`qlam-hpc api GET`, `tasks list --json` with a warm cache), the full CLI (`tasks list`,
# and `api GET` sent through httpx because a proxy variable is set), and the sync and async
# clients. 2 s per request, one attempt: the numbers a test can wait for.

API_LIMITS = {"QLAM_API_DEADLINE": "2s", "QLAM_API_MAX_BODY": "1MiB", "QLAM_RETRY_ATTEMPTS": "1"}
LIST = "/v2/squin-256q/tasks"
NESTED_PAGE = b'{"elements": ' + _nested(30_000).encode() + b', "page": 0, "size": 10, "total": 0}'


def _nested_answer(connection, stop) -> None:
    connection.sendall(_answer(NESTED_PAGE))


def _redirect(connection, stop) -> None:
    connection.sendall(
        b"HTTP/1.1 302 Found\r\nLocation: https://login.proxy.example/sso?next=/v2\r\nContent-Length: 0\r\n\r\n"
    )


def _drip_page(connection, stop) -> None:
    from loopback_servers import drip

    drip(_answer(b'{"elements": [], "page": 0, "size": 10, "total": 0}'), every=0.2)(connection, stop)


def _flood(connection, stop) -> None:
    from loopback_servers import flood

    flood(200, size=50 * 1024 * 1024)(connection, stop)


SERVERS = {"drip": _drip_page, "huge": _flood, "nested": _nested_answer, "redirect": _redirect}
# (exit code, words of the one line); "nested" under `api GET` is printed as it came: not parsed.
EXPECTED = {
    "drip": (14, "no complete answer within 2s (QLAM_API_DEADLINE)"),
    "huge": (13, "larger than 1 MiB (QLAM_API_MAX_BODY)"),
    "nested": (13, "nested deeper than 256 levels"),
    "redirect": (13, "a redirect to https://login.proxy.example/sso?next=/v2, not followed"),
}
COMMANDS = {
    "api GET (light)": (["api", "GET", LIST], {}),
    "api GET (httpx)": (["api", "GET", LIST], {"HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}),
    "tasks list --json": (["tasks", "list", "--json"], {}),
    "tasks list": (["tasks", "list"], {}),
}


@pytest.fixture
def warm_env(env):
    """The sandbox's environment with a token in the cache, so the light paths can serve."""
    assert run_cli("token", env=env).code == 0
    return {**env, **API_LIMITS}


@pytest.mark.parametrize("server_name", list(SERVERS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_misbehaving_api_gets_one_line_and_its_exit_code(warm_env, server_name, command):
    args, extra = COMMANDS[command]
    with RawServer(SERVERS[server_name]) as server:
        started = time.monotonic()
        result = run_cli(*args, env={**warm_env, "QLAM_API_URL": server.url, **extra}, timeout=60)
        took = time.monotonic() - started
    if server_name == "nested" and command.startswith("api GET"):
        assert result.code == 0, result.err  # the raw answer is printed, never parsed
        assert result.out.strip().encode() == NESTED_PAGE
        return
    code, words = EXPECTED[server_name]
    assert result.code == code, (result.code, result.err)
    assert words in _one_line(result.err)
    assert took < 8, f"{command} against {server_name} took {took:.1f}s with a 2 s deadline"


def _api_settings(url: str):
    from qlam_hpc import ApiSettings, RetryPolicy

    return ApiSettings(base_url=url, retry=RetryPolicy(attempts=1, deadline=5.0), deadline=2.0, max_body=1 << 20)


@pytest.mark.parametrize("server_name", list(SERVERS))
def test_the_sync_client_is_bounded(server_name):
    import httpx

    from qlam_hpc import QlamClient

    with RawServer(SERVERS[server_name]) as server, QlamClient(_api_settings(server.url), auth=httpx.Auth()) as client:
        started = time.monotonic()
        with pytest.raises(Exception) as caught:
            client.list_tasks()
        took = time.monotonic() - started
    code, words = EXPECTED[server_name]
    assert getattr(caught.value, "exit_code", None) == code, repr(caught.value)
    assert words in str(caught.value)
    assert took < 5


@pytest.mark.parametrize("server_name", list(SERVERS))
def test_the_async_client_is_bounded(server_name):
    import anyio
    import httpx

    from qlam_hpc import AsyncQlamClient

    async def main() -> None:
        async with AsyncQlamClient(_api_settings(server.url), auth=httpx.Auth()) as client:
            await client.list_tasks()

    with RawServer(SERVERS[server_name]) as server:
        started = time.monotonic()
        with pytest.raises(Exception) as caught:
            anyio.run(main)
        took = time.monotonic() - started
    code, words = EXPECTED[server_name]
    assert getattr(caught.value, "exit_code", None) == code, repr(caught.value)
    assert words in str(caught.value)
    assert took < 5


def test_the_sync_clients_raw_request_refuses_a_redirect_but_returns_other_answers():
    import httpx

    from qlam_hpc import ApiError, QlamClient

    with (
        RawServer(_redirect) as server,
        QlamClient(_api_settings(server.url), auth=httpx.Auth()) as client,
        pytest.raises(ApiError, match="not followed"),
    ):
        client.request("GET", LIST)
    with RawServer(_nested_answer) as server, QlamClient(_api_settings(server.url), auth=httpx.Auth()) as client:
        assert client.request("GET", LIST).content == NESTED_PAGE


def test_a_large_answer_under_the_cap_is_read_whole():
    """64 MiB by default: a results page of a few MiB is read as before."""
    import httpx

    from qlam_hpc import ApiSettings, QlamClient

    body = json.dumps({"elements": [], "page": 0, "size": 10, "total": 0, "pad": "x" * (3 << 20)}).encode()
    with (
        RawServer(lambda c, s: c.sendall(_answer(body))) as server,
        QlamClient(ApiSettings(base_url=server.url), auth=httpx.Auth()) as client,
    ):
        assert client.list_tasks().total == 0


@pytest.mark.parametrize("value", ["0", "-1", "lots", "64 parsecs"])
def test_a_bad_qlam_api_max_body_is_a_configuration_error(value):
    from qlam_hpc import ApiSettings

    with pytest.raises(ConfigurationError, match="QLAM_API_MAX_BODY"):
        ApiSettings.from_env({"QLAM_API_URL": "https://api.example", "QLAM_API_MAX_BODY": value})


# --- unreachable servers: one line ---------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RETRIES = {"QLAM_RETRY_ATTEMPTS": "5", "QLAM_RETRY_DEADLINE": "3s"}


def test_an_unreachable_identity_provider_is_one_line_saying_how_long_it_was_tried(tmp_path):
    """Retry notices are info (shown with -v); the "gave up" is part of the one error line."""
    env = _idp_env(f"http://127.0.0.1:{_closed_port()}", tmp_path, **RETRIES)
    result = run_cli("token", env=env)
    assert result.code == 5, result.err
    line = _one_line(result.err)
    assert "is unreachable" in line and "gave up after" in line, line
    # A fresh cache: the first run's failure record would be replayed without a request.
    verbose = run_cli("-v", "token", env={**env, "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "other-cache")})
    assert verbose.code == 5 and verbose.err.count("retrying in") >= 1, verbose.err


def test_a_host_name_that_does_not_resolve_fails_at_once_in_one_line(tmp_path):
    env = _idp_env("https://no-such-host.invalid", tmp_path, **RETRIES)
    started = time.monotonic()
    result = run_cli("-v", "token", env=env)
    took = time.monotonic() - started
    assert result.code == 5, result.err
    assert "the host name no-such-host.invalid does not resolve" in _one_line(result.err)  # no retry warnings
    assert took < 10, f"took {took:.1f}s: retried"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_api_host_name_that_does_not_resolve_is_not_retried(warm_env, command):
    args, extra = COMMANDS[command]
    env = {**warm_env, **RETRIES, "QLAM_API_URL": "https://no-such-host.invalid", **extra}
    if "HTTPS_PROXY" in extra:
        env["NO_PROXY"] = "127.0.0.1,no-such-host.invalid"
    started = time.monotonic()
    result = run_cli(*args, env=env)
    took = time.monotonic() - started
    assert result.code == 14, result.err
    assert "the host name no-such-host.invalid does not resolve" in _one_line(result.err)  # no retry warnings
    assert took < 10, f"took {took:.1f}s: retried"


def test_no_deprecation_warning_from_httpx_with_a_ca_bundle(tmp_path):
    """The httpx clients are given an SSLContext, never a path (which httpx deprecates)."""
    import subprocess
    import sys

    from loopback_servers import make_authority

    authority = make_authority(tmp_path / "ca")
    code = (
        "import warnings; warnings.simplefilter('error');"
        "from qlam_hpc import ApiSettings, QlamClient, Settings; from qlam_hpc._http import _client;"
        "import httpx;"
        "QlamClient(ApiSettings.from_env(), auth=httpx.Auth()).close();"
        "_client(Settings.from_env(), None).close(); print('ok')"
    )
    env = _idp_env(
        "https://127.0.0.1:1", tmp_path, SSL_CERT_FILE=str(authority.ca_pem), QLAM_API_URL="https://x.example"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
