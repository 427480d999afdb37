"""What a process believes of a shared entry: failure records bounded by the reader's clock,
fingerprints that old releases wrote, tokens that cannot go in a header.

Each test writes the entry another process (an older release, a node whose clock runs
ahead, whoever can write the store) might have left, then asks the real sandbox.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from qlam_hpc import FileStore, InvalidClient, TokenProvider
from qlam_hpc._cache import CacheEntry, Failure, Identity
from qlam_hpc._oauth import credentials_fingerprint
from qlam_hpc._settings import Secret
from qlam_hpc._tokens import Token

DAY = 86400.0


def _rejection(settings, at: float, until: float, credentials: str) -> Failure:
    error = InvalidClient("invalid_client", "Unauthorized", 401, settings.token_url)
    return Failure.from_error(error, at=at, cooldown=until - at, credentials=credentials, by="fast-clock:1")


def _plant(settings, entry: CacheEntry) -> None:
    FileStore(settings.cache_path).save(entry)


def _old_fingerprint(settings) -> str:
    """What releases before the salted fingerprint recorded: 16 hex digits of one SHA-256."""
    parts = ("qlam-hpc credentials v1", settings.token_url, settings.client_id, settings.client_secret.reveal())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# --- failure records and the reader's clock ---------------------------------------------------


def test_a_rejection_recorded_by_a_node_two_days_ahead_is_not_repeated(settings, sandbox):
    """The record says invalid_client from two days in the future: this process asks itself."""
    now = time.time()
    failure = _rejection(settings, now + 2 * DAY, now + 2 * DAY + 300, credentials_fingerprint(settings))
    _plant(settings, CacheEntry(Identity.of(settings), None, failure))
    result = TokenProvider(settings).get()
    assert result.source == "fetched"
    assert sandbox.stats()["token_requests"] == 1


def test_a_rejection_standing_for_48_hours_ends_after_the_readers_cool_down(settings, sandbox):
    """until - at of 48 h, with the reader's own cool-down 5 min: over once 5 min have passed."""
    now = time.time()
    failure = _rejection(settings, now - 301, now + 2 * DAY, credentials_fingerprint(settings))
    _plant(settings, CacheEntry(Identity.of(settings), None, failure))
    assert TokenProvider(settings).get().source == "fetched"
    assert sandbox.stats()["token_requests"] == 1


def test_a_fresh_rejection_is_still_repeated(settings, sandbox):
    """Within the reader's cool-down a (clamped) record is repeated, without asking the IdP."""
    now = time.time()
    failure = _rejection(settings, now - 1, now + 2 * DAY, credentials_fingerprint(settings))
    _plant(settings, CacheEntry(Identity.of(settings), None, failure))
    with pytest.raises(InvalidClient):
        TokenProvider(settings).get()
    assert sandbox.stats()["token_requests"] == 0


# --- fingerprints of older releases -------------------------------------------------------------


@pytest.mark.parametrize("recorded", ["old", "garbage"])
def test_an_unsalted_or_broken_fingerprint_is_ignored(settings, sandbox, recorded):
    """A record with the old unsalted fingerprint (or nonsense) is not ours: ask, do not crash."""
    now = time.time()
    credentials = _old_fingerprint(settings) if recorded == "old" else "scrypt1$zz$"
    _plant(settings, CacheEntry(Identity.of(settings), None, _rejection(settings, now, now + 300, credentials)))
    assert TokenProvider(settings).get().source == "fetched"


def test_a_salted_record_is_repeated_by_another_process(settings, sandbox):
    """The salted fingerprint one process records is recognised by the next, with the same secret."""
    settings = settings.with_(client_secret=Secret("wrong-secret"))
    with pytest.raises(InvalidClient):
        TokenProvider(settings).get()
    with pytest.raises(InvalidClient):
        TokenProvider(settings).get()  # a new provider: a new process, as far as the cache goes
    assert sandbox.stats()["token_requests"] == 1


# --- tokens that cannot go in a header -----------------------------------------------------------


@pytest.mark.parametrize("access_token", ["tökén", "a b", "a,b"])
def test_a_cached_token_that_is_not_a_b64token_is_replaced(settings, sandbox, access_token):
    """An entry holding a token no header can carry is discarded as corrupt, and a token fetched."""
    now = time.time()
    token = Token(access_token, expires_at=now + 3600, obtained_at=now, obtained_by="old-release:1")
    _plant(settings, CacheEntry(Identity.of(settings), token))
    result = TokenProvider(settings).get()
    assert result.source == "fetched" and result.token.access_token != access_token
    result.token.authorization.encode("latin-1")
