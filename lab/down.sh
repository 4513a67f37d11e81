#!/usr/bin/env bash
# Stop the pgbackup lab and remove its state. The cached rootfs (and a lab venv) stay unless --all.
# Usage: lab/down.sh [--all]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_root
lab_lock

ALL=false
case "${1:-}" in
  --all) ALL=true ;;
  "") ;;
  *) die "usage: $0 [--all]" ;;
esac
RUN="$LAB_DIR/run"

# stop_pid NAME PIDFILE EXPECT SECONDS: SIGTERM the process in PIDFILE (only if its command line contains
# EXPECT, so a recycled pid is never hit), wait up to SECONDS, then SIGKILL.
stop_pid() {
  local name=$1 pidfile=$2 expect=$3 limit=$4 pid deadline
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$(cat "$pidfile")
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$expect"; then
    log "$name: pid $pid is not ours any more; leaving it"
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid"
  deadline=$(( $(date +%s) + limit ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$name did not stop in ${limit}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
  log "$name stopped"
}

# Nodes first (Patroni still has etcd while it shuts PostgreSQL down). SIGTERM makes systemd-nspawn ask the
# node's systemd for a clean poweroff (SIGRTMIN+4 to its PID 1).
if [ -d "$LAB_DIR/nodes" ]; then
  for dir in "$LAB_DIR"/nodes/*/; do
    [ -d "$dir" ] || continue
    name=$(basename "$dir")
    stop_pid "$name" "$RUN/$name.pid" "systemd-nspawn" 60 &
  done
  wait
  for dir in "$LAB_DIR"/nodes/*/; do
    [ -d "$dir" ] || continue
    if mountpoint -q "$dir/root"; then umount "$dir/root" || umount -l "$dir/root"; fi
    rm -rf "$dir"
  done
  rmdir "$LAB_DIR/nodes" 2>/dev/null || true
fi
for base in $(cgroup_bases); do
  if [ -d "$base/pgbackup-lab" ]; then
    find "$base/pgbackup-lab" -depth -type d -exec rmdir {} + 2>/dev/null || log "some cgroups under $base/pgbackup-lab are still in use"
  fi
done

stop_pid nginx "$RUN/nginx.pid" "nginx: master" 10 &
stop_pid moto "$RUN/moto.pid" "moto.server" 10 &
stop_pid etcd "$RUN/etcd.pid" "etcd" 10 &
wait

# The host's /etc/hosts block (written in place: same inode).
if grep -qx "$LAB_HOSTS_BEGIN" /etc/hosts; then
  new_hosts=$(mktemp)
  sed "/^$LAB_HOSTS_BEGIN\$/,/^$LAB_HOSTS_END\$/d" /etc/hosts >"$new_hosts"
  cat "$new_hosts" >/etc/hosts
  rm -f "$new_hosts"
  log "/etc/hosts block removed"
fi

if [ -d "$LAB_DIR" ]; then
  if $ALL; then
    rm -rf "$LAB_DIR"
    log "removed $LAB_DIR"
  else
    # Everything but the rootfs cache and a lab venv.
    find "$LAB_DIR" -mindepth 1 -maxdepth 1 ! -name cache ! -name venv -exec rm -rf {} +
    log "removed lab state; kept $LAB_DIR/cache and $LAB_DIR/venv (down.sh --all removes them)"
  fi
fi
log "lab down in $(elapsed)s"
