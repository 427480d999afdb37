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


# --- redirects: a token goes only where the caller sent it ----------------------------------


class _Recorder:
    """A real HTTP server on a loopback address; ``answer(path, headers)`` gives (status, headers)."""

    def __init__(self, host: str, answer) -> None:
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's spelling
                seen.append((self.path, self.headers.get("Authorization")))
                status, headers = answer(self.path, self.headers)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": "0"}.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    made = []

    def make(host, answer):
        made.append(_Recorder(host, answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_a_401_after_a_redirect_to_another_host_sends_it_no_token(session, sandbox, servers):
    """API 302 -> another host that answers 401: that host never sees a token (requests strips the
    header; the 401 must not make us fetch a fresh one and send it there), and no token is fetched."""
    other = servers("127.0.0.2", lambda path, headers: (401, {"WWW-Authenticate": "Bearer"}))
    api = servers("127.0.0.1", lambda path, headers: (302, {"Location": other.url + "/steal"}))
    response = session.get(api.url + "/v2/squin-256q/tasks")
    assert response.status_code == 401 and [r.status_code for r in response.history] == [302]
    assert other.seen == [("/steal", None)]
    assert api.seen[0][1].startswith("Bearer ey") and len(api.seen) == 1
    assert sandbox.stats()["token_requests"] == 1  # the first token only: no refresh for a foreign 401


def test_a_401_after_a_redirect_on_the_same_host_is_retried_once(session, sandbox, servers):
    """A same-host redirect keeps the token (requests does), so a 401 there is ours to refresh."""
    refused = []

    def answer(path, headers):
        if path == "/old":
            return 302, {"Location": "/new"}
        if not refused:
            refused.append(headers.get("Authorization"))
            return 401, {}
        return 200, {}

    api = servers("127.0.0.1", answer)
    response = session.get(api.url + "/old")
    assert response.status_code == 200
    assert [path for path, _ in api.seen] == ["/old", "/new", "/new"]
    assert api.seen[1][1] == refused[0] != api.seen[2][1] and api.seen[2][1].startswith("Bearer ey")
    assert sandbox.stats()["token_requests"] == 2
