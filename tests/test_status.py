"""``qlam-hpc auth status``: this month's requests at a glance, and an unshareable cache said out loud."""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import run_cli
from qlam_hpc._cli._status import chart, project, render_status, requests_per_day

CLIENT = SimpleNamespace(client_id="c1", token_url="https://idp.example/oauth/token")
NOV_10_NOON = calendar.timegm((2026, 11, 10, 12, 0, 0))


def _records(*days: int, month: int = 11, client: str = "c1") -> list[dict]:
    return [
        {"time": calendar.timegm((2026, month, day, 3, 0, 0)), "client_id": client, "token_url": CLIENT.token_url}
        for day in days
    ]


def _requests(records: list[dict], budget: int | None, now: float) -> dict:
    per_day = requests_per_day(records, CLIENT, now)
    return {
        "month": "2026-11",
        "count": sum(per_day),
        "budget": budget,
        "percent_of_budget": round(100 * sum(per_day) / budget, 1) if budget else None,
        "per_day": [{"date": f"2026-11-{day:02d}", "count": n} for day, n in enumerate(per_day, 1)],
        "projection": project(sum(per_day), budget, now),
    }


# --- the chart and the projection ----------------------------------------------------------


def test_requests_are_counted_per_day_of_this_month_for_this_client_only():
    records = _records(1, 1, 3, 10) + _records(2, client="someone-else") + _records(4, month=10)
    assert requests_per_day(records, CLIENT, NOV_10_NOON) == [2, 0, 1, 0, 0, 0, 0, 0, 0, 1]


def test_the_projection_runs_this_months_rate_to_the_end_of_the_month():
    """10 requests in 9.5 days: 32 by the 30th, and a budget of 25 runs out on the 24th."""
    projection = project(10, 25, NOV_10_NOON)
    assert projection["end_of_month"] == "2026-11-30"
    assert projection["count"] == 32
    assert projection["percent_of_budget"] == pytest.approx(126.3, abs=0.1)
    assert projection["budget_runs_out"] == "2026-11-24"
    assert project(10, 1000, NOV_10_NOON)["budget_runs_out"] is None


def test_a_burst_in_the_first_hour_of_the_month_is_not_projected_as_a_rate_per_hour():
    first_hour = calendar.timegm((2026, 11, 1, 0, 30, 0))
    projection = project(3, None, first_hour)
    assert projection["per_day"] == 3 and projection["count"] == 93  # 3 a day, not 3 every half hour


def test_the_chart_has_one_column_per_day_taller_on_busier_days():
    """Busy days stand out, the rest of the month is dotted at the current rate, the budget's daily share is a line."""
    lines = chart(_requests(_records(1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 7, 7, 7, 7, 7), 90, NOV_10_NOON))
    bars = lines[1:-2]
    assert len(bars) == 5 and lines[-2] == " 0 +" + "-" * 30
    columns = ["".join(row[4:].ljust(30)[day] for row in bars) for day in range(30)]
    assert columns[1] == "#####"  # 10 requests on the 2nd: the tallest
    assert columns[6].count("#") == 3  # 5 on the 7th
    assert columns[0].count("#") == 1 and columns[2] == "   - "  # a quiet day: under the budget's 3 a day
    assert all("." in column for column in columns[10:])  # the days to come, at the month's rate
    assert "the budget's share of a day (3)" in lines[0]
    assert lines[-1].split() == ["1", "5", "10", "15", "20", "25", "30"]


def test_status_text_is_plain_ascii_with_the_projection_and_a_warning_when_the_budget_runs_out():
    report = {
        "cache": "/shared/alice",
        "cache_problem": None,
        "flow": "client_credentials",
        "client_id": "c1",
        "token_url": CLIENT.token_url,
        "audience": "https://api.quera.com",
        "token": None,
        "failure": None,
        "login": None,
        "requests": _requests(_records(*range(1, 11)), 25, NOV_10_NOON),
    }
    text = render_status(report)
    text.encode("ascii")  # any terminal, any log file
    assert "requests    10 token requests in 2026-11 of a budget of 25 (40.0%)" in text
    assert (
        "projection  32 requests by 2026-11-30 at this month's rate (1.05 a day): 126.3% of the budget"
        "  WARNING: the budget runs out around 2026-11-24"
    ) in text


# --- through the command ------------------------------------------------------------------


def test_auth_status_draws_todays_requests_and_json_has_the_numbers(env, sandbox):
    for _ in range(3):
        run_cli("token", env=env)
        run_cli("auth", "clear", env=env)
    text = run_cli("auth", "status", env={**env, "QLAM_TOKEN_BUDGET": "3000"})
    report = json.loads(run_cli("auth", "status", "--json", env=env).out)
    assert text.code == 0 and "3 token requests in" in text.out
    assert "# requests per day (UTC)" in text.out and "projection  " in text.out
    today = report["requests"]["per_day"][-1]
    assert (
        today["count"] == 3
        and today["date"] == report["requests"]["month"] + f"-{len(report['requests']['per_day']):02d}"
    )
    assert sum(day["count"] for day in report["requests"]["per_day"]) == 3
    assert report["requests"]["projection"]["count"] >= 3
    assert report["cache_problem"] is None and "NOT SHARED" not in text.out


def test_auth_status_without_requests_draws_no_chart(env):
    result = run_cli("auth", "status", env=env)
    assert result.code == 0 and "0 token requests in" in result.out
    assert "projection" not in result.out and "|" not in result.out


@contextlib.contextmanager
def _read_only_tmpfs():
    """A small real filesystem mounted read-only, or a skip where this machine does not allow mounting."""
    mountpoint = Path(tempfile.mkdtemp(prefix="qlam-status-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], capture_output=True)
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (mountpoint / "cache").mkdir(mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        yield mountpoint / "cache"
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


def test_auth_status_says_when_the_shared_cache_cannot_be_written(env):
    """A read-only cache still answers auth status, with the line that says what it will cost."""
    with _read_only_tmpfs() as cache:
        result = run_cli("auth", "status", env={**env, "QLAM_TOKEN_CACHE_DIR": str(cache)})
        report = json.loads(run_cli("auth", "status", "--json", env={**env, "QLAM_TOKEN_CACHE_DIR": str(cache)}).out)
    assert result.code == 0
    line = next(line for line in result.out.splitlines() if "NOT SHARED" in line)
    assert str(cache) in line and "Read-only file system" in line and "one request each" in line
    assert "Read-only file system" in report["cache_problem"]


def test_auth_status_says_the_cache_is_off(env):
    result = run_cli("auth", "status", env={**env, "QLAM_TOKEN_CACHE": "off"})
    assert result.code == 0
    assert "NOT SHARED: QLAM_TOKEN_CACHE=off: every process fetches its own token" in result.out


def test_auth_status_as_another_user_cannot_share_a_directory_it_does_not_own(env, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    result = run_cli("auth", "status", env={**env, "QLAM_TOKEN_CACHE_DIR": str(theirs)})
    assert "belongs to uid 65534" in result.out + result.err


def test_a_day_long_token_reads_as_1d_after_a_second(env, sandbox):
    """The token line uses the one duration format: a 24 h token a second old is "in 1d", not "23h59m59s"."""
    import time

    assert run_cli("token", env=env).code == 0
    time.sleep(1.2)
    status = run_cli("auth", "status", env=env)
    assert status.code == 0, status.err
    (line,) = [line for line in status.out.splitlines() if line.startswith("token ")]
    assert line.endswith("(in 1d)"), line
