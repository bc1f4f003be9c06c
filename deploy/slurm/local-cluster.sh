#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, from Debian's packages, for evalproxy's tests and for trying
# `evalproxy jobs serve --executor slurm`:
#
#   deploy/slurm/local-cluster.sh start    # install slurm-wlm and munge when missing, start munged, slurmctld, slurmd
#   deploy/slurm/local-cluster.sh status   # the daemons and `sinfo`; exit 0 when the cluster answers
#   deploy/slurm/local-cluster.sh stop     # stop the three daemons (the configuration and state stay)
#
# Runs as root. Idempotent: `start` on a running cluster only checks it, `stop` on a stopped one does nothing.
# No cgroups (proctrack/linuxproc, task/none, no cgroup.conf) and no accounting (accounting_storage/none), so it
# runs in a container. The node declares EVALPROXY_SLURM_CPUS CPUs (default 8, whatever the machine has) so that
# several small evaluation jobs, which mostly wait on the network, run at once.
#
# It writes /etc/slurm/slurm.conf (marked as its own; a slurm.conf it did not write is never replaced) and keeps
# state and logs in EVALPROXY_SLURM_DIR (default /var/lib/evalproxy-slurm).
set -euo pipefail

STATE_DIR=${EVALPROXY_SLURM_DIR:-/var/lib/evalproxy-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by evalproxy deploy/slurm/local-cluster.sh"
CPUS=${EVALPROXY_SLURM_CPUS:-8}
NODE=$(hostname -s)
CONF_CHANGED=0

die() { echo "local-cluster: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts slurmctld, slurmd, munged)"; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null 2>&1 || missing+=(slurm-wlm)
  command -v munged >/dev/null 2>&1 || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
  echo "local-cluster: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_conf() {
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script: this machine has a Slurm configuration of its own"
  fi
  mkdir -p /etc/slurm "$STATE_DIR/ctld" "$STATE_DIR/d" "$STATE_DIR/log"
  local tmp="$CONF.tmp.$$"
  cat >"$tmp" <<EOF
$MARK
ClusterName=evalproxy
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
KillWait=10
MinJobAge=300
SchedulerParameters=sched_interval=2
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  if [ -e "$CONF" ] && cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; return 0; fi
  mv "$tmp" "$CONF"
  CONF_CHANGED=1
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge && chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...
  local what=$1 seconds=$2; shift 2
  local i
  for ((i = 0; i < seconds * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up within ${seconds}s (see $STATE_DIR/log)"
}

node_up() { sinfo -h -n "$NODE" -o %t | grep -Eq '^(idle|mix|alloc)'; }

start() {
  need_root
  install_packages
  write_conf
  start_munge
  wait_for munged 10 sh -c 'munge -n </dev/null | unmunge'
  if [ "$CONF_CHANGED" = 1 ] && alive "$STATE_DIR/slurmctld.pid"; then
    echo "local-cluster: $CONF changed: restarting slurmctld and slurmd" >&2
    stop_pid slurmd "$STATE_DIR/slurmd.pid"
    stop_pid slurmctld "$STATE_DIR/slurmctld.pid"
  fi
  alive "$STATE_DIR/slurmctld.pid" || slurmctld
  wait_for slurmctld 30 scontrol ping
  alive "$STATE_DIR/slurmd.pid" || slurmd
  wait_for "the node $NODE" 30 node_up
  echo "local-cluster: up (node $NODE, $CPUS CPUs, partition debug; logs in $STATE_DIR/log)"
}

stop_pid() {  # stop_pid NAME PIDFILE
  local pidfile=$2 i
  alive "$pidfile" || return 0
  kill "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do alive "$pidfile" || return 0; sleep 0.1; done
  kill -9 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || true
}

stop() {
  need_root
  stop_pid slurmd "$STATE_DIR/slurmd.pid"
  stop_pid slurmctld "$STATE_DIR/slurmctld.pid"
  local pid
  pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
  fi
  echo "local-cluster: stopped"
}

status() {
  local rc=0
  munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && echo "munged: running" || { echo "munged: stopped"; rc=1; }
  alive "$STATE_DIR/slurmctld.pid" && echo "slurmctld: running" || { echo "slurmctld: stopped"; rc=1; }
  alive "$STATE_DIR/slurmd.pid" && echo "slurmd: running" || { echo "slurmd: stopped"; rc=1; }
  if [ $rc = 0 ]; then sinfo || rc=1; fi
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
