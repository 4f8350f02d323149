#!/usr/bin/env bash
# What checking every declared column costs when a query reads only some.
#
#   benches/formats.sh [ROWS]      (default: 1000000 rows)
#   OLD_WEIR=path/to/weir benches/formats.sh   also measures another build
#
# A JSON or CSV record is good or bad whatever the query reads, so Weir
# parses every declared column of it, not only the columns the query needs.
# This measures, for ROWS bids as JSON and as CSV (10 files each), pinned to
# one core, a stateless query that reads 2 of the 7 columns against
# `SELECT *`: the narrow query now pays for parsing the other 5. Each run is
# `weir run --trigger available-now` into the blackhole sink, best of 3.
# Writes benches/results/formats-<ROWS>.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
WORK=${WORK:-target/bench-formats}

cargo build --release -q -p weir-cli --bin weir --example gen_bids
WEIR=target/release/weir
rm -rf "$WORK" && mkdir -p "$WORK"
for f in json csv; do
  target/release/examples/gen_bids "$WORK/$f" "$ROWS" 10 7 "$f" 2>/dev/null
done

now() { date +%s.%N; }
# Best wall time of three runs of a job reading FORMAT with SELECT COLUMNS
# (with the binary WEIR).
measure() {
  local format=$1 columns=$2 best="" t0 t
  cat > "$WORK/job.sql" <<SQL
CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR)
  WITH ('connector' = 'files', 'path' = '$WORK/$format/', 'format' = '$format');
CREATE TABLE nowhere WITH ('connector' = 'blackhole');
INSERT INTO nowhere SELECT $columns FROM bids;
SQL
  for _ in 1 2 3; do
    rm -rf "$WORK/job.checkpoint"
    t0=$(now)
    taskset -c 0 "$WEIR" run "$WORK/job.sql" --trigger available-now 2>/dev/null
    t=$(echo "$(now) - $t0" | bc)
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}

rows=""
cost=""
for f in json csv; do
  narrow=$(measure "$f" "date_time, price")
  wide=$(measure "$f" "*")
  rows="$rows| $f | this build | ${narrow}s | $(echo "$ROWS / $narrow" | bc) | ${wide}s | $(echo "$ROWS / $wide" | bc) | $(echo "scale=2; $narrow / $wide" | bc) |
"
  if [ -n "${OLD_WEIR:-}" ]; then
    NEW_WEIR=$WEIR
    WEIR=$OLD_WEIR
    old_narrow=$(measure "$f" "date_time, price")
    old_wide=$(measure "$f" "*")
    WEIR=$NEW_WEIR
    rows="$rows| $f | \`$OLD_WEIR\` | ${old_narrow}s | $(echo "$ROWS / $old_narrow" | bc) | ${old_wide}s | $(echo "$ROWS / $old_wide" | bc) | $(echo "scale=2; $old_narrow / $old_wide" | bc) |
"
    cost="$cost $f: a narrow query takes $(echo "scale=2; $narrow / $old_narrow" | bc)x the time it took (SELECT * $(echo "scale=2; $wide / $old_wide" | bc)x)."
  fi
done

report="benches/results/formats-$ROWS.md"
cat > "$report" <<MD
# Checking every declared column: JSON and CSV, $ROWS rows, 1 core

Measured $(date -u +%Y-%m-%d) by \`benches/formats.sh $ROWS\` on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)).
Whole \`weir run\` processes into the blackhole sink, best of 3.

| format | binary | 2 of 7 columns | rows/s | \`SELECT *\` | rows/s | narrow / wide time |
|---|---|---|---|---|---|---|
$rows
A record is checked against every declared column whatever the query
reads, so reading 2 columns now costs about what reading all 7 does.
${OLD_WEIR:+Against \`$OLD_WEIR\` (a build that checked only the columns a query reads):$cost}
Every run is pinned to one core (\`taskset -c 0\`) of the machine's $(nproc).
MD
cat "$report"
