#!/usr/bin/env bash
# The distributions as a user gets them: builds the wheel and the sdist, runs twine check
# (metadata, the README as PyPI renders it), checks that LICENSE and py.typed are inside
# both, then installs the wheel with the sandbox extra into a fresh virtual environment,
# away from the source tree, and runs `qlam-hpc --version` and `qlam-hpc demo -n 4` there.
#
#   scripts/check-dist.sh [OUTDIR]
#
# OUTDIR keeps the built wheel and sdist (default: a temporary directory, removed at the
# end). PYTHON names the interpreter with build and twine (default .venv/bin/python). The
# build and the fresh environment install from the package index, as a user's would.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dist=${1:-$work/dist}
mkdir -p "$dist"
rm -f "$dist"/qlam_hpc-*

echo "== build"
"$PYTHON" -m build --outdir "$dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$dist"/qlam_hpc-*.whl)
sdist=$(ls "$dist"/qlam_hpc-*.tar.gz)
echo "$(basename "$wheel") $(basename "$sdist")"

echo "== twine check"
"$PYTHON" -m twine check --strict "$wheel" "$sdist"

echo "== LICENSE and py.typed inside both"
"$PYTHON" - "$wheel" "$sdist" <<'PY'
import sys
import tarfile
import zipfile

wheel, sdist = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    in_wheel = archive.namelist()
with tarfile.open(sdist) as archive:
    in_sdist = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
wanted = {
    "wheel": (in_wheel, [".dist-info/licenses/LICENSE", "qlam_hpc/py.typed"]),
    "sdist": (in_sdist, ["LICENSE", "src/qlam_hpc/py.typed"]),
}
missing = [f"{kind}: {end}" for kind, (names, ends) in wanted.items() for end in ends if not any(n.endswith(end) for n in names)]
if missing:
    sys.exit("missing from the distributions: " + ", ".join(missing))
print("ok: LICENSE and py.typed in the wheel and the sdist")
PY

echo "== the wheel in a fresh environment"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "${wheel}[sandbox]" >"$work/pip.log" 2>&1 \
    || { cat "$work/pip.log"; exit 1; }
cd "$work"  # nothing of the source tree on the path
"$work/venv/bin/qlam-hpc" --version
env -u QLAM_TOKEN_CACHE_DIR -u QLAM_TOKEN_STORE "$work/venv/bin/qlam-hpc" demo -n 4
echo "ok: the wheel installs and runs"
