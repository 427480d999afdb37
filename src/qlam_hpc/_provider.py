"""The token provider: one token for every thread, process and node that shares a store.

Lookup order, cheapest first:

1. memory — a plain attribute read; no lock, no I/O (the warm path);
2. the shared store — one small file read, never blocking;
3. single flight — take the store's refresh lock; while another process holds
   it, keep reading the store for its result (or its failure); once the lock is
   held, read the store again (the previous holder may have just published),
   and only then ask the identity provider.

A failed fetch is written to the store as a failure record so that the other
processes of a job array repeat the answer instead of each asking again. The
record carries a fingerprint of the credentials it was given for, so new
credentials (a rotated secret, a replaced key) are tried at once.

Secrets and keys are read from their sources (``_secrets.py``) only when a token
must be fetched, or when a failure record must be compared with them; a process
that finds the token, or waits for another process to publish it, reads none.
When the identity provider answers ``invalid_client``, the source is read once
more: if it now holds other credentials (rotated in Vault, a file replaced), the
request is retried once with them.

**User context** (``Settings.auth_flow == "device"``) uses the same lookup, but the
token comes from refreshing the user's login, whose refresh token *rotates*: the
identity provider spends it on use, and a spent one used again revokes the whole
login. So, under the refresh lock of the store that keeps the login:

1. the entry is read again, and nothing is sent if another process refreshed;
2. an *intent* is written first (write-ahead): if the store cannot take it, it could
   not take the next refresh token either, and the current one is left unspent;
3. the refresh token read under the lock is sent; a request the server may have
   acted on is never repeated (``_http._Retrying``);
4. the next refresh token and the access token are published in one atomic write
   before anything else (the ledger, the caller).

A refresher killed between 3 and 4 leaves its intent behind. The next holder takes
over within a poll and tries the refresh token once: it still works if the server
never acted, or if the server's rotation overlap period has not ended; otherwise
the login was lost with the killed process, the server says ``invalid_grant``,
and every process of the array stops at once with ``LoginRequired`` (exit 16).
A refused refresh drops the login from the entry, so nobody asks again.

**Grants.** How a token is obtained is a grant's business, not the provider's: each
grant is a small unit (``ClientCredentialsGrant``, ``TokenExchangeGrant``,
``RefreshGrant``) that owns its request and says whether it spends what it sends (a
rotating refresh token). The provider keeps memory → store → single flight, the
failure records and the ledger, whatever the grant. **Token exchange**
(``Settings.auth_flow == "token-exchange"``) is M2M's lookup with another grant: the
cache identity names the subject (``exchange:<iss>|<sub>``), the subject token is read
from its source at each exchange, and a failure record stands for the client
credentials *and* the subject token it was given for, so a rotated subject token
(a Kubernetes token file rewritten) is tried at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._cache import (
    CacheEntry,
    Failure,
    Identity,
    Intent,
    Login,
    active_failure,
    cached_token,
    cooldown_for,
    fallback_token,
)
from ._errors import (
    AuthError,
    CacheError,
    InvalidClient,
    LockTimeout,
    LoginRequired,
    OAuthError,
    QlamError,
    TokenLifetimeTooShort,
)
from ._log import log
from ._login import LOGIN_WARNING
from ._settings import Settings
from ._stores._base import NO_LOCK, TokenStore
from ._tokens import Token

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from contextlib import AbstractContextManager
    from typing import Any, NoReturn, overload

    from ._oauth import DeviceAuthorization, UserTokens

    # What fetches a token for the flow in use (a seam for tests): M2M and token exchange
    # call it as ``fetch(settings, *, obtained_by, clock) -> Token``, user context as
    # ``fetch(settings, refresh_token, *, obtained_by, clock) -> UserTokens``.
    Fetch = Callable[..., Any]


class ClientCredentialsGrant:
    """RFC 6749 section 4.4: the client's own token, for its credentials; nothing is spent."""

    name = "client_credentials"
    spends = None

    def __init__(self, fetch: Fetch | None = None) -> None:
        self._fetch = fetch

    def obtain(self, settings: Settings, *, obtained_by: str, clock: Callable[[], float]) -> Token:
        fetch = self._fetch
        if fetch is None:
            from ._http import fetch_token

            fetch = fetch_token
        token: Token = fetch(settings, obtained_by=obtained_by, clock=clock)
        return token

    def material(self, settings: Settings) -> str:
        """What a failure record stands for besides the client's credentials: nothing."""
        return ""


class TokenExchangeGrant(ClientCredentialsGrant):
    """RFC 8693: the subject token, read from its source at each exchange, for a token of that
    subject; the client authenticates as for client_credentials. Nothing is spent: a subject
    token may be presented again while it lasts."""

    name = "token_exchange"

    def __init__(self, principal: str | None, fetch: Fetch | None = None) -> None:
        super().__init__(fetch)
        self._principal = principal

    def obtain(self, settings: Settings, *, obtained_by: str, clock: Callable[[], float]) -> Token:
        if self._fetch is not None:
            return super().obtain(settings, obtained_by=obtained_by, clock=clock)
        from ._exchange import fetch_exchanged_token

        return fetch_exchanged_token(settings, obtained_by=obtained_by, clock=clock, expected_principal=self._principal)

    def material(self, settings: Settings) -> str:
        """The subject token as its source holds it now: a record for an earlier one does not stand."""
        from ._exchange import read_subject

        assert settings.subject_source is not None
        return read_subject(settings.subject_source, timeout=settings.http_timeout).value.reveal()


class RefreshGrant:
    """RFC 6749 section 6, user context: the login's refresh token for a new access token and
    the next refresh token. It *spends* what it sends (rotation), so the provider writes an
    intent first and never repeats a request the server may have acted on."""

    name = "refresh_token"
    spends = "refresh token"

    def __init__(self, fetch: Fetch | None = None) -> None:
        self._fetch = fetch

    def obtain(
        self, settings: Settings, refresh_token: str, *, obtained_by: str, clock: Callable[[], float]
    ) -> UserTokens:
        fetch = self._fetch
        if fetch is None:
            from ._http import refresh_tokens

            fetch = refresh_tokens
        tokens: UserTokens = fetch(settings, refresh_token, obtained_by=obtained_by, clock=clock)
        return tokens


def grant_for(settings: Settings, identity: Identity, fetch: Fetch | None = None) -> Any:
    """The grant unit of the settings' flow."""
    if settings.user_context:
        return RefreshGrant(fetch)
    if settings.token_exchange:
        return TokenExchangeGrant(identity.principal, fetch)
    return ClientCredentialsGrant(fetch)


@dataclass(frozen=True)
class TokenResult:
    """A token and where it came from: ``memory``, ``cache``, ``fetched`` or ``fallback``
    (a still-valid cached token handed out because a refresh failed)."""

    token: Token
    source: str


class TokenProvider:
    """Hands out access tokens, fetching one only when no process sharing the store has one.

    Thread-safe. ``get_token()`` on a warm provider is an attribute read and a comparison.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: TokenStore | None = None,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.identity = Identity.of(settings)
        if store is None:
            from ._stores import open_store

            store = open_store(settings)
        shared = getattr(store, "shared", None)  # a Redis or Vault store made by hand: seal it too
        if shared is not None and shared.seal is None:
            from ._sealing import seal_for

            shared.seal = seal_for(settings)
        self.store = store
        # User context: where the login (refresh token) lives; apart from the shared access
        # token only with QLAM_REFRESH_TOKEN_DIR (refresh on the login node alone).
        self.login_store: TokenStore = store
        if settings.user_context and settings.refresh_token_dir and settings.cache_enabled:
            from ._stores._file import FileStore

            self.login_store = FileStore(settings.refresh_token_dir)
        self._fetch = fetch
        #: How this provider's tokens are obtained (``ClientCredentialsGrant``, ``TokenExchangeGrant``
        #: or ``RefreshGrant``); memory, store and single flight are the provider's, whatever the grant.
        self.grant = grant_for(settings, self.identity, fetch)
        self._clock = clock
        self._memory: Token | None = None
        self._lock = threading.Lock()
        #: User context: set by ``qlam-hpc auth keep-fresh``, which then names itself in the
        #: entries it writes, so that a job whose token went stale knows whom to blame.
        self.keeper: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> TokenProvider:
        """A provider configured from ``QLAM_*`` variables (see ``Settings.from_env``)."""
        return cls(Settings.from_env(environ, **overrides))

    def get_token(self, *, min_ttl: float = 0.0) -> str:
        """An access token valid for at least ``min_ttl`` seconds more (and the refresh margin)."""
        token = self._memory
        if token is not None and token.usable(self._clock(), min_ttl):
            return token.access_token
        return self.get(min_ttl=min_ttl).token.access_token

    def get(self, *, min_ttl: float = 0.0, rejected: str | None = None) -> TokenResult:
        """A token with its source. ``rejected`` names a token the API refused (HTTP 401):
        it is never returned again, and the processes that meet it cause one new fetch."""
        token = self._memory
        if token is not None and token.access_token != rejected and token.usable(self._clock(), min_ttl):
            return TokenResult(token, "memory")
        with self._lock:
            token = self._memory  # another thread may have refreshed while we waited
            if token is not None and token.access_token != rejected and token.usable(self._clock(), min_ttl):
                return TokenResult(token, "memory")
            result = self._from_store(min_ttl, rejected)
            self._memory = result.token
            return result

    def invalidate(self, rejected: str) -> str:
        """After a 401 for ``rejected``: a different token, through the single-flight cache."""
        return self.get(rejected=rejected).token.access_token

    def current_login(self) -> Login | None:
        """User context: the login as the store keeps it (who, since when, until when)."""
        if not self.settings.user_context:
            return None
        entry = self.login_store.load(self.identity)
        return entry.login if entry is not None else None

    def principal(self) -> dict[str, str] | None:
        """User context: who the tokens act for, ``{"subject", "email"}`` (set keys only);
        token exchange: the subject token's ``{"subject", "issuer"}``; None for M2M. In user
        context, from the login where this process can read it, else the token's claims."""
        if self.settings.token_exchange and self.identity.principal:
            issuer, _, subject = self.identity.principal.removeprefix("exchange:").partition("|")
            return {"subject": subject, "issuer": issuer}
        if not self.settings.user_context:
            return None
        login = self.current_login()
        if login is not None:
            found: dict[str, object] = {"subject": login.subject, "email": login.email}
        else:
            from ._tokens import unverified_claims

            entry = self.store.load(self.identity)
            token = self._memory or (entry.token if entry is not None else None)
            claims = unverified_claims(token.access_token) or {} if token is not None else {}
            found = {"subject": claims.get("sub"), "email": claims.get("email")}
        named = {k: v for k, v in found.items() if isinstance(v, str) and v}
        return named or None

    def clear(self) -> int:
        """Forget the token, in memory and in the shared store; the number of entries changed.

        In user context the login stays (``auth logout`` ends it): only its access token
        and any recorded failure go, under the refresh lock so no refresh is lost.
        """
        with self._lock:
            self._memory = None
            if not self.settings.user_context:
                return self.store.clear(self.identity)
            with self._acquire(self.login_store, None):
                entry = self.store.load(self.identity)
                if entry is None or entry.login is None:
                    return self.store.clear(self.identity)
                self.store.save(entry._replace(token=None, failure=None, intent=None))
                return 1

    def login(
        self, *, on_code: Callable[[DeviceAuthorization], None] | None = None, timeout: float | None = None
    ) -> Login | None:
        """User context: log in with the device flow; ``on_code(authorization)`` shows the user
        where to approve (default: the URL and code on stderr). The login, or None when the
        server gave no refresh token. See ``qlam-hpc auth login``."""
        from ._login import login, show_on_stderr

        return login(self, on_code=on_code or show_on_stderr, timeout=timeout).login

    def logout(self) -> Login | None:
        """User context: forget the login everywhere the store keeps it and revoke it at the
        server; the login removed, if any. A failed revocation raises (the login is gone here)."""
        from ._login import logout

        result = logout(self)
        if result.error is not None:
            raise result.error
        return result.login

    # --- the shared store -----------------------------------------------------------------

    def _from_store(self, min_ttl: float, rejected: str | None) -> TokenResult:
        if self.settings.user_context:
            return self._user_from_store(min_ttl, rejected)
        credentials = _Credentials(self.settings, grant=self.grant)  # read from their sources on first use only
        entry = self.store.load(self.identity)
        settled = self._settled(entry, credentials, min_ttl, rejected)
        if settled is not None:
            return settled
        _check_lifetime(entry, min_ttl)

        def settle() -> TokenResult | None:
            return self._settled(self.store.load(self.identity), credentials, min_ttl, rejected)

        lock = self._acquire(self.store, settle)
        if isinstance(lock, TokenResult):
            return lock
        with lock:
            entry = self.store.load(self.identity)  # the previous holder may have just published
            settled = self._settled(entry, credentials, min_ttl, rejected)
            if settled is not None:
                return settled
            return self._fetch_and_publish(entry, credentials, min_ttl, rejected)

    def _settled(
        self, entry: CacheEntry | None, credentials: _Credentials, min_ttl: float, rejected: str | None
    ) -> TokenResult | None:
        """What the entry already settles: a token to hand out, or a failure to repeat."""
        token = cached_token(entry, self._clock(), min_ttl, rejected)
        if token is not None:
            return TokenResult(token, "cache")
        return self._replay_failure(entry, credentials, rejected)

    if TYPE_CHECKING:  # without ``settle``, only the lock ends the wait

        @overload
        def _acquire(self, store: TokenStore, settle: None) -> AbstractContextManager[object]: ...

        @overload
        def _acquire(
            self, store: TokenStore, settle: Callable[[], TokenResult | None]
        ) -> AbstractContextManager[object] | TokenResult: ...

    def _acquire(
        self, store: TokenStore, settle: Callable[[], TokenResult | None] | None
    ) -> AbstractContextManager[object] | TokenResult:
        """``store``'s refresh lock, or the result another process published while we waited
        for it (``settle`` watches the entry; None waits for the lock alone)."""
        deadline = self._clock() + self.settings.lock_timeout
        pause = 0.005
        while True:
            try:
                lock = store.try_lock(self.identity)
            except OSError as exc:
                if self.settings.user_context:
                    # Two unlocked refreshers would spend the same refresh token: the login is
                    # worth more than this call.
                    raise CacheError(
                        f"cannot lock {store.location} ({exc.strerror or exc}): not refreshing the login "
                        "without the lock, since two refreshes at once would revoke it"
                    ) from None
                _refuse_unshared_in_batch_job(store, exc.strerror or str(exc))
                log(
                    "warning",
                    f"cannot lock the token cache in {store.location} ({exc.strerror or exc}); "
                    "fetching without coordinating with other processes",
                )
                return NO_LOCK
            if lock is not None:
                return lock
            # Readers never block: while another process fetches, watch the entry for its result.
            settled = settle() if settle is not None else None
            if settled is not None:
                return settled
            if self._clock() >= deadline:
                holder = _plain(store.lock_holder(self.identity)) or "another process"
                raise LockTimeout(
                    f"{holder} has held the token refresh lock in {store.location} for more than "
                    f"{self.settings.lock_timeout:g}s without publishing a token; giving up "
                    "(is it hung or stopped? QLAM_LOCK_TIMEOUT sets the wait)"
                )
            import random  # jitter: the tasks of an array that started together do not poll in step

            time.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 1.5, 0.25)

    def _fetch_and_publish(
        self, entry: CacheEntry | None, credentials: _Credentials, min_ttl: float, rejected: str | None
    ) -> TokenResult:
        from ._jobinfo import process_label

        base = entry or CacheEntry(self.identity)
        by = process_label()
        if _in_batch_job() and not self.store.save(base):
            # A token that cannot be shared costs one request per task of the array: say so
            # before spending any (the warning above says why the store cannot be written).
            _refuse_unshared_in_batch_job(self.store, "it cannot be written")
        token, credentials = self._fetch_rotating(credentials, by)
        if isinstance(token, AuthError):
            self._publish_failure(base, token, credentials, by)
            return self._fallback_or_raise(base, token, rejected)
        self.store.save(base.with_token(token))
        if not token.usable(self._clock(), min_ttl):
            raise TokenLifetimeTooShort(min_ttl, token.lifetime)
        self._warn_about_budget()
        return TokenResult(token, "fetched")

    def check(self) -> TokenResult:
        """One token request whatever the cache holds: proves the configured credentials work.

        It counts against the monthly quota. The token is published to the store (so the
        request is not wasted), and a rejection is recorded for the other processes, as
        after any fetch; unlike ``get()``, a failure is raised, never covered by a fallback.
        """
        from ._jobinfo import process_label

        if self.settings.user_context:  # proves the login works: one refresh, whatever the cache holds
            with self._lock:
                self._memory = None
                result = self._user_from_store(0.0, rejected=None, force=True)
                self._memory = result.token
                return result
        with self._lock:
            base = self.store.load(self.identity) or CacheEntry(self.identity)
            by = process_label()
            token, credentials = self._fetch_rotating(_Credentials(self.settings, grant=self.grant), by)
            if isinstance(token, AuthError):
                self._publish_failure(base, token, credentials, by)
                raise token
            self.store.save(base.with_token(token))
            self._memory = token
            return TokenResult(token, "fetched")

    def _fetch_rotating(self, credentials: _Credentials, by: str) -> tuple[Token | AuthError, _Credentials]:
        """``(token, credentials used)`` or ``(error, credentials used)``.

        After ``invalid_client`` the credentials are read from their source again: when that
        gives others (the secret was rotated), one more request is made with them.
        """
        try:
            return self._fetch_once(credentials, by), credentials
        except InvalidClient as error:
            try:
                renewed = credentials.renewed()
            except QlamError as reread:  # e.g. Vault down now: the rejection is the answer to give
                log("warning", f"could not read the client credentials again after their rejection: {reread}")
                renewed = None
            if renewed is None:
                return error, credentials
            log(
                "warning",
                "the identity provider refused the client credentials, and their source now holds "
                "different ones (rotated?); retrying once with those",
            )
            credentials = renewed
        except AuthError as error:
            return error, credentials
        try:
            return self._fetch_once(credentials, by), credentials
        except AuthError as error:
            return error, credentials

    def _fetch_once(self, credentials: _Credentials, by: str) -> Token:
        """One fetch by the grant, recorded in the ledger whatever its outcome."""
        from ._jobinfo import job_id

        settings = credentials.settings()
        started = self._clock()
        grant = self.grant.name if self.settings.token_exchange else None  # M2M records stay as they were
        try:
            token: Token = self.grant.obtain(settings, obtained_by=by, clock=self._clock)
        except AuthError as error:
            self._record(started, job_id(), getattr(error, "error", None) or type(error).__name__, grant)
            raise
        self._record(started, job_id(), "ok", grant)
        return token

    def _publish_failure(self, base: CacheEntry, error: AuthError, credentials: _Credentials, by: str) -> None:
        cooldown = cooldown_for(
            error,
            rejected_cooldown=self.settings.rejected_cooldown,
            transient_cooldown=self.settings.transient_cooldown,
        )
        at = self._clock()
        failure = Failure.from_error(error, at=at, cooldown=cooldown, credentials=credentials.fingerprint(), by=by)
        self.store.save(base.with_failure(failure))

    def _replay_failure(
        self, entry: CacheEntry | None, credentials: _Credentials, rejected: str | None
    ) -> TokenResult | None:
        # The credentials are read and compared (a slow KDF) only for a record that stands.
        longest = self._longest_cooldown()
        failure = active_failure(entry, self._clock(), credentials.matches, longest=longest)
        if failure is None:
            return None
        log(
            "info",
            f"not asking the identity provider again: {failure.by or 'another process'} got this answer "
            f"at {_utc(failure.at)}; it stands until {_utc(failure.ends(longest))} or until the credentials change",
        )
        return self._fallback_or_raise(entry, failure.to_error(), rejected)

    def _longest_cooldown(self) -> float:
        """The longest a failure record this process writes can stand: what it believes of others'."""
        return max(self.settings.rejected_cooldown, self.settings.transient_cooldown)

    def _fallback_or_raise(self, entry: CacheEntry | None, error: QlamError, rejected: str | None) -> TokenResult:
        token = fallback_token(entry, self._clock(), rejected)
        if token is None:
            raise error
        from ._durations import format_duration

        log(
            "warning",
            f"could not refresh the token ({error}); using the cached token, "
            f"still valid for {format_duration(token.remaining(self._clock()))}",
        )
        return TokenResult(token, "fallback")

    def _record(self, at: float, job: str | None, outcome: str, grant: str | None = None) -> None:
        import os
        import socket

        record = {
            "time": at,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job": job,
            "client_id": self.settings.client_id,
            "token_url": self.settings.token_url,
            "outcome": outcome,
        }
        if grant is not None:  # user context: refresh_token, device_code
            record["grant"] = grant
        self.store.record_request(record)
        from ._audit import token_request  # the per-user audit trail: returns at once when it is off

        token_request(self, record)

    # --- user context ---------------------------------------------------------------------

    def _user_from_store(self, min_ttl: float, rejected: str | None, *, force: bool = False) -> TokenResult:
        def settle() -> TokenResult | None:
            return None if force else self._user_settled(self.store.load(self.identity), min_ttl, rejected)

        settled = settle()
        if settled is not None:
            return settled
        entry = self.store.load(self.identity)
        _check_lifetime(entry, min_ttl)
        if self._held(entry).login is None:  # nothing to refresh with: no lock needed to say so
            raise self._no_login(entry or CacheEntry(self.identity))
        lock = self._acquire(self.login_store, settle)
        if isinstance(lock, TokenResult):
            return lock
        with lock:
            settled = settle()  # the previous holder may have just refreshed
            if settled is not None:
                return settled
            return self._refresh_and_publish(min_ttl, rejected)

    def _user_settled(self, entry: CacheEntry | None, min_ttl: float, rejected: str | None) -> TokenResult | None:
        """A usable token, or a failure another process met (the login's failures are
        cleared by the next login, so no fingerprint needs comparing)."""
        if self._confirmation_due(entry):
            failure = entry.failure if entry is not None else None
            if failure is not None and failure.stands(self._clock(), longest=self._longest_cooldown()):
                if failure.error == LoginRequired.__name__:
                    raise failure.to_error()  # the check was made and the login is gone: say why
                return self._fallback_or_raise(entry, failure.to_error(), rejected)  # to be tried again
            return None  # a refresh, under the lock, tells whether the login survived a takeover
        token = cached_token(entry, self._clock(), min_ttl, rejected)
        if token is not None:
            return TokenResult(token, "cache")
        failure = entry.failure if entry is not None else None
        if failure is None or not failure.stands(self._clock(), longest=self._longest_cooldown()):
            return None
        log("info", f"not asking the identity provider again: {failure.by or 'another process'} got this answer")
        return self._fallback_or_raise(entry, failure.to_error(), rejected)

    def _confirmation_due(self, entry: CacheEntry | None) -> bool:
        """Is a takeover's late check of the login due, and can this process make it (it
        needs the login: the shared store's, or QLAM_REFRESH_TOKEN_DIR's on this node)?"""
        if entry is None or entry.confirm_after is None or self._clock() < entry.confirm_after:
            return False
        return self.login_store is self.store or bool(self.settings.refresh_token_dir)

    def _refresh_and_publish(self, min_ttl: float, rejected: str | None) -> TokenResult:
        from ._jobinfo import job_id, process_label
        from ._signals import held_signals

        by, now = process_label(), self._clock()
        entry = self.store.load(self.identity) or CacheEntry(self.identity)
        shared = self.login_store is self.store
        held = self._held(entry)
        login = held.login
        if login is None:
            raise self._no_login(entry)
        if login.expires_at <= now:
            self._lose_login(
                entry, held, LoginRequired(f"the login of {login.who} ended at {_utc(login.expires_at)}"), by
            )
        cut_short = held.intent
        confirming = held.confirm_after is not None and now >= held.confirm_after
        # From the intent to the publication of the next refresh token, SIGTERM (scancel, a time
        # limit, preemption), SIGINT and SIGHUP wait: a refresh cut short there loses the login.
        # The refresh's own deadline bounds the wait; SIGKILL cannot be held (see the takeover).
        with held_signals(f"refreshing the login of {login.who}"):
            # Write-ahead: a store that cannot take the intent could not take the next refresh token.
            if not self.login_store.save(held._replace(intent=Intent(now, by))):
                raise CacheError(
                    f"cannot write to {self.login_store.location}, so the next refresh token could not be kept: "
                    "not refreshing (the login stays as it is)"
                )
            try:
                tokens = self._send_refresh(login, by)
            except OAuthError as error:  # invalid_grant: expired, revoked, or spent by someone else
                self._record(now, job_id(), error.error, "refresh_token")
                detail = f"{error.error}: {error.description}" if error.description else error.error
                why = (
                    f"; a refresh by {_plain(cut_short.by)} at {_utc(cut_short.at)} was cut short, and the identity "
                    "provider had already spent the refresh token it left"
                    if cut_short is not None
                    else "; a refresh cut short earlier reached the identity provider late and it revoked the login"
                    if confirming
                    else ""
                )
                self._lose_login(
                    entry,
                    held,
                    LoginRequired(f"the identity provider refused the login of {login.who} ({detail}){why}"),
                    by,
                )
            except AuthError as error:  # unreachable, rate limited, garbage: the login may still be good
                failure = self._failure(error, "login", by)
                self.login_store.save(held._replace(intent=None, failure=failure))
                if not shared:
                    self.store.save(entry.with_failure(failure))
                self._record(now, job_id(), getattr(error, "error", None) or type(error).__name__, "refresh_token")
                return self._fallback_or_raise(entry, error, rejected)
            renewed = login.rotated(tokens.refresh_token, tokens.refresh_expires_in, now)
            renewed = renewed._replace(
                subject=tokens.id_claims.get("sub") or renewed.subject,
                email=tokens.id_claims.get("email") or renewed.email,
            )
            # The refresher we took over from may have sent its request before it died, and the
            # server may act on it after ours: once its deadline has passed, check the login again.
            confirm_after = cut_short.at + self.settings.retry.deadline + _LATE_REQUEST_SLACK if cut_short else None
            keeper = self.keeper or held.keeper
            # Published before anything else: the old refresh token is spent from now on.
            published = held.with_login(renewed, tokens.token)._replace(confirm_after=confirm_after, keeper=keeper)
            if not self.login_store.save(published):
                log(
                    "error",
                    f"the next refresh token could not be written to {self.login_store.location}: this token is "
                    "good, but the next refresh will be refused and you will have to log in again",
                )
            if not shared:
                self.store.save(entry.with_token(tokens.token)._replace(confirm_after=confirm_after, keeper=keeper))
        if cut_short is not None:
            log(
                "warning",
                f"a refresh by {_plain(cut_short.by)} at {_utc(cut_short.at)} did not finish (killed?); its refresh "
                f"token still worked, and the login will be checked once more after {_utc(confirm_after or now)}",
            )
        if renewed.expires_at - now < LOGIN_WARNING:
            from ._durations import format_duration

            log(
                "warning",
                f"the login of {renewed.who} ends in {format_duration(max(0.0, renewed.expires_at - now))}: "
                "run qlam-hpc auth login before then",
            )
        self._record(now, job_id(), "ok", "refresh_token")
        if not tokens.token.usable(self._clock(), min_ttl):
            raise TokenLifetimeTooShort(min_ttl, tokens.token.lifetime)
        return TokenResult(tokens.token, "fetched")

    def _held(self, entry: CacheEntry | None) -> CacheEntry:
        """The entry that keeps the login: the token's own, or the one in QLAM_REFRESH_TOKEN_DIR."""
        if self.login_store is not self.store:
            entry = self.login_store.load(self.identity)
        return entry or CacheEntry(self.identity)

    def _send_refresh(self, login: Login, by: str) -> UserTokens:
        tokens: UserTokens = self.grant.obtain(self.settings, login.refresh_token, obtained_by=by, clock=self._clock)
        return tokens

    def _failure(self, error: QlamError, credentials: str, by: str) -> Failure:
        cooldown = cooldown_for(
            error,
            rejected_cooldown=self.settings.rejected_cooldown,
            transient_cooldown=self.settings.transient_cooldown,
        )
        return Failure.from_error(error, at=self._clock(), cooldown=cooldown, credentials=credentials, by=by)

    def _lose_login(self, entry: CacheEntry, held: CacheEntry, error: LoginRequired, by: str) -> NoReturn:
        """Forget a login the identity provider refused, tell every other process, and raise.

        The refusal is repeated for as long as a rejected M2M secret's (it will not fix
        itself), so tasks that start later still learn why, not only that no login is left.
        """
        failure = Failure.from_error(
            error, at=self._clock(), cooldown=self.settings.rejected_cooldown, credentials="login", by=by
        )
        self.login_store.save(held._replace(login=None, intent=None, failure=failure))
        if self.login_store is not self.store:
            self.store.save(entry.with_failure(failure))
        raise error

    def _no_login(self, entry: CacheEntry) -> LoginRequired:
        where = self.login_store.location
        token = entry.token
        if token is not None and entry.keeper:
            return LoginRequired(
                f"the access token in {self.store.location} {_ends(token, self._clock())}; it is kept fresh "
                f"by {_plain(entry.keeper)}, whose last refresh was at {_utc(token.obtained_at)}: is it still "
                "running? (start it again where the login is kept: qlam-hpc auth keep-fresh)"
            )
        if token is not None:
            keeper = (
                f"; it was last refreshed by {token.obtained_by or 'an unknown process'}: if qlam-hpc auth "
                "keep-fresh refreshes it there, is it still running?"
                if self.settings.refresh_token_dir
                else ""
            )
            return LoginRequired(
                f"the access token in {self.store.location} {_ends(token, self._clock())} and there is no "
                f"login in {where} to refresh it with (never logged in here, logged out, or refused){keeper}"
            )
        return LoginRequired(f"not logged in: there is no login for client {self.settings.client_id} in {where}")

    def _warn_about_budget(self) -> None:
        budget = self.settings.token_budget
        if not budget:
            return
        used = count_requests(self.store, self.settings, self._clock())
        if used > 0.8 * budget:
            log("warning", f"{used} token requests this month: {used / budget:.0%} of the budget of {budget}")


def _ends(token: Token, now: float) -> str:
    """``expired at T``, or ``expires at T`` for one still valid (auth check and --min-ttl refresh early)."""
    return f"{'expired' if token.expires_at <= now else 'expires'} at {_utc(token.expires_at)}"


class _Credentials:
    """The settings with their credential read from its source, and the fingerprint of what
    was read; both made on first use, so a process that needs neither reads no secret.
    Fingerprints are salted and slow (``_oauth.credentials_fingerprint``): each recorded
    one is compared once per process, not on every poll while another process fetches."""

    def __init__(
        self, settings: Settings, resolved: Settings | None = None, *, grant: ClientCredentialsGrant | None = None
    ) -> None:
        self._settings = settings
        self._resolved = resolved
        self._fingerprint: str | None = None
        self._compared: dict[str, bool] = {}
        # Token exchange: a failure record stands for the subject token too (the grant's material).
        self._grant = grant
        self._material: str | None = None

    def material(self) -> str:
        if self._material is None:
            self._material = self._grant.material(self._settings) if self._grant is not None else ""
        return self._material

    def settings(self) -> Settings:
        if self._resolved is None:
            from ._client_auth import resolve_credentials

            self._resolved = resolve_credentials(self._settings)
        return self._resolved

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ._oauth import credentials_fingerprint

            self._fingerprint = credentials_fingerprint(self.settings(), extra=self.material())
        return self._fingerprint

    def matches(self, recorded: str) -> bool:
        """Was ``recorded`` made for these credentials?"""
        if recorded not in self._compared:
            from ._oauth import credentials_match

            self._compared[recorded] = credentials_match(self.settings(), recorded, extra=self.material())
        return self._compared[recorded]

    def renewed(self) -> _Credentials | None:
        """The credentials read again from their source, if they differ from these."""
        from ._client_auth import resolve_credentials

        again = _Credentials(self._settings, resolve_credentials(self._settings, fresh=True), grant=self._grant)
        again._material = self._material  # the client's credentials were refused, not the subject token
        return None if again.matches(self.fingerprint()) else again


def count_requests(store: TokenStore, settings: Settings, now: float) -> int:
    """Token requests made this UTC month for these settings' client and endpoint."""
    month = time.strftime("%Y-%m", time.gmtime(now))
    return len(
        [
            record
            for record in store.requests(month)
            if record.get("client_id") == settings.client_id and record.get("token_url") == settings.token_url
        ]
    )


def _in_batch_job() -> bool:
    from ._jobinfo import job_id

    return job_id() is not None


def _refuse_unshared_in_batch_job(store: TokenStore, why: str) -> None:
    """Inside a batch job, a cache that cannot be shared is an error, not a warning: every
    task of the array would fetch its own token, the very thing qlam-hpc exists to prevent."""
    if not _in_batch_job():
        return
    raise CacheError(
        f"the shared token cache {store.location} cannot be used ({why}), so every task of this job "
        "would fetch its own token: set QLAM_TOKEN_CACHE_DIR to a directory of yours that every node can "
        "write, or QLAM_TOKEN_CACHE=off to accept one token request per task"
    )


def _check_lifetime(entry: CacheEntry | None, min_ttl: float) -> None:
    """Fail before fetching when the IdP's tokens are known to be too short for ``min_ttl``."""
    if min_ttl and entry is not None and entry.token is not None and entry.token.lifetime <= min_ttl:
        raise TokenLifetimeTooShort(min_ttl, entry.token.lifetime)


# What a refresh request may take beyond the retry deadline before the server answers it.
_LATE_REQUEST_SLACK = 10.0


def _plain(text: str | None, limit: int = 120) -> str:
    """``text`` from a shared store, fit to show: plain characters only, and short (whoever can
    write the store must not choose what a user reads, such as a link to follow)."""
    if not text:
        return ""
    kept = "".join(c if c.isalnum() or c in " .:-_()@+" else "?" for c in text[:limit] if c.isascii())
    return kept.strip()


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
