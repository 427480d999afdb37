"""The three token stores side by side, in one run: files, Redis, Vault (OpenBao).

For each store, against the sandbox on loopback:

* read per call: one ``store.load()`` of a warm entry in this process (median of 300):
  what a process pays once before it keeps the token in memory, and what a waiting
  process pays at each poll;
* warm ``get_token()``: the in-memory path, the same for every store (it touches none);
* warm ``qlam-hpc token``: one whole command, process start included (median of 15);
* cold, N processes: ``qlam-hpc token`` started together on an empty store (IdP latency
  0.2 s), wall time from their release to the last exit, and the token requests the
  identity provider saw (target: 1).

Redis and OpenBao are started on free loopback ports by scripts/redis-server.sh and
scripts/openbao-server.sh and stopped afterwards; a store whose server cannot be
started is left out with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from _common import QLAM_HPC, clean_env, median, table
from crowd import Crowd
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._cache import Identity
from qlam_hpc._stores import open_store
from qlam_hpc.sandbox import Sandbox, SandboxConfig

VAULT_VARIABLES = ("VAULT_", "BAO_", "REDIS_PASSWORD", "QLAM_REDIS_PASSWORD")


def _with_environ(env: dict[str, str]):
    """``open_store`` reads Vault's variables from os.environ, as a job's process does."""

    class Swap:
        def __enter__(self):
            self.saved = dict(os.environ)
            os.environ.clear()
            os.environ.update(env)

        def __exit__(self, *exc):
            os.environ.clear()
            os.environ.update(self.saved)

    return Swap()


def measure(sandbox, name: str, env: dict[str, str], count: int, scratch: Path) -> list:
    # Cold: a crowd on an empty store.
    sandbox.reset()
    sandbox.set_faults(latency=0.2)
    crowd = Crowd(scratch / "cold", count, ["token"], env)
    crowd.wait_ready(timeout=900)
    started = time.monotonic()
    crowd.release()
    results = crowd.finish(timeout=900)
    cold = time.monotonic() - started
    failed = sum(r.code != 0 for r in results)
    requests = sandbox.stats()["token_requests"]
    if failed:
        print(
            f"  {name}: {failed} processes failed, e.g. {next(r.err for r in results if r.code)[:200]}", file=sys.stderr
        )
    sandbox.set_faults(latency=0.0)

    # Warm reads in this process.
    with _with_environ(env):
        settings = Settings.from_env()
        store = open_store(settings)
    identity = Identity.of(settings)
    store.load(identity)  # connect and log in first
    timer = timeit.Timer(lambda: store.load(identity))
    read = median([timer.timeit(1) for _ in range(300)])
    provider = TokenProvider(settings, store=store)
    provider.get_token()
    loops = 200_000
    memory = min(timeit.repeat(provider.get_token, number=loops, repeat=5)) / loops

    # Warm CLI: a whole process per call.
    cli = []
    for _ in range(15):
        started = time.perf_counter()
        done = subprocess.run([QLAM_HPC, "token"], env=env, capture_output=True, timeout=60)
        cli.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr
    return [name, _us(read), _us(memory), f"{median(cli) * 1000:.0f} ms", f"{cold:.1f} s", requests, failed]


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1000:.2f} ms"


def main(count: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    rows = []
    with Sandbox(SandboxConfig.default()) as sandbox, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = {k: v for k, v in clean_env(sandbox, root / "cache").items() if not k.startswith(VAULT_VARIABLES)}

        rows.append(
            measure(sandbox, "file", {**base, "QLAM_TOKEN_CACHE_DIR": str(root / "file-cache")}, count, root / "file")
        )
        print("  file done", file=sys.stderr)

        redis = None
        try:
            from redis_service import RedisServer, free_port

            redis = RedisServer(free_port(), root / "redis", False)
            redis.directory.mkdir()
            redis.start()
            env = {
                **base,
                "QLAM_TOKEN_STORE": redis.url,
                "REDIS_PASSWORD": redis.password,
                "QLAM_TOKEN_CACHE_DIR": str(root / "redis-cache"),
            }
            rows.append(measure(sandbox, "Redis", env, count, root / "redis-run"))
            print("  Redis done", file=sys.stderr)
        except BaseException as error:  # pytest.skip inside the service helper, or a failure
            rows.append(["Redis", f"left out: {error}", "", "", "", "", ""])
        finally:
            if redis is not None:
                redis.stop()

        bao = None
        try:
            from vault_service import start_bao

            bao = start_bao(root / "openbao")
            env = {
                **base,
                **bao.env(),
                "QLAM_TOKEN_STORE": "vault://secret/qlam-hpc/bench",
                "QLAM_TOKEN_CACHE_DIR": str(root / "vault-cache"),
            }
            rows.append(measure(sandbox, "Vault (OpenBao)", env, count, root / "vault-run"))
            print("  Vault done", file=sys.stderr)
        except BaseException as error:
            rows.append(["Vault (OpenBao)", f"left out: {error}", "", "", "", "", ""])
        finally:
            if bao is not None:
                bao.stop()

    print(
        f"the token stores side by side (loopback servers; cold: {count} `qlam-hpc token` processes, IdP latency 0.2 s)"
    )
    print(
        table(
            [
                "store",
                "read per call",
                "warm get_token()",
                "warm qlam-hpc token",
                f"cold, {count} processes",
                "token requests",
                "failed",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
