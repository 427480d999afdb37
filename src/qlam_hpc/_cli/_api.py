"""``qlam-hpc api``: any API call with the shared token, in place of ``curl -H "Authorization: ..."``.

The token never appears on a command line (where ``ps`` and shell history would
show it): the command adds it, and refreshes it once on a 401 like the library.
"""

from __future__ import annotations

import sys

import click

from ._tasks import api_options

API_EPILOG = """\b
Exit codes: 0 for a 2xx or 3xx answer, 13 for 4xx, 14 when the API is
unreachable or answers 5xx after the retries; 2 for a bad option.
"""


@click.command("api", epilog=API_EPILOG)
@click.argument("method", metavar="METHOD")
@click.argument("path", metavar="PATH")
@click.option(
    "-d",
    "--data",
    metavar="@FILE|-|TEXT",
    help="Request body: @FILE reads a file, - reads stdin, anything else is sent as is. "
    "Content-Type defaults to application/json.",
)
@click.option("-H", "--header", "headers", multiple=True, metavar="'NAME: VALUE'", help="Extra header; repeatable.")
@click.option("-i", "--include", is_flag=True, help="Print the status line and headers on stderr too.")
@api_options
@click.pass_obj
def api_command(
    config,
    method: str,
    path: str,
    data: str | None,
    headers: tuple[str, ...],
    include: bool,
    api_url: str | None,
    qpu_mode: str | None,
) -> None:
    """Call the QLAM API at PATH with the shared token; print the answer's body.

    PATH is relative to the API's base URL (a full URL must start with it, so
    the token goes nowhere else); {qpu_mode} in it becomes the QPU mode. GET,
    PUT and DELETE are retried on connection failures and 429/5xx; POST is not.

    \b
    qlam-hpc api GET /v2/squin-256q/tasks
    qlam-hpc api GET '/v2/{qpu_mode}/tasks?page=1&size=50'
    qlam-hpc api POST /v2/squin-256q/tasks --data @job.json
    qlam-hpc api PUT /v2/squin-256q/tasks/5f0c.../cancel
    qlam-hpc api GET /userinfo | jq .
    """
    from .._api._client import QlamClient
    from .._api._requests import error_for
    from .._api._settings import ApiSettings

    if not method or any(c in _NOT_IN_A_TOKEN or not c.isprintable() or c.isspace() for c in method):
        raise click.BadParameter(f"{method!r} is not an HTTP method", param_hint="METHOD")
    if any(c in path for c in "\r\n\t "):
        raise click.BadParameter("a path holds no spaces or line breaks (encode them: %20)", param_hint="PATH")
    settings = ApiSettings.from_env(base_url=api_url, qpu_mode=qpu_mode)
    relative = _relative(path, settings.base_url).replace("{qpu_mode}", settings.qpu_mode)
    extra = _headers(headers)
    content = _body(data)
    if content is not None and not any(k.lower() == "content-type" for k in extra):
        extra["Content-Type"] = "application/json"
    import httpx

    with QlamClient(settings, provider=config.provider()) as client:
        try:
            response = client.request(method, relative, content=content, headers=extra)
        except (ValueError, httpx.InvalidURL) as exc:
            raise click.BadParameter(str(exc), param_hint="PATH") from None
    if include:
        click.echo(f"HTTP/1.1 {response.status_code} {response.reason_phrase}", err=True)
        for name, value in response.headers.items():
            click.echo(f"{name}: {value}", err=True)
    body = response.content
    out = sys.stdout.buffer
    out.write(body)
    if body and not body.endswith(b"\n") and sys.stdout.isatty():
        out.write(b"\n")
    out.flush()
    if response.status_code >= 400:
        # 4xx is ApiError (exit 13), 5xx after the retries ApiUnreachable (exit 14).
        raise error_for(response.status_code, body, str(response.url))


# RFC 9110 token: a method is letters, digits and these, nothing else.
_NOT_IN_A_TOKEN = '"(),/:;<=>?@[\\]{}'


def _relative(path: str, base_url: str) -> str:
    if "://" not in path:
        return path if path.startswith("/") else "/" + path
    if path == base_url or path.startswith(base_url + "/") or path.startswith(base_url + "?"):
        return path[len(base_url) :] or "/"
    raise click.BadParameter(
        f"{path} is not on the QLAM API ({base_url}); the token is sent to that API only", param_hint="PATH"
    )


def _headers(items: tuple[str, ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, colon, value = item.partition(":")
        name = name.strip()
        if not colon or not name or any(c.isspace() for c in name):
            raise click.BadParameter(f"{item!r} is not 'Name: value'", param_hint="-H")
        if name.lower() == "authorization":
            raise click.BadParameter("qlam-hpc adds the Authorization header itself", param_hint="-H")
        if not (name + value).isascii() or any(c in value for c in "\r\n\0"):
            raise click.BadParameter(f"{name}: headers are ASCII, on one line", param_hint="-H")
        headers[name] = value.strip()
    return headers


def _body(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {data[1:]}: {exc.strerror or exc}", param_hint="--data") from None
    return data.encode()
