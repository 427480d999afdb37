"""The sandbox's TLS mode: https with a throw-away CA that the exported environment trusts."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx

from qlam_hpc.sandbox import Sandbox

QLAM_HPC = str(Path(sys.executable).with_name("qlam-hpc"))


def test_tls_sandbox_serves_https_trusted_through_ssl_cert_file(tmp_path):
    with Sandbox(tls=True) as sandbox:
        env = sandbox.env()
        assert sandbox.url.startswith("https://127.0.0.1:")
        assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == sandbox.ca_file
        trusted = ssl.create_default_context(cafile=sandbox.ca_file)
        discovery = httpx.get(f"{sandbox.url}/.well-known/openid-configuration", verify=trusted).json()
        assert discovery["token_endpoint"] == f"{sandbox.url}/oauth/token"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SSL_", "REQUESTS_"))}
        run_env = {**clean, **env, "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache")}
        for args in (["token"], ["tasks", "list", "--json"], ["api", "GET", "/v2/squin-256q/tasks"]):
            done = subprocess.run([QLAM_HPC, *args], env=run_env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        # Without the CA, the certificate is not trusted: exit 18, the TLS error.
        untrusted = {k: v for k, v in run_env.items() if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
        done = subprocess.run(
            [QLAM_HPC, "api", "GET", "/userinfo"], env=untrusted, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 18 and "certificate verify failed" in done.stderr
        ca_file = sandbox.ca_file
    assert not os.path.exists(ca_file)  # removed at stop


def test_tls_option_of_the_command_exports_the_ca(tmp_path):
    env_file = tmp_path / "sandbox.env"
    server = subprocess.Popen([QLAM_HPC, "sandbox", "--tls", "--env-file", str(env_file)], stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 30
        while not (env_file.exists() and env_file.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        text = env_file.read_text()
        assert "export AUTH_BASE_URL=https://127.0.0.1:" in text and "export SSL_CERT_FILE=" in text
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_over_https_the_approvers_cookie_is_secure_too():
    """With --tls the cookie the owner's link sets is also Secure: a browser never sends it over plain http."""
    with Sandbox(tls=True) as sandbox:
        answer = httpx.get(sandbox.approve_url, verify=ssl.create_default_context(cafile=sandbox.ca_file))
    assert answer.status_code == 303
    flags = {part.strip().lower() for part in answer.headers["set-cookie"].split(";")[1:]}
    assert flags == {"httponly", "samesite=strict", "path=/", "secure"}
