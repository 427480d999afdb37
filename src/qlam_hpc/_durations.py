"""Durations as people write them in batch scripts: ``90``, ``90s``, ``15m``, ``2h``, ``1d12h``."""

from __future__ import annotations

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; a bare number is seconds. Raises ``ValueError`` with a readable message."""
    raw = text.strip().lower()
    if not raw:
        raise ValueError("empty duration")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = _parse_units(raw, text)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"invalid duration {text!r}: must be a finite number of seconds >= 0")
    return seconds


def _parse_units(raw: str, original: str) -> float:
    total, number = 0.0, ""
    for char in raw:
        if char.isdigit() or char == ".":
            number += char
        elif char in _UNITS and number.count(".") <= 1 and number.strip("."):
            total += float(number) * _UNITS[char]
            number = ""
        else:
            raise ValueError(f"invalid duration {original!r}: use e.g. 90, 90s, 15m, 2h or 1d12h")
    if number:
        raise ValueError(f"invalid duration {original!r}: a number needs a unit after another unit")
    return total


def format_duration(seconds: float) -> str:
    """``5400`` -> ``1h30m``; sub-minute values keep seconds: ``42s``."""
    remaining = round(seconds)
    if remaining < 0:
        return "-" + format_duration(-seconds)
    if remaining < 60:
        return f"{remaining}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
