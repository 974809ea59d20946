#!/usr/bin/env bash
# Usage: scripts/bench-slow-node.sh — the tail when one node stops answering: the 3-node loopback
# cluster of scripts/lib/bench-cluster.sh (N=3, W=R=2), CLIENTS closed-loop clients (default 64) on
# kv-0 and kv-1 only, 100-byte values on KEYS uniform keys (default 100000, preloaded), a mixed run
# (read ratio 0.5) of DUR (default 20s) twice: once with every node up, once with kv-2 stopped by
# SIGSTOP for PAUSE (default 10s) starting 5 s in. Prints each run's rate, p50, p99 and errors.
# BIN: directory of kvnode and kvctl (default: the release build).
set -euo pipefail
B=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release}; dir=${TMPDIR:-/tmp}/kvbench-slow-node
KEYS=${KEYS:-100000}; DUR=${DUR:-20s}; CLIENTS=${CLIENTS:-64}; PAUSE=${PAUSE:-10}
rm -rf "$dir"; mkdir -p "$dir"; here=$(cd "$(dirname "$0")" && pwd); cd "$dir"
. "$here/lib/bench-cluster.sh"
start_bench_cluster 18680
paused=${bench_pids[2]}
# SIGCONT on any exit, so a stopped node is never left behind.
trap 'kill -CONT "$paused" 2>/dev/null; touch stop; kill "${bench_pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
coordinators=${endpoints%,*}
bench() {
  "$B/kvctl" bench --endpoints "$coordinators" --keys "$KEYS" --value-size 100 --clients "$CLIENTS" \
    --distribution uniform --json "$@"
}
bench --preload --duration 1s > /dev/null
echo "preloaded $KEYS keys; $CLIENTS clients on kv-0 and kv-1; kv-2 paused for ${PAUSE}s in the second run"
bench --read-ratio 0.5 --duration "$DUR" | bench_summary "all up"
( sleep 5; kill -STOP "$paused"; sleep "$PAUSE"; kill -CONT "$paused" ) &
pauser=$!
bench --read-ratio 0.5 --duration "$DUR" | bench_summary "kv-2 paused ${PAUSE}s"
wait "$pauser"
