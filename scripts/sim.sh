#!/usr/bin/env bash
# Runs the deterministic simulator: `scripts/sim.sh [SEEDS] [START]` runs SEEDS seeds from START
# (default 100 from 0) and prints every failing seed with its replay command;
# `scripts/sim.sh --replay SEED` prints one seed's trace. PROFILE=debug builds without --release.
# Built with --workspace so features resolve as in every other build (no second RocksDB build).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
flags=(--release)
if [ "${PROFILE:-release}" = debug ]; then profile=debug; flags=(); fi
cargo build --quiet --locked --workspace "${flags[@]}" --bin kvsim
exec "${CARGO_TARGET_DIR:-target}/$profile/kvsim" "$@"
