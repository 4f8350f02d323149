#!/usr/bin/env python3
"""One and two threads side by side, from two runs of benches/nexmark.sh.

    benches/nexmark.sh 10000000
    benches/nexmark.sh 10000000 -- --threads 2 --cpu 0,1
    benches/nexmark_threads.py 10000000

reads benches/results/nexmark-EVENTS.json (one thread on CPU 0) and
nexmark-EVENTS-t2.json (two threads on CPUs 0,1) and writes
nexmark-EVENTS-threads.md: for each query and sink, Weir's events/s on one
and two threads, the scaling ratio, and Weir against DataFusion's batch
query on the same CPUs (wall-clock rates: events / wall time, each batch
query best of three). The issue 16 targets are shown beside them: two
threads at least 1.7x one, and at least 0.9 of batch at each thread count.
"""
import json
import os
import sys

EVENTS = sys.argv[1] if len(sys.argv) > 1 else "10000000"
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def load(name):
    with open(os.path.join(HERE, name)) as f:
        return json.load(f)


one = load(f"nexmark-{EVENTS}.json")
two = load(f"nexmark-{EVENTS}-t2.json")
events = one["events"]
by_query = {q["query"]: q for q in two["queries"]}


def rate(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k"


def mark(ok):
    return "✓" if ok else "✗"


lines = [
    f"# Nexmark, {events} events: one thread against two",
    "",
    f"From `benches/nexmark.sh {EVENTS}` (one thread, CPU 0; measured {one['date']}, load "
    f"{one['load_average']}) and `benches/nexmark.sh {EVENTS} -- --threads 2 --cpu 0,1` "
    f"(measured {two['date']}, load {two['load_average']}), on {one['machine']}; "
    f"merged by `benches/nexmark_threads.py {EVENTS}`.",
    "",
    "*events/s* is events over the whole process's wall time. *vs batch* is that rate over "
    "DataFusion's batch query's on the same CPUs (the same query over the same events as "
    "Parquet, best of three): the blackhole run against the batch query with its output "
    "dropped, the Parquet run against the batch query writing Parquet. Targets (issue 16): "
    "two threads at least 1.7x one, and at least 0.9 of batch on one and on two threads.",
    "",
    "| query | kind | sink | 1 thread | 2 threads | 2 / 1 | vs batch, 1 core | vs batch, 2 cores | batch 2 / 1 |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|",
]
not_run = []
totals = {"scaling": [0, 0], "batch1": [0, 0], "batch2": [0, 0]}
for q1 in one["queries"]:
    name = q1["query"]
    q2 = by_query.get(name)
    if q1.get("status") != "ran" or q2 is None or q2.get("status") != "ran":
        not_run.append((name, q1.get("skip_reason") or (q2 or {}).get("skip_reason") or "not in both runs"))
        continue
    for sink, ceiling in (("blackhole", "batch"), ("parquet", "batch_parquet")):
        a, b = q1.get(sink), q2.get(sink)
        if not a or not b:
            continue
        r1, r2 = a["events_per_s"], b["events_per_s"]
        scaling = r2 / r1
        cells = []
        for q, r, key in ((q1, r1, "batch1"), (q2, r2, "batch2")):
            ref = q.get(ceiling)
            if ref and ref.get("wall_s"):
                v = r / (events / ref["wall_s"])
                totals[key][0] += v >= 0.9
                totals[key][1] += 1
                cells.append(f"{v:.2f} {mark(v >= 0.9)}")
            else:
                cells.append("no batch form")
        b1, b2 = q1.get(ceiling), q2.get(ceiling)
        batch_scaling = (
            f"{b1['wall_s'] / b2['wall_s']:.2f}" if b1 and b2 and b1.get("wall_s") and b2.get("wall_s") else ""
        )
        totals["scaling"][0] += scaling >= 1.7
        totals["scaling"][1] += 1
        lines.append(
            f"| {name} | {q1.get('kind', '')} | {sink} | {rate(r1)} | {rate(r2)} | "
            f"{scaling:.2f} {mark(scaling >= 1.7)} | {cells[0]} | {cells[1]} | {batch_scaling} |"
        )
lines += [
    "",
    f"Met: two threads at least 1.7x one in {totals['scaling'][0]} of {totals['scaling'][1]} runs; "
    f"at least 0.9 of batch in {totals['batch1'][0]} of {totals['batch1'][1]} on one core and "
    f"{totals['batch2'][0]} of {totals['batch2'][1]} on two.",
]
if not_run:
    lines += ["", "Not run (in either report):", ""]
    lines += [f"- {n}: {r}" for n, r in not_run]
out = os.path.join(HERE, f"nexmark-{EVENTS}-threads.md")
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print(out)
