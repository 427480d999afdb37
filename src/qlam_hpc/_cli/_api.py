"""``qlam-hpc api``: any API call with the shared token, in place of ``curl -H "Authorization: ..."``.

The token never appears on a command line (where ``ps`` and shell history would
show it): the command adds it, and refreshes it once on a 401 like the library.
"""

from __future__ import annotations

import click

from ._tasks import api_options

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from ._app import _Config

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
    config: _Config,
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
    from . import _calls

    try:
        _calls.check_path(_calls.check_method(method) and path)
        settings = ApiSettings.from_env(base_url=api_url, qpu_mode=qpu_mode, context=config.overrides.get("context"))
        relative = _calls.relative_path(path, settings.base_url).replace("{qpu_mode}", settings.qpu_mode)
        extra = _calls.parse_headers(headers)
        content = _calls.read_body(data)
    except _calls.Refused as refused:
        raise click.BadParameter(str(refused), param_hint=refused.hint) from None
    _calls.with_content_type(extra, content)
    import httpx

    with QlamClient(settings, provider=config.provider()) as client:
        try:
            response = client.request(method, relative, content=content, headers=extra)
        except (ValueError, httpx.InvalidURL) as exc:
            raise click.BadParameter(str(exc), param_hint="PATH") from None
    if include:
        _calls.write_status(response.status_code, response.reason_phrase, response.headers.items())
    _calls.write_body(response.content)
    if response.status_code >= 400:
        # 4xx is ApiError (exit 13), 5xx after the retries ApiUnreachable (exit 14).
        raise error_for(response.status_code, response.content, str(response.url))
