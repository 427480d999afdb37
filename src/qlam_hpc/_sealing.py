"""Sealed entries: how a reader of a store that others can write tells its own entries from planted ones.

Everyone whose Redis password or Vault policy reaches a store can write every entry in
it. An entry's token, login, failure record and intent decide which identity a job acts
as and what it tells its user, so an entry in such a store is used only if it carries a
valid *seal*: an HMAC-SHA256 over the whole encoded entry, in a ``seal=`` line just
before the end marker, under a key that only its identity can have:

* **user context**: a random 256-bit key in a file of the user's own
  (``QLAM_STORE_KEY_FILE``, default ``$XDG_CONFIG_HOME/qlam-hpc/store.key`` or
  ``~/.config/qlam-hpc/store.key``): 0600 in a directory only the user can write, on
  the shared home, so every node of the user's jobs reads it and no other user can.
  It is made by the first write (a login), never by a reader: a node that cannot see it
  cannot vouch for any entry and says so, instead of starting a second key that would
  disown the user's login everywhere else;
* **M2M**: derived from the client's credentials (the secret, or the private key, read
  from their source): whoever holds them is the client anyway.

The key is bound to the identity (``HMAC(key, "qlam-hpc entry seal v1" || identity key)``),
so an entry sealed for one identity does not open as another's. Sealing is pure bytes in,
bytes out; reading the key file and the credentials are the only I/O, both done once per
process. The file store does not seal: its entries are 0600 files in a 0700 directory
of the user's, which no one else can write (``_stores/_file.py``).
"""

from __future__ import annotations

import contextlib
import os

from ._errors import CacheError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping

    from ._cache import Identity
    from ._settings import Settings

_SEAL = b"seal="
_END = b"end\n"
_KEY_BYTES = 32
KEY_FILE_VARIABLE = "QLAM_STORE_KEY_FILE"


class SealError(ValueError):
    """An entry that does not carry a valid seal of this identity: planted, altered, or
    sealed under another key (a rotated secret, a key file made again)."""


class EntrySeal:
    """Seals and opens entries for one process; ``key_source(create)`` gives the base key, or
    None when there is none yet (``create`` makes one: only a writer may)."""

    def __init__(self, key_source: Callable[[bool], bytes | None], *, describe: str) -> None:
        self._key_source = key_source
        self.describe = describe
        self._base: bytes | None = None

    def close(self, raw: bytes, identity: Identity) -> bytes:
        """``raw`` (an encoded entry) with its seal."""
        body = _body(raw)
        return body + _SEAL + _mac(self._key(identity, create=True), body).encode() + b"\n" + _END

    def open(self, raw: bytes, identity: Identity) -> bytes:
        """``raw`` without its seal, if the seal is this identity's; ``SealError`` otherwise,
        ``CacheError`` when there is no key to check it with."""
        import hmac

        if not raw.endswith(_END):
            raise SealError("truncated")
        head, found, seal_line = raw[: -len(_END)].rpartition(b"\n" + _SEAL)
        if not found or b"\n" in seal_line.rstrip(b"\n"):
            raise SealError("not sealed")
        body = head + b"\n"
        expected = _mac(self._key(identity, create=False), body)
        if not hmac.compare_digest(expected.encode(), seal_line.rstrip(b"\n")):
            raise SealError("sealed by someone else, or under another key")
        return body + _END

    def _key(self, identity: Identity, *, create: bool) -> bytes:
        import hmac

        if self._base is None:
            self._base = self._key_source(create)
        if self._base is None:
            raise CacheError(
                f"cannot check the entries of the token store: there is no {self.describe} on this node "
                f"(it is made at the first login; is your home directory shared with this node? "
                f"{KEY_FILE_VARIABLE} names the file)"
            )
        return hmac.new(self._base, b"qlam-hpc entry seal v1\0" + identity.key().encode(), "sha256").digest()


def _body(raw: bytes) -> bytes:
    if not raw.endswith(b"\n" + _END):
        raise ValueError("not an encoded entry")
    return raw[: -len(_END)]


def _mac(key: bytes, body: bytes) -> str:
    import hmac

    return hmac.new(key, body, "sha256").hexdigest()


# --- where the key comes from ---------------------------------------------------------------


def seal_for(settings: Settings, environ: Mapping[str, str] | None = None) -> EntrySeal:
    """The seal of the identity these settings describe: the user's key file in user context,
    else a key derived from the client's credentials."""
    env = os.environ if environ is None else environ
    if settings.user_context:
        path = key_file_path(env)
        return EntrySeal(lambda create: user_key(path, create=create), describe=f"store key {path}")
    return EntrySeal(lambda create: credentials_key(settings), describe="client credential")


def key_file_path(environ: Mapping[str, str]) -> str:
    explicit = (environ.get(KEY_FILE_VARIABLE) or "").strip()
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "qlam-hpc", "store.key")


def credentials_key(settings: Settings) -> bytes:
    import hashlib

    from ._client_auth import credential_material, resolve_credentials

    return hashlib.sha256(
        b"qlam-hpc store key from credentials v1\0" + credential_material(resolve_credentials(settings))
    ).digest()


def user_key(path: str, *, create: bool) -> bytes | None:
    """The user's store key from ``path``; made (0600, in a 0700 directory) when missing and
    ``create``. Refused, as a secret file is, when anyone but the user or root could read or
    replace it."""
    from ._secrets import check_trusted_file

    origin = KEY_FILE_VARIABLE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        if not create:
            return None
        return _make_key(path)
    except OSError as exc:
        raise CacheError(f"{origin}: cannot read the store key {path} ({exc.strerror})") from None
    try:
        check_trusted_file(path, os.fstat(fd), origin)
        data = os.read(fd, 256)
    finally:
        os.close(fd)
    key = _parse_key(data)
    if key is None:
        raise CacheError(f"{origin}: {path} is not a qlam-hpc store key (64 hex digits); move it away and log in again")
    return key


def _parse_key(data: bytes) -> bytes | None:
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return key if len(key) == _KEY_BYTES else None


def _make_key(path: str) -> bytes:
    """A new key, published whole: written to a private temporary file, then linked to its name,
    which fails if another process made one first (that one is then read and used)."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"{KEY_FILE_VARIABLE}: cannot make {directory} for the store key ({exc.strerror})") from None
    key = os.urandom(_KEY_BYTES)
    temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, key.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            found = user_key(path, create=False)
            assert found is not None  # it exists: it was just linked by someone
            return found
    except OSError as exc:
        raise CacheError(f"{KEY_FILE_VARIABLE}: cannot write the store key {path} ({exc.strerror})") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    # Checked as every later reader will check it: a directory others can write is refused now,
    # at the login, not in the first job.
    user_key(path, create=False)
    return key
