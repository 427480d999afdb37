"""Fault injection: the settings tests may change at run time, validated in one place.

The Python API (``Sandbox.set_faults``) and the HTTP API (``POST /_sandbox/faults``)
both go through ``parse_fault_changes`` so they accept and refuse the same things.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Faults", "ScriptedResponse", "parse_fault_changes"]


@dataclass(frozen=True)
class ScriptedResponse:
    """A canned answer ``/oauth/token`` serves instead of processing the request."""

    status: int
    body: str = ""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, item: Any, number: int) -> ScriptedResponse:
        if isinstance(item, ScriptedResponse):
            return item
        if not isinstance(item, Mapping):
            raise ValueError(f"script item #{number} must be an object")
        unknown = set(item) - {"status", "body", "content_type", "headers"}
        if unknown:
            raise ValueError(f"script item #{number} has unknown keys {sorted(unknown)}")
        status = item.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise ValueError(f"script item #{number} needs a status between 200 and 599")
        body, content_type = item.get("body", ""), item.get("content_type", "application/json")
        if not isinstance(body, str) or not isinstance(content_type, str) or not content_type:
            raise ValueError(f"script item #{number}: body and content_type must be strings")
        headers = item.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError(f"script item #{number}: headers must map strings to strings")
        return cls(status=status, body=body, content_type=content_type, headers=dict(headers))


@dataclass(frozen=True)
class Faults:
    """The current fault settings; ``script`` is the queue of canned answers still to serve."""

    latency: float
    error_rate: float
    token_lifetime: int
    script: tuple[ScriptedResponse, ...] = ()

    def public(self) -> dict[str, Any]:
        """The JSON shape ``GET /_sandbox/faults`` answers with."""
        return {
            "latency": self.latency,
            "error_rate": self.error_rate,
            "token_lifetime": self.token_lifetime,
            "script_pending": len(self.script),
        }


def parse_fault_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validated changes for ``Faults``; ``None`` values mean "leave as is". Raises ``ValueError``."""
    unknown = set(changes) - {"latency", "error_rate", "script", "token_lifetime"}
    if unknown:
        raise ValueError(f"unknown fault settings {sorted(unknown)}")
    parsed: dict[str, Any] = {}
    latency = changes.get("latency")
    if latency is not None:
        if not _is_number(latency) or not math.isfinite(latency) or latency < 0:
            raise ValueError("latency must be a finite number of seconds >= 0")
        parsed["latency"] = float(latency)
    error_rate = changes.get("error_rate")
    if error_rate is not None:
        if not _is_number(error_rate) or not 0.0 <= error_rate <= 1.0:
            raise ValueError("error_rate must be a number between 0 and 1")
        parsed["error_rate"] = float(error_rate)
    lifetime = changes.get("token_lifetime")
    if lifetime is not None:
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0:
            raise ValueError("token_lifetime must be a positive integer number of seconds")
        parsed["token_lifetime"] = lifetime
    script = changes.get("script")
    if script is not None:
        if isinstance(script, (str, bytes, Mapping)) or not hasattr(script, "__iter__"):
            raise ValueError("script must be a list of responses")
        parsed["script"] = tuple(ScriptedResponse.parse(item, n) for n, item in enumerate(script, start=1))
    return parsed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
