"""What checking a token read from a shared store (Redis) costs, one process's view.

Measured against the sandbox's real RS256 tokens:

* the check qlam-hpc makes (``_cache.foreign_token``: unverified claims name the client
  and audience, ``exp`` not passed), per token;
* what verifying the signature against the identity provider's JWKS would add: importing
  PyJWT and cryptography (in a fresh interpreter, as each task of an array would), one
  JWKS request per process, and one RS256 verification per token;
* the b64token test ``_cache.decode_entry`` now makes on every entry read, the warm
  ``qlam-hpc token`` path included.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from _common import median, table
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._cache import Identity, foreign_token, is_b64token
from qlam_hpc.sandbox import Sandbox


def per_call(function, number: int, repeat: int = 7) -> float:
    return median(timeit.repeat(function, number=number, repeat=repeat)) / number


def fresh_import(module_code: str, rounds: int = 15) -> float:
    samples = []
    for _ in range(rounds):
        code = f"import time; t = time.perf_counter(); {module_code}; print(time.perf_counter() - t)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        samples.append(float(done.stdout))
    return median(samples)


def main() -> None:
    import httpx
    import jwt

    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(sandbox.env(), cache_dir=str(Path(tmp) / "cache"))
        token = TokenProvider(settings).get().token
        identity = Identity.of(settings)
        now = time.time()
        assert foreign_token(token, identity, now) is None

        check = per_call(lambda: foreign_token(token, identity, now), 20_000)
        b64 = per_call(lambda: is_b64token(token.access_token), 200_000)

        jwks_url = sandbox.env()["AUTH_BASE_URL"].rstrip("/") + "/.well-known/jwks.json"
        fetches = []
        for _ in range(20):
            started = time.perf_counter()
            keys = httpx.get(jwks_url).json()
            fetches.append(time.perf_counter() - started)
        kid = jwt.get_unverified_header(token.access_token).get("kid")
        jwk = next(k for k in keys["keys"] if k.get("kid") == kid or kid is None)
        key = jwt.PyJWK(jwk).key

        def verify() -> None:
            jwt.decode(token.access_token, key, algorithms=["RS256"], audience=settings.audience)

        verify_one = per_call(verify, 2_000)
        imports = fresh_import("import jwt, cryptography.hazmat.primitives.asymmetric.rsa")
        baseline = fresh_import("pass")

    rows = [
        ["b64token test per entry read (warm path too)", f"{b64 * 1e6:.2f} us"],
        ["claims check per token read from Redis", f"{check * 1e6:.1f} us"],
        ["JWKS: import PyJWT + cryptography, fresh process", f"{(imports - baseline) * 1e3:.1f} ms"],
        ["JWKS: one JWKS request (loopback sandbox)", f"{median(fetches) * 1e3:.1f} ms"],
        ["JWKS: one RS256 verification", f"{verify_one * 1e6:.1f} us"],
    ]
    print(f"token of {len(token.access_token)} characters")
    print(table(["what", "median"], rows))


if __name__ == "__main__":
    main()
