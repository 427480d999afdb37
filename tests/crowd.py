"""Start many real processes so that they race for the cache at the same instant.

Each process imports qlam-hpc, signals it is ready, then blocks opening a FIFO;
opening the FIFO's write end releases them all at once. Then each runs the real
CLI (``qlam_hpc._cli.main``) or a small loop of the library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CLI = r"""
import os, sys, pathlib
barrier = pathlib.Path(sys.argv[1])
from qlam_hpc._cli import main
(barrier / f"ready-{os.getpid()}").touch()
os.close(os.open(barrier / "go", os.O_RDONLY))
sys.exit(main(sys.argv[2:]))
"""

# Calls get_token() for a while, checking every token it is handed against the JWT's
# own "exp": one line of JSON per process with what it saw.
LOOPER = r"""
import base64, json, os, sys, time, pathlib
barrier = pathlib.Path(sys.argv[1]); duration = float(sys.argv[2])
from qlam_hpc import TokenProvider
provider = TokenProvider.from_env()
(barrier / f"ready-{os.getpid()}").touch()
os.close(os.open(barrier / "go", os.O_RDONLY))
calls, expired, tokens, end = 0, 0, set(), time.time() + duration
while time.time() < end:
    token = provider.get_token()
    handed_at = time.time()
    payload = token.split(".")[1]
    exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
    calls += 1
    expired += handed_at >= exp
    tokens.add(token[-16:])
    time.sleep(0.02)
print(json.dumps({"calls": calls, "expired": expired, "distinct": len(tokens)}))
"""


@dataclass
class Finished:
    pid: int
    code: int
    out: str
    err: str


class Crowd:
    """``count`` processes held at a barrier until ``release()``, each running ``script``
    (the CLI by default) with argv ``barrier-dir *args``."""

    def __init__(self, directory: Path, count: int, args: list[str], env: dict, *, script: str = CLI) -> None:
        self.barrier = directory / "barrier"
        self.barrier.mkdir(parents=True)
        os.mkfifo(self.barrier / "go")
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(self.barrier), *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(list(self.barrier.glob("ready-*"))) < len(self.processes):
            if time.monotonic() > deadline:
                raise TimeoutError("the crowd did not get ready")
            if any(p.poll() is not None for p in self.processes):
                broken = next(p for p in self.processes if p.poll() is not None)
                raise RuntimeError(f"a worker died before the start: {broken.stderr.read()}")
            time.sleep(0.05)

    def release(self) -> None:
        """Open the FIFO for writing: every worker blocked in open() wakes up."""
        # The write end stays open until the crowd has finished, so a worker that reaches its
        # open() a little late still passes.
        self._go = os.open(self.barrier / "go", os.O_WRONLY)

    def finish(self, timeout: float = 180) -> list[Finished]:
        results = []
        try:
            for process in self.processes:
                out, err = process.communicate(timeout=timeout)
                results.append(Finished(process.pid, process.returncode, out, err))
        finally:
            self.kill_all()
        return results

    def kill_all(self) -> None:
        if getattr(self, "_go", None) is not None:
            os.close(self._go)
            self._go = None
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def json_lines(results: list[Finished]) -> list[dict]:
    return [json.loads(r.out.strip().splitlines()[-1]) for r in results]
