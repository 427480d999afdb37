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

from .._cache import CacheEntry, Identity

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from contextlib import AbstractContextManager
    from typing import Any


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


# --- what a store others can write must check -------------------------------------------------


def without_foreign_token(entry: CacheEntry, where: str) -> CacheEntry:
    """``entry`` read from a store others can write (Redis, Vault), without its token when that
    token was not issued for this identity (``_cache.foreign_token``), with a warning."""
    import time

    from .._cache import foreign_token
    from .._log import log

    if entry.token is None:
        return entry
    foreign = foreign_token(entry.token, entry.identity, time.time())
    if foreign is None:
        return entry
    identity = entry.identity
    log(
        "warning",
        f"token store entry {where} holds a token not issued for client {identity.client_id} "
        f"and audience {identity.audience} ({foreign}); not using it",
    )
    return entry._replace(token=None)


def warn_if_foreign(entry: CacheEntry, location: str) -> None:
    """Before writing to such a store: a token fresh from the identity provider that its readers
    would refuse means one fetch per process, and nobody would know why without this line."""
    import time

    from .._cache import foreign_token
    from .._log import log

    reason = foreign_token(entry.token, entry.identity, time.time()) if entry.token is not None else None
    if reason is not None:
        log(
            "warning",
            f"the identity provider's token does not pass the check of tokens read from {location} "
            f"({reason}): other processes will not use it and will each fetch their own; "
            "use the file store with this identity provider",
        )
