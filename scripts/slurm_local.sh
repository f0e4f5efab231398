#!/usr/bin/env bash
# A real one-node Slurm on this machine, for the slurm test tier (tests/slurm/) and for trying the launchers by hand:
#   sudo scripts/slurm_local.sh start     # installs what is missing (Debian), writes the configs, starts the daemons
#   export SLURM_CONF=/tmp/nepenthe-slurm/slurm.conf
#   python train.py -m hydra/launcher=slurm seed=0,1 ...
#   sudo scripts/slurm_local.sh stop      # stops every daemon it started, by PID
#
# Daemons: munged (authentication), MariaDB (accounting storage: submitit tracks job states with sacct), slurmdbd,
# slurmctld, slurmd. Everything lives under $SLURM_LOCAL_DIR (default /tmp/nepenthe-slurm); nothing is written to
# /etc/slurm, and the clients find the cluster through SLURM_CONF. Two partitions: `debug` (default, its jobs are
# requeued when preempted: PreemptMode=REQUEUE) and `urgent` (a higher priority tier that preempts `debug`).
# Requires root on Debian (apt-get, daemons running as root); says so and exits 2 otherwise.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/nepenthe-slurm}
HOST=$(hostname -s)
DB_PORT=${SLURM_LOCAL_DB_PORT:-3307}
PACKAGES="slurm-wlm slurmdbd munge mariadb-server"

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "error: $0 starts system daemons and installs packages: run it as root" >&2
        exit 2
    fi
}

install_packages() {
    local missing=""
    for p in $PACKAGES; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        command -v apt-get >/dev/null || { echo "error: no apt-get to install$missing" >&2; exit 2; }
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$((seconds * 5))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "error: $what did not come up within ${seconds}s (logs in $DIR/log)" >&2
    exit 1
}

write_configs() {
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p "$DIR"/{log,state,spool,db,run}
    cat > "$DIR/slurm.conf" <<EOF
ClusterName=nepenthe
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6917
SlurmdPort=6918
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=20
MinJobAge=3600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE OverSubscribe=NO
PartitionName=urgent Nodes=$HOST MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF OverSubscribe=NO
EOF
    cat > "$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/slurmdbd.conf"
}

start_munge() {
    if [ -f "$DIR/run/munged.pid" ] && kill -0 "$(cat "$DIR/run/munged.pid")" 2>/dev/null; then return; fi
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null;
                                     chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    wait_for 10 munged test -f /run/munge/munged.pid
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
}

start_mariadb() {
    if [ ! -d "$DIR/db/mysql" ]; then
        mysql_install_db --user=root --datadir="$DIR/db" --auth-root-authentication-method=normal >"$DIR/log/mariadb-init.log" 2>&1
    fi
    /usr/sbin/mariadbd --user=root --datadir="$DIR/db" --socket="$DIR/run/mysql.sock" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadb.pid" --log-error="$DIR/log/mariadb.log" \
        --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
    wait_for 30 MariaDB mysqladmin --socket="$DIR/run/mysql.sock" -uroot ping
}

is_up() {
    SLURM_CONF="$DIR/slurm.conf" scontrol ping 2>/dev/null | grep -q UP
}

start() {
    need_root
    if [ -f "$DIR/slurm.conf" ] && is_up; then
        echo "Slurm is already up: export SLURM_CONF=$DIR/slurm.conf"
        return 0
    fi
    install_packages
    write_configs
    export SLURM_CONF="$DIR/slurm.conf"
    start_munge
    start_mariadb
    /usr/sbin/slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 30 slurmdbd sacctmgr -i list cluster
    sacctmgr -i add cluster nepenthe >/dev/null 2>&1 || true
    /usr/sbin/slurmctld -f "$DIR/slurm.conf"
    wait_for 30 slurmctld scontrol ping
    /usr/sbin/slurmd -f "$DIR/slurm.conf"
    wait_for 60 "the node" sh -c "sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'"
    echo "Slurm is up: export SLURM_CONF=$DIR/slurm.conf (partitions debug, urgent; logs in $DIR/log)"
}

stop() {
    need_root
    for name in slurmd slurmctld slurmdbd mariadb munged; do
        local pidfile="$DIR/run/$name.pid"
        if [ -f "$pidfile" ]; then
            local pid
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
    echo "Slurm stopped"
}

status() {  # exit 0 when the controller answers (what the test tier checks before starting it)
    [ -f "$DIR/slurm.conf" ] && is_up && SLURM_CONF="$DIR/slurm.conf" sinfo
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
