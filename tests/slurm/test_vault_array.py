"""A job array on the local 3-node Slurm cluster whose nodes share no cache directory, only a
Vault path: QLAM_TOKEN_STORE=vault://..., against a real OpenBao server on loopback."""

from __future__ import annotations

import time

import pytest

from vault_service import start_bao

from .test_job_arrays import TASKS, _assert_no_secrets, _failures, _finished, _nodes, _submit

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.vault, pytest.mark.timeout(900)]

# The policy docs/hpc.md gives the jobs.
JOB_POLICY = """
path "secret/data/{path}/*" {{ capabilities = ["create", "read", "update"] }}
path "secret/metadata/{path}/*" {{ capabilities = ["delete"] }}
path "secret/metadata/{path}" {{ capabilities = ["list"] }}
"""


@pytest.fixture
def quick_tasks(sandbox):
    sandbox.set_faults(task_duration=1.0)
    return sandbox


@pytest.mark.leak_check_expect("credentials")  # the jobs' 0600 credentials file, as the docs say
def test_a_50_task_array_sharing_only_a_vault_path_makes_one_token_request(slurm, area, quick_tasks, tmp_path_factory):
    """examples/array-bash.sbatch, 50 tasks on 3 nodes, each node its own cache directory, the
    token shared through Vault with the docs' job policy: 1 token request, 1 ledger record,
    and neither the client secret, the Vault token nor the access token where Slurm keeps jobs."""
    sandbox = quick_tasks
    bao = start_bao(tmp_path_factory.mktemp("slurm-openbao"))
    try:
        path = "qlam-hpc/slurm-array"
        vault_token = bao.token(bao.policy(JOB_POLICY.format(path=path)))
        node_caches = area.root / "node-caches"
        area.write_credentials(
            QLAM_TOKEN_STORE=f"vault://secret/{path}",
            VAULT_ADDR=bao.url,
            VAULT_TOKEN=vault_token,
            QLAM_TOKEN_CACHE_DIR=f"{node_caches}/$SLURMD_NODENAME",
        )
        started = time.monotonic()
        job, scheduler_view = _submit(slurm, area, "array-bash.sbatch", f"--array=0-{TASKS - 1}")
        outputs = _finished(slurm, job, area, TASKS)
        took = time.monotonic() - started

        assert _failures(outputs, "results in ") == []
        assert sandbox.stats()["token_requests"] == 1
        nodes = _nodes(outputs)
        assert sorted(nodes) == ["node1", "node2", "node3"], nodes
        assert list(node_caches.rglob("*.entry")) == []  # nothing went through a file store
        entry = bao.read("secret", f"{path}/{area.identity().key()}/entry")["entry"]
        access_token = next(line for line in entry.splitlines() if line.startswith("access_token=")).partition("=")[2]
        ledger = bao.read("secret", f"{path}/ledger/{time.strftime('%Y-%m', time.gmtime())}")["requests"]
        assert len(ledger) == 1 and ledger[0]["outcome"] == "ok"
        _assert_no_secrets(
            {"the job output files": "\n".join(outputs), "slurmctld's job files": scheduler_view},
            [sandbox.client.client_secret, vault_token, access_token],
        )
        print(f"\n50-task array, 3 nodes, Vault store: {took:.1f}s submit to finish, nodes {nodes}, 1 token request")
    finally:
        bao.stop()
