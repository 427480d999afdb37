"""The sandbox's RFC 8693 token exchange (Auth0's Custom Token Exchange): what it verifies in a
subject token, whom it maps it to, what it refuses and how it counts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from tests.oidc_issuers import CraftedIssuer, mock_oauth2_server

from qlam_hpc._errors import ConfigurationError
from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig, SandboxUser

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
TYPE = "urn:example-site:ci-jwt"
API = "https://api.quera.com"
CLIENT = SandboxClient("exchanger", "exchanger-secret", scopes=("read:tasks",))
ADA = SandboxUser("auth0|sandbox-user-1", "ada@example.org", "Ada Lovelace")


@pytest.fixture(scope="module")
def crafted() -> Iterator[CraftedIssuer]:
    issuer = CraftedIssuer()
    yield issuer
    issuer.stop()


@pytest.fixture(scope="module")
def idp(crafted: CraftedIssuer) -> Iterator[Sandbox]:
    config = SandboxConfig(clients=(CLIENT,), users=(ADA,), exchange_issuers=(crafted.url,))
    with Sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "idp" in request.fixturenames:
        request.getfixturevalue("idp").reset()


def exchange(sandbox: Sandbox, subject_token: str, **extra: str) -> httpx.Response:
    form = {
        "grant_type": GRANT,
        "subject_token": subject_token,
        "subject_token_type": TYPE,
        "audience": API,
        "client_id": CLIENT.client_id,
        "client_secret": CLIENT.client_secret or "",
        **extra,
    }
    return httpx.post(sandbox.token_url, data=form, timeout=10)


def claims_of(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return jwt.decode(token, options={"verify_signature": False})


def test_a_token_minted_by_oauth2_mock_server_is_exchanged_for_a_user_token() -> None:
    """An RS256 JWT from an identity provider we did not write (npm's oauth2-mock-server, keys
    found through its discovery document) becomes an access token for exchange|<iss>|<sub>."""
    with mock_oauth2_server() as issuer:
        config = SandboxConfig(clients=(CLIENT,), exchange_issuers=(issuer.url,))
        with Sandbox(config) as sandbox:
            answer = exchange(sandbox, issuer.mint("repo:octo/app:ref:refs/heads/main", sandbox.url))
            claims = claims_of(answer)
            assert claims["sub"] == f"exchange|{issuer.url}|repo:octo/app:ref:refs/heads/main"
            assert claims["aud"] == API and claims["azp"] == CLIENT.client_id
            body = answer.json()
            assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
            assert body["token_type"] == "Bearer" and body["expires_in"] > 0
            assert answer.headers["cache-control"] == "no-store"
            stats = sandbox.stats()
            assert stats["token_exchanges"] == 1 and stats["exchange_refusals"] == {}
            # The token works at the emulated API like any other.
            api = httpx.get(
                sandbox.url + "/v2/squin-256q/tasks", headers={"Authorization": f"Bearer {body['access_token']}"}
            )
            assert api.status_code == 200, api.text


def test_the_subject_maps_to_a_configured_user_by_email_then_by_subject(idp: Sandbox, crafted: CraftedIssuer) -> None:
    by_email = crafted.mint(crafted.claims("gitlab-user-7", idp.url, email="ADA@example.org"))
    assert claims_of(exchange(idp, by_email))["sub"] == ADA.subject
    by_subject = crafted.mint(crafted.claims(ADA.subject, idp.url))
    assert claims_of(exchange(idp, by_subject))["sub"] == ADA.subject
    stranger = crafted.mint(crafted.claims("system:serviceaccount:lab:runner", idp.url, email="x@example.net"))
    assert claims_of(exchange(idp, stranger))["sub"] == f"exchange|{crafted.url}|system:serviceaccount:lab:runner"


def test_an_es256_subject_token_is_verified_with_the_issuers_ec_key(idp: Sandbox, crafted: CraftedIssuer) -> None:
    token = crafted.mint(crafted.claims("ec-user", idp.url), alg="ES256", kid="ec-1")
    assert claims_of(exchange(idp, token))["sub"].endswith("|ec-user")


def test_scope_may_hold_the_clients_scopes_and_openid_ones_but_no_others(idp: Sandbox, crafted: CraftedIssuer) -> None:
    token = crafted.mint(crafted.claims("u", idp.url))
    assert claims_of(exchange(idp, token, scope="openid read:tasks"))["scope"] == "openid read:tasks"
    refused = exchange(idp, token, scope="write:tasks")
    assert refused.status_code == 403 and refused.json()["error"] == "access_denied"


def _hmac_with_public_key(crafted: CraftedIssuer, claims: dict[str, Any]) -> str:
    """The classic key confusion: HS256 with the issuer's *public* key as the shared secret."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    pem = crafted.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


@pytest.mark.parametrize(
    ("reason", "make"),
    [
        ("alg_none", lambda c, url: c.unsigned(c.claims("u", url))),
        ("alg_hmac", lambda c, url: _hmac_with_public_key(c, c.claims("u", url))),
        ("expired", lambda c, url: c.mint(c.claims("u", url, exp=int(time.time()) - 5))),
        ("not_yet_valid", lambda c, url: c.mint(c.claims("u", url, nbf=int(time.time()) + 600))),
        ("audience", lambda c, url: c.mint(c.claims("u", "https://someone-else.example"))),
        ("issuer", lambda c, url: c.mint({**c.claims("u", url), "iss": "https://evil.example"})),
        ("unknown_key", lambda c, url: c.mint(c.claims("u", url), kid="rsa-9")),
        ("alg_key_mismatch", lambda c, url: c.mint(c.claims("u", url), alg="ES256", kid="rsa-1")),
        ("missing_claim", lambda c, url: c.mint({k: v for k, v in c.claims("u", url).items() if k != "exp"})),
        ("malformed", lambda c, url: "not-a-jwt"),
    ],
)
def test_a_bad_subject_token_is_refused_and_counted_by_reason(
    idp: Sandbox, crafted: CraftedIssuer, reason: str, make: Any
) -> None:
    """alg=none, HS256 keyed with the JWKS's public key, an expired or not-yet-valid token, another
    audience, an untrusted issuer, an unpublished key: 400 invalid_request, nothing issued."""
    token = make(crafted, idp.url)
    answer = exchange(idp, token)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert token not in answer.text
    stats = idp.stats()
    assert stats["exchange_refusals"] == {reason: 1}
    assert stats["token_exchanges"] == 0 and stats["tokens_issued"] == 0


def test_a_signature_by_another_key_is_refused(idp: Sandbox, crafted: CraftedIssuer) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    forged = crafted.mint(
        crafted.claims("u", idp.url), key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    assert exchange(idp, forged).status_code == 400
    assert idp.stats()["exchange_refusals"] == {"signature": 1}


@pytest.mark.parametrize(
    "token_type",
    [
        "urn:ietf:params:oauth:token-type:jwt",
        "urn:auth0:ci",
        "urn:okta:x",
        "https://auth0.com/token",
        "http://okta.com/t",
    ],
)
def test_auth0s_reserved_token_type_namespaces_are_refused(
    idp: Sandbox, crafted: CraftedIssuer, token_type: str
) -> None:
    token = crafted.mint(crafted.claims("u", idp.url))
    answer = exchange(idp, token, subject_token_type=token_type)
    assert answer.status_code == 400 and "reserved namespace" in answer.json()["error_description"]
    assert idp.stats()["exchange_refusals"] == {"reserved_token_type": 1}


def test_the_client_authenticates_as_for_client_credentials(idp: Sandbox, crafted: CraftedIssuer) -> None:
    token = crafted.mint(crafted.claims("u", idp.url))
    answer = exchange(idp, token, client_secret="wrong")
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    basic = httpx.post(
        idp.token_url,
        data={"grant_type": GRANT, "subject_token": token, "subject_token_type": TYPE, "audience": API},
        auth=(CLIENT.client_id, CLIENT.client_secret or ""),
    )
    assert basic.status_code == 200, basic.text
    assert idp.stats()["exchange_refusals"] == {"invalid_client": 1}


def test_exchange_audience_sets_what_the_subject_tokens_aud_must_hold(crafted: CraftedIssuer) -> None:
    config = SandboxConfig(clients=(CLIENT,), exchange_issuers=(crafted.url,), exchange_audience="qlam-sandbox")
    with Sandbox(config) as sandbox:
        assert exchange(sandbox, crafted.mint(crafted.claims("u", "qlam-sandbox"))).status_code == 200
        assert exchange(sandbox, crafted.mint(crafted.claims("u", sandbox.url))).status_code == 400


def test_without_exchange_issuers_the_grant_is_unsupported(crafted: CraftedIssuer) -> None:
    with Sandbox(SandboxConfig(clients=(CLIENT,))) as sandbox:
        answer = exchange(sandbox, crafted.mint(crafted.claims("u", sandbox.url)))
        assert answer.status_code == 400 and answer.json()["error"] == "unsupported_grant_type"


def test_discovery_lists_the_token_exchange_grant(idp: Sandbox) -> None:
    document = httpx.get(idp.url + "/.well-known/openid-configuration").json()
    assert GRANT in document["grant_types_supported"]


@pytest.mark.parametrize("url", ["http://issuer.example.com", "ftp://127.0.0.1/", "not a url"])
def test_an_exchange_issuer_must_be_https_or_loopback_http(url: str) -> None:
    with pytest.raises(ConfigurationError, match="https URL"):
        SandboxConfig(clients=(CLIENT,), exchange_issuers=(url,))


def test_loopback_http_and_https_issuers_are_accepted() -> None:
    config = SandboxConfig(clients=(CLIENT,), exchange_issuers=("http://localhost:8080", "https://token.example"))
    assert config.exchange_issuers == ("http://localhost:8080", "https://token.example")


def test_env_for_token_exchange_names_the_flow_and_a_token_type_the_sandbox_takes(idp: Sandbox) -> None:
    env = idp.env(flow="token-exchange")
    assert env["QLAM_AUTH_FLOW"] == "token-exchange"
    assert env["QLAM_SUBJECT_TOKEN_TYPE"].startswith("urn:") and not env["QLAM_SUBJECT_TOKEN_TYPE"].startswith(
        "urn:ietf"
    )
    assert env["QLAM_CLIENT_SECRET"] == CLIENT.client_secret
