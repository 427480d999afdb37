"""The token store on a (shared) filesystem.

Layout of the cache directory (0700, owned by the user)::

    <key>.entry           the entry: token and failure record (0600)
    <key>.lock            the refresh lock (fcntl/POSIX lock; never unlinked)
    ledger-YYYY-MM.jsonl  one line per token request made (0600)

Why these choices (see docs/hpc.md for the filesystem facts):

* Entries are published by writing a temporary file in the same directory and
  ``rename``-ing it over the entry: atomic on local disks, NFS, Lustre and GPFS,
  so a reader sees the old entry or the new one, never a mix.
* Entries are re-opened by name on every read (NFS close-to-open consistency)
  and carry their own expiry, so a stale view is never mistaken for a fresh token.
* The lock is a POSIX ``lockf`` lock, the kind NFS (NLM/v4), GPFS and Lustre
  (``-o flock``) carry across nodes. The kernel drops it when its holder dies,
  however it dies. Correctness never depends on it: without a working lock the
  worst case is one fetch per process, never a torn entry.
* The lock file is never unlinked: a process could be waiting on the old inode
  while another creates a new file and two "holders" would coexist.
* Where the filesystem refuses locks, the lock is taken on the node instead, in a
  directory only the user can have made: ``$XDG_RUNTIME_DIR`` (the login manager makes
  it 0700 and the user's), else ``/dev/shm`` (or ``/tmp``). A fixed name there could be
  taken first by another user (who would then stop every task, or, with a link, have a
  directory of the user's chmod-ed and filled), so the name is only a rendezvous: a
  directory is used only if ``lstat`` shows it is the user's, 0700 and not a link, and
  when the usual name is taken, the user's processes meet in the first such directory
  ``qlam-hpc-locks-<uid>-<random>`` (made with ``mkdir 0700``), which no one else can
  create. Links are never followed there, and a directory is never chmod-ed by name.
"""

from __future__ import annotations

# _thread, not threading: the warm token path cannot spare threading's import time.
import _thread
import errno
import os
import stat
import time

from .._cache import CacheEntry, Identity, decode_entry, encode_entry
from .._errors import UnsafeCache
from .._log import log

TYPE_CHECKING = False  # typing costs the warm token path its import time
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import Any

_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_OPEN_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_ENTRY_BYTES = 1 << 20
_STALE_TEMP_SECONDS = 3600


# POSIX locks belong to a process, not to a file descriptor: a second lockf() in the same
# process succeeds, and closing *any* descriptor of the file drops the lock. So this process
# keeps its own table of the lock files it holds, and never opens one it holds.
_held_here: dict[str, str] = {}
_held_here_guard = _thread.allocate_lock()
# Locks taken by the light CLI and kept for the full CLI of the same process (``hand_over``).
_handed_over: dict[str, _HeldLock] = {}
# Directories whose refusal of locks was reported: once per process, however many stores see it.
_warned_node_locks: set[str] = set()


def _forget_held_locks_in_child() -> None:
    # A forked child inherits the table but not the locks (POSIX locks are not inherited).
    global _held_here_guard
    _held_here.clear()
    _handed_over.clear()
    _held_here_guard = _thread.allocate_lock()


os.register_at_fork(after_in_child=_forget_held_locks_in_child)


class FileStore:
    """A token store in one directory; safe to share between threads, processes and nodes."""

    def __init__(self, directory: str | os.PathLike[str], *, node_local: bool = False) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.location = self.directory
        self._node_local = node_local
        # Where to lock when this directory's filesystem refuses locks: found when first
        # needed (it takes a look at the node's directories), never for a node-local store.
        self._node_locks: FileStore | None = None

    def entry_path(self, identity: Identity) -> str:
        return os.path.join(self.directory, f"{identity.key()}.entry")

    def lock_path(self, identity: Identity) -> str:
        return os.path.join(self.directory, f"{identity.key()}.lock")

    # --- entries ------------------------------------------------------------------------

    def load(self, identity: Identity) -> CacheEntry | None:
        if not self._checked_directory(create=False):
            return None
        path = self.entry_path(identity)
        try:
            fd = os.open(path, _OPEN_READ)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeCache(f"token cache entry {path} is a symbolic link; refusing to follow it") from None
            raise UnsafeCache(f"cannot read token cache entry {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeCache(f"token cache entry {path} is not a regular file; refusing it")
            if info.st_uid != os.geteuid():
                raise UnsafeCache(f"token cache entry {path} belongs to uid {info.st_uid}, not to you; refusing it")
            if info.st_mode & 0o077:
                _discard(path, "was readable by other users")
                return None
            raw = os.read(fd, _MAX_ENTRY_BYTES)
        finally:
            os.close(fd)
        try:
            return decode_entry(raw, identity)
        except ValueError as reason:
            _discard(path, f"is corrupt ({reason})")
            return None

    def save(self, entry: CacheEntry) -> bool:
        path = self.entry_path(entry.identity)
        temp = os.path.join(self.directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            data = encode_entry(entry)
        except ValueError as exc:
            log("warning", f"cannot cache this token ({exc}); it is used, but not shared with other processes")
            return False
        try:
            self._checked_directory(create=True)
            fd = os.open(temp, _OPEN_CREATE, 0o600)
            try:
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except OSError as exc:
            _unlink_quietly(temp)
            log(
                "warning",
                f"could not write the token cache entry {path} ({exc.strerror or exc}); "
                "the token is used, but not shared with other processes",
            )
            return False
        self._remove_stale_temporaries()
        return True

    def clear(self, identity: Identity | None = None) -> int:
        if not self._checked_directory(create=False):
            return 0
        if identity is not None:
            paths = [self.entry_path(identity)]
        else:
            paths = [
                os.path.join(self.directory, n) for n in sorted(os.listdir(self.directory)) if n.endswith(".entry")
            ]
        removed = 0
        for path in paths:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    # --- the refresh lock ---------------------------------------------------------------

    def try_lock(self, identity: Identity) -> _HeldLock | None:
        import fcntl

        self._checked_directory(create=True)
        # One name per file however it is spelled: a second spelling must not lock it twice.
        path = os.path.realpath(self.lock_path(identity))
        with _held_here_guard:
            handed = _handed_over.pop(path, None)
            if handed is not None:
                return handed
            if path in _held_here:
                return None
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return None
                if exc.errno not in _LOCKS_UNSUPPORTED or self._node_local:
                    raise
                unsupported = exc
            else:
                # Named only once held: a waiter polling the lock does not pay for the label
                # (its socket import) on every try.
                from .._jobinfo import process_label

                label = f"{process_label()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
                _held_here[path] = label
                return _HeldLock(path, fd, label)
        # Lustre mounted -o noflock, NFS without a lock manager: the entry is still shared
        # (and safe: rename is atomic), but single flight can only be had per node.
        if self._node_locks is None:
            self._node_locks = FileStore(_node_lock_directory(), node_local=True)
        if self.directory not in _warned_node_locks:
            _warned_node_locks.add(self.directory)
            log(
                "warning",
                f"the filesystem of {self.directory} does not support locks ({unsupported.strerror}); "
                f"coordinating through {self._node_locks.directory} on this node only: "
                "expect up to one token request per node",
            )
        return self._node_locks.try_lock(identity)

    def hand_over(self, lock: _HeldLock) -> None:
        """Keep ``lock`` (taken with ``try_lock``) held for the next ``try_lock`` of the same
        file in this process, by any store: the light CLI takes the lock without loading what
        fetches a token, and the full CLI's provider fetches under it. Nobody else can take it
        in between; the kernel still drops it if the process dies."""
        with _held_here_guard:
            _handed_over[lock.path] = lock

    def lock_holder(self, identity: Identity) -> str | None:
        path = os.path.realpath(self.lock_path(identity))
        with _held_here_guard:
            if path in _held_here:
                return _held_here[path]
            try:
                with open(path, "rb") as file:
                    return file.read(512).decode(errors="replace").strip() or None
            except OSError:
                return None

    def signature(self, identity: Identity) -> tuple[int, int, int] | None:
        """``(inode, mtime ns, size)`` of the entry, None when there is none: a waiter reads the
        entry again only when this changes (a publish is a rename: a new inode). Taken from an
        open descriptor, not ``stat`` by name: on NFS only an open revalidates the name (close-
        to-open consistency), and a cached lookup could hide a publish for a minute."""
        try:
            fd = os.open(self.entry_path(identity), _OPEN_READ)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        return info.st_ino, info.st_mtime_ns, info.st_size

    # --- the ledger ---------------------------------------------------------------------

    def ledger_path(self, month: str) -> str:
        return os.path.join(self.directory, f"ledger-{month}.jsonl")

    def record_request(self, record: dict[str, Any]) -> None:
        import json

        month = time.strftime("%Y-%m", time.gmtime(record["time"]))
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            self._checked_directory(create=True)
            fd = os.open(
                self.ledger_path(month),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log("warning", f"could not record the token request in the ledger ({exc.strerror or exc})")

    def requests(self, month: str) -> list[dict[str, Any]]:
        import json

        if not self._checked_directory(create=False):
            return []
        try:
            with open(self.ledger_path(month), "rb") as file:
                lines = file.read().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a full disk; the rest still counts
            if isinstance(record, dict):
                records.append(record)
        return records

    # --- the directory ------------------------------------------------------------------

    def _checked_directory(self, *, create: bool) -> bool:
        """True when the directory exists and is safe to use; raises ``UnsafeCache`` if not safe.

        A link at the directory's own name is followed only if it is the user's or root's
        (only they can re-point it), and never for the node-local lock directory."""
        try:
            info = os.lstat(self.directory)
        except FileNotFoundError:
            if not create:
                return False
            # mkdir applies the mode atomically (narrowed by umask, never widened): no window
            # in which another user could open the directory.
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            info = os.lstat(self.directory)
        except NotADirectoryError:
            raise UnsafeCache(f"token cache {self.directory} is not a directory (a file is in its path)") from None
        except OSError as exc:
            raise UnsafeCache(f"token cache {self.directory} cannot be used ({exc.strerror or exc})") from None
        setting = "XDG_RUNTIME_DIR" if self._node_local else "QLAM_TOKEN_CACHE_DIR"
        followed = False
        if stat.S_ISLNK(info.st_mode):
            if self._node_local or info.st_uid not in (os.geteuid(), 0):
                raise UnsafeCache(
                    f"token cache directory {self.directory} is a symbolic link of uid {info.st_uid}; refusing "
                    f"to follow it. Set {setting} to a directory of your own"
                )
            try:
                info = os.stat(self.directory)
            except OSError as exc:
                raise UnsafeCache(f"token cache {self.directory} cannot be used ({exc.strerror or exc})") from None
            followed = True
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeCache(f"token cache {self.directory} is not a directory")
        if info.st_uid != os.geteuid():
            raise UnsafeCache(
                f"token cache directory {self.directory} belongs to uid {info.st_uid}, not to you "
                f"(uid {os.geteuid()}); refusing it. Set {setting} to a directory of your own"
            )
        if info.st_mode & 0o077:
            self._tighten(info, follow=followed)
        return True

    def _tighten(self, checked: os.stat_result, *, follow: bool) -> None:
        """chmod 0700 the directory that was checked, through a descriptor: never through a
        link swapped in since, never another directory than the one found to be ours."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(self.directory, flags)
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino, now.st_uid) != (checked.st_dev, checked.st_ino, os.geteuid()):
                    raise UnsafeCache(
                        f"token cache directory {self.directory} changed while it was checked; refusing it"
                    )
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
        except OSError:
            raise UnsafeCache(
                f"token cache directory {self.directory} is open to other users and cannot be made 0700"
            ) from None
        log("warning", f"token cache directory {self.directory} was open to other users; made it 0700")

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of writers killed between create and rename."""
        cutoff = time.time() - _STALE_TEMP_SECONDS
        try:
            for name in os.listdir(self.directory):
                temp = os.path.join(self.directory, name)
                if name.startswith(".") and name.endswith(".tmp") and os.lstat(temp).st_mtime < cutoff:
                    _unlink_quietly(temp)
        except OSError:
            pass


_LOCKS_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


_NODE_LOCK_BASES = ("/dev/shm", "/tmp")


def _node_lock_directory(env: Mapping[str, str] | None = None, bases: tuple[str, ...] = _NODE_LOCK_BASES) -> str:
    """A directory on this node that only this user can have made, for locks only (see the
    module's docstring). Every process of the user on the node finds the same one."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR") or ""
    if os.path.isabs(runtime) and _private_directory(runtime):
        path = os.path.join(runtime, "qlam-hpc-locks")
        _make_directory(path)
        if _private_directory(path):
            return path
    prefix = f"qlam-hpc-locks-{os.geteuid()}"
    for base in bases:
        found = _first_private_directory(base, prefix)
        if found:
            return found
        # The usual name, or (when someone else has it) a name no one can guess or take first.
        if not _make_directory(os.path.join(base, prefix)):
            _make_directory(os.path.join(base, f"{prefix}-{os.urandom(8).hex()}"))
        # Read again rather than trust our own mkdir: processes that raced here all pick
        # the same (first) directory.
        found = _first_private_directory(base, prefix)
        if found:
            return found
    raise UnsafeCache(
        f"the cache's filesystem refuses locks, and this node has no private directory for them "
        f"(none of {', '.join(bases)} would do): set XDG_RUNTIME_DIR to a directory of yours on this node "
        "(mode 0700), or QLAM_TOKEN_CACHE_DIR to a filesystem with working locks"
    )


def _private_directory(path: str) -> bool:
    """A directory (not a link to one) owned by this user and closed to everyone else."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


def _first_private_directory(base: str, prefix: str) -> str | None:
    try:
        names = sorted(n for n in os.listdir(base) if n == prefix or n.startswith(prefix + "-"))
    except OSError:
        return None
    for name in names:  # the usual name sorts first
        if _private_directory(os.path.join(base, name)):
            return os.path.join(base, name)
    return None


def _make_directory(path: str) -> bool:
    """mkdir 0700; False if the name is taken (by anyone) or cannot be made."""
    try:
        os.mkdir(path, 0o700)
    except OSError:
        return False
    return True


class _HeldLock:
    """A held ``lockf`` lock; records its holder in the file for the waiters' error messages."""

    def __init__(self, path: str, fd: int, label: str) -> None:
        self.path = path
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (label + "\n").encode(), 0)
        except OSError:
            pass  # the note is for humans; the lock works without it

    def release(self) -> None:
        with _held_here_guard:
            if _handed_over.get(self.path) is self:
                del _handed_over[self.path]
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                _held_here.pop(self.path, None)
                os.close(fd)  # closing drops the POSIX lock

    def __enter__(self) -> _HeldLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def jittered(pause: float) -> float:
    """``pause`` times a random factor in [0.5, 1): processes that started together (the tasks
    of an array) drift apart instead of polling the filesystem in step."""
    return pause * (0.5 + os.urandom(1)[0] / 512)


def _discard(path: str, why: str) -> None:
    log("warning", f"token cache entry {path} {why}; discarded, a new token will replace it")
    _unlink_quietly(path)


def _unlink_quietly(path: str) -> None:
    # Not contextlib.suppress: the warm token path does not import contextlib.
    try:  # noqa: SIM105
        os.unlink(path)
    except OSError:
        pass
