"""Logging without paying for it: ``logging`` is imported on the first message only,
so the warm token path, which logs nothing, never loads it."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

LOGGER_NAME = "qlam_hpc"

#: Called once, before the first message, when set: the CLI installs its log format
#: this way instead of importing ``logging`` on every run.
before_first_message: Callable[[], None] | None = None


def log(level: str, message: str) -> None:
    """Log ``message`` at ``level`` ("debug", "info", "warning", "error") on the qlam_hpc logger."""
    global before_first_message
    if level == "debug" and "logging" not in sys.modules:
        return  # nobody configured logging, so nobody can want our debug lines
    if before_first_message is not None:
        setup, before_first_message = before_first_message, None
        setup()
    import logging

    getattr(logging.getLogger(LOGGER_NAME), level)(message)
