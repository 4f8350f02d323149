#!/usr/bin/env bash
# Is a join's state bounded by the watermark? Runs Nexmark q7 (an interval
# join of bid with each window's maximum) and q8 (a window join of two
# windowed aggregates) at N and 2N events, blackhole sink, one thread on one
# CPU, and reports wall time and peak RSS (`/usr/bin/time %M`): with state
# evicted by the watermark, peak RSS stays flat as the input doubles. q20 (a
# regular join, no time bound, no 'state.ttl') is the contrast: its state
# holds every bid, so its RSS grows with the input.
#
#   benches/join_state.sh [N] [CPU]      (defaults: 10000000 1; SKIP_BUILD=1 uses the built binary)
#
# Writes benches/results/join-state-<N>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000000}
CPU=${2:-1}
WORK=${WORK:-target/bench-join-state}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p weir-cli --bin weir
WEIR=$PWD/target/release/weir
rm -rf "$WORK" && mkdir -p "$WORK"
OUT=benches/results/join-state-$N.md
{
  echo "# Join state against input size, $N and $((2 * N)) events"
  echo
  echo "Measured $(date -u +%Y-%m-%d) by \`benches/join_state.sh $N $CPU\`, pinned to CPU $CPU, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start."
  echo "Each query runs \`weir run --trigger available-now --drain --threads 1\` over the \`nexmark\` source (1,000,000 events per epoch, checkpoints on) into the blackhole sink."
  echo
  echo "| query | join | events | wall | peak RSS | epochs | rows out |"
  echo "|---|---|---:|---:|---:|---:|---:|"
} > "$OUT"
for q in q7 q8 q20; do
  case $q in
    q7) kind="interval join with a window aggregate's results" ;;
    q8) kind="window join of two windowed aggregates (semi)" ;;
    q20) kind="regular join, no time bound or TTL" ;;
  esac
  for n in "$N" $((2 * N)); do
    dir="$WORK/$q-$n"
    mkdir -p "$dir"
    sed -e "s/\${EVENTS}/$n/g; s/\${BATCH}/1000000/g" benches/nexmark/ddl.sql > "$dir/job.sql"
    sed -e "s|\${SINK}|'connector' = 'blackhole'|" "benches/nexmark/$q.sql" >> "$dir/job.sql"
    (cd "$dir" && /usr/bin/time -o time.txt -f "%e %M" taskset -c "$CPU" "$WEIR" run job.sql \
      --trigger available-now --drain --threads 1 2> run.log)
    read -r wall rss < "$dir/time.txt"
    done_line=$(grep "done:" "$dir/run.log")
    epochs=$(echo "$done_line" | sed -E 's/.*done: ([0-9]+) epoch.*/\1/')
    rows=$(echo "$done_line" | sed -E 's/.* ([0-9,]+) rows out.*/\1/')
    echo "| $q | $kind | $n | ${wall} s | $((rss / 1024)) MB | $epochs | $rows |" >> "$OUT"
  done
done
echo >> "$OUT"
echo "Peak RSS is the whole process's. Flat between the two sizes means the join's state is bounded by the watermark, not by the input." >> "$OUT"
cat "$OUT"
