"""pytest plugin: no secret or token a sandbox of this test process knows or issues may
show up where it does not belong.  Registered from ``tests/conftest.py``.

What it knows.  At session start it wraps what the sandbox makes secrets with, so it
learns every one of them at run time, with its kind:

================  ===========================================================
kind              learnt from
================  ===========================================================
client secret     ``create_app``: the secret of every client of every sandbox app
                  made in this process (``Sandbox`` makes its app there), and the
                  ``Authorization: Basic`` value that secret makes
access token      ``_tokens._sign``, through which every JWT is signed: M2M and
ID token          user access tokens, ID tokens (told apart by their claims)
refresh token     ``UserLogins._new_refresh_token``: every refresh token rotated in
device code       ``UserLogins.start_device_login``: every device code
signing key       the sandbox's RSA private key, first line of its PEM forms
================  ===========================================================

Secrets of 8 to 11 characters (``"bob-secret"``) are looked for as whole words only
(not inside a longer run of letters, digits, ``-`` and ``_``); shorter ones (``"s"``)
not at all: they would be found in ordinary words.  A JWT is looked for by its
signature, the part no other token shares.  A sandbox started in another process (``qlam-hpc
sandbox``) is not known.

Where it looks, for each test: the captured stdout, stderr and log sections of its
report (setup, call, teardown); what ``capsys``/``capfd.readouterr()`` returned; the
stdout and stderr of every ``subprocess.Popen.communicate`` (``run_cli``,
``subprocess.run``, ``Crowd``); the argv of every process started with
``subprocess.Popen`` (readable by every user through ``ps``) and its environment;
the text of every exception a ``pytest.raises`` caught and of the exception that
ended the test (not a failed ``assert``: that is the test's own text); and every
regular file left under the test's ``tmp_path``, except token stores.  A token
store is a directory holding ``*.entry`` or ``*.lock`` files (the cache, a
``QLAM_REFRESH_TOKEN_DIR``); in it, only the entries and their temporaries may hold
tokens: its lock files and ledger are checked too.

What is not a leak:

* the stdout of a ``qlam-hpc token`` process may hold access tokens, and only those:
  printing the token is that command's job.  A process is one when its argv has the
  word ``token`` (``run_cli("token", ...)``, a ``Crowd`` of ``["token", "--json"]``),
  or a script in its argv runs ``qlam-hpc token`` (``bash -c``) or calls
  ``main(["token", ...])`` (``python -c``);
* a client secret in a process's environment (``QLAM_CLIENT_SECRET`` is how it is
  given), or a subject token (a CI gives its ID token in a job variable), also when
  passed as ``NAME=value`` after ``env`` in its argv (``runuser -u USER -- env -i
  ...``, the way the tests give another user a clean environment); anything else
  there, a token above all, is a leak;
* a sandbox's own signing key in its ``signing_key_file`` or ``state_dir``;
* a file the test wrote on purpose with a secret in it (a 0600 secret file, a
  settings file): say so, sparingly, with ``leak_check.expect(path)`` (the fixture)
  or ``@pytest.mark.leak_check_expect("glob", ..., kinds=["access token"])`` (globs
  under ``tmp_path``; ``kinds`` limits what the files may hold, any kind without it).

A leak fails the test at teardown, naming the test, the place and the kind of
secret, never the secret; the captured output and traceback of a failed report are
shown with known secrets replaced by ``[<kind>]``.  The session ends with one
summary line: secrets known, places checked, leaks found.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import os
import re
import stat
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

KINDS = ("client secret", "access token", "ID token", "refresh token", "device code", "signing key")
MIN_LENGTH = 12  # shorter "secrets" would be found in ordinary words...
SHORT_LENGTH = 8  # ...so from 8 characters on they are looked for as whole words only
_WORD_CHAR = r"[A-Za-z0-9_-]"
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
ENVIRONMENT_KINDS = frozenset({"client secret", "subject token"})  # may be in a child's environment
HARNESS_VARIABLES = frozenset({"TOKEN", "AUTH"})  # tests/test_docs.py gives a block what it would set itself
_ANCHOR = 12  # a secret made of base64url characters is indexed by its first 12
_RUN = re.compile(rf"[A-Za-z0-9_-]{{{MIN_LENGTH},}}")
_URLSAFE = re.compile(r"[A-Za-z0-9_-]+")
_JWT_HEAD = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.$")
_SMALL_WORD = re.compile(rf"-{{0,2}}[a-z][a-z-]{{0,{MIN_LENGTH - 2}}}")  # argv words that cannot be secrets
_MAX_FILE_BYTES = 4 << 20


class Secrets:
    """Every secret learnt, by kind; ``find(text)`` says which kinds ``text`` holds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds: dict[str, str] = {}  # secret (or a JWT's signature) -> kind
        self.anchors: dict[str, list[str]] = {}  # first _ANCHOR characters -> secrets
        self.irregular: dict[str, str] = {}  # secrets with other characters: plain search
        self.short: dict[re.Pattern[str], str] = {}  # SHORT_LENGTH..MIN_LENGTH-1: whole words
        self.counts: Counter[str] = Counter()
        self.signing_keys: set[str] = set()
        self.key_homes: set[Path] = set()  # a sandbox's signing_key_file and state_dir

    def learn(self, value: Any, kind: str) -> None:
        if not isinstance(value, str):
            return
        if kind in ("access token", "ID token") and value.count(".") == 2:
            value = value.rsplit(".", 1)[1]  # the signature: every token has its own
        if len(value) < SHORT_LENGTH:
            return
        if len(value) < MIN_LENGTH:
            word = re.compile(f"(?<!{_WORD_CHAR}){re.escape(value)}(?!{_WORD_CHAR})")
            with self.lock:
                if word not in self.short:
                    self.counts[kind] += 1
                    self.short[word] = kind
            return
        with self.lock:
            if value in self.kinds or value in self.irregular:
                return
            self.counts[kind] += 1
            if _URLSAFE.fullmatch(value):
                self.kinds[value] = kind
                self.anchors.setdefault(value[:_ANCHOR], []).append(value)
            else:
                self.irregular[value] = kind

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, kind)`` of each known secret in ``text``."""
        if not text:
            return []
        with self.lock:
            anchors, kinds, irregular, short = self.anchors, self.kinds, dict(self.irregular), dict(self.short)
            found = []
            for run in _RUN.finditer(text):
                word, offset = run.group(), run.start()
                for i in range(len(word) - _ANCHOR + 1):
                    for secret in anchors.get(word[i : i + _ANCHOR], ()):
                        if word.startswith(secret, i):
                            found.append((offset + i, offset + i + len(secret), kinds[secret]))
        for word, kind in short.items():
            found.extend((match.start(), match.end(), kind) for match in word.finditer(text))
        for secret, kind in irregular.items():
            start = text.find(secret)
            while start >= 0:
                found.append((start, start + len(secret), kind))
                start = text.find(secret, start + 1)
        return found

    def redact(self, text: str) -> str:
        for start, end, kind in sorted(self.find(text), reverse=True):
            if kind in ("access token", "ID token"):  # the whole JWT, not just its signature
                jwt = _JWT_HEAD.search(text, 0, start)
                start = jwt.start() if jwt is not None else start
            text = text[:start] + f"[{kind}]" + text[end:]
        return text


SECRETS = Secrets()


@dataclass
class Place:
    where: str
    text: str
    allowed: frozenset[str] = frozenset()


@dataclass
class TestRecord:
    """What one test produced, from any thread, while it ran."""

    nodeid: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    places: list[Place] = field(default_factory=list)
    expected_files: set[Path] = field(default_factory=set)
    processes: int = 0

    def add(self, where: str, text: Any, allowed: frozenset[str] = frozenset()) -> None:
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        if isinstance(text, str) and text:
            with self.lock:
                self.places.append(Place(where, text, allowed))


class _Stats:
    def __init__(self) -> None:
        self.places = 0
        self.leaks: list[str] = []


STATS = _Stats()
_current: TestRecord | None = None
_ACTIVE = pytest.StashKey[bool]()


def _record() -> TestRecord | None:
    return _current


# --- learning the secrets ---------------------------------------------------------------


def _learn_config(config: Any) -> None:
    for home in (getattr(config, "signing_key_file", None), getattr(config, "state_dir", None)):
        if home is not None:
            with SECRETS.lock:
                SECRETS.key_homes.add(Path(home).absolute())
    for client in getattr(config, "clients", ()) or ():
        secret = getattr(client, "client_secret", None)
        if secret:
            SECRETS.learn(secret, "client secret")
            basic = base64.b64encode(f"{client.client_id}:{secret}".encode()).decode()
            SECRETS.learn(basic, "client secret")
            from urllib.parse import quote

            quoted = base64.b64encode(f"{quote(client.client_id, safe='')}:{quote(secret, safe='')}".encode()).decode()
            SECRETS.learn(quoted, "client secret")


def _learn_signing_key(key: Any) -> None:
    kid = getattr(key, "kid", None)
    if kid is None or kid in SECRETS.signing_keys:
        return
    SECRETS.signing_keys.add(kid)
    from cryptography.hazmat.primitives import serialization

    for form in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        pem = key.private_key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()).decode()
        SECRETS.learn(pem.splitlines()[1], "signing key")


def _jwt_kind(claims: dict[str, Any]) -> str:
    return "ID token" if "email" in claims or "email_verified" in claims else "access token"


def _wrap_create_app(create_app: Any) -> Any:
    @functools.wraps(create_app)
    def learning_create_app(config: Any = None, *args: Any, **kwargs: Any) -> Any:
        app = create_app(config, *args, **kwargs)
        context = getattr(app.state, "sandbox", None)
        _learn_config(getattr(context, "config", None) or config)
        if context is not None and getattr(context, "key", None) is not None:
            _learn_signing_key(context.key)
        return app

    learning_create_app.__wrapped_for_leak_check__ = True  # type: ignore[attr-defined]
    return learning_create_app


def _install() -> bool:
    """Wrap the sandbox's makers of secrets; False without the sandbox extra."""
    try:
        from qlam_hpc.sandbox import _app, _server, _tokens, _users
    except ImportError:
        return False
    if getattr(_tokens._sign, "__wrapped_for_leak_check__", False):
        return True
    for module in (_app, _server):
        module.create_app = _wrap_create_app(module.create_app)  # type: ignore[assignment]

    sign = _tokens._sign

    def learning_sign(key: Any, claims: dict[str, Any]) -> str:
        token = sign(key, claims)
        _learn_signing_key(key)
        SECRETS.learn(token, _jwt_kind(claims))
        return token

    learning_sign.__wrapped_for_leak_check__ = True  # type: ignore[attr-defined]
    _tokens._sign = learning_sign  # type: ignore[assignment]

    new_refresh_token = _users.UserLogins._new_refresh_token

    def learning_new_refresh_token(self: Any, family: Any) -> str:
        token = new_refresh_token(self, family)
        SECRETS.learn(token, "refresh token")
        return token

    _users.UserLogins._new_refresh_token = learning_new_refresh_token  # type: ignore[method-assign]

    start_device_login = _users.UserLogins.start_device_login

    def learning_start_device_login(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = start_device_login(self, *args, **kwargs)
        SECRETS.learn(started.device_code, "device code")
        return started

    _users.UserLogins.start_device_login = learning_start_device_login  # type: ignore[method-assign]
    _install_places()
    return True


# --- seeing the places ------------------------------------------------------------------


# A shell script that runs `qlam-hpc token` (or the docs' `qlam token` function), or a
# Python program that calls the CLI's main(["token", ...]).
_TOKEN_IN_A_SCRIPT = re.compile(
    r"""\bqlam(?:-hpc)?(?:\s+--?[\w-]+(?:[= ][^\s-]\S*)?)*\s+token\b|main\(\s*\[\s*['"]token['"]"""
)


def _is_token_command(args: Any) -> bool:
    """Whether a process runs ``qlam-hpc token``: its argv has the word ``token``, or a
    script in its argv runs the command."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    words = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]
    return any(word == "token" or _TOKEN_IN_A_SCRIPT.search(word) for word in words)


def _describe(args: Any) -> str:
    """A process named by its program and the short words of its argv: never a secret."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    args = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]
    if not args:
        return "?"
    words = [os.path.basename(args[0])] + [a for a in args[1:] if _SMALL_WORD.fullmatch(a)]
    return " ".join(words)


def _argv_and_environment(args: Any, env: Any) -> tuple[str, str]:
    """A process's argv as ``ps`` shows it, and its environment, with the ``NAME=value``
    words that follow ``env`` in its argv (they are its child's environment)."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    words = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]
    argv, assigned, after_env = [], [], False
    for word in words:
        if after_env and (_ASSIGNMENT.match(word) or word in ("-i", "-", "--ignore-environment")):
            assigned.append(word)
            continue
        after_env = os.path.basename(word) == "env"
        argv.append(word)
    environment = os.environ if env is None else env
    # TOKEN and AUTH are the doc-test harness's stand-ins for the shell variables a documented
    # block sets itself (TOKEN=$(qlam-hpc token)): a block's own variable, not a leak.
    lines = [
        f"{os.fsdecode(k)}={os.fsdecode(v)}" for k, v in environment.items() if os.fsdecode(k) not in HARNESS_VARIABLES
    ]
    return " ".join(argv), "\n".join(lines + assigned)


def _install_places() -> None:
    init = subprocess.Popen.__init__

    @functools.wraps(init)
    def recording_init(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
        record = _record()
        if record is not None:
            env = rest[9] if len(rest) > 9 else kwargs.get("env")  # Popen(args, bufsize, ..., cwd, env)
            argv, environment = _argv_and_environment(args, env)
            name = f"process ({_describe(args)})"
            record.add(f"the argv of {name}", argv)
            # The documented ways in: QLAM_CLIENT_SECRET, and a CI's ID token in a job variable.
            record.add(f"the environment of {name}", environment, ENVIRONMENT_KINDS)
        init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = recording_init  # type: ignore[method-assign]

    communicate = subprocess.Popen.communicate

    @functools.wraps(communicate)
    def recording_communicate(self: subprocess.Popen, *args: Any, **kwargs: Any) -> Any:
        out, err = communicate(self, *args, **kwargs)
        record = _record()
        if record is not None:
            with record.lock:
                record.processes += 1
                number = record.processes
            name = f"process #{number} ({_describe(self.args)})"
            token_output = frozenset({"access token"}) if _is_token_command(self.args) else frozenset()
            record.add(f"the stdout of {name}", out, token_output)
            record.add(f"the stderr of {name}", err)
        return out, err

    subprocess.Popen.communicate = recording_communicate  # type: ignore[method-assign]

    from _pytest._code.code import ExceptionInfo
    from _pytest.capture import CaptureFixture

    readouterr = CaptureFixture.readouterr

    @functools.wraps(readouterr)
    def recording_readouterr(self: CaptureFixture) -> Any:
        result = readouterr(self)
        record = _record()
        if record is not None:
            record.add("the stdout read by readouterr()", result.out)
            record.add("the stderr read by readouterr()", result.err)
        return result

    CaptureFixture.readouterr = recording_readouterr  # type: ignore[method-assign]

    fill_unfilled = ExceptionInfo.fill_unfilled

    @functools.wraps(fill_unfilled)
    def recording_fill_unfilled(self: ExceptionInfo, exc_info: Any) -> None:
        fill_unfilled(self, exc_info)
        record = _record()
        if record is not None:
            _add_exception(record, exc_info[1], "caught by pytest.raises")

    ExceptionInfo.fill_unfilled = recording_fill_unfilled  # type: ignore[method-assign]


def _add_exception(record: TestRecord, exc: BaseException | None, how: str) -> None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = " ".join([str(exc), *map(str, getattr(exc, "__notes__", ()))])
        record.add(f"the text of a {type(exc).__name__} {how}", text)
        exc = exc.__cause__ or exc.__context__


def _store_directories(files: list[Path]) -> set[Path]:
    return {f.parent for f in files if f.name.endswith((".entry", ".lock"))}


def _is_store_entry(path: Path) -> bool:
    name = path.name
    return name.endswith(".entry") or (name.startswith(".") and ".entry." in name and name.endswith(".tmp"))


def _add_files(record: TestRecord, item: pytest.Item) -> None:
    tmp_path = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if not isinstance(tmp_path, Path) or not tmp_path.is_dir():
        return
    files = []
    for directory, _dirs, names in os.walk(tmp_path):
        for name in names:
            path = Path(directory, name)
            try:
                if stat.S_ISREG(path.lstat().st_mode):
                    files.append(path)
            except OSError:
                continue
    stores = _store_directories(files)
    marks = [(mark.args, mark.kwargs.get("kinds")) for mark in item.iter_markers("leak_check_expect")]
    with SECRETS.lock:
        key_homes = set(SECRETS.key_homes)
    for path in files:
        relative = path.relative_to(tmp_path)
        if path.parent in stores and _is_store_entry(path):
            continue
        if path in record.expected_files:
            continue
        allowed: set[str] = set()
        if path.absolute() in key_homes or any(home in path.absolute().parents for home in key_homes):
            allowed.add("signing key")  # the sandbox keeps its key there, by design
        for globs, kinds in marks:
            if any(fnmatch.fnmatch(str(relative), g) for g in globs):
                allowed.update(kinds if kinds is not None else KINDS)
        try:
            with open(path, "rb") as file:
                data = file.read(_MAX_FILE_BYTES)
        except OSError:
            continue
        record.add(f"the file {relative} under tmp_path", data, frozenset(allowed))


def _leaks(record: TestRecord) -> list[str]:
    found = []
    with record.lock:
        places = list(record.places)
    STATS.places += len(places)
    for place in places:
        kinds = sorted({kind for _s, _e, kind in SECRETS.find(place.text)} - place.allowed)
        found.extend(f"{'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind} in {place.where}" for kind in kinds)
    return list(dict.fromkeys(found))


# --- hooks --------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "leak_check_expect(*globs, kinds=None): files under tmp_path this test wrote holding secrets on purpose"
        " (of these kinds; None: any)",
    )
    config.stash[_ACTIVE] = _install()


@pytest.fixture
def leak_check() -> Any:
    """``leak_check.expect(path)``: this file holds a secret on purpose (a 0600 secret file,
    a settings file); the leak check leaves it alone.  Use sparingly."""
    return _Expect()


class _Expect:
    def expect(self, path: str | os.PathLike) -> None:
        record = _record()
        if record is not None:
            record.expected_files.add(Path(path))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global _current
    outer, _current = _current, TestRecord(item.nodeid)
    try:
        return (yield)
    finally:
        _current = outer


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    record = _record()
    if not item.config.stash.get(_ACTIVE, False) or record is None:
        return report
    if call.excinfo is not None and not isinstance(call.excinfo.value, AssertionError):
        _add_exception(record, call.excinfo.value, f"raised during {call.when}")
    if call.when == "teardown":
        for title, content in report.sections:
            if title.startswith("Captured "):
                record.add(f"the {title[len('Captured ') :]} section", content)
        _add_files(record, item)
        leaks = _leaks(record)
        if leaks:
            STATS.leaks.extend(f"{item.nodeid}: {leak}" for leak in leaks)
            report.outcome = "failed"
            report.longrepr = f"secret leak in {item.nodeid}:\n  " + "\n  ".join(leaks)
    if report.failed:
        _redact(report)
    return report


def _redact(report: pytest.TestReport) -> None:
    """Failed reports are shown with their captured output: never with a known secret in it."""
    report.sections = [(title, SECRETS.redact(content)) for title, content in report.sections]
    if report.longrepr is not None and not isinstance(report.longrepr, tuple):
        text = str(report.longrepr)
        redacted = SECRETS.redact(text)
        if redacted != text:
            report.longrepr = redacted


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not config.stash.get(_ACTIVE, False):
        return
    with SECRETS.lock:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(SECRETS.counts.items()))
    line = (
        f"leak check: {SECRETS.total()} secrets known ({kinds or 'none'}); "
        f"{STATS.places} places checked; {len(STATS.leaks)} leaks found"
    )
    terminalreporter.write_line(line, red=bool(STATS.leaks))
