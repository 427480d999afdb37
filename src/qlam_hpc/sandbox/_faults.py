"""Fault injection: the settings tests may change at run time, validated in one place.

The Python API (``Sandbox.set_faults``) and the HTTP API (``POST /_sandbox/faults``)
both go through ``parse_fault_changes`` so they accept and refuse the same things.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAULT_KEYS", "Faults", "ScriptedResponse", "parse_fault_changes"]


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
    """The current fault settings; ``script`` is the queue of canned answers still to serve.

    The user-context settings are here too, because tests change them at run time:
    ``refresh_token_overlap`` (Auth0's rotation overlap period), ``device_poll_interval``
    (the interval new device codes get), ``auto_approve``, and ``response_delay``: seconds
    ``/oauth/token`` waits after a grant was committed (a refresh token rotated, a device
    code consumed) before it answers, so a test can kill a client in between.
    """

    latency: float
    error_rate: float
    token_lifetime: int
    script: tuple[ScriptedResponse, ...] = ()
    refresh_token_overlap: float = 0.0
    device_poll_interval: int = 5
    auto_approve: bool = False
    response_delay: float = 0.0

    def public(self) -> dict[str, Any]:
        """The JSON shape ``GET /_sandbox/faults`` answers with."""
        return {
            "latency": self.latency,
            "error_rate": self.error_rate,
            "token_lifetime": self.token_lifetime,
            "script_pending": len(self.script),
            "refresh_token_overlap": self.refresh_token_overlap,
            "device_poll_interval": self.device_poll_interval,
            "auto_approve": self.auto_approve,
            "response_delay": self.response_delay,
        }


FAULT_KEYS = frozenset(
    {
        "latency",
        "error_rate",
        "script",
        "token_lifetime",
        "refresh_token_overlap",
        "device_poll_interval",
        "auto_approve",
        "response_delay",
    }
)


def parse_fault_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validated changes for ``Faults``; ``None`` values mean "leave as is". Raises ``ValueError``."""
    unknown = set(changes) - FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown fault settings {sorted(unknown)}")
    parsed: dict[str, Any] = {}
    for name in ("latency", "refresh_token_overlap", "response_delay"):
        seconds = changes.get(name)
        if seconds is not None:
            if not _is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0")
            parsed[name] = float(seconds)
    interval = changes.get("device_poll_interval")
    if interval is not None:
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 0:
            raise ValueError("device_poll_interval must be a whole number of seconds >= 0")
        parsed["device_poll_interval"] = interval
    auto_approve = changes.get("auto_approve")
    if auto_approve is not None:
        if not isinstance(auto_approve, bool):
            raise ValueError("auto_approve must be true or false")
        parsed["auto_approve"] = auto_approve
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
