"""``qlam-hpc auth status``: everything about the cached token except the token itself.

It also answers the two questions a user asks before submitting a large array: will
its tasks share one token (a cache that cannot be written costs one token request
per task), and how far is this month's quota from running out (the requests per
day, drawn in plain text so that it reads the same in a terminal and in a job log,
and the month's end projected at this month's rate).
"""

from __future__ import annotations

import calendar
import math
import time

from .._durations import format_duration
from .._provider import TokenProvider, count_requests
from .._settings import flow_label
from .._tokens import unverified_claims
from ._output import utc

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from .._settings import Settings


def auth_status(provider: TokenProvider, now: float) -> dict[str, Any]:
    settings = provider.settings
    entry = provider.store.load(provider.identity)
    token = entry.token if entry else None
    report: dict[str, Any] = {
        "cache": provider.store.location,
        "cache_problem": _cache_problem(provider),
        "flow": settings.auth_flow,
        "client_id": settings.client_id,
        "token_url": settings.token_url,
        "audience": settings.audience,
        "scope_requested": settings.scope,
        "token": None,
        "failure": None,
    }
    if token is not None:
        claims = unverified_claims(token.access_token) or {}
        report["token"] = {
            "state": "valid" if token.usable(now) else ("expiring" if not token.expired(now) else "expired"),
            "expires_at": utc(token.expires_at),
            "expires_in": int(token.remaining(now)),
            "obtained_at": utc(token.obtained_at),
            "obtained_by": token.obtained_by,
            "subject": claims.get("sub"),
            "audience": claims.get("aud"),
            "issuer": claims.get("iss"),
            "scopes": (claims.get("scope") or token.scope or "").split(),
        }
    if entry is not None and entry.failure is not None and now < entry.failure.until:
        failure = entry.failure
        report["failure"] = {
            "error": str(failure.to_error()),
            "at": utc(failure.at),
            "until": utc(failure.until),
            "by": failure.by,
        }
    report["login"] = _login_report(provider, now) if settings.user_context else None
    if report["login"] is not None and entry is not None:
        report["login"]["kept_by"] = entry.keeper
        report["login"]["check_after"] = utc(entry.confirm_after) if entry.confirm_after is not None else None
    month = time.strftime("%Y-%m", time.gmtime(now))
    used = count_requests(provider.store, settings, now)
    report["requests"] = {"month": month, "count": used, "budget": settings.token_budget}
    if settings.token_budget:
        report["requests"]["percent_of_budget"] = round(100 * used / settings.token_budget, 1)
    per_day = requests_per_day(provider.store.requests(month), settings, now)
    report["requests"]["per_day"] = [{"date": f"{month}-{day:02d}", "count": n} for day, n in enumerate(per_day, 1)]
    report["requests"]["projection"] = project(used, settings.token_budget, now)
    return report


def _cache_problem(provider: TokenProvider) -> str | None:
    """Why this cache cannot be shared, checked as ``doctor`` does (it writes and locks a
    scratch file), or None. No one notices an unshared cache until the month's quota is
    gone: every task of an array then fetches its own token."""
    settings = provider.settings
    if not settings.cache_enabled:
        return "QLAM_TOKEN_CACHE=off"
    if settings.token_store:
        return None  # Redis: its own errors are reported when it is used
    from ._doctor import _cache

    failed = [check.detail for check in _cache(provider.store.location) if check.verdict == "FAIL"]
    return failed[0] if failed else None


def requests_per_day(records: list[dict[str, Any]], settings: Settings, now: float) -> list[int]:
    """This month's token requests of these settings' client, per UTC day, up to today."""
    year, month, today = time.gmtime(now)[:3]
    counts = [0] * today
    for record in records:
        if record.get("client_id") != settings.client_id or record.get("token_url") != settings.token_url:
            continue
        at = record.get("time")
        if isinstance(at, (int, float)):
            when = time.gmtime(at)
            if (when.tm_year, when.tm_mon) == (year, month) and when.tm_mday <= today:
                counts[when.tm_mday - 1] += 1
    return counts


def project(used: int, budget: int | None, now: float) -> dict[str, Any]:
    """The month's total at this month's rate so far, and the day the budget runs out at it.

    The rate is taken over at least one day, so that three requests in the first hour of
    the month do not project two thousand."""
    year, month = time.gmtime(now)[:2]
    days = calendar.monthrange(year, month)[1]
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    end = start + days * 86400
    rate = used / max((now - start) / 86400, 1.0)
    total = used + rate * max(end - now, 0.0) / 86400
    projection: dict[str, Any] = {
        "end_of_month": f"{year:04d}-{month:02d}-{days:02d}",
        "count": round(total),
        "per_day": round(rate, 2),
    }
    if budget:
        projection["percent_of_budget"] = round(100 * total / budget, 1)
        runs_out = None
        if used >= budget:
            runs_out = utc(now)[:10]
        elif rate > 0 and total > budget:
            runs_out = utc(now + (budget - used) / rate * 86400)[:10]
        projection["budget_runs_out"] = runs_out
    return projection


def _login_report(provider: TokenProvider, now: float) -> dict[str, Any]:
    from .._login import LOGIN_WARNING

    login = provider.current_login()
    report: dict[str, Any] = {"store": provider.login_store.location, "logged_in": login is not None}
    if login is not None:
        left = login.expires_at - now
        report.update(
            subject=login.subject,
            email=login.email,
            logged_in_at=utc(login.logged_in_at),
            expires_at=utc(login.expires_at),
            days_left=round(max(0.0, left) / 86400, 1),
            expires_in=round(max(0.0, left)),
            warning="the login ends in less than 2 days: run qlam-hpc auth login" if left < LOGIN_WARNING else None,
        )
    return report


def render_status(report: dict[str, Any]) -> str:
    lines = [f"cache       {report['cache']}"]
    problem = report.get("cache_problem")
    if problem == "QLAM_TOKEN_CACHE=off":
        lines.append(
            "            NOT SHARED: QLAM_TOKEN_CACHE=off: every process fetches its own token, one request each"
        )
    elif problem:
        lines.append(
            f"            NOT SHARED: {problem}: every task of a job array would fetch its own "
            "token, one request each (inside a batch job, qlam-hpc stops with exit 8 instead)"
        )
    lines += [
        f"flow        {flow_label(report['flow'])}",
        f"client      {report['client_id']} at {report['token_url']}",
        f"audience    {report['audience']}",
    ]
    login = report.get("login")
    if login is not None and not login["logged_in"]:
        lines.append(f"login       none in {login['store']}: run qlam-hpc auth login")
    elif login is not None:
        who = " ".join(filter(None, (login["email"], f"({login['subject']})" if login["subject"] else None)))
        lines.append(f"user        {who or 'unknown'}")
        lines.append(
            f"login       since {login['logged_in_at']}, until {login['expires_at']} "
            f"({format_duration(login['expires_in'])} left)"
        )
        if login["warning"]:
            lines.append(f"            WARNING: {login['warning']}")
    if login is not None and login.get("kept_by"):
        lines.append(f"kept fresh  by {login['kept_by']}")
    if login is not None and login.get("check_after"):
        lines.append(
            f"check       a refresh was cut short: the login is checked once more after {login['check_after']}"
        )
    token = report["token"]
    if token is None:
        lines.append("token       none cached")
    else:
        left = format_duration(max(token["expires_in"], 0))
        when = (
            f"expires {token['expires_at']} (in {left})"
            if token["expires_in"] > 0
            else f"expired {token['expires_at']}"
        )
        lines.append(f"token       {token['state']}, {when}")
        lines.append(f"obtained    {token['obtained_at']} by {token['obtained_by'] or 'unknown'}")
        lines.append(f"subject     {token['subject'] or '-'}")
        lines.append(f"scopes      {' '.join(token['scopes']) or '-'}")
    failure = report["failure"]
    if failure:
        lines.append(f"failure     {failure['error']}")
        lines.append(
            f"            recorded {failure['at']} by {failure['by'] or 'unknown'}, repeated until {failure['until']}"
        )
    requests = report["requests"]
    noun = "request" if requests["count"] == 1 else "requests"
    noun = f"{'login/refresh' if report['flow'] == 'device' else 'token'} {noun}"
    usage = f"{requests['count']} {noun} in {requests['month']}"
    if requests["budget"]:
        usage += f" of a budget of {requests['budget']} ({requests['percent_of_budget']}%)"
        if requests["percent_of_budget"] > 80:
            usage += "  WARNING: above 80% of the monthly budget"
    lines.append(f"requests    {usage}")
    if requests["count"]:
        lines += ["            " + line for line in chart(requests)]
        lines.append(f"projection  {_projection_line(requests)}")
    return "\n".join(lines)


CHART_HEIGHT = 5


def chart(requests: dict[str, Any]) -> list[str]:
    """This month's requests per day as a column chart of plain characters.

    ``#`` is a day's requests, ``.`` the days left at this month's rate, and ``-`` the
    budget's even daily share (the budget over the days of the month): columns above
    that line are days that spent more than their share. One column per day of the month.
    """
    counts = [day["count"] for day in requests["per_day"]]
    projection = requests["projection"]
    days = int(projection["end_of_month"][-2:])
    budget = requests.get("budget")
    pace = budget / days if budget else None
    top = max(max(counts), pace or 0, projection["per_day"], 1)
    height = CHART_HEIGHT

    def rows_for(value: float) -> int:  # how many rows a value fills, at least one if non-zero
        return min(height, math.ceil(value * height / top - 1e-9)) if value > 0 else 0

    columns = [("#", rows_for(n)) for n in counts]
    columns += [(".", rows_for(projection["per_day"]))] * (days - len(counts))
    pace_row = rows_for(pace) if pace else 0
    label = f"{math.ceil(top - 1e-9)}"
    width = max(len(label), 1)
    legend = "# requests per day (UTC), . projected"
    if pace:
        legend += f", - the budget's share of a day ({pace:.3g})"
    lines = [legend]
    for row in range(height, 0, -1):
        cells = "".join(mark if filled >= row else ("-" if row == pace_row else " ") for mark, filled in columns)
        lines.append(f"{label if row == height else '':>{width}} |{cells}".rstrip())
    lines.append(f"{'0':>{width}} +{'-' * days}")
    axis = [" "] * days
    for day in (1, 5, 10, 15, 20, 25, 30):
        if day <= days:
            text = str(day)
            axis[day - 1 : day - 1 + len(text)] = list(text)
    lines.append(f"{'':>{width}}  {''.join(axis).rstrip()}")
    return lines


def _projection_line(requests: dict[str, Any]) -> str:
    projection = requests["projection"]
    text = (
        f"{projection['count']} requests by {projection['end_of_month']} "
        f"at this month's rate ({projection['per_day']:g} a day)"
    )
    if requests.get("budget"):
        text += f": {projection['percent_of_budget']}% of the budget"
        if projection.get("budget_runs_out"):
            if requests["count"] >= requests["budget"]:
                text += "  WARNING: the budget is used up"
            else:
                text += f"  WARNING: the budget runs out around {projection['budget_runs_out']}"
    return text
