"""TLS for every connection qlam-hpc makes: one trust setting, one diagnosis of failures.

Trust comes from the variables sites already set for their other tools, first found wins:

    SSL_CERT_FILE        a PEM bundle (OpenSSL's and httpx's variable)
    SSL_CERT_DIR         a directory of hashed certificates (openssl rehash)
    REQUESTS_CA_BUNDLE   a bundle or a directory (requests' variable, so pip and the
                         QuEra SDK's users have often set it already)

Without any of them, httpx's default (certifi's bundle). The token fetch, the user-context
calls, the tasks client and ``doctor`` all build their httpx clients' ``verify`` here, so
they trust the same servers. Vault, reached through hvac and requests, takes
``VAULT_CACERT`` (else ``VAULT_CAPATH``), as hvac and the vault CLI do.

A failed handshake is one of two things no retry fixes: a certificate the bundle does not
vouch for, or a server that answers plain HTTP where https was asked for (a bare
``host:port`` in AUTH_BASE_URL means https). ``failure`` turns either into a one-line
``TlsError`` that names the setting to change; callers raise it instead of retrying and
reporting the server "unreachable".

``ssl`` is imported only when a connection is made: the warm token path never pays for it.
"""

from __future__ import annotations

import os

from ._errors import ConfigurationError, TlsError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import ssl
    from collections.abc import Mapping

#: The variables that name the CA certificates to trust, in the order they are looked at.
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
VAULT_CA_VARIABLES = ("VAULT_CACERT", "VAULT_CAPATH")

# What OpenSSL says when the peer's first bytes are not a TLS record: an HTTP answer
# ("HTTP/1.1 400 ...") read as a record header. OpenSSL 3.0 and 1.1 say wrong version
# number; 3.2 and later say record layer failure; some builds, packet length too long.
_PLAIN_HTTP_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST")
_plain_http_texts = tuple(reason.replace("_", " ").lower() for reason in _PLAIN_HTTP_REASONS)

_contexts: dict[str, ssl.SSLContext] = {}


def ca_bundle(env: Mapping[str, str] | None = None, variables: tuple[str, ...] = CA_VARIABLES) -> str | None:
    """The CA file or directory the environment names (first of ``variables`` set), or None."""
    found = ca_setting(env, variables)
    return found[1] if found else None


def ca_setting(
    env: Mapping[str, str] | None = None, variables: tuple[str, ...] = CA_VARIABLES
) -> tuple[str, str] | None:
    """``(variable, path)`` of the first CA variable set in ``env``, or None. No I/O."""
    env = os.environ if env is None else env
    for variable in variables:
        value = (env.get(variable) or "").strip()
        if value:
            return variable, os.path.expanduser(value)
    return None


def verify(bundle: str | None, origin: str | None = None) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for a CA file or directory: an ``SSLContext`` trusting it, or ``True``
    (httpx's default trust) without one. One context per bundle per process: loading a
    bundle costs milliseconds. ``ConfigurationError`` when the bundle cannot be loaded."""
    if not bundle:
        return True
    known = _contexts.get(bundle)
    if known is not None:
        return known
    import ssl

    try:
        if os.path.isdir(bundle):
            context = ssl.create_default_context(capath=bundle)
        else:
            context = ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        # A directory loads lazily and cannot fail here: without an origin, a file's variables.
        where = f" (from {origin})" if origin else " (from SSL_CERT_FILE or REQUESTS_CA_BUNDLE)"
        raise ConfigurationError(f"the CA bundle {bundle}{where} cannot be used: {reason}") from None
    _contexts[bundle] = context
    return context


def context(bundle: str | None, origin: str | None = None) -> ssl.SSLContext:
    """``verify``'s context, and without a bundle one trusting certifi's (httpx's default):
    what the httpx clients are given, since httpx deprecates anything but a context."""
    found = verify(bundle, origin)
    if not isinstance(found, bool):
        return found
    known = _contexts.get("")
    if known is None:
        import ssl

        import certifi

        known = _contexts[""] = ssl.create_default_context(cafile=certifi.where())
    return known


def unresolved(exc: BaseException) -> str | None:
    """The resolver's reason when ``exc`` (or one of its causes) is a host name DNS could not
    resolve, else None. No retry fixes a name that does not resolve, seconds later."""
    import socket

    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return current.strerror or str(current) or "unknown host"
        current = current.__cause__ or current.__context__
    return None


def verify_from_env(env: Mapping[str, str] | None = None) -> ssl.SSLContext | bool:
    """``verify`` for the bundle the environment names (see the module's docstring)."""
    found = ca_setting(env)
    return verify(found[1], found[0]) if found else True


def failure(
    exc: BaseException,
    url: str,
    trust: tuple[str, str] | None = None,
    *,
    names: str = "SSL_CERT_FILE or REQUESTS_CA_BUNDLE",
) -> TlsError | None:
    """The ``TlsError`` an exception from a connection to ``url`` stands for, or None when
    it is not a TLS failure (a refused connection, a timeout: those may pass).

    ``trust`` is the ``(variable, path)`` of the CA bundle in use, if any, so the message
    can say that it does not vouch for the server; ``names`` are the settings to change.
    """
    kind, reason = _classify(exc)
    if kind is None:
        return None
    if kind == "plain":
        return TlsError(f"{url} {plain_http_advice(url)}")
    if trust:
        hint = f"the CA bundle {trust[1]} (from {trust[0]}) does not vouch for it; set {names} to your site's CA bundle"
    else:
        hint = f"set {names} to your site's CA bundle"
    detail = f" ({reason})" if reason else ""
    return TlsError(f"certificate verify failed for {url}{detail}: {hint}")


def plain_http_advice(url: str) -> str:
    """What to say when ``url`` (https) reached a plain-http server."""
    from ._urls import host_of as _host_of
    from ._urls import is_loopback

    rest = url.partition("://")[2]
    authority = rest.split("/", 1)[0]
    if is_loopback(_host_of(rest)):
        return f"spoke TLS to a server that answered in plain HTTP: write http://{authority}"
    return (
        "spoke TLS to a server that answered in plain HTTP (is the port right? plain http is allowed only on loopback)"
    )


def _classify(exc: BaseException) -> tuple[str | None, str]:
    """``("cert", reason)``, ``("plain", "")`` or ``(None, "")`` for an exception and its causes."""
    import ssl

    seen = set()
    current: BaseException | None = exc
    texts = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return "cert", _reason(current)
        if isinstance(current, ssl.SSLError) and (current.reason or "") in _PLAIN_HTTP_REASONS:
            return "plain", ""
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    # httpx and requests re-raise with the text only: fall back to it.
    for text in texts:
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            after = text.split("certificate verify failed", 1)[-1].lstrip(": ")
            return "cert", after.split(" (_ssl.c", 1)[0].rstrip(" ')\"").strip()
        lowered = text.lower()
        if any(reason in text for reason in _PLAIN_HTTP_REASONS) or any(t in lowered for t in _plain_http_texts):
            return "plain", ""
    return None, ""


def _reason(error: ssl.SSLCertVerificationError) -> str:
    message = getattr(error, "verify_message", None) or ""
    return message
