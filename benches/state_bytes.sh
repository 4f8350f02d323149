#!/usr/bin/env bash
# Checkpoint bytes per epoch for keyed state: does an epoch write what
# changed, or all state?
#
#   benches/state_bytes.sh [KEYS] [EPOCHS] [PERCENT]   (defaults: 1000000 100 1)
#
# An update-mode GROUP BY id (COUNT, SUM) over KEYS live keys: epoch 1 reads
# every key once, each later epoch reads KEYS*PERCENT/100 rows with random
# keys (one file per epoch), so about PERCENT% of the groups change. Reports
# the state bytes each epoch wrote (from --progress-json), the size of the
# full state, and what the checkpoint folder holds at the end (retention
# keeps 20 epochs restorable). Writes benches/results/state-bytes-<KEYS>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-1000000}
EPOCHS=${2:-100}
PERCENT=${3:-1}
WORK=${WORK:-target/bench-state-bytes}

cargo build --release -q -p weir-cli --bin weir --example gen_keys
WEIR=target/release/weir
rm -rf "$WORK" && mkdir -p "$WORK"
target/release/examples/gen_keys "$WORK/keys" "$KEYS" "$EPOCHS" "$PERCENT" 7

cat > "$WORK/job.sql" <<SQL
CREATE TABLE events (id BIGINT, v BIGINT, ts TIMESTAMP(3))
  WITH ('connector' = 'files', 'path' = '$WORK/keys/', 'format' = 'parquet', 'max_files_per_batch' = '1');
CREATE TABLE totals WITH ('connector' = 'files', 'path' = '$WORK/out/', 'format' = 'parquet', 'mode' = 'changelog');
INSERT INTO totals SELECT id, COUNT(*) AS n, SUM(v) AS total FROM events GROUP BY id;
SQL

"$WEIR" run "$WORK/job.sql" --trigger available-now --checkpoint "$WORK/ck" \
  --progress-json "$WORK/progress.json" 2>"$WORK/weir.log"

python3 - "$WORK" "$KEYS" "$EPOCHS" "$PERCENT" <<'PY'
import json, os, statistics, sys
work, keys, epochs, percent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
p = [json.loads(l) for l in open(f"{work}/progress.json")]
def du(path):
    total, files = 0, 0
    for root, _, names in os.walk(path):
        for n in names:
            total += os.path.getsize(os.path.join(root, n)); files += 1
    return total, files
state_files = sorted(
    os.path.relpath(os.path.join(r, n), f"{work}/ck")
    for r, _, ns in os.walk(f"{work}/ck/state") for n in ns)
ck_bytes, ck_files = du(f"{work}/ck")
manifests = du(f"{work}/out/_weir/manifests")[1]
later = [x["state_bytes"] for x in p[1:]]
full = p[0]["state_bytes"]
med = statistics.median(later) if later else 0
mb = lambda b: f"{b / 1e6:.2f} MB"
lines = [
    f"# Checkpoint bytes per epoch: {keys:,} live keys, {percent}% changing per epoch",
    "",
    f"Command: `benches/state_bytes.sh {keys} {epochs} {percent}` "
    "(update-mode `GROUP BY id` with COUNT and SUM, one input file per epoch).",
    "",
    "| | bytes |",
    "|---|---|",
    f"| epoch 1: every key (a snapshot of the full state) | {mb(full)} |",
    f"| later epochs, median ({len(later)} epochs, {int(keys * float(percent) / 100):,} rows each) | {mb(med)} |",
    f"| later epochs, max | {mb(max(later) if later else 0)} |",
    f"| median later epoch / full state | {med / full:.3f} |",
    f"| epochs that wrote a full snapshot (the first, then when deltas outgrow it) | "
    f"{', '.join(str(x['epoch']) for x in p if x['state_bytes'] > full / 2)} |",
    f"| bytes written over all epochs / (epochs x full state) | "
    f"{sum(x['state_bytes'] for x in p) / (len(p) * full):.3f} |",
    f"| checkpoint folder at the end ({ck_files} files) | {mb(ck_bytes)} |",
    f"| sink manifests kept | {manifests} |",
    "",
    "Per epoch (state bytes written; `batch ms` is the whole epoch):",
    "",
    "| epoch | rows in | rows out | state bytes | batch ms |",
    "|---|---|---|---|---|",
]
for x in p:
    lines.append(f"| {x['epoch']} | {x['rows_in']:,} | {x['rows_out']:,} | {x['state_bytes']:,} | {x['batch_ms']:.0f} |")
lines += ["", "State files at the end:", "", "```"] + state_files + ["```", ""]
out = f"benches/results/state-bytes-{keys}.md"
open(out, "w").write("\n".join(lines))
print("\n".join(lines[:16]))
print(f"(written to {out})")
PY
