"""VaultStore against a real Vault API (OpenBao in dev mode, scripts/openbao-server.sh): the
store contract, real policies and a real audit log, then the provider and the CLI on it."""

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

import pytest

from conftest import run_cli
from crowd import STORE_HOLDER, STORE_PROVIDER, Crowd, json_lines
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._cache import CacheEntry, Failure, Identity, encode_entry
from qlam_hpc._errors import ConfigurationError, InvalidClient
from qlam_hpc._stores import open_store, store_from_url
from qlam_hpc._stores._vault import VaultStore, VaultStoreUnavailable
from qlam_hpc._tokens import Token
from vault_service import bao, bao_path, clean_env, start_bao

T0 = time.time()
IDENTITY = Identity("https://idp.example/oauth/token", "client-1", "https://api.quera.com")
OTHER = Identity("https://idp.example/oauth/token", "client-2", "https://api.quera.com")
MONTH = time.strftime("%Y-%m", time.gmtime(T0))

pytestmark = pytest.mark.vault

# The policy docs/hpc.md gives the jobs, for a path P under secret/.
JOB_POLICY = """
path "secret/data/{path}/*" {{ capabilities = ["create", "read", "update"] }}
path "secret/metadata/{path}/*" {{ capabilities = ["delete"] }}
path "secret/metadata/{path}" {{ capabilities = ["list"] }}
"""
READ_ONLY_POLICY = """
path "secret/data/{path}/*" {{ capabilities = ["read"] }}
"""


def _jwt(**claims) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def _token(seconds: float = 3600, identity: Identity = IDENTITY, **claims) -> Token:
    now = time.time()
    base = {"azp": identity.client_id, "aud": identity.audience, "exp": int(now + seconds), **claims}
    value = _jwt(**{k: v for k, v in base.items() if v is not None})
    return Token(value, expires_at=now + seconds, obtained_at=now, obtained_by="node1:42")


def _identity_args(identity: Identity) -> list[str]:
    return [identity.token_url, identity.client_id, identity.audience]


@pytest.fixture
def url(bao_path) -> str:
    return f"vault://secret/{bao_path}"


@pytest.fixture
def vault_env(bao) -> dict[str, str]:
    """This process's environment with the test server's address and root login, nothing else of Vault's."""
    return {**clean_env(), **bao.env()}


@pytest.fixture
def store(url, vault_env) -> VaultStore:
    return store_from_url(url, vault_env)


@pytest.fixture
def store_env(env, bao, url) -> dict[str, str]:
    """A qlam-hpc process pointed at the sandbox and sharing through the Vault path."""
    return {**clean_env(env), **bao.env(), "QLAM_TOKEN_STORE": url}


@pytest.fixture
def warnings_log(caplog, monkeypatch):
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


@pytest.fixture
def own_bao(tmp_path):
    """A server of this test's own, for tests that seal or stop it."""
    server = start_bao(tmp_path / "own-openbao")
    yield server
    server.stop()


def _holder(children, url, env, *, lease: float, hold: float) -> subprocess.Popen:
    child = children([STORE_HOLDER, url, str(lease), str(hold), *_identity_args(IDENTITY)], env)
    line = child.stdout.readline().strip()
    assert line == "locked", child.stderr.read()
    return child


# --- selecting the store ------------------------------------------------------------------


def test_qlam_token_store_selects_vault_with_vault_or_bao_variables(bao, url, sandbox):
    """vault://MOUNT/PATH is the Vault store; VAULT_* or OpenBao's BAO_* name the server and login."""
    base = {**clean_env(), **sandbox.env(), "QLAM_TOKEN_STORE": url}
    for variables in (bao.env(), {"BAO_ADDR": bao.url, "BAO_TOKEN": bao.root_token}):
        os_environ = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update({**base, **variables})
            store = open_store(Settings.from_env())
        finally:
            os.environ.clear()
            os.environ.update(os_environ)
        assert isinstance(store, VaultStore)
        assert store.location == f"{url} at {bao.url}"
        store.save(CacheEntry(IDENTITY, _token()))
        assert store.load(IDENTITY).token is not None


@pytest.mark.parametrize(
    "bad",
    ["vault://secret", "vault://secret/", "vault://secret/a//b", "vault://secret/qlam#field", "vault://user@host/x/y"],
)
def test_an_unusable_vault_url_is_a_configuration_error(bad, vault_env):
    with pytest.raises(ConfigurationError, match="vault://MOUNT/PATH"):
        store_from_url(bad, vault_env)


def test_no_vault_address_is_a_configuration_error(url):
    with pytest.raises(ConfigurationError, match="VAULT_ADDR is not set"):
        store_from_url(url, clean_env())


# --- entries ------------------------------------------------------------------------------


def test_an_empty_store_has_no_entry(store):
    assert store.load(IDENTITY) is None


def test_a_saved_entry_loads_back_whole(store):
    """save() then load() gives the same token and failure record."""
    failure = Failure("InvalidClient", ("invalid_client", "nope", 401, "u"), T0, T0 + 300, "fp", "n:1")
    entry = CacheEntry(IDENTITY, _token(), failure)
    assert store.save(entry) is True
    assert store.load(IDENTITY) == entry
    assert store.load(OTHER) is None


def test_a_corrupt_entry_is_discarded_with_a_warning(store, bao, bao_path, warnings_log):
    path = f"{bao_path}/{IDENTITY.key()}/entry"
    bao.put("secret", path, {"entry": "not an entry"})
    assert store.load(IDENTITY) is None
    assert not bao.read("secret", path)  # emptied at the version read: nothing left to use
    assert "corrupt" in warnings_log.text


@pytest.mark.parametrize(
    "claims",
    [{"azp": "client-2"}, {"aud": "https://other-api.example"}, {"seconds": -10}, None],
    ids=["another-client", "another-audience", "expired-by-its-exp", "not-a-jwt"],
)
def test_a_planted_token_is_not_handed_out(store, bao, bao_path, claims, warnings_log):
    """Whoever can write the path can plant an entry: the same check as for Redis entries."""
    if claims is None:
        planted = Token("opaque-planted-token", time.time() + 3600, time.time(), "attacker:1")
    else:
        seconds = claims.pop("seconds", 3600)
        planted = _token(seconds, **claims)
        planted = planted._replace(expires_at=time.time() + 3600)
    bao.put(
        "secret", f"{bao_path}/{IDENTITY.key()}/entry", {"entry": encode_entry(CacheEntry(IDENTITY, planted)).decode()}
    )
    entry = store.load(IDENTITY)
    assert entry is None or entry.token is None
    assert "not issued for" in warnings_log.text
    assert planted.access_token not in warnings_log.text


def test_clear_destroys_every_version_and_keeps_others_and_the_ledger(bao, bao_path, url, vault_env):
    """clear(identity) destroys that entry with its history; clear() the owner's entries only."""
    store = store_from_url(url, vault_env, owner=IDENTITY)
    other_scope = IDENTITY._replace(scope="read:tasks")
    someone = IDENTITY._replace(principal="device:ada")
    for identity in (IDENTITY, IDENTITY, other_scope, OTHER, someone):
        store.save(CacheEntry(identity, _token(identity=identity)))
    store.record_request({"time": T0, "client_id": "client-1", "outcome": "ok"})
    assert store.clear(IDENTITY) == 1
    import hvac.exceptions

    with pytest.raises(hvac.exceptions.InvalidPath):  # no metadata, no old version left to read
        bao.client().secrets.kv.v2.read_secret_metadata(path=f"{bao_path}/{IDENTITY.key()}/entry", mount_point="secret")
    assert store.load(other_scope) is not None
    assert store.clear() == 1
    assert store.load(other_scope) is None
    assert store.load(OTHER) is not None and store.load(someone) is not None
    assert len(store.requests(MONTH)) == 1


def test_clear_all_without_an_owner_is_refused(store):
    store.save(CacheEntry(IDENTITY, _token()))
    with pytest.raises(ConfigurationError, match="whose"):
        store.clear()
    assert store.load(IDENTITY) is not None


# --- the refresh lock ---------------------------------------------------------------------


def test_the_lock_is_exclusive_across_processes(store, url, vault_env, children):
    """While another process holds the lock, try_lock() is None and lock_holder() names it."""
    child = _holder(children, url, vault_env, lease=30, hold=60)
    assert store.try_lock(IDENTITY) is None
    holder = store.lock_holder(IDENTITY)
    assert holder is not None and f":{child.pid}" in holder
    other = store.try_lock(OTHER)  # another identity, another lock
    assert other is not None
    other.release()


def test_a_released_lock_is_free_at_once(store, url, vault_env, children):
    child = _holder(children, url, vault_env, lease=30, hold=0.2)
    assert child.stdout.readline().strip() == "released"
    lock = store.try_lock(IDENTITY)
    assert lock is not None
    lock.release()
    assert store.lock_holder(IDENTITY) is None


def test_only_one_of_many_racing_takers_gets_the_lock(url, vault_env):
    """Check-and-set: 16 threads, each with a store (and a client) of its own, try at once."""
    stores = [store_from_url(url, vault_env) for _ in range(16)]
    for each in stores:
        each.load(IDENTITY)  # log in and connect before the race
    start, won = threading.Barrier(len(stores)), []

    def take(each):
        start.wait()
        lock = each.try_lock(IDENTITY)
        if lock is not None:
            won.append(lock)

    threads = [threading.Thread(target=take, args=(each,)) for each in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    won[0].release()


def test_a_sigkilled_holder_is_taken_over_after_its_lease(store, url, vault_env, children, warnings_log):
    """A holder killed with SIGKILL keeps the lock until its 1 s lease ends; then one process takes over."""
    child = _holder(children, url, vault_env, lease=1.0, hold=60)
    child.kill()
    child.wait()
    killed_at = time.monotonic()
    assert store.try_lock(IDENTITY) is None  # a dead holder is only known by its lease running out
    while (lock := store.try_lock(IDENTITY)) is None:
        assert time.monotonic() - killed_at < 15, "the lease did not end"
        time.sleep(0.05)
    stall = time.monotonic() - killed_at
    lock.release()
    assert stall <= 1.0 + 9  # without a lease it would be forever
    assert "took over the refresh lock" in warnings_log.text


def test_a_live_holder_keeps_the_lock_beyond_its_lease(url, vault_env):
    """The holder renews its lease with check-and-set: a fetch longer than the lease keeps the lock."""
    holder = store_from_url(url, vault_env, lease=1.2)
    other = store_from_url(url, vault_env, lease=1.2)
    lock = holder.try_lock(IDENTITY)
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        assert other.try_lock(IDENTITY) is None
        time.sleep(0.1)
    lock.release()
    assert other.try_lock(IDENTITY) is not None


def test_a_late_holder_never_releases_its_successors_lock(store, url, vault_env, children, bao, bao_path):
    """A holder stopped past its lease, taken over, then resumed, leaves the successor's record alone."""
    child = _holder(children, url, vault_env, lease=0.5, hold=2.0)
    child.send_signal(signal.SIGSTOP)
    time.sleep(1.0)
    successor = store.try_lock(IDENTITY)
    assert successor is not None
    child.send_signal(signal.SIGCONT)
    assert child.stdout.readline().strip() == "released"
    record = bao.read("secret", f"{bao_path}/{IDENTITY.key()}/lock")
    assert record["state"] == "held" and f":{os.getpid()}" in record["holder"]
    assert store.try_lock(IDENTITY) is None
    successor.release()
    assert store.lock_holder(IDENTITY) is None


# --- the ledger ---------------------------------------------------------------------------


def test_concurrent_ledger_appends_lose_nothing(url, vault_env):
    """Appends race with check-and-set: 12 writers, 3 records each, 36 records."""
    stores = [store_from_url(url, vault_env) for _ in range(12)]

    def append(index, each):
        for n in range(3):
            each.record_request({"time": T0, "by": f"w{index}", "n": n, "outcome": "ok"})

    threads = [threading.Thread(target=append, args=pair) for pair in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = stores[0].requests(MONTH)
    assert len(records) == 36
    assert stores[0].requests("1999-01") == []


# --- policies, outages, the audit log -----------------------------------------------------


def test_a_policy_that_does_not_cover_the_path_cannot_read_the_token(bao, bao_path, url, vault_env):
    """Another user's policy covers another path: Vault refuses, and the message names the capability."""
    store_from_url(url, vault_env).save(CacheEntry(IDENTITY, _token()))
    elsewhere = bao.policy(JOB_POLICY.format(path=f"{bao_path}-elsewhere"))
    stranger = store_from_url(url, bao.env(bao.token(elsewhere)))
    with pytest.raises(VaultStoreUnavailable, match=r"does not allow read on secret/data/qlam-test/") as caught:
        stranger.load(IDENTITY)
    assert caught.value.exit_code == 15


def test_a_read_only_policy_reads_the_token_but_cannot_take_the_lock(bao, bao_path, url, vault_env):
    """A policy with read but not write: the token is read; taking the lock names create and update."""
    store_from_url(url, vault_env).save(CacheEntry(IDENTITY, _token()))
    reader = store_from_url(url, bao.env(bao.token(bao.policy(READ_ONLY_POLICY.format(path=bao_path)))))
    assert reader.load(IDENTITY).token is not None
    with pytest.raises(VaultStoreUnavailable, match=r"allows read but not create or update on secret/data/"):
        reader.try_lock(IDENTITY)


def test_the_job_policy_of_the_docs_is_enough_for_everything(bao, bao_path, url, sandbox, env):
    """Fetch, share, status, clear and doctor with only the policy docs/hpc.md gives."""
    token = bao.token(bao.policy(JOB_POLICY.format(path=bao_path)))
    job_env = {**clean_env(env), **bao.env(token), "QLAM_TOKEN_STORE": url}
    first = run_cli("token", "--json", env=job_env)
    assert first.code == 0, first.err
    assert json.loads(first.out)["source"] == "fetched"
    assert json.loads(run_cli("token", "--json", env=job_env).out)["source"] == "cache"
    status = run_cli("auth", "status", env=job_env)
    assert status.code == 0 and "1 token request" in status.out, status.out + status.err
    clear = run_cli("auth", "clear", "--all", env=job_env)
    assert clear.code == 0, clear.err
    assert sandbox.stats()["token_requests"] == 1


def test_an_approle_login_works_for_the_store(bao, bao_path, url, env, sandbox):
    role_id, secret_id = bao.approle(bao.policy(JOB_POLICY.format(path=bao_path)))
    job_env = {
        **clean_env(env),
        "VAULT_ADDR": bao.url,
        "VAULT_ROLE_ID": role_id,
        "VAULT_SECRET_ID": secret_id,
        "QLAM_TOKEN_STORE": url,
    }
    done = run_cli("token", env=job_env)
    assert done.code == 0, done.err
    assert secret_id not in done.err and role_id not in done.err


def test_an_approle_token_that_ended_is_replaced_by_a_new_login(bao, bao_path, url):
    """A long job outlives its AppRole token (2 s here): the store logs in again, once, and goes on."""
    role_id, secret_id = bao.approle(bao.policy(JOB_POLICY.format(path=bao_path)), ttl="2s")
    store = store_from_url(
        url, {**clean_env(), "VAULT_ADDR": bao.url, "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id}
    )
    store.save(CacheEntry(IDENTITY, _token()))
    first = store._client.token
    time.sleep(3)
    assert store.load(IDENTITY).token is not None
    assert store._client.token != first


@pytest.mark.parametrize("login", ["token", "approle"])
def test_a_refused_login_is_one_line_and_exit_15(bao, url, env, sandbox, login):
    if login == "token":
        variables = bao.env("not-a-valid-token")
    else:
        role_id, _ = bao.approle("default")
        variables = {"VAULT_ADDR": bao.url, "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": "wrong-secret-id"}
    done = run_cli("token", env={**clean_env(env), **variables, "QLAM_TOKEN_STORE": url})
    assert done.code == 15, done.err
    assert len(done.err.strip().splitlines()) == 1, done.err
    assert "refused the login" in done.err
    assert "not-a-valid-token" not in done.err and "wrong-secret-id" not in done.err
    assert sandbox.stats()["token_requests"] == 0


def test_vault_down_or_sealed_is_one_line_and_exit_15_and_nothing_is_lost(own_bao, url, env, sandbox):
    """Sealed, then stopped: exit 15, no token request; unsealed again, the token is still there."""
    store_env = {**clean_env(env), **own_bao.env(), "QLAM_TOKEN_STORE": url}
    first = run_cli("token", env=store_env)
    assert first.code == 0, first.err
    own_bao.seal()
    sealed = run_cli("token", env=store_env)
    assert (sealed.code, len(sealed.err.strip().splitlines())) == (15, 1), sealed.err
    assert "sealed" in sealed.err
    own_bao.unseal()
    again = run_cli("token", env=store_env)
    assert again.code == 0 and again.out == first.out, again.err
    own_bao.stop()
    down = run_cli("token", env=store_env)
    assert (down.code, len(down.err.strip().splitlines())) == (15, 1), down.err
    assert "unreachable" in down.err
    assert sandbox.stats()["token_requests"] == 1


def test_tokens_are_hmacd_in_the_audit_log_and_never_in_qlam_hpc_output(url, env, sandbox, tmp_path):
    """Vault's file audit device records every read and write of the store; neither the token
    nor the client secret appears in it in clear, nor in anything qlam-hpc prints but the token."""
    audit = tmp_path / "audit.log"
    bao = start_bao(tmp_path / "audited-openbao", audit=audit)
    try:
        _audited_run(bao, audit, url, env, sandbox)
    finally:
        bao.stop()


def _audited_run(bao, audit, url, env, sandbox) -> None:
    store_env = {**clean_env(env), **bao.env(), "QLAM_TOKEN_STORE": url}
    fetched = run_cli("token", env=store_env)
    cached = run_cli("-vv", "token", "--json", env=store_env)
    status = run_cli("auth", "status", "--json", env=store_env)
    doctor = run_cli("doctor", env=store_env)
    token = fetched.out.strip()
    secret = sandbox.env()["QLAM_CLIENT_SECRET"]
    assert fetched.code == 0 and token and json.loads(cached.out)["access_token"] == token
    text = audit.read_text()
    assert '"path":"secret/data/' in text and "hmac-sha256:" in text  # the store's calls are there
    for value in (token, token.split(".")[1], secret):
        assert value not in text
    shown = fetched.err + cached.err + status.out + status.err + doctor.out + doctor.err
    assert token not in shown and secret not in shown and bao.root_token not in shown


# --- the provider and the CLI on Vault ----------------------------------------------------


def test_the_warm_path_never_touches_vault(own_bao, url, settings, sandbox):
    """Memory first: after one fetch, a sealed Vault does not matter to the same provider."""
    store = store_from_url(url, {**clean_env(), **own_bao.env()})
    provider = TokenProvider(settings, store=store)
    token = provider.get_token()
    own_bao.seal()
    assert all(provider.get_token() == token for _ in range(1000))
    assert provider.get().source == "memory"


def test_min_ttl_refreshes_through_the_store(store, settings, sandbox):
    """A token with 30 min left serves a caller that needs 10 min; one that needs 40 min gets a new one."""
    sandbox.set_faults(token_lifetime=3600)
    later = lambda: time.time() + 1800  # noqa: E731 - the provider's clock, half an hour on
    first = TokenProvider(settings, store=store).get()
    assert TokenProvider(settings, store=store, clock=later).get(min_ttl=600).source == "cache"
    again = TokenProvider(settings, store=store, clock=later).get(min_ttl=2400)
    assert again.source == "fetched" and again.token != first.token
    assert store.load(Identity.of(settings)).token == again.token
    assert sandbox.stats()["token_requests"] == 2


def test_a_rejection_is_shared_through_vault(store, settings, sandbox):
    """invalid_client is recorded in the entry: the next process repeats it without asking."""
    from qlam_hpc._settings import Secret

    bad = settings.with_(client_secret=Secret("wrong-secret"))
    for _ in range(3):
        with pytest.raises(InvalidClient):
            TokenProvider(bad, store=store).get()
    assert sandbox.stats()["token_requests"] == 1


def test_a_still_valid_token_is_handed_out_when_the_refresh_fails(store, settings, sandbox, warnings_log):
    """The IdP fails while the token in Vault has 45 s left: that token, with a warning."""
    token = TokenProvider(settings, store=store).get().token
    sandbox.set_faults(script=[{"status": 503, "body": "down", "content_type": "text/plain"}] * 10)
    result = TokenProvider(settings, store=store, clock=lambda: token.expires_at - 45).get()
    assert result.source == "fallback" and result.token == token
    assert "still valid for 45s" in warnings_log.text


def test_vault_sealed_during_a_fetch_does_not_lose_the_token(own_bao, url, settings, sandbox, warnings_log):
    """The fetch succeeds while Vault is sealed under it: the token is used, with warnings."""
    store = store_from_url(url, {**clean_env(), **own_bao.env()})
    sandbox.set_faults(latency=1.0)
    sealer = threading.Timer(0.4, own_bao.seal)
    sealer.start()
    result = TokenProvider(settings, store=store).get()
    sealer.join()
    assert result.source == "fetched"
    assert "not shared" in warnings_log.text


def test_user_context_on_vault_needs_an_explicit_yes(user_env, bao, url):
    """The store would hold the user's refresh token where a policy may let others read it."""
    vault = {**user_env, **bao.env(), "QLAM_TOKEN_STORE": url}
    with pytest.raises(ConfigurationError, match="Vault path"):
        Settings.from_env(vault)
    assert Settings.from_env({**vault, "QLAM_SHARED_REFRESH_TOKENS": "allow"}).user_context


def test_doctor_checks_the_vault_store(bao, bao_path, url, env, sandbox):
    """doctor: reachable, the login, the policy's capabilities on the path, and the cost of a read."""
    good = run_cli(
        "doctor",
        env={
            **clean_env(env),
            **bao.env(bao.token(bao.policy(JOB_POLICY.format(path=bao_path)))),
            "QLAM_TOKEN_STORE": url,
        },
    )
    assert good.code == 0, good.out + good.err
    assert "answers, unsealed" in good.out and "login by VAULT_TOKEN accepted" in good.out
    assert "a read of the store costs" in good.out
    reader = bao.token(bao.policy(READ_ONLY_POLICY.format(path=bao_path)))
    bad = run_cli("doctor", env={**clean_env(env), **bao.env(reader), "QLAM_TOKEN_STORE": url})
    assert bad.code != 0
    assert "does not allow create, update on secret/data/" in bad.out
    assert sandbox.stats()["token_requests"] == 0


# --- crowds -------------------------------------------------------------------------------


def _race(tmp_path, env, url, count, lease=15.0):
    crowd = Crowd(
        tmp_path / "crowd",
        count,
        [str(tmp_path / "nodes"), str(lease)],
        {**env, "QLAM_TOKEN_STORE": url},
        script=STORE_PROVIDER,
    )
    crowd.wait_ready(timeout=300)
    crowd.release()
    return crowd


@pytest.mark.slow
def test_200_processes_on_an_empty_vault_store_make_one_token_request(sandbox, env, bao, url, tmp_path):
    """200 processes, each with its own cache directory, share one Vault path: 1 token request, 1 token."""
    sandbox.set_faults(latency=0.5)
    results = _race(tmp_path, {**clean_env(env), **bao.env()}, url, count=200).finish(timeout=300)
    assert [r.code for r in results] == [0] * 200, [r.err for r in results if r.code][:3]
    outputs = json_lines(results)
    assert sandbox.stats()["token_requests"] == 1
    assert len({o["access_token"] for o in outputs}) == 1
    assert [o["source"] for o in outputs].count("fetched") == 1
    assert not list((tmp_path / "nodes").glob("*/*.entry"))  # no file cache was used
    assert len(store_from_url(url, {**clean_env(), **bao.env()}).requests(MONTH)) == 1
    print(f"\n200 processes, empty Vault store: {sandbox.stats()['token_requests']} token request, 1 token")


@pytest.mark.slow
def test_killing_the_fetching_process_costs_at_most_one_more_request(sandbox, env, bao, bao_path, url, tmp_path):
    """The lock holder is SIGKILLed mid-fetch: the others succeed, with at most 2 requests in all."""
    sandbox.set_faults(latency=2.0)
    crowd = _race(tmp_path, {**clean_env(env), **bao.env()}, url, count=20, lease=1.0)
    deadline = time.monotonic() + 60
    while sandbox.stats()["token_requests"] < 1:
        assert time.monotonic() < deadline, "nobody asked for a token"
        time.sleep(0.02)
    identity = Identity.of(Settings.from_env(sandbox.env()))
    record = bao.read("secret", f"{bao_path}/{identity.key()}/lock")
    holder = int(record["holder"].split()[0].split(":")[1])
    os.kill(holder, signal.SIGKILL)
    killed_at = time.monotonic()
    results = crowd.finish()
    survivors = [r for r in results if r.pid != holder]
    assert [r.code for r in survivors] == [0] * 19, [r.err for r in survivors if r.code][:3]
    assert len({o["access_token"] for o in json_lines(survivors)}) == 1
    assert sandbox.stats()["token_requests"] <= 2
    assert time.monotonic() - killed_at < 1.0 + 2.0 + 10  # one lease, the second fetch's 2 s, slack
    print(
        f"\nholder SIGKILLed mid-fetch: {sandbox.stats()['token_requests']} token requests in all, "
        "19 of 19 others succeeded"
    )


@pytest.mark.slow
def test_the_cli_shares_through_vault(sandbox, store_env, tmp_path):
    """50 `qlam-hpc token` processes on QLAM_TOKEN_STORE=vault://...: 1 request."""
    sandbox.set_faults(latency=0.5)
    crowd = Crowd(tmp_path, 50, ["token", "--json"], store_env)
    crowd.wait_ready()
    crowd.release()
    results = crowd.finish()
    assert [r.code for r in results] == [0] * 50, [r.err for r in results if r.code][:3]
    assert sandbox.stats()["token_requests"] == 1
    assert len({o["access_token"] for o in json_lines(results)}) == 1
