"""The ``qlam-hpc`` command. ``main`` is the console script's entry point.

``qlam-hpc token`` runs in batch scripts thousands of times, so a warm cache hit
is served before click, httpx or rich are imported (``_fast.py``); anything the
fast path does not fully understand goes to the full CLI (``_app.py``), which
also owns every error message and exit code.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    from .. import _log
    from ._output import configure_logging

    _log.before_first_message = configure_logging
    if args[:1] == ["token"]:
        from ._fast import warm_token

        code = warm_token(args[1:])
        if code is not None:
            return code
    from ._app import run

    return run(args)
