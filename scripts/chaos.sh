#!/usr/bin/env bash
# The long chaos command: runs every chaos test (tests/tests/chaos.rs) RUNS times with fresh seeds and
# FAULTS seconds of faults each, plus the crash-cycle and register tests once. Needs root, iproute2 and
# iptables (scripts/install-deps.sh). Each run prints its seed; replay one with
#   KVCHAOS_SEED=<seed> KVCHAOS_FAULTS_SECONDS=<seconds> cargo test --workspace --all-targets -- --exact <test>
#
#   scripts/chaos.sh                  # 3 rounds of 60 s of faults per test
#   RUNS=10 FAULTS=120 scripts/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
runs="${RUNS:-3}"
export KVCHAOS_FAULTS_SECONDS="${FAULTS:-60}"
unset KVCHAOS_SEED
# A chaos test that cannot run must fail here, not skip: a long run that tested nothing is no run.
export CI=true

cargo build --workspace --all-targets --locked
for round in $(seq 1 "$runs"); do
  echo "== chaos round $round of $runs: ${KVCHAOS_FAULTS_SECONDS} s of faults per test"
  cargo test --workspace --all-targets --locked -- --nocapture lose_no_acknowledged_write 2>&1 |
    grep --line-buffered -E '^(== |   [a-z])|seed [0-9]+; replay|ring change|test result: ok\. [1-9]|SKIPPED|FAILED|panicked'
done
echo "== crash cycles and registers"
cargo test --workspace --all-targets --locked -- --nocapture \
  hundred_kill9_cycles_lose_no_fsynced_write a_read_after_an_acknowledged_write_sees_it_or_a_later_one
