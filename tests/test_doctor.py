"""qlam-hpc doctor: one line per check, a verdict, and the exit code of the first failure."""

from __future__ import annotations

import os
import time
from email.utils import formatdate

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import run_cli
from qlam_hpc._cli._doctor import _clock, _filesystem
from secret_stores import vault


@pytest.fixture
def good(env, sandbox):
    """A working set-up: the sandbox as identity provider and API, a fresh cache directory."""
    return {**env, "QLAM_API_URL": sandbox.url}


def _lines(out: str) -> dict[str, str]:
    """check name -> verdict, for the report's lines (the last line is the summary)."""
    rows = {}
    for line in out.splitlines()[:-1]:
        verdict, name = line[:5].strip(), line[6:25].strip()
        rows.setdefault(name, verdict)
    return rows


def test_a_good_setup_passes_without_a_token_request(good, sandbox):
    """Everything ok: exit 0, one line per check, no token request, no secret shown."""
    result = run_cli("doctor", env=good)
    assert result.code == 0, result.out + result.err
    rows = _lines(result.out)
    for name in (
        "client id",
        "client secret",
        "identity provider",
        "clock",
        "QLAM API",
        "cache directory",
        "cache locking",
        "cached token",
    ):
        assert rows[name] == "ok", result.out
    assert result.out.splitlines()[-1].startswith("doctor: no problems found; the credentials were not verified")
    assert "from environment QLAM_CLIENT_ID" in result.out
    assert good["QLAM_CLIENT_SECRET"] not in result.out + result.err
    assert sandbox.stats()["token_requests"] == 0


def test_a_wrong_secret_passes_but_the_last_line_says_it_was_not_verified(good, sandbox):
    """No token request (no quota), so a wrong secret cannot be caught: the last line says so,
    and names the command that checks it for one request."""
    result = run_cli("doctor", env={**good, "QLAM_CLIENT_SECRET": "a-wrong-secret"})
    assert result.code == 0, result.out
    last = result.out.splitlines()[-1]
    assert "the credentials were not verified" in last
    assert "qlam-hpc auth check" in last and "one token request" in last
    assert sandbox.stats()["token_requests"] == 0


@pytest.mark.leak_check_expect("secret", kinds=["client secret"])  # the 0600 secret file doctor names
def test_it_reports_a_cached_token_and_where_settings_came_from(good, sandbox, tmp_path):
    """After a fetch: the cached token's expiry; a secret file is named as the source, never read out."""
    secret = good["QLAM_CLIENT_SECRET"]
    path = tmp_path / "secret"
    path.write_text(secret)
    path.chmod(0o600)
    case = {k: v for k, v in good.items() if k != "QLAM_CLIENT_SECRET"}
    case["QLAM_CLIENT_SECRET_FILE"] = str(path)
    assert run_cli("token", env=case).code == 0
    result = run_cli("doctor", env=case)
    assert result.code == 0
    assert "cached token        valid until" in result.out
    assert f"client secret       file {path}: readable" in result.out
    assert secret not in result.out


def test_a_private_key_is_described_not_shown(good, sandbox, tmp_path):
    """With a key file: its type, size and algorithm are shown, never its PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / "key.pem"
    path.write_text(pem)
    path.chmod(0o600)
    result = run_cli("doctor", env={**good, "QLAM_CLIENT_PRIVATE_KEY_FILE": str(path), "QLAM_CLIENT_KEY_ID": "k1"})
    assert f"private key         file {path}: RSA 2048-bit key, RS256, kid k1" in result.out
    assert "client secret       QLAM_CLIENT_SECRET is configured but not used" in result.out
    assert "private_key_jwt, because a private key is configured" in result.out
    assert not any(line in result.out for line in pem.splitlines() if not line.startswith("-----"))


@pytest.mark.parametrize(
    ("changes", "failed", "code", "message"),
    [
        ({"QLAM_CLIENT_ID": ""}, "settings", 3, "QLAM_CLIENT_ID is not set"),
        ({"AUTH_BASE_URL": "http://127.0.0.1:9"}, "identity provider", 5, "is unreachable"),
        ({"QLAM_API_URL": "http://127.0.0.1:9"}, "QLAM API", 14, "http://127.0.0.1:9 is unreachable"),
        ({"QLAM_CLIENT_SECRET": "", "QLAM_CLIENT_PRIVATE_KEY": ""}, "client secret", 3, "none configured"),
        ({"QLAM_CLIENT_SECRET": "env:NOT_SET_ANYWHERE"}, "client secret", 3, "NOT_SET_ANYWHERE is not set"),
    ],
)
def test_a_broken_setup_fails_with_the_first_problems_code(good, changes, failed, code, message):
    """Missing settings, an unreachable IdP or API, a missing secret: FAIL on its line, the right exit code."""
    result = run_cli("doctor", env={**good, **changes})
    assert result.code == code, result.out
    assert _lines(result.out)[failed] == "FAIL"
    assert message in result.out
    assert result.out.splitlines()[-1].startswith("doctor: ") and "problem" in result.out.splitlines()[-1]


@pytest.mark.leak_check_expect("secret", kinds=["client secret"])  # the 0644 secret file doctor refuses
def test_an_unsafe_secret_file_fails(good, tmp_path):
    """A 0644 secret file: FAIL with the mode and the fix, exit 3, the secret not shown."""
    path = tmp_path / "secret"
    path.write_text(good["QLAM_CLIENT_SECRET"])
    path.chmod(0o644)
    case = {k: v for k, v in good.items() if k != "QLAM_CLIENT_SECRET"}
    result = run_cli("doctor", env={**case, "QLAM_CLIENT_SECRET_FILE": str(path)})
    assert result.code == 3
    assert "readable by group or others (mode 0644)" in result.out
    assert good["QLAM_CLIENT_SECRET"] not in result.out


def test_an_unreachable_vault_fails_with_15(good, vault):
    """A secret in a Vault that does not answer: exit 15, the store named."""
    case = {
        **good,
        "QLAM_CLIENT_SECRET": "vault://secret/qlam#client_secret",
        **vault.env(VAULT_ADDR="http://127.0.0.1:9"),
    }
    result = run_cli("doctor", env=case)
    assert result.code == 15 and "Vault at http://127.0.0.1:9 is unreachable" in result.out


def test_a_mistyped_token_store_fails_on_the_token_store_line(good):
    """QLAM_TOKEN_STORE=vualt://x: FAIL on the token store line with the reason (exit 3), not an
    ok store and a failed cached token."""
    result = run_cli("doctor", env={**good, "QLAM_TOKEN_STORE": "vualt://x"})
    assert result.code == 3, result.out
    rows = _lines(result.out)
    assert rows["token store"] == "FAIL" and rows["cached token"] == "skip"
    (line,) = [line for line in result.out.splitlines() if line.startswith("FAIL")]
    assert "token store" in line and "QLAM_TOKEN_STORE 'vualt://x': expected redis://" in line
    assert result.out.splitlines()[-1] == "doctor: 1 problem found; the first is token store"


def test_a_file_url_token_store_is_named(good, tmp_path):
    """A usable QLAM_TOKEN_STORE is named on its line, and the cached token is read through it."""
    result = run_cli("doctor", env={**good, "QLAM_TOKEN_STORE": f"file://{tmp_path}/store"})
    assert result.code == 0, result.out
    assert f"ok    token store         {tmp_path}/store (QLAM_TOKEN_STORE" in result.out
    assert _lines(result.out)["cached token"] == "ok"


def test_a_cache_path_that_is_a_file_fails(good, tmp_path):
    """The cache directory is a file: FAIL, exit 8."""
    path = tmp_path / "not-a-dir"
    path.write_text("x")
    result = run_cli("doctor", env={**good, "QLAM_TOKEN_CACHE_DIR": str(path)})
    assert result.code == 8 and "is not a directory" in result.out


def test_a_cache_open_to_others_is_a_warning(good, tmp_path):
    """A cache directory of mode 0755 works (it is tightened at use) but is reported."""
    directory = tmp_path / "open"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    result = run_cli("doctor", env={**good, "QLAM_TOKEN_CACHE_DIR": str(directory)})
    assert result.code == 0
    assert _lines(result.out)["cache directory"] == "warn" and "mode 0755" in result.out
    assert "(1 warning)" in result.out


def test_a_missing_cache_directory_is_fine(good, tmp_path):
    """A cache directory that does not exist yet is made at the first fetch: ok, and locking is tried beside it."""
    result = run_cli("doctor", env={**good, "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "later" / "cache")})
    assert result.code == 0 and "does not exist yet" in result.out
    assert _lines(result.out)["cache locking"] == "ok"


@pytest.mark.parametrize(("offset", "verdict"), [(0, "ok"), (30, "warn"), (-30, "warn"), (600, "FAIL"), (-600, "FAIL")])
def test_clock_skew_against_the_date_header(offset, verdict):
    """Seconds of skew are fine, half a minute is a warning, ten minutes a failure (exit 3)."""
    now = time.time()
    check = _clock(formatdate(now + offset, usegmt=True), now, now)
    assert check.verdict == verdict
    assert check.code == (3 if verdict == "FAIL" else 0)


def test_no_date_header_is_a_warning():
    """Without a Date header the clock cannot be compared."""
    assert _clock(None, 0, 0).verdict == "warn"


def test_filesystem_type_is_named(tmp_path):
    """The cache's filesystem type comes from /proc/self/mounts."""
    assert _filesystem(str(tmp_path)).startswith("filesystem ")


def test_doctor_is_listed_in_help(env):
    """qlam-hpc --help lists doctor, and auth --help lists check."""
    assert "doctor" in run_cli("--help", env=env).out
    assert "check" in run_cli("auth", "--help", env=env).out
