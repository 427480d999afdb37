"""The device code flow (RFC 8628) as Auth0 runs it: /oauth/device/code, polling /oauth/token,
the /activate page, the control endpoints and auto-approval, against the real sandbox over HTTP."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from qlam_hpc.sandbox import Sandbox, SandboxConfig

from .conftest import (
    ADA,
    ALICE,
    API,
    DEVICE,
    DEVICE_GRANT,
    FULL_SCOPE,
    GRACE,
    OTHER_DEVICE,
    claims_of,
    jwks_key,
    login,
    poll,
    start_login,
    token_form,
)

USER_CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")


@pytest.fixture
def browser(user_idp: Sandbox) -> Iterator[httpx.Client]:
    """The owner's browser: it has opened the sandbox's approve link once, so it holds the cookie."""
    with httpx.Client(timeout=10) as client:
        consent = client.get(user_idp.approve_url)
        assert consent.status_code == 303, consent.text
        yield client


@pytest.fixture
def stranger() -> Iterator[httpx.Client]:
    """Another local user's browser or script: it reaches loopback too, but has no link and no token."""
    with httpx.Client(timeout=10) as client:
        yield client


# --- POST /oauth/device/code -----------------------------------------------------------------


def test_device_authorization_answers_codes_and_verification_urls(idp: Sandbox, http: httpx.Client) -> None:
    """The answer has an opaque device code, a consonant user code, the /activate URLs, lifetime and interval."""
    form = {"client_id": DEVICE, "scope": FULL_SCOPE, "audience": API}
    response = http.post(idp.url + "/oauth/device/code", data=form)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert list(body) == [
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    ]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", body["device_code"])
    assert USER_CODE.match(body["user_code"])
    assert body["verification_uri"] == idp.url + "/activate"
    assert body["verification_uri_complete"] == f"{idp.url}/activate?user_code={body['user_code']}"
    assert (body["expires_in"], body["interval"]) == (600, 5)
    assert idp.stats()["device_authorizations"] == 1


def test_device_authorization_takes_a_json_body(idp: Sandbox, http: httpx.Client) -> None:
    """Like Auth0, the endpoint takes JSON as well as a form, and every code is new."""
    first = http.post(idp.url + "/oauth/device/code", json={"client_id": DEVICE, "audience": API}).json()
    second = http.post(idp.url + "/oauth/device/code", json={"client_id": DEVICE, "audience": API}).json()
    assert first["device_code"] != second["device_code"] and first["user_code"] != second["user_code"]


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_id": "nobody", "audience": API}, 401, "invalid_client"),
        ({"client_id": ALICE.client_id, "audience": API}, 403, "unauthorized_client"),
        ({"client_id": DEVICE, "audience": "https://nowhere.example"}, 403, "access_denied"),
        ({"client_id": DEVICE}, 403, "access_denied"),
        ({"audience": API}, 400, "invalid_request"),
    ],
    ids=["unknown-client", "m2m-client", "unknown-audience", "no-audience", "no-client"],
)
def test_device_authorization_refusals(idp: Sandbox, http: httpx.Client, form: dict, status: int, error: str) -> None:
    """Unknown clients, M2M clients, and unknown or missing audiences are refused as Auth0 does."""
    response = http.post(idp.url + "/oauth/device/code", data=form)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert idp.stats()["device_authorizations"] == 0


def test_m2m_client_gets_auth0s_unauthorized_client_wording(idp: Sandbox, http: httpx.Client) -> None:
    """The refusal names the grant type the client may not use."""
    response = http.post(idp.url + "/oauth/device/code", data={"client_id": ALICE.client_id, "audience": API})
    assert response.json()["error_description"] == f"Grant type '{DEVICE_GRANT}' not allowed for the client."


# --- polling ---------------------------------------------------------------------------------


def test_poll_before_approval_is_authorization_pending(user_idp: Sandbox, http: httpx.Client) -> None:
    """Until someone decides, each poll is 403 authorization_pending, and the code is listed as pending."""
    started = start_login(http, user_idp)
    for _ in range(2):
        response = poll(http, user_idp, started["device_code"])
        assert response.status_code == 403
        assert response.headers["cache-control"] == "no-store"
        assert response.json() == {
            "error": "authorization_pending",
            "error_description": "User has yet to authorize device code.",
        }
    assert started["user_code"] in user_idp.pending_user_codes()
    assert user_idp.stats()["token_errors"] == {"authorization_pending": 2}


def test_polling_faster_than_the_interval_is_slow_down_and_the_interval_grows(idp: Sandbox, http: httpx.Client) -> None:
    """A poll sooner than the interval gets 429 slow_down, and the code's interval grows by 5 s each time."""
    idp.set_faults(device_poll_interval=1)
    started = start_login(http, idp)
    assert started["interval"] == 1
    assert poll(http, idp, started["device_code"]).json()["error"] == "authorization_pending"
    fast = poll(http, idp, started["device_code"])
    assert (fast.status_code, fast.json()["error"]) == (429, "slow_down")
    assert "6 seconds" in fast.json()["error_description"]
    time.sleep(1.1)  # enough for the original 1 s interval, not for the grown 6 s one
    again = poll(http, idp, started["device_code"])
    assert (again.status_code, again.json()["error"]) == (429, "slow_down")
    assert "11 seconds" in again.json()["error_description"]


def test_polling_at_the_interval_is_never_slow_down(idp: Sandbox, http: httpx.Client) -> None:
    """A client that waits the interval between polls only ever sees authorization_pending."""
    idp.set_faults(device_poll_interval=1)
    started = start_login(http, idp)
    for _ in range(2):
        assert poll(http, idp, started["device_code"]).json()["error"] == "authorization_pending"
        time.sleep(1.05)
    assert poll(http, idp, started["device_code"]).json()["error"] == "authorization_pending"


def test_device_poll_interval_applies_to_new_codes(idp: Sandbox, http: httpx.Client) -> None:
    """The interval set at run time is the one new device codes are given."""
    idp.set_faults(device_poll_interval=7)
    assert start_login(http, idp)["interval"] == 7


@pytest.fixture(scope="module")
def short_codes(key_file: Path) -> Iterator[Sandbox]:
    """A sandbox whose device codes expire after one second."""
    config = SandboxConfig.default(device_code_lifetime=1, device_poll_interval=0, signing_key_file=key_file)
    with Sandbox(config) as idp:
        yield idp


def test_expired_device_code_is_expired_token_once_then_invalid_grant(short_codes: Sandbox, http: httpx.Client) -> None:
    """After expires_in the first poll gets expired_token, later ones invalid_grant; nobody can approve it."""
    started = start_login(http, short_codes, audience=short_codes.audience)
    assert started["expires_in"] == 1
    time.sleep(1.05)
    assert started["user_code"] not in short_codes.pending_user_codes()
    with pytest.raises(LookupError):
        short_codes.approve(started["user_code"])
    first = poll(http, short_codes, started["device_code"])
    assert (first.status_code, first.json()["error"]) == (403, "expired_token")
    later = poll(http, short_codes, started["device_code"])
    assert (later.status_code, later.json()["error"]) == (403, "invalid_grant")


def test_denied_login_is_access_denied_then_invalid_grant(user_idp: Sandbox, http: httpx.Client) -> None:
    """A denied login is answered access_denied once; the code is then used up."""
    started = start_login(http, user_idp)
    user_idp.deny(started["user_code"])
    denied = poll(http, user_idp, started["device_code"])
    assert (denied.status_code, denied.json()["error"]) == (403, "access_denied")
    assert poll(http, user_idp, started["device_code"]).json()["error"] == "invalid_grant"
    assert user_idp.stats()["device_logins"] == 0


def test_approved_login_gets_tokens_once(user_idp: Sandbox, http: httpx.Client) -> None:
    """After approval one poll gets the tokens; the device code is then invalid_grant."""
    started = start_login(http, user_idp)
    user_idp.approve(started["user_code"])
    assert started["user_code"] not in user_idp.pending_user_codes()
    response = poll(http, user_idp, started["device_code"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    again = poll(http, user_idp, started["device_code"])
    assert (again.status_code, again.json()["error"]) == (403, "invalid_grant")
    stats = user_idp.stats()
    assert (stats["device_authorizations"], stats["device_logins"], stats["tokens_issued"]) == (1, 1, 1)


@pytest.mark.parametrize(
    ("device_code", "client_id", "status", "error"),
    [
        ("not-a-device-code", DEVICE, 403, "invalid_grant"),
        (None, OTHER_DEVICE, 403, "invalid_grant"),
        (None, "nobody", 401, "invalid_client"),
        (None, ALICE.client_id, 403, "unauthorized_client"),
        ("", DEVICE, 400, "invalid_request"),
    ],
    ids=["unknown-code", "other-device-client", "unknown-client", "m2m-client", "no-code"],
)
def test_device_grant_refusals(
    user_idp: Sandbox, http: httpx.Client, device_code: str | None, client_id: str, status: int, error: str
) -> None:
    """A code the sandbox never issued, or issued to another client, gets nothing."""
    started = start_login(http, user_idp)
    user_idp.approve(started["user_code"])
    code = started["device_code"] if device_code is None else device_code
    form = {"grant_type": DEVICE_GRANT, "client_id": client_id, "device_code": code}
    response = http.post(user_idp.token_url, data=form)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert poll(http, user_idp, started["device_code"]).status_code == 200  # still there for its own client


# --- what a login returns ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "id_token", "refresh_token"),
    [
        ("openid email profile offline_access", True, True),
        ("openid profile", True, False),
        ("offline_access", False, True),
        ("read:tasks", False, False),
    ],
)
def test_id_token_and_refresh_token_follow_the_scope(
    user_idp: Sandbox, http: httpx.Client, scope: str, id_token: bool, refresh_token: bool
) -> None:
    """openid brings an ID token, offline_access a refresh token, as on Auth0."""
    body = login(http, user_idp, scope=scope)
    assert ("id_token" in body, "refresh_token" in body) == (id_token, refresh_token)
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 86400, scope)
    assert "refresh_token_expires_in" not in body


def test_user_access_token_has_auth0_user_claims(user_idp: Sandbox, http: httpx.Client) -> None:
    """The access token is the user's: sub, azp, scope, and aud naming the API and /userinfo when openid."""
    before = int(time.time())
    body = login(http, user_idp, user=GRACE.email)
    key = jwks_key(http, user_idp)
    claims = jwt.decode(body["access_token"], key.key, algorithms=["RS256"], audience=API, issuer=user_idp.issuer)
    assert claims["sub"] == GRACE.subject
    assert claims["aud"] == [API, user_idp.issuer + "userinfo"]
    assert (claims["azp"], claims["scope"]) == (DEVICE, FULL_SCOPE)
    assert before <= claims["iat"] and claims["exp"] - claims["iat"] == 86400 and claims["jti"]
    assert "gty" not in claims


def test_access_token_without_openid_has_one_audience(user_idp: Sandbox, http: httpx.Client) -> None:
    """Without openid the aud is the API alone, a string, as for M2M tokens."""
    assert claims_of(login(http, user_idp, scope="offline_access")["access_token"])["aud"] == API


def test_id_token_says_who_the_user_is(user_idp: Sandbox, http: httpx.Client) -> None:
    """The ID token is for the client (aud), signed with the published key, with the user's e-mail and name."""
    body = login(http, user_idp)
    key = jwks_key(http, user_idp)
    claims = jwt.decode(body["id_token"], key.key, algorithms=["RS256"], audience=DEVICE, issuer=user_idp.issuer)
    assert (claims["sub"], claims["email"], claims["name"], claims["email_verified"]) == (
        ADA.subject,
        ADA.email,
        ADA.name,
        True,
    )
    assert claims["exp"] > claims["iat"]


def test_token_lifetime_fault_applies_to_user_tokens(user_idp: Sandbox, http: httpx.Client) -> None:
    """token_lifetime set at run time is the user tokens' expires_in too."""
    user_idp.set_faults(token_lifetime=120)
    body = login(http, user_idp)
    assert body["expires_in"] == 120
    assert claims_of(body["access_token"])["exp"] - claims_of(body["access_token"])["iat"] == 120


# --- approving: the page, the control endpoint, auto-approval ------------------------------


def test_activate_page_is_a_form_with_the_code_prefilled_and_the_users(user_idp: Sandbox, http: httpx.Client) -> None:
    """verification_uri_complete opens a real HTML form: the code filled in, a choice of users, Approve and Deny."""
    started = start_login(http, user_idp)
    page = http.get(started["verification_uri_complete"])
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert '<form method="post" action="/activate">' in page.text
    assert f'name="user_code" value="{started["user_code"]}"' in page.text
    for user in (ADA, GRACE):
        assert f'<option value="{user.subject}">' in page.text
    assert 'name="action" value="approve"' in page.text and 'name="action" value="deny"' in page.text
    assert http.get(started["verification_uri"]).status_code == 200


def test_approval_in_the_browser_logs_the_chosen_user_in(
    user_idp: Sandbox, http: httpx.Client, browser: httpx.Client
) -> None:
    """Posting the form (code typed in lower case without its dash) approves it as the chosen user."""
    started = start_login(http, user_idp)
    typed = started["user_code"].replace("-", "").lower()
    form = {"user_code": typed, "user": GRACE.subject, "action": "approve"}
    page = browser.post(user_idp.url + "/activate", data=form)
    assert page.status_code == 200
    assert "Device approved — you can close this page" in page.text
    tokens = poll(http, user_idp, started["device_code"]).json()
    assert claims_of(tokens["access_token"])["sub"] == GRACE.subject


def test_denial_in_the_browser_is_access_denied(user_idp: Sandbox, http: httpx.Client, browser: httpx.Client) -> None:
    """The Deny button ends the login: the device's next poll is access_denied."""
    started = start_login(http, user_idp)
    form = {"user_code": started["user_code"], "user": ADA.subject, "action": "deny"}
    page = browser.post(user_idp.url + "/activate", data=form)
    assert page.status_code == 200 and "denied" in page.text
    assert poll(http, user_idp, started["device_code"]).json()["error"] == "access_denied"


@pytest.mark.parametrize(
    ("form", "title"),
    [
        ({"user_code": "BCDF-GHJK", "action": "approve"}, "Unknown or expired code"),
        ({"user_code": "nonsense", "action": "approve"}, "Unknown or expired code"),
        ({"action": "approve", "user": "nobody@example.org"}, "Unknown user"),
        ({"action": "delete"}, "Something went wrong"),
    ],
    ids=["unknown-code", "malformed-code", "unknown-user", "bad-action"],
)
def test_activate_refuses_with_a_400_page(
    user_idp: Sandbox, http: httpx.Client, browser: httpx.Client, form: dict, title: str
) -> None:
    """Unknown codes, unknown users and odd actions get a 400 HTML page saying so; nothing is approved."""
    started = start_login(http, user_idp)
    form = {"user_code": started["user_code"], **form}
    page = browser.post(user_idp.url + "/activate", data=form)
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert f"<h1>{title}</h1>" in page.text
    assert started["user_code"] in user_idp.pending_user_codes()


def test_a_decided_code_cannot_be_decided_again(user_idp: Sandbox, http: httpx.Client, browser: httpx.Client) -> None:
    """Once approved, the code is no longer accepted by the page (a deny cannot undo it)."""
    started = start_login(http, user_idp)
    user_idp.approve(started["user_code"])
    page = browser.post(user_idp.url + "/activate", data={"user_code": started["user_code"], "action": "deny"})
    assert page.status_code == 400
    assert poll(http, user_idp, started["device_code"]).status_code == 200


def test_activate_page_escapes_what_it_echoes(user_idp: Sandbox, browser: httpx.Client) -> None:
    """A user code with markup in the URL or the form comes back escaped, never as markup."""
    evil = '"><script>alert(1)</script>'
    page = browser.get(user_idp.url + "/activate", params={"user_code": evil})
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    refused = browser.post(user_idp.url + "/activate", data={"user_code": evil, "action": "approve"})
    assert refused.status_code == 400
    assert "<script>" not in refused.text and "&lt;script&gt;" in refused.text


# --- only the owner decides at /activate ---------------------------------------------------------


def test_without_the_owners_consent_activate_refuses_with_403_and_the_login_stays_pending(
    user_idp: Sandbox, http: httpx.Client, stranger: httpx.Client
) -> None:
    """Another local user reaches loopback too: his POST /activate (approve or deny) is 403, with a
    page saying where the owner's link is, and the device's login is still pending after it."""
    started = start_login(http, user_idp)
    for action in ("approve", "deny"):
        form = {"user_code": started["user_code"], "user": GRACE.subject, "action": action}
        page = stranger.post(user_idp.url + "/activate", data=form)
        assert page.status_code == 403
        assert page.headers["content-type"].startswith("text/html")
        assert "<h1>Only the sandbox&#x27;s owner can approve</h1>" in page.text
        assert "QLAM_SANDBOX_APPROVE_URL" in page.text
        assert user_idp.control_token not in page.text
    assert started["user_code"] in user_idp.pending_user_codes()
    assert poll(http, user_idp, started["device_code"]).json()["error"] == "authorization_pending"


def test_the_form_stays_viewable_without_consent_and_says_this_browser_cannot_approve(
    user_idp: Sandbox, http: httpx.Client, stranger: httpx.Client, browser: httpx.Client
) -> None:
    """GET /activate?user_code= shows the form to anyone (it decides nothing), with a notice for a
    browser that has not opened the owner's link; the owner's browser gets no notice."""
    started = start_login(http, user_idp)
    page = stranger.get(started["verification_uri_complete"])
    assert page.status_code == 200 and f'value="{started["user_code"]}"' in page.text
    assert "This browser cannot approve yet" in page.text
    assert "This browser cannot approve yet" not in browser.get(started["verification_uri_complete"]).text
    assert started["user_code"] in user_idp.pending_user_codes()


def test_the_owners_link_sets_a_strict_httponly_cookie_and_redirects_to_the_form(
    user_idp: Sandbox, http: httpx.Client, stranger: httpx.Client
) -> None:
    """GET /activate?token=<control token> answers 303 to /activate (the token dropped from the address
    bar, the user code kept) and sets an HttpOnly, SameSite=Strict cookie for / that is not the token."""
    started = start_login(http, user_idp)
    link = f"{user_idp.approve_url}&user_code={started['user_code']}"
    answer = stranger.get(link)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/activate?user_code={started['user_code']}"
    assert answer.headers["referrer-policy"] == "no-referrer" and answer.headers["cache-control"] == "no-store"
    (cookie,) = answer.headers.get_list("set-cookie")
    name, _, rest = cookie.partition("=")
    value, *flags = [part.strip() for part in rest.split(";")]
    port = user_idp.url.rsplit(":", 1)[1]
    assert name == f"qlam_sandbox_approver_{port}"
    assert {flag.lower() for flag in flags} == {"httponly", "samesite=strict", "path=/"}  # no Max-Age: a session
    assert value and user_idp.control_token not in value
    # The cookie approves at /activate, never opens the control routes.
    assert (
        http.get(user_idp.url + "/_sandbox/device/pending", headers={"Authorization": f"Bearer {value}"}).status_code
        == 401
    )
    assert started["user_code"] in user_idp.pending_user_codes()


def test_the_owners_cookie_or_control_token_approves(
    user_idp: Sandbox, http: httpx.Client, browser: httpx.Client, stranger: httpx.Client
) -> None:
    """With the cookie from the owner's link, or the control token as a Bearer header (a script), Approve works."""
    for approve in (
        lambda form: browser.post(user_idp.url + "/activate", data=form),
        lambda form: stranger.post(user_idp.url + "/activate", data=form, headers=user_idp.control_headers()),
    ):
        started = start_login(http, user_idp)
        page = approve({"user_code": started["user_code"], "user": GRACE.subject, "action": "approve"})
        assert page.status_code == 200 and "Device approved" in page.text
        tokens = poll(http, user_idp, started["device_code"]).json()
        assert claims_of(tokens["access_token"])["sub"] == GRACE.subject


@pytest.mark.parametrize("forgery", ["link", "bearer", "cookie"])
def test_a_wrong_token_or_cookie_is_refused_with_403(
    user_idp: Sandbox, http: httpx.Client, stranger: httpx.Client, forgery: str
) -> None:
    """A guessed link sets no cookie; a wrong Bearer token or a made-up cookie gets 403; nothing is approved."""
    started = start_login(http, user_idp)
    port = user_idp.url.rsplit(":", 1)[1]
    headers: dict[str, str] = {}
    if forgery == "link":
        answer = stranger.get(user_idp.url + "/activate", params={"token": "not-the-token"})
        assert answer.status_code == 403 and "set-cookie" not in answer.headers
    elif forgery == "bearer":
        headers = {"Authorization": "Bearer not-the-token"}
    else:
        stranger.cookies.set(f"qlam_sandbox_approver_{port}", "0" * 64)
    form = {"user_code": started["user_code"], "action": "approve"}
    assert stranger.post(user_idp.url + "/activate", data=form, headers=headers).status_code == 403
    assert started["user_code"] in user_idp.pending_user_codes()


def test_a_form_sent_from_another_local_page_is_refused_even_with_the_cookie(
    user_idp: Sandbox, http: httpx.Client, browser: httpx.Client
) -> None:
    """Another port of 127.0.0.1 is the same site to a browser, so its page could make the owner's
    browser post the form with the cookie: its Origin gives it away, and it gets 403."""
    started = start_login(http, user_idp)
    form = {"user_code": started["user_code"], "action": "approve"}
    for origin in ("http://127.0.0.1:1", "null"):
        page = browser.post(user_idp.url + "/activate", data=form, headers={"Origin": origin})
        assert page.status_code == 403 and "sent from another page" in page.text
    assert started["user_code"] in user_idp.pending_user_codes()
    page = browser.post(user_idp.url + "/activate", data=form, headers={"Origin": user_idp.url})
    assert page.status_code == 200  # the sandbox's own page


def test_control_endpoints_list_and_approve_pending_logins(user_idp: Sandbox, http: httpx.Client) -> None:
    """GET /_sandbox/device/pending lists the code; POST /_sandbox/device/approve approves it as a user by e-mail."""
    started = start_login(http, user_idp)
    pending = http.get(user_idp.url + "/_sandbox/device/pending", headers=user_idp.control_headers()).json()
    assert started["user_code"] in pending["user_codes"]
    answer = http.post(
        user_idp.url + "/_sandbox/device/approve",
        json={"user_code": started["user_code"], "user": GRACE.email},
        headers=user_idp.control_headers(),
    )
    assert answer.status_code == 200
    assert answer.json() == {"user_code": started["user_code"], "status": "approved"}
    pending = http.get(user_idp.url + "/_sandbox/device/pending", headers=user_idp.control_headers()).json()
    assert started["user_code"] not in pending["user_codes"]
    tokens = poll(http, user_idp, started["device_code"]).json()
    assert claims_of(tokens["access_token"])["sub"] == GRACE.subject


def test_control_endpoint_denies_and_refuses_what_it_cannot_do(user_idp: Sandbox, http: httpx.Client) -> None:
    """deny: true denies; an unknown code is 404, an unknown user or a bad body 400."""
    started = start_login(http, user_idp)
    url = user_idp.url + "/_sandbox/device/approve"
    assert http.post(url, headers=user_idp.control_headers(), json={"user_code": "BCDF-GHJK"}).status_code == 404
    assert (
        http.post(
            url, headers=user_idp.control_headers(), json={"user_code": started["user_code"], "user": "nobody"}
        ).status_code
        == 400
    )
    assert (
        http.post(
            url, headers=user_idp.control_headers(), json={"user_code": started["user_code"], "colour": "red"}
        ).status_code
        == 400
    )
    assert (
        http.post(
            url, headers=user_idp.control_headers(), json={"user_code": started["user_code"], "deny": "yes"}
        ).status_code
        == 400
    )
    denied = http.post(url, headers=user_idp.control_headers(), json={"user_code": started["user_code"], "deny": True})
    assert denied.json() == {"user_code": started["user_code"], "status": "denied"}
    assert poll(http, user_idp, started["device_code"]).json()["error"] == "access_denied"


def test_python_api_refuses_unknown_users_and_codes(user_idp: Sandbox, http: httpx.Client) -> None:
    """approve() raises ValueError for an unknown user and LookupError for a code that is not pending."""
    started = start_login(http, user_idp)
    with pytest.raises(ValueError, match="no user"):
        user_idp.approve(started["user_code"], "nobody@example.org")
    with pytest.raises(LookupError):
        user_idp.approve("BCDF-GHJK")
    assert user_idp.user == ADA


def test_auto_approve_logs_in_as_the_first_user_at_the_first_poll(user_idp: Sandbox, http: httpx.Client) -> None:
    """With auto_approve nobody has to approve: the first poll gets the first user's tokens."""
    user_idp.set_faults(auto_approve=True)
    started = start_login(http, user_idp)
    response = poll(http, user_idp, started["device_code"])
    assert response.status_code == 200
    assert claims_of(response.json()["access_token"])["sub"] == ADA.subject


def test_auto_approve_answers_a_poll_sent_at_once_without_waiting_an_interval(idp: Sandbox, http: httpx.Client) -> None:
    """An auto-approved code is approved when issued: a poll sent straight away, long before the
    5 s interval, gets the tokens (not authorization_pending), so a login takes no interval."""
    idp.set_faults(auto_approve=True)
    began = time.monotonic()
    started = start_login(http, idp)
    assert started["interval"] == 5
    assert started["user_code"] not in idp.pending_user_codes()  # nothing left to decide
    response = poll(http, idp, started["device_code"])
    assert response.status_code == 200, response.text
    assert time.monotonic() - began < 4.5  # inside the 5 s interval: generous for a busy machine
    assert claims_of(response.json()["access_token"])["sub"] == ADA.subject
    assert idp.stats()["device_logins"] == 1


def test_auto_approve_does_not_override_a_denial(user_idp: Sandbox, http: httpx.Client) -> None:
    """A login someone denied stays denied when auto_approve is switched on."""
    started = start_login(http, user_idp)
    user_idp.deny(started["user_code"])
    user_idp.set_faults(auto_approve=True)
    assert poll(http, user_idp, started["device_code"]).json()["error"] == "access_denied"


# --- response_delay, quota, faults on the device grant ---------------------------------------


def test_response_delay_uses_up_the_device_code_even_if_the_client_gives_up(
    user_idp: Sandbox, http: httpx.Client
) -> None:
    """The code is consumed before the delayed answer: a client that timed out cannot get the tokens again."""
    started = start_login(http, user_idp)
    user_idp.approve(started["user_code"])
    user_idp.set_faults(response_delay=1.0)
    form = {"grant_type": DEVICE_GRANT, "device_code": started["device_code"], "client_id": DEVICE}
    with pytest.raises(httpx.ReadTimeout):
        http.post(user_idp.token_url, data=form, timeout=0.3)
    user_idp.set_faults(response_delay=0)
    assert poll(http, user_idp, started["device_code"]).json()["error"] == "invalid_grant"
    assert user_idp.stats()["device_logins"] == 1


def test_scripted_answer_does_not_use_up_the_device_code(user_idp: Sandbox, http: httpx.Client) -> None:
    """A script item or an injected 500 is served before the grant: the approved code still works after."""
    started = start_login(http, user_idp)
    user_idp.approve(started["user_code"])
    user_idp.set_faults(script=[{"status": 503, "body": "busy", "content_type": "text/plain"}], error_rate=1.0)
    assert poll(http, user_idp, started["device_code"]).status_code == 503
    assert poll(http, user_idp, started["device_code"]).status_code == 500
    user_idp.set_faults(error_rate=0)
    assert poll(http, user_idp, started["device_code"]).status_code == 200


def test_monthly_quota_counts_client_credentials_only(key_file: Path, http: httpx.Client) -> None:
    """Device logins and refreshes are not M2M tokens: they leave the monthly quota alone."""
    config = SandboxConfig(clients=(ALICE,), monthly_quota=1, signing_key_file=key_file, device_poll_interval=0)
    with Sandbox(config) as idp:
        body = login(http, idp)
        form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": DEVICE}
        assert http.post(idp.token_url, data=form).status_code == 200
        assert http.post(idp.token_url, data=token_form()).status_code == 200
        assert http.post(idp.token_url, data=token_form()).status_code == 429
        assert idp.stats()["tokens_issued"] == 3


def test_user_token_is_accepted_by_the_tasks_api(user_idp: Sandbox, http: httpx.Client) -> None:
    """The tasks API takes a user's token (aud is a list) and files the task under the user."""
    token = login(http, user_idp)["access_token"]
    tasks = user_idp.url + "/v2/squin-256q/tasks"
    definition = {
        "program_language": "squin",
        "programs": [{"content": "x"}],
        "subtasks": [{"program_index": 0, "num_shots": 1}],
    }
    created = http.post(tasks, json=definition, headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 201, created.text
    mine = http.get(tasks, headers={"Authorization": f"Bearer {token}"}).json()
    assert created.json()["id"] in [task["id"] for task in mine["elements"]]


def test_control_routes_need_the_owners_token(user_idp: Sandbox, http: httpx.Client) -> None:
    """Another user of the node reaches loopback too: without the owner's control token, the
    routes that change the sandbox or list pending codes answer 401; the counters stay readable."""
    started = start_login(http, user_idp)
    base = user_idp.url + "/_sandbox"
    forged = {"Authorization": "Bearer not-the-token"}
    for method, path, body in [
        ("POST", "/faults", {"error_rate": 1.0}),
        ("POST", "/reset", None),
        ("POST", "/clients", {"client_id": "x", "client_secret": "y"}),
        ("GET", "/device/pending", None),
        ("POST", "/device/approve", {"user_code": started["user_code"]}),
        ("POST", "/refresh-tokens/revoke", None),
    ]:
        for headers in ({}, forged):
            assert http.request(method, base + path, json=body, headers=headers).status_code == 401, path
    assert started["user_code"] in user_idp.pending_user_codes()  # nothing was approved
    assert http.get(base + "/faults").json()["error_rate"] == 0.0
    assert http.get(base + "/stats").status_code == 200
