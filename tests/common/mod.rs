//! Helpers for end-to-end tests that drive the real `weir` binary.
#![allow(dead_code)]

pub mod kafka;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::SessionContext;

/// 2026-01-01T00:00:00Z in ms.
pub const BASE_MS: i64 = 1_767_225_600_000;

/// `weir run job.sql` until the input is done, checkpoint in `ck/`.
pub const RUN_CK: [&str; 6] = [
    "run",
    "job.sql",
    "--trigger",
    "available-now",
    "--checkpoint",
    "ck",
];

/// The newest commit in `ck/commits/`.
pub fn last_commit(ws: &Workspace) -> u64 {
    std::fs::read_dir(ws.path("ck/commits"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("a commit")
}

/// A temporary folder the binary runs in (paths in jobs are relative to it).
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs `weir` with arguments, in the workspace.
    pub fn weir(&self, args: &[&str]) -> Run {
        self.weir_env(args, &[])
    }

    /// Runs `weir` with arguments and this text on its standard input (a
    /// pipe, not a terminal).
    pub fn weir_input(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("WEIR_FAILPOINT")
            .env_remove("WEIR_FAULTS")
            .env("HOME", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run weir");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        Run(child.wait_with_output().expect("run weir"))
    }

    /// Runs `weir` with arguments and extra environment variables.
    pub fn weir_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("WEIR_FAILPOINT")
            .env_remove("WEIR_FAULTS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run(cmd.output().expect("run weir"))
    }
}

/// The outcome of one `weir` process.
pub struct Run(pub Output);

impl Run {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn ok(self) -> Self {
        assert!(
            self.0.status.success(),
            "weir failed: {:?}\n{}",
            self.0.status,
            self.stderr()
        );
        self
    }

    /// Expects failure with a clear message (not a panic).
    pub fn fails(self) -> Self {
        assert!(
            !self.0.status.success(),
            "weir should have failed:\n{}",
            self.stderr()
        );
        assert!(
            !self.stderr().contains("panicked"),
            "weir panicked instead of reporting an error:\n{}",
            self.stderr()
        );
        self
    }

    /// Expects the process to have been killed by SIGKILL (a failpoint).
    pub fn killed(self) -> Self {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            self.0.status.signal(),
            Some(9),
            "expected SIGKILL: {:?}\n{}",
            self.0.status,
            self.stderr()
        );
        self
    }
}

/// One input row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bid {
    pub auction: i64,
    pub price: i64,
    pub ts: i64,
}

/// splitmix64.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` bids 50 ms apart from `start_ms`; about 30% are shifted back by up to
/// `disorder_ms` (out of order).
pub fn gen_bids(seed: u64, n: usize, start_ms: i64, disorder_ms: u64) -> Vec<Bid> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let mut ts = start_ms + i as i64 * 50;
            if disorder_ms > 0 && rng.below(10) < 3 {
                ts -= rng.below(disorder_ms) as i64;
            }
            Bid {
                auction: 1 + rng.below(20) as i64,
                price: 1 + rng.below(1000) as i64,
                ts,
            }
        })
        .collect()
}

pub fn bids_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

pub fn bids_batch(bids: &[Bid]) -> RecordBatch {
    RecordBatch::try_new(
        bids_schema(),
        vec![
            Arc::new(Int64Array::from(
                bids.iter().map(|b| b.auction).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(bids.iter().map(|b| b.price).collect::<Vec<_>>())),
            Arc::new(TimestampMillisecondArray::from(
                bids.iter().map(|b| b.ts).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Writes bids as a Parquet file, atomically (write, then rename).
pub fn write_parquet(path: &Path, bids: &[Bid]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp-writing");
    let file = std::fs::File::create(&tmp).unwrap();
    let mut w = ArrowWriter::try_new(file, bids_schema(), None).unwrap();
    w.write(&bids_batch(bids)).unwrap();
    w.close().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn iso(ms: i64) -> String {
    chrono_like(ms)
}

/// `YYYY-MM-DDTHH:MM:SS.mmm` without a chrono dependency.
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

pub fn write_csv(path: &Path, bids: &[Bid]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut s = String::from("date_time,auction,price,comment\n");
    for b in bids {
        s.push_str(&format!("{},{},{},\"a, b\"\n", iso(b.ts), b.auction, b.price));
    }
    std::fs::write(path, s).unwrap();
}

pub fn write_json(path: &Path, bids: &[Bid]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut s = String::new();
    for b in bids {
        s.push_str(&format!(
            "{{\"auction\": {}, \"price\": {}, \"date_time\": \"{}\", \"other\": [1, 2]}}\n",
            b.auction,
            b.price,
            iso(b.ts)
        ));
    }
    std::fs::write(path, s).unwrap();
}

/// Formats every row of the batches as `a|b|c` lines, sorted.
pub fn rows_of(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default();
    let mut rows = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            rows.push(
                fmts.iter()
                    .map(|f| f.value(i).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    rows.sort();
    rows
}

/// Every `*.parquet` file under `dir`, at any depth: what
/// `read_parquet('dir/**/*.parquet')` in another tool would read.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The sink's rows as a glob reader sees them, sorted.
pub fn sink_rows(dir: &Path) -> Vec<String> {
    let batches: Vec<RecordBatch> = sink_batches(dir).iter().map(without_changelog_order).collect();
    rows_of(&batches)
}

/// A changelog's rows without the `_epoch` and `_seq` columns the sink
/// adds (other rows as they are).
pub fn without_changelog_order(b: &RecordBatch) -> RecordBatch {
    let schema = b.schema();
    let keep: Vec<usize> = (0..b.num_columns())
        .filter(|&i| !matches!(schema.field(i).name().as_str(), "_epoch" | "_seq"))
        .collect();
    b.project(&keep).unwrap()
}

/// Every batch of every Parquet file under `dir`, file by file.
pub fn sink_batches(dir: &Path) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for f in parquet_files(dir) {
        let file = std::fs::File::open(&f).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap_or_else(|e| panic!("{} is not a whole Parquet file: {e}", f.display()))
            .build()
            .unwrap();
        for b in reader {
            batches.push(b.unwrap());
        }
    }
    batches
}

/// Runs a DataFusion batch query with `bids` registered over Parquet files
/// (or over the given batch); returns sorted rows.
pub fn batch_query(bids: &[Bid], sql: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_batch("bids", bids_batch(bids)).unwrap();
        let df = ctx.sql(sql).await.unwrap();
        rows_of(&df.collect().await.unwrap())
    })
}

/// Rows that arrive late under a watermark of `max event time so far - delay`,
/// in arrival order: the semantics the engine implements, written out
/// independently.
pub fn on_time(arrival_order: &[Bid], delay_ms: i64) -> (Vec<Bid>, usize) {
    let mut wm = i64::MIN;
    let mut kept = Vec::new();
    let mut late = 0;
    for b in arrival_order {
        if b.ts < wm {
            late += 1;
        } else {
            kept.push(*b);
        }
        wm = wm.max(b.ts - delay_ms);
    }
    (kept, late)
}

/// The JSON progress lines of a run.
pub fn progress(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `job.sql` over the input there now (`--trigger available-now`),
/// with `--progress-json p.json`; returns the progress lines (all of them,
/// earlier runs' too).
pub fn run_logged(ws: &Workspace) -> Vec<serde_json::Value> {
    ws.weir(&[
        "run",
        "job.sql",
        "--trigger",
        "available-now",
        "--progress-json",
        "p.json",
    ])
    .ok();
    progress(&ws.path("p.json"))
}

pub fn sum_field(lines: &[serde_json::Value], field: &str) -> u64 {
    lines.iter().map(|l| l[field].as_u64().unwrap()).sum()
}

/// The windowed job used by most tests: 10-second tumbling windows per
/// auction, a 2-second watermark delay, small batches so that a run has
/// several epochs.
pub fn job(max_rows: usize, format: &str, path: &str) -> String {
    format!(
        "-- test job
CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
  WITH ('connector' = 'files', 'path' = '{path}', 'format' = '{format}',
        'max_rows_per_batch' = '{max_rows}');
CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
INSERT INTO out
SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s, MAX(price) AS m
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction;
"
    )
}

/// The same aggregation as a DataFusion batch query, windows computed in SQL.
pub const ORACLE: &str = "SELECT date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS ws,
        date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') + INTERVAL '10' SECOND AS we,
        auction, COUNT(*), SUM(price), MAX(price)
 FROM bids GROUP BY 1, 2, 3";

/// Three files of 1,000 bids, out of order by up to 1.5 s (never late under
/// a 2 s delay).
pub fn three_files(ws: &Workspace) -> Vec<Bid> {
    let mut all = Vec::new();
    for f in 0..3 {
        let bids = gen_bids(f + 1, 1000, BASE_MS + f as i64 * 50_000, 1500);
        write_parquet(&ws.path(&format!("in/bids-{f}.parquet")), &bids);
        all.extend(bids);
    }
    all
}

/// The windowed job over `three_files`, uninterrupted, on local files:
/// the sink's rows and the progress lines.
pub fn run_straight(max_rows: usize) -> (Vec<String>, Vec<serde_json::Value>) {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(max_rows, "parquet", "in/"));
    ws.weir(&[
        "run",
        "job.sql",
        "--trigger",
        "available-now",
        "--drain",
        "--progress-json",
        "p.json",
    ])
    .ok();
    (sink_rows(&ws.path("out")), progress(&ws.path("p.json")))
}

/// `GET path` from a server on `addr` (`127.0.0.1:PORT`): the status line
/// and the body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// The value of one series (`name{labels}` exactly as written) in
/// Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| match v.trim() {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        })
}

/// The `host:port` of the `http://host:port/metrics` URL in `text`.
pub fn metrics_addr(text: &str) -> Option<String> {
    let start = text.find("http://")? + "http://".len();
    let end = start + text[start..].find("/metrics")?;
    Some(text[start..end].to_string())
}

/// Checks metrics text with Prometheus's own parser and linter, `promtool
/// check metrics` (`WEIR_PROMTOOL`, else `promtool` on PATH). Without one,
/// says so and skips, unless `WEIR_REQUIRE_PROMTOOL` is set (CI sets it).
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let tool = std::env::var_os("WEIR_PROMTOOL").map(PathBuf::from).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    let Some(tool) = tool else {
        assert!(
            std::env::var_os("WEIR_REQUIRE_PROMTOOL").is_none(),
            "WEIR_REQUIRE_PROMTOOL is set but no promtool was found (set WEIR_PROMTOOL)"
        );
        eprintln!("promtool not found: the metrics text is not checked by Prometheus's parser");
        return;
    };
    let mut child = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\nthe text:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A job of a CSV stream `s (k, v)` in `in/` and a bounded CSV table
/// `d (k, <dim_columns>)` in `dim/`, inserting `query` into the Parquet
/// sink `o` at `sink`.
pub fn stream_and_bounded_job(dim_columns: &str, sink: &str, query: &str) -> String {
    format!(
        "CREATE TABLE s (k BIGINT, v BIGINT) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
         CREATE TABLE d (k BIGINT, {dim_columns})
           WITH ('connector' = 'files', 'path' = 'dim/', 'format' = 'csv', 'bounded' = 'true');
         CREATE TABLE o WITH ('connector' = 'files', 'path' = '{sink}', 'format' = 'parquet');
         INSERT INTO o {query};"
    )
}
