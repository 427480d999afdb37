"""``qlam-hpc tasks``: submit, list, inspect, wait for, cancel and delete tasks; fetch results.

Each command builds one ``QlamClient`` and raises the library's errors; the exit
point (``_app.run``) turns them into one line and an exit code. ``--json``
prints what the API said (``get``, ``list``, ``submit`` byte for byte as the light
path of ``_fast.py``, which serves them with a warm cache; ``wait`` and ``list --all``
through the models); otherwise tables (rich, imported when used). Waiting
shows a live display on a terminal, and one plain line per status change
otherwise, which is what a batch job's log wants.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, BinaryIO

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from .._api._client import QlamClient
    from .._api._models import Task

TASK_COMMANDS_EPILOG = """\b
Exit codes: 0 success, 13 the API refused the request, 14 the API is unreachable
(after retries); 3-9 as for `qlam-hpc token` (configuration, identity provider, cache).
"""

WAIT_EPILOG = """\b
Exit codes: 0 every task completed, 10 a task failed, 11 a task was cancelled,
12 --timeout ran out, 13 the API refused the request, 14 the API is unreachable
(after retries); 3-9 as for `qlam-hpc token` (configuration, identity provider, cache).
"""


class _Api:
    """What the subcommands need: the root's token settings and this group's API overrides."""

    def __init__(self, config: Any, api_url: str | None, qpu_mode: str | None) -> None:
        self.config = config
        self.api_url = api_url
        self.qpu_mode = qpu_mode

    def client(self) -> QlamClient:
        from .._api._client import QlamClient
        from .._api._settings import ApiSettings

        context = self.config.overrides.get("context")  # --context picks the QLAM Shell context
        settings = ApiSettings.from_env(base_url=self.api_url, qpu_mode=self.qpu_mode, context=context)
        return QlamClient(settings, provider=self.config.provider())


def api_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--qpu-mode", metavar="MODE", help="QPU mode in the API path [env: QLAM_QPU_MODE; default squin-256q]."
    )(function)
    return click.option(
        "--api-url", metavar="URL", help="QLAM API base URL [env: QLAM_API_URL; default https://api.quera.com]."
    )(function)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")


def _duration(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    from .._durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@click.group(epilog=TASK_COMMANDS_EPILOG)
@api_options
@click.pass_context
def tasks(ctx: click.Context, api_url: str | None, qpu_mode: str | None) -> None:
    """Submit and follow QLAM tasks with the shared token.

    \b
    qlam-hpc tasks submit job.json --wait --timeout 2h
    qlam-hpc tasks list --all --json | jq -r '.elements[].id'
    qlam-hpc tasks results 5f0c... -o results/5f0c.json
    """
    ctx.obj = _Api(ctx.obj, api_url, qpu_mode)


# --- submit --------------------------------------------------------------------------------


@tasks.command(epilog=WAIT_EPILOG)
@click.argument("definition", metavar="FILE|-", type=click.File("rb"))
@click.option("--wait", "wait_", is_flag=True, help="Wait until the task ends; exit 10/11 if it fails or is cancelled.")
@click.option("--timeout", metavar="DURATION", help="With --wait: give up after this long (e.g. 90s, 2h); exit 12.")
@click.option("--poll", default="1s", show_default=True, metavar="DURATION", help="With --wait: first poll interval.")
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="A key unique to this task (e.g. $SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID): after a "
    "failure the server may have acted on, look for a task with it before submitting again.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the task id (for ID=$(...)).")
@json_option
@click.pass_obj
def submit(
    api: _Api,
    definition: BinaryIO,
    wait_: bool,
    timeout: str | None,
    poll: str,
    idempotency_key: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Submit the task definition in FILE (JSON; - reads stdin).

    The definition is sent as written, plus attribution (host, user, Slurm/PBS
    job) in system_metadata unless QLAM_ATTRIBUTION=off. A definition the API
    refuses is one error line with its messages, exit 13.

    \b
    qlam-hpc tasks submit job.json
    ID=$(qlam-hpc tasks submit -q job.json)
    qlam-hpc tasks submit job.json --wait --timeout 2h --json > task.json
    python make_job.py | qlam-hpc tasks submit - --idempotency-key "$SLURM_JOB_ID"
    """
    body = _definition(definition)
    timeout_s, poll_s = _duration(timeout, "--timeout"), _duration(poll, "--poll")
    with api.client() as client:
        created = client._create(body, idempotency_key)
        if not wait_:
            _print_raw(created, as_json, quiet)
            return
        task = _task(created)
        if task.id is None:  # the schema makes the id optional; without one there is nothing to wait for
            from .._errors import QlamError

            raise QlamError("the QLAM API's answer to the submission names no task id: cannot wait for the task")
        if not as_json and not quiet:
            _status_line(task, "submitted")
        final = _wait(client, [task.id], timeout_s, poll_s, as_json, quiet, known=[task])
    _print_one(final[0], as_json, quiet)
    _raise_for_outcome(final)


def _definition(stream: Any) -> dict[str, Any]:
    name = getattr(stream, "name", "-")
    raw = stream.read()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise click.BadParameter(f"{name} is not JSON ({exc})", param_hint="FILE") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{name} must hold a JSON object (a task definition)", param_hint="FILE")
    return data


# --- list, get ---------------------------------------------------------------------------------


@tasks.command("list", epilog=TASK_COMMANDS_EPILOG)
@click.option("--page", default=0, show_default=True, type=click.IntRange(0), help="Page number, from 0.")
@click.option("--size", type=click.IntRange(1, 1000), help="Tasks per page [default: 10; 100 with --all].")
@click.option("--sort", metavar="FIELD,DIR", help="Sort order [default: created_date,desc].")
@click.option("--group-id", "group_ids", multiple=True, metavar="UUID", help="Only tasks of this group; repeatable.")
@click.option("--all", "everything", is_flag=True, help="Every page, not just one.")
@json_option
@click.pass_obj
def list_command(
    api: _Api,
    page: int,
    size: int | None,
    sort: str | None,
    group_ids: tuple[str, ...],
    everything: bool,
    as_json: bool,
) -> None:
    """List tasks, newest first: one page, or --all of them.

    \b
    qlam-hpc tasks list
    qlam-hpc tasks list --page 2 --size 50
    qlam-hpc tasks list --all --group-id 6f1c... --json | jq -r '.elements[].id'

    --json prints {"elements": [...], "page", "size", "total"}; with --all,
    {"elements": [...every task...], "total"}.
    """
    with api.client() as client:
        if everything:
            found = list(client.iter_tasks(size=size or 100, sort=sort, group_ids=group_ids))
            if as_json:
                _echo_json({"elements": [t.to_json() for t in found], "total": len(found)})
            else:
                _task_table(found, f"{len(found)} task{'s' if len(found) != 1 else ''}")
            return
        from .._api import _requests as rq

        data = client._call(rq.list_tasks(client.settings, page=page, size=size or 10, sort=sort, group_ids=group_ids))
    if as_json:
        _echo_json(data)
        return
    from .._api._models import Page, Task

    listing = Page[Task].model_validate(data)
    pages = max(1, -(-listing.total // listing.size)) if listing.size else 1
    _task_table(listing.elements, f"page {listing.page + 1} of {pages}, {listing.total} tasks in all")


@tasks.command(epilog=TASK_COMMANDS_EPILOG)
@click.argument("task_id", metavar="ID")
@json_option
@click.pass_obj
def get(api: _Api, task_id: str, as_json: bool) -> None:
    """Show one task and its status.

    \b
    qlam-hpc tasks get 5f0c...
    qlam-hpc tasks get 5f0c... --json | jq -r .task_status
    """
    from .._api import _requests as rq

    with api.client() as client:
        data = client._call(rq.get_task(client.settings, task_id))
    _print_raw(data, as_json, False)


# --- wait --------------------------------------------------------------------------------------


@tasks.command(epilog=WAIT_EPILOG)
@click.argument("task_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--timeout", metavar="DURATION", help="Give up after this long (e.g. 90s, 2h); exit 12.")
@click.option(
    "--poll",
    default="1s",
    show_default=True,
    metavar="DURATION",
    help="First poll interval (it grows to 15s while nothing changes).",
)
@json_option
@click.pass_obj
def wait(api: _Api, task_ids: tuple[str, ...], timeout: str | None, poll: str, as_json: bool) -> None:
    """Wait until every task ID has ended; exit 0 only if all completed.

    On a terminal it shows each task's status live; in a batch log it prints
    one line per status change. Exit 10 if one failed, else 11 if one was
    cancelled, 12 if --timeout ran out first.

    \b
    qlam-hpc tasks wait 5f0c... 81aa... --timeout 6h
    qlam-hpc tasks wait "$ID" --json > final.json
    """
    timeout_s, poll_s = _duration(timeout, "--timeout"), _duration(poll, "--poll")
    with api.client() as client:
        final = _wait(client, list(task_ids), timeout_s, poll_s, as_json, False)
    if as_json:
        _echo_json([t.to_json() for t in final])
    else:
        _task_table(final, None)
    _raise_for_outcome(final)


def _wait(
    client: QlamClient,
    ids: list[str],
    timeout: float | None,
    poll: float | None,
    as_json: bool,
    quiet: bool,
    known: Iterable[Task] = (),
) -> list[Task]:
    """Wait with the display that suits where stdout goes. On a timeout the last states seen
    are printed (JSON or table) before the error, so a batch log shows where each task was."""
    from .._errors import WaitTimeout

    seen = {t.id: t.status for t in known}
    silent = as_json or quiet
    live = None if silent or not sys.stdout.isatty() else _Live(ids)

    def on_change(task: Task) -> None:
        if live is not None:
            live.update(task)
        elif not silent and seen.get(task.id) != task.status:
            _status_line(task)
        seen[task.id] = task.status

    poll = max(poll or 1.0, 0.05)
    try:
        if live is not None:
            live.start()
        try:
            return client.wait(
                ids,
                timeout=timeout,
                poll_interval=poll,
                max_poll_interval=max(poll, 15.0),
                check=False,
                on_change=on_change,
            )
        finally:
            if live is not None:
                live.stop()
    except WaitTimeout as error:
        last = getattr(error, "tasks", [])
        if as_json:
            _echo_json([t.to_json() for t in last])
        elif not quiet and last:
            _task_table(last, None)
        raise


class _Live:
    """One line per task on a terminal, with a spinner until it ends."""

    def __init__(self, ids: list[str]) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(finished_text="•"),
            TextColumn("{task.fields[task_id]}"),
            TextColumn("[bold]{task.fields[status]}"),
            TimeElapsedColumn(),
            transient=True,
        )
        self.rows = {i: self.progress.add_task("", total=1, task_id=i, status="…") for i in ids}

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def update(self, task: Task) -> None:
        row = self.rows.get(task.id) if task.id is not None else None
        if row is not None:
            self.progress.update(row, status=task.status, completed=1 if task.terminal else 0)


def _status_line(task: Task, what: str | None = None) -> None:
    from ._output import utc

    reasons = f" ({'; '.join(task.error_reasons)})" if task.error_reasons else ""
    click.echo(f"{utc(time.time())} task {task.id} {what or task.status}{reasons}")
    sys.stdout.flush()


def _raise_for_outcome(final: list[Task]) -> None:
    from .._api._requests import raise_for_outcome

    raise_for_outcome(final)


# --- cancel, delete ----------------------------------------------------------------------------


@tasks.command(epilog=TASK_COMMANDS_EPILOG)
@click.argument("task_id", metavar="ID")
@json_option
@click.pass_obj
def cancel(api: _Api, task_id: str, as_json: bool) -> None:
    """Cancel a task. One that has already ended is an error (HTTP 409, exit 13).

    \b
    qlam-hpc tasks cancel 5f0c...
    """
    with api.client() as client:
        task = client.cancel_task(task_id)
    if as_json:
        _echo_json(task.to_json())
    else:
        click.echo(f"task {task.id}: {task.status}")


@tasks.command(epilog=TASK_COMMANDS_EPILOG)
@click.argument("task_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help='Print {"id", "deleted": true} instead of a sentence.')
@click.pass_obj
def delete(api: _Api, task_id: str, as_json: bool) -> None:
    """Delete a task (one still running is cancelled first).

    \b
    qlam-hpc tasks delete 5f0c...
    """
    with api.client() as client:
        client.delete_task(task_id)
    if as_json:
        _echo_json({"id": task_id, "deleted": True})
    else:
        click.echo(f"deleted task {task_id}")


# --- results -----------------------------------------------------------------------------------


@tasks.command(epilog=TASK_COMMANDS_EPILOG)
@click.argument("task_id", metavar="ID")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Stream the whole result set into FILE (written atomically: never half a file).",
)
@click.option("--size", default=10, show_default=True, type=click.IntRange(1, 1000), help="Subtasks per page fetched.")
@click.option("--shots-size", type=click.IntRange(1, 100000), help="Shots per page fetched [API default: 100].")
@click.option(
    "--json", "as_json", is_flag=True, help='With -o: print {"task_id", "path", "bytes"} instead of a sentence.'
)
@click.pass_obj
def results(api: _Api, task_id: str, output: str | None, size: int, shots_size: int | None, as_json: bool) -> None:
    """Results of a completed task, as JSON {"task_id", "subtasks": [...]}.

    Without -o, the pages are fetched one by one and the subtasks printed as
    they come (every shot of each). With -o, the server streams the whole set
    into FILE; --json then prints {"task_id", "path", "bytes"}. Both give the
    same subtasks. A task that has not completed is an error (HTTP 409, exit 13).

    \b
    qlam-hpc tasks results 5f0c... -o results/5f0c.json
    qlam-hpc tasks results 5f0c... | jq '.subtasks[0].shots | length'
    """
    if output is not None and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise click.BadParameter(f"the directory of {output!r} does not exist", param_hint="-o")
    with api.client() as client:
        if output is not None:
            path = client.download_results(task_id, output)
            written = path.stat().st_size
            if as_json:
                _echo_json({"task_id": task_id, "path": str(path), "bytes": written})
            else:
                click.echo(f"wrote the results of task {task_id} to {path} ({written} bytes)")
            return
        _stream_results(client, task_id, size, shots_size)


def _stream_results(client: QlamClient, task_id: str, size: int, shots_size: int | None) -> None:
    """Write ``{"task_id": ..., "subtasks": [...]}`` subtask by subtask, so a large result set
    is never held whole in memory. Nothing is printed if the first page fails."""
    subtasks = client._result_elements(task_id, size, shots_size)
    first = next(subtasks, None)
    out = sys.stdout
    out.write('{"task_id": ' + json.dumps(task_id) + ', "subtasks": [')
    if first is not None:
        out.write(json.dumps(first))
    for subtask in subtasks:
        out.write(", " + json.dumps(subtask))
    out.write("]}\n")
    out.flush()


# --- output ------------------------------------------------------------------------------------


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _task(data: Any) -> Task:
    from .._api._models import Task

    return Task.model_validate(data)


def _print_raw(data: Any, as_json: bool, quiet: bool) -> None:
    """A task as the server wrote it: ``--json`` prints it unchanged (as the light path in
    ``_fast.py`` does), the table and ``-q`` read it through the model."""
    if as_json and not quiet:
        _echo_json(data)
    else:
        _print_one(_task(data), as_json, quiet)


def _print_one(task: Task, as_json: bool, quiet: bool) -> None:
    if quiet:
        click.echo(task.id)
    elif as_json:
        _echo_json(task.to_json())
    else:
        _task_details(task)


def _console() -> Console:
    from rich.console import Console

    # A pipe or a batch log has no width: be wide rather than cut task ids short.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 240)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _task_table(found: list[Task], caption: str | None) -> None:
    from rich.table import Table

    table = Table(caption=caption, box=None, pad_edge=False)
    # Ids are copied from here into other commands: never shortened.
    table.add_column("ID", no_wrap=True, min_width=36)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("CREATED (UTC)", no_wrap=True)
    table.add_column("GROUP")
    table.add_column("ERRORS")
    from rich.text import Text

    for task in found:
        group = task.group.name if task.group is not None and task.group.name else ""
        # Text, not markup: values from the server are shown as they are, "[red]" included.
        cells = (Text(task.id or ""), _styled(task.status), _when(_utc(task.created_date)), Text(group))
        table.add_row(*cells, Text("; ".join(task.error_reasons)))
    _console().print(table)


def _task_details(task: Task) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    from rich.text import Text

    data = task.to_json()
    rows = [(Text("id"), Text(task.id or "")), (Text("status"), _styled(task.status))]
    rows += [
        (Text(k), Text(_cell(v))) for k, v in data.items() if k not in ("id", "task_status") and v not in (None, [], "")
    ]
    for key, value in rows:
        table.add_row(key, value)
    _console().print(table)


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _utc(value: Any) -> Any:
    from datetime import timezone

    return value.astimezone(timezone.utc) if value is not None and value.tzinfo is not None else value


def _styled(status: str) -> Text:
    from rich.text import Text

    style = {"Completed": "green", "Failed": "red", "PayloadProcessingError": "red", "Cancelled": "yellow"}.get(status)
    return Text(status, style=style or "")
