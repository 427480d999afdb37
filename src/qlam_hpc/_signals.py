"""Signals held back while a refresh token is being spent.

A rotating refresh token is spent by the server when it answers; the next one exists
only in that answer until it is published. Batch schedulers stop jobs with SIGTERM
(``scancel``, the time limit, preemption; SIGKILL follows after Slurm's ``KillWait``, 30 s
by default), people with Ctrl-C, and a closed terminal sends SIGHUP. Any of them landing
between the request and the publication loses the login for every job of the user (with
no rotation overlap at the identity provider, as Auth0 has by default). So, for that
stretch only, they are held and delivered right after it, to the handler that was there
before: the process then stops exactly as it would have, one refresh later.

Python runs signal handlers in the main thread only, and only the main thread may install
them: elsewhere (a library refreshing in a worker thread) nothing is held, and a SIGTERM
with its default action stops the process mid-refresh. The wait is bounded by the
refresh's own deadline (``QLAM_RETRY_DEADLINE``).
"""

from __future__ import annotations

import signal
import threading

from ._log import log

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from types import FrameType, TracebackType
    from typing import Any

HELD = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))


class held_signals:  # noqa: N801 - used as a context manager, named like one
    """``with held_signals("what"):`` SIGTERM, SIGINT and SIGHUP wait until the block ends."""

    def __init__(self, doing: str) -> None:
        self.doing = doing
        self.caught: list[int] = []
        self._previous: dict[int, Any] = {}

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.caught.append(signum)

    def __enter__(self) -> held_signals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in HELD:
            if signal.getsignal(signum) is signal.SIG_IGN:  # ignored (nohup, `cmd &`): nothing to hold back
                continue
            try:
                self._previous[signum] = signal.signal(signum, self._hold)
            except (ValueError, OSError):  # not ours to handle here (an embedding that forbids it)
                continue
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if self.caught:
            first = self.caught[0]
            log("warning", f"{signal.Signals(first).name} arrived while {self.doing}: finished that first")
            signal.raise_signal(first)  # to the handler restored above: stop as the signal meant
