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
