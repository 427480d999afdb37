"""The token store plug point: where the shared entry, the refresh lock and the ledger live.

A store must give three guarantees, whatever it is built on:

* ``load`` never blocks and never returns a torn entry (publish atomically);
* ``try_lock`` grants the refresh lock to at most one holder at a time, and a
  holder that dies loses it within a bounded time;
* ``save`` never raises for I/O trouble: the token in hand is still good, so a
  store that cannot write warns and carries on.

The file store (``_file.py``) is the default; ``_redis.py`` is the other; ``open_store``
(``__init__.py``) picks one.
"""

from __future__ import annotations

from typing import Protocol

from .._cache import CacheEntry, Identity, decode_entry, encode_entry

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from contextlib import AbstractContextManager
    from typing import Any

    from .._sealing import EntrySeal


class TokenStore(Protocol):
    location: str

    def load(self, identity: Identity) -> CacheEntry | None:
        """The entry, or None when there is none (or it was corrupt and has been discarded)."""

    def save(self, entry: CacheEntry) -> bool:
        """Publish atomically; False (after a warning) when the store cannot be written."""

    def try_lock(self, identity: Identity) -> AbstractContextManager[object] | None:
        """The refresh lock, or None when another process holds it. ``OSError`` when
        this store cannot lock at all (read-only, locks unsupported)."""

    def lock_holder(self, identity: Identity) -> str | None:
        """Who holds the refresh lock, as far as the store can tell."""

    def clear(self, identity: Identity | None = None) -> int:
        """Remove one entry, or all of them; the number removed."""

    def record_request(self, record: dict[str, Any]) -> None:
        """Append one token request to the ledger."""

    def requests(self, month: str) -> list[dict[str, Any]]:
        """Ledger records of ``month`` (``YYYY-MM``, UTC)."""


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


class NullStore:
    """No sharing at all (``QLAM_TOKEN_CACHE=off``): every process fetches its own token."""

    location = "(cache off)"

    def load(self, identity: Identity) -> CacheEntry | None:
        return None

    def save(self, entry: CacheEntry) -> bool:
        return True

    def try_lock(self, identity: Identity) -> AbstractContextManager[object] | None:
        return _NoLock()

    def lock_holder(self, identity: Identity) -> str | None:
        return None

    def clear(self, identity: Identity | None = None) -> int:
        return 0

    def record_request(self, record: dict[str, Any]) -> None:
        return None

    def requests(self, month: str) -> list[dict[str, Any]]:
        return []


NO_LOCK = _NoLock()


def with_local_user(url: str) -> str:
    """``url`` with ``{user}`` replaced by the local user's name: one site-wide setting (an Lmod
    module's) then gives each user a key prefix or a Vault path of their own."""
    if "{user}" not in url:
        return url
    from .._cache import local_user

    return url.replace("{user}", local_user())


# --- what a store others can write must check -------------------------------------------------


class SharedEntries:
    """What Redis and Vault stores, which others can write, do with what they read and write.

    Entries are sealed (``_sealing``) under the identity's key: one that does not open is
    not used, whatever it holds (token, login, failure record, intent), is warned about
    once per process and is replaced. A token in an entry that opens must still name this
    client and audience, and in user context the login's subject (``_cache.foreign_token``):
    the seal says who wrote it, the claims that the identity provider issued it for us.
    ``seal`` None (a store made by hand, not through a provider) checks the claims alone.
    """

    def __init__(self, location: str, seal: EntrySeal | None) -> None:
        self.location = location
        self.seal = seal
        self._warned: set[str] = set()

    def encode(self, entry: CacheEntry) -> bytes:
        warn_if_foreign(entry, self.location)
        raw = encode_entry(entry)
        return self.seal.close(raw, entry.identity) if self.seal is not None else raw

    def open(self, raw: bytes, identity: Identity) -> CacheEntry:
        """The entry, unsealed and decoded; ``ValueError`` (``SealError`` among them) if it is
        not this identity's or is corrupt. Its token is not checked (``foreign_reason``)."""
        if self.seal is not None:
            raw = self.seal.open(raw, identity)
        return decode_entry(raw, identity)

    def decode(self, raw: bytes, identity: Identity, where: str) -> CacheEntry | None:
        """The entry, or None when it must be discarded (the caller removes it, if unchanged)."""
        from .._log import log
        from .._sealing import SealError

        try:
            entry = self.open(raw, identity)
        except SealError as reason:
            if where not in self._warned:
                self._warned.add(where)
                log(
                    "warning",
                    f"token store entry {where} is not sealed with your key ({reason}): it was written by "
                    "someone else, or before your key or credentials changed; not using it, replacing it",
                )
            return None
        except ValueError as reason:
            log("warning", f"token store entry {where} is corrupt ({reason}); discarded")
            return None
        return without_foreign_token(entry, where)


def without_foreign_token(entry: CacheEntry, where: str) -> CacheEntry:
    """``entry`` read from a store others can write (Redis, Vault), without its token when that
    token was not issued for this identity (``_cache.foreign_token``), with a warning."""
    from .._log import log

    foreign = foreign_reason(entry)
    if foreign is None:
        return entry
    identity = entry.identity
    subject = entry.login.subject if entry.login is not None else None
    log(
        "warning",
        f"token store entry {where} holds a token not issued for client {identity.client_id} "
        f"and audience {identity.audience}{f' and subject {subject}' if subject else ''} ({foreign}); not using it",
    )
    return entry._replace(token=None)


def foreign_reason(entry: CacheEntry) -> str | None:
    """Why the entry's token was not issued for its identity (``_cache.foreign_token``), or None."""
    import time

    from .._cache import foreign_token

    if entry.token is None:
        return None
    subject = entry.login.subject if entry.login is not None else None
    return foreign_token(entry.token, entry.identity, time.time(), subject=subject)


def warn_if_foreign(entry: CacheEntry, location: str) -> None:
    """Before writing to such a store: a token fresh from the identity provider that its readers
    would refuse means one fetch per process, and nobody would know why without this line."""
    from .._log import log

    reason = foreign_reason(entry)
    if reason is not None:
        log(
            "warning",
            f"the identity provider's token does not pass the check of tokens read from {location} "
            f"({reason}): other processes will not use it and will each fetch their own; "
            "use the file store with this identity provider",
        )
