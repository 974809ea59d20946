#!/usr/bin/env bash
# Usage: scripts/bench-hot-path.sh — kvcluster's write and read path: 3 kvnode processes on loopback
# (N=3, W=R=2, --durability periodic, the default), CLIENTS closed-loop clients (default 64) spread over the
# three nodes, VSIZE-byte values (default 100) on KEYS uniform keys (default 100000, preloaded); a write-only
# run, then a read-only run, each DUR long (default 20s). Prints ops/s, p50, p99 and the nodes' CPU-seconds
# per 1,000 operations. BIN: directory of kvnode and kvctl (default: the release build).
set -euo pipefail
B=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release}; dir=${TMPDIR:-/tmp}/kvbench-hot-path
KEYS=${KEYS:-100000}; VSIZE=${VSIZE:-100}; DUR=${DUR:-20s}; CLIENTS=${CLIENTS:-64}
rm -rf "$dir"; mkdir -p "$dir"; here=$(cd "$(dirname "$0")" && pwd); cd "$dir"
. "$here/lib/bench-cluster.sh"
start_bench_cluster 18280
bench() {
  "$B/kvctl" bench --endpoints "$endpoints" --keys "$KEYS" --value-size "$VSIZE" --clients "$CLIENTS" \
    --distribution uniform --json "$@"
}
bench --preload --duration 1s > /dev/null
echo "preloaded $KEYS keys of $VSIZE bytes; $CLIENTS clients"
for run in write:0 read:1; do
  before=$(bench_cluster_cpu)
  report=$(bench --read-ratio "${run#*:}" --duration "$DUR")
  used=$(python3 -c "print($(bench_cluster_cpu) - $before)")
  bench_summary "${run%%:*}" "$used" <<< "$report"
done
