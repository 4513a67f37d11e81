#!/usr/bin/env bash
# Show the state of the pgbackup lab. Exit status 0 only when every part is up and healthy.
# Usage: lab/status.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RUN="$LAB_DIR/run"
ok=true
row() { printf '%-10s %-5s %s\n' "$1" "$2" "${3:-}"; }
check() { # check NAME DETAIL COMMAND...
  local name=$1 detail=$2
  shift 2
  if "$@" >/dev/null 2>&1; then row "$name" up "$detail"; else row "$name" DOWN "$detail"; ok=false; fi
}
pid_of() { if [ -s "$1" ]; then printf 'pid %s' "$(cat "$1")"; else printf 'no pid file'; fi; }

printf 'lab dir: %s\n\n' "$LAB_DIR"
etcd_healthy() { curl -sf -m 3 "http://127.0.0.1:$LAB_ETCD_PORT/health" | jq -e '.health == "true"'; }
check etcd "$(pid_of "$RUN/etcd.pid")" etcd_healthy
check moto "$(pid_of "$RUN/moto.pid"), http://127.0.0.1:$LAB_MOTO_PORT" pid_alive "$RUN/moto.pid"
check nginx "$(pid_of "$RUN/nginx.pid"), https://localhost:$LAB_S3_PORT" pid_alive "$RUN/nginx.pid"
s3_list() {
  local py
  py=$(lab_python) || return 1
  AWS_ACCESS_KEY_ID=$LAB_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$LAB_S3_SECRET_KEY "$py" - \
    "https://localhost:$LAB_S3_PORT" "$LAB_DIR/ca/ca.pem" "$LAB_S3_REGION" <<'PYEOF'
import sys, boto3
endpoint, ca, region = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, verify=ca, region_name=region)
print(" ".join(b["Name"] for b in s3.list_buckets()["Buckets"]) or "(no buckets)")
PYEOF
}
if buckets=$(s3_list 2>/dev/null); then row s3 up "buckets: $buckets"; else row s3 DOWN "boto3 list_buckets failed"; ok=false; fi
check hosts "/etc/hosts block" grep -qx "$LAB_HOSTS_BEGIN" /etc/hosts

for i in $(seq 1 "$LAB_NODE_COUNT"); do
  name=$(node_name "$i")
  code=$(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://$name:8008/primary" || true)
  case "$code" in
    200) role=leader ;;
    503) role=replica ;;
    *) role="no REST API" ;;
  esac
  check "$name" "$(pid_of "$RUN/$name.pid"), $(node_addr "$i"), $role" \
    ssh -F "$LAB_DIR/ssh/config" -o ConnectTimeout=3 "$name" true
done

echo
if [ -f "$LAB_DIR/patronictl.yml" ] && patronictl -c "$LAB_DIR/patronictl.yml" list 2>/dev/null; then
  :
else
  echo "patronictl list: unavailable"
  ok=false
fi
$ok
