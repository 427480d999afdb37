"""Rotation without downtime: a job array on the local Slurm runs while the client's
credential is replaced in its source and the old one revoked.

Each run is the 500-task array of examples/array-bash.sbatch (each task submits a QLAM
task, waits for it and fetches its results, through the shared file cache) against the
sandbox, whose tokens live LIFETIME seconds, so the array needs a new token every
LIFETIME - margin seconds: before, during and after the rotation. While the array runs,
the benchmark rotates the credential in the order docs/credentials.md's runbook gives:

    register  the new secret or key is registered beside the old one at the IdP
    switch    the source is switched: the file replaced (write, then rename over it),
              or a new version of the Vault secret written
    revoke    the old secret or key is removed at the IdP

Runs: a control (a secret in a file, nothing rotated), then a secret and a private key
(made with `qlam-hpc credentials keygen`, no `kid` pinned), each in a file and in Vault
(a real OpenBao server), on the runbook's schedule (20 s to check between switching and
revoking). Each qlam-hpc process reads a Vault credential once, when it starts, and lives
a few seconds, so on that schedule no process still holds the old one at the revocation.
The hasty run revokes one second after the switch, just before the token's renewal, while
processes that read the old secret are still polling their tasks: the case where the one
that renews is refused (invalid_client), reads Vault again and retries. Reported: failed
tasks, token requests, refused requests, the requests made after the revocation (all
must be accepted in the end) and the extra requests against the control. The target:
0 failed tasks, at most 2 extra requests. A rotation step that fails stops the benchmark.

    python bench/slurm_rotation.py [--tasks 500] [--throttle 40]     (needs root or a
                                    running scripts/local-slurm.sh cluster, and OpenBao)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import QLAM_HPC, table
from slurm_array import EXAMPLE, IDP_LATENCY, queued, slurm_env, start_slurm, submit_array, write_credentials

LIFETIME = 40  # seconds a token lives: margin 10 s, so a new token about every 30 s
TASK_DURATION = 5.0  # seconds each emulated QPU task runs
# Seconds after the array is submitted: register, switch the source, revoke. The runbook's
# order, with time to check between switching and revoking; the hasty schedule revokes one
# second after the switch, just before the token's first renewal (at about 31 s), while
# processes that read the old credential when they started are still polling their tasks.
RUNBOOK = (15.0, 25.0, 45.0)
HASTY = (15.0, 29.0, 30.0)
VAULT_MOUNT = "secret"


class Client:
    """The sandbox's client as its administrator sees it: the IdP's control route."""

    def __init__(self, sandbox) -> None:
        self.sandbox = sandbox

    def update(self, **change) -> None:
        import httpx

        body = {"client_id": self.sandbox.client.client_id, **change}
        url = f"{self.sandbox.url}/_sandbox/clients"
        # A generous timeout: the sandbox also serves every task of the array meanwhile.
        httpx.post(url, headers=self.sandbox.control_headers(), json=body, timeout=60).raise_for_status()


class Source:
    """Where the jobs read the credential: a 0600 file or a Vault KV v2 secret."""

    def __init__(self, kind: str, where: Path, vault) -> None:
        self.kind, self.where, self.vault = kind, where, vault

    def write(self, value: str) -> None:
        if self.kind == "file":
            staged = self.where.with_suffix(".new")
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(value)
            os.replace(staged, self.where)  # a task reads the old file or the new one, never half of one
        else:
            import hvac  # with a longer timeout than the test helper's: the machine is busy with the array

            client = hvac.Client(url=self.vault.url, token=self.vault.root_token, timeout=60)
            client.secrets.kv.v2.create_or_update_secret(
                path=f"qlam-bench/{self.where.name}", secret={"value": value}, mount_point=VAULT_MOUNT
            )

    @property
    def reference(self) -> str:
        return (
            f"file:{self.where}" if self.kind == "file" else f"vault://{VAULT_MOUNT}/qlam-bench/{self.where.name}#value"
        )


class Credential:
    """A secret or a key pair: the value the jobs use, and what the IdP registers."""

    def __init__(self, kind: str, scratch: Path, name: str) -> None:
        self.kind = kind
        if kind == "secret":
            self.value = secrets.token_urlsafe(32)
            self.jwk = None
        else:
            prefix = scratch / name
            subprocess.run([QLAM_HPC, "credentials", "keygen", "--out", str(prefix)], check=True, capture_output=True)
            self.value = Path(f"{prefix}.key.pem").read_text()
            self.jwk = json.loads(Path(f"{prefix}.jwks.json").read_text())["keys"][0]


def registered(*credentials: Credential) -> dict:
    """The IdP's change that makes exactly these credentials valid (one or two at a time)."""
    if credentials[0].kind == "secret":
        if len(credentials) == 1:
            return {"client_secret": credentials[0].value, "revoke_previous": True}
        return {"client_secret": credentials[1].value, "keep_previous": True}
    return {"jwks": {"keys": [c.jwk for c in credentials]}}


def run(sandbox, vault, scratch: Path, name: str, tasks: int, throttle: int, rotate: tuple | None) -> dict:
    """One array; with ``rotate = (credential kind, source kind, schedule)``, the rotation runs alongside."""
    work = scratch / name.replace(" ", "-").replace(",", "")
    for directory in ("out", "results"):
        (work / directory).mkdir(parents=True)
    kind, source_kind, schedule = rotate or ("secret", "file", RUNBOOK)
    client = Client(sandbox)
    old, new = Credential(kind, work, "old"), Credential(kind, work, "new")
    source = Source(source_kind, work / "credential", vault)
    client.update(**registered(old))
    source.write(old.value)
    lines = {"QLAM_TOKEN_CACHE_DIR": str(work / "cache")}
    if kind == "secret":
        lines["QLAM_CLIENT_SECRET"] = source.reference
    else:
        lines.update(
            QLAM_CLIENT_SECRET="", QLAM_CLIENT_PRIVATE_KEY=source.reference, QLAM_CLIENT_AUTH_METHOD="private_key_jwt"
        )
    if source_kind == "vault":
        lines.update(vault.env())
    write_credentials(work / "credentials", sandbox, lines)
    sandbox.reset()
    sandbox.set_faults(latency=IDP_LATENCY, task_duration=TASK_DURATION)

    seen: dict[str, int] = {}
    actions = {
        "register": lambda: client.update(**registered(old, new)),
        "switch": lambda: source.write(new.value),
        "revoke": lambda: client.update(**registered(new)),
    }
    failures: list[BaseException] = []

    def rotation(started: float) -> None:
        step = "start"
        try:
            for at, (step, action) in zip(schedule, actions.items(), strict=True):
                time.sleep(max(0.0, started + at - time.monotonic()))
                action()
                seen[step] = sandbox.stats()["token_requests"]
        except BaseException as exc:  # said after the array: a rotation that failed measures nothing
            failures.append(RuntimeError(f"{step}: {type(exc).__name__}: {exc}"))

    env = slurm_env({"QLAM_CREDENTIALS": str(work / "credentials"), "QLAM_RESULTS_DIR": str(work / "results")})
    started = time.monotonic()
    job = submit_array(EXAMPLE, f"0-{tasks - 1}%{throttle}", f"{work}/out/%A_%a.out", env)
    rotator = threading.Thread(target=rotation, args=(started,), daemon=True)
    if rotate is not None:
        rotator.start()
    while queued(job, env):
        time.sleep(0.25)
    wall = time.monotonic() - started
    if rotate is not None:
        rotator.join()
        if failures or "revoke" not in seen:
            raise SystemExit(f"{name}: the rotation did not complete: {failures[0] if failures else 'array too short'}")
    stats = sandbox.stats()
    completed = sum("results in " in p.read_text() for p in (work / "out").iterdir())
    return {
        "failed": tasks - completed,
        "requests": stats["token_requests"],
        "refused": sum(stats["token_errors"].values()),
        "after_revoke": stats["token_requests"] - seen["revoke"] if "revoke" in seen else None,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--throttle", type=int, default=40, help="array tasks running at once (sbatch --array=...%%N)")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from qlam_hpc.sandbox import Sandbox, SandboxConfig
    from vault_service import start_bao

    start_slurm()
    variants = [
        ("control: secret in a file, no rotation", None),
        ("secret, file", ("secret", "file", RUNBOOK)),
        ("secret, Vault", ("secret", "vault", RUNBOOK)),
        ("private key, file", ("key", "file", RUNBOOK)),
        ("private key, Vault", ("key", "vault", RUNBOOK)),
        ("secret, Vault, hasty revocation", ("secret", "vault", HASTY)),
    ]
    rows = []
    with (
        Sandbox(SandboxConfig.default(token_lifetime=LIFETIME)) as sandbox,
        tempfile.TemporaryDirectory(prefix="qlam-rotation-") as tmp,
    ):
        scratch = Path(tmp)
        vault = start_bao(scratch / "openbao")
        try:
            control = None
            for name, rotate in variants:
                print(f"  running the {args.tasks}-task array, {name} ...", file=sys.stderr, flush=True)
                result = run(sandbox, vault, scratch, name, args.tasks, args.throttle, rotate)
                control = control if control is not None else result["requests"]
                after = result["after_revoke"]
                rows.append(
                    [
                        name,
                        result["failed"],
                        result["requests"],
                        result["refused"],
                        "-" if after is None else after,
                        "-" if rotate is None else result["requests"] - control,
                        f"{result['wall']:.0f}",
                    ]
                )
        finally:
            vault.stop()
    print(
        f"{args.tasks}-task array of examples/array-bash.sbatch, {args.throttle} at a time, on the local Slurm; "
        f"tokens live {LIFETIME} s; register the new credential, switch the source and revoke the old one at "
        f"{'/'.join(f'{t:g}' for t in RUNBOOK)} s (hasty: {'/'.join(f'{t:g}' for t in HASTY)} s)"
    )
    headers = ["run", "failed tasks", "token requests", "refused", "after revoke", "extra", "submit to end s"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
