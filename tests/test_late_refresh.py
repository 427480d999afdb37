"""A refresh cut short whose request reaches the identity provider late, after a takeover.

A refresher is killed (SIGKILL) while its refresh request is still on its way: a proxy
between the processes and the sandbox keeps that request's bytes and forwards them only
after another process has taken over and refreshed, as a slow network path or a
retransmitting middlebox would. The sandbox rotates with no overlap period (Auth0's
default), so the late request is a reuse: it revokes the whole login, including the
refresh token the takeover published. Nobody can see that at once; the takeover marks the
entry to be checked again once the dead refresher's deadline (QLAM_RETRY_DEADLINE) plus a
slack has passed. Until then processes use the (still valid) access token; after it, one
process refreshes, is refused and says why in one line (exit 16), and every later one
stops at once, without asking the identity provider.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FAST_RETRY, QLAM_HPC, Run, run_cli
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._login import login
from qlam_hpc.sandbox import Sandbox

pytestmark = pytest.mark.timeout(120)

DEADLINE = 3  # QLAM_RETRY_DEADLINE: the late check comes DEADLINE + 10 s after the killed refresh


def _read_message(sock: socket.socket, data: bytes = b"") -> tuple[bytes, bytes]:
    """One HTTP/1.1 message (head and Content-Length body) from ``sock``; it and what follows."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole message")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    length = int(found.group(1)) if found else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole body")
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


class HoldingProxy:
    """A TCP proxy in front of the sandbox. Once armed, the next refresh request is kept:
    its bytes are not sent on until ``release()``, which sends them on a new connection and
    returns the sandbox's answer. Everything else is passed through as it comes."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.armed = threading.Event()
        self.holding = threading.Event()
        self.held = b""
        self._sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self._sockets.append(client)
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            request, rest = _read_message(client)
            if self.armed.is_set() and b"grant_type=refresh_token" in request:
                self.armed.clear()
                self.held = request + rest
                self.holding.set()
                return  # the client waits for an answer that never comes
            upstream = socket.create_connection(self.upstream)
            self._sockets.append(upstream)
            upstream.sendall(request + rest)
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
            self._pipe(client, upstream)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)

    def release(self) -> bytes:
        """Send the kept request now; the sandbox's answer."""
        with socket.create_connection(self.upstream, timeout=30) as upstream:
            upstream.sendall(self.held)
            answer, _ = _read_message(upstream)
        return answer

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def sandbox(user_sandbox):
    return user_sandbox


@pytest.fixture
def proxy(sandbox) -> Iterator[HoldingProxy]:
    proxy = HoldingProxy(sandbox.url)
    yield proxy
    proxy.close()


@pytest.fixture
def env(user_env, proxy) -> dict[str, str]:
    """Every process reaches the identity provider through the proxy; a short refresh deadline."""
    return {**user_env, "AUTH_BASE_URL": proxy.url, "QLAM_RETRY_DEADLINE": str(DEADLINE)}


def _counters(sandbox: Sandbox) -> tuple[int, int, int, int]:
    stats = sandbox.stats()
    return stats["refresh_requests"], stats["refreshes"], stats["reuse_detections"], stats["families_revoked"]


def _entry_field(cache_dir: Path, name: str) -> str | None:
    (entry,) = cache_dir.glob("*.entry")
    for line in entry.read_text().splitlines():
        if line.startswith(name + "="):
            return line.partition("=")[2]
    return None


# The full CLI, as `qlam-hpc token` runs it when its light path (which reads the file cache
# with the standard library only) hands the decision to the provider, and as the library does.
FULL_CLI = (
    "import sys\n"
    "from qlam_hpc import _log\n"
    "from qlam_hpc._cli._app import run\n"
    "from qlam_hpc._cli._output import configure_logging\n"
    "_log.before_first_message = configure_logging\n"
    "sys.exit(run(sys.argv[1:]))\n"
)


def _full_cli(env: dict[str, str], *args: str) -> Run:
    done = subprocess.run(
        [sys.executable, "-c", FULL_CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def _taken_over(sandbox: Sandbox, env: dict[str, str], proxy: HoldingProxy, cache_dir: Path) -> tuple[Run, float]:
    """Log in, let the access token expire, start a refresher whose request the proxy keeps,
    SIGKILL it, and let the next process take over; that process's run and confirm_after."""
    sandbox.set_faults(token_lifetime=2)
    login(TokenProvider(Settings.from_env(env).with_(retry=FAST_RETRY)), on_code=lambda authorization: None)
    sandbox.set_faults(token_lifetime=86400)
    time.sleep(1.7)  # a 2 s token's margin is 0.5 s: the next process refreshes

    proxy.armed.set()
    victim = subprocess.Popen([QLAM_HPC, "token"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proxy.holding.wait(20), "the refresh request never reached the proxy"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert _counters(sandbox) == (0, 0, 0, 0)  # the sandbox has seen nothing yet
    killed_at = time.time()

    takeover = run_cli("token", env=env)
    assert takeover.code == 0, takeover.err
    assert takeover.err.count("\n") == 1, takeover.err
    assert "did not finish (killed?)" in takeover.err and "checked once more after" in takeover.err
    assert _counters(sandbox) == (1, 1, 0, 0)
    confirm_after = float(_entry_field(cache_dir, "confirm_after") or 0)
    assert killed_at - 5 < confirm_after - DEADLINE - 10 <= killed_at  # the intent's time + deadline + slack
    return takeover, confirm_after


def _late_request(sandbox: Sandbox, proxy: HoldingProxy) -> None:
    late = proxy.release()  # the killed process's request, after the takeover's
    assert late.startswith(b"HTTP/1.1 403") and b"invalid_grant" in late, late[:200]
    assert _counters(sandbox) == (2, 1, 1, 1)  # reuse: the whole login is revoked


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()) + 0.2)


def test_a_late_request_after_a_takeover_is_found_at_the_check_and_stops_every_process(sandbox, env, proxy, cache_dir):
    """Killed refresher, takeover refresh succeeds, the killed one's request arrives late and
    revokes the login. Before confirm_after: the takeover's token is used. After it: one
    refresh, refused, exit 16 with one line naming the late refresh; then exit 16 at once for
    everyone, no further request; auth status says the login is gone."""
    takeover, confirm_after = _taken_over(sandbox, env, proxy, cache_dir)
    _late_request(sandbox, proxy)

    # Before confirm_after nobody can know: the takeover's access token is still handed out.
    for before in (run_cli("token", env=env), _full_cli(env, "token")):
        assert before.code == 0 and before.out == takeover.out and before.err == "", before.err
    assert time.time() < confirm_after, "the test was too slow to see the time before the check"
    assert _counters(sandbox) == (2, 1, 1, 1)

    _sleep_until(confirm_after)
    checked = _full_cli(env, "token")
    assert checked.code == 16 and checked.out == "", checked.err
    assert checked.err.count("\n") == 1 and "Traceback" not in checked.err
    assert "refused the login of ada@example.org (invalid_grant" in checked.err
    assert "a refresh cut short earlier reached the identity provider late" in checked.err
    assert "run qlam-hpc auth login" in checked.err
    assert _counters(sandbox) == (3, 1, 1, 1)  # the check's one refresh request

    later = [_full_cli(env, "token"), _full_cli(env, "token"), run_cli("auth", "check", env=env)]
    assert [r.code for r in later] == [16, 16, 16], [r.err for r in later]
    assert all(r.out == "" and r.err.count("\n") == 1 for r in later), [r.err for r in later]
    assert all("run qlam-hpc auth login" in r.err for r in later), [r.err for r in later]
    assert _counters(sandbox) == (3, 1, 1, 1)  # at once: not one more request

    status = run_cli("auth", "status", env=env)
    assert status.code == 0, status.err
    assert "login       none in" in status.out and "user        ada" not in status.out, status.out
    assert "reached the identity provider late" in status.out  # the failure record says why
    assert _entry_field(cache_dir, "refresh_token") is None


def test_processes_after_the_check_are_told_the_late_refresh_revoked_the_login(sandbox, env, proxy, cache_dir):
    """Tasks that start after the check must learn why the login is gone, as after any refusal."""
    _, confirm_after = _taken_over(sandbox, env, proxy, cache_dir)
    _late_request(sandbox, proxy)
    _sleep_until(confirm_after)
    assert _full_cli(env, "token").code == 16
    later = _full_cli(env, "token")
    assert later.code == 16 and "reached the identity provider late" in later.err, later.err
    assert _counters(sandbox) == (3, 1, 1, 1)


def test_the_qlam_hpc_token_command_makes_the_late_check(sandbox, env, proxy, cache_dir):
    """The command batch scripts run: after confirm_after it must not hand out the takeover's
    token unchecked, but refresh once (refused here: exit 16, one line naming the late refresh),
    and after that check exit 16 too."""
    _, confirm_after = _taken_over(sandbox, env, proxy, cache_dir)
    _late_request(sandbox, proxy)
    _sleep_until(confirm_after)
    checked = run_cli("token", env=env)
    assert checked.code == 16 and "reached the identity provider late" in checked.err, checked.err
    assert run_cli("token", env=env).code == 16
    assert _counters(sandbox) == (3, 1, 1, 1)


def test_without_a_late_request_the_check_refreshes_once_and_clears_itself(sandbox, env, proxy, cache_dir):
    """The same takeover, but the killed process's request never reaches the server: the
    check after confirm_after is one successful refresh, and then the entry is plain again."""
    _, confirm_after = _taken_over(sandbox, env, proxy, cache_dir)
    _sleep_until(confirm_after)
    checked = _full_cli(env, "token")
    assert checked.code == 0 and checked.err == "", checked.err
    assert _counters(sandbox) == (2, 2, 0, 0)
    assert _entry_field(cache_dir, "confirm_after") is None
    for after in (run_cli("token", env=env), _full_cli(env, "token")):
        assert after.code == 0 and after.out == checked.out, after.err
    assert _counters(sandbox) == (2, 2, 0, 0)
