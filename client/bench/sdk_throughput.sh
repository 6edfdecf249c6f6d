#!/usr/bin/env bash
# SDK messages/s for one client pair over one relay: starts a relay, runs
# the `throughput` example (N sends, then N receives). Usage:
#   client/bench/sdk_throughput.sh [N] [PROFILE_DIR_OF_EXAMPLE]
# Needs target/debug/courier and the example built:
#   cargo build -p courier-node --bin courier && cargo build -p courier-client --example throughput
set -euo pipefail
n=${1:-500}
root=$(cd "$(dirname "$0")/../.." && pwd)
example=${2:-$root/target/debug/examples}/throughput
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Rate limits off: this measures the client, not the limiter.
COURIER_RATE_LIMIT_IP_PER_SECOND=0 COURIER_RATE_LIMIT_ACCOUNT_PER_SECOND=0 \
RUST_LOG=warn "$root/target/debug/courier" serve --registration open --data-dir "$work/relay" \
  --http "127.0.0.1:$port" --p2p /ip4/127.0.0.1/udp/0/quic-v1 >"$work/out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
until grep -q "listening http=" "$work/out" 2>/dev/null; do sleep 0.1; done
"$example" "http://127.0.0.1:$port" localhost "$n"
