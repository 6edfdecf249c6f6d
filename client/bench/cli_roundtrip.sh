#!/usr/bin/env bash
# CLI round trip across two federated relays: `send` on relay A, then `recv`
# on relay B repeated until the message is printed. Prints each round trip
# in ms and the median. Usage: client/bench/cli_roundtrip.sh [ROUNDS]
# Needs target/debug/courier and target/debug/courier-client (cargo build
# -p courier-node --bin courier && cargo build -p courier-client).
set -euo pipefail
rounds=${1:-20}
bin=${BIN_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target/debug}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }

start() { # name dir bootstrap
  local http="127.0.0.1:$(port SOCK_STREAM)" p2p="/ip4/127.0.0.1/udp/$(port SOCK_DGRAM)/quic-v1"
  "$bin/courier" init --data-dir "$2" --name "$1" --http "$http" --p2p "$p2p" >/dev/null
  COURIER_FEDERATION_BOOTSTRAP="$3" RUST_LOG=warn "$bin/courier" serve --registration open --data-dir "$2" >"$2.out" 2>/dev/null &
  pids+=($!)
  until grep -q "listening http=" "$2.out" 2>/dev/null; do sleep 0.1; done
  echo "http://$http"
}

url_a=$(start relay-a.test "$work/a" "[]")
addr_a=$("$bin/courier" id --data-dir "$work/a" | grep /p2p/ | head -1)
url_b=$(start relay-b.test "$work/b" "[\"$addr_a\"]")
c="$bin/courier-client"
"$c" --state "$work/alice" register alice@relay-a.test --relay "$url_a" >/dev/null
"$c" --state "$work/bob" register bob@relay-b.test --relay "$url_b" >/dev/null
# Warm up: peering and session setup are not measured.
until "$c" --state "$work/alice" send bob@relay-b.test warm-up 2>/dev/null; do sleep 0.3; done
until [ -n "$("$c" --state "$work/bob" recv)" ]; do sleep 0.05; done

times=()
for i in $(seq 1 "$rounds"); do
  t0=$(date +%s%N)
  "$c" --state "$work/alice" send bob@relay-b.test "round $i"
  until [ -n "$("$c" --state "$work/bob" recv)" ]; do :; done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  times+=("$ms")
  echo "round $i: ${ms} ms"
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "median_ms=" a[int((NR+1)/2)] " min_ms=" a[1] " max_ms=" a[NR] " rounds=" NR}'
