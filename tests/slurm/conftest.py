"""Fixtures for the integration tests on the local Slurm cluster (scripts/local-slurm.sh).

The sandbox runs in this test process on 127.0.0.1; the jobs reach it there. Its
client secret reaches them the way the examples tell users to do it: in a 0600
credentials file that the job sources, never through sbatch's environment.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qlam_hpc import Settings
from qlam_hpc._cache import Identity
from slurm_service import Slurm, local_slurm, stop_local_slurm

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="session")
def slurm() -> Slurm:
    cluster = local_slurm()
    yield cluster
    stop_local_slurm(cluster)


@dataclass
class JobArea:
    """A directory for one test's jobs: credentials, outputs, results, the token cache."""

    root: Path
    sandbox: object
    credentials: Path = field(init=False)

    def __post_init__(self) -> None:
        for name in ("out", "results", "cache"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.credentials = self.root / "credentials"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def write_credentials(self, **extra: str) -> None:
        """The sandbox's environment as ``NAME=value`` lines, mode 0600, plus ``extra`` lines
        (written as given, so ``$SLURMD_NODENAME`` expands inside the job)."""
        lines = {**self.sandbox.env(), "QLAM_TOKEN_CACHE_DIR": str(self.cache_dir), **extra}
        fd = os.open(self.credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            for name, value in lines.items():
                quoted = value if "$" in value else "'" + value.replace("'", "'\\''") + "'"
                file.write(f"{name}={quoted}\n")

    def user_settings(self) -> dict[str, str]:
        """A user's settings for user context: the sandbox's device login and this area's cache, no secret."""
        return {**self.sandbox.env(flow="device"), "QLAM_TOKEN_CACHE_DIR": str(self.cache_dir)}

    def plain_env(self) -> dict[str, str]:
        """This process's environment without scheduler, QLAM or Redis variables."""
        prefixes = ("QLAM_", "AUTH_", "SLURM_", "SBATCH_", "PBS_", "REDIS_")
        return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}

    def submit_env(self, slurm: Slurm, **extra: str) -> dict[str, str]:
        """What sbatch gets: no secrets, only where the credentials file is and a PATH with qlam-hpc."""
        base = self.plain_env()
        base["PATH"] = f"{VENV_BIN}:{base.get('PATH', os.defpath)}"
        base.update(QLAM_CREDENTIALS=str(self.credentials), QLAM_RESULTS_DIR=str(self.root / "results"), **extra)
        return slurm.env(base)

    def outputs(self) -> list[str]:
        return [path.read_text() for path in sorted((self.root / "out").iterdir())]

    def identity(self) -> Identity:
        settings = Settings.from_env(self.sandbox.env())
        return Identity(settings.token_url, settings.client_id, settings.audience, settings.scope)


@pytest.fixture
def area(tmp_path, sandbox) -> JobArea:
    # pytest's tmp_path is under /tmp: the jobs run on this machine as this user and see it.
    area = JobArea(tmp_path, sandbox)
    area.write_credentials()
    return area


@pytest.fixture
def user_area(tmp_path, user_sandbox) -> JobArea:
    """The job area with the user's settings file, ``user-context``: user context, no secret, mode 0644."""
    area = JobArea(tmp_path, user_sandbox)
    settings = tmp_path / "user-context"
    settings.write_text("".join(f"{name}={value}\n" for name, value in area.user_settings().items()))
    settings.chmod(0o644)
    return area
