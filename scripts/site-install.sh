#!/usr/bin/env bash
# A central install of qlam-hpc, the way HPC centres ship tools: one shared virtual
# environment under PREFIX, and an Lmod modulefile that puts `qlam-hpc` on PATH with the
# site's defaults, so users type `module load qlam-hpc` and nothing else.
#
#   scripts/site-install.sh PREFIX [options]
#
#   --auth-base-url URL    the identity provider every user of the site talks to (AUTH_BASE_URL)
#   --cache-root DIR       shared-filesystem directory for token caches: each user's cache is
#                          DIR/$USER (QLAM_TOKEN_CACHE_DIR, $USER read when the module loads)
#   --token-store URL      QLAM_TOKEN_STORE (redis:// or rediss://), instead of the file cache
#   --auth-flow FLOW       QLAM_AUTH_FLOW: m2m (the default) or device (user context)
#   --audit-log DEST       the site's audit destinations (syslog:local3, file:PATH, ...; comma
#                          separated): written to venv/etc/qlam-hpc/audit.conf, which users cannot
#                          turn off, and set as QLAM_AUDIT_LOG by the module (docs/audit.md)
#   --extras LIST          extras to install with it, e.g. redis,vault
#   --from SPEC            what pip installs: a wheel, `qlam-hpc==X.Y`, a directory
#                          (default: the source tree this script belongs to)
#   --python PYTHON        the interpreter the environment is made from (default python3); every
#                          user must be able to run it: e.g. --python /usr/bin/python3
#   --system-site-packages let the environment see PYTHON's installed packages
#   --no-deps              install qlam-hpc alone (its dependencies must already be importable)
#
# It makes, for version V:
#   PREFIX/qlam-hpc/V/venv/                 the environment (its python is not put on PATH)
#   PREFIX/qlam-hpc/V/bin/qlam-hpc          the one command the module puts on PATH
#   PREFIX/qlam-hpc/V/share/qlam-hpc.bash   click's bash completion, sourced by the module
#   PREFIX/modulefiles/qlam-hpc/V.lua       the modulefile (regenerated on every run)
#
# Running it again with the same version upgrades the environment in place. See
# docs/site-install.md.
set -euo pipefail

die() { echo "site-install: error: $*" >&2; exit 2; }
usage() {  # the header's usage and options: on stdout for --help, else on stderr with exit 2
    if [ "${1:-}" = help ]; then sed -n '5,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
    sed -n '5,23p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2
}

here=$(cd "$(dirname "$0")/.." && pwd)
prefix="" auth_base_url="" cache_root="" token_store="" auth_flow="" extras="" audit_log=""
source_spec="$here" python=python3 venv_options=() pip_options=()
while [ $# -gt 0 ]; do
    case $1 in
        --auth-base-url) auth_base_url=${2:?--auth-base-url needs a URL}; shift ;;
        --cache-root) cache_root=${2:?--cache-root needs a directory}; shift ;;
        --token-store) token_store=${2:?--token-store needs a URL}; shift ;;
        --auth-flow) auth_flow=${2:?--auth-flow needs m2m or device}; shift ;;
        --extras) extras=${2:?--extras needs a list}; shift ;;
        --audit-log) audit_log=${2:?--audit-log needs a destination}; shift ;;
        --from) source_spec=${2:?--from needs a wheel, requirement or directory}; shift ;;
        --python) python=${2:?--python needs an interpreter}; shift ;;
        --system-site-packages) venv_options+=(--system-site-packages) ;;
        --no-deps) pip_options+=(--no-deps) ;;
        -h|--help) usage help ;;
        -*) die "unknown option $1 (--help lists them)" ;;
        *) [ -z "$prefix" ] || die "one PREFIX only (got $prefix and $1)"; prefix=$1 ;;
    esac
    shift
done
[ -n "$prefix" ] || usage
case $auth_flow in ""|m2m|device) ;; *) die "--auth-flow is m2m or device, not $auth_flow" ;; esac
case $token_store in ""|redis://*|rediss://*) ;; *) die "--token-store is a redis:// or rediss:// URL" ;; esac
case $cache_root in ""|/*) ;; *) die "--cache-root must be an absolute path on the shared filesystem" ;; esac
# The values go into Lua strings: keep them to characters that need no quoting there.
for value in "$auth_base_url" "$cache_root" "$token_store" "$audit_log"; do
    case $value in *[\"\\\'$'\n']*) die "quotes, backslashes and newlines are not allowed in: $value" ;; esac
done
case $token_store in *@*|*password=*) die "--token-store must not carry a password: modulefiles are world-readable (users set QLAM_REDIS_PASSWORD, see docs/hpc.md)" ;; esac

umask 022  # everything readable by every user of the cluster
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)

# The environment runs on PYTHON, through its symlinks, for every user: a Python under a
# private home (pyenv in ~, 0700) gives them "bad interpreter: Permission denied" (126) while
# the installer's own check passes. So every directory on the way must be enterable by others.
command -v "$python" >/dev/null 2>&1 || die "--python $python: no such interpreter"
"$python" - "$prefix" <<'PY' || exit 2
import os, stat, sys, sysconfig

def closed(path):
    # The first directory on the way to path (itself included) that others cannot enter.
    path = os.path.abspath(path)
    while True:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent

# The interpreter as the venv will link it, where that link really leads, its stdlib; PREFIX.
executable = getattr(sys, "_base_executable", sys.executable)
places = [executable, os.path.realpath(executable), sysconfig.get_paths()["stdlib"], sys.argv[1]]
for place in places:
    where = closed(place)
    if where is not None:
        what = "PREFIX" if place == sys.argv[1] else "the interpreter's"
        print(f"site-install: error: {what} {place} is under {where}, which other users cannot enter;"
              " give a Python every user can run, e.g. --python /usr/bin/python3", file=sys.stderr)
        sys.exit(1)
real = os.path.realpath(executable)
if not os.stat(real).st_mode & stat.S_IXOTH:
    print(f"site-install: error: {real} is not executable by other users;"
          " give a Python every user can run, e.g. --python /usr/bin/python3", file=sys.stderr)
    sys.exit(1)
PY

# Built (or downloaded) once as a wheel, whose name gives the version to install under.
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
echo "site-install: building $source_spec"
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$wheels" "$source_spec" >/dev/null \
    || die "pip wheel $source_spec failed (run it without --quiet to see why)"
wheel=$(ls "$wheels"/qlam_hpc-*.whl 2>/dev/null | head -1)
[ -n "$wheel" ] || die "$source_spec did not give a qlam-hpc wheel"
version=$(basename "$wheel" | cut -d- -f2)
spec=$wheel
[ -z "$extras" ] || spec="$wheel[$extras]"

root="$prefix/qlam-hpc/$version"
venv="$root/venv"
# No pip inside (ensurepip is most of the time of an install, and users have no use for
# it): PYTHON's pip installs into the environment. Run this script again to upgrade.
"$python" -m venv --clear --without-pip "${venv_options[@]}" "$venv" >/dev/null
"$python" -m pip --python "$venv/bin/python" install --quiet --disable-pip-version-check "${pip_options[@]}" "$spec" \
    >/dev/null || die "pip install of qlam-hpc $version into $venv failed (pip >= 22.3 needed in $python)"
"$venv/bin/qlam-hpc" --version >/dev/null || die "$venv/bin/qlam-hpc does not run"
if [ -n "$audit_log" ]; then  # read first by every qlam-hpc of this environment; root's to change
    mkdir -p "$venv/etc/qlam-hpc"
    { echo "# the site's audit destinations (scripts/site-install.sh --audit-log)"; tr ',' '\n' <<<"$audit_log"; } >"$venv/etc/qlam-hpc/audit.conf"
fi
# Run as root, check as an unprivileged user too: ACLs or a mount option can still stop them.
if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null && id nobody >/dev/null 2>&1; then
    runuser -u nobody -- "$venv/bin/python" -I -c '' 2>/dev/null \
        || die "$venv/bin/python runs for root but not for other users (as nobody); give a Python every user can run, e.g. --python /usr/bin/python3"
fi

# Only the command goes on PATH: the environment's python and pip would shadow the user's.
mkdir -p "$root/bin" "$root/share"
ln -sfn ../venv/bin/qlam-hpc "$root/bin/qlam-hpc"
_QLAM_HPC_COMPLETE=bash_source "$venv/bin/qlam-hpc" >"$root/share/qlam-hpc.bash"

modulefile="$prefix/modulefiles/qlam-hpc/$version.lua"
mkdir -p "$(dirname "$modulefile")"
{
    cat <<EOF
-- qlam-hpc $version: shared OAuth2 tokens and a QLAM tasks client for batch jobs.
-- Generated by scripts/site-install.sh; run it again rather than editing this file.
help([[
qlam-hpc $version: one token request per job array for QuEra's QLAM cloud.

  qlam-hpc doctor         check your set-up (makes no token request)
  qlam-hpc auth status    the cached token and this month's token requests
  qlam-hpc --help         every command

The module sets the site's defaults (see module show qlam-hpc); a variable
you export after loading it wins. Your client id and secret are yours to
set: see the site's documentation, never on a command line.
]])
whatis("Name: qlam-hpc")
whatis("Version: $version")
whatis("Description: shared, single-flight OAuth2 tokens and a QLAM tasks client for HPC batch jobs")

local root = "$root"
prepend_path("PATH", pathJoin(root, "bin"))
EOF
    # pushenv, not setenv: unloading the module gives back what was there before.
    [ -z "$auth_base_url" ] || echo "pushenv(\"AUTH_BASE_URL\", \"$auth_base_url\")"
    if [ -n "$cache_root" ]; then
        cat <<EOF

-- Each user's cache on the shared filesystem, so that every node of a job sees it.
local user = os.getenv("USER")
if user and user ~= "" then
    pushenv("QLAM_TOKEN_CACHE_DIR", pathJoin("$cache_root", user))
end
EOF
    fi
    [ -z "$token_store" ] || echo "pushenv(\"QLAM_TOKEN_STORE\", \"$token_store\")"
    [ -z "$auth_flow" ] || echo "pushenv(\"QLAM_AUTH_FLOW\", \"$auth_flow\")"
    [ -z "$audit_log" ] || echo "setenv(\"QLAM_AUDIT_LOG\", \"$audit_log\")  -- also in the environment's etc/qlam-hpc/audit.conf"
    cat <<EOF

-- Tab completion of commands and options, in bash.
if myShellName() == "bash" then
    execute{cmd=". " .. pathJoin(root, "share", "qlam-hpc.bash"), modeA={"load"}}
    execute{cmd="complete -r qlam-hpc 2>/dev/null || true", modeA={"unload"}}
end
EOF
} >"$modulefile.tmp"
mv "$modulefile.tmp" "$modulefile"

echo "site-install: qlam-hpc $version in $root"
echo "site-install: modulefile $modulefile"
echo "site-install: users: module use $prefix/modulefiles && module load qlam-hpc"
if [ -n "$cache_root" ] && [ ! -d "$cache_root" ]; then
    echo "site-install: create the cache root on the shared filesystem: install -d -m 1777 $cache_root"
fi
