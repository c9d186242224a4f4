#!/usr/bin/env bash
# Sets up, builds and serves the default model on 127.0.0.1:8080.
# Extra arguments go to `bulwark serve` (e.g. --config bulwark.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked -p bulwark
exec ./target/release/bulwark serve "$@"
