#!/bin/bash
# A throw-away one-node SLURM cluster (munged + slurmctld + slurmd) with all its state in one folder, for
# tests and for trying the templates by hand. Needs root (slurmd launches jobs as their user).
#
#   bash scripts/slurm/testing/cluster.sh install        # apt-get install slurm-wlm munge when missing
#   bash scripts/slurm/testing/cluster.sh start DIR      # writes DIR/slurm.conf, starts the daemons, waits
#   export SLURM_CONF=DIR/slurm.conf                     #   until sinfo shows the node idle, then:
#   sbatch --wrap hostname; squeue; scontrol show job ID # as on any cluster (sacct is not configured)
#   bash scripts/slurm/testing/cluster.sh stop DIR       # stops the daemons it started, by their PIDs
#
# The node offers this machine's CPUs and memory (slurmd -C), no GPUs (no GRES), SelectType=select/cons_tres,
# one partition `debug`. Ports are free ones picked at start, so several clusters can run on one machine;
# munged gets its own key and socket in DIR, nothing under /etc is touched. Finished jobs stay visible to
# `scontrol show job` for MinJobAge (1 h) and are appended to DIR/jobcomp.txt (JobState=COMPLETED, FAILED,
# CANCELLED, ... per line); DIR/*.log are the daemons' logs.
set -euo pipefail

PACKAGES=(slurm-wlm munge)
NEEDED=(munged slurmctld slurmd sbatch squeue sinfo scontrol scancel)

missing_commands() {
    local c out=()
    for c in "${NEEDED[@]}"; do command -v "$c" > /dev/null || out+=("$c"); done
    echo "${out[*]}"
}

install() {
    [ -z "$(missing_commands)" ] && return 0
    [ "$(id -u)" = 0 ] || { echo "error: not root, cannot install ${PACKAGES[*]} (missing: $(missing_commands))" >&2; exit 3; }
    command -v apt-get > /dev/null || { echo "error: no apt-get to install ${PACKAGES[*]}" >&2; exit 3; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}" > /dev/null \
        || { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}" > /dev/null; } \
        || { echo "error: apt-get install ${PACKAGES[*]} failed" >&2; exit 3; }
    [ -z "$(missing_commands)" ] || { echo "error: still missing after apt-get: $(missing_commands)" >&2; exit 3; }
}

free_port() {   # a TCP port nobody listens on, not in exclude ($1)
    local p
    while :; do
        p=$(shuf -i 20000-59999 -n 1)
        [ "$p" = "${1:-}" ] && continue
        (exec 3<> "/dev/tcp/127.0.0.1/$p") 2> /dev/null || { echo "$p"; return; }
    done
}

pid_of() { [ -s "$1" ] && cat "$1"; }

wait_for() {   # wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
    local secs=$1 what=$2 t=0
    shift 2
    until "$@" > /dev/null 2>&1; do
        t=$((t + 1))
        if [ "$t" -gt $((secs * 5)) ]; then echo "error: timed out waiting for $what" >&2; return 1; fi
        sleep 0.2
    done
}

start() {
    local dir host node mem_per_cpu ctld_port d_port
    dir=$(realpath -m "$1")
    [ "$(id -u)" = 0 ] || { echo "error: starting the test cluster needs root" >&2; exit 3; }
    [ -z "$(missing_commands)" ] || { echo "error: missing $(missing_commands); run: $0 install" >&2; exit 3; }
    if [ -n "$(live_daemons "$dir")" ]; then echo "error: $dir holds a running cluster; stop it first" >&2; exit 2; fi
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    trap "stop '$dir'" EXIT   # whatever fails from here on: stop the daemons already started
    chmod 700 "$dir" "$dir/munge"
    head -c 1024 /dev/urandom > "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"
    wait_for 10 "munged" test -S "$dir/munge/socket"

    host=$(hostname -s)
    # slurmd -C: "NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=.."
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || { echo "error: slurmd -C gave no node line: $node" >&2; exit 1; }
    [[ $node =~ CPUs=([0-9]+).*RealMemory=([0-9]+) ]] || { echo "error: no CPUs/RealMemory in: $node" >&2; exit 1; }
    mem_per_cpu=$((BASH_REMATCH[2] / BASH_REMATCH[1]))   # jobs without --mem get this per CPU (else the whole node)
    ctld_port=$(free_port)
    d_port=$(free_port "$ctld_port")
    cat > "$dir/slurm.conf" << EOF
ClusterName=cntest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
MinJobAge=3600
KillWait=5
DefMemPerCPU=$mem_per_cpu
SchedulerParameters=sched_interval=2
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    wait_for 60 "the node to be idle (see $dir/slurmctld.log, $dir/slurmd.log)" \
        bash -c '[ "$(sinfo -h -N -o %t)" = idle ]'
    trap - EXIT
    echo "export SLURM_CONF=$SLURM_CONF"
}

live_daemons() {   # PIDs of the daemons started in DIR that still run (a stale pid file may name another process)
    local f pid
    for f in slurmd slurmctld munged; do
        pid=$(pid_of "$1/$f.pid") || continue
        if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$f" ]; then echo "$pid"; fi
    done
}

stop() {   # cancel the cluster's jobs, then SIGTERM each daemon started in DIR by its PID (SIGKILL after 10 s)
    local dir pid pids
    dir=$(realpath -m "$1")
    pids=$(live_daemons "$dir")
    [ -n "$pids" ] || return 0
    if [ -e "$dir/slurm.conf" ] && [ -n "$(pid_of "$dir/slurmctld.pid")" ]; then
        export SLURM_CONF=$dir/slurm.conf
        scancel --user="$(id -un)" 2> /dev/null || true   # jobs run by slurmstepd would outlive slurmd
        wait_for 20 "the jobs to end" bash -c '[ -z "$(squeue -h -o %A)" ]' || true
    fi
    for pid in $pids; do kill "$pid" 2> /dev/null || true; done
    for pid in $pids; do
        wait_for 10 "PID $pid to exit" bash -c "! kill -0 $pid" || kill -9 "$pid" 2> /dev/null || true
    done
}

case "${1:-}" in
    install) install ;;
    start) [ $# = 2 ] || { echo "usage: $0 start DIR" >&2; exit 2; }; start "$2" ;;
    stop) [ $# = 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
    missing) missing_commands ;;
    *) echo "usage: $0 install | start DIR | stop DIR | missing" >&2; exit 2 ;;
esac
