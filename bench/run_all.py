"""Run every benchmark, one after the other, and print their tables.

The Slurm benchmark starts the local cluster (scripts/local-slurm.sh) and needs root;
pass --no-slurm to leave it out. The 2,000-task array (slurm_scale.py) and the rotation
runs (slurm_rotation.py, five 500-task arrays) take minutes: they run only with --scale.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "get_token.py",
    "cli_startup.py",
    "first_wave.py",
    "token_requests.py",
    "stores.py",
    "refresh_race.py",
    "tasks_throughput.py",
    "peers.py",
    "slurm_array.py",
    "slurm_scale.py",
    "slurm_rotation.py",
]
LONG = ("slurm_scale.py", "slurm_rotation.py")

for script in SCRIPTS:
    if script.startswith("slurm_") and "--no-slurm" in sys.argv:
        continue
    if script in LONG and "--scale" not in sys.argv:
        continue
    print(f"\n== {script} ==", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
