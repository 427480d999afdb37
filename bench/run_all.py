"""Run every benchmark, one after the other, and print their tables.

The Slurm benchmark starts the local cluster (scripts/local-slurm.sh) and needs root;
pass --no-slurm to leave it out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "get_token.py",
    "cli_startup.py",
    "token_requests.py",
    "stores.py",
    "refresh_race.py",
    "tasks_throughput.py",
    "peers.py",
    "slurm_array.py",
]

for script in SCRIPTS:
    if script == "slurm_array.py" and "--no-slurm" in sys.argv:
        continue
    print(f"\n== {script} ==", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
