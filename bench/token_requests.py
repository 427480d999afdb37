"""Token requests the identity provider sees when N processes start together.

For N = 1, 10, 100, 500: a cold cache, then a warm one, then (the baseline)
the same crowd with the cache off, each process fetching its own token.
Target: 1 request cold and 0 warm, for every N.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from _common import clean_env, table
from crowd import Crowd
from qlam_hpc.sandbox import Sandbox, SandboxConfig


def crowd_run(sandbox, env: dict, count: int, scratch: Path) -> tuple[int, int, float]:
    sandbox.reset()
    sandbox.set_faults(latency=0.2)
    crowd = Crowd(scratch, count, ["token"], env)
    crowd.wait_ready(timeout=600)
    started = time.monotonic()
    crowd.release()
    results = crowd.finish(timeout=600)
    wall = time.monotonic() - started
    failures = sum(1 for r in results if r.code != 0)
    return sandbox.stats()["token_requests"], failures, wall


def main(sizes: list[int]) -> None:
    rows = []
    with Sandbox(SandboxConfig.default()) as sandbox, tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            scratch = Path(tmp) / str(n)
            env = clean_env(sandbox, scratch / "cache")
            cold = crowd_run(sandbox, env, n, scratch / "cold")
            warm = crowd_run(sandbox, env, n, scratch / "warm")
            off = crowd_run(sandbox, {**env, "QLAM_TOKEN_CACHE": "off"}, n, scratch / "off")
            rows.append(
                [
                    n,
                    cold[0],
                    warm[0],
                    off[0],
                    f"{cold[2]:.2f}",
                    f"{warm[2]:.2f}",
                    f"{off[2]:.2f}",
                    cold[1] + warm[1] + off[1],
                ]
            )
            print(f"  N={n} done", file=sys.stderr)
    print("token requests seen by the identity provider (processes started together, IdP latency 0.2 s)")
    print(
        table(
            ["N", "cold", "warm", "cache off", "cold s", "warm s", "off s", "failed"],
            rows,
        )
    )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1, 10, 100, 500])
