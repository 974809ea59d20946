#!/usr/bin/env bash
# Usage: scripts/bench-batch.sh [K] — what one batch of K operations (default 100) costs against K single requests:
# 3 kvnode processes on loopback (N=3, W=R=2), kvctl bench with --batch 1 and --batch K over the same preloaded keys,
# and the nodes' CPU-seconds (utime+stime from /proc/PID/stat) around each run, per 1,000 operations.
set -euo pipefail
k=${1:-100}; B=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug}; dir=${TMPDIR:-/tmp}/kvbench-batch
rm -rf "$dir"; mkdir -p "$dir"; here=$(cd "$(dirname "$0")" && pwd); cd "$dir"
. "$here/lib/bench-cluster.sh"
start_bench_cluster 18080
load=(--endpoints "$endpoints" --keys 10000 --distribution uniform --read-ratio 0.5 --clients 16)
"$B/kvctl" bench "${load[@]}" --preload --duration 1s --max-ops 1 > /dev/null
for batch in 1 "$k"; do
  before=$(bench_cluster_cpu)
  report=$("$B/kvctl" bench "${load[@]}" --batch "$batch" --duration 15s --json)
  used=$(python3 -c "print($(bench_cluster_cpu) - $before)")
  bench_summary "batch $batch" "$used" <<< "$report"
done
