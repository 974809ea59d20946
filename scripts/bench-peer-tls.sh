#!/usr/bin/env bash
# Usage: scripts/bench-peer-tls.sh plain|mtls — peer mTLS cost: 3 kvnode processes on loopback (N=3, W=R=2), then kvctl bench.
set -euo pipefail
mode=${1:?plain or mtls}; B=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug}; dir=${TMPDIR:-/tmp}/kvbench-tls/$mode
rm -rf "$dir"; mkdir -p "$dir"; here=$(cd "$(dirname "$0")" && pwd); cd "$dir"
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
. "$here/lib/bench-cluster.sh"
start_bench_cluster 18080 "${tls[@]}"
"$B/kvctl" bench --endpoints "$endpoints" \
  --keys 1000 --preload --warmup 2s --duration 15s
