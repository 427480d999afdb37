#!/usr/bin/env bash
# A real rsyslogd (Debian's rsyslog) that receives qlam-hpc's audit events, for the tests.
#
#   scripts/rsyslog-server.sh start|stop|status [--dir DIR]
#
# Installs Debian's rsyslog when it is missing. Everything lives in DIR (default
# ${QLAM_RSYSLOG_DIR:-/tmp/qlam-hpc-rsyslog}):
#
#   rsyslog.conf  rsyslogd.pid  work/    the daemon and its state
#   log.sock                             the unix datagram socket it listens on (0666)
#   messages.log                         every message received: facility, severity, host,
#                                        app, procid, msgid, structured data, message
#   env                                  QLAM_TEST_RSYSLOG_SOCKET=..., QLAM_TEST_RSYSLOG_LOG=...
#
# It listens on a socket of its own, not /dev/log: this machine has no system syslog, and
# taking /dev/log would capture every other program's messages and be another test run's to
# take too. The socket is the same kind as /dev/log (AF_UNIX, datagrams), read by the same
# input module (imuxsock), so a client cannot tell them apart; qlam-hpc names it with
# QLAM_AUDIT_LOG=syslog:FACILITY:SOCKET. No kernel log, no network port, no system files.
# `stop` stops the daemon started from DIR, by the PID in its pid file, and nothing else.
set -euo pipefail

command=${1:-}
[ $# -gt 0 ] && shift
dir=
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --dir=*) dir=${1#*=}; shift ;;
        *) echo "rsyslog-server.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
dir=${dir:-${QLAM_RSYSLOG_DIR:-/tmp/qlam-hpc-rsyslog}}
pidfile=$dir/rsyslogd.pid
socket=$dir/log.sock

say() { echo "rsyslog-server.sh: $*" >&2; }
# shellcheck source-path=SCRIPTDIR source=_service-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/_service-lib.sh"

install_rsyslog() {
    command -v rsyslogd >/dev/null && return 0
    install_from_debian "${TMPDIR:-/tmp}/qlam-hpc-apt-rsyslog.log" rsyslogd rsyslog
}

# The PID in the pid file, if that process is alive and is an rsyslogd of this directory.
running_pid() { pid_from_file "rsyslogd.*$dir/rsyslog.conf"; }

start() {
    if pid=$(running_pid); then
        say "already running (pid $pid), socket $socket"
        return 0
    fi
    install_rsyslog
    mkdir -p "$dir/work"
    chmod 755 "$dir"
    rm -f "$socket" "$pidfile"
    cat >"$dir/rsyslog.conf" <<EOF
# qlam-hpc's test syslog: one unix socket in, one file out. Nothing system-wide.
global(workDirectory="$dir/work" maxMessageSize="64k")
# SysSock.Use="off": leave /dev/log alone; listen on this directory's socket only.
module(load="imuxsock" SysSock.Use="off")
# useSpecialParser="off": the regular parser chain, which reads RFC 5424 (the special one
# expects the traditional "<PRI>TIMESTAMP TAG: MSG" of syslog(3)).
input(type="imuxsock" socket="$socket" createPath="on" useSpecialParser="off" parseHostname="on")
template(name="qlamAudit" type="string"
         string="%syslogfacility-text% %syslogseverity-text% %hostname% %app-name% %procid% %msgid% %structured-data% %msg%\n")
*.* action(type="omfile" file="$dir/messages.log" template="qlamAudit" fileCreateMode="0644")
EOF
    rsyslogd -N1 -f "$dir/rsyslog.conf" >"$dir/check.log" 2>&1 || { say "invalid configuration: $(cat "$dir/check.log")"; return 1; }
    rsyslogd -f "$dir/rsyslog.conf" -i "$pidfile"
    for _ in $(seq 1 100); do
        [ -S "$socket" ] && [ -s "$pidfile" ] && break
        sleep 0.1
    done
    if [ ! -S "$socket" ]; then
        say "rsyslogd did not create $socket"
        return 1
    fi
    chmod 666 "$socket"  # every user's qlam-hpc writes to it, as to /dev/log
    printf 'QLAM_TEST_RSYSLOG_SOCKET=%s\nQLAM_TEST_RSYSLOG_LOG=%s\n' "$socket" "$dir/messages.log" >"$dir/env"
    say "rsyslogd running (pid $(cat "$pidfile")), socket $socket, messages in $dir/messages.log"
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        say "not running"
        return 0
    fi
    kill "$pid"
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$socket" "$pidfile" "$dir/env"
    say "stopped"
}

case $command in
    start) start ;;
    stop) stop ;;
    status)
        if pid=$(running_pid); then
            echo "running (pid $pid), socket $socket"
        else
            echo "not running"
            exit 1
        fi
        ;;
    *) echo "usage: scripts/rsyslog-server.sh start|stop|status [--dir DIR]" >&2; exit 2 ;;
esac
