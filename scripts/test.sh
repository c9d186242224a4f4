#!/usr/bin/env bash
# Sets up and runs the whole test suite: Rust unit and integration tests (which start
# the real binary and mock upstreams on loopback), then the client SDK tests (Python, and
# the OpenAI JS SDK driven from them).
# Everything builds once, in the release profile (llama.cpp compiles once per profile).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

if [ ! -x .venv/bin/pytest ] || ! cmp -s tests/sdk/requirements.txt .venv/.requirements; then
  echo "test: preparing the Python test environment (.venv)"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
  cp tests/sdk/requirements.txt .venv/.requirements
fi

# The JS test client, exactly as its lock file pins it (a few seconds).
npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

cargo fmt --all --check
# The dependency tree's licences and sources (deny.toml), with a pinned cargo-deny
# (built once, about four minutes on two cores).
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny 0.20.2"; then
  echo "test: installing cargo-deny"
  cargo install cargo-deny --locked --version 0.20.2
fi
cargo deny --log-level error check licenses bans sources
cargo build --release --locked --workspace --all-targets
# Reuses the release build's llama.cpp, so this costs seconds, not a second compile.
cargo clippy --release --locked --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --workspace --no-fail-fast
else
  cargo test --release --locked --workspace --no-fail-fast
fi
.venv/bin/pytest tests/sdk -q -p no:cacheprovider
