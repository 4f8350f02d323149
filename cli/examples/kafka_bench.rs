//! The Kafka source against the files source, on the same JSON bids.
//!
//! ```text
//! benches/kafka.sh [EVENTS]     start a tansu broker, build, run this, stop the broker
//! kafka_bench --broker 127.0.0.1:9092 --weir target/release/weir --events 10000000 --results benches/results
//! ```
//!
//! Generates the bids of `EVENTS` Nexmark events (Weir's generator, 92% of
//! the events are bids; without `extra`), writes
//! them as JSON lines into files (1,000,000 to a file) and produces the same
//! lines to a topic of four partitions (bid `i` to partition `i % 4`). Then,
//! for 1 and 2 threads (pinned with `taskset`), runs the same job, a 10 s
//! tumbling COUNT/MAX/SUM into Parquet, with `--trigger available-now
//! --drain`, over the files and over the topic, and reports rows/s of each
//! and their ratio. Last, the latency: a producer sends bids at a fixed rate
//! for 20 s, stamped with the time they are sent, while the job runs with a
//! 1 s trigger and writes each bid's stamp to Parquet; a bid's latency is
//! the time its epoch's commit was written (`commits/N.json`) less its
//! stamp. Writes `kafka-<EVENTS>.md` and `.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use serde_json::json;
use weir_engine::source::nexmark::{NexmarkConfig, NexmarkTable, TableGenerator};

#[derive(Parser, Debug)]
struct Args {
    /// A Kafka-protocol broker, `host:port`.
    #[arg(long)]
    broker: String,
    /// The `weir` binary.
    #[arg(long, default_value = "target/release/weir")]
    weir: PathBuf,
    /// Bids.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Work folder (data, checkpoints, outputs).
    #[arg(long, default_value = "target/bench-kafka")]
    work: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "benches/results")]
    results: PathBuf,
    /// Bids per second the latency run sends.
    #[arg(long, default_value_t = 50_000)]
    latency_rate: u64,
}

const PARTITIONS: i32 = 4;
/// Events whose bids go to one file.
const EVENTS_PER_FILE: u64 = 1_000_000;

/// The bid table's columns, as JSON lines (without `extra`, Nexmark's
/// padding, so a line is about 150 bytes).
fn bid_lines(from: u64, to: u64) -> Result<Vec<Vec<u8>>> {
    let config = NexmarkConfig::default();
    let schema = Arc::new(NexmarkTable::Bid.schema().project(&[0, 1, 2, 3, 4, 5])?);
    let generator = TableGenerator::new(config, NexmarkTable::Bid, schema)?;
    let batches = generator.generate(from, to)?;
    let mut lines = Vec::new();
    for b in &batches {
        let mut buf = Vec::new();
        {
            let mut w = LineDelimitedWriter::new(&mut buf);
            w.write(b)?;
            w.finish()?;
        }
        lines.extend(
            buf.split(|&c| c == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    Ok(lines)
}

fn client(rt: &tokio::runtime::Runtime, broker: &str) -> Result<Client> {
    Ok(rt.block_on(ClientBuilder::new(vec![broker.to_string()]).build())?)
}

fn create_topic(rt: &tokio::runtime::Runtime, c: &Client, topic: &str) -> Result<()> {
    rt.block_on(async {
        let _ = c.controller_client()?.delete_topic(topic, 5_000).await;
        c.controller_client()?
            .create_topic(topic, PARTITIONS, 1, 5_000)
            .await?;
        for p in 0..PARTITIONS {
            c.partition_client(topic, p, UnknownTopicHandling::Retry).await?;
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// Produces lines, line `i` to partition `i % 4`, stamped `stamp(i)`.
async fn produce(c: &Client, topic: &str, lines: Vec<Vec<u8>>, stamp: impl Fn(usize) -> i64) -> Result<()> {
    let mut parts: Vec<Vec<Record>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
    for (i, l) in lines.into_iter().enumerate() {
        parts[i % PARTITIONS as usize].push(Record {
            key: None,
            value: Some(l),
            headers: BTreeMap::new(),
            timestamp: chrono::DateTime::from_timestamp_millis(stamp(i)).unwrap(),
        });
    }
    let mut sends = Vec::new();
    for (p, records) in parts.into_iter().enumerate() {
        let pc = c
            .partition_client(topic, p as i32, UnknownTopicHandling::Retry)
            .await?;
        sends.push(async move {
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let chunk: Vec<Record> = records.by_ref().take(2_000).collect();
                pc.produce(chunk, Compression::NoCompression).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(())
}

fn job(source: &str, out: &Path) -> String {
    format!(
        "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
           date_time TIMESTAMP(3), WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
           WITH ({source}, 'format' = 'json');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet');
         INSERT INTO out
         SELECT window_start, window_end, COUNT(*) AS bids, MAX(price) AS top, SUM(price) AS volume
         FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
         GROUP BY window_start, window_end;",
        out.display()
    )
}

struct Run {
    rows: u64,
    secs: f64,
}

fn run_job(args: &Args, name: &str, sql: &str, threads: usize) -> Result<Run> {
    let dir = args.work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("job.sql");
    std::fs::write(
        &file,
        sql.replace("OUT_DIR", &dir.join("out").display().to_string()),
    )?;
    let cpus = (0..threads).map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    let started = Instant::now();
    let out = Command::new("taskset")
        .args(["-c", &cpus])
        .arg(&args.weir)
        .arg("run")
        .arg(&file)
        .args([
            "--trigger",
            "available-now",
            "--drain",
            "--threads",
            &threads.to_string(),
        ])
        .arg("--checkpoint")
        .arg(dir.join("checkpoint"))
        .arg("--progress-json")
        .arg(dir.join("progress.json"))
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{name}: weir failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let rows = std::fs::read_to_string(dir.join("progress.json"))?
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["rows_in"].as_u64().unwrap_or(0)))
        .sum::<std::result::Result<u64, _>>()?;
    Ok(Run { rows, secs })
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the latency job while producing at `rate` for 20 s; returns every
/// bid's latency (ms), sorted.
fn latency(args: &Args, rt: &tokio::runtime::Runtime, c: &Client) -> Result<Vec<i64>> {
    let topic = "bench-latency";
    create_topic(rt, c, topic)?;
    let dir = args.work.join("latency");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sql = format!(
        "CREATE TABLE bid (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
           sent TIMESTAMP(3) METADATA FROM 'timestamp')
           WITH ('connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{}',
                 'format' = 'json', 'scan.startup.mode' = 'latest-offset');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet');
         INSERT INTO out SELECT auction, sent FROM bid;",
        args.broker,
        dir.join("out").display()
    );
    let file = dir.join("job.sql");
    std::fs::write(&file, sql)?;
    let mut child = Command::new(&args.weir)
        .arg("run")
        .arg(&file)
        .args(["--trigger", "1s"])
        .arg("--checkpoint")
        .arg(dir.join("checkpoint"))
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(5));
    let lines = bid_lines(0, args.latency_rate * 20)?;
    let per_tick = (args.latency_rate / 10) as usize;
    let started = Instant::now();
    rt.block_on(async {
        for (tick, chunk) in lines.chunks(per_tick).enumerate() {
            let due = started + Duration::from_millis(100 * tick as u64);
            tokio::time::sleep_until(due.into()).await;
            let now = chrono::Utc::now().timestamp_millis();
            produce(c, topic, chunk.to_vec(), |_| now).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    std::thread::sleep(Duration::from_secs(5));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait()?;
    // Each output file's epoch, and that epoch's commit time.
    let mut latencies = Vec::new();
    for e in std::fs::read_dir(dir.join("out"))? {
        let path = e?.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(epoch) = name
            .strip_prefix("part-")
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let commit = dir.join(format!("checkpoint/commits/{epoch:020}.json"));
        let committed_ms = std::fs::metadata(&commit)
            .with_context(|| format!("{}", commit.display()))?
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?.build()?;
        for b in reader {
            let b: RecordBatch = b?;
            let sent = b.column(1).as_primitive::<TimestampMillisecondType>();
            for i in 0..sent.len() {
                latencies.push(committed_ms - sent.value(i));
            }
        }
    }
    latencies.sort_unstable();
    Ok(latencies)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let c = client(&rt, &args.broker)?;
    std::fs::create_dir_all(&args.work)?;
    let files = args.work.join("files");
    let topic = format!("bench-bids-{}", args.events);
    eprintln!(
        "generating {} bids as JSON files and into topic {topic}",
        args.events
    );
    let _ = std::fs::remove_dir_all(&files);
    std::fs::create_dir_all(&files)?;
    create_topic(&rt, &c, &topic)?;
    let produce_started = Instant::now();
    let mut bytes = 0u64;
    let mut bids = 0u64;
    let mut from = 0;
    while from < args.events {
        let to = (from + EVENTS_PER_FILE).min(args.events);
        let lines = bid_lines(from, to)?;
        bids += lines.len() as u64;
        let mut f = std::fs::File::create(files.join(format!("bids-{:04}.json", from / EVENTS_PER_FILE)))?;
        for l in &lines {
            bytes += l.len() as u64 + 1;
            f.write_all(l)?;
            f.write_all(b"\n")?;
        }
        rt.block_on(produce(&c, &topic, lines, |_| 0))?;
        from = to;
    }
    let produce_secs = produce_started.elapsed().as_secs_f64();
    eprintln!("{bytes} bytes of JSON in {produce_secs:.1} s");
    let files_source = format!("'connector' = 'files', 'path' = '{}/'", files.display());
    let kafka_source = format!(
        "'connector' = 'kafka', 'topic' = '{topic}', 'properties.bootstrap.servers' = '{}'",
        args.broker
    );
    let mut rows = Vec::new();
    for threads in [1usize, 2] {
        let f = run_job(
            &args,
            &format!("files-t{threads}"),
            &job(&files_source, Path::new("OUT_DIR")),
            threads,
        )?;
        let k = run_job(
            &args,
            &format!("kafka-t{threads}"),
            &job(&kafka_source, Path::new("OUT_DIR")),
            threads,
        )?;
        if f.rows != bids || k.rows != bids {
            bail!("rows read: files {}, kafka {} (expected {bids})", f.rows, k.rows);
        }
        eprintln!(
            "{threads} thread(s): files {:.0} rows/s, kafka {:.0} rows/s",
            f.rows as f64 / f.secs,
            k.rows as f64 / k.secs
        );
        rows.push((threads, f, k));
    }
    let lat = latency(&args, &rt, &c)?;
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));

    let mut md = String::new();
    md.push_str(&format!(
        "# Kafka source vs files source, {bids} JSON bids ({} Nexmark events)\n\n\
         Generated by `benches/kafka.sh {}` (`cli/examples/kafka_bench.rs`) on {}, a {}-core machine.\n\
         Broker: tansu 0.6.0 (in memory) on loopback; the topic has {PARTITIONS} partitions. The same {} bytes of \
         JSON lines (Nexmark bids without `extra`) as {} files and as records. Job: a 10 s tumbling \
         COUNT/MAX/SUM into Parquet, `--trigger available-now --drain`, checkpoints on, pinned with `taskset`; \
         whole process, wall time.\n\n\
         | threads | files rows/s | Kafka rows/s | Kafka / files | files s | Kafka s |\n|---|---|---|---|---|---|\n",
        args.events,
        args.events,
        chrono::Utc::now().format("%Y-%m-%d"),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        bytes,
        args.events.div_ceil(EVENTS_PER_FILE),
    ));
    let mut json_rows = Vec::new();
    for (threads, f, k) in &rows {
        let (fr, kr) = (f.rows as f64 / f.secs, k.rows as f64 / k.secs);
        md.push_str(&format!(
            "| {threads} | {fr:.0} | {kr:.0} | {:.2} | {:.2} | {:.2} |\n",
            kr / fr,
            f.secs,
            k.secs
        ));
        json_rows.push(
            json!({"threads": threads, "files_rows_per_sec": fr, "kafka_rows_per_sec": kr,
            "ratio": kr / fr, "files_secs": f.secs, "kafka_secs": k.secs}),
        );
    }
    md.push_str(&format!(
        "\nTarget: Kafka at least 0.80 of files.\n\n\
         **Latency** (produce to committed Parquet row), `--trigger 1s`, {} bids/s for 20 s, {} bids: \
         p50 {p50} ms, p99 {p99} ms. A bid's latency is its epoch's commit time (`commits/N.json`) less the \
         time it was sent (its record timestamp).\n",
        args.latency_rate,
        lat.len()
    ));
    std::fs::create_dir_all(&args.results)?;
    let base = args.results.join(format!("kafka-{}", args.events));
    std::fs::write(base.with_extension("md"), &md)?;
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(
            &json!({"events": args.events, "bids": bids, "bytes": bytes, "runs": json_rows,
            "latency_ms": {"p50": p50, "p99": p99, "samples": lat.len()}, "produce_secs": produce_secs}),
        )?,
    )?;
    println!("{md}");
    Ok(())
}
