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


# Scripts of the store tests (Redis, Vault): the store comes from argv or QLAM_TOKEN_STORE.
# A child process that takes the refresh lock, says so, holds it for argv[3] seconds, releases it.
STORE_HOLDER = r"""
import sys, time
from qlam_hpc._cache import Identity
from qlam_hpc._stores import store_from_url
store = store_from_url(sys.argv[1], lease=float(sys.argv[2]))
lock = store.try_lock(Identity(*sys.argv[4:7]))
print("locked" if lock is not None else "busy", flush=True)
if lock is not None:
    with lock:
        time.sleep(float(sys.argv[3]))
    print("released", flush=True)
"""

# A job-array task on a node of its own: its own empty cache directory, the store from
# QLAM_TOKEN_STORE, held at the crowd's barrier until all start together.
STORE_PROVIDER = r"""
import hashlib, json, os, sys, pathlib
barrier = pathlib.Path(sys.argv[1])
os.environ["QLAM_TOKEN_CACHE_DIR"] = os.path.join(sys.argv[2], str(os.getpid()))
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._stores import store_from_url
store = store_from_url(os.environ["QLAM_TOKEN_STORE"], lease=float(sys.argv[3]))
provider = TokenProvider(Settings.from_env(), store=store)
(barrier / f"ready-{os.getpid()}").touch()
os.close(os.open(barrier / "go", os.O_RDONLY))
result = provider.get()
# A digest, not the token: the tests compare tokens, and nothing needs to print one.
digest = hashlib.sha256(result.token.access_token.encode()).hexdigest()
print(json.dumps({"access_token": digest, "source": result.source}))
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
