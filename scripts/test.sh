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
# Clippy lints run inside the one build, with clippy-driver as the workspace crates' compiler (what
# `cargo clippy` does, but in build mode): `cargo clippy` checks the dependencies in check mode, where
# cargo cannot share build-script dependencies with the build, and so compiles RocksDB's C++ a second
# time (12-15 minutes cold). The wrapper stays set for `cargo test`, so nothing is rebuilt there.
RUSTC_WORKSPACE_WRAPPER="${RUSTC_WORKSPACE_WRAPPER:-$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)}"
if [ -z "$RUSTC_WORKSPACE_WRAPPER" ]; then
  echo "test.sh: clippy-driver not found (rustup component add clippy)" >&2
  exit 1
fi
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
echo "== cargo build with clippy lints, warnings denied (every target: the system tests start the binaries)"
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
