"""Real secret stores on loopback for the tests: AWS Secrets Manager (moto's server) and a
stand-in for HashiCorp Vault's KV version 2 HTTP API.

No Vault server can be installed here, so ``VaultStandIn`` is a tiny real HTTP server
that answers the handful of Vault API calls qlam-hpc makes, with Vault's paths, headers
and JSON shapes (``GET /v1/<mount>/data/<path>`` with ``X-Vault-Token`` and
``X-Vault-Namespace``, ``POST /v1/auth/approle/login``), and the tests drive it with the
real hvac client. It is not Vault: no policies, leases, versions history or sealing
beyond a switch that makes it answer 503.

Fixtures: ``vault`` (one stand-in per test) and ``aws`` (one moto server per session;
each test makes its own secret names).
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class VaultStandIn:
    """KV v2 secrets, tokens and AppRole credentials, served on 127.0.0.1."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace
        self.tokens = {"s.root-" + secrets.token_hex(8)}
        self.approles: dict[tuple[str, str], None] = {}
        self.kv: dict[tuple[str, str], dict] = {}
        self.reads = 0  # KV reads answered, to show when qlam-hpc did (not) ask
        self.sealed = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def token(self) -> str:
        return next(iter(self.tokens))

    def put(self, mount: str, path: str, data: dict) -> None:
        with self._lock:
            self.kv[(mount, path)] = dict(data)

    def add_approle(self) -> tuple[str, str]:
        role_id, secret_id = str(uuid.uuid4()), secrets.token_hex(16)
        self.approles[(role_id, secret_id)] = None
        return role_id, secret_id

    def env(self, **extra: str) -> dict[str, str]:
        env = {"VAULT_ADDR": self.url, "VAULT_TOKEN": self.token}
        if self.namespace:
            env["VAULT_NAMESPACE"] = self.namespace
        return {**env, **extra}

    def start(self) -> VaultStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # no request log
                pass

            def _answer(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _refused(self) -> bool:
                if store.sealed:
                    self._answer(503, {"errors": ["Vault is sealed"]})
                    return True
                if store.namespace and self.headers.get("X-Vault-Namespace") != store.namespace:
                    self._answer(403, {"errors": ["permission denied"]})
                    return True
                return False

            def do_GET(self) -> None:  # noqa: N802
                if self._refused():
                    return
                if self.headers.get("X-Vault-Token") not in store.tokens:
                    self._answer(403, {"errors": ["permission denied"]})
                    return
                parts = self.path.split("?")[0].split("/")
                # /v1/<mount>/data/<path...>
                if len(parts) < 5 or parts[1] != "v1" or parts[3] != "data":
                    self._answer(404, {"errors": []})
                    return
                with store._lock:
                    data = store.kv.get((parts[2], "/".join(parts[4:])))
                    if data is not None:
                        store.reads += 1
                if data is None:
                    self._answer(404, {"errors": []})
                    return
                metadata = {"created_time": "2026-01-01T00:00:00Z", "deletion_time": "", "destroyed": False, "version": 1}
                self._answer(
                    200,
                    {
                        "request_id": str(uuid.uuid4()),
                        "lease_id": "",
                        "renewable": False,
                        "lease_duration": 0,
                        "data": {"data": data, "metadata": metadata},
                        "wrap_info": None,
                        "warnings": None,
                        "auth": None,
                    },
                )

            def do_POST(self) -> None:  # noqa: N802
                if self._refused():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v1/auth/approle/login":
                    self._answer(404, {"errors": []})
                    return
                if (body.get("role_id"), body.get("secret_id")) not in store.approles:
                    self._answer(400, {"errors": ["invalid role or secret ID"]})
                    return
                token = "s.approle-" + secrets.token_hex(8)
                store.tokens.add(token)
                self._answer(
                    200,
                    {"auth": {"client_token": token, "accessor": "x", "policies": ["default"], "lease_duration": 3600, "renewable": True}},
                )

        return Handler


@pytest.fixture
def vault():
    stand_in = VaultStandIn().start()
    yield stand_in
    stand_in.stop()


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
        self.client.create_secret(Name=name, SecretString=text)
        return name

    def update(self, name: str, value: str | dict) -> None:
        text = json.dumps(value) if isinstance(value, dict) else value
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
