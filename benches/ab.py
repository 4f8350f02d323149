#!/usr/bin/env python3
"""Two `weir` binaries on the same job, runs interleaved: is the change real?

    python3 benches/ab.py OLD NEW JOB.sql [--runs N] [--cpu 0] [--threads 1]

Runs `weir run JOB.sql --trigger available-now --drain` from an empty
checkpoint, alternating OLD and NEW (OLD, NEW, NEW, OLD, OLD, NEW, ... so
that neither always goes first after the other), each pinned to `--cpu`
with `taskset`, and prints per binary the median, lowest and highest CPU
time (user + sys, what the Nexmark report's "per core" divides by), wall
time, peak RSS and the bytes the checkpoint holds at the end; then NEW's
median over OLD's, and in how many of the pairs NEW used less CPU.

Why: this machine is shared, and one run of a 7 s job varies by 20% or more
(Nexmark q20: 4.4 to 5.8 s user in one hour). A change of 5% shows only in
interleaved runs compared by median and by pairs; a change that wins fewer
than three quarters of the pairs has not been shown. A job file of the
Nexmark harness is `target/bench-nexmark/<query>-blackhole/job.sql` (after
`benches/nexmark.sh`); to keep the binary a change replaces, copy
`target/release/weir` aside before rebuilding.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def run_once(weir, job, cpu, threads, work):
    checkpoint = os.path.join(work, "checkpoint")
    shutil.rmtree(checkpoint, ignore_errors=True)
    times = os.path.join(work, "time.txt")
    cmd = [
        "/usr/bin/time", "-f", "%e %U %S %M", "-o", times,
        "taskset", "-c", cpu, weir, "run", job,
        "--trigger", "available-now", "--drain",
        "--checkpoint", checkpoint, "--threads", str(threads),
    ]
    out = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"{weir} failed on {job}:\n{out.stderr.strip()}")
    with open(times) as f:
        wall, user, system, rss_kb = (float(x) for x in f.read().split()[-4:])
    return {
        "cpu": user + system,
        "wall": wall,
        "rss_mb": rss_kb / 1024,
        "state_mb": dir_bytes(os.path.join(checkpoint, "state")) / 1e6,
    }


def summary(runs, key):
    values = [r[key] for r in runs]
    return statistics.median(values), min(values), max(values)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("job")
    p.add_argument("--runs", type=int, default=6, help="runs of each binary (default 6)")
    p.add_argument("--cpu", default="0", help="taskset CPU list (default 0)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    for path in (a.old, a.new, a.job):
        if not os.path.exists(path):
            sys.exit(f"no such file: {path}")
    if a.runs < 1:
        sys.exit("--runs must be at least 1")

    results = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="weir-ab-") as work:
        for i in range(a.runs):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for which in order:
                weir = a.old if which == "old" else a.new
                r = run_once(weir, a.job, a.cpu, a.threads, work)
                results[which].append(r)
                print(f"run {i + 1} {which}: cpu {r['cpu']:.2f} s, wall {r['wall']:.2f} s", file=sys.stderr)

    print(f"{a.job}, {a.runs} runs each, CPU {a.cpu}, --threads {a.threads}")
    print(f"{'':4} {'cpu s (median, low-high)':>28} {'wall s':>8} {'peak RSS MB':>12} {'state MB':>9}")
    for which in ("old", "new"):
        rs = results[which]
        med, lo, hi = summary(rs, "cpu")
        print(
            f"{which:4} {med:>14.2f} ({lo:.2f}-{hi:.2f}) {summary(rs, 'wall')[0]:>8.2f}"
            f" {summary(rs, 'rss_mb')[0]:>12.0f} {summary(rs, 'state_mb')[0]:>9.1f}"
        )
    old_cpu = summary(results["old"], "cpu")[0]
    new_cpu = summary(results["new"], "cpu")[0]
    wins = sum(n["cpu"] < o["cpu"] for o, n in zip(results["old"], results["new"]))
    print(f"new/old CPU (medians): {new_cpu / old_cpu:.3f}; new used less CPU in {wins} of {a.runs} pairs")


if __name__ == "__main__":
    main()
