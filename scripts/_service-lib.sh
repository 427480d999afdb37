# shellcheck shell=bash disable=SC2154  # pidfile and dir are set by the sourcing script
# What the test-service scripts (redis-server.sh, openbao-server.sh, rsyslog-server.sh) share.
# Sourced, never run: the script that sources it defines `say` (its messages, named after
# it) and `pidfile`, `dir` (its run directory) before calling these.

# Installs Debian packages as root: install_from_debian LOG PROGRAM PACKAGE... (PROGRAM is
# what is missing, for the messages; apt-get's output goes to LOG).
install_from_debian() {
    local log=$1 program=$2
    shift 2
    if [ "$(id -u)" != 0 ]; then
        say "$program is not installed and installing it needs root (apt-get install $1)"
        return 1
    fi
    say "installing $1 from Debian"
    # The package would start a system-wide daemon: forbid service starts during the install
    # (the Debian convention, policy-rc.d exit 101), unless a policy is already in place.
    local policy=/usr/sbin/policy-rc.d made_policy=no status=0
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy && made_policy=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1 || status=$?
    if [ $status != 0 ]; then
        # The package lists may be missing on a fresh machine: update them once and retry.
        apt-get update -q >/dev/null 2>&1 || true
        status=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1 || status=$?
    fi
    if [ $made_policy = yes ]; then
        rm -f $policy
    fi
    if [ $status != 0 ]; then
        say "apt-get install $1 failed; see $log"
        return 1
    fi
}

# The PID in the pid file, if that process is alive and its command line matches MARK (a grep
# pattern): a PID reused by another program is not the server's.
pid_from_file() {
    local mark=$1 pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$mark" || return 1
    echo "$pid"
}

# Stops the server started from the run directory, by the PID in its pid file (the script's
# running_pid), and nothing else: SIGTERM, then SIGKILL if it is still there after 5 s.
stop_server() {
    local pid
    if ! pid=$(running_pid); then
        say "not running ($dir)"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 50); do
        [ -e "/proc/$pid" ] || break
        sleep 0.1
    done
    if [ -e "/proc/$pid" ]; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    say "stopped pid $pid ($dir)"
}
