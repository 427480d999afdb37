"""Run every benchmark, one after the other, and print their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("get_token.py", "cli_startup.py", "token_requests.py"):
    print(f"\n== {script} ==", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
