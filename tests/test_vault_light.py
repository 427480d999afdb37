"""The light read of the Vault store: a warm ``qlam-hpc token`` through a Vault (OpenBao) path
is served without hvac (nor requests, click, httpx), with the same trust checks as the full
store; whatever it does not fully understand goes to the full store, which says it as before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import run_cli, run_cli_watching
from qlam_hpc import Settings
from qlam_hpc._cache import Identity
from qlam_hpc._stores._vault_light import warm_entry
from qlam_hpc.sandbox import Sandbox
from vault_service import bao, bao_path, clean_env

pytestmark = pytest.mark.vault

HEAVY = ("hvac", "requests", "click", "httpx")


@pytest.fixture(scope="module")
def idp() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def store_env(idp, bao, bao_path, tmp_path) -> dict[str, str]:
    idp.reset()
    base = {k: v for k, v in clean_env().items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_"))}
    return {
        **base,
        **idp.env(),
        **bao.env(),
        "QLAM_TOKEN_STORE": f"vault://secret/{bao_path}",
        "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache"),
    }


@pytest.mark.parametrize("login", ["VAULT_TOKEN", "~/.vault-token"])
def test_a_warm_token_through_vault_is_served_without_hvac(idp, bao, store_env, tmp_path, login):
    """The first call fetches and publishes through hvac; the next ones read the entry over
    http.client: the same token, no further request, none of hvac, requests, click or httpx."""
    first = run_cli("token", env=store_env)
    assert first.code == 0, first.err
    if login == "~/.vault-token":  # what `vault login` writes
        home = tmp_path / "home"
        home.mkdir()
        (home / ".vault-token").write_text(store_env.pop("VAULT_TOKEN") + "\n")
        store_env["HOME"] = str(home)
    for _ in range(2):
        again, loaded = run_cli_watching(HEAVY, "token", env=store_env)
        assert again.code == 0, again.err
        assert again.out == first.out
        assert loaded == []
    assert idp.stats()["token_requests"] == 1


def test_an_approle_login_is_left_to_the_full_store(idp, bao, store_env):
    assert run_cli("token", env=store_env).code == 0
    role_id, secret_id = bao.approle(
        bao.policy('path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }')
    )
    approle = {k: v for k, v in store_env.items() if k != "VAULT_TOKEN"}
    done, loaded = run_cli_watching(
        HEAVY, "token", env={**approle, "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id}
    )
    assert done.code == 0, done.err
    assert "hvac" in loaded
    assert idp.stats()["token_requests"] == 1


def test_an_entry_sealed_by_someone_else_is_left_to_the_full_store(idp, bao, bao_path, store_env):
    """Someone who can write the path plants an entry for our key: the light read does not use
    it, and the full store warns, replaces it and hands out a token of our own."""
    assert run_cli("token", env=store_env).code == 0
    settings = Settings.from_env(store_env)
    identity = Identity.of(settings)
    path = f"{bao_path}/{identity.key()}/entry"
    genuine = bao.read("secret", path)["entry"]
    bao.put("secret", path, {"entry": genuine.replace("seal=", "seal=0")})
    assert warm_entry(settings, identity, store_env) is None
    done, loaded = run_cli_watching(HEAVY, "token", env=store_env)
    assert done.code == 0, done.err
    assert "not sealed with your key" in done.err
    assert "hvac" in loaded
    assert idp.stats()["token_requests"] == 2


def test_a_refused_vault_token_is_said_by_the_full_store(bao, store_env):
    assert run_cli("token", env=store_env).code == 0
    refused = run_cli("token", env={**store_env, "VAULT_TOKEN": "not-a-valid-token"})
    assert refused.code == 15, refused.err
    assert len(refused.err.strip().splitlines()) == 1 and "not-a-valid-token" not in refused.err


def test_a_path_with_characters_to_quote_is_left_to_the_full_store(store_env):
    env = {**store_env, "QLAM_TOKEN_STORE": "vault://secret/with space"}
    settings = Settings.from_env(env)
    assert warm_entry(settings, Identity.of(settings), env) is None
