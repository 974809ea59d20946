#!/usr/bin/env bash
# The fuzz command: runs the property tests that feed generated bad input to every decoder of outside
# bytes, with far more cases than the test suite does (which runs a bounded share of them), and a long
# run of generated garbage requests against a real node. Over a million inputs in all by default.
#
#   scripts/fuzz.sh                       # 250,000 cases per decoder property, 20,000 HTTP requests
#   CASES=1000000 HTTP_CASES=100000 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cases="${CASES:-250000}"
http_cases="${HTTP_CASES:-20000}"

cargo build --workspace --all-targets --locked
echo "== decoders: $cases cases each (context tokens, on-disk records, flipped record bits, peer messages)"
PROPTEST_CASES="$cases" cargo test --workspace --all-targets --locked -- \
  context_decoder_never_panics decoder_never_panics flipped_bytes_never_panic the_decoder_never_panics
echo "== HTTP request path: $http_cases generated requests against a real kvnode"
FUZZ_HTTP_CASES="$http_cases" cargo test --workspace --all-targets --locked -- \
  --nocapture random_requests_get_well_formed_answers
