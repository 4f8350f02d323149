//! `'connector' = 'nexmark'`: the Nexmark benchmark's auction site, generated.
//!
//! A deterministic generator of Person, Auction and Bid events following the
//! Nexmark specification as Beam's and Flink's generators implement it (see
//! [`generator`] for the event model). A job declares any of the three
//! tables and picks one with `'table'`:
//!
//! ```sql
//! CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR,
//!   url VARCHAR, date_time TIMESTAMP(3), extra VARCHAR,
//!   WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
//! WITH ('connector' = 'nexmark', 'table' = 'bid', 'events' = '10000000');
//! ```
//!
//! Tables of one job with the same `events`, `rate`, `seed`,
//! `out_of_order_group` and `base_time` see one event stream: the same event
//! numbers, each table keeping its own kind.
//!
//! Offset of a batch (in `offsets/N.json`): `{"start": 1000000, "end":
//! 2000000}`: the events numbered `start..end` (of every kind; the table's
//! rows are those of its kind). An event is a pure function of its number,
//! so a replayed offset gives the same rows, and a checkpoint holds one
//! number. Progress (state `source-<table>`): one row, `next_event` (UInt64).

pub mod generator;
pub mod random;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt8Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, UInt64Type};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_sql::TableDecl;

pub use generator::{NexmarkConfig, NexmarkTable, TableGenerator};

use super::{Amount, Backlog, Source, SourceBatch, check_options};
use crate::{Error, Result};

/// Options this connector knows.
const OPTIONS: &[&str] = &[
    "connector",
    "table",
    "events",
    "rate",
    "seed",
    "out_of_order_group",
    "base_time",
    "max_events_per_batch",
];

/// Default cap on events (of all kinds) per batch.
pub const DEFAULT_MAX_EVENTS: u64 = 1_000_000;

/// The offset of a batch: event numbers `start..end`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct NexmarkOffset {
    start: u64,
    end: u64,
}

/// Events in one part of an epoch generated on a cluster's executors.
const REMOTE_PART_EVENTS: u64 = 250_000;

/// A Nexmark table.
pub struct NexmarkSource {
    name: String,
    schema: SchemaRef,
    generator: TableGenerator,
    /// Events in the stream; `None`: unbounded.
    events: Option<u64>,
    max_events: u64,
    /// The next event number to read.
    next: u64,
    /// `next` when this process restored it (events before it were read by
    /// an earlier one).
    opened_at: u64,
    changed: bool,
    /// Threads that generate a batch (`weir run --threads`).
    threads: usize,
}

impl std::fmt::Debug for NexmarkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NexmarkSource")
            .field("name", &self.name)
            .field("table", &self.generator.table())
            .field("events", &self.events)
            .field("next", &self.next)
            .finish()
    }
}

fn bad_option(decl: &TableDecl, key: &str, value: &str, what: &str) -> Error {
    Error::Config(format!(
        "table '{}': option '{key}' must be {what}, not '{value}'",
        decl.name
    ))
}

fn parse_positive(decl: &TableDecl, key: &str) -> Result<Option<u64>> {
    match decl.options.get(key) {
        None => Ok(None),
        Some(v) => match v.trim().replace('_', "").parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(bad_option(decl, key, v, "a positive whole number")),
        },
    }
}

/// `base_time`: `2026-01-01 00:00:00[.fff]` (UTC), RFC 3339, or ms since the
/// Unix epoch.
/// It must lie in SQL's TIMESTAMP range (years 0000 to 9999): an event
/// time outside it belongs to no window and is late, so every event would be.
fn parse_base_time(decl: &TableDecl) -> Result<i64> {
    let Some(v) = decl.options.get("base_time") else {
        return Ok(generator::DEFAULT_BASE_TIME_MS);
    };
    let t = v.trim();
    let ms = if let Ok(ms) = t.parse::<i64>() {
        Some(ms)
    } else if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        Some(dt.timestamp_millis())
    } else {
        [
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S",
        ]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(t, format).ok())
        .map(|dt| dt.and_utc().timestamp_millis())
    };
    let Some(ms) = ms else {
        return Err(bad_option(
            decl,
            "base_time",
            v,
            "a time such as '2026-01-01 00:00:00' (UTC) or milliseconds since 1970",
        ));
    };
    // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z.
    const FIRST_MS: i64 = -62_167_219_200_000;
    const LAST_MS: i64 = 253_402_300_799_999;
    if !(FIRST_MS..=LAST_MS).contains(&ms) {
        return Err(bad_option(
            decl,
            "base_time",
            v,
            "a time within years 0000 to 9999 (SQL's TIMESTAMP range: an event time outside it is late for every \
             window)",
        ));
    }
    Ok(ms)
}

impl NexmarkSource {
    /// The batch of `offset`'s events, generated here or on a cluster, and
    /// the progress moved past them.
    fn advance_past(&mut self, offset: &NexmarkOffset, batches: Vec<RecordBatch>) -> SourceBatch {
        let max_time_ms = self
            .generator
            .last_event_in(offset.start, offset.end)
            .map(|id| self.generator.config().timestamp_ms(id));
        self.next = offset.end;
        self.changed = true;
        // Generated events are well-formed by construction: never bad records.
        SourceBatch {
            batches,
            bad: Vec::new(),
            max_time_ms,
            time_maxima: None,
        }
    }

    fn parse_offset(&self, offset: &Value) -> Result<NexmarkOffset> {
        let offset: NexmarkOffset = serde_json::from_value(offset.clone()).map_err(|e| {
            Error::Checkpoint(format!(
                "source '{}': unreadable offset in the offsets log: {e}",
                self.name
            ))
        })?;
        if offset.end < offset.start {
            return Err(Error::Checkpoint(format!(
                "source '{}': the offsets log names events {}..{}, which is backwards",
                self.name, offset.start, offset.end
            )));
        }
        Ok(offset)
    }

    /// The options a Nexmark source takes.
    pub fn known_options() -> Vec<&'static str> {
        OPTIONS.iter().chain(super::SOURCE_OPTIONS).copied().collect()
    }

    /// Opens the source a table declares.
    pub fn open(decl: &TableDecl) -> Result<Self> {
        let known = Self::known_options();
        check_options(decl, &known)?;
        let schema = decl
            .schema
            .clone()
            .ok_or_else(|| Error::Config(format!("source table '{}' must declare its columns", decl.name)))?;
        let table = match decl.options.get("table") {
            Some(t) => NexmarkTable::from_name(t)
                .ok_or_else(|| bad_option(decl, "table", t, "'person', 'auction' or 'bid'"))?,
            None => NexmarkTable::from_name(&decl.name).ok_or_else(|| {
                Error::Config(format!(
                    "table '{}': say which nexmark table it is with 'table' = 'person', 'auction' or 'bid'",
                    decl.name
                ))
            })?,
        };
        let rate = match decl.options.get("rate") {
            None => generator::DEFAULT_RATE,
            Some(v) => match v.trim().replace('_', "").parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 => r,
                _ => {
                    return Err(bad_option(
                        decl,
                        "rate",
                        v,
                        "a positive number of events per second",
                    ));
                }
            },
        };
        let seed = match decl.options.get("seed") {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map_err(|_| bad_option(decl, "seed", v, "a whole number"))?,
        };
        let config = NexmarkConfig {
            seed,
            rate,
            base_time_ms: parse_base_time(decl)?,
            out_of_order_group: parse_positive(decl, "out_of_order_group")?.unwrap_or(1),
        };
        config
            .validate()
            .map_err(|e| Error::Config(format!("table '{}': {e}", decl.name)))?;
        table.check_schema(&decl.name, &schema).map_err(Error::Config)?;
        let generator = TableGenerator::new(config, table, Arc::clone(&schema))?;
        Ok(Self {
            name: decl.name.clone(),
            schema,
            generator,
            events: parse_positive(decl, "events")?,
            max_events: parse_positive(decl, "max_events_per_batch")?.unwrap_or(DEFAULT_MAX_EVENTS),
            next: 0,
            opened_at: 0,
            changed: false,
            threads: 1,
        })
    }

    /// One row: a constant key (`unit`, so that each epoch's row replaces
    /// the last in incremental checkpoints) and the next event number.
    fn progress_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("unit", DataType::UInt8, false),
            Field::new("next_event", DataType::UInt64, false),
        ]))
    }
}

#[async_trait]
impl Source for NexmarkSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn set_columns(&mut self, columns: Vec<usize>) {
        // The indices come from the driver and are within the declared
        // schema, which `open` checked; fall back to every column otherwise.
        let projected = self.schema.project(&columns).map(Arc::new);
        if let Ok(schema) = projected
            && let Ok(g) =
                TableGenerator::new(self.generator.config().clone(), self.generator.table(), schema)
        {
            self.generator = g.with_rows_per_batch(crate::source::batch_rows(self.threads));
        }
    }

    fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
        self.generator = self
            .generator
            .clone()
            .with_rows_per_batch(crate::source::batch_rows(self.threads));
    }

    /// An event's time is a function of its id that grows with the id, so
    /// a batch's latest time is that of its greatest event id of the
    /// table's kind, found without generating the rows; but only in order
    /// (`out_of_order_group` 1), where that id is one of the last few.
    fn knows_max_time(&self, column: &str) -> bool {
        // Declared in seconds, the column holds truncated times: read it.
        let whole_ms = self.schema.field_with_name(column).is_ok_and(
            |f| matches!(f.data_type(), DataType::Timestamp(unit, _) if *unit != TimeUnit::Second),
        );
        column == "date_time" && whole_ms && self.generator.in_order()
    }

    async fn freeze(&mut self) -> Result<()> {
        match self.events {
            Some(_) => Ok(()),
            None => Err(Error::Config(format!(
                "table '{}': this nexmark source has no 'events' option, so it never ends and \
                 --trigger available-now would never finish; set 'events' (e.g. 'events' = '10000000') \
                 or run with an interval trigger",
                self.name
            ))),
        }
    }

    fn backlog(&self) -> Option<Backlog> {
        let events = |n| Amount {
            events: Some(n),
            ..Amount::default()
        };
        self.events.map(|total| Backlog {
            unread: events(total.saturating_sub(self.next)),
            read: events(self.next.saturating_sub(self.opened_at)),
        })
    }

    async fn plan_batch(&mut self) -> Result<Option<Value>> {
        let end = self.next.saturating_add(self.max_events);
        let end = match self.events {
            Some(total) => end.min(total),
            None => end,
        };
        if end <= self.next {
            return Ok(None);
        }
        let offset = NexmarkOffset {
            start: self.next,
            end,
        };
        Ok(Some(
            serde_json::to_value(offset).map_err(|e| Error::Checkpoint(e.to_string()))?,
        ))
    }

    async fn read_batch(&mut self, offset: &Value) -> Result<SourceBatch> {
        let offset = self.parse_offset(offset)?;
        let batches = generate_on_threads(&self.generator, offset.start, offset.end, self.threads)?;
        Ok(self.advance_past(&offset, batches))
    }

    fn progress_schema(&self) -> SchemaRef {
        Self::progress_schema()
    }

    fn check_remote(&self) -> Result<()> {
        Ok(())
    }

    /// Consecutive ranges of [`REMOTE_PART_EVENTS`] events: an event's
    /// fields depend on its number alone, so each range is generated on
    /// its own, anywhere.
    fn remote_parts(&self, offset: &Value) -> Result<Vec<Value>> {
        let offset = self.parse_offset(offset)?;
        let mut parts = Vec::new();
        let mut start = offset.start;
        while start < offset.end {
            let end = offset.end.min(start.saturating_add(REMOTE_PART_EVENTS));
            parts.push(
                serde_json::to_value(NexmarkOffset { start, end })
                    .map_err(|e| Error::Checkpoint(e.to_string()))?,
            );
            start = end;
        }
        Ok(parts)
    }

    fn assemble_remote(&mut self, offset: &Value, parts: Vec<Vec<RecordBatch>>) -> Result<SourceBatch> {
        let offset = self.parse_offset(offset)?;
        Ok(self.advance_past(&offset, parts.into_iter().flatten().collect()))
    }

    /// Every part is a range of events, generated whole.
    async fn remote_whole_parts(&mut self, offset: &Value) -> Result<Option<Vec<Value>>> {
        self.remote_parts(offset).map(Some)
    }

    fn cuts_whole_parts(&self) -> bool {
        true
    }

    fn record_remote(&mut self, offset: &Value, _rows: &[u64]) -> Result<Option<i64>> {
        let offset = self.parse_offset(offset)?;
        Ok(self.advance_past(&offset, Vec::new()).max_time_ms)
    }

    fn checkpoint(&mut self, full: bool) -> Result<Option<crate::exec::StateChange>> {
        if !full && !self.changed {
            return Ok(None);
        }
        self.changed = false;
        let batch = RecordBatch::try_new(
            Self::progress_schema(),
            vec![
                Arc::new(UInt8Array::from(vec![0u8])),
                Arc::new(UInt64Array::from(vec![self.next])),
            ],
        )?;
        Ok(Some(crate::exec::StateChange {
            upserts: vec![batch],
            deletes: vec![],
        }))
    }

    fn restore(&mut self, batches: &[RecordBatch]) -> Result<()> {
        let mut next = None;
        for b in batches {
            let col = b
                .column_by_name("next_event")
                .filter(|c| c.data_type() == &DataType::UInt64 && c.null_count() == 0)
                .ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "source '{}': its progress state has no next_event column; was it written by another connector?",
                        self.name
                    ))
                })?;
            if let Some(&n) = col.as_primitive::<UInt64Type>().values().last() {
                next = Some(n);
            }
        }
        self.next = next.ok_or_else(|| {
            Error::Checkpoint(format!("source '{}': its progress state is empty", self.name))
        })?;
        self.opened_at = self.next;
        self.changed = false;
        Ok(())
    }
}

/// Events below which a batch is not worth splitting over threads.
const MIN_EVENTS_PER_THREAD: u64 = 65_536;

/// Generates events `start..end` on up to `threads` threads, each making a
/// contiguous part of the range; the parts' batches are put back in order.
/// Every event is a function of its number, so the rows (and their order)
/// are the same whatever the thread count; only where batches split moves.
fn generate_on_threads(g: &TableGenerator, start: u64, end: u64, threads: usize) -> Result<Vec<RecordBatch>> {
    let events = end.saturating_sub(start);
    let parts = (threads as u64).min(events / MIN_EVENTS_PER_THREAD).max(1);
    if parts == 1 {
        return g.generate(start, end);
    }
    let step = events.div_ceil(parts);
    let ranges: Vec<(u64, u64)> = (0..parts)
        .map(|i| (start + i * step, (start + (i + 1) * step).min(end)))
        .collect();
    let results: Vec<Result<Vec<RecordBatch>>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&(a, b)| s.spawn(move || g.generate(a, b)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Config("the nexmark generator panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::compute::concat_batches;
    use weir_sql::Job;

    fn decl(columns: &str, options: &str) -> TableDecl {
        let job = Job::parse(&format!(
            "CREATE TABLE bid ({columns}) WITH ('connector' = 'nexmark'{options});
             CREATE TABLE out WITH ('connector' = 'files', 'path' = 'o/', 'format' = 'parquet');
             INSERT INTO out SELECT * FROM bid;"
        ))
        .unwrap();
        job.tables["bid"].clone()
    }

    const BID: &str = "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, \
                       date_time TIMESTAMP(3), extra VARCHAR";

    async fn drain(s: &mut NexmarkSource) -> (Vec<Value>, Vec<RecordBatch>) {
        let mut offsets = Vec::new();
        let mut rows = Vec::new();
        while let Some(o) = s.plan_batch().await.unwrap() {
            rows.extend(s.read_batch(&o).await.unwrap().batches);
            offsets.push(o);
        }
        (offsets, rows)
    }

    /// A batch's reported latest time is its `date_time` column's maximum,
    /// for each table and for batches with one row or none of the kind;
    /// shuffled events and times declared in seconds are not reported.
    #[tokio::test]
    async fn batches_report_their_latest_time_as_the_column_would() {
        for (table, columns) in [
            ("bid", BID),
            ("auction", "id BIGINT, date_time TIMESTAMP(3)"),
            ("person", "id BIGINT, date_time TIMESTAMP(6)"),
        ] {
            for per_batch in [1, 7, 49, 50, 51, 1000] {
                let d = decl(
                    columns,
                    &format!(
                        ", 'table' = '{table}', 'events' = '3000', 'max_events_per_batch' = '{per_batch}'"
                    ),
                );
                let mut s = NexmarkSource::open(&d).unwrap();
                assert!(s.knows_max_time("date_time"));
                assert!(!s.knows_max_time("id"));
                let mut empty = 0;
                while let Some(o) = s.plan_batch().await.unwrap() {
                    let read = s.read_batch(&o).await.unwrap();
                    let column = read
                        .batches
                        .iter()
                        .filter_map(|b| {
                            let ms =
                                crate::exec::window_assign::to_millis(b.column_by_name("date_time").unwrap())
                                    .unwrap();
                            datafusion::arrow::compute::max(
                                ms.as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>(),
                            )
                        })
                        .max();
                    assert_eq!(read.max_time_ms, column, "{table} at {o}");
                    empty += usize::from(column.is_none());
                }
                // Some one-event batches hold none of the kind.
                assert!(per_batch > 1 || empty > 0, "{table}");
            }
        }
        let shuffled = NexmarkSource::open(&decl(BID, ", 'out_of_order_group' = '7'")).unwrap();
        assert!(!shuffled.knows_max_time("date_time"));
        let seconds = NexmarkSource::open(&decl(&BID.replace("TIMESTAMP(3)", "TIMESTAMP(0)"), "")).unwrap();
        assert!(!seconds.knows_max_time("date_time"));
    }

    #[tokio::test]
    async fn batches_cover_the_events_in_order_and_resume_after_a_restore() {
        let d = decl(BID, ", 'events' = '2500', 'max_events_per_batch' = '1000'");
        let mut s = NexmarkSource::open(&d).unwrap();
        s.freeze().await.unwrap();
        let first = s.plan_batch().await.unwrap().unwrap();
        assert_eq!(first, serde_json::json!({"start": 0, "end": 1000}));
        let rows = s.read_batch(&first).await.unwrap().batches;
        assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 920);
        let events = |n| Amount {
            events: Some(n),
            ..Amount::default()
        };
        let backlog = s.backlog().unwrap();
        assert_eq!((backlog.unread, backlog.read), (events(1500), events(1000)));
        let state = s.checkpoint(false).unwrap().unwrap().upserts;
        assert!(
            s.checkpoint(false).unwrap().is_none(),
            "unchanged progress is not written again"
        );
        assert_eq!(
            s.checkpoint(true).unwrap().unwrap().upserts,
            state,
            "a snapshot has it too"
        );

        // A new process restores the progress and continues after it.
        let mut t = NexmarkSource::open(&d).unwrap();
        t.restore(&state).unwrap();
        let backlog = t.backlog().unwrap();
        assert_eq!(
            (backlog.unread, backlog.read),
            (events(1500), events(0)),
            "what an earlier process read is not this one's"
        );
        let (offsets, rest) = drain(&mut t).await;
        assert_eq!(t.backlog().unwrap().unread, events(0));
        assert_eq!(
            offsets,
            vec![
                serde_json::json!({"start": 1000, "end": 2000}),
                serde_json::json!({"start": 2000, "end": 2500})
            ]
        );
        assert_eq!(rest.iter().map(RecordBatch::num_rows).sum::<usize>(), 920 + 460);
        assert_eq!(state[0].schema().field(1).name(), "next_event");

        // Replaying an offset gives the same rows.
        let mut u = NexmarkSource::open(&d).unwrap();
        let again = u.read_batch(&first).await.unwrap().batches;
        assert_eq!(
            concat_batches(u.schema(), &again).unwrap(),
            concat_batches(s.schema(), &rows).unwrap()
        );
    }

    #[tokio::test]
    async fn only_the_columns_set_are_read() {
        let d = decl(BID, ", 'events' = '500'");
        let mut s = NexmarkSource::open(&d).unwrap();
        s.set_columns(vec![2, 5]);
        let (_, rows) = drain(&mut s).await;
        assert_eq!(rows[0].num_columns(), 2);
        assert_eq!(rows[0].schema().field(0).name(), "price");
        assert_eq!(rows[0].schema().field(1).name(), "date_time");
    }

    #[tokio::test]
    async fn an_unbounded_source_refuses_available_now_but_keeps_planning() {
        let d = decl(BID, ", 'max_events_per_batch' = '10'");
        let mut s = NexmarkSource::open(&d).unwrap();
        let e = s.freeze().await.unwrap_err().to_string();
        assert!(e.contains("no 'events' option") && e.contains("never"), "{e}");
        assert_eq!(s.backlog(), None, "an endless stream has no backlog to tell");
        for i in 0..3u64 {
            let o = s.plan_batch().await.unwrap().unwrap();
            assert_eq!(o, serde_json::json!({"start": i * 10, "end": i * 10 + 10}));
            s.read_batch(&o).await.unwrap();
        }
    }

    #[test]
    fn bad_options_and_columns_are_clear_errors() {
        let err = |columns: &str, options: &str| {
            NexmarkSource::open(&decl(columns, options))
                .unwrap_err()
                .to_string()
        };
        let e = err("auction BIGINT, when TIMESTAMP(3)", "");
        assert!(
            e.contains("column 'when' is not a column of the nexmark bid table"),
            "{e}"
        );
        let e = err("auction INT", "");
        assert!(e.contains("column 'auction' is declared as Int32"), "{e}");
        let e = err(BID, ", 'table' = 'bids'");
        assert!(
            e.contains("'table' must be 'person', 'auction' or 'bid', not 'bids'"),
            "{e}"
        );
        let e = err(BID, ", 'events' = '-5'");
        assert!(e.contains("'events' must be a positive whole number"), "{e}");
        let e = err(BID, ", 'rate' = 'fast'");
        assert!(e.contains("'rate' must be a positive number"), "{e}");
        let e = err(BID, ", 'out_of_order_group' = '1906'");
        assert!(e.contains("953"), "{e}");
        let e = err(BID, ", 'base_time' = 'yesterday'");
        assert!(e.contains("'base_time' must be a time"), "{e}");
        let e = err(BID, ", 'base_time' = '300000000000000'");
        assert!(
            e.contains("'base_time' must be a time within years 0000 to 9999"),
            "{e}"
        );
        let e = err(BID, ", 'base_time' = '-62167219200001'");
        assert!(e.contains("within years 0000 to 9999"), "{e}");
        assert!(NexmarkSource::open(&decl(BID, ", 'base_time' = '9999-12-31 23:59:59.999'")).is_ok());
        let e = err(BID, ", 'path' = 'x/'");
        assert!(e.contains("unknown option 'path'"), "{e}");
        // The table name picks the kind when 'table' is absent.
        let d = decl(BID, ", 'base_time' = '2020-01-01 00:00:00'");
        assert!(NexmarkSource::open(&d).is_ok());
    }

    #[test]
    fn rows_do_not_depend_on_the_thread_count() {
        let d = decl(BID, "");
        let s = NexmarkSource::open(&d).unwrap();
        let one = generate_on_threads(&s.generator, 1000, 301_000, 1).unwrap();
        let three = generate_on_threads(&s.generator, 1000, 301_000, 3).unwrap();
        assert!(three.len() > one.len(), "three parts end three batches early");
        assert_eq!(
            concat_batches(s.schema(), &one).unwrap(),
            concat_batches(s.schema(), &three).unwrap()
        );
    }

    /// On two threads the source makes batches of `batch_rows(2)` rows
    /// (see `crate::source::batch_rows`), whether the columns are set
    /// before or after the threads, with the rows of one thread.
    #[tokio::test]
    async fn batches_grow_with_the_threads_and_rows_do_not_change() {
        let d = decl(BID, ", 'events' = '400000', 'max_events_per_batch' = '400000'");
        let mut runs = Vec::new();
        for (threads, columns_first) in [(1, true), (2, true), (2, false)] {
            let mut s = NexmarkSource::open(&d).unwrap();
            if columns_first {
                s.set_columns(vec![0, 2, 4]);
                s.set_threads(threads);
            } else {
                s.set_threads(threads);
                s.set_columns(vec![0, 2, 4]);
            }
            let (_, rows) = drain(&mut s).await;
            let largest = rows.iter().map(RecordBatch::num_rows).max().unwrap();
            assert_eq!(largest, crate::source::batch_rows(threads), "{threads} threads");
            runs.push(concat_batches(&rows[0].schema(), &rows).unwrap());
        }
        assert_eq!(runs[0].num_rows(), 368_000);
        assert_eq!(runs[1], runs[0]);
        assert_eq!(runs[2], runs[0]);
    }

    #[test]
    fn restoring_foreign_state_is_refused() {
        let mut s = NexmarkSource::open(&decl(BID, "")).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("path", DataType::Utf8, false)]));
        let b = RecordBatch::try_new(
            schema,
            vec![Arc::new(datafusion::arrow::array::StringArray::from(vec!["a"]))],
        )
        .unwrap();
        let e = s.restore(&[b]).unwrap_err().to_string();
        assert!(e.contains("no next_event column"), "{e}");
    }
}
