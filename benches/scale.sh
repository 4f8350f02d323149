#!/usr/bin/env bash
# Object-store requests of an epoch as the fan-out grows (issue 16, B.6):
# the measurement behind docs/scale.md.
#
#   benches/scale.sh [ARGS...]     (ARGS go to the example; see its --help)
#
# 1. Builds and runs `storage/examples/scale.rs` in release: it drives
#    epochs through the storage crate's API (offsets, S state shard files,
#    F staged sink files, the commit, publish) at S = F = 1 .. 10,000, then
#    restores every shard and lists source folders of 1k-100k files, counting
#    every request by kind beneath the crate's retrying Location. On the local
#    filesystem always; on S3 too: WEIR_TEST_S3_ENDPOINT if set, else a moto
#    server started here from the CI venv (.ci/run installs moto 5.2.5 into
#    <target>/ci-venv), else local only.
# 2. When this script started moto (so it can read moto's access log): runs
#    the `weir` binary ($WEIR if set, else built from this tree; one CSV source on local
#    disk, one windowed aggregate, one Parquet sink; checkpoint and sink on
#    S3) for 20 epochs and counts its requests from moto's log.
# Writes benches/results/scale.md and prints it. Takes about 2-3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
WORK=${WORK:-$TARGET/bench-scale}
VENV="$TARGET/ci-venv"
rm -rf "$WORK" && mkdir -p "$WORK"

cargo build --release -q -p weir-storage --example scale
SCALE="$TARGET/release/examples/scale"

MOTO_PID=""
MOTO_LOG=""
S3_NOTE="not run (no WEIR_TEST_S3_ENDPOINT, and no moto in $VENV: run .ci/run once to install it)"
stop_moto() {
  if [ -n "$MOTO_PID" ]; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
}
trap stop_moto EXIT
if [ -n "${WEIR_TEST_S3_ENDPOINT:-}" ]; then
  S3_NOTE="the S3 server at $WEIR_TEST_S3_ENDPOINT (WEIR_TEST_S3_ENDPOINT)"
elif [ -x "$VENV/bin/moto_server" ]; then
  PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  MOTO_LOG="$WORK/moto.log"
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$MOTO_LOG" 2>&1 &
  MOTO_PID=$!
  for _ in $(seq 1 300); do
    "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
    kill -0 "$MOTO_PID" 2>/dev/null || { echo "error: moto_server exited:"; cat "$MOTO_LOG"; exit 1; }
    sleep 0.2
  done
  export WEIR_TEST_S3_ENDPOINT="http://127.0.0.1:$PORT"
  MOTO_VERSION=$("$VENV/bin/python" -c 'import moto; print(moto.__version__)')
  S3_NOTE="moto $MOTO_VERSION (\`moto_server\`, one Python process) on loopback, started by this script"
fi

now() { date +%s.%N; }
t0=$(now)
"$SCALE" "$@" >"$WORK/scale.md" 2>"$WORK/scale.log" || { cat "$WORK/scale.log"; exit 1; }
took=$(printf '%.0f' "$(echo "$(now) - $t0" | bc)")

# Restore when every state row is a unit of its own (an update-mode GROUP
# BY's state), on the local store: the merge, not the requests, is the cost.
"$SCALE" --stores local --units row --fanout 1,10,100,1000 --list "" >"$WORK/rows.md" 2>>"$WORK/scale.log" \
  || { cat "$WORK/scale.log"; exit 1; }

# The real engine's requests per epoch on S3, from moto's access log.
REAL="$WORK/real.md"
: >"$REAL"
WEIR_NOTE=""
if [ -n "$MOTO_LOG" ] && [ -z "${WEIR:-}" ]; then
  if cargo build --release -q -p weir-cli --bin weir 2>"$WORK/weir-build.log"; then
    WEIR="$TARGET/release/weir"
  else
    WEIR_NOTE="Not run: the \`weir\` binary did not build (see $WORK/weir-build.log)."
  fi
fi
if [ -n "$MOTO_LOG" ] && [ -n "${WEIR:-}" ] && [ -x "$WEIR" ]; then
  WEIR_NOTE="Binary: \`$WEIR\` ($("$WEIR" --version), built $(date -u -r "$WEIR" '+%Y-%m-%d %H:%M UTC'))."
  REAL_DIR="$WORK/real"
  mkdir -p "$REAL_DIR/in"
  python3 - "$REAL_DIR/in" <<'PY'
import random, sys
from datetime import datetime, timezone
random.seed(7)
t0 = 1767225600000
for f in range(20):
    with open(f"{sys.argv[1]}/part-{f:03}.csv", "w") as o:
        o.write("auction,price,date_time\n")
        for i in range(1000):
            ts = datetime.fromtimestamp((t0 + (f * 1000 + i) * 10) / 1000, tz=timezone.utc)
            o.write(f"{random.randint(1, 500)},{random.randint(1, 1000)},{ts.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}\n")
PY
  BUCKET="weir-scale-real-$$"
  "$VENV/bin/python" -c "import urllib.request as u; u.urlopen(u.Request('$WEIR_TEST_S3_ENDPOINT/$BUCKET', method='PUT'))"
  IN_DIR="$(cd "$REAL_DIR/in" && pwd)"
  cat >"$REAL_DIR/job.sql" <<SQL
CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
  WITH ('connector' = 'files', 'path' = '$IN_DIR/', 'format' = 'csv', 'max_files_per_batch' = '1');
CREATE TABLE out WITH ('connector' = 'files', 'path' = 's3://$BUCKET/out/', 'format' = 'parquet');
INSERT INTO out
SELECT window_start, window_end, auction, COUNT(*) AS bids, MAX(price) AS top
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction;
SQL
  before=$(wc -l <"$MOTO_LOG")
  AWS_ENDPOINT="$WEIR_TEST_S3_ENDPOINT" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=weir AWS_SECRET_ACCESS_KEY=weir \
    AWS_ALLOW_HTTP=true "$WEIR" run "$REAL_DIR/job.sql" --checkpoint "s3://$BUCKET/ck" \
    --trigger available-now --threads 1 --progress-json "$REAL_DIR/progress.json" 2>"$REAL_DIR/weir.log"
  tail -n +"$((before + 1))" "$MOTO_LOG" >"$REAL_DIR/requests.log"
  python3 - "$REAL_DIR/requests.log" "$BUCKET" "$(wc -l <"$REAL_DIR/progress.json")" >"$REAL" <<'PY'
import collections, re, sys
from urllib.parse import parse_qsl, unquote, urlsplit
log, bucket, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
ansi = re.compile(r"\x1b\[[0-9;]*m")
counts = collections.Counter()
for line in open(log):
    m = re.search(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d+)', ansi.sub("", line))
    if not m:
        continue
    method, target = m.group(1), m.group(2)
    url = urlsplit(target)
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    key = unquote(url.path).removeprefix(f"/{bucket}").lstrip("/")
    def area(k):
        # Where a request went: its folder (a writer's or an operator's
        # folder stands for all of them), or the file itself for the few
        # single files (metadata.json, owner.json).
        parts = k.split("/")
        if k.startswith("out/part-"):
            return "out/part-*.parquet"
        if parts[-1].endswith("metadata.json") or parts[-1] == "owner.json":
            return k
        if parts[:2] == ["ck", "state"] and len(parts) > 3:
            return f"ck/state/{parts[2]}/"
        if parts[:2] == ["out", "_weir"] and len(parts) > 3:
            return f"out/_weir/{parts[2]}/"
        return "/".join(parts[:-1]) + "/"
    if "list-type" in query:
        kind, where = "LIST", query.get("prefix", "")
    elif method == "POST" and "delete" in query:
        kind, where = "DELETE (POST ?delete)", "(the objects are named in the body)"
    elif method == "PUT" and key.startswith("out/part-"):
        kind, where = "COPY (publish)", area(key)
    else:
        kind, where = method, area(key)
    counts[(kind, where)] += 1
total = sum(counts.values())
print(f"| request | where | {epochs} epochs | per epoch |")
print("|---|---|---:|---:|")
for (kind, where), n in sorted(counts.items()):
    print(f"| {kind} | `{where}` | {n} | {n / epochs:.2f} |")
print(f"| **all** | | **{total}** | **{total / epochs:.2f}** |")
PY
fi

report="benches/results/scale.md"
{
  echo "# Object-store requests per epoch, at increasing fan-out"
  echo
  echo "Measured $(date -u +%Y-%m-%d) by \`benches/scale.sh${*:+ $*}\` on $(nproc) CPUs" \
    "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), in ${took} s;" \
    "program: \`storage/examples/scale.rs\` (release). S3: $S3_NOTE."
  echo
  echo "What it does: each epoch goes through the storage crate's real API, as the driver and the"
  echo "executors of a cluster would: the lease check and \`offsets/N\` (create-if-absent), F sink tasks"
  echo "staging a Parquet file and a manifest each (\`SinkLayout::stage\`), S state shards writing a"
  echo "Parquet snapshot or delta each (\`Checkpoint::write_state\`, one operator per shard, since the"
  echo "API has no shard in its file names yet), the lease check and \`commits/N\`, the list of the"
  echo "epoch's files a cluster's commit would carry (simulated: one more create-if-absent PUT), and"
  echo "publishing (\`SinkLayout::publish\`). Then every shard is restored (\`Checkpoint::restore_state\`)"
  echo "and source folders are listed (\`Location::list\`). A counting wrapper around the store, beneath"
  echo "the crate's retries, counts the requests. Times are wall-clock on this machine; moto serves one"
  echo "request at a time (its rate, about 450 requests/s here, is moto's, not S3's): on S3 what carries"
  echo "over is the request counts, and the times only as a lower bound of the work."
  echo
  cat "$WORK/scale.md"
  echo "## Restore when each state row is its own unit (local store)"
  echo
  echo "\`scale --stores local --units row --fanout 1,10,100,1000 --list \"\"\`: the same 200,000 state rows"
  echo "per epoch, but keyed as an update-mode GROUP BY keeps them (every row a unit), so a restore"
  echo "merges snapshot and deltas row by row."
  sed -n '/^### Restore/,/^### Listing/p' "$WORK/rows.md" | sed '1d;$d'
  if [ -s "$REAL" ]; then
    echo "## The engine today, on S3: requests of a whole run, per epoch"
    echo
    echo "\`weir run --trigger available-now --threads 1\` of a 10 s TUMBLE COUNT/MAX by auction over 20"
    echo "CSV files of 1,000 rows (one file per epoch, \`max_files_per_batch = 1\`; the source on local disk,"
    echo "so its listing and reads are not counted), checkpoint and sink on S3 (moto); every request in"
    echo "moto's access log, including the first run's setup (metadata, the create-if-absent probe, the"
    echo "sink's owner, the lease) and retention (every 10 epochs). On S3, publishing a file is a COPY to"
    echo "its final name and a DELETE of the staged file; object_store deletes with \`POST ?delete\`."
    echo "$WEIR_NOTE"
    echo
    cat "$REAL"
    echo
  elif [ -n "$MOTO_LOG" ]; then
    echo "## The engine today, on S3"
    echo
    echo "${WEIR_NOTE:-Not run.}"
    echo
  fi
} >"$report"
cat "$report"
