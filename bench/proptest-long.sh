#!/usr/bin/env bash
# The routing and residency property tests in their long mode (issue 20, item 5):
# CASES (default 1000) generated policies against the real binary and four mock
# upstreams (crates/bulwark/tests/routing.rs: no class reaches a forbidden upstream,
# personal data and credentials included), and 100 times as many cases of the policy
# engine's own properties (crates/bulwark-policy). Prints the run summaries.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-1000}
cargo build --release -p bulwark -p bulwark-policy --tests --quiet
start=$(date +%s)
PROPTEST_CASES=$((CASES * 100)) cargo nextest run --release -p bulwark-policy 2>&1 | grep -E "Summary|FAIL"
PROPTEST_CASES=$CASES cargo nextest run --release -p bulwark --test routing \
  no_class_reaches 2>&1 | grep -E "PASS|FAIL|panicked|Summary"
echo "proptest-long: $CASES routing cases and $((CASES * 100)) per policy property in $(($(date +%s) - start)) s"
