"""The public surface and the in-process runner: lifecycle, URLs, environment, signing keys."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import qlam_hpc.sandbox
from qlam_hpc._errors import ConfigurationError
from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig, create_app

from .conftest import token_form


def test_public_surface() -> None:
    """The package exports exactly Sandbox, SandboxConfig, SandboxClient and create_app."""
    assert sorted(qlam_hpc.sandbox.__all__) == [
        "Sandbox",
        "SandboxClient",
        "SandboxConfig",
        "SandboxUser",
        "create_app",
    ]
    for name in qlam_hpc.sandbox.__all__:
        assert getattr(qlam_hpc.sandbox, name) is not None


def test_config_import_does_not_load_the_web_stack() -> None:
    """Importing the package and its CLI command loads neither FastAPI nor uvicorn nor PyJWT."""
    code = (
        "import sys, qlam_hpc.sandbox, qlam_hpc.sandbox._command; "
        "loaded = {'fastapi', 'uvicorn', 'jwt'} & set(sys.modules); assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_env_names_what_a_client_needs(idp: Sandbox) -> None:
    """env() gives the base URL, the first client's credentials, the first audience and the API URL."""
    assert idp.env() == {
        "AUTH_BASE_URL": idp.url,
        "QLAM_CLIENT_ID": "alice",
        "QLAM_CLIENT_SECRET": "alice-secret",
        "QLAM_AUDIENCE": "https://api.quera.com",
        "QLAM_API_URL": idp.url,
    }
    assert idp.url.startswith("http://127.0.0.1:")
    assert idp.issuer == idp.url + "/"
    assert idp.token_url == idp.url + "/oauth/token"
    assert idp.client.client_id == "alice"
    assert idp.audience == "https://api.quera.com"


def test_stop_closes_the_port(http: httpx.Client) -> None:
    """After the with block the server is gone and its port refuses connections."""
    with Sandbox() as idp:
        assert http.post(idp.token_url, data=token_form(idp.client)).status_code == 200
        url = idp.url
        assert idp.running
    assert not idp.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/.well-known/jwks.json", timeout=2)


def test_not_started_and_started_twice() -> None:
    """URLs need a started sandbox, and a sandbox starts only once."""
    idp = Sandbox()
    with pytest.raises(RuntimeError, match="not started"):
        _ = idp.url
    with idp, pytest.raises(RuntimeError, match="already started"):
        idp.start()


def test_fixed_port_is_used(http: httpx.Client) -> None:
    """A configured port is the one served."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Sandbox(SandboxConfig.default(port=port)) as idp:
        assert idp.url == f"http://127.0.0.1:{port}"
        assert http.get(idp.url + "/.well-known/jwks.json").status_code == 200


def test_port_in_use_fails_to_start() -> None:
    """Starting on a port another socket holds raises OSError."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError):
            Sandbox(SandboxConfig.default(port=holder.getsockname()[1])).start()


def test_new_key_per_run_unless_a_file_is_given(http: httpx.Client, key_file: Path) -> None:
    """Generated keys differ per run; a key file gives the same kid every run."""

    def kid(config: SandboxConfig) -> str:
        with Sandbox(config) as idp:
            return http.get(idp.url + "/.well-known/jwks.json").json()["keys"][0]["kid"]

    client = SandboxClient("c", "s")
    assert kid(SandboxConfig(clients=(client,))) != kid(SandboxConfig(clients=(client,)))
    assert kid(SandboxConfig(clients=(client,), signing_key_file=key_file)) == kid(
        SandboxConfig(clients=(client,), signing_key_file=key_file)
    )


def test_bad_key_file_is_refused(tmp_path: Path) -> None:
    """A signing key file that holds no RSA private key raises ConfigurationError."""
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigurationError, match="signing key"):
        create_app(SandboxConfig.default(signing_key_file=path))


def test_a_key_file_others_can_read_is_refused(tmp_path: Path, key_file: Path) -> None:
    """Whoever can read the signing key can mint tokens the sandbox accepts: a group- or
    world-readable key file is refused, naming the file and the fix, and nothing is served."""
    exposed = tmp_path / "exposed.pem"
    exposed.write_bytes(key_file.read_bytes())
    exposed.chmod(0o644)
    with pytest.raises(
        ConfigurationError, match=r"signing key file: .*exposed.pem is readable by group or others.*chmod 600"
    ):
        create_app(SandboxConfig.default(signing_key_file=exposed))
    exposed.chmod(0o600)
    assert create_app(SandboxConfig.default(signing_key_file=exposed)) is not None


def test_create_app_without_base_url_follows_the_request() -> None:
    """A bare create_app() takes its issuer and endpoint URLs from the request's own URL."""

    async def discovery() -> dict:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://idp.test") as client:
            return (await client.get("/.well-known/openid-configuration")).json()

    doc = asyncio.run(discovery())
    assert doc["issuer"] == "http://idp.test/"
    assert doc["token_endpoint"] == "http://idp.test/oauth/token"
