"""What the stores that others can write (Redis, Vault) share: ``{user}`` in their URLs, and
how an entry read from them is trusted (its seal, its token's claims).

Apart from ``_base`` (the store protocol, which needs ``typing``), so that the CLI's light
reads (``_redis_light``, ``_vault_light``) import only this and the standard library.
"""

from __future__ import annotations

from .._cache import CacheEntry, Identity, decode_entry, encode_entry

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from .._sealing import EntrySeal


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


def quietly_trusted(raw: bytes, identity: Identity, seal: EntrySeal) -> CacheEntry | None:
    """For the CLI's light reads: the entry if it opens with ``seal`` and its token (if any)
    names ``identity``; None, without a word, for anything else: the full store then reads
    it again and says what is wrong."""
    from .._errors import QlamError

    try:
        entry = SharedEntries("", seal).open(raw, identity)
    except (ValueError, QlamError):  # not this identity's, corrupt, or no key to tell
        return None
    return entry if foreign_reason(entry) is None else None


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
