"""When the cache's filesystem refuses locks, single flight falls back to a lock on this node.

No filesystem here refuses POSIX locks (Lustre -o noflock, NFS without a lock manager
do), so these tests make ``fcntl.lockf`` fail with ENOLCK for the cache directory only,
the way such a filesystem answers; everything else is real.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import subprocess
import sys

import pytest

from qlam_hpc._cache import Identity
from qlam_hpc._stores._file import FileStore, _node_lock_directory

IDENTITY = Identity("https://idp.example/oauth/token", "client-node-locks", "https://api.quera.com")


@pytest.fixture
def lockless(monkeypatch, cache_dir):
    """fcntl.lockf answers ENOLCK for files in the cache directory, as on Lustre -o noflock."""
    real_lockf = fcntl.lockf

    def lockf(fd, *args):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(cache_dir)):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real_lockf(fd, *args)

    monkeypatch.setattr(fcntl, "lockf", lockf)
    return cache_dir


def test_a_lockless_filesystem_falls_back_to_a_node_local_lock(lockless, caplog):
    """try_lock still grants one holder at a time, through a lock outside the cache directory."""
    store = FileStore(lockless)
    with caplog.at_level(logging.WARNING, logger="qlam_hpc"):
        held = store.try_lock(IDENTITY)
        assert held is not None
        assert store.try_lock(IDENTITY) is None
        held.release()
        store.try_lock(IDENTITY).release()
    assert "does not support locks" in caplog.text and "one token request per node" in caplog.text
    assert caplog.text.count("does not support locks") == 1  # once per store, not per lock


def test_a_node_local_lock_handed_over_reaches_the_next_store_and_warns_once(lockless, caplog):
    """The light CLI's store takes the node-local lock and hands it over; the full CLI's store
    (another FileStore of the same directory) gets that lock, and the user is told once per
    process that the filesystem refuses locks, not once per store."""
    with caplog.at_level(logging.WARNING, logger="qlam_hpc"):
        light = FileStore(lockless)
        held = light.try_lock(IDENTITY)
        assert held is not None
        light.hand_over(held)
        full = FileStore(lockless)
        assert full.try_lock(IDENTITY) is held
        assert full.try_lock(IDENTITY) is None
        held.release()
    assert caplog.text.count("does not support locks") == 1


def test_the_node_local_lock_excludes_other_processes_on_the_node(lockless):
    """A process holding the node-local lock makes our try_lock wait its turn."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from qlam_hpc._stores._file import FileStore; from qlam_hpc._cache import Identity\n"
            f"lock = FileStore({_node_lock_directory()!r}, node_local=True).try_lock(Identity(*{tuple(IDENTITY)!r}))\n"
            "print('locked' if lock else 'busy', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert FileStore(lockless).try_lock(IDENTITY) is None
    finally:
        holder.kill()
        holder.wait()
    lock = FileStore(lockless).try_lock(IDENTITY)
    assert lock is not None
    lock.release()


def test_the_node_local_lock_directory_is_private():
    """The fallback lock directory is created 0700 and owned by the user."""
    store = FileStore(_node_lock_directory(), node_local=True)
    store.try_lock(IDENTITY).release()
    info = os.stat(_node_lock_directory())
    assert info.st_uid == os.geteuid() and info.st_mode & 0o777 == 0o700


# --- squatting: another user on the node must not deny or redirect the fallback lock -----------
#
# The victim runs as an ordinary user (a forked child that drops root: the interpreter's files
# need not be readable by that user); the test, as root, plays the other user by creating paths
# owned by ATTACKER. Everything is real: /dev/shm, ownership, modes, links.

ATTACKER, VICTIM = 54321, 54322


def _as_victim(action):
    """Run ``action()`` in a forked child as VICTIM; its return value (a str) or its error, as text."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(VICTIM)
            os.setuid(VICTIM)
            try:
                answer = action()
            except Exception as error:  # reported to the parent
                answer = f"{type(error).__name__} exit {getattr(error, 'exit_code', '?')}: {error}"
            os.write(writer, answer.encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


@pytest.fixture
def victim(monkeypatch):
    """A lockless cache directory of VICTIM's, reachable by VICTIM; cleans /dev/shm afterwards."""
    import glob
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to play two users")
    base = tempfile.mkdtemp(dir="/tmp")
    os.chmod(base, 0o755)
    cache = os.path.join(base, "cache")
    os.mkdir(cache, 0o700)
    os.chown(cache, VICTIM, VICTIM)
    real_lockf = fcntl.lockf

    def lockf(fd, *args):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(cache):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real_lockf(fd, *args)

    monkeypatch.setattr(fcntl, "lockf", lockf)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)

    def clean():
        for path in glob.glob(f"/dev/shm/qlam-hpc-locks-{VICTIM}*") + glob.glob(f"/tmp/qlam-hpc-locks-{VICTIM}*"):
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
            else:
                shutil.rmtree(path)

    clean()
    yield base, cache
    clean()
    shutil.rmtree(base)


def _take_the_lock(cache):
    def action():
        lock = FileStore(cache).try_lock(IDENTITY)
        if lock is None:
            return "busy"
        lock.release()
        return "locked"

    return action


def test_a_squatted_node_lock_directory_does_not_stop_its_user(victim):
    """Another user who creates /dev/shm/qlam-hpc-locks-<uid> first gets no exit 8 out of its owner."""
    _base, cache = victim
    squat = f"/dev/shm/qlam-hpc-locks-{VICTIM}"
    os.mkdir(squat, 0o777)
    os.chown(squat, ATTACKER, ATTACKER)
    os.chmod(squat, 0o777)
    assert _as_victim(_take_the_lock(cache)) == "locked"
    assert os.listdir(squat) == []  # nothing of the victim's went into the squatter's directory


def test_a_planted_link_is_never_followed_nor_its_target_chmodded(victim):
    """A link planted at the predictable name, pointing at a directory of the victim's (where
    fs.protected_symlinks=0 lets it be followed): the target keeps its mode and gets no lock file."""
    base, cache = victim
    public = os.path.join(base, "public_html")
    os.mkdir(public)
    os.chmod(public, 0o755)
    os.chown(public, VICTIM, VICTIM)
    link = f"/dev/shm/qlam-hpc-locks-{VICTIM}"
    os.symlink(public, link)
    os.lchown(link, ATTACKER, ATTACKER)
    assert _as_victim(_take_the_lock(cache)) == "locked"
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o755 and os.listdir(public) == []
    assert os.path.islink(link)


def test_all_processes_of_a_user_meet_in_the_same_fallback_directory(victim):
    """With the usual name squatted, the user's processes still agree on one directory: one holder at a time."""
    _base, cache = victim
    squat = f"/dev/shm/qlam-hpc-locks-{VICTIM}"
    os.mkdir(squat, 0o700)
    os.chown(squat, ATTACKER, ATTACKER)

    def hold_and_ask():
        lock = FileStore(cache).try_lock(IDENTITY)
        reader, writer = os.pipe()
        if os.fork() == 0:  # a second process of the same user asks while the first holds
            os.close(reader)
            os.write(writer, b"busy" if FileStore(cache).try_lock(IDENTITY) is None else b"locked")
            os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            second = pipe.read().decode()
        os.wait()
        return f"{'locked' if lock else 'busy'}/{second}/{_node_lock_directory()}"

    first, second, directory = _as_victim(hold_and_ask).split("/", 2)
    assert (first, second) == ("locked", "busy")
    info = os.lstat(directory)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == VICTIM and stat.S_IMODE(info.st_mode) == 0o700


def test_xdg_runtime_dir_is_preferred_when_it_is_private(tmp_path):
    """$XDG_RUNTIME_DIR (0700, the user's, on the node) holds the fallback locks; one open to
    others, another user's, or a link is passed over."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    shm = tmp_path / "shm"
    shm.mkdir()
    shm.chmod(0o1777)
    assert _node_lock_directory({"XDG_RUNTIME_DIR": str(runtime)}, (str(shm),)) == str(runtime / "qlam-hpc-locks")
    for unsafe in ("open", "link"):
        bad = tmp_path / unsafe
        if unsafe == "open":
            bad.mkdir(mode=0o755)
            bad.chmod(0o755)
        else:
            bad.symlink_to(runtime)
        chosen = _node_lock_directory({"XDG_RUNTIME_DIR": str(bad)}, (str(shm),))
        assert chosen.startswith(str(shm) + "/qlam-hpc-locks-"), unsafe


def test_no_private_directory_names_the_settings_that_help(tmp_path):
    """Nowhere to lock on the node: exit 8, naming XDG_RUNTIME_DIR and QLAM_TOKEN_CACHE_DIR's filesystem."""
    from qlam_hpc import UnsafeCache

    with pytest.raises(UnsafeCache) as caught:
        _node_lock_directory({}, (str(tmp_path / "missing"),))
    message = str(caught.value)
    assert caught.value.exit_code == 8 and "\n" not in message
    assert "XDG_RUNTIME_DIR" in message and "QLAM_TOKEN_CACHE_DIR" in message
