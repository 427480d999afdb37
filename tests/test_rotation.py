"""Rotation: a secret changed in its source is picked up, with at most one rejected request.

The sandbox rotates a client's secret at run time (``POST /_sandbox/clients``); the
secret's source (the Vault stand-in, moto's AWS server, a file) is changed alongside.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator

import httpx
import pytest

from conftest import FAST_RETRY, run_cli
from qlam_hpc import InvalidClient, Settings, TokenProvider
from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig
from secret_stores import aws, vault

CLIENT = "rotating-client"


@pytest.fixture(scope="module")
def idp() -> Iterator[Sandbox]:
    config = SandboxConfig(clients=(SandboxClient(CLIENT, "initial-secret-value"),))
    with Sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture
def rotate(idp):
    """Give the client a new secret in the identity provider; returns it."""

    def rotate() -> str:
        secret = "rotated-" + secrets.token_urlsafe(24)
        response = httpx.post(
            idp.url + "/_sandbox/clients",
            headers=idp.control_headers(),
            json={"client_id": CLIENT, "client_secret": secret},
        )
        assert response.status_code == 200
        return secret

    idp.reset()
    return rotate


def _provider(idp, cache_dir, **env: str) -> TokenProvider:
    base = {"AUTH_BASE_URL": idp.url, "QLAM_CLIENT_ID": CLIENT, "QLAM_TOKEN_CACHE_DIR": str(cache_dir)}
    return TokenProvider(Settings.from_env({**base, **env}).with_(retry=FAST_RETRY))


def _write(path, secret: str) -> None:
    path.write_text(secret + "\n")
    path.chmod(0o600)


def test_a_secret_rotated_in_vault_costs_one_rejection(idp, rotate, vault, tmp_path, caplog):
    """Vault and the IdP rotate between two fetches: one invalid_client, a re-read, then a token."""
    old = rotate()
    vault.put("secret", "qlam", {"client_secret": old})
    provider = _provider(idp, tmp_path, QLAM_CLIENT_SECRET="vault://secret/qlam#client_secret", **vault.env())
    assert provider.get().source == "fetched"
    new = rotate()
    vault.put("secret", "qlam", {"client_secret": new})
    provider.clear()  # the next call must fetch, as after the token's expiry
    with caplog.at_level(logging.INFO, logger="qlam_hpc"):
        assert provider.get().source == "fetched"
    stats = idp.stats()
    assert stats["token_errors"] == {"invalid_client": 1} and stats["tokens_issued"] == 2
    assert vault.reads == 2
    assert "retrying once" in caplog.text and old not in caplog.text and new not in caplog.text


def test_a_secret_rotated_in_aws_costs_one_rejection(idp, rotate, aws, tmp_path):
    """The same with AWS Secrets Manager (moto's server)."""
    name = aws.create({"client_secret": rotate()})
    provider = _provider(idp, tmp_path, QLAM_CLIENT_SECRET=f"aws-sm://{name}#client_secret", **aws.env())
    provider.get()
    aws.update(name, {"client_secret": rotate()})
    provider.clear()
    assert provider.get().source == "fetched"
    assert idp.stats()["token_errors"] == {"invalid_client": 1}


def test_a_replaced_secret_file_costs_no_rejection(idp, rotate, tmp_path):
    """Files are read at every fetch: after the file is replaced, the next fetch just works."""
    path = tmp_path / "secret"
    _write(path, rotate())
    provider = _provider(idp, tmp_path / "cache", QLAM_CLIENT_SECRET_FILE=str(path))
    provider.get()
    _write(path, rotate())
    provider.clear()
    assert provider.get().source == "fetched"
    assert idp.stats()["token_errors"] == {} and idp.stats()["tokens_issued"] == 2


def test_an_unchanged_source_is_not_retried(idp, rotate, vault, tmp_path):
    """When the source still holds the refused secret, there is no second request: one rejection, an error."""
    rotate()
    vault.put("secret", "qlam", {"client_secret": "not-the-secret"})
    provider = _provider(idp, tmp_path, QLAM_CLIENT_SECRET="vault://secret/qlam#client_secret", **vault.env())
    with pytest.raises(InvalidClient):
        provider.get()
    assert idp.stats()["token_requests"] == 1


def test_the_retry_happens_once(idp, rotate, vault, tmp_path):
    """A source that changes to another wrong secret: two requests, then the rejection is raised and recorded."""
    vault.put("secret", "qlam", {"client_secret": rotate()})
    provider = _provider(idp, tmp_path, QLAM_CLIENT_SECRET="vault://secret/qlam#client_secret", **vault.env())
    provider.get()
    rotate()
    vault.put("secret", "qlam", {"client_secret": "also-wrong"})
    provider.clear()
    with pytest.raises(InvalidClient):
        provider.get()
    assert idp.stats()["token_errors"] == {"invalid_client": 2}
    requests = [r["outcome"] for r in provider.store.requests(_month())]
    assert requests == ["ok", "invalid_client", "invalid_client"]


def test_new_credentials_clear_the_shared_rejection(idp, rotate, tmp_path):
    """A rejection recorded for the old secret is repeated to tasks holding it, but not to tasks with the new one."""
    path = tmp_path / "secret"
    _write(path, "stale-secret")
    rotate()
    stale = _provider(idp, tmp_path / "cache", QLAM_CLIENT_SECRET_FILE=str(path))
    with pytest.raises(InvalidClient):
        stale.get()
    with pytest.raises(InvalidClient):
        _provider(idp, tmp_path / "cache", QLAM_CLIENT_SECRET_FILE=str(path)).get()  # repeated, not asked
    assert idp.stats()["token_requests"] == 1
    _write(path, rotate())
    assert _provider(idp, tmp_path / "cache", QLAM_CLIENT_SECRET_FILE=str(path)).get().source == "fetched"
    assert idp.stats()["token_requests"] == 2


def test_rotation_through_the_cli(idp, rotate, tmp_path, env):
    """Task 1 meets a rotated IdP with a stale file: exit 4; the file is updated: task 2 gets a token at once."""
    path = tmp_path / "secret"
    _write(path, "stale-secret")
    rotate()
    case = {k: v for k, v in env.items() if k != "QLAM_CLIENT_SECRET"}
    case.update(AUTH_BASE_URL=idp.url, QLAM_CLIENT_ID=CLIENT, QLAM_CLIENT_SECRET_FILE=str(path))
    first = run_cli("token", env=case)
    assert first.code == 4 and "invalid_client" in first.err
    fresh = rotate()
    _write(path, fresh)
    second = run_cli("token", env=case)
    assert second.code == 0, second.err
    assert fresh not in first.err + second.err + second.out and "stale-secret" not in first.err


def _month() -> str:
    import time

    return time.strftime("%Y-%m", time.gmtime())
