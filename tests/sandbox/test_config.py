"""SandboxConfig and SandboxClient: defaults, validation, loading clients from JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlam_hpc._errors import ConfigurationError
from qlam_hpc.sandbox import SandboxClient, SandboxConfig


def test_defaults_match_the_real_service() -> None:
    """By default: QLAM's audience, 24-hour tokens, no quota, no faults, loopback on any port."""
    config = SandboxConfig.default()
    assert config.audiences == ("https://api.quera.com",)
    assert (config.token_lifetime, config.monthly_quota, config.latency, config.error_rate) == (86400, None, 0.0, 0.0)
    assert (config.host, config.port) == ("127.0.0.1", 0)


def test_default_client_is_random() -> None:
    """Each default config has its own random client id and a long random secret."""
    first, second = SandboxConfig.default().clients[0], SandboxConfig.default().clients[0]
    assert first.client_id != second.client_id
    assert first.client_secret != second.client_secret
    assert len(first.client_secret) >= 32


def test_default_takes_a_client_id_and_settings() -> None:
    """default() keeps a given client id and passes other settings through."""
    config = SandboxConfig.default(client_id="hpc-job", monthly_quota=5, scopes=["read:tasks"])
    assert config.clients[0].client_id == "hpc-job"
    assert config.clients[0].scopes == ("read:tasks",)
    assert config.monthly_quota == 5


def test_repr_hides_the_secret() -> None:
    """A client's repr (and so any log line or traceback showing it) never holds its secret."""
    client = SandboxClient("id", "very-secret-value")
    assert "very-secret-value" not in repr(client)
    assert "very-secret-value" not in repr(SandboxConfig(clients=(client,)))


def test_from_file_loads_clients_and_audiences(tmp_path: Path) -> None:
    """A clients file gives clients with scopes and audiences; keyword settings fill the rest."""
    path = tmp_path / "clients.json"
    path.write_text(
        json.dumps(
            {
                "clients": [
                    {"client_id": "a", "client_secret": "sa", "scopes": ["read:tasks"]},
                    {"client_id": "b", "client_secret": "sb", "audiences": ["https://two"]},
                ],
                "audiences": ["https://one", "https://two"],
            }
        )
    )
    config = SandboxConfig.from_file(path, token_lifetime=60)
    assert [c.client_id for c in config.clients] == ["a", "b"]
    assert config.clients[0].scopes == ("read:tasks",)
    assert config.clients[1].audiences == ("https://two",)
    assert config.audiences == ("https://one", "https://two")
    assert config.token_lifetime == 60


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read"),
        ('{"clients": {}}', "clients"),
        ('{"clients": [{"client_id": "a"}]}', "client_secret"),
        ('{"clients": [{"client_id": "a", "client_secret": "s", "colour": 1}]}', "unknown keys"),
        ('{"clients": [{"client_id": "a", "client_secret": "s", "scopes": "read"}]}', "list of strings"),
        ('{"clients": []}', "at least one"),
        ('{"clients": [{"client_id": "a", "client_secret": "s", "audiences": ["https://x"]}]}', "unknown audiences"),
    ],
)
def test_bad_clients_file_is_refused(tmp_path: Path, content: str, message: str) -> None:
    """A broken clients file raises ConfigurationError naming the file and the problem."""
    path = tmp_path / "clients.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=message) as raised:
        SandboxConfig.from_file(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"host": "0.0.0.0"},
        {"host": "10.1.2.3"},
        {"host": "example.com"},
        {"token_lifetime": 0},
        {"monthly_quota": -1},
        {"latency": -0.1},
        {"error_rate": 1.1},
        {"port": 70000},
        {"audiences": ()},
        {"audiences": "https://api.quera.com"},
    ],
)
def test_invalid_settings_are_refused(settings: dict) -> None:
    """Non-loopback hosts and out-of-range numbers raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        SandboxConfig.default(**settings)


def test_duplicate_client_ids_are_refused() -> None:
    """Two clients with one id would make authentication ambiguous."""
    with pytest.raises(ConfigurationError, match="unique"):
        SandboxConfig(clients=(SandboxClient("a", "x"), SandboxClient("a", "y")))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    """Any loopback address, IPv4 or IPv6, or localhost, is a valid host."""
    assert SandboxConfig.default(host=host).host == host
