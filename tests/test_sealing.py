"""Sealed entries (``_sealing``): only an entry sealed under the identity's own key opens, and the
key itself is kept as a secret file is. The stores that seal are tested with real servers in
tests/test_redisstore.py, tests/test_vaultstore.py and tests/test_multiuser_stores.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qlam_hpc import Settings
from qlam_hpc._cache import CacheEntry, Identity, encode_entry
from qlam_hpc._errors import CacheError, ConfigurationError
from qlam_hpc._sealing import EntrySeal, SealError, credentials_key, key_file_path, seal_for, user_key
from qlam_hpc._tokens import Token

ADA = Identity("https://idp.example/oauth/token", "public-client", "https://api.quera.com", None, "device:ada")
BOB = ADA._replace(principal="device:bob")


def _raw(identity: Identity = ADA) -> bytes:
    token = Token("header.payload.signature", expires_at=2e9, obtained_at=1.9e9, obtained_by="node1:42")
    return encode_entry(CacheEntry(identity, token))


def _seal(key: bytes = b"k" * 32) -> EntrySeal:
    return EntrySeal(lambda create: key, describe="test key")


def test_a_sealed_entry_opens_to_what_was_sealed() -> None:
    raw = _raw()
    sealed = _seal().close(raw, ADA)
    assert sealed != raw and b"\nseal=" in sealed
    assert _seal().open(sealed, ADA) == raw


@pytest.mark.parametrize(
    "tamper",
    [
        lambda sealed: sealed.replace(b"obtained_by=node1:42", b"obtained_by=node9:42"),
        lambda sealed: sealed.replace(b"principal=device:ada", b"principal=device:bob"),
        lambda sealed: sealed.replace(b"header.payload", b"HEADER.payload"),
    ],
    ids=["a field", "the owner's name", "the token"],
)
def test_any_change_to_a_sealed_entry_breaks_its_seal(tamper) -> None:
    sealed = _seal().close(_raw(), ADA)
    with pytest.raises(SealError):
        _seal().open(tamper(sealed), ADA)


def test_an_unsealed_entry_and_one_sealed_under_another_key_do_not_open() -> None:
    with pytest.raises(SealError, match="not sealed"):
        _seal().open(_raw(), ADA)
    with pytest.raises(SealError, match="another key"):
        _seal(b"x" * 32).open(_seal().close(_raw(), ADA), ADA)


def test_a_seal_is_bound_to_its_identity() -> None:
    """bob's own entry, sealed under his key and renamed ada's, does not open for ada even
    if the two keys were the same: the identity is part of the key."""
    sealed_for_bob = _seal().close(_raw(BOB), BOB)
    renamed = sealed_for_bob.replace(b"device:bob", b"device:ada")
    with pytest.raises(SealError):
        _seal().open(renamed, ADA)


def test_a_reader_without_a_key_says_which_file_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "config" / "qlam-hpc" / "store.key"
    seal = EntrySeal(lambda create: user_key(str(path), create=create), describe=f"store key {path}")
    sealed = _seal().close(_raw(), ADA)
    with pytest.raises(CacheError, match=r"no store key .*store\.key.*QLAM_STORE_KEY_FILE"):
        seal.open(sealed, ADA)
    assert not path.exists()  # a reader never makes the key: that would disown the login elsewhere


def test_the_first_writer_makes_the_user_key_private(tmp_path: Path) -> None:
    path = tmp_path / "config" / "qlam-hpc" / "store.key"
    key = user_key(str(path), create=True)
    assert key is not None and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert user_key(str(path), create=True) == key  # made once, then read


def test_processes_racing_to_make_the_key_all_get_the_same_one(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    code = "import sys; from qlam_hpc._sealing import user_key; print(user_key(sys.argv[1], create=True).hex())"
    children = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True) for _ in range(8)
    ]
    keys = {child.communicate(timeout=60)[0].strip() for child in children}
    assert len(keys) == 1 and len(keys.pop()) == 64


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "store.key"
    user_key(str(path), create=True)
    path.chmod(mode)
    with pytest.raises(ConfigurationError, match="readable by group or others"):
        user_key(str(path), create=False)


def test_a_key_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigurationError, match="other users can write"):
        user_key(str(shared / "store.key"), create=True)


def test_a_file_that_is_not_a_key_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    path.write_text("not a key\n")
    path.chmod(0o600)
    with pytest.raises(CacheError, match="is not a qlam-hpc store key"):
        user_key(str(path), create=False)


def test_the_key_file_is_found_where_the_docs_say(tmp_path: Path) -> None:
    assert key_file_path({"HOME": "/home/ada"}) == "/home/ada/.config/qlam-hpc/store.key"
    assert key_file_path({"HOME": "/home/ada", "XDG_CONFIG_HOME": "/cfg"}) == "/cfg/qlam-hpc/store.key"
    assert key_file_path({"QLAM_STORE_KEY_FILE": str(tmp_path / "k")}) == str(tmp_path / "k")


def test_m2m_keys_come_from_the_credentials() -> None:
    """Whoever holds the client's secret is the client; a rotated secret is another key."""
    base = {
        "AUTH_BASE_URL": "https://idp.example",
        "QLAM_CLIENT_ID": "client-1",
        "QLAM_AUDIENCE": "https://api.quera.com",
    }
    one = Settings.from_env({**base, "QLAM_CLIENT_SECRET": "secret-number-one"})
    two = Settings.from_env({**base, "QLAM_CLIENT_SECRET": "secret-number-two"})
    assert credentials_key(one) == credentials_key(one) != credentials_key(two)
    sealed = seal_for(one).close(_raw(), ADA)
    assert seal_for(one).open(sealed, ADA)
    with pytest.raises(SealError):
        seal_for(two).open(sealed, ADA)


def test_user_context_seals_with_the_key_file(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "AUTH_BASE_URL": "https://idp.example",
            "QLAM_CLIENT_ID": "public-client",
            "QLAM_AUDIENCE": "https://api.quera.com",
            "QLAM_AUTH_FLOW": "device",
        }
    )
    env = {"QLAM_STORE_KEY_FILE": str(tmp_path / "store.key")}
    sealed = seal_for(settings, env).close(_raw(), ADA)
    assert (tmp_path / "store.key").exists()
    assert seal_for(settings, env).open(sealed, ADA)
    assert os.stat(tmp_path / "store.key").st_uid == os.geteuid()
