"""FileStore on a real filesystem: modes, refusals, the cross-process lock, the ledger."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qlam_hpc._cache import CacheEntry, Failure, Identity
from qlam_hpc._errors import InvalidClient, QlamError, UnsafeCache
from qlam_hpc._stores._file import FileStore
from qlam_hpc._tokens import Token

T0 = time.time()
IDENTITY = Identity("https://idp.example/oauth/token", "client-1", "https://api.quera.com")
OTHER = Identity("https://idp.example/oauth/token", "client-2", "https://api.quera.com")
TOKEN = Token("access-token-1", expires_at=T0 + 86400, obtained_at=T0, obtained_by="node1:42")
ENTRY = CacheEntry(IDENTITY, TOKEN)
MONTH = time.strftime("%Y-%m", time.gmtime(T0))
NOBODY = 65534

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")

# A child process that takes the refresh lock, says so, and holds it until killed.
HOLDER = """
import sys, time
from qlam_hpc._cache import Identity
from qlam_hpc._stores._file import FileStore
lock = FileStore(sys.argv[1]).try_lock(Identity(*sys.argv[2:5]))
print("locked" if lock is not None else "busy", flush=True)
time.sleep(120)
"""

# A child process that tries the lock once and reports.
PROBE = """
import sys
from qlam_hpc._cache import Identity
from qlam_hpc._stores._file import FileStore
print("locked" if FileStore(sys.argv[1]).try_lock(Identity(*sys.argv[2:5])) is not None else "busy")
"""


def _identity_args(identity: Identity) -> list[str]:
    return [identity.token_url, identity.client_id, identity.audience]


@pytest.fixture
def warnings_log(caplog, monkeypatch):
    """Warnings of the qlam_hpc logger, even if a CLI test turned its propagation off."""
    monkeypatch.setattr(logging.getLogger("qlam_hpc"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="qlam_hpc")
    return caplog


@pytest.fixture
def store(cache_dir) -> FileStore:
    return FileStore(cache_dir)


@pytest.fixture
def holder(cache_dir):
    """Start a child that holds the lock; yields the process, kills it afterwards."""
    children = []

    def start() -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(cache_dir), *_identity_args(IDENTITY)],
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout.readline().strip() == "locked"
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def _probe(cache_dir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(cache_dir), *_identity_args(IDENTITY)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)


def _write_raw(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.write(fd, data)
    os.close(fd)
    os.chmod(path, mode)


def _entry(store: FileStore, identity: Identity = IDENTITY) -> Path:
    """The entry's path as a Path, for the tests' own file operations."""
    return Path(store.entry_path(identity))


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "qlam_hpc" and r.levelno == logging.WARNING)


# --- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [str, Path], ids=["str", "Path"])
def test_paths_are_absolute_strings(tmp_path, kind):
    """FileStore takes a str or a PathLike and gives every path as an absolute str in its directory."""
    store = FileStore(kind(tmp_path / "cache"))
    assert store.directory == store.location == str(tmp_path / "cache")
    key = IDENTITY.key()
    assert store.entry_path(IDENTITY) == str(tmp_path / "cache" / f"{key}.entry")
    assert store.lock_path(IDENTITY) == str(tmp_path / "cache" / f"{key}.lock")
    assert store.ledger_path("2024-01") == str(tmp_path / "cache" / "ledger-2024-01.jsonl")
    for path in (store.directory, store.entry_path(IDENTITY), store.lock_path(IDENTITY), store.ledger_path("2024-01")):
        assert type(path) is str


def test_relative_directory_is_fixed_at_construction(tmp_path, monkeypatch):
    """A relative cache directory is resolved once, so a later chdir does not move the cache."""
    monkeypatch.chdir(tmp_path)
    store = FileStore("rel/cache")
    monkeypatch.chdir("/")
    assert store.directory == str(tmp_path / "rel" / "cache")
    assert store.save(ENTRY)
    assert (tmp_path / "rel" / "cache" / f"{IDENTITY.key()}.entry").is_file()


def test_entry_on_disk_is_the_text_format(store):
    """The saved entry is the line-based v1 text, readable with cat, holding the token."""
    store.save(ENTRY)
    text = _entry(store).read_text()
    assert text.startswith("qlam-hpc token cache v1\n")
    assert "\naccess_token=access-token-1\n" in text
    assert text.endswith("\n")


# --- save and load --------------------------------------------------------------------------


def test_save_creates_private_directory_and_entry(store, cache_dir):
    """The first save creates the cache directory 0700 and the entry 0600."""
    assert store.save(ENTRY) is True
    assert _mode(cache_dir) == 0o700
    assert _mode(store.entry_path(IDENTITY)) == 0o600
    assert os.stat(store.entry_path(IDENTITY)).st_uid == os.geteuid()


def test_modes_hold_under_a_permissive_umask(store, cache_dir):
    """With umask 000 the directory, entry, lock and ledger are still private."""
    previous = os.umask(0o000)
    try:
        assert store.save(ENTRY)
        store.try_lock(IDENTITY).release()
        store.record_request({"time": T0, "outcome": "ok"})
    finally:
        os.umask(previous)
    assert _mode(cache_dir) == 0o700
    assert _mode(store.entry_path(IDENTITY)) == 0o600
    assert _mode(store.lock_path(IDENTITY)) == 0o600
    assert _mode(store.ledger_path(time.strftime("%Y-%m", time.gmtime(T0)))) == 0o600


def test_load_without_directory(store, cache_dir):
    """Loading from a cache that does not exist yet gives None and creates nothing."""
    assert store.load(IDENTITY) is None
    assert not cache_dir.exists()


def test_load_without_entry(store):
    """Loading an identity that has no entry gives None."""
    store.save(ENTRY)
    assert store.load(OTHER) is None


def test_round_trip(store):
    """What one store saves, another store on the same directory loads."""
    failure = Failure.from_error(
        InvalidClient("invalid_client", None, 401, IDENTITY.token_url),
        at=T0,
        cooldown=60,
        credentials="f" * 16,
        by="n:1",
    )
    entry = ENTRY.with_failure(failure)
    assert store.save(entry)
    assert FileStore(store.directory).load(IDENTITY) == entry


def test_save_replaces_the_entry(store):
    """A second save publishes the new token in place of the old one."""
    store.save(ENTRY)
    newer = Token("access-token-2", expires_at=T0 + 90000, obtained_at=T0 + 3600)
    store.save(ENTRY.with_token(newer))
    assert store.load(IDENTITY).token == newer


def test_save_leaves_no_temporary_files(store, cache_dir):
    """After a save only the entry is in the directory."""
    store.save(ENTRY)
    assert sorted(p.name for p in cache_dir.iterdir()) == [f"{IDENTITY.key()}.entry"]


def test_corrupt_entry_is_discarded(store, warnings_log):
    """A corrupt entry is removed with a warning, load gives None, and a later save replaces it."""
    store.save(ENTRY)
    path = _entry(store)
    _write_raw(path, path.read_bytes()[:40])  # torn: no final newline
    assert store.load(IDENTITY) is None
    assert "corrupt" in _warnings(warnings_log)
    assert str(path) in _warnings(warnings_log)
    assert not path.exists()
    assert store.save(ENTRY)
    assert store.load(IDENTITY) == ENTRY


def test_entry_readable_by_others_is_discarded(store, warnings_log):
    """An entry with mode 0644 may have leaked: it is deleted, not used."""
    store.save(ENTRY)
    path = _entry(store)
    os.chmod(path, 0o644)
    assert store.load(IDENTITY) is None
    assert not path.exists()
    assert "readable by other users" in _warnings(warnings_log)


def test_open_directory_is_tightened(store, cache_dir, warnings_log):
    """A cache directory of ours with mode 0755 is made 0700, with a warning, and still used."""
    store.save(ENTRY)
    os.chmod(cache_dir, 0o755)
    assert store.load(IDENTITY) == ENTRY
    assert _mode(cache_dir) == 0o700
    assert "made it 0700" in _warnings(warnings_log)


# --- refusals -------------------------------------------------------------------------------


def test_symlinked_entry_is_refused(store, tmp_path):
    """An entry that is a symlink raises UnsafeCache, and its target is left untouched."""
    store.save(ENTRY)
    target = tmp_path / "elsewhere.entry"
    target.write_bytes(_entry(store).read_bytes())
    os.chmod(target, 0o600)
    before = target.read_bytes()
    _entry(store).unlink()
    _entry(store).symlink_to(target)
    with pytest.raises(UnsafeCache, match="symbolic link"):
        store.load(IDENTITY)
    assert target.read_bytes() == before
    assert _mode(target) == 0o600


def test_save_never_writes_through_a_symlink(store, tmp_path):
    """Saving over a symlinked entry replaces the link, never the file it points to."""
    store.save(ENTRY)
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    _entry(store).unlink()
    _entry(store).symlink_to(target)
    store.save(ENTRY)
    assert target.read_bytes() == b"precious"
    assert not _entry(store).is_symlink()
    assert store.load(IDENTITY) == ENTRY


def test_entry_that_is_a_directory_is_refused(store, cache_dir):
    """An entry path that is a directory raises UnsafeCache."""
    cache_dir.mkdir(mode=0o700)
    _entry(store).mkdir()
    with pytest.raises(UnsafeCache, match="not a regular file"):
        store.load(IDENTITY)


def test_cache_path_that_is_a_file_is_refused(tmp_path):
    """A cache directory path that is a regular file raises UnsafeCache."""
    path = tmp_path / "cache"
    path.write_text("not a directory")
    with pytest.raises(UnsafeCache, match="not a directory"):
        FileStore(path).load(IDENTITY)


@as_root
def test_directory_of_another_user_is_refused(store, cache_dir):
    """A cache directory owned by someone else is refused for reading, locking and writing."""
    store.save(ENTRY)
    os.chown(cache_dir, NOBODY, NOBODY)
    with pytest.raises(UnsafeCache, match=f"belongs to uid {NOBODY}.*QLAM_TOKEN_CACHE_DIR"):
        store.load(IDENTITY)
    with pytest.raises(UnsafeCache):
        store.try_lock(IDENTITY)
    _entry(store).unlink()
    with contextlib.suppress(UnsafeCache):
        assert store.save(ENTRY) is False
    assert list(cache_dir.iterdir()) == []


@as_root
def test_a_cache_directory_that_is_another_users_link_is_refused_and_its_target_untouched(tmp_path):
    """QLAM_TOKEN_CACHE_DIR in a shared place where another user planted a link to a directory of
    yours: refused (they could re-point it), and the target is neither chmod-ed nor written."""
    target = tmp_path / "yours"
    target.mkdir()
    target.chmod(0o755)
    link = tmp_path / "cache"
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(UnsafeCache, match=f"is a symbolic link of uid {NOBODY}.*QLAM_TOKEN_CACHE_DIR"):
        FileStore(link).try_lock(IDENTITY)
    assert _mode(target) == 0o755 and list(target.iterdir()) == []
    os.lchown(link, os.geteuid(), os.getegid())  # a link of your own (~/.cache -> /scratch/...): followed
    FileStore(link).save(ENTRY)
    assert _mode(target) == 0o700 and FileStore(link).load(IDENTITY) is not None


@as_root
def test_entry_of_another_user_is_refused(store):
    """An entry owned by someone else raises UnsafeCache and is left in place."""
    store.save(ENTRY)
    os.chown(store.entry_path(IDENTITY), NOBODY, NOBODY)
    with pytest.raises(UnsafeCache, match=f"belongs to uid {NOBODY}"):
        store.load(IDENTITY)
    assert _entry(store).exists()


# --- unwritable locations -------------------------------------------------------------------


# A directory no one can create, even root: /proc takes no new entries.
UNCREATABLE = "/proc/qlam-hpc-test/cache"
needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self") or os.path.exists("/proc/qlam-hpc-test"), reason="needs Linux /proc"
)


@needs_proc
def test_save_where_the_directory_cannot_be_created_warns_and_returns_false(warnings_log):
    """A cache directory that cannot be created gives False and a warning, never an exception."""
    assert FileStore(UNCREATABLE).save(ENTRY) is False
    assert "could not write the token cache entry" in _warnings(warnings_log)
    assert "not shared with other processes" in _warnings(warnings_log)


def test_save_over_a_directory_warns_and_returns_false(store, cache_dir, warnings_log):
    """An entry that cannot be replaced gives False and a warning, and no temporary file is left."""
    store.save(ENTRY)
    _entry(store).unlink()
    _entry(store).mkdir()
    assert store.save(ENTRY) is False
    assert "not shared with other processes" in _warnings(warnings_log)
    assert [p.name for p in cache_dir.iterdir()] == [_entry(store).name]


@needs_proc
def test_ledger_that_cannot_be_created_warns(warnings_log):
    """A ledger whose directory cannot be created costs a warning, not the token."""
    FileStore(UNCREATABLE).record_request({"time": T0, "outcome": "ok"})
    assert "could not record the token request" in _warnings(warnings_log)


def test_ledger_that_cannot_be_written_warns(store, warnings_log):
    """A ledger path that cannot be opened for appending (here a directory) costs a warning only."""
    os.makedirs(store.ledger_path(MONTH), mode=0o700)
    store.record_request({"time": T0, "outcome": "ok"})
    assert "could not record the token request" in _warnings(warnings_log)


@pytest.mark.parametrize("operation", ["load", "clear", "try_lock", "requests"])
def test_cache_path_through_a_regular_file_is_refused(tmp_path, operation):
    """Reading or locking a cache whose path runs through a regular file is an UnsafeCache (exit 8), not an OSError."""
    (tmp_path / "file").write_text("in the way")
    store = FileStore(tmp_path / "file" / "sub")
    call = {
        "load": lambda: store.load(IDENTITY),
        "clear": lambda: store.clear(),
        "try_lock": lambda: store.try_lock(IDENTITY),
        "requests": lambda: store.requests(MONTH),
    }[operation]
    with pytest.raises(UnsafeCache, match="is not a directory") as caught:
        call()
    assert isinstance(caught.value, QlamError)
    assert caught.value.exit_code == 8
    assert (tmp_path / "file").read_text() == "in the way"


@pytest.mark.parametrize("operation", ["save", "record_request"])
def test_writing_through_a_regular_file_is_refused(tmp_path, warnings_log, operation):
    """Saving or recording through a regular file is refused (UnsafeCache or a warning), never an OSError."""
    (tmp_path / "file").write_text("in the way")
    store = FileStore(tmp_path / "file" / "sub")
    try:
        if operation == "save":
            assert store.save(ENTRY) is False
        else:
            store.record_request({"time": T0, "outcome": "ok"})
        assert "could not" in _warnings(warnings_log)
    except UnsafeCache as refused:
        assert refused.exit_code == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert (tmp_path / "file").read_text() == "in the way"


def test_cache_path_through_a_symlink_loop_is_not_a_bare_oserror(tmp_path):
    """Loading from a cache path that cannot be resolved (a symlink loop) gives a QlamError, not an OSError."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(QlamError):
        FileStore(tmp_path / "loop" / "cache").load(IDENTITY)


def test_unencodable_entry_is_not_shared_and_leaves_no_temporary(store, cache_dir, warnings_log):
    """A token the format cannot hold (a line break from the IdP) gives False, leaves no temporary, keeps the entry."""
    store.save(ENTRY)
    odd = ENTRY.with_token(TOKEN._replace(access_token="access-token-2\n"))
    try:
        outcome = store.save(odd)
    except ValueError as exc:
        outcome = f"raised {exc!r}"
    assert sorted(p.name for p in cache_dir.iterdir()) == [f"{IDENTITY.key()}.entry"]
    assert outcome is False
    assert store.load(IDENTITY) == ENTRY


# --- the refresh lock -----------------------------------------------------------------------


def test_lock_is_exclusive_between_processes(store, cache_dir, holder):
    """While another process holds the lock, try_lock gives None, here and in a third process."""
    holder()
    assert store.try_lock(IDENTITY) is None
    assert _probe(cache_dir) == "busy"


def test_lock_of_a_killed_holder_is_released(store, holder):
    """When the holder is killed with SIGKILL the kernel drops the lock and the next try succeeds."""
    child = holder()
    assert store.try_lock(IDENTITY) is None
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    lock = store.try_lock(IDENTITY)
    assert lock is not None
    lock.release()


def test_released_lock_can_be_taken_by_another_process(store, cache_dir):
    """After release, another process gets the lock."""
    lock = store.try_lock(IDENTITY)
    assert lock is not None
    with lock:
        assert _probe(cache_dir) == "busy"
    assert _probe(cache_dir) == "locked"


def test_locks_are_per_identity(store, holder):
    """A lock held for one identity does not block another identity."""
    holder()
    lock = store.try_lock(OTHER)
    assert lock is not None
    lock.release()


def test_lock_holder_names_host_and_pid(store, holder):
    """lock_holder tells waiters which host and process holds the lock."""
    child = holder()
    assert store.lock_holder(IDENTITY).startswith(f"{socket.gethostname()}:{child.pid}")


def test_lock_holder_without_lock_file(store):
    """With no lock file there is no holder to name."""
    assert store.lock_holder(IDENTITY) is None


def test_lock_survives_and_is_never_unlinked(store):
    """The lock file stays after release (a waiter may be blocked on its inode)."""
    store.try_lock(IDENTITY).release()
    assert os.path.isfile(store.lock_path(IDENTITY))
    assert store.load(IDENTITY) is None


def test_second_lock_in_the_same_process_is_refused(cache_dir):
    """Two providers in one process (two threads) cannot both hold the refresh lock."""
    first = FileStore(cache_dir).try_lock(IDENTITY)
    assert first is not None
    try:
        results = []
        thread = threading.Thread(target=lambda: results.append(FileStore(cache_dir).try_lock(IDENTITY)))
        thread.start()
        thread.join(timeout=30)
        assert results == [None]
        assert FileStore(cache_dir).try_lock(IDENTITY) is None
        assert _probe(cache_dir) == "busy"  # the refused attempts did not drop the lock
    finally:
        first.release()


def test_lock_released_in_this_process_can_be_taken_again_here(store, cache_dir):
    """After release, this process can take the lock again through another FileStore, and others can too."""
    store.try_lock(IDENTITY).release()
    again = FileStore(cache_dir).try_lock(IDENTITY)
    assert again is not None
    again.release()
    again.release()  # a second release is harmless
    assert _probe(cache_dir) == "locked"


def test_lock_holder_does_not_drop_our_lock(store, cache_dir):
    """Asking who holds the lock, from the holding process, keeps the lock held."""
    lock = store.try_lock(IDENTITY)
    try:
        store.lock_holder(IDENTITY)
        FileStore(cache_dir).lock_holder(IDENTITY)
        assert _probe(cache_dir) == "busy"
    finally:
        lock.release()


def test_lock_holder_names_this_process_while_it_holds_the_lock(store):
    """In the holding process lock_holder names this host and pid, the same note waiters read."""
    lock = store.try_lock(IDENTITY)
    try:
        label = store.lock_holder(IDENTITY)
        assert label.startswith(f"{socket.gethostname()}:{os.getpid()} since ")
        with open(store.lock_path(IDENTITY)) as note:
            assert note.read().strip() == label
    finally:
        lock.release()


def test_second_lock_through_a_symlinked_directory_is_refused(tmp_path, cache_dir):
    """The same cache reached through a symlink (/home -> /gpfs/home) cannot be locked twice in one process."""
    cache_dir.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(cache_dir)
    first = FileStore(cache_dir).try_lock(IDENTITY)
    try:
        second = FileStore(tmp_path / "link").try_lock(IDENTITY)
        if second is not None:
            second.release()  # and closing its descriptor silently drops `first` as well
        assert second is None
    finally:
        first.release()


def test_forked_child_can_lock_after_the_parent_releases(store, cache_dir):
    """A child forked while this process held the lock can take it once the parent has released it."""
    lock = store.try_lock(IDENTITY)
    go_read, go_write = os.pipe()
    answer_read, answer_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait for the parent's release, then try once
        try:
            os.close(go_write)
            os.read(go_read, 1)
            got = FileStore(cache_dir).try_lock(IDENTITY)
            os.write(answer_write, b"locked" if got is not None else b"busy")
        finally:
            os._exit(0)
    os.close(go_read)
    os.close(answer_write)
    lock.release()
    os.write(go_write, b"x")
    os.close(go_write)
    answer = os.read(answer_read, 16).decode()
    os.close(answer_read)
    os.waitpid(pid, 0)
    assert answer == "locked"


def test_a_handed_over_lock_stays_held_for_the_next_try_lock_here(store, cache_dir):
    """hand_over keeps the lock for the next try_lock of the file in this process, by any store
    (the light CLI hands it to the full CLI's provider): nobody else can take it in between,
    the next try_lock here gets it once, and releasing it frees it for everyone."""
    lock = store.try_lock(IDENTITY)
    store.hand_over(lock)
    assert _probe(cache_dir) == "busy"
    taken = FileStore(cache_dir).try_lock(IDENTITY)
    assert taken is lock
    assert FileStore(cache_dir).try_lock(IDENTITY) is None  # handed over once, then held as usual
    assert _probe(cache_dir) == "busy"
    taken.release()
    assert _probe(cache_dir) == "locked"


def test_a_handed_over_lock_released_unused_is_not_handed_out_afterwards(store, cache_dir):
    """The light CLI releases a lock its provider did not need: the next try_lock takes a new one."""
    lock = store.try_lock(IDENTITY)
    store.hand_over(lock)
    lock.release()
    assert _probe(cache_dir) == "locked"
    again = FileStore(cache_dir).try_lock(IDENTITY)
    assert again is not None and again is not lock
    again.release()


def test_a_handed_over_lock_is_not_handed_to_a_forked_child(store, cache_dir):
    """A child forked after the hand-over does not hold the parent's lock, so it must not be handed it."""
    lock = store.try_lock(IDENTITY)
    store.hand_over(lock)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, b"handed" if FileStore(cache_dir).try_lock(IDENTITY) is lock else b"not")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"not"
    assert FileStore(cache_dir).try_lock(IDENTITY) is lock
    lock.release()


def test_the_entry_signature_changes_with_every_publish(store):
    """A waiter re-reads the entry only when its signature changes: none before the first
    save, a new one after each (a rename), the same between them."""
    assert store.signature(IDENTITY) is None
    store.save(ENTRY)
    first = store.signature(IDENTITY)
    assert first is not None and store.signature(IDENTITY) == first
    store.save(ENTRY)
    assert store.signature(IDENTITY) not in (None, first)


def test_jittered_pauses_spread_between_half_and_the_whole_pause():
    from qlam_hpc._stores._file import jittered

    pauses = [jittered(0.1) for _ in range(200)]
    assert all(0.05 <= p < 0.1 for p in pauses)
    assert len(set(pauses)) > 20  # processes that started together drift apart


# --- the ledger -----------------------------------------------------------------------------


def test_ledger_round_trip(store):
    """Recorded requests are read back in order, in the month of their time."""
    records = [{"time": T0 + i, "pid": 100 + i, "client_id": "client-1", "outcome": "ok"} for i in range(3)]
    for record in records:
        store.record_request(record)
    assert store.requests(MONTH) == records
    assert _mode(store.ledger_path(MONTH)) == 0o600


def test_ledger_is_per_utc_month(store):
    """A request is counted in the UTC month of its time, not in others."""
    store.record_request({"time": 1_704_067_199.0, "outcome": "ok"})  # 2023-12-31T23:59:59Z
    store.record_request({"time": 1_704_067_200.0, "outcome": "ok"})  # 2024-01-01T00:00:00Z
    assert [r["time"] for r in store.requests("2023-12")] == [1_704_067_199.0]
    assert [r["time"] for r in store.requests("2024-01")] == [1_704_067_200.0]
    assert store.requests("2024-02") == []


def test_ledger_skips_torn_lines(store):
    """A line torn by a full disk, or one that is not a record, is skipped; the rest still count."""
    store.record_request({"time": T0, "n": 1})
    with open(store.ledger_path(MONTH), "ab") as ledger:
        ledger.write(b'{"time": 17000, "n":\n[1, 2]\n\n')
    store.record_request({"time": T0, "n": 2})
    assert [r["n"] for r in store.requests(MONTH)] == [1, 2]


def test_ledger_of_a_missing_cache(store, cache_dir):
    """Reading the ledger of a cache that does not exist gives no records and creates nothing."""
    assert store.requests(MONTH) == []
    assert not cache_dir.exists()


# --- clear ----------------------------------------------------------------------------------


def test_clear_one_identity(store):
    """clear(identity) removes that entry only and counts it."""
    store.save(ENTRY)
    store.save(CacheEntry(OTHER, TOKEN))
    assert store.clear(IDENTITY) == 1
    assert store.load(IDENTITY) is None
    assert store.load(OTHER) is not None
    assert store.clear(IDENTITY) == 0


def test_clear_all(store):
    """clear() removes every entry but keeps the ledger and lock files."""
    store.save(ENTRY)
    store.save(CacheEntry(OTHER, TOKEN))
    store.record_request({"time": T0, "outcome": "ok"})
    store.try_lock(IDENTITY).release()
    assert store.clear() == 2
    assert store.load(IDENTITY) is None and store.load(OTHER) is None
    assert len(store.requests(MONTH)) == 1
    assert os.path.isfile(store.lock_path(IDENTITY))


def test_clear_missing_cache(store):
    """Clearing a cache that does not exist removes nothing."""
    assert store.clear() == 0
    assert store.clear(IDENTITY) == 0


# --- temporary files ------------------------------------------------------------------------


def test_stale_temporaries_are_removed_on_save(store, cache_dir):
    """Temporaries of writers killed over an hour ago are removed; fresh ones (a live writer's) are kept."""
    cache_dir.mkdir(mode=0o700)
    stale = cache_dir / f".{IDENTITY.key()}.entry.999.deadbeef.tmp"
    fresh = cache_dir / f".{IDENTITY.key()}.entry.998.cafebabe.tmp"
    for path in (stale, fresh):
        _write_raw(path, b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    old_but_recent = time.time() - 30 * 60
    os.utime(fresh, (old_but_recent, old_but_recent))
    assert store.save(ENTRY)
    assert not stale.exists()
    assert fresh.exists()
