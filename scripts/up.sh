#!/usr/bin/env bash
# Starts a local kvcluster on loopback: installs build dependencies, builds kvnode and kvctl (release),
# then runs `kvctl up` in the foreground (Ctrl-C stops every node). Arguments go to `kvctl up`:
#
#   scripts/up.sh                       # 3 nodes on 127.0.0.1:8080..8082, data in ./kvdata
#   scripts/up.sh --nodes 5 --port 9000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p kvnode -p kvclient
exec "$CARGO_TARGET_DIR/release/kvctl" up "$@"
