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
    """The one way qlam-hpc shows a duration: its two largest units, rounded to the smaller one.

    ``42`` -> ``42s``, ``150`` -> ``2m30s``, ``5400`` -> ``1h30m``, ``86399`` -> ``1d`` (a token
    of 24 h read a second later is not ``23h59m59s`` here and ``1d`` there), ``90061`` -> ``1d1h``.
    The text parses back with ``parse_duration``.
    """
    total = int(abs(seconds) + 0.5)  # half up: round() would make 0.5 s "0s" and 1.5 s "2s"
    sign = "-" if seconds < 0 and total else ""
    for index, (_unit, size) in enumerate(_LARGEST_FIRST):
        if total >= size:
            if index + 1 < len(_LARGEST_FIRST):
                step = _LARGEST_FIRST[index + 1][1]
                total = (total + step // 2) // step * step
            break
    parts = []
    for unit, size in _LARGEST_FIRST:
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + ("".join(parts[:2]) or "0s")


_LARGEST_FIRST = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
