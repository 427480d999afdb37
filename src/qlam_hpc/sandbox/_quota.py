"""Calendar-month arithmetic for the monthly token quota (UTC, as Auth0 counts it)."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["month_of", "next_month_start"]


def month_of(now: float) -> str:
    """``"2025-01"`` for any instant in January 2025 UTC: the key quota usage is counted under."""
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m")


def next_month_start(now: float) -> int:
    """Epoch seconds of the first instant of the next UTC month: when the quota resets."""
    moment = datetime.fromtimestamp(now, timezone.utc)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp())
