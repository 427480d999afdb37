"""Two people who share a Redis or a Vault path cannot act as each other (issue 17).

Two real Unix users, ``qlamtest-ada`` and ``qlamtest-bob`` (``two_users``), log in to one
sandbox identity provider as two people and share one store, as a site sets it up:

* **shared credentials**: one Redis password, or one Vault policy on one path, for both;
  each keeps the login in a directory of their own (``QLAM_REFRESH_TOKEN_DIR``), the
  access token in the store. Bob then does what that password or policy lets him do to
  Ada's entry: copies his own entry over it, writes a failure record or a poisoned value
  into it, plants a lock. Ada's processes never hand out Bob's token, never show his text,
  never crash, and recover: what is left to Bob is making Ada refresh once more.
* **per-user credentials**: a Redis ACL user each (``prefix=qlam-hpc:{user}``), or one
  Vault policy templated on the login's name (``vault://secret/qlam-hpc/{user}``). Then
  Bob cannot even write Ada's keys, and Ada's array still costs one refresh.

Bob's attacks are run from the test process with Bob's credentials (the shared password,
his Vault token, his own store key): what the servers allow is what Bob can do, and they
are real servers. Ada's side is the real ``qlam-hpc`` run as Ada.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
import uuid

import pytest

from qlam_hpc import Settings
from qlam_hpc._cache import CacheEntry, Failure, Identity, encode_entry
from qlam_hpc._sealing import EntrySeal
from qlam_hpc._tokens import unverified_claims
from qlam_hpc.sandbox import Sandbox, SandboxConfig, SandboxUser
from redis_service import RedisServer, start_redis
from two_users import User, unix_users
from vault_service import Bao, bao

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

ADA = SandboxUser("auth0|sandbox-user-1", "ada@example.org", "Ada Lovelace")
BOB = SandboxUser("auth0|sandbox-user-2", "bob@example.org", "Bob Mallory")
BOB_TEXT = "approve http://evil.example/activate?user_code=BOB"
LOGINS = "~/.local/state/qlam-hpc/logins"  # each user's own: the login never goes to the shared store
NOT_SEALED = "is not sealed with your key"

# The policy docs/hpc.md gives the jobs of one QLAM client, for a path P under secret/: shared.
SHARED_POLICY = """
path "secret/data/{path}/*" {{ capabilities = ["create", "read", "update"] }}
path "secret/metadata/{path}/*" {{ capabilities = ["delete"] }}
path "secret/metadata/{path}" {{ capabilities = ["list"] }}
"""
# The per-user policy of docs/hpc.md: each login only under its own name.
PER_USER_POLICY = """
path "secret/data/{path}/{{{{identity.entity.aliases.{accessor}.name}}}}/*" {{
  capabilities = ["create", "read", "update"]
}}
path "secret/metadata/{path}/{{{{identity.entity.aliases.{accessor}.name}}}}/*" {{
  capabilities = ["delete"]
}}
path "secret/metadata/{path}/{{{{identity.entity.aliases.{accessor}.name}}}}" {{
  capabilities = ["list"]
}}
"""
# The commands docs/hpc.md lists for a Redis ACL user of the store.
REDIS_COMMANDS = "+get +getrange +set +del +eval +pexpire +pttl +rpush +expire +lrange +scan +multi +exec"


# --- the sandbox: one identity provider, two people ---------------------------------------


@pytest.fixture(scope="module")
def sandbox():
    """One identity provider for the module, Ada and Bob its people; 24 h access tokens,
    refresh tokens that rotate with no overlap (Auth0's default)."""
    config = SandboxConfig.default(client_id="m2m-client", device_poll_interval=1, device_code_lifetime=60)
    with Sandbox(config.replace(users=(ADA, BOB))) as server:
        server.set_faults(refresh_token_overlap=0, token_lifetime=86400)
        yield server


@pytest.fixture(scope="module")
def users(unix_users):
    return unix_users


def _login(pairs: list[tuple[User, dict[str, str], SandboxUser]], sandbox: Sandbox) -> None:
    """Each Unix user logs in (``auth login``) at once, approved as their person."""
    started = []
    for user, env, person in pairs:
        child = user.start("auth", "login", "--json", env=env)
        line = child.stdout.readline()
        if not line:
            pytest.fail(f"auth login as {user.name} printed no code: {child.communicate(timeout=30)[1]}")
        sandbox.approve(json.loads(line)["user_code"], person.email)
        started.append((user, child))
    for user, child in started:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, f"{user.name}: {err}"


def _subject(token_output: str) -> str | None:
    claims = unverified_claims(token_output.strip())
    return claims.get("sub") if claims else None


def _identity(sandbox: Sandbox, user: User) -> Identity:
    """The identity a user's process computes (``device:<Unix user>``), computed here, as Bob can."""
    settings = Settings.from_env(sandbox.env(flow="device"))
    return Identity.of(settings)._replace(principal=f"device:{user.name}")


def _bobs_seal(bob: User) -> EntrySeal:
    """Sealing with the key Bob holds, his own: all the sealing Bob can do."""
    key = bytes.fromhex((bob.home / ".config" / "qlam-hpc" / "store.key").read_text().strip())
    return EntrySeal(lambda create: key, describe="Bob's key")


def _as_adas(bob_raw: bytes, ada: User, bob: User, how: str, sandbox: Sandbox) -> bytes:
    """Bob's own entry made to name Ada: with Bob's seal line as it was, sealed again with Bob's
    key for Ada's identity, or without a seal."""
    text = bob_raw.replace(f"principal=device:{bob.name}\n".encode(), f"principal=device:{ada.name}\n".encode())
    assert text != bob_raw
    if how == "bob's seal kept":
        return text
    unsealed = re.sub(rb"\nseal=[0-9a-f]+\n", b"\n", text)
    assert unsealed != text
    if how == "no seal":
        return unsealed
    return _bobs_seal(bob).close(unsealed, _identity(sandbox, ada))


def _forged_failure(sandbox: Sandbox, ada: User, bob: User, how: str) -> bytes:
    now = time.time()
    failure = Failure("LoginRequired", (BOB_TEXT,), now, now + 3600, "login", "bob's job")
    raw = encode_entry(CacheEntry(_identity(sandbox, ada), failure=failure))
    return raw if how == "no seal" else _bobs_seal(bob).close(raw, _identity(sandbox, ada))


def _nested_token_entry(sandbox: Sandbox, ada: User, depth: int) -> bytes:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    header = json.dumps({"alg": "RS256", "typ": "JWT"}).encode()
    token = f"{part(header)}.{part(b'[' * depth + b']' * depth)}.c2ln"
    text = encode_entry(CacheEntry(_identity(sandbox, ada))).decode()
    head, end = text.rsplit("end\n", 1)
    now = time.time()
    fields = f"access_token={token}\ntoken_type=Bearer\nexpires_at={now + 3600!r}\nobtained_at={now!r}\n"
    return (head + fields + "end\n" + end).encode()


def _check_ada_gets_her_own(ada: User, env: dict[str, str], *, warned: bool) -> None:
    """Ada's next ``qlam-hpc token`` hands out Ada's token; one warning line when it found a
    planted entry; never Bob's subject, his text, or a traceback."""
    got = ada.cli("token", env=env)
    assert got.code == 0, got.err
    assert _subject(got.out) == ADA.subject
    assert "Traceback" not in got.err and BOB_TEXT not in got.err + got.out
    assert BOB.email not in got.err and BOB.subject not in got.err
    assert got.err.count(NOT_SEALED) == (1 if warned else 0), got.err
    assert len(got.err.strip().splitlines()) == (1 if warned else 0), got.err  # that line, and nothing else


# --- the stores: shared credentials -------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> RedisServer:
    server = start_redis(tmp_path_factory.mktemp("redis-two-users"))
    yield server
    server.stop()


_DATABASES = itertools.count(1)


class RedisShared:
    """One Redis, one password, for both users; Bob's hand is a client with that password.
    ``logins_in_store``: the logins go to the store too (``QLAM_SHARED_REFRESH_TOKENS=allow``),
    else to a directory of each user's own (``QLAM_REFRESH_TOKEN_DIR``)."""

    def __init__(self, server: RedisServer, sandbox: Sandbox, users: dict[str, User], *, logins_in_store: bool) -> None:
        self.server = server
        self.sandbox = sandbox
        self.users = users
        self.db = next(_DATABASES)  # a database of its own; the keys as the docs show them, qlam-hpc:*
        self.logins = _logins(f"redis-{self.db}", logins_in_store)
        import redis

        self.bob = redis.Redis(host="127.0.0.1", port=server.port, db=self.db, password=server.password)

    def env(self, user: User) -> dict[str, str]:
        return {
            **self.sandbox.env(flow="device"),
            "QLAM_TOKEN_STORE": f"redis://127.0.0.1:{self.server.port}/{self.db}",
            "QLAM_REDIS_PASSWORD": self.server.password,
            **self.logins,
        }

    def key(self, user: User, kind: str = "entry") -> str:
        return f"qlam-hpc:{_identity(self.sandbox, user).key()}:{kind}"

    def read(self, user: User) -> bytes | None:
        return self.bob.get(self.key(user))

    def write(self, user: User, raw: bytes) -> None:
        self.bob.set(self.key(user), raw, ex=3600)


class VaultShared:
    """One Vault path, one policy, a token each; Bob's hand is a client with his token."""

    def __init__(self, server: Bao, sandbox: Sandbox, users: dict[str, User], *, logins_in_store: bool) -> None:
        self.server = server
        self.sandbox = sandbox
        self.users = users
        self.path = f"qlamtest-{uuid.uuid4().hex[:8]}"
        self.logins = _logins(self.path, logins_in_store)
        policy = server.policy(SHARED_POLICY.format(path=self.path))
        self.tokens = {user.name: server.token(policy) for user in users.values()}
        self.bob = server.client(self.tokens[users["bob"].name])

    def env(self, user: User) -> dict[str, str]:
        return {
            **self.sandbox.env(flow="device"),
            "QLAM_TOKEN_STORE": f"vault://secret/{self.path}",
            "VAULT_ADDR": self.server.url,
            "VAULT_TOKEN": self.tokens[user.name],
            **self.logins,
        }

    def key(self, user: User, kind: str = "entry") -> str:
        return f"{self.path}/{_identity(self.sandbox, user).key()}/{kind}"

    def read(self, user: User) -> bytes | None:
        answer = self.bob.secrets.kv.v2.read_secret_version(
            path=self.key(user), mount_point="secret", raise_on_deleted_version=False
        )
        entry = answer["data"]["data"].get("entry")
        return entry.encode() if isinstance(entry, str) else None

    def write(self, user: User, raw: bytes | object) -> None:
        value = raw.decode() if isinstance(raw, bytes) else raw
        self.bob.secrets.kv.v2.create_or_update_secret(
            path=self.key(user), secret={"entry": value}, mount_point="secret"
        )


def _logins(name: str, in_store: bool) -> dict[str, str]:
    if in_store:
        return {"QLAM_SHARED_REFRESH_TOKENS": "allow"}
    return {"QLAM_REFRESH_TOKEN_DIR": f"~/.local/state/qlam-hpc/{name}"}  # each user's own


def _store(request, sandbox: Sandbox, users: dict[str, User], *, logins_in_store: bool) -> RedisShared | VaultShared:
    if request.param == "redis":
        return RedisShared(request.getfixturevalue("redis_server"), sandbox, users, logins_in_store=logins_in_store)
    return VaultShared(request.getfixturevalue("bao"), sandbox, users, logins_in_store=logins_in_store)


BACKENDS = [pytest.param("redis", marks=pytest.mark.redis), pytest.param("vault", marks=pytest.mark.vault)]


@pytest.fixture(scope="module", params=BACKENDS)
def shared(request, sandbox, users):
    """Ada and Bob logged in, sharing one store with one set of credentials, each login in a
    directory of its user's own. Each test leaves Ada's entry as it found it: hers."""
    store = _store(request, sandbox, users, logins_in_store=False)
    ada, bob = users["ada"], users["bob"]
    _login([(ada, store.env(ada), ADA), (bob, store.env(bob), BOB)], sandbox)
    for user in (ada, bob):  # each has a token in the store now
        assert user.cli("token", env=store.env(user)).code == 0
    return store


@pytest.fixture(params=BACKENDS)
def shared_logins(request, sandbox, users):
    """Ada logged in with 2 s access tokens, her login in the store (shared credentials),
    her token in need of a refresh: the store's own refresh lock is used."""
    store = _store(request, sandbox, users, logins_in_store=True)
    ada = users["ada"]
    sandbox.set_faults(token_lifetime=2)
    try:
        _login([(ada, store.env(ada), ADA)], sandbox)
    finally:
        sandbox.set_faults(token_lifetime=86400)
    time.sleep(1.7)  # a 2 s token's margin is 0.5 s
    return store


def test_bob_cannot_read_adas_store_key(shared):
    """The seal's key is Ada's alone: 0600 in her home, which Bob cannot read."""
    ada, bob = shared.users["ada"], shared.users["bob"]
    key = ada.home / ".config" / "qlam-hpc" / "store.key"
    assert ada.can_read(key) and not bob.can_read(key)


@pytest.mark.parametrize("how", ["bob's seal kept", "resealed with bob's key", "no seal"])
def test_bobs_entry_copied_over_adas_is_never_handed_to_ada(shared, sandbox, how):
    """Identity substitution: Bob's own valid entry, renamed to Ada's principal, over Ada's key.
    Ada's status never shows Bob; her next token is her own, after one warning line; then
    the store holds her entry again and no one warns."""
    ada, bob = shared.users["ada"], shared.users["bob"]
    planted = _as_adas(shared.read(bob), ada, bob, how, sandbox)
    shared.write(ada, planted)
    status = ada.cli("auth", "status", env=shared.env(ada))
    assert BOB.email not in status.out + status.err and BOB.subject not in status.out + status.err
    assert "Traceback" not in status.err
    shared.write(ada, planted)
    _check_ada_gets_her_own(ada, shared.env(ada), warned=True)
    assert f"principal=device:{ada.name}".encode() in shared.read(ada)
    _check_ada_gets_her_own(ada, shared.env(ada), warned=False)


@pytest.mark.parametrize("how", ["no seal", "resealed with bob's key"])
def test_a_failure_record_bob_writes_is_never_believed_or_shown(shared, sandbox, how):
    """A forged failure record (LoginRequired, with Bob's text) in Ada's entry: her processes
    do not exit 16 and never print Bob's text."""
    ada, bob = shared.users["ada"], shared.users["bob"]
    shared.write(ada, _forged_failure(sandbox, ada, bob, how))
    status = ada.cli("auth", "status", env=shared.env(ada))
    assert BOB_TEXT not in status.out + status.err and "Traceback" not in status.err
    shared.write(ada, _forged_failure(sandbox, ada, bob, how))
    _check_ada_gets_her_own(ada, shared.env(ada), warned=True)


@pytest.mark.parametrize("poison", ["nested 100,000 deep", "nested 20,000 deep", "10 MB", "wrong type"])
def test_a_poisoned_entry_costs_ada_one_refresh_and_is_gone(shared, sandbox, poison):
    """A token whose payload nests deep, a giant value, a value of the wrong type (a Redis
    list, a Vault number): Ada gets her token, with one line, and the next process finds
    her entry again."""
    ada = shared.users["ada"]
    if poison.startswith("nested"):
        shared.write(ada, _nested_token_entry(sandbox, ada, int(poison.split()[1].replace(",", ""))))
    elif poison == "10 MB":
        shared.write(ada, b"x" * (10 * 1024 * 1024))
    elif isinstance(shared, RedisShared):
        shared.bob.delete(shared.key(ada))
        shared.bob.rpush(shared.key(ada), b"not", b"an", b"entry")
    else:
        shared.write(ada, 12345)
    refreshes = sandbox.stats()["refreshes"]
    got = ada.cli("token", env=shared.env(ada))
    assert got.code == 0, got.err
    assert _subject(got.out) == ADA.subject and "Traceback" not in got.err
    assert len(got.err.strip().splitlines()) == 1, got.err
    assert sandbox.stats()["refreshes"] == refreshes + 1
    assert f"principal=device:{ada.name}".encode() in shared.read(ada)
    _check_ada_gets_her_own(ada, shared.env(ada), warned=False)


@pytest.mark.parametrize("shared_logins", [BACKENDS[1]], indirect=True)
def test_a_lock_bob_plants_in_vault_does_not_block_ada(shared_logins, sandbox):
    """A Vault lock record that says it is held until 1e300: Ada takes the lock and refreshes
    at once, not after QLAM_LOCK_TIMEOUT."""
    store = shared_logins
    ada = store.users["ada"]
    store.bob.secrets.kv.v2.create_or_update_secret(
        path=store.key(ada, "lock"),
        secret={"state": "held", "holder": "bob", "nonce": "0" * 32, "until": 1e300},
        mount_point="secret",
    )
    refreshes = sandbox.stats()["refreshes"]
    started = time.monotonic()
    got = ada.cli("token", env={**store.env(ada), "QLAM_LOCK_TIMEOUT": "30"})
    assert got.code == 0, got.err
    assert time.monotonic() - started < 10
    assert _subject(got.out) == ADA.subject and sandbox.stats()["refreshes"] == refreshes + 1


@pytest.mark.parametrize("shared_logins", [BACKENDS[0]], indirect=True)
def test_a_lock_bob_plants_in_redis_without_an_expiry_does_not_block_ada(shared_logins, sandbox):
    """The Redis twin of the planted Vault lock: a lock key with no expiry is not one a holder
    wrote (a holder's lease is 15 s, renewed); Ada should not wait for it."""
    store = shared_logins
    ada = store.users["ada"]
    store.bob.set(store.key(ada, "lock"), b"0\nbob")
    started = time.monotonic()
    got = ada.cli("token", env={**store.env(ada), "QLAM_LOCK_TIMEOUT": "6"})
    assert "Traceback" not in got.err
    assert got.code == 0, got.err  # was 9, LockTimeout, after waiting out QLAM_LOCK_TIMEOUT
    assert time.monotonic() - started < 5


def test_with_logins_in_a_shared_store_bobs_entry_costs_ada_her_login_never_her_identity(shared_logins, sandbox):
    """QLAM_SHARED_REFRESH_TOKENS=allow with shared credentials: Bob's entry over Ada's
    replaces her login too. Ada is then told to log in again (exit 16, one line), never
    handed Bob's token, never shown as Bob."""
    store = shared_logins
    ada, bob = store.users["ada"], store.users["bob"]
    bob_env = store.env(bob)
    _login([(bob, bob_env, BOB)], sandbox)
    assert bob.cli("token", env=bob_env).code == 0
    store.write(ada, _as_adas(store.read(bob), ada, bob, "resealed with bob's key", sandbox))
    got = ada.cli("token", env=store.env(ada))
    assert got.code == 16, got.err
    assert got.out == "" and "not logged in" in got.err and "Traceback" not in got.err
    assert BOB.email not in got.err and BOB.subject not in got.err
    status = ada.cli("auth", "status", env=store.env(ada))
    assert BOB.email not in status.out + status.err and BOB.subject not in status.out + status.err


# --- per-user credentials -----------------------------------------------------------------


@pytest.mark.redis
def test_redis_acl_users_with_their_own_prefix(users, sandbox, redis_server):
    """One ACL user per person, limited to ``qlam-hpc:<user>:*`` and the commands docs/hpc.md
    lists; one site-wide URL with ``{user}``. Ada's login and token live in Redis, ten
    concurrent ``qlam-hpc token`` cost one refresh, and Bob cannot read or write her keys."""
    import redis

    ada, bob = users["ada"], users["bob"]
    admin = redis_server.client()
    passwords = {user.name: uuid.uuid4().hex for user in (ada, bob)}
    for name, password in passwords.items():
        admin.execute_command(
            "ACL", "SETUSER", name, "reset", "on", f">{password}", f"~qlam-hpc:{name}:*", "resetchannels",
            "-@all", *REDIS_COMMANDS.split(),
        )  # fmt: skip
    admin.delete(*(admin.keys("qlam-hpc:qlamtest-*") or ["-"]))
    url = f"redis://{{user}}@127.0.0.1:{redis_server.port}/0?prefix=qlam-hpc:{{user}}"
    envs = {
        user.name: {
            **sandbox.env(flow="device"),
            "QLAM_TOKEN_STORE": url,
            "QLAM_REDIS_PASSWORD": passwords[user.name],
            "QLAM_SHARED_REFRESH_TOKENS": "allow",  # the ACL lets no one else read it
        }
        for user in (ada, bob)
    }
    sandbox.set_faults(token_lifetime=2)
    try:
        _login([(ada, envs[ada.name], ADA), (bob, envs[bob.name], BOB)], sandbox)
    finally:
        sandbox.set_faults(token_lifetime=86400)
    time.sleep(1.7)  # a 2 s token's margin is 0.5 s: every process must refresh
    refreshes = sandbox.stats()["refreshes"]
    crowd = [ada.start("token", env=envs[ada.name]) for _ in range(10)]
    results = [(child.communicate(timeout=120), child.returncode) for child in crowd]
    assert all(code == 0 for _, code in results), [err for (_, err), _ in results]
    assert {_subject(out) for (out, _), _ in results} == {ADA.subject}
    assert sandbox.stats()["refreshes"] == refreshes + 1
    ada_keys = admin.keys(f"qlam-hpc:{ada.name}:*")
    assert any(key.endswith(b":entry") for key in ada_keys) and any(b":ledger:" in key for key in ada_keys)
    assert set(admin.keys("*")) >= set(ada_keys)
    as_bob = redis.Redis(host="127.0.0.1", port=redis_server.port, username=bob.name, password=passwords[bob.name])
    entry_key = next(key for key in ada_keys if key.endswith(b":entry"))
    for attack in (
        lambda: as_bob.set(entry_key, b"planted"),
        lambda: as_bob.get(entry_key),
        lambda: as_bob.delete(entry_key),
        lambda: as_bob.eval("return redis.call('set', KEYS[1], 'x')", 1, entry_key),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attack()
    got = bob.cli("token", env=envs[bob.name])
    assert got.code == 0 and _subject(got.out) == BOB.subject, got.err
    for args in (["auth", "status"], ["auth", "clear", "--all"], ["auth", "logout"]):  # the rest of the commands
        done = ada.cli(*args, env=envs[ada.name])
        assert done.code == 0 and "NOPERM" not in done.err, (args, done.err)
    assert not admin.keys(f"qlam-hpc:{ada.name}:*:entry")
    for name in passwords:
        admin.execute_command("ACL", "DELUSER", name)


@pytest.mark.vault
def test_a_templated_vault_policy_gives_each_login_its_own_path(users, sandbox, bao):
    """One policy for everyone, templated on the userpass login's name, and one site-wide
    ``vault://secret/qlam-hpc/{user}``: Ada's store works under her path; Bob's token is
    refused (403) on Ada's, for reading and writing alike."""
    import hvac.exceptions

    ada, bob = users["ada"], users["bob"]
    root = bao.client()
    if "userpass/" not in root.sys.list_auth_methods():
        root.sys.enable_auth_method("userpass")
    accessor = root.sys.list_auth_methods()["userpass/"]["accessor"]
    path = f"qlamtest-{uuid.uuid4().hex[:8]}"
    policy = bao.policy(PER_USER_POLICY.format(path=path, accessor=accessor))
    tokens = {}
    for user in (ada, bob):
        password = uuid.uuid4().hex
        root.auth.userpass.create_or_update_user(user.name, password, policies=[policy])
        tokens[user.name] = bao.client().auth.userpass.login(user.name, password)["auth"]["client_token"]
    envs = {
        user.name: {
            **sandbox.env(flow="device"),
            "QLAM_TOKEN_STORE": f"vault://secret/{path}/{{user}}",
            "VAULT_ADDR": bao.url,
            "VAULT_TOKEN": tokens[user.name],
            "QLAM_SHARED_REFRESH_TOKENS": "allow",  # the policy lets no one else read it
        }
        for user in (ada, bob)
    }
    _login([(ada, envs[ada.name], ADA), (bob, envs[bob.name], BOB)], sandbox)
    got = ada.cli("token", env=envs[ada.name])
    assert got.code == 0 and _subject(got.out) == ADA.subject, got.err
    entry = f"{path}/{ada.name}/{_identity(sandbox, ada).key()}/entry"
    assert bao.read("secret", entry)
    as_bob = bao.client(tokens[bob.name])
    for attack in (
        lambda: as_bob.secrets.kv.v2.create_or_update_secret(path=entry, secret={"entry": "x"}, mount_point="secret"),
        lambda: as_bob.secrets.kv.v2.read_secret_version(
            path=entry, mount_point="secret", raise_on_deleted_version=True
        ),
        lambda: as_bob.secrets.kv.v2.delete_metadata_and_all_versions(path=entry, mount_point="secret"),
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            attack()
    got = bob.cli("token", env=envs[bob.name])
    assert got.code == 0 and _subject(got.out) == BOB.subject, got.err
    assert bao.read("secret", f"{path}/{bob.name}/{_identity(sandbox, bob).key()}/entry")
    for args in (["token"], ["auth", "status"], ["auth", "clear", "--all"], ["auth", "logout"]):
        done = ada.cli(*args, env=envs[ada.name])
        assert done.code == 0, (args, done.err)
    assert not bao.read("secret", entry)
