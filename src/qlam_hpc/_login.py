"""User context: logging in (device flow), logging out, and keeping a login fresh.

The refresh itself is the provider's (``TokenProvider._refresh_and_publish``): every
process may need it. What is here runs on purpose, from a terminal or a login node:

* ``login`` runs the device authorization grant (RFC 8628) and publishes the login
  under the refresh lock, so a job array that is refreshing meanwhile never sees
  half of it; a login it replaces is revoked, as the user no longer holds it. The
  store is tried (a write under the lock) *before* the person is asked to approve:
  a login that could not be kept would be a live refresh token nobody holds. If the
  write still fails afterwards, the new login is revoked at once.
* ``logout`` deletes the login everywhere the store keeps it, then revokes the
  refresh token at the server (RFC 7009) where the server offers revocation.
* ``keep_fresh`` is HTCondor credmon's rule: refresh when half the access token's
  lifetime is gone. Run on a login node with ``QLAM_REFRESH_TOKEN_DIR`` there, it
  is the only holder of the refresh token; jobs then only read access tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._cache import CacheEntry, Login
from ._errors import AuthError, CacheError, ConfigurationError, QlamError
from ._log import log

if TYPE_CHECKING:
    import httpx

    from ._oauth import DeviceAuthorization
    from ._provider import TokenProvider, TokenResult
    from ._tokens import Token

# auth status and refreshes warn when a login has less than this left.
LOGIN_WARNING = 2 * 86400.0


@dataclass(frozen=True)
class LoginResult:
    login: Login | None  # None when the server gave no refresh token (no offline_access)
    token: Token
    replaced: Login | None = None  # the earlier login this one ended (revoked at the server, if it could be)
    replaced_revoked: bool = False  # True when the server confirmed revoking ``replaced``


@dataclass(frozen=True)
class LogoutResult:
    login: Login | None  # what was removed; None when there was no login
    revoked_at: str | None  # the revocation endpoint, or None (none offered, or it failed)
    error: AuthError | None  # why revocation failed, if it did


def require_user_context(provider: TokenProvider, command: str) -> None:
    if not provider.settings.user_context:
        raise ConfigurationError(
            f"{command} is for user context (QLAM_AUTH_FLOW=device, or a QLAM Shell context with "
            f"grant_type device_code); this configuration is the M2M client {provider.settings.client_id}"
        )


def show_on_stderr(authorization: DeviceAuthorization) -> None:
    """Where and what to approve, for a person at a terminal."""
    import sys

    from ._durations import format_duration

    url = authorization.verification_uri_complete or authorization.verification_uri
    sys.stderr.write(
        f"To log in, open this page in a browser (on any device):\n\n    {url}\n\n"
        f"check that it shows the code {authorization.user_code}, and approve it. "
        f"The code expires in {format_duration(authorization.expires_in)}.\nWaiting for the approval...\n"
    )
    sys.stderr.flush()


def login(
    provider: TokenProvider,
    *,
    on_code: Callable[[DeviceAuthorization], None],
    timeout: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> LoginResult:
    """Run the device flow; ``on_code`` shows the user where to approve it."""
    from ._http import poll_device_login, revoke_refresh_token, start_device_login
    from ._jobinfo import job_id, process_label
    from ._tokens import unverified_claims

    require_user_context(provider, "qlam-hpc auth login")
    settings, by = provider.settings, process_label()
    _check_writable(provider)
    authorization = start_device_login(settings, transport=transport)
    on_code(authorization)
    tokens = poll_device_login(settings, authorization, obtained_by=by, timeout=timeout, transport=transport)
    now = time.time()
    claims = {**(unverified_claims(tokens.token.access_token) or {}), **tokens.id_claims}
    new_login = None
    if tokens.refresh_token:
        lifetime = tokens.refresh_expires_in or settings.refresh_token_lifetime
        new_login = Login(tokens.refresh_token, now, now + lifetime, claims.get("sub"), claims.get("email"))
    else:
        log(
            "warning",
            "the identity provider gave no refresh token (is offline_access in QLAM_SCOPE?): the access token "
            "works until it expires, and then you must log in again",
        )
    try:
        replaced = _publish(provider, new_login, tokens.token)
    except QlamError:
        if new_login is not None:
            _revoke_unkept(provider, new_login, transport)
        raise
    provider._record(now, job_id(), "ok", "device_code")
    revoked = False
    if replaced is not None and (new_login is None or replaced.refresh_token != new_login.refresh_token):
        try:  # the old login is nobody's any more: do not leave it valid at the server
            revoked = revoke_refresh_token(settings, replaced.refresh_token, transport=transport) is not None
        except AuthError as error:
            log("warning", f"could not revoke the earlier login of {replaced.who}, which this one replaces ({error})")
    else:
        replaced = None
    return LoginResult(new_login, tokens.token, replaced, revoked)


def _check_writable(provider: TokenProvider) -> None:
    """Write the login's entry back as it is, under the refresh lock, before asking anyone to
    approve: a store that cannot keep the login fails now, not after a refresh token exists.
    (Under the lock, so a refresh that publishes meanwhile is never written over.)"""
    from ._cache import CacheEntry

    store, identity = provider.login_store, provider.identity
    with provider._acquire(store, None):
        held = store.load(identity)
        if not store.save(held or CacheEntry(identity)):
            raise CacheError(
                f"cannot write to {store.location}, where the login would be kept (see the warning above): "
                "make it writable (or set QLAM_REFRESH_TOKEN_DIR to a directory that is), then log in"
            )


def _revoke_unkept(provider: TokenProvider, new_login: Login, transport: httpx.BaseTransport | None) -> None:
    """A login that could not be written is held by no one: end it at the server, as logout would."""
    from ._http import revoke_refresh_token

    try:
        url = revoke_refresh_token(provider.settings, new_login.refresh_token, transport=transport)
    except AuthError as error:
        log(
            "warning",
            f"the login of {new_login.who} could not be kept, nor revoked ({error}): it stays valid until it expires",
        )
        return
    if url is None:
        log("warning", f"the login of {new_login.who} could not be kept; the identity provider offers no revocation")
    else:
        log("warning", f"the login of {new_login.who} could not be kept, so it was revoked at {url}")


def _publish(provider: TokenProvider, new_login: Login | None, token: Token) -> Login | None:
    """Write the login and its token under the refresh lock; the login it replaces."""
    store, login_store, identity = provider.store, provider.login_store, provider.identity
    with provider._acquire(login_store, None):
        held = login_store.load(identity) or CacheEntry(identity)
        if not login_store.save(held.with_login(new_login, token)):
            raise CacheError(
                f"logged in, but the login could not be written to {login_store.location} (see the warning "
                "above): make it writable and log in again"
            )
        if login_store is not store:
            store.save((store.load(identity) or CacheEntry(identity)).with_token(token))
    provider._memory = token
    return held.login


def logout(provider: TokenProvider, *, transport: httpx.BaseTransport | None = None) -> LogoutResult:
    """Delete the login (and its access token) from every store, then revoke it at the server."""
    from ._http import revoke_refresh_token

    require_user_context(provider, "qlam-hpc auth logout")
    with provider._acquire(provider.login_store, None):
        held = provider.login_store.load(provider.identity)
        provider.login_store.clear(provider.identity)
        if provider.login_store is not provider.store:
            provider.store.clear(provider.identity)
    provider._memory = None
    removed = held.login if held is not None else None
    from ._audit import logout as audit_logout  # who logged out (a failed revocation is the CLI's refusal)

    audit_logout(provider, removed)
    if removed is None:
        return LogoutResult(None, None, None)
    try:
        url = revoke_refresh_token(provider.settings, removed.refresh_token, transport=transport)
    except AuthError as error:
        return LogoutResult(removed, None, error)
    return LogoutResult(removed, url, None)


def keep_fresh(
    provider: TokenProvider,
    *,
    once: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> TokenResult:
    """Refresh whenever half the access token's lifetime is gone; with ``once``, check once.

    A failure that time may fix (the identity provider unreachable) is retried after a
    pause while the token in the store still has time left; a lost login ends the loop.
    """
    from ._durations import format_duration
    from ._errors import LoginRequired

    require_user_context(provider, "qlam-hpc auth keep-fresh")
    from ._jobinfo import process_label

    provider.keeper = f"qlam-hpc auth keep-fresh on {process_label()}"  # named in the entries it writes
    pause = 30.0
    while True:
        try:
            result = provider.get()
            half = result.token.lifetime / 2
            if result.token.remaining(clock()) <= half:
                result = provider.get(min_ttl=half)
        except LoginRequired:
            raise
        except AuthError as error:
            if once:
                raise
            log("warning", f"could not refresh ({error}); trying again in {format_duration(pause)}")
            sleep(pause)
            pause = min(pause * 2, 600.0)
            continue
        pause = 30.0
        from ._metrics import after_refresh  # QLAM_METRICS_TEXTFILE=DIR: the metrics with each check

        after_refresh(provider)
        token = result.token
        wake = max(1.0, token.remaining(clock()) - token.lifetime / 2)
        log("info", f"access token valid until {_utc(token.expires_at)}; next refresh in {format_duration(wake)}")
        if once:
            return result
        sleep(wake)


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
