"""``ApiSettings``: where the QLAM API is and how to talk to it. The environment is read
in one place, ``ApiSettings.from_env``, as for the token ``Settings``."""

from __future__ import annotations

import os
from collections import namedtuple

from .._errors import ConfigurationError
from .._settings import RetryPolicy, _flag, _positive_int, _seconds
from .._tls import ca_bundle
from .._urls import base_url_for

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping
    from typing import Any, NamedTuple

DEFAULT_API_URL = "https://api.quera.com"
DEFAULT_QPU_MODE = "squin-256q"
#: The largest answer read into memory: a page of results with many shots is megabytes, so the
#: cap is generous; it is there so a broken server or proxy cannot exhaust a node's memory.
#: Downloads (``download_results``) stream to a file and are not capped.
DEFAULT_MAX_BODY = 64 * 1024 * 1024
#: One request, from connecting to the answer's last byte: per-read timeouts alone let a server
#: that sends a byte a second hold a request for ever. Five minutes covers 64 MiB at 220 KB/s.
DEFAULT_DEADLINE = 300.0

# The fields as the type checker reads them; the namedtuple below is what runs.
if TYPE_CHECKING:  # pragma: no cover

    class _ApiSettingsFields(NamedTuple):
        base_url: str = DEFAULT_API_URL  # https://api.quera.com, no trailing slash
        qpu_mode: str = DEFAULT_QPU_MODE  # <language>-<constraint>, the path segment after /v2/
        attribution: bool = True  # False: no qlam_hpc block in system_metadata (QLAM_ATTRIBUTION=off)
        timeout: float = 30.0  # seconds to wait for each read, write or pooled connection
        connect_timeout: float = 10.0  # seconds to establish a connection
        retry: RetryPolicy = RetryPolicy()  # for idempotent requests
        ca_bundle: str | None = None  # a PEM file or directory of CA certificates; None: the system default
        trust_env: bool = True  # read HTTP(S)_PROXY, NO_PROXY and SSL_CERT_* from the environment, as httpx does
        group: str | None = None  # the group_id (a UUID) of created tasks that name none (QLAM_GROUP)
        max_body: int = DEFAULT_MAX_BODY  # bytes: a larger answer is refused as it streams in (QLAM_API_MAX_BODY)
        deadline: float = DEFAULT_DEADLINE  # seconds for one whole request, answer included (QLAM_API_DEADLINE)

else:
    _ApiSettingsFields = namedtuple(
        "_ApiSettingsFields",
        "base_url qpu_mode attribution timeout connect_timeout retry ca_bundle trust_env group max_body deadline",
        defaults=(
            DEFAULT_API_URL,
            DEFAULT_QPU_MODE,
            True,
            30.0,
            10.0,
            RetryPolicy(),
            None,
            True,
            None,
            DEFAULT_MAX_BODY,
            DEFAULT_DEADLINE,
        ),
    )


class ApiSettings(_ApiSettingsFields):
    """Immutable API settings; ``with_`` copies with changes.

    >>> ApiSettings.from_env().with_(qpu_mode="squin-256q")
    """

    __slots__ = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ApiSettings:
        """Settings from the environment; keyword overrides (CLI flags) win, ``None`` ones are ignored.

        ``QLAM_API_URL``, ``QLAM_QPU_MODE``, ``QLAM_GROUP``, ``QLAM_ATTRIBUTION`` (on|off),
        ``QLAM_API_TIMEOUT`` (each read), ``QLAM_API_DEADLINE`` (each whole request),
        ``QLAM_API_MAX_BODY`` (bytes, or with KiB, MiB, GiB), ``QLAM_API_CONNECT_TIMEOUT``, ``QLAM_RETRY_ATTEMPTS``,
        ``QLAM_RETRY_DEADLINE``; the CA bundle as for the token fetch (``_tls``):
        ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else ``REQUESTS_CA_BUNDLE``, so a cluster set
        up for any of them works unchanged.

        Where the environment names no API (``QLAM_API_URL``), or a QLAM Shell context is asked
        for (``context``, ``QLAM_CONTEXT``), the context's settings for the tasks plugin fill
        the gaps as QuEra's tools read them: ``plugins.tasks`` over ``defaults`` for
        ``api_base_url``, ``qpu_mode`` and ``group``, and ``http_client`` for the timeout and
        the CA bundle (``verify_ssl``). The environment wins, as for the token settings.
        """
        env = os.environ if environ is None else environ
        given = {k: v for k, v in overrides.items() if v is not None}
        context = given.pop("context", None) or env.get("QLAM_CONTEXT")
        qsh = None
        if context or not (given.get("base_url") or env.get("QLAM_API_URL")):
            from .._qsh import load_context

            qsh = load_context(env, context)
        base_url = (
            given.pop("base_url", None) or env.get("QLAM_API_URL") or (qsh and qsh.api_base_url) or DEFAULT_API_URL
        )
        qpu_mode = given.pop("qpu_mode", None) or env.get("QLAM_QPU_MODE") or (qsh and qsh.qpu_mode) or DEFAULT_QPU_MODE
        timeout = qsh.timeout if qsh is not None and qsh.timeout else 30.0
        settings = cls(
            base_url=api_url(base_url),
            qpu_mode=check_qpu_mode(qpu_mode),
            attribution=_flag(env.get("QLAM_ATTRIBUTION") or "on", "QLAM_ATTRIBUTION"),
            timeout=_seconds(env.get("QLAM_API_TIMEOUT"), "QLAM_API_TIMEOUT", timeout),
            connect_timeout=_seconds(env.get("QLAM_API_CONNECT_TIMEOUT"), "QLAM_API_CONNECT_TIMEOUT", 10.0),
            retry=RetryPolicy(
                attempts=_positive_int(env.get("QLAM_RETRY_ATTEMPTS"), "QLAM_RETRY_ATTEMPTS") or 5,
                deadline=_seconds(env.get("QLAM_RETRY_DEADLINE"), "QLAM_RETRY_DEADLINE", 60.0),
            ),
            ca_bundle=ca_bundle(env) or (qsh.verify_ssl if qsh is not None else None),
            group=env.get("QLAM_GROUP") or (qsh.group if qsh is not None else None) or None,
            max_body=_bytes(env.get("QLAM_API_MAX_BODY"), "QLAM_API_MAX_BODY", DEFAULT_MAX_BODY),
            deadline=_seconds(env.get("QLAM_API_DEADLINE"), "QLAM_API_DEADLINE", DEFAULT_DEADLINE),
        )
        if given:
            settings = settings._replace(**given)
            settings = settings._replace(
                base_url=api_url(settings.base_url), qpu_mode=check_qpu_mode(settings.qpu_mode)
            )
        return settings

    def with_(self, **changes: Any) -> ApiSettings:
        return self._replace(**changes)

    @property
    def tasks_path(self) -> str:
        """``/v2/{qpu_mode}/tasks``."""
        return f"/v2/{self.qpu_mode}/tasks"


def api_url(text: str) -> str:
    """The API's base URL without a trailing slash; a bare host means https; plain http only
    on loopback, since every request carries a bearer token."""
    return base_url_for(text, "QLAM_API_URL")


def check_qpu_mode(value: str) -> str:
    """``value`` if it is one safe path segment (``squin-256q``), else a ConfigurationError."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not value or not set(value) <= allowed or value in (".", ".."):
        raise ConfigurationError(f"QLAM_QPU_MODE {value!r} is not a QPU mode like squin-256q")
    return value


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}
_UNITS.update({"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30})


def _bytes(value: str | None, name: str, default: int) -> int:
    """A size: ``67108864``, ``64MiB``, ``64 M`` (binary units whatever the spelling)."""
    if not value or not value.strip():
        return default
    text = value.strip().lower()
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz ").strip()
    unit = text[len(digits) :].strip()
    if not digits.isdigit() or not digits.isascii() or unit not in _UNITS or int(digits) <= 0:
        raise ConfigurationError(f"{name}={value!r}: expected a size in bytes, like 67108864 or 64MiB")
    return int(digits) * _UNITS[unit]
