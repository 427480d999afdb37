"""The token store in Redis, for clusters whose nodes share no usable filesystem.

Keys (``<prefix>`` is ``qlam-hpc``; ``<key>`` is the identity's hash, as in file names)::

    <prefix>:<key>:entry          the entry (``_cache.encode_entry``), with a TTL
    <prefix>:<key>:lock           the refresh lock: "<random>\\n<holder>", with a lease
    <prefix>:ledger:YYYY-MM       a list, one JSON record per token request

Why these choices:

* An entry is one ``SET``: Redis applies it whole, so a reader sees the old entry or
  the new one. It expires with the later of its token and its failure record; nothing
  in it is of use after that, so a crashed array leaves no litter behind.
* The lock is set with a lease (``PX``) and a value only its holder knows, by a script that
  takes it only when it is free or was planted (no expiry, or longer than any holder sets:
  someone else's key, which would otherwise block every process until the lock timeout);
  it is released by a compare-and-delete script: a holder whose lease ran out (it was
  stopped, or cut off from Redis) can never delete the lock a successor took since.
* The lease is short (15 s) and renewed every 5 s by the holder while it lives. A fixed
  lease would have to outlast the longest fetch (``QLAM_RETRY_DEADLINE``, 60 s, plus a
  request's timeouts) yet end before the waiters give up (``QLAM_LOCK_TIMEOUT``, 90 s),
  and every task of an array would sit out all of it after a crash. Renewed, a killed
  or stopped holder stalls the others for at most one lease, and a slow fetch keeps its
  lock however long its retries take.
* As with files, correctness never rests on the lock: a lost lease costs at most one
  more token request, never a wrong or torn entry.
* Redis that cannot be reached is a ``CacheError`` naming the store, not a fetch per
  task: a thousand tasks fetching on their own is what the store exists to prevent. A
  ``save`` that fails only warns: the token in hand is good.
* Whoever can write the database can write an entry, so what is read is not trusted as
  the file store's 0600 entries are: a token is handed out only if its claims name this
  client and audience and it has not expired by its own ``exp`` (``_cache.foreign_token``);
  otherwise it is dropped from the entry with a warning (the login and failure record
  beside it are kept: deleting them would let a planted token log the user out). A
  failure record is believed only as far as the reader would have written it
  (``_cache.Failure``), and only for a salted fingerprint of the credentials in use.
* ``redis://`` sends the password and the tokens in clear, so it is refused off
  loopback unless ``QLAM_REDIS_INSECURE=allow`` says the site has decided otherwise (a
  private network, a TLS tunnel): the same rule as plain http to the identity provider.

redis-py is imported when a store is made, never on the file store's paths.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

from .._cache import MAX_CLOCK_SKEW, MAX_ENTRY_BYTES, CacheEntry, Identity, identity_of
from .._errors import CacheError, ConfigurationError
from .._log import log
from ._redis_light import is_plain_prefix
from ._shared import SharedEntries, with_local_user

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType
    from typing import Any, Literal

    from redis import Redis

    from .._sealing import EntrySeal

DEFAULT_LEASE = 15.0
DEFAULT_TIMEOUT = 5.0
_LEDGER_DAYS = 400  # a ledger month outlives the month it counts, and then some

# Take the lock when it is free, or when what holds it was not written by a holder: a key with
# no expiry, or one longer than a lease (holders set and renew it to the lease) was planted.
_TAKE = (
    "local left = redis.call('pttl', KEYS[1]) "
    "if left == -2 or left == -1 or left > tonumber(ARGV[3]) then "
    "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return 1 end return 0"
)
# Delete a key / extend the lock only while it still holds the value we know.
_DELETE_IF_SAME = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"


class RedisUnavailable(CacheError):
    """The Redis token store cannot be reached or refused us (exit code 8)."""


class RedisStore:
    """A token store in one Redis database; safe to share between threads, processes and nodes.

    ``client`` is a ``redis.Redis``. ``lease`` is the lock's lifetime in seconds; its holder
    renews it every third of it, so it bounds the stall after a holder dies, not a fetch.
    ``owner`` is the identity of the caller, whose entries ``clear()`` removes.
    """

    def __init__(
        self,
        client: Redis,
        *,
        lease: float = DEFAULT_LEASE,
        prefix: str = "qlam-hpc",
        location: str | None = None,
        owner: Identity | None = None,
        seal: EntrySeal | None = None,
    ) -> None:
        if lease <= 0:
            raise ValueError("lease must be positive")
        self.client = client
        self.lease = lease
        self.prefix = prefix
        self.location = location or _describe_client(client)
        self.owner = owner
        self.shared = SharedEntries(self.location, seal)

    def _key(self, identity: Identity, kind: str) -> str:
        return f"{self.prefix}:{identity.key()}:{kind}"

    def _ledger_key(self, month: str) -> str:
        return f"{self.prefix}:ledger:{month}"

    # --- entries ------------------------------------------------------------------------

    def load(self, identity: Identity) -> CacheEntry | None:
        key = self._key(identity, "entry")
        try:
            with self._errors("read the token"):
                # Never more than an entry can be: a planted giant value costs nothing to read.
                raw = self.client.getrange(key, 0, MAX_ENTRY_BYTES) or None
        except RedisUnavailable as error:
            if "WRONGTYPE" not in str(error):
                raise
            raw = b"\0" * (MAX_ENTRY_BYTES + 1)  # a list or a set where the entry goes: not ours, removed
        if raw is None:
            return None
        assert isinstance(raw, bytes)  # the store's client never decodes answers (decode_responses off)
        entry = self.shared.decode(raw, identity, f"{key} in {self.location}")
        if entry is None:
            # Only if unchanged: a good entry published since the read stays. Best effort: the
            # next write replaces it anyway.
            try:
                with self._errors("discard an entry that is not yours"):
                    if len(raw) > MAX_ENTRY_BYTES:
                        self.client.delete(key)
                    else:
                        self.client.eval(_DELETE_IF_SAME, 1, key, raw)
            except RedisUnavailable as error:
                log("debug", str(error))
        return entry

    def save(self, entry: CacheEntry) -> bool:
        raw = self.shared.encode(entry)
        try:
            with self._errors("write the token"):
                self.client.set(self._key(entry.identity, "entry"), raw, ex=_ttl(entry, time.time()))
        except RedisUnavailable as error:
            log("warning", f"{error}; the token is used, but not shared with other processes")
            return False
        return True

    def clear(self, identity: Identity | None = None) -> int:
        """Remove ``identity``'s entry; without one, the owner's entries: those naming the
        owner's token endpoint, client and principal, whatever their audience and scope.

        A Redis is shared by clients (and, in user context, people) that a file cache
        directory never mixes, and "all" must not mean theirs: another client's tokens, or
        another person's login, are not the caller's to delete. An entry that cannot be read
        is not provably the owner's and is left (``load`` discards it when its owner reads
        it). Without an owner, clearing "all" is refused.
        """
        with self._errors("clear the token"):
            if identity is not None:
                return int(self.client.delete(self._key(identity, "entry")))
            owner = self.owner
            if owner is None:
                raise ConfigurationError(
                    f"token store {self.location}: cannot tell whose entries are whose without the caller's "
                    "identity; clear one identity's entry instead"
                )
            removed = 0
            for key in self.client.scan_iter(match=f"{self.prefix}:*:entry", count=500):
                raw = self.client.get(key) or b""
                assert isinstance(raw, bytes)  # the store's client never decodes answers
                found = identity_of(raw)
                if found is not None and (found.token_url, found.client_id, found.principal) == (
                    owner.token_url,
                    owner.client_id,
                    owner.principal,
                ):
                    removed += int(self.client.delete(key))
            return removed

    # --- the refresh lock ---------------------------------------------------------------

    def try_lock(self, identity: Identity) -> _Lease | None:
        from .._jobinfo import process_label

        key = self._key(identity, "lock")
        secret = os.urandom(16).hex()
        holder = f"{process_label()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        longest = _ms(self.lease + MAX_CLOCK_SKEW)
        with self._errors("take the refresh lock"):
            taken = self.client.eval(_TAKE, 1, key, f"{secret}\n{holder}", _ms(self.lease), longest)
        if not taken:
            return None
        return _Lease(self, key, f"{secret}\n{holder}")

    def lock_holder(self, identity: Identity) -> str | None:
        try:
            with self._errors("read the lock"):
                value = self.client.get(self._key(identity, "lock"))
        except RedisUnavailable:
            return None
        if value is None:
            return None
        assert isinstance(value, bytes)  # the store's client never decodes answers
        return value.decode(errors="replace").partition("\n")[2] or None

    # --- the ledger ---------------------------------------------------------------------

    def record_request(self, record: dict[str, Any]) -> None:
        key = self._ledger_key(time.strftime("%Y-%m", time.gmtime(record["time"])))
        try:
            with self._errors("record the token request"):
                pipe = self.client.pipeline(transaction=True)
                pipe.rpush(key, json.dumps(record, separators=(",", ":")))
                pipe.expire(key, _LEDGER_DAYS * 86400)
                pipe.execute()
        except RedisUnavailable as error:
            log("warning", f"could not record the token request in the ledger: {error}")

    def requests(self, month: str) -> list[dict[str, Any]]:
        with self._errors("read the ledger"):
            lines = self.client.lrange(self._ledger_key(month), 0, -1)
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    # --- errors -------------------------------------------------------------------------

    def _errors(self, doing: str) -> _RedisErrors:
        return _RedisErrors(self.location, doing)


class _RedisErrors:
    """Turns redis-py's exceptions into one ``RedisUnavailable`` line that names the store."""

    def __init__(self, location: str, doing: str) -> None:
        self.location = location
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc is None:
            return False
        import redis

        if not isinstance(exc, redis.exceptions.RedisError):
            return False
        raise RedisUnavailable(f"token store {self.location}: cannot {self.doing} ({_explain(exc)})") from None


class _Lease:
    """A held Redis lock, renewed by a daemon thread until released."""

    def __init__(self, store: RedisStore, key: str, value: str) -> None:
        import threading

        self._store = store
        self._key = key
        self._value = value
        self._owner = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="qlam-hpc-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        period = self._store.lease / 3
        while not self._stop.wait(period):
            try:
                kept = self._store.client.eval(_RENEW, 1, self._key, self._value, _ms(self._store.lease))
            except Exception as exc:  # Redis unreachable for a moment: the lease may still hold
                log("debug", f"could not renew the refresh lock in {self._store.location}: {exc}")
                continue
            if not kept:
                # Our lease ran out (we were stopped, or cut off) and another process may hold
                # the lock now: at worst it fetches too, so carry on, but never touch its lock.
                log("info", f"lost the refresh lock in {self._store.location} (lease expired)")
                return

    def release(self) -> None:
        # A forked child has a copy of this object but not the lock: only the taker releases.
        if self._stop.is_set() or os.getpid() != self._owner:
            return
        self._stop.set()
        try:
            self._store.client.eval(_DELETE_IF_SAME, 1, self._key, self._value)
        except Exception as exc:
            # The lease expires on its own; until then the others wait for our entry.
            log("warning", f"could not release the refresh lock in {self._store.location} ({exc})")

    def __enter__(self) -> _Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _ttl(entry: CacheEntry, now: float) -> int:
    """Seconds until nothing in the entry is of use: the latest of token expiry, failure end
    and, in user context, the login's end (the refresh token outlives its access tokens)."""
    ends = [now + 1]
    if entry.token is not None:
        ends.append(entry.token.expires_at)
    if entry.failure is not None:
        ends.append(entry.failure.until)
    if entry.login is not None:
        ends.append(entry.login.expires_at)
    return max(1, math.ceil(max(ends) - now))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _explain(exc: Exception) -> str:
    import redis

    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, redis.exceptions.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        if "HELLO must be called" in text or "NOAUTH" in text or "Authentication required" in text:
            return "it requires a password: put it in the URL or set QLAM_REDIS_PASSWORD or REDIS_PASSWORD"
        return "it refused the password"
    if isinstance(exc, redis.exceptions.TimeoutError):
        return f"timed out: {text}"
    return text


def _describe_client(client: Redis) -> str:
    """Where the client really connects, as messages show it: never a password."""
    try:
        kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        scheme = "rediss" if "SSL" in client.connection_pool.connection_class.__name__ else "redis"
        host = str(kwargs.get("host", "localhost"))
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    except AttributeError:
        return repr(client)


def _safe_url(url: str) -> str:
    """The URL without password or query: what messages and ``auth status`` may show."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        # Too broken to take apart: show only what cannot hold a password.
        return url.rpartition("@")[2] if "@" in url else url.split("://", 1)[0] + "://..."
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def redis_store_from_url(
    url: str,
    environ: Mapping[str, str] | None = None,
    *,
    password: str | None = None,
    lease: float = DEFAULT_LEASE,
    owner: Identity | None = None,
    seal: EntrySeal | None = None,
) -> RedisStore:
    """The Redis store a ``redis://`` or ``rediss://`` URL names; ``owner`` is the caller's identity.

    The URL is read by ``redis.Redis.from_url``: ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://`` for TLS, query parameters such as ``ssl_ca_certs=/path/ca.pem``,
    ``ssl_cert_reqs`` or ``socket_timeout`` as in redis-py. One parameter is ours:
    ``prefix=`` starts every key (default ``qlam-hpc``), so that a Redis ACL user can be
    given its own keys (``~qlam-hpc:ada:*``); ``{user}`` in the URL is the local user's name.
    A password not in the URL is ``password``, else ``QLAM_REDIS_PASSWORD`` or
    ``REDIS_PASSWORD`` from ``environ`` (default ``os.environ``).

    ``redis://`` to a host other than loopback (``localhost``, ``127.x.y.z``, ``::1``) is
    refused unless ``QLAM_REDIS_INSECURE=allow`` in ``environ``: the password and every
    token would cross the network in clear. The host checked is the one the client will
    really connect to (a ``host=`` in the query string included); a Unix socket is local.
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit

    from .._urls import is_loopback

    env = os.environ if environ is None else environ
    text = with_local_user(url.strip())
    scheme = text.partition("://")[0].lower()
    try:
        import redis
    except ImportError:
        raise ConfigurationError(
            "QLAM_TOKEN_STORE names a Redis server but redis-py is not installed: pip install 'qlam-hpc[redis]'"
        ) from None
    options: dict[str, Any] = {"socket_connect_timeout": DEFAULT_TIMEOUT, "socket_timeout": DEFAULT_TIMEOUT}
    try:
        parts = urlsplit(text)
        has_password = parts.password is not None
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise ConfigurationError(f"QLAM_TOKEN_STORE {_safe_url(text)!r} is not a valid URL") from None
    prefix = next((value for name, value in query if name == "prefix"), "qlam-hpc")
    if not is_plain_prefix(prefix):
        raise ConfigurationError(f"QLAM_TOKEN_STORE {_safe_url(text)!r}: prefix= must be a plain key prefix")
    if any(name == "prefix" for name, _ in query):  # ours, not redis-py's: taken out before it reads the URL
        rest = urlencode([(name, value) for name, value in query if name != "prefix"])
        text = text.partition("?")[0] + (f"?{rest}" if rest else "")
    insecure = (env.get("QLAM_REDIS_INSECURE") or "").strip()
    if insecure and insecure.lower() != "allow":
        raise ConfigurationError(f"QLAM_REDIS_INSECURE={insecure!r:.40}: the only value is allow")
    if not has_password:
        password = password or env.get("QLAM_REDIS_PASSWORD") or env.get("REDIS_PASSWORD")
        if password:
            options["password"] = password
    try:
        client = redis.Redis.from_url(text, **options)
        # redis-py hands unknown query parameters to each connection it makes; make one now
        # (it does not connect) so that a typo is a configuration error, not a crash later.
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:
        # The message names a parameter, never its value.
        detail = str(exc).replace("AbstractConnection.__init__() got an ", "")
        raise ConfigurationError(f"QLAM_TOKEN_STORE {_safe_url(text)!r}: {detail}") from None
    location = _describe_client(client)
    if prefix != "qlam-hpc":
        location += f" (keys {prefix}:*)"
    connects = client.connection_pool.connection_kwargs
    socket_path = connects.get("path")
    host = str(connects.get("host") or "localhost")
    if scheme == "redis" and not insecure and not socket_path and not is_loopback(host):
        raise ConfigurationError(
            f"QLAM_TOKEN_STORE {location!r} would send the Redis password and the tokens in clear: "
            "use rediss:// (TLS), or set QLAM_REDIS_INSECURE=allow if the network is trusted"
        )
    return RedisStore(client, lease=lease, prefix=prefix, location=location, owner=owner, seal=seal)
