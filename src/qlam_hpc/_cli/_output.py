"""What the CLI prints: log format, token output. Light imports only (used by the fast path)."""

from __future__ import annotations

import sys
import time

from .._tokens import Token

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from logging import Formatter as _FormatterBase
    from logging import LogRecord
else:
    _FormatterBase = object  # logging is imported only when the CLI configures it


def configure_logging(verbosity: int = 0) -> None:
    """``qlam-hpc: warning: ...`` lines on stderr; -v adds info, -vv debug."""
    import logging

    from .. import _log

    # Configured now: the lazy set-up must not run again on the first message and put the
    # level back to warnings only (which hid every -v line).
    _log.before_first_message = None

    level = logging.WARNING - 10 * min(verbosity, 2)
    logger = logging.getLogger("qlam_hpc")
    if not any(getattr(h, "_qlam_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_CliFormatter())
        handler._qlam_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    if verbosity >= 2:
        # httpx logs requests at INFO/DEBUG: URLs and status lines, never headers or bodies.
        logging.getLogger("httpx").addHandler(logger.handlers[0])
        logging.getLogger("httpx").setLevel(logging.DEBUG)


class _CliFormatter(_FormatterBase):
    def format(self, record: LogRecord) -> str:  # logging.Formatter's duck type, to keep imports light
        line = f"qlam-hpc: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            import traceback

            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


def utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def print_token(token: Token, source: str, mode: str, now: float) -> None:
    """``mode`` is ``plain`` (the token), ``header`` (an Authorization line) or ``json``."""
    if mode == "header":
        line = f"Authorization: {token.authorization}"
    elif mode == "json":
        import json

        line = json.dumps(
            {
                "access_token": token.access_token,
                "token_type": token.token_type,
                "expires_at": utc(token.expires_at),
                "expires_in": int(token.remaining(now)),
                "source": source,
            }
        )
    else:
        line = token.access_token
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
