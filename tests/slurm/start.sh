#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM tests and for trying `--executor slurm` by hand.
#
#   sudo tests/slurm/start.sh          # install (Debian/Ubuntu packages) if missing, configure, start; idempotent
#   sudo tests/slurm/start.sh stop     # stop the daemons it started
#
# Runs as root: munged, MariaDB + slurmdbd (accounting, so `sacct` answers as on a real cluster and submitit can
# see a job's states, REQUEUED included), slurmctld and slurmd. One node, this machine, in partition `debug`,
# advertising 2 GPUs for scheduling only (`gres.conf` with AutoDetect=off and placeholder device files), so the
# GPU recipes' job shapes are accepted on a CPU machine. Jobs run as the user who submits them. Process tracking
# by /proc (no cgroups, which containers often lack). Settings from the environment:
#   SLURM_CI_CPUS (max(4, nproc)): CPUs the node advertises (more than it has: jobs share the cores)
#   SLURM_CI_DIR (/var/lib/slurm-ci): state, logs and the placeholder GPU files
set -euo pipefail

DIR="${SLURM_CI_DIR:-/var/lib/slurm-ci}"
CONF=/etc/slurm
HOST="$(hostname -s)"
NCPU="$(nproc)"
CPUS="${SLURM_CI_CPUS:-$(( NCPU > 4 ? NCPU : 4 ))}"

log() { echo "slurm-ci: $*" >&2; }

stop() {
  for d in slurmd slurmctld slurmdbd; do pkill -x "$d" 2>/dev/null || true; done
  [ -f /run/mysqld/mysqld.pid ] && kill "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  log "stopped"
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi
[ "$(id -u)" = 0 ] || { log "run as root (it installs packages and starts daemons)"; exit 1; }

if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  log "already up: $(sinfo -h -o '%P %D %T %G' | head -1)"; exit 0
fi

missing=0
for c in slurmctld slurmd slurmdbd sbatch sacctmgr munged mariadbd mariadb-admin pgrep; do
  command -v "$c" >/dev/null || missing=1
done
if [ "$missing" = 1 ]; then
  log "installing slurmctld, slurmd, slurm-client, slurmdbd, munge, mariadb-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server \
    mariadb-client procps >/dev/null
fi

mkdir -p "$DIR"/{ctld,d,log,gpu} /run/munge /run/mysqld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld 2>/dev/null || true

# munge: the key the package made (or a new one), then the daemon
[ -s /etc/munge/munge.key ] || { mungekey -c -f -k /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null || { log "munge does not work"; exit 1; }

# MariaDB for slurmdbd, on a socket only
if ! mariadb-admin ping >/dev/null 2>&1; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  runuser -u mysql -- mariadbd --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock --skip-networking \
    --pid-file=/run/mysqld/mysqld.pid >"$DIR/log/mysqld.log" 2>&1 &
  for _ in $(seq 60); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.5; done
  mariadb-admin ping >/dev/null 2>&1 || { log "MariaDB did not start: $DIR/log/mysqld.log"; exit 1; }
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-ci';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

touch "$DIR"/gpu/nvidia0 "$DIR"/gpu/nvidia1
cat >"$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-ci
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
EOF
chmod 600 "$CONF/slurmdbd.conf"

cat >"$CONF/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu File=$DIR/gpu/nvidia[0-1]
EOF

cat >"$CONF/slurm.conf" <<EOF
ClusterName=modeci
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
GresTypes=gpu
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait=10
SchedulerParameters=defer=0,sched_interval=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=1000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmdbd >/dev/null || slurmdbd
for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -n list cluster format=cluster | grep -qw modeci || sacctmgr -i add cluster modeci >/dev/null
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 120); do
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  sleep 0.5
done
if ! sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  log "the node did not come up; logs in $DIR/log"; sinfo -N -l >&2 || true; exit 1
fi
log "up: partition debug, node $HOST with $CPUS CPUs and 2 placeholder GPUs (logs in $DIR/log)"
