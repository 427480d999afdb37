"""Schemathesis fuzzes every tasks operation of the sandbox's /openapi.json with a valid token.

Property: whatever it sends, no answer is a 5xx, and every answer matches the
document (documented status code and content type, body valid against the schema).
Bounded by ``max_examples`` per operation so it stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from qlam_hpc.sandbox import Sandbox, SandboxConfig

from .conftest import ALICE, fetch_token

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_target(key_file: Path) -> Iterator[tuple[Sandbox, str]]:
    """A sandbox whose tasks complete at once (so results are reachable) and a token for it."""
    config = SandboxConfig(clients=(ALICE,), signing_key_file=key_file, task_duration=0)
    with Sandbox(config) as sandbox, httpx.Client() as http:
        yield sandbox, fetch_token(http, sandbox)


@pytest.fixture(scope="module")
def api_schema(fuzz_target: tuple[Sandbox, str]) -> schemathesis.BaseSchema:
    sandbox, _ = fuzz_target
    return schemathesis.openapi.from_url(sandbox.url + "/openapi.json")


OPERATIONS = [
    ("POST", "/v2/{qpu_mode}/tasks"),
    ("GET", "/v2/{qpu_mode}/tasks"),
    ("GET", "/v2/{qpu_mode}/tasks/{task_id}"),
    ("PUT", "/v2/{qpu_mode}/tasks/{task_id}/cancel"),
    ("DELETE", "/v2/{qpu_mode}/tasks/{task_id}"),
    ("GET", "/v2/{qpu_mode}/tasks/{task_id}/results"),
]


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    """The fuzz targets below are exactly the operations the document describes."""
    described = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert described == set(OPERATIONS)


# Schemathesis's own pytest integration (schema.parametrize with from_fixture) cannot
# be used: it reads a pytest-internal attribute that pytest 9 no longer has.  Driving
# Hypothesis with each operation's strategy is the documented alternative.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_never_get_a_server_error(
    api_schema: schemathesis.BaseSchema,
    fuzz_target: tuple[Sandbox, str],
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    """No generated request, valid or not, gets a 5xx or an answer the document does not describe."""
    _fuzz(api_schema[path][method].as_strategy(generation_mode=mode), fuzz_target)


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if "{task_id}" in op[1]], ids=str)
def test_generated_requests_on_a_real_task(
    api_schema: schemathesis.BaseSchema, fuzz_target: tuple[Sandbox, str], method: str, path: str
) -> None:
    """The same for requests naming an existing, completed task (random ids only ever find nothing)."""
    sandbox, token = fuzz_target
    with httpx.Client() as http:
        created = http.post(
            f"{sandbox.url}/v2/squin-256q/tasks",
            headers={"Authorization": f"Bearer {token}"},
            json={"program_language": "squin", "programs": [{"content": "x"}],
                  "subtasks": [{"program_index": 0, "num_shots": 150, "arguments": {"theta": 0.5}}]},
        )  # fmt: skip
    task_id = created.json()["id"]
    strategy = api_schema[path][method].as_strategy(path_parameters={"qpu_mode": "squin-256q", "task_id": task_id})
    _fuzz(strategy, fuzz_target)


def _fuzz(strategy: SearchStrategy[schemathesis.Case], fuzz_target: tuple[Sandbox, str]) -> None:
    sandbox, token = fuzz_target

    @given(case=strategy)
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=sandbox.url, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

    run()
