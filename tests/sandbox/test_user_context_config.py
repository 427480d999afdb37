"""User context settings: SandboxUser, the new SandboxConfig fields, the run-time faults,
the stats keys and Sandbox.env(flow="device")."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

import qlam_hpc.sandbox
from qlam_hpc._errors import ConfigurationError
from qlam_hpc.sandbox import Sandbox, SandboxConfig, SandboxUser

from .conftest import ALICE, DEVICE, OTHER_DEVICE

USER_STATS = {
    "device_authorizations",
    "device_logins",
    "refresh_requests",
    "refreshes",
    "reuse_detections",
    "families_revoked",
    "revocations",
}


def test_sandbox_user_is_exported() -> None:
    """SandboxUser is part of the package's public names."""
    assert "SandboxUser" in qlam_hpc.sandbox.__all__
    assert qlam_hpc.sandbox.SandboxUser is SandboxUser


def test_defaults_give_one_user_and_one_device_client_as_auth0_does() -> None:
    """Ada and qlam-sandbox-device; no overlap, 15-day logins, 10-minute codes polled every 5 s, no auto-approval."""
    config = SandboxConfig.default()
    assert config.users == (SandboxUser("auth0|sandbox-user-1", "ada@example.org", "Ada Lovelace"),)
    assert config.device_clients == ("qlam-sandbox-device",)
    assert (config.refresh_token_overlap, config.refresh_token_lifetime) == (0.0, 15 * 86400)
    assert (config.device_code_lifetime, config.device_poll_interval, config.auto_approve) == (600, 5, False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("", "a@example.org", "A"), "subject"),
        (("sub", "not-an-address", "A"), "email"),
        (("sub", "a@example.org", " A"), "name"),
    ],
)
def test_sandbox_user_is_validated(fields: tuple, message: str) -> None:
    """A user needs a subject, an e-mail address and a name."""
    with pytest.raises(ConfigurationError, match=message):
        SandboxUser(*fields)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"users": ()}, "users"),
        ({"users": (SandboxUser("a", "x@example.org", "X"), SandboxUser("b", "X@example.org", "Y"))}, "unique emails"),
        ({"device_clients": ("d", "d")}, "device_clients"),
        ({"device_clients": "d"}, "device_clients"),
        ({"device_clients": (ALICE.client_id,)}, "also M2M clients"),
        ({"refresh_token_overlap": -1}, "refresh_token_overlap"),
        ({"refresh_token_overlap": float("inf")}, "refresh_token_overlap"),
        ({"refresh_token_lifetime": 0}, "refresh_token_lifetime"),
        ({"device_code_lifetime": 1.5}, "device_code_lifetime"),
        ({"device_poll_interval": -1}, "device_poll_interval"),
        ({"auto_approve": "yes"}, "auto_approve"),
    ],
)
def test_user_settings_are_validated_naming_the_setting(settings: dict, message: str) -> None:
    """Each invalid user-context setting is a ConfigurationError that names it."""
    with pytest.raises(ConfigurationError, match=message):
        SandboxConfig(clients=(ALICE,), **settings)


def test_device_clients_may_be_none() -> None:
    """A sandbox without device clients is valid; it just serves no device flow."""
    assert SandboxConfig(clients=(ALICE,), device_clients=()).device_clients == ()


def test_users_are_found_by_subject_or_email() -> None:
    """config.user() looks a user up by subject or (case-insensitively) e-mail; None gives the first."""
    grace = SandboxUser("auth0|2", "grace@example.org", "Grace Hopper")
    config = SandboxConfig(clients=(ALICE,), users=(SandboxUser("auth0|1", "ada@example.org", "Ada"), grace))
    assert config.user("auth0|2") == config.user("Grace@Example.org") == grace
    assert config.user(None) == config.users[0]
    assert config.user("nobody") is None


def test_clients_file_may_list_users_and_device_clients(tmp_path: Path) -> None:
    """A clients file's users and device_clients become the configuration's."""
    path = tmp_path / "clients.json"
    path.write_text(
        json.dumps(
            {
                "clients": [{"client_id": "a", "client_secret": "s"}],
                "users": [{"subject": "auth0|7", "email": "x@example.org", "name": "X"}],
                "device_clients": ["cli"],
            }
        )
    )
    config = SandboxConfig.from_file(path)
    assert config.users == (SandboxUser("auth0|7", "x@example.org", "X"),)
    assert config.device_clients == ("cli",)


@pytest.mark.parametrize(
    "users", ['"ada"', '[{"subject": "s", "email": "e@x"}]', '[{"subject": "s", "email": "bad", "name": "n"}]']
)
def test_bad_users_in_a_clients_file_name_the_file(tmp_path: Path, users: str) -> None:
    """A malformed users list is a ConfigurationError naming the file."""
    path = tmp_path / "clients.json"
    path.write_text(f'{{"clients": [{{"client_id": "a", "client_secret": "s"}}], "users": {users}}}')
    with pytest.raises(ConfigurationError, match=str(path)):
        SandboxConfig.from_file(path)


def test_env_for_the_device_flow_has_no_secret(idp: Sandbox) -> None:
    """env(flow="device") names the first device client and the flow, and carries no secret."""
    assert idp.env(flow="device") == {
        "AUTH_BASE_URL": idp.url,
        "QLAM_CLIENT_ID": DEVICE,
        "QLAM_AUDIENCE": idp.audience,
        "QLAM_API_URL": idp.url,
        "QLAM_AUTH_FLOW": "device",
    }
    assert idp.env(OTHER_DEVICE, flow="device")["QLAM_CLIENT_ID"] == OTHER_DEVICE
    assert "QLAM_AUTH_FLOW" not in idp.env()
    with pytest.raises(ValueError):
        idp.env(ALICE.client_id, flow="device")
    with pytest.raises(ValueError):
        idp.env(flow="password")  # type: ignore[arg-type]


def test_stats_have_the_user_context_counters_and_reset_zeroes_them(idp: Sandbox, http: httpx.Client) -> None:
    """stats() has every user-context counter, over HTTP too; reset() zeroes them."""
    http.post(idp.url + "/oauth/revoke", data={"token": "x", "client_id": DEVICE})
    stats = http.get(idp.url + "/_sandbox/stats").json()
    assert set(stats) >= USER_STATS
    assert stats["revocations"] == 1
    idp.reset()
    assert all(idp.stats()[name] == 0 for name in USER_STATS)


def test_user_settings_change_at_run_time_and_reset_restores_them(idp: Sandbox, http: httpx.Client) -> None:
    """POST /_sandbox/faults sets the overlap, poll interval, auto-approval and response delay; reset restores them."""
    changes = {"refresh_token_overlap": 1.5, "device_poll_interval": 2, "auto_approve": True, "response_delay": 0.25}
    answer = http.post(idp.url + "/_sandbox/faults", headers=idp.control_headers(), json=changes).json()
    assert {name: answer[name] for name in changes} == changes
    reset = http.post(idp.url + "/_sandbox/reset", headers=idp.control_headers()).json()["faults"]
    assert {name: reset[name] for name in changes} == {
        "refresh_token_overlap": 0.0,
        "device_poll_interval": 5,
        "auto_approve": False,
        "response_delay": 0.0,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"refresh_token_overlap": -1},
        {"device_poll_interval": 1.5},
        {"device_poll_interval": True},
        {"auto_approve": "yes"},
        {"response_delay": float("nan")},
    ],
)
def test_invalid_user_settings_are_refused(idp: Sandbox, http: httpx.Client, body: dict) -> None:
    """Invalid values get 400 over HTTP and ValueError from set_faults, and change nothing."""
    headers = {"content-type": "application/json", **idp.control_headers()}
    response = http.post(idp.url + "/_sandbox/faults", content=json.dumps(body), headers=headers)
    assert response.status_code == 400
    with pytest.raises(ValueError):
        idp.set_faults(**body)
    assert http.get(idp.url + "/_sandbox/faults").json()["refresh_token_overlap"] == 0.0
