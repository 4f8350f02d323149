//! End-to-end tests of the `nexmark` source and the `blackhole` sink through
//! the real `weir` binary: results against a batch query over the same
//! generated events, one event stream shared by the three tables, and the
//! same output after a SIGKILL at every step of the epoch protocol.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use crate::common::*;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;
use weir_engine::source::nexmark::{NexmarkConfig, NexmarkTable, TableGenerator};

const BID_DDL: &str = "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
  url VARCHAR, date_time TIMESTAMP(3), extra VARCHAR,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)";

/// A job over `events` bids in batches of `per_batch` events: a stateless
/// filter and a windowed aggregate, each to its own Parquet sink.
fn job(events: u64, per_batch: u64) -> String {
    format!(
        "{BID_DDL}
  WITH ('connector' = 'nexmark', 'table' = 'bid', 'events' = '{events}',
        'max_events_per_batch' = '{per_batch}', 'out_of_order_group' = '7');
CREATE TABLE picked WITH ('connector' = 'files', 'path' = 'picked/', 'format' = 'parquet');
CREATE TABLE counts WITH ('connector' = 'files', 'path' = 'counts/', 'format' = 'parquet');
INSERT INTO picked SELECT auction, price, channel, date_time FROM bid WHERE auction % 7 = 0;
INSERT INTO counts
SELECT window_start, window_end, auction, COUNT(*) AS n, MAX(price) AS top
FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '1' SECOND))
GROUP BY window_start, window_end, auction;
"
    )
}

/// The same two queries as DataFusion batch queries over the bids the
/// generator makes for the same settings.
fn expected(events: u64) -> (Vec<String>, Vec<String>) {
    let cfg = NexmarkConfig {
        out_of_order_group: 7,
        ..Default::default()
    };
    let g = TableGenerator::new(cfg, NexmarkTable::Bid, NexmarkTable::Bid.schema()).unwrap();
    let bids = g.generate(0, events).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let ctx = SessionContext::new();
        let table = datafusion::datasource::MemTable::try_new(Arc::clone(g.schema()), vec![bids]).unwrap();
        ctx.register_table("bid", Arc::new(table)).unwrap();
        let run = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let batches: Vec<RecordBatch> = ctx.sql(sql).await.unwrap().collect().await.unwrap();
                rows_of(&batches)
            }
        };
        let picked = run("SELECT auction, price, channel, date_time FROM bid WHERE auction % 7 = 0").await;
        let counts = run("SELECT date_bin(INTERVAL '1' SECOND, date_time) AS ws,
                    date_bin(INTERVAL '1' SECOND, date_time) + INTERVAL '1' SECOND AS we,
                    auction, COUNT(*), MAX(price)
             FROM bid GROUP BY 1, 2, 3")
        .await;
        (picked, counts)
    })
}

fn outputs(ws: &Workspace) -> (Vec<String>, Vec<String>) {
    (sink_rows(&ws.path("picked")), sink_rows(&ws.path("counts")))
}

const RUN: &[&str] = &["run", "job.sql", "--trigger", "available-now", "--drain"];

#[test]
fn nexmark_results_equal_a_batch_query_over_the_generated_events() {
    let ws = Workspace::new();
    ws.write("job.sql", &job(30_000, 4_000));
    let mut args = RUN.to_vec();
    args.extend(["--progress-json", "p.json"]);
    ws.weir(&args).ok();
    let p = progress(&ws.path("p.json"));
    assert_eq!(
        p.len(),
        8 + 1,
        "8 batches of at most 4,000 events, then the drain"
    );
    assert_eq!(sum_field(&p, "rows_in"), 30_000 * 46 / 50);
    assert_eq!(
        sum_field(&p, "late_rows"),
        0,
        "groups of 7 events are within the 4 s delay"
    );
    assert!(p[0]["checkpoint_ms"].as_f64().unwrap() > 0.0);
    let (picked, counts) = outputs(&ws);
    let (want_picked, want_counts) = expected(30_000);
    assert!(picked.len() > 100 && counts.len() > 100);
    assert_eq!(picked, want_picked);
    assert_eq!(counts, want_counts);
    // Its checkpoint is tiny: the source's state is one number.
    let state = ws.path("job.checkpoint/state/source-bid");
    let sizes: Vec<u64> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(!sizes.is_empty() && sizes.iter().all(|&s| s < 2_000), "{sizes:?}");
}

#[test]
fn a_sigkill_at_any_step_of_an_epoch_changes_nothing_in_the_output() {
    let straight = {
        let ws = Workspace::new();
        ws.write("job.sql", &job(12_000, 2_500));
        ws.weir(RUN).ok();
        outputs(&ws)
    };
    assert_eq!(straight, expected(12_000));
    for step in [
        "offsets-written",
        "before-sink",
        "sink-staged",
        "state-written",
        "committed",
        "published",
    ] {
        let ws = Workspace::new();
        ws.write("job.sql", &job(12_000, 2_500));
        ws.weir_env(RUN, &[("WEIR_FAILPOINT", &format!("{step}@3"))])
            .killed();
        ws.weir(RUN).ok();
        assert_eq!(outputs(&ws), straight, "killed at {step} of epoch 3");
    }
}

#[test]
fn two_threads_give_the_same_output_and_recover_from_a_kill() {
    // Batches of 150,000 events: the generator splits each over both
    // threads, the scan deals its batches to two partitions, and the window
    // aggregate merges them back into its one state.
    let (events, per_batch) = (450_000, 150_000);
    let want = expected(events);
    let mut two = RUN.to_vec();
    two.extend(["--threads", "2"]);
    let ws = Workspace::new();
    ws.write("job.sql", &job(events, per_batch));
    ws.weir(&two).ok();
    assert_eq!(outputs(&ws), want);

    // Killed after epoch 2's state is written, it resumes on two threads.
    let ws = Workspace::new();
    ws.write("job.sql", &job(events, per_batch));
    ws.weir_env(&two, &[("WEIR_FAILPOINT", "state-written@2")])
        .killed();
    ws.weir(&two).ok();
    assert_eq!(outputs(&ws), want);
}

#[test]
fn restarting_after_every_batch_gives_the_same_output() {
    let ws = Workspace::new();
    ws.write("job.sql", &job(12_000, 2_500));
    let mut runs = 0;
    loop {
        let r = ws.weir(&["run", "job.sql", "--trigger", "once"]).ok();
        runs += 1;
        if r.stderr().contains("done: 0 epoch(s)") {
            break;
        }
        assert!(runs < 20, "the input should be done after 5 epochs");
    }
    assert_eq!(runs, 6);
    ws.weir(RUN).ok();
    assert_eq!(outputs(&ws), expected(12_000));
}

/// Rows `a|b|...` of a sink, split.
fn fields(dir: &std::path::Path) -> Vec<Vec<String>> {
    sink_rows(dir)
        .into_iter()
        .map(|r| r.split('|').map(str::to_string).collect())
        .collect()
}

#[test]
fn the_three_tables_see_one_event_stream() {
    let ws = Workspace::new();
    // One event per millisecond: an event's time names its number.
    let with = |table: &str| {
        format!(
            "WITH ('connector' = 'nexmark', 'table' = '{table}', 'events' = '5000', 'rate' = '1000',
                   'seed' = '3', 'max_events_per_batch' = '1500')"
        )
    };
    ws.write(
        "job.sql",
        &format!(
            "CREATE TABLE person (id BIGINT, date_time TIMESTAMP(3)) {};
             CREATE TABLE auction (id BIGINT, seller BIGINT, date_time TIMESTAMP(3)) {};
             CREATE TABLE bids (auction BIGINT, bidder BIGINT, date_time TIMESTAMP(3)) {};
             CREATE TABLE p WITH ('connector' = 'files', 'path' = 'p/', 'format' = 'parquet');
             CREATE TABLE a WITH ('connector' = 'files', 'path' = 'a/', 'format' = 'parquet');
             CREATE TABLE b WITH ('connector' = 'files', 'path' = 'b/', 'format' = 'parquet');
             INSERT INTO p SELECT id, date_time FROM person;
             INSERT INTO a SELECT id, seller, date_time FROM auction;
             INSERT INTO b SELECT auction, bidder, date_time FROM bids;",
            with("person"),
            with("auction"),
            with("bid")
        ),
    );
    ws.weir(&["run", "job.sql", "--trigger", "available-now"]).ok();
    let (p, a, b) = (
        fields(&ws.path("p")),
        fields(&ws.path("a")),
        fields(&ws.path("b")),
    );
    assert_eq!((p.len(), a.len(), b.len()), (100, 300, 4600));
    // Together the tables hold every event number exactly once. (Whole
    // seconds print without their ".000".)
    let ms = |t: &String| {
        if t.len() == 19 {
            format!("{t}.000")
        } else {
            t.clone()
        }
    };
    let mut times: Vec<String> = p
        .iter()
        .map(|r| ms(&r[1]))
        .chain(a.iter().map(|r| ms(&r[2])))
        .chain(b.iter().map(|r| ms(&r[2])))
        .collect();
    times.sort();
    let all: Vec<String> = (0..5000).map(|n| iso(BASE_MS + n)).collect();
    let differ = times.iter().zip(&all).position(|(x, y)| x != y);
    assert!(
        times.len() == all.len() && differ.is_none(),
        "{} times; first difference at {differ:?}",
        times.len()
    );
    // Ids are dense; references point at rows that exist by then (or within
    // the generator's lead of 10 ids).
    let num = |s: &String| s.parse::<i64>().unwrap();
    let mut person_ids: Vec<i64> = p.iter().map(|r| num(&r[0])).collect();
    person_ids.sort_unstable();
    assert_eq!(person_ids, (1000..1100).collect::<Vec<_>>());
    let people_by = |t: &str| p.iter().filter(|r| r[1].as_str() <= t).count() as i64;
    let auctions_by = |t: &str| a.iter().filter(|r| r[2].as_str() <= t).count() as i64;
    for r in a.iter().step_by(7) {
        assert!(num(&r[1]) < 1000 + people_by(&r[2]) + 10, "seller {r:?}");
    }
    for r in b.iter().step_by(31) {
        assert!(num(&r[0]) < 1000 + auctions_by(&r[2]) + 10, "auction {r:?}");
        assert!(num(&r[1]) < 1000 + people_by(&r[2]) + 10, "bidder {r:?}");
    }
}

#[test]
fn the_blackhole_sink_counts_rows_and_keeps_nothing() {
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &format!(
            "{BID_DDL} WITH ('connector' = 'nexmark', 'events' = '10000', 'max_events_per_batch' = '3000');
             CREATE TABLE nowhere WITH ('connector' = 'blackhole');
             INSERT INTO nowhere SELECT * FROM bid WHERE price > 10000;"
        ),
    );
    ws.weir_env(
        &[
            "run",
            "job.sql",
            "--trigger",
            "available-now",
            "--progress-json",
            "p.json",
        ],
        &[("WEIR_FAILPOINT", "sink-staged@2")],
    )
    .killed();
    let p = run_logged(&ws);
    // Epoch 1, then epoch 2 replayed after the kill, then 3 and 4: each
    // epoch's rows counted once.
    let epochs: Vec<u64> = p.iter().map(|l| l["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, vec![1, 2, 3, 4]);
    let g = TableGenerator::new(
        NexmarkConfig::default(),
        NexmarkTable::Bid,
        NexmarkTable::Bid.schema(),
    )
    .unwrap();
    let picked: usize = g
        .generate(0, 10_000)
        .unwrap()
        .iter()
        .map(|b| {
            let price = b.column(2).as_primitive::<Int64Type>();
            price.values().iter().filter(|&&v| v > 10_000).count()
        })
        .sum();
    assert!(picked > 1000);
    assert_eq!(sum_field(&p, "rows_out") as usize, picked);
    let mut files: Vec<String> = std::fs::read_dir(ws.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec!["job.checkpoint", "job.sql", "p.json"]);
}

/// An updating query (an aggregate without a window) may write its
/// changelog to the blackhole, as in Flink: the benchmarks measure such
/// queries through it. It counts the same rows a changelog sink keeps.
#[test]
fn the_blackhole_sink_takes_a_changelog() {
    let ws = Workspace::new();
    ws.write(
        "job.sql",
        &format!(
            "{BID_DDL} WITH ('connector' = 'nexmark', 'events' = '10000', 'max_events_per_batch' = '2500');
             CREATE TABLE nowhere WITH ('connector' = 'blackhole');
             CREATE TABLE changes WITH ('connector' = 'files', 'path' = 'changes/', 'format' = 'parquet',
               'mode' = 'changelog');
             INSERT INTO nowhere SELECT auction, COUNT(*) AS n FROM bid GROUP BY auction;
             INSERT INTO changes SELECT auction, COUNT(*) AS n FROM bid GROUP BY auction;"
        ),
    );
    let p = run_logged(&ws);
    assert_eq!(p.len(), 4);
    let by_sink = |name: &str| -> u64 {
        p.iter()
            .flat_map(|l| l["sinks"].as_array().unwrap())
            .filter(|s| s["name"] == name)
            .map(|s| s["rows_out"].as_u64().unwrap())
            .sum()
    };
    let kept = sink_rows(&ws.path("changes")).len() as u64;
    assert!(kept > 0);
    assert_eq!(by_sink("changes"), kept);
    assert_eq!(
        by_sink("nowhere"),
        kept,
        "the blackhole counts the same changelog"
    );
}

#[test]
fn misdeclared_or_endless_nexmark_tables_are_clear_errors() {
    let ws = Workspace::new();
    ws.write(
        "bad.sql",
        "CREATE TABLE bid (auction BIGINT, dateTime TIMESTAMP(3)) WITH ('connector' = 'nexmark', 'events' = '10');
         CREATE TABLE out WITH ('connector' = 'blackhole');
         INSERT INTO out SELECT * FROM bid;",
    );
    let r = ws.weir(&["run", "bad.sql", "--trigger", "available-now"]).fails();
    assert!(
        r.stderr()
            .contains("column 'datetime' is not a column of the nexmark bid table"),
        "{}",
        r.stderr()
    );
    ws.write(
        "endless.sql",
        &format!(
            "{BID_DDL} WITH ('connector' = 'nexmark', 'max_events_per_batch' = '500');
             CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
             INSERT INTO out SELECT auction, price FROM bid;"
        ),
    );
    let r = ws
        .weir(&["run", "endless.sql", "--trigger", "available-now"])
        .fails();
    assert!(r.stderr().contains("never ends"), "{}", r.stderr());
    // An endless source still runs epoch by epoch.
    ws.weir(&["run", "endless.sql", "--trigger", "once"]).ok();
    ws.weir(&["run", "endless.sql", "--trigger", "once"]).ok();
    assert_eq!(sink_rows(&ws.path("out")).len(), 2 * 460);
}

/// A query that does not read `date_time` still advances the watermark
/// exactly as one that does: the source reports each batch's latest time
/// instead of generating the column.
#[test]
fn the_watermark_is_the_same_whether_or_not_a_query_reads_the_time() {
    let watermarks = |columns: &str| {
        let ws = Workspace::new();
        ws.write(
            "job.sql",
            &format!(
                "{BID_DDL} WITH ('connector' = 'nexmark', 'events' = '20000', 'max_events_per_batch' = '3001');
                 CREATE TABLE nowhere WITH ('connector' = 'blackhole');
                 INSERT INTO nowhere SELECT {columns} FROM bid WHERE auction % 3 = 0;"
            ),
        );
        run_logged(&ws)
            .iter()
            .map(|l| l["watermark_ms"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    let without = watermarks("auction, price");
    assert_eq!(without.len(), 7);
    assert!(without.windows(2).all(|w| w[0] < w[1]), "{without:?}");
    assert_eq!(without, watermarks("auction, price, date_time"));
}
