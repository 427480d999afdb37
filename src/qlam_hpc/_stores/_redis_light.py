"""A warm read of the Redis store with the standard library only, for the CLI's light paths.

Importing redis-py takes about 160 ms, eight times what a warm ``qlam-hpc token`` through
the file cache costs in all. So the light paths (``_cli/_fast.py``) read a warm entry
through this instead: one connection, ``AUTH``, ``SELECT`` and one ``GETRANGE`` (RESP2,
pipelined), nothing written. The entry must open with the identity's seal and its token
must name this identity, as the full store requires (``_base.SharedEntries``).

It answers only what it fully understands and returns None for anything else, so that the
full store (``_redis.py``), with its messages, exit codes and clean-up, decides: a URL
option this reader does not know, a Unix socket, an error reply (a wrong password, a
``WRONGTYPE`` key), a connection or TLS failure, a missing entry, one that does not open
or whose token is foreign. It never accepts what the full store refuses: plain
``redis://`` off loopback without ``QLAM_REDIS_INSECURE=allow`` is left to the full
store's error. With ``rediss://`` it verifies the server's certificate and its name (the
system's CAs, or ``ssl_ca_certs``).
"""

from __future__ import annotations

import os

from .._cache import MAX_ENTRY_BYTES
from ._shared import quietly_trusted, with_local_user

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import IO, NamedTuple

    from .._cache import CacheEntry, Identity
    from .._settings import Settings

    class _Target(NamedTuple):
        tls: bool
        host: str
        port: int
        db: int
        user: str | None
        password: str | None
        prefix: str
        ca_file: str | None
        timeout: float

else:
    from collections import namedtuple

    _Target = namedtuple("_Target", "tls host port db user password prefix ca_file timeout")

# The query parameters this reader follows; any other one sends the call to redis-py.
_UNDERSTOOD = frozenset({"prefix", "ssl_ca_certs", "socket_timeout"})
_DEFAULT_TIMEOUT = 5.0  # as the full store's connect and read timeouts


def is_plain_prefix(prefix: str) -> bool:
    """Whether ``prefix=`` can start keys (and an ACL pattern such as ``~prefix:*``): no glob
    characters or blanks, at most 200 characters. The full store's rule too."""
    return bool(prefix) and not any(c in prefix for c in "*?[]\\ ") and len(prefix) <= 200


class _Unexpected(Exception):
    """An answer this reader does not handle: the full store will ask again and say why."""


def warm_entry(settings: Settings, identity: Identity, environ: Mapping[str, str] = os.environ) -> CacheEntry | None:
    """The entry of ``identity`` in the Redis store ``settings.token_store`` names, its token
    foreign-checked and its seal opened, or None when the full store must decide."""
    password = settings.token_store_password.reveal() if settings.token_store_password else None
    target = _target(settings.token_store or "", password, environ)
    if target is None:
        return None
    try:
        raw = _getrange(target, f"{target.prefix}:{identity.key()}:entry")
    except (OSError, ValueError, _Unexpected):  # ssl.SSLError is an OSError
        return None
    if not raw or len(raw) > MAX_ENTRY_BYTES:
        return None
    from .._sealing import seal_for

    return quietly_trusted(raw, identity, seal_for(settings, environ))


def _target(url: str, password: str | None, environ: Mapping[str, str]) -> _Target | None:
    """Where to connect, as redis-py would read ``url`` (``_redis.store_from_url``); None for
    what this reader does not handle or the full store would refuse."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    from .._urls import is_loopback

    try:
        parts = urlsplit(with_local_user(url.strip()))
        query = parse_qsl(parts.query, keep_blank_values=True)
        host, port = parts.hostname, parts.port or 6379
    except ValueError:
        return None
    options = dict(query)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss") or not host or parts.fragment or len(options) != len(query):
        return None
    if set(options) - _UNDERSTOOD:
        return None
    insecure = (environ.get("QLAM_REDIS_INSECURE") or "").strip().lower()
    if insecure not in ("", "allow") or (scheme == "redis" and not insecure and not is_loopback(host)):
        return None
    db = parts.path.strip("/") or "0"
    prefix = options.get("prefix", "qlam-hpc")
    if not db.isdigit() or not is_plain_prefix(prefix):
        return None
    try:
        timeout = float(options.get("socket_timeout") or _DEFAULT_TIMEOUT)
    except ValueError:
        return None
    if parts.password is not None:
        password = unquote(parts.password)
    else:
        password = password or environ.get("QLAM_REDIS_PASSWORD") or environ.get("REDIS_PASSWORD") or None
    user = unquote(parts.username) if parts.username else None
    return _Target(
        scheme == "rediss", host, port, int(db), user, password, prefix, options.get("ssl_ca_certs"), timeout
    )


def _getrange(target: _Target, key: str) -> bytes | None:
    """``GETRANGE key 0 MAX_ENTRY_BYTES`` on the target's database, after ``AUTH``."""
    import socket

    commands = []
    if target.password is not None:
        credentials = [target.user, target.password] if target.user else [target.password]
        commands.append(["AUTH", *credentials])
    if target.db:
        commands.append(["SELECT", str(target.db)])
    commands.append(["GETRANGE", key, "0", str(MAX_ENTRY_BYTES)])
    with socket.create_connection((target.host, target.port), timeout=target.timeout) as plain:
        connection = plain
        if target.tls:
            import ssl

            context = ssl.create_default_context(cafile=target.ca_file)
            connection = context.wrap_socket(plain, server_hostname=target.host)
        with connection, connection.makefile("rb") as answers:
            connection.sendall(b"".join(_encode(command) for command in commands))
            replies = [_reply(answers) for _ in commands]
    value = replies[-1]
    if value is not None and not isinstance(value, bytes):
        raise _Unexpected("GETRANGE answered with something other than a string")
    return value


def _encode(command: list[str]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for argument in command:
        data = argument.encode()
        parts += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return b"".join(parts)


def _reply(answers: IO[bytes]) -> bytes | int | None:
    """One RESP2 reply: a simple or bulk string, an integer, or None (a nil bulk string)."""
    line = answers.readline(1024)
    if not line.endswith(b"\r\n"):
        raise _Unexpected("a truncated reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        if size > MAX_ENTRY_BYTES + 1:  # never more than GETRANGE asked for
            raise _Unexpected("a reply longer than asked for")
        data = answers.read(size + 2)
        if len(data) != size + 2 or not data.endswith(b"\r\n"):
            raise _Unexpected("a truncated reply")
        return data[:-2]
    raise _Unexpected("an error or a reply of another kind")  # "-ERR ...": the full store says it
