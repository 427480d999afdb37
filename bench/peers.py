"""qlam-hpc against its peers, in one run on the sandbox (https, a throw-away CA): what the
identity provider sees (token requests; discovery and JWKS requests), wall time and time per
process, for N processes started together (cold cache, warm cache), N started 20 ms apart,
and 20 long-running processes with short-lived tokens.

Peers (``_peer_worker.py`` drives each as its documentation says):
  qlam-hpc library       TokenProvider via QlamClient, shared file cache, single flight
  qlam-hpc CLI           ``qlam-hpc api GET``, the same cache
  qlam-core              QuEra's SDK: refresh_credentials(ctx, "m2m") then TasksClient
  httpx-auth             OAuth2ClientCredentials with OAuth2.token_cache = JsonTokenFileCache
  requests-oauth2client  OAuth2ClientCredentialsAuth (a cache in memory)
  QLAM page recipe       the Python example of the QLAM page (a cache in memory)

Every process's clock starts after its imports (a start barrier), so the requests of N
processes really do race. Each process gets a token and lists tasks once.

    python bench/peers.py                    # N = 1, 10, 50, 200; long-running 20 x 60 s
    python bench/peers.py -n 1 10 50 --long 30 --peers "qlam-hpc library" qlam-core
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import table
from qlam_hpc.sandbox import Sandbox, _server
from qlam_hpc.sandbox._config import SandboxConfig

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "_peer_worker.py")
PEERS = ["qlam-hpc library", "qlam-hpc CLI", "qlam-core", "httpx-auth", "requests-oauth2client", "QLAM page recipe"]
SHARED_CACHE = {"qlam-hpc library", "qlam-hpc CLI", "qlam-core", "httpx-auth"}
COUNTED = {"/oauth/token": "token", "/.well-known/openid-configuration": "discovery", "/.well-known/jwks.json": "jwks"}
counts: dict[str, int] = {}


class _Counter:
    """ASGI middleware: identity-provider requests by kind (the sandbox counts only tokens)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        kind = COUNTED.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
        await self.app(scope, receive, send)


def _counting_app(original):
    def create_app(*args, **kwargs):
        app = original(*args, **kwargs)
        app.add_middleware(_Counter)
        return app

    return create_app


def qsh_config(directory: Path, env: dict[str, str]) -> None:
    """qlam-core's M2M client, in ``$QSH_CONFIG_DIR/config.json`` as its docs show it."""
    directory.mkdir(parents=True, exist_ok=True)
    provider = {
        "name": "m2m",
        "provider": "oauth",
        "auth_base_url": env["AUTH_BASE_URL"],
        "client_id": env["QLAM_CLIENT_ID"],
        "client_secret": "env:QLAM_CLIENT_SECRET",
        "grant_type": "client_credentials",
        "audience": env["QLAM_AUDIENCE"],
    }
    defaults = {"api_base_url": env["QLAM_API_URL"], "qpu_mode": "squin-256q", "auth_provider": "m2m"}
    config = {
        "current_context": "sandbox",
        "contexts": [{"name": "sandbox", "qpu": "sandbox", "defaults": defaults, "auth_providers": [provider]}],
    }
    (directory / "config.json").write_text(json.dumps(config))


def crowd(peer: str, n: int, env: dict[str, str], tmp: Path, *, stagger: float = 0.0, duration: float = 0.0) -> dict:
    """Start ``n`` workers, wait until all have imported, release them; what happened."""
    go = tmp / f"go-{time.monotonic_ns()}"
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, peer, str(go), str(i * stagger), str(duration)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(n)
    ]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            raise SystemExit(f"a {peer} worker failed to start")
    before = dict(counts)
    released = time.time()
    go.touch()
    reports = [json.loads(proc.stdout.readline()) for proc in procs]  # type: ignore[union-attr]
    for proc in procs:
        proc.wait()
    seen = {kind: counts.get(kind, 0) - before.get(kind, 0) for kind in ("token", "discovery", "jwks")}
    return {
        **seen,
        "wall": max(r["finished"] for r in reports) - released,
        "per_process": statistics.median(r["finished"] - r["started"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
    }


def fresh_env(base: dict[str, str], tmp: Path) -> dict[str, str]:
    cache = Path(tempfile.mkdtemp(dir=tmp))
    qsh_config(cache / "qsh", base)
    return {
        **base,
        "QLAM_TOKEN_CACHE_DIR": str(cache / "qlam-hpc"),
        "PEER_CACHE_DIR": str(cache),
        "QSH_CONFIG_DIR": str(cache / "qsh"),
        "HOME": str(cache),
    }


def cell(result: dict) -> str:
    extra = f" +{result['discovery']}d/{result['jwks']}k" if result["discovery"] or result["jwks"] else ""
    failed = f" ({result['errors']} failed)" if result["errors"] else ""
    return f"{result['token']}{extra}{failed}"


def times(result: dict) -> str:
    return f"{result['wall']:.2f} / {result['per_process'] * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, nargs="+", default=[1, 10, 50, 200], help="crowd sizes (default 1 10 50 200)")
    parser.add_argument("--long", type=float, default=60.0, help="seconds the 20 long-running processes run (0: skip)")
    parser.add_argument("--token-lifetime", type=int, default=20, help="token lifetime for the long run (s)")
    parser.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    args = parser.parse_args()

    _server.create_app = _counting_app(_server.create_app)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SSL_", "REQUESTS_CA"))}
    rows_tokens, rows_times = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with Sandbox(tls=True) as sandbox:
            env = {**base, **sandbox.env()}
            for peer in args.peers:
                line_tokens, line_times = [peer], [peer]
                for n in args.n:
                    cold_env = fresh_env(env, tmp)
                    cold = crowd(peer, n, cold_env, tmp)
                    warm = crowd(peer, n, cold_env, tmp)  # the same cache, now holding a token
                    apart = crowd(peer, n, fresh_env(env, tmp), tmp, stagger=0.02)
                    line_tokens.append(f"{cell(cold)} | {cell(warm)} | {cell(apart)}")
                    line_times.append(f"{times(cold)} | {times(warm)} | {times(apart)}")
                    print(f"{peer}, N={n}: cold {cold}, warm {warm}, 20 ms apart {apart}", file=sys.stderr, flush=True)
                rows_tokens.append(line_tokens)
                rows_times.append(line_times)
        long_rows = []
        if args.long > 0:
            config = SandboxConfig.default(token_lifetime=args.token_lifetime)
            with Sandbox(config, tls=True) as sandbox:
                env = {**base, **sandbox.env()}
                for peer in args.peers:
                    result = crowd(peer, 20, fresh_env(env, tmp), tmp, duration=args.long)
                    ideal = int(args.long // args.token_lifetime) + 1
                    long_rows.append([peer, cell(result), str(ideal), f"{result['per_process']:.1f}"])
                    print(f"{peer}, 20 long-running: {result}", file=sys.stderr, flush=True)
    heads = [f"N={n}: cold | warm | 20 ms apart" for n in args.n]
    print("token requests to the identity provider (+d discovery / k JWKS requests)")
    print(table(["peer", *heads], rows_tokens))
    print("\nwall time of the crowd (s) / median time per process")
    print(table(["peer", *heads], rows_times))
    if long_rows:
        print(f"\n20 processes for {args.long:g} s, one call a second, tokens living {args.token_lifetime} s")
        print(table(["peer", "token requests", "one process would need", "s per process"], long_rows))


if __name__ == "__main__":
    main()
