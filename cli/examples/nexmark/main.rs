//! The Nexmark benchmark harness.
//!
//! ```text
//! benches/nexmark.sh [EVENTS]                 build, then `nexmark suite --events EVENTS`
//! nexmark suite [--events N] [...]            every query in benches/nexmark/, report in benches/results/
//! nexmark gen-speed [--events N]              the generator alone, one thread
//! nexmark write-parquet --events N DIR        the same events as Parquet (DIR/person, DIR/auction, DIR/bid)
//! nexmark batch --data DIR QUERY.sql          a DataFusion batch query over them, output counted and dropped
//! nexmark batch --data DIR --write-parquet OUT QUERY.sql   the same, output written as Parquet (snappy, as Weir's sink)
//! ```
//!
//! `suite` runs each `benches/nexmark/q*.sql` as a `weir run` job over the
//! `nexmark` source (`ddl.sql`) with checkpoints on, once to a Parquet sink
//! and once to the blackhole sink, pinned to one CPU (`taskset`), under
//! `/usr/bin/time` (wall, CPU, peak RSS) and with `--progress-json` (per-epoch
//! latency and checkpoint cost). Beside it, the query's `qN.batch.sql` runs as
//! a DataFusion batch query over the same events stored as Parquet: the
//! ceiling, once with its output counted and dropped (for the blackhole
//! run) and once writing it as Parquet (for the Parquet run). Each is
//! measured two ways: warm (the best of 3 runs inside one process, CPU from
//! the query's start to its end: the stricter yardstick) and as a fresh
//! process (the best of 3 processes, each timed whole by `/usr/bin/time` as
//! the `weir run` is: start-up, first-touch page faults and all, as the
//! tumble bench times `weir query`). A query Weir cannot plan yet is reported as skipped, with Weir's
//! reason, and runs as soon as Weir can run it. The report goes to
//! `benches/results/nexmark-<N>.md` and `.json`.
//!
//! `suite --input parquet` runs the Weir jobs over those very Parquet files
//! instead (a `files` source per table, one file of 1M events an epoch), so
//! that Weir and the batch query read the same bytes and the ratio measures
//! the query, not the generator against a Parquet reader. Its report is
//! `nexmark-<N>-parquet.md`.

mod report;

use report::{load_average, report_json, report_md};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use futures::StreamExt;
use serde_json::{Value, json};
use weir_engine::source::nexmark::{NexmarkConfig, NexmarkTable, TableGenerator};

#[derive(Parser, Debug)]
#[command(name = "nexmark", about = "The Nexmark benchmark harness for Weir")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run every query and write the report.
    Suite(SuiteArgs),
    /// Measure the generator alone, on this thread; prints JSON.
    GenSpeed {
        /// Events (of all kinds) to generate for each table.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
    },
    /// Write the events as Parquet: DIR/person, DIR/auction, DIR/bid.
    WriteParquet {
        /// Events (of all kinds).
        #[arg(long)]
        events: u64,
        /// Events per file.
        #[arg(long, default_value_t = 1_000_000)]
        events_per_file: u64,
        /// Output folder.
        dir: PathBuf,
    },
    /// Run a batch query over the Parquet tables; prints JSON.
    Batch {
        /// The folder `write-parquet` wrote.
        #[arg(long)]
        data: PathBuf,
        /// Runs; the fastest is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Write the output as Parquet files in this folder (replaced each
        /// run) instead of counting and dropping it.
        #[arg(long)]
        write_parquet: Option<PathBuf>,
        /// A file with one SELECT over person, auction and bid.
        query: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct SuiteArgs {
    /// Events (of all kinds) in the stream.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// The source's max_events_per_batch: events per epoch.
    #[arg(long, default_value_t = 1_000_000)]
    batch_events: u64,
    /// What the Weir jobs read: the `nexmark` source, or the Parquet files
    /// the batch queries read (`batch_events` must then be a multiple of the
    /// files' 1M events).
    #[arg(long, value_enum, default_value_t = Input::Generator)]
    input: Input,
    /// Only these queries (comma-separated names such as q0,q7_agg).
    #[arg(long)]
    queries: Option<String>,
    /// The CPUs to pin runs to (a `taskset -c` list: `0`, `0,1`).
    #[arg(long, default_value = "0")]
    cpu: String,
    /// `weir run --threads`: threads (partitions) each Weir job uses.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The weir binary.
    #[arg(long, default_value = "target/release/weir")]
    weir: PathBuf,
    /// Where the queries are.
    #[arg(long, default_value = "benches/nexmark")]
    queries_dir: PathBuf,
    /// Scratch space (data, checkpoints, output).
    #[arg(long, default_value = "target/bench-nexmark")]
    work: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "benches/results")]
    results: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    /// The `nexmark` source, generating the events as the job runs.
    Generator,
    /// The events as Parquet (`write-parquet`), one `files` source per table.
    Parquet,
}

/// Events in each Parquet file the suite writes (`write-parquet`'s default).
const EVENTS_PER_FILE: u64 = 1_000_000;

/// `ddl.sql` with each table's `WITH (...)` replaced by a `files` source over
/// its folder of `write-parquet` output, `files` files an epoch. The columns
/// and watermarks stay as declared.
fn parquet_ddl(ddl: &str, data: &Path, files: u64) -> Result<String> {
    let mut out = String::new();
    for statement in ddl.split_inclusive(';') {
        let Some(at) = statement.find("CREATE TABLE ") else {
            out.push_str(statement);
            continue;
        };
        let name = statement[at + "CREATE TABLE ".len()..]
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .next()
            .unwrap_or_default();
        let with = statement
            .rfind("WITH (")
            .with_context(|| format!("ddl.sql: no WITH clause for table {name}"))?;
        let _ = write!(
            out,
            "{}WITH ('connector' = 'files', 'path' = '{}/', 'format' = 'parquet', \
             'max_files_per_batch' = '{files}');",
            &statement[..with],
            data.join(name).display()
        );
    }
    Ok(out)
}

/// The allocator settings the `weir` binary uses (see its `main.rs`), so
/// that the batch ceiling runs under the same conditions.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> Result<()> {
    keep_freed_memory();
    match Cli::parse().command {
        Cmd::Suite(args) => suite(&args),
        Cmd::GenSpeed { events } => {
            println!("{}", gen_speed(events)?);
            Ok(())
        }
        Cmd::WriteParquet {
            events,
            events_per_file,
            dir,
        } => write_parquet(events, events_per_file, &dir),
        Cmd::Batch {
            data,
            runs,
            write_parquet,
            query,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            println!(
                "{}",
                rt.block_on(batch(&data, &query, runs, write_parquet.as_deref()))?
            );
            Ok(())
        }
    }
}

/// How many CPUs a `taskset -c` list names (`0`, `0,1`, `0-3,6`).
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum()
}

/// CPU time of this process (all threads), seconds.
fn process_cpu_s() -> f64 {
    cpu_s(libc::RUSAGE_SELF)
}

fn cpu_s(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU time of this thread, seconds.
fn thread_cpu_s() -> f64 {
    // SAFETY: clock_gettime only writes the struct it is given.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Peak RSS of this process, KiB.
fn peak_rss_kb() -> i64 {
    // SAFETY: as above.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss
}

/// A table's columns as a job declares them (`VARCHAR` is Utf8View).
fn declared_schema(table: NexmarkTable) -> SchemaRef {
    let full = table.schema();
    Arc::new(Schema::new(
        full.fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::Utf8 => DataType::Utf8View,
                    t => t.clone(),
                };
                Field::new(f.name(), t, true)
            })
            .collect::<Vec<_>>(),
    ))
}

const TABLES: [NexmarkTable; 3] = [NexmarkTable::Bid, NexmarkTable::Auction, NexmarkTable::Person];

/// Times the generator alone: every column of each table, in 1M-event
/// batches as the source makes them, and the bid table with two columns.
fn gen_speed(events: u64) -> Result<Value> {
    let chunk = 1_000_000;
    let run = |table: NexmarkTable, schema: SchemaRef| -> Result<(u64, f64)> {
        let g = TableGenerator::new(NexmarkConfig::default(), table, schema)?;
        let cpu = thread_cpu_s();
        let mut rows = 0;
        let mut start = 0;
        while start < events {
            let end = (start + chunk).min(events);
            rows += g
                .generate(start, end)?
                .iter()
                .map(|b| b.num_rows() as u64)
                .sum::<u64>();
            start = end;
        }
        Ok((rows, thread_cpu_s() - cpu))
    };
    let mut tables = serde_json::Map::new();
    let mut total_cpu = 0.0;
    for table in TABLES {
        let (rows, cpu) = run(table, declared_schema(table))?;
        total_cpu += cpu;
        tables.insert(
            table.name().into(),
            json!({"rows": rows, "cpu_s": cpu, "events_per_s": events as f64 / cpu, "rows_per_s": rows as f64 / cpu}),
        );
    }
    let narrow = declared_schema(NexmarkTable::Bid).project(&[0, 2])?;
    let (rows, cpu) = run(NexmarkTable::Bid, Arc::new(narrow))?;
    Ok(json!({
        "events": events,
        "tables": tables,
        "all_tables_events_per_s": events as f64 / total_cpu,
        "bid_auction_price_only": {"rows": rows, "cpu_s": cpu, "events_per_s": events as f64 / cpu},
    }))
}

/// Writes the stream's tables as Parquet, one file per `per_file` events,
/// and q13's side table (`key` 0..9999, `value`) as CSV.
fn write_parquet(events: u64, per_file: u64, dir: &Path) -> Result<()> {
    let side = dir.join("side_input");
    std::fs::create_dir_all(&side)?;
    let mut csv = String::from("key,value\n");
    for key in 0..10_000 {
        let _ = writeln!(csv, "{key},value-{key}");
    }
    std::fs::write(side.join("side_input.csv"), csv)?;
    for table in TABLES {
        let out = dir.join(table.name());
        std::fs::create_dir_all(&out)?;
        let g = TableGenerator::new(NexmarkConfig::default(), table, table.schema())?;
        let mut start = 0;
        let mut part = 0;
        while start < events {
            let end = (start + per_file).min(events);
            let path = out.join(format!("part-{part:05}.parquet"));
            let tmp = path.with_extension("writing");
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build();
            let mut w =
                ArrowWriter::try_new(std::fs::File::create(&tmp)?, Arc::clone(g.schema()), Some(props))?;
            for b in g.generate(start, end)? {
                w.write(&b)?;
            }
            w.close()?;
            std::fs::rename(&tmp, &path)?;
            start = end;
            part += 1;
        }
    }
    Ok(())
}

/// Runs a query over the Parquet tables `runs` times; reports the fastest.
/// With `out`, the result is written there as Parquet with Weir's sink's
/// compression (snappy), else counted and dropped.
async fn batch(data: &Path, query: &Path, runs: usize, out: Option<&Path>) -> Result<Value> {
    let sql = std::fs::read_to_string(query).with_context(|| format!("reading {}", query.display()))?;
    let mut best: Option<Value> = None;
    for _ in 0..runs.max(1) {
        let mut config = datafusion::prelude::SessionConfig::new();
        config.options_mut().execution.parquet.compression = Some("snappy".into());
        let ctx = SessionContext::new_with_config(config);
        for table in TABLES {
            let path = data.join(table.name());
            ctx.register_parquet(
                table.name(),
                path.to_string_lossy().as_ref(),
                ParquetReadOptions::default(),
            )
            .await?;
        }
        let side = data.join("side_input");
        if side.exists() {
            ctx.register_csv(
                "side_input",
                side.to_string_lossy().as_ref(),
                CsvReadOptions::new(),
            )
            .await?;
        }
        if let Some(out) = out {
            let _ = std::fs::remove_dir_all(out);
            std::fs::create_dir_all(out)?;
        }
        let (wall0, cpu0) = (Instant::now(), process_cpu_s());
        let df = ctx.sql(&sql).await?;
        let mut rows = 0u64;
        match out {
            None => {
                let mut stream = df.execute_stream().await?;
                while let Some(b) = stream.next().await {
                    rows += b?.num_rows() as u64;
                }
            }
            Some(out) => {
                // DataFusion answers with one row: the count written.
                let counts = df
                    .write_parquet(
                        &out.to_string_lossy(),
                        datafusion::dataframe::DataFrameWriteOptions::new(),
                        None,
                    )
                    .await?;
                for b in counts {
                    use datafusion::arrow::array::AsArray;
                    let c = b
                        .column(0)
                        .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
                    rows += c.values().iter().sum::<u64>();
                }
            }
        }
        let (wall, cpu) = (wall0.elapsed().as_secs_f64(), process_cpu_s() - cpu0);
        if best
            .as_ref()
            .is_none_or(|b| cpu < b["cpu_s"].as_f64().unwrap_or(f64::MAX))
        {
            best = Some(json!({"rows": rows, "wall_s": wall, "cpu_s": cpu}));
        }
    }
    let mut best = best.unwrap_or(Value::Null);
    best["rss_kb"] = json!(peak_rss_kb());
    Ok(best)
}

// ---------------------------------------------------------------------------
// The suite.

/// A query file's header: `-- qN: title`, `-- Kind: ...`, `-- Needs: ...`.
#[derive(Debug)]
struct Query {
    name: String,
    title: String,
    kind: String,
    needs: String,
    /// `-- Output: changelog`: an updating query, whose Parquet sink is
    /// declared `'mode' = 'changelog'`.
    changelog: bool,
    sql: String,
    batch: Option<PathBuf>,
}

fn load_queries(dir: &Path, only: Option<&str>) -> Result<Vec<Query>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(name) = file.strip_suffix(".sql") else {
            continue;
        };
        if !name.starts_with('q') || name.contains('.') {
            continue;
        }
        if let Some(only) = only
            && !only.split(',').any(|q| q.trim() == name)
        {
            continue;
        }
        let sql = std::fs::read_to_string(&path)?;
        let header = |key: &str| -> String {
            sql.lines()
                .filter_map(|l| l.strip_prefix("-- "))
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let title = sql
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("-- "))
            .and_then(|l| l.split_once(": "))
            .map(|(_, t)| t.to_string())
            .unwrap_or_default();
        let batch = dir.join(format!("{name}.batch.sql"));
        out.push(Query {
            name: name.to_string(),
            title,
            kind: header("Kind:"),
            needs: header("Needs:"),
            changelog: header("Output:") == "changelog",
            sql,
            batch: batch.exists().then_some(batch),
        });
    }
    // q0, q1, ..., q5, q5_agg, ..., q10, ...
    out.sort_by_key(|q| {
        let digits: String = q.name[1..].chars().take_while(char::is_ascii_digit).collect();
        (digits.parse::<u32>().unwrap_or(u32::MAX), q.name.clone())
    });
    Ok(out)
}

/// One `weir run` of a query to one sink.
#[derive(Debug, Default)]
struct WeirRun {
    ok: bool,
    error: String,
    wall_s: f64,
    cpu_s: f64,
    rss_kb: u64,
    epochs: usize,
    rows_in: u64,
    rows_out: u64,
    late: u64,
    batch_p50: f64,
    batch_p99: f64,
    ckpt_p50: f64,
    ckpt_p99: f64,
    ckpt_bytes: f64,
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn run_weir(args: &SuiteArgs, q: &Query, sink: &str, ddl: &str, data: &Path) -> Result<WeirRun> {
    let dir = args.work.join(format!("{}-{sink}", q.name));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    // An updating query (`-- Output: changelog`) writes its +I/-U/+U/-D rows.
    let mode = if q.changelog { ", 'mode' = 'changelog'" } else { "" };
    let sink_options = match sink {
        "parquet" => format!(
            "'connector' = 'files', 'path' = '{}', 'format' = 'parquet'{mode}",
            dir.join("out/").display()
        ),
        _ => "'connector' = 'blackhole'".to_string(),
    };
    let side_input = format!("{}/", data.join("side_input").display());
    let job = format!(
        "{ddl}\n{}",
        q.sql
            .replace("${SINK}", &sink_options)
            .replace("${SIDE_INPUT}", &side_input)
    );
    std::fs::write(dir.join("job.sql"), &job)?;
    let time_file = dir.join("time.txt");
    let progress = dir.join("progress.json");
    let out = timed(&args.cpu, &time_file, &args.weir)
        .arg("run")
        .arg(dir.join("job.sql"))
        .args(["--trigger", "available-now", "--drain", "--checkpoint"])
        .arg(dir.join("checkpoint"))
        .arg("--progress-json")
        .arg(&progress)
        .arg("--threads")
        .arg(args.threads.to_string())
        .output()
        .with_context(|| format!("running {}", args.weir.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(dir.join("weir.log"), stderr.as_bytes())?;
    if !out.status.success() {
        let error = stderr
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or(stderr.trim())
            .to_string();
        // "job <path>: " and "in `INSERT INTO ...`: " say nothing here.
        let mut error = match error.split_once(".sql: ") {
            Some((_, rest)) => rest.to_string(),
            None => error,
        };
        if error.starts_with("in `")
            && let Some((_, rest)) = error.split_once("`: ")
        {
            error = rest.to_string();
        }
        return Ok(WeirRun {
            error,
            ..Default::default()
        });
    }
    let f = read_times(&time_file)?;
    let lines: Vec<Value> = std::fs::read_to_string(&progress)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let data: Vec<&Value> = lines.iter().filter(|l| l["drain"] != json!(true)).collect();
    let field = |v: &[&Value], k: &str| -> Vec<f64> { v.iter().filter_map(|l| l[k].as_f64()).collect() };
    let sum = |k: &str| -> u64 { lines.iter().filter_map(|l| l[k].as_u64()).sum() };
    let batch_ms = field(&data, "batch_ms");
    let all: Vec<&Value> = lines.iter().collect();
    let ckpt_ms = field(&all, "checkpoint_ms");
    let ckpt_bytes = field(&all, "state_bytes");
    Ok(WeirRun {
        ok: true,
        error: String::new(),
        wall_s: f[0],
        cpu_s: f[1] + f[2],
        rss_kb: f[3] as u64,
        epochs: data.len(),
        rows_in: sum("rows_in"),
        rows_out: sum("rows_out"),
        late: sum("late_rows"),
        batch_p50: percentile(&batch_ms, 50.0),
        batch_p99: percentile(&batch_ms, 99.0),
        ckpt_p50: percentile(&ckpt_ms, 50.0),
        ckpt_p99: percentile(&ckpt_ms, 99.0),
        ckpt_bytes: ckpt_bytes.iter().sum::<f64>() / ckpt_bytes.len().max(1) as f64,
    })
}

/// `program`, pinned to `cpu`, under `/usr/bin/time` writing its wall
/// time, user and system CPU and peak RSS to `time_file` (see
/// [`read_times`]); the caller adds the arguments.
fn timed(cpu: &str, time_file: &Path, program: &Path) -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(time_file)
        .arg("taskset")
        .arg("-c")
        .arg(cpu)
        .arg(program);
    c
}

/// What [`timed`] wrote: wall s, user s, system s, peak RSS kB.
fn read_times(time_file: &Path) -> Result<[f64; 4]> {
    let times = std::fs::read_to_string(time_file)?;
    let last = times.lines().last().unwrap_or_default();
    let f: Vec<f64> = last.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    f.try_into()
        .map_err(|_| anyhow::anyhow!("unexpected /usr/bin/time output: {times}"))
}

/// Runs a child of this program pinned to the CPU `runs` times, each timed
/// whole by `/usr/bin/time` as [`run_weir`] times Weir; returns the JSON
/// output of the run with the least CPU, its `cpu_s`, `wall_s` and `rss_kb`
/// replaced by the whole process's.
fn run_self_whole(args: &SuiteArgs, child: &[&str], runs: usize) -> Result<Value> {
    let me = std::env::current_exe()?;
    let time_file = args.work.join("batch-time.txt");
    let mut best: Option<Value> = None;
    for _ in 0..runs.max(1) {
        let out = timed(&args.cpu, &time_file, &me).args(child).output()?;
        let mut v = child_json(&me, child, &out)?;
        let f = read_times(&time_file)?;
        v["wall_s"] = json!(f[0]);
        v["cpu_s"] = json!(f[1] + f[2]);
        v["rss_kb"] = json!(f[3]);
        if best
            .as_ref()
            .is_none_or(|b| f[1] + f[2] < b["cpu_s"].as_f64().unwrap_or(f64::MAX))
        {
            best = Some(v);
        }
    }
    let _ = std::fs::remove_file(&time_file);
    best.context("no run")
}

/// Runs a child of this program pinned to the CPU; parses its JSON output.
fn run_self(args: &SuiteArgs, child: &[&str]) -> Result<Value> {
    let me = std::env::current_exe()?;
    let out = Command::new("taskset")
        .arg("-c")
        .arg(&args.cpu)
        .arg(&me)
        .args(child)
        .output()?;
    child_json(&me, child, &out)
}

/// A child of this program's JSON output, or its error.
fn child_json(me: &Path, child: &[&str], out: &std::process::Output) -> Result<Value> {
    if !out.status.success() {
        bail!(
            "{} {}: {}",
            me.display(),
            child.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn suite(args: &SuiteArgs) -> Result<()> {
    if !args.weir.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p weir-cli` (benches/nexmark.sh does)",
            args.weir.display()
        );
    }
    // `--cpu` pins every run: `--threads 2 --cpu 0` measures two threads
    // sharing one core (about one core's rate), not two-thread scaling.
    let cpus = cpu_count(&args.cpu);
    if cpus < args.threads {
        eprintln!(
            "nexmark: warning: --threads {} on --cpu {} ({cpus} CPU{}): the threads share the CPUs, so this does not measure scaling; pass e.g. --cpu 0,1",
            args.threads,
            args.cpu,
            if cpus == 1 { "" } else { "s" }
        );
    }
    let n = args.events;
    std::fs::create_dir_all(&args.work)?;
    let queries = load_queries(&args.queries_dir, args.queries.as_deref())?;
    if queries.is_empty() {
        bail!("no queries found in {}", args.queries_dir.display());
    }
    let ddl = std::fs::read_to_string(args.queries_dir.join("ddl.sql"))?
        .replace("${EVENTS}", &n.to_string())
        .replace("${BATCH}", &args.batch_events.to_string());
    let data = args.work.join(format!("data-{n}"));
    let ddl = match args.input {
        Input::Generator => ddl,
        Input::Parquet => {
            if args.batch_events == 0 || !args.batch_events.is_multiple_of(EVENTS_PER_FILE) {
                bail!(
                    "--input parquet reads whole files of {EVENTS_PER_FILE} events: --batch-events must be a multiple of it"
                );
            }
            // Absolute: the job file lives elsewhere.
            let data = std::path::absolute(&data)?;
            parquet_ddl(&ddl, &data, args.batch_events / EVENTS_PER_FILE)?
        }
    };

    let load_before = load_average();
    let gen_speed = match args.input {
        Input::Generator => {
            eprintln!("nexmark: generator alone, {n} events, CPU {}", args.cpu);
            run_self(args, &["gen-speed", "--events", &n.to_string()])?
        }
        Input::Parquet => Value::Null,
    };

    // The same events as Parquet, for the batch ceiling (once per size).
    let marker = data.join("_complete");
    if !marker.exists() {
        eprintln!("nexmark: writing {n} events as Parquet to {}", data.display());
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        let me = std::env::current_exe()?;
        let status = Command::new(me)
            .args(["write-parquet", "--events", &n.to_string()])
            .arg(&data)
            .status()?;
        if !status.success() {
            bail!("writing the Parquet data failed");
        }
        std::fs::write(&marker, b"")?;
    }

    let mut results = Vec::new();
    for q in &queries {
        eprintln!("nexmark: {} ({})", q.name, q.title);
        let blackhole = run_weir(args, q, "blackhole", &ddl, &data)?;
        let parquet = if blackhole.ok {
            run_weir(args, q, "parquet", &ddl, &data)?
        } else {
            WeirRun {
                error: blackhole.error.clone(),
                ..Default::default()
            }
        };
        // `whole`: best of 3 fresh processes, each timed whole; else the
        // best of 3 runs in one process.
        let batch_run = |extra: &[&str], whole: bool| match (&q.batch, blackhole.ok) {
            (Some(file), true) => {
                let file = file.to_string_lossy();
                let data = data.to_string_lossy();
                let mut a = vec!["batch", "--data", &data];
                a.extend_from_slice(extra);
                if whole {
                    a.extend(["--runs", "1"]);
                }
                a.push(&file);
                // A batch query that fails is reported without a ceiling.
                let run = if whole {
                    run_self_whole(args, &a, 3)
                } else {
                    run_self(args, &a)
                };
                match run {
                    Ok(v) => Some(v),
                    Err(e) => {
                        eprintln!("  batch query failed: {e:#}");
                        None
                    }
                }
            }
            _ => None,
        };
        let batch_out = args.work.join("batch-out");
        let to_parquet = ["--write-parquet", &batch_out.to_string_lossy()];
        let batch = Ceilings {
            warm: batch_run(&[], false),
            process: batch_run(&[], true),
        };
        let batch_parquet = Ceilings {
            warm: batch_run(&to_parquet, false),
            process: batch_run(&to_parquet, true),
        };
        let _ = std::fs::remove_dir_all(&batch_out);
        if blackhole.ok {
            eprintln!(
                "  blackhole {:.0} events/s per core, parquet {:.0}{}",
                n as f64 / blackhole.cpu_s,
                n as f64 / parquet.cpu_s,
                batch
                    .warm
                    .as_ref()
                    .and_then(|b| b["cpu_s"].as_f64())
                    .map(|c| format!(", batch {:.0}", n as f64 / c))
                    .unwrap_or_default()
            );
        } else {
            eprintln!("  skipped: {}", blackhole.error);
        }
        results.push((q, blackhole, parquet, batch, batch_parquet));
    }

    std::fs::create_dir_all(&args.results)?;
    let load = format!("{load_before} at the start, {} at the end", load_average());
    let mut json = report_json(args, &gen_speed, &results);
    json["load_average"] = json!(load);
    json["threads"] = json!(args.threads);
    let md = report_md(args, &gen_speed, &results, &load);
    let input = match args.input {
        Input::Generator => "",
        Input::Parquet => "-parquet",
    };
    let base = match args.threads {
        1 => args.results.join(format!("nexmark-{n}{input}")),
        t => args.results.join(format!("nexmark-{n}{input}-t{t}")),
    };
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    std::fs::write(base.with_extension("md"), &md)?;
    println!("{md}");
    eprintln!("nexmark: wrote {}.md and .json", base.display());
    Ok(())
}

/// A query's batch ceiling measured both ways (see the module's comment):
/// `None` when the query has no batch form or it failed.
struct Ceilings {
    /// Best of 3 runs inside one process.
    warm: Option<Value>,
    /// Best of 3 fresh processes, each timed whole.
    process: Option<Value>,
}

/// A query, its blackhole and Parquet runs, and its batch ceilings (output
/// dropped; output written as Parquet).
type Row<'a> = (&'a Query, WeirRun, WeirRun, Ceilings, Ceilings);
