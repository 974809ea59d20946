#!/usr/bin/env bash
# Usage: scripts/bench-peer-tls.sh plain|mtls — peer mTLS cost: 3 kvnode processes on loopback (N=3, W=R=2), then kvctl bench.
set -euo pipefail
mode=${1:?plain or mtls}; B=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug}; dir=${TMPDIR:-/tmp}/kvbench-tls/$mode
rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
cat > cluster.json <<JSON
{"cluster":"bench","epoch":1,"n":3,"w":2,"r":2,"partitions":256,"vnodes":64,"members":[
 {"id":"kv-0","address":"127.0.0.1:18080","peer_address":"127.0.0.1:19080"},
 {"id":"kv-1","address":"127.0.0.1:18081","peer_address":"127.0.0.1:19081"},
 {"id":"kv-2","address":"127.0.0.1:18082","peer_address":"127.0.0.1:19082"}]}
JSON
tls=()
if [ "$mode" = mtls ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
    -days 2 -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' > ext
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout node.key -out node.csr -subj /CN=node 2>/dev/null
  openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -set_serial 7 -days 2 -extfile ext -out node.pem 2>/dev/null
  tls=(--peer-tls-ca ca.pem --peer-tls-cert node.pem --peer-tls-key node.key)
fi
# Every member of a cluster of several needs the same context key.
openssl rand -hex 32 > context.key
pids=()
for i in 0 1 2; do
  "$B/kvnode" --node-id kv-$i --listen 127.0.0.1:1808$i --peer-listen 127.0.0.1:1908$i --data-dir kv-$i \
    --cluster-config cluster.json --context-key-file context.key "${tls[@]}" > kv-$i.out 2> kv-$i.log &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
sleep 3
"$B/kvctl" bench --endpoints http://127.0.0.1:18080,http://127.0.0.1:18081,http://127.0.0.1:18082 \
  --keys 1000 --preload --warmup 2s --duration 15s
