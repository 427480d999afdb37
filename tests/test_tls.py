"""One TLS configuration for every connection, and TLS failures that say what to fix.

A real HTTPS server on 127.0.0.1 with a certificate from a throw-away CA: trusted
through ``SSL_CERT_FILE``, ``SSL_CERT_DIR`` or ``REQUESTS_CA_BUNDLE`` (``VAULT_CACERT``
for Vault), refused without them; and https spoken to the plain-http sandbox. Neither
failure is retried as if the network were down, nor reported as "unreachable".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from conftest import FAST_RETRY, run_cli
from loopback_servers import HttpsServer, make_authority
from qlam_hpc import RetryPolicy, Settings
from qlam_hpc._errors import ConfigurationError, TlsError
from qlam_hpc._http import fetch_token, start_device_login

pytestmark = pytest.mark.timeout(60)

CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "VAULT_CACERT", "VAULT_CAPATH")


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def idp(authority):
    with HttpsServer(authority) as server:
        yield server


def _clean() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_", "VAULT_")) and k not in CA_VARIABLES
    }


def _env(base_url: str, tmp_path, **extra: str) -> dict[str, str]:
    return {
        **_clean(),
        "QLAM_CLIENT_ID": "tls-client",
        "QLAM_CLIENT_SECRET": "tls-secret-value",
        "AUTH_BASE_URL": base_url,
        "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache"),
        **extra,
    }


def _hashed_dir(authority, tmp_path):
    """A directory of hashed CA certificates, as SSL_CERT_DIR expects (openssl rehash)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to hash a certificate directory")
    directory = tmp_path / "certs"
    directory.mkdir()
    shutil.copy(authority.ca_pem, directory / "site-ca.pem")
    subprocess.run(["openssl", "rehash", str(directory)], check=True, capture_output=True)
    return str(directory)


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"])
def test_the_token_fetch_trusts_the_site_ca_from_each_variable(idp, authority, tmp_path, variable):
    """The variable in the environment qlam-hpc was given, not only in os.environ."""
    where = _hashed_dir(authority, tmp_path) if variable == "SSL_CERT_DIR" else str(authority.ca_pem)
    settings = Settings.from_env(_env(idp.url, tmp_path, **{variable: where})).with_(retry=FAST_RETRY)
    token = fetch_token(settings)
    assert token.access_token == "loopback-token-value"
    assert idp.requests == ["/oauth/token"]


def test_an_untrusted_certificate_fails_at_once_naming_the_setting(idp, tmp_path):
    settings = Settings.from_env(_env(idp.url, tmp_path)).with_(
        retry=RetryPolicy(attempts=5, deadline=30.0, initial_delay=0.5, max_delay=2.0)
    )
    started = time.monotonic()
    with pytest.raises(TlsError) as caught:
        fetch_token(settings)
    message = str(caught.value)
    assert message.startswith(f"certificate verify failed for {idp.url}/oauth/token")
    assert "SSL_CERT_FILE or REQUESTS_CA_BUNDLE" in message
    assert "unreachable" not in message and "\n" not in message
    assert caught.value.exit_code == 18
    assert isinstance(caught.value, ConfigurationError)
    assert idp.handshakes == 1, "a certificate failure must not be retried"
    assert time.monotonic() - started < 10


def test_a_bundle_that_does_not_vouch_for_the_server_is_named(idp, tmp_path, authority):
    other = make_authority(tmp_path / "other")
    settings = Settings.from_env(_env(idp.url, tmp_path, REQUESTS_CA_BUNDLE=str(other.ca_pem)))
    with pytest.raises(TlsError, match=f"the CA bundle {other.ca_pem} .from REQUESTS_CA_BUNDLE. does not vouch"):
        fetch_token(settings)


def test_an_unusable_bundle_is_a_configuration_error(idp, tmp_path):
    settings = Settings.from_env(_env(idp.url, tmp_path, SSL_CERT_FILE=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigurationError, match=r"missing.pem .from SSL_CERT_FILE. cannot be used"):
        fetch_token(settings)


def test_https_to_the_plain_http_sandbox_says_to_write_http(sandbox, tmp_path):
    """AUTH_BASE_URL=127.0.0.1:PORT means https; the sandbox speaks plain http there."""
    port = sandbox.url.rsplit(":", 1)[1]
    env = _env(f"127.0.0.1:{port}", tmp_path, QLAM_CLIENT_ID="test-client")
    settings = Settings.from_env(env).with_(retry=RetryPolicy(attempts=5, deadline=30.0, initial_delay=0.5))
    started = time.monotonic()
    with pytest.raises(TlsError) as caught:
        fetch_token(settings)
    message = str(caught.value)
    assert "answered in plain HTTP" in message and f"write http://127.0.0.1:{port}" in message, message
    assert "unreachable" not in message
    assert time.monotonic() - started < 10, "not retried until the 30 s deadline"
    assert sandbox.stats()["token_requests"] == 0


def test_the_cli_exits_18_with_one_line(sandbox, tmp_path):
    port = sandbox.url.rsplit(":", 1)[1]
    result = run_cli("token", env=_env(f"127.0.0.1:{port}", tmp_path))
    assert result.code == 18, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert f"write http://127.0.0.1:{port}" in result.err
    assert "tls-secret-value" not in result.err


def test_user_context_requests_share_the_trust(idp, authority, tmp_path):
    env = _env(idp.url, tmp_path, QLAM_AUTH_FLOW="device")
    with pytest.raises(TlsError, match="certificate verify failed"):
        start_device_login(Settings.from_env(env))
    trusted = Settings.from_env({**env, "SSL_CERT_FILE": str(authority.ca_pem)})
    # The stand-in answers a token to any POST: not a device authorization, but it was *reached*.
    with pytest.raises(Exception) as caught:
        start_device_login(trusted)
    assert not isinstance(caught.value, TlsError)
    assert idp.requests == ["/oauth/device/code"]


def test_doctor_uses_the_same_trust(idp, authority, tmp_path):
    env = _env(idp.url, tmp_path, QLAM_API_URL=idp.url)
    refused = run_cli("doctor", env=env)
    assert refused.code == 18, refused.out
    assert "certificate verify failed" in refused.out and "unreachable" not in refused.out
    trusted = run_cli("doctor", env={**env, "REQUESTS_CA_BUNDLE": str(authority.ca_pem)})
    lines = {line[6:25].strip(): line for line in trusted.out.splitlines()}
    assert lines["identity provider"].startswith("ok"), trusted.out
    assert lines["QLAM API"].startswith("ok"), trusted.out


def test_the_tasks_client_reads_every_variable(authority, tmp_path):
    from qlam_hpc._api._settings import ApiSettings

    directory = _hashed_dir(authority, tmp_path)
    assert ApiSettings.from_env({"SSL_CERT_DIR": directory}).ca_bundle == directory
    assert ApiSettings.from_env({"REQUESTS_CA_BUNDLE": "/b", "SSL_CERT_FILE": "/a"}).ca_bundle == "/a"


def test_the_tasks_client_does_not_retry_https_to_plain_http(sandbox):
    import httpx

    from qlam_hpc._api._transport import retryable

    port = sandbox.url.rsplit(":", 1)[1]
    with httpx.Client() as client, pytest.raises(httpx.TransportError) as caught:
        client.get(f"https://127.0.0.1:{port}/")
    assert not retryable(caught.value)


def test_vault_honours_vault_cacert(idp, authority, tmp_path):
    from qlam_hpc._secrets import VaultSecret

    pytest.importorskip("hvac")
    env = {**_clean(), "VAULT_ADDR": idp.url, "VAULT_TOKEN": "s.test"}
    source = VaultSecret.parse("vault://secret/qlam#client_secret", origin="QLAM_CLIENT_SECRET", env=env)
    with pytest.raises(TlsError) as caught:
        source.resolve(fresh=True)
    assert f"certificate verify failed for {idp.url}" in str(caught.value)
    assert "VAULT_CACERT" in str(caught.value)
    trusted = VaultSecret.parse(
        "vault://secret/qlam#client_secret",
        origin="QLAM_CLIENT_SECRET",
        env={**env, "VAULT_CACERT": str(authority.ca_pem)},
    )
    # Reached: the stand-in has no such secret (404), which is Vault's "no secret".
    with pytest.raises(ConfigurationError, match="Vault has no secret"):
        trusted.resolve(fresh=True)


def test_the_tasks_cli_names_the_tls_problem_not_unreachable(sandbox, idp, tmp_path):
    """qlam-hpc tasks against https to the plain-http sandbox, or an untrusted certificate: exit 18, one line."""
    port = sandbox.url.rsplit(":", 1)[1]
    env = {**_clean(), **sandbox.env(), "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache")}
    plain = run_cli("tasks", "list", env={**env, "QLAM_API_URL": f"https://127.0.0.1:{port}"})
    assert plain.code == 18 and f"write http://127.0.0.1:{port}" in plain.err
    untrusted = run_cli("tasks", "list", env={**env, "QLAM_API_URL": idp.url})
    assert untrusted.code == 18 and "SSL_CERT_FILE or REQUESTS_CA_BUNDLE" in untrusted.err
    assert "unreachable" not in plain.err + untrusted.err
