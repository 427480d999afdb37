"""The warm path of ``qlam-hpc token``: a cache hit served with the standard library only.

It answers only what it fully understands — a usable cached token for plain
``--json``/``--header``/``--min-ttl`` options — and returns None for anything
else, errors included, so the full CLI handles it with its usual messages.
"""

from __future__ import annotations

import time


def warm_token(args: list[str]) -> int | None:
    options = _parse(args)
    if options is None:
        return None
    mode, min_ttl = options
    try:
        from .._cache import Identity, cached_token
        from .._stores._file import FileStore
        from .._settings import Settings

        settings = Settings.from_env()
        if not settings.cache_enabled or settings.token_store:
            return None
        identity = Identity.of(settings)
        entry = FileStore(settings.cache_path).load(identity)
    except Exception:  # the full CLI reproduces it and reports it properly
        return None
    now = time.time()
    token = cached_token(entry, now, min_ttl)
    if token is None:
        return None
    from ._output import print_token

    print_token(token, "cache", mode, now)
    return 0


def _parse(args: list[str]) -> tuple[str, float] | None:
    mode, min_ttl, rest = "plain", "0", list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("--json", "--header") and mode == "plain":
            mode = arg[2:]
        elif arg == "--min-ttl" and rest:
            min_ttl = rest.pop(0)
        elif arg.startswith("--min-ttl="):
            min_ttl = arg.partition("=")[2]
        else:
            return None
    from .._durations import parse_duration

    try:
        return mode, parse_duration(min_ttl)
    except ValueError:
        return None
