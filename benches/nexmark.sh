#!/usr/bin/env bash
# Nexmark on Weir: every query in benches/nexmark/ over the same generated
# events, with checkpoints on, to a Parquet sink and to the blackhole sink,
# beside the same query as a DataFusion batch query over the events stored as
# Parquet (the ceiling).
#
#   benches/nexmark.sh [EVENTS] [-- extra options for `nexmark suite`]
#
# EVENTS defaults to 10000000. Builds release binaries once (weir and the
# harness, cli/examples/nexmark/main.rs), writes the events as Parquet once per
# size under target/bench-nexmark/, runs everything pinned to CPU 0, and
# writes benches/results/nexmark-<EVENTS>.md and .json. Options after `--`
# go to the harness, e.g. `-- --queries q0,q7_agg --batch-events 500000`.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-10000000}
shift || true
[ "${1:-}" = "--" ] && shift

cargo build --release -q -p weir-cli --bin weir --example nexmark
exec target/release/examples/nexmark suite --events "$EVENTS" --weir target/release/weir "$@"
