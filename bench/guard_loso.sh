#!/usr/bin/env bash
# The guard's first stage on sources it has never seen (issue 19): leave one source out,
# per source, per language and per kind, beside another offline detector on the same
# texts, and the hand-written probes in fourteen languages.
#   bench/guard_loso.sh            (about 10 minutes on two cores)
# Writes target/guard-loso/{loso.md,loso.jsonl,side_by_side.md}; BENCHMARKS.md quotes them.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=target/guard-data
OUT=target/guard-loso
VENV=target/guard-venv
mkdir -p "$OUT"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet -r crates/bulwark-guard/train/requirements.txt prompt-injection-sanitizer==0.1.1
"$VENV/bin/python" crates/bulwark-guard/train/prepare.py "$DATA"
"$VENV/bin/python" crates/bulwark-guard/train/documents.py "$DATA"
cargo build --release --locked -p bulwark-guard --example loso
LOSO_OUT="$OUT/loso.jsonl" target/release/examples/loso "$DATA" | tee "$OUT/loso.md"
"$VENV/bin/python" bench/guard_loso.py "$OUT/loso.jsonl" | tee "$OUT/side_by_side.md"
