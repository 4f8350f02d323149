//! A panic inside an operator (here a user-defined aggregate that panics on
//! one value, standing for any bug) ends the run with an error naming the
//! operator and the epoch, and leaves the checkpoint as it was before that
//! epoch: nothing of it is committed, its offsets entry is gone, and the
//! job, fixed, continues from there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, AggregateUDF, Volatility, create_udaf};
use datafusion::parquet::arrow::ArrowWriter;
use weir_engine::{JobOptions, StreamingJob, Trigger};

/// A sum that panics when it meets `poison`.
#[derive(Debug)]
struct Touchy {
    sum: i64,
    poison: i64,
}

impl Accumulator for Touchy {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        for v in values[0].as_primitive::<Int64Type>().iter().flatten() {
            assert!(v != self.poison, "touchy met {v}");
            self.sum += v;
        }
        Ok(())
    }
    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.sum)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(Some(self.sum))])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        for v in states[0].as_primitive::<Int64Type>().iter().flatten() {
            self.sum += v;
        }
        Ok(())
    }
}

fn touchy(poison: i64) -> AggregateUDF {
    create_udaf(
        "touchy",
        vec![DataType::Int64],
        Arc::new(DataType::Int64),
        Volatility::Immutable,
        Arc::new(move |_| Ok(Box::new(Touchy { sum: 0, poison }))),
        Arc::new(vec![DataType::Int64]),
    )
}

fn write(path: &std::path::Path, prices: &[i64], start_ms: i64) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("price", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(prices.to_vec())),
            Arc::new(TimestampMillisecondArray::from(
                (0..prices.len() as i64)
                    .map(|i| start_ms + i * 100)
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[tokio::test]
async fn a_panic_in_an_operator_names_it_and_the_epoch_and_leaves_the_checkpoint_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let base = 1_767_225_600_000;
    write(&input.join("a.parquet"), &[1, 2, 3, 4], base);
    write(&input.join("b.parquet"), &[5, 666, 7], base + 10_000);
    let sql = format!(
        "CREATE TABLE bids (price BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
           WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'max_files_per_batch' = '1');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet');
         INSERT INTO out SELECT window_start, touchy(price) AS t
         FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '5' SECOND)) GROUP BY window_start, window_end;",
        input.display(),
        dir.path().join("out").display()
    );
    let ck = dir.path().join("ck");
    let open = |poison: i64| {
        let sql = sql.clone();
        let ck = ck.display().to_string();
        async move {
            let mut options = JobOptions::new(ck);
            options.udafs.push(touchy(poison));
            StreamingJob::open(&sql, options).await.unwrap()
        }
    };
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let mut job = open(666).await;
    let err = job
        .run(Trigger::AvailableNow, false, stop.clone(), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("epoch 2")
            && err.contains("internal error in WindowAggregateExec")
            && err.contains("touchy met 666"),
        "{err}"
    );
    assert!(err.contains("epoch 2 was not committed"), "{err}");
    job.close().await.unwrap();
    // As it was after epoch 1: its commit, and nothing of epoch 2.
    let listed = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(ck.join(d))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(listed("commits"), vec!["00000000000000000001.json"]);
    assert_eq!(listed("offsets"), vec!["00000000000000000001.json"]);
    // The bug fixed (here: nothing is poison), the job goes on from epoch 2.
    let mut job = open(-1).await;
    let s = job
        .run(Trigger::AvailableNow, true, stop, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(s.rows_in, 3, "the second file, once");
    assert_eq!(s.last_epoch, Some(3));
}
