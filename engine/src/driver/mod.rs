//! The micro-batch driver: runs a job's pipelines epoch by epoch, with a
//! checkpoint that makes the output exactly-once across any crash.
//!
//! # One epoch, N
//!
//! ```text
//! 1. plan      each source describes its next batch (an offset)
//! 2. offsets/N written (create-if-absent): the write-ahead log   ── step "offsets-written"
//! 3. read      each source reads exactly its offset's rows
//! 4. run       each pipeline's plan over the rows, with the watermarks
//!              before and after them                           ── step "before-sink"
//! 5. stage     each sink stages its output for N               ── step "sink-staged"
//! 6. state     changed operator state and source progress
//!              written as state/<op>/N.parquet                 ── step "state-written"
//! 7. commit    commits/N created (create-if-absent)            ── step "committed"
//! 8. publish   each sink makes N's output visible              ── step "published"
//! ```
//!
//! Reading ahead: with the available-now trigger on several threads, a
//! folder of Parquet files plans N+1's batch once N's rows are read (step
//! 3) and starts decoding its files, so that the decoding overlaps N's
//! steps 4-8 (`Source::plan_ahead`). Nothing of N+1 is written before N
//! commits: step 2 of N+1 logs the batch planned ahead, and step 3 takes
//! the decoded rows only for exactly that offset. Planning leaves a
//! source's progress alone (only its read moves it), so a stop or a
//! failure in between drops the batch read ahead and loses nothing. The
//! cost is memory: one more epoch's decoded rows (tumble bench, 2 threads:
//! peak RSS 140-165 MB -> about 180 MB).
//!
//! # Recovery (when a job starts)
//!
//! ```text
//! C := newest commits/C (none: a new job)
//! restore state and source progress from the newest state files at or before C
//! restore watermarks from commits/C
//! publish C again (idempotent: a crash may have come between 7 and 8)
//! if offsets/C+1 exists: run epoch C+1 again with exactly that offset
//!                        (everything it wrote before the crash is rewritten identically)
//! continue with C+2
//! ```
//!
//! Nothing of an uncommitted epoch is visible: its sink output is staged
//! where a `*.parquet` glob does not look, and its state files are ignored on
//! restore. Everything of a committed epoch is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::physical_planner::PhysicalPlanner;
use datafusion::prelude::SessionConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weir_sql::{Job, JobKind, PipelinePlan, StreamPlanner, Watermark};
use weir_storage::location::Create;
use weir_storage::{
    Checkpoint, CommitEntry, Location, Metadata, OffsetsEntry, ShardOf, StateChains, StateKind, StateWrite,
    StoreOptions,
};

use crate::compat;
use crate::dead_letter::{self, DeadLetters};
use crate::epoch::{EpochInput, SourceRows};
use crate::exec::{EngineScans, StatefulOperator, StreamScanExec, WindowAssignExec, physical_planner};
use crate::sink::{LiveSender, PipelineSink, SideSink};
use crate::source::bad::BadRecord;
use crate::source::{Source, open_source, table_store_options};
use crate::{Error, Result};

mod epoch;
mod explain;
pub(crate) mod lookup;
mod open;
mod options;
mod recovery;
mod remote_epoch;
mod retention;

use epoch::SnapshotPolicy;
pub(crate) use open::{PhysicalPipeline, late_sink_tables, operator_inputs};
pub use options::{
    BatchProgress, EpochHooks, JobOptions, OperatorProgress, RunSummary, SinkProgress, SourceProgress, Step,
    Trigger,
};

struct SourceSlot {
    source: Box<dyn Source>,
    /// Its declaration (what a remote read sends to the executors).
    decl: weir_sql::TableDecl,
    watermark: Option<Watermark>,
    /// The declared columns read (every scan's, and the watermark's).
    columns: Arc<Vec<usize>>,
    /// `'watermark.idle_timeout'`, ms.
    idle_timeout_ms: Option<i64>,
    /// Processing time of the last epoch in which this source had rows.
    last_data_ms: i64,
}

struct Pipeline {
    index: usize,
    /// The statement, for messages (`` `INSERT INTO ...` (line 12) ``).
    statement: String,
    /// The incremental logical plan (for EXPLAIN).
    logical: datafusion::logical_expr::LogicalPlan,
    /// Whether the output is a changelog.
    changelog: bool,
    plan: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    sink: PipelineSink,
    /// Sinks receiving this pipeline's late rows (`'late.policy' = 'sink'`).
    late_sinks: Vec<SideSink>,
    sources: BTreeSet<String>,
    /// The bounded tables it joins with.
    lookups: BTreeSet<String>,
    operators: Vec<(String, Arc<dyn StatefulOperator>)>,
    /// Whether it can run on a cluster's executors when the job runs on
    /// one, or why not (see `remote_epoch`).
    on_executors: std::result::Result<(), &'static str>,
}

/// A job opened on its checkpoint, ready to run.
pub struct StreamingJob {
    checkpoint: Checkpoint,
    metadata: Metadata,
    sources: BTreeMap<String, SourceSlot>,
    /// Bounded tables (lookup joins), by name.
    lookups: BTreeMap<String, lookup::LookupTable>,
    pipelines: Vec<Pipeline>,
    /// Where sources send bad records (`'on_error' = 'dead_letter'`).
    dead_letters: DeadLetters,
    /// Per watermarked source, its watermark (ms; `i64::MIN` before any row).
    watermarks: BTreeMap<String, i64>,
    last_committed: Option<u64>,
    /// An uncommitted epoch to run again before anything else.
    pending: Option<(u64, OffsetsEntry)>,
    state: SessionState,
    hooks: Arc<dyn EpochHooks>,
    /// Where the input is read, when not here (`weir run --cluster`).
    remote: Option<Arc<dyn crate::remote::RemoteReader>>,
    /// When each state table next gets a snapshot.
    policies: HashMap<String, SnapshotPolicy>,
    /// The state files that restore each table as of the last commit
    /// (what it named); an epoch's checkpoint adds to them, and its commit
    /// names the result.
    state_chains: BTreeMap<String, StateChains>,
    /// Per pipeline, the highest watermark its operators were run to as of
    /// the last commit (the commit's `pipeline_watermarks`). A pipeline's
    /// watermark is the least of its active sources', so it can fall back
    /// when an idle source wakes; its operators never go back (a join's
    /// eviction, a window's emission), and a restore (after a restart, on
    /// a cluster's shard task) starts them from this, as they stood.
    pipeline_high: BTreeMap<usize, i64>,
    /// Operators whose state moved on without them: an epoch ran them on a
    /// cluster's executors, which wrote their state to the checkpoint.
    /// Restored from it before they next run here.
    behind: BTreeSet<String>,
    /// This job's hold on the checkpoint.
    lease: Arc<crate::lease::Lease>,
    /// How many committed epochs stay restorable.
    retain_epochs: u64,
    /// The epoch retention last pruned before, in this run (0: none yet):
    /// nothing older is left, so a retention that would keep from no
    /// later epoch has nothing to delete and lists nothing. (Listing a
    /// large `checkpoint.retain_epochs` every few epochs made each epoch
    /// slower as epochs piled up.)
    pruned_to: std::sync::atomic::AtomicU64,
    /// What opening the checkpoint decided that the user should know (a
    /// changed query continuing with its state, or starting afresh).
    notes: Vec<String>,
    /// Sources that start from the beginning although the checkpoint has a
    /// commit (changed sources under `fresh_state`): their watermark and
    /// progress are not restored.
    reset_sources: BTreeSet<String>,
    /// The job's window calls, by placeholder name (so messages and plans
    /// show the call, not `__weir_tvf_N`).
    tvfs: BTreeMap<String, weir_sql::preprocess::TvfCall>,
    /// Warnings for the next epoch's progress.
    warnings: Vec<String>,
    /// Whether the drained-checkpoint warning was given.
    warned_drained: bool,
    /// The epoch that drained the checkpoint, once looked up
    /// ([`StreamingJob::drain_epoch`]).
    drain_epoch: tokio::sync::OnceCell<Option<u64>>,
    /// The next epoch's batch of the sources that planned it ahead
    /// (`Source::plan_ahead`), while this epoch ran: taken by the next
    /// `plan_epoch` instead of planning again. An error in planning ahead
    /// waits there too, to fail the planning it stands for.
    ahead: BTreeMap<String, Result<Option<serde_json::Value>>>,
}

/// Where a job stands before its next epoch ([`StreamingJob::standing`]).
#[derive(Clone, Debug, Default)]
pub struct Standing {
    /// The job's watermark (the lowest of its sources'), `None` before any
    /// row; `i64::MAX` once drained.
    pub watermark_ms: Option<i64>,
    /// The job's watermark as progress shows it (`None` before any row).
    pub watermark: Option<String>,
    /// Each source's watermark.
    pub sources: Vec<(String, Option<i64>)>,
    /// Each stateful operator's rows held.
    pub operators: Vec<(String, u64)>,
}

/// The watermark for display: `None` before any row.
fn shown_watermark(ms: i64) -> (Option<i64>, Option<String>) {
    if ms == i64::MIN {
        return (None, None);
    }
    if ms == i64::MAX {
        return (Some(ms), Some("end of input".into()));
    }
    let text = chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.3f").to_string());
    (Some(ms), text)
}

impl StreamingJob {
    /// The checkpoint's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// What opening the checkpoint decided that the user should know.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The last committed epoch.
    pub fn last_committed(&self) -> Option<u64> {
        self.last_committed
    }

    /// Lets go of the checkpoint, so another run may take it at once. (A
    /// job dropped without this keeps it until its lease lapses, or until a
    /// run on the same host sees the process is gone.)
    pub async fn close(self) -> Result<()> {
        // The last epoch's published files, on the disk before the run
        // says it is done.
        let synced = self.sync_stores().await;
        let released = self.lease.release().await;
        synced.and(released)
    }

    /// Where the job stands before its next epoch (as restored from the
    /// checkpoint, on a restart): what metrics show until an epoch of this
    /// run ends, so that a restarted job with no new input still shows its
    /// watermark and its lag growing.
    pub fn standing(&self) -> Standing {
        let (watermark_ms, watermark) =
            shown_watermark(self.watermarks.values().copied().min().unwrap_or(i64::MIN));
        Standing {
            watermark_ms,
            watermark,
            sources: self
                .sources
                .keys()
                .map(|name| {
                    (
                        name.clone(),
                        self.watermarks.get(name).and_then(|&w| shown_watermark(w).0),
                    )
                })
                .collect(),
            operators: self
                .pipelines
                .iter()
                .flat_map(|p| &p.operators)
                .map(|(id, op)| (id.clone(), op.state_rows() as u64))
                .collect(),
        }
    }

    /// Rows held by all stateful operators.
    pub fn state_rows(&self) -> u64 {
        self.pipelines
            .iter()
            .flat_map(|p| &p.operators)
            .map(|(_, op)| op.state_rows() as u64)
            .sum()
    }

    /// Each sink table with the schema of the rows it receives, and its folder.
    pub fn sinks(&self) -> Vec<(String, SchemaRef, String)> {
        let mut out = Vec::new();
        for p in &self.pipelines {
            if let Some(f) = p.sink.files() {
                out.push((
                    f.table().to_string(),
                    Arc::clone(&p.schema),
                    f.location().url().to_string(),
                ));
            }
        }
        for s in self.side_sinks() {
            // A late table two queries send rows to, once.
            if out.iter().any(|(t, _, _)| t == s.table()) {
                continue;
            }
            out.push((
                s.table().to_string(),
                s.file_schema(),
                s.location().url().to_string(),
            ));
        }
        out
    }

    /// The tables the job reads or writes: its sources, bounded (lookup)
    /// tables and sinks, late-row and dead-letter tables among them.
    pub fn tables(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.sources.keys().cloned().collect();
        out.extend(self.lookups.keys().cloned());
        out.extend(self.sinks().into_iter().map(|(t, _, _)| t));
        out
    }

    /// The columns of a live query's rows (`None` for a saved job).
    pub fn live_schema(&self) -> Option<SchemaRef> {
        self.pipelines
            .iter()
            .find(|p| p.sink.is_live())
            .map(|p| Arc::clone(&p.schema))
    }
}

impl StreamingJob {
    /// The sinks fed beside the queries' output: late-row and dead-letter
    /// tables. They are published and pruned with the output.
    fn side_sinks(&self) -> impl Iterator<Item = &SideSink> {
        self.pipelines
            .iter()
            .flat_map(|p| &p.late_sinks)
            .chain(self.dead_letters.sinks())
    }
}

/// The state name of a source's progress.
pub(crate) fn source_state_name(source: &str) -> String {
    format!("source-{source}")
}

/// The writer id in a sink's file names: the checkpoint's query and the
/// pipeline (`-late` for its late-row sink).
pub(crate) fn sink_writer(query_id: &str, pipeline: usize, late: bool) -> String {
    format!(
        "{}-p{pipeline}{}",
        &query_id[..8],
        if late { "-late" } else { "" }
    )
}
