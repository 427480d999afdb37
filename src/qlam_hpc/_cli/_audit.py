"""``qlam-hpc audit``: who did what, from the audit log; ``qlam-hpc metrics``: the textfile for
node_exporter."""

from __future__ import annotations

import time

import click

from .._errors import ConfigurationError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from ._app import _Config


@click.command("audit")
@click.option("--task", "task", metavar="ID", help="Only events of this task.")
@click.option("--user", "user", metavar="USER", help="Only events of this Unix user (name or uid).")
@click.option("--action", "actions", metavar="ACTION", multiple=True, help="Only this action (e.g. task.cancel).")
@click.option(
    "--since",
    metavar="WHEN",
    help="Only events since a time (2026-12-01, 2026-12-01T08:00:00Z) or this long ago (2h, 7d).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON lines, as they are stored.")
@click.option(
    "--file",
    "files",
    metavar="PATH",
    multiple=True,
    help="A JSON-lines audit log to read (repeatable) [default: the file destinations in use].",
)
def audit_command(
    task: str | None,
    user: str | None,
    actions: tuple[str, ...],
    since: str | None,
    as_json: bool,
    files: tuple[str, ...],
) -> None:
    """Show audit events: who created, cancelled or deleted a task, who fetched tokens, who
    logged in, and what was refused.

    \b
    qlam-hpc audit --task 7f3c...                  # who created it, who cancelled it
    qlam-hpc audit --user ada --since 7d           # what ada did this week
    qlam-hpc audit --action refusal --since 1d --json
    """
    from .. import _audit

    paths = list(files) or _configured_files()
    start = _since(since, time.time()) if since else None
    try:
        events, bad = _audit.read_events(paths)
    except OSError as error:
        raise ConfigurationError(f"cannot read the audit log {error.filename}: {error.strerror or error}") from None
    shown = 0
    for record in events:
        if task is not None and str(record.get("task")) != task:
            continue
        if user is not None and user not in (str(record.get("user")), str(record.get("uid"))):
            continue
        if actions and record.get("action") not in actions:
            continue
        if start is not None and str(record.get("time", "")) < start:
            continue
        shown += 1
        if as_json:
            click.echo(_audit.json_line(record).decode().rstrip("\n"))
        else:
            click.echo(f"{record.get('time')}  {_audit.summary(record)}")
    if bad:
        from .._log import log

        log("warning", f"{bad} line{'s' if bad != 1 else ''} of the audit log could not be read and were skipped")
    if not shown:
        click.echo(f"no audit event matches (read {len(events)} from {', '.join(paths)})", err=True)


def _configured_files() -> list[str]:
    """The files the configured file destinations write; ``{user}``/``{host}`` read them all."""
    import glob

    from .. import _audit

    found, _problems = _audit.destinations()
    paths: list[str] = []
    for destination in found:
        if destination.kind != "file":
            continue
        if "{" in destination.target:
            pattern = destination.target.replace("{user}", "*").replace("{host}", "*")
            paths += sorted(glob.glob(pattern))
        else:
            paths.append(destination.target)
    if not paths:
        raise ConfigurationError(
            "no audit log to read: name one with --file PATH, or write one with QLAM_AUDIT_LOG=file:PATH "
            "(syslog and journald events are read with the site's own tools)"
        )
    return paths


def _since(text: str, now: float) -> str:
    """The earliest time to show, as the events write it (so that strings compare as times)."""
    import calendar

    from .._durations import parse_duration

    raw = text.strip()
    for form in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            at = float(calendar.timegm(time.strptime(raw, form)))
            break
        except ValueError:
            continue
    else:
        try:
            at = now - parse_duration(raw)
        except ValueError:
            raise click.BadParameter(
                f"{text!r}: use a date (2026-12-01), a UTC time (2026-12-01T08:00:00Z) or a duration (2h, 7d)",
                param_hint="--since",
            ) from None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


@click.command("metrics")
@click.option(
    "--textfile",
    "directory",
    metavar="DIR",
    help="Write NAME into DIR atomically, for node_exporter's textfile collector [default: print].",
)
@click.option("--name", default="qlam_hpc.prom", show_default=True, metavar="NAME", help="The file's name (*.prom).")
@click.option(
    "--audit-log",
    "audit_logs",
    metavar="PATH",
    multiple=True,
    help="JSON-lines audit logs for the per-user metrics (repeatable) [default: the file destinations in use].",
)
@click.pass_obj
def metrics_command(config: _Config, directory: str | None, name: str, audit_logs: tuple[str, ...]) -> None:
    """Token requests this month per identity and per Unix user, the budget and its
    month-end projection, seconds left on the cached token and the login, failures by kind.

    \b
    # crontab: every 5 minutes, where node_exporter --collector.textfile.directory points
    */5 * * * * qlam-hpc metrics --textfile /var/lib/node_exporter/textfile
    """
    from .. import _audit
    from .._metrics import collect, render, write_textfile

    events: list[dict[str, Any]] = []
    paths = list(audit_logs)
    if not paths:
        try:
            paths = _configured_files()
        except ConfigurationError:
            paths = []  # no audit file: the per-user metrics are left out
    try:
        events, _bad = _audit.read_events(paths)
    except OSError as error:
        raise ConfigurationError(f"cannot read the audit log {error.filename}: {error.strerror or error}") from None
    text = render(collect(config.provider(), time.time(), events))
    if directory is None:
        click.echo(text, nl=False)
        return
    try:
        target = write_textfile(directory, name, text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--name") from None
    except OSError as error:
        raise ConfigurationError(f"cannot write the metrics into {directory}: {error.strerror or error}") from None
    click.echo(f"wrote {target}")
