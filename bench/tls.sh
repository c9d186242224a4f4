#!/usr/bin/env bash
# TLS handshake cost: X25519MLKEM768 vs X25519 against Bulwark's listener, same run.
#   bench/tls.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p bulwark --example tls_handshakes
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=Bench CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout key.pem -out leaf.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile leaf.ext -out cert.pem 2>/dev/null
cat > bulwark.toml <<TOML
[server.tls]
cert = "cert.pem"
key = "key.pem"
[[upstreams]]
name = "none"
base_url = "http://127.0.0.1:9/v1"
models = { m = "m" }
TOML
cd - >/dev/null
BULWARK_LOG=warn BULWARK_DATA_DIR="$dir/data" target/release/bulwark serve --listen 127.0.0.1:0 \
  --config "$dir/bulwark.toml" > "$dir/out" &
pid=$!
for _ in $(seq 100); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's|.*https://||p' "$dir/out" | head -1)
target/release/examples/tls_handshakes "$addr" "$dir/ca.pem" "${1:-10}"
