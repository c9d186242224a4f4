#!/usr/bin/env bash
# Runs every benchmark in one go and writes bench/results/<timestamp>.jsonl.
#   bench/run.sh            # gateway overhead (with LiteLLM) and local engine
#   bench/run.sh gateway    # only one of them
#   bench/run.sh engine
#   bench/run.sh grammar    # constrained decoding against llama-cpp-python, same grammar
#   bench/run.sh watermark  # the watermark: decode speed, perplexity, edits survived, detection speed
#   bench/run.sh logic      # the gateway's per-request logic, no network
#   bench/run.sh guard      # the guard: quality on the dev split and on documents (vs prompt-guardrail), PII, speed
#   bench/run.sh audit      # the audit log: records per second, crypto cost
#   bench/run.sh supply     # model hashing/scanning GB/s; pickle scan vs picklescan, modelscan
# Set-up (first run only): wrk from Debian, a venv in bench/.venv with the pinned
# llama-cpp-python (built from source with the same CPU flags as Bulwark) and LiteLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
VENV=${BENCH_VENV:-bench/.venv}
what=${1:-all}
case "$what" in all|gateway|engine|grammar) needs_venv=1 ;; *) needs_venv= ;; esac
if [ -n "$needs_venv" ] && { [ ! -x "$VENV/bin/litellm" ] || ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; }; then
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DLLAMA_CURL=OFF -DGGML_NATIVE=ON" "$VENV/bin/pip" install --quiet --no-cache-dir \
    llama-cpp-python==0.3.36 'litellm[proxy]==1.100.5'
fi
cargo build --release --locked -p bulwark -p bulwark-testkit
cargo build --release --locked -p bulwark-engine --example batch_throughput --example schema_gbnf \
  --example watermark_bench
cargo build --release --locked -p bulwark-server --example hot_path_cost
cargo build --release --locked -p bulwark-guard --example scan_cost --example eval_pii
cargo build --release --locked -p bulwark-audit --example throughput
cargo build --release --locked -p bulwark-supply --example supply_throughput
mkdir -p bench/results
out="bench/results/$(date -u +%Y%m%dT%H%M%SZ).jsonl"
cd bench
if [ "$what" = all ] || [ "$what" = gateway ]; then
  LITELLM_BIN="../$VENV/bin/litellm" "../$VENV/bin/python" gateway.py | tee -a "../$out"
fi
if [ "$what" = all ] || [ "$what" = engine ]; then
  "../$VENV/bin/python" engine.py | tee -a "../$out"
fi
if [ "$what" = all ] || [ "$what" = grammar ]; then
  "../$VENV/bin/python" grammar.py | tee -a "../$out"
fi
if [ "$what" = all ] || [ "$what" = watermark ]; then
  ../target/release/examples/watermark_bench ../models/SmolLM2-135M-Instruct.Q4_1.gguf \
    ../crates/bulwark-engine/tests/data/human_sentences.txt 3 | tee -a "../$out"
fi
if [ "$what" = all ] || [ "$what" = logic ]; then
  ../target/release/examples/hot_path_cost | tee -a "../$out"
fi
if [ "$what" = all ] || [ "$what" = guard ]; then
  GVENV=.venv-guard
  [ -x "$GVENV/bin/python" ] || python3 -m venv "$GVENV"
  "$GVENV/bin/pip" install --quiet pyarrow==26.0.1 prompt-guardrail==1.0.1 scikit-learn==1.7.2
  "$GVENV/bin/python" ../crates/bulwark-guard/train/prepare.py ../target/guard-data
  BULWARK_MODEL_DIR=../models "$GVENV/bin/python" guard.py ../target/guard-data/dev.jsonl ../target/release/bulwark | tee -a "../$out"
  BULWARK_MODEL_DIR=../models "$GVENV/bin/python" documents.py ../target/guard-data ../target/release/bulwark | tee -a "../$out"
  ../target/release/examples/eval_pii | tee -a "../$out"
  ../target/release/examples/scan_cost ../models/all-MiniLM-L6-v2 | tee -a "../$out"
fi
if [ "$what" = all ] || [ "$what" = audit ]; then
  ../target/release/examples/throughput ../target | tee -a "../$out"
fi
if [ "$what" = all ] || [ "$what" = supply ]; then
  SVENV=.venv-supply
  [ -x "$SVENV/bin/python" ] || python3 -m venv "$SVENV"
  "$SVENV/bin/pip" install --quiet modelscan==0.8.8 picklescan==1.0.5
  "$SVENV/bin/python" supply.py | tee -a "../$out"
fi
echo "results: $out"
