#!/usr/bin/env bash
# Start the pgbackup lab: etcd, a TLS-terminated moto S3 and three Patroni nodes (systemd-nspawn).
# Idempotent: what already runs is checked and kept. Everything lives under $LAB_DIR.
# Usage: lab/up.sh        then: . "$LAB_DIR/env.sh"
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_root
lab_lock

for cmd in systemd-nspawn etcd nginx openssl ssh ssh-keygen curl jq patronictl mountpoint setsid; do
  command -v "$cmd" >/dev/null || die "$cmd missing (see lab/README.md for the Debian packages)"
done

RUN="$LAB_DIR/run"
LOGS="$LAB_DIR/log"
mkdir -p "$RUN" "$LOGS" "$LAB_DIR/nodes"
chmod 0755 "$LAB_DIR"

declare -a NAMES=() ADDRS=()
for i in $(seq 1 "$LAB_NODE_COUNT"); do
  NAMES+=("$(node_name "$i")")
  ADDRS+=("$(node_addr "$i")")
done

phase_t=$(date +%s.%N)
phase() {
  local now
  now=$(date +%s.%N)
  log "$1 done in $(awk -v a="$phase_t" -v b="$now" 'BEGIN { printf "%.1f", b - a }')s (total $(elapsed)s)"
  phase_t=$now
}

# start_daemon NAME PIDFILE LOGFILE COMMAND...: start COMMAND in its own session unless PIDFILE is alive.
start_daemon() {
  local name=$1 pidfile=$2 logfile=$3
  shift 3
  if pid_alive "$pidfile"; then
    log "$name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  setsid "$@" </dev/null >>"$logfile" 2>&1 9>&- &
  echo $! >"$pidfile"
  log "$name started (pid $!)"
}

# ---------------------------------------------------------------- release and root file system
# A lab runs one release: nodes of another are never booted beside (or on top of) what LAB_DIR holds.
if [ -s "$LAB_DIR/release" ] && [ "$(cat "$LAB_DIR/release")" != "$LAB_RELEASE" ]; then
  die "this lab runs $(cat "$LAB_DIR/release"), not LAB_RELEASE=$LAB_RELEASE: lab/down.sh first"
fi
printf '%s\n' "$LAB_RELEASE" >"$LAB_DIR/release"
log "release $LAB_RELEASE: Debian $LAB_SUITE, PostgreSQL $LAB_PG_VERSION"
ROOTFS=$("$LAB_SCRIPTS/rootfs.sh" | tail -n 1)
[ -f "$ROOTFS/.lab-rootfs-complete" ] || die "rootfs.sh gave no usable tree"
phase "rootfs"

# ---------------------------------------------------------------- names
# /etc/hosts on the host: one marked block, replaced on every run. Written in place (same inode).
hosts_block() {
  printf '%s\n' "$LAB_HOSTS_BEGIN"
  for i in "${!NAMES[@]}"; do printf '%s %s\n' "${ADDRS[$i]}" "${NAMES[$i]}"; done
  printf '%s\n' "$LAB_HOSTS_END"
}
new_hosts=$(mktemp)
sed "/^$LAB_HOSTS_BEGIN\$/,/^$LAB_HOSTS_END\$/d" /etc/hosts >"$new_hosts"
hosts_block >>"$new_hosts"
cat "$new_hosts" >/etc/hosts
rm -f "$new_hosts"
for name in "${NAMES[@]}"; do
  getent hosts "$name" >/dev/null || die "$name does not resolve on the host"
done

# ---------------------------------------------------------------- TLS: lab CA and the S3 endpoint's certificate
CA_DIR="$LAB_DIR/ca"
CA_FILE="$CA_DIR/ca.pem"
# The CA is the repository's (lab/tls, public key material for loopback only): Pulumi.lab.yaml carries its
# certificate as storage.caCert. The localhost certificate is made here, signed by it.
if [ ! -s "$CA_DIR/localhost.pem" ] || ! cmp -s "$LAB_SCRIPTS/tls/ca.pem" "$CA_FILE" \
   || ! openssl verify -CAfile "$CA_FILE" "$CA_DIR/localhost.pem" >/dev/null 2>&1; then
  mkdir -p "$CA_DIR"
  chmod 0755 "$CA_DIR"
  install -m 0644 "$LAB_SCRIPTS/tls/ca.pem" "$CA_FILE"
  install -m 0600 "$LAB_SCRIPTS/tls/ca-key.pem" "$CA_DIR/ca.key"
  openssl req -new -nodes -newkey rsa:2048 -sha256 -subj "/CN=localhost" \
    -keyout "$CA_DIR/localhost.key" -out "$CA_DIR/localhost.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$CA_DIR/localhost.ext"
  openssl x509 -req -sha256 -days 3650 -in "$CA_DIR/localhost.csr" -CA "$CA_FILE" -CAkey "$CA_DIR/ca.key" \
    -CAcreateserial -extfile "$CA_DIR/localhost.ext" -out "$CA_DIR/localhost.pem" 2>/dev/null
  chmod 0600 "$CA_DIR/localhost.key"
  chmod 0644 "$CA_DIR/localhost.pem"
  log "lab certificate for localhost signed by lab/tls/ca.pem"
fi

# ---------------------------------------------------------------- SSH identity
SSH_KEY="$LAB_DIR/ssh/id_ed25519"
KNOWN_HOSTS="$LAB_DIR/ssh/known_hosts"
SSH_CONFIG="$LAB_DIR/ssh/config"
mkdir -p "$LAB_DIR/ssh"
chmod 0700 "$LAB_DIR/ssh"
[ -s "$SSH_KEY" ] || ssh-keygen -q -t ed25519 -N '' -C pgbackup-lab -f "$SSH_KEY"
cat >"$SSH_CONFIG" <<EOF
Host ${NAMES[*]}
  User root
  IdentityFile $SSH_KEY
  IdentitiesOnly yes
  UserKnownHostsFile $KNOWN_HOSTS
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
EOF

# ---------------------------------------------------------------- etcd (DCS), on the host's loopback
ETCD_URL="http://127.0.0.1:$LAB_ETCD_PORT"
start_daemon etcd "$RUN/etcd.pid" "$LOGS/etcd.log" \
  etcd --name lab --data-dir "$LAB_DIR/etcd" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://127.0.0.1:$LAB_ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$LAB_ETCD_PEER_PORT" \
  --initial-cluster "lab=http://127.0.0.1:$LAB_ETCD_PEER_PORT" --listen-metrics-urls "" \
  --auto-compaction-retention 1
etcd_healthy() { curl -sf "$ETCD_URL/health" | jq -e '.health == "true"'; }

cat >"$LAB_DIR/patronictl.yml" <<EOF
# patronictl on the host: patronictl -c $LAB_DIR/patronictl.yml list
scope: $LAB_SCOPE
etcd3:
  host: 127.0.0.1:$LAB_ETCD_PORT
EOF

# ---------------------------------------------------------------- S3: moto (plain HTTP) behind nginx (TLS)
PY=$(lab_python) || {
  log "no Python with moto[server] and boto3; creating $LAB_DIR/venv"
  python3 -m venv "$LAB_DIR/venv"
  "$LAB_DIR/venv/bin/pip" install -q 'moto[server]==5.2.5' boto3 >"$LOGS/pip.log" 2>&1 \
    || { tail -20 "$LOGS/pip.log" >&2; die "pip install failed"; }
  PY=$(lab_python) || die "still no usable Python for moto"
}
start_daemon moto "$RUN/moto.pid" "$LOGS/moto.log" \
  "$PY" -m moto.server -H 127.0.0.1 -p "$LAB_MOTO_PORT"

NGINX_DIR="$LAB_DIR/nginx"
mkdir -p "$NGINX_DIR/tmp"
cat >"$NGINX_DIR/nginx.conf" <<EOF
# TLS terminator for the lab S3 (moto). pgBackRest 2.45 only speaks HTTPS to S3.
user root;
worker_processes 1;
pid $RUN/nginx.pid;
error_log $LOGS/nginx-error.log;
events { worker_connections 512; }
http {
  access_log $LOGS/nginx-access.log;
  client_body_temp_path $NGINX_DIR/tmp/body;
  proxy_temp_path $NGINX_DIR/tmp/proxy;
  fastcgi_temp_path $NGINX_DIR/tmp/fastcgi;
  uwsgi_temp_path $NGINX_DIR/tmp/uwsgi;
  scgi_temp_path $NGINX_DIR/tmp/scgi;
  server {
    listen 127.0.0.1:$LAB_S3_PORT ssl;
    server_name localhost;
    ssl_certificate $CA_DIR/localhost.pem;
    ssl_certificate_key $CA_DIR/localhost.key;
    client_max_body_size 0;
    location / {
      proxy_pass http://127.0.0.1:$LAB_MOTO_PORT;
      proxy_http_version 1.1;
      proxy_set_header Host \$http_host;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
EOF
nginx -t -q -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" 2>>"$LOGS/nginx-error.log" || die "nginx config rejected"
if pid_alive "$RUN/nginx.pid"; then
  nginx -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -s reload
  log "nginx reloaded (pid $(cat "$RUN/nginx.pid"))"
else
  nginx -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" 9>&-
  log "nginx started (pid $(cat "$RUN/nginx.pid"))"
fi

wait_for 30 "etcd" etcd_healthy || die "etcd is not healthy (see $LOGS/etcd.log)"
phase "etcd, CA, S3 processes"

# ---------------------------------------------------------------- nodes
pg_uid=$(awk -F: '$1 == "postgres" { print $3 }' "$ROOTFS/etc/passwd")
pg_gid=$(awk -F: '$1 == "postgres" { print $4 }' "$ROOTFS/etc/passwd")
{ [ -n "$pg_uid" ] && [ -n "$pg_gid" ]; } || die "no postgres user in $ROOTFS"

# mount_node DIR: the node's root at DIR/root, an overlay on the cached rootfs (a copy if overlay fails
# or LAB_NODE_FS=copy).
mount_node() {
  local dir=$1
  mkdir -p "$dir"
  if [ -f "$dir/fs-copy" ] || mountpoint -q "$dir/root"; then return 0; fi
  if [ "${LAB_NODE_FS:-overlay}" = overlay ]; then
    mkdir -p "$dir/upper" "$dir/work" "$dir/root"
    if mount -t overlay "lab-$(basename "$dir")" \
      -o "lowerdir=$ROOTFS,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"; then
      return 0
    fi
    log "overlay mount failed; copying the rootfs instead"
    rmdir "$dir/root"
  fi
  rm -rf "$dir/root.tmp"
  cp -a --reflink=auto "$ROOTFS" "$dir/root.tmp"
  mv "$dir/root.tmp" "$dir/root"
  : >"$dir/fs-copy"
}

# enter_node_cgroup NAME: move the calling (sub)shell into the node's own cgroup (see cgroup_bases); every
# systemd-nspawn of a node runs from there, with the cgroup layout its release needs (LAB_NSPAWN_UNIFIED).
enter_node_cgroup() {
  local base
  for base in $(cgroup_bases); do
    mkdir -p "$base/pgbackup-lab/$1"
    echo "$BASHPID" >"$base/pgbackup-lab/$1/cgroup.procs"
  done
  if [ -n "$LAB_NSPAWN_UNIFIED" ]; then export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1; fi
}

# configure_node INDEX: identity, names, sshd and Patroni configuration of a node (before it boots).
configure_node() {
  local i=$1 name addr root
  name=$(node_name "$i")
  addr=$(node_addr "$i")
  root="$(node_dir "$i")/root"

  printf '%s\n' "$name" >"$root/etc/hostname"
  {
    printf '127.0.0.1 localhost\n::1 ip6-localhost ip6-loopback\n'
    hosts_block
  } >"$root/etc/hosts"

  # The node's one host key: the committed lab/ssh/<name>_host_ed25519_key (public on purpose, loopback
  # only), which Pulumi.lab.yaml pins as hostKey; a node beyond those gets a key made here.
  local committed="$LAB_SCRIPTS/ssh/${name}_host_ed25519_key"
  rm -f "$root"/etc/ssh/ssh_host_*
  if [ -f "$committed" ]; then
    install -m 0600 "$committed" "$root/etc/ssh/ssh_host_ed25519_key"
    install -m 0644 "$committed.pub" "$root/etc/ssh/ssh_host_ed25519_key.pub"
  else
    ssh-keygen -q -t ed25519 -N '' -f "$root/etc/ssh/ssh_host_ed25519_key"
  fi
  cat >"$root/etc/ssh/sshd_config.d/lab.conf" <<EOF
# pgbackup lab: this node's own loopback address only; root by key only.
HostKey /etc/ssh/ssh_host_ed25519_key
ListenAddress $addr:22
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF
  install -d -m 0700 "$root/root/.ssh"
  install -m 0600 "$SSH_KEY.pub" "$root/root/.ssh/authorized_keys"

  install -d -m 0755 "$root/etc/patroni"
  cat >"$root/etc/patroni/patroni.yml.new" <<EOF
# Patroni configuration of lab node $name (written by lab/up.sh).
scope: $LAB_SCOPE
name: $name

restapi:
  listen: $addr:8008
  connect_address: $name:8008

etcd3:
  host: 127.0.0.1:$LAB_ETCD_PORT

bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
    - data-checksums
  # Only postgresql.pg_hba counts; Patroni 3.0.2's --validate-config insists on this copy as well.
  pg_hba:
    - local all all peer
    - host replication $LAB_PG_REPLUSER 127.0.0.0/8 md5
    - host all all 127.0.0.0/8 md5

postgresql:
  listen: $addr:5432
  connect_address: $name:5432
  data_dir: $LAB_PG_DATA
  bin_dir: $LAB_PG_BIN
  pgpass: /var/lib/postgresql/.pgpass_patroni
  use_unix_socket: true
  authentication:
    superuser:
      username: $LAB_PG_SUPERUSER
      password: $LAB_PG_SUPERPASS
    replication:
      username: $LAB_PG_REPLUSER
      password: $LAB_PG_REPLPASS
    rewind:
      username: $LAB_PG_REWINDUSER
      password: $LAB_PG_REWINDPASS
  parameters:
    unix_socket_directories: /var/run/postgresql
  pg_hba:
    - local all all peer
    - host replication $LAB_PG_REPLUSER 127.0.0.0/8 md5
    - host all all 127.0.0.0/8 md5

tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
EOF
  chown "$pg_uid:$pg_gid" "$root/etc/patroni/patroni.yml.new"
  chmod 0600 "$root/etc/patroni/patroni.yml.new"
  # Keep a file the program under test may have edited since the node first booted.
  if [ -f "$root/etc/patroni/patroni.yml" ]; then
    rm -f "$root/etc/patroni/patroni.yml.new"
  else
    mv "$root/etc/patroni/patroni.yml.new" "$root/etc/patroni/patroni.yml"
  fi
  # Validate before boot: Patroni 3.0.2's validator also fails when its REST API port is already taken,
  # which is always the case on a running node.
  local out
  out=$(enter_node_cgroup "$name" && exec systemd-nspawn --quiet -D "$root" -M "$name" --register=no \
    --keep-unit -u postgres patroni --validate-config /etc/patroni/patroni.yml 2>&1 9>&-) \
    || { printf '%s\n' "$out" >&2; die "patroni --validate-config rejects $name's /etc/patroni/patroni.yml"; }
}

# boot_node INDEX: systemd-nspawn boots the node in the background, in a cgroup of its own (see common.sh).
boot_node() {
  local i=$1 name dir base
  name=$(node_name "$i")
  dir=$(node_dir "$i")
  if pid_alive "$RUN/$name.pid"; then
    log "$name already running (pid $(cat "$RUN/$name.pid"))"
    return 0
  fi
  # What a killed node left in its cgroups goes first: a Debian 13 node booted onto the unit cgroups of its
  # previous life has every new unit killed (signal 9) at start.
  for base in $(cgroup_bases); do
    if [ -d "$base/pgbackup-lab/$name" ]; then
      find "$base/pgbackup-lab/$name" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null \
        || log "$name: some of its old cgroups under $base are still in use"
    fi
  done
  (
    enter_node_cgroup "$name"
    exec setsid systemd-nspawn --quiet -D "$dir/root" -M "$name" --boot --register=no --keep-unit
  ) </dev/null >>"$LOGS/$name.console.log" 2>&1 9>&- &
  echo $! >"$RUN/$name.pid"
  log "$name started (pid $!)"
}

for i in $(seq 1 "$LAB_NODE_COUNT"); do
  if ! pid_alive "$RUN/$(node_name "$i").pid"; then
    mount_node "$(node_dir "$i")"
    configure_node "$i"
  fi
done

# known_hosts from the host keys the nodes were given (no trust on first use).
: >"$KNOWN_HOSTS.new"
for i in $(seq 1 "$LAB_NODE_COUNT"); do
  for pub in "$(node_dir "$i")"/root/etc/ssh/ssh_host_*_key.pub; do
    printf '%s,%s %s\n' "$(node_name "$i")" "$(node_addr "$i")" "$(cut -d' ' -f1,2 "$pub")" >>"$KNOWN_HOSTS.new"
  done
done
mv "$KNOWN_HOSTS.new" "$KNOWN_HOSTS"
phase "node file systems and configuration"

for i in $(seq 1 "$LAB_NODE_COUNT"); do boot_node "$i"; done

node_ssh() { ssh -F "$SSH_CONFIG" "$@"; }
for name in "${NAMES[@]}"; do
  wait_for 90 "sshd on $name" node_ssh "$name" true || die "no SSH to $name (see $LOGS/$name.console.log)"
done
phase "node boot (sshd answers)"

# ---------------------------------------------------------------- S3 check (boto3 through the TLS terminator)
S3_ENDPOINT="https://localhost:$LAB_S3_PORT"
s3_check() {
  AWS_ACCESS_KEY_ID=$LAB_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$LAB_S3_SECRET_KEY \
    "$PY" - "$S3_ENDPOINT" "$CA_FILE" "$LAB_S3_REGION" <<'PYEOF'
import sys, boto3
from botocore.config import Config
endpoint, ca, region = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, verify=ca, region_name=region,
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
bucket = "lab-selftest"
s3.create_bucket(Bucket=bucket)
s3.put_object(Bucket=bucket, Key="probe.txt", Body=b"pgbackup lab\n")
assert s3.get_object(Bucket=bucket, Key="probe.txt")["Body"].read() == b"pgbackup lab\n"
s3.delete_object(Bucket=bucket, Key="probe.txt")
s3.delete_bucket(Bucket=bucket)
PYEOF
}
wait_for 60 "S3 at $S3_ENDPOINT" s3_check || { s3_check || true; die "S3 check failed (see $LOGS/moto.log, $LOGS/nginx-error.log)"; }
log "S3 ok: create bucket, put, get, delete through $S3_ENDPOINT with the lab CA"

# ---------------------------------------------------------------- Patroni: one leader, the others streaming
leader_count() {
  local n=0 name
  for name in "${NAMES[@]}"; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$name:8008/primary")" = 200 ]; then n=$((n + 1)); fi
  done
  printf '%s\n' "$n"
}
one_leader() { [ "$(leader_count)" = 1 ]; }
wait_for 180 "a Patroni leader" one_leader || die "no single leader (patronictl -c $LAB_DIR/patronictl.yml list)"
phase "Patroni leader elected"

# Every other member appears, by its name, as a streaming client of the leader (a replica still being
# cloned also shows up as "streaming", but as application_name pg_basebackup).
all_streaming() {
  local name names
  names=$(printf '%s\n' "${NAMES[@]}" | jq -R . | jq -sc .)
  for name in "${NAMES[@]}"; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$name:8008/primary")" = 200 ]; then
      curl -sf "http://$name:8008/patroni" | jq -e --arg leader "$name" --argjson names "$names" '
        [.replication[]? | select(.state == "streaming") | .application_name] as $streaming
        | ($names - [$leader]) - $streaming == []'
      return
    fi
  done
  return 1
}
# LAB_WAIT_REPLICAS=0: do not wait (a test that boots a crashed node again handles its rejoin itself).
if [ "${LAB_WAIT_REPLICAS:-1}" != 0 ]; then
  wait_for 240 "$((LAB_NODE_COUNT - 1)) streaming replicas" all_streaming \
    || die "replicas are not streaming (patronictl -c $LAB_DIR/patronictl.yml list)"
  phase "replicas streaming"
fi

# ---------------------------------------------------------------- environment for tests and the driver
cat >"$LAB_DIR/env.sh" <<EOF
# pgbackup lab environment, written by lab/up.sh. Source it: . $LAB_DIR/env.sh
export LAB_DIR=$LAB_DIR
export LAB_RELEASE=$LAB_RELEASE
export LAB_PG_VERSION=$LAB_PG_VERSION
export LAB_PG_BIN=$LAB_PG_BIN
export LAB_PG_DATA=$LAB_PG_DATA
export LAB_NODES="${NAMES[*]}"
export LAB_NODE_ADDRS="${ADDRS[*]}"
export LAB_SSH_USER=root
export LAB_SSH_KEY=$SSH_KEY
export LAB_SSH_KNOWN_HOSTS=$KNOWN_HOSTS
export LAB_SSH_CONFIG=$SSH_CONFIG
export LAB_PATRONI_SCOPE=$LAB_SCOPE
export LAB_PATRONI_CONFIG=/etc/patroni/patroni.yml
export LAB_PATRONICTL_CONFIG=$LAB_DIR/patronictl.yml
export LAB_ETCD_ENDPOINT=$ETCD_URL
export LAB_PG_SUPERUSER=$LAB_PG_SUPERUSER
export LAB_PG_SUPERPASS=$LAB_PG_SUPERPASS
export LAB_CA_FILE=$CA_FILE
export LAB_S3_ENDPOINT=$S3_ENDPOINT
export LAB_S3_HOST=localhost
export LAB_S3_PORT=$LAB_S3_PORT
export LAB_S3_REGION=$LAB_S3_REGION
export LAB_PYTHON=$PY
export AWS_ACCESS_KEY_ID=$LAB_S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$LAB_S3_SECRET_KEY
export AWS_DEFAULT_REGION=$LAB_S3_REGION
export AWS_CA_BUNDLE=$CA_FILE
EOF
chmod 0600 "$LAB_DIR/env.sh"
# The same values as JSON, for tests that would rather not parse shell.
(
  # shellcheck source=/dev/null
  . "$LAB_DIR/env.sh"
  jq -nS 'env | with_entries(select(.key | test("^(LAB_|AWS_)"))) | del(.LAB_LOCKED)'
) >"$LAB_DIR/env.json"
chmod 0600 "$LAB_DIR/env.json"

patronictl -c "$LAB_DIR/patronictl.yml" list
log "lab up in $(elapsed)s; environment: . $LAB_DIR/env.sh"
