//! Reading an epoch's input elsewhere: on a cluster's executors
//! (`weir run --cluster`), through a [`RemoteReader`] the caller supplies
//! (the `cluster` crate's, on Ballista), so the engine never depends on a
//! cluster.
//!
//! The driver keeps the protocol: it plans each epoch's offsets, writes
//! them ahead, advances the watermarks, runs the operators, stages the
//! output, checkpoints and commits, as in a local run. Only the reading and
//! decoding of the input moves: the source cuts the epoch's offset into
//! parts ([`Source::remote_parts`], one per file for a folder), executors
//! read the parts ([`read_remote_part`]) from the source's own store, and
//! the source puts the rows back together in offset order
//! ([`Source::assemble_remote`]), giving exactly the rows, and the
//! progress, a local read of the offset gives. A replayed epoch is read the
//! same way, so the output does not depend on where an epoch was read.
//!
//!
//! A job whose every query is stateless (filters, projections and
//! functions over one source, into a files or blackhole sink) goes further
//! ([`RemoteReader::run_pipeline`]): each executor runs the query's plan
//! over its part and stages the part's output file in the sink folder
//! itself, and only a report per part comes back (rows in and out, the
//! part's greatest event time, the file it staged). The driver names the
//! files in the epoch's manifest and commits as before. The parts must
//! then be whole: [`Source::remote_whole_parts`] cuts the offset so that
//! no part is cut afterwards by a row budget (a Parquet folder counts rows
//! from the files' footers); a source that cannot tell without reading
//! runs the epoch the other way.
//!
//! [`Source::remote_whole_parts`]: crate::source::Source::remote_whole_parts
//! [`Source::remote_parts`]: crate::source::Source::remote_parts
//! [`Source::assemble_remote`]: crate::source::Source::assemble_remote
//! [`read_remote_part`]: crate::source::read_remote_part

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use serde_json::Value;
use weir_sql::TableDecl;
use weir_storage::ManifestFile;

use crate::{Error, Result};

/// One source's share of an epoch, to be read elsewhere.
#[derive(Clone)]
pub struct RemoteRead {
    /// The source's declaration (its options name the store; credentials
    /// among them travel to the executors, never into text).
    pub table: TableDecl,
    /// The declared columns to read, as [`crate::source::Source::set_columns`].
    pub columns: Vec<usize>,
    /// The offset's parts, from [`crate::source::Source::remote_parts`].
    pub parts: Vec<Value>,
}

/// A stateless query run over an epoch's parts where they are read.
#[derive(Clone)]
pub struct RemotePipeline {
    /// The source and the epoch's parts of it, each read whole
    /// ([`crate::source::Source::remote_whole_parts`]).
    pub read: RemoteRead,
    /// The query's plan: filters, projections and functions over one
    /// `StreamScanExec` of `read.table` (the pipeline's own plan, run on
    /// each part as if the part were the epoch's input).
    pub plan: Arc<dyn ExecutionPlan>,
    /// The epoch.
    pub epoch: u64,
    /// The epoch's processing time (from its offsets entry).
    pub processing_time_ms: i64,
    /// The position, among the columns read, of the source's watermark
    /// column, whose greatest value each part reports.
    pub time_column: Option<usize>,
    /// Where each part's output goes.
    pub sink: RemoteSink,
}

/// Where the parts of a [`RemotePipeline`] put their output.
#[derive(Clone)]
pub enum RemoteSink {
    /// Nowhere (`'connector' = 'blackhole'`): rows are counted.
    Blackhole,
    /// Parquet files staged in a sink folder, one per part with rows,
    /// under [`weir_storage::SinkLayout::staged_part_name`].
    Files {
        /// The folder's URL (absolute).
        folder: String,
        /// The writer, as in [`weir_storage::SinkLayout::new`].
        writer: String,
        /// The sink table's own store settings (its `s3.` options; they
        /// may be credentials: never shown).
        options: Vec<(String, String)>,
        /// The sink table's name (for errors).
        table: String,
        /// `'mode' = 'changelog'`: rows carry `_epoch` and `_seq` (see
        /// [`crate::sink::with_changelog_order`]).
        changelog: bool,
        /// The columns declared NOT NULL: a NULL in one fails the task.
        not_null: Vec<String>,
    },
}

impl std::fmt::Debug for RemoteSink {
    // The options may be credentials: their names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Blackhole => write!(f, "Blackhole"),
            Self::Files {
                folder,
                writer,
                options,
                table,
                changelog,
                not_null,
            } => f
                .debug_struct("Files")
                .field("folder", folder)
                .field("writer", writer)
                .field("options", &options.iter().map(|(k, _)| k).collect::<Vec<_>>())
                .field("table", table)
                .field("changelog", changelog)
                .field("not_null", not_null)
                .finish(),
        }
    }
}

/// What one part of a [`RemotePipeline`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartReport {
    /// The part's position in [`RemoteRead::parts`].
    pub part: usize,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// The greatest value of the watermark column among the rows read.
    pub max_time_ms: Option<i64>,
    /// The file staged (`None` without rows, or for a blackhole).
    pub file: Option<ManifestFile>,
}

/// A stateful query's epoch run on the executors as two stages (see the
/// `cluster` crate's `stages`): a task per part of each input reads it,
/// judges its rows' lateness from the watermark as of its first row and,
/// for an aggregate, aggregates them partially; a task per shard of the
/// operator restores the shard's state from the checkpoint, folds the rows
/// in (an aggregate, a Top-N) or joins them (a join's two inputs), emits,
/// stages its output in the sink and writes the shard's state change, each
/// file named after the task's attempt.
#[derive(Clone)]
pub struct RemoteAggregate {
    /// The operator's inputs in its order (a join's left, then right), each
    /// read and cut on its own.
    pub inputs: Vec<StageInput>,
    /// The plan from the operator up, each input of the operator a
    /// stand-in.
    pub upper: Arc<dyn ExecutionPlan>,
    /// The operator's state table (`p0-agg0`).
    pub operator_id: String,
    /// The checkpoint's URL (executors use their own store settings).
    pub checkpoint: String,
    /// The operator's state files as of the last commit (`None`: none).
    pub chains: Option<weir_storage::StateChains>,
    /// The pipeline's watermark of the last commit.
    pub watermark_in: i64,
    /// Write each shard's snapshot, not its delta.
    pub full: bool,
    /// The epoch.
    pub epoch: u64,
    /// The epoch's processing time.
    pub processing_time_ms: i64,
    /// The pipeline's watermark after the epoch.
    pub watermark_out: i64,
    /// Where the output goes.
    pub sink: RemoteSink,
    /// The operator's side table (an update aggregate's distinct values),
    /// restored and written beside its own.
    pub side: Option<SideTable>,
}

/// One input of a [`RemoteAggregate`]'s operator: what its first stage
/// reads and runs.
#[derive(Clone)]
pub struct StageInput {
    /// The source and the epoch's parts of it, each read whole.
    pub read: RemoteRead,
    /// The query's plan below the operator's shuffle (scan, window
    /// assignment, the partial aggregate).
    pub prefix: Arc<dyn ExecutionPlan>,
    /// The shuffle between the stages: a hash on the operator's keys into
    /// its shards (`None`: every row to one shard).
    pub shuffle: Option<datafusion::physical_plan::Partitioning>,
    /// Each part's source watermark as of its first row: the watermark
    /// before the epoch, raised by the greatest event time of the parts
    /// before it, less the delay.
    pub watermarks_before: Vec<i64>,
}

/// A stateful operator's second state table (see
/// [`crate::exec::StatefulOperator::side_table`]) in a [`RemoteAggregate`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SideTable {
    /// Its state table (`p0-agg0-values`).
    pub operator_id: String,
    /// Its files as of the last commit (`None`: none).
    pub chains: Option<weir_storage::StateChains>,
    /// Write each shard's snapshot, not its delta.
    pub full: bool,
}

/// What one shard's task of a [`RemoteAggregate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardReport {
    /// The shard.
    pub shard: usize,
    /// The attempt whose files these are.
    pub attempt: String,
    /// Rows written.
    pub rows_out: u64,
    /// Rows the shard's state holds after the epoch.
    pub state_rows: u64,
    /// The side table's state file written, as `state` (`None`: no change
    /// or no side table).
    pub side_state: Option<(weir_storage::StateKind, u64)>,
    /// Rows the shard's side table holds after the epoch.
    pub side_rows: u64,
    /// Late rows of the parts whose counts reached this shard.
    pub late_rows: u64,
    /// The sink file: final name, staged name, bytes (`None` without rows
    /// or for a blackhole).
    pub file: Option<(String, String, u64)>,
    /// The state file written: its kind and bytes (`None`: no change).
    pub state: Option<(weir_storage::StateKind, u64)>,
}

/// Reads the parts of an offset somewhere else.
#[async_trait]
pub trait RemoteReader: Send + Sync {
    /// Each part's batches, in part order (an empty list for a part
    /// without rows), each part's in the order it was read.
    async fn read(&self, read: RemoteRead) -> Result<Vec<Vec<RecordBatch>>>;
    /// Whether it can run whole stateless queries ([`Self::run_pipeline`]).
    fn runs_pipelines(&self) -> bool {
        false
    }
    /// Runs a stateless query over each part of an epoch where the part is
    /// read, staging its output there; one report per part, in part order.
    async fn run_pipeline(&self, _job: RemotePipeline) -> Result<Vec<PartReport>> {
        Err(Error::Config(format!("{} runs no queries", self.describe())))
    }
    /// Runs a windowed aggregate's epoch on the executors; one report per
    /// shard, in shard order.
    async fn run_aggregate(&self, _job: RemoteAggregate) -> Result<Vec<ShardReport>> {
        Err(Error::Config(format!("{} runs no queries", self.describe())))
    }
    /// Where it reads, for messages (`the cluster at http://...`).
    fn describe(&self) -> String;
}

// The declarations' options may hold credentials: a plan's Debug names the
// source only.
impl std::fmt::Debug for RemoteRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRead")
            .field("table", &self.table.name)
            .field("columns", &self.columns)
            .field("parts", &self.parts.len())
            .finish()
    }
}

impl std::fmt::Debug for RemotePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePipeline")
            .field("read", &self.read)
            .field("epoch", &self.epoch)
            .field("sink", &self.sink)
            .finish()
    }
}

impl std::fmt::Debug for RemoteAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAggregate")
            .field("read", &self.inputs.iter().map(|i| &i.read).collect::<Vec<_>>())
            .field("operator_id", &self.operator_id)
            .field("epoch", &self.epoch)
            .field("sink", &self.sink)
            .finish()
    }
}
