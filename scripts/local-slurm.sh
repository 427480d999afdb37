#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for integration tests, benchmarks and trials.
#
#   scripts/local-slurm.sh start    install Slurm and munge from Debian if missing, start
#                                   munged, slurmctld and three slurmd (node1..node3), and
#                                   wait until every node is idle
#   scripts/local-slurm.sh stop     scancel what is left, then stop those daemons by PID
#   scripts/local-slurm.sh status   what is running; exit 1 when the cluster is not up
#   scripts/local-slurm.sh env      the line to point Slurm's commands at this cluster
#
# Then:  export SLURM_CONF=${QLAM_SLURM_DIR:-/tmp/qlam-hpc-slurm}/slurm.conf ; sbatch ...
#
# Everything (configuration, state, spool, logs, pid files, munge key and socket) lives in
# one run directory, $QLAM_SLURM_DIR (default /tmp/qlam-hpc-slurm); nothing under /etc is
# written and no systemd unit is used. The daemons listen on 127.0.0.1 only. Each node
# declares more CPUs than the machine has (SlurmdParameters=config_overrides allows it) so
# that a 50-task array runs at once, and the partition spreads tasks over the nodes (LLN).
#
# Idempotent: `start` on a running cluster only checks it; `stop` on a stopped one does
# nothing. `stop` only ever signals PIDs from this run directory's pid files whose command
# line names this run directory: never another Slurm, never by process name.
# Needs root (daemons, apt-get). Ports: $QLAM_SLURM_PORT (slurmctld, default 6817) and the
# three following ones (slurmd).
set -euo pipefail

RUN=${QLAM_SLURM_DIR:-/tmp/qlam-hpc-slurm}
NODES=${QLAM_SLURM_NODES:-3}
CPUS=${QLAM_SLURM_CPUS:-32}
PORT=${QLAM_SLURM_PORT:-6817}
CONF=$RUN/slurm.conf
MUNGE_SOCKET=$RUN/munge/munge.socket
# Slurm's client commands read SLURM_CONF; without a configuration they would look for a
# "configless" controller through DNS SRV records. This script never runs one before the
# file exists.
export SLURM_CONF=$CONF

say() { echo "local-slurm.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# --- installation -------------------------------------------------------------------------

install_slurm() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing it needs root"
    command -v apt-get >/dev/null || die "Slurm is not installed and this is not a Debian-like system (no apt-get)"
    say "installing slurmctld, slurmd, slurm-client and munge from Debian"
    # The packages would start system-wide daemons: forbid service starts during the
    # install (policy-rc.d exit 101, the Debian convention), unless a policy is in place.
    local policy=/usr/sbin/policy-rc.d made_policy=no status=0 log=${TMPDIR:-/tmp}/qlam-hpc-apt-slurm.log
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy && made_policy=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge >"$log" 2>&1 || status=$?
    if [ $status != 0 ]; then
        apt-get update -q >>"$log" 2>&1 || true  # a fresh machine may have no package lists
        status=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            slurmctld slurmd slurm-client munge >>"$log" 2>&1 || status=$?
    fi
    [ $made_policy = yes ] && rm -f $policy
    [ $status = 0 ] || die "apt-get install of Slurm failed; see $log"
}

# --- processes ----------------------------------------------------------------------------

# The PID in pid file $1 if that process is alive and its command line contains $2.
pid_of() {
    local file=$1 mark=$2 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$mark" || return 1
    echo "$pid"
}

munged_pid() { pid_of "$RUN/munge/munged.pid" "$MUNGE_SOCKET"; }
slurmctld_pid() { pid_of "$RUN/run/slurmctld.pid" "$CONF"; }
slurmd_pid() { pid_of "$RUN/run/slurmd-node$1.pid" "$CONF"; }

# Daemons fork before they fail: a start that "succeeded" may die a moment later. Their logs
# say so.
check_log() {
    local log=$1
    if [ -f "$log" ] && grep -qE 'fatal|Address already in use|error: Unable to bind' "$log"; then
        say "$(basename "$log"):"
        grep -E 'fatal|Address already in use|error: Unable to bind' "$log" | tail -3 >&2
        return 1
    fi
}

wait_for_file() {
    local file=$1 what=$2 log=$3
    for _ in $(seq 100); do
        [ -s "$file" ] && return 0
        check_log "$log" || die "$what failed to start"
        sleep 0.1
    done
    die "$what did not write $file within 10 s; see $log"
}

# --- configuration ------------------------------------------------------------------------

# Does /etc/hosts give host name $1 a loopback address? (Read directly: no resolver, no DNS.)
hostname_is_loopback() {
    awk -v name="$1" '$1 ~ /^(127\.|::1$)/ { for (i = 2; i <= NF; i++) if ($i == name) found = 1 }
        END { exit !found }' /etc/hosts 2>/dev/null
}

write_config() {
    local host
    host=$(hostname -s)
    mkdir -p "$RUN"/{state,spool,log,run,munge}
    chmod 755 "$RUN"
    {
        echo "# written by scripts/local-slurm.sh: $NODES nodes on this machine, loopback only"
        echo "ClusterName=qlamhpc"
        echo "SlurmctldHost=$host(127.0.0.1)"
        echo "SlurmctldPort=$PORT"
        echo "SlurmUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "AuthInfo=socket=$MUNGE_SOCKET"
        echo "StateSaveLocation=$RUN/state"
        echo "SlurmdSpoolDir=$RUN/spool/%n"
        echo "SlurmctldPidFile=$RUN/run/slurmctld.pid"
        echo "SlurmdPidFile=$RUN/run/slurmd-%n.pid"
        echo "SlurmctldLogFile=$RUN/log/slurmctld.log"
        echo "SlurmdLogFile=$RUN/log/slurmd-%n.log"
        echo "SlurmctldDebug=info"
        echo "SlurmdDebug=info"
        # One machine, no cgroups: track processes by their parent, bind nothing.
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobCompType=jobcomp/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        # slurmd binds 127.0.0.1, not every interface; so does slurmctld, which binds the
        # address its host name has, when /etc/hosts gives it a loopback one (containers
        # often map it to their network address: then slurmctld listens on all, and is
        # still only ever addressed as 127.0.0.1).
        if hostname_is_loopback "$host"; then
            echo "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny"
        else
            echo "CommunicationParameters=NoInAddrAny"
        fi
        echo "PropagateResourceLimits=NONE"
        echo "MailProg=/bin/true"
        echo "ReturnToService=2"
        # sbatch --wait polls at growing intervals while below MinJobAge/2: with the default
        # 300 s a finished array is noticed up to 32 s late; 4 keeps the poll at 2 s.
        echo "MinJobAge=4"
        # Arrays of up to 5,000 tasks (bench/slurm_scale.py runs 2,000). MaxArraySize is one
        # more than the largest task index (default 1001: 0-1000). Each array task that starts
        # becomes a job record of its own, kept MinJobAge after it ends and then until
        # slurmctld's next purge pass; MaxJobCount (default 10000) caps all records, and
        # sbatch is refused at the cap: 20000 holds a full 5,000-task array and the tests'
        # jobs at once. Neither changes how fast anything is scheduled.
        echo "MaxArraySize=5001"
        echo "MaxJobCount=20000"
        # Nodes may declare more CPUs than exist, so that a whole array runs at once.
        echo "SlurmdParameters=config_overrides"
        local k
        for k in $(seq "$NODES"); do
            echo "NodeName=node$k NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + k)) CPUs=$CPUS State=UNKNOWN"
        done
        # LLN: each task goes to the least loaded node, so an array spreads over all of them.
        echo "PartitionName=debug Nodes=ALL Default=YES State=UP LLN=YES MaxTime=INFINITE"
    } >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    chmod 644 "$CONF"
}

# --- start / stop -------------------------------------------------------------------------

start_munged() {
    munged_pid >/dev/null && return 0
    local dir=$RUN/munge
    if [ ! -s "$dir/munge.key" ]; then
        (umask 077; dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none)
    fi
    chown -R munge:munge "$dir"
    chmod 755 "$dir"  # clients must reach the socket inside
    chmod 600 "$dir/munge.key"
    rm -f "$dir/munged.pid"
    : >"$RUN/log/munged.log"
    chown munge:munge "$RUN/log/munged.log"
    # --origin: no host name lookup.
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$dir/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$RUN/log/munged.log" --seed-file="$dir/munged.seed" \
        --origin=127.0.0.1 \
        || { cat "$RUN/log/munged.log" >&2; die "munged failed to start"; }
    wait_for_file "$dir/munged.pid" munged "$RUN/log/munged.log"
}

start_daemons() {
    if ! slurmctld_pid >/dev/null; then
        rm -f "$RUN/run/slurmctld.pid"
        : >"$RUN/log/slurmctld.log"
        # -i: ignore the state of an earlier run (its jobs and nodes are gone).
        slurmctld -i -f "$CONF" || die "slurmctld failed to start; see $RUN/log/slurmctld.log"
        wait_for_file "$RUN/run/slurmctld.pid" slurmctld "$RUN/log/slurmctld.log"
    fi
    local k
    for k in $(seq "$NODES"); do
        slurmd_pid "$k" >/dev/null && continue
        mkdir -p "$RUN/spool/node$k"
        rm -f "$RUN/run/slurmd-node$k.pid"
        : >"$RUN/log/slurmd-node$k.log"
        slurmd -f "$CONF" -N "node$k" || die "slurmd node$k failed to start; see $RUN/log/slurmd-node$k.log"
        wait_for_file "$RUN/run/slurmd-node$k.pid" "slurmd node$k" "$RUN/log/slurmd-node$k.log"
    done
}

wait_until_idle() {
    local states
    for _ in $(seq 300); do
        for log in "$RUN"/log/slurmctld.log "$RUN"/log/slurmd-node*.log; do
            check_log "$log" || die "a Slurm daemon failed; logs in $RUN/log"
        done
        slurmctld_pid >/dev/null || die "slurmctld exited; see $RUN/log/slurmctld.log"
        states=$(timeout 10 sinfo -h -N -o '%N %t' 2>/dev/null || true)
        # idle, or mix/alloc when jobs were already queued: the node answers either way.
        if [ "$(echo "$states" | grep -cE ' (idle|mix|alloc)$')" -ge "$NODES" ]; then
            return 0
        fi
        sleep 0.1
    done
    die "nodes not ready after 30 s: $(echo "$states" | tr '\n' ' '); logs in $RUN/log"
}

start() {
    # The daemons run as root here (SlurmUser=root, munged through runuser).
    [ "$(id -u)" = 0 ] || die "starting the local cluster needs root"
    install_slurm
    write_config
    start_munged
    start_daemons
    wait_until_idle
    status
}

stop() {
    if slurmctld_pid >/dev/null; then
        # Jobs first: slurmstepd and job processes outlive slurmd otherwise.
        local left
        left=$(timeout 10 squeue -h -o %i 2>/dev/null | wc -l || echo 0)
        if [ "$left" -gt 0 ]; then
            say "cancelling $left remaining job(s)"
            timeout 10 scancel --partition=debug >/dev/null 2>&1 || true
            # Until no job step is left on the nodes (cancelled jobs linger in squeue for
            # MinJobAge with state CANCELLED; those are done).
            for _ in $(seq 150); do
                [ -z "$(timeout 10 squeue -h -t PD,CF,R,CG,S,ST -o %i 2>/dev/null | head -1)" ] && break
                sleep 0.1
            done
        fi
    fi
    local k pid
    for k in $(seq "$NODES"); do
        pid=$(slurmd_pid "$k") && stop_pid "$pid" "slurmd node$k"
    done
    pid=$(slurmctld_pid) && stop_pid "$pid" slurmctld
    pid=$(munged_pid) && stop_pid "$pid" munged
    say "stopped (run directory $RUN kept)"
}

stop_pid() {
    local pid=$1 what=$2
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        [ -e "/proc/$pid" ] || { say "stopped $what (pid $pid)"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    say "killed $what (pid $pid): it did not stop within 10 s"
}

status() {
    local up=yes k pid
    if pid=$(munged_pid); then echo "munged     pid $pid"; else echo "munged     not running"; up=no; fi
    if pid=$(slurmctld_pid); then echo "slurmctld  pid $pid"; else echo "slurmctld  not running"; up=no; fi
    for k in $(seq "$NODES"); do
        if pid=$(slurmd_pid "$k"); then echo "slurmd     pid $pid (node$k)"; else echo "slurmd     not running (node$k)"; up=no; fi
    done
    if [ $up = yes ]; then
        timeout 10 sinfo -N -o '%N %t %c' 2>/dev/null | sed 's/^/  /' || true
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    return 1
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env   (run directory: \$QLAM_SLURM_DIR, default /tmp/qlam-hpc-slurm)" >&2; exit 2 ;;
esac
