"""RedisStore against a real redis-server on loopback: the store contract, then the provider on it."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crowd import STORE_HOLDER, STORE_PROVIDER, Crowd, json_lines
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._cache import CacheEntry, Failure, Identity, encode_entry
from qlam_hpc._errors import CacheError, ConfigurationError, InvalidClient
from qlam_hpc._stores import store_from_url
from qlam_hpc._stores._file import FileStore
from qlam_hpc._stores._redis import RedisStore, RedisUnavailable
from qlam_hpc._tokens import Token
from redis_service import RedisServer, free_port, start_redis

T0 = time.time()
IDENTITY = Identity("https://idp.example/oauth/token", "client-1", "https://api.quera.com")
OTHER = Identity("https://idp.example/oauth/token", "client-2", "https://api.quera.com")
MONTH = time.strftime("%Y-%m", time.gmtime(T0))

pytestmark = pytest.mark.redis


def _jwt(**claims) -> str:
    """An unsigned JWT with these claims: what the store's check reads (it verifies no signature)."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def _claims(identity: Identity = IDENTITY, seconds: float = 3600, **changes) -> dict:
    claims = {"azp": identity.client_id, "aud": identity.audience, "exp": int(time.time() + seconds)}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _token(seconds: float = 3600, value: str | None = None, identity: Identity = IDENTITY) -> Token:
    now = time.time()
    value = value or _jwt(**_claims(identity, seconds))
    return Token(value, expires_at=now + seconds, obtained_at=now, obtained_by="node1:42")


def _identity_args(identity: Identity) -> list[str]:
    return [identity.token_url, identity.client_id, identity.audience]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> RedisServer:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> RedisServer:
    server = start_redis(tmp_path_factory.mktemp("redis-tls"), tls=True)
    yield server
    server.stop()


@pytest.fixture
def redis_env(redis_server) -> dict[str, str]:
    """The environment a process needs to reach the test Redis: the password, never in the URL."""
    redis_server.client().flushdb()
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_PASSWORD", "QLAM_REDIS_PASSWORD")}
    return {**base, "REDIS_PASSWORD": redis_server.password}


@pytest.fixture
def store(redis_server, redis_env) -> RedisStore:
    return store_from_url(redis_server.url, redis_env)


@pytest.fixture
def warnings_log(caplog, monkeypatch):
    """Warnings of the qlam_hpc logger, even if a CLI test turned its propagation off."""
    monkeypatch.setattr(logging.getLogger("qlam_hpc"), "propagate", True)
    caplog.set_level(logging.INFO, logger="qlam_hpc")
    return caplog


@pytest.fixture
def children():
    started: list[subprocess.Popen] = []

    def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started.append(child)
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
        child.wait()


def _holder(children, server: RedisServer, env, *, lease: float, hold: float) -> subprocess.Popen:
    child = children([STORE_HOLDER, server.url, str(lease), str(hold), *_identity_args(IDENTITY)], env)
    assert child.stdout.readline().strip() == "locked", child.stderr.read()
    return child


# --- entries ------------------------------------------------------------------------------


def test_an_empty_store_has_no_entry(store):
    """load() on an empty database is None, not an error."""
    assert store.load(IDENTITY) is None


def test_a_saved_entry_loads_back_whole(store):
    """save() then load() gives the same token and failure record."""
    failure = Failure("InvalidClient", ("invalid_client", "nope", 401, "u"), T0, T0 + 300, "fp", "n:1")
    entry = CacheEntry(IDENTITY, _token(), failure)
    assert store.save(entry) is True
    assert store.load(IDENTITY) == entry
    assert store.load(OTHER) is None


def test_an_entry_expires_with_its_token(store, redis_server):
    """The entry's TTL is the token's remaining lifetime: Redis forgets it when it is useless."""
    store.save(CacheEntry(IDENTITY, _token(100)))
    ttl = redis_server.client().ttl(f"qlam-hpc:{IDENTITY.key()}:entry")
    assert 98 <= ttl <= 100


def test_a_failure_record_outliving_the_token_sets_the_ttl(store, redis_server):
    """The TTL is the later of the token's expiry and the failure record's end."""
    failure = Failure("InvalidClient", ("invalid_client", None, 401, "u"), T0, time.time() + 500, "fp")
    store.save(CacheEntry(IDENTITY, _token(100), failure))
    assert 498 <= redis_server.client().ttl(f"qlam-hpc:{IDENTITY.key()}:entry") <= 500


def test_a_corrupt_entry_is_discarded_with_a_warning(store, redis_server, warnings_log):
    """Garbage under the entry's key is deleted and reported; load() returns None."""
    key = f"qlam-hpc:{IDENTITY.key()}:entry"
    redis_server.client().set(key, b"\xff not an entry")
    assert store.load(IDENTITY) is None
    assert redis_server.client().exists(key) == 0
    assert "corrupt" in warnings_log.text


def test_clear_removes_one_entry_or_the_owners_and_keeps_the_ledger(redis_server, redis_env):
    """clear(identity) removes that entry; clear() removes the entries of the owner's client at
    its token endpoint (any audience or scope), not other clients' or people's; the ledger stays."""
    store = store_from_url(redis_server.url, redis_env, owner=IDENTITY)
    other_scope = IDENTITY._replace(scope="read:tasks")
    someone = IDENTITY._replace(principal="device:ada")
    for identity in (IDENTITY, other_scope, OTHER, someone):
        store.save(CacheEntry(identity, _token(identity=identity)))
    store.record_request({"time": T0, "client_id": "client-1", "outcome": "ok"})
    assert store.clear(IDENTITY) == 1
    assert store.load(IDENTITY) is None and store.load(other_scope) is not None
    assert store.clear() == 1
    assert store.load(other_scope) is None
    assert store.load(OTHER) is not None and store.load(someone) is not None
    assert len(store.requests(MONTH)) == 1


def test_clear_all_without_an_owner_is_refused(store):
    """A store that does not know whose it is cannot tell which entries are the caller's."""
    store.save(CacheEntry(IDENTITY, _token()))
    with pytest.raises(ConfigurationError, match="whose"):
        store.clear()
    assert store.load(IDENTITY) is not None


def test_auth_clear_all_leaves_other_clients_entries(sandbox, env, redis_env, redis_server):
    """qlam-hpc auth clear --all on a shared Redis removes the caller's entries only."""
    from conftest import run_cli

    store_env = {**env, "REDIS_PASSWORD": redis_env["REDIS_PASSWORD"], "QLAM_TOKEN_STORE": redis_server.url}
    own = Identity.of(Settings.from_env(store_env))
    store = store_from_url(redis_server.url, redis_env)
    store.save(CacheEntry(own, _token(identity=own)))
    store.save(CacheEntry(OTHER, _token(identity=OTHER)))
    done = run_cli("auth", "clear", "--all", env=store_env)
    assert done.code == 0, done.err
    assert "removed 1 cache entry" in done.out
    assert store.load(own) is None
    assert store.load(OTHER) is not None


# --- what a token read from Redis must show -----------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        _claims(azp="client-2"),
        _claims(azp=None, client_id="client-2"),
        _claims(azp=None, sub="client-2@clients"),
        _claims(azp=None),
        _claims(aud="https://other-api.example"),
        _claims(aud=["https://other-api.example", "https://idp.example/userinfo"]),
        _claims(aud=None),
        _claims(seconds=-10),
        _claims(exp=None),
        _claims(exp="soon"),
        _claims(exp=True),
        None,
    ],
    ids=[
        "azp-of-another-client",
        "client_id-of-another-client",
        "sub-of-another-client",
        "no-client-claim",
        "another-audience",
        "audiences-without-ours",
        "no-audience",
        "expired-by-its-exp",
        "no-exp",
        "text-exp",
        "bool-exp",
        "not-a-jwt",
    ],
)
def test_a_planted_token_is_not_handed_out(store, redis_server, claims, warnings_log):
    """Whoever can write the Redis can plant an entry; a token whose (unverified) claims do not
    name our client and audience, or that has expired by its own exp, is dropped with a warning."""
    value = _jwt(**claims) if claims is not None else "opaque-planted-token"
    planted = Token(value, expires_at=time.time() + 3600, obtained_at=time.time(), obtained_by="attacker:1")
    redis_server.client().set(f"qlam-hpc:{IDENTITY.key()}:entry", encode_entry(CacheEntry(IDENTITY, planted)))
    entry = store.load(IDENTITY)
    assert entry is None or entry.token is None
    assert "not issued for" in warnings_log.text
    assert value not in warnings_log.text


@pytest.mark.parametrize(
    "claims",
    [
        _claims(),
        _claims(azp=None, client_id="client-1"),
        _claims(azp=None, sub="client-1@clients"),
        _claims(aud=["https://idp.example/userinfo", "https://api.quera.com"]),
    ],
    ids=["azp", "client_id", "m2m-sub", "audience-list"],
)
def test_a_token_naming_the_client_and_audience_is_trusted(store, claims):
    """Auth0's M2M (sub=<client>@clients, azp), RFC 9068 (client_id) and list audiences pass."""
    token = _token(value=_jwt(**claims))
    store.save(CacheEntry(IDENTITY, token))
    assert store.load(IDENTITY).token == token


def test_a_planted_token_is_replaced_by_a_fetched_one(settings, sandbox, store):
    """The provider on Redis: a token for another client is not used; one is fetched and published."""
    identity = Identity.of(settings)
    planted = _token(value=_jwt(**_claims(identity, azp="other-client")), identity=identity)
    store.client.set(f"qlam-hpc:{identity.key()}:entry", encode_entry(CacheEntry(identity, planted)))
    result = TokenProvider(settings, store=store).get()
    assert result.source == "fetched" and result.token.access_token != planted.access_token
    assert store.load(identity).token == result.token
    assert sandbox.stats()["token_requests"] == 1


# --- the refresh lock ---------------------------------------------------------------------


def test_the_lock_is_exclusive_across_processes(store, redis_server, redis_env, children):
    """While another process holds the lock, try_lock() is None and lock_holder() names it."""
    child = _holder(children, redis_server, redis_env, lease=30, hold=60)
    assert store.try_lock(IDENTITY) is None
    holder = store.lock_holder(IDENTITY)
    assert holder is not None and f":{child.pid}" in holder
    assert store.try_lock(OTHER) is not None  # another identity, another lock


def test_a_released_lock_is_free_at_once(store, redis_server, redis_env, children):
    """A holder that leaves its with-block deletes the lock: the next try_lock() succeeds."""
    child = _holder(children, redis_server, redis_env, lease=30, hold=0.2)
    assert child.stdout.readline().strip() == "released"
    lock = store.try_lock(IDENTITY)
    assert lock is not None
    lock.release()
    assert store.lock_holder(IDENTITY) is None


def test_a_sigkilled_holder_stalls_the_others_for_at_most_its_lease(store, redis_server, redis_env, children):
    """A holder killed with SIGKILL keeps the lock until its 1 s lease ends, then it is free."""
    child = _holder(children, redis_server, redis_env, lease=1.0, hold=60)
    child.kill()
    child.wait()
    killed_at = time.monotonic()
    assert store.try_lock(IDENTITY) is None  # a dead holder is only known by its lease running out
    while (lock := store.try_lock(IDENTITY)) is None:
        assert time.monotonic() - killed_at < 15, "the lease did not expire"
        time.sleep(0.02)
    stall = time.monotonic() - killed_at
    lock.release()
    assert stall <= 1.0 + 9  # the slack is for a loaded machine; without a lease it would be forever


def test_a_live_holder_keeps_the_lock_beyond_its_lease(redis_server, redis_env):
    """The holder renews its lease: a fetch longer than the lease does not lose the lock."""
    holder = store_from_url(redis_server.url, redis_env, lease=1.2)
    other = store_from_url(redis_server.url, redis_env)
    with holder.try_lock(IDENTITY):
        time.sleep(3.0)
        assert other.try_lock(IDENTITY) is None
    assert other.try_lock(IDENTITY) is not None


def test_a_late_holder_never_deletes_its_successors_lock(store, redis_server, redis_env, children):
    """A holder stopped past its lease, then resumed, releases without deleting the new holder's lock."""
    child = _holder(children, redis_server, redis_env, lease=0.5, hold=2.0)
    child.send_signal(signal.SIGSTOP)
    time.sleep(1.0)
    successor = store.try_lock(IDENTITY)
    assert successor is not None
    child.send_signal(signal.SIGCONT)
    assert child.stdout.readline().strip() == "released"
    assert child.wait(timeout=10) == 0
    assert store.try_lock(IDENTITY) is None
    assert f":{os.getpid()}" in store.lock_holder(IDENTITY)
    successor.release()


# --- the ledger ---------------------------------------------------------------------------


def test_the_ledger_keeps_each_request_under_its_month(store, redis_server):
    """record_request() appends to that UTC month's list; requests(month) reads it back."""
    store.record_request({"time": T0, "client_id": "client-1", "outcome": "ok"})
    store.record_request({"time": T0 + 1, "client_id": "client-2", "outcome": "invalid_client"})
    store.record_request({"time": 0.0, "client_id": "client-1", "outcome": "ok"})
    assert [r["client_id"] for r in store.requests(MONTH)] == ["client-1", "client-2"]
    assert len(store.requests("1970-01")) == 1
    assert store.requests("2001-01") == []
    assert redis_server.client().ttl(f"qlam-hpc:ledger:{MONTH}") > 300 * 86400


# --- URLs, passwords, TLS -----------------------------------------------------------------


def test_the_password_may_come_from_the_url_the_caller_or_either_variable(redis_server):
    """The URL's password, password=, QLAM_REDIS_PASSWORD or REDIS_PASSWORD all authenticate."""
    password = redis_server.password
    with_password = redis_server.url.replace("redis://", f"redis://:{password}@")
    for url, env, given in (
        (with_password, {}, None),
        (redis_server.url, {}, password),
        (redis_server.url, {"QLAM_REDIS_PASSWORD": password}, None),
        (redis_server.url, {"REDIS_PASSWORD": password}, None),
        (redis_server.url, {"REDIS_PASSWORD": "wrong"}, password),
    ):
        store = store_from_url(url, env, password=given)
        assert store.load(IDENTITY) is None
        assert password not in store.location


def test_a_missing_password_is_a_clear_cache_error(redis_server):
    """Without a password: a CacheError (exit 8) saying where to put it, no traceback."""
    with pytest.raises(RedisUnavailable) as caught:
        store_from_url(redis_server.url, {}).load(IDENTITY)
    assert isinstance(caught.value, CacheError) and caught.value.exit_code == 8
    assert "QLAM_REDIS_PASSWORD" in str(caught.value)
    assert f"127.0.0.1:{redis_server.port}" in str(caught.value)


def test_a_wrong_password_is_refused_without_showing_it(redis_server):
    """A wrong password: RedisUnavailable that names the store and not the password."""
    with pytest.raises(RedisUnavailable) as caught:
        store_from_url(redis_server.url, {"REDIS_PASSWORD": "wrong-password-123"}).load(IDENTITY)
    assert "refused the password" in str(caught.value)
    assert "wrong-password-123" not in str(caught.value)


def test_tls_with_the_ca_in_the_url_works(tls_server):
    """rediss:// with ssl_ca_certs=<ca> verifies the server and stores entries."""
    store = store_from_url(tls_server.url, {"REDIS_PASSWORD": tls_server.password})
    assert store.location == f"rediss://127.0.0.1:{tls_server.port}/0"
    assert store.save(CacheEntry(IDENTITY, _token()))
    assert store.load(IDENTITY).token.access_token.count(".") == 2


def test_tls_without_the_ca_fails_verification_clearly(tls_server):
    """rediss:// to a server whose CA is not trusted: a RedisUnavailable about the certificate."""
    url = f"rediss://127.0.0.1:{tls_server.port}/0"
    with pytest.raises(RedisUnavailable, match="certificate"):
        store_from_url(url, {"REDIS_PASSWORD": tls_server.password}).load(IDENTITY)


def test_plain_redis_to_a_tls_port_fails_clearly(tls_server):
    """redis:// to a TLS-only port: a RedisUnavailable, not a hang or a traceback."""
    url = f"redis://127.0.0.1:{tls_server.port}/0?socket_timeout=2"
    with pytest.raises(RedisUnavailable):
        store_from_url(url, {"REDIS_PASSWORD": tls_server.password}).load(IDENTITY)


@pytest.mark.parametrize(
    "url",
    [
        "redis://redis.example:6379/0",
        "redis://10.0.0.7/0",
        "redis://:pw@[2001:db8::1]:6379/0",
        "redis://127.evil.example/0",
    ],
)
def test_plain_redis_off_loopback_is_refused(url):
    """Password and tokens would cross the network in clear: rediss:// is required off loopback."""
    with pytest.raises(ConfigurationError, match="rediss://") as caught:
        store_from_url(url, {})
    assert "QLAM_REDIS_INSECURE=allow" in str(caught.value)
    assert "pw@" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "environ"),
    [
        ("redis://127.0.0.1:6379/0", {}),
        ("redis://localhost/0", {}),
        ("redis://[::1]:6379/0", {}),
        ("rediss://redis.example:6379/0", {}),
        ("redis://redis.example:6379/0", {"QLAM_REDIS_INSECURE": "allow"}),
    ],
)
def test_plain_redis_is_accepted_on_loopback_or_when_allowed(url, environ):
    """Loopback never leaves the machine; elsewhere QLAM_REDIS_INSECURE=allow says the site decided."""
    assert isinstance(store_from_url(url, environ), RedisStore)


@pytest.mark.parametrize("url", ["redis:///0?host=10.1.2.3", "redis://:hunter2@/0?host=10.1.2.3&port=6379"])
def test_the_host_checked_is_the_one_the_client_connects_to(url):
    """A host in the query string is where redis-py connects when the URL names none: it is
    checked, and the message names it (never the password)."""
    with pytest.raises(ConfigurationError, match="rediss://") as caught:
        store_from_url(url, {})
    assert "10.1.2.3" in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_unix_socket_is_local_and_named_in_the_location():
    store = store_from_url("unix:///run/redis/redis.sock?db=2", {})
    assert store.location == "unix:///run/redis/redis.sock?db=2"


def test_prefix_and_user_give_each_user_keys_of_their_own(redis_server, redis_env):
    """``prefix=qlam-hpc:{user}``: every key of the store (entry, lock, ledger) starts with the
    local user's prefix, so a Redis ACL can give each user only their own."""
    from qlam_hpc._cache import local_user

    url = redis_server.url + ("&" if "?" in redis_server.url else "?") + "prefix=qlam-hpc:{user}"
    store = store_from_url(url, redis_env)
    store.save(CacheEntry(IDENTITY, _token()))
    with store.try_lock(IDENTITY):
        keys = {key.decode() for key in redis_server.client().keys("*")}
    store.record_request({"time": T0, "client_id": "client-1"})
    keys |= {key.decode() for key in redis_server.client().keys("*")}
    assert keys and all(key.startswith(f"qlam-hpc:{local_user()}:") for key in keys), keys
    assert store.location.endswith(f"(keys qlam-hpc:{local_user()}:*)")


@pytest.mark.parametrize("prefix", ["", "qlam*", "a b"])
def test_a_prefix_that_is_a_pattern_is_refused(prefix):
    with pytest.raises(ConfigurationError, match="prefix="):
        store_from_url(f"redis://127.0.0.1/0?prefix={prefix}", {})


def test_an_unknown_insecure_setting_is_a_configuration_error():
    """QLAM_REDIS_INSECURE takes one value, allow: a typo does not silently allow or refuse."""
    with pytest.raises(ConfigurationError, match="QLAM_REDIS_INSECURE"):
        store_from_url("redis://127.0.0.1/0", {"QLAM_REDIS_INSECURE": "yes please"})


def test_a_file_url_is_the_file_store(tmp_path):
    """file:///path selects the file store in that directory."""
    store = store_from_url(f"file://{tmp_path}/cache")
    assert isinstance(store, FileStore) and store.directory == f"{tmp_path}/cache"


@pytest.mark.parametrize(
    "url",
    [
        "memcached://127.0.0.1:11211",
        "file://otherhost/tmp/x",
        "file:relative/dir",
        "redis://127.0.0.1:1/0?no_such_option=1",
    ],
)
def test_an_unusable_url_is_a_configuration_error(url):
    """Unknown schemes, remote or relative file URLs and unknown redis options: exit 3."""
    with pytest.raises(ConfigurationError) as caught:
        store_from_url(url, {})
    assert caught.value.exit_code == 3


def test_the_url_password_is_never_shown_in_configuration_errors():
    """A bad query parameter is reported by name, with the URL's password left out."""
    with pytest.raises(ConfigurationError) as caught:
        store_from_url("redis://:hunter2-secret@127.0.0.1:1/0?no_such_option=1", {})
    assert "hunter2-secret" not in str(caught.value)
    assert "no_such_option" in str(caught.value)


# --- Redis down -----------------------------------------------------------------------------


def test_redis_down_is_a_clear_cache_error_for_the_provider(settings):
    """No server on the port: get_token() raises RedisUnavailable (exit 8) naming the store, no fetch."""
    store = store_from_url(f"redis://127.0.0.1:{free_port()}/0", {})
    provider = TokenProvider(settings, store=store)
    with pytest.raises(RedisUnavailable) as caught:
        provider.get_token()
    assert caught.value.exit_code == 8
    assert "cannot read the token" in str(caught.value) and "127.0.0.1" in str(caught.value)


def test_saving_to_a_redis_that_is_down_warns_and_returns_false(warnings_log):
    """save() to an unreachable Redis returns False after a warning, and does not raise."""
    store = store_from_url(f"redis://127.0.0.1:{free_port()}/0", {})
    assert store.save(CacheEntry(IDENTITY, _token())) is False
    assert "not shared with other processes" in warnings_log.text


def test_redis_dying_during_a_fetch_does_not_lose_the_token(sandbox, settings, tmp_path, warnings_log):
    """Redis stops while the IdP answers: the fetched token is still handed out, with warnings."""
    server = start_redis(tmp_path / "redis-dies")
    try:
        store = store_from_url(server.url, {"REDIS_PASSWORD": server.password})
        provider = TokenProvider(settings, store=store)
        sandbox.set_faults(latency=1.0)
        results = []
        fetching = threading.Thread(target=lambda: results.append(provider.get()))
        fetching.start()
        deadline = time.monotonic() + 10
        while sandbox.stats()["token_requests"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.stop()
        fetching.join(timeout=30)
    finally:
        server.stop()
    assert results and results[0].source == "fetched"
    assert "not shared with other processes" in warnings_log.text


# --- the provider on Redis, many processes --------------------------------------------------


def _race(tmp_path, env, url, count=50, lease=15.0):
    crowd = Crowd(
        tmp_path / "crowd",
        count,
        [str(tmp_path / "nodes"), str(lease)],
        {**env, "QLAM_TOKEN_STORE": url},
        script=STORE_PROVIDER,
    )
    crowd.wait_ready()
    crowd.release()
    return crowd


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True], ids=["redis", "rediss"])
def test_50_processes_with_separate_cache_dirs_make_one_token_request(
    sandbox, env, redis_env, redis_server, tls_server, tmp_path, tls
):
    """50 processes (20 over TLS), each with its own cache directory, share one Redis: exactly 1 token request."""
    server = tls_server if tls else redis_server
    server.client().flushdb()
    sandbox.set_faults(latency=0.5)
    count = 20 if tls else 50  # TLS changes the transport, not the race: fewer will do
    results = _race(tmp_path, {**env, "REDIS_PASSWORD": server.password}, server.url, count=count).finish()

    assert [r.code for r in results] == [0] * count, [r.err for r in results if r.code][:3]
    outputs = json_lines(results)
    assert sandbox.stats()["token_requests"] == 1
    assert len({o["access_token"] for o in outputs}) == 1
    assert [o["source"] for o in outputs].count("fetched") == 1
    assert len(list((tmp_path / "nodes").glob("*/*.entry"))) == 0  # no file cache was used
    assert len(store_from_url(server.url, {"REDIS_PASSWORD": server.password}).requests(MONTH)) == 1


@pytest.mark.slow
def test_killing_the_fetching_process_stalls_the_others_for_at_most_a_lease(
    sandbox, env, redis_env, redis_server, tmp_path
):
    """The fetching process is SIGKILLed: within its 1 s lease another fetches, all others succeed."""
    sandbox.set_faults(latency=2.0)
    crowd = _race(tmp_path, {**env, **redis_env}, redis_server.url, count=20, lease=1.0)
    deadline = time.monotonic() + 60
    while sandbox.stats()["token_requests"] < 1:
        assert time.monotonic() < deadline, "nobody asked for a token"
        time.sleep(0.02)
    value = redis_server.client().get(f"qlam-hpc:{Identity(*_sandbox_identity(sandbox)).key()}:lock")
    holder = int(value.decode().split("\n")[1].split()[0].split(":")[1])
    os.kill(holder, signal.SIGKILL)
    killed_at = time.monotonic()
    while sandbox.stats()["token_requests"] < 2:
        assert time.monotonic() - killed_at < 30, "nobody took over from the killed holder"
        time.sleep(0.02)
    stall = time.monotonic() - killed_at

    results = crowd.finish()
    survivors = [r for r in results if r.pid != holder]
    assert [r.code for r in survivors] == [0] * 19, [r.err for r in survivors if r.code][:3]
    assert len({o["access_token"] for o in json_lines(survivors)}) == 1
    assert sandbox.stats()["token_requests"] == 2
    # One lease (1 s) and a poll; the slack is for a loaded 2-core machine, far below the
    # 90 s a waiter would sit out if the lock outlived its holder.
    assert stall < 1.0 + 14


@pytest.mark.slow
def test_a_rejected_secret_is_shared_through_redis(sandbox, env, redis_env, redis_server, tmp_path):
    """A wrong secret: one request to the IdP, every process fails with invalid_client."""
    bad = {**env, **redis_env, "QLAM_CLIENT_SECRET": "wrong-secret"}
    results = _race(tmp_path, bad, redis_server.url, count=20).finish()
    assert all(r.code != 0 and "invalid_client" in r.err for r in results)
    assert sandbox.stats()["token_requests"] == 1


@pytest.mark.slow
def test_the_cli_selects_redis_from_qlam_token_store(sandbox, env, redis_env, redis_server, tmp_path):
    """QLAM_TOKEN_STORE=redis://...: 50 `qlam-hpc token` processes, separate cache dirs, 1 request."""
    store_env = {**env, **redis_env, "QLAM_TOKEN_STORE": redis_server.url}
    store = TokenProvider(Settings.from_env(store_env)).store
    assert isinstance(store, RedisStore), f"QLAM_TOKEN_STORE=redis://... gave a {type(store).__name__}"
    sandbox.set_faults(latency=0.5)
    crowd = Crowd(tmp_path, 50, ["token", "--json"], store_env)
    crowd.wait_ready()
    crowd.release()
    results = crowd.finish()
    assert [r.code for r in results] == [0] * 50, [r.err for r in results if r.code][:3]
    assert sandbox.stats()["token_requests"] == 1
    assert len({o["access_token"] for o in json_lines(results)}) == 1


def _sandbox_identity(sandbox) -> tuple[str, str, str]:
    settings = Settings.from_env(sandbox.env())
    return settings.token_url, settings.client_id, settings.audience


def test_rejected_failure_records_round_trip(store):
    """A failure record read back from Redis rebuilds the same error class."""
    error = InvalidClient("invalid_client", "Client authentication failed", 401, "http://idp/oauth/token")
    failure = Failure.from_error(error, at=time.time(), cooldown=300, credentials="fp", by="n:1")
    store.save(CacheEntry(IDENTITY, None, failure))
    rebuilt = store.load(IDENTITY).failure.to_error()
    assert isinstance(rebuilt, InvalidClient) and rebuilt.description == "Client authentication failed"
    assert json.loads(json.dumps(list(failure.args))) == list(failure.args)
