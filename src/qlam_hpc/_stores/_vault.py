"""The token store in Vault (or OpenBao), for sites whose clusters share no filesystem but a Vault.

``QLAM_TOKEN_STORE=vault://MOUNT/PATH``: MOUNT is a KV version 2 engine, PATH the folder
the store keeps under it (``<key>`` is the identity's hash, as in file names)::

    PATH/<key>/entry      {"entry": <_cache.encode_entry text>}
    PATH/<key>/lock       {"state": "held" | "free", "holder": ..., "nonce": ..., "until": <epoch s>}
    PATH/ledger/YYYY-MM   {"requests": [<record>, ...]}

The server and the login are Vault's own variables, read by ``_secrets.VaultServer``
exactly as for ``vault://`` secret references (``VAULT_ADDR``, ``VAULT_TOKEN`` or AppRole
or ``~/.vault-token``, ``VAULT_CACERT``, ``VAULT_NAMESPACE``; ``BAO_*`` too).

Why these choices:

* A KV v2 write makes one new version, whole: a reader sees the old entry or the new one.
* KV v2's check-and-set (``cas``: write only if the current version is N; 0: only if there
  is none) is the only atomic primitive the store needs. The lock is a record written with
  ``cas``: taking it writes ``held`` over a missing, ``free`` or expired record at the
  version just read, so of all the processes that read that version exactly one write
  succeeds, on every node and cluster that reaches the Vault. Release and renewal are
  written with ``cas`` at the holder's own version: a holder whose lease ran out (stopped,
  cut off) and was taken over can never release or extend its successor's lock.
* The lease is short (15 s) and renewed every 5 s by the holder while it lives, for the
  same reasons as the Redis store's: a killed holder stalls the others one lease at most,
  a slow fetch keeps its lock however long its retries take. Vault has no expiring keys, so
  the lease is a time in the record, compared with the reader's clock: nodes must agree on
  the time within a few seconds (NTP does far better). A wrong clock costs at most one more
  token request, never a wrong token.
* Waiters never block: while the lock is held they read the entry, two GETs a poll.
* Entries do not expire (KV v2 keys have no TTL): an entry outlives its token harmlessly,
  its expiry is inside it. Each write is a new version, and Vault keeps the last few
  (``max_versions``, 10 by default): ``clear`` destroys the metadata and every version.
* The ledger is one record per month, appended with ``cas`` (read, add, write at that
  version, again on a conflict): no request is lost to a concurrent append.
* Whoever can write the path can write an entry, so, as with Redis, a token read here is
  handed out only if its claims name this client and audience and it has not expired
  (``_cache.foreign_token``), and a failure record only as far as ``_cache.Failure``
  believes it.
* Anything that stops the store from working — Vault down, sealed, the login refused, a
  policy without a capability — is one ``VaultStoreUnavailable`` line (exit 15) naming the
  store and, for a policy, the capability and path missing; never a fetch per task. A
  ``save`` that fails only warns: the token in hand is good.

hvac is imported when the store is first used (about 0.15 s), never on the file store's
paths; a process logs in once (an AppRole login is one request) and keeps its client.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from .._cache import MAX_CLOCK_SKEW, CacheEntry, Identity, identity_of
from .._durations import format_duration as _format_duration
from .._errors import ConfigurationError, SecretStoreUnreachable
from .._log import log
from ._shared import SharedEntries, with_local_user

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from .._sealing import EntrySeal
    from .._secrets import VaultServer

DEFAULT_LEASE = 15.0
DEFAULT_TIMEOUT = 5.0
_LEDGER_ATTEMPTS = 20  # appends that lose a cas race try again; 20 covers a crowd of fetchers
_CAS_MISMATCH = "check-and-set parameter did not match"
# What each operation needs, for the message when the policy does not give it.
_NEEDS = {"read": ("read",), "write": ("create", "update"), "delete": ("delete",), "list": ("list",)}


class VaultStoreUnavailable(SecretStoreUnreachable):
    """The token store in Vault cannot be used: Vault is down or sealed, refused the login,
    or the login's policy lacks a capability the store needs (the message names it and the
    path). Exit code 15 for all of them, refusals included, unlike a ``vault://`` secret
    reference: a batch script sees one code for "the shared store in Vault failed", and no
    task of the array fetches a token on its own, which is what the store exists to prevent.
    """


class VaultStore:
    """A token store under one KV version 2 path; safe to share between threads, processes,
    nodes and clusters that reach the same Vault.

    ``server`` is a ``_secrets.VaultServer`` (the address and the login); ``mount`` and
    ``path`` say where, ``lease`` is the lock's lifetime in seconds (renewed every third of
    it by its holder), ``owner`` the caller's identity, whose entries ``clear()`` removes.
    """

    def __init__(
        self,
        server: VaultServer,
        mount: str,
        path: str,
        *,
        lease: float = DEFAULT_LEASE,
        owner: Identity | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        seal: EntrySeal | None = None,
    ) -> None:
        if lease <= 0:
            raise ValueError("lease must be positive")
        import threading

        self.server = server
        self.mount = mount
        self.path = path.strip("/")
        self.lease = lease
        self.owner = owner
        self.timeout = timeout
        self.location = f"vault://{mount}/{self.path} at {server.address}"
        self.shared = SharedEntries(self.location, seal)
        self._client = None
        self._client_pid = 0
        self._guard = threading.RLock()  # the lease thread and the caller share one client

    # --- paths --------------------------------------------------------------------------

    def _key(self, identity: Identity, kind: str) -> str:
        return f"{self.path}/{identity.key()}/{kind}"

    def _ledger_key(self, month: str) -> str:
        return f"{self.path}/ledger/{month}"

    def api_path(self, path: str, kind: str = "data") -> str:
        """``MOUNT/data/PATH`` (or ``metadata``): what a policy names."""
        return f"{self.mount}/{kind}/{path}"

    # --- entries ------------------------------------------------------------------------

    def load(self, identity: Identity) -> CacheEntry | None:
        path = self._key(identity, "entry")
        version, data = self._read(path, "read the token")
        raw = (data or {}).get("entry")
        if raw is None:
            return None
        entry = self.shared.decode(
            raw.encode() if isinstance(raw, str) else b"", identity, f"{path} in {self.location}"
        )
        if entry is None:
            # Emptied at the version read: a good entry published since then stays. Best effort:
            # the next write replaces it anyway.
            try:
                self._write(path, {}, version, "discard an entry that is not yours")
            except VaultStoreUnavailable as error:
                log("debug", str(error))
        return entry

    def save(self, entry: CacheEntry) -> bool:
        raw = self.shared.encode(entry)
        try:
            self._write(self._key(entry.identity, "entry"), {"entry": raw.decode()}, None, "write the token")
        except VaultStoreUnavailable as error:
            log("warning", f"{error}; the token is used, but not shared with other processes")
            return False
        return True

    def clear(self, identity: Identity | None = None) -> int:
        """Remove ``identity``'s entry, every version of it; without one, the owner's entries:
        those naming the owner's token endpoint, client and principal, whatever their audience
        and scope (a Vault path is shared as a Redis is: "all" must not mean other clients'
        or other people's). Without an owner, clearing "all" is refused."""
        if identity is not None:
            path = self._key(identity, "entry")
            version, _ = self._read(path, "read the token")
            if not version:
                return 0
            self._destroy(path, "clear the token")
            return 1
        owner = self.owner
        if owner is None:
            raise ConfigurationError(
                f"token store {self.location}: cannot tell whose entries are whose without the caller's "
                "identity; clear one identity's entry instead"
            )
        removed = 0
        for key in self._list(self.path, "list the entries"):
            if not key.endswith("/") or key == "ledger/":
                continue
            path = f"{self.path}/{key}entry"
            _, data = self._read(path, "read an entry")
            raw = (data or {}).get("entry")
            found = identity_of(raw.encode()) if isinstance(raw, str) else None
            if found is not None and (found.token_url, found.client_id, found.principal) == (
                owner.token_url,
                owner.client_id,
                owner.principal,
            ):
                self._destroy(path, "clear the token")
                removed += 1
        return removed

    # --- the refresh lock ---------------------------------------------------------------

    def try_lock(self, identity: Identity) -> _Lease | None:
        from .._jobinfo import process_label

        path = self._key(identity, "lock")
        version, current = self._read(path, "read the refresh lock")
        now = time.time()
        until = _number(current.get("until")) if current else 0.0
        # A holder renews its lease to now + lease: a record that claims longer was not written
        # by a holder (a planted one would block everyone until the lock timeout), so it has ended.
        if current and current.get("state") == "held" and now < until <= now + self.lease + MAX_CLOCK_SKEW:
            return None
        holder = f"{process_label()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}"
        record = {"state": "held", "holder": holder, "nonce": os.urandom(16).hex(), "until": now + self.lease}
        written = self._write(path, record, version, "take the refresh lock")
        if written is None:
            return None  # another process wrote first: it holds the lock
        if current and current.get("state") == "held":
            log(
                "info",
                f"took over the refresh lock in {self.location} from {current.get('holder')}, whose lease ran out",
            )
        return _Lease(self, path, written, record)

    def lock_holder(self, identity: Identity) -> str | None:
        try:
            _, current = self._read(self._key(identity, "lock"), "read the lock")
        except VaultStoreUnavailable:
            return None
        if not current or current.get("state") != "held":
            return None
        return str(current.get("holder") or "") or None

    # --- the ledger ---------------------------------------------------------------------

    def record_request(self, record: dict[str, Any]) -> None:
        import random

        path = self._ledger_key(time.strftime("%Y-%m", time.gmtime(record["time"])))
        try:
            for _ in range(_LEDGER_ATTEMPTS):
                version, data = self._read(path, "read the ledger")
                records = (data or {}).get("requests")
                records = list(records) if isinstance(records, list) else []
                if self._write(path, {"requests": [*records, record]}, version, "record the token request") is not None:
                    return
                time.sleep(random.uniform(0.01, 0.1))  # another process appended first: read its record, retry
            log(
                "warning",
                f"could not record the token request in the ledger of {self.location}: too many concurrent writers",
            )
        except VaultStoreUnavailable as error:
            log("warning", f"could not record the token request in the ledger: {error}")

    def requests(self, month: str) -> list[dict[str, Any]]:
        _, data = self._read(self._ledger_key(month), "read the ledger")
        records = (data or {}).get("requests")
        return [record for record in records if isinstance(record, dict)] if isinstance(records, list) else []

    # --- checks, for doctor -------------------------------------------------------------

    def check(self, identity: Identity) -> list[tuple[bool, str]]:
        """What ``qlam-hpc doctor`` says about this store, without writing anything: whether
        Vault answers (and is unsealed), whether the login works, whether the mount is KV
        version 2, which capabilities the policy gives on the paths, and what a read costs."""
        found: list[tuple[bool, str]] = []
        try:
            client = self._connect()
        except VaultStoreUnavailable as error:
            return [(False, str(error))]
        with self._guard:
            try:
                health = client.sys.read_health_status(method="GET")
                health = health.json() if hasattr(health, "json") else health
            except Exception as exc:
                return [(False, str(self._failure(exc, "reach Vault", None)))]
        if isinstance(health, dict) and health.get("sealed"):
            return [(False, f"Vault at {self.server.address} is sealed")]
        version = health.get("version", "?") if isinstance(health, dict) else "?"
        found.append((True, f"Vault {version} at {self.server.address} answers, unsealed"))
        try:
            with self._guard:
                me = client.auth.token.lookup_self()["data"]
        except Exception as exc:
            found.append((False, str(self._failure(exc, "look up the login", None))))
            return found
        ttl = me.get("ttl") or 0
        lasts = f"expires in {_format_duration(ttl)}" if ttl else "does not expire"
        policies = ", ".join(me.get("policies") or []) or "none"
        found.append((True, f"login by {self.server.login_kind} accepted (policies: {policies}; {lasts})"))
        try:
            with self._guard:
                mount = client.adapter.get(f"/v1/sys/internal/ui/mounts/{self.mount}")
            data = mount.get("data", {}) if isinstance(mount, dict) else {}
            if data.get("type") not in (None, "kv") or (data.get("options") or {}).get("version") != "2":
                found.append(
                    (
                        False,
                        f"{self.mount}/ is not a KV version 2 engine (type {data.get('type')}, "
                        f"version {(data.get('options') or {}).get('version')})",
                    )
                )
        except Exception:
            pass  # a policy may hide the mount's description; the capabilities below still tell
        probe = self._key(identity, "entry")
        wanted = {
            self.api_path(probe): ("read", "create", "update"),
            self.api_path(self._key(identity, "lock")): ("read", "create", "update"),
            self.api_path(self._ledger_key(time.strftime("%Y-%m", time.gmtime()))): ("read", "create", "update"),
            self.api_path(probe, "metadata"): ("delete",),
        }
        try:
            with self._guard:
                answer = client.adapter.post("/v1/sys/capabilities-self", json={"paths": list(wanted)})
            granted = answer.get("data", answer) if isinstance(answer, dict) else {}
        except Exception as exc:
            found.append((False, str(self._failure(exc, "read the policy's capabilities", None))))
            granted = None
        if granted is not None:
            for path, needs in wanted.items():
                have = set(granted.get(path) or [])
                missing = [need for need in needs if need not in have and "root" not in have and "sudo" not in have]
                use = "auth clear" if "/metadata/" in path else "the store"
                if missing:
                    found.append((False, f"the policy does not allow {', '.join(missing)} on {path} (needed by {use})"))
            if not any(not ok for ok, line in found if "policy" in line):
                found.append(
                    (
                        True,
                        f"the policy allows read, create, update on {self.api_path(self.path)}/* "
                        "and delete on its metadata",
                    )
                )
        costs = []
        for _ in range(5):
            started = time.perf_counter()
            try:
                self._read(probe, "read the token")
            except VaultStoreUnavailable as error:
                found.append((False, str(error)))
                return found
            costs.append(time.perf_counter() - started)
        cost = sorted(costs)[len(costs) // 2] * 1000
        found.append(
            (
                True,
                f"a read of the store costs {cost:.1f} ms; a process reads it once, then keeps "
                "the token in memory (waiters read it about 4 times a second)",
            )
        )
        return found

    # --- Vault calls --------------------------------------------------------------------

    def _connect(self) -> Any:
        """The logged-in client of this process: made (and logged in) at first use, again
        after a fork (a child must not share its parent's connections)."""
        if self._client is not None and self._client_pid == os.getpid():
            return self._client
        with self._guard:
            if self._client is None or self._client_pid != os.getpid():
                try:
                    client = self.server.client(timeout=self.timeout)
                except Exception as exc:
                    raise self._failure(exc, "log in", None) from None
                self._client, self._client_pid = client, os.getpid()
        return self._client

    def _kv(self, method: str, **arguments: Any) -> Any:
        """One KV version 2 call with this process's client. An AppRole login's token ends
        (its TTL, an hour by default) while a long job runs: refused, and the token no longer
        valid, the process logs in again and retries, once. hvac's exceptions pass through."""
        hvac = self.server.hvac()
        for attempt in (1, 2):
            client = self._connect()
            try:
                with self._guard:
                    return getattr(client.secrets.kv.v2, method)(mount_point=self.mount, **arguments)
            except hvac.exceptions.Forbidden:
                if attempt == 2 or not self.server.login_kind.startswith("AppRole") or self._login_works():
                    raise
                with self._guard:
                    self._client = None  # the next _connect logs in again
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, path: str, doing: str) -> tuple[int, dict[str, Any] | None]:
        """``(version, data)``: ``(0, None)`` when there is no such record, ``(N, None)``
        when its current version N was deleted."""
        hvac = self.server.hvac()
        try:
            answer = self._kv("read_secret_version", path=path, raise_on_deleted_version=False)
        except hvac.exceptions.InvalidPath:
            return 0, None
        except Exception as exc:
            raise self._failure(exc, doing, path, "read") from None
        body = (answer or {}).get("data") or {}
        version = _number((body.get("metadata") or {}).get("version"))
        data = body.get("data")
        return int(version), data if isinstance(data, dict) else None

    def _write(self, path: str, data: dict[str, Any], cas: int | None, doing: str) -> int | None:
        """Write ``data`` (only at version ``cas`` when given); the new version, or None when
        check-and-set found another version there."""
        hvac = self.server.hvac()
        try:
            answer = self._kv("create_or_update_secret", path=path, secret=data, cas=cas)
        except hvac.exceptions.InvalidRequest as exc:
            if cas is not None and _CAS_MISMATCH in str(exc):
                return None
            raise self._failure(exc, doing, path, "write") from None
        except Exception as exc:
            raise self._failure(exc, doing, path, "write") from None
        return int(_number(((answer or {}).get("data") or {}).get("version")))

    def _destroy(self, path: str, doing: str) -> None:
        try:
            self._kv("delete_metadata_and_all_versions", path=path)
        except Exception as exc:
            raise self._failure(exc, doing, path, "delete", kind="metadata") from None

    def _list(self, path: str, doing: str) -> list[str]:
        hvac = self.server.hvac()
        try:
            answer = self._kv("list_secrets", path=path)
        except hvac.exceptions.InvalidPath:
            return []
        except Exception as exc:
            raise self._failure(exc, doing, path, "list", kind="metadata") from None
        return list(((answer or {}).get("data") or {}).get("keys") or [])

    def _failure(
        self, exc: BaseException, doing: str, path: str | None, operation: str = "read", kind: str = "data"
    ) -> Exception:
        """One line for what went wrong, naming the store, never a token: the outage, the
        refused login, or the capability the policy lacks (asked of Vault, which knows)."""
        hvac = self.server.hvac()
        known: Exception | None = self.server.failure(exc, VaultStoreUnavailable)
        if known is not None:
            if isinstance(known, VaultStoreUnavailable):
                return VaultStoreUnavailable(f"token store {self.location}: cannot {doing}: {known}")
            return known
        if isinstance(exc, (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized, hvac.exceptions.InvalidRequest)):
            if path is None or not self._login_works():
                return VaultStoreUnavailable(
                    f"token store {self.location}: Vault refused the login ({self.server.login_kind}): "
                    "expired, revoked or wrong; log in again or check the role"
                )
            if isinstance(exc, (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized)):
                api = self.api_path(path, kind)
                needs = _NEEDS[operation]
                have = self._capabilities(api)
                missing = [need for need in needs if need not in have] or list(needs)
                allowed = f"allows {', '.join(sorted(have))} but not" if have and have != {"deny"} else "does not allow"
                return VaultStoreUnavailable(
                    f"token store {self.location}: cannot {doing}: the Vault policy of this login {allowed} "
                    f"{' or '.join(missing)} on {api} (see the policy in docs/hpc.md)"
                )
            return VaultStoreUnavailable(
                f"token store {self.location}: cannot {doing}: Vault refused the request "
                f"(is {self.mount}/ a KV version 2 engine?)"
            )
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return VaultStoreUnavailable(
                f"token store {self.location}: cannot {doing}: no KV version 2 engine at {self.mount}/"
            )
        if isinstance(exc, hvac.exceptions.VaultError):
            return VaultStoreUnavailable(f"token store {self.location}: cannot {doing} ({type(exc).__name__})")
        assert isinstance(exc, Exception)
        return exc  # ours (a ConfigurationError: no login, no hvac) or a bug: raised as it is

    def _login_works(self) -> bool:
        try:
            with self._guard:
                self._connect().auth.token.lookup_self()
            return True
        except Exception:
            return False

    def _capabilities(self, api_path: str) -> set[str]:
        try:
            with self._guard:
                answer = self._connect().adapter.post("/v1/sys/capabilities-self", json={"paths": [api_path]})
            data = answer.get("data", answer) if isinstance(answer, dict) else {}
            return set(data.get(api_path) or data.get("capabilities") or [])
        except Exception:
            return set()


class _Lease:
    """A held lock record, renewed with check-and-set by a daemon thread until released."""

    def __init__(self, store: VaultStore, path: str, version: int, record: dict[str, Any]) -> None:
        import threading

        self._store = store
        self._path = path
        self._version = version
        self._record = record
        self._owner = os.getpid()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="qlam-hpc-vault-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        period = self._store.lease / 3
        while not self._stop.wait(period):
            with self._mutex:
                if self._stop.is_set():
                    return
                record = {**self._record, "until": time.time() + self._store.lease}
                try:
                    written = self._store._write(self._path, record, self._version, "renew the refresh lock")
                except Exception as exc:  # Vault unreachable for a moment: the lease may still hold
                    log("debug", f"could not renew the refresh lock in {self._store.location}: {exc}")
                    continue
                if written is None:
                    # Our lease ran out and another process took the lock: at worst it fetches
                    # too, so carry on, but never touch its record.
                    log("info", f"lost the refresh lock in {self._store.location} (lease expired)")
                    self._stop.set()
                    return
                self._version = written

    def release(self) -> None:
        # A forked child has a copy of this object but not the lock: only the taker releases.
        if os.getpid() != self._owner:
            return
        with self._mutex:
            if self._stop.is_set():
                return
            self._stop.set()
            free = {"state": "free", "holder": "", "nonce": "", "until": 0}
            try:
                # At our version only: if the lock was taken over, the write fails and the
                # successor's record stays.
                self._store._write(self._path, free, self._version, "release the refresh lock")
            except Exception as exc:
                # The lease ends on its own; until then the others wait for our entry.
                log("warning", f"could not release the refresh lock in {self._store.location} ({exc})")

    def __enter__(self) -> _Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return 0.0
    try:
        return float(value)
    except ValueError:
        return 0.0


def parse_vault_url(url: str) -> tuple[str, str]:
    """``vault://MOUNT/PATH`` -> ``(MOUNT, PATH)``; ``ConfigurationError`` for anything else."""
    rest = url.strip()[len("vault://") :]
    if "#" in rest or "?" in rest or "@" in rest.split("/", 1)[0]:
        raise ConfigurationError(
            f"QLAM_TOKEN_STORE {url.strip()!r}: a Vault store is vault://MOUNT/PATH (no #field, no server: "
            "VAULT_ADDR names the server)"
        )
    mount, _, path = rest.strip("/").partition("/")
    if not mount or not path.strip("/") or any(not part for part in path.strip("/").split("/")):
        raise ConfigurationError(
            f"QLAM_TOKEN_STORE {url.strip()!r}: a Vault store is vault://MOUNT/PATH, e.g. vault://secret/qlam-hpc/tokens"
        )
    return mount, path.strip("/")


def vault_store_from_url(
    url: str,
    environ: Mapping[str, str] | None = None,
    *,
    lease: float = DEFAULT_LEASE,
    owner: Identity | None = None,
    seal: EntrySeal | None = None,
    **_ignored: object,
) -> VaultStore:
    """The Vault store a ``vault://MOUNT/PATH`` URL names; the server and login from ``environ``
    (default ``os.environ``): ``VAULT_ADDR``, ``VAULT_TOKEN``/AppRole/``~/.vault-token``,
    ``VAULT_CACERT``, ``VAULT_NAMESPACE`` and their ``BAO_*`` names. No request is made here."""
    from .._secrets import VaultServer

    mount, path = parse_vault_url(with_local_user(url))
    env = os.environ if environ is None else environ
    server = VaultServer(env, f"the token store vault://{mount}/{path}", "QLAM_TOKEN_STORE")
    return VaultStore(server, mount, path, lease=lease, owner=owner, seal=seal)
