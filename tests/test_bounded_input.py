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
        QLAM_RETRY_ATTEMPTS="1",
        HOME=str(tmp_path),
        **extra,
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
