"""POST /oauth/token: Auth0's client_credentials grant, its errors and its monthly quota."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig
from qlam_hpc.sandbox._quota import next_month_start

from .conftest import ALICE, API, BOB, OTHER_API, jwks_key, token_form


def test_token_has_auth0_claims_and_a_valid_signature(idp: Sandbox, http: httpx.Client) -> None:
    """A good request gets a Bearer RS256 JWT with Auth0's M2M claims, verifiable with the published JWKS."""
    before = int(time.time())
    response = http.post(idp.token_url, data=token_form())
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    assert body["scope"] == "read:tasks write:tasks"
    key = jwks_key(http, idp)
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256" and header["kid"] == key.key_id
    claims = jwt.decode(body["access_token"], key.key, algorithms=["RS256"], audience=API, issuer=idp.issuer)
    assert claims["iss"] == idp.url + "/"
    assert claims["sub"] == "alice@clients"
    assert claims["azp"] == "alice"
    assert claims["gty"] == "client-credentials"
    assert claims["scope"] == "read:tasks write:tasks"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 86400
    assert claims["jti"]


def test_every_token_has_a_unique_jti(idp: Sandbox, http: httpx.Client) -> None:
    """Two tokens for the same request differ in their jti."""
    jtis = {
        jwt.decode(
            http.post(idp.token_url, data=token_form()).json()["access_token"], options={"verify_signature": False}
        )["jti"]
        for _ in range(3)
    }
    assert len(jtis) == 3


def test_json_body_is_accepted(idp: Sandbox, http: httpx.Client) -> None:
    """A JSON body works as the form does (Auth0 accepts both)."""
    response = http.post(idp.token_url, json=token_form())
    assert response.status_code == 200
    assert response.json()["token_type"] == "Bearer"


def test_client_without_scopes_gets_no_scope(idp: Sandbox, http: httpx.Client) -> None:
    """A client granted no scopes gets no scope field and no scope claim."""
    body = http.post(idp.token_url, data=token_form(BOB)).json()
    assert "scope" not in body
    assert "scope" not in jwt.decode(body["access_token"], options={"verify_signature": False})


def test_requested_scopes_narrow_the_token(idp: Sandbox, http: httpx.Client) -> None:
    """Asking for a subset of the granted scopes gives a token with just those."""
    body = http.post(idp.token_url, data=token_form(scope="read:tasks")).json()
    assert body["scope"] == "read:tasks"
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["scope"] == "read:tasks"


def test_ungranted_scope_is_refused(idp: Sandbox, http: httpx.Client) -> None:
    """A scope the client was not granted gives 403 access_denied naming it."""
    response = http.post(idp.token_url, data=token_form(scope="read:tasks delete:tenant:tasks"))
    assert response.status_code == 403
    assert response.json() == {
        "error": "access_denied",
        "error_description": "Client has not been granted scopes: delete:tenant:tasks",
    }


@pytest.mark.parametrize(
    ("form", "status", "error", "description"),
    [
        (token_form(client_secret="wrong"), 401, "invalid_client", "Client authentication failed"),
        (token_form(SandboxClient("mallory", "x")), 401, "invalid_client", "Unknown client"),
        (
            token_form(audience="https://nowhere.example"),
            403,
            "access_denied",
            "Service not found: https://nowhere.example",
        ),
        (token_form(grant_type="password"), 400, "unsupported_grant_type", "Unsupported grant type: password"),
        (token_form(grant_type=None), 400, "invalid_request", "Missing required parameter: grant_type"),
        (token_form(client_id=None), 400, "invalid_request", "Missing required parameter: client_id"),
    ],
    ids=["wrong-secret", "unknown-client", "unknown-audience", "wrong-grant", "no-grant", "no-client-id"],
)
def test_rfc6749_errors(
    idp: Sandbox, http: httpx.Client, form: dict, status: int, error: str, description: str
) -> None:
    """Bad requests get RFC 6749 JSON errors with Auth0's status codes and no-store."""
    response = http.post(idp.token_url, data=form)
    assert response.status_code == status
    assert response.json() == {"error": error, "error_description": description}
    assert response.headers["cache-control"] == "no-store"


def test_missing_secret_is_invalid_request(idp: Sandbox, http: httpx.Client) -> None:
    """A request without client_secret is 400 invalid_request."""
    response = http.post(idp.token_url, data=token_form(client_secret=None))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_missing_audience_is_denied(idp: Sandbox, http: httpx.Client) -> None:
    """Without an audience there is no default API to fall back on: 403 access_denied."""
    response = http.post(idp.token_url, data=token_form(audience=None))
    assert response.status_code == 403
    assert response.json()["error"] == "access_denied"


def test_client_limited_to_other_audiences_is_denied(idp: Sandbox, http: httpx.Client) -> None:
    """A client without a grant for a registered audience gets 403 access_denied."""
    response = http.post(idp.token_url, data=token_form(BOB, audience=OTHER_API))
    assert response.status_code == 403
    assert response.json()["error"] == "access_denied"
    assert OTHER_API in response.json()["error_description"]


def test_second_audience_is_served(idp: Sandbox, http: httpx.Client) -> None:
    """A client with no audience restriction gets tokens for every registered audience."""
    token = http.post(idp.token_url, data=token_form(audience=OTHER_API)).json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == OTHER_API


def test_malformed_bodies_are_invalid_request(idp: Sandbox, http: httpx.Client) -> None:
    """Broken JSON, non-string JSON values, repeated parameters and odd content types give 400 invalid_request."""
    bad = [
        http.post(idp.token_url, content=b"{not json", headers={"content-type": "application/json"}),
        http.post(idp.token_url, json={**token_form(), "audience": 3}),
        http.post(
            idp.token_url,
            content=b"grant_type=client_credentials&grant_type=client_credentials",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        http.post(idp.token_url, content=b"<x/>", headers={"content-type": "text/xml"}),
    ]
    assert [(r.status_code, r.json()["error"]) for r in bad] == [(400, "invalid_request")] * 4


def test_secret_never_echoed(idp: Sandbox, http: httpx.Client) -> None:
    """Error answers never repeat the secret that was sent."""
    response = http.post(idp.token_url, data=token_form(client_secret="s3cr3t-guess"))
    assert "s3cr3t-guess" not in response.text


def test_monthly_quota_answers_429_like_auth0(http: httpx.Client) -> None:
    """After monthly_quota tokens a client gets 429 with X-RateLimit-* and Retry-After until next month."""
    config = SandboxConfig(clients=(ALICE, BOB), monthly_quota=2)
    with Sandbox(config) as idp:
        first = http.post(idp.token_url, data=token_form())
        second = http.post(idp.token_url, data=token_form())
        assert (first.status_code, second.status_code) == (200, 200)
        assert first.headers["x-ratelimit-limit"] == "2"
        assert (first.headers["x-ratelimit-remaining"], second.headers["x-ratelimit-remaining"]) == ("1", "0")
        now = time.time()
        refused = http.post(idp.token_url, data=token_form())
        assert refused.status_code == 429
        assert refused.json()["error"] == "too_many_requests"
        assert refused.json()["error_description"]
        assert refused.headers["x-ratelimit-limit"] == "2"
        assert refused.headers["x-ratelimit-remaining"] == "0"
        reset = int(refused.headers["x-ratelimit-reset"])
        assert reset == next_month_start(now)
        assert abs(int(refused.headers["retry-after"]) - (reset - now)) <= 5
        # The quota is per client, and a reset gives it back.
        assert http.post(idp.token_url, data=token_form(BOB)).status_code == 200
        stats = idp.stats()
        assert (stats["tokens_issued"], stats["token_errors"]) == (3, {"too_many_requests": 1})
        idp.reset()
        assert http.post(idp.token_url, data=token_form()).status_code == 200


def test_quota_resets_at_the_next_utc_month() -> None:
    """The quota window ends at the first second of the next UTC month, across a year end too."""
    assert next_month_start(1735689599.0) == 1735689600  # 2024-12-31T23:59:59Z -> 2025-01-01
    assert next_month_start(1706745600.0) == 1709251200  # 2024-02-01 -> 2024-03-01 (leap year)


def test_client_gone_during_the_latency_gets_nothing_granted(idp: Sandbox, http: httpx.Client) -> None:
    """A client that gives up while its request sleeps the injected latency gets no token issued (nor quota used),
    though its request still counts."""
    idp.set_faults(latency=0.5)
    with pytest.raises(httpx.ReadTimeout):
        http.post(idp.token_url, data=token_form(), timeout=0.1)
    deadline = time.monotonic() + 5
    while not idp.stats()["token_errors"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = idp.stats()
    assert (stats["token_requests"], stats["tokens_issued"]) == (1, 0)
    assert stats["token_errors"] == {"invalid_request": 1}
