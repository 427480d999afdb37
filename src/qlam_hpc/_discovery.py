"""The identity provider's discovery document (OpenID Connect Discovery 1.0, RFC 8414).

Asked for with ``QLAM_DISCOVERY=on`` (``{AUTH_BASE_URL}/.well-known/openid-configuration``)
or ``QLAM_DISCOVERY=<url>``. It gives the token endpoint (unless ``QLAM_TOKEN_URL``
names one) and the client authentication methods the server accepts; in user
context also the device authorization and revocation endpoints (RFC 8414). The document is
read only when a token must be fetched, once per process, and it costs no quota: it is
not a token request.

``parse_discovery`` is pure; ``discover`` keeps what it found for the process.
"""

from __future__ import annotations

import threading
from collections import namedtuple

from ._errors import ConfigurationError, InvalidTokenResponse

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping
    from typing import NamedTuple

    class _DiscoveredFields(NamedTuple):  # the fields as the type checker reads them
        url: str
        issuer: str | None
        token_endpoint: str
        auth_methods: tuple[str, ...]
        signing_algs: tuple[str, ...] | None
        device_authorization_endpoint: str | None = None
        revocation_endpoint: str | None = None

else:
    _DiscoveredFields = namedtuple(
        "_DiscoveredFields",
        "url issuer token_endpoint auth_methods signing_algs device_authorization_endpoint revocation_endpoint",
        defaults=(None, None),
    )

# OpenID Connect Discovery section 3: without the field, client_secret_basic is the default.
DEFAULT_AUTH_METHODS = ("client_secret_basic",)


class Discovered(_DiscoveredFields):
    """What qlam-hpc uses of a discovery document (the last two for user context, where given)."""

    __slots__ = ()


def parse_discovery(status: int, headers: Mapping[str, str], body: bytes, url: str) -> Discovered:
    """The document at ``url`` from its HTTP answer, or a one-line error. Pure."""
    from ._jsonlimits import JsonLimitError, parse_json
    from ._oauth import ANSWER_LIMIT
    from ._urls import checked_url

    if status >= 400:
        raise ConfigurationError(
            f"no discovery document at {url} (HTTP {status}): is QLAM_DISCOVERY or AUTH_BASE_URL right?"
        )
    try:
        data = parse_json(body, max_bytes=ANSWER_LIMIT)
    except JsonLimitError as exc:
        raise InvalidTokenResponse(f"identity provider {url} answered with {exc}; refusing it") from None
    except ValueError:  # UnicodeDecodeError included
        data = None
    if not isinstance(data, dict):
        raise InvalidTokenResponse(f"identity provider {url} answered HTTP {status} without a JSON discovery document")
    endpoint = data.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidTokenResponse(f"the discovery document at {url} names no token_endpoint")
    methods = data.get("token_endpoint_auth_methods_supported")
    if methods is None:
        methods = DEFAULT_AUTH_METHODS
    elif not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise InvalidTokenResponse(
            f"the discovery document at {url} has a malformed token_endpoint_auth_methods_supported"
        )
    algs = data.get("token_endpoint_auth_signing_alg_values_supported")
    algs = tuple(a for a in algs if isinstance(a, str)) if isinstance(algs, list) else None
    issuer = data.get("issuer") if isinstance(data.get("issuer"), str) else None

    def optional(name: str) -> str | None:
        value = data.get(name)
        return checked_url(value, f"the {name} of {url}") if isinstance(value, str) and value else None

    device, revocation = optional("device_authorization_endpoint"), optional("revocation_endpoint")
    return Discovered(
        url=url,
        issuer=issuer,
        # The same rules as for AUTH_BASE_URL: a document must not send the secret over plain http.
        token_endpoint=checked_url(endpoint, f"the token_endpoint of {url}"),
        auth_methods=tuple(methods),
        signing_algs=algs,
        device_authorization_endpoint=device,
        revocation_endpoint=revocation,
    )


_found: dict[str, Discovered] = {}
_found_lock = threading.Lock()


def discover(url: str, get: Callable[[str], tuple[int, Mapping[str, str], bytes]]) -> Discovered:
    """The document at ``url``, fetched with ``get`` the first time this process asks."""
    with _found_lock:
        known = _found.get(url)
    if known is not None:
        return known
    found = parse_discovery(*get(url), url)
    with _found_lock:
        _found[url] = found
    return found


def known(url: str | None) -> Discovered | None:
    """The document this process has already read from ``url``, if any (no I/O)."""
    if url is None:
        return None
    with _found_lock:
        return _found.get(url)
