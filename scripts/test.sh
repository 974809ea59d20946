#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, builds every binary, then
# runs every test of the workspace (unit, property and system tests against real kvnode processes).
#
#   scripts/test.sh            # everything
#   scripts/test.sh -p kvnode  # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# Keep build artefacts between runs: a cold RocksDB + kube build takes over ten minutes on 2 cores.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (every target: the system tests start the binaries; one selection keeps one RocksDB build)"
cargo build --workspace --all-targets --locked
echo "== cargo test"
cargo test --workspace --locked "$@"
