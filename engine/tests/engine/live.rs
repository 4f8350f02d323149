//! Live queries: a bare `SELECT` whose committed output is sent to the caller
//! epoch by epoch (what the shell prints), instead of written to a sink.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use weir_engine::{JobOptions, LiveBatch, StreamingJob, Trigger};

const BASE_MS: i64 = 1_767_225_600_000;

fn input() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let n = 900i64;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from((0..n).map(|i| (i * 7) % 4).collect::<Vec<_>>())),
            Arc::new(TimestampMillisecondArray::from(
                (0..n).map(|i| BASE_MS + i * 100).collect::<Vec<_>>(),
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

fn job_text(dir: &std::path::Path, tail: &str) -> String {
    format!(
        "CREATE TABLE bids (auction BIGINT, date_time TIMESTAMP(3),
           WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
           WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'max_rows_per_batch' = '200');
         {tail}",
        dir.join("in").display()
    )
}

const WINDOWED: &str = "SELECT window_start, window_end, auction, COUNT(*) AS n \
     FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) \
     GROUP BY window_start, window_end, auction";

#[tokio::test]
async fn a_live_select_sends_each_committed_epoch_and_equals_the_batch_answer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let batch = input();
    let f = std::fs::File::create(dir.path().join("in/a.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::channel::<LiveBatch>(4);
    let options = JobOptions {
        live: Some(tx),
        ..JobOptions::new(dir.path().join("ck").display().to_string())
    };
    let mut job = StreamingJob::open(&job_text(dir.path(), WINDOWED), options)
        .await
        .unwrap();
    let schema = job.live_schema().expect("a live query has a schema");
    assert_eq!(schema.field(3).name(), "n");
    assert!(job.explain().contains("SELECT (live results)"));

    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.push(b);
        }
        got
    });
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let summary = job
        .run(Trigger::AvailableNow, true, stop, &mut |_| {})
        .await
        .unwrap();
    drop(job); // closes the channel
    let got = reader.await.unwrap();

    assert!(summary.epochs >= 5, "several epochs: {summary:?}");
    assert!(
        got.len() >= 2,
        "windows arrive over several epochs, not at the end"
    );
    assert!(got.windows(2).all(|w| w[0].epoch < w[1].epoch));
    assert!(
        got.iter()
            .all(|b| b.batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0)
    );
    let all: Vec<RecordBatch> = got.into_iter().flat_map(|b| b.batches).collect();
    assert_eq!(
        summary.rows_out as usize,
        all.iter().map(|b| b.num_rows()).sum::<usize>()
    );

    let ctx = SessionContext::new();
    ctx.register_batch("bids", batch).unwrap();
    let expected = ctx
        .sql(
            "SELECT date_bin(INTERVAL '10' SECOND, date_time) AS ws,
                    date_bin(INTERVAL '10' SECOND, date_time) + INTERVAL '10' SECOND AS we,
                    auction, COUNT(*) FROM bids GROUP BY 1, 2, 3",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(rows(&all), rows(&expected));
}

#[tokio::test]
async fn a_bare_select_needs_a_live_output() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck").display().to_string();
    let err = StreamingJob::open(&job_text(dir.path(), WINDOWED), JobOptions::new(ck))
        .await
        .err()
        .expect("a saved job refuses a bare SELECT")
        .to_string();
    assert!(err.contains("INSERT INTO"), "{err}");
}
