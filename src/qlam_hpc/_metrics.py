"""Site metrics for Prometheus: node_exporter's textfile collector reads ``*.prom`` files from a
directory; ``qlam-hpc metrics --textfile DIR`` writes one, from cron or from keep-fresh.

What it tells an administrator: this month's token requests per identity (the ledger of the
shared store, the same count ``auth status`` shows), the month's budget and where this month's
rate ends, how long the cached token and the login have left, failures by kind, and, from the
audit log, each Unix user's share.

The file is written whole or not at all: a temporary file in the same directory, renamed over
the old one, so the collector never reads half a file. Every sample is a gauge of "this month"
(the ledger starts again each month), so none is named ``_total``.
"""

from __future__ import annotations

import os
import time
from collections import Counter

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable
    from typing import Any

    from ._provider import TokenProvider

DEFAULT_NAME = "qlam_hpc.prom"

Labels = tuple[tuple[str, str], ...]


class Family:
    """One metric: its name, help text, type and samples (labels, value)."""

    def __init__(self, name: str, help_text: str, kind: str = "gauge") -> None:
        self.name, self.help, self.kind = name, help_text, kind
        self.samples: list[tuple[Labels, float]] = []

    def add(self, value: float, **labels: str | None) -> None:
        self.samples.append((tuple((k, v) for k, v in labels.items() if v is not None), value))


def collect(provider: TokenProvider, now: float, audit_events: Iterable[dict[str, Any]] = ()) -> list[Family]:
    """The metrics of this provider's identity, and of the audit events given (this month's)."""
    from ._cli._status import project

    settings = provider.settings
    month = time.strftime("%Y-%m", time.gmtime(now))
    identity = _identity(provider)
    client = settings.client_id or ""
    records = [
        r
        for r in provider.store.requests(month)
        if r.get("client_id") == settings.client_id and r.get("token_url") == settings.token_url
    ]
    requests = Family(
        "qlam_hpc_month_token_requests",
        "Token requests to the identity provider this UTC month, from the shared store's ledger.",
    )
    by_kind: Counter[tuple[str, str]] = Counter()
    failures: Counter[str] = Counter()
    for record in records:
        outcome = str(record.get("outcome") or "unknown")
        by_kind[(str(record.get("grant") or "client_credentials"), outcome)] += 1
        if outcome != "ok":
            failures[outcome] += 1
    for (grant, outcome), count in sorted(by_kind.items()):
        requests.add(count, client_id=client, identity=identity, grant=grant, outcome=outcome)
    if not by_kind:
        requests.add(0, client_id=client, identity=identity, grant="client_credentials", outcome="ok")
    failed = Family("qlam_hpc_month_token_failures", "Token requests this UTC month that failed, by kind of failure.")
    for kind, count in sorted(failures.items()):
        failed.add(count, client_id=client, identity=identity, kind=kind)
    families = [requests, failed]

    projection = project(len(records), settings.token_budget, now)
    projected = Family(
        "qlam_hpc_month_token_requests_projected",
        "Token requests by the end of this UTC month at this month's rate so far.",
    )
    projected.add(projection["count"], client_id=client, identity=identity)
    families.append(projected)
    if settings.token_budget:
        budget = Family("qlam_hpc_month_token_budget", "The monthly token request budget (QLAM_TOKEN_BUDGET).")
        budget.add(settings.token_budget, client_id=client, identity=identity)
        ratio = Family(
            "qlam_hpc_month_token_budget_projected_ratio",
            "Projected requests at the end of the month over the budget (above 1: it runs out).",
        )
        ratio.add(round(projection["count"] / settings.token_budget, 4), client_id=client, identity=identity)
        families += [budget, ratio]

    entry = provider.store.load(provider.identity)
    if entry is not None and entry.token is not None:
        token = Family(
            "qlam_hpc_token_expiry_seconds", "Seconds until the cached access token expires (negative: ago)."
        )
        token.add(round(entry.token.expires_at - now, 3), client_id=client, identity=identity)
        families.append(token)
    if settings.user_context:
        login = provider.current_login()
        if login is not None:
            left = Family("qlam_hpc_login_expiry_seconds", "Seconds until the user's login (refresh token) ends.")
            left.add(round(login.expires_at - now, 3), client_id=client, identity=identity)
            families.append(left)

    families += audit_families(audit_events, month)
    written = Family("qlam_hpc_metrics_timestamp_seconds", "When qlam-hpc wrote these metrics (Unix time).")
    written.add(round(now, 3))
    families.append(written)
    return families


def _identity(provider: TokenProvider) -> str:
    settings = provider.settings
    if settings.user_context:
        try:
            who = provider.principal() or {}
        except Exception:  # the login store is down: the client still names the series
            who = {}
        found = who.get("email") or who.get("subject")
        if found:
            return str(found)
    return f"client:{settings.client_id}"


def audit_families(events: Iterable[dict[str, Any]], month: str) -> list[Family]:
    """Each Unix user's share of this month's token requests, task actions and failures."""
    tokens: Counter[tuple[str, str]] = Counter()
    actions: Counter[tuple[str, str, str]] = Counter()
    refusals: Counter[tuple[str, str]] = Counter()
    for record in events:
        if not str(record.get("time", "")).startswith(month):
            continue
        user = str(record.get("user", "unknown"))
        action = str(record.get("action", "unknown"))
        outcome = str(record.get("outcome", "unknown"))
        if action.startswith("token.") or action == "login":
            tokens[(user, str(record.get("principal") or ""))] += 1
        elif action == "refusal":
            refusals[(user, outcome)] += 1
        else:
            actions[(user, action, "ok" if outcome == "ok" else "failed")] += 1
    by_user = Family(
        "qlam_hpc_audit_month_token_requests",
        "Token requests (fetch, refresh, exchange, login) this UTC month per Unix user, from the audit log.",
    )
    for (user, principal), count in sorted(tokens.items()):
        by_user.add(count, user=user, principal=principal or None)
    done = Family("qlam_hpc_audit_month_api_calls", "State-changing QLAM API calls this UTC month per Unix user.")
    for (user, action, outcome), count in sorted(actions.items()):
        done.add(count, user=user, action=action, outcome=outcome)
    refused = Family("qlam_hpc_audit_month_refusals", "Commands that ended in an error this UTC month, by kind.")
    for (user, kind), count in sorted(refusals.items()):
        refused.add(count, user=user, kind=kind)
    return [family for family in (by_user, done, refused) if family.samples]


def render(families: Iterable[Family]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for family in families:
        if not family.samples:
            continue  # no failures this month: no series, rather than a family without samples
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels)
            number = repr(value) if isinstance(value, float) and not value.is_integer() else str(int(value))
            lines.append(f"{family.name}{{{text}}} {number}" if text else f"{family.name} {number}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_textfile(directory: str, name: str, text: str) -> str:
    """Write ``DIR/NAME`` atomically: the collector sees the old file or the new, never a part."""
    import tempfile

    if not name.endswith(".prom") or "/" in name:
        raise ValueError(f"{name!r}: the textfile collector reads only files named *.prom in its directory")
    target = os.path.join(directory, name)
    # The temporary name does not end in .prom, so the collector never reads it.
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # node_exporter runs as another user; metrics hold no secret
        os.replace(temporary, target)
    except BaseException:
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target


TEXTFILE_ENV = "QLAM_METRICS_TEXTFILE"


def after_refresh(provider: TokenProvider) -> None:
    """``qlam-hpc auth keep-fresh`` with ``QLAM_METRICS_TEXTFILE=DIR``: the metrics are written
    after each refresh (name ``qlam_hpc_<user>.prom``, so that every user's keeper can share the
    collector's directory). A failure is a warning: the keeper's job is the token."""
    directory = os.environ.get(TEXTFILE_ENV, "").strip()
    if not directory:
        return
    from ._log import log

    try:
        from . import _audit
        from ._cache import local_user

        files = [d.target for d in _audit.destinations()[0] if d.kind == "file" and "{" not in d.target]
        events, _bad = _audit.read_events([f for f in files if os.path.exists(f)])
        write_textfile(directory, f"qlam_hpc_{local_user()}.prom", render(collect(provider, time.time(), events)))
    except Exception as error:  # the keeper goes on keeping the token fresh
        log("warning", f"{TEXTFILE_ENV}: could not write the metrics into {directory} ({error})")
