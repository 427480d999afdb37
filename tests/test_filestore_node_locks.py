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
import subprocess
import sys

import pytest

from qlam_hpc._cache import Identity
from qlam_hpc._filestore import FileStore, _node_lock_directory

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


def test_the_node_local_lock_excludes_other_processes_on_the_node(lockless):
    """A process holding the node-local lock makes our try_lock wait its turn."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from qlam_hpc._filestore import FileStore; from qlam_hpc._cache import Identity\n"
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
