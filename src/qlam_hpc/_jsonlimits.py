"""JSON from outside, read within bounds: a size and a nesting depth, checked before parsing.

``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` 100,000 deep ends in a
``RecursionError``, which no caller expects (it is not a ``ValueError``) and which turns a
bad answer, a planted token or a broken config file into a traceback. ``parse_json``
measures the depth first, with a linear scan that never recurses, and refuses what is too
large or too deep with a ``JsonLimitError`` (a ``ValueError``, so code that already catches
malformed JSON catches it too).

``json`` and ``re`` are imported only when a document has enough brackets to need them:
the warm token path, which reads a small JWT payload at most, pays for neither the scan
nor ``re``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["JsonLimitError", "parse_json", "format_size", "DEFAULT_MAX_DEPTH"]

#: Deep enough for every document qlam-hpc reads from an identity provider or a config file
#: (none nests past 6), far from ``json``'s recursion limit.
DEFAULT_MAX_DEPTH = 32

# Only brackets remain once strings are cut out: every other byte is deleted.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonLimitError(ValueError):
    """A JSON document over its size or depth limit; the message says which, never the content."""


def parse_json(data: str | bytes, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """``json.loads(data)`` for a document of at most ``max_bytes`` bytes (UTF-8) nested at
    most ``max_depth`` levels (``[]`` is one level, ``[[]]`` two).

    ``JsonLimitError`` when it is larger or deeper; ``ValueError`` (``JSONDecodeError``,
    ``UnicodeDecodeError``) when it is not JSON. Nothing else: a document this accepts
    cannot exhaust the interpreter's stack.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JsonLimitError(f"JSON larger than {format_size(max_bytes)}")
    # No more opening brackets than levels allowed: it cannot nest too deep (a JWT payload).
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        depth = _depth(raw)
        if depth > max_depth:
            raise JsonLimitError(f"JSON nested deeper than {max_depth} levels")
    import json

    try:
        return json.loads(raw)
    except RecursionError:  # unreachable after the scan; kept so no caller ever sees one
        raise JsonLimitError(f"JSON nested deeper than {max_depth} levels") from None


def _depth(raw: bytes) -> int:
    """The deepest nesting of brackets outside strings; linear, and in C but for one pass
    over the brackets themselves."""
    import re
    from itertools import accumulate

    # A string: its quotes and anything escaped inside (the unrolled form never backtracks).
    outside = re.sub(rb'"[^"\\]*(?:\\.[^"\\]*)*"', b"", raw, flags=re.DOTALL)
    brackets = outside.translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def format_size(limit: int) -> str:
    """``64 MiB``, ``16 KiB``, ``1000 bytes``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= scale and limit % scale == 0:
            return f"{limit // scale} {unit}"
    return f"{limit} bytes"
