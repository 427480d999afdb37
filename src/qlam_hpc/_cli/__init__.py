"""The ``qlam-hpc`` command. ``main`` is the console script's entry point.

``qlam-hpc token``, ``api`` and ``tasks get|list|submit --json`` run in batch scripts
thousands of times, so with a warm cache they are served before click, httpx, pydantic
or rich are imported (``_fast.py``); anything the light paths do not fully understand
goes to the full CLI (``_app.py``), which owns the messages and exit codes.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    from .. import _log
    from ._output import configure_logging

    _log.before_first_message = configure_logging
    if args[:1] in (["token"], ["api"], ["tasks"]):
        from . import _fast

        light = {"token": _fast.warm_token, "api": _fast.warm_api, "tasks": _fast.warm_tasks}[args[0]]
        code = light(args[1:])
        if code is not None:
            return code
    from ._app import run

    return run(args)
