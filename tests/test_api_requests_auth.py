"""QlamRequestsAuth: the shared token for ``requests`` users, against the sandbox."""

from __future__ import annotations

import io
import json
import time

import pytest

requests = pytest.importorskip("requests")

from qlam_hpc import QlamRequestsAuth  # noqa: E402

DEFINITION = {
    "program_language": "squin",
    "programs": [{"content": "circuit ok"}],
    "subtasks": [{"program_index": 0, "num_shots": 3}],
}


@pytest.fixture
def session(provider):
    with requests.Session() as session:
        session.auth = QlamRequestsAuth(provider)
        yield session


def _tasks(sandbox) -> str:
    return sandbox.url + "/v2/squin-256q/tasks"


def test_requests_get_a_bearer_token(session, sandbox):
    """A plain requests call is authenticated with the shared token."""
    response = session.get(_tasks(sandbox), params={"size": 1})
    assert response.status_code == 200 and "elements" in response.json()
    assert response.request.headers["Authorization"].startswith("Bearer ey")


def test_a_revoked_token_is_refreshed_once_and_the_request_resent(session, sandbox):
    """401 for a revoked token: one new token, the POST is resent with its body, one task is created."""
    session.get(_tasks(sandbox))
    sandbox.set_faults(revoke_tokens_before=time.time())
    response = session.post(_tasks(sandbox), json=DEFINITION)
    assert response.status_code == 201, response.text
    assert len(response.history) == 1 and response.history[0].status_code == 401
    stats = sandbox.stats()
    assert (stats["token_requests"], stats["tasks_created"]) == (2, 1)


def test_a_file_body_is_rewound_for_the_retry(session, sandbox):
    """A body streamed from a file is sent again from its start after the 401."""
    session.get(_tasks(sandbox))
    sandbox.set_faults(revoke_tokens_before=time.time())
    body = io.BytesIO(json.dumps(DEFINITION).encode())
    response = session.post(_tasks(sandbox), data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text


def test_a_second_401_is_returned_not_retried(session, sandbox):
    """Two 401s in a row: one refresh and one retry, then the 401 is the caller's — never a loop."""
    session.get(_tasks(sandbox))
    before = sandbox.stats()
    sandbox.set_faults(api_script=[{"status": 401, "body": '{"messages": ["no"], "code": 1000}'}] * 3)
    response = session.get(_tasks(sandbox))
    assert response.status_code == 401
    after = sandbox.stats()
    assert after["api_requests"] - before["api_requests"] == 2
    assert after["token_requests"] - before["token_requests"] == 1
