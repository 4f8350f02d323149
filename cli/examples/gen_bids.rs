//! Writes a folder of bid events as Parquet (or JSON, or CSV) files, for the
//! bundled example and for throughput measurements:
//!
//! ```text
//! cargo run --release -p weir-cli --example gen_bids -- OUT_DIR [ROWS] [FILES] [SEED] [parquet|json|csv]
//! ```
//!
//! Bids come 100 per second of event time from 2026-01-01 00:00:00; one in
//! ten is up to 4 seconds late (out of order), and one in a thousand up to a
//! minute late. Auctions are skewed: a few are hot. The output depends only
//! on the arguments.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;

/// splitmix64: small, fast and deterministic.
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
        self.next() % n
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .ok_or("usage: gen_bids OUT_DIR [ROWS] [FILES] [SEED] [parquet|json|csv]")?;
    let rows: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let files: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(4).max(1);
    let seed: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(42);
    let format = args.get(4).map_or("parquet", String::as_str);
    if !matches!(format, "parquet" | "json" | "csv") {
        return Err(format!("format '{format}': expected parquet, json or csv").into());
    }
    std::fs::create_dir_all(out)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("extra", DataType::Utf8, false),
    ]));
    let base_ms: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let channels = ["apple", "google", "facebook", "baidu"];
    let mut rng = Rng(seed);
    let per_file = rows.div_ceil(files);
    let mut i: u64 = 0;
    for f in 0..files {
        let n = per_file.min(rows - i);
        if n == 0 {
            break;
        }
        let path = format!("{out}/bids-{f:04}.{format}");
        let mut writer = Writer::create(&path, format, &schema)?;
        let mut left = n;
        while left > 0 {
            let chunk = left.min(65_536);
            let (mut auction, mut bidder, mut price) = (vec![], vec![], vec![]);
            let (mut channel, mut url, mut ts, mut extra) = (vec![], vec![], vec![], vec![]);
            for _ in 0..chunk {
                // Hot auctions: half the bids go to 100 auctions.
                let a = if rng.below(2) == 0 {
                    1000 + rng.below(100)
                } else {
                    1000 + rng.below(10_000)
                };
                let c = channels[rng.below(4) as usize];
                let mut t = base_ms + (i as i64) * 10;
                match rng.below(1000) {
                    0 => t -= rng.below(60_000) as i64,
                    1..=99 => t -= rng.below(4_000) as i64,
                    _ => {}
                }
                auction.push(a as i64);
                bidder.push(rng.below(50_000) as i64);
                price.push(100 + rng.below(100_000) as i64);
                channel.push(c);
                url.push(format!(
                    "https://www.nexmark.com/{c}/item.htm?query=1&channel_id={}",
                    rng.below(1000)
                ));
                ts.push(t);
                extra.push(String::new());
                i += 1;
            }
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from(auction)),
                    Arc::new(Int64Array::from(bidder)),
                    Arc::new(Int64Array::from(price)),
                    Arc::new(StringArray::from(channel)),
                    Arc::new(StringArray::from(url)),
                    Arc::new(TimestampMillisecondArray::from(ts)),
                    Arc::new(StringArray::from(extra)),
                ],
            )?;
            writer.write(&batch)?;
            left -= chunk;
        }
        writer.close()?;
    }
    eprintln!("wrote {rows} bids in {files} files under {out}");
    Ok(())
}

/// One output file, in one of the formats.
enum Writer {
    Parquet(ArrowWriter<std::fs::File>),
    Json(datafusion::arrow::json::LineDelimitedWriter<std::fs::File>),
    Csv(datafusion::arrow::csv::Writer<std::fs::File>),
}

impl Writer {
    fn create(path: &str, format: &str, schema: &Arc<Schema>) -> Result<Self, Box<dyn std::error::Error>> {
        let file = std::fs::File::create(path)?;
        Ok(match format {
            "json" => Writer::Json(datafusion::arrow::json::LineDelimitedWriter::new(file)),
            "csv" => Writer::Csv(
                datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(file),
            ),
            _ => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                Writer::Parquet(ArrowWriter::try_new(file, Arc::clone(schema), Some(props))?)
            }
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), Box<dyn std::error::Error>> {
        match self {
            Writer::Parquet(w) => w.write(batch)?,
            Writer::Json(w) => w.write(batch)?,
            Writer::Csv(w) => w.write(batch)?,
        }
        Ok(())
    }

    fn close(self) -> Result<(), Box<dyn std::error::Error>> {
        match self {
            Writer::Parquet(w) => {
                w.close()?;
            }
            Writer::Json(mut w) => w.finish()?,
            Writer::Csv(_) => {}
        }
        Ok(())
    }
}
