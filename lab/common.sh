# shellcheck shell=bash disable=SC2034 # the settings are used by the scripts that source this file
# Shared settings and helpers for the pgbackup lab scripts. Sourced, never run.

LAB_DIR=${LAB_DIR:-/var/tmp/pgbackup-lab}
LAB_NODE_COUNT=${LAB_NODE_COUNT:-3}
LAB_SCOPE=${LAB_SCOPE:-lab}
LAB_S3_PORT=${LAB_S3_PORT:-9443}
LAB_MOTO_PORT=${LAB_MOTO_PORT:-9000}
LAB_ETCD_PORT=${LAB_ETCD_PORT:-2379}
LAB_ETCD_PEER_PORT=${LAB_ETCD_PEER_PORT:-2380}
# The release the nodes run: the one place for the lab's facts (each tool derives its paths from these).
#   trixie   (default): Debian 13, PostgreSQL 17, Patroni 4, pgBackRest 2.55 -- the design's stack
#   bookworm           Debian 12, PostgreSQL 15, Patroni 3.0.2, pgBackRest 2.45
# up.sh writes them into env.sh/env.json (LAB_RELEASE, LAB_PG_VERSION, LAB_PG_BIN, LAB_PG_DATA,
# LAB_PATRONI_SCOPE); lab/control.py and lab/driver.py read them from there, and the driver applies the
# program with the release's pgVersion.
LAB_RELEASE=${LAB_RELEASE:-trixie}
case "$LAB_RELEASE" in
  trixie)
    LAB_SUITE=trixie
    LAB_PG_VERSION=17
    LAB_PGBACKREST=2.55  # Debian's, which the program installs: what `pgbackrest.version` pins in the lab tests
    # systemd 257 boots under systemd-nspawn on this kind of host only with the unified cgroup hierarchy.
    LAB_NSPAWN_UNIFIED=1
    ;;
  bookworm)
    LAB_SUITE=bookworm
    LAB_PG_VERSION=15
    LAB_PGBACKREST=2.45
    LAB_NSPAWN_UNIFIED=
    ;;
  *) printf 'LAB_RELEASE must be trixie or bookworm, not "%s"\n' "$LAB_RELEASE" >&2; exit 1 ;;
esac
LAB_PG_BIN=/usr/lib/postgresql/$LAB_PG_VERSION/bin
LAB_PG_DATA=/var/lib/postgresql/$LAB_PG_VERSION/main
export LAB_RELEASE
LAB_HOSTS_BEGIN="# BEGIN pgbackup-lab"
LAB_HOSTS_END="# END pgbackup-lab"
LAB_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_PROJECT=$(cd "$LAB_SCRIPTS/.." && pwd)

# Fixed lab credentials: the lab only listens on loopback and holds no real data.
LAB_PG_SUPERUSER=postgres
LAB_PG_SUPERPASS=lab-superuser-pw
LAB_PG_REPLUSER=replicator
LAB_PG_REPLPASS=lab-replication-pw
LAB_PG_REWINDUSER=rewind_user
LAB_PG_REWINDPASS=lab-rewind-pw
LAB_S3_ACCESS_KEY=labadmin
LAB_S3_SECRET_KEY=labadmin-secret
LAB_S3_REGION=us-east-1

case "$LAB_DIR" in
  /?*/?*) ;;
  *) printf 'LAB_DIR must be an absolute path at least two levels deep, not "%s"\n' "$LAB_DIR" >&2; exit 1 ;;
esac
export LAB_DIR

log() { printf '%s [lab] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root"; }

# Elapsed seconds since the script started (bash's SECONDS is whole seconds; use date for tenths).
LAB_T0=$(date +%s.%N)
elapsed() { awk -v t0="$LAB_T0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }'; }

node_name() { printf 'pgnode%d' "$1"; }
node_addr() { printf '127.0.1.%d' "$1"; }
node_dir() { printf '%s/nodes/%s' "$LAB_DIR" "$(node_name "$1")"; }

# pid_alive FILE: true when FILE holds the pid of a running process.
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.5 s until it succeeds or time runs out.
wait_for() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

# Serialise the lab scripts (a second up.sh or a down.sh waits). Children inherit the lock through LAB_LOCKED.
# Daemons are started with 9>&-: a daemon that kept fd 9 would hold the lock for as long as it runs.
lab_lock() {
  if [ -n "${LAB_LOCKED:-}" ]; then return 0; fi
  mkdir -p "$(dirname "$LAB_DIR")"
  exec 9>>"$LAB_DIR.lock"
  flock -w 900 9 || die "another lab script holds $LAB_DIR.lock"
  export LAB_LOCKED=1
}

# Where each node's cgroup lives: the name=systemd (v1) and the cgroup2 hierarchies, whichever are mounted.
# Every node gets its own cgroup under <hierarchy>/pgbackup-lab/<node>: without it systemd-nspawn
# (--register=no --keep-unit, no systemd on the host) puts all nodes in the same ".../payload" cgroup and
# their systemds trample each other's unit cgroups (units fail with 219/CGROUP).
cgroup_bases() {
  awk '$3 == "cgroup2" { print $2 } $3 == "cgroup" && $4 ~ /(^|,)name=systemd(,|$)/ { print $2 }' /proc/self/mounts
}

# The Python that runs moto_server and the boto3 checks: LAB_PYTHON, else the project venv, else a lab venv.
lab_python() {
  local py
  for py in "${LAB_PYTHON:-}" "$LAB_PROJECT/.venv/bin/python" "$LAB_DIR/venv/bin/python"; do
    if [ -n "$py" ] && [ -x "$py" ] && "$py" -c 'import moto.server, boto3' 2>/dev/null; then
      printf '%s\n' "$py"
      return 0
    fi
  done
  return 1
}
