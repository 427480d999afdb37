"""The RSA key the sandbox signs access tokens with, and its public JWK."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from .._errors import ConfigurationError

__all__ = ["SigningKey"]

ALGORITHM = "RS256"


@dataclass(frozen=True)
class SigningKey:
    """An RSA private key with its ``kid``; ``jwk`` is the public half, ready for a JWKS."""

    private_key: rsa.RSAPrivateKey
    kid: str

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    @property
    def jwk(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self.public_key, as_dict=True)
        return {"kty": "RSA", "n": public["n"], "e": public["e"], "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh 2048-bit key: tokens from an earlier sandbox run will not verify, on purpose."""
        return cls._with_kid(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        """An unencrypted PEM RSA private key (PKCS#1 or PKCS#8) of at least 2048 bits, in a file
        that only its reader (or root) owns and can read: whoever can read the key can mint
        tokens the sandbox accepts, and whoever can replace it, the key itself."""
        from .._secrets import check_trusted_file

        path = Path(path)
        try:
            with open(path, "rb") as file:
                check_trusted_file(str(path), os.fstat(file.fileno()), "the sandbox's signing key file")
                data = file.read()
        except OSError as exc:
            raise ConfigurationError(f"cannot load a signing key from {path}: {exc.strerror or exc}") from None
        return cls.from_pem(data, path)

    @classmethod
    def from_pem(cls, data: bytes, path: str | Path) -> SigningKey:
        """As ``load``, from the file's bytes (read by the caller); ``path`` names it in messages."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot load a signing key from {path}: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
            raise ConfigurationError(f"{path} must hold an RSA private key of at least 2048 bits (RS256)")
        return cls._with_kid(key)

    @classmethod
    def _with_kid(cls, key: rsa.RSAPrivateKey) -> SigningKey:
        # The kid is the RFC 7638 thumbprint, so a key loaded from a file keeps
        # the same kid across restarts and verifiers can cache the JWKS.
        public = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        canonical = json.dumps({"e": public["e"], "kty": "RSA", "n": public["n"]}, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("ascii")).digest()
        return cls(private_key=key, kid=base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"))
