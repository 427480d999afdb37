"""Token stores: where the shared entry, the refresh lock and the ledger live.

One module per backend behind one small protocol (``_base.TokenStore``), as httpx
keeps its transports:

    _base.py    the protocol every store keeps, and the store of no sharing at all
    _file.py    a directory on a (shared) filesystem: the default
    _redis.py   a Redis database, for nodes that share no filesystem
    _vault.py   a KV version 2 path in Vault or OpenBao, for clusters and sites that share
                neither a filesystem nor a Redis, or that want Vault's policies and audit log
    _shared.py  how an entry read from a store others can write (Redis, Vault) is trusted
    _redis_light.py, _vault_light.py
                a warm read of those two with the standard library, for the CLI

``open_store`` picks the one the settings name. Nothing is imported at module level:
the warm ``qlam-hpc token`` path imports ``_file`` alone (or a light read).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import Any

    from .._cache import Identity
    from .._settings import Settings
    from ._base import TokenStore


def open_store(settings: Settings) -> TokenStore:
    """The store these settings name: none (cache off), ``QLAM_TOKEN_STORE``, or the cache directory."""
    if not settings.cache_enabled:
        from ._base import NullStore

        return NullStore()
    if settings.token_store:
        import os

        from .._cache import Identity
        from .._sealing import seal_for

        # Others can write a Redis or a Vault path: entries there are sealed with this identity's key.
        seal = seal_for(settings)
        if settings.token_store.strip().lower().startswith("vault://"):
            # Vault's own variables (VAULT_ADDR, VAULT_TOKEN, ...), as for vault:// secrets.
            return store_from_url(settings.token_store, os.environ, owner=Identity.of(settings), seal=seal)
        password = settings.token_store_password
        # The environment was read once, by Settings.from_env; all but QLAM_REDIS_INSECURE,
        # which the store reads where it parses the URL (it is not a Settings field yet).
        insecure = {"QLAM_REDIS_INSECURE": os.environ.get("QLAM_REDIS_INSECURE", "")}
        return store_from_url(
            settings.token_store,
            insecure,
            password=password.reveal() if password else None,
            owner=Identity.of(settings),
            seal=seal,
        )
    from ._file import FileStore

    return FileStore(settings.cache_path)


def store_from_url(
    url: str,
    environ: Mapping[str, str] | None = None,
    *,
    password: str | None = None,
    owner: Identity | None = None,
    **options: Any,
) -> TokenStore:
    """The store a ``QLAM_TOKEN_STORE`` URL names: ``redis://``/``rediss://`` (``_redis``),
    ``vault://MOUNT/PATH`` (``_vault``; the server and login from Vault's variables in
    ``environ``) or ``file:///path/to/dir``; ``ConfigurationError`` for anything else."""
    from .._errors import ConfigurationError

    text = url.strip()
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme == "file":
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigurationError(f"QLAM_TOKEN_STORE {text!r}: a file store is written file:///absolute/path/to/dir")
        from ._file import FileStore

        return FileStore(unquote(parts.path))
    if scheme in ("redis", "rediss", "unix"):  # unix:///path/redis.sock?db=N: Redis on a local socket
        from ._redis import redis_store_from_url

        return redis_store_from_url(text, environ, password=password, owner=owner, **options)
    if scheme == "vault":
        from ._vault import vault_store_from_url

        return vault_store_from_url(text, environ, owner=owner, **options)
    from ._redis import _safe_url

    shown = _safe_url(text) if scheme else text.rpartition("@")[2]
    raise ConfigurationError(
        f"QLAM_TOKEN_STORE {shown!r}: expected redis://host:port/db, rediss://host:port/db (TLS), "
        "unix:///path/to/redis.sock?db=N, "
        "vault://MOUNT/PATH (Vault or OpenBao KV version 2) or file:///path/to/dir"
    )
