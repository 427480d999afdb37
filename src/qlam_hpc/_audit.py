"""Audit events: who did what under a shared account, one structured event per action.

An event is recorded for every request qlam-hpc makes that changes something or spends
quota: a token fetch, refresh or exchange, a login (the device grant) and a logout, a task
created, cancelled or deleted (and any other non-GET API call), and every refusal the CLI
exits with. Each names the Unix user and uid, the host, the batch job and array index, the
principal (the login's subject and e-mail, or the M2M client) and the outcome. Never a
token, secret, device code or refresh token: events are built from ids, names and codes,
and anything shaped like a JWT is blanked before it is written.

Where events go (``destinations``):

* the site's file, ``/etc/qlam-hpc/audit.conf`` or ``<prefix>/etc/qlam-hpc/audit.conf``
  beside the installed package (``sys.prefix``): one destination a line, read first. A user
  cannot turn those off: ``QLAM_AUDIT_LOG`` only adds destinations;
* ``QLAM_AUDIT_LOG``: destinations separated by commas; ``off`` or empty adds none.

A destination is ``syslog[:FACILITY[:SOCKET]]`` (RFC 5424 over the local datagram socket,
``/dev/log`` unless named; facility ``authpriv`` unless named), ``journald[:SOCKET]`` (the
journal's native protocol, no library needed) or ``file:PATH`` (JSON lines, one ``write``
of one line per event with ``O_APPEND`` under an exclusive ``flock``, created 0600).

Auditing never stops the work it records: a destination that cannot take an event (no
socket, a full disk) gets one warning per process, and the command goes on. Nothing here
runs when no destination is set: the hooks check ``enabled()`` (an environment read and
two ``stat`` calls) before building anything, and this module imports only ``os`` and
``sys`` until it has an event to send.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable, Mapping
    from typing import Any

    from ._api._requests import ApiRequest
    from ._provider import TokenProvider

ENV_VAR = "QLAM_AUDIT_LOG"

#: The site's configuration, read in this order; both are the site's to write, never a user's.
SITE_FILES = ("/etc/qlam-hpc/audit.conf", os.path.join(sys.prefix, "etc", "qlam-hpc", "audit.conf"))

DEFAULT_FACILITY = "authpriv"
DEFAULT_SYSLOG_SOCKET = "/dev/log"
DEFAULT_JOURNAL_SOCKET = "/run/systemd/journal/socket"
FILE_MODE = 0o600

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}  # fmt: skip

#: The order of an event's fields, as written (a JSON line reads the same in every file).
FIELDS = (
    "time", "action", "outcome", "task", "status", "request_id", "principal", "client_id",
    "user", "uid", "host", "pid", "job", "array_index", "grant", "method", "path", "command",
    "exit_code", "detail",
)  # fmt: skip

#: Identifies qlam-hpc's events in the journal (``journalctl MESSAGE_ID=...``).
JOURNAL_MESSAGE_ID = "7b1f4c62d0a94f0f9d3c2a6e5b8e4a11"
#: RFC 5424 structured data needs an SD-ID of the form name@<enterprise number>; 32473 is
#: the number IANA reserves for examples and documentation (RFC 5612).
SD_ID = "qlam@32473"

_GRANT_ACTIONS = {
    None: "token.fetch",
    "client_credentials": "token.fetch",
    "refresh_token": "token.refresh",
    "device_code": "login",
    "urn:ietf:params:oauth:grant-type:device_code": "login",
    "urn:ietf:params:oauth:grant-type:token-exchange": "token.exchange",
    "token-exchange": "token.exchange",
    "token_exchange": "token.exchange",
}

_warned: set[str] = set()


class Destination:
    """One place events go: ``kind`` is ``syslog``, ``journald`` or ``file``."""

    __slots__ = ("kind", "target", "facility", "spec", "source")

    def __init__(self, kind: str, target: str, facility: int, spec: str, source: str) -> None:
        self.kind, self.target, self.facility, self.spec, self.source = kind, target, facility, spec, source

    def key(self) -> tuple[str, str, int]:
        return (self.kind, self.target, self.facility if self.kind == "syslog" else 0)

    def describe(self) -> str:
        if self.kind == "syslog":
            name = next((n for n, v in FACILITIES.items() if v == self.facility), str(self.facility))
            return f"syslog ({name}) via {self.target}"
        if self.kind == "journald":
            return f"journald via {self.target}"
        return f"file {self.target}"

    def send(self, event: dict[str, Any]) -> None:
        if self.kind == "syslog":
            _send_datagram(self.target, syslog_message(event, self.facility))
        elif self.kind == "journald":
            _send_journal(self.target, journal_message(event, self.facility))
        else:
            append_line(_expand(self.target, event), json_line(event))


def parse_destination(spec: str, source: str) -> Destination:
    """One destination; ``ValueError`` with a readable message for anything else."""
    text = spec.strip()
    kind, _, rest = text.partition(":")
    if kind == "syslog":
        facility_name, _, socket_path = rest.partition(":")
        facility_name = facility_name.strip().lower() or DEFAULT_FACILITY
        if facility_name.isdigit() and int(facility_name) < 24:
            facility = int(facility_name)
        elif facility_name in FACILITIES:
            facility = FACILITIES[facility_name]
        else:
            raise ValueError(f"{source}: unknown syslog facility {facility_name!r} in {text!r} (e.g. authpriv, local3)")
        return Destination(
            "syslog", _absolute(socket_path or DEFAULT_SYSLOG_SOCKET, text, source), facility, text, source
        )
    if kind == "journald":
        return Destination("journald", _absolute(rest or DEFAULT_JOURNAL_SOCKET, text, source), 10, text, source)
    if kind == "file" and rest:
        return Destination("file", _absolute(os.path.expanduser(rest), text, source), 0, text, source)
    raise ValueError(
        f"{source}: {text!r} is not an audit destination (syslog[:FACILITY[:SOCKET]], journald, file:PATH)"
    )


def _absolute(path: str, spec: str, source: str) -> str:
    if not os.path.isabs(path):
        raise ValueError(f"{source}: {spec!r} needs an absolute path (a job's working directory varies)")
    return path


def destinations(environ: Mapping[str, str] | None = None) -> tuple[list[Destination], list[str]]:
    """The site's destinations, then those ``QLAM_AUDIT_LOG`` adds (duplicates once), and a
    message for each entry that could not be read."""
    environ = os.environ if environ is None else environ
    found: list[Destination] = []
    problems: list[str] = []
    entries: list[tuple[str, str]] = []
    for path in SITE_FILES:
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as error:
            problems.append(f"cannot read the site's audit configuration {path}: {getattr(error, 'strerror', error)}")
            continue
        for number, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if line:
                entries.append((line, f"{path}:{number}"))
    value = environ.get(ENV_VAR, "").strip()
    if value.lower() not in ("", "off", "none", "0", "no", "false"):
        entries += [(part, ENV_VAR) for part in value.split(",") if part.strip()]
    seen: set[tuple[str, str, int]] = set()
    for spec, source in entries:
        try:
            destination = parse_destination(spec, source)
        except ValueError as error:
            problems.append(str(error))
            continue
        if destination.key() not in seen:
            seen.add(destination.key())
            found.append(destination)
    return found, problems


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Is any destination set? Cheap enough for every hook to ask first."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR, "").strip().lower() not in ("", "off", "none", "0", "no", "false"):
        return True
    return any(os.path.exists(path) for path in SITE_FILES)


def checks(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(verdict, detail)`` lines for ``qlam-hpc doctor``: where events go, whose setting each
    destination is, and what would stop one (``warn``: auditing never fails a command)."""
    found, problems = destinations(environ)
    lines: list[tuple[str, str]] = [("warn", f"{problem}: ignored") for problem in problems]
    if not found:
        lines.append(("ok", f"off (no {ENV_VAR}, no site file: {' or '.join(SITE_FILES)})"))
    for destination in found:
        owner = (
            f"from {ENV_VAR}"
            if destination.source == ENV_VAR
            else f"the site's, cannot be turned off: {destination.source}"
        )
        where = f"{destination.describe()} ({owner})"
        problem = _unusable(destination)
        lines.append(("warn", f"{where}: {problem}") if problem else ("ok", where))
    return lines


def _unusable(destination: Destination) -> str | None:
    import stat

    target = destination.target
    if destination.kind != "file":
        try:
            if not stat.S_ISSOCK(os.stat(target).st_mode):
                return f"{target} is not a socket: events will be lost"
        except OSError as error:
            return f"{target}: {error.strerror}: events will be lost"
        return None if os.access(target, os.W_OK) else f"{target} is not writable: events will be lost"
    if "{" in target:
        return None  # one file per user or host: checked when written
    if os.path.exists(target):
        return None if os.access(target, os.W_OK) else f"{target} is not writable: events will be lost"
    parent = os.path.dirname(target) or "."
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {target} ({parent} is missing or not writable): events will be lost"
    return None


# --- events ----------------------------------------------------------------------------------


def event(action: str, outcome: str, *, at: float | None = None, **fields: Any) -> dict[str, Any]:
    """An event with who and where filled in: Unix user and uid, host, pid, job, array index."""
    import socket
    import time

    env = os.environ
    array_job, array_index = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    job = array_job or env.get("SLURM_JOB_ID") or env.get("PBS_JOBID") or None
    if array_index is None:
        array_index = env.get("PBS_ARRAY_INDEX") or env.get("PBS_ARRAYID")
    now = time.time() if at is None else at
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    record: dict[str, Any] = {
        "time": stamp,
        "action": action,
        "outcome": outcome,
        "user": _user_name(),
        "uid": os.getuid(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job": job,
        "array_index": array_index,
        **fields,
    }
    return {
        key: _safe(record[key]) for key in (*FIELDS, *sorted(set(record) - set(FIELDS))) if record.get(key) is not None
    }


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (a container): the uid says who
        return str(os.getuid())


def _safe(value: Any) -> Any:
    """Blank anything shaped like a token: events are built from ids and codes, and this makes
    sure a token in an error message or a path never reaches a log that many people read."""
    if not isinstance(value, str):
        return value
    import re

    value = re.sub(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", "[token]", value)
    value = re.sub(r"\b(Bearer|Basic) [A-Za-z0-9._~+/=-]{8,}", r"\1 [hidden]", value)
    return value[:2000]


def emit(record: dict[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Send one event to every destination; a destination that fails is warned about once."""
    found, problems = destinations(environ)
    for problem in problems:
        _warn_once(problem, f"audit: {problem}; that entry is ignored")
    for destination in found:
        try:
            destination.send(record)
        except OSError as error:
            _warn_once(
                destination.spec,
                f"audit: could not write an event to {destination.describe()} "
                f"({error.strerror or error}); events for it are lost until that is fixed",
            )


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    from ._log import log

    log("warning", message)


# --- hooks: each returns at once when no destination is set -------------------------------------


def token_request(provider: TokenProvider, record: Mapping[str, Any]) -> None:
    """A request to the identity provider (``TokenProvider._record``): fetch, refresh,
    exchange or login, with its outcome. Called while the error, if any, is being handled,
    so its HTTP status is read from there."""
    if not enabled():
        return
    try:
        grant = record.get("grant")
        ok = record.get("outcome") == "ok"
        status = 200 if ok else getattr(sys.exc_info()[1], "status", None)
        fields: dict[str, Any] = {
            "client_id": record.get("client_id"),
            "status": status,
            "principal": _principal(provider),
        }
        if grant is not None:
            fields["grant"] = grant
        action = _GRANT_ACTIONS.get(grant, f"token.{grant}")
        emit(event(action, str(record.get("outcome") or "unknown"), at=record.get("time"), **fields))
    except Exception as error:  # auditing never breaks the token it records
        _warn_once("token_request", f"audit: could not record a token request ({type(error).__name__}: {error})")


def _principal(provider: TokenProvider) -> str | None:
    settings = provider.settings
    if not settings.user_context:
        # Token exchange: the cache identity names the subject the token acts for (exchange:ISS|SUB).
        exchanged = getattr(provider.identity, "principal", None)
        if isinstance(exchanged, str) and exchanged.startswith("exchange:"):
            return exchanged
        return f"client:{settings.client_id}" if settings.client_id else None
    try:
        who = provider.principal() or {}
    except Exception:  # the store is what failed: the event still says the rest
        who = {}
    email, subject = who.get("email"), who.get("subject")
    if email and subject:
        return f"{email} ({subject})"
    return email or subject or None


def api_answer(
    request: ApiRequest,
    status: int,
    headers: Iterable[tuple[str, str]] | Mapping[str, str],
    body: bytes,
    provider: TokenProvider | None = None,
) -> None:
    """A state-changing call to the QLAM API and its answer (GET and HEAD are not recorded).
    The principal comes from ``provider`` when the caller has one, else from the task's
    attribution block (user context) or the environment's M2M client."""
    if request.method in ("GET", "HEAD", "OPTIONS") or not enabled():
        return
    try:
        action, task = _api_action(request)
        if action == "task.create" and status < 300:
            task = _created_id(body)
        pairs = headers.items() if hasattr(headers, "items") else headers
        request_id = next(
            (
                v
                for k, v in pairs
                if k.lower() in ("x-request-id", "request-id", "x-amzn-requestid", "x-correlation-id")
            ),
            None,
        )
        outcome = "ok" if status < 400 else "refused" if status < 500 else "failed"
        fields: dict[str, Any] = {"task": task, "status": status, "request_id": request_id}
        if action.startswith("api."):
            fields.update(method=request.method, path=request.path)
        fields["principal"] = _principal(provider) if provider is not None else _request_principal(request)
        emit(event(action, outcome, **fields))
    except Exception as error:
        _warn_once("api_answer", f"audit: could not record an API call ({type(error).__name__}: {error})")


def _request_principal(request: ApiRequest) -> str | None:
    import json

    def mapping(value: Any) -> dict[str, Any]:
        if isinstance(value, str):  # system_metadata's values travel as JSON text
            try:
                value = json.loads(value)
            except ValueError:
                return {}
        return value if isinstance(value, dict) else {}

    block = mapping(mapping(mapping(request.json).get("system_metadata")).get("qlam_hpc"))
    who = mapping(block.get("principal"))
    if who.get("email") or who.get("subject"):
        email, subject = who.get("email"), who.get("subject")
        return f"{email} ({subject})" if email and subject else str(email or subject)
    client = os.environ.get("QLAM_CLIENT_ID")
    return f"client:{client}" if client and not _user_context() else None


def _user_context() -> bool:
    return os.environ.get("QLAM_AUTH_FLOW", "").strip().lower() in ("device", "user")


def _api_action(request: ApiRequest) -> tuple[str, str | None]:
    from urllib.parse import unquote

    parts = request.path.split("?", 1)[0].rstrip("/").split("/")
    if request.creates or (request.method == "POST" and parts[-1:] == ["tasks"]):
        return "task.create", None
    if "tasks" in parts:
        after = parts[parts.index("tasks") + 1 :]
        if request.method == "PUT" and len(after) == 2 and after[1] == "cancel":
            return "task.cancel", unquote(after[0])
        if request.method == "DELETE" and len(after) == 1:
            return "task.delete", unquote(after[0])
    return f"api.{request.method.lower()}", None


def _created_id(body: bytes) -> str | None:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return None
    return str(data["id"]) if isinstance(data, dict) and data.get("id") is not None else None


def refusal(error: BaseException, exit_code: int, argv: list[str] | None = None) -> None:
    """The CLI exits with an error: the command, the kind of error, its exit code and line."""
    if not enabled():
        return
    try:
        args = sys.argv[1:] if argv is None else argv
        words: list[str] = []
        for arg in args:
            if arg.startswith("-") or len(words) == 2:
                break
            words.append(arg)
        fields: dict[str, Any] = {
            "command": " ".join(words) or None,
            "exit_code": exit_code,
            "status": getattr(error, "status", None),
            "detail": str(error),
        }
        principal = os.environ.get("QLAM_CLIENT_ID")
        if principal and not _user_context():
            fields["principal"] = f"client:{principal}"
        emit(event("refusal", type(error).__name__, **fields))
    except Exception as failure:
        _warn_once("refusal", f"audit: could not record a refusal ({type(failure).__name__}: {failure})")


def logout(provider: TokenProvider, login: Any) -> None:
    """A logout: ``login`` (a ``Login``, or None when there was none) was removed here. A
    revocation that fails afterwards is the CLI's error exit, recorded as a refusal."""
    if not enabled():
        return
    try:
        who = None
        if login is not None:
            email, subject = getattr(login, "email", None), getattr(login, "subject", None)
            who = f"{email} ({subject})" if email and subject else (email or subject)
        outcome = "ok" if login is not None else "not_logged_in"
        emit(event("logout", outcome, principal=who, client_id=provider.settings.client_id))
    except Exception as error:
        _warn_once("logout", f"audit: could not record a logout ({type(error).__name__}: {error})")


# --- wire formats --------------------------------------------------------------------------------


def json_line(record: Mapping[str, Any]) -> bytes:
    import json

    return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()


def summary(record: Mapping[str, Any]) -> str:
    """One line for people: what, outcome, task, who."""
    parts = [str(record.get("action")), str(record.get("outcome"))]
    if record.get("task"):
        parts.append(f"task {record['task']}")
    if record.get("status") is not None:
        parts.append(f"HTTP {record['status']}")
    parts.append(f"by {record.get('user')} (uid {record.get('uid')}) on {record.get('host')}")
    if record.get("job"):
        index = record.get("array_index")
        parts.append(f"job {record['job']}" + (f"[{index}]" if index is not None else ""))
    if record.get("principal"):
        parts.append(f"as {record['principal']}")
    return " ".join(parts)


def _severity(record: Mapping[str, Any]) -> int:
    return 6 if record.get("outcome") in ("ok", "not_logged_in") else 5  # info; notice


def syslog_message(record: Mapping[str, Any], facility: int) -> bytes:
    """RFC 5424: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG``; the MSG is the event's
    JSON line, the structured data its fields (for collectors that index SD params)."""

    def header_field(value: Any, limit: int) -> str:
        text = "".join(c for c in str(value) if "!" <= c <= "~")[:limit]
        return text or "-"

    def sd_value(value: Any) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")

    pri = facility * 8 + _severity(record)
    params = " ".join(f'{key}="{sd_value(value)}"' for key, value in record.items() if key not in ("time", "detail"))
    head = (
        f"<{pri}>1 {record.get('time', '-')} {header_field(record.get('host', '-'), 255)} qlam-hpc "
        f"{header_field(record.get('pid', '-'), 128)} {header_field(record.get('action', '-'), 32)}"
    )
    return f"{head} [{SD_ID} {params}] ".encode() + json_line(record).rstrip(b"\n")


def journal_message(record: Mapping[str, Any], facility: int) -> bytes:
    """The journal's native protocol: ``FIELD=value`` lines; a value with a newline is sent as
    the field name, a newline, its length as 64-bit little endian, the value and a newline."""
    fields: list[tuple[str, str]] = [
        ("MESSAGE", summary(record)),
        ("MESSAGE_ID", JOURNAL_MESSAGE_ID),
        ("PRIORITY", str(_severity(record))),
        ("SYSLOG_FACILITY", str(facility)),
        ("SYSLOG_IDENTIFIER", "qlam-hpc"),
    ]
    fields += [(f"QLAM_{key.upper()}", str(value)) for key, value in record.items()]
    fields.append(("QLAM_EVENT", json_line(record).decode().rstrip("\n")))
    out = bytearray()
    for name, value in fields:
        data = value.encode()
        if b"\n" in data:
            out += name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def _send_datagram(path: str, data: bytes) -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(data, path)
            return
        except OSError as error:
            import errno

            if error.errno != errno.EPROTOTYPE:
                raise
    # A stream socket (some syslog daemons): one message a line, as the BSD syslog() sends.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.connect(path)
        stream.sendall(data + b"\n")


def _send_journal(path: str, data: bytes) -> None:
    """One datagram: an event's values are capped (``_safe``), so it always fits in one, and
    the protocol's other form (a sealed memfd passed along) is never needed."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, path)


def _expand(path: str, record: Mapping[str, Any]) -> str:
    """``{user}`` and ``{host}`` in a file path: one file per user or per node."""
    if "{" not in path:
        return path
    return path.replace("{user}", str(record.get("user", ""))).replace("{host}", str(record.get("host", "")))


def append_line(path: str, line: bytes) -> None:
    """Append one line with one ``write``: ``O_APPEND`` puts it at the end atomically on a local
    filesystem; NFS has no atomic append, so the line is written under an exclusive ``flock``
    (Linux takes it as an NFS lock that the server enforces across nodes, and revalidates the
    file's size when it is taken). Not ``lockf``: POSIX record locks belong to the process, so
    two threads of one process waiting on a third process get a false EDEADLK."""
    import fcntl

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        written = os.write(fd, line)
        if written != len(line):  # a full disk: the rest of the line would be another's
            raise OSError(28, f"short write ({written} of {len(line)} bytes)")
    finally:
        os.close(fd)  # closing releases the lock


# --- reading -------------------------------------------------------------------------------------


def read_events(paths: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """Every event in these JSON-lines files, oldest first, and how many lines were unreadable."""
    import json

    events: list[dict[str, Any]] = []
    bad = 0
    for path in paths:
        with open(path, "rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    bad += 1
                    continue
                if isinstance(record, dict):
                    events.append(record)
                else:
                    bad += 1
    events.sort(key=lambda record: str(record.get("time", "")))
    return events, bad
