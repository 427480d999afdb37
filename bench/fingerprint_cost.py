"""What the salted, slow credentials fingerprint costs, and what it costs a guesser.

The fingerprint is computed only when a fetch fails (to record it) or when a standing
failure record must be compared (once per record per process); never on the warm path.
The old one was one SHA-256: a guesser could test tens of millions of secrets a second
per core against a record read from the store.
"""

from __future__ import annotations

import hashlib
import sys
import timeit
from pathlib import Path

from _common import median, table
from qlam_hpc._oauth import _PBKDF2_ROUNDS, _SCRYPT, credentials_fingerprint, credentials_match
from qlam_hpc._settings import Secret, Settings


def per_call(function, number: int, repeat: int = 5) -> float:
    return median(timeit.repeat(function, number=number, repeat=repeat)) / number


def main() -> None:
    settings = Settings(
        client_id="client-1",
        audience="https://api.quera.com",
        token_url="https://idp.example/oauth/token",
        client_secret=Secret("a-secret-of-the-usual-length-0123456789abcdef"),
        cache_dir=Path("/nonexistent"),
    )
    recorded = credentials_fingerprint(settings)
    material = b"qlam-hpc credentials v1\0https://idp.example/oauth/token\0client-1\0guess"
    old = per_call(lambda: hashlib.sha256(material).hexdigest()[:16], 200_000)
    make = per_call(lambda: credentials_fingerprint(settings), 10)
    compare = per_call(lambda: credentials_match(settings, recorded), 10)
    pbkdf2 = per_call(lambda: hashlib.pbkdf2_hmac("sha256", material, b"0" * 16, _PBKDF2_ROUNDS, dklen=16), 3)
    rows = [
        ["old: one SHA-256 (a guess)", f"{old * 1e6:.2f} us", f"{1 / old:,.0f}"],
        [f"scrypt N={_SCRYPT['n']} r={_SCRYPT['r']}: record a failure", f"{make * 1e3:.1f} ms", f"{1 / make:,.0f}"],
        ["scrypt: compare a standing record", f"{compare * 1e3:.1f} ms", f"{1 / compare:,.0f}"],
        [f"PBKDF2-SHA256 x{_PBKDF2_ROUNDS:,} (fallback)", f"{pbkdf2 * 1e3:.1f} ms", f"{1 / pbkdf2:,.0f}"],
    ]
    print(f"recorded as {recorded.split('$')[0]}; one core")
    print(table(["what", "per call", "guesses/s/core"], rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
