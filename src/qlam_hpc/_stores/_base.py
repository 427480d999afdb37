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
