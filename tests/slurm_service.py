"""The local Slurm cluster of scripts/local-slurm.sh, for the tests that need a real scheduler.

``local_slurm()`` starts it when it is not running (installing Slurm and munge from
Debian when missing) and returns how to use it; it skips the test, with the reason,
only where Slurm cannot be installed or run (not root, not Debian). A cluster this
session started is stopped at the end of the session; one that was already running
is left running.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "local-slurm.sh"


@dataclass
class Slurm:
    run_dir: Path
    started_here: bool

    @property
    def conf(self) -> Path:
        return self.run_dir / "slurm.conf"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) pointed at the local cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def command(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
        """Run a Slurm client command; its stdout. Fails the test on a non-zero exit."""
        done = subprocess.run(
            list(args), env=self.env(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}: {done.stderr}"
        return done.stdout

    def sbatch(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
        """``sbatch --parsable ARGS``; the job id."""
        out = self.command("sbatch", "--parsable", *args, env=env, timeout=timeout)
        return out.strip().split(";")[0]

    def wait(self, job: str, timeout: float = 300) -> None:
        """Until no task of ``job`` is pending or running (MinJobAge=4 lets sacct-less polling work)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.command("squeue", "-h", "-j", job, "-o", "%i %T")
            if not out.strip():
                return
            if time.monotonic() > deadline:
                self.command("scancel", job)
                pytest.fail(f"job {job} still running after {timeout:g}s:\n{out}")
            time.sleep(0.5)

    def show_job(self, job: str) -> str:
        """``scontrol show job`` while Slurm still remembers the job (MinJobAge); '' after."""
        done = subprocess.run(
            ["scontrol", "show", "job", job], env=self.env(), capture_output=True, text=True, timeout=30
        )
        return done.stdout if done.returncode == 0 else ""

    def node_of_each_task(self, outputs: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for text in outputs:
            match = re.search(r"^node=(\S+)", text, re.M)
            if match:
                counts[match.group(1)] = counts.get(match.group(1), 0) + 1
        return counts


def local_slurm() -> Slurm:
    run_dir = Path(os.environ.get("QLAM_SLURM_DIR", "/tmp/qlam-hpc-slurm"))
    env = {**os.environ, "QLAM_SLURM_DIR": str(run_dir)}
    status = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=60)
    if status.returncode == 0:
        return Slurm(run_dir, started_here=False)
    if os.geteuid() != 0 and not shutil.which("slurmctld"):
        pytest.skip("Slurm is not installed and installing it needs root (scripts/local-slurm.sh start)")
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        pytest.skip("Slurm is not installed and this is not a Debian-like system (no apt-get)")
    done = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        if not shutil.which("slurmctld"):
            pytest.skip(f"Slurm could not be installed here: {done.stderr.strip().splitlines()[-1:]}")
        pytest.fail(f"scripts/local-slurm.sh start failed:\n{done.stderr}")
    return Slurm(run_dir, started_here=True)


def stop_local_slurm(slurm: Slurm) -> None:
    if slurm.started_here:
        env = {**os.environ, "QLAM_SLURM_DIR": str(slurm.run_dir)}
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
