#!/usr/bin/env bash
# Usage: scripts/bench-backup.sh — client p99 unloaded and while backups run back to back.
# 3 kvnode processes on loopback (N=3, W=R=2, --backup-rate as given in KVNODE_BACKUP_RATE, default 64MiB),
# KEYS keys of VSIZE bytes preloaded, then `kvctl bench` ROUNDS times without and with a backup running.
# Prints one line per run: phase, ops/s, p50, p99 (ms), and the backups' sizes and times.
set -euo pipefail
B=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug}; dir=${TMPDIR:-/tmp}/kvbench-backup
KEYS=${KEYS:-50000}; VSIZE=${VSIZE:-1000}; DUR=${DUR:-20s}; ROUNDS=${ROUNDS:-3}
rm -rf "$dir"; mkdir -p "$dir/backups"; here=$(cd "$(dirname "$0")" && pwd); cd "$dir"
. "$here/lib/bench-cluster.sh"
start_bench_cluster 18180
bench() { "$B/kvctl" bench --endpoints $endpoints --keys "$KEYS" --value-size "$VSIZE" --json "$@"; }
bench --preload --duration 1s > /dev/null
echo "preloaded $KEYS keys of $VSIZE bytes"
# At most 40 backups per round, each created and then deleted, until the round's bench ends.
backups() {
  for i in $(seq 1 40); do
    [ -e stop ] && break
    start=$(date +%s.%N)
    "$B/kvctl" --endpoint "${endpoints%%,*}" backup create --target "file://$dir/backups" --id "r$1-$i" > /dev/null
    echo "backup r$1-$i: $(du -sm "backups" | cut -f1) MiB in $(python3 -c "import time;print(round(time.time()-$start,1))") s"
    "$B/kvctl" --endpoint "${endpoints%%,*}" backup delete "r$1-$i" --target "file://$dir/backups" > /dev/null
  done
}
for r in $(seq 1 "$ROUNDS"); do
  bench --duration "$DUR" | bench_summary unloaded
  rm -f stop; backups "$r" & bp=$!
  sleep 2
  bench --duration "$DUR" | bench_summary during-backup
  touch stop; wait "$bp"
done
