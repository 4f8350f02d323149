//! Windowed aggregates of every kind (built-in, distinct, sketch, filtered,
//! user-defined) through the engine in-process: many small epochs, the job
//! reopened from its checkpoint before each one, and the result compared
//! with DataFusion's batch answer over the same rows.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, AggregateUDF, Volatility, create_udaf};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::SessionContext;
use weir_engine::{JobOptions, StreamingJob, Trigger};

/// Sum of squares: a user-defined aggregate with its own accumulator state.
#[derive(Debug, Default)]
struct SumSq(i64);

impl Accumulator for SumSq {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        for v in values[0].as_primitive::<Int64Type>().iter().flatten() {
            self.0 += v * v;
        }
        Ok(())
    }
    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.0)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(Some(self.0))])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        for v in states[0].as_primitive::<Int64Type>().iter().flatten() {
            self.0 += v;
        }
        Ok(())
    }
}

fn sum_sq() -> AggregateUDF {
    create_udaf(
        "sum_sq",
        vec![DataType::Int64],
        Arc::new(DataType::Int64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(SumSq::default()))),
        Arc::new(vec![DataType::Int64]),
    )
}

/// `n` bidders, every 13th NULL.
fn bidders(n: i64) -> ArrayRef {
    Arc::new(Int64Array::from(
        (0..n)
            .map(|i| if i % 13 == 0 { None } else { Some((i * 31) % 17) })
            .collect::<Vec<_>>(),
    ))
}

/// `n` prices below 1000.
fn prices(n: i64) -> ArrayRef {
    Arc::new(Int64Array::from(
        (0..n).map(|i| (i * 104_729) % 1000).collect::<Vec<_>>(),
    ))
}

fn input() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let n = 2000i64;
    let base = 1_767_225_600_000i64;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(
                (0..n).map(|i| (i * 7919) % 5).collect::<Vec<_>>(),
            )),
            bidders(n),
            prices(n),
            // 25 ms apart, every fourth row 600 ms back: out of order, never late.
            Arc::new(TimestampMillisecondArray::from(
                (0..n)
                    .map(|i| base + i * 25 - if i % 4 == 0 { 600 } else { 0 })
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default();
    let mut out = Vec::new();
    for b in batches {
        let f: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                f.iter()
                    .map(|f| f.value(i).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

/// `bids` as Parquet files in `dir`, one per (offset, length).
fn write_parts(dir: &std::path::Path, bids: &RecordBatch, parts: &[(usize, usize)]) {
    for &(i, part) in parts {
        let f = std::fs::File::create(dir.join(format!("part-{i:06}.parquet"))).unwrap();
        let mut w = ArrowWriter::try_new(f, bids.schema(), None).unwrap();
        w.write(&bids.slice(i, part)).unwrap();
        w.close().unwrap();
    }
}

/// Runs `job` over the rest of its input, closes every window, and checks
/// that no row was late.
async fn run_to_end(job: &mut StreamingJob) -> weir_engine::RunSummary {
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let s = job
        .run(Trigger::AvailableNow, true, stop, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(s.late_rows, 0);
    s
}

/// A test's folders in a temporary directory: `in/` (the input files,
/// made), `out/` (the sink) and `ck` (the checkpoint).
struct Dirs {
    _tmp: tempfile::TempDir,
    input: std::path::PathBuf,
    out: std::path::PathBuf,
    checkpoint: String,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        std::fs::create_dir_all(&input).unwrap();
        Dirs {
            out: tmp.path().join("out"),
            checkpoint: tmp.path().join("ck").display().to_string(),
            input,
            _tmp: tmp,
        }
    }

    /// Opens the job `sql` on the checkpoint, with `sum_sq`, on `threads`
    /// threads.
    async fn open(&self, sql: &str, threads: usize) -> StreamingJob {
        let mut options = JobOptions::new(self.checkpoint.clone());
        options.udafs.push(sum_sq());
        options.threads = threads;
        StreamingJob::open(sql, options).await.unwrap()
    }
}

/// The job: `AGGS` by auction in 5 s tumbling windows, from the files in
/// `input` (`max_rows` an epoch) into Parquet in `out`.
fn job_sql(input: &std::path::Path, out: &std::path::Path, max_rows: usize) -> String {
    format!(
        "CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3),
           WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
           WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'max_rows_per_batch' = '{max_rows}');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet');
         INSERT INTO out SELECT window_start, window_end, auction, {AGGS}
         FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '5' SECOND))
         GROUP BY window_start, window_end, auction;",
        input.display(),
        out.display()
    )
}

/// The sink's rows (every Parquet file in `dir`), sorted.
fn sink_rows(dir: &std::path::Path) -> Vec<String> {
    let mut got = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "parquet") {
            let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(e.path()).unwrap()).unwrap();
            got.extend(r.build().unwrap().map(|b| b.unwrap()));
        }
    }
    rows(&got)
}

/// DataFusion's batch answer of the jobs' 5 s tumbling `AGGS` by auction.
async fn batch_answer(bids: RecordBatch) -> Vec<String> {
    batch_answer_by(bids, Some("auction")).await
}

/// DataFusion's batch answer of 5 s tumbling `AGGS` by window and `key`.
async fn batch_answer_by(bids: RecordBatch, key: Option<&str>) -> Vec<String> {
    let (select, group) = key.map_or((String::new(), String::new()), |k| {
        (format!("{k}, "), format!(", {k}"))
    });
    let ctx = SessionContext::new();
    ctx.register_udaf(sum_sq());
    ctx.register_batch("bids", bids).unwrap();
    let expected = ctx
        .sql(&format!(
            "SELECT date_bin(INTERVAL '5' SECOND, date_time) AS ws,
                    date_bin(INTERVAL '5' SECOND, date_time) + INTERVAL '5' SECOND AS we,
                    {select}{AGGS} FROM bids GROUP BY ws, we{group}"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    rows(&expected)
}

const AGGS: &str = "AVG(price) AS avg_price, COUNT(DISTINCT bidder) AS bidders, approx_distinct(bidder) AS approx, \
     COUNT(*) FILTER (WHERE price > 500) AS dear, sum_sq(price) AS sq, MIN(price) AS lo, \
     MAX(price) - MIN(price) AS spread, COUNT(bidder) AS with_bidder";

#[tokio::test]
async fn every_kind_of_aggregate_survives_checkpoints_and_matches_batch() {
    let dirs = Dirs::new();
    let (input_dir, out_dir) = (&dirs.input, &dirs.out);
    let batch = input();
    write_parts(input_dir, &batch, &[(0, 700), (700, 700), (1400, 600)]);
    let sql = job_sql(input_dir, out_dir, 150);
    let open = || dirs.open(&sql, 1);
    // One epoch per process lifetime: state goes through a checkpoint
    // between every two batches.
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut epochs = 0;
    loop {
        let mut job = open().await;
        let s = job
            .run(Trigger::Once, false, stop.clone(), &mut |_| {})
            .await
            .unwrap();
        if s.epochs == 0 {
            break;
        }
        epochs += s.epochs;
    }
    assert!(epochs >= 13, "{epochs} epochs");
    let mut job = open().await;
    run_to_end(&mut job).await;

    let got = sink_rows(out_dir);

    let expected = batch_answer(batch).await;
    assert!(expected.len() > 40);
    assert_eq!(got, expected);
}

/// With two threads and keys nearly unique within their window, each
/// partition's partial aggregate (125,000 rows an epoch) stops grouping
/// after its first 100,000 rows and passes each row on as a state of its
/// own (as DataFusion's partial aggregate does); every kind of aggregate
/// still gives the batch answer, over two epochs.
#[tokio::test]
async fn nearly_unique_keys_on_two_threads_match_batch() {
    let dirs = Dirs::new();
    let (input_dir, out_dir) = (&dirs.input, &dirs.out);
    let n = 500_000i64;
    let base = 1_767_225_600_000i64;
    let schema = input().schema();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            // Unique but for every 50th row, which shares the key of the
            // row before: pairs that meet again in the merge.
            Arc::new(Int64Array::from(
                (0..n)
                    .map(|i| if i % 50 == 0 && i > 0 { i - 1 } else { i })
                    .collect::<Vec<_>>(),
            )),
            bidders(n),
            prices(n),
            // 0.1 ms apart: a 5 s window holds 50,000 rows.
            Arc::new(TimestampMillisecondArray::from(
                (0..n).map(|i| base + i / 10).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    write_parts(input_dir, &batch, &[(0, 250_000), (250_000, 250_000)]);
    let sql = job_sql(input_dir, out_dir, 250_000);
    let mut job = dirs.open(&sql, 2).await;
    let s = run_to_end(&mut job).await;
    assert!(s.epochs >= 2, "{} epochs", s.epochs);
    let analyze = job.explain_analyze();
    assert!(
        analyze.contains("PartialWindowAggregateExec")
            && analyze.contains("skipped_aggregation_rows=")
            && !analyze.contains("skipped_aggregation_rows=0"),
        "{analyze}"
    );
    let got = sink_rows(out_dir);
    let expected = batch_answer(batch).await;
    assert!(expected.len() > 480_000, "{}", expected.len());
    assert_eq!(got, expected);
}

/// Without keys on two threads, the final merge keeps each window's
/// partial rows unmerged until the window closes, merges them into groups
/// once a window has gathered many (ten rows an epoch: a 5 s window spans
/// twenty epochs), and writes them to checkpoints as they are. The job is
/// reopened when three windows are open (their state restored as groups)
/// and the last starts after it and gets fewer rows than a merge needs, so
/// the drain closes restored and unmerged windows together. Every kind of
/// aggregate gives the batch answer.
#[tokio::test]
async fn keyless_windows_on_two_threads_match_batch_across_a_restart() {
    let dirs = Dirs::new();
    let (input_dir, out_dir) = (&dirs.input, &dirs.out);
    // 1,950 rows: the last window, [45 s, 50 s), gets 15 epochs' rows.
    let batch = input().slice(0, 1950);
    write_parts(input_dir, &batch, &[(0, 1000), (1000, 950)]);
    let sql = format!(
        "CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3),
           WATERMARK FOR date_time AS date_time - INTERVAL '15' SECOND)
           WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'max_rows_per_batch' = '10');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet');
         INSERT INTO out SELECT window_start, window_end, {AGGS}
         FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '5' SECOND))
         GROUP BY window_start, window_end;",
        input_dir.display(),
        out_dir.display()
    );
    let open = || dirs.open(&sql, 2);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    // 180 epochs of 10 rows: the input up to 45 s, windows before 30 s
    // closed.
    let mut job = open().await;
    for _ in 0..180 {
        let s = job
            .run(Trigger::Once, false, stop.clone(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(s.epochs, 1);
    }
    drop(job);
    let mut job = open().await;
    let s = run_to_end(&mut job).await;
    assert_eq!(s.epochs, 16, "15 epochs of input and the drain");

    let got = sink_rows(out_dir);
    let expected = batch_answer_by(batch, None).await;
    assert_eq!(expected.len(), 11);
    assert_eq!(got, expected);
}

/// On two threads over a frozen folder, the next epoch's files are planned
/// and decoded while an epoch runs. A stop between epochs leaves that batch
/// unread: the same job run again, and a job reopened from the checkpoint,
/// go on from the last commit, and no row is lost or read twice.
#[tokio::test]
async fn a_stop_while_the_next_batch_is_read_ahead_loses_and_repeats_no_row() {
    let dirs = Dirs::new();
    let (input_dir, out_dir) = (&dirs.input, &dirs.out);
    let batch = input();
    // Files of 100 rows under a budget of 150: most epochs span two files,
    // which two threads decode at once.
    let parts: Vec<(usize, usize)> = (0..20).map(|i| (i * 100, 100)).collect();
    write_parts(input_dir, &batch, &parts);
    let sql = job_sql(input_dir, out_dir, 150);
    let open = || dirs.open(&sql, 2);
    // Runs `job` until it has committed `epochs` more epochs, then stops it.
    async fn run_for(job: &mut StreamingJob, epochs: u64) -> u64 {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut done = 0;
        let s = job
            .run(Trigger::AvailableNow, false, stop, &mut |_| {
                done += 1;
                if done == epochs {
                    stop_tx.send(true).unwrap();
                }
            })
            .await
            .unwrap();
        assert!(s.stopped, "stopped with input left");
        s.epochs
    }
    let mut job = open().await;
    assert_eq!(run_for(&mut job, 2).await, 2);
    assert_eq!(run_for(&mut job, 3).await, 3);
    drop(job);
    let mut job = open().await;
    assert_eq!(run_for(&mut job, 1).await, 1);
    let s = run_to_end(&mut job).await;
    assert!(s.epochs >= 5, "{} epochs", s.epochs);

    let got = sink_rows(out_dir);
    let expected = batch_answer(batch).await;
    assert!(expected.len() > 40);
    assert_eq!(got, expected);
}
