"""One real sandbox on loopback shared by the tests of this folder, reset before each test.

Its signing key comes from a PEM file the tests also hold, so they can forge
tokens (expired, wrong audience) that carry a valid signature.  It has two users
and two device clients, and helpers here run the device code flow against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig, SandboxUser

API = "https://api.quera.com"
OTHER_API = "https://other.example.com"

ALICE = SandboxClient("alice", "alice-secret", scopes=("read:tasks", "write:tasks"))
BOB = SandboxClient("bob", "bob-secret", audiences=(API,))

ADA = SandboxUser("auth0|sandbox-user-1", "ada@example.org", "Ada Lovelace")
GRACE = SandboxUser("auth0|sandbox-user-2", "grace@example.org", "Grace Hopper")
DEVICE = "qlam-sandbox-device"
OTHER_DEVICE = "other-device"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
FULL_SCOPE = "openid email profile offline_access"


@pytest.fixture(scope="session")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def key_file(private_key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "signing.pem"
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def shared_idp(key_file: Path) -> Iterator[Sandbox]:
    config = SandboxConfig(
        clients=(ALICE, BOB),
        audiences=(API, OTHER_API),
        signing_key_file=key_file,
        users=(ADA, GRACE),
        device_clients=(DEVICE, OTHER_DEVICE),
    )
    with Sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture
def idp(shared_idp: Sandbox) -> Sandbox:
    """The shared sandbox with zeroed stats and no faults."""
    shared_idp.reset()
    return shared_idp


@pytest.fixture
def user_idp(idp: Sandbox) -> Sandbox:
    """The shared sandbox, reset, with device codes that may be polled back to back."""
    idp.set_faults(device_poll_interval=0)
    return idp


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """One client for all tests: building an httpx.Client (its TLS context) costs ~40 ms."""
    with httpx.Client(timeout=10) as client:
        yield client


def token_form(client: SandboxClient = ALICE, audience: str = API, **extra: str) -> dict[str, str]:
    """A valid client_credentials form for ``client``; ``extra`` adds or overrides fields."""
    form = {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "audience": audience,
    }
    form.update(extra)
    return {k: v for k, v in form.items() if v is not None}


def fetch_token(http: httpx.Client, idp: Sandbox, **form: str) -> str:
    response = http.post(idp.token_url, data=token_form(**form))
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def jwks_key(http: httpx.Client, idp: Sandbox) -> jwt.PyJWK:
    """The signing key as published over HTTP, the way a resource server gets it."""
    discovery = http.get(idp.url + "/.well-known/openid-configuration").json()
    keys = http.get(discovery["jwks_uri"]).json()["keys"]
    assert len(keys) == 1
    return jwt.PyJWK(keys[0])


def start_login(
    http: httpx.Client, idp: Sandbox, scope: str = FULL_SCOPE, client_id: str = DEVICE, audience: str = API
) -> dict:
    """POST /oauth/device/code; the answer's JSON."""
    response = http.post(
        idp.url + "/oauth/device/code", data={"client_id": client_id, "scope": scope, "audience": audience}
    )
    assert response.status_code == 200, response.text
    return response.json()


def poll(http: httpx.Client, idp: Sandbox, device_code: str, client_id: str = DEVICE) -> httpx.Response:
    """One device_code grant request."""
    form = {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": client_id}
    return http.post(idp.token_url, data=form)


def login(
    http: httpx.Client, idp: Sandbox, scope: str = FULL_SCOPE, user: str | None = None, client_id: str = DEVICE
) -> dict:
    """A whole device login, approved through the Python API; the token answer's JSON."""
    started = start_login(http, idp, scope, client_id)
    idp.approve(started["user_code"], user)
    response = poll(http, idp, started["device_code"], client_id)
    assert response.status_code == 200, response.text
    return response.json()


def refresh(
    http: httpx.Client, idp: Sandbox, refresh_token: str, client_id: str = DEVICE, **extra: str
) -> httpx.Response:
    """One refresh_token grant request, as a public client sends it (no secret)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id, **extra}
    return http.post(idp.token_url, data=form)


def claims_of(token: str) -> dict:
    """A JWT's claims, unverified (tests that verify use jwks_key)."""
    return jwt.decode(token, options={"verify_signature": False})
