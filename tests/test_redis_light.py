"""The light read of the Redis store: a warm ``qlam-hpc token`` or ``api`` call through Redis
is served without redis-py (nor click, httpx), with the same trust checks as the full store;
whatever it does not fully understand goes to the full store, which says it as before."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli, run_cli_watching
from qlam_hpc import Settings
from qlam_hpc._cache import Identity
from qlam_hpc._stores._redis_light import _reply, _target, _Unexpected, warm_entry
from qlam_hpc.sandbox import Sandbox
from redis_service import RedisServer, start_redis

pytestmark = pytest.mark.redis

HEAVY = ("redis", "click", "httpx")  # what a warm call through Redis must not load


@pytest.fixture(scope="module")
def idp() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis-tls"), tls=True)
    yield server
    server.stop()


def _env(idp: Sandbox, server: RedisServer, tmp_path: Path, url: str | None = None) -> dict[str, str]:
    server.client().flushdb()
    idp.reset()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "REDIS_", "SLURM_"))}
    return {
        **base,
        **idp.env(),
        "QLAM_TOKEN_STORE": url or server.url,
        "REDIS_PASSWORD": server.password,
        "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache"),
    }


@pytest.mark.parametrize("server_name", ["redis_server", "tls_server"])
def test_a_warm_token_through_redis_is_served_without_redis_py(idp, tmp_path, request, server_name):
    """The first call fetches and publishes through the full store; the next ones read the entry
    with the standard library: the same token, no further request, no redis-py, click or httpx."""
    server = request.getfixturevalue(server_name)
    env = _env(idp, server, tmp_path)
    first = run_cli("token", env=env)
    assert first.code == 0, first.err
    for _ in range(2):
        again, loaded = run_cli_watching(HEAVY, "token", env=env)
        assert again.code == 0, again.err
        assert again.out == first.out
        assert loaded == []
    assert idp.stats()["token_requests"] == 1


def test_a_warm_api_call_through_redis_stays_light(idp, redis_server, tmp_path):
    env = {**_env(idp, redis_server, tmp_path), "QLAM_API_URL": idp.url}
    assert run_cli("token", env=env).code == 0
    done, loaded = run_cli_watching(HEAVY, "api", "GET", "/v2/squin-256q/tasks", env=env)
    assert done.code == 0, done.err
    assert '"elements"' in done.out
    assert loaded == []


def test_an_entry_sealed_by_someone_else_is_left_to_the_full_store(idp, redis_server, tmp_path):
    """Another user who can write the database plants an entry for our key: the light read does
    not use it, and the full store warns, replaces it and hands out a token of our own."""
    env = _env(idp, redis_server, tmp_path)
    assert run_cli("token", env=env).code == 0
    settings = Settings.from_env(env)
    identity = Identity.of(settings)
    key = f"qlam-hpc:{identity.key()}:entry"
    client = redis_server.client()
    genuine = client.get(key)
    planted = genuine.replace(b"seal=", b"seal=0") if b"seal=" in genuine else genuine + b"x"
    client.set(key, planted)
    assert warm_entry(settings, identity, env) is None
    done, loaded = run_cli_watching(HEAVY, "token", env=env)
    assert done.code == 0, done.err
    assert "not sealed with your key" in done.err
    assert "redis" in loaded  # the full store decided
    assert idp.stats()["token_requests"] == 2


def test_a_wrong_password_is_said_by_the_full_store(idp, redis_server, tmp_path):
    env = _env(idp, redis_server, tmp_path)
    assert run_cli("token", env=env).code == 0
    wrong = run_cli("token", env={**env, "REDIS_PASSWORD": "not-the-password"})
    assert wrong.code == 8, wrong.err
    assert len(wrong.err.strip().splitlines()) == 1 and "Traceback" not in wrong.err
    assert "not-the-password" not in wrong.err


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?health_check_interval=5",  # redis-py's option, not ours
        "redis://127.0.0.1:6379/0?ssl_cert_reqs=none",
        "redis://127.0.0.1:6379/0?prefix=a*b",
        "redis://127.0.0.1:6379/zero",
        "unix:///run/redis.sock",
        "redis://redis.example.org:6379/0",  # in clear off loopback: the full store refuses it
    ],
)
def test_what_the_light_read_does_not_handle_goes_to_the_full_store(url):
    assert _target(url, "pw", {}) is None


def test_the_url_is_read_as_redis_py_reads_it():
    target = _target("rediss://ada:p%40ss@redis.example.org:6380/3?prefix=qlam-hpc:ada&ssl_ca_certs=/ca.pem", None, {})
    assert target is not None
    assert (target.tls, target.host, target.port, target.db) == (True, "redis.example.org", 6380, 3)
    assert (target.user, target.password, target.prefix, target.ca_file) == ("ada", "p@ss", "qlam-hpc:ada", "/ca.pem")
    from_env = _target("redis://127.0.0.1/0", None, {"REDIS_PASSWORD": "from-env"})
    assert from_env is not None and from_env.password == "from-env" and from_env.port == 6379
    allowed = _target("redis://redis.example.org/0", None, {"QLAM_REDIS_INSECURE": "allow"})
    assert allowed is not None and not allowed.tls


@pytest.mark.parametrize(
    "answer",
    [b"-WRONGPASS invalid username-password pair\r\n", b"$5\r\nabc\r\n", b"$999999999\r\n", b"*1\r\n", b"+OK"],
)
def test_an_error_or_a_malformed_reply_is_not_taken_for_an_entry(answer):
    with pytest.raises((_Unexpected, ValueError)):
        _reply(io.BytesIO(answer))


def test_replies_are_read_as_resp2():
    answers = io.BytesIO(b"+OK\r\n:1\r\n$-1\r\n$4\r\na\r\nb\r\n")
    assert [_reply(answers) for _ in range(4)] == [b"OK", 1, None, b"a\r\nb"]
