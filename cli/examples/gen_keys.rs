//! Writes a keyed change stream as Parquet files, for the checkpoint-size
//! benchmark (`benches/state_bytes.sh`):
//!
//! ```text
//! cargo run --release -p weir-cli --example gen_keys -- OUT_DIR [KEYS] [FILES] [PERCENT] [SEED]
//! ```
//!
//! File 0 has one row for every key `0..KEYS`; each later file has
//! `KEYS * PERCENT / 100` rows with keys drawn uniformly, so each later epoch
//! (one file per epoch) changes about that share of the groups. Columns:
//! `id BIGINT, v BIGINT, ts TIMESTAMP(3)`. The output depends only on the
//! arguments.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;

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
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .ok_or("usage: gen_keys OUT_DIR [KEYS] [FILES] [PERCENT] [SEED]")?;
    let keys: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let files: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(40).max(1);
    let percent: f64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1.0);
    let seed: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(7);
    std::fs::create_dir_all(out)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
    ]));
    let base_ms = 1_767_225_600_000i64; // 2026-01-01
    let mut rng = Rng(seed);
    for f in 0..files {
        let k: Vec<i64> = if f == 0 {
            (0..keys as i64).collect()
        } else {
            let n = ((keys as f64) * percent / 100.0).round() as u64;
            (0..n).map(|_| (rng.next() % keys) as i64).collect()
        };
        let v: Vec<i64> = k.iter().map(|_| (rng.next() % 1000) as i64).collect();
        let ts = vec![base_ms + f as i64 * 1000; k.len()];
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(k)),
                Arc::new(Int64Array::from(v)),
                Arc::new(TimestampMillisecondArray::from(ts)),
            ],
        )?;
        let path = format!("{out}/keys-{f:04}.parquet");
        let mut w = ArrowWriter::try_new(std::fs::File::create(&path)?, Arc::clone(&schema), None)?;
        w.write(&batch)?;
        w.close()?;
    }
    Ok(())
}
