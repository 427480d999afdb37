"""The first wave of a job array: N processes started at once on a cold cache (nothing
cached: one of them fetches, the others wait for its token) against the same N on a warm
cache, side by side in one run, interleaved, against an identity provider over https
with 150 ms of latency.

For each command and N: the median wall time of a wave (first start to last exit), the
ratio cold/warm, the token requests of a cold wave (1 expected), and the CPU time the
wave's processes spent (user + system, summed over them: what the waiters take from the
one that fetches on a busy node).

Targets (ratios in one run): 100 ``qlam-hpc api GET`` started together, cold wall at most
1.5x warm wall (aim 1.2x); the same at N = 200.

    python bench/first_wave.py [--rounds R] [--sizes 50,100,200] [--big] [--store file|redis|vault]

``--store`` shares the token through a Redis (a private redis-server) or a Vault KV path
(a private OpenBao) instead of the file cache: each cold wave gets an empty database or
path, and a first line compares one warm ``qlam-hpc token`` through that store with one
through the file cache (median wall and CPU of sequential runs).

``--big`` adds N = 1,000 (one round). The library runs at N = 50 only (``--library-sizes``):
each of its processes imports httpx, so its waves are long, cold or warm alike.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QLAM_HPC, clean_env, median, table
from qlam_hpc.sandbox import Sandbox

LIBRARY = """
import os, ssl, httpx
from qlam_hpc import TokenProvider
token = TokenProvider.from_env().get_token()
context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
answer = httpx.get(os.environ["QLAM_API_URL"] + "/v2/squin-256q/tasks",
                   headers={"Authorization": "Bearer " + token}, verify=context, timeout=120)
answer.raise_for_status()
"""

LIBRARY_NAME = "library (TokenProvider + httpx)"
COMMANDS = {
    "qlam-hpc api GET": [QLAM_HPC, "api", "GET", "/v2/squin-256q/tasks"],
    "qlam-hpc token": [QLAM_HPC, "token"],
    LIBRARY_NAME: [sys.executable, "-c", LIBRARY],
}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wave(command: list[str], count: int, env: dict[str, str]) -> tuple[float, float]:
    """Start ``count`` processes at once; (wall seconds until the last one ended, their CPU seconds)."""
    cpu = children_cpu()
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(count)
    ]
    failed = []
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            failed.append(err.decode(errors="replace").strip())
    took = time.perf_counter() - started
    if failed:
        raise SystemExit(f"{len(failed)} of {count} processes failed, e.g.: {failed[0]}")
    return took, children_cpu() - cpu


class Stores:
    """The environments of a warm store and of fresh, empty ones, for ``--store``."""

    def __init__(self, kind: str, scratch: Path) -> None:
        self.kind, self.scratch, self.server = kind, scratch, None
        self.fresh = iter(range(1, 1_000_000))
        if kind == "redis":
            from redis_service import start_redis

            self.server = start_redis(scratch / "redis")
        elif kind == "vault":
            from vault_service import start_bao

            self.server = start_bao(scratch / "openbao")

    def env(self, base: dict[str, str], cold: bool) -> dict[str, str]:
        """The warm store's environment, or (``cold``) that of a fresh, empty one."""
        n = next(self.fresh) if cold else 0
        env = {**base, "QLAM_TOKEN_CACHE_DIR": str(self.scratch / f"cache-{n}")}
        if self.kind == "redis":  # database 0 is the warm one; 1 is emptied for each cold wave
            url = self.server.url.replace("/0", "/1" if cold else "/0", 1)
            if cold:
                import redis

                redis.Redis.from_url(url, password=self.server.password).flushdb()
            return {**env, "QLAM_TOKEN_STORE": url, "REDIS_PASSWORD": self.server.password}
        if self.kind == "vault":
            return {**env, "QLAM_TOKEN_STORE": f"vault://secret/qlam-bench-{n}", **self.server.env()}
        return env

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def sequential(command: list[str], env: dict[str, str], runs: int = 15) -> tuple[float, float]:
    """Median wall and CPU seconds of ``runs`` runs of ``command``, one after the other."""
    walls, cpus = [], []
    for _ in range(runs):
        took, cpu = wave(command, 1, env)
        walls.append(took)
        cpus.append(cpu)
    return median(walls), median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="50,100,200")
    parser.add_argument("--big", action="store_true", help="add N = 1000 (one round)")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated names of the commands")
    parser.add_argument(
        "--library-sizes", default="50", help="the N the library runs at (its import of httpx makes big waves long)"
    )
    parser.add_argument("--store", choices=["file", "redis", "vault"], default="file", help="where the token is shared")
    options = parser.parse_args()
    sizes = [(int(n), options.rounds) for n in options.sizes.split(",")]
    if options.big:
        sizes.append((1000, 1))
    commands = {name: COMMANDS[name] for name in options.commands.split(",")}
    import compileall

    import qlam_hpc

    compileall.compile_dir(Path(qlam_hpc.__file__).parent, quiet=1)  # as pip installs it
    rows = []
    verdicts = []
    with Sandbox(tls=True) as sandbox, tempfile.TemporaryDirectory() as tmp:
        sandbox.set_faults(latency=0.15)
        stores = Stores(options.store, Path(tmp))
        base_env = clean_env(sandbox, Path(tmp) / "warm")
        warm_env = stores.env(base_env, cold=False)
        subprocess.run([QLAM_HPC, "token"], env=warm_env, stdout=subprocess.DEVNULL, check=True)
        if options.store != "file":
            subprocess.run([QLAM_HPC, "token"], env=base_env, stdout=subprocess.DEVNULL, check=True)
            store_wall, store_cpu = sequential(COMMANDS["qlam-hpc token"], warm_env)
            file_wall, file_cpu = sequential(COMMANDS["qlam-hpc token"], base_env)
            print(
                f"one warm qlam-hpc token, {options.store} store vs file cache: {1000 * store_wall:.0f} ms vs "
                f"{1000 * file_wall:.0f} ms wall ({store_wall / file_wall:.1f}x), {1000 * store_cpu:.0f} ms vs "
                f"{1000 * file_cpu:.0f} ms CPU",
                flush=True,
            )
        try:
            run_waves(sandbox, stores, base_env, warm_env, sizes, commands, options, rows, verdicts)
        finally:
            stores.stop()
    print(
        f"\nwaves started at once, https identity provider with 150 ms latency, {options.store} store, "
        f"medians of {options.rounds} rounds"
    )
    print(table(HEADERS, rows))
    for verdict in verdicts:
        print(verdict)


def run_waves(sandbox, stores, base_env, warm_env, sizes, commands, options, rows, verdicts) -> None:
    """Cold and warm waves, interleaved, for every size and command."""
    for count, rounds in sizes:
        for name, command in commands.items():
            if command is COMMANDS[LIBRARY_NAME] and str(count) not in options.library_sizes.split(","):
                continue
            cold, warm, cold_cpu, warm_cpu, requests = [], [], [], [], []
            for _ in range(rounds):
                cold_env = stores.env(base_env, cold=True)
                before = sandbox.stats()["token_requests"]
                took, cpu = wave(command, count, cold_env)
                requests.append(sandbox.stats()["token_requests"] - before)
                cold.append(took)
                cold_cpu.append(cpu)
                took, cpu = wave(command, count, warm_env)
                warm.append(took)
                warm_cpu.append(cpu)
            ratio = median(cold) / median(warm)
            rows.append(
                [
                    name,
                    count,
                    f"{median(cold):.2f}",
                    f"{median(warm):.2f}",
                    f"{ratio:.2f}x",
                    max(requests),
                    f"{median(cold_cpu):.1f}",
                    f"{median(warm_cpu):.1f}",
                ]
            )
            print(table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
            if name == "qlam-hpc api GET" and count in (100, 200):
                verdicts.append(
                    f"target: {count} api GET started together, cold <= 1.5x warm (aim 1.2x): "
                    f"{ratio:.2f}x, {'met' if ratio <= 1.5 else 'MISSED'}"
                )


HEADERS = ["command", "N", "cold s", "warm s", "cold/warm", "token requests", "cold CPU s", "warm CPU s"]

if __name__ == "__main__":
    main()
