"""The full CLI: click commands, and the one exit point that turns errors into messages and codes."""

from __future__ import annotations

import importlib
import sys
import time

import click

from .._errors import QlamError
from .._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from .._provider import TokenProvider, TokenResult
    from .._settings import Settings

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  unexpected error
  2  usage error (bad option or argument)
  3  configuration error (missing or invalid setting)
  4  the identity provider refused the request (wrong secret, unknown client, ...)
  5  the identity provider is unreachable (after retries)
  6  rate limited by the identity provider (HTTP 429, monthly quota)
  7  the identity provider's answer held no usable token
  8  the token cache cannot be used safely
  9  another process held the refresh lock too long
 10  a task failed                  11  a task was cancelled
 12  a wait timed out               13  the QLAM API refused the request
 14  the QLAM API is unreachable
 15  a secret store (Vault, AWS Secrets Manager) is unreachable
 16  user context: not logged in, or the login expired or was revoked (run qlam-hpc auth login)
 17  a device login was not approved before its code expired
 18  TLS: a certificate not trusted (set SSL_CERT_FILE or REQUESTS_CA_BUNDLE), or https to a plain-http server
 19  token exchange: the subject token is missing, unreadable or expired (the line names its source)
 130 interrupted
"""


class _LazyGroup(click.Group):
    """A group whose subcommands are imported when used, so ``qlam-hpc token`` never loads
    the sandbox's web framework."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy:
            module, _, attribute = self._lazy[name].partition(":")
            command: click.Command = getattr(importlib.import_module(module, __package__), attribute)
            return command
        return super().get_command(ctx, name)


class _Config:
    """Settings overrides from the group's options; settings are built when a command needs them."""

    def __init__(self, overrides: dict[str, str | None]) -> None:
        self.overrides = overrides

    def settings(self) -> Settings:
        from .._settings import Settings

        return Settings.from_env(None, **self.overrides)

    def provider(self) -> TokenProvider:
        from .._provider import TokenProvider

        return TokenProvider(self.settings())


@click.group(
    cls=_LazyGroup,
    lazy={
        "sandbox": "qlam_hpc.sandbox._command:sandbox_command",
        "demo": "qlam_hpc._demo:demo_command",
        "credentials": "qlam_hpc._cli._keygen:credentials",
        "tasks": "qlam_hpc._cli._tasks:tasks",
        "api": "qlam_hpc._cli._api:api_command",
        "doctor": "qlam_hpc._cli._doctor:doctor",
        "audit": "qlam_hpc._cli._audit:audit_command",
        "metrics": "qlam_hpc._cli._audit:metrics_command",
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, "-V", "--version", prog_name="qlam-hpc")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-v info, -vv debug).")
@click.option("--client-id", metavar="ID", help="M2M client id [env: QLAM_CLIENT_ID].")
@click.option("--audience", metavar="URL", help="API audience [env: QLAM_AUDIENCE; default https://api.quera.com].")
@click.option("--auth-base-url", metavar="HOST|URL", help="Identity provider, bare host or URL [env: AUTH_BASE_URL].")
@click.option("--scope", metavar="SCOPES", help="Space-separated scopes to request [env: QLAM_SCOPE].")
@click.option(
    "--cache-dir",
    metavar="DIR",
    help="Shared token cache directory [env: QLAM_TOKEN_CACHE_DIR; default ~/.cache/qlam-hpc].",
)
@click.option(
    "--context",
    metavar="NAME",
    help="QLAM Shell context in ~/.qsh/config.json to take the client from [env: QLAM_CONTEXT].",
)
@click.pass_context
def cli(ctx: click.Context, /, verbose: int, **overrides: str | None) -> None:
    """Shared OAuth2 M2M tokens and QLAM API access for batch jobs.

    One token serves every task of a job array: the first task to need one
    fetches it under a lock, the others read it from the shared cache. The
    client secret or private key is named by the environment (QLAM_CLIENT_SECRET,
    QLAM_CLIENT_SECRET_FILE, QLAM_CLIENT_PRIVATE_KEY_FILE, env:, vault://, aws-sm://)
    or by a QLAM Shell context, never given on the command line; it is read only
    when a token must be fetched. See docs/credentials.md.
    """
    from ._output import configure_logging

    configure_logging(verbose)
    ctx.obj = _Config(overrides)


@cli.command()
@click.option("--json", "mode", flag_value="json", help="Print token, expiry and source as JSON.")
@click.option("--header", "mode", flag_value="header", help="Print an 'Authorization: Bearer ...' line (curl -H @-).")
@click.option(
    "--min-ttl",
    default="0",
    metavar="DURATION",
    help="Hand out only a token valid for at least this long (e.g. 90m, 2h), or until this batch "
    "job's time limit ('job'); refresh otherwise.",
)
@click.pass_obj
def token(config: _Config, mode: str | None, min_ttl: str) -> None:
    """Print an access token, from the shared cache when possible.

    \b
    TOKEN=$(qlam-hpc token)                  # into a variable, never onto a command line
    qlam-hpc token --header | curl -H @- https://api.quera.com/v2/squin-256q/tasks
    qlam-hpc token --min-ttl 2h              # outlive a two-hour job step
    qlam-hpc token --min-ttl job             # outlive this Slurm/PBS job
    """
    from ._output import print_token

    provider = config.provider()
    if min_ttl.strip().lower() == "job":
        result = _until_job_ends(provider)
    else:
        result = provider.get(min_ttl=_duration(min_ttl, "--min-ttl"))
    print_token(result.token, result.source, mode or "plain", time.time())


def _until_job_ends(provider: TokenProvider) -> TokenResult:
    """A token valid until the batch job's time limit, or the usual one, with a warning,
    where the job's end cannot be read."""
    from .._durations import format_duration
    from .._errors import ConfigurationError, TokenLifetimeTooShort
    from .._log import log
    from .._walltime import read_time_left

    left = read_time_left()
    if left.seconds is None:
        log("warning", f"--min-ttl job: cannot tell when this job ends ({left.reason}); using the usual margin")
        return provider.get()
    login = provider.current_login()
    if login is not None and login.expires_at < time.time() + left.seconds:
        log(
            "warning",
            f"this job ends after the login of {login.who} does "
            f"({format_duration(max(0.0, login.expires_at - time.time()))} left): its last refreshes will fail; "
            "run qlam-hpc auth login again before then",
        )
    try:
        return provider.get(min_ttl=left.seconds)
    except TokenLifetimeTooShort as error:
        raise ConfigurationError(
            f"--min-ttl job: this job has {format_duration(left.seconds)} left, longer than the identity "
            f"provider's tokens live ({format_duration(error.lifetime)}); no token can cover it: call "
            "qlam-hpc token again later in the job (qlam-hpc api and tasks refresh on their own)"
        ) from None


@cli.group()
def auth() -> None:
    """Log in or out (user context); inspect, check or clear the cached token (never printed)."""


@auth.command()
@click.option("--json", "as_json", is_flag=True, help="Print the code and URL as a JSON line on stdout (for portals).")
@click.option(
    "--timeout",
    metavar="DURATION",
    help="Give up waiting for the approval after this long (default: when the code expires).",
)
@click.pass_obj
def login(config: _Config, as_json: bool, timeout: str | None) -> None:
    """Log in as yourself with the device flow (user context; QLAM_AUTH_FLOW=device).

    Shows a URL and a code: open the URL in a browser on any device, check that it
    shows the same code, and approve. No browser is needed on this machine. Every
    job then refreshes the login on its own, one process at a time, until it ends
    (QLAM_REFRESH_TOKEN_LIFETIME, 15 days by default).

    \b
    qlam-hpc auth login                       # on a login node, once
    sbatch --array=0-499 job.sbatch           # jobs: qlam-hpc token / api / tasks
    """
    from ._login import run_login

    run_login(config.provider(), as_json, _duration(timeout, "--timeout") if timeout else None)


@auth.command()
@click.pass_obj
def logout(config: _Config) -> None:
    """Forget your login here and revoke it at the identity provider (user context)."""
    from ._login import run_logout

    run_logout(config.provider())


@auth.command("keep-fresh")
@click.option("--once", is_flag=True, help="Refresh if needed, then exit (for cron).")
@click.pass_obj
def keep_fresh(config: _Config, once: bool) -> None:
    """Keep the shared access token fresh from here, so jobs never refresh (user context).

    Refreshes whenever half the access token's lifetime is gone, as HTCondor's
    credmon does. Run it on a login node with QLAM_REFRESH_TOKEN_DIR set to a
    directory of that node only: the refresh token then never reaches a compute
    node, which only reads access tokens from the shared cache. See docs/user-context.md.
    """
    from .._login import keep_fresh as run

    result = run(config.provider(), once=once)
    if once:
        from ._output import utc

        click.echo(f"access token valid until {utc(result.token.expires_at)} ({result.source})")


@auth.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
def status(config: _Config, as_json: bool) -> None:
    """Where the cache is, what token it holds, and this month's token requests."""
    from ._status import auth_status, render_status

    report = auth_status(config.provider(), time.time())
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_status(report))


@auth.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask first (the request counts against the monthly quota).")
@click.pass_obj
def check(config: _Config, yes: bool) -> None:
    """Verify the configured credentials with one token request.

    The request counts against the client's monthly token quota, so it asks
    first (--yes skips the question). The token it gets is cached for the
    others; a refusal exits 4 with the identity provider's reason.
    """
    from ._check import auth_check

    auth_check(config.settings(), yes)


@auth.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Remove every entry of yours: all entries of the cache directory, or on Redis those of this client and user.",
)
@click.pass_obj
def clear(config: _Config, everything: bool) -> None:
    """Remove the cached token (and any recorded failure); the ledger is kept.

    In user context the login stays: qlam-hpc auth logout ends it (--all removes the
    logins in the cache directory too, without revoking them).
    """
    provider = config.provider()
    kept = provider.current_login() if provider.settings.user_context and not everything else None
    removed = provider.store.clear(None) if everything else provider.clear()
    if kept is not None:  # "removed 1 cache entry" would read as if the login had gone too
        where = provider.store.location
        click.echo(f"cleared the access token cached in {where}; kept the login of {kept.who} (auth logout ends it)")
        return
    click.echo(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'} from {provider.store.location}")


def _duration(text: str, option: str) -> float:
    from .._durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def run(args: list[str]) -> int:
    """The CLI's one exit point: every error becomes one line on stderr and an exit code."""
    try:
        result = cli.main(args=args, prog_name="qlam-hpc", standalone_mode=False)
    except QlamError as error:
        from .._audit import refusal  # the audit trail's record of the refusal, when it is on

        refusal(error, error.exit_code, args)
        return _fail(str(error), error.exit_code)
    except click.exceptions.Abort:
        return _fail("interrupted", 130)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except click.UsageError as error:
        # One line, like every other error; the usage is one --help away.
        command = error.ctx.command_path if error.ctx is not None else "qlam-hpc"
        return _fail(f"{error.format_message()} (see {command} --help)", error.exit_code)
    except click.ClickException as error:
        return _fail(error.format_message(), error.exit_code)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not our error. Point stdout at /dev/null so
        # the interpreter's final flush does not complain either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:  # a bug: one line, and the traceback only when asked for
        import logging

        logging.getLogger("qlam_hpc").debug("unexpected error", exc_info=True)
        return _fail(f"unexpected {type(error).__name__}: {error} (run with -vv for details)", 1)
    return result if isinstance(result, int) else 0


def _fail(message: str, code: int) -> int:
    click.echo(f"qlam-hpc: error: {message}", err=True)
    return code
