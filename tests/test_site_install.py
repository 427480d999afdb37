"""scripts/site-install.sh: a central install and its Lmod module, used the way a user of the
cluster would — ``module load qlam-hpc`` in a fresh login shell — against the sandbox.

The install is made from this working tree, without dependencies (the environment reaches
the project's own packages through a ``.pth`` file), so that it takes seconds, not minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from qlam_hpc._version import __version__

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "site-install.sh"
LMOD_PROFILE = Path("/etc/profile.d/lmod.sh")
# A Python every user can run (Debian's); the project's venv may sit on one under root's 0700 home.
SHARED_PYTHON = "/usr/bin/python3"
OTHER_USER = "qlamtest-ada"  # the same unprivileged user as tests/two_users.py


def _lmod_missing() -> str | None:
    if not LMOD_PROFILE.exists():
        return f"Lmod is not installed ({LMOD_PROFILE} is missing; scripts/test-services.sh installs Debian's lmod)"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory, sandbox_server) -> Path:
    """PREFIX after ``scripts/site-install.sh PREFIX`` with the sandbox as the site's identity provider."""
    if _lmod_missing():
        pytest.skip(_lmod_missing())
    if not os.access(SHARED_PYTHON, os.X_OK):
        pytest.skip(f"{SHARED_PYTHON} is missing: the site install needs a Python every user can run")
    # As on a cluster, PREFIX is reachable by every user (pytest's own temporary root is 0700).
    prefix = Path(tempfile.mkdtemp(prefix="qlam-site-"))
    prefix.chmod(0o755)
    (prefix / "shared").mkdir(mode=0o1777)
    os.chmod(prefix / "shared", 0o1777)  # every user makes their own cache in it
    ours = sysconfig.get_paths()["purelib"]  # the project's packages: httpx, click, ...
    started = time.monotonic()
    done = subprocess.run(
        [
            str(SCRIPT),
            str(prefix),
            "--python",
            SHARED_PYTHON,
            "--no-deps",
            "--auth-base-url",
            sandbox_server.url,
            "--cache-root",
            str(prefix / "shared"),
        ],
        env={**os.environ, "PYTHONPATH": ours},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    print(f"\nsite-install.sh took {time.monotonic() - started:.1f} s")
    site_packages = next((prefix / "qlam-hpc" / __version__ / "venv" / "lib").glob("python*/site-packages"))
    (site_packages / "project-dependencies.pth").write_text(ours + "\n")
    yield prefix
    shutil.rmtree(prefix, ignore_errors=True)


def _login_shell(home: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    """``bash -l -c script`` with nothing inherited but what a login gives: /etc/profile
    (which sources Lmod's init), a home, a user name."""
    home.mkdir(exist_ok=True)
    clean = {"HOME": str(home), "USER": "alice", "LOGNAME": "alice", "PATH": "/usr/bin:/bin", "TERM": "dumb", **env}
    return subprocess.run(["bash", "-l", "-c", script], env=clean, capture_output=True, text=True, timeout=60)


def test_the_site_install_makes_a_modulefile_of_this_version(site):
    modulefile = site / "modulefiles" / "qlam-hpc" / f"{__version__}.lua"
    text = modulefile.read_text()
    assert 'prepend_path("PATH"' in text and 'os.getenv("USER")' in text
    assert (site / "qlam-hpc" / __version__ / "bin" / "qlam-hpc").exists()
    assert sorted(p.name for p in (site / "qlam-hpc" / __version__ / "bin").iterdir()) == [
        "qlam-hpc"
    ]  # no python, no pip


def test_module_load_gives_the_command_and_the_sites_defaults(site, sandbox, tmp_path):
    """What a user types: module use, module load, then qlam-hpc works with the site's settings."""
    script = f"""
        module use {site}/modulefiles
        module load qlam-hpc
        qlam-hpc --version
        echo "binary: $(command -v qlam-hpc)"
        echo "cache: $QLAM_TOKEN_CACHE_DIR"
        complete -p qlam-hpc
        export QLAM_CLIENT_ID={sandbox.env()["QLAM_CLIENT_ID"]} QLAM_API_URL={sandbox.url}
        qlam-hpc doctor; echo "doctor exit $?"
        module unload qlam-hpc
        echo "after unload: ${{AUTH_BASE_URL:-unset}} $(command -v qlam-hpc || echo gone)"
    """
    started = time.monotonic()
    result = _login_shell(tmp_path / "home", script)
    took = time.monotonic() - started
    out = result.stdout
    assert f"qlam-hpc, version {__version__}" in out, result.stderr
    assert f"binary: {site}/qlam-hpc/{__version__}/bin/qlam-hpc" in out
    assert f"cache: {site}/shared/alice" in out  # $USER, read when the module loads
    assert "complete -o nosort -F _qlam_hpc_completion qlam-hpc" in out
    # The client secret is the user's to give: doctor names it missing, and the module's
    # settings as coming from the environment.
    assert "auth base URL       from environment AUTH_BASE_URL" in out
    assert "cache location      from environment QLAM_TOKEN_CACHE_DIR" in out
    assert f"cache directory     {site}/shared/alice does not exist yet" in out
    assert "FAIL  client secret       none configured" in out and "doctor exit 3" in out
    assert "identity provider" in out and "answers" in out
    assert "after unload: unset gone" in out
    print(f"\nmodule load + qlam-hpc --version + doctor: {took:.1f} s")


@pytest.mark.leak_check_expect("home/.config/qlam/secret", kinds=["client secret"])  # the user's 0600 secret file
def test_with_a_secret_of_their_own_a_user_gets_a_token_in_their_shared_cache(site, sandbox, tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "qlam").mkdir(parents=True)
    secret = home / ".config" / "qlam" / "secret"
    secret.write_text(sandbox.env()["QLAM_CLIENT_SECRET"])
    secret.chmod(0o600)
    script = f"""
        module use {site}/modulefiles && module load qlam-hpc
        export QLAM_CLIENT_ID={sandbox.env()["QLAM_CLIENT_ID"]} QLAM_CLIENT_SECRET_FILE=~/.config/qlam/secret
        qlam-hpc token >/dev/null && qlam-hpc token --json
    """
    result = _login_shell(home, script, USER="bob", LOGNAME="bob")
    assert result.returncode == 0, result.stderr
    assert '"source": "cache"' in result.stdout
    assert any((site / "shared" / "bob").glob("*")), "the token went to bob's cache on the shared filesystem"
    assert sandbox.stats()["token_requests"] == 1


def test_site_install_refuses_a_password_in_a_world_readable_modulefile(tmp_path):
    done = subprocess.run(
        [str(SCRIPT), str(tmp_path), "--token-store", "redis://:hunter2@redis.example:6379/0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "must not carry a password" in done.stderr
    assert not (tmp_path / "modulefiles").exists()


def test_another_user_loads_the_module_and_runs_doctor(site, sandbox, tmp_path):
    """The install works for a user who is not the installer: module load, then qlam-hpc runs
    (not exit 126, "bad interpreter: Permission denied") and doctor checks that user's set-up."""
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root to run the module as another user (useradd, runuser)")
    from two_users import _ensure_user

    uid, gid = _ensure_user(OTHER_USER)
    home = Path(tempfile.mkdtemp(prefix="qlam-site-home-"))
    try:
        os.chown(home, uid, gid)
        script = f"""
            module use {site}/modulefiles && module load qlam-hpc
            export QLAM_CLIENT_ID={sandbox.env()["QLAM_CLIENT_ID"]} QLAM_API_URL={sandbox.url}
            qlam-hpc doctor; echo "doctor exit $?"
        """
        env = [f"HOME={home}", f"USER={OTHER_USER}", f"LOGNAME={OTHER_USER}", "PATH=/usr/bin:/bin", "TERM=dumb"]
        done = subprocess.run(
            ["runuser", "-u", OTHER_USER, "--", "/usr/bin/env", "-i", *env, "bash", "-l", "-c", script],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=home,
        )  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert "Permission denied" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    out = done.stdout
    assert f"cache directory     {site}/shared/{OTHER_USER} does not exist yet" in out, out + done.stderr
    assert "FAIL  client secret       none configured" in out and "doctor exit 3" in out
    assert "identity provider" in out and "answers" in out


def test_site_install_refuses_a_python_other_users_cannot_reach(tmp_path):
    """A Python under a 0700 directory (pyenv in root's home) would give every other user exit
    126: refused, one line naming the directory and the way out, nothing installed."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    (private / "python3").symlink_to(SHARED_PYTHON)
    prefix = Path(tempfile.mkdtemp(prefix="qlam-site-"))
    prefix.chmod(0o755)
    try:
        done = subprocess.run(
            [str(SCRIPT), str(prefix / "p"), "--python", str(private / "python3"), "--no-deps"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"is under {private}, which other users cannot enter" in lines[0]
        assert "--python /usr/bin/python3" in lines[0]
        assert not (prefix / "p" / "qlam-hpc").exists()
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def test_site_install_refuses_a_prefix_other_users_cannot_reach(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    done = subprocess.run(
        [str(SCRIPT), str(private / "site"), "--python", SHARED_PYTHON, "--no-deps"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"PREFIX {private}/site is under {private}, which other users cannot enter" in done.stderr
