"""The scripts in examples/ without a scheduler: syntax, directives, secrets, and the PBS one run as PBS would."""

from __future__ import annotations

import json
import os
import py_compile
import re
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, JobArea

SCRIPTS = ["array-bash.sbatch", "array-python.sbatch", "prefetch.sbatch", "array-pbs.sh"]
QLAM_HPC = os.path.join(os.path.dirname(sys.executable), "qlam-hpc")


def _directives(script: str, prefix: str) -> list[str]:
    return [
        line.split(None, 1)[1] for line in (EXAMPLES / script).read_text().splitlines() if line.startswith(prefix + " ")
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_example_is_valid_bash(script):
    """bash -n accepts each script."""
    done = subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_python_task_compiles(tmp_path):
    """array_task.py is valid Python."""
    py_compile.compile(str(EXAMPLES / "array_task.py"), cfile=str(tmp_path / "x.pyc"), doraise=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_example_exports_or_holds_a_secret(script):
    """No secret value, no exported environment, no token on a command line in any example."""
    text = (EXAMPLES / script).read_text()
    assert not re.search(r"^(export )?QLAM_CLIENT_SECRET=", text, re.M)
    assert "--export" not in " ".join(_directives(script, "#SBATCH"))
    assert not re.search(r"-[vV]\b", " ".join(_directives(script, "#PBS")))
    assert "Bearer $" not in text and "Authorization:" not in text
    assert "set -euo pipefail" in text


@pytest.mark.parametrize("script", ["array-bash.sbatch", "array-python.sbatch"])
def test_the_slurm_arrays_declare_an_array_and_a_time_limit(script):
    """#SBATCH --array and --time are there, with per-task output files."""
    directives = _directives(script, "#SBATCH")
    assert any(d.startswith("--array=") for d in directives)
    assert any(d.startswith("--time=") for d in directives)
    assert any(d.startswith("--output=") and "%A_%a" in d for d in directives)


def test_the_pbs_array_has_pbs_directives():
    """array-pbs.sh: a -J array, a walltime, joined output, and no #SBATCH lines."""
    directives = _directives("array-pbs.sh", "#PBS")
    assert "-J 0-49" in directives
    assert any(re.fullmatch(r"-l walltime=\d\d:\d\d:\d\d", d) for d in directives)
    assert any(d.startswith("-l select=") for d in directives)
    assert "-j oe" in directives
    assert _directives("array-pbs.sh", "#SBATCH") == []


def test_the_prefetch_snippet_is_in_the_readme():
    """examples/README.md shows the afterok chain exactly as it is meant to be typed."""
    readme = (EXAMPLES / "README.md").read_text()
    assert "jid=$(sbatch --parsable prefetch.sbatch)" in readme
    assert "sbatch --dependency=afterok:$jid" in readme


def test_a_credentials_file_others_can_read_is_refused(tmp_path):
    """A credentials file with mode 0644 stops the script with exit 3 before anything runs."""
    loose = tmp_path / "credentials"
    loose.write_text("QLAM_CLIENT_ID=x\n")
    loose.chmod(0o644)
    env = {"PATH": os.defpath, "HOME": str(tmp_path), "QLAM_CREDENTIALS": str(loose)}
    done = subprocess.run(["bash", str(EXAMPLES / "array-bash.sbatch")], env=env, capture_output=True, text=True)
    assert done.returncode == 3 and "chmod 600" in done.stderr


@pytest.mark.leak_check_expect("credentials", kinds=["client secret"])  # the jobs' 0600 credentials file
def test_the_pbs_array_runs_as_pbs_would_run_it(sandbox, tmp_path):
    """array-pbs.sh with PBS's variables: the task completes and names its PBS job and index."""
    sandbox.set_faults(task_duration=0.5)
    area = JobArea(tmp_path, sandbox)
    area.write_credentials()
    env = {
        **area.plain_env(),
        "PATH": f"{os.path.dirname(QLAM_HPC)}:{os.environ.get('PATH', os.defpath)}",
        "QLAM_CREDENTIALS": str(area.credentials),
        "PBS_JOBID": "4711[7].pbs01",
        "PBS_ARRAY_INDEX": "7",
        "PBS_O_WORKDIR": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(EXAMPLES / "array-pbs.sh")], env=env, capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    assert "array task 7 of job 4711" in done.stdout
    result = json.loads((tmp_path / "results" / "7.json").read_text())
    listing = subprocess.run(
        [QLAM_HPC, "tasks", "get", result["task_id"], "--json"],
        env={**area.plain_env(), **sandbox.env(), "QLAM_TOKEN_CACHE_DIR": str(area.cache_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    pbs = json.loads(json.loads(listing.stdout)["system_metadata"])["qlam_hpc"]["pbs"]
    assert pbs == {"job_id": "4711[7].pbs01", "array_index": "7"}
    assert sandbox.client.client_secret not in done.stdout + done.stderr
