"""``qlam-hpc auth login`` and ``auth logout``: what the user sees of the device flow."""

from __future__ import annotations

import json
import sys
import time

import click

from .._durations import format_duration
from .._login import login, logout, show_on_stderr
from ._output import utc

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from .._oauth import DeviceAuthorization
    from .._provider import TokenProvider


def run_login(provider: TokenProvider, as_json: bool, timeout: float | None) -> None:
    def show(authorization: DeviceAuthorization) -> None:
        if as_json:
            document = {
                "verification_uri": authorization.verification_uri,
                "verification_uri_complete": authorization.verification_uri_complete,
                "user_code": authorization.user_code,
                "expires_in": int(authorization.expires_in),
                # RFC 8628 makes it an integer; a float would trip strict portal code.
                "interval": max(1, round(authorization.interval)),
            }
            sys.stdout.write(json.dumps(document) + "\n")
            sys.stdout.flush()
            return
        show_on_stderr(authorization)

    result = login(provider, on_code=show, timeout=timeout)
    who = result.login.who if result.login else (provider.principal() or {}).get("subject", "an unknown user")
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "logged_in": True,
                    "subject": result.login.subject if result.login else None,
                    "email": result.login.email if result.login else None,
                    "login_expires_at": utc(result.login.expires_at) if result.login else None,
                    "store": provider.login_store.location,
                    "replaced": result.replaced.who if result.replaced else None,
                }
            )
            + "\n"
        )
        return
    if result.login is None:
        click.echo(f"logged in as {who}, without a refresh token: until {utc(result.token.expires_at)}", err=True)
    else:
        lasts = format_duration(result.login.expires_at - time.time())
        click.echo(
            f"logged in as {who}; the login lasts until {utc(result.login.expires_at)} ({lasts}) and is kept in "
            f"{provider.login_store.location}",
            err=True,
        )
    if result.replaced is not None:
        # A second login ends the first: whoever was logged in here (perhaps someone else) should know.
        earlier = f"replaced the earlier login of {result.replaced.who} in {provider.login_store.location}"
        if result.replaced_revoked:
            click.echo(f"{earlier} and revoked it at the identity provider", err=True)
        else:
            click.echo(
                f"{earlier}; it was not revoked at the identity provider, where it stays valid until "
                f"{utc(result.replaced.expires_at)}",
                err=True,
            )


def run_logout(provider: TokenProvider) -> None:
    result = logout(provider)
    if result.login is None:
        click.echo(f"not logged in (no login in {provider.login_store.location})", err=True)
        return
    removed = f"removed the login of {result.login.who} from {provider.login_store.location}"
    if result.error is not None:
        result.error.message = f"{removed}, but could not revoke it at the identity provider: {result.error}"
        raise result.error
    if result.revoked_at is None:
        click.echo(
            f"{removed}; the identity provider offers no revocation, so the refresh token stays valid there "
            f"until {utc(result.login.expires_at)}",
            err=True,
        )
        return
    click.echo(f"{removed} and revoked it at {result.revoked_at}", err=True)
