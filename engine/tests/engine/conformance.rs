//! Conformance with a batch oracle: for each window kind, on generated data
//! with out-of-order (and late) rows, the streaming result with `--drain`
//! equals the same aggregation computed by DataFusion in batch mode over the
//! on-time rows, with window assignment written in plain SQL. Property tests
//! vary event times, watermark delays and batch boundaries: the result never
//! depends on how the input was cut into batches.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use weir_engine::{JobOptions, StreamingJob, Trigger};

#[derive(Clone, Copy, Debug)]
struct Row {
    k: i64,
    price: i64,
    ts: i64,
}

const BASE: i64 = 1_767_225_600_000;

/// splitmix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Rows advancing by up to `step` ms, a third shifted back by up to
/// `disorder` ms, one in fifty by up to a minute (late, mostly).
fn gen_rows(seed: u64, n: usize, step: u64, disorder: u64, keys: u64) -> Vec<Row> {
    let mut rng = Rng(seed);
    let mut t = BASE;
    (0..n)
        .map(|_| {
            t += rng.below(step + 1) as i64;
            let mut ts = t;
            match rng.below(50) {
                0 => ts -= rng.below(60_000) as i64,
                1..=16 => ts -= rng.below(disorder + 1) as i64,
                _ => {}
            }
            Row {
                k: rng.below(keys) as i64,
                price: 1 + rng.below(1000) as i64,
                ts,
            }
        })
        .collect()
}

fn batch(rows: &[Row]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.k).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.price).collect::<Vec<_>>())),
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.ts).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// The rows that are not late under a per-row watermark of
/// `max event time so far - delay`, in arrival order.
fn on_time(rows: &[Row], delay_ms: i64) -> Vec<Row> {
    let mut wm = i64::MIN;
    let mut kept = Vec::new();
    for r in rows {
        if r.ts >= wm {
            kept.push(*r);
        }
        wm = wm.max(r.ts - delay_ms);
    }
    kept
}

fn format_rows(batches: &[RecordBatch]) -> Vec<String> {
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
    out
}

use crate::common::read_sink;

/// Runs `query` (an INSERT INTO out ... over `bids`) on the rows cut into
/// files at `cuts`, `max_rows` rows per epoch, with --drain. Returns the
/// sink's rows in the order they were written.
async fn stream(
    rows: &[Row],
    cuts: &[usize],
    max_rows: usize,
    delay_ms: i64,
    query: &str,
    sink_mode: &str,
) -> Vec<RecordBatch> {
    stream_tables(&[("bids", rows, delay_ms)], cuts, max_rows, query, sink_mode, 1).await
}

/// [`stream`] over several sources, each `(name, rows, watermark delay)`,
/// each cut into files at the same `cuts`.
async fn stream_tables(
    tables: &[(&str, &[Row], i64)],
    cuts: &[usize],
    max_rows: usize,
    query: &str,
    sink_mode: &str,
    threads: usize,
) -> Vec<RecordBatch> {
    stream_tables_and(tables, &[], cuts, max_rows, query, sink_mode, threads).await
}

/// [`stream_tables`] with bounded tables too (each one file, `(k, price,
/// ts)` without a watermark), for lookup joins. A source whose name starts
/// with `keyed_` declares `PRIMARY KEY (k) NOT ENFORCED` (its rows must
/// then have distinct keys).
async fn stream_tables_and(
    tables: &[(&str, &[Row], i64)],
    bounded: &[(&str, &[Row])],
    cuts: &[usize],
    max_rows: usize,
    query: &str,
    sink_mode: &str,
    threads: usize,
) -> Vec<RecordBatch> {
    let dir = tempfile::tempdir().unwrap();
    let mut ddl = String::new();
    for (name, rows) in bounded {
        let folder = dir.path().join(name);
        std::fs::create_dir_all(&folder).unwrap();
        let b = batch(rows);
        let f = std::fs::File::create(folder.join("all.parquet")).unwrap();
        let mut writer = ArrowWriter::try_new(f, b.schema(), None).unwrap();
        writer.write(&b).unwrap();
        writer.close().unwrap();
        ddl.push_str(&format!(
            "CREATE TABLE {name} (k BIGINT, price BIGINT, ts TIMESTAMP(3))
               WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'bounded' = 'true');\n",
            folder.display()
        ));
    }
    for (name, rows, delay_ms) in tables {
        let input = dir.path().join(name);
        std::fs::create_dir_all(&input).unwrap();
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < rows.len()));
        bounds.push(rows.len());
        bounds.sort_unstable();
        bounds.dedup();
        for (i, w) in bounds.windows(2).enumerate() {
            let f = std::fs::File::create(input.join(format!("part-{i:04}.parquet"))).unwrap();
            let b = batch(&rows[w[0]..w[1]]);
            let mut writer = ArrowWriter::try_new(f, b.schema(), None).unwrap();
            writer.write(&b).unwrap();
            writer.close().unwrap();
        }
        let key = if name.starts_with("keyed_") {
            "PRIMARY KEY (k) NOT ENFORCED,"
        } else {
            ""
        };
        ddl.push_str(&format!(
            "CREATE TABLE {name} (k BIGINT, price BIGINT, ts TIMESTAMP(3), {key}
               WATERMARK FOR ts AS ts - INTERVAL '{delay_ms}' MILLISECOND)
               WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'max_rows_per_batch' = '{max_rows}');\n",
            input.display()
        ));
    }
    let out = dir.path().join("out");
    let sql = format!(
        "{ddl}
         CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'mode' = '{sink_mode}');
         {query};",
        out.display()
    );
    let mut options = JobOptions::new(dir.path().join("ck").display().to_string());
    options.threads = threads;
    let mut job = StreamingJob::open(&sql, options).await.unwrap();
    let (_tx, stop) = tokio::sync::watch::channel(false);
    job.run(Trigger::AvailableNow, true, stop, &mut |_| {})
        .await
        .unwrap();
    read_sink(&out)
}

async fn oracle(rows: &[Row], sql: &str) -> Vec<String> {
    oracle_tables(&[("bids", rows.to_vec())], sql).await
}

async fn oracle_tables(tables: &[(&str, Vec<Row>)], sql: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    for (name, rows) in tables {
        ctx.register_batch(*name, batch(rows)).unwrap();
    }
    let mut r = format_rows(&ctx.sql(sql).await.unwrap().collect().await.unwrap());
    r.sort();
    r
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

const AGGS: &str = "COUNT(*), SUM(price), MAX(price)";

fn tumble_query() -> String {
    format!(
        "INSERT INTO out SELECT window_start, window_end, k, {AGGS}
         FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, k"
    )
}

fn tumble_oracle() -> String {
    format!(
        "SELECT to_timestamp_millis(s), to_timestamp_millis(s + 10000), k, {AGGS}
         FROM (SELECT k, price, CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 10000 AS s FROM bids) GROUP BY s, k"
    )
}

fn hop_query(filter_on_window: bool) -> String {
    // A filter on the window columns forces exact windows (rows expanded)
    // instead of slices; both must agree with the oracle.
    let filter = if filter_on_window {
        "WHERE window_end > window_start"
    } else {
        ""
    };
    format!(
        "INSERT INTO out SELECT window_start, window_end, k, {AGGS}
         FROM TABLE(HOP(TABLE bids, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) {filter}
         GROUP BY window_start, window_end, k"
    )
}

fn hop_oracle() -> String {
    format!(
        "SELECT to_timestamp_millis(s), to_timestamp_millis(s + 10000), k, {AGGS}
         FROM (SELECT k, price, (CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 2000) - j * 2000 AS s
               FROM bids CROSS JOIN (SELECT value AS j FROM generate_series(0, 4)))
         GROUP BY s, k"
    )
}

fn cumulate_query() -> String {
    format!(
        "INSERT INTO out SELECT window_start, window_end, k, {AGGS}
         FROM TABLE(CUMULATE(TABLE bids, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
         GROUP BY window_start, window_end, k"
    )
}

fn cumulate_oracle() -> String {
    format!(
        "SELECT to_timestamp_millis(base), to_timestamp_millis(e), k, {AGGS}
         FROM (SELECT k, price, CAST(ts AS BIGINT) AS ms, CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 10000 AS base,
                      CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 10000 + (j + 1) * 2000 AS e
               FROM bids CROSS JOIN (SELECT value AS j FROM generate_series(0, 4)))
         WHERE e > ms GROUP BY base, e, k"
    )
}

/// Nexmark q7's form: the bids at the highest price of their 10 s window, an
/// interval join of the bids with a window aggregate's results.
const HIGHEST_QUERY: &str = "INSERT INTO out SELECT B.k, B.price, B.ts FROM bids B JOIN (
      SELECT MAX(price) AS maxprice, window_end AS date_time
      FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end) B1
    ON B.price = B1.maxprice WHERE B.ts BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time";
const HIGHEST_ORACLE: &str = "SELECT B.k, B.price, B.ts FROM bids B JOIN (
      SELECT MAX(price) AS maxprice, to_timestamp_millis(s + 10000) AS date_time
      FROM (SELECT price, CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 10000 AS s FROM bids) GROUP BY s) B1
    ON B.price = B1.maxprice WHERE B.ts BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time";

fn session_query() -> String {
    format!(
        "INSERT INTO out SELECT window_start, window_end, k, {AGGS}
         FROM TABLE(SESSION(TABLE bids PARTITION BY k, DESCRIPTOR(ts), INTERVAL '3' SECOND))
         GROUP BY window_start, window_end, k"
    )
}

fn session_oracle() -> String {
    format!(
        "WITH o AS (SELECT k, price, CAST(ts AS BIGINT) AS ms FROM bids),
         b AS (SELECT *, CASE WHEN ms - LAG(ms) OVER (PARTITION BY k ORDER BY ms) < 3000 THEN 0 ELSE 1 END AS brk FROM o),
         g AS (SELECT *, SUM(brk) OVER (PARTITION BY k ORDER BY ms ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM b)
         SELECT to_timestamp_millis(MIN(ms)), to_timestamp_millis(MAX(ms) + 3000), k, {AGGS} FROM g GROUP BY k, sid"
    )
}

async fn check(rows: &[Row], cuts: &[usize], max_rows: usize, delay_ms: i64, query: &str, oracle_sql: &str) {
    let got = sorted(format_rows(
        &stream(rows, cuts, max_rows, delay_ms, query, "append").await,
    ));
    let want = oracle(&on_time(rows, delay_ms), oracle_sql).await;
    assert!(!want.is_empty());
    assert_eq!(got, want, "query: {query}");
}

#[tokio::test]
async fn tumble_matches_batch() {
    let rows = gen_rows(1, 1500, 200, 3000, 7);
    check(&rows, &[400, 900], 97, 4000, &tumble_query(), &tumble_oracle()).await;
}

#[tokio::test]
async fn hop_matches_batch_with_slices_and_with_exact_windows() {
    let rows = gen_rows(2, 1200, 150, 2500, 5);
    check(&rows, &[500], 131, 3000, &hop_query(false), &hop_oracle()).await;
    check(&rows, &[500], 131, 3000, &hop_query(true), &hop_oracle()).await;
}

#[tokio::test]
async fn cumulate_matches_batch() {
    let rows = gen_rows(3, 1200, 150, 2500, 5);
    check(
        &rows,
        &[300, 301, 800],
        77,
        3000,
        &cumulate_query(),
        &cumulate_oracle(),
    )
    .await;
}

#[tokio::test]
async fn session_matches_batch_and_merges_bridged_sessions() {
    // Sparse keys so sessions form and close; disorder large enough that
    // out-of-order rows bridge sessions already open.
    let rows = gen_rows(4, 1200, 900, 4000, 11);
    check(&rows, &[600], 53, 5000, &session_query(), &session_oracle()).await;
}

#[tokio::test]
async fn a_join_with_a_window_aggregate_matches_batch() {
    let rows = few_prices(9, 1500, 40);
    check(&rows, &[600], 101, 3000, HIGHEST_QUERY, HIGHEST_ORACLE).await;
}

/// Rows of [`gen_rows`] (steps of up to 150 ms, 3 s of disorder, 5 keys)
/// with prices below `prices`, so that windows share their highest price
/// with several bids.
fn few_prices(seed: u64, n: usize, prices: i64) -> Vec<Row> {
    gen_rows(seed, n, 150, 3000, 5)
        .into_iter()
        .map(|r| Row {
            price: r.price % prices,
            ..r
        })
        .collect()
}

/// Nexmark q7's join (each bid with its window's highest price) in other
/// shapes, as (query, batch oracle). With two threads the window
/// aggregate's side (one row a window) is broadcast to every partition
/// when its rows need not remember their matches (inner, either side
/// first, or the bids' side outer); a RIGHT join keeps it hash-partitioned.
fn highest(shape: &str) -> (String, String) {
    let agg = "(SELECT MAX(price) AS maxprice, window_end AS date_time
        FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end) B1";
    let agg_oracle = "(SELECT MAX(price) AS maxprice, to_timestamp_millis(s + 10000) AS date_time
        FROM (SELECT price, CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 10000 AS s FROM bids) GROUP BY s) B1";
    // "after": the bids of the minute after a window that equal its
    // highest price, so the window's row is held (in every partition) for
    // a minute, across a stop.
    let on = if shape.ends_with("after") {
        "B.price = B1.maxprice AND B.ts BETWEEN B1.date_time AND B1.date_time + INTERVAL '60' SECOND"
    } else {
        "B.price = B1.maxprice AND B.ts BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time"
    };
    let shape = shape.trim_end_matches(" after");
    let sql = |agg: &str| match shape {
        "inner" => format!("SELECT B.k, B.price, B.ts, B1.date_time FROM bids B JOIN {agg} ON {on}"),
        "window first" => format!("SELECT B.k, B.price, B.ts, B1.date_time FROM {agg} JOIN bids B ON {on}"),
        "left" => format!("SELECT B.k, B.price, B.ts, B1.date_time FROM bids B LEFT JOIN {agg} ON {on}"),
        "right" => format!("SELECT B.k, B1.maxprice, B1.date_time FROM bids B RIGHT JOIN {agg} ON {on}"),
        _ => panic!("no shape {shape}"),
    };
    (format!("INSERT INTO out {}", sql(agg)), sql(agg_oracle))
}

#[tokio::test]
async fn a_join_with_a_window_aggregate_matches_batch_in_every_shape_and_thread_count() {
    // (A LEFT join's bids mostly match nothing.)
    let rows = few_prices(12, 1500, 40);
    let delay_ms = 3000;
    for shape in [
        "inner",
        "window first",
        "left",
        "right",
        "inner after",
        "left after",
    ] {
        let (query, oracle_sql) = highest(shape);
        let want = oracle(&on_time(&rows, delay_ms), &oracle_sql).await;
        assert!(!want.is_empty(), "{shape}");
        on_one_and_two_threads(&rows, delay_ms, &query, &want, shape).await;
    }
}

/// `query` over `rows` (cut into files at rows 500 and 1000, 97 rows an
/// epoch) on one thread and on two: each must give `want`.
async fn on_one_and_two_threads(rows: &[Row], delay_ms: i64, query: &str, want: &[String], shape: &str) {
    for threads in [1, 2] {
        let got = sorted(format_rows(
            &stream_tables(
                &[("bids", rows, delay_ms)],
                &[500, 1000],
                97,
                query,
                "append",
                threads,
            )
            .await,
        ));
        assert_eq!(got, want, "{shape} on {threads} thread(s)");
    }
}

/// `query` over `rows` as a job stopped with its state held and resumed:
/// the first 600 rows under `first` threads, then the rest, drained, under
/// `then`. Returns the sink's rows, sorted.
async fn stop_and_resume(rows: &[Row], delay_ms: i64, query: &str, first: usize, then: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids");
    std::fs::create_dir_all(&input).unwrap();
    let out = dir.path().join("out");
    let sql = format!(
        "CREATE TABLE bids (k BIGINT, price BIGINT, ts TIMESTAMP(3),
           WATERMARK FOR ts AS ts - INTERVAL '{delay_ms}' MILLISECOND)
           WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'max_rows_per_batch' = '113');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet');
         {query};",
        input.display(),
        out.display()
    );
    for (part, (threads, range)) in [(first, 0..600), (then, 600..rows.len())].into_iter().enumerate() {
        let b = batch(&rows[range]);
        let f = std::fs::File::create(input.join(format!("part-{part}.parquet"))).unwrap();
        let mut writer = ArrowWriter::try_new(f, b.schema(), None).unwrap();
        writer.write(&b).unwrap();
        writer.close().unwrap();
        let mut options = JobOptions::new(dir.path().join("ck").display().to_string());
        options.threads = threads;
        let mut job = StreamingJob::open(&sql, options).await.unwrap();
        let (_tx, stop) = tokio::sync::watch::channel(false);
        job.run(Trigger::AvailableNow, part == 1, stop, &mut |_| {})
            .await
            .unwrap();
    }
    sorted(format_rows(&read_sink(&out)))
}

/// A join whose window side is broadcast (two threads) writes the same
/// checkpoint as one whose sides are hash-partitioned (one thread): a job
/// stopped under one resumes under the other, in both directions.
#[tokio::test]
async fn a_broadcast_join_resumes_under_another_thread_count() {
    let rows = few_prices(13, 1200, 30);
    let delay_ms = 3000;
    for shape in ["inner", "left", "inner after", "window first after"] {
        let (query, oracle_sql) = highest(shape);
        let want = oracle(&on_time(&rows, delay_ms), &oracle_sql).await;
        for (first, then) in [(2, 1), (1, 2)] {
            let got = stop_and_resume(&rows, delay_ms, &query, first, then).await;
            assert_eq!(got, want, "{shape}: {first} thread(s), then {then}");
        }
    }
}

/// A window Top-N in the shapes that run differently on two threads, as
/// (query, batch oracle): without keys besides the window (one ranking per
/// window: each input partition keeps its rows within N first, then one
/// shard ranks), and with a key (sharded by it). Prices are few, so RANK and
/// DENSE_RANK see ties; ROW_NUMBER selects only what a tie cannot tell apart.
fn window_top_n(shape: &str) -> (String, String) {
    let (f, part, cols, n) = match shape {
        "row_number" => ("ROW_NUMBER()", "", "price", 3),
        "rank" => ("RANK()", "", "k, price, ts", 4),
        "keyed dense_rank" => ("DENSE_RANK()", ", k", "k, price, ts", 2),
        "keyed row_number" => ("ROW_NUMBER()", ", k", "k, price", 1),
        _ => panic!("no shape {shape}"),
    };
    let order = "ORDER BY price DESC";
    let query = format!(
        "INSERT INTO out SELECT window_start, {cols}, r FROM (SELECT *, {f} OVER (PARTITION BY window_start, window_end{part} {order}) AS r
         FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND))) WHERE r <= {n}"
    );
    let oracle = format!(
        "SELECT to_timestamp_millis(s), {cols}, r FROM (SELECT *, {f} OVER (PARTITION BY s{part} {order}) AS r
         FROM (SELECT *, CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 10000 AS s FROM bids)) WHERE r <= {n}"
    );
    (query, oracle)
}

const WINDOW_TOP_N_SHAPES: [&str; 4] = ["row_number", "rank", "keyed dense_rank", "keyed row_number"];

#[tokio::test]
async fn a_window_top_n_matches_batch_on_one_and_two_threads() {
    let rows = few_prices(21, 1500, 25);
    let delay_ms = 3000;
    for shape in WINDOW_TOP_N_SHAPES {
        let (query, oracle_sql) = window_top_n(shape);
        let want = oracle(&on_time(&rows, delay_ms), &oracle_sql).await;
        assert!(want.len() >= 20, "{shape}: {} rows", want.len());
        on_one_and_two_threads(&rows, delay_ms, &query, &want, shape).await;
    }
}

/// A window Top-N's checkpoint is one table whatever the thread count (its
/// keyed shards write each changed window whole, and a restore deals the
/// rows back by their keys' hash): a job stopped with windows open under
/// one thread count resumes under another, in both directions.
#[tokio::test]
async fn a_window_top_n_resumes_under_another_thread_count() {
    let rows = few_prices(22, 1200, 25);
    let delay_ms = 3000;
    for shape in WINDOW_TOP_N_SHAPES {
        let (query, oracle_sql) = window_top_n(shape);
        let want = oracle(&on_time(&rows, delay_ms), &oracle_sql).await;
        for (first, then) in [(2, 1), (1, 2)] {
            let got = stop_and_resume(&rows, delay_ms, &query, first, then).await;
            assert_eq!(got, want, "{shape}: {first} thread(s), then {then}");
        }
    }
}

#[tokio::test]
async fn a_window_over_a_window_matches_batch() {
    let rows = gen_rows(5, 1500, 200, 3000, 4);
    let query = "INSERT INTO out
        WITH per10 AS (
          SELECT window_time AS rowtime, k, COUNT(*) AS n
          FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND))
          GROUP BY window_start, window_end, window_time, k)
        SELECT window_start, window_end, SUM(n) AS n, COUNT(*) AS windows_with_rows
        FROM TABLE(TUMBLE(TABLE per10, DESCRIPTOR(rowtime), INTERVAL '1' MINUTE))
        GROUP BY window_start, window_end";
    let oracle_sql = "SELECT to_timestamp_millis(m), to_timestamp_millis(m + 60000), COUNT(*), COUNT(DISTINCT (s, k))
        FROM (SELECT k, CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 60000 AS m, CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 10000 AS s FROM bids)
        GROUP BY m";
    check(&rows, &[700], 111, 4000, query, oracle_sql).await;
}

/// Applies a changelog (`op` first) in order; returns the final rows.
fn apply_changelog(batches: &[RecordBatch]) -> Vec<String> {
    let mut table: BTreeMap<String, usize> = BTreeMap::new();
    for line in format_rows(batches) {
        let (op, row) = line.split_once('|').unwrap();
        match op {
            "+I" | "+U" => *table.entry(row.to_string()).or_default() += 1,
            "-U" | "-D" => {
                let n = table
                    .get_mut(row)
                    .unwrap_or_else(|| panic!("retracting a row never inserted: {row}"));
                *n -= 1;
                if *n == 0 {
                    table.remove(row);
                }
            }
            other => panic!("unknown op {other}"),
        }
    }
    table
        .into_iter()
        .flat_map(|(r, n)| std::iter::repeat_n(r, n))
        .collect()
}

#[tokio::test]
async fn an_update_aggregate_changelog_converges_to_the_batch_result() {
    let rows = gen_rows(6, 1500, 100, 1000, 9);
    let cases = [
        (
            "INSERT INTO out SELECT k, COUNT(*) AS n, SUM(price) AS s FROM bids GROUP BY k",
            "SELECT k, COUNT(*), SUM(price) FROM bids GROUP BY k",
        ),
        (
            // Groups cross the HAVING threshold both ways: -D and +I follow.
            "INSERT INTO out SELECT k, MAX(price) AS m, COUNT(*) AS n FROM bids GROUP BY k HAVING COUNT(*) % 3 = 0",
            "SELECT k, MAX(price), COUNT(*) FROM bids GROUP BY k HAVING COUNT(*) % 3 = 0",
        ),
    ];
    for (query, oracle_sql) in cases {
        let log = stream(&rows, &[700], 89, 1000, query, "changelog").await;
        let ops = format_rows(&log);
        assert!(
            ops.iter().any(|l| l.starts_with("-U|")),
            "updates expected: {query}"
        );
        let got = sorted(apply_changelog(&log));
        // Update mode does not drop late rows: every row counts.
        assert_eq!(got, oracle(&rows, oracle_sql).await, "{query}");
    }
}

/// Aggregates over a changelog (an update aggregate's output), with the
/// batch query that gives the same table: COUNT, SUM and AVG taking back
/// retracted rows, groups deleted when their last row is retracted (the
/// inner HAVING), and a global aggregate.
const CHANGELOG_AGGREGATES: [(&str, &str); 4] = [
    (
        "INSERT INTO out SELECT g, MIN(m) AS lo, MAX(m) AS hi, MAX(c) AS most, MIN(c) AS least
           FROM (SELECT k, k % 3 AS g, MAX(price) AS m, COUNT(*) AS c FROM bids GROUP BY k HAVING COUNT(*) % 3 <> 1) q GROUP BY g",
        "SELECT g, MIN(m), MAX(m), MAX(c), MIN(c)
           FROM (SELECT k, k % 3 AS g, MAX(price) AS m, COUNT(*) AS c FROM bids GROUP BY k HAVING COUNT(*) % 3 <> 1) q GROUP BY g",
    ),
    (
        "INSERT INTO out SELECT g, COUNT(*) AS n, SUM(m) AS s, AVG(m) AS a
           FROM (SELECT k, k % 2 AS g, MAX(price) AS m FROM bids GROUP BY k) q GROUP BY g",
        "SELECT g, COUNT(*), SUM(m), AVG(m) FROM (SELECT k, k % 2 AS g, MAX(price) AS m FROM bids GROUP BY k) q GROUP BY g",
    ),
    (
        "INSERT INTO out SELECT g, COUNT(c) AS n, SUM(c) AS s
           FROM (SELECT k, k % 3 AS g, COUNT(*) AS c FROM bids GROUP BY k HAVING COUNT(*) % 2 = 0) q GROUP BY g",
        "SELECT g, COUNT(c), SUM(c)
           FROM (SELECT k, k % 3 AS g, COUNT(*) AS c FROM bids GROUP BY k HAVING COUNT(*) % 2 = 0) q GROUP BY g",
    ),
    (
        "INSERT INTO out SELECT COUNT(*) AS n, SUM(m) AS s FROM (SELECT k, MIN(price) AS m FROM bids GROUP BY k) q",
        "SELECT COUNT(*), SUM(m) FROM (SELECT k, MIN(price) AS m FROM bids GROUP BY k) q",
    ),
];

/// Top-N and deduplication outside windows (a changelog), each with the
/// batch query it must converge to. Ties under ROW_NUMBER only ever pick
/// between rows equal in every output column.
const TOP_N: [&str; 7] = [
    "SELECT k, price, ts, rn FROM (SELECT k, price, ts, ROW_NUMBER() OVER (PARTITION BY k ORDER BY price DESC, ts DESC) AS rn
       FROM bids) WHERE rn <= 3",
    "SELECT k, price, r FROM (SELECT k, price, RANK() OVER (PARTITION BY k ORDER BY price) AS r FROM bids) WHERE r <= 2",
    "SELECT price, d FROM (SELECT price, DENSE_RANK() OVER (ORDER BY price DESC) AS d FROM bids) WHERE d <= 3",
    "SELECT k, ts, price FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts DESC, price DESC) AS rn FROM bids)
       WHERE rn = 1",
    // Over a changelog: each key's count and highest price change, and a
    // retraction brings back a row ranked beyond N.
    "SELECT k, c, rn FROM (SELECT k, c, ROW_NUMBER() OVER (ORDER BY c DESC, k) AS rn
       FROM (SELECT k, COUNT(*) AS c FROM bids GROUP BY k) q) WHERE rn <= 3",
    "SELECT g, k, m, r FROM (SELECT g, k, m, RANK() OVER (PARTITION BY g ORDER BY m DESC) AS r
       FROM (SELECT k, k % 3 AS g, MAX(price) AS m FROM bids GROUP BY k) q) WHERE r <= 2",
    "SELECT g, s FROM (SELECT g, s, ROW_NUMBER() OVER (PARTITION BY g ORDER BY s, k) AS rn
       FROM (SELECT k, k % 2 AS g, SUM(price) AS s FROM bids GROUP BY k HAVING COUNT(*) % 3 <> 1) q) WHERE rn = 1",
];

/// Nexmark q4's shape: a regular join, an update aggregate over it (each
/// key's highest matching price), and an aggregate over that changelog.
#[tokio::test]
async fn an_aggregate_over_a_joined_aggregate_matches_batch() {
    let bids = gen_rows(9, 500, 150, 2000, 8);
    let asks = gen_rows(10, 400, 200, 2000, 8);
    let q = "SELECT g, COUNT(*) AS n, SUM(m) AS s, AVG(m) AS a
        FROM (SELECT a.k, a.k % 3 AS g, MAX(b.price) AS m FROM bids a JOIN asks b ON a.k = b.k AND b.ts >= a.ts
              GROUP BY a.k) q
        GROUP BY g";
    // A regular join drops no row as late: the batch answer is over all rows.
    let want = oracle_tables(&[("bids", bids.clone()), ("asks", asks.clone())], q).await;
    for threads in [1, 2] {
        let log = stream_tables(
            &[("bids", &bids, 1000), ("asks", &asks, 1000)],
            &[150, 320],
            70,
            &format!("INSERT INTO out {q}"),
            "changelog",
            threads,
        )
        .await;
        assert!(
            format_rows(&log).iter().any(|l| l.starts_with("-U|")),
            "updates expected"
        );
        assert_eq!(sorted(apply_changelog(&log)), want, "threads {threads}");
    }
}

/// An interval join of `bids` and `asks` (same key, an ask from 1 s before
/// to 2 s after the bid), of each kind, as the batch join writes it.
fn interval_join(kind: &str) -> String {
    format!(
        "SELECT a.k, a.price, b.price, a.ts, b.ts FROM bids a {kind} JOIN asks b
           ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND"
    )
}

/// A semi (`EXISTS`) or anti (`NOT EXISTS`) interval join of `bids` with
/// `asks`.
fn exists_join(not: &str) -> String {
    format!(
        "SELECT a.k, a.price, a.ts FROM bids a WHERE {not} EXISTS (SELECT 1 FROM asks b
           WHERE a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND)"
    )
}

/// How a run cuts its input: file cuts, rows per epoch, threads.
type Cuts<'a> = (&'a [usize], usize, usize);

/// Streams two sources through `query` and gives its rows and the batch
/// answer of `oracle_sql` over the on-time rows.
async fn check_join(
    bids: &[Row],
    asks: &[Row],
    delays: (i64, i64),
    (cuts, max_rows, threads): Cuts<'_>,
    query: &str,
    oracle_sql: &str,
) -> (Vec<String>, Vec<String>) {
    let got = sorted(format_rows(
        &stream_tables(
            &[("bids", bids, delays.0), ("asks", asks, delays.1)],
            cuts,
            max_rows,
            &format!("INSERT INTO out {query}"),
            "append",
            threads,
        )
        .await,
    ));
    let want = oracle_tables(
        &[
            ("bids", on_time(bids, delays.0)),
            ("asks", on_time(asks, delays.1)),
        ],
        oracle_sql,
    )
    .await;
    (got, want)
}

/// A window join (Flink's form): the rows of two 2 s tumbling windows,
/// joined on the window and the key, FULL, as the batch join of the same
/// rows with their windows computed in SQL.
const WINDOW_JOIN: &str = "SELECT L.window_start, L.k, L.price, R.price
    FROM (SELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '2' SECOND))) L
    FULL JOIN (SELECT * FROM TABLE(TUMBLE(TABLE asks, DESCRIPTOR(ts), INTERVAL '2' SECOND))) R
    ON L.k = R.k AND L.window_start = R.window_start AND L.window_end = R.window_end";
const WINDOW_JOIN_ORACLE: &str = "SELECT to_timestamp_millis(L.s), L.k, L.price, R.price
    FROM (SELECT k, price, CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 2000 AS s FROM bids) L
    FULL JOIN (SELECT k, price, CAST(ts AS BIGINT) - CAST(ts AS BIGINT) % 2000 AS s FROM asks) R
    ON L.k = R.k AND L.s = R.s";

/// A window over the join's output: matches per 10 s of the bid's time.
const JOIN_WINDOW: &str = "WITH m AS (
        SELECT a.ts AS ts, a.price AS ap FROM bids a JOIN asks b
          ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND)
    SELECT window_start, window_end, COUNT(*) AS n, SUM(ap) AS s
    FROM TABLE(TUMBLE(TABLE m, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end";
const JOIN_WINDOW_ORACLE: &str = "SELECT to_timestamp_millis(s), to_timestamp_millis(s + 10000), COUNT(*), SUM(ap)
      FROM (SELECT CAST(a.ts AS BIGINT) - CAST(a.ts AS BIGINT) % 10000 AS s, a.price AS ap FROM bids a JOIN asks b
          ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND) GROUP BY s";

#[tokio::test]
async fn interval_joins_match_the_batch_join() {
    let bids = gen_rows(7, 900, 150, 2000, 6);
    let asks = gen_rows(8, 700, 200, 2500, 6);
    let queries = ["INNER", "LEFT", "RIGHT", "FULL"]
        .map(interval_join)
        .into_iter()
        .chain([exists_join(""), exists_join("NOT")]);
    for q in queries {
        let kind = q.clone();
        let (got, want) = check_join(&bids, &asks, (3000, 2000), (&[300, 301], 83, 1), &q, &q).await;
        assert!(!want.is_empty());
        assert_eq!(got, want, "{kind}");
    }
    let (got, want) = check_join(
        &bids,
        &asks,
        (3000, 2000),
        (&[450], 97, 2),
        JOIN_WINDOW,
        JOIN_WINDOW_ORACLE,
    )
    .await;
    assert!(!want.is_empty());
    assert_eq!(got, want, "window over the join");
}

/// Interval joins whose bound takes one end from another column of a
/// row (Nexmark q4 and q9: a bid from the auction's start to its expiry),
/// with `until` up to 5 s after `ts`, on either side, as the batch join of
/// the on-time rows.
#[tokio::test]
async fn interval_joins_bounded_by_another_column_match_the_batch_join() {
    let bids = gen_rows(11, 900, 150, 2000, 6);
    let asks = gen_rows(12, 700, 200, 2500, 6);
    let until = "to_timestamp_millis(CAST(ts AS BIGINT) + price * 5) AS until";
    let left = |kind: &str| {
        format!(
            "SELECT a.k, a.price, b.price, a.ts, b.ts FROM (SELECT k, price, ts, {until} FROM bids) a
               {kind} JOIN asks b ON a.k = b.k AND b.ts BETWEEN a.ts AND a.until"
        )
    };
    let right = |kind: &str| {
        format!(
            "SELECT a.k, a.price, b.price, a.ts, b.ts FROM bids a
               {kind} JOIN (SELECT k, price, ts, {until} FROM asks) b ON a.k = b.k AND a.ts >= b.ts AND a.ts <= b.until"
        )
    };
    let runs = [
        (left("INNER"), 1),
        (left("LEFT"), 2),
        (left("FULL"), 1),
        (right("INNER"), 2),
        (right("RIGHT"), 1),
    ];
    for (q, threads) in runs {
        let (got, want) = check_join(&bids, &asks, (3000, 2000), (&[300, 301], 83, threads), &q, &q).await;
        assert!(want.len() > 50, "{q}: {} rows", want.len());
        assert_eq!(got, want, "{q} on {threads} thread(s)");
    }
}

/// Lookup joins of `bids` with the bounded table `dim`, and their batch
/// forms: (streamed query, oracle, whether the oracle reads only on-time
/// bids, as windows do).
const LOOKUPS: &[(&str, &str, bool)] = &[
    (
        "SELECT a.k, a.price, d.price FROM (SELECT *, PROCTIME() AS pt FROM bids) a
           LEFT JOIN dim FOR SYSTEM_TIME AS OF a.pt AS d ON a.k = d.k AND d.price > a.price / 2",
        "SELECT a.k, a.price, d.price FROM bids a LEFT JOIN dim d ON a.k = d.k AND d.price > a.price / 2",
        false,
    ),
    (
        "SELECT k, price FROM bids WHERE k IN (SELECT k FROM dim WHERE price > 300)",
        "SELECT k, price FROM bids WHERE k IN (SELECT k FROM dim WHERE price > 300)",
        false,
    ),
    (
        "SELECT a.k, a.price FROM bids a WHERE NOT EXISTS (SELECT 1 FROM dim d WHERE d.k = a.k AND d.price < a.price)",
        "SELECT a.k, a.price FROM bids a WHERE NOT EXISTS (SELECT 1 FROM dim d WHERE d.k = a.k AND d.price < a.price)",
        false,
    ),
    (
        "SELECT k, price FROM bids WHERE price > (SELECT AVG(price) FROM dim)",
        "SELECT k, price FROM bids WHERE price > (SELECT AVG(price) FROM dim)",
        false,
    ),
    (
        "SELECT window_start, d.price AS dp, COUNT(*), SUM(b.price) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND)) b
           JOIN dim d ON b.k = d.k GROUP BY window_start, window_end, d.price",
        "SELECT to_timestamp_millis(s), dp, COUNT(*), SUM(bp) FROM (SELECT CAST(b.ts AS BIGINT) - CAST(b.ts AS BIGINT) % 10000 AS s,
           d.price AS dp, b.price AS bp FROM bids b JOIN dim d ON b.k = d.k) GROUP BY s, dp",
        true,
    ),
];

#[tokio::test]
async fn lookup_joins_match_the_batch_join() {
    let bids = gen_rows(11, 600, 150, 2000, 8);
    let dim = gen_rows(12, 9, 1, 0, 6);
    for (q, o, windowed) in LOOKUPS {
        let got = sorted(format_rows(
            &stream_tables_and(
                &[("bids", &bids, 1000)],
                &[("dim", &dim)],
                &[100, 350],
                71,
                &format!("INSERT INTO out {q}"),
                "append",
                2,
            )
            .await,
        ));
        let input = if *windowed {
            on_time(&bids, 1000)
        } else {
            bids.clone()
        };
        let want = oracle_tables(&[("bids", input), ("dim", dim.clone())], o).await;
        assert!(!want.is_empty(), "{q}");
        assert_eq!(got, want, "{q}");
    }
}

/// Outer and anti joins without a time bound (updating joins), and an
/// aggregate over one.
const UPDATING_JOINS: &[&str] = &[
    "SELECT a.k, a.price, b.price FROM bids a LEFT JOIN asks b ON a.k = b.k AND b.price > a.price",
    "SELECT a.k, a.price, b.price FROM bids a RIGHT JOIN asks b ON a.k = b.k AND b.price > a.price",
    "SELECT a.k, a.price, b.k, b.price FROM bids a FULL JOIN asks b ON a.k = b.k AND b.price < a.price",
    "SELECT a.k, a.price FROM bids a WHERE NOT EXISTS (SELECT 1 FROM asks b WHERE b.k = a.k AND b.price < a.price)",
    "SELECT a.k, COUNT(b.price), SUM(b.price) FROM bids a LEFT JOIN asks b ON a.k = b.k GROUP BY a.k",
    "SELECT a.k, MIN(b.price), MAX(b.price) FROM bids a LEFT JOIN asks b ON a.k = b.k AND b.price > a.price GROUP BY a.k",
    // Joins of changelogs (inner).
    "SELECT a.k, a.price, c.n FROM bids a JOIN (SELECT k, COUNT(*) AS n FROM asks GROUP BY k) c ON a.k = c.k",
    "SELECT c.k, c.n, m.best FROM (SELECT k, COUNT(*) AS n FROM bids GROUP BY k) c
       JOIN (SELECT k, MAX(price) AS best FROM asks GROUP BY k HAVING COUNT(*) % 2 = 1) m ON c.k = m.k",
    "SELECT m.best, COUNT(*), SUM(a.price) FROM asks a JOIN (SELECT k, MAX(price) AS best FROM bids GROUP BY k) m
       ON a.k = m.k AND a.price < m.best GROUP BY m.best",
    // Outer joins of changelogs: a row's NULL-padded row comes and goes as
    // its matches are added and taken back.
    "SELECT a.k, a.price, m.best FROM bids a LEFT JOIN (SELECT k, MAX(price) AS best FROM asks GROUP BY k
       HAVING COUNT(*) % 2 = 1) m ON a.k = m.k",
    "SELECT c.k, c.n, a.price FROM (SELECT k, COUNT(*) AS n FROM bids GROUP BY k) c
       RIGHT JOIN asks a ON a.k = c.k AND a.price > c.n * 40",
    "SELECT c.k, c.n, m.k, m.best FROM (SELECT k, COUNT(*) AS n FROM bids GROUP BY k HAVING COUNT(*) % 3 <> 0) c
       FULL JOIN (SELECT k, MAX(price) AS best FROM asks GROUP BY k HAVING COUNT(*) % 2 = 1) m ON c.k = m.k",
    "SELECT c.k, COUNT(m.best), SUM(m.best) FROM (SELECT k, COUNT(*) AS n FROM bids GROUP BY k) c
       LEFT JOIN (SELECT k, MIN(price) AS best FROM asks GROUP BY k HAVING COUNT(*) % 2 = 0) m ON c.k = m.k
       GROUP BY c.k",
    // Semi and anti joins of changelogs: a row shows while it has a match
    // (or none).
    "SELECT a.k, a.price FROM bids a WHERE EXISTS (SELECT 1 FROM (SELECT k, COUNT(*) AS n FROM asks GROUP BY k) c
       WHERE c.k = a.k AND c.n % 2 = 1)",
    "SELECT a.k, a.price FROM bids a WHERE NOT EXISTS (SELECT 1 FROM (SELECT k, MAX(price) AS m FROM asks GROUP BY k) c
       WHERE c.k = a.k AND c.m > a.price)",
    "SELECT c.k, c.n FROM (SELECT k, COUNT(*) AS n FROM bids GROUP BY k) c WHERE c.k IN (SELECT k FROM asks WHERE price > 250)",
];

#[tokio::test]
async fn updating_joins_match_the_batch_join() {
    let bids = gen_rows(21, 300, 150, 2000, 5);
    let asks = gen_rows(22, 120, 300, 2000, 7);
    for q in UPDATING_JOINS {
        let log = stream_tables(
            &[("bids", &bids, 0), ("asks", &asks, 0)],
            &[40, 41, 200],
            37,
            &format!("INSERT INTO out {q}"),
            "changelog",
            2,
        )
        .await;
        let want = oracle_tables(&[("bids", bids.clone()), ("asks", asks.clone())], q).await;
        assert!(!want.is_empty(), "{q}");
        assert_eq!(sorted(apply_changelog(&log)), want, "{q}");
    }
}

/// Inner regular joins with a side whose keys are unique (`keyed_units`
/// declares `PRIMARY KEY (k)`): the join holds the other side's rows only
/// until they meet their partner, and pulls the unique side's filter in.
const UNIQUE_JOINS: &[&str] = &[
    "SELECT a.k, a.price, u.price FROM bids a JOIN keyed_units u ON a.k = u.k WHERE u.price > 400",
    "SELECT u.k, u.price, a.price, a.ts FROM keyed_units u JOIN bids a ON u.k = a.k AND a.price > u.price
       WHERE u.price % 3 <> 0",
    "SELECT a.k, a.ts, u.ts FROM bids a JOIN keyed_units u ON a.k = u.k",
];

/// `n` rows with the keys `0..n` once each, in a random order.
fn unique_rows(seed: u64, n: usize) -> Vec<Row> {
    let mut rows = gen_rows(seed, n, 300, 2000, 1);
    let mut keys: Vec<i64> = (0..n as i64).collect();
    let mut rng = Rng(seed ^ 0x9999);
    for i in (1..keys.len()).rev() {
        keys.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for (r, k) in rows.iter_mut().zip(keys) {
        r.k = k;
    }
    rows
}

/// Keep-first deduplication on event time (append-only): each key's
/// earliest on-time row.
const KEEP_FIRST_QUERY: &str = "INSERT INTO out SELECT k, ts FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM bids) WHERE rn = 1";
const KEEP_FIRST_ORACLE: &str = "SELECT k, MIN(ts) FROM bids GROUP BY k";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random event times, delays, batch boundaries and thread counts: each
    /// window kind equals the oracle, whatever the cuts.
    #[test]
    fn the_result_never_depends_on_batch_boundaries(
        seed in 0u64..1_000_000,
        n in 50usize..400,
        step in 1u64..800,
        disorder in 0u64..5000,
        delay_ms in prop::sample::select(vec![0i64, 500, 2000, 5000]),
        cuts in prop::collection::vec(0usize..400, 0..4),
        max_rows in 1usize..120,
        threads in 1usize..3,
    ) {
        let rows = gen_rows(seed, n, step, disorder, 4);
        rt().block_on(async {
            for (q, o) in [
                (tumble_query(), tumble_oracle()),
                (hop_query(false), hop_oracle()),
                (cumulate_query(), cumulate_oracle()),
                (session_query(), session_oracle()),
                (HIGHEST_QUERY.to_string(), HIGHEST_ORACLE.to_string()),
                (KEEP_FIRST_QUERY.to_string(), KEEP_FIRST_ORACLE.to_string()),
            ] {
                let got = sorted(format_rows(
                    &stream_tables(&[("bids", &rows, delay_ms)], &cuts, max_rows, &q, "append", threads).await,
                ));
                let want = oracle(&on_time(&rows, delay_ms), &o).await;
                prop_assert_eq!(got, want, "{}", q);
            }
            Ok(())
        })?;
    }

    /// Interval joins of two sources with their own delays: the streamed
    /// join equals the batch join of the on-time rows, whatever the cuts.
    #[test]
    fn interval_joins_never_depend_on_batch_boundaries(
        seed in 0u64..1_000_000,
        n in 20usize..300,
        step in 1u64..800,
        disorder in 0u64..4000,
        delays in (prop::sample::select(vec![0i64, 500, 3000]), prop::sample::select(vec![0i64, 1000, 4000])),
        cuts in prop::collection::vec(0usize..300, 0..4),
        max_rows in 1usize..100,
        threads in 1usize..3,
    ) {
        let bids = gen_rows(seed, n, step, disorder, 4);
        let asks = gen_rows(seed ^ 0xA5A5, n / 2 + 10, step * 2, disorder, 4);
        rt().block_on(async {
            for (q, o) in [
                (interval_join("INNER"), interval_join("INNER")),
                (interval_join("FULL"), interval_join("FULL")),
                (exists_join(""), exists_join("")),
                (exists_join("NOT"), exists_join("NOT")),
                (WINDOW_JOIN.to_string(), WINDOW_JOIN_ORACLE.to_string()),
                (JOIN_WINDOW.to_string(), JOIN_WINDOW_ORACLE.to_string()),
            ] {
                let (got, want) = check_join(&bids, &asks, delays, (&cuts, max_rows, threads), &q, &o).await;
                prop_assert_eq!(got, want, "{}", q);
            }
            Ok(())
        })?;
    }
    /// Lookup joins with a bounded table: the streamed join equals the
    /// batch join, whatever the cuts and thread count.
    #[test]
    fn lookup_joins_never_depend_on_batch_boundaries(
        seed in 0u64..1_000_000,
        n in 20usize..300,
        dim_rows in 0usize..12,
        delay_ms in prop::sample::select(vec![0i64, 500, 3000]),
        cuts in prop::collection::vec(0usize..300, 0..4),
        max_rows in 1usize..100,
        threads in 1usize..3,
    ) {
        let bids = gen_rows(seed, n, 300, 2000, 6);
        let dim = gen_rows(seed ^ 0x5A5A, dim_rows, 1, 0, 8);
        rt().block_on(async {
            for (q, o, windowed) in LOOKUPS {
                let got = sorted(format_rows(
                    &stream_tables_and(&[("bids", &bids, delay_ms)], &[("dim", &dim)], &cuts, max_rows,
                        &format!("INSERT INTO out {q}"), "append", threads).await,
                ));
                let input = if *windowed { on_time(&bids, delay_ms) } else { bids.clone() };
                let want = oracle_tables(&[("bids", input), ("dim", dim.clone())], o).await;
                prop_assert_eq!(got, want, "{}", q);
            }
            Ok(())
        })?;
    }
    /// Updating joins (outer and anti joins without a time bound): the
    /// changelog applied in order equals the batch join of every row,
    /// whatever the cuts and thread count.
    #[test]
    fn updating_joins_converge_to_the_batch_join(
        seed in 0u64..1_000_000,
        n in 10usize..150,
        keys in 1u64..8,
        cuts in prop::collection::vec(0usize..150, 0..4),
        max_rows in 1usize..60,
        threads in 1usize..3,
    ) {
        let bids = gen_rows(seed, n, 300, 2000, keys);
        let asks = gen_rows(seed ^ 0x3C3C, n / 2 + 3, 500, 2000, keys + 1);
        rt().block_on(async {
            for q in UPDATING_JOINS {
                let log = stream_tables(
                    &[("bids", &bids, 0), ("asks", &asks, 0)], &cuts, max_rows,
                    &format!("INSERT INTO out {q}"), "changelog", threads,
                ).await;
                // A regular join does not drop late rows: every row counts.
                let want = oracle_tables(&[("bids", bids.clone()), ("asks", asks.clone())], q).await;
                prop_assert_eq!(sorted(apply_changelog(&log)), want, "{}", q);
            }
            Ok(())
        })?;
    }
    /// Inner joins on a declared key (see [`UNIQUE_JOINS`]): the stream
    /// equals the batch join of every row, whatever the cuts and thread
    /// count. A third of the bids name a key that has no row.
    #[test]
    fn joins_on_a_unique_key_never_depend_on_batch_boundaries(
        seed in 0u64..1_000_000,
        n in 10usize..200,
        units in 1usize..40,
        cuts in prop::collection::vec(0usize..200, 0..4),
        max_rows in 1usize..60,
        threads in 1usize..3,
    ) {
        let bids = gen_rows(seed, n, 300, 2000, units as u64 * 3 / 2 + 1);
        let keyed = unique_rows(seed ^ 0x7E7E, units);
        rt().block_on(async {
            for q in UNIQUE_JOINS {
                let got = sorted(format_rows(&stream_tables(
                    &[("bids", &bids, 0), ("keyed_units", &keyed, 0)], &cuts, max_rows,
                    &format!("INSERT INTO out {q}"), "append", threads,
                ).await));
                // A regular join does not drop late rows: every row counts.
                let want = oracle_tables(&[("bids", bids.clone()), ("keyed_units", keyed.clone())], q).await;
                prop_assert_eq!(got, want, "{}", q);
            }
            Ok(())
        })?;
    }
    /// Aggregates over a changelog: the changelog applied in order equals
    /// the batch aggregate, whatever the cuts and thread count.
    #[test]
    fn aggregates_over_a_changelog_converge_to_the_batch_result(
        seed in 0u64..1_000_000,
        n in 20usize..400,
        keys in 1u64..30,
        cuts in prop::collection::vec(0usize..400, 0..4),
        max_rows in 1usize..120,
        threads in 1usize..3,
    ) {
        let rows = gen_rows(seed, n, 100, 1000, keys);
        rt().block_on(async {
            for (q, o) in CHANGELOG_AGGREGATES {
                let log = stream_tables(&[("bids", &rows, 0)], &cuts, max_rows, q, "changelog", threads).await;
                // Update mode does not drop late rows: every row counts.
                prop_assert_eq!(sorted(apply_changelog(&log)), oracle(&rows, o).await, "{}", q);
            }
            Ok(())
        })?;
    }
    /// Top-N and deduplication outside windows: the changelog applied in
    /// order equals the batch ranking, whatever the cuts and thread count.
    #[test]
    fn top_n_changelogs_converge_to_the_batch_ranking(
        seed in 0u64..1_000_000,
        n in 20usize..400,
        keys in 1u64..12,
        cuts in prop::collection::vec(0usize..400, 0..4),
        max_rows in 1usize..120,
        threads in 1usize..3,
    ) {
        let rows = gen_rows(seed, n, 100, 1000, keys);
        rt().block_on(async {
            for q in TOP_N {
                let log = stream_tables(&[("bids", &rows, 0)], &cuts, max_rows, &format!("INSERT INTO out {q}"), "changelog", threads).await;
                // Update mode does not drop late rows: every row counts.
                prop_assert_eq!(sorted(apply_changelog(&log)), oracle(&rows, q).await, "{}", q);
            }
            Ok(())
        })?;
    }
}
