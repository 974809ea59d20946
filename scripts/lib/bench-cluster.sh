# Sourced by the bench scripts: start_bench_cluster PORT [kvnode args...] starts 3 kvnode processes on
# loopback in the current directory (N=3, W=R=2, one shared context key; client ports PORT..PORT+2,
# peer ports PORT+1000..), stops them on exit, waits until each is ready and sets $endpoints.
# Needs $B, the directory of the kvnode and kvctl binaries.
start_bench_cluster() {
  local port=$1 i members=()
  shift
  for i in 0 1 2; do
    members+=("{\"id\":\"kv-$i\",\"address\":\"127.0.0.1:$((port + i))\",\"peer_address\":\"127.0.0.1:$((port + 1000 + i))\"}")
  done
  local IFS=,
  echo "{\"cluster\":\"bench\",\"epoch\":1,\"n\":3,\"w\":2,\"r\":2,\"partitions\":256,\"vnodes\":64,\"members\":[${members[*]}]}" > cluster.json
  unset IFS
  # Every member of a cluster of several needs the same context key.
  openssl rand -hex 32 > context.key
  bench_pids=()
  for i in 0 1 2; do
    "$B/kvnode" --node-id kv-$i --listen 127.0.0.1:$((port + i)) --peer-listen 127.0.0.1:$((port + 1000 + i)) \
      --data-dir kv-$i --cluster-config cluster.json --context-key-file context.key "$@" > kv-$i.out 2> kv-$i.log &
    bench_pids+=($!)
  done
  trap 'touch stop; kill "${bench_pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
  endpoints=http://127.0.0.1:$port,http://127.0.0.1:$((port + 1)),http://127.0.0.1:$((port + 2))
  for i in 0 1 2; do
    local tries=0
    until curl -sf "http://127.0.0.1:$((port + i))/health/ready" > /dev/null; do
      tries=$((tries + 1))
      if [ "$tries" -gt 100 ]; then
        echo "kv-$i is not ready after 20 s: $(tail -n 3 kv-$i.log)" >&2
        exit 1
      fi
      sleep 0.2
    done
  done
}

# CPU-seconds (user + system) the bench cluster's nodes have used so far.
bench_cluster_cpu() {
  local ticks=0 pid fields
  for pid in "${bench_pids[@]}"; do
    # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
    read -r -a fields <<< "$(sed 's/^.*) //' "/proc/$pid/stat")"
    ticks=$((ticks + fields[11] + fields[12]))
  done
  python3 -c "print($ticks / $(getconf CLK_TCK))"
}

# Reads a `kvctl bench --json` report on stdin and prints one line: LABEL, then each operation's
# rate, p50, p99 and errors; with CPU-SECONDS (the nodes' CPU over the run), also CPU-s per 1,000 ops.
bench_summary() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
rows = ["%s %.0f/s p50 %.2f p99 %.2f ms errors %d" % (o["operation"], o["ops_per_sec"], o["p50_ms"], o["p99_ms"], o["errors"])
        for o in r["operations"] if o["ops"] or o["errors"]]
line = sys.argv[1] + ": " + "; ".join(rows)
if len(sys.argv) > 2:
    total = next(o for o in r["operations"] if o["operation"] == "total")
    line += "; server %.3f CPU-s per 1,000 ops" % (float(sys.argv[2]) * 1000 / max(total["ops"], 1))
print(line)' "$@"
}
