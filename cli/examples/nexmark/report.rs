//! The suite's report: each query's numbers against its target, as JSON and
//! as the Markdown table in `benches/results/`.

use super::*;

/// The per-core target a query is held to.
fn target(kind: &str) -> f64 {
    if kind.starts_with("stateless") {
        1_000_000.0
    } else {
        250_000.0
    }
}

/// The CPU seconds of a ceiling run.
fn cpu_of(b: &Option<Value>) -> Option<f64> {
    b.as_ref().and_then(|b| b["cpu_s"].as_f64())
}

fn run_json(n: u64, r: &WeirRun, batch: &Ceilings) -> Value {
    if !r.ok {
        return Value::Null;
    }
    let per_core = n as f64 / r.cpu_s;
    json!({
        "wall_s": r.wall_s,
        "cpu_s": r.cpu_s,
        "events_per_s": n as f64 / r.wall_s,
        "events_per_s_per_core": per_core,
        "ratio_to_batch": cpu_of(&batch.warm).map(|c| per_core / (n as f64 / c)),
        "ratio_to_batch_process": cpu_of(&batch.process).map(|c| per_core / (n as f64 / c)),
        "peak_rss_mb": r.rss_kb as f64 / 1024.0,
        "epochs": r.epochs,
        "rows_in": r.rows_in,
        "rows_out": r.rows_out,
        "late_rows": r.late,
        "batch_ms_p50": r.batch_p50,
        "batch_ms_p99": r.batch_p99,
        "checkpoint_ms_p50": r.ckpt_p50,
        "checkpoint_ms_p99": r.ckpt_p99,
        "checkpoint_bytes_per_epoch": r.ckpt_bytes,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpus} CPUs ({cpu})")
}

pub(crate) fn report_json(args: &SuiteArgs, gen_speed: &Value, results: &[Row]) -> Value {
    let n = args.events;
    let queries: Vec<Value> = results
        .iter()
        .map(|(q, bh, pq, batch, batch_pq)| {
            let ceiling = |b: &Option<Value>| {
                b.as_ref().map(|b| {
                    json!({
                        "rows": b["rows"],
                        "wall_s": b["wall_s"],
                        "cpu_s": b["cpu_s"],
                        "events_per_s_per_core": b["cpu_s"].as_f64().map(|c| n as f64 / c),
                        "peak_rss_mb": b["rss_kb"].as_f64().map(|k| k / 1024.0),
                    })
                })
            };
            json!({
                "query": q.name,
                "title": q.title,
                "kind": q.kind,
                "needs": q.needs,
                "status": if bh.ok { "ran" } else { "skipped" },
                "skip_reason": (!bh.ok).then(|| bh.error.clone()),
                "target_events_per_s_per_core": target(&q.kind),
                "blackhole": run_json(n, bh, batch),
                "parquet": run_json(n, pq, batch_pq),
                "batch": ceiling(&batch.warm),
                "batch_parquet": ceiling(&batch_pq.warm),
                "batch_process": ceiling(&batch.process),
                "batch_parquet_process": ceiling(&batch_pq.process),
            })
        })
        .collect();
    json!({
        "events": n,
        "max_events_per_batch": args.batch_events,
        "cpu": args.cpu,
        "machine": machine(),
        "date": chrono_date(),
        "generator": gen_speed,
        "queries": queries,
    })
}

/// Today's date (UTC).
fn chrono_date() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.0}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute load averages (other work on the
/// machine skews wall times; CPU times much less).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn report_md(args: &SuiteArgs, gen_speed: &Value, results: &[Row], load: &str) -> String {
    let n = args.events;
    let mut md = String::new();
    let from = match args.input {
        Input::Generator => "",
        Input::Parquet => ", read from Parquet",
    };
    let _ = writeln!(md, "# Nexmark, {n} events{from}\n");
    let _ = writeln!(
        md,
        "Measured {} by `benches/nexmark.sh {n}{}` on {}, every run pinned to CPU {} \
         (`taskset`), load average (1, 5, 15 min) {load}. Weir runs each query with \
         `--trigger available-now --drain --threads {}`, checkpoints on, \
         {} events per epoch, {}. *Per core* is events ÷ CPU time (user + sys); \
         *ratio* is Weir's per-core rate over DataFusion's on the same query over the same events \
         stored as Parquet: the blackhole run against DataFusion with its output \
         counted and dropped, the Parquet run against DataFusion writing its output as Parquet \
         (`write_parquet`, snappy like Weir's sink). The batch query is measured two ways. \
         *Ratio to batch* takes it warm: the best of 3 runs inside one process, CPU from the \
         query's start to its end, with no process start-up and memory already faulted in. \
         It is the stricter yardstick, and the targets are judged by it. *Ratio to a batch process* takes \
         the best of 3 fresh processes, each timed whole by `/usr/bin/time` as the Weir run is, \
         as the tumble bench times `weir query`: the difference between the two ratios is \
         the fixed cost of a process (start-up, first-touch page faults), which weighs most \
         on the queries whose batch form takes tens of milliseconds.\n",
        chrono_date(),
        match args.input {
            Input::Generator => "",
            Input::Parquet => " -- --input parquet",
        },
        machine(),
        args.cpu,
        args.threads,
        args.batch_events,
        match args.input {
            Input::Generator =>
                "from the `nexmark` source (default rate 10,000 events/s of event \
                 time, seed 0, 1:3:46 people:auctions:bids)",
            Input::Parquet =>
                "read from the Parquet files that the batch query reads (`--input parquet`: \
                 a `files` source per table, whole files of 1M events; the same events as the \
                 `nexmark` source's, generated once before the runs)",
        }
    );
    if args.input == Input::Generator {
        generator_section(&mut md, gen_speed);
    }
    query_table(&mut md, n, results);
    md
}

/// The generator's own speed, per table.
fn generator_section(md: &mut String, gen_speed: &Value) {
    let _ = writeln!(md, "## Generator alone (one thread, every column)\n");
    let _ = writeln!(md, "| table | rows | events/s per core | rows/s per core |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for table in TABLES {
        let t = &gen_speed["tables"][table.name()];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            table.name(),
            t["rows"],
            rate(t["events_per_s"].as_f64().unwrap_or(0.0)),
            rate(t["rows_per_s"].as_f64().unwrap_or(0.0))
        );
    }
    let _ = writeln!(
        md,
        "\nAll three tables of a stream: **{} events/s per core**. The bid table with only \
         `auction, price` (a query reading two columns): {} events/s per core.\n",
        rate(gen_speed["all_tables_events_per_s"].as_f64().unwrap_or(0.0)),
        rate(
            gen_speed["bid_auction_price_only"]["events_per_s"]
                .as_f64()
                .unwrap_or(0.0)
        )
    );
}

/// Each query's runs and its batch ceilings, then the queries not run.
fn query_table(md: &mut String, n: u64, results: &[Row]) {
    let _ = writeln!(md, "## Queries\n");
    let _ = writeln!(
        md,
        "| query | kind | sink | events/s | events/s per core | target | ratio to batch | ratio to a batch process | peak RSS | epoch p50 / p99 | checkpoint p50 / p99 | checkpoint bytes/epoch | rows out |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut skipped = Vec::new();
    for (q, bh, pq, batch, batch_pq) in results {
        if !bh.ok {
            skipped.push((q, bh.error.clone()));
            continue;
        }
        let goal = target(&q.kind);
        for (sink, r, batch) in [("blackhole", bh, batch), ("parquet", pq, batch_pq)] {
            if !r.ok {
                let _ = writeln!(
                    md,
                    "| {} | {} | {sink} | failed: {} | | | | | | | | | |",
                    q.name, q.kind, r.error
                );
                continue;
            }
            let per_core = n as f64 / r.cpu_s;
            let ratio = |b: &Option<Value>| {
                cpu_of(b)
                    .map(|c| format!("{:.2}", per_core / (n as f64 / c)))
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                md,
                "| {} | {} | {sink} | {} | {} | {} {} | {} | {} | {:.0} MB | {:.0} / {:.0} ms | {:.1} / {:.1} ms | {:.0} B | {} |",
                q.name,
                q.kind,
                rate(n as f64 / r.wall_s),
                rate(per_core),
                rate(goal),
                if per_core >= goal { "✓" } else { "✗" },
                ratio(&batch.warm),
                ratio(&batch.process),
                r.rss_kb as f64 / 1024.0,
                r.batch_p50,
                r.batch_p99,
                r.ckpt_p50,
                r.ckpt_p99,
                r.ckpt_bytes,
                r.rows_out
            );
        }
        for (what, b, ones) in [
            ("DataFusion batch", &batch.warm, "1 | "),
            ("DataFusion batch, a process", &batch.process, " | 1"),
            ("DataFusion batch → Parquet", &batch_pq.warm, "1 | "),
            ("DataFusion batch → Parquet, a process", &batch_pq.process, " | 1"),
        ] {
            let Some(b) = b else { continue };
            let _ = writeln!(
                md,
                "| {} | | {what} | {} | {} | | {ones} | {:.0} MB | | | | {} |",
                q.name,
                rate(n as f64 / b["wall_s"].as_f64().unwrap_or(f64::NAN)),
                rate(n as f64 / b["cpu_s"].as_f64().unwrap_or(f64::NAN)),
                b["rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
                b["rows"]
            );
        }
    }
    if !skipped.is_empty() {
        let _ = writeln!(md, "\n## Not run yet\n");
        let _ = writeln!(md, "| query | needs | Weir says |");
        let _ = writeln!(md, "|---|---|---|");
        for (q, why) in skipped {
            let _ = writeln!(
                md,
                "| {} ({}) | {} | {} |",
                q.name,
                q.title,
                q.needs,
                why.replace('|', "\\|")
            );
        }
    }
    let _ = writeln!(
        md,
        "\nPeak RSS is the whole process's (`/usr/bin/time %M`); a warm batch run's is its \
         process's after its 3 runs. Epoch latency is `batch_ms` of \
         each epoch that read input; checkpoint time is `checkpoint_ms` (state files and the \
         commit); checkpoint bytes are the state files written per epoch. The Parquet run's \
         wall time includes writing the output; rows out are the query's result rows, which \
         equal the batch query's when no row arrived late."
    );
}
