"""What ``qlam-hpc api`` takes from its command line, checked without click.

The click command (``_api.py``) and the light path (``_fast.py``) share these checks:
the click command turns a ``Refused`` into its usage error (exit 2), and the light path
hands anything refused to the click command, which then says why.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable


class Refused(ValueError):
    """A value the command does not take; ``hint`` names the parameter, as click shows it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


# RFC 9110 token: a method is letters, digits and these, nothing else.
_NOT_IN_A_TOKEN = '"(),/:;<=>?@[\\]{}'


def check_method(method: str) -> str:
    if not method or any(c in _NOT_IN_A_TOKEN or not c.isprintable() or c.isspace() for c in method):
        raise Refused(f"{method!r} is not an HTTP method", "METHOD")
    return method


def check_path(path: str) -> str:
    if any(c in path for c in "\r\n\t "):
        raise Refused("a path holds no spaces or line breaks (encode them: %20)", "PATH")
    return path


def relative_path(path: str, base_url: str) -> str:
    """``path`` relative to the API's base URL; a full URL must start with it, so the token
    goes nowhere else."""
    if "://" not in path:
        return path if path.startswith("/") else "/" + path
    if path == base_url or path.startswith((base_url + "/", base_url + "?")):
        return path[len(base_url) :] or "/"
    raise Refused(f"{path} is not on the QLAM API ({base_url}); the token is sent to that API only", "PATH")


def parse_headers(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, colon, value = item.partition(":")
        name = name.strip()
        if not colon or not name or any(c.isspace() for c in name):
            raise Refused(f"{item!r} is not 'Name: value'", "-H")
        if name.lower() == "authorization":
            raise Refused("qlam-hpc adds the Authorization header itself", "-H")
        if not (name + value).isascii() or any(c in value for c in "\r\n\0"):
            raise Refused(f"{name}: headers are ASCII, on one line", "-H")
        headers[name] = value.strip()
    return headers


def read_body(data: str | None) -> bytes | None:
    """``--data``: @FILE reads a file, - reads stdin, anything else is sent as is."""
    if data is None:
        return None
    if data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise Refused(f"cannot read {data[1:]}: {exc.strerror or exc}", "--data") from None
    return data.encode()


def with_content_type(headers: dict[str, str], content: bytes | None) -> dict[str, str]:
    """A body is JSON unless a Content-Type says otherwise."""
    if content is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    return headers


def write_body(body: bytes) -> None:
    """The answer's body on stdout as it came; a newline after it on a terminal only."""
    out = sys.stdout.buffer
    out.write(body)
    if body and not body.endswith(b"\n") and sys.stdout.isatty():
        out.write(b"\n")
    out.flush()


def write_status(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> None:
    """``-i``: the status line and the headers, on stderr."""
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
