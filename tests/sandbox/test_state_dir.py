"""A state dir another user could read or change is refused, in one line with exit code 3: its
signing key signs every token the sandbox issues, and its database holds every user's tasks.

The other user is a real one (``qlamtest-sbx``, made here if missing), owning real directories,
links and files; the tests need root to hand files to them, as the rest of the suite does.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlam_hpc import ConfigurationError
from qlam_hpc.sandbox import Sandbox, SandboxConfig

from .conftest import ALICE

OTHER = "qlamtest-sbx"


@pytest.fixture(scope="module")
def other_uid() -> int:
    """The uid of a second, unprivileged Unix user (created once; creating it again is harmless)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to make files of another user")
    try:
        return pwd.getpwnam(OTHER).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", OTHER], capture_output=True, check=False)
    return pwd.getpwnam(OTHER).pw_uid  # a KeyError here: useradd failed, and the test should say so


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Path]:
    """A directory of root's, 0755, to put the state dirs under test in."""
    os.chmod(tmp_path, 0o755)
    yield tmp_path


def _config(state_dir: Path) -> SandboxConfig:
    return SandboxConfig(clients=(ALICE,), state_dir=state_dir)


def _refused(state_dir: Path, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Sandbox(_config(state_dir)).start()


def _cli(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qlam_hpc", "sandbox", "--state-dir", str(state_dir), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_a_state_dir_another_user_owns_is_refused_by_the_command(place: Path, other_uid: int) -> None:
    """`qlam-hpc sandbox --state-dir` on another user's directory: one line naming the owner, exit 3,
    and nothing written into it (his key is not used, his database not opened)."""
    theirs = place / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, other_uid, other_uid)
    done = _cli(theirs)
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines() == [
        f"qlam-hpc: error: the state dir {theirs} belongs to uid {other_uid} ({OTHER}), not to you: refusing it "
        "(its owner could read the tasks and plant a signing key); use a directory of your own"
    ]
    assert done.stdout == "" and list(theirs.iterdir()) == []


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_state_dir_others_can_write_is_refused(place: Path, mode: int) -> None:
    """A directory of your own that group or others can write (sticky or not) is refused: they could plant a key."""
    shared = place / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    done = _cli(shared)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.splitlines()
    assert f"the state dir {shared} can be written by group or others (mode {mode:04o})" in line
    assert f"chmod 700 {shared}" in line
    assert list(shared.iterdir()) == []


def test_a_state_dir_behind_another_users_link_is_refused(place: Path, other_uid: int) -> None:
    """A link the other user owns (he could re-point it at any time) is refused, even to a directory of yours."""
    mine = place / "mine"
    mine.mkdir(mode=0o700)
    link = place / "link"
    link.symlink_to(mine)
    os.lchown(link, other_uid, other_uid)
    _refused(link / "state", f"reached through the symbolic link {link}, which belongs to uid {other_uid}")
    _refused(link, f"reached through the symbolic link {link}, which belongs to uid {other_uid}")
    assert list(mine.iterdir()) == []


@pytest.mark.leak_check_expect("mine/signing-key.pem", kinds=["signing key"])  # the state dir, by its own name
def test_a_link_of_your_own_is_followed(place: Path) -> None:
    """Your own link to your own directory is fine: the state lands in the directory it names."""
    mine = place / "mine"
    mine.mkdir(mode=0o700)
    link = place / "link"
    link.symlink_to(mine)
    with Sandbox(_config(link)):
        pass
    assert sorted(p.name for p in mine.iterdir()) == ["signing-key.pem", "tasks.sqlite3"]


def test_a_state_dir_inside_a_directory_another_user_owns_or_others_can_write_is_refused(
    place: Path, other_uid: int
) -> None:
    """The directories on the way count too: whoever owns one, or can write one that is not sticky,
    could rename your state dir away and put theirs in its place."""
    theirs = place / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, other_uid, other_uid)
    _refused(theirs / "state", f"is inside {theirs}, which belongs to uid {other_uid} \\({OTHER}\\)")
    group = place / "group"
    group.mkdir()
    os.chmod(group, 0o2770)
    _refused(group / "state", f"is inside {group}, which group or others can write \\(mode 2770\\)")
    assert list(group.iterdir()) == []
    sticky = place / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    with Sandbox(_config(sticky / "state")):  # as in /tmp: nobody can rename what is yours
        pass


@pytest.mark.parametrize("name", ["signing-key.pem", "tasks.sqlite3"])
def test_a_key_or_database_another_user_put_in_your_state_dir_is_refused(
    place: Path, other_uid: int, name: str
) -> None:
    """A signing key or database in your state dir that belongs to someone else is not used."""
    state = place / "state"
    with Sandbox(_config(state)):  # a real key and database first
        pass
    os.chown(state / name, other_uid, other_uid)
    _refused(state, f"{state / name} belongs to uid {other_uid} \\({OTHER}\\), not to you: refusing it")


@pytest.mark.parametrize("name", ["signing-key.pem", "tasks.sqlite3"])
def test_a_key_or_database_others_can_read_is_refused(place: Path, name: str) -> None:
    """A key or database of yours that group or others can read (say, after a copy) is refused with the fix."""
    state = place / "state"
    with Sandbox(_config(state)):
        pass
    os.chmod(state / name, 0o644)
    _refused(state, f"can be read or written by group or others \\(mode 0644\\): refusing it; chmod 600 {state / name}")


@pytest.mark.leak_check_expect("planted.pem", kinds=["signing key"])  # the key, moved aside on purpose
def test_a_link_planted_in_place_of_the_key_is_refused(place: Path, tmp_path: Path) -> None:
    """The key is never read through a link (one could point at a key the planter holds)."""
    state = place / "state"
    with Sandbox(_config(state)):
        pass
    elsewhere = tmp_path / "planted.pem"
    os.replace(state / "signing-key.pem", elsewhere)
    (state / "signing-key.pem").symlink_to(elsewhere)
    _refused(state, "signing-key.pem in the state dir")
