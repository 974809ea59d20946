#!/usr/bin/env bash
# Usage: scripts/bench-peers.sh [--fsync] [--with-garage] [DURATION] — kvcluster against its peers, same run, same client:
# on loopback a 3-node kvcluster (N=3, W=R=2), a 3-member etcd (Debian etcd-server) and one Redis
# (appendfsync everysec), each driven by `kvctl bench` with the same settings (write-only, then YCSB C,
# then A; 100-byte values, uniform keys over 10,000 preloaded keys, 64 clients spread over every
# endpoint), and prints one table: ops/s, p50, p99, server CPU-s per 1,000 ops (/proc/PID/stat of every
# server process) and kvcluster's ops/s over the peer's. Durability is matched where the peer allows it:
# by default kvcluster `--durability periodic` against etcd `--unsafe-no-fsync`; with --fsync kvcluster
# `fsync` against etcd's default (fsync per commit). Redis always syncs its AOF once a second.
# --with-garage adds a 3-node Garage 2.5.0 (replication 3, lmdb, K2V; metadata and data fsync off, or on
# with --fsync), built once with `cargo install garage --version 2.5.0 --locked` into
# ${KVCLUSTER_TOOLS:-/var/tmp/kvcluster-tools}/garage-2.5.0 (about ten minutes on 2 cores).
# Needs $BIN (a directory with kvnode and kvctl; release builds for figures worth keeping) or
# $KVNODE and $KVCTL. Bounded in time: each run has --duration plus a timeout; stops all it started.
set -euo pipefail
fsync=false with_garage=false
while [ $# -gt 0 ]; do
  case $1 in
    --fsync) fsync=true; shift ;;
    --with-garage) with_garage=true; shift ;;
    *) break ;;
  esac
done
duration=${1:-10s}
B=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release}
KVNODE=${KVNODE:-$B/kvnode}; KVCTL=${KVCTL:-$B/kvctl}
for tool in "$KVNODE" "$KVCTL"; do
  [ -x "$tool" ] || { echo "bench-peers: $tool is not an executable (set BIN, or KVNODE and KVCTL)" >&2; exit 2; }
done
missing=()
command -v etcd > /dev/null || missing+=(etcd-server)
command -v redis-server > /dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/kvbench-peers.XXXXXX")
cd "$dir"
. "$here/lib/bench-cluster.sh"
B=$(dirname "$KVNODE")

peer_pids=()
stop_all() {
  kill "${bench_pids[@]}" "${peer_pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  cd / && rm -rf "$dir"
}

# kvcluster: 3 nodes, client ports 19080..19082.
if $fsync; then durability=fsync; else durability=periodic; fi
start_bench_cluster 19080 --durability "$durability"
kv_endpoints=$endpoints
trap stop_all EXIT

# etcd: 3 members, client ports 12379/12389/12399, peer ports one above.
etcd_flags=()
$fsync || etcd_flags=(--unsafe-no-fsync)
cluster="" etcd_endpoints=""
for i in 0 1 2; do
  cluster+="${cluster:+,}e$i=http://127.0.0.1:$((12380 + 10 * i))"
  etcd_endpoints+="${etcd_endpoints:+,}http://127.0.0.1:$((12379 + 10 * i))"
done
for i in 0 1 2; do
  c=http://127.0.0.1:$((12379 + 10 * i)) p=http://127.0.0.1:$((12380 + 10 * i))
  etcd --name "e$i" --data-dir "etcd-$i" --listen-client-urls "$c" --advertise-client-urls "$c" \
    --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" --initial-cluster "$cluster" \
    --initial-cluster-state new "${etcd_flags[@]}" > "etcd-$i.log" 2>&1 &
  peer_pids+=($!)
done
etcd_pids=("${peer_pids[@]}")

# Redis: one server, its own directory and port.
mkdir redis
redis-server --port 16379 --bind 127.0.0.1 --dir "$dir/redis" --appendonly yes --appendfsync everysec \
  --save '' > redis.log 2>&1 &
peer_pids+=($!)
redis_pid=$!

wait_ready() { # WHAT COMMAND...: retries COMMAND for 20 s
  local what=$1 tries=0; shift
  until "$@" > /dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || { echo "bench-peers: $what is not ready after 20 s" >&2; exit 1; }
    sleep 0.2
  done
}
for i in 0 1 2; do
  wait_ready "etcd e$i" curl -sf -X POST "http://127.0.0.1:$((12379 + 10 * i))/v3/kv/range" -d '{"key":"AA=="}'
done
wait_ready redis redis-cli -p 16379 ping

systems=(kvcluster etcd redis)
if $with_garage; then
  garage_root=${KVCLUSTER_TOOLS:-/var/tmp/kvcluster-tools}/garage-2.5.0
  G=$garage_root/bin/garage
  if [ ! -x "$G" ]; then
    echo "bench-peers: building Garage 2.5.0 into $garage_root (once)" >&2
    build_dir=$(mktemp -d)
    CARGO_TARGET_DIR=$build_dir nice -n 10 cargo install garage --version 2.5.0 --locked --root "$garage_root" --quiet
    rm -rf "$build_dir"
  fi
  rpc_secret=$(openssl rand -hex 32) garage_endpoints="" garage_pids=()
  for i in 0 1 2; do
    mkdir "garage-$i"
    cat > "garage-$i/garage.toml" <<TOML
metadata_dir = "$dir/garage-$i/meta"
data_dir = "$dir/garage-$i/data"
db_engine = "lmdb"
replication_factor = 3
metadata_fsync = $fsync
data_fsync = $fsync
rpc_bind_addr = "127.0.0.1:$((13901 + 10 * i))"
rpc_public_addr = "127.0.0.1:$((13901 + 10 * i))"
rpc_secret = "$rpc_secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$((13900 + 10 * i))"
root_domain = ".s3.garage"
[k2v_api]
api_bind_addr = "127.0.0.1:$((13904 + 10 * i))"
[admin]
api_bind_addr = "127.0.0.1:$((13903 + 10 * i))"
TOML
    "$G" -c "garage-$i/garage.toml" server > "garage-$i.log" 2>&1 &
    peer_pids+=($!) garage_pids+=($!)
    garage_endpoints+="${garage_endpoints:+,}http://127.0.0.1:$((13904 + 10 * i))"
  done
  g() { "$G" -c garage-0/garage.toml "$@"; }
  for i in 0 1 2; do wait_ready "garage $i" "$G" -c "garage-$i/garage.toml" status; done
  for i in 1 2; do
    g node connect "$("$G" -c "garage-$i/garage.toml" node id -q 2> /dev/null)" > /dev/null
  done
  for i in 0 1 2; do
    id=$("$G" -c "garage-$i/garage.toml" node id -q 2> /dev/null | cut -c1-64)
    g layout assign "$id" -z dc1 -c 1G > /dev/null
  done
  g layout apply --version 1 > /dev/null
  g bucket create bench > /dev/null
  key=$(g json-api CreateKey '{"name":"bench"}')
  AWS_ACCESS_KEY_ID=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["accessKeyId"])' "$key")
  AWS_SECRET_ACCESS_KEY=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["secretAccessKey"])' "$key")
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY KVCTL_BENCH_K2V_BUCKET=bench
  g bucket allow --read --write bench --key "$AWS_ACCESS_KEY_ID" > /dev/null
  systems+=(garage)
fi

load=(--keys 10000 --value-size 100 --distribution uniform --clients 64 --timeout 5s)
run() { # SYSTEM TARGET ENDPOINTS PIDS WORKLOAD: one measured run, its JSON in SYSTEM-WORKLOAD.json
  local system=$1 target=$2 eps=$3 pids=$4 workload=$5 pid_args=() pid
  for pid in $pids; do pid_args+=(--server-pid "$pid"); done
  timeout 300 "$KVCTL" bench --target "$target" --endpoints "$eps" "${load[@]}" --workload "$workload" \
    --duration "$duration" --warmup 1s "${pid_args[@]}" --json > "$system-$workload.json"
}
declare -A targets=([kvcluster]=kvcluster [etcd]=etcd [redis]=redis [garage]=garage)
declare -A eps=([kvcluster]=$kv_endpoints [etcd]=$etcd_endpoints [redis]=127.0.0.1:16379
  [garage]=${garage_endpoints:-})
declare -A pids=([kvcluster]="${bench_pids[*]}" [etcd]="${etcd_pids[*]}" [redis]=$redis_pid
  [garage]="${garage_pids[*]:-}")
for system in "${systems[@]}"; do
  echo "bench-peers: $system: preload, then write, c and a for $duration each" >&2
  timeout 600 "$KVCTL" bench --target "${targets[$system]}" --endpoints "${eps[$system]}" "${load[@]}" \
    --preload --duration 1s --max-ops 1 --json > /dev/null
  for workload in write c a; do
    run "$system" "${targets[$system]}" "${eps[$system]}" "${pids[$system]}" "$workload"
  done
done

python3 - "$durability" "$duration" "${systems[@]}" <<'PY'
import json, sys
durability, duration, systems = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"kvcluster --durability {durability}; etcd {'default fsync' if durability == 'fsync' else '--unsafe-no-fsync'}; "
      f"redis appendfsync everysec; {'garage fsync on; ' if durability == 'fsync' else ('garage fsync off; ' if 'garage' in systems else '')}64 clients, {duration} per run, 100 B values, 10,000 uniform keys")
print(f"{'system':<10} {'workload':<8} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU-s/1000':>10} {'kvcluster/x':>11}")
reports = {}
for system in systems:
    for workload in ("write", "c", "a"):
        with open(f"{system}-{workload}.json") as f:
            reports[system, workload] = json.load(f)
for system in systems:
    for workload in ("write", "c", "a"):
        r = reports[system, workload]
        total = next(o for o in r["operations"] if o["operation"] == "total")
        kv = next(o for o in reports["kvcluster", workload]["operations"] if o["operation"] == "total")
        cpu = r.get("server_cpu_s_per_1000_ops")
        ratio = kv["ops_per_sec"] / total["ops_per_sec"] if total["ops_per_sec"] else float("nan")
        print(f"{system:<10} {workload:<8} {total['ops_per_sec']:>10.0f} {total['p50_ms']:>8.2f} {total['p99_ms']:>8.2f} "
              f"{total['errors']:>7} {('%.3f' % cpu) if cpu is not None else '-':>10} {ratio:>10.2f}x")
PY
