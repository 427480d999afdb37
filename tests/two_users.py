"""Two real Unix users for the tests of a store that people share: ``qlamtest-ada`` and
``qlamtest-bob``, each with a home of their own, running the real ``qlam-hpc`` as themselves.

The users are made once per machine (``useradd``, no login shell) and kept: making them
again is a no-op. Each test gives them fresh homes (0700, their own) under a directory
everyone can traverse, so each has their own ``~/.config/qlam-hpc/store.key``, as on a
cluster. Their processes run with ``runuser -u USER -- env -i ...``: only the variables the
test gives, never the test process's own.

The interpreter must be one they can run. The project's venv may be built on a Python in
root's home (0700, as pyenv puts it): then a second venv is made beside the homes, on the
system's Python of the same minor version, that loads the project's venv packages, so
both users run the same code as the tests. Skipped, with the reason, when the tests do not
run as root or no such Python exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Run

NAMES = ("qlamtest-ada", "qlamtest-bob")
_SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    python: str

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        """What this user's process gets: a home, a PATH, and ``extra``."""
        return {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **extra}

    def argv(self, args: list[str], env: dict[str, str]) -> list[str]:
        variables = [f"{k}={v}" for k, v in self.env(env).items()]
        return ["runuser", "-u", self.name, "--", "/usr/bin/env", "-i", *variables, self.python, *args]

    def cli(self, *args: str, env: dict[str, str], timeout: float = 60) -> Run:
        """``qlam-hpc ARGS`` as this user."""
        return self.run(["-m", "qlam_hpc", *args], env=env, timeout=timeout)

    def run(self, args: list[str], *, env: dict[str, str], timeout: float = 60) -> Run:
        done = subprocess.run(
            self.argv(args, env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
        """``qlam-hpc ARGS`` as this user, running."""
        return subprocess.Popen(
            self.argv(["-m", "qlam_hpc", *args], env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def can_read(self, path: Path) -> bool:
        check = ["runuser", "-u", self.name, "--", "test", "-r", str(path)]
        done = subprocess.run(check, capture_output=True, timeout=10)
        return done.returncode == 0


def _ensure_user(name: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        done = subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
             "--user-group", name],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if done.returncode not in (0, 9):  # 9: made meanwhile by another run
            pytest.skip(f"two Unix users: cannot make {name}: {done.stderr.strip()}")
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _runs_as(name: str, python: str) -> bool:
    done = subprocess.run(
        ["runuser", "-u", name, "--", "/usr/bin/env", "-i", "HOME=/", python, "-c", "import qlam_hpc, redis, hvac"],
        capture_output=True,
        timeout=60,
    )
    return done.returncode == 0


def _python_for_others(base: Path, name: str) -> str:
    """An interpreter ``name`` can run that imports this checkout's qlam_hpc and its extras."""
    if _runs_as(name, sys.executable):
        return sys.executable
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = next((p for p in (f"/usr/bin/{minor}", f"/usr/local/bin/{minor}") if os.access(p, os.X_OK)), None)
    if system is None:
        pytest.skip(f"two Unix users: the venv's Python ({sys.executable}) is not theirs to run, and no {minor}")
    venv = base / "venv"
    site = venv / "lib" / minor / "site-packages"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(system)
    (venv / "pyvenv.cfg").write_text(f"home = {Path(system).parent}\ninclude-system-site-packages = false\n")
    # The venv's packages with their own .pth files (the editable install of src/ among them).
    (site / "project-venv.pth").write_text(f"import site; site.addsitedir({str(_SITE)!r})\n")
    # redis-py imports async_timeout on Python before 3.11.3 (Debian 12 has 3.11.2), though the
    # store never uses redis.asyncio; asyncio.timeout is what that package became.
    (site / "async_timeout.py").write_text("from asyncio import timeout  # noqa: F401\n")
    python = str(venv / "bin" / "python")
    if not _runs_as(name, python):
        pytest.skip(f"two Unix users: neither the venv's Python nor {system} with its packages runs as {name}")
    return python


@pytest.fixture(scope="session")
def unix_users() -> dict[str, User]:
    """``{"ada": User, "bob": User}``, real Unix users with a home each (made fresh per session)."""
    if os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("useradd"):
        pytest.skip("two Unix users need root (useradd, runuser)")
    ids = {name: _ensure_user(name) for name in NAMES}
    base = Path(tempfile.mkdtemp(prefix="qlamtest-users-"))
    base.chmod(0o755)  # the homes' parent, as /home is
    try:
        python = _python_for_others(base, NAMES[0])
        users = {}
        for name, (uid, gid) in ids.items():
            home = base / name
            home.mkdir(mode=0o700)
            os.chown(home, uid, gid)
            users[name.rpartition("-")[2]] = User(name, uid, gid, home, python)
        yield users
    finally:
        shutil.rmtree(base, ignore_errors=True)
