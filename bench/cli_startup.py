"""Wall time of a warm ``qlam-hpc token`` against ``python -c pass``, interleaved, same environment.

Target: median ratio at most 2.5x, aim 1.5x. ``qlam-hpc --version`` (the full CLI,
with click) is shown too, to show what the fast path saves.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QLAM_HPC, clean_env, median, table

from qlam_hpc.sandbox import Sandbox


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main(rounds: int = 40) -> None:
    # An installed package has byte-code compiled by pip; an editable checkout may not
    # (PYTHONDONTWRITEBYTECODE), and compiling on every run is not what users see.
    import compileall

    import qlam_hpc

    compileall.compile_dir(Path(qlam_hpc.__file__).parent, quiet=1)
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        env = clean_env(sandbox, Path(tmp) / "cache")
        subprocess.run([QLAM_HPC, "token"], env=env, stdout=subprocess.DEVNULL, check=True)  # warm the cache
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "qlam-hpc token (warm)": [QLAM_HPC, "token"],
            "qlam-hpc --version (full CLI)": [QLAM_HPC, "--version"],
        }
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(3):  # warm the page cache
            for command in commands.values():
                timed(command, env)
        for _ in range(rounds):
            for name, command in commands.items():
                samples[name].append(timed(command, env))
    base = median(samples["python -c pass"])
    rows = [[name, f"{median(s) * 1000:.1f}", f"{median(s) / base:.2f}x"] for name, s in samples.items()]
    print(f"start-up, median of {rounds} interleaved runs")
    print(table(["command", "median ms", "vs python -c pass"], rows))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
