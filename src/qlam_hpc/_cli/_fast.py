"""The light paths: commands a batch job runs once per array task, served without click,
httpx, pydantic or rich when the shared cache holds a usable token.

- ``qlam-hpc token``: a cache hit, with the standard library only;
- ``qlam-hpc api METHOD PATH`` and ``qlam-hpc tasks get|list|submit`` with ``--json`` (or
  ``submit -q``): one request over ``http.client`` (``_api._light``), the same retry and
  error policy as the library, the server's JSON printed as it came.

Each answers only what it fully understands — plain options, a usable token, no proxy — and
returns None for anything else (``--help``, a bad value, a token to fetch, an option it does
not know), so the full CLI (``_app.py``) handles it with its usual messages. A cold cache
whose token another process is fetching is a usable token a moment later: the light paths
wait for it (``_wait_for_holder``), so of the tasks of an array that start together only the
one that fetches loads the full CLI. Once a request is
sent, the light path finishes it: its errors are the library's, printed as ``_app.run``
prints them, with the same exit codes.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import Any

    from .._api._light import Answer
    from .._api._requests import ApiRequest
    from .._api._settings import ApiSettings
    from .._cache import CacheEntry, Identity
    from .._settings import Settings
    from .._stores._file import FileStore, _HeldLock
    from .._tokens import Token


def warm_token(args: list[str]) -> int | None:
    options = _parse_token(args)
    if options is None:
        return None
    mode, min_ttl = options
    found = _cached(min_ttl)
    if found is None or isinstance(found, int):
        return found
    from ._output import print_token

    try:
        print_token(found[1], found[2], mode, time.time())
        sys.stdout.flush()
    except BrokenPipeError:  # `qlam-hpc token | head -c1`: 128 + SIGPIPE, as the full CLI says it
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


def _cached(
    min_ttl: float = 0.0, prepare: Callable[[], object] | None = None
) -> tuple[Settings, Token, str] | int | None:
    """``(settings, token, source)`` when the file cache holds a token usable for ``min_ttl``,
    once the process fetching one has published it, or once this process has fetched it; an
    exit code when that failed (said as the full CLI says it); None for the full CLI."""
    try:
        from .._cache import Identity, cached_token
        from .._settings import Settings
        from .._stores._file import FileStore, _HeldLock

        settings = Settings.from_env()
        if not settings.cache_enabled:
            return None
        if settings.token_store:
            return _warm_in_store(settings, min_ttl)
        store = FileStore(settings.cache_path)
        identity = Identity.of(settings)
        entry = store.load(identity)
        if entry is not None and entry.confirm_after is not None and time.time() >= entry.confirm_after:
            return None  # a takeover's late check of the login is due, or found it gone: the provider's call
        token: Token | int | _HeldLock | None = cached_token(entry, time.time(), min_ttl)
        if token is None:
            token = _wait_for_holder(settings, store, identity, entry, min_ttl, prepare)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception:  # the full CLI reproduces it and reports it properly
        return None
    if token is None or isinstance(token, int):
        return token
    if isinstance(token, _HeldLock):
        try:
            return _fetch(settings, min_ttl)
        finally:
            token.release()  # in case the provider did not need it (it releases what it takes)
    return settings, token, "cache"


def _warm_in_store(settings: Settings, min_ttl: float) -> tuple[Settings, Token, str] | None:
    """A usable token in the Redis or Vault store, read without redis-py or hvac
    (``_stores._redis_light``, ``_stores._vault_light``); None for anything else (a cold or
    expired entry, an error), which the full CLI handles: its first wave costs no more than
    a warm one."""
    url = (settings.token_store or "").strip().lower()
    if url.startswith(("redis://", "rediss://")):
        from .._stores._redis_light import warm_entry
    elif url.startswith("vault://"):
        from .._stores._vault_light import warm_entry
    else:
        return None
    from .._cache import Identity, cached_token

    entry = warm_entry(settings, Identity.of(settings))
    if entry is None or (entry.confirm_after is not None and time.time() >= entry.confirm_after):
        return None
    token = cached_token(entry, time.time(), min_ttl)
    return (settings, token, "cache") if token is not None else None


def _fetch(settings: Settings, min_ttl: float) -> tuple[Settings, Token, str] | int:
    """This process holds the refresh lock (handed over to its provider): fetch through the
    provider, which loads the token-fetching stack but not the CLI's (click, rich, pydantic);
    its errors are said as ``_app.run`` says them."""
    from .._provider import TokenProvider, TokenResult

    results: list[TokenResult] = []

    def call() -> int:
        results.append(TokenProvider(settings).get(min_ttl=min_ttl))
        return 0

    code = _exit_point(call)
    return (settings, results[0].token, results[0].source) if results else code


def _wait_for_holder(
    settings: Settings,
    store: FileStore,
    identity: Identity,
    entry: CacheEntry | None,
    min_ttl: float,
    prepare: Callable[[], object] | None = None,
) -> Token | int | _HeldLock | None:
    """A cold cache: the token another process is fetching, read as soon as it is published.

    The tasks of an array start together, and all but one only have to read what that one
    fetches: they wait here, with the standard library, instead of loading the full CLI and
    its HTTP stack (which would take the CPU the fetching process needs). The one that finds
    the lock free returns it, handed over to its provider, which fetches under it. Everything
    else the provider decides (a failure record to replay, a login to refresh or to report,
    a holder gone without a result to take over from) is left to the full CLI, so its
    messages and exit codes stay what they are; this only returns sooner what it would.

    ``prepare`` runs once the wait has begun: what the call after it needs and can do without
    the token (its imports), done while the fetch is in flight rather than all at once, by
    every waiter, when the token is published."""
    from .._cache import cached_token
    from .._stores._file import FileStore, jittered

    if _provider_decides(settings, entry, min_ttl):
        return None
    lock_store = store
    if settings.user_context:
        if settings.refresh_token_dir:  # where the provider keeps the login, and its lock
            lock_store = FileStore(settings.refresh_token_dir)
            login_entry = lock_store.load(identity)
        else:
            login_entry = entry
        if login_entry is None or login_entry.login is None:
            return None  # nothing to refresh with: the full CLI says so
    deadline = time.time() + settings.lock_timeout
    seen = store.signature(identity)
    pause, waited = 0.005, False
    while True:
        lock = lock_store.try_lock(identity)
        if lock is not None:
            entry = store.load(identity)  # the previous holder may have just published
            token = cached_token(entry, time.time(), min_ttl)
            if token is not None:
                lock.release()
                return token
            if waited or _provider_decides(settings, entry, min_ttl):
                # The holder left without a result (killed, or an error it does not record):
                # the full CLI takes over or says why, as every waiter did before.
                lock.release()
                return None
            lock_store.hand_over(lock)
            return lock
        if not waited and prepare is not None:
            prepare()
        waited = True
        if time.time() >= deadline:
            return _lock_timeout(settings, lock_store, identity)
        time.sleep(jittered(pause))
        pause = min(pause * 1.5, 0.25)
        now = store.signature(identity)
        if now != seen:  # published (or the holder's write-ahead): read it
            seen = now
            entry = store.load(identity)
            token = cached_token(entry, time.time(), min_ttl)
            if token is not None:
                return token
            if _provider_decides(settings, entry, min_ttl):
                return None


def _provider_decides(settings: Settings, entry: CacheEntry | None, min_ttl: float) -> bool:
    """What only the provider handles: a failure record that stands (replayed as is, or
    ignored for new credentials) and a token known to be too short for ``min_ttl``."""
    if entry is None:
        return False
    longest = max(settings.rejected_cooldown, settings.transient_cooldown)
    if entry.failure is not None and entry.failure.stands(time.time(), longest=longest):
        return True
    return bool(min_ttl and entry.token is not None and entry.token.lifetime <= min_ttl)


def _lock_timeout(settings: Settings, store: FileStore, identity: Identity) -> int:
    """The provider's ``LockTimeout``, said as the full CLI says it (no second wait there)."""
    from .._errors import LockTimeout

    holder = store.lock_holder(identity) or "another process"
    error = LockTimeout(
        f"{holder} has held the token refresh lock in {store.location} for more than "
        f"{settings.lock_timeout:g}s without publishing a token; giving up "
        "(is it hung or stopped? QLAM_LOCK_TIMEOUT sets the wait)"
    )
    return _fail(str(error), error.exit_code)


def _parse_token(args: list[str]) -> tuple[str, float] | None:
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


# --- api and tasks ---------------------------------------------------------------------------


class _Options:
    """Options and positional arguments of one command, read the way click reads them for the
    forms handled here (``--name value``, ``--name=value``, flags); ``None`` for anything else."""

    def __init__(self, args: list[str], valued: dict[str, str], flags: dict[str, str]) -> None:
        self.values: dict[str, list[str]] = {}
        self.flags: set[str] = set()
        self.positional: list[str] = []
        self.ok = True
        rest = list(args)
        while rest:
            arg = rest.pop(0)
            name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            if name in valued and (eq or rest):
                self.values.setdefault(valued[name], []).append(value if eq else rest.pop(0))
            elif arg in flags:
                self.flags.add(flags[arg])
            elif arg.startswith("-") and arg != "-":
                self.ok = False  # --help, --, an unknown option, -abc bundles: click's business
                return
            else:
                self.positional.append(arg)

    def one(self, key: str) -> str | None:
        found = self.values.get(key, [])
        if len(found) > 1:
            self.ok = False
        return found[-1] if found else None


_API_URL = {"--api-url": "api_url", "--qpu-mode": "qpu_mode"}


def warm_api(args: list[str]) -> int | None:
    """``qlam-hpc api METHOD PATH [-d DATA] [-H 'Name: value']... [-i]``."""
    from . import _calls

    opts = _Options(
        args,
        {**_API_URL, "-d": "data", "--data": "data", "-H": "header", "--header": "header"},
        {"-i": "include", "--include": "include"},
    )
    if not opts.ok or len(opts.positional) != 2:
        return None
    method, path = opts.positional
    data, api_url, qpu_mode = opts.one("data"), opts.one("api_url"), opts.one("qpu_mode")
    start = _start(api_url, qpu_mode) if opts.ok else None
    if start is None or isinstance(start, int):
        return start
    settings, api, token = start
    from .._api._requests import raw_request

    try:
        _calls.check_path(_calls.check_method(method) and path)
        relative = _calls.relative_path(path, api.base_url).replace("{qpu_mode}", api.qpu_mode)
        headers = _calls.parse_headers(opts.values.get("header", []))
        raw_request(method, relative)  # refuses what is not a path on the API
    except ValueError:  # Refused, or not a path: the full CLI says why
        return None
    if not (relative.isascii() and relative.isprintable()):
        return None  # httpx escapes what http.client refuses
    if data is not None and data.startswith("@") and not _readable(data[1:]):
        return None  # the full CLI reports the file

    def call() -> int:
        content = _calls.read_body(data)
        request = raw_request(method, relative, content=content, headers=_calls.with_content_type(headers, content))
        answer = _send(settings, api, request, token)
        if "include" in opts.flags:
            _calls.write_status(answer.status, answer.reason, answer.headers)
        _calls.write_body(answer.body)
        if answer.status >= 400:
            from .._api._requests import error_for

            raise error_for(answer.status, answer.body, answer.url)
        return 0

    return _exit_point(call)


def warm_tasks(args: list[str]) -> int | None:
    """``qlam-hpc tasks [--api-url U] [--qpu-mode M] get ID --json``, ``list [...] --json``,
    ``submit FILE (--json | -q)``: one request each."""
    group: list[str] = []
    rest = list(args)
    while rest and rest[0].partition("=")[0] in _API_URL:
        group.append(rest.pop(0))
        if "=" not in group[-1] and rest:
            group.append(rest.pop(0))
    if not rest or rest[0] not in ("get", "list", "submit"):
        return None
    outer = _Options(group, _API_URL, {})
    command, rest = rest[0], rest[1:]
    if command == "get":
        opts = _Options(rest, {}, {"--json": "json"})
    elif command == "list":
        opts = _Options(
            rest, {"--page": "page", "--size": "size", "--sort": "sort", "--group-id": "group"}, {"--json": "json"}
        )
    else:
        opts = _Options(rest, {}, {"--json": "json", "-q": "quiet", "--quiet": "quiet"})
    api_url, qpu_mode = outer.one("api_url"), outer.one("qpu_mode")
    if not (outer.ok and opts.ok) or not opts.flags or len(opts.positional) != (0 if command == "list" else 1):
        return None
    from .._api import _requests as rq

    start = _start(api_url, qpu_mode)
    if start is None or isinstance(start, int):
        return start
    settings, api, token = start
    try:
        if command == "get":
            request = rq.get_task(api, opts.positional[0])
        elif command == "list":
            page, size, sort = (
                _number(opts.one("page") or "0", 0),
                _number(opts.one("size") or "10", 1, 1000),
                opts.one("sort"),
            )
            if page is None or size is None or not opts.ok:
                return None
            request = rq.list_tasks(api, page=page, size=size, sort=sort, group_ids=opts.values.get("group", []))
        else:
            definition = _definition(opts.positional[0])
            if definition is None:
                return None
            attribution = None
            if api.attribution:
                if settings.user_context:
                    return None  # the block names the logged-in user: the provider knows who
                from .._api._attribution import this_process

                attribution = this_process()
            request = rq.create_task(api, rq.creation_body(definition, None, attribution, api.group))
    except ValueError:
        return None

    def call() -> int:
        answer = _send(settings, api, request, token)
        if answer.status >= 400:
            raise rq.error_for(answer.status, answer.body, answer.url, request)
        data = rq.read_json(answer.status, answer.header("content-type"), answer.body, answer.url)
        if "quiet" in opts.flags:
            line = str(data.get("id")) if isinstance(data, dict) else ""
        else:
            import json

            line = json.dumps(data, indent=2)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return 0

    return _exit_point(call)


def _start(api_url: str | None, qpu_mode: str | None) -> tuple[Settings, ApiSettings, Token] | int | None:
    """``(settings, api settings, token)``; an exit code when waiting for the token failed; or
    None when the light path cannot serve: a token to fetch, a proxy, settings the full CLI
    must report on."""
    found = _cached(prepare=_prepare_call)
    if found is None or isinstance(found, int):
        return found
    settings, token, _source = found
    try:
        import os

        from .._api._light import proxied
        from .._api._settings import ApiSettings

        api = ApiSettings.from_env(base_url=api_url, qpu_mode=qpu_mode)
        if proxied(api, os.environ):
            return None
    except Exception:
        return None
    return settings, api, token


def _prepare_call() -> None:
    """The imports of the light API call (two thirds of its CPU time)."""
    try:
        import http.client  # noqa: F401
        import ssl  # noqa: F401
        import urllib.parse  # noqa: F401

        from .. import _tls  # noqa: F401
        from .._api import _light  # noqa: F401
    except ImportError:  # the call itself will say what is missing
        pass


def _send(settings: Settings, api: ApiSettings, request: ApiRequest, token: Token) -> Answer:
    from .._api._light import send

    def refresh(rejected: str) -> str:
        from .._provider import TokenProvider

        return TokenProvider(settings).invalidate(rejected)

    return send(api, request, token.access_token, refresh)


def _number(text: str, low: int, high: int | None = None) -> int | None:
    if not text.isdigit() or not text.isascii():
        return None
    value = int(text)
    return value if value >= low and (high is None or value <= high) else None


def _readable(path: str) -> bool:
    import os

    return os.path.isfile(path) and os.access(path, os.R_OK)


def _definition(path: str) -> dict[str, Any] | None:
    """The task definition in FILE, or None for stdin and for anything the full CLI must report."""
    if path == "-":
        return None
    import json

    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _exit_point(call: Callable[[], int]) -> int:
    """``_app.run``'s handling, for a call the light path has started: an error is one line
    on stderr and its exit code."""
    from .._errors import QlamError

    try:
        return call()
    except QlamError as error:
        from .._audit import refusal  # the audit trail's record of the refusal, when it is on

        refusal(error, error.exit_code)
        return _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:  # a bug: one line, as the full CLI says it
        return _fail(f"unexpected {type(error).__name__}: {error} (run with -vv for details)", 1)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"qlam-hpc: error: {message}\n")
    sys.stderr.flush()
    return code
