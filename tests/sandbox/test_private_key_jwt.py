"""The sandbox's client authentication: private_key_jwt (RFC 7523), client_secret_basic, the
``resource`` parameter, and rotating credentials at run time (``POST /_sandbox/clients``).

Assertions are built here with PyJWT, independently of qlam-hpc's own client, so these
tests pin the server; tests/test_client_auth.py and tests/test_rotation.py pin the client.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from qlam_hpc import ConfigurationError, Settings, TokenProvider
from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig

API = "https://api.quera.com"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _private_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _jwk(key, kid: str) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}


CLIENTS = (
    SandboxClient("secret-client", "secret-client-secret", scopes=("read:tasks",)),
    SandboxClient("rsa-client", public_keys=(_public_pem(RSA_KEY),)),
    SandboxClient("ec-client", jwks={"keys": [_jwk(EC_KEY, "ec-1")]}),
    SandboxClient("basic-only", "basic-only-secret", auth_methods=("client_secret_basic",)),
    SandboxClient("rotating", "first-secret-value"),
)


@pytest.fixture(scope="module")
def idp() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(clients=CLIENTS, audiences=(API, "https://other.example"))) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _assertion(idp: Sandbox, client_id: str, key=RSA_KEY, alg: str = "RS256", **changes) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": idp.token_url,
        "jti": secrets.token_urlsafe(16),
        "iat": now,
        "exp": now + 60,
    }
    headers = changes.pop("headers", None)
    claims.update(changes)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=alg, headers=headers)


def _post(http: httpx.Client, idp: Sandbox, assertion: str, **form) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "audience": API,
    }
    data.update(form)
    return http.post(idp.token_url, data={k: v for k, v in data.items() if v is not None})


def _refused(response: httpx.Response, error: str = "invalid_client", status: int = 401) -> str:
    assert (response.status_code, response.json()["error"]) == (status, error), response.text
    return response.json()["error_description"]


# --- private_key_jwt ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "key", "alg"),
    [("rsa-client", RSA_KEY, "RS256"), ("rsa-client", RSA_KEY, "PS256"), ("ec-client", EC_KEY, "ES256")],
)
def test_assertions_signed_with_a_registered_key_get_a_token(idp, http, client_id, key, alg):
    """RS256, PS256 (RSA key from PEM) and ES256 (EC key from a JWKS) assertions are accepted."""
    response = _post(http, idp, _assertion(idp, client_id, key, alg))
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["sub"] == f"{client_id}@clients"


def test_a_replayed_assertion_is_refused(idp, http):
    """The same assertion twice: the second is invalid_client, naming the replay."""
    assertion = _assertion(idp, "rsa-client")
    assert _post(http, idp, assertion).status_code == 200
    assert "jti replayed" in _refused(_post(http, idp, assertion))


def test_the_issuer_is_an_accepted_audience(idp, http):
    """RFC 7523 lets aud name the authorization server: the issuer is accepted as well as the endpoint."""
    assert _post(http, idp, _assertion(idp, "rsa-client", aud=idp.issuer)).status_code == 200


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"aud": "https://elsewhere.example/oauth/token"}, "aud must be the token endpoint"),
        ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 180}, "has expired"),
        ({"exp": int(time.time()) + 3600}, "lives longer than 300 seconds"),
        ({"jti": None}, "lacks the jti claim"),
        ({"exp": None}, "lacks the exp claim"),
        ({"sub": "someone-else"}, "sub must be the client id"),
        ({"key": STRANGER_KEY}, "signature does not verify"),
        (
            {"headers": {"kid": "unknown-kid"}, "key": EC_KEY, "alg": "ES256", "client": "ec-client"},
            "No registered key",
        ),
    ],
)
def test_bad_assertions_are_invalid_client(idp, http, changes, message):
    """Wrong audience, expired, too long-lived, no jti or exp, wrong subject, another key, unknown kid: refused."""
    changes = dict(changes)
    key, alg, client = changes.pop("key", RSA_KEY), changes.pop("alg", "RS256"), changes.pop("client", "rsa-client")
    assert message in _refused(_post(http, idp, _assertion(idp, client, key, alg, **changes)))


def test_unsigned_or_hmac_assertions_are_refused(idp, http):
    """alg none, or an HMAC keyed with anything, is never accepted for private_key_jwt."""
    now = int(time.time())
    claims = {"iss": "rsa-client", "sub": "rsa-client", "aud": idp.token_url, "jti": "x", "iat": now, "exp": now + 60}
    for assertion in (jwt.encode(claims, None, algorithm="none"), jwt.encode(claims, "k" * 32, algorithm="HS256")):
        assert "is not accepted" in _refused(_post(http, idp, assertion))


def test_assertion_type_and_client_id_are_checked(idp, http):
    """A wrong client_assertion_type is invalid_request; a client_id that differs from iss is refused."""
    assertion = _assertion(idp, "rsa-client")
    _refused(_post(http, idp, assertion, client_assertion_type="urn:x"), "invalid_request", 400)
    signed_by_ec_client = _assertion(idp, "ec-client", EC_KEY, "ES256", iss="rsa-client")
    assert "iss must be the client id" in _refused(_post(http, idp, signed_by_ec_client, client_id="ec-client"))
    _refused(_post(http, idp, "not-a-jwt"))


def test_a_key_only_client_cannot_use_a_secret(idp, http):
    """A client registered with keys only has no secret to post."""
    form = {"grant_type": "client_credentials", "client_id": "rsa-client", "client_secret": "guess", "audience": API}
    assert "not allowed" in _refused(http.post(idp.token_url, data=form))


def test_qlam_hpc_gets_tokens_with_rsa_and_ec_keys(idp, tmp_path):
    """TokenProvider with a private key file (RSA and EC) gets tokens from the sandbox: no secret is sent."""
    for client_id, key in (("rsa-client", RSA_KEY), ("ec-client", EC_KEY)):
        key_file = tmp_path / f"{client_id}.pem"
        key_file.write_text(_private_pem(key))
        key_file.chmod(0o600)
        env = {
            "AUTH_BASE_URL": idp.url,
            "QLAM_CLIENT_ID": client_id,
            "QLAM_CLIENT_PRIVATE_KEY_FILE": str(key_file),
            "QLAM_CLIENT_KEY_ID": "ec-1" if client_id == "ec-client" else "",
            "QLAM_TOKEN_CACHE_DIR": str(tmp_path / client_id),
        }
        result = TokenProvider(Settings.from_env(env)).get()
        assert result.source == "fetched"
        assert (
            jwt.decode(result.token.access_token, options={"verify_signature": False})["sub"] == f"{client_id}@clients"
        )


# --- client_secret_basic, and no mixing -----------------------------------------------------------


def _basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_basic_authentication(idp, http):
    """client_secret_basic gets a token; a wrong secret is 401 invalid_client with a Basic challenge."""
    form = {"grant_type": "client_credentials", "audience": API}
    assert (
        http.post(idp.token_url, data=form, headers=_basic("secret-client", "secret-client-secret")).status_code == 200
    )
    response = http.post(idp.token_url, data=form, headers=_basic("secret-client", "wrong"))
    assert _refused(response) == "Client authentication failed"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert "wrong" not in response.text


def test_methods_cannot_be_mixed(idp, http):
    """A Basic header and a secret in the body together are invalid_request (RFC 6749 section 2.3)."""
    form = {
        "grant_type": "client_credentials",
        "audience": API,
        "client_id": "secret-client",
        "client_secret": "secret-client-secret",
    }
    response = http.post(idp.token_url, data=form, headers=_basic("secret-client", "secret-client-secret"))
    assert "more than one authentication method" in _refused(response, "invalid_request", 400)


def test_a_client_limited_to_basic_cannot_post_its_secret(idp, http):
    """auth_methods restricts a client: basic-only refuses client_secret_post."""
    form = {
        "grant_type": "client_credentials",
        "audience": API,
        "client_id": "basic-only",
        "client_secret": "basic-only-secret",
    }
    assert "client_secret_post is not allowed" in _refused(http.post(idp.token_url, data=form))
    assert (
        http.post(
            idp.token_url,
            data={"grant_type": "client_credentials", "audience": API},
            headers=_basic("basic-only", "basic-only-secret"),
        ).status_code
        == 200
    )


# --- the resource parameter ---------------------------------------------------------------


def test_resource_names_the_api(idp, http):
    """RFC 8707: resource works like Auth0's audience; an unknown one is invalid_target."""
    form = {"grant_type": "client_credentials", "client_id": "secret-client", "client_secret": "secret-client-secret"}
    response = http.post(idp.token_url, data={**form, "resource": "https://other.example"})
    assert (
        jwt.decode(response.json()["access_token"], options={"verify_signature": False})["aud"]
        == "https://other.example"
    )
    _refused(http.post(idp.token_url, data={**form, "resource": "https://unknown.example"}), "invalid_target", 400)
    _refused(
        http.post(idp.token_url, data={**form, "resource": API, "audience": "https://other.example"}),
        "invalid_request",
        400,
    )


# --- rotating credentials at run time ---------------------------------------------------------


def test_rotating_a_secret(idp, http):
    """POST /_sandbox/clients changes a secret at once; the answer never repeats it."""
    form = {"grant_type": "client_credentials", "client_id": "rotating", "audience": API}
    assert http.post(idp.token_url, data={**form, "client_secret": "first-secret-value"}).status_code == 200
    answer = http.post(
        idp.url + "/_sandbox/clients",
        headers=idp.control_headers(),
        json={"client_id": "rotating", "client_secret": "second-secret-value"},
    )
    assert answer.json() == {"client_id": "rotating", "updated": ["client_secret"]}
    assert "second-secret-value" not in answer.text
    _refused(http.post(idp.token_url, data={**form, "client_secret": "first-secret-value"}))
    assert http.post(idp.token_url, data={**form, "client_secret": "second-secret-value"}).status_code == 200


def test_rotating_keys(idp, http):
    """POST /_sandbox/clients with a JWKS replaces a client's keys: the old key stops working."""
    new_key = ec.generate_private_key(ec.SECP256R1())
    update = {"client_id": "ec-client", "jwks": {"keys": [_jwk(new_key, "ec-2")]}}
    assert http.post(idp.url + "/_sandbox/clients", headers=idp.control_headers(), json=update).json()["updated"] == [
        "jwks"
    ]
    try:
        _refused(_post(http, idp, _assertion(idp, "ec-client", EC_KEY, "ES256")))
        assert _post(http, idp, _assertion(idp, "ec-client", new_key, "ES256")).status_code == 200
    finally:
        http.post(
            idp.url + "/_sandbox/clients",
            headers=idp.control_headers(),
            json={"client_id": "ec-client", "jwks": {"keys": [_jwk(EC_KEY, "ec-1")]}},
        )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"client_id": "nobody", "client_secret": "x"}, 404),
        ({"client_secret": "x"}, 400),
        ({"client_id": "rotating", "colour": 1}, 400),
        ({"client_id": "rotating", "client_secret": " "}, 400),
    ],
)
def test_bad_client_updates(idp, http, body, status):
    """Unknown clients are 404; malformed bodies and unusable values are 400, and nothing changes."""
    assert http.post(idp.url + "/_sandbox/clients", headers=idp.control_headers(), json=body).status_code == status


def test_discovery_lists_every_method(idp, http):
    """The discovery document offers the three methods and the assertion algorithms."""
    doc = http.get(idp.url + "/.well-known/openid-configuration").json()
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_post",
        "client_secret_basic",
        "private_key_jwt",
    }
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["ES256", "PS256", "RS256"]


# --- registering keys from files --------------------------------------------------------------


def test_clients_file_registers_keys_from_jwks_and_pem_files(tmp_path, http):
    """A clients file names a JWKS file or a PEM public key file; both clients then get tokens."""
    (tmp_path / "ec.jwks.json").write_text(json.dumps({"keys": [_jwk(EC_KEY, "ec-1")]}))
    (tmp_path / "rsa.pub.pem").write_text(_public_pem(RSA_KEY))
    (tmp_path / "clients.json").write_text(
        json.dumps(
            {
                "clients": [
                    {"client_id": "pem", "public_key_file": "rsa.pub.pem", "auth_methods": ["private_key_jwt"]},
                    {"client_id": "jwks", "jwks_file": "ec.jwks.json"},
                ]
            }
        )
    )
    with Sandbox(SandboxConfig.from_file(tmp_path / "clients.json")) as sandbox:
        assert _post(http, sandbox, _assertion(sandbox, "pem")).status_code == 200
        assert _post(http, sandbox, _assertion(sandbox, "jwks", EC_KEY, "ES256")).status_code == 200


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"client_id": "a", "public_key_file": "missing.pem"}, "cannot read"),
        ({"client_id": "a", "jwks": {"keys": "no"}}, "must be a JWK set"),
        ({"client_id": "a", "auth_methods": ["tls_client_auth"], "client_secret": "s"}, "auth_methods"),
        ({"client_id": "a"}, "client_secret or public keys"),
    ],
)
def test_bad_key_registrations_are_refused(tmp_path, entry, message):
    """Unreadable files, malformed JWK sets and unknown methods are ConfigurationErrors naming the file."""
    (tmp_path / "clients.json").write_text(json.dumps({"clients": [entry]}))
    with pytest.raises(ConfigurationError, match=message):
        SandboxConfig.from_file(tmp_path / "clients.json")


def test_an_unusable_public_key_stops_the_sandbox_at_start(tmp_path):
    """A PEM that is no public key is refused when the sandbox starts, naming the client."""
    config = SandboxConfig(
        clients=(SandboxClient("a", public_keys=("-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n",)),)
    )
    with pytest.raises(ConfigurationError, match="client 'a' is not a PEM public key"):
        Sandbox(config).start()


def test_the_command_registers_a_public_key(tmp_path):
    """qlam-hpc sandbox --client-public-key: the exported client may sign assertions with that key."""
    (tmp_path / "key.pub.pem").write_text(_public_pem(RSA_KEY))
    (tmp_path / "key.pem").write_text(_private_pem(RSA_KEY))
    (tmp_path / "key.pem").chmod(0o600)
    env_file = tmp_path / "sandbox.env"
    command = [
        str(Path(sys.executable).with_name("qlam-hpc")),
        "sandbox",
        "--env-file",
        str(env_file),
        "--client-public-key",
        str(tmp_path / "key.pub.pem"),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (env_file.exists() and env_file.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        values = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
        env = {
            "AUTH_BASE_URL": values["AUTH_BASE_URL"],
            "QLAM_CLIENT_ID": values["QLAM_CLIENT_ID"].strip("'"),
            "QLAM_CLIENT_PRIVATE_KEY_FILE": str(tmp_path / "key.pem"),
            "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache"),
        }
        assert TokenProvider(Settings.from_env(env)).get().source == "fetched"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_key_only_first_client_exports_no_secret(tmp_path):
    """qlam-hpc sandbox --clients-file whose first client has keys only: the env file has no QLAM_CLIENT_SECRET."""
    (tmp_path / "rsa.pub.pem").write_text(_public_pem(RSA_KEY))
    (tmp_path / "clients.json").write_text(
        json.dumps({"clients": [{"client_id": "pem", "public_key_file": "rsa.pub.pem"}]})
    )
    env_file = tmp_path / "sandbox.env"
    command = [
        str(Path(sys.executable).with_name("qlam-hpc")),
        "sandbox",
        "--env-file",
        str(env_file),
        "--clients-file",
        str(tmp_path / "clients.json"),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while (
            not (env_file.exists() and env_file.stat().st_size)
            and time.monotonic() < deadline
            and server.poll() is None
        ):
            time.sleep(0.05)
        text = env_file.read_text()
        assert "export QLAM_CLIENT_ID=pem" in text and "QLAM_CLIENT_SECRET" not in text
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("aud", ["issuer", ""])
def test_qlam_hpc_assertion_audience_issuer_or_endpoint(idp, tmp_path, aud):
    """Against the sandbox, assertions addressed to the issuer (Auth0's form) or the endpoint both
    work, with discovery too."""
    key_file = tmp_path / "rsa.pem"
    key_file.write_text(_private_pem(RSA_KEY))
    key_file.chmod(0o600)
    for discovery in ("", "on"):
        env = {
            "AUTH_BASE_URL": idp.url,
            "QLAM_CLIENT_ID": "rsa-client",
            "QLAM_CLIENT_PRIVATE_KEY_FILE": str(key_file),
            "QLAM_CLIENT_ASSERTION_AUD": aud,
            "QLAM_DISCOVERY": discovery,
            "QLAM_TOKEN_CACHE": "off",
        }
        assert TokenProvider(Settings.from_env(env)).get().source == "fetched"
