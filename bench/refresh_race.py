"""A user's rotating refresh token, N processes and an expired access token.

For N = 10, 50, 200: a user logs in once (device flow, approved at once), the access
token expires, then N processes are released together, each needing a token. Refresh
tokens rotate with no overlap period, as on Auth0 by default: every refresh spends the
refresh token it sends, and a spent one sent again revokes the whole login. Side by side:

- qlam-hpc: each process runs `qlam-hpc token` (the shared cache, single-flight refresh);
- the naive pattern of QuEra's guide, the one QLAM Core's refresh_credentials follows:
  each process reads the stored tokens from a JSON file, and if the access token has
  expired, POSTs grant_type=refresh_token to the token endpoint and writes the answer
  back with an atomic rename; no lock.

"login after" is what one more refresh with the stored refresh token says once the crowd
has finished: alive, or lost (the user must log in again, and every later job fails).
Target for qlam-hpc: 1 refresh request, no reuse, N successes, the login alive, for every N.

    python bench/refresh_race.py [N ...]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _common import table
from crowd import Crowd
from qlam_hpc import QlamError, Settings, TokenProvider
from qlam_hpc._http import poll_device_login, start_device_login
from qlam_hpc._login import login
from qlam_hpc.sandbox import Sandbox, SandboxConfig

IDP_LATENCY = 0.2  # seconds per token request, as in the other benchmarks

# The naive job: argv is barrier-dir, the JSON file, the token endpoint, the client id.
NAIVE = r"""
import json, os, sys, time, pathlib
barrier, stored = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
token_url, client_id = sys.argv[3], sys.argv[4]
import httpx
(barrier / f"ready-{os.getpid()}").touch()
os.close(os.open(barrier / "go", os.O_RDONLY))
saved = json.loads(stored.read_text())
if time.time() < saved["expires_at"] - 30:
    sys.exit(0)  # the access token is still good
answer = httpx.post(
    token_url,
    data={"grant_type": "refresh_token", "client_id": client_id, "refresh_token": saved["refresh_token"]},
    timeout=30,
)
if answer.status_code != 200:
    sys.exit(f"refresh refused: {answer.json().get('error')}")
body = answer.json()
saved = {
    "access_token": body["access_token"],
    "refresh_token": body.get("refresh_token") or saved["refresh_token"],
    "expires_at": time.time() + body["expires_in"],
}
temporary = stored.with_name(f"{stored.name}.{os.getpid()}")
temporary.write_text(json.dumps(saved))
os.replace(temporary, stored)
"""


def user_env(sandbox, cache_dir: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_"))}
    return {**base, **sandbox.env(flow="device"), "QLAM_TOKEN_CACHE_DIR": str(cache_dir)}


def log_in_qlam_hpc(env: dict[str, str]) -> None:
    login(TokenProvider(Settings.from_env(env)), on_code=lambda authorization: None)


def log_in_naive(env: dict[str, str], stored: Path) -> None:
    """The device flow, its answer saved as the guide saves it: a JSON file."""
    settings = Settings.from_env(env)
    tokens = poll_device_login(settings, start_device_login(settings))
    saved = {
        "access_token": tokens.token.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_at": tokens.token.expires_at,
    }
    fd = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(saved, file)


def login_alive_qlam_hpc(env: dict[str, str]) -> bool:
    try:
        TokenProvider(Settings.from_env(env)).check()  # one refresh with the stored refresh token
    except QlamError:
        return False
    return True


def login_alive_naive(sandbox, stored: Path) -> bool:
    saved = json.loads(stored.read_text())
    data = {"grant_type": "refresh_token", "client_id": sandbox.env(flow="device")["QLAM_CLIENT_ID"]}
    return httpx.post(sandbox.token_url, data={**data, "refresh_token": saved["refresh_token"]}).status_code == 200


def race(sandbox, pattern: str, count: int, scratch: Path) -> dict:
    """Log in, let the access token expire, release ``count`` processes together."""
    env = user_env(sandbox, scratch / "cache")
    stored = scratch / "tokens.json"
    if pattern == "qlam-hpc":
        crowd = Crowd(scratch, count, ["token"], env)
    else:
        client_id = env["QLAM_CLIENT_ID"]
        crowd = Crowd(scratch, count, [str(stored), sandbox.token_url, client_id], env, script=NAIVE)
    crowd.wait_ready(timeout=600)
    sandbox.reset()
    sandbox.set_faults(auto_approve=True, refresh_token_overlap=0, token_lifetime=2)
    log_in_qlam_hpc(env) if pattern == "qlam-hpc" else log_in_naive(env, stored)
    sandbox.set_faults(token_lifetime=86400, latency=IDP_LATENCY)
    time.sleep(1.7)  # a 2 s token's refresh margin is 0.5 s: expired for qlam-hpc and the naive jobs alike
    started = time.monotonic()
    crowd.release()
    results = crowd.finish(timeout=600)
    wall = time.monotonic() - started
    stats = sandbox.stats()
    sandbox.set_faults(latency=0)
    alive = login_alive_qlam_hpc(env) if pattern == "qlam-hpc" else login_alive_naive(sandbox, stored)
    return {
        "requests": stats["refresh_requests"],
        "reuse": stats["reuse_detections"],
        "revoked": stats["families_revoked"],
        "successes": sum(1 for r in results if r.code == 0),
        "alive": alive,
        "wall": wall,
    }


def main(sizes: list[int]) -> None:
    rows = []
    config = SandboxConfig.default(device_poll_interval=1)
    with Sandbox(config) as sandbox, tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for pattern in ("qlam-hpc", "naive"):
                result = race(sandbox, pattern, n, Path(tmp) / f"{pattern}-{n}")
                rows.append(
                    [
                        n,
                        pattern,
                        result["requests"],
                        result["reuse"],
                        result["revoked"],
                        f"{result['successes']}/{n}",
                        "alive" if result["alive"] else "lost",
                        f"{result['wall']:.2f}",
                    ]
                )
                print(f"  N={n} {pattern} done", file=sys.stderr)
    print(
        "N processes released together after the user's access token expired; refresh tokens rotate, "
        f"overlap 0; IdP latency {IDP_LATENCY:g} s"
    )
    print(
        table(
            [
                "N",
                "pattern",
                "refresh requests",
                "reuse detections",
                "families revoked",
                "succeeded",
                "login after",
                "wall s",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10, 50, 200])
