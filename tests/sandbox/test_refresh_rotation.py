"""Refresh tokens as Auth0 rotates them: a new one per refresh, reuse detection that revokes
the whole login, the overlap period, the absolute lifetime, and revocation (RFC 7009)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qlam_hpc.sandbox import Sandbox, SandboxConfig

from .conftest import ADA, ALICE, API, DEVICE, GRACE, OTHER_DEVICE, claims_of, login, refresh

INVALID = {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}


def _race(http: httpx.Client, idp: Sandbox, refresh_token: str, jobs: int) -> list[httpx.Response]:
    """``jobs`` threads exchange the same refresh token at the same moment, as a job array would."""
    barrier, answers = threading.Barrier(jobs), []

    def job() -> None:
        with httpx.Client(timeout=10) as own:
            barrier.wait()
            answers.append(refresh(own, idp, refresh_token))

    threads = [threading.Thread(target=job) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_refresh_returns_a_new_access_token_and_a_new_refresh_token(user_idp: Sandbox, http: httpx.Client) -> None:
    """A refresh answers Auth0's fields: new access, ID and refresh tokens, expires_in, scope; nothing more."""
    first = login(http, user_idp)
    response = refresh(http, user_idp, first["refresh_token"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "id_token", "refresh_token", "token_type", "expires_in", "scope"}
    assert body["refresh_token"] != first["refresh_token"] and len(body["refresh_token"]) >= 43
    assert claims_of(body["access_token"])["jti"] != claims_of(first["access_token"])["jti"]
    assert claims_of(body["access_token"])["sub"] == ADA.subject
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 86400, first["scope"])
    stats = user_idp.stats()
    assert (stats["refresh_requests"], stats["refreshes"], stats["reuse_detections"]) == (1, 1, 0)


def test_each_new_refresh_token_rotates_again(user_idp: Sandbox, http: httpx.Client) -> None:
    """A chain of refreshes, each with the token the last one returned, keeps working."""
    token = login(http, user_idp)["refresh_token"]
    seen = {token}
    for _ in range(4):
        token = refresh(http, user_idp, token).json()["refresh_token"]
        seen.add(token)
    assert len(seen) == 5
    assert user_idp.stats()["refreshes"] == 4


def test_reusing_a_used_refresh_token_revokes_the_whole_login(user_idp: Sandbox, http: httpx.Client) -> None:
    """Exchanging a token twice is reuse: 403 invalid_grant, and the token the first exchange gave dies too."""
    old = login(http, user_idp)["refresh_token"]
    new = refresh(http, user_idp, old).json()["refresh_token"]
    reuse = refresh(http, user_idp, old)
    assert reuse.status_code == 403
    assert reuse.json() == INVALID
    after = refresh(http, user_idp, new)
    assert (after.status_code, after.json()) == (403, INVALID)
    stats = user_idp.stats()
    assert (stats["reuse_detections"], stats["families_revoked"], stats["refreshes"]) == (1, 1, 1)
    assert stats["token_errors"] == {"invalid_grant": 2}


def test_reuse_revokes_only_that_login(user_idp: Sandbox, http: httpx.Client) -> None:
    """Another login of the same user is not touched by a reuse in the first."""
    first, second = login(http, user_idp)["refresh_token"], login(http, user_idp)["refresh_token"]
    refresh(http, user_idp, first)
    assert refresh(http, user_idp, first).status_code == 403
    assert refresh(http, user_idp, second).status_code == 200


def test_jobs_refreshing_at_once_with_one_token_get_one_winner_and_lose_the_login(
    user_idp: Sandbox, http: httpx.Client
) -> None:
    """The race user context causes on a cluster: 8 jobs, one token, no overlap: 1 wins, 7 reuses, login revoked."""
    token = login(http, user_idp)["refresh_token"]
    answers = _race(http, user_idp, token, 8)
    winners = [a for a in answers if a.status_code == 200]
    assert len(winners) == 1
    assert all(a.json() == INVALID for a in answers if a.status_code != 200)
    assert refresh(http, user_idp, winners[0].json()["refresh_token"]).status_code == 403
    stats = user_idp.stats()
    assert (stats["refresh_requests"], stats["refreshes"], stats["reuse_detections"], stats["families_revoked"]) == (
        9,
        1,
        7,
        1,
    )


def test_overlap_period_lets_a_used_token_be_exchanged_again(user_idp: Sandbox, http: httpx.Client) -> None:
    """Within refresh_token_overlap seconds of its first use a token works again, with no reuse detected."""
    user_idp.set_faults(refresh_token_overlap=5)
    old = login(http, user_idp)["refresh_token"]
    first = refresh(http, user_idp, old).json()["refresh_token"]
    second = refresh(http, user_idp, old)
    assert second.status_code == 200
    assert second.json()["refresh_token"] not in (old, first)
    assert refresh(http, user_idp, first).status_code == 200  # the login lives on
    stats = user_idp.stats()
    assert (stats["refreshes"], stats["reuse_detections"], stats["families_revoked"]) == (3, 0, 0)


def test_jobs_refreshing_at_once_within_the_overlap_all_succeed(user_idp: Sandbox, http: httpx.Client) -> None:
    """With an overlap period the same race leaves every job with tokens and the login alive."""
    user_idp.set_faults(refresh_token_overlap=10)
    token = login(http, user_idp)["refresh_token"]
    answers = _race(http, user_idp, token, 8)
    assert [a.status_code for a in answers] == [200] * 8
    assert user_idp.stats()["reuse_detections"] == 0


def test_reuse_after_the_overlap_period_revokes_the_login(user_idp: Sandbox, http: httpx.Client) -> None:
    """The overlap counts from the token's first use: after it, using the token again is reuse."""
    user_idp.set_faults(refresh_token_overlap=0.5)
    old = login(http, user_idp)["refresh_token"]
    new = refresh(http, user_idp, old).json()["refresh_token"]
    time.sleep(0.6)
    assert refresh(http, user_idp, old).json() == INVALID
    assert refresh(http, user_idp, new).status_code == 403
    assert user_idp.stats()["reuse_detections"] == 1


@pytest.fixture(scope="module")
def short_logins(key_file: Path) -> Iterator[Sandbox]:
    """A sandbox whose logins last one second, whatever the rotation."""
    with Sandbox(SandboxConfig.default(refresh_token_lifetime=1, signing_key_file=key_file)) as idp:
        yield idp


def test_rotation_does_not_extend_the_login_past_its_absolute_lifetime(
    short_logins: Sandbox, http: httpx.Client
) -> None:
    """A token from a refresh made just before the end still dies with the login; that is no reuse."""
    token = login(http, short_logins)["refresh_token"]
    time.sleep(0.5)
    token = refresh(http, short_logins, token).json()["refresh_token"]
    time.sleep(0.6)
    assert refresh(http, short_logins, token).json() == INVALID
    stats = short_logins.stats()
    assert (stats["reuse_detections"], stats["families_revoked"]) == (0, 0)


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"refresh_token": "never-issued"}, 403, "invalid_grant"),
        ({"refresh_token": ""}, 400, "invalid_request"),
        ({"client_id": OTHER_DEVICE}, 403, "invalid_grant"),
        ({"client_id": "nobody"}, 401, "invalid_client"),
        ({"client_id": ALICE.client_id}, 403, "unauthorized_client"),
        ({"scope": "openid read:everything"}, 400, "invalid_scope"),
    ],
    ids=["unknown-token", "no-token", "other-device-client", "unknown-client", "m2m-client", "wider-scope"],
)
def test_refusals_leave_the_token_unused(
    user_idp: Sandbox, http: httpx.Client, form: dict, status: int, error: str
) -> None:
    """Refused requests neither use up the token nor revoke the login."""
    token = login(http, user_idp)["refresh_token"]
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": DEVICE, **form}
    response = http.post(user_idp.token_url, data=data)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert refresh(http, user_idp, token).status_code == 200
    assert user_idp.stats()["reuse_detections"] == 0


def test_refresh_may_narrow_the_scope_for_one_access_token(user_idp: Sandbox, http: httpx.Client) -> None:
    """A narrower scope gives a narrower access token; the next refresh token keeps the login's full scope."""
    full = login(http, user_idp)
    narrow = refresh(http, user_idp, full["refresh_token"], scope="offline_access").json()
    assert narrow["scope"] == "offline_access" and "id_token" not in narrow
    assert claims_of(narrow["access_token"])["aud"] == API
    again = refresh(http, user_idp, narrow["refresh_token"]).json()
    assert again["scope"] == full["scope"] and "id_token" in again


def test_refresh_tokens_survive_a_reset(user_idp: Sandbox, http: httpx.Client) -> None:
    """reset() zeroes the counters but keeps logins, as it keeps access tokens valid."""
    token = login(http, user_idp)["refresh_token"]
    user_idp.reset()
    assert user_idp.stats()["device_logins"] == 0
    assert refresh(http, user_idp, token).status_code == 200


def test_response_delay_rotates_before_the_client_gets_its_answer(user_idp: Sandbox, http: httpx.Client) -> None:
    """A client that gives up during response_delay has lost its new token: its old one is now reuse."""
    token = login(http, user_idp)["refresh_token"]
    user_idp.set_faults(response_delay=1.0)
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": DEVICE}
    with pytest.raises(httpx.ReadTimeout):
        http.post(user_idp.token_url, data=data, timeout=0.3)
    user_idp.set_faults(response_delay=0)
    assert refresh(http, user_idp, token).json() == INVALID
    stats = user_idp.stats()
    assert (stats["refreshes"], stats["reuse_detections"], stats["families_revoked"]) == (1, 1, 1)


def test_response_delay_delays_the_answer(user_idp: Sandbox, http: httpx.Client) -> None:
    """The answer arrives after the delay, with the rotated token."""
    token = login(http, user_idp)["refresh_token"]
    user_idp.set_faults(response_delay=0.3)
    started = time.monotonic()
    assert refresh(http, user_idp, token).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_faults_apply_to_refresh_requests_and_do_not_use_up_the_token(user_idp: Sandbox, http: httpx.Client) -> None:
    """Scripted answers and injected 500s come before the grant; refresh_requests counts them on arrival."""
    token = login(http, user_idp)["refresh_token"]
    user_idp.set_faults(script=[{"status": 429, "body": "{}", "headers": {"Retry-After": "1"}}], error_rate=1.0)
    assert refresh(http, user_idp, token).status_code == 429
    assert refresh(http, user_idp, token).status_code == 500
    user_idp.set_faults(error_rate=0)
    assert refresh(http, user_idp, token).status_code == 200
    stats = user_idp.stats()
    assert (stats["refresh_requests"], stats["refreshes"]) == (3, 1)


# --- revocation --------------------------------------------------------------------------------


def test_revoking_a_refresh_token_ends_its_login(user_idp: Sandbox, http: httpx.Client) -> None:
    """POST /oauth/revoke: 200 with an empty body; every token of that login is refused afterwards."""
    old = login(http, user_idp)["refresh_token"]
    current = refresh(http, user_idp, old).json()["refresh_token"]
    response = http.post(
        user_idp.url + "/oauth/revoke", data={"token": old, "client_id": DEVICE, "token_type_hint": "refresh_token"}
    )
    assert (response.status_code, response.content) == (200, b"")
    assert refresh(http, user_idp, current).json() == INVALID
    stats = user_idp.stats()
    assert (stats["revocations"], stats["families_revoked"], stats["reuse_detections"]) == (1, 1, 0)


def test_revoking_an_unknown_or_foreign_token_is_200_and_changes_nothing(user_idp: Sandbox, http: httpx.Client) -> None:
    """RFC 7009 section 2.2: unknown tokens are 200; another client cannot revoke this client's login."""
    token = login(http, user_idp)["refresh_token"]
    for form in ({"token": "never-issued", "client_id": DEVICE}, {"token": token, "client_id": OTHER_DEVICE}):
        response = http.post(user_idp.url + "/oauth/revoke", data=form)
        assert (response.status_code, response.content) == (200, b"")
    assert refresh(http, user_idp, token).status_code == 200
    assert (user_idp.stats()["revocations"], user_idp.stats()["families_revoked"]) == (2, 0)


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_id": DEVICE}, 400, "invalid_request"),
        ({"token": "x", "client_id": "nobody"}, 401, "invalid_client"),
        ({"token": "x", "client_id": ALICE.client_id, "client_secret": "wrong"}, 401, "invalid_client"),
    ],
    ids=["no-token", "unknown-client", "m2m-client-bad-secret"],
)
def test_revocation_refusals(user_idp: Sandbox, http: httpx.Client, form: dict, status: int, error: str) -> None:
    """A revocation needs a token and a known client; an M2M client must authenticate."""
    response = http.post(user_idp.url + "/oauth/revoke", data=form)
    assert (response.status_code, response.json()["error"]) == (status, error)


def test_control_endpoint_revokes_one_users_logins_then_everyones(user_idp: Sandbox, http: httpx.Client) -> None:
    """POST /_sandbox/refresh-tokens/revoke by user (e-mail or subject), then for all; the Python API too."""
    user_idp.revoke_logins()  # logins of earlier tests outlive reset()
    ada, grace = login(http, user_idp)["refresh_token"], login(http, user_idp, user=GRACE.email)["refresh_token"]
    url = user_idp.url + "/_sandbox/refresh-tokens/revoke"
    assert http.post(url, headers=user_idp.control_headers(), json={"user": GRACE.email}).json() == {
        "families_revoked": 1
    }
    assert refresh(http, user_idp, grace).status_code == 403
    ada = refresh(http, user_idp, ada).json()["refresh_token"]
    assert http.post(url, headers=user_idp.control_headers(), json={"user": "nobody"}).status_code == 400
    assert user_idp.revoke_logins(ADA.subject) == 1
    assert refresh(http, user_idp, ada).status_code == 403
    login(http, user_idp)
    login(http, user_idp, user=GRACE.subject)
    assert http.post(url, headers=user_idp.control_headers()).json() == {"families_revoked": 2}
    assert user_idp.revoke_logins() == 0
