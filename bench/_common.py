"""Helpers shared by the benchmarks: a sandbox, a clean environment, medians."""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

QLAM_HPC = str(Path(sys.executable).with_name("qlam-hpc"))


def clean_env(sandbox, cache_dir: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_"))}
    return {**base, **sandbox.env(), "QLAM_TOKEN_CACHE_DIR": str(cache_dir)}


def median(values) -> float:
    return statistics.median(values)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=False)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
