"""``qlam-hpc auth status``: everything about the cached token except the token itself."""

from __future__ import annotations

import time

from .._durations import format_duration
from .._provider import TokenProvider, count_requests
from .._tokens import unverified_claims
from ._output import utc


def auth_status(provider: TokenProvider, now: float) -> dict:
    settings = provider.settings
    entry = provider.store.load(provider.identity)
    token = entry.token if entry else None
    report: dict = {
        "cache": provider.store.location,
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
    month = time.strftime("%Y-%m", time.gmtime(now))
    used = count_requests(provider.store, settings, now)
    report["requests"] = {"month": month, "count": used, "budget": settings.token_budget}
    if settings.token_budget:
        report["requests"]["percent_of_budget"] = round(100 * used / settings.token_budget, 1)
    return report


def _login_report(provider: TokenProvider, now: float) -> dict:
    from .._login import LOGIN_WARNING

    login = provider.current_login()
    report: dict = {"store": provider.login_store.location, "logged_in": login is not None}
    if login is not None:
        left = login.expires_at - now
        report.update(
            subject=login.subject,
            email=login.email,
            logged_in_at=utc(login.logged_in_at),
            expires_at=utc(login.expires_at),
            days_left=round(max(0.0, left) / 86400, 1),
            warning="the login ends in less than 2 days: run qlam-hpc auth login" if left < LOGIN_WARNING else None,
        )
    return report


def render_status(report: dict) -> str:
    lines = [
        f"cache       {report['cache']}",
        f"flow        {'user context (device login)' if report['flow'] == 'device' else 'M2M (client credentials)'}",
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
            f"login       since {login['logged_in_at']}, until {login['expires_at']} ({login['days_left']:g} days left)"
        )
        if login["warning"]:
            lines.append(f"            WARNING: {login['warning']}")
    token = report["token"]
    if token is None:
        lines.append("token       none cached")
    else:
        left = format_duration(max(token["expires_in"], 0))
        when = f"expires {token['expires_at']} (in {left})" if token["expires_in"] > 0 else f"expired {token['expires_at']}"
        lines.append(f"token       {token['state']}, {when}")
        lines.append(f"obtained    {token['obtained_at']} by {token['obtained_by'] or 'unknown'}")
        lines.append(f"subject     {token['subject'] or '-'}")
        lines.append(f"scopes      {' '.join(token['scopes']) or '-'}")
    failure = report["failure"]
    if failure:
        lines.append(f"failure     {failure['error']}")
        lines.append(f"            recorded {failure['at']} by {failure['by'] or 'unknown'}, repeated until {failure['until']}")
    requests = report["requests"]
    noun = "request" if requests["count"] == 1 else "requests"
    noun = f"{'login/refresh' if report['flow'] == 'device' else 'token'} {noun}"
    usage = f"{requests['count']} {noun} in {requests['month']}"
    if requests["budget"]:
        usage += f" of a budget of {requests['budget']} ({requests['percent_of_budget']}%)"
        if requests["percent_of_budget"] > 80:
            usage += "  WARNING: above 80% of the monthly budget"
    lines.append(f"requests    {usage}")
    return "\n".join(lines)
