"""All mutable sandbox state in one object: counters, faults and quota usage.

(Tasks themselves live in SQLite, see ``_tasks_store``; only their counters and
knobs are here.  User logins, device codes and refresh tokens are in ``logins``,
a ``_users.UserLogins`` with its own lock; ``stats()`` shows its counters too.)

The server's event loop thread and the test's thread (``Sandbox.stats()``,
``set_faults()``) both touch it, so every access takes one lock; each method
holds it only for a few dictionary operations and never across an ``await``.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, OrderedDict
from dataclasses import replace
from typing import Any

from ._config import SandboxConfig
from ._faults import Faults, ScriptedResponse, parse_fault_changes
from ._quota import month_of
from ._tasks_faults import TASK_FAULT_KEYS, TaskFaults, parse_task_fault_changes
from ._users import UserLogins

__all__ = ["SandboxState"]

# How many issued tokens' exact issue times to remember (see ``record_token_issued``).
_ISSUE_TIMES_KEPT = 100_000


class SandboxState:
    """Counters, current faults and per-client quota usage of one sandbox."""

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        # Kept across reset(): facts about tokens already out there, not settings.
        self._issued_at: OrderedDict[str, float] = OrderedDict()
        # Also kept across reset(): device codes and logins (refresh-token families).
        self.logins = UserLogins(config)
        self.reset()

    def reset(self) -> None:
        """Zero the counters and quota usage; faults back to the configuration's values.

        Device codes and logins (refresh-token families) stay, as access tokens do:
        a refresh token handed out before a reset can still be exchanged."""
        self.logins.reset_counters()
        with self._lock:
            self._token_requests = 0
            self._tokens_issued = 0
            self._scripted = 0
            self._api_requests = 0
            self._token_errors: Counter[str] = Counter()
            self._token_exchanges = 0
            self._exchange_refusals: Counter[str] = Counter()
            # client_id -> (month, tokens issued that month); one entry per client
            # because only the current month matters.
            self._quota_used: dict[str, tuple[str, int]] = {}
            self._faults = Faults(
                latency=float(self._config.latency),
                error_rate=float(self._config.error_rate),
                token_lifetime=self._config.token_lifetime,
                refresh_token_overlap=self._config.refresh_token_overlap,
                device_poll_interval=self._config.device_poll_interval,
                auto_approve=self._config.auto_approve,
            )
            self._random = random.Random(self._config.seed)
            self._tasks_created = 0
            self._api_scripted = 0
            self._task_faults = TaskFaults(task_duration=self._config.task_duration)

    def stats(self) -> dict[str, Any]:
        logins = self.logins.counters()
        with self._lock:
            return {
                "token_requests": self._token_requests,
                "tokens_issued": self._tokens_issued,
                "token_errors": dict(self._token_errors),
                "scripted_responses": self._scripted,
                "api_requests": self._api_requests,
                "api_scripted_responses": self._api_scripted,
                "tasks_created": self._tasks_created,
                "token_exchanges": self._token_exchanges,
                "exchange_refusals": dict(self._exchange_refusals),
                **logins,
            }

    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def task_faults(self) -> TaskFaults:
        with self._lock:
            return self._task_faults

    def public_faults(self) -> dict[str, Any]:
        """Every current setting, as ``GET /_sandbox/faults`` shows them."""
        with self._lock:
            return {**self._faults.public(), **self._task_faults.public()}

    def update_faults(self, changes: dict[str, Any]) -> Faults:
        """Apply validated changes (``ValueError`` if invalid, and then nothing changes);
        a new script replaces the old one."""
        task_changes = parse_task_fault_changes({k: v for k, v in changes.items() if k in TASK_FAULT_KEYS})
        parsed = parse_fault_changes({k: v for k, v in changes.items() if k not in TASK_FAULT_KEYS})
        with self._lock:
            self._faults = replace(self._faults, **parsed)
            self._task_faults = replace(self._task_faults, **task_changes)
            return self._faults

    def count_token_request(self) -> None:
        with self._lock:
            self._token_requests += 1

    def count_token_error(self, error: str) -> None:
        with self._lock:
            self._token_errors[error] += 1

    def count_exchange(self) -> None:
        """One subject token exchanged for an access token (RFC 8693)."""
        with self._lock:
            self._token_exchanges += 1

    def count_exchange_refusal(self, reason: str) -> None:
        with self._lock:
            self._exchange_refusals[reason] += 1

    def count_api_request(self) -> None:
        with self._lock:
            self._api_requests += 1

    def count_task_created(self) -> None:
        with self._lock:
            self._tasks_created += 1

    def next_api_scripted(self) -> ScriptedResponse | None:
        """Pop the tasks API's next canned answer, if its script has one left."""
        with self._lock:
            script = self._task_faults.api_script
            if not script:
                return None
            self._task_faults = replace(self._task_faults, api_script=script[1:])
            self._api_scripted += 1
            return script[0]

    def record_token_issued(self, jti: str, when: float) -> None:
        """Remember when a token was issued, more exactly than its whole-second ``iat``."""
        with self._lock:
            self._issued_at[jti] = when
            while len(self._issued_at) > _ISSUE_TIMES_KEPT:
                self._issued_at.popitem(last=False)

    def is_revoked(self, claims: dict[str, Any]) -> bool:
        """Whether ``revoke_tokens_before`` refuses this token.

        A token counts as issued before the cut-off if the sandbox recorded it being
        issued before then; for a token it has no record of (say, from before a
        restart) its ``iat`` decides.  Going by ``iat`` alone would also refuse a
        token issued just after the cut-off within the same second.
        """
        with self._lock:
            cutoff = self._task_faults.revoke_tokens_before
            if cutoff is None:
                return False
            issued = self._issued_at.get(str(claims.get("jti")))
        if issued is None:
            issued = claims.get("iat", 0)
        return isinstance(issued, (int, float)) and issued < cutoff

    def next_scripted(self) -> ScriptedResponse | None:
        """Pop the next canned answer, if the script has one left."""
        with self._lock:
            if not self._faults.script:
                return None
            item, rest = self._faults.script[0], self._faults.script[1:]
            self._faults = replace(self._faults, script=rest)
            self._scripted += 1
            return item

    def draw_error(self) -> bool:
        """Whether this request gets an injected 500; rates 0 and 1 draw nothing, keeping seeded runs stable."""
        with self._lock:
            rate = self._faults.error_rate
            if rate <= 0.0:
                return False
            if rate >= 1.0:
                return True
            return self._random.random() < rate

    def count_token_issued(self) -> None:
        """One more access token handed out by a user grant (M2M tokens are counted by ``take_quota``)."""
        with self._lock:
            self._tokens_issued += 1

    def take_quota(self, client_id: str, limit: int | None, now: float) -> int | None:
        """Count one token against the client's month: the tokens it has had this month,
        this one included, or ``None`` (and nothing counted) when ``limit`` is spent.

        Check and count happen under one lock, so concurrent requests cannot overdraw.
        """
        month = month_of(now)
        with self._lock:
            used_month, used = self._quota_used.get(client_id, (month, 0))
            if used_month != month:
                used = 0
            if limit is not None and used >= limit:
                return None
            self._quota_used[client_id] = (month, used + 1)
            self._tokens_issued += 1
            return used + 1
