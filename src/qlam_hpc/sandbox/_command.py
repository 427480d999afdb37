"""``qlam-hpc sandbox``: run the sandbox identity provider in the foreground.

FastAPI and uvicorn are imported inside the command, so loading the CLI (and
``qlam-hpc --help``) costs nothing when the ``sandbox`` extra is not installed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._errors import ConfigurationError
from ._config import SandboxConfig, is_loopback

__all__ = ["sandbox_command"]


if TYPE_CHECKING:  # pragma: no cover
    _ParamType = click.ParamType[int, object]
else:
    _ParamType = click.ParamType  # generic only in click 8.2 and later


class _DurationType(_ParamType):
    """Seconds, or a duration such as 15m, 2h, 1d."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from .._durations import parse_duration

        if isinstance(value, int):
            return value
        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds < 1:
            self.fail("must be at least 1 second", param, ctx)
        return int(seconds)


def _loopback_only(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not is_loopback(value):
        raise click.BadParameter(
            f"{value!r} is not a loopback address. The sandbox has no TLS and no real "
            "security, so it only listens on 127.0.0.1, ::1 or localhost.",
            ctx=ctx,
            param=param,
        )
    return value


class _ConfigProblem(click.ClickException):
    exit_code = ConfigurationError.exit_code


# How long requests still running at Ctrl-C or SIGTERM (one sleeping an injected
# latency, a client's long poll) get before they are cancelled: a person or a
# job script waiting for the sandbox to go away should not wait for them.
_STOP_GRACE = 0.2


@click.command(
    "sandbox",
    epilog="""\b
Example:
  qlam-hpc sandbox --env-file sandbox.env &
  until [ -s sandbox.env ]; do sleep 0.1; done
  source sandbox.env
  qlam-hpc token   # now talks to the sandbox

The emulated QLAM tasks API is at $QLAM_API_URL/v2/<qpu-mode>/tasks.
With --flow device, log in with the device code flow: approve at
$AUTH_BASE_URL/activate in a browser that has opened
$QLAM_SANDBOX_APPROVE_URL once (only you have it), or use --auto-approve.
Control endpoints for tests: GET /_sandbox/stats, POST /_sandbox/faults,
POST /_sandbox/reset, POST /_sandbox/device/approve. See docs/sandbox.md.""",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    callback=_loopback_only,
    help="Loopback address to listen on; other addresses are refused.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="TCP port; 0 picks a free one."
)
@click.option(
    "--clients-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON file of clients: {"clients": [{"client_id", "client_secret", "scopes"}], "audiences": [...]}; '
    "a private_key_jwt client has jwks, jwks_file or public_key_file instead of (or beside) its secret. "
    "The first client is the one exported.",
)
@click.option("--client-id", help="Id of the single client to serve; its secret is generated. Default: random.")
@click.option(
    "--client-public-key",
    "client_public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM public key the single client may sign private_key_jwt assertions with (beside its secret); "
    "repeat for several.",
)
@click.option(
    "--audience",
    "audiences",
    multiple=True,
    help="API identifier clients may ask tokens for; repeat for several; the first is exported. "
    "[default: https://api.quera.com]",
)
@click.option(
    "--token-lifetime",
    type=_DurationType(),
    default=86400,
    show_default=True,
    help="Lifetime of access tokens: seconds, or 15m, 2h, 1d.",
)
@click.option(
    "--monthly-quota",
    type=click.IntRange(min=0),
    help="Tokens each client may get per calendar month (UTC); more are answered 429. Default: unlimited.",
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds added to every token request.",
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of token requests answered with HTTP 500.",
)
@click.option("--seed", type=int, help="Seed for --error-rate draws, for repeatable runs.")
@click.option(
    "--signing-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM RSA private key to sign tokens with (kept across restarts); yours, chmod 600. Default: a new key a run.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory (made 0700 if missing) to keep tasks in, across restarts; without --signing-key-file "
    "the signing key is kept there too (signing-key.pem). Default: tasks in memory only.",
)
@click.option(
    "--task-duration",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds a task takes from Created to Completed (or another end).",
)
@click.option(
    "--qpu-mode",
    "qpu_modes",
    multiple=True,
    help="qpu_mode the tasks API serves, <language>-<constraint>; repeat for several. [default: squin-256q]",
)
@click.option(
    "--flow",
    type=click.Choice(["m2m", "device", "token-exchange"]),
    default="m2m",
    show_default=True,
    help="Which client the exports are for: the M2M client and its secret, the public device client "
    "(QLAM_AUTH_FLOW=device, no secret) whose user logs in with the device code flow, or the M2M client "
    "exchanging a subject token (QLAM_AUTH_FLOW=token-exchange; needs --exchange-issuer).",
)
@click.option(
    "--exchange-issuer",
    "exchange_issuers",
    multiple=True,
    help="Issuer whose JWTs clients may exchange for tokens (RFC 8693 token exchange); its keys are found "
    "by OpenID discovery. https, or http on a loopback host only. Repeat for several.",
)
@click.option(
    "--exchange-audience",
    help="What a subject token's aud must hold. [default: the sandbox's own URL]",
)
@click.option(
    "--auto-approve",
    is_flag=True,
    help="Approve every device login as the first user as soon as it starts: for scripts and demos without a browser.",
)
@click.option(
    "--refresh-token-overlap",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds a used refresh token may still be exchanged (Auth0's rotation overlap period); "
    "after that, using it again revokes the whole login.",
)
@click.option(
    "--refresh-token-lifetime",
    type=_DurationType(),
    default=15 * 86400,
    show_default=True,
    help="Absolute lifetime of a device login's refresh tokens (rotation does not extend it): seconds, or 12h, 15d.",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Serve https with a throw-away CA made at start; the exports name it in SSL_CERT_FILE and "
    "REQUESTS_CA_BUNDLE (for clients that refuse plain-http identity providers, such as QuEra's SDK).",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the export lines to this file (mode 0600) once the server is up, instead of to stdout; "
    "'source' it. It is removed when the sandbox exits.",
)
def sandbox_command(
    host: str,
    port: int,
    clients_file: Path | None,
    client_id: str | None,
    client_public_keys: tuple[Path, ...],
    audiences: tuple[str, ...],
    token_lifetime: int,
    monthly_quota: int | None,
    latency: float,
    error_rate: float,
    seed: int | None,
    signing_key_file: Path | None,
    state_dir: Path | None,
    task_duration: float,
    qpu_modes: tuple[str, ...],
    flow: str,
    auto_approve: bool,
    refresh_token_overlap: float,
    refresh_token_lifetime: int,
    exchange_issuers: tuple[str, ...],
    exchange_audience: str | None,
    tls: bool,
    env_file: Path | None,
) -> None:
    """Run a local Auth0-compatible identity provider and QLAM tasks API for testing, offline.

    It issues real RS256 access tokens for the client_credentials grant and for
    users who log in with the device code flow (with rotating refresh tokens),
    and serves an emulated QLAM tasks API that accepts them, on loopback only.
    On start it prints the `export VAR=value` lines a qlam-hpc client needs
    (AUTH_BASE_URL, QLAM_CLIENT_ID, QLAM_CLIENT_SECRET, QLAM_AUDIENCE,
    QLAM_API_URL; with --flow device QLAM_AUTH_FLOW and no secret; for you only,
    QLAM_SANDBOX_CONTROL_TOKEN and QLAM_SANDBOX_APPROVE_URL), or writes them to
    --env-file, then serves until Ctrl-C or SIGTERM.
    """
    if clients_file and client_public_keys:
        raise click.UsageError("--client-public-key is for the single client: put keys in the --clients-file instead")
    if clients_file and client_id:
        raise click.UsageError("use either --clients-file or --client-id, not both")
    settings: dict[str, Any] = {
        "token_lifetime": token_lifetime,
        "monthly_quota": monthly_quota,
        "latency": latency,
        "error_rate": error_rate,
        "seed": seed,
        "host": host,
        "port": port,
        "signing_key_file": signing_key_file,
        "state_dir": state_dir,
        "task_duration": task_duration,
        "auto_approve": auto_approve,
        "refresh_token_overlap": refresh_token_overlap,
        "refresh_token_lifetime": refresh_token_lifetime,
        "exchange_issuers": exchange_issuers,
        "exchange_audience": exchange_audience,
    }
    if qpu_modes:
        settings["qpu_modes"] = qpu_modes
    if audiences:
        settings["audiences"] = audiences
    try:
        if clients_file:
            config = SandboxConfig.from_file(clients_file, **settings)
        else:
            public_keys = [path.read_text(encoding="utf-8") for path in client_public_keys]
            config = SandboxConfig.default(client_id=client_id, public_keys=public_keys, **settings)
    except ConfigurationError as exc:
        raise _ConfigProblem(str(exc)) from None
    from ._extra import sandbox_class

    try:
        server = sandbox_class()
    except ConfigurationError as exc:
        raise _ConfigProblem(str(exc)) from None
    if flow == "token-exchange" and not config.exchange_issuers:
        raise click.UsageError("--flow token-exchange needs at least one --exchange-issuer")
    if flow == "device" and not config.device_clients:
        raise _ConfigProblem(f'--flow device needs a device client: add "device_clients" to {clients_file}')
    _serve(server(config, tls=tls), env_file, flow)


def _serve(sandbox, env_file: Path | None, flow: str) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    previous = _on_signals({sig: (lambda signum, frame: stop.set()) for sig in _SIGNALS})
    written: os.stat_result | None = None
    try:
        try:
            sandbox.start()
        except ConfigurationError as exc:  # e.g. an unusable --signing-key-file
            raise _ConfigProblem(str(exc)) from None
        except OSError as exc:  # e.g. the --port is taken
            raise click.ClickException(f"cannot start the sandbox: {exc}") from None
        # A client with public keys only has no secret to export (it signs with its private key).
        # The control token (for POST /_sandbox/...) and the link that lets a browser approve
        # device logins (it holds the token) go to the owner only, with the rest.
        env = {
            **sandbox.env(flow=flow),
            "QLAM_SANDBOX_CONTROL_TOKEN": sandbox.control_token,
            "QLAM_SANDBOX_APPROVE_URL": sandbox.approve_url,
        }
        lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items() if value is not None]
        # stderr may be a job's log that others can read: it names where the link is, never the link.
        if env_file is None:
            click.echo("\n".join(lines))
            sys.stdout.flush()
            click.echo(f"qlam-hpc sandbox serving {sandbox.url} (Ctrl-C to stop)", err=True)
            where = "printed above"
        else:
            # Only the file gets the lines: stdout may be a log file or a terminal
            # others can read, and the lines can carry the client secret.
            try:
                written = _write_private(env_file, lines)
            except OSError as exc:
                raise click.ClickException(f"cannot write {env_file}: {exc.strerror}") from None
            click.echo(f"qlam-hpc sandbox serving {sandbox.url}, environment in {env_file} (Ctrl-C to stop)", err=True)
            where = f"in {env_file}"
        click.echo(f"to approve device logins in a browser, open $QLAM_SANDBOX_APPROVE_URL ({where}) once", err=True)
        # Short waits so a dead server thread is noticed; a signal ends the wait at once.
        while not stop.wait(0.2):
            if not sandbox.running:
                raise click.ClickException("the sandbox server stopped unexpectedly")
    finally:
        if written is not None:
            # A stale file would send the next run's `until [ -s ... ]; source ...` to a dead port.
            _remove_if_ours(env_file, written)  # type: ignore[arg-type]
        sandbox.stop(grace=_STOP_GRACE)
        _on_signals(previous)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_signals(handlers: dict) -> dict:  # type: ignore[type-arg]
    """Install a handler per signal; return the handlers they replace."""
    previous = {}
    for sig, handler in handlers.items():
        # ValueError: not the main thread (an embedding program), which handles signals itself
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, handler)
    return previous


def _write_private(path: Path, lines: list[str]) -> os.stat_result:
    """Write the file readable by its owner only, atomically: a reader polling for it never sees half.
    Returns what it wrote, to tell it from a file someone else puts there later."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
            written = os.fstat(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written


def _remove_if_ours(path: Path, written: os.stat_result) -> None:
    """Remove the env file unless another run has replaced it since (then it is that run's)."""
    try:
        current = os.stat(path)
        if (current.st_dev, current.st_ino) == (written.st_dev, written.st_ino):
            path.unlink()
    except OSError:
        pass  # gone already, or not ours to remove
