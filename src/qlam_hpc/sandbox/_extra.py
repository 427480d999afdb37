"""The one message for a missing ``sandbox`` extra, shared by ``qlam-hpc sandbox`` and ``qlam-hpc demo``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from ._server import Sandbox

__all__ = ["sandbox_class"]


def sandbox_class() -> type[Sandbox]:
    """``Sandbox``, or a ``ConfigurationError`` (exit 3) naming the extra to install when
    FastAPI, uvicorn or another of its packages cannot be imported.

    A missing package is a setup to fix, not a bug (exit 1); an import error inside
    qlam-hpc itself still is one, so it is raised as it is.
    """
    try:
        from ._server import Sandbox
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if not missing or missing == "qlam_hpc":
            raise
        raise ConfigurationError(
            f"the sandbox needs the 'sandbox' extra ({missing} is missing): pip install 'qlam-hpc[sandbox]'"
        ) from None
    return Sandbox
