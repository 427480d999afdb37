"""A warm read of the Vault store with the standard library only, for the CLI's light paths.

hvac (and requests under it) takes about 100 ms to import, five times a warm
``qlam-hpc token`` through the file cache. So the light paths (``_cli/_fast.py``) read a
warm entry with one ``GET /v1/MOUNT/data/PATH/<key>/entry`` over ``http.client``,
nothing written. The server, its trust (``VAULT_CACERT``/``VAULT_CAPATH``), namespace and
token are read by ``_secrets.VaultServer``, as for the full store; the entry must open
with the identity's seal and its token must name this identity (``_base.quietly_trusted``).

It answers only what it fully understands and returns None for anything else, so that the
full store (``_vault.py``, through hvac), with its messages, exit codes and clean-up,
decides: an AppRole login (the full store logs in), a path with characters to quote, an
answer other than 200 (a missing entry, a refused token, a sealed server), a connection or
TLS failure, an entry that does not open or whose token is foreign.
"""

from __future__ import annotations

import os

from .._cache import MAX_ENTRY_BYTES
from .._errors import QlamError
from ._shared import quietly_trusted, with_local_user

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import ssl
    from collections.abc import Mapping

    from .._cache import CacheEntry, Identity
    from .._secrets import VaultServer
    from .._settings import Settings

_TIMEOUT = 10.0  # as the full store's client
# A path hvac would send as it is: anything else goes to the full store.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./")


def warm_entry(settings: Settings, identity: Identity, environ: Mapping[str, str] = os.environ) -> CacheEntry | None:
    """The entry of ``identity`` in the Vault store ``settings.token_store`` names, its token
    foreign-checked and its seal opened, or None when the full store must decide."""
    from .._secrets import VaultServer
    from ._vault import parse_vault_url

    try:
        mount, path = parse_vault_url(with_local_user(settings.token_store or ""))
        server = VaultServer(environ, f"the token store vault://{mount}/{path}", "QLAM_TOKEN_STORE")
    except QlamError:
        return None
    token = server.static_token()  # None with AppRole, whose login the full store makes
    api_path = f"/v1/{mount}/data/{path}/{identity.key()}/entry"
    if token is None or not set(api_path) <= _PLAIN:
        return None
    try:
        raw = _entry(server, api_path, token)
    except (OSError, ValueError, RecursionError, QlamError):  # ssl.SSLError is an OSError; http.client's
        return None  # errors are OSErrors or ValueErrors; JSON nested to exhaust the parser: the full store
    if not raw:
        return None
    from .._sealing import seal_for

    return quietly_trusted(raw, identity, seal_for(settings, environ))


def _entry(server: VaultServer, api_path: str, token: str) -> bytes | None:
    """The ``entry`` field of the record at ``api_path``, or None when the answer is not a 200
    with one."""
    import http.client
    import json

    scheme, _, authority = server.address.partition("://")
    headers = {"X-Vault-Token": token, "Accept": "application/json"}
    if server.namespace:
        headers["X-Vault-Namespace"] = server.namespace
    if scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            authority, timeout=_TIMEOUT, context=_context(server)
        )
    else:  # VaultServer allows plain http on loopback only
        connection = http.client.HTTPConnection(authority, timeout=_TIMEOUT)
    try:
        connection.request("GET", api_path, headers=headers)
        answer = connection.getresponse()
        # An entry is at most MAX_ENTRY_BYTES, and JSON at most doubles it: never read more.
        body = answer.read(4 * MAX_ENTRY_BYTES + 4096)
        if answer.status != 200:
            return None
    finally:
        connection.close()
    record = json.loads(body)  # {"data": {"data": {"entry": "..."}, "metadata": {...}}}
    for name in ("data", "data", "entry"):
        record = record.get(name) if isinstance(record, dict) else None
    return record.encode() if isinstance(record, str) else None


def _context(server: VaultServer) -> ssl.SSLContext:
    """The TLS context for Vault: its CA bundle or directory, else the system's trust."""
    import ssl

    from .._tls import verify

    bundle = server.trust[1] if server.trust else None
    context = verify(bundle) if bundle else True
    return context if isinstance(context, ssl.SSLContext) else ssl.create_default_context()
