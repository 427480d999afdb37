"""Discovery, JWKS and /userinfo, which validates bearer tokens for real."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from qlam_hpc.sandbox import Sandbox

from .conftest import ALICE, API, GRACE, OTHER_API, fetch_token, jwks_key, login


def test_discovery_document(idp: Sandbox, http: httpx.Client) -> None:
    """The OpenID discovery document points at this sandbox's endpoints and states what it supports."""
    doc = http.get(idp.url + "/.well-known/openid-configuration").json()
    assert doc["issuer"] == idp.issuer
    assert doc["token_endpoint"] == idp.token_url
    assert doc["jwks_uri"] == idp.url + "/.well-known/jwks.json"
    assert doc["userinfo_endpoint"] == idp.url + "/userinfo"
    assert doc["device_authorization_endpoint"] == idp.url + "/oauth/device/code"
    assert doc["revocation_endpoint"] == idp.url + "/oauth/revoke"
    assert doc["grant_types_supported"] == [
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:device_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ]
    assert doc["scopes_supported"] == ["openid", "email", "profile", "offline_access", "read:tasks", "write:tasks"]
    assert doc["token_endpoint_auth_methods_supported"] == [
        "client_secret_post",
        "client_secret_basic",
        "private_key_jwt",
    ]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["ES256", "PS256", "RS256"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]


def test_jwks_publishes_the_signing_key(idp: Sandbox, http: httpx.Client, private_key: rsa.RSAPrivateKey) -> None:
    """The JWKS holds the public half of the configured key, marked for RS256 signatures."""
    (jwk,) = http.get(idp.url + "/.well-known/jwks.json").json()["keys"]
    assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RS256", "sig")
    assert jwk["kid"]
    assert jwt.PyJWK(jwk).key.public_numbers() == private_key.public_key().public_numbers()


def test_pyjwkclient_verifies_tokens(idp: Sandbox, http: httpx.Client) -> None:
    """PyJWT's own JWKS client finds the key by kid and verifies a token."""
    token = fetch_token(http, idp)
    key = jwt.PyJWKClient(idp.url + "/.well-known/jwks.json").get_signing_key_from_jwt(token)
    assert jwt.decode(token, key.key, algorithms=["RS256"], audience=API)["azp"] == ALICE.client_id


def test_userinfo_with_valid_token(idp: Sandbox, http: httpx.Client) -> None:
    """A token from the sandbox gets the caller's subject, client id and scope."""
    token = fetch_token(http, idp)
    response = http.get(idp.url + "/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json() == {"sub": "alice@clients", "client_id": "alice", "scope": "read:tasks write:tasks"}


@pytest.mark.parametrize("scope", ["openid email profile offline_access", "offline_access"])
def test_userinfo_with_a_users_token_says_who_they_are(idp: Sandbox, http: httpx.Client, scope: str) -> None:
    """A token from a device login gets the user's standard claims, whether or not it names /userinfo."""
    token = login(http, idp, scope=scope, user=GRACE.email)["access_token"]
    response = http.get(idp.url + "/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json() == {"sub": GRACE.subject, "email": GRACE.email, "name": GRACE.name, "email_verified": True}


def test_userinfo_accepts_every_configured_audience(idp: Sandbox, http: httpx.Client) -> None:
    """Tokens for any of the sandbox's audiences are accepted."""
    token = fetch_token(http, idp, audience=OTHER_API)
    assert http.get(idp.url + "/userinfo", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def _forge(idp: Sandbox, http: httpx.Client, key: rsa.RSAPrivateKey, **changes: object) -> str:
    """A token signed with the sandbox's own key (so the signature is valid), with claims changed."""
    now = int(time.time())
    claims = {"iss": idp.issuer, "sub": "alice@clients", "aud": API, "iat": now, "exp": now + 600, "azp": "alice"}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": jwks_key(http, idp).key_id})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, "token has expired"),
        ({"aud": "https://elsewhere.example"}, "token audience is not accepted"),
        ({"iss": "https://quera-identity.us.auth0.com/"}, "token issuer is not accepted"),
        ({"exp": None}, "token lacks a required claim"),
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "no-exp"],
)
def test_userinfo_rejects_bad_claims(
    idp: Sandbox, http: httpx.Client, private_key: rsa.RSAPrivateKey, changes: dict, reason: str
) -> None:
    """Validly signed tokens with bad claims get 401, an invalid_token challenge and a QLAM error body."""
    token = _forge(idp, http, private_key, **changes)
    response = http.get(idp.url + "/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert response.json() == {"messages": [reason], "code": 1000}


def test_userinfo_rejects_tampered_token(idp: Sandbox, http: httpx.Client) -> None:
    """Changing a claim of a real token breaks its signature: 401."""
    header, payload, signature = fetch_token(http, idp).split(".")
    claims = jwt.decode(f"{header}.{payload}.{signature}", options={"verify_signature": False})
    forged_payload = jwt.utils.base64url_encode(
        jwt.api_jws.json.dumps({**claims, "sub": "root@clients"}).encode()
    ).decode()
    response = http.get(
        idp.url + "/userinfo", headers={"Authorization": f"Bearer {header}.{forged_payload}.{signature}"}
    )
    assert response.status_code == 401
    assert response.json()["messages"] == ["token signature is invalid"]


def test_userinfo_rejects_foreign_key(idp: Sandbox, http: httpx.Client) -> None:
    """A token signed by another key, even claiming the sandbox's kid, is refused."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = http.get(idp.url + "/userinfo", headers={"Authorization": f"Bearer {_forge(idp, http, stranger)}"})
    assert response.status_code == 401
    assert response.json()["messages"] == ["token signature is invalid"]


@pytest.mark.parametrize("authorization", [None, "Basic YWxpY2U6eA==", "Bearer", "Bearer not-a-jwt"])
def test_userinfo_without_usable_token(idp: Sandbox, http: httpx.Client, authorization: str | None) -> None:
    """No bearer token, or garbage, gets 401 with a Bearer challenge."""
    headers = {"Authorization": authorization} if authorization else {}
    response = http.get(idp.url + "/userinfo", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["code"] == 1000


def test_userinfo_counts_api_requests(idp: Sandbox, http: httpx.Client) -> None:
    """Every /userinfo call, accepted or not, counts as an api_request."""
    token = fetch_token(http, idp)
    http.get(idp.url + "/userinfo", headers={"Authorization": f"Bearer {token}"})
    http.get(idp.url + "/userinfo")
    assert idp.stats()["api_requests"] == 2
