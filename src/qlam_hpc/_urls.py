"""URL rules for every server qlam-hpc talks to: the identity provider, the QLAM API, Vault.

Pure and light (the warm ``qlam-hpc token`` path builds Settings, which use these): URLs
are split by hand rather than through ``urllib.parse``. A bare host means https; plain
http is allowed only on loopback, where nothing crosses a network; a URL that httpx
would refuse at the first request is refused here, as a setting (``ConfigurationError``).
"""

from __future__ import annotations

from ._errors import ConfigurationError


def token_url_for(auth_base_url: str) -> str:
    """``{AUTH_BASE_URL}/oauth/token``; a bare host means https; plain http only on loopback."""
    return base_url_for(auth_base_url) + "/oauth/token"


def base_url_for(auth_base_url: str, name: str = "AUTH_BASE_URL") -> str:
    """``scheme://host[:port][/path]`` without a trailing slash; a bare host means https."""
    text = auth_base_url.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "https", text
    scheme = scheme.lower()
    host = host_of(rest)
    if scheme not in ("https", "http") or not host or any(c in rest for c in "?#"):
        raise ConfigurationError(f"{name} {auth_base_url!r} is not a host name or an http(s) URL")
    problem = _authority_problem(rest, host)
    if problem:
        # Refused here, as a setting, rather than by httpx at the first request, as a crash.
        raise ConfigurationError(f"{name} {auth_base_url!r} is not a usable URL: {problem}")
    if scheme == "http" and not is_loopback(host):
        raise ConfigurationError(
            f"{name} {auth_base_url!r} uses plain http: https is required except on a loopback address"
        )
    return f"{scheme}://{rest.rstrip('/')}"


def checked_url(url: str, name: str) -> str:
    """A full endpoint URL (QLAM_TOKEN_URL, a discovered endpoint), under AUTH_BASE_URL's rules."""
    return base_url_for(url, name)


def host_of(rest: str) -> str:
    """The host of ``authority/path``: the authority ends at the first '/', '?' or '#' (RFC 3986)."""
    authority = rest
    for end in "/?#":
        authority = authority.split(end, 1)[0]
    authority = authority.rsplit("@", 1)[-1]
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.split(":", 1)[0]


_HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _authority_problem(rest: str, host: str) -> str | None:
    """Why ``authority/path`` cannot be sent a request, or None: what httpx would refuse."""
    if any(c.isspace() or not c.isprintable() for c in rest):
        return "it holds a space or a control character"
    authority = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    port = authority.rsplit("]", 1)[-1].partition(":")[2] if ":" in authority.rsplit("]", 1)[-1] else None
    if port is not None and not (port.isdigit() and port.isascii() and 0 < int(port) <= 65535):
        return f"the port {port!r} is not a number from 1 to 65535"
    if authority.startswith("["):
        return (
            None if all(c in "0123456789abcdefABCDEF:." for c in host) and ":" in host else "a malformed IPv6 address"
        )
    if not host.isascii():
        return "the host name is not ASCII: write it in punycode (xn--...)"
    if not set(host) <= _HOST_CHARACTERS:
        return "the host name holds characters a host name cannot have"
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if len(host) > 253 or any(not label or len(label) > 63 for label in labels):
        return "the host name has an empty or over-long part (at most 63 characters between dots)"
    return None


def is_loopback(host: str) -> bool:
    """``localhost``, ``::1`` or a dotted-quad 127.x.y.z address (not a name like 127.evil.example)."""
    if host.lower() in ("localhost", "::1"):
        return True
    parts = host.split(".")
    return (
        len(parts) == 4
        and parts[0] == "127"
        and all(part.isdigit() and part.isascii() and int(part) <= 255 for part in parts)
    )
