#!/usr/bin/env bash
# Usage: scripts/bench-batch.sh [K] — what one batch of K operations (default 100) costs against K single requests:
# 3 kvnode processes on loopback (N=3, W=R=2), kvctl bench with --batch 1 and --batch K over the same preloaded keys,
# and the nodes' CPU-seconds (utime+stime from /proc/PID/stat) around each run, per 1,000 operations.
set -euo pipefail
k=${1:-100}; B=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug}; dir=${TMPDIR:-/tmp}/kvbench-batch
rm -rf "$dir"; mkdir -p "$dir"; here=$(cd "$(dirname "$0")" && pwd); cd "$dir"
. "$here/lib/bench-cluster.sh"
start_bench_cluster 18080
ticks=$(getconf CLK_TCK)
# utime + stime of the nodes, in clock ticks (fields 14 and 15; the command name may hold spaces).
cpu_ticks() {
  local total=0 p
  for p in "${bench_pids[@]}"; do
    total=$((total + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
  done
  echo "$total"
}
load=(--endpoints "$endpoints" --keys 10000 --distribution uniform --read-ratio 0.5 --clients 16)
"$B/kvctl" bench "${load[@]}" --preload --duration 1s --max-ops 1 > /dev/null
printf '%-6s %10s %10s %10s %14s\n' batch ops/s p50_ms p99_ms cpu_s/1k_ops
for batch in 1 "$k"; do
  before=$(cpu_ticks)
  "$B/kvctl" bench "${load[@]}" --batch "$batch" --duration 15s --json > "batch-$batch.json"
  after=$(cpu_ticks)
  jq -r --arg b "$batch" --argjson cpu "$((after - before))" --argjson hz "$ticks" \
    '.operations[] | select(.operation == "total")
     | [$b, (.ops_per_sec | round), .p50_ms, .p99_ms, ($cpu / $hz / .ops * 1000)] | @tsv' "batch-$batch.json" \
    | awk -F'\t' '{printf "%-6s %10s %10.2f %10.2f %14.3f\n", $1, $2, $3, $4, $5}'
done
