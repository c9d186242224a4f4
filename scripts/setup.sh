#!/usr/bin/env bash
# Installs what building and running Bulwark needs on a fresh Debian machine with the
# Rust toolchain, then fetches the pinned default model. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)   # bindgen, for llama.cpp's headers
dpkg -s libgomp1 >/dev/null 2>&1 || need+=(libgomp1)           # llama.cpp's OpenMP threads
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v openssl >/dev/null 2>&1 || need+=(openssl)              # TLS tests: certificates, s_client interop
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v node >/dev/null 2>&1 || need+=(nodejs)                  # the OpenAI JS SDK test
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v ip >/dev/null 2>&1 || need+=(iproute2)                  # the air-gap test: loopback in a namespace
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 1; }
./scripts/fetch-model.sh
