#!/usr/bin/env bash
# A password-protected redis-server on loopback, for the Redis token store's tests and trials.
#
#   scripts/redis-server.sh start [--port PORT] [--tls] [--dir DIR]
#   scripts/redis-server.sh stop|status [--port PORT] [--dir DIR]
#
# Installs Debian's redis-server when it is missing. Everything lives in one run directory,
# DIR (default ${QLAM_REDIS_DIR:-/tmp/qlam-hpc-redis}/PORT):
#
#   redis.conf  redis.pid  redis.log   the server, daemonized
#   password                           0600; from $REDIS_PASSWORD, else made once and kept
#   ca.crt server.crt server.key       with --tls: a throw-away CA and a certificate for 127.0.0.1
#   env                                QLAM_TEST_REDIS_URL=..., QLAM_TEST_REDIS_PASSWORD_FILE=...,
#                                      (and QLAM_TEST_REDIS_CA=...) for the tests to source
#
# With --tls the port speaks TLS only (rediss://); clients need no certificate of their own.
# The password never appears on a command line: redis-cli reads it from REDISCLI_AUTH.
# `stop` stops the server started from DIR, by the PID in its pid file, and nothing else.
set -euo pipefail

command=${1:-}
[ $# -gt 0 ] && shift
port=6390
tls=no
dir=
while [ $# -gt 0 ]; do
    case $1 in
        --port) port=$2; shift 2 ;;
        --port=*) port=${1#*=}; shift ;;
        --tls) tls=yes; shift ;;
        --dir) dir=$2; shift 2 ;;
        --dir=*) dir=${1#*=}; shift ;;
        *) echo "redis-server.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
dir=${dir:-${QLAM_REDIS_DIR:-/tmp/qlam-hpc-redis}/$port}
pidfile=$dir/redis.pid

say() { echo "redis-server.sh: $*" >&2; }
# shellcheck source-path=SCRIPTDIR source=_service-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/_service-lib.sh"

install_redis() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
    install_from_debian "${TMPDIR:-/tmp}/qlam-hpc-apt-redis.log" redis-server redis-server redis-tools
}

# The PID in the pid file, if that process is alive and is a redis-server.
running_pid() { pid_from_file redis-server; }

cli() {
    local args=(-h 127.0.0.1 -p "$port")
    [ -s "$dir/ca.crt" ] && grep -q '^tls-port' "$dir/redis.conf" && args+=(--tls --cacert "$dir/ca.crt")
    REDISCLI_AUTH=$(cat "$dir/password") redis-cli "${args[@]}" "$@"
}

make_certificates() {
    [ -s "$dir/server.crt" ] && [ -s "$dir/server.key" ] && [ -s "$dir/ca.crt" ] && return 0
    local ext
    ext=$(mktemp)
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$ext"
    (
        umask 077
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=qlam-hpc test CA" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
            -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -extfile "$ext" -out server.crt 2>/dev/null
        rm -f server.csr ca.srl
        chmod 644 ca.crt
    )
    rm -f "$ext"
}

start() {
    install_redis
    mkdir -p "$dir"
    chmod 700 "$dir"
    if pid=$(running_pid); then
        say "already running on 127.0.0.1:$port (pid $pid, $dir)"
        print_env
        return 0
    fi
    if [ ! -s "$dir/password" ]; then
        (umask 077; printf '%s\n' "${REDIS_PASSWORD:-$(openssl rand -hex 24)}" >"$dir/password")
    fi
    local listen
    if [ $tls = yes ]; then
        make_certificates
        listen="port 0
tls-port $port
tls-cert-file $dir/server.crt
tls-key-file $dir/server.key
tls-ca-cert-file $dir/ca.crt
tls-auth-clients no"
    else
        rm -f "$dir/ca.crt"
        listen="port $port"
    fi
    # requirepass is read from an included file so that the password is not in redis.conf's
    # neighbours' view either: both are 0600 in a 0700 directory.
    (umask 077; printf 'requirepass %s\n' "$(cat "$dir/password")" >"$dir/auth.conf")
    cat >"$dir/redis.conf" <<EOF
# written by scripts/redis-server.sh
bind 127.0.0.1
protected-mode yes
$listen
daemonize yes
pidfile $pidfile
logfile $dir/redis.log
dir $dir
save ""
appendonly no
include $dir/auth.conf
EOF
    rm -f "$pidfile"
    : >"$dir/redis.log"
    if ! redis-server "$dir/redis.conf"; then
        say "redis-server did not start; see $dir/redis.log"
        return 1
    fi
    local waited=0
    until cli ping 2>/dev/null | grep -q PONG; do
        if grep -qiE 'Address already in use|Fatal|Failed' "$dir/redis.log"; then
            say "redis-server failed to start:"
            grep -iE 'Address already in use|Fatal|Failed' "$dir/redis.log" | head -3 >&2
            return 1
        fi
        waited=$((waited + 1))
        if [ $waited -gt 100 ]; then
            say "redis-server did not answer within 10 s; see $dir/redis.log"
            return 1
        fi
        sleep 0.1
    done
    say "started on 127.0.0.1:$port (pid $(running_pid), tls=$tls, password in $dir/password)"
    print_env
}

print_env() {
    local scheme=redis
    [ -s "$dir/ca.crt" ] && grep -q '^tls-port' "$dir/redis.conf" && scheme=rediss
    {
        echo "QLAM_TEST_REDIS_URL=$scheme://127.0.0.1:$port/0"
        echo "QLAM_TEST_REDIS_PASSWORD_FILE=$dir/password"
        [ $scheme = rediss ] && echo "QLAM_TEST_REDIS_CA=$dir/ca.crt"
        echo "QLAM_TEST_REDIS_PID=$(running_pid || true)"
    } | tee "$dir/env"
}

case $command in
    start) start ;;
    stop) stop_server ;;
    status)
        if pid=$(running_pid); then echo "running on 127.0.0.1:$port (pid $pid, $dir)"; else echo "not running ($dir)"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status [--port PORT] [--tls] [--dir DIR]" >&2; exit 2 ;;
esac
