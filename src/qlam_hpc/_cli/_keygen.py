"""``qlam-hpc credentials keygen``: a key pair for ``private_key_jwt``, ready to register.

The private key is written 0600 (created exclusively, never over an existing file) as
PKCS#8 PEM; the public key as PEM (what Auth0's dashboard takes) and as a JWK set (what
a JWKS-based registration or the sandbox's ``jwks_file`` takes). The ``kid`` is the RFC
7638 thumbprint of the public key, so the same key always has the same ``kid``. Only paths,
the ``kid`` and the settings to use are printed: never the private key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from .._errors import ConfigurationError

__all__ = ["credentials", "generate_key_pair"]

# Auth0's private_key_jwt takes RS256, RS384 and PS256 (RSA); ES256 serves other servers.
_ALG = {"rsa": "RS256", "ec": "ES256"}


def generate_key_pair(kind: str = "rsa", bits: int = 3072) -> tuple[bytes, bytes, dict[str, Any]]:
    """``(private PEM, public PEM, public JWK)`` of a new RSA (``bits``) or EC P-256 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk = {**jwk, "kid": _thumbprint(jwk), "alg": _ALG[kind], "use": "sig"}
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public, jwk


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without blanks; base64url."""
    import base64
    import hashlib

    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode``, refusing to replace anything already there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    except FileExistsError:
        raise ConfigurationError(f"{path} already exists: not replacing it (choose another --out)") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # whatever the umask


@click.group()
def credentials() -> None:
    """Client credentials: make a key pair for private_key_jwt."""


@credentials.command()
@click.option("--type", "kind", type=click.Choice(["rsa", "ec"]), default="rsa", show_default=True,
              help="RSA (RS256; what Auth0 takes) or EC P-256 (ES256).")  # fmt: skip
@click.option("--bits", type=click.IntRange(2048, 8192), default=3072, show_default=True, help="RSA key size.")
@click.option(
    "--out",
    "prefix",
    default="qlam-client",
    show_default=True,
    metavar="PREFIX",
    help="Writes PREFIX.key.pem (0600), PREFIX.pub.pem and PREFIX.jwks.json; never over existing files.",
)
def keygen(kind: str, bits: int, prefix: str) -> None:
    """Write a new key pair: register the public key with the identity provider beside the
    current credential, point QLAM_CLIENT_PRIVATE_KEY_FILE at the private key, then remove
    the old credential (see docs/credentials.md, Rotation)."""
    private, public, jwk = generate_key_pair(kind, bits)
    paths = [Path(f"{prefix}.key.pem"), Path(f"{prefix}.pub.pem"), Path(f"{prefix}.jwks.json")]
    for path in paths:
        if path.exists() or path.is_symlink():
            raise ConfigurationError(f"{path} already exists: not replacing it (choose another --out)")
    _write_new(paths[0], private, 0o600)
    _write_new(paths[1], public, 0o644)
    _write_new(paths[2], (json.dumps({"keys": [jwk]}, indent=2) + "\n").encode(), 0o644)
    click.echo(f"private key  {paths[0]} (0600: keep it where only the client's jobs can read it)")
    click.echo(f"public key   {paths[1]} (PEM) and {paths[2]} (JWK set), kid {jwk['kid']}")
    click.echo("settings:")
    click.echo(f"  QLAM_CLIENT_PRIVATE_KEY_FILE={paths[0].resolve()}")
    click.echo(f"  QLAM_CLIENT_KEY_ID={jwk['kid']}")
    click.echo(f"  QLAM_CLIENT_ASSERTION_ALG={_ALG[kind]}")
    click.echo("  QLAM_CLIENT_AUTH_METHOD=private_key_jwt")
