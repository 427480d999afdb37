"""Fault injection and the /_sandbox/ control endpoints: script, error rate, latency, stats, reset."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest

from qlam_hpc.sandbox import Sandbox, SandboxConfig
from qlam_hpc.sandbox._state import SandboxState

from .conftest import ALICE, token_form


def test_script_is_served_in_order_then_normal(idp: Sandbox, http: httpx.Client) -> None:
    """Canned answers come out in order, with their status, body, type and headers; then real tokens again."""
    idp.set_faults(
        script=[
            {"status": 500, "body": '{"error": "server_error"}'},
            {"status": 429, "body": '{"error": "too_many_requests"}', "headers": {"Retry-After": "7"}},
            {"status": 200, "body": '{"access_token": "abc", "token_'},
            {"status": 200, "body": '{"access_token": "abc", "token_type": "Bearer"}'},
            {"status": 200, "body": "<html><body>Login</body></html>", "content_type": "text/html"},
        ]
    )
    answers = [http.post(idp.token_url, data=token_form()) for _ in range(6)]
    assert [a.status_code for a in answers] == [500, 429, 200, 200, 200, 200]
    assert answers[1].headers["retry-after"] == "7"
    with pytest.raises(json.JSONDecodeError):
        answers[2].json()
    assert "expires_in" not in answers[3].json()
    assert answers[4].headers["content-type"].startswith("text/html")
    assert answers[4].text == "<html><body>Login</body></html>"
    assert answers[5].json()["token_type"] == "Bearer" and answers[5].json()["expires_in"] == 86400
    stats = idp.stats()
    assert (stats["token_requests"], stats["scripted_responses"], stats["tokens_issued"]) == (6, 5, 1)


def test_script_over_http(idp: Sandbox, http: httpx.Client) -> None:
    """POST /_sandbox/faults sets a script that the next token request gets."""
    response = http.post(
        idp.url + "/_sandbox/faults",
        headers=idp.control_headers(),
        json={"script": [{"status": 503, "body": "busy", "content_type": "text/plain"}]},
    )
    assert response.json()["script_pending"] == 1
    answer = http.post(idp.token_url, data=token_form())
    assert (answer.status_code, answer.text) == (503, "busy")
    assert http.get(idp.url + "/_sandbox/faults").json()["script_pending"] == 0


def test_error_rate_one_always_fails(idp: Sandbox, http: httpx.Client) -> None:
    """With error_rate 1.0 every token request gets a 500 with an RFC 6749 body."""
    idp.set_faults(error_rate=1.0)
    answers = [http.post(idp.token_url, data=token_form()) for _ in range(3)]
    assert {a.status_code for a in answers} == {500}
    assert answers[0].json()["error"] == "server_error"
    assert idp.stats()["token_errors"] == {"server_error": 3}


def test_seeded_error_draws_repeat() -> None:
    """The same seed gives the same sequence of injected errors."""
    config = SandboxConfig.default(error_rate=0.5, seed=42)
    first, second = SandboxState(config), SandboxState(config)
    draws = [first.draw_error() for _ in range(40)]
    assert draws == [second.draw_error() for _ in range(40)]
    assert 0 < sum(draws) < 40


def test_latency_is_applied(idp: Sandbox, http: httpx.Client) -> None:
    """Injected latency delays each token answer by at least that long."""
    idp.set_faults(latency=0.3)
    started = time.monotonic()
    assert http.post(idp.token_url, data=token_form()).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_request_counted_on_arrival(http: httpx.Client) -> None:
    """A request is counted before its latency, so a client that gives up is still counted."""
    # A sandbox of its own: the abandoned request must not spill into other tests.
    with Sandbox(SandboxConfig(clients=(ALICE,), latency=0.6)) as idp:
        with pytest.raises(httpx.ReadTimeout):
            http.post(idp.token_url, data=token_form(), timeout=httpx.Timeout(5, read=0.2))
        deadline = time.monotonic() + 5
        while idp.stats()["token_requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert idp.stats()["token_requests"] == 1
        assert idp.stats()["tokens_issued"] == 0


def test_token_lifetime_changes_at_runtime(idp: Sandbox, http: httpx.Client) -> None:
    """A runtime token_lifetime sets expires_in and the exp claim of new tokens."""
    http.post(
        idp.url + "/_sandbox/faults", headers=idp.control_headers(), json={"token_lifetime": 90}
    ).raise_for_status()
    body = http.post(idp.token_url, data=token_form()).json()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert body["expires_in"] == 90
    assert claims["exp"] - claims["iat"] == 90


def test_stats_count_failed_requests(idp: Sandbox, http: httpx.Client) -> None:
    """Stats count every token request and each error by its code."""
    http.post(idp.token_url, data=token_form())
    http.post(idp.token_url, data=token_form(client_secret="nope"))
    http.post(idp.token_url, data=token_form(client_id="nobody"))
    http.post(idp.token_url, data=token_form(audience="https://x.example"))
    http.post(idp.token_url, data=token_form(grant_type="password"))
    assert http.get(idp.url + "/_sandbox/stats").json() == {
        "token_requests": 5,
        "tokens_issued": 1,
        "token_errors": {"invalid_client": 2, "access_denied": 1, "unsupported_grant_type": 1},
        "scripted_responses": 0,
        "api_requests": 0,
        "api_scripted_responses": 0,
        "tasks_created": 0,
        "device_authorizations": 0,
        "device_logins": 0,
        "refresh_requests": 0,
        "refreshes": 0,
        "reuse_detections": 0,
        "families_revoked": 0,
        "revocations": 0,
        "token_exchanges": 0,
        "exchange_refusals": {},
    }


def test_reset_clears_stats_and_faults(idp: Sandbox, http: httpx.Client) -> None:
    """POST /_sandbox/reset zeroes the stats and restores the configured faults."""
    idp.set_faults(latency=0.05, error_rate=1.0, token_lifetime=5, script=[{"status": 500}])
    http.post(idp.token_url, data=token_form())
    reply = http.post(idp.url + "/_sandbox/reset", headers=idp.control_headers()).json()
    assert reply["faults"] == {
        "latency": 0.0,
        "error_rate": 0.0,
        "token_lifetime": 86400,
        "script_pending": 0,
        "task_duration": 2.0,
        "api_script_pending": 0,
        "revoke_tokens_before": None,
        "refresh_token_overlap": 0.0,
        "device_poll_interval": 5,
        "auto_approve": False,
        "response_delay": 0.0,
    }
    assert reply["stats"]["token_requests"] == 0
    assert http.post(idp.token_url, data=token_form()).status_code == 200


@pytest.mark.parametrize(
    "body",
    [{"latency": -1}, {"error_rate": 1.5}, {"token_lifetime": 0}, {"script": [{"status": 99}]}, {"colour": "red"}, [1]],
)
def test_invalid_faults_are_refused(idp: Sandbox, http: httpx.Client, body: object) -> None:
    """Invalid fault settings get 400 and change nothing."""
    response = http.post(idp.url + "/_sandbox/faults", headers=idp.control_headers(), json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert http.get(idp.url + "/_sandbox/faults").json()["latency"] == 0.0


def test_set_faults_rejects_invalid_values(idp: Sandbox) -> None:
    """The Python API refuses what the HTTP API refuses, with ValueError."""
    with pytest.raises(ValueError, match="error_rate"):
        idp.set_faults(error_rate=2)


def test_unscripted_client_still_authenticated(idp: Sandbox, http: httpx.Client) -> None:
    """After a script runs out, wrong credentials are refused again as usual."""
    idp.set_faults(script=[{"status": 200, "body": "{}"}])
    assert http.post(idp.token_url, data=token_form(client_secret="bad")).status_code == 200
    assert http.post(idp.token_url, data=token_form(ALICE, client_secret="bad")).status_code == 401
