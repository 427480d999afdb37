"""``qlam-hpc metrics``: the node_exporter textfile, checked by Prometheus' own ``promtool``,
its token counts compared with the sandbox's, written so that a reader never sees half."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import run_cli
from qlam_hpc._metrics import Family, render, write_textfile

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, line
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        found.append((match["name"], labels, float(match["value"])))
    return found


def total(text: str, name: str, **where: str) -> float:
    return sum(v for n, labels, v in samples(text) if n == name and all(labels.get(k) == w for k, w in where.items()))


def promtool(path: Path) -> subprocess.CompletedProcess[str]:
    if not shutil.which("promtool"):
        pytest.skip("promtool is not installed (Debian package prometheus; scripts/test-services.sh installs it)")
    with path.open() as handle:
        return subprocess.run(
            ["promtool", "check", "metrics"], stdin=handle, capture_output=True, text=True, timeout=60
        )


def test_promtool_accepts_the_textfile_and_its_token_counts_match_the_sandbox(env, sandbox, tmp_path):
    """One refused fetch and three good ones: the month's requests in the textfile are the sandbox's
    token requests, split by outcome; the failure is counted by kind; the audit log gives the
    Unix user's share; the budget and its projection are there; promtool finds no problem."""
    log = tmp_path / "audit.jsonl"
    env = {**env, "QLAM_AUDIT_LOG": f"file:{log}", "QLAM_TOKEN_BUDGET": "5000"}
    assert run_cli("token", env={**env, "QLAM_CLIENT_SECRET": "wrong-secret-wrong-secret-0123"}).code == 4
    for _ in range(3):
        assert run_cli("auth", "clear", env=env).code == 0
        assert run_cli("token", env=env).code == 0
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    result = run_cli("metrics", "--textfile", str(textfiles), env=env)
    assert result.code == 0, result.err
    prom = textfiles / "qlam_hpc.prom"
    assert result.out.strip() == f"wrote {prom}"
    checked = promtool(prom)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = prom.read_text()
    client = env["QLAM_CLIENT_ID"]
    stats = sandbox.stats()
    assert stats["token_requests"] == 4
    assert total(text, "qlam_hpc_month_token_requests", client_id=client) == stats["token_requests"]
    assert total(text, "qlam_hpc_month_token_requests", outcome="ok") == stats["tokens_issued"] == 3
    assert total(text, "qlam_hpc_month_token_failures", kind="invalid_client") == 1
    user = run_cli("audit", "--json", "--file", str(log), env=env).out.count('"action":"token.fetch"')
    assert total(text, "qlam_hpc_audit_month_token_requests") == user == stats["token_requests"]
    assert total(text, "qlam_hpc_month_token_budget") == 5000
    assert total(text, "qlam_hpc_month_token_requests_projected") >= 4
    assert 0 < total(text, "qlam_hpc_token_expiry_seconds") <= 86400
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in textfiles.iterdir()] == ["qlam_hpc.prom"]  # no temporary left


def test_metrics_without_a_directory_print_the_same_text(env):
    assert run_cli("token", env=env).code == 0
    printed = run_cli("metrics", env=env)
    assert printed.code == 0 and "# TYPE qlam_hpc_month_token_requests gauge" in printed.out
    assert total(printed.out, "qlam_hpc_month_token_requests") == 1


def test_user_context_metrics_say_when_the_login_ends(user_env, tmp_path):
    """After a device login: the login's seconds left (15 days) and the logged-in user as identity."""
    assert run_cli("auth", "login", env=user_env).code == 0
    printed = run_cli("metrics", env=user_env)
    assert printed.code == 0, printed.err
    (login,) = [s for s in samples(printed.out) if s[0] == "qlam_hpc_login_expiry_seconds"]
    assert login[1]["identity"] == "ada@example.org" and 14 * 86400 < login[2] <= 15 * 86400
    assert total(printed.out, "qlam_hpc_month_token_requests", grant="device_code") == 1
    (tmp_path / "metrics.prom").write_text(printed.out)
    assert promtool(tmp_path / "metrics.prom").returncode == 0


def test_the_textfile_is_replaced_whole_while_it_is_read(tmp_path):
    """A reader polling the file while it is rewritten 300 times, each time longer, only ever
    sees a complete file: the old one or the new one."""
    stop = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        target = tmp_path / "qlam_hpc.prom"
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):  # before the first write
                seen.append(target.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 301):
            family = Family("qlam_hpc_test", "A test metric.")
            for i in range(n):
                family.add(i, index=str(i))
            end = Family("qlam_hpc_test_end", "The last line.")
            end.add(n)
            write_textfile(str(tmp_path), "qlam_hpc.prom", render([family, end]))
    finally:
        stop.set()
        thread.join()
    assert seen
    for text in seen:
        last = text.rstrip("\n").rsplit("\n", 1)[-1]
        count = int(last.split()[-1])
        assert last.startswith("qlam_hpc_test_end ") and text.count("qlam_hpc_test{") == count


def test_metrics_refuse_a_bad_name_and_an_unwritable_directory(env, tmp_path):
    """--name must be a *.prom file name (exit 2); a directory that cannot be written is exit 3."""
    bad = run_cli("metrics", "--textfile", str(tmp_path), "--name", "metrics.txt", env=env)
    assert bad.code == 2 and "*.prom" in bad.err and bad.err.count("\n") == 1
    missing = run_cli("metrics", "--textfile", str(tmp_path / "no" / "such"), env=env)
    assert missing.code == 3 and "cannot write the metrics into" in missing.err and "Traceback" not in missing.err


def test_label_values_are_escaped():
    family = Family("qlam_hpc_x", "x")
    family.add(1, user='a"b\\c\nd')
    assert render([family]).splitlines()[-1] == 'qlam_hpc_x{user="a\\"b\\\\c\\nd"} 1'


def test_keep_fresh_writes_the_metrics_into_the_textfile_directory(user_env, tmp_path):
    """``auth keep-fresh`` with QLAM_METRICS_TEXTFILE=DIR writes DIR/qlam_hpc_<user>.prom each
    time it checks the token, so a login node's keeper needs no cron line of its own."""
    import getpass

    textfile = tmp_path / "textfile"
    textfile.mkdir()
    env = {**user_env, "QLAM_METRICS_TEXTFILE": str(textfile)}
    assert run_cli("auth", "login", env=env).code == 0
    kept = run_cli("auth", "keep-fresh", "--once", env=env)
    assert kept.code == 0, kept.err
    prom = textfile / f"qlam_hpc_{getpass.getuser()}.prom"
    assert total(prom.read_text(), "qlam_hpc_login_expiry_seconds") > 14 * 86400
    assert promtool(prom).returncode == 0
