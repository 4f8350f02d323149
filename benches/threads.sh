#!/usr/bin/env bash
# One and two threads side by side: a 10 s tumbling COUNT/MAX/SUM over the
# bids that benches/tumble.sh generates, without keys, with 10 and with
# 1,000 keys per window; then a window Top-N over the same windows, the 3
# highest bids of each window (`topn`: one ranking per window) and the
# highest bid of each auction in each window (`topn-keyed`). Each run pinned
# to as many CPUs as threads, best of three, from an empty checkpoint.
#
#   benches/threads.sh [WEIR]      (default target/release/weir; run
#                                   benches/tumble.sh first for the data)
#
# Prints one line per query and thread count, and the two-thread speedup.
set -euo pipefail
cd "$(dirname "$0")/.."
WEIR=${1:-target/release/weir}
WORK=${WORK:-target/bench-tumble}
[ -d "$WORK/bids" ] || { echo "no $WORK/bids: run benches/tumble.sh first"; exit 1; }
now() { date +%s.%N; }
for q in keyless 10 1000 topn topn-keyed; do
  case $q in
    keyless) keys=""; select="" ;;
    topn) part=""; n=3 ;;
    topn-keyed) part=", auction"; n=1 ;;
    *) keys=", auction % $q"; select=", auction % $q AS k" ;;
  esac
  case $q in
    topn*) query="SELECT window_start, window_end, auction, bidder, price, rn FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end$part ORDER BY price DESC) AS rn
  FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)))
WHERE rn <= $n" ;;
    *) query="SELECT window_start, window_end$select, COUNT(*) AS bids, MAX(price) AS top, SUM(price) AS volume
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end$keys" ;;
  esac
  cat > "$WORK/threads-$q.sql" <<SQL
CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
  WITH ('connector' = 'files', 'path' = '$WORK/bids/', 'format' = 'parquet');
CREATE TABLE out WITH ('connector' = 'files', 'path' = '$WORK/threads-out-$q/', 'format' = 'parquet');
INSERT INTO out
$query;
SQL
  declare -A best=()
  for t in 1 2; do
    cpus=$(seq -s, 0 $((t - 1)))
    for _ in 1 2 3; do
      rm -rf "$WORK/threads-out-$q" "$WORK/threads-$q.checkpoint"
      t0=$(now)
      taskset -c "$cpus" "$WEIR" run "$WORK/threads-$q.sql" --threads "$t" \
        --trigger available-now --drain 2>/dev/null
      x=$(echo "$(now) - $t0" | bc)
      if [ -z "${best[$t]:-}" ] || [ "$(echo "$x < ${best[$t]}" | bc)" = 1 ]; then best[$t]=$x; fi
    done
  done
  echo "$q  1 thread ${best[1]}s  2 threads ${best[2]}s  speedup $(echo "scale=2; ${best[1]} / ${best[2]}" | bc)"
done
