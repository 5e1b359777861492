#!/usr/bin/env bash
# `make demo`: a 5-peer local testnet running testnet/scenarios/demo.toml end to end.
# Usage: testnet/demo.sh [path/to/datanet-binary]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/datanet}"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/datanet-demo.XXXXXX")/net"
cleanup() { "$BIN" testnet down --dir "$DIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT
echo "demo: testnet in $DIR (peer logs: $DIR/peer-*/daemon.log)"
"$BIN" testnet up --dir "$DIR" --scenario testnet/scenarios/demo.toml
