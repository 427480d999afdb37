"""Settings as value objects. The environment is read in one place: ``Settings.from_env``.

The warm ``qlam-hpc token`` path builds a Settings, so this module imports
nothing beyond ``os`` and ``collections``: value objects are namedtuples (as the
standard library's own ``urllib.parse.SplitResult`` and ``os.stat_result`` are),
and URLs are split by hand (``_urls``) rather than through ``urllib.parse``.

Settings sit on top of the credential modules, never beside them: ``_urls`` (URL
rules) and ``_secrets`` (``Secret`` and the secret sources) import nothing of this
module, ``_qsh`` (QLAM Shell's config) only ``_secrets`` and ``_exchange`` (the subject
token's sources); this module imports them
(``_secrets`` and ``_qsh`` only when a setting needs them). ``Secret``,
``secret_source`` and the URL helpers are still importable from here.
"""

from __future__ import annotations

import os
from collections import namedtuple

from ._errors import ConfigurationError
from ._urls import base_url_for, checked_url, host_of, is_loopback, token_url_for  # noqa: F401 - re-exported

_host_of = host_of  # the name other modules import

# Secrets and their sources live in _secrets.py, which imports nothing of this module;
# the names are kept here for the modules and callers that import them from Settings'
# module, loaded only when asked for (the warm token path never needs them).
_FROM_SECRETS = ("Secret", "secret_source", "SECRET_REFERENCE_PREFIXES")


TYPE_CHECKING = False  # typing itself costs the warm token path milliseconds
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping
    from typing import Any, NamedTuple

    from ._exchange import SubjectSource
    from ._qsh import QshClient
    from ._secrets import SECRET_REFERENCE_PREFIXES as SECRET_REFERENCE_PREFIXES
    from ._secrets import Secret as Secret
    from ._secrets import SecretSource
    from ._secrets import secret_source as secret_source

    # ``note(setting, where)``: records where a setting came from (``build_settings``).
    _Note = Callable[[str, str], None]
else:

    def __getattr__(name: str) -> object:
        if name in _FROM_SECRETS:
            from . import _secrets

            return getattr(_secrets, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_AUDIENCE = "https://api.quera.com"

# Value objects are namedtuples (see the module's docstring); the type checker reads the
# same fields, typed, from a NamedTuple that never runs.
if TYPE_CHECKING:  # pragma: no cover

    class _RetryFields(NamedTuple):
        attempts: int = 5
        deadline: float = 60.0
        initial_delay: float = 0.5
        max_delay: float = 10.0

else:
    _RetryFields = namedtuple(
        "_RetryFields", "attempts deadline initial_delay max_delay", defaults=(5, 60.0, 0.5, 10.0)
    )


class RetryPolicy(_RetryFields):
    """Bounds for retrying transient failures: ``attempts``, total seconds (``deadline``),
    and the backoff curve (``initial_delay`` doubling up to ``max_delay``, with full jitter)."""

    __slots__ = ()


# How long a task waits for another task's fetch before LockTimeout (exit 9). Long enough
# for a crashed node's lock to come free on NFSv4: the server drops a dead client's locks
# only once its lease (Linux knfsd: 90 s) has run out unrenewed, and after a server
# restart no lock is granted before its grace period (90 s more) ends. Waiting just the
# lease (the old 90 s) gave up at the very moment the lock came free. 240 s covers lease
# plus grace (180 s), the server's scan for expired clients and a waiter's poll, and is
# still well past the longest fetch (QLAM_RETRY_DEADLINE 60 s plus one QLAM_HTTP_TIMEOUT).
DEFAULT_LOCK_TIMEOUT = 240.0

CLIENT_CREDENTIALS = "client_credentials"
DEVICE = "device"
TOKEN_EXCHANGE = "token-exchange"
# What a user-context login asks for when QLAM_SCOPE does not say: an ID token (who logged
# in) and a refresh token (offline_access), as QuEra's own tools ask.
DEFAULT_USER_SCOPE = "openid email profile offline_access"
DEFAULT_REFRESH_TOKEN_LIFETIME = 15 * 86400.0
# How `auth status` and `doctor` name each flow.
_FLOW_LABELS = {
    CLIENT_CREDENTIALS: "M2M (client credentials)",
    DEVICE: "user context (device login)",
    TOKEN_EXCHANGE: "token exchange (RFC 8693)",
}


def flow_label(flow: str) -> str:
    """The flow (``Settings.auth_flow``) as the CLI names it to users."""
    return _FLOW_LABELS.get(flow, _FLOW_LABELS[CLIENT_CREDENTIALS])


CLIENT_AUTH_METHODS = ("client_secret_post", "client_secret_basic", "private_key_jwt")
ASSERTION_ALGORITHMS = ("RS256", "PS256", "ES256")
# Flags of the CLI that override settings, to say where a value came from.
_FLAGS = {
    "client_id": "--client-id",
    "audience": "--audience",
    "auth_base_url": "--auth-base-url",
    "scope": "--scope",
    "cache_dir": "--cache-dir",
    "context": "--context",
}


if TYPE_CHECKING:  # pragma: no cover

    class _SettingsFields(NamedTuple):
        client_id: str  # the M2M client id
        audience: str  # the API the token is for
        # the token endpoint: QLAM_TOKEN_URL, {AUTH_BASE_URL}/oauth/token, or discovery_url (see there)
        token_url: str
        client_secret: Secret | SecretSource | None = None  # resolved only to fetch
        scope: str | None = None  # space-separated scopes to request, or None
        cache_dir: str | None = None  # None means default_cache_dir()
        cache_enabled: bool = True  # False: no sharing at all (QLAM_TOKEN_CACHE=off)
        token_budget: int | None = None  # monthly token requests to warn about above 80 %
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT  # seconds a waiter waits for another process's fetch
        http_timeout: float = 10.0  # seconds per HTTP request
        retry: RetryPolicy = RetryPolicy()
        rejected_cooldown: float = 300.0  # seconds other processes repeat a rejection (invalid_client, ...)
        transient_cooldown: float = 15.0  # seconds other processes repeat an outage or a garbage answer
        # Added for other authorization servers and credential kinds; defaults keep Auth0's behaviour.
        private_key: Secret | SecretSource | None = None  # a PEM private key for private_key_jwt
        key_id: str | None = None  # the ``kid`` header of client assertions
        # RS256, PS256, ES256, or None: RS256 for an RSA key, ES256 for an EC key
        assertion_alg: str | None = None
        # client_secret_post | client_secret_basic | private_key_jwt | None: from the credentials
        client_auth: str | None = None
        audience_param: str = "audience"  # "audience" (Auth0) or "resource" (RFC 8707)
        # read the token endpoint (when token_url is this URL) and auth method here
        discovery_url: str | None = None
        # aud of client assertions; None: the token endpoint; "issuer": discovered
        assertion_audience: str | None = None
        # QLAM_TOKEN_STORE (redis://, rediss://, vault://, file://); None: the file store in cache_dir
        token_store: str | None = None
        token_store_password: Secret | None = None  # QLAM_REDIS_PASSWORD or REDIS_PASSWORD
        # User context (QLAM_AUTH_FLOW=device): a person's login, refreshed by every process single-flight.
        auth_flow: str = CLIENT_CREDENTIALS  # "client_credentials" (M2M, the default) or "device" (user context)
        device_authorization_url: str | None = None  # RFC 8628 endpoint; None: from the discovery document
        # RFC 7009 endpoint; None: from the discovery document (or the server has none)
        revocation_url: str | None = None
        # seconds a login lasts when the server does not say (QLAM: 15 days)
        refresh_token_lifetime: float = DEFAULT_REFRESH_TOKEN_LIFETIME
        refresh_token_dir: str | None = None  # keep the login (refresh token) here, apart from the access token
        # (variable, path): the CA bundle named by SSL_CERT_FILE, SSL_CERT_DIR or REQUESTS_CA_BUNDLE
        tls_trust: tuple[str, str] | None = None
        # Token exchange (QLAM_AUTH_FLOW=token-exchange): where the subject token is read from at each
        # exchange, its RFC 8693 type (None: urn:ietf:params:oauth:token-type:jwt), an actor token's file.
        subject_source: SubjectSource | None = None
        subject_token_type: str | None = None
        actor_token_file: str | None = None

else:
    _SettingsFields = namedtuple(
        "_SettingsFields",
        "client_id audience token_url client_secret scope cache_dir cache_enabled token_budget lock_timeout "
        "http_timeout retry rejected_cooldown transient_cooldown private_key key_id assertion_alg client_auth "
        "audience_param discovery_url assertion_audience token_store token_store_password auth_flow "
        "device_authorization_url revocation_url refresh_token_lifetime refresh_token_dir tls_trust "
        "subject_source subject_token_type actor_token_file",
        defaults=(
            None, None, None, True, None, DEFAULT_LOCK_TIMEOUT, 10.0, RetryPolicy(), 300.0, 15.0,
            None, None, None, None, "audience", None, None,
            None, None,
            CLIENT_CREDENTIALS, None, None, DEFAULT_REFRESH_TOKEN_LIFETIME, None, None,
            None, None, None,
        ),
    )  # fmt: skip


class Settings(_SettingsFields):
    """Everything qlam-hpc needs to obtain and cache a token. Immutable; ``with_`` copies."""

    __slots__ = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``QLAM_*`` variables; keyword overrides (CLI flags) win over them.

        Overrides whose value is ``None`` are ignored, so CLI options can be passed as-is.
        ``context`` (or ``QLAM_CONTEXT``) picks a QLAM Shell context, whose client fills in
        what the environment leaves out. Secrets are only *named* here, never read.
        """
        return build_settings(environ, overrides)

    def with_(self, **changes: Any) -> Settings:
        return self._replace(**changes)

    def __repr__(self) -> str:
        # The store URL may carry the Redis password (redis://:pw@host): shown without it.
        fields = self._asdict()
        fields["token_store"] = redact_url(self.token_store)
        return "Settings(" + ", ".join(f"{name}={value!r}" for name, value in fields.items()) + ")"

    @property
    def cache_path(self) -> str:
        """The cache directory in use: ``cache_dir``, or the per-user default."""
        return self.cache_dir or default_cache_dir(os.environ)

    @property
    def user_context(self) -> bool:
        """True for a person's login (device flow, refresh tokens); False for M2M."""
        return self.auth_flow == DEVICE

    @property
    def token_exchange(self) -> bool:
        """True when tokens come from exchanging a subject token (RFC 8693)."""
        return self.auth_flow == TOKEN_EXCHANGE

    @property
    def discovers_endpoint(self) -> bool:
        """True when the token endpoint is to be read from the discovery document."""
        return self.discovery_url is not None and self.token_url == self.discovery_url


def build_settings(
    environ: Mapping[str, str] | None, overrides: dict[str, Any], origins: dict[str, str] | None = None
) -> Settings:
    """``Settings.from_env``; with ``origins``, also say where each setting came from (never its value).

    ``origins`` is filled as settings are read, so after a ``ConfigurationError`` it still
    holds everything read before it (``qlam-hpc doctor`` shows both).
    """
    from ._tls import ca_setting

    env = os.environ if environ is None else environ
    given = {k: v for k, v in overrides.items() if v is not None}

    def note(name: str, where: str) -> None:
        if origins is not None:
            origins[name] = where

    def pick(name: str, variable: str) -> str | None:
        if name in given:
            note(name, f"option {_FLAGS[name]}" if name in _FLAGS else "keyword argument")
            picked: str | None = given.pop(name)
            return picked
        value = env.get(variable) or None
        if value:
            note(name, f"environment {variable}")
        return value

    context = pick("context", "QLAM_CONTEXT")
    client_id = pick("client_id", "QLAM_CLIENT_ID")
    base_url = pick("auth_base_url", "AUTH_BASE_URL")
    token_url = pick("token_url", "QLAM_TOKEN_URL")
    audience = pick("audience", "QLAM_AUDIENCE")
    scope = pick("scope", "QLAM_SCOPE")
    flow = _auth_flow(env.get("QLAM_AUTH_FLOW"))
    if flow:
        note("auth_flow", "environment QLAM_AUTH_FLOW")
    secret = _credential(env, "QLAM_CLIENT_SECRET", note, "client_secret")
    key = _credential(env, "QLAM_CLIENT_PRIVATE_KEY", note, "private_key")
    for name in ("client_secret", "private_key"):
        if isinstance(given.get(name), str):  # a Python caller's value or reference, in the same notation
            note(name, "keyword argument")
            from ._secrets import secret_source

            given[name] = secret_source(given[name], f"the {name} argument", env)
    qsh = None
    # QLAM Shell's config is read only when asked for by name, or when the environment does
    # not name the client: batch jobs that export QLAM_* never pay for reading JSON.
    if context or not client_id or not (base_url or token_url):
        from ._qsh import load_client

        qsh = load_client(env, context, flow)
    if qsh is not None:
        where = qsh.origin
        if flow is None:
            flow = qsh.flow
            note("auth_flow", f"grant_type {qsh.grant_type} of {where}")
        found = {"client_id": client_id, "auth_base_url": base_url, "audience": audience, "scope": scope}
        for name, value in found.items():
            if not value and getattr(qsh, name):  # the environment wins; the file fills the gaps
                found[name] = getattr(qsh, name)
                note(name, where)
        client_id, base_url, audience, scope = found.values()
        if flow == DEVICE and qsh.flow == DEVICE and qsh.tenant and not scope:
            # QuEra's tools pass the tenant as an extra scope of the device login.
            scope = f"{DEFAULT_USER_SCOPE} organization:{qsh.tenant}"
            note("scope", where)
        if secret is None and key is None and qsh.flow in (CLIENT_CREDENTIALS, TOKEN_EXCHANGE):
            secret, key = qsh.credentials(env)
            if secret is not None:
                note("client_secret", where)
            if key is not None:
                note("private_key", where)
    missing = f"; {qsh.origin} has none either" if qsh is not None else ""
    if flow is None:
        flow = CLIENT_CREDENTIALS
        note("auth_flow", "default")
    if not client_id:
        kind = "the login's public client id" if flow == DEVICE else "the M2M client id from your QLAM admin"
        raise ConfigurationError(f"QLAM_CLIENT_ID is not set ({kind}){missing}")
    discovery_url = _discovery_url(env.get("QLAM_DISCOVERY"), base_url)
    if discovery_url:
        note("discovery_url", "environment QLAM_DISCOVERY")
    if token_url:
        token_url = checked_url(token_url, "QLAM_TOKEN_URL")
    elif discovery_url:
        token_url = discovery_url
        note("token_url", "discovery document (QLAM_DISCOVERY)")
    elif base_url:
        token_url = token_url_for(base_url)
        note("token_url", "AUTH_BASE_URL + /oauth/token")
    else:
        raise ConfigurationError(
            "AUTH_BASE_URL is not set (the identity provider's host, e.g. quera-identity.us.auth0.com)" + missing
        )
    if not audience:
        note("audience", "default")
    if flow == DEVICE and not scope:
        scope = DEFAULT_USER_SCOPE
        note("scope", "default for user context")
    user_endpoints = _user_endpoints(env, flow, base_url, discovery_url, note)
    exchange = _exchange_settings(env, flow, base_url or token_url, note, qsh)
    cache_dir = pick("cache_dir", "QLAM_TOKEN_CACHE_DIR")
    if not cache_dir:
        note("cache_dir", "default")
    settings = Settings(
        client_id=client_id,
        audience=audience or DEFAULT_AUDIENCE,
        token_url=token_url,
        client_secret=secret,
        scope=scope,
        cache_dir=os.path.expanduser(cache_dir) if cache_dir else default_cache_dir(env),
        cache_enabled=_flag(env.get("QLAM_TOKEN_CACHE") or "on", "QLAM_TOKEN_CACHE"),
        token_budget=_positive_int(env.get("QLAM_TOKEN_BUDGET"), "QLAM_TOKEN_BUDGET"),
        lock_timeout=_seconds(env.get("QLAM_LOCK_TIMEOUT"), "QLAM_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT),
        http_timeout=_seconds(
            env.get("QLAM_HTTP_TIMEOUT"), "QLAM_HTTP_TIMEOUT", qsh.timeout if qsh is not None and qsh.timeout else 10.0
        ),
        retry=RetryPolicy(
            attempts=_positive_int(env.get("QLAM_RETRY_ATTEMPTS"), "QLAM_RETRY_ATTEMPTS") or 5,
            deadline=_seconds(env.get("QLAM_RETRY_DEADLINE"), "QLAM_RETRY_DEADLINE", 60.0),
        ),
        private_key=key,
        key_id=env.get("QLAM_CLIENT_KEY_ID") or (qsh.key_id if qsh is not None else None) or None,
        assertion_alg=_choice(env.get("QLAM_CLIENT_ASSERTION_ALG"), "QLAM_CLIENT_ASSERTION_ALG", ASSERTION_ALGORITHMS),
        client_auth=_choice(env.get("QLAM_CLIENT_AUTH_METHOD"), "QLAM_CLIENT_AUTH_METHOD", CLIENT_AUTH_METHODS),
        audience_param=_choice(env.get("QLAM_AUDIENCE_PARAM"), "QLAM_AUDIENCE_PARAM", ("audience", "resource"))
        or "audience",
        discovery_url=discovery_url,
        assertion_audience=_assertion_audience(env.get("QLAM_CLIENT_ASSERTION_AUD"), base_url, discovery_url),
        token_store=pick("token_store", "QLAM_TOKEN_STORE"),
        token_store_password=_redis_password(env),
        auth_flow=flow,
        device_authorization_url=user_endpoints[0],
        revocation_url=user_endpoints[1],
        refresh_token_lifetime=_seconds(
            env.get("QLAM_REFRESH_TOKEN_LIFETIME"), "QLAM_REFRESH_TOKEN_LIFETIME", DEFAULT_REFRESH_TOKEN_LIFETIME
        ),
        refresh_token_dir=os.path.expanduser(env["QLAM_REFRESH_TOKEN_DIR"])
        if env.get("QLAM_REFRESH_TOKEN_DIR")
        else None,
        tls_trust=ca_setting(env)
        or (
            (f"http_client.verify_ssl of {qsh.origin}", qsh.verify_ssl) if qsh is not None and qsh.verify_ssl else None
        ),
        subject_source=exchange[0],
        subject_token_type=exchange[1],
        actor_token_file=exchange[2],
    )
    if settings.refresh_token_dir:
        note("refresh_token_dir", "environment QLAM_REFRESH_TOKEN_DIR")
    settings = settings._replace(**given) if given else settings
    if settings.user_context:
        _check_refresh_token_store(settings, env)
    return settings


def _auth_flow(value: str | None) -> str | None:
    """QLAM_AUTH_FLOW: ``device`` (user context) or ``client_credentials``/``m2m``; None when unset."""
    if not value or not value.strip():
        return None
    text = value.strip().lower()
    if text in ("device", "device_code", "user"):
        return DEVICE
    if text in ("client_credentials", "m2m"):
        return CLIENT_CREDENTIALS
    if text in ("token-exchange", "token_exchange", "exchange"):
        return TOKEN_EXCHANGE
    raise ConfigurationError(
        f"QLAM_AUTH_FLOW={value!r}: use device (user context), client_credentials (M2M) "
        "or token-exchange (a subject token the job already has)"
    )


def _exchange_settings(
    env: Mapping[str, str], flow: str, idp_url: str, note: _Note, qsh: QshClient | None = None
) -> tuple[SubjectSource | None, str | None, str | None]:
    """``(subject_source, subject_token_type, actor_token_file)`` for token exchange; Nones otherwise.
    Each comes from the environment, else from the QLAM Shell context's provider (``qsh``).
    Nothing is read here: the subject token is read at each exchange."""
    if flow != TOKEN_EXCHANGE:
        return None, None, None
    from ._exchange import DEFAULT_SUBJECT_TOKEN_TYPE, SOURCE_VARIABLES, is_token_type, source_from_env

    # Any QLAM_SUBJECT_TOKEN_* variable wins over the context's source, and the context's
    # comes before GitHub's and GitLab's variables: the file names it on purpose, while
    # those are merely present in a CI job.
    named = any((env.get(name) or "").strip() for name, _ in SOURCE_VARIABLES)
    source = qsh.subject_source() if qsh is not None and not named else None
    if qsh is not None and source is not None:
        note("subject_source", qsh.origin)
    else:
        try:
            source = source_from_env(env, base_url_for(idp_url))
        except ConfigurationError:
            if qsh is None or named:
                raise
            raise ConfigurationError(
                f"token exchange ({qsh.origin}) needs a subject token: name its source there "
                "(subject_token_file, subject_token_command or subject_token: env:NAME), or set "
                "QLAM_SUBJECT_TOKEN_FILE, QLAM_SUBJECT_TOKEN_COMMAND or QLAM_SUBJECT_TOKEN_VARIABLE"
            ) from None
        note("subject_source", source.describe())
    token_type = (env.get("QLAM_SUBJECT_TOKEN_TYPE") or "").strip()
    if token_type:
        if not is_token_type(token_type):
            raise ConfigurationError(
                f"QLAM_SUBJECT_TOKEN_TYPE={token_type!r}: expected a URI such as urn:example:ci-jwt"
            )
        note("subject_token_type", "environment QLAM_SUBJECT_TOKEN_TYPE")
    elif qsh is not None and qsh.subject_token_type:  # checked by _qsh
        token_type = qsh.subject_token_type
        note("subject_token_type", qsh.origin)
    else:
        note("subject_token_type", "default")
    actor = (env.get("QLAM_ACTOR_TOKEN_FILE") or "").strip() or None
    if actor:
        note("actor_token_file", "environment QLAM_ACTOR_TOKEN_FILE")
    elif qsh is not None and qsh.actor_token_file:
        actor = qsh.actor_token_file
        note("actor_token_file", qsh.origin)
    return source, token_type or DEFAULT_SUBJECT_TOKEN_TYPE, os.path.expanduser(actor) if actor else None


def _user_endpoints(
    env: Mapping[str, str], flow: str, base_url: str | None, discovery_url: str | None, note: _Note
) -> tuple[str | None, str | None]:
    """``(device_authorization_url, revocation_url)`` for user context; ``(None, None)`` for M2M.

    An explicit variable wins; with discovery, None means "read it from the document";
    else Auth0's paths under AUTH_BASE_URL.
    """
    if flow != DEVICE:
        return None, None
    found: list[str | None] = []
    for variable, path, name in (
        ("QLAM_DEVICE_AUTHORIZATION_URL", "/oauth/device/code", "device_authorization_url"),
        ("QLAM_REVOCATION_URL", "/oauth/revoke", "revocation_url"),
    ):
        if env.get(variable):
            found.append(checked_url(env[variable], variable))
            note(name, f"environment {variable}")
        elif discovery_url:
            found.append(None)
            note(name, "discovery document (QLAM_DISCOVERY)")
        elif base_url:
            found.append(base_url_for(base_url) + path)
            note(name, f"AUTH_BASE_URL + {path}")
        else:
            raise ConfigurationError(
                f"user context needs the identity provider: set AUTH_BASE_URL, QLAM_DISCOVERY or {variable}"
            )
    return found[0], found[1]


def _check_refresh_token_store(settings: Settings, env: Mapping[str, str]) -> None:
    """Refresh tokens stay where only their owner can read them: a Redis, or a Vault path
    that a policy may open to others, is refused unless the user opts in
    (QLAM_SHARED_REFRESH_TOKENS=allow) or keeps them elsewhere (QLAM_REFRESH_TOKEN_DIR)."""
    if not settings.cache_enabled:
        raise ConfigurationError(
            "QLAM_TOKEN_CACHE=off cannot be used in user context: the login (refresh token) must be kept in the "
            "store, and processes that refresh on their own would spend each other's refresh tokens"
        )
    store = (settings.token_store or "").strip().lower()
    if settings.refresh_token_dir:
        return
    if store.startswith(("redis://", "rediss://")):
        shared, readers = "a Redis", "whoever can read that Redis"
    elif store.startswith("vault://"):
        shared, readers = "a Vault path", "whoever the Vault policies let read that path"
    else:
        return
    if (env.get("QLAM_SHARED_REFRESH_TOKENS") or "").strip().lower() == "allow":
        return
    raise ConfigurationError(
        f"QLAM_TOKEN_STORE names {shared}, and in user context the store would hold your refresh token: "
        f"{readers} could act as you for weeks. Keep the login in a directory of your own "
        "(QLAM_REFRESH_TOKEN_DIR), use the file store, or accept it with QLAM_SHARED_REFRESH_TOKENS=allow"
    )


def redact_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``********``: in its userinfo
    (``redis://user:pw@host``) and in a ``password=`` query parameter (redis-py reads both)."""
    if not url or not isinstance(url, str):
        return url
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:********@{host}" if colon else authority
    if "?" in tail or "?" in authority:
        path, _, query = (slash + tail).partition("?") if slash else ("", "", "")
        if not slash:
            authority, _, query = authority.partition("?")
        parts = [
            part.split("=", 1)[0] + "=********" if part.split("=", 1)[0].lower() == "password" else part
            for part in query.split("&")
        ]
        return f"{scheme}://{authority}{path}?{'&'.join(parts)}"
    return f"{scheme}://{authority}{slash}{tail}"


def _redis_password(env: Mapping[str, str]) -> Secret | None:
    from ._secrets import Secret

    for variable in ("QLAM_REDIS_PASSWORD", "REDIS_PASSWORD"):
        if env.get(variable):
            return Secret(env[variable], variable)
    return None


def _credential(env: Mapping[str, str], variable: str, note: _Note, name: str) -> Secret | SecretSource | None:
    """The secret source named by ``variable`` or ``variable_FILE`` (never both), or None. No I/O."""
    value = env.get(variable) or None
    path = env.get(variable + "_FILE") or None
    if value and path:
        raise ConfigurationError(f"both {variable} and {variable}_FILE are set: keep one")
    if path:
        from ._secrets import FileSecret

        note(name, f"environment {variable}_FILE")
        return FileSecret(os.path.expanduser(path), origin=f"{variable}_FILE")
    if value:
        from ._secrets import secret_source

        note(name, f"environment {variable}")
        return secret_source(value, variable, env)
    return None


def default_cache_dir(env: Mapping[str, str]) -> str:
    """``$XDG_CACHE_HOME/qlam-hpc``, else ``~/.cache/qlam-hpc``: per user, and on clusters
    usually on the shared home filesystem, so every node of a job array sees it."""
    base = env.get("XDG_CACHE_HOME")
    if base and os.path.isabs(base):
        return os.path.join(base, "qlam-hpc")
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".cache", "qlam-hpc")


def _discovery_url(value: str | None, base_url: str | None) -> str | None:
    """QLAM_DISCOVERY: off (default), on (the OpenID configuration under AUTH_BASE_URL), or the URL."""
    if not value or not value.strip():
        return None
    if "://" in value:
        return checked_url(value, "QLAM_DISCOVERY")
    if not _flag(value, "QLAM_DISCOVERY"):
        return None
    if not base_url:
        raise ConfigurationError(
            "QLAM_DISCOVERY=on needs AUTH_BASE_URL: the document is {AUTH_BASE_URL}/.well-known/openid-configuration"
        )
    return base_url_for(base_url) + "/.well-known/openid-configuration"


def _assertion_audience(value: str | None, base_url: str | None, discovery_url: str | None) -> str | None:
    """QLAM_CLIENT_ASSERTION_AUD: ``token_endpoint`` (default, RFC 7523), ``issuer``, or a URL.

    Auth0 documents its tenant URL with a trailing slash as the audience of client
    assertions; ``issuer`` gives that (``{AUTH_BASE_URL}/``), or with discovery the
    document's ``issuer``.
    """
    text = (value or "").strip()
    if not text or text.lower() == "token_endpoint":
        return None
    if text.lower() == "issuer":
        if discovery_url:
            return "issuer"  # the discovery document's, read when fetching
        if not base_url:
            raise ConfigurationError("QLAM_CLIENT_ASSERTION_AUD=issuer needs AUTH_BASE_URL (or QLAM_DISCOVERY)")
        return base_url_for(base_url) + "/"
    if "://" not in text:
        raise ConfigurationError(f"QLAM_CLIENT_ASSERTION_AUD={value!r}: use token_endpoint, issuer or a URL")
    # A trailing slash is kept: Auth0's audience is the tenant URL *with* one.
    return checked_url(text, "QLAM_CLIENT_ASSERTION_AUD") + ("/" if text.endswith("/") else "")


def _choice(value: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    if not value or not value.strip():
        return None
    text = value.strip()
    for option in allowed:
        if text.lower() == option.lower():
            return option
    raise ConfigurationError(f"{name}={value!r}: use one of {', '.join(allowed)}")


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "on", "true", "yes"):
        return True
    if lowered in ("0", "off", "false", "no"):
        return False
    raise ConfigurationError(f"{name}={value!r}: use on or off")


def _positive_int(value: str | None, name: str) -> int | None:
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ConfigurationError(f"{name}={value!r}: expected a positive whole number")
    return number


def _seconds(value: str | None, name: str, default: float) -> float:
    if not value:
        return default
    from ._durations import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None
    if seconds <= 0:  # a zero timeout or deadline fails every request, looking like an outage
        raise ConfigurationError(f"{name}: {value!r} must be longer than 0")
    return seconds
