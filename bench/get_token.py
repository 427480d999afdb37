"""A warm in-process ``get_token()``, per call, against reading the shared cache entry.

Target: at most 2 us per warm call.
"""

from __future__ import annotations

import sys
import tempfile
import timeit
from pathlib import Path

from _common import median, table
from qlam_hpc import Settings, TokenProvider
from qlam_hpc.sandbox import Sandbox


def per_call(function, number: int, repeat: int = 7) -> float:
    return median(timeit.repeat(function, number=number, repeat=repeat)) / number


def main() -> None:
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(sandbox.env(), cache_dir=str(Path(tmp) / "cache"))
        provider = TokenProvider(settings)
        provider.get_token()

        def from_store() -> None:
            provider._memory = None  # measure the shared-store path
            provider.get_token()

        warm = per_call(provider.get_token, 200_000)
        store = per_call(from_store, 2_000)
        baseline = per_call(lambda: None, 200_000)
    rows = [
        ["empty lambda call (floor)", f"{baseline * 1e6:.3f}", "-"],
        ["get_token(), warm (memory)", f"{warm * 1e6:.3f}", "1.00x"],
        ["get_token(), from the shared file", f"{store * 1e6:.3f}", f"{store / warm:.0f}x"],
    ]
    print("in-process token lookups, median per call")
    print(table(["path", "us per call", "vs warm"], rows))
    print(f"target: warm <= 2 us: {'met' if warm <= 2e-6 else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
