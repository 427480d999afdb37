"""Writing a download so that its path is never half a file."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType
    from typing import BinaryIO


class AtomicFile:
    """A temporary file beside ``target``, renamed onto it when the ``with`` block ends
    without an error, and removed otherwise.

    Beside, not in /tmp: a rename is atomic only within one filesystem, and a job's
    scratch space is rarely the node's /tmp. The data is flushed to disk before the
    rename, so a crash right after leaves the old file or the whole new one.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.bytes = 0
        self._file: BinaryIO | None = None
        self._name: str | None = None

    def __enter__(self) -> AtomicFile:
        # O_EXCL with a random name, like mkstemp, but mode 0666 so the umask decides the
        # final file's mode as for any file the user creates (mkstemp would force 0600).
        name = str(self.target.parent / f".{self.target.name}.{secrets.token_hex(6)}.part")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._name = name
        self._file = os.fdopen(fd, "wb")
        return self

    def restart(self) -> None:
        """Drop what was written: a broken-off download starts again from the first byte."""
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self.bytes += len(data)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._file is not None and self._name is not None
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.replace(self._name, self.target)
                self._name = None
        finally:
            if self._name is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._name)
