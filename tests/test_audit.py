"""The audit trail: one event per token request, login, logout, state-changing API call and
refusal, naming the Unix user, host, job and principal, written to a real rsyslogd, a real
systemd-journald (or, where it cannot run, a socket that reads the journal's protocol) and a
JSON-lines file that thousands of writers share; ``qlam-hpc audit`` reads it back.

Every file these tests write sits under ``tmp_path``, so the leak check reads each event
for tokens and secrets; what rsyslogd and journald received is copied there too."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
import venv
from pathlib import Path

import pytest

from conftest import QLAM_HPC as QLAM_HPC_BIN
from conftest import run_cli
from qlam_hpc import _audit

ROOT = Path(__file__).resolve().parents[1]
RSYSLOG_SCRIPT = ROOT / "scripts" / "rsyslog-server.sh"
SERVICE_ENV = Path(os.environ.get("QLAM_RSYSLOG_DIR", "/tmp/qlam-hpc-rsyslog")) / "env"
JOURNALD = "/lib/systemd/systemd-journald"


def events_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def audit_env(env: dict[str, str], destination: str, **more: str) -> dict[str, str]:
    return {**env, "QLAM_AUDIT_LOG": destination, **more}


# --- off by default, and free on the warm path ---------------------------------------------------


def test_off_by_default_a_fetch_writes_nothing(env, tmp_path):
    """Without QLAM_AUDIT_LOG (and no site file) a token fetch leaves no audit file anywhere."""
    assert not _audit.enabled({})
    before = set(tmp_path.rglob("*"))
    assert run_cli("token", env=env).code == 0
    assert not [p for p in set(tmp_path.rglob("*")) - before if "audit" in p.name]


@pytest.mark.parametrize("audited", [False, True])
def test_the_warm_token_path_imports_nothing_new(env, tmp_path, audited):
    """``qlam-hpc token`` with a warm cache loads neither the audit module nor json, logging or
    socket, audit on or off: a cache hit is not a request, so there is nothing to record."""
    if audited:
        env = audit_env(env, f"file:{tmp_path / 'audit.jsonl'}")
    assert run_cli("token", env=env).code == 0
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "qlam_hpc", "token"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not imported & {"qlam_hpc._audit", "json", "logging", "socket"}, imported


# --- events ----------------------------------------------------------------------------------------


def test_a_token_fetch_is_one_event_naming_user_host_job_and_client(env, tmp_path):
    """A fetch in array task 4242_7 is one ``token.fetch`` event: outcome, HTTP status, the
    M2M client as principal, the Unix user and uid, the host, the job and its index."""
    log = tmp_path / "audit.jsonl"
    job = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7", "SLURM_JOB_ID": "4250"}
    assert run_cli("token", env=audit_env(env, f"file:{log}", **job)).code == 0
    assert run_cli("token", env=audit_env(env, f"file:{log}", **job)).code == 0  # a cache hit: no event
    (fetch,) = events_in(log)
    assert fetch["action"] == "token.fetch" and fetch["outcome"] == "ok" and fetch["status"] == 200
    assert fetch["principal"] == f"client:{env['QLAM_CLIENT_ID']}" and fetch["client_id"] == env["QLAM_CLIENT_ID"]
    assert (fetch["user"], fetch["uid"]) == ("root" if os.getuid() == 0 else fetch["user"], os.getuid())
    assert fetch["host"] == socket.gethostname()
    assert (fetch["job"], fetch["array_index"]) == ("4242", "7")
    assert fetch["time"].endswith("Z")
    assert oct(log.stat().st_mode & 0o777) == oct(_audit.FILE_MODE)


def test_a_refused_fetch_is_an_event_with_the_identity_providers_answer(env, tmp_path):
    """A wrong secret: the token request is recorded with the IdP's error code and HTTP status."""
    log = tmp_path / "audit.jsonl"
    bad = audit_env(env, f"file:{log}", QLAM_CLIENT_SECRET="not-the-secret-at-all-0123456789")
    assert run_cli("token", env=bad).code == 4
    fetch = next(e for e in events_in(log) if e["action"] == "token.fetch")
    assert fetch["outcome"] == "invalid_client" and fetch["status"] == 401


def test_an_event_never_holds_something_shaped_like_a_token():
    """A JWT or an Authorization value in an error message is blanked before it is written."""
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLXZhbHVl"
    record = _audit.event("refusal", "ApiError", detail=f"sent {jwt} and Authorization: Bearer abcdefgh12345678")
    assert jwt not in json.dumps(record) and "abcdefgh12345678" not in json.dumps(record)


# --- syslog: a real rsyslogd ------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory):
    """The test services' rsyslogd, or one started here for this module: (socket, messages file)."""
    if SERVICE_ENV.is_file():
        found = dict(line.split("=", 1) for line in SERVICE_ENV.read_text().split())
        if Path(found["QLAM_TEST_RSYSLOG_SOCKET"]).is_socket():
            yield Path(found["QLAM_TEST_RSYSLOG_SOCKET"]), Path(found["QLAM_TEST_RSYSLOG_LOG"])
            return
    directory = tmp_path_factory.mktemp("rsyslog")
    started = subprocess.run([str(RSYSLOG_SCRIPT), "start", "--dir", str(directory)], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.skip(f"cannot start rsyslogd: {started.stderr.strip()}")
    try:
        yield directory / "log.sock", directory / "messages.log"
    finally:
        subprocess.run([str(RSYSLOG_SCRIPT), "stop", "--dir", str(directory)], capture_output=True)


def received(messages: Path, marker: str, count: int, into: Path, timeout: float = 10) -> list[str]:
    """rsyslogd's lines holding ``marker``, once ``count`` have arrived; copied to ``into`` so
    that the leak check reads them."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [line for line in messages.read_text().splitlines() if marker in line] if messages.exists() else []
        if len(lines) >= count:
            break
        time.sleep(0.05)
    into.write_text("".join(line + "\n" for line in lines))
    return lines


def test_rsyslogd_receives_rfc5424_with_the_facility_and_structured_data(env, tmp_path, rsyslog):
    """``syslog:local3:SOCKET``: rsyslogd parses the event as RFC 5424: facility local3, app
    qlam-hpc, the action as MSGID, the fields as structured data, the JSON line as message."""
    sock, messages = rsyslog
    marker = f"job-{uuid.uuid4().hex[:8]}"
    assert run_cli("token", env=audit_env(env, f"syslog:local3:{sock}", SLURM_JOB_ID=marker)).code == 0
    (line,) = received(messages, marker, 1, tmp_path / "rsyslog-received.log")
    facility, severity, host, app, procid, msgid, rest = line.split(" ", 6)
    assert (facility, severity, app, msgid) == ("local3", "info", "qlam-hpc", "token.fetch")
    assert host == socket.gethostname() and procid.isdigit()
    assert rest.startswith(f'[{_audit.SD_ID} action="token.fetch" outcome="ok"') and f'job="{marker}"' in rest
    event = json.loads(rest[rest.index("] {") + 2 :])
    assert event["job"] == marker and event["uid"] == os.getuid()


def test_the_default_facility_is_authpriv_and_a_failure_is_a_notice(tmp_path, rsyslog):
    """``syslog::SOCKET`` uses authpriv (Debian keeps it in the root-only auth.log); an event
    whose outcome is not ok is a notice, not info."""
    sock, messages = rsyslog
    marker = uuid.uuid4().hex
    _audit.emit(_audit.event("task.cancel", "refused", task=marker, status=409), {"QLAM_AUDIT_LOG": f"syslog::{sock}"})
    (line,) = received(messages, marker, 1, tmp_path / "rsyslog-received.log")
    assert line.startswith("authpriv notice ")


def test_a_missing_syslog_socket_is_one_warning_and_the_command_succeeds(env, tmp_path):
    """Auditing never stops the work it records: no socket, one warning, the token printed."""
    result = run_cli("token", env=audit_env(env, f"syslog:local3:{tmp_path / 'no-such.sock'}"))
    assert result.code == 0 and result.out.strip()
    warnings = [line for line in result.err.splitlines() if "audit:" in line]
    assert len(warnings) == 1 and "syslog (local3)" in warnings[0], result.err


def test_a_malformed_destination_is_named_and_the_others_still_get_the_event(env, tmp_path):
    """QLAM_AUDIT_LOG=bogus,file:PATH: one warning naming 'bogus'; the file still gets the event."""
    log = tmp_path / "audit.jsonl"
    result = run_cli("token", env=audit_env(env, f"bogus,file:{log}"))
    assert result.code == 0
    assert "'bogus' is not an audit destination" in result.err
    assert [e["action"] for e in events_in(log)] == ["token.fetch"]


# --- journald ----------------------------------------------------------------------------------


def parse_native(datagram: bytes) -> dict[str, str]:
    """The journal's native protocol, read as journald reads it: ``NAME=value`` lines, or
    ``NAME`` newline, a 64-bit little-endian length, that many bytes, newline."""
    fields: dict[str, str] = {}
    at = 0
    while at < len(datagram):
        end = datagram.index(b"\n", at)
        line = datagram[at:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            at = end + 1
        else:
            name = line
            size = int.from_bytes(datagram[end + 1 : end + 9], "little")
            value = datagram[end + 9 : end + 9 + size]
            assert datagram[end + 9 + size : end + 10 + size] == b"\n"
            at = end + 10 + size
        assert name and name.isupper() is not False and not name.startswith(b"_"), name
        fields[name.decode()] = value.decode()
    return fields


def test_the_journal_wire_format_is_read_back_field_for_field(tmp_path):
    """A socket reading the native protocol gets every field, a multi-line value in the
    binary length-prefixed form, and the event's JSON line whole."""
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        detail = "first line\nsecond line\n"
        _audit.emit(
            _audit.event("task.delete", "ok", task="t-1", status=204, detail=detail),
            {"QLAM_AUDIT_LOG": f"journald:{path}"},
        )
        datagram = server.recv(1 << 20)
    assert b"QLAM_DETAIL\n" + len(detail.encode()).to_bytes(8, "little") in datagram
    fields = parse_native(datagram)
    assert fields["QLAM_DETAIL"] == detail
    assert fields["MESSAGE_ID"] == _audit.JOURNAL_MESSAGE_ID and fields["SYSLOG_IDENTIFIER"] == "qlam-hpc"
    assert (fields["QLAM_ACTION"], fields["QLAM_TASK"], fields["QLAM_STATUS"]) == ("task.delete", "t-1", "204")
    assert fields["PRIORITY"] == "6" and fields["QLAM_UID"] == str(os.getuid())
    assert json.loads(fields["QLAM_EVENT"])["detail"] == detail
    (tmp_path / "journal-received.txt").write_bytes(datagram)


@pytest.fixture
def journald(tmp_path):
    """A real systemd-journald in a namespace of its own (its socket is
    /run/systemd/journal.NAMESPACE/socket), stopped and its journal removed afterwards."""
    if os.geteuid() != 0 or not os.access(JOURNALD, os.X_OK) or not shutil.which("journalctl"):
        pytest.skip("a real systemd-journald needs root and the systemd package")
    namespace = f"qlamtest{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen([JOURNALD, namespace], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = Path(f"/run/systemd/journal.{namespace}/socket")
    deadline = time.monotonic() + 10
    while not sock.is_socket() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        if not sock.is_socket():
            pytest.skip("systemd-journald does not run here")
        yield namespace, sock
    finally:
        process.terminate()
        process.wait(10)
        machine = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
        shutil.rmtree(f"/var/log/journal/{machine}.{namespace}", ignore_errors=True)
        shutil.rmtree(f"/run/log/journal/{machine}.{namespace}", ignore_errors=True)
        shutil.rmtree(sock.parent, ignore_errors=True)


def test_a_real_journald_stores_the_events_structured_fields(env, tmp_path, journald):
    """``journald:SOCKET``: systemd-journald keeps the event's fields, finds it by MESSAGE_ID,
    and adds its own trusted _UID, which the process cannot forge."""
    namespace, sock = journald
    job = f"job-{uuid.uuid4().hex[:8]}"
    assert run_cli("token", env=audit_env(env, f"journald:{sock}", SLURM_JOB_ID=job)).code == 0
    entries: list[dict] = []
    deadline = time.monotonic() + 10
    while not entries and time.monotonic() < deadline:
        shown = subprocess.run(
            ["journalctl", f"--namespace={namespace}", "-o", "json", "--no-pager", f"QLAM_JOB={job}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        entries = [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]
        time.sleep(0.1)
    (tmp_path / "journal-entries.json").write_text(json.dumps(entries))
    (entry,) = entries
    assert entry["MESSAGE_ID"] == _audit.JOURNAL_MESSAGE_ID and entry["QLAM_ACTION"] == "token.fetch"
    assert entry["_UID"] == str(os.getuid()) == entry["QLAM_UID"]
    assert entry["MESSAGE"].startswith("token.fetch ok ")


# --- the file: many writers ---------------------------------------------------------------------

PROCESSES, THREADS, EACH = 20, 100, 10
PAD = "p" * 1900  # four of these make a line of about 8 KiB, twice a pipe's atomic write


def _writer_process(path: str, number: int, go: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    environ = {"QLAM_AUDIT_LOG": f"file:{path}"}
    start = threading.Barrier(THREADS)

    def thread(index: int) -> None:
        start.wait()
        for n in range(EACH):
            big = {f"pad{k}": PAD for k in range(4)} if n % 3 == 0 else {}
            _audit.emit(_audit.event("task.create", "ok", task=f"{number}-{index}-{n}", **big), environ)

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(THREADS)]
    go.wait()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if _audit._warned:  # an event that could not be written: the writer says which failure
        raise SystemExit(f"audit warnings: {sorted(_audit._warned)}")


def test_two_thousand_concurrent_writers_never_tear_or_interleave_a_line(tmp_path):
    """20 processes of 100 threads each, 2,000 writers at once, append 20,000 events, a third
    of them about 8 KiB long: every line is whole JSON, and every event is there exactly once."""
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("fork")
    go = context.Event()
    workers = [context.Process(target=_writer_process, args=(str(path), p, go)) for p in range(PROCESSES)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)  # let every process reach the gate
    started = time.perf_counter()
    go.set()
    for worker in workers:
        worker.join(300)
        assert worker.exitcode == 0
    elapsed = time.perf_counter() - started
    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    tasks = [json.loads(line)["task"] for line in lines]
    total = PROCESSES * THREADS * EACH
    assert len(tasks) == len(set(tasks)) == total
    print(f"\n{total} events from {PROCESSES * THREADS} concurrent writers in {elapsed:.2f}s: {total / elapsed:.0f}/s")


# --- site control -------------------------------------------------------------------------------


@pytest.fixture
def site_python(tmp_path) -> tuple[Path, Path]:
    """An installation of qlam-hpc with a prefix of its own (a venv that loads this checkout),
    as site-install.sh makes one: (its python, its etc/qlam-hpc/audit.conf)."""
    prefix = tmp_path / "site"
    venv.create(prefix, with_pip=False)
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    ours = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "project-venv.pth").write_text(f"import site; site.addsitedir({str(ours)!r})\n")
    conf = prefix / "etc" / "qlam-hpc" / "audit.conf"
    conf.parent.mkdir(parents=True)
    return prefix / "bin" / "python", conf


def test_the_sites_destination_cannot_be_turned_off_and_the_user_can_only_add(env, tmp_path, site_python):
    """The site's audit.conf (beside the installation) names a file: QLAM_AUDIT_LOG=off does not
    stop it, and a user's QLAM_AUDIT_LOG=file:THEIRS gets the event as well, never instead."""
    python, conf = site_python
    site_log, own_log = tmp_path / "site-audit.jsonl", tmp_path / "own-audit.jsonl"
    conf.write_text(f"# the site's audit trail\nfile:{site_log}\n")

    def fetch(value: str) -> None:
        run = subprocess.run(
            [str(python), "-m", "qlam_hpc", "auth", "check", "--yes"],
            env={**env, "QLAM_AUDIT_LOG": value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr

    fetch("off")
    assert [e["action"] for e in events_in(site_log)] == ["token.fetch"]
    fetch(f"file:{own_log}")
    assert len(events_in(site_log)) == 2 and len(events_in(own_log)) == 1
    fetch(f"file:{site_log}")  # the same destination twice: one event, not two
    assert len(events_in(site_log)) == 3


def test_destinations_read_the_site_file_first_and_skip_duplicates(tmp_path, monkeypatch):
    """The site's entries come first, with their file and line for messages; an entry the
    environment repeats is kept once; a bad line is reported, not fatal."""
    conf = tmp_path / "audit.conf"
    conf.write_text("syslog:local4\n\nnot-a-destination\n")
    monkeypatch.setattr(_audit, "SITE_FILES", (str(conf),))
    found, problems = _audit.destinations({"QLAM_AUDIT_LOG": "syslog:local4, file:/var/log/q.jsonl"})
    assert [d.describe() for d in found] == ["syslog (local4) via /dev/log", "file /var/log/q.jsonl"]
    assert found[0].source == f"{conf}:1"
    assert problems == [f"{conf}:3: 'not-a-destination' is not an audit destination "
                        "(syslog[:FACILITY[:SOCKET]], journald, file:PATH)"]  # fmt: skip
    assert _audit.enabled({})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("syslog:local9", "unknown syslog facility 'local9'"),
        ("file:relative/audit.jsonl", "needs an absolute path"),
        ("file:", "is not an audit destination"),
        ("kafka://broker", "is not an audit destination"),
    ],
)
def test_a_bad_destination_says_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        _audit.parse_destination(spec, "QLAM_AUDIT_LOG")


# --- qlam-hpc audit ----------------------------------------------------------------------------


def write_events(path: Path, *records: dict) -> None:
    with path.open("a") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def test_audit_filters_by_task_user_action_and_since(env, tmp_path):
    """--task, --user (name or uid), --action and --since pick events; --json prints them as stored."""
    log = tmp_path / "audit.jsonl"
    now = time.time()
    old = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 3 * 86400))
    new = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 60))
    base = {"outcome": "ok", "host": "n1", "principal": "client:c"}
    write_events(
        log,
        {**base, "time": old, "action": "task.create", "task": "T1", "user": "ada", "uid": 1001},
        {**base, "time": new, "action": "task.cancel", "task": "T1", "user": "bob", "uid": 1002},
        {**base, "time": new, "action": "task.create", "task": "T2", "user": "ada", "uid": 1001},
    )
    with log.open("a") as handle:
        handle.write("{not json\n")
    env = {**env, "QLAM_AUDIT_LOG": f"file:{log}"}
    by_task = run_cli("audit", "--task", "T1", env=env)
    assert by_task.code == 0
    assert [line.split()[1] for line in by_task.out.splitlines()] == ["task.create", "task.cancel"]
    assert "by bob (uid 1002)" in by_task.out.splitlines()[1]
    assert "1 line of the audit log could not be read" in by_task.err
    who = run_cli("audit", "--task", "T1", "--action", "task.cancel", "--json", env=env)
    assert [json.loads(line)["user"] for line in who.out.splitlines()] == ["bob"]
    assert len(run_cli("audit", "--user", "1001", env=env).out.splitlines()) == 2
    assert len(run_cli("audit", "--user", "ada", "--since", "1d", env=env).out.splitlines()) == 1
    since = time.strftime("%Y-%m-%d", time.gmtime(now - 86400))
    assert len(run_cli("audit", "--since", since, "--file", str(log), env=env).out.splitlines()) == 2
    none = run_cli("audit", "--task", "T9", env=env)
    assert none.code == 0 and none.out == "" and "no audit event matches" in none.err


def test_audit_refuses_bad_input_with_one_line_and_its_exit_code(env, tmp_path):
    """A bad --since is a usage error (2); no log to read, or an unreadable one, is exit 3."""
    bad = run_cli("audit", "--since", "last tuesday", "--file", str(tmp_path / "x"), env=env)
    assert bad.code == 2 and bad.err.count("\n") == 1 and "--since" in bad.err
    nothing = run_cli("audit", env=env)
    assert nothing.code == 3 and "no audit log to read" in nothing.err and "Traceback" not in nothing.err
    missing = run_cli("audit", "--file", str(tmp_path / "missing.jsonl"), env=env)
    assert missing.code == 3 and "cannot read the audit log" in missing.err


# --- API calls, logins and refusals (the hooks in the clients, _login and the CLI's exit) ---------

DEFINITION = {
    "program_language": "squin",
    "programs": [{"content": "circuit ok"}],
    "subtasks": [{"program_index": 0, "num_shots": 10}],
}


@pytest.fixture
def job_file(tmp_path) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(DEFINITION))
    return path


def test_create_cancel_and_delete_are_events_with_the_task_and_status(env, sandbox, tmp_path, job_file):
    """``tasks submit`` (the light path), ``tasks cancel`` and ``tasks delete`` (the full CLI):
    one event each, naming the task and the HTTP status; a read (``tasks get``) is none."""
    sandbox.set_faults(task_duration=600)
    log = tmp_path / "audit.jsonl"
    env = audit_env(env, f"file:{log}")
    assert run_cli("token", env=env).code == 0  # warm: submit takes the light path
    submitted = run_cli("tasks", "submit", "-q", str(job_file), env=env)
    assert submitted.code == 0, submitted.err
    task = submitted.out.strip()
    assert run_cli("tasks", "get", task, "--json", env=env).code == 0
    assert run_cli("tasks", "cancel", task, env=env).code == 0
    assert run_cli("tasks", "delete", task, env=env).code == 0
    events = [e for e in events_in(log) if e["action"] != "token.fetch"]
    assert [(e["action"], e["outcome"], e.get("task")) for e in events] == [
        ("task.create", "ok", task),
        ("task.cancel", "ok", task),
        ("task.delete", "ok", task),
    ]
    assert all(200 <= e["status"] < 300 for e in events)
    assert all(e["principal"] == f"client:{env['QLAM_CLIENT_ID']}" for e in events)


def test_the_library_clients_record_their_calls(settings, sandbox, tmp_path, monkeypatch):
    """QlamClient and AsyncQlamClient: a created task is an event, as from the CLI."""
    import asyncio

    from qlam_hpc import AsyncQlamClient, QlamClient
    from qlam_hpc._api._settings import ApiSettings

    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("QLAM_AUDIT_LOG", f"file:{log}")
    api = ApiSettings.from_env(sandbox.env())
    with QlamClient(api, provider=__import__("qlam_hpc").TokenProvider(settings)) as client:
        made = client.create_task(DEFINITION)

    async def create() -> str:
        async with AsyncQlamClient(api, provider=__import__("qlam_hpc").TokenProvider(settings)) as client:
            return (await client.create_task(DEFINITION)).id

    made_async = asyncio.run(create())
    creates = [e for e in events_in(log) if e["action"] == "task.create"]
    assert [e["task"] for e in creates] == [made.id, made_async]


def test_a_refusal_is_an_event_with_its_exit_code_and_error_line(env, sandbox, tmp_path):
    """``tasks cancel`` of an unknown task: the API's 404 (task.cancel refused) and the CLI's
    exit 13 (refusal NotFound, with the command and the error line)."""
    log = tmp_path / "audit.jsonl"
    env = audit_env(env, f"file:{log}")
    unknown = str(uuid.uuid4())
    result = run_cli("tasks", "cancel", unknown, env=env)
    assert result.code == 13
    cancel = next(e for e in events_in(log) if e["action"] == "task.cancel")
    assert (cancel["outcome"], cancel["status"], cancel["task"]) == ("refused", 404, unknown)
    refusal = next(e for e in events_in(log) if e["action"] == "refusal")
    assert (refusal["outcome"], refusal["exit_code"], refusal["command"]) == ("NotFound", 13, "tasks cancel")
    assert refusal["detail"] in result.err


def test_a_refused_token_on_the_light_path_is_a_refusal_too(env, tmp_path):
    """A wrong secret met by ``qlam-hpc token`` (the light path fetches): token.fetch refused
    and a refusal with exit 4, the same events as the full CLI's."""
    log = tmp_path / "audit.jsonl"
    bad = audit_env(env, f"file:{log}", QLAM_CLIENT_SECRET="not-the-secret-at-all-0123456789")
    assert run_cli("token", env=bad).code == 4
    assert [(e["action"], e["outcome"]) for e in events_in(log)] == [
        ("token.fetch", "invalid_client"),
        ("refusal", "InvalidClient"),
    ]
    assert events_in(log)[1]["exit_code"] == 4


def test_login_refresh_and_logout_name_the_logged_in_user(user_env, user_sandbox, tmp_path):
    """User context: the device login, a refresh and the logout are events whose principal is
    the person (e-mail and subject), never the refresh token or the device code (the leak check
    reads the file)."""
    log = tmp_path / "audit.jsonl"
    env = audit_env(user_env, f"file:{log}")
    assert run_cli("auth", "login", env=env).code == 0
    assert run_cli("auth", "clear", env=env).code == 0  # the login stays: the next token is a refresh
    assert run_cli("token", env=env).code == 0
    assert run_cli("auth", "logout", env=env).code == 0
    events = events_in(log)
    assert [(e["action"], e["outcome"]) for e in events] == [("login", "ok"), ("token.refresh", "ok"), ("logout", "ok")]
    assert all(e["principal"] == "ada@example.org (auth0|sandbox-user-1)" for e in events)


# --- done when: two Unix users, a 200-task array, one cancels -----------------------------------

ARRAY = 100  # tasks per user: two arrays of 100 make the 200 tasks
AT_ONCE = 12


def test_two_users_run_200_tasks_and_the_audit_says_who_cancelled_which(env, sandbox, tmp_path, rsyslog):
    """ada and bob (real Unix users, one shared M2M client) each run a 100-task array that
    submits one task per array task into one shared audit file and the site's rsyslogd; bob
    then cancels one of ada's tasks. ``qlam-hpc audit --task ID`` says ada's array task made
    it and bob cancelled it; every one of the 200 creations names the right user, job and
    index; rsyslogd received the same events."""
    from two_users import _ensure_user, _python_for_others

    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("two Unix users need root (useradd, runuser)")
    sock, messages = rsyslog
    import tempfile

    from two_users import NAMES, User

    base = Path(tempfile.mkdtemp(prefix="qlamtest-audit-"))
    base.chmod(0o755)
    try:
        python = _python_for_others(base, NAMES[0])
        users = {}
        for name in NAMES:
            uid, gid = _ensure_user(name)
            home = base / name
            home.mkdir(mode=0o700)
            os.chown(home, uid, gid)
            users[name.rpartition("-")[2]] = User(name, uid, gid, home, python)
        shared = base / "audit.jsonl"
        # The site made one file for everyone: whoever can append can also write a false line.
        shared.touch(mode=0o666)
        shared.chmod(0o666)
        for user in users.values():  # the shared account's secret: a copy of their own each, 0600
            secret = user.home / "client-secret"
            secret.write_text(env["QLAM_CLIENT_SECRET"])
            secret.chmod(0o600)
            os.chown(secret, user.uid, user.gid)
        job = base / "job.json"
        job.write_text(json.dumps(DEFINITION))
        job.chmod(0o644)
        sandbox.set_faults(task_duration=600)
        run_id = str(uuid.uuid4().int % 900000 + 100000)
        jobs = {"ada": f"{run_id}1", "bob": f"{run_id}2"}

        def user_env(user: User, **more: str) -> dict[str, str]:
            return {
                "AUTH_BASE_URL": env["AUTH_BASE_URL"],
                "QLAM_CLIENT_ID": env["QLAM_CLIENT_ID"],
                "QLAM_CLIENT_SECRET_FILE": str(user.home / "client-secret"),
                "QLAM_AUDIENCE": env["QLAM_AUDIENCE"],
                "QLAM_API_URL": env["QLAM_API_URL"],
                "QLAM_TOKEN_CACHE_DIR": str(user.home / "cache"),
                "QLAM_AUDIT_LOG": f"file:{shared},syslog:local3:{sock}",
                **more,
            }

        runs = [(who, index) for index in range(ARRAY) for who in ("ada", "bob")]
        created: dict[str, tuple[str, int]] = {}
        started = time.monotonic()
        while runs:
            batch, runs = runs[:AT_ONCE], runs[AT_ONCE:]
            processes = []
            for who, index in batch:
                array = {"SLURM_ARRAY_JOB_ID": jobs[who], "SLURM_ARRAY_TASK_ID": str(index)}
                processes.append(
                    (who, index, users[who].start("tasks", "submit", "-q", str(job), env=user_env(users[who], **array)))
                )
            for who, index, process in processes:
                out, err = process.communicate(timeout=120)
                assert process.returncode == 0, err
                created[out.strip()] = (who, index)
        elapsed = time.monotonic() - started
        assert len(created) == 2 * ARRAY
        victim = next(task for task, (who, index) in created.items() if who == "ada" and index == 17)
        cancelled = users["bob"].cli("tasks", "cancel", victim, env=user_env(users["bob"]))
        assert cancelled.code == 0, cancelled.err

        answer = subprocess.run(
            [QLAM_HPC_BIN, "audit", "--task", victim, "--file", str(shared)], capture_output=True, text=True, timeout=60
        )
        lines = answer.stdout.splitlines()
        assert answer.returncode == 0 and len(lines) == 2, answer.stdout + answer.stderr
        assert " task.create ok " in lines[0] and f"by {NAMES[0]} (uid {users['ada'].uid})" in lines[0]
        assert f"job {jobs['ada']}[17]" in lines[0]
        assert " task.cancel ok " in lines[1] and f"by {NAMES[1]} (uid {users['bob'].uid})" in lines[1]
        who_cancelled = subprocess.run(
            [QLAM_HPC_BIN, "audit", "--task", victim, "--action", "task.cancel", "--json", "--file", str(shared)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(who_cancelled.stdout)["user"] == NAMES[1]

        events = events_in(shared)
        (tmp_path / "shared-audit.jsonl").write_text(shared.read_text())  # for the leak check
        creates = {e["task"]: e for e in events if e["action"] == "task.create"}
        assert set(creates) == set(created)
        for task, (who, index) in created.items():
            event = creates[task]
            assert (event["user"], event["uid"]) == (users[who].name, users[who].uid)
            assert (event["job"], event["array_index"]) == (jobs[who], str(index))
        fetches = [e for e in events if e["action"] == "token.fetch"]
        assert sorted(e["user"] for e in fetches) == sorted(NAMES)  # one token per user, shared by their array

        syslog_lines = received(
            messages, f'job="{run_id}', len(events) - 1, tmp_path / "rsyslog-received.log", timeout=30
        )
        syslog_lines += received(messages, f'task="{victim}"', 2, tmp_path / "rsyslog-victim.log")
        from_syslog = {
            (e["action"], e.get("task"), e["user"])
            for e in (json.loads(line[line.index("] {") + 2 :]) for line in syslog_lines)
        }
        assert from_syslog == {(e["action"], e.get("task"), e["user"]) for e in events}
        print(f"\n{2 * ARRAY} tasks by two users, {AT_ONCE} at a time, in {elapsed:.1f}s; {len(events)} events")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_doctor_lines_say_where_events_go_and_whose_setting_it_is(tmp_path, monkeypatch):
    """Off; a site destination (cannot be turned off); a user's, with what would lose events."""
    monkeypatch.setattr(_audit, "SITE_FILES", (str(tmp_path / "absent.conf"),))
    assert _audit.checks({}) == [("ok", f"off (no QLAM_AUDIT_LOG, no site file: {tmp_path / 'absent.conf'})")]
    conf = tmp_path / "audit.conf"
    conf.write_text(f"file:{tmp_path / 'site.jsonl'}\n")
    monkeypatch.setattr(_audit, "SITE_FILES", (str(conf),))
    lines = _audit.checks({"QLAM_AUDIT_LOG": f"syslog:local3:{tmp_path / 'none.sock'},file:/no/such/dir/a.jsonl"})
    assert lines[0] == ("ok", f"file {tmp_path / 'site.jsonl'} (the site's, cannot be turned off: {conf}:1)")
    assert lines[1][0] == "warn" and "No such file or directory: events will be lost" in lines[1][1]
    assert lines[2][0] == "warn" and "cannot create /no/such/dir/a.jsonl" in lines[2][1]


def test_doctor_says_where_audit_events_go(env, tmp_path):
    """``qlam-hpc doctor``: one audit line, ok when the destination can take events."""
    result = run_cli("doctor", env=audit_env(env, f"file:{tmp_path / 'audit.jsonl'}"))
    assert result.code == 0, result.out
    line = next(line for line in result.out.splitlines() if line.split()[1:2] == ["audit"])
    assert line.split()[0] == "ok" and f"file {tmp_path / 'audit.jsonl'} (from QLAM_AUDIT_LOG)" in line


def test_site_install_audit_log_writes_the_sites_file_and_the_modules_setenv(env, tmp_path):
    """``site-install.sh --audit-log file:PATH``: the environment's etc/qlam-hpc/audit.conf
    names it (so QLAM_AUDIT_LOG=off changes nothing) and the modulefile sets QLAM_AUDIT_LOG."""
    import sysconfig
    import tempfile

    from qlam_hpc import __version__

    shared_python = "/usr/bin/python3"
    if not os.access(shared_python, os.X_OK):
        pytest.skip(f"{shared_python} is missing: the site install needs a Python every user can run")
    prefix = Path(tempfile.mkdtemp(prefix="qlam-site-audit-"))
    prefix.chmod(0o755)  # as on a cluster: every user enters PREFIX
    try:
        site_log = tmp_path / "site-audit.jsonl"
        ours = sysconfig.get_paths()["purelib"]
        done = subprocess.run(
            [str(ROOT / "scripts" / "site-install.sh"), str(prefix), "--python", shared_python, "--no-deps",
             "--audit-log", f"file:{site_log},syslog:local3"],
            env={**os.environ, "PYTHONPATH": ours}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        venv_dir = prefix / "qlam-hpc" / __version__ / "venv"
        conf = (venv_dir / "etc" / "qlam-hpc" / "audit.conf").read_text().splitlines()
        assert conf[1:] == [f"file:{site_log}", "syslog:local3"]
        module = (prefix / "modulefiles" / "qlam-hpc" / f"{__version__}.lua").read_text()
        assert f'setenv("QLAM_AUDIT_LOG", "file:{site_log},syslog:local3")' in module
        check = subprocess.run(
            [str(venv_dir / "bin" / "qlam-hpc"), "auth", "check", "--yes"],
            env={**env, "PYTHONPATH": ours, "QLAM_AUDIT_LOG": "off"}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        assert [e["action"] for e in events_in(site_log)] == ["token.fetch"]
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
