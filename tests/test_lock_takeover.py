"""A lock holder killed with SIGKILL: a waiter takes over within QLAM_LOCK_TIMEOUT.

On a real filesystem (the test's temporary directory): a separate process holds the
refresh lock of the cache entry, a provider in this process starts waiting for it, the
holder is killed, and the waiter fetches the token itself, with the default timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from qlam_hpc import Settings, TokenProvider

pytestmark = pytest.mark.timeout(60)

HOLDER = """
import sys, time
from qlam_hpc import Settings, TokenProvider
provider = TokenProvider(Settings.from_env())
lock = provider.store.try_lock(provider.identity)
assert lock is not None
print("locked", flush=True)
time.sleep(600)
"""


def test_a_sigkilled_holder_is_taken_over_within_the_default_timeout(sandbox, env):
    env = {k: v for k, v in env.items() if k != "QLAM_LOCK_TIMEOUT"}
    settings = Settings.from_env(env)
    assert settings.lock_timeout == 240
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result: dict = {}

        def wait() -> None:
            started = time.monotonic()
            try:
                result["token"] = TokenProvider(settings).get()
            except BaseException as error:  # shown by the assertion
                result["error"] = error
            result["took"] = time.monotonic() - started

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive(), result  # it waits for the holder
        assert sandbox.stats()["token_requests"] == 0
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        waiter.join(30)
        assert "error" not in result, result
        assert result["token"].source == "fetched"
        assert time.monotonic() - killed < 20, "taken over within a poll or two, far inside the 240 s timeout"
        assert sandbox.stats()["token_requests"] == 1
    finally:
        holder.kill()
        holder.wait()
