"""Real secret stores on loopback for the tests: Vault's API (OpenBao, see vault_service.py)
and AWS Secrets Manager (moto's server).

``vault`` is a real OpenBao dev server (one per test session, with a file audit device)
behind the small interface the secret-source tests use: ``put``, ``env``, ``add_approle``,
``reads`` (KV reads this test made, counted from Vault's own audit log), ``sealed``.

``FailingProxy`` is the one stand-in left, for what a real Vault cannot show: a proxy or
load balancer in front of Vault that answers with its own error page (HTML, no Vault JSON).
Everything Vault itself does (KV v2, tokens, AppRole, namespaces, policies, sealing) is
shown by the real server.

Fixtures: ``vault`` (the real server, root login) and ``aws`` (one moto server per session;
each test makes its own secret names).
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qlam_hpc._secrets import _BotocoreBodiesUnlogged
from vault_service import Bao, start_bao


class RealVault:
    """The session's OpenBao server, seen by one test."""

    def __init__(self, server: Bao) -> None:
        self.server = server
        self._start = server.audit.stat().st_size if server.audit.exists() else 0
        self._mounts: set[str] = {"secret"}

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str:
        return self.server.root_token

    def put(self, mount: str, path: str, data: dict) -> None:
        """Write a KV v2 secret, making the mount (KV version 2) first if it is new."""
        client = self.server.client()
        if mount not in self._mounts:
            if f"{mount}/" not in client.sys.list_mounted_secrets_engines():
                client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
            self._mounts.add(mount)
        self.server.put(mount, path, data)

    def add_approle(self) -> tuple[str, str]:
        """An AppRole whose tokens may read every KV secret: ``(role_id, secret_id)``."""
        return self.server.approle(self.server.policy('path "*" { capabilities = ["read"] }'))

    def env(self, **extra: str) -> dict[str, str]:
        return {"VAULT_ADDR": self.url, "VAULT_TOKEN": self.token, **extra}

    @property
    def reads(self) -> int:
        """KV secrets read (successfully) since this test began, as Vault's audit log has them."""
        count = 0
        with open(self.server.audit, encoding="utf-8") as log:
            log.seek(self._start)
            for line in log:
                record = json.loads(line)
                request = record.get("request") or {}
                if (
                    record.get("type") == "response"
                    and request.get("operation") == "read"
                    and "/data/" in (request.get("path") or "")
                    and not record.get("error")
                    and (record.get("response") or {}).get("data")
                ):
                    count += 1
        return count

    @property
    def sealed(self) -> bool:
        return bool(self.server.client().sys.read_seal_status()["sealed"])

    @sealed.setter
    def sealed(self, value: bool) -> None:
        if value:
            self.server.seal()
        else:
            self.server.unseal()


_server: list[Bao] = []  # one per session, started by the first test that asks


def _vault_server(request) -> Bao:
    # Not a session fixture of its own: test modules import ``vault`` alone, by name.
    if not _server:
        directory = request.config._tmp_path_factory.mktemp("openbao-secrets")
        server = start_bao(directory / "server", audit=directory / "audit.log")
        request.config.add_cleanup(server.stop)
        _server.append(server)
    return _server[0]


@pytest.fixture
def vault(request) -> RealVault:
    """The server, as a fresh process sees it: no value remembered from an earlier test (the
    server and its paths outlive a test; the process memory of secrets must not)."""
    from qlam_hpc import _secrets

    with _secrets._remembered_lock:
        _secrets._remembered.clear()
    real = RealVault(_vault_server(request))
    yield real
    if real.sealed:
        real.sealed = False


class FailingProxy:
    """An HTTP server on 127.0.0.1 that answers every request with ``status`` and an HTML page,
    as a proxy or load balancer in front of an unavailable Vault does."""

    def __init__(self, status: int = 502) -> None:
        self.status = status

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _page(self) -> None:
                body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                self.send_response(proxy.status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _page  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class AwsSecrets:
    """moto's AWS server mode on loopback, with dummy credentials."""

    def __init__(self, server, tmp_dir) -> None:
        import boto3

        host, port = server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            # Keep the developer's own AWS set-up out of the tests.
            "AWS_CONFIG_FILE": str(tmp_dir / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_dir / "no-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        self.client = boto3.client(
            "secretsmanager",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def env(self, **extra: str) -> dict[str, str]:
        return {**self._env, **extra}

    def create(self, value: str | dict) -> str:
        """A new secret holding ``value`` (a dict becomes a JSON SecretString); its name."""
        name = f"qlam/test-{uuid.uuid4().hex[:12]}"
        text = json.dumps(value) if isinstance(value, dict) else value
        with _BotocoreBodiesUnlogged():  # botocore logs the request, the secret in it, at DEBUG
            self.client.create_secret(Name=name, SecretString=text)
        return name

    def update(self, name: str, value: str | dict) -> None:
        text = json.dumps(value) if isinstance(value, dict) else value
        with _BotocoreBodiesUnlogged():
            self.client.put_secret_value(SecretId=name, SecretString=text)


@pytest.fixture(scope="session")
def aws(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield AwsSecrets(server, tmp_path_factory.mktemp("aws"))
    finally:
        server.stop()
