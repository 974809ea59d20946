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

# The operator tests run a real kube-apiserver and etcd built from Go modules (several minutes the first
# time, cached in /var/tmp/kvcluster-tools after that). Build them while cargo builds, at low priority.
kube_env="$(mktemp)"
kube_log="$(mktemp)"
trap 'rm -f "$kube_env" "$kube_log"' EXIT
scripts/kube/install.sh >"$kube_env" 2>"$kube_log" &
kube_install=$!

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (every target: the system tests start the binaries; one selection keeps one RocksDB build)"
cargo build --workspace --all-targets --locked
echo "== kube-apiserver, etcd, kubectl, helm (scripts/kube/install.sh)"
if wait "$kube_install"; then
  set -a
  # shellcheck disable=SC1090
  . "$kube_env"
  set +a
  cat "$kube_env"
else
  cat "$kube_log" >&2
  echo "test.sh: building the Kubernetes test binaries failed (log above)" >&2
  [ "${CI:-}" = "true" ] && exit 1
fi
echo "== cargo test"
cargo test --workspace --locked "$@"
