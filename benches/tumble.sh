#!/usr/bin/env bash
# Tumbling-window throughput: Weir against DataFusion batch on the same rows.
#
#   benches/tumble.sh [ROWS] [CORES]      (defaults: 10000000 rows, 1 core)
#
# Generates ROWS bids (100 per second of event time, 10% out of order, 0.1%
# late) as 20 Parquet files, then measures, pinned to CORES cores:
#   * the ceiling: DataFusion batch, `GROUP BY date_bin(10s)` COUNT/MAX/SUM;
#   * Weir: the same aggregation as a streaming job (TUMBLE 10s, checkpoints
#     on, Parquet sink), --trigger available-now --drain, 1M rows per epoch,
#     --threads CORES;
# alternating, ROUNDS times each (default 5), best of each. With more than
# one core, both also run on one core in the same rounds, for the scaling
# ratio. Writes benches/results/tumble-<ROWS>.md (-t<CORES> with more than
# one core) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
CORES=${2:-1}
WORK=${WORK:-target/bench-tumble}
CPUS=$(seq -s, 0 $((CORES - 1)))

cargo build --release -q -p weir-cli --bin weir --example gen_bids
WEIR=target/release/weir
rm -rf "$WORK" && mkdir -p "$WORK"
target/release/examples/gen_bids "$WORK/bids" "$ROWS" 20 7 2>/dev/null

cat > "$WORK/job.sql" <<SQL
CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
  WITH ('connector' = 'files', 'path' = '$WORK/bids/', 'format' = 'parquet');
CREATE TABLE out WITH ('connector' = 'files', 'path' = '$WORK/out/', 'format' = 'parquet');
INSERT INTO out
SELECT window_start, window_end, COUNT(*) AS bids, MAX(price) AS top, SUM(price) AS volume
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end;
SQL

now() { date +%s.%N; }
# The ceiling (DataFusion batch) and Weir, ROUNDS times each, alternating,
# best of each: on a shared machine the speed drifts over a minute, and
# alternating lets both see the same drift. Each Weir run starts from an
# empty checkpoint; the report's epoch times, late rows and RSS are its
# best run's.
ROUNDS=${ROUNDS:-5}
best=""
wall=""
best1=""
wall1=""
for _ in $(seq "$ROUNDS"); do
  t0=$(now)
  taskset -c "$CPUS" "$WEIR" query "SELECT date_bin(INTERVAL '10' SECOND, date_time) AS w, COUNT(*), MAX(price), SUM(price)
    FROM '$WORK/bids/' GROUP BY 1" >/dev/null
  t=$(echo "$(now) - $t0" | bc)
  if [ -z "$best" ] || [ "$(echo "$t < $best" | bc)" = 1 ]; then best=$t; fi

  rm -rf "$WORK/out" "$WORK/job.checkpoint" "$WORK/run.json"
  t0=$(now)
  /usr/bin/time -f "%M" -o "$WORK/run.rss" taskset -c "$CPUS" "$WEIR" run "$WORK/job.sql" \
    --threads "$CORES" --trigger available-now --drain --progress-json "$WORK/run.json" 2>"$WORK/weir.log"
  t=$(echo "$(now) - $t0" | bc)
  if [ -z "$wall" ] || [ "$(echo "$t < $wall" | bc)" = 1 ]; then
    wall=$t
    mv "$WORK/run.json" "$WORK/progress.json"
    mv "$WORK/run.rss" "$WORK/rss"
  fi

  # On more cores, both again on one, for the scaling ratio.
  if [ "$CORES" != 1 ]; then
    t0=$(now)
    taskset -c 0 "$WEIR" query "SELECT date_bin(INTERVAL '10' SECOND, date_time) AS w, COUNT(*), MAX(price), SUM(price)
      FROM '$WORK/bids/' GROUP BY 1" >/dev/null
    t=$(echo "$(now) - $t0" | bc)
    if [ -z "$best1" ] || [ "$(echo "$t < $best1" | bc)" = 1 ]; then best1=$t; fi
    rm -rf "$WORK/out" "$WORK/job.checkpoint"
    t0=$(now)
    taskset -c 0 "$WEIR" run "$WORK/job.sql" --threads 1 --trigger available-now --drain 2>/dev/null
    t=$(echo "$(now) - $t0" | bc)
    if [ -z "$wall1" ] || [ "$(echo "$t < $wall1" | bc)" = 1 ]; then wall1=$t; fi
  fi
done
batch_rate=$(echo "$ROWS / $best" | bc)
weir_rate=$(echo "$ROWS / $wall" | bc)
epochs=$(wc -l < "$WORK/progress.json")
batch_ms=$(python3 -c "import json,sys; print(round(sum(json.loads(l)['batch_ms'] for l in open('$WORK/progress.json'))))")
epoch_rate=$(python3 -c "import json; p=[json.loads(l) for l in open('$WORK/progress.json')]; print(int(sum(x['rows_in'] for x in p)/(sum(x['batch_ms'] for x in p)/1000)))")
late=$(python3 -c "import json; print(sum(json.loads(l)['late_rows'] for l in open('$WORK/progress.json')))")
rss_mb=$(( $(cat "$WORK/rss") / 1024 ))
ratio=$(echo "scale=2; $weir_rate / $batch_rate" | bc)

# One core: tumble-ROWS.md; more: tumble-ROWS-tCORES.md (Weir with --threads CORES).
report="benches/results/tumble-$ROWS.md"
[ "$CORES" = 1 ] || report="benches/results/tumble-$ROWS-t$CORES.md"
cat > "$report" <<MD
# Tumbling window throughput, $ROWS rows, $CORES core(s)

Measured $(date -u +%Y-%m-%d) by \`ROUNDS=$ROUNDS benches/tumble.sh $ROWS $CORES\` on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)).

| run | time | rows/s |
|---|---|---|
| DataFusion batch (ceiling, best of $ROUNDS) | ${best}s | $batch_rate |
| Weir, whole process (plan, $epochs epochs, checkpoints, sink; best of $ROUNDS, alternating with batch) | ${wall}s | $weir_rate |
| Weir, sum of epoch times (\`--progress-json\` batch_ms) | ${batch_ms}ms | $epoch_rate |

Weir / batch: **$ratio**. Weir peak RSS: $rss_mb MB. Late rows dropped: $late.
MD
if [ "$CORES" != 1 ]; then
  cat >> "$report" <<MD

Scaling, measured in the same rounds on one core (\`taskset -c 0\`, Weir with \`--threads 1\`, best of $ROUNDS):

| run | 1 core | $CORES cores | $CORES cores / 1 core |
|---|---|---|---|
| DataFusion batch | ${best1}s | ${best}s | **$(echo "scale=2; $best1 / $best" | bc)x** |
| Weir | ${wall1}s | ${wall}s | **$(echo "scale=2; $wall1 / $wall" | bc)x** |

Weir / batch on one core: $(echo "scale=2; $best1 / $wall1" | bc).
MD
fi
cat "$report"
