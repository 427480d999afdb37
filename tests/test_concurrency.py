"""Many real processes racing for one token on a real filesystem, against the real sandbox."""

from __future__ import annotations

import json
import os
import signal
import time

import jwt
import pytest

from crowd import LOOPER, Crowd, json_lines

pytestmark = pytest.mark.slow


def _verified(sandbox, token: str) -> dict:
    """The token's claims, verified against the sandbox's JWKS like a resource server would."""
    keys = jwt.PyJWKClient(sandbox.url + "/.well-known/jwks.json")
    key = keys.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=sandbox.audience)


def test_200_processes_on_an_empty_cache_make_one_token_request(sandbox, env, tmp_path):
    """200 processes started together on an empty cache: the IdP sees exactly 1 request, all get its token."""
    sandbox.set_faults(latency=0.5)
    crowd = Crowd(tmp_path, 200, ["token", "--json"], env)
    crowd.wait_ready()
    crowd.release()
    results = crowd.finish()

    assert [r.code for r in results] == [0] * 200, [r.err for r in results if r.code][:3]
    outputs = json_lines(results)
    assert sandbox.stats()["token_requests"] == 1
    assert len({o["access_token"] for o in outputs}) == 1
    assert sorted(o["source"] for o in outputs).count("fetched") == 1
    claims = _verified(sandbox, outputs[0]["access_token"])
    assert claims["exp"] > time.time()


def test_killing_the_fetching_process_does_not_stall_the_others(sandbox, env, tmp_path, cache_dir):
    """The process fetching the token is killed with SIGKILL mid-fetch: all others succeed, at most 2 requests."""
    sandbox.set_faults(latency=2.0)
    crowd = Crowd(tmp_path, 200, ["token", "--json"], env)
    crowd.wait_ready()
    crowd.release()

    deadline = time.monotonic() + 60
    while sandbox.stats()["token_requests"] < 1:
        assert time.monotonic() < deadline, "nobody asked for a token"
        time.sleep(0.02)
    lock_file = next(cache_dir.glob("*.lock"))
    holder = int(lock_file.read_text().split()[0].split(":")[1])
    os.kill(holder, signal.SIGKILL)

    results = crowd.finish()
    survivors = [r for r in results if r.pid != holder]
    killed = [r for r in results if r.pid == holder]
    assert killed and killed[0].code == -signal.SIGKILL
    assert [r.code for r in survivors] == [0] * 199, [r.err for r in survivors if r.code][:3]
    assert len({o["access_token"] for o in json_lines(survivors)}) == 1
    assert sandbox.stats()["token_requests"] <= 2


def test_short_lived_tokens_are_refreshed_about_once_per_lifetime_and_never_handed_out_expired(sandbox, env, tmp_path):
    """Token lifetime 3 s, 20 processes calling for 10 s: about one request per lifetime, no expired token."""
    sandbox.set_faults(token_lifetime=3)
    crowd = Crowd(tmp_path, 20, ["10"], env, script=LOOPER)
    crowd.wait_ready()
    crowd.release()
    results = crowd.finish()

    assert [r.code for r in results] == [0] * 20, [r.err for r in results if r.code][:3]
    seen = json_lines(results)
    assert sum(s["expired"] for s in seen) == 0
    assert all(s["calls"] > 50 for s in seen)
    # 10 s of 3 s tokens, each used until a quarter of its life is left: ~10 / 2.25 = 4.4.
    requests = sandbox.stats()["token_requests"]
    assert 3 <= requests <= 8, requests


def test_rejected_credentials_are_shared_so_the_array_fails_fast(sandbox, env, tmp_path):
    """invalid_client with 50 processes: the IdP sees exactly 1 request (README: "50 tasks, 1 request"); all
    fail with one message."""
    sandbox.set_faults(latency=0.3)
    bad = {**env, "QLAM_CLIENT_SECRET": "wrong-secret-value"}
    crowd = Crowd(tmp_path, 50, ["token"], bad)
    crowd.wait_ready()
    crowd.release()
    results = crowd.finish()

    assert [r.code for r in results] == [4] * 50
    messages = {r.err.strip().splitlines()[-1] for r in results}
    assert len(messages) == 1
    (message,) = messages
    assert "invalid_client" in message and "wrong-secret-value" not in message
    assert sandbox.stats()["token_requests"] == 1
    assert sandbox.stats()["token_errors"] == {"invalid_client": 1}
