"""Client authentication at the token endpoint: how the client proves who it is.

Each method is a small object that adds its part to a token request, as
requests-oauth2client's ``ClientSecretPost``/``ClientSecretBasic``/``PrivateKeyJwt`` do:

    client_secret_post   client_id and client_secret in the form body (Auth0's default)
    client_secret_basic  an HTTP Basic ``Authorization`` header (RFC 6749 section 2.3.1)
    private_key_jwt      a short-lived JWT signed with the client's private key (RFC 7523
                         section 2.2, OpenID Connect Core section 9): no secret is sent at all

The method is ``QLAM_CLIENT_AUTH_METHOD`` when set; else ``private_key_jwt`` when a
private key is configured; else, with discovery, the identity provider's choice;
else ``client_secret_post``. Only the chosen method's credential is ever resolved.

A private key is parsed once per process (RSA keys cost milliseconds to load), cached
by a hash of its PEM text: a replaced key file gives a new entry, not a stale key.
"""

from __future__ import annotations

import threading
from collections import namedtuple

from ._errors import ConfigurationError
from ._secrets import Secret
from ._settings import ASSERTION_ALGORITHMS, CLIENT_AUTH_METHODS, Settings

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import NamedTuple

    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

    SigningKey = RSAPrivateKey | EllipticCurvePrivateKey

    # The fields as the type checker reads them; the namedtuples below are what runs.
    class _ClientSecretPost(NamedTuple):
        client_id: str
        secret: Secret

    class _ClientSecretBasic(NamedTuple):
        client_id: str
        secret: Secret

    class _PrivateKeyJwt(NamedTuple):
        client_id: str
        key: SigningKey
        alg: str
        key_id: str | None

else:
    _ClientSecretPost = namedtuple("_ClientSecretPost", "client_id secret")
    _ClientSecretBasic = namedtuple("_ClientSecretBasic", "client_id secret")
    _PrivateKeyJwt = namedtuple("_PrivateKeyJwt", "client_id key alg key_id")

__all__ = [
    "ClientSecretPost",
    "ClientSecretBasic",
    "PrivateKeyJwt",
    "ASSERTION_TYPE",
    "ASSERTION_LIFETIME",
    "client_authentication",
    "choose_method",
    "uses_private_key",
    "resolve_credentials",
    "load_private_key",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Seconds a client assertion is valid: long enough for a slow network and a few seconds
# of clock skew, short enough that a captured assertion is soon worthless.
ASSERTION_LIFETIME = 60
_NO_SECRET = (
    "QLAM_CLIENT_SECRET is not set and no valid token is cached: a new token needs the client secret "
    "(QLAM_CLIENT_SECRET or QLAM_CLIENT_SECRET_FILE) or a private key (QLAM_CLIENT_PRIVATE_KEY_FILE)"
)


def uses_private_key(settings: Settings) -> bool:
    """Whether these settings authenticate with the private key (else with the secret)."""
    method = settings.client_auth
    return method == "private_key_jwt" or (method is None and settings.private_key is not None)


def credential_material(settings: Settings) -> bytes:
    """The client's credentials as bytes, for what is derived from them (the failure record's
    fingerprint, a store seal's key); here, not in ``_oauth``, so that a warm read of a
    shared store can derive its seal without importing the token-fetching code."""
    with_key = uses_private_key(settings)
    credential = settings.private_key if with_key else settings.client_secret
    value = credential.resolve().reveal() if credential is not None else ""
    parts = [settings.token_url, settings.client_id, value]
    if with_key:
        parts = ["private_key_jwt", *parts, settings.key_id or "", settings.assertion_alg or ""]
    return "\0".join(("qlam-hpc credentials v2", *parts)).encode()


def choose_method(settings: Settings, supported: tuple[str, ...] | None = None) -> str:
    """The method to use; ``supported`` is the discovery document's list (None without discovery).

    With a secret and a discovery document, client_secret_basic is preferred: RFC 6749
    obliges every server to support it, and it is the OpenID default.
    """
    if settings.client_auth:
        return settings.client_auth
    if settings.private_key is not None:
        if supported is not None and "private_key_jwt" not in supported:
            raise ConfigurationError(
                f"a private key is configured, but the identity provider accepts only {', '.join(supported)} "
                "(token_endpoint_auth_methods_supported)"
            )
        return "private_key_jwt"
    if supported is None:
        return "client_secret_post"
    for method in ("client_secret_basic", "client_secret_post"):
        if method in supported:
            return method
    raise ConfigurationError(
        f"the identity provider accepts only {', '.join(supported) or 'no method'} "
        "(token_endpoint_auth_methods_supported): a client secret cannot be used with it"
    )


def resolve_credentials(settings: Settings, *, fresh: bool = False) -> Settings:
    """The settings with the credential in use read from its source (a ``Secret`` in its place).

    Only the credential the method needs is resolved: a client with a private key never
    reads ``QLAM_CLIENT_SECRET_FILE``. ``fresh`` asks remote stores again (after a rejection).
    """
    name = "private_key" if uses_private_key(settings) else "client_secret"
    source = getattr(settings, name)
    if source is None or isinstance(source, Secret):  # a literal has nothing to read again
        return settings
    return settings._replace(**{name: source.resolve(fresh=fresh)})


def client_authentication(settings: Settings, method: str) -> ClientSecretPost | ClientSecretBasic | PrivateKeyJwt:
    """The authentication object for ``method``, from resolved settings (``resolve_credentials``)."""
    if method not in CLIENT_AUTH_METHODS:  # pragma: no cover - Settings validates the names
        raise ConfigurationError(f"unknown client authentication method {method!r}")
    if method == "private_key_jwt":
        if settings.private_key is None:
            raise ConfigurationError(
                "private_key_jwt needs a private key: set QLAM_CLIENT_PRIVATE_KEY_FILE (or QLAM_CLIENT_PRIVATE_KEY)"
            )
        key, alg = load_private_key(settings.private_key.resolve(), settings.assertion_alg)
        return PrivateKeyJwt(settings.client_id, key, alg, settings.key_id)
    if settings.client_secret is None:
        raise ConfigurationError(_NO_SECRET)
    secret = settings.client_secret.resolve()
    if method == "client_secret_basic":
        return ClientSecretBasic(settings.client_id, secret)
    return ClientSecretPost(settings.client_id, secret)


class ClientSecretPost(_ClientSecretPost):
    """The client id and secret as form fields."""

    __slots__ = ()
    method = "client_secret_post"

    def apply(self, form: dict[str, str], headers: dict[str, str], *, audience: str, now: float) -> None:
        form["client_id"] = self.client_id
        form["client_secret"] = self.secret.reveal()


class ClientSecretBasic(_ClientSecretBasic):
    """The client id and secret in an ``Authorization: Basic`` header, each form-urlencoded
    first as RFC 6749 section 2.3.1 asks (it matters only for ids or secrets with odd characters)."""

    __slots__ = ()
    method = "client_secret_basic"

    def apply(self, form: dict[str, str], headers: dict[str, str], *, audience: str, now: float) -> None:
        import base64
        from urllib.parse import quote_plus

        pair = f"{quote_plus(self.client_id)}:{quote_plus(self.secret.reveal())}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


class PrivateKeyJwt(_PrivateKeyJwt):
    """A client assertion signed with the private key: iss = sub = client id, aud = the token
    endpoint, a unique jti, and a lifetime of ``ASSERTION_LIFETIME`` seconds. A new one is
    made for every attempt, so a retried request never replays an assertion."""

    __slots__ = ()
    method = "private_key_jwt"

    def apply(self, form: dict[str, str], headers: dict[str, str], *, audience: str, now: float) -> None:
        form["client_id"] = self.client_id
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = self.assertion(audience, now)

    def assertion(self, audience: str, now: float, jti: str | None = None) -> str:
        import secrets

        import jwt

        issued = int(now)
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "jti": jti or secrets.token_urlsafe(24),
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME,
        }
        extra = {"kid": self.key_id} if self.key_id else None
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=extra)

    def __repr__(self) -> str:  # the key object's repr is harmless, but say what matters
        return f"PrivateKeyJwt(client_id={self.client_id!r}, alg={self.alg!r}, key_id={self.key_id!r})"


# --- loading keys ---------------------------------------------------------------------------

_keys: dict[str, PrivateKeyTypes] = {}
_keys_lock = threading.Lock()


def load_private_key(pem: Secret, alg: str | None = None) -> tuple[SigningKey, str]:
    """``(key, alg)`` for an unencrypted PEM private key: RSA (RS256, PS256; at least 2048
    bits) or EC P-256 (ES256). ``alg`` None picks RS256 or ES256 by key type. Parsed once
    per process; the cache key is a hash of the PEM, never the PEM."""
    import hashlib

    data = pem.reveal().encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    where = pem.describe()
    with _keys_lock:
        key = _keys.get(digest)
    if key is None:
        key = _parse_key(data, where)
        with _keys_lock:
            _keys[digest] = key
    return _signing_key(key, alg, where)


def _parse_key(data: bytes, where: str) -> PrivateKeyTypes:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if b"-----BEGIN" not in data:
        raise ConfigurationError(f"{where} is not a PEM private key (no -----BEGIN line)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            f"{where} is an encrypted private key: qlam-hpc needs it unencrypted "
            "(protect it with file permissions or a secret store instead)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # The library's message describes the parse failure, but say it in our own words:
        # no part of the key may reach a message.
        raise ConfigurationError(f"{where} is not a usable PEM private key") from None


def _signing_key(key: PrivateKeyTypes, alg: str | None, where: str) -> tuple[SigningKey, str]:
    """The key, if it is one qlam-hpc signs with, and the algorithm it signs with."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigurationError(f"{where} is a {key.key_size}-bit RSA key: at least 2048 bits are needed")
        alg = alg or "RS256"
        if alg not in ("RS256", "PS256"):
            raise ConfigurationError(
                f"QLAM_CLIENT_ASSERTION_ALG={alg} does not fit the RSA key of {where} (RS256 or PS256)"
            )
        return key, alg
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise ConfigurationError(f"{where} is an EC key on {key.curve.name}: ES256 needs P-256 (secp256r1)")
        alg = alg or "ES256"
        if alg != "ES256":
            raise ConfigurationError(
                f"QLAM_CLIENT_ASSERTION_ALG={alg} does not fit the EC P-256 key of {where} (ES256)"
            )
        return key, alg
    supported = ", ".join(ASSERTION_ALGORITHMS)
    raise ConfigurationError(
        f"{where} is a {type(key).__name__.lstrip('_')}: qlam-hpc signs with RSA or EC P-256 keys ({supported})"
    )
