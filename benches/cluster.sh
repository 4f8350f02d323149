#!/usr/bin/env bash
# `weir run --cluster` against `weir run` on this machine: per-epoch overhead,
# recovery after a killed executor, and bytes per epoch.
#
#   benches/cluster.sh [ROWS] [FILES]      (defaults: 10000000 rows, 40 files)
#
# Generates ROWS bids as FILES Parquet files, and a job (10 s tumbling
# COUNT/MAX/SUM, Parquet sink) that reads two files an epoch. Starts one
# scheduler and two executors (one task slot each) on loopback, then runs:
#   * the job locally (`--threads 2`);
#   * the job with `--cluster` (it runs on the executors: per epoch one job
#     of two stages (each file's greatest event time is in its footer), a task per
#     file windowing and aggregating it partially, a task per shard folding
#     the shard's state restored from the checkpoint and writing its sink
#     file and state change; the driver commits);
#   * the job with `--cluster` again, killing one executor (SIGKILL) after
#     its third epoch: the slowest epoch, less the median, is the recovery;
#   * a stateless job (a filter and a projection, a third of the rows kept)
#     locally and with `--cluster`, where it runs on the executors: each
#     task reads a file, runs the query and writes its own output file;
#   * an aggregate without windows (bids per auction, a changelog) locally
#     and with `--cluster`: the same two stages, each shard writing its
#     part of the changelog and its state change;
#   * an interval join of the bids with themselves (declared as two
#     tables) locally and with `--cluster`: a stage 1 per side, and a task
#     per shard joining both sides' rows with those its state holds.
# Everything shares this machine's two cores, so the cluster's numbers are
# what its protocol costs here, not what separate machines would give.
# Writes benches/results/cluster-<ROWS>.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
FILES=${2:-40}
WORK=${WORK:-target/bench-cluster}
WORK=$(mkdir -p "$WORK" && cd "$WORK" && pwd)

cargo build --release -q -p weir-cli --bin weir --example gen_bids
WEIR=$PWD/target/release/weir
rm -rf "$WORK" && mkdir -p "$WORK"
target/release/examples/gen_bids "$WORK/bids" "$ROWS" "$FILES" 7 2>/dev/null

job() { # job NAME [FILES_PER_EPOCH]: the job writing to $WORK/out-NAME/
  cat > "$WORK/$1.sql" <<SQL
CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
  WITH ('connector' = 'files', 'path' = '$WORK/bids/', 'format' = 'parquet', 'max_files_per_batch' = '${2:-2}');
CREATE TABLE out WITH ('connector' = 'files', 'path' = '$WORK/out-$1/', 'format' = 'parquet');
INSERT INTO out
SELECT window_start, window_end, COUNT(*) AS bids, MAX(price) AS top, SUM(price) AS volume
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end;
SQL
}

stateless() { # stateless NAME: a filter and a projection, writing to $WORK/out-NAME/
  cat > "$WORK/$1.sql" <<SQL
CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
  WITH ('connector' = 'files', 'path' = '$WORK/bids/', 'format' = 'parquet', 'max_files_per_batch' = '2');
CREATE TABLE out WITH ('connector' = 'files', 'path' = '$WORK/out-$1/', 'format' = 'parquet');
INSERT INTO out
SELECT auction, bidder, price * 2 AS doubled, upper(channel) AS channel, date_time
FROM bids WHERE price % 3 = 0;
SQL
}

updating() { # updating NAME: bids and top price per auction, a changelog in $WORK/out-NAME/
  cat > "$WORK/$1.sql" <<SQL
CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
  WITH ('connector' = 'files', 'path' = '$WORK/bids/', 'format' = 'parquet', 'max_files_per_batch' = '2');
CREATE TABLE out WITH ('connector' = 'files', 'path' = '$WORK/out-$1/', 'format' = 'parquet', 'mode' = 'changelog');
INSERT INTO out SELECT auction, COUNT(*) AS bids, MAX(price) AS top FROM bids GROUP BY auction;
SQL
}

joined() { # joined NAME: an interval join of the bids with themselves (declared twice), to $WORK/out-NAME/
  cat > "$WORK/$1.sql" <<SQL
CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
  WITH ('connector' = 'files', 'path' = '$WORK/bids/', 'format' = 'parquet', 'max_files_per_batch' = '2');
CREATE TABLE asks (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
  date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
  WITH ('connector' = 'files', 'path' = '$WORK/bids/', 'format' = 'parquet', 'max_files_per_batch' = '2');
CREATE TABLE out WITH ('connector' = 'files', 'path' = '$WORK/out-$1/', 'format' = 'parquet');
INSERT INTO out
SELECT a.auction, a.bidder, a.price, b.price AS raised_to, b.date_time AS raised_at
FROM bids a JOIN asks b
  ON a.auction = b.auction AND a.bidder = b.bidder
 AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '1' SECOND
WHERE b.price > a.price;
SQL
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$WEIR" cluster scheduler --bind 127.0.0.1:0 > "$WORK/scheduler.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q "listening on" "$WORK/scheduler.log" && break; sleep 0.1; done
SCHEDULER=$(sed -n 's/.*listening on //p' "$WORK/scheduler.log" | head -1)
start_executor() { # start_executor I: prints its pid
  "$WEIR" cluster executor --scheduler "$SCHEDULER" --port "$(free_port)" --grpc-port "$(free_port)" \
    --concurrency 1 --work-dir "$WORK/executor-$1" > "$WORK/executor-$1.log" 2>&1 &
  echo $!
}
E0=$(start_executor 0); PIDS+=("$E0")
E1=$(start_executor 1); PIDS+=("$E1")
sleep 3

run() { # run NAME [--cluster ADDR]: progress in $WORK/NAME.json, wall seconds printed
  local name=$1; shift
  case $name in
    stateless-*) stateless "$name" ;; updating-*) updating "$name" ;; join-*) joined "$name" ;; *) job "$name" ;;
  esac
  local t0 t1
  t0=$(date +%s.%N)
  "$WEIR" run "$WORK/$name.sql" --threads 2 --trigger available-now --drain \
    --checkpoint "$WORK/$name.ck" --progress-json "$WORK/$name.json" "$@" 2>"$WORK/$name.log"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}

local_wall=$(run local)
cluster_wall=$(run cluster --cluster "$SCHEDULER")
grep -q "queries run on the cluster" "$WORK/cluster.log" \
  || { echo "error: the windowed job did not run on the executors"; cat "$WORK/cluster.log"; exit 1; }
# (Ballista deletes shuffle files as jobs end: a file gone while `du` walks
# the folder is not an error.)
shuffle_bytes=$( (du -sb "$WORK"/executor-* 2>/dev/null || true) | awk '{s += $1} END {print s}')
stateless_local_wall=$(run stateless-local)
stateless_cluster_wall=$(run stateless-cluster --cluster "$SCHEDULER")
grep -q "queries run on the cluster" "$WORK/stateless-cluster.log" \
  || { echo "error: the stateless job did not run on the executors"; cat "$WORK/stateless-cluster.log"; exit 1; }
cmp <("$WEIR" query --format csv "SELECT * FROM '$WORK/out-stateless-cluster/' ORDER BY 1, 2, 3, 4, 5") \
    <("$WEIR" query --format csv "SELECT * FROM '$WORK/out-stateless-local/' ORDER BY 1, 2, 3, 4, 5") >/dev/null \
  || { echo "error: the stateless job's output on the cluster differs from the local run's"; exit 1; }
stateless_out_bytes=$(du -sb "$WORK/out-stateless-cluster" | cut -f1)
updating_local_wall=$(run updating-local)
updating_cluster_wall=$(run updating-cluster --cluster "$SCHEDULER")
grep -q "queries run on the cluster" "$WORK/updating-cluster.log" \
  || { echo "error: the updating job did not run on the executors"; cat "$WORK/updating-cluster.log"; exit 1; }
latest() { # latest NAME: the table the changelog rebuilds (README's query), in $WORK/latest-NAME.csv
  # ("top" is quoted: unquoted, the parser takes it for SELECT TOP and the
  # query failed, so an earlier version of this check compared two empty
  # outputs.)
  "$WEIR" query --format csv "SELECT auction, bids, \"top\" FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction
    ORDER BY _epoch DESC, _seq DESC) AS rn FROM '$WORK/out-$1/') WHERE rn = 1 AND op IN ('+I', '+U') ORDER BY 1" \
    > "$WORK/latest-$1.csv"
  [ "$(wc -l < "$WORK/latest-$1.csv")" -gt 1 ] || { echo "error: the $1 job's table is empty"; exit 1; }
}
latest updating-cluster
latest updating-local
cmp "$WORK/latest-updating-cluster.csv" "$WORK/latest-updating-local.csv" >/dev/null \
  || { echo "error: the updating job's table on the cluster differs from the local run's"; exit 1; }

join_local_wall=$(run join-local)
join_cluster_wall=$(run join-cluster --cluster "$SCHEDULER")
grep -q "queries run on the cluster" "$WORK/join-cluster.log" \
  || { echo "error: the join did not run on the executors"; cat "$WORK/join-cluster.log"; exit 1; }
cmp <("$WEIR" query --format csv "SELECT * FROM '$WORK/out-join-cluster/' ORDER BY 1, 2, 3, 4, 5") \
    <("$WEIR" query --format csv "SELECT * FROM '$WORK/out-join-local/' ORDER BY 1, 2, 3, 4, 5") >/dev/null \
  || { echo "error: the join's output on the cluster differs from the local run's"; exit 1; }

# The recovery run, eight files an epoch (so that an epoch's tasks are
# running when the kill comes): kill executor 0 once the second epoch is
# committed.
job recover 8
"$WEIR" run "$WORK/recover.sql" --threads 2 --trigger available-now --drain \
  --checkpoint "$WORK/recover.ck" --progress-json "$WORK/recover.json" --cluster "$SCHEDULER" \
  2>"$WORK/recover.log" &
RUN=$!
for _ in $(seq 1 3000); do
  [ -f "$WORK/recover.json" ] && [ "$(wc -l < "$WORK/recover.json")" -ge 2 ] && break
  sleep 0.02
done
kill -9 "$E0"
killed_after=$(wc -l < "$WORK/recover.json")
wait "$RUN"

for name in local cluster recover; do
  cmp <("$WEIR" query --format csv "SELECT * FROM '$WORK/out-$name/' ORDER BY 1") \
      <("$WEIR" query --format csv "SELECT * FROM '$WORK/out-local/' ORDER BY 1") >/dev/null \
    || { echo "error: the $name run's output differs from the local run's"; exit 1; }
done

input_bytes=$(du -sb "$WORK/bids" | cut -f1)
python3 - "$WORK" "$ROWS" "$FILES" "$input_bytes" "$shuffle_bytes" "$local_wall" "$cluster_wall" "$killed_after" \
  "$stateless_local_wall" "$stateless_cluster_wall" "$stateless_out_bytes" \
  "$updating_local_wall" "$updating_cluster_wall" "$join_local_wall" "$join_cluster_wall" \
  > "benches/results/cluster-$ROWS.md" <<'PY'
import json, statistics, sys, subprocess, datetime
(work, rows, files, input_bytes, shuffle_bytes, local_wall, cluster_wall, killed_after,
 stateless_local_wall, stateless_cluster_wall, stateless_out_bytes,
 updating_local_wall, updating_cluster_wall, join_local_wall, join_cluster_wall) = sys.argv[1:]
rows, files, input_bytes, shuffle_bytes = int(rows), int(files), int(input_bytes), int(shuffle_bytes)

def epochs(name):
    p = [json.loads(l) for l in open(f"{work}/{name}.json")]
    return [e for e in p if not e.get("drain")]

def mb(b):
    return f"{b / 1e6:.1f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"

loc, clu, rec = epochs("local"), epochs("cluster"), epochs("recover")
ms = lambda es: [e["batch_ms"] for e in es]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
n = len(clu)
print(f"# `weir run --cluster` on loopback, {rows:,} rows\n")
print(f"Measured {datetime.date.today()} by `benches/cluster.sh {rows} {files}` on {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs ({cpu}):")
print("one scheduler and two executors (one task slot each) on this machine, beside the driver.")
print(f"The job: 10 s tumbling COUNT/MAX/SUM over {files} Parquet files, two files ({rows * 2 // files:,} rows) an epoch, {n} epochs and a drain.")
print("All three runs wrote the same rows (checked).\n")
print("## Per-epoch time\n")
print("| run | wall | epoch median | epoch mean | slowest epoch |")
print("|---|---|---|---|---|")
for label, es, wall in [("local (`--threads 2`)", loc, local_wall), ("cluster", clu, cluster_wall)]:
    m = ms(es)
    print(f"| {label} | {float(wall):.2f} s | {statistics.median(m):.0f} ms | {statistics.mean(m):.0f} ms | {max(m):.0f} ms |")
over = statistics.median(ms(clu)) - statistics.median(ms(loc))
print(f"\nOverhead of the cluster per epoch (medians): **{over:.0f} ms**: one Ballista job an epoch")
print("(each file's greatest event time is taken from its footer, so no read comes before it) of two")
print("stages: a task per file that reads, windows and")
print("aggregates it partially, Ballista's shuffle of the partial rows, and a task per shard that restores")
print("its state from the checkpoint, folds, emits and writes its sink file and state change), and the")
print("fetch of their report rows. No row read crosses to the driver.\n")
print("## Recovery after a killed executor\n")
m = ms(rec)
slow = max(range(len(m)), key=lambda i: m[i])
print(f"A third run reads eight files an epoch; executor 0 was killed (SIGKILL) once {killed_after} epochs were")
print(f"committed, with the next epoch's tasks under way. The slowest epoch, epoch {rec[slow]['epoch']}, took")
print(f"**{m[slow] / 1000:.1f} s** against a median of {statistics.median(m):.0f} ms. A task running on the dead executor is")
print("lost until the scheduler declares the executor dead, 15 to 20 s after its last heartbeat (they come")
print("every 5 s; the timeout is 15 s, checked every 5 s), and reruns it on the other; a task sent to it")
print("after it died fails at once and is sent elsewhere.")
if m[slow] < 5000:
    print("In this run no task was running on the executor when it was killed (an epoch's job is short), so")
    print("no epoch waited for the heartbeat timeout; a run that loses a task takes the 15 to 20 s above")
    print("(14.6 s measured at 5200779).")
print("The run went on and its output is the local run's.\n")
print("## Bytes per epoch through the object store\n")
ck = statistics.mean(e["checkpoint_bytes"] for e in clu)
print("| what | per epoch | how |")
print("|---|---|---|")
print(f"| input read by the executors | {mb(input_bytes / n)} | the files' size over the epochs |")
print(f"| checkpoint written (offsets and commit by the driver, state by the shard tasks) | {mb(ck)} | `checkpoint_bytes` in the progress |")
print(f"| shuffle files on the executors' disks | {mb(shuffle_bytes / n)} | their work folders after the runs (not the object store: Ballista's local disk) |")
print("\nThe state and the sink files (a few kB an epoch here) are written by the executors' shard tasks.\n")
print("## A stateless query on the executors\n")
sl, sc = epochs("stateless-local"), epochs("stateless-cluster")
print("The same files, two an epoch, through `SELECT auction, bidder, price * 2, upper(channel), date_time")
print("... WHERE price % 3 = 0` into a Parquet sink. On the cluster the whole query runs on the executors:")
print("a task per file reads it, runs the query and stages its own output file in the sink folder; the")
print("driver gets one report row per file, names the files in the epoch's manifest and commits.")
print("Both runs wrote the same rows (checked).\n")
print("| run | wall | epoch median | epoch mean | rows out | sink bytes per epoch |")
print("|---|---|---|---|---|---|")
out_rows = sum(e["rows_out"] for e in sc)
for label, es, wall in [("local (`--threads 2`)", sl, stateless_local_wall), ("cluster", sc, stateless_cluster_wall)]:
    m = ms(es)
    print(f"| {label} | {float(wall):.2f} s | {statistics.median(m):.0f} ms | {statistics.mean(m):.0f} ms | "
          f"{sum(e['rows_out'] for e in es):,} | {mb(int(stateless_out_bytes) / len(sc))} |")
print("\nNo row read or written crosses to the driver: per epoch it reads a report per file and writes the")
print("offsets entry, the manifest, the source's progress and the commit. Here the driver, the scheduler")
print("and both executors share two cores, so the cluster cannot be faster than the local run; what the")
print("table shows is what the protocol costs per epoch.\n")
print("## An aggregate without windows on the executors\n")
ul, uc = epochs("updating-local"), epochs("updating-cluster")
print("The same files, two an epoch, through `SELECT auction, COUNT(*) AS bids, MAX(price) AS top FROM bids")
print("GROUP BY auction` into a changelog sink (`+I`, `-U`/`+U` for each auction an epoch touched). On the")
print("cluster it runs as the windowed job does: a task per file aggregates it partially, a task per shard")
print("restores its groups from the checkpoint, folds, and writes its part of the changelog and its state")
print("change. The table the changelogs rebuild (the README's query) is the same (checked).\n")
def state_table(rows_label, local, local_wall, cluster, cluster_wall):
    """The local and cluster runs of a job with state, side by side."""
    print(f"| run | wall | epoch median | epoch mean | {rows_label} | state rows at the end | checkpoint per epoch |")
    print("|---|---|---|---|---|---|---|")
    for label, es, wall in [("local (`--threads 2`)", local, local_wall), ("cluster", cluster, cluster_wall)]:
        m = ms(es)
        print(f"| {label} | {float(wall):.2f} s | {statistics.median(m):.0f} ms | {statistics.mean(m):.0f} ms | "
              f"{sum(e['rows_out'] for e in es):,} | {es[-1]['state_rows']:,} | "
              f"{mb(statistics.mean(e['checkpoint_bytes'] for e in es))} |")
state_table("changelog rows", ul, updating_local_wall, uc, updating_cluster_wall)
print("\nEach shard restores its whole state from the store every epoch (executors keep no cache yet), so")
print("the cluster's epoch grows with the state, where the local run keeps it in memory.")
print("\n## A join on the executors\n")
jl, jc = epochs("join-local"), epochs("join-cluster")
print("The bids declared twice (`bids` and `asks`, the same files, two an epoch from each) in an interval")
print("join: each bid with the same bidder's higher bids on its auction within the next second. On the")
print("cluster a task per file of each side reads it and judges its lateness, both sides are dealt to the")
print("join's shards by (auction, bidder), and a task per shard restores the rows its side holds from")
print("the checkpoint, joins, and writes its output and state change. Both runs wrote the same rows (checked).\n")
state_table("rows out", jl, join_local_wall, jc, join_cluster_wall)
PY
cat "benches/results/cluster-$ROWS.md"
