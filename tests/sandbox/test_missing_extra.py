"""Without the ``sandbox`` extra, ``qlam-hpc sandbox`` and ``qlam-hpc demo`` say what to install,
in one line, with the configuration exit code: a missing package is a setup to fix, not a bug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qlam_hpc._errors import ConfigurationError

# A real interpreter in which FastAPI and uvicorn cannot be imported, as after
# `pip install qlam-hpc` without the extra; then the CLI's own entry point.
WITHOUT_EXTRA = """
import sys

class BlockTheExtra:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("uvicorn", "fastapi"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockTheExtra())
from qlam_hpc._cli import main
sys.exit(main(sys.argv[1:]))
"""

LINE = "qlam-hpc: error: the sandbox needs the 'sandbox' extra (uvicorn is missing): pip install 'qlam-hpc[sandbox]'"


@pytest.mark.parametrize("command", [["sandbox"], ["demo", "-n", "1"], ["demo", "--user-context"]])
def test_without_the_extra_one_line_names_the_extra_and_exits_3(command: list[str], tmp_path) -> None:
    """Both commands print the same single line and exit 3, never "unexpected ModuleNotFoundError" and 1."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == ConfigurationError.exit_code == 3, done.stderr
    assert done.stderr.strip().splitlines() == [LINE]
    assert done.stdout == ""
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


def test_the_blocker_blocks(tmp_path) -> None:
    """The harness really hides the extra: importing uvicorn under it fails."""
    code = WITHOUT_EXTRA.replace("from qlam_hpc._cli import main\nsys.exit(main(sys.argv[1:]))", "import uvicorn")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1 and "No module named 'uvicorn'" in done.stderr
