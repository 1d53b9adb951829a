#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests of nnsdm's SLURM launcher.
#
#   scripts/slurm-cluster.sh start    install slurm-wlm + munge if missing, configure, start, wait until usable
#   scripts/slurm-cluster.sh stop     stop the daemons this script started (by their pid files)
#   scripts/slurm-cluster.sh status   exit 0 when `srun hostname` works
#
# Needs root (it writes /etc/munge and /etc/slurm). Both commands are idempotent: `start` on a running
# cluster only checks it, `stop` on a stopped one does nothing. State, spool, logs and pid files live in
# $NNSDM_SLURM_DIR (default /tmp/nnsdm-slurm). No cgroups (proctrack/linuxproc, task/none) and no
# accounting database: nnsdm never needs sacct.
set -euo pipefail

STATE=${NNSDM_SLURM_DIR:-/tmp/nnsdm-slurm}
CONF=/etc/slurm/slurm.conf
WAIT_S=${NNSDM_SLURM_WAIT_S:-60}

log() { echo "slurm-cluster: $*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return 0
  fi
  command -v apt-get >/dev/null || { log "slurm-wlm is not installed and apt-get is not available"; return 1; }
  log "installing slurm-wlm and munge from the distribution's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_munge_key() {
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
}

write_slurm_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  # 90% of the physical memory: slurmd drains a node that has less than its RealMemory
  mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 * 0.9 / 1024}' /proc/meminfo)
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/spool" "$STATE/log"
  cat > "$CONF.tmp" <<EOF
# written by nnsdm's scripts/slurm-cluster.sh: one node, no cgroups, no accounting
ClusterName=nnsdm
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits this long before it may start again (default 120 s)
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1,default_queue_depth=1000
MinJobAge=300
KillWait=5
InactiveLimit=0
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$CONF.tmp" "$CONF"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cluster_works() {
  sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)' \
    && timeout 20 srun -N1 -n1 -t 1 hostname >/dev/null 2>&1
}

start() {
  if pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" && cluster_works; then
    log "already running ($(sinfo -h -o '%n %T %c CPUs'))"
    return 0
  fi
  [ "$(id -u)" = 0 ] || { log "needs root (writes /etc/munge and /etc/slurm)"; return 1; }
  install_packages
  write_munge_key
  write_slurm_conf
  if ! pid_alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/munged.started"  # stopped again by `stop`
  fi
  pid_alive "$STATE/slurmctld.pid" || slurmctld -c  # -c: no jobs recovered from an earlier run
  pid_alive "$STATE/slurmd.pid" || slurmd
  local deadline=$((SECONDS + WAIT_S))
  until cluster_works; do
    if [ $SECONDS -ge $deadline ]; then
      log "cluster not usable after ${WAIT_S}s; logs in $STATE/log"
      sinfo -R >&2 || true
      return 1
    fi
    # a node that registered before the controller was ready can stay down: resume it
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  log "running: $(sinfo -h -o '%n %T %c CPUs %m MB')"
}

stop_daemon() {
  local pidfile=$1 pid
  pid_alive "$pidfile" || return 0
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  scancel --user=root >/dev/null 2>&1 || true
  stop_daemon "$STATE/slurmd.pid"
  stop_daemon "$STATE/slurmctld.pid"
  if [ -e "$STATE/munged.started" ]; then
    stop_daemon /run/munge/munged.pid
    rm -f "$STATE/munged.started"
  fi
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) cluster_works ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
