"""``qlam-hpc credentials keygen``: a key pair for private_key_jwt that a server accepts, written
safely (0600, never over an existing file), and a rotation from one key to the next."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import leak_check
from conftest import FAST_RETRY, run_cli
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._errors import InvalidClient
from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig


def keygen(prefix: Path, *args: str) -> tuple[Path, Path, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLAM_")}
    run = run_cli("credentials", "keygen", "--out", str(prefix), *args, env=env)
    assert run.code == 0, run.err
    key, pub, jwks = Path(f"{prefix}.key.pem"), Path(f"{prefix}.pub.pem"), Path(f"{prefix}.jwks.json")
    assert "PRIVATE KEY" not in run.out + run.err
    assert f"QLAM_CLIENT_PRIVATE_KEY_FILE={key}" in run.out
    return key, pub, jwks


def settings_for(sandbox: Sandbox, key: Path, kid: str, cache: Path) -> Settings:
    env = {
        "AUTH_BASE_URL": sandbox.url,
        "QLAM_CLIENT_ID": "keyed",
        "QLAM_CLIENT_PRIVATE_KEY_FILE": str(key),
        "QLAM_CLIENT_KEY_ID": kid,
        "QLAM_CLIENT_AUTH_METHOD": "private_key_jwt",
    }
    return Settings.from_env(env, cache_dir=str(cache)).with_(retry=FAST_RETRY)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_the_key_pair_is_written_safely_and_the_server_accepts_it(
    kind: str, tmp_path: Path, leak_check: leak_check.Any
) -> None:
    """Private key 0600, public PEM and JWK set beside it; a sandbox client registered with the
    JWK set accepts private_key_jwt assertions signed with the private key."""
    key, pub, jwks = keygen(tmp_path / "client", "--type", kind)
    leak_check.expect(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    jwk = json.loads(jwks.read_text())["keys"][0]
    assert jwk["alg"] == {"rsa": "RS256", "ec": "ES256"}[kind] and jwk["use"] == "sig" and "d" not in jwk
    client = SandboxClient("keyed", jwks=json.loads(jwks.read_text()))
    with Sandbox(SandboxConfig(clients=(client,))) as sandbox:
        assert TokenProvider(settings_for(sandbox, key, jwk["kid"], tmp_path / "cache")).get_token()


def test_an_existing_file_is_never_replaced(tmp_path: Path, leak_check: leak_check.Any) -> None:
    key, _, _ = keygen(tmp_path / "client")
    leak_check.expect(key)
    before = key.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLAM_")}
    again = run_cli("credentials", "keygen", "--out", str(tmp_path / "client"), env=env)
    assert again.code == 3 and "already exists" in again.err
    assert key.read_bytes() == before


def test_rotating_from_one_key_to_the_next_without_downtime(tmp_path: Path, leak_check: leak_check.Any) -> None:
    """The runbook: register the new public key beside the old, switch the file, drop the old key.
    Both keys work while both are registered; after the old one is removed only the new one does."""
    old_key, old_pub, _ = keygen(tmp_path / "old")
    new_key, new_pub, new_jwks = keygen(tmp_path / "new")
    leak_check.expect(old_key)
    leak_check.expect(new_key)
    new_kid = json.loads(new_jwks.read_text())["keys"][0]["kid"]
    both = SandboxClient("keyed", public_keys=(old_pub.read_text(), new_pub.read_text()))
    with Sandbox(SandboxConfig(clients=(both,))) as sandbox:
        for key in (old_key, new_key):
            assert TokenProvider(settings_for(sandbox, key, new_kid, tmp_path / f"c-{key.stem}")).get_token()
    only_new = SandboxClient("keyed", public_keys=(new_pub.read_text(),))
    with Sandbox(SandboxConfig(clients=(only_new,))) as sandbox:
        assert TokenProvider(settings_for(sandbox, new_key, new_kid, tmp_path / "c-after")).get_token()
        with pytest.raises(InvalidClient):
            TokenProvider(settings_for(sandbox, old_key, new_kid, tmp_path / "c-old")).get_token()
