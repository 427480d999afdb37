"""``qlam-hpc auth check``: one token request, to prove the configured credentials work.

In user context it is one refresh of the login instead: it costs no M2M quota.

Every token request counts against the client's monthly quota, so the command asks
before it makes one (``--yes`` answers for a script); without a terminal to ask on,
it refuses rather than spend quota unasked. The token it gets goes to the shared
cache, so the request is not wasted.
"""

from __future__ import annotations

import sys
import time

import click

from .._settings import Settings


def auth_check(settings: Settings, yes: bool) -> None:
    from .._client_auth import choose_method, uses_private_key
    from .._discovery import known
    from .._durations import format_duration
    from .._provider import TokenProvider
    from ._output import utc

    where = settings.discovery_url if settings.discovers_endpoint else settings.token_url
    if settings.user_context:  # a refresh: no M2M quota to protect, nothing to ask
        provider = TokenProvider(settings)
        result = provider.check()
        login = provider.current_login()
        who = login.who if login is not None else "the user"
        click.echo(
            f"ok: the identity provider refreshed the login of {who}; token valid until "
            f"{utc(result.token.expires_at)} ({format_duration(result.token.remaining(time.time()))}), "
            "now in the shared cache"
        )
        return
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(
                "auth check makes one token request, which counts against the monthly quota: confirm with --yes"
            )
        question = (
            f"This makes one token request to {where} for client {settings.client_id}; "
            "it counts against the client's monthly quota. Continue?"
        )
        if not click.confirm(question, default=False, err=True):
            raise click.Abort()
    result = TokenProvider(settings).check()
    token = result.token
    discovered = known(settings.discovery_url)
    method = choose_method(settings, discovered.auth_methods if discovered else None)
    credential = settings.private_key if uses_private_key(settings) else settings.client_secret
    source = f" from {credential.describe()}" if credential is not None else ""
    now = time.time()
    scopes = f", scopes {token.scope}" if token.scope else ""
    click.echo(
        f"ok: the identity provider accepted client {settings.client_id} ({method}{source}); "
        f"token valid until {utc(token.expires_at)} ({format_duration(token.remaining(now))}){scopes}, "
        "now in the shared cache"
    )
