#!/usr/bin/env bash
# Crash safety of the audit log (issue 20, item 1), longer than CI runs it:
#   - ROUNDS (default 100) SIGKILLs of the real binary at random points under eight
#     concurrent clients (four JSON, four streaming), `sync` durability: every request
#     that got a response must be in the log, the chain must verify, and every restart
#     must work (crates/bulwark/tests/audit.rs, killed_mid_traffic_...);
#   - DISK_RUNS (default 10) runs of the full-disk test: the log on a 192 KiB tmpfs
#     (needs root), JSON and streams until requests get 503 audit_unavailable, nothing
#     acknowledged unrecorded, service back when space returns.
# Prints each run's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-100}
DISK_RUNS=${DISK_RUNS:-10}
cargo build --release -p bulwark --tests --quiet
BULWARK_KILL_ROUNDS=$ROUNDS cargo nextest run --release -p bulwark --test audit \
  --no-capture killed_mid_traffic 2>&1 | grep -E "SIGKILLs|seed|PASS|FAIL|panicked"
for i in $(seq "$DISK_RUNS"); do
  cargo nextest run --release -p bulwark --test audit --no-capture a_full_disk 2>&1 |
    grep -E "disk full:|FAIL|panicked"
done
