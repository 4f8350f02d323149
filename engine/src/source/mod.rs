//! Sources: where a job's rows come from.
//!
//! The contract every source keeps (what exactly-once rests on):
//!
//! * `plan_batch` describes the next batch as a JSON *offset*. The driver
//!   writes that offset to the write-ahead log (`offsets/N.json`) before
//!   the batch's rows go anywhere. (A source may read ahead to plan, as the
//!   Kafka source does to learn where each partition's records end; what
//!   it read counts only once `read_batch` is given the offset.)
//! * `read_batch(offset)` returns exactly the rows the offset describes; the
//!   same offset read again (after a crash) returns the same rows in the same
//!   order, and the same bad records (see [`bad`]). It also advances the
//!   source's progress past them.
//! * `progress` is the source's position as state rows, checkpointed with
//!   the epoch; `restore` puts it back, so the next `plan_batch` continues
//!   after the last committed batch.

pub mod bad;
pub mod files;
pub mod formats;
pub mod kafka;
pub mod nexmark;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_sql::TableDecl;
use weir_storage::StoreOptions;

pub use crate::options::{SOURCE_OPTIONS, check_options, table_store_options};

use crate::{Error, Result};
use bad::BadRecord;

/// Rows per batch a source reads on one thread (DataFusion's batch size).
pub const BATCH_ROWS: usize = 8192;

/// Rows per batch a Parquet file or the Nexmark generator yields when the
/// job runs on `threads` threads: [`BATCH_ROWS`] times the threads.
///
/// Why: with more than one thread, a keyed operator's input goes through
/// DataFusion's hash `RepartitionExec`, which cuts each batch into one piece
/// per thread (about `rows / threads` rows). It passes a piece of more than
/// half its batch size (4,096 rows) on as it is, but coalesces smaller ones
/// into new batches, copying them; and a string column's values are then
/// copied one row at a time out of the buffer they shared (a Parquet
/// column's dictionary, the generator's channel and URL strings). Nexmark
/// q20 on two threads held 1.4 GB more that way than on one (3.6 GB), and
/// its page faults took more time than its work. Batches of `8192 *
/// threads` rows leave pieces of about 8,192 rows, which pass untouched.
/// The rows and their order do not change, only where batches split.
///
/// It is a mitigation, not a cure: a short piece (a file's last batch, or
/// rows a filter before the repartition thinned) is coalesced, and while
/// the coalescer holds fewer than 4,096 rows it draws the next large piece
/// in too. In q20 on two threads that copying is now under 0.1% of the
/// samples. A repartition of Weir's own that never copies would cure it.
pub fn batch_rows(threads: usize) -> usize {
    BATCH_ROWS * threads.max(1)
}

/// What a source read for an offset.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// The records that could not be read as rows, in the order read (only
    /// under `'on_error' = 'skip'` or `'dead_letter'`: under `'fail'` the
    /// first one is the read's error).
    pub bad: Vec<BadRecord>,
    /// The greatest value, in ms, of the timestamp column the source
    /// accepted in [`Source::knows_max_time`], among these rows (`None`
    /// when there are none or it accepted none).
    pub max_time_ms: Option<i64>,
    /// Each batch's greatest value (ms) of the source's watermark column, by
    /// the column's position in the batches, when the source computed them
    /// as it decoded (the files source, Parquet): the driver's watermark
    /// then does not read the column again. `None`: the driver computes
    /// them.
    pub time_maxima: Option<(usize, Vec<Option<i64>>)>,
}

/// An amount of input: files and their bytes (a folder), or events (a
/// generator); what a source cannot count is `None`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Amount {
    /// Files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
}

/// Input a source knows of: what it has not read yet, and what it has read
/// since it was opened (so a progress bar knows the whole).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Backlog {
    /// Not read yet. A file partly read counts whole until its last row is
    /// read.
    pub unread: Amount,
    /// Read to its end by this process.
    pub read: Amount,
}

/// Where a source tells what the user should know at once, between
/// epochs (a broker it cannot reach, and when it can again): the progress
/// output of `weir run` and the shell.
pub type Notice = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// A replayable source of rows.
#[async_trait]
pub trait Source: Send + Sync {
    /// The table's name.
    fn name(&self) -> &str;
    /// The declared schema.
    fn schema(&self) -> &SchemaRef;
    /// Restricts reading to these columns of the declared schema (sorted
    /// indices); batches then have `schema().project(columns)`. By default
    /// every column is read.
    fn set_columns(&mut self, columns: Vec<usize>);
    /// How many threads the source may use to read (decode, generate) a
    /// batch; the rows and their order must not depend on it. By default a
    /// source reads on one thread.
    fn set_threads(&mut self, _threads: usize) {}
    /// Where to report what happens between epochs (see [`Notice`]). By
    /// default a source has nothing to report.
    fn set_notice(&mut self, _notice: Notice) {}
    /// How far behind its input the source is, by unit (a Kafka topic's
    /// partition: `topic/partition`), as of its last plan: records there
    /// that it has not read. Empty when it cannot tell.
    fn lag(&self) -> Vec<(String, i64)> {
        Vec::new()
    }
    /// How the source's greatest event time is found, for EXPLAIN, when it
    /// is not simply the greatest over every row read (a Kafka source's is
    /// the lowest over its partitions). By default `None`.
    fn max_time_rule(&self) -> Option<String> {
        None
    }
    /// Whether the source can tell the greatest value of the timestamp
    /// column `column` among each batch's rows without reading the column
    /// (in [`SourceBatch::max_time_ms`]), the same value the column would
    /// give. The driver then computes the watermark from that and reads
    /// the column only for the queries that use it. By default, no.
    fn knows_max_time(&self, _column: &str) -> bool {
        false
    }
    /// Fixes the input to what is available now; later input waits for a
    /// later run (the available-now trigger).
    async fn freeze(&mut self) -> Result<()>;
    /// The next batch after the current progress, or `None` when there is
    /// no new input.
    async fn plan_batch(&mut self) -> Result<Option<Value>>;
    /// Plans the next batch now, while the driver still runs the epoch
    /// just read, and may start reading it in the background so that the
    /// next epoch finds its rows decoded. The driver then reads that offset
    /// next instead of planning again. `None` when the source does not plan
    /// ahead (the driver plans when the next epoch starts); `Some(None)`
    /// when it planned and has no input. Only a source whose next batch
    /// cannot depend on when it is planned does this (a folder listing
    /// frozen by the available-now trigger): reading ahead must not change
    /// what an epoch reads. Progress is untouched: `read_batch` advances it.
    async fn plan_ahead(&mut self) -> Result<Option<Option<Value>>> {
        Ok(None)
    }
    /// Reads the rows an offset describes and advances progress past them
    /// (and past the bad records among them).
    async fn read_batch(&mut self, offset: &Value) -> Result<SourceBatch>;
    /// What the source found while planning that the user should know
    /// (e.g. a file that changed after it was read), since the last call.
    fn take_warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Why its last planning found nothing because its input could not be
    /// reached (a Kafka broker down), if so: `--trigger once` fails with it
    /// rather than ending as if there were no input.
    fn out_of_reach(&self) -> Option<String> {
        None
    }
    /// The input it knew of when it last planned a batch (as of the
    /// available-now listing, under that trigger) and has not read yet;
    /// `None` when it cannot tell (an unbounded generator).
    fn backlog(&self) -> Option<Backlog> {
        None
    }
    /// The schema of the progress state; its first column keys a unit.
    fn progress_schema(&self) -> SchemaRef;
    /// The progress changed since the last call (`None`: unchanged), or all
    /// of it when `full`.
    fn checkpoint(&mut self, full: bool) -> Result<Option<crate::exec::StateChange>>;
    /// Restores progress from state rows.
    fn restore(&mut self, batches: &[RecordBatch]) -> Result<()>;
    /// Whether a cluster's executors can read this source's offsets (see
    /// [`crate::remote`]); an error says why not. By default they cannot.
    fn check_remote(&self) -> Result<()> {
        Err(Error::Config(format!(
            "source '{}' cannot be read on a cluster yet: only 'files' and 'nexmark' sources can",
            self.name()
        )))
    }
    /// An offset cut into parts that executors read independently, each
    /// with [`read_remote_part`], in this order.
    fn remote_parts(&self, _offset: &Value) -> Result<Vec<Value>> {
        self.check_remote().map(|()| Vec::new())
    }
    /// How many parts to read at first, when the offset may be complete
    /// before its last part (a row budget): the driver then reads the
    /// parts in waves, each twice the last, while
    /// [`Source::remote_wants_more`]. `None` (the default): all at once.
    fn remote_first_wave(&self) -> Option<usize> {
        None
    }
    /// Whether the offset needs more parts than the first ones, `read`.
    fn remote_wants_more(&self, _offset: &Value, _read: &[Vec<RecordBatch>]) -> Result<bool> {
        Ok(true)
    }
    /// What [`Source::read_batch`] would have returned for `offset`, from
    /// the rows its [`Source::remote_parts`] gave (each part's batches, in
    /// part order; the parts after those the waves needed are left out),
    /// and the progress advanced past them as that would.
    fn assemble_remote(&mut self, _offset: &Value, _parts: Vec<Vec<RecordBatch>>) -> Result<SourceBatch> {
        self.check_remote().map(|()| SourceBatch::default())
    }
    /// The offset cut into parts that are each read whole, for a query run
    /// where its parts are read ([`crate::remote::RemotePipeline`]): no row
    /// budget cuts a part after it is read, since its rows are then already
    /// written. `None` when the source cannot tell the parts' rows without
    /// reading them (the driver then reads the parts and runs the query).
    async fn remote_whole_parts(&mut self, _offset: &Value) -> Result<Option<Vec<Value>>> {
        Ok(None)
    }
    /// Whether [`Source::remote_whole_parts`] can cut its offsets (so that
    /// a query over it runs where its parts are read). By default, no.
    fn cuts_whole_parts(&self) -> bool {
        false
    }
    /// Advances progress past `offset`, read as the last
    /// [`Source::remote_whole_parts`] cut it, from the rows each part read;
    /// returns [`SourceBatch::max_time_ms`] as a local read would.
    fn record_remote(&mut self, _offset: &Value, _rows: &[u64]) -> Result<Option<i64>> {
        Err(Error::Runtime(format!(
            "source '{}' cannot record a read made elsewhere",
            self.name()
        )))
    }
    /// Each part's row count and greatest value of the timestamp column
    /// `column` (`None` without one), for the parts the last
    /// [`Source::remote_whole_parts`] cut, when the source can tell them
    /// exactly without reading the rows (as a read of each part,
    /// [`read_whole_part`], would give them or fail; the greatest time as
    /// `crate::epoch::max_millis` finds it). The driver then needs no read
    /// of its own before the query's to judge each part's rows late.
    /// `None` (the default) when it cannot.
    async fn remote_parts_known(&self, _column: Option<&str>) -> Result<Option<Vec<(u64, Option<i64>)>>> {
        Ok(None)
    }
}

/// Reads one part of an offset (from [`Source::remote_parts`]) of the
/// source `decl` declares: on an executor, with its own store options.
/// `columns` are the declared columns to read, as [`Source::set_columns`].
pub async fn read_remote_part(
    decl: &TableDecl,
    store_options: &StoreOptions,
    columns: Vec<usize>,
    part: &Value,
) -> Result<Vec<RecordBatch>> {
    read_part(decl, store_options, columns, part, false).await
}

/// [`read_remote_part`] of a part [`Source::remote_whole_parts`] cut, which
/// must give exactly the rows the source promised when it cut it (a
/// `files` part, those of its footer): an error otherwise.
pub async fn read_whole_part(
    decl: &TableDecl,
    store_options: &StoreOptions,
    columns: Vec<usize>,
    part: &Value,
) -> Result<Vec<RecordBatch>> {
    read_part(decl, store_options, columns, part, true).await
}

async fn read_part(
    decl: &TableDecl,
    store_options: &StoreOptions,
    columns: Vec<usize>,
    part: &Value,
    whole: bool,
) -> Result<Vec<RecordBatch>> {
    match decl.connector()? {
        "files" => {
            let mut source = files::FilesSource::open(decl, store_options)?;
            source.check_remote()?;
            source.set_columns(columns);
            let batches = source.read_batch(part).await?.batches;
            if whole {
                source.check_whole_part(part, &batches)?;
            }
            Ok(batches)
        }
        "nexmark" => {
            let mut source = nexmark::NexmarkSource::open(decl)?;
            source.set_columns(columns);
            Ok(source.read_batch(part).await?.batches)
        }
        other => Err(Error::Config(format!(
            "source '{}' (connector '{other}') cannot be read on a cluster yet: only 'files' and 'nexmark' sources can",
            decl.name
        ))),
    }
}

/// Opens the source a table declares.
pub fn open_source(decl: &TableDecl, store_options: &StoreOptions) -> Result<Box<dyn Source>> {
    if decl.connector()? != "kafka" {
        crate::options::refuse_metadata(decl)?;
    }
    match decl.connector()? {
        "files" => Ok(Box::new(files::FilesSource::open(decl, store_options)?)),
        "nexmark" => Ok(Box::new(nexmark::NexmarkSource::open(decl)?)),
        "kafka" => Ok(Box::new(kafka::KafkaSource::open(decl)?)),
        other => Err(Error::Config(format!(
            "table '{}': unknown connector '{other}' (supported: files, kafka, nexmark)",
            decl.name
        ))),
    }
}
