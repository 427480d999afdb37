"""The exception tree of qlam-hpc, and the exit code the CLI gives each branch.

    QlamError                      1  anything qlam-hpc raises on purpose
    ├── ConfigurationError         3  a setting is missing or invalid
    │   ├── TokenLifetimeTooShort  3  --min-ttl asks more than the IdP ever issues
    │   └── TlsError              18  a certificate not trusted, or https spoken to a plain-http server
    │                                 (any server: IdP, API, Vault; never retried, never "unreachable")
    ├── AuthError                     the token could not be obtained
    │   ├── OAuthError             4  the IdP answered with an RFC 6749 error
    │   │   ├── InvalidClient          (wrong secret, unknown client)
    │   │   ├── UnauthorizedClient
    │   │   ├── AccessDenied
    │   │   ├── InvalidRequest
    │   │   ├── InvalidGrant
    │   │   ├── InvalidScope
    │   │   └── UnsupportedGrantType
    │   ├── IdentityProviderUnreachable  5  connection failures, timeouts, 5xx
    │   ├── RateLimited            6  HTTP 429, with the wait the IdP asked for
    │   ├── InvalidTokenResponse   7  a 2xx answer that holds no usable token
    │   ├── LoginRequired         16  user context: no login, or it expired or was revoked
    │   ├── DeviceCodeExpired     17  a device login was not approved before its code expired
    │   └── SubjectTokenError     19  token exchange: the subject token is missing, unreadable or expired
    ├── CacheError                 8  the shared cache cannot be used safely
    │   ├── UnsafeCache                (foreign owner, symlink, wrong type)
    │   └── LockTimeout            9  another process held the refresh lock too long
    ├── TaskFailed                10  a task ended Failed or PayloadProcessingError
    │   └── TaskCancelled         11  a task ended Cancelled
    ├── WaitTimeout               12  tasks were still running when --timeout ran out
    ├── ApiError                  13  the QLAM API refused a request (4xx other than 401)
    │   ├── InvalidTaskDefinition      (400: the messages say what is wrong)
    │   └── NotFound                   (404)
    ├── ApiUnreachable            14  connection failures, timeouts, 5xx from the API
    └── SecretStoreUnreachable    15  Vault or AWS Secrets Manager cannot be reached (a refusal is a
                                      ConfigurationError: no retry will fix it; the Vault token
                                      store's subclass, in _stores/_vault.py, counts refusals too)

Messages never contain a secret or a token: they are built from codes, URLs,
client ids and paths only.  Every error pickles (multiprocessing sends them
between processes) because each class rebuilds itself from ``args``.
"""

from __future__ import annotations

__all__ = [
    "QlamError",
    "ConfigurationError",
    "TokenLifetimeTooShort",
    "TlsError",
    "AuthError",
    "OAuthError",
    "InvalidClient",
    "UnauthorizedClient",
    "AccessDenied",
    "InvalidRequest",
    "InvalidGrant",
    "InvalidScope",
    "UnsupportedGrantType",
    "IdentityProviderUnreachable",
    "RateLimited",
    "InvalidTokenResponse",
    "LoginRequired",
    "DeviceCodeExpired",
    "SubjectTokenError",
    "CacheError",
    "UnsafeCache",
    "LockTimeout",
    "TaskFailed",
    "TaskCancelled",
    "WaitTimeout",
    "ApiError",
    "InvalidTaskDefinition",
    "NotFound",
    "ApiUnreachable",
    "SecretStoreUnreachable",
    "oauth_error",
]


class QlamError(Exception):
    """Base class of every error qlam-hpc raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(QlamError):
    """A setting is missing, malformed or unsafe."""

    exit_code = 3


class TokenLifetimeTooShort(ConfigurationError):
    """The caller asked for a remaining lifetime no token from this IdP has."""

    def __init__(self, min_ttl: float, lifetime: float) -> None:
        from ._durations import format_duration

        # Lifetimes measured from the client side lose a second to whole-second claims.
        shown = lifetime if lifetime < 120 else round(lifetime / 60) * 60
        super().__init__(
            f"--min-ttl {format_duration(min_ttl)} is longer than the tokens the identity "
            f"provider issues ({format_duration(shown)}); ask for less, or split the job"
        )
        self.min_ttl = min_ttl
        self.lifetime = lifetime

    def __reduce__(self) -> tuple[type[QlamError], tuple[object, ...]]:
        return (type(self), (self.min_ttl, self.lifetime))


class TlsError(ConfigurationError):
    """A TLS handshake failed in a way no retry fixes: the server's certificate is not
    trusted (a site CA missing from the bundle, a proxy that re-signs), or the server
    answers plain HTTP where https was asked for (a bare ``host:port`` means https).

    A ``ConfigurationError``, since a setting fixes it, with its own exit code, 18, so a
    batch script can tell it from a missing variable; the message names the setting.
    """

    exit_code = 18


class AuthError(QlamError):
    """No token could be obtained."""


class OAuthError(AuthError):
    """The identity provider refused the token request (RFC 6749 section 5.2)."""

    exit_code = 4
    code = "oauth_error"

    def __init__(self, error: str, description: str | None, status: int, url: str) -> None:
        detail = f": {description}" if description else ""
        super().__init__(f"identity provider {url} refused the token request ({error}{detail})")
        self.error = error
        self.description = description
        self.status = status
        self.url = url

    def __reduce__(self) -> tuple[type[QlamError], tuple[object, ...]]:
        return (type(self), (self.error, self.description, self.status, self.url))


class InvalidClient(OAuthError):
    code = "invalid_client"


class UnauthorizedClient(OAuthError):
    code = "unauthorized_client"


class AccessDenied(OAuthError):
    code = "access_denied"


class InvalidRequest(OAuthError):
    code = "invalid_request"


class InvalidGrant(OAuthError):
    code = "invalid_grant"


class InvalidScope(OAuthError):
    code = "invalid_scope"


class UnsupportedGrantType(OAuthError):
    code = "unsupported_grant_type"


_OAUTH_ERRORS: dict[str, type[OAuthError]] = {
    cls.code: cls
    for cls in (
        InvalidClient,
        UnauthorizedClient,
        AccessDenied,
        InvalidRequest,
        InvalidGrant,
        InvalidScope,
        UnsupportedGrantType,
    )
}


def oauth_error(error: str, description: str | None, status: int, url: str) -> OAuthError:
    """The exception for an RFC 6749 error code; unknown codes get the base class."""
    cls = _OAUTH_ERRORS.get(error, OAuthError)
    return cls(error, description, status, url)


class IdentityProviderUnreachable(AuthError):
    """Connection failures, timeouts or 5xx answers outlasted the retries."""

    exit_code = 5


class RateLimited(AuthError):
    """The identity provider answered 429; ``retry_after`` is its wait in seconds, if known."""

    exit_code = 6

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[QlamError], tuple[object, ...]]:
        return (type(self), (self.message, self.retry_after))


class InvalidTokenResponse(AuthError):
    """A successful HTTP answer that holds no usable token (HTML, bad JSON, no expiry)."""

    exit_code = 7


class LoginRequired(AuthError):
    """User context: there is no login to refresh with, or the identity provider refused it
    (refresh token expired, revoked, or its family revoked after a reuse). Only the user
    can fix it, by logging in again; every process of an array says so at once."""

    exit_code = 16

    def __init__(self, message: str) -> None:
        if "qlam-hpc auth login" not in message:
            message += ": run qlam-hpc auth login"
        super().__init__(message)


class DeviceCodeExpired(AuthError):
    """A device login was not approved before its code expired (or ``--timeout`` ran out)."""

    exit_code = 17


class SubjectTokenError(AuthError):
    """Token exchange: the subject token cannot be had from its source (missing, empty, not a
    JWT, expired, a command that failed). The message names the source, never the token."""

    exit_code = 19


class CacheError(QlamError):
    """The shared token cache cannot be used safely."""

    exit_code = 8


class UnsafeCache(CacheError):
    """A cache path is a symlink, owned by another user, or of the wrong type."""


class LockTimeout(CacheError):
    """Another process held the refresh lock longer than ``lock_timeout``."""

    exit_code = 9


class TaskFailed(QlamError):
    """A task ended in a failure state; ``reasons`` are its ``error_reasons``."""

    exit_code = 10

    # task_id None: the server's answer named no id (its schema makes the id optional).
    def __init__(self, task_id: str | None, status: str, reasons: list[str] | tuple[str, ...] = ()) -> None:
        detail = f": {'; '.join(reasons)}" if reasons else ""
        super().__init__(f"task {task_id} ended {status}{detail}")
        self.task_id = task_id
        self.status = status
        self.reasons = tuple(reasons)

    def __reduce__(self) -> tuple[type[QlamError], tuple[object, ...]]:
        return (type(self), (self.task_id, self.status, self.reasons))


class TaskCancelled(TaskFailed):
    exit_code = 11


class WaitTimeout(QlamError):
    """Tasks were still running when the wait's timeout ran out."""

    exit_code = 12


class ApiError(QlamError):
    """The QLAM API answered with an error (its ``{messages, code}`` body)."""

    exit_code = 13

    def __init__(self, status: int, messages: list[str] | tuple[str, ...], code: int | None, url: str) -> None:
        text = "; ".join(messages) if messages else "no message"
        super().__init__(f"QLAM API {url} answered HTTP {status}: {text}")
        self.status = status
        self.messages = tuple(messages)
        self.code = code
        self.url = url

    def __reduce__(self) -> tuple[type[QlamError], tuple[object, ...]]:
        return (type(self), (self.status, self.messages, self.code, self.url))


class InvalidTaskDefinition(ApiError):
    """HTTP 400 for a task definition; ``messages`` say what is wrong."""


class NotFound(ApiError):
    """HTTP 404: no such task (or path)."""


class ApiUnreachable(QlamError):
    """Connection failures, timeouts or 5xx answers from the QLAM API outlasted the retries."""

    exit_code = 14


class SecretStoreUnreachable(QlamError):
    """A secret store (Vault, AWS Secrets Manager) could not be reached or answered 5xx.

    Its own exit code, 15, because it is the one secret problem a retry may fix; a
    refusal (wrong token, no such secret) is a ``ConfigurationError`` (3).
    """

    exit_code = 15
