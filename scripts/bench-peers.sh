#!/usr/bin/env bash
# Usage: scripts/bench-peers.sh [--fsync] [DURATION] — kvcluster against its peers, same run, same client:
# on loopback a 3-node kvcluster (N=3, W=R=2), a 3-member etcd (Debian etcd-server) and one Redis
# (appendfsync everysec), each driven by `kvctl bench` with the same settings (write-only, then YCSB C,
# then A; 100-byte values, uniform keys over 10,000 preloaded keys, 64 clients spread over every
# endpoint), and prints one table: ops/s, p50, p99, server CPU-s per 1,000 ops (/proc/PID/stat of every
# server process) and kvcluster's ops/s over the peer's. Durability is matched where the peer allows it:
# by default kvcluster `--durability periodic` against etcd `--unsafe-no-fsync`; with --fsync kvcluster
# `fsync` against etcd's default (fsync per commit). Redis always syncs its AOF once a second.
# Needs $BIN (a directory with kvnode and kvctl; release builds for figures worth keeping) or
# $KVNODE and $KVCTL. Bounded in time: each run has --duration plus a timeout; stops all it started.
set -euo pipefail
fsync=false
if [ "${1:-}" = "--fsync" ]; then fsync=true; shift; fi
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

load=(--keys 10000 --value-size 100 --distribution uniform --clients 64 --timeout 5s)
run() { # SYSTEM TARGET ENDPOINTS PIDS WORKLOAD: one measured run, its JSON in SYSTEM-WORKLOAD.json
  local system=$1 target=$2 eps=$3 pids=$4 workload=$5 pid_args=() pid
  for pid in $pids; do pid_args+=(--server-pid "$pid"); done
  timeout 300 "$KVCTL" bench --target "$target" --endpoints "$eps" "${load[@]}" --workload "$workload" \
    --duration "$duration" --warmup 1s "${pid_args[@]}" --json > "$system-$workload.json"
}
systems=(kvcluster etcd redis)
declare -A targets=([kvcluster]=kvcluster [etcd]=etcd [redis]=redis)
declare -A eps=([kvcluster]=$kv_endpoints [etcd]=$etcd_endpoints [redis]=127.0.0.1:16379)
declare -A pids=([kvcluster]="${bench_pids[*]}" [etcd]="${etcd_pids[*]}" [redis]=$redis_pid)
for system in "${systems[@]}"; do
  echo "bench-peers: $system: preload, then write, c and a for $duration each" >&2
  timeout 600 "$KVCTL" bench --target "${targets[$system]}" --endpoints "${eps[$system]}" "${load[@]}" \
    --preload --duration 1s --max-ops 1 --json > /dev/null
  for workload in write c a; do
    run "$system" "${targets[$system]}" "${eps[$system]}" "${pids[$system]}" "$workload"
  done
done

python3 - "$durability" "$duration" <<'PY'
import json, sys
durability, duration = sys.argv[1], sys.argv[2]
print(f"kvcluster --durability {durability}; etcd {'default fsync' if durability == 'fsync' else '--unsafe-no-fsync'}; "
      f"redis appendfsync everysec; 64 clients, {duration} per run, 100 B values, 10,000 uniform keys")
print(f"{'system':<10} {'workload':<8} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU-s/1000':>10} {'kvcluster/x':>11}")
reports = {}
for system in ("kvcluster", "etcd", "redis"):
    for workload in ("write", "c", "a"):
        with open(f"{system}-{workload}.json") as f:
            reports[system, workload] = json.load(f)
for system in ("kvcluster", "etcd", "redis"):
    for workload in ("write", "c", "a"):
        r = reports[system, workload]
        total = next(o for o in r["operations"] if o["operation"] == "total")
        kv = next(o for o in reports["kvcluster", workload]["operations"] if o["operation"] == "total")
        cpu = r.get("server_cpu_s_per_1000_ops")
        ratio = kv["ops_per_sec"] / total["ops_per_sec"] if total["ops_per_sec"] else float("nan")
        print(f"{system:<10} {workload:<8} {total['ops_per_sec']:>10.0f} {total['p50_ms']:>8.2f} {total['p99_ms']:>8.2f} "
              f"{total['errors']:>7} {('%.3f' % cpu) if cpu is not None else '-':>10} {ratio:>10.2f}x")
PY
