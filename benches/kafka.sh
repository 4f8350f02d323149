#!/usr/bin/env bash
# The Kafka source against the files source on the same JSON bids, and the
# latency from producing a record to its row committed in Parquet.
#
#   benches/kafka.sh [EVENTS]      (default 10000000 Nexmark events: 9.2M bids)
#
# Starts a tansu broker in memory on a free loopback port (WEIR_TANSU, or
# the one .ci/run installs under ~/.cache/weir-tools, or tansu on PATH),
# builds the release binary and the harness (cli/examples/kafka_bench.rs),
# runs it, and stops the broker. Writes benches/results/kafka-<EVENTS>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-10000000}
TANSU=${WEIR_TANSU:-$HOME/.cache/weir-tools/tansu-0.6.0-libsql/bin/tansu}
[ -x "$TANSU" ] || TANSU=$(command -v tansu) || {
  echo "no tansu: run .ci/run once, or cargo install tansu --version 0.6.0 --features dynostore" >&2; exit 1; }
cargo build --release -q -p weir-cli --bin weir --example kafka_bench
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >/dev/null 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
  sleep 0.1
done
target/release/examples/kafka_bench --broker "127.0.0.1:$PORT" --weir target/release/weir \
  --events "$EVENTS" --results benches/results
