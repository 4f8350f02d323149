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

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::max;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimestampMillisecondType};
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::physical_planner::PhysicalPlanner;
use datafusion::prelude::SessionConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use weir_sql::{Job, JobKind, PipelinePlan, StreamPlanner, TableDecl, Watermark};
use weir_storage::location::Create;
use weir_storage::{
    Checkpoint, Location, Metadata, OperatorRecord, SinkLayout, SinkRecord, SourceRecord, StateKind,
    StateWrite, StoreOptions,
};

use crate::compat::{self, Records};
use crate::dead_letter::{self, DeadLetters};
use crate::epoch::{EpochInput, SourceRows};
use crate::exec::window_assign::to_millis;
use crate::exec::{
    EngineScans, SessionAggregateExec, StatefulOperator, StreamScanExec, UpdateAggregateExec,
    WindowAggregateExec, WindowAssignExec, physical_planner,
};
use crate::sink::{LiveSender, PipelineSink, SideSink};
use crate::source::bad::BadRecord;
use crate::source::{Source, open_source, table_store_options};
use crate::{Error, Result};

/// When epochs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Process the input available at start, in as many epochs as the
    /// per-batch limits need, then stop.
    AvailableNow,
    /// Run at most one epoch, then stop.
    Once,
    /// Keep running; start an epoch at most this often when there is input.
    Interval(Duration),
}

/// A named point in the epoch protocol (for fault injection in tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `offsets/N` is written; nothing read yet.
    OffsetsWritten,
    /// Output computed; the sinks are about to be written.
    BeforeSink,
    /// A sink's data file is written, its manifest not yet.
    MidSinkWrite,
    /// The sinks have staged their output.
    SinkStaged,
    /// State is written; the commit is next.
    StateWritten,
    /// `commits/N` is written; output not yet published.
    Committed,
    /// The epoch is complete.
    Published,
}

impl Step {
    /// Every step, in protocol order.
    pub const ALL: [Step; 7] = [
        Step::OffsetsWritten,
        Step::BeforeSink,
        Step::MidSinkWrite,
        Step::SinkStaged,
        Step::StateWritten,
        Step::Committed,
        Step::Published,
    ];

    /// The step's name (`offsets-written`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Step::OffsetsWritten => "offsets-written",
            Step::BeforeSink => "before-sink",
            Step::MidSinkWrite => "mid-sink-write",
            Step::SinkStaged => "sink-staged",
            Step::StateWritten => "state-written",
            Step::Committed => "committed",
            Step::Published => "published",
        }
    }

    /// The step with this name.
    pub fn from_name(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Called at each step of each epoch (tests inject faults here). An error
/// stops the epoch where it is, as a crash would: nothing is cleaned up, and
/// the next open of the job recovers.
pub trait EpochHooks: Send + Sync {
    /// The epoch reached a step.
    fn reached(&self, step: Step, epoch: u64) -> Result<()>;
}

struct NoHooks;
impl EpochHooks for NoHooks {
    fn reached(&self, _: Step, _: u64) -> Result<()> {
        Ok(())
    }
}

/// How to open a job.
pub struct JobOptions {
    /// The checkpoint's location (path or URL).
    pub checkpoint: String,
    /// Settings for remote stores (credentials, endpoints).
    pub store_options: StoreOptions,
    /// Called at each step of each epoch.
    pub hooks: Arc<dyn EpochHooks>,
    /// User-defined scalar functions the job may call.
    pub udfs: Vec<ScalarUDF>,
    /// User-defined aggregate functions the job may call (in windows too:
    /// their accumulator state is checkpointed like any other).
    pub udafs: Vec<AggregateUDF>,
    /// How many committed epochs stay restorable (older logs, state files
    /// and sink manifests are deleted).
    pub retain_epochs: u64,
    /// Makes the job a live query: its text is declarations and one bare
    /// `SELECT`, whose committed output is sent here instead of to a sink.
    pub live: Option<LiveSender>,
    /// Who runs the job (for the checkpoint's lease).
    pub owner: crate::LeaseOwner,
    /// How long the lease lasts without renewal (renewed every third of it).
    pub lease_ttl: Duration,
    /// When the query changed in a way its checkpointed state cannot follow
    /// (see `compat`), start it with empty operator state instead of
    /// refusing to run. Sources that did not change keep their progress.
    pub fresh_state: bool,
    /// The job is opened only to be explained, never run: whether another
    /// query owns its sinks' folders is not checked.
    pub explain_only: bool,
    /// Threads a job may use (`weir run --threads`): DataFusion's target
    /// partitions, the partitions of each source scan, and the threads a
    /// source may read with. Stateless operators run on that many threads,
    /// and keyed aggregates split their state into that many shards
    /// (`exec::shard`).
    pub threads: usize,
}

impl JobOptions {
    /// Options with a checkpoint and nothing else.
    pub fn new(checkpoint: impl Into<String>) -> Self {
        Self {
            checkpoint: checkpoint.into(),
            store_options: StoreOptions::default(),
            hooks: Arc::new(NoHooks),
            udfs: Vec::new(),
            udafs: Vec::new(),
            retain_epochs: 20,
            live: None,
            owner: crate::LeaseOwner::this_process("localhost"),
            lease_ttl: Duration::from_secs(30),
            fresh_state: false,
            explain_only: false,
            threads: 1,
        }
    }
}

/// What one epoch did, as reported on stderr and in `--progress-json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BatchProgress {
    /// The epoch.
    pub epoch: u64,
    /// Whether this was an uncommitted epoch run again after a restart.
    pub replayed: bool,
    /// Whether this was the drain epoch that closes every window.
    pub drain: bool,
    /// Rows read from sources.
    pub rows_in: u64,
    /// Rows written to sinks.
    pub rows_out: u64,
    /// Late rows dropped.
    pub late_rows: u64,
    /// Bad input records set aside (`'on_error'` skip or dead_letter); not
    /// in `rows_in`.
    #[serde(default)]
    pub bad_rows: u64,
    /// Rows read per second of batch time.
    pub rows_per_sec: f64,
    /// The job's watermark after the epoch (ms since the epoch; the lowest
    /// source watermark), if any source has one yet.
    pub watermark_ms: Option<i64>,
    /// The same, as an ISO 8601 timestamp.
    pub watermark: Option<String>,
    /// Rows of operator state after the epoch.
    pub state_rows: u64,
    /// Bytes of state written this epoch.
    pub state_bytes: u64,
    /// Wall time of the epoch, ms.
    pub batch_ms: f64,
    /// Of which writing state and the commit, ms.
    #[serde(default)]
    pub checkpoint_ms: f64,
    /// Whether a query read rows this epoch and every one of them was late.
    #[serde(default)]
    pub all_late: bool,
    /// What the user should know about this epoch (a file that changed
    /// after it was read, input read by a drained checkpoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// Epochs run.
    pub epochs: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Late rows dropped.
    pub late_rows: u64,
    /// Bad input records set aside.
    pub bad_rows: u64,
    /// The last committed epoch.
    pub last_epoch: Option<u64>,
    /// Warnings that came after the last epoch (none ran to show them).
    pub warnings: Vec<String>,
    /// Whether the run ended because it was told to stop, before its
    /// trigger was done (available-now input left, a drain not run).
    pub stopped: bool,
}

/// `offsets/N.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct OffsetsEntry {
    /// Per source, the offset of what this epoch reads.
    sources: BTreeMap<String, Value>,
    /// Per watermarked source, its watermark before this epoch (ms).
    watermarks_in: BTreeMap<String, i64>,
    /// The drain epoch: no input; every watermark moves to the end of time.
    drain: bool,
    /// Processing time when the epoch was planned (ms since the Unix epoch):
    /// what processing-time features (state TTL) use, so a replay agrees.
    #[serde(default)]
    processing_time_ms: i64,
    /// Sources idle this epoch (`'watermark.idle_timeout'`): they do not
    /// hold back the watermark of queries that read other sources too.
    #[serde(default)]
    idle: BTreeSet<String>,
}

/// `commits/N.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct CommitEntry {
    /// Per watermarked source, its watermark after this epoch (ms).
    watermarks: BTreeMap<String, i64>,
    rows_in: u64,
    rows_out: u64,
    late_rows: u64,
    /// Bad input records set aside this epoch.
    #[serde(default)]
    bad_rows: u64,
    committed_at: String,
    /// Per source, the processing time of its last epoch with rows (for
    /// idleness).
    #[serde(default)]
    last_data_ms: BTreeMap<String, i64>,
    /// Per pipeline, the watermark its operators emitted up to (before
    /// their own lag).
    #[serde(default)]
    pipeline_watermarks: BTreeMap<usize, i64>,
}

struct SourceSlot {
    source: Box<dyn Source>,
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
    operators: Vec<(String, Arc<dyn StatefulOperator>)>,
}

/// A job opened on its checkpoint, ready to run.
pub struct StreamingJob {
    checkpoint: Checkpoint,
    metadata: Metadata,
    sources: BTreeMap<String, SourceSlot>,
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
    /// When each state table next gets a snapshot.
    policies: HashMap<String, SnapshotPolicy>,
    /// This job's hold on the checkpoint.
    lease: Arc<crate::lease::Lease>,
    /// How many committed epochs stay restorable.
    retain_epochs: u64,
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
}

/// How often (in epochs) old checkpoint files are cleaned up.
const RETENTION_EVERY: u64 = 10;

/// When a state table gets a full snapshot instead of a delta: first after
/// the process starts, after many deltas, or once the deltas since the last
/// snapshot add up to more than it (the next restore would read more deltas
/// than state).
#[derive(Default)]
struct SnapshotPolicy {
    written: bool,
    snapshot_bytes: u64,
    delta_bytes: u64,
    deltas: u32,
}

impl SnapshotPolicy {
    const MAX_DELTAS: u32 = 64;

    fn full(&self) -> bool {
        !self.written
            || self.deltas >= Self::MAX_DELTAS
            || self.delta_bytes > self.snapshot_bytes.max(64 * 1024)
    }

    fn record(&mut self, kind: StateKind, bytes: u64) {
        match kind {
            StateKind::Snapshot => {
                *self = SnapshotPolicy {
                    written: true,
                    snapshot_bytes: bytes,
                    delta_bytes: 0,
                    deltas: 0,
                }
            }
            StateKind::Delta => {
                self.deltas += 1;
                self.delta_bytes += bytes;
            }
        }
    }
}

fn kind_of(full: bool) -> StateKind {
    if full {
        StateKind::Snapshot
    } else {
        StateKind::Delta
    }
}

/// The restored rows must have the columns the operator keeps now.
fn check_state_columns(expected: &SchemaRef, found: &SchemaRef) -> std::result::Result<(), String> {
    let e: Vec<&DataType> = expected.fields().iter().map(|f| f.data_type()).collect();
    let f: Vec<&DataType> = found.fields().iter().map(|f| f.data_type()).collect();
    if e != f {
        return Err(format!(
            "the state has columns {:?}, but the operator keeps {:?}",
            found.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
            expected.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
        ));
    }
    Ok(())
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
    /// Parses and plans a job, opens its sources, sinks and checkpoint, and
    /// recovers from the checkpoint.
    pub async fn open(sql: &str, options: JobOptions) -> Result<StreamingJob> {
        let job = match options.live {
            Some(_) => Job::parse_as(sql, JobKind::Live)?,
            None => Job::parse(sql)?,
        };
        let threads = options.threads.max(1);
        let config = SessionConfig::new().with_target_partitions(threads);
        let scans = EngineScans { partitions: threads };
        let planner = StreamPlanner::new(&job, Some(Arc::new(scans)), config)?;
        for f in &options.udfs {
            planner.context().register_udf(f.clone());
        }
        for f in &options.udafs {
            planner.context().register_udaf(f.clone());
        }
        let plans = planner.plan().await?;
        let state = planner.context().state();

        let loc = Location::open(&options.checkpoint, &options.store_options, Create::Yes)
            .map_err(|e| Error::Config(format!("checkpoint: {e}")))?;
        let checkpoint = Checkpoint::new(loc);
        // Commits and the lease rely on create-if-absent: refuse a store
        // that would silently overwrite, before anything is written to it.
        checkpoint.location().verify_create_if_absent().await?;
        // The lease comes first: claiming may rewrite the metadata and, with
        // `fresh_state`, delete state, which only the checkpoint's one
        // writer may do.
        let lease = crate::lease::Lease::acquire(&checkpoint, &options.owner, options.lease_ttl).await?;

        let mut physical = Vec::new();
        for p in plans {
            let plan = physical_planner().create_physical_plan(&p.plan, &state).await?;
            let operators = stateful_operators(p.index, &plan);
            physical.push((p, plan, operators));
        }
        // Where bad input records go, checked before the checkpoint is
        // claimed (the dead-letter sinks are part of its records).
        let bad_routes = {
            let sources: BTreeSet<String> = physical
                .iter()
                .flat_map(|(p, _, _)| p.sources.iter().cloned())
                .collect();
            let written: BTreeSet<String> = physical
                .iter()
                .flat_map(|(p, plan, _)| {
                    let late = late_sink_tables(plan).into_iter().map(|(t, _)| t);
                    p.sink.iter().map(|d| d.name.clone()).chain(late)
                })
                .collect();
            dead_letter::routes(&job, &sources, &written)
        };
        let bad_routes = match bad_routes {
            // A live query is a look at a stream: it writes no table, so its
            // bad records (and late rows) are counted, not kept.
            Ok(_) if options.live.is_some() => BTreeMap::new(),
            Ok(r) => r,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e);
            }
        };
        // The folders the job writes, checked before the checkpoint is
        // claimed, so a refused job changes nothing.
        if let Err(e) = check_job_folders(&job, &physical, &bad_routes, &checkpoint, &options).await {
            let _ = lease.release().await;
            return Err(e);
        }
        let claimed = Self::claim_checkpoint(&checkpoint, &job, &options, &|query_id| {
            job_records(&job, &physical, &bad_routes, query_id, &options.store_options)
        })
        .await;
        let (metadata, notes, reset_sources) = match claimed {
            Ok(c) => c,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e);
            }
        };

        let mut sources = BTreeMap::new();
        for (p, _, _) in &physical {
            for name in &p.sources {
                if sources.contains_key(name) {
                    continue;
                }
                let decl = &job.tables[name];
                sources.insert(
                    name.clone(),
                    SourceSlot {
                        source: open_source(decl, &options.store_options)?,
                        watermark: decl.watermark.clone(),
                        columns: Arc::new(Vec::new()),
                        idle_timeout_ms: idle_timeout(decl)?,
                        // Until it has rows, a source is idle from the start.
                        last_data_ms: chrono::Utc::now().timestamp_millis(),
                    },
                );
            }
        }

        let mut pipelines = Vec::new();
        for (p, plan, operators) in physical {
            let schema = plan.schema();
            let writer = sink_writer(&metadata.query_id, p.index, false);
            let sink = PipelineSink::open(
                p.sink.as_ref(),
                &writer,
                &options.store_options,
                options.live.as_ref(),
            )?;
            let mut late_sinks: Vec<SideSink> = Vec::new();
            let late_tables = if options.live.is_some() {
                Vec::new()
            } else {
                late_sink_tables(&plan)
            };
            for (table, schema) in late_tables {
                if let Some(existing) = late_sinks.iter().find(|l| l.table() == table) {
                    if existing.schema().fields() != schema.fields() {
                        return Err(Error::Config(format!(
                            "late sink '{table}' would receive rows of two different shapes in one query"
                        )));
                    }
                    continue;
                }
                let decl = job
                    .tables
                    .get(&table)
                    .ok_or_else(|| Error::Config(format!("late sink '{table}' is not a declared table")))?;
                let writer = sink_writer(&metadata.query_id, p.index, true);
                late_sinks.push(SideSink::open(decl, &writer, &options.store_options, schema)?);
            }
            pipelines.push(Pipeline {
                index: p.index,
                statement: p.statement.clone(),
                logical: p.plan.clone(),
                changelog: p.changelog,
                plan,
                schema,
                sink,
                late_sinks,
                sources: p.sources,
                operators,
            });
        }

        let dead_letters = DeadLetters::open(
            &job,
            bad_routes,
            &dead_letter::writer(&metadata.query_id),
            &options.store_options,
        )?;
        // Each sink folder is this query's: recorded before its first output.
        let file_sinks = pipelines
            .iter()
            .filter_map(|p| p.sink.files())
            .chain(
                pipelines
                    .iter()
                    .flat_map(|p| p.late_sinks.iter().map(SideSink::files)),
            )
            .chain(dead_letters.sinks().iter().map(SideSink::files));
        for sink in file_sinks.filter(|_| !options.explain_only) {
            sink.set_owner(checkpoint.location().url(), &metadata.query_id)
                .await?;
        }

        // Sources read only the columns some scan needs (and the watermark's).
        let mut needed: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for p in &pipelines {
            scan_columns(&p.plan, &mut needed);
        }
        for (name, slot) in sources.iter_mut() {
            let mut cols = needed.remove(name).unwrap_or_default();
            if let Some(w) = &slot.watermark {
                let column = slot.source.schema().index_of(&w.column)?;
                // A source that knows each batch's greatest event time (a
                // generator) need not make the column for the watermark.
                if !slot.source.knows_max_time(&w.column) {
                    cols.insert(column);
                }
            }
            if cols.is_empty() {
                cols.insert(0); // COUNT(*) alone still needs the rows
            }
            let cols: Vec<usize> = cols.into_iter().collect();
            slot.source.set_columns(cols.clone());
            slot.source.set_threads(threads);
            slot.columns = Arc::new(cols);
        }

        let watermarks = sources
            .iter()
            .filter(|(_, s)| s.watermark.is_some())
            .map(|(n, _)| (n.clone(), i64::MIN))
            .collect();
        let mut job = StreamingJob {
            checkpoint,
            metadata,
            sources,
            pipelines,
            dead_letters,
            watermarks,
            last_committed: None,
            pending: None,
            state,
            hooks: options.hooks,
            policies: HashMap::new(),
            lease,
            retain_epochs: options.retain_epochs.max(1),
            notes,
            reset_sources,
            tvfs: job.tvfs.clone(),
            warnings: Vec::new(),
            warned_drained: false,
        };
        if let Err(e) = job.recover().await {
            let _ = job.lease.release().await;
            return Err(match e {
                // Damage: say how to look at it and how to get past it.
                Error::Storage(
                    e @ (weir_storage::Error::Corrupt { .. } | weir_storage::Error::FutureVersion { .. }),
                ) => Error::Checkpoint(format!(
                    "{e}\n(`weir checkpoint inspect {loc}` lists what is damaged; \
                     `weir checkpoint rollback {loc} --to N` goes back to a good epoch)",
                    loc = job.checkpoint.location()
                )),
                e => e,
            });
        }
        Ok(job)
    }

    /// Creates the checkpoint's metadata, or checks an existing checkpoint
    /// against this job under the compatibility rules of `compat`. Returns
    /// the metadata, notes for the user, and the sources that restart from
    /// the beginning.
    async fn claim_checkpoint(
        checkpoint: &Checkpoint,
        job: &Job,
        options: &JobOptions,
        records: &(dyn Fn(&str) -> Result<Records> + Sync),
    ) -> Result<(Metadata, Vec<String>, BTreeSet<String>)> {
        let fingerprint = job.fingerprint()?;
        let Some(existing) = checkpoint.read_metadata().await? else {
            let query_id = uuid::Uuid::new_v4().simple().to_string();
            let r = records(&query_id)?;
            let metadata = Metadata {
                version: weir_storage::FORMAT_VERSION,
                query_id,
                sql: job.redacted_sql(),
                fingerprint,
                created_at: chrono::Utc::now().to_rfc3339(),
                weir_version: env!("CARGO_PKG_VERSION").to_string(),
                operators: r.operators,
                sources: r.sources,
                sinks: r.sinks,
            };
            return match checkpoint.create_metadata(&metadata).await {
                Ok(()) => Ok((metadata, Vec::new(), BTreeSet::new())),
                // Another process created it first: check against theirs.
                Err(weir_storage::Error::AlreadyExists { .. }) => {
                    Box::pin(Self::claim_checkpoint(checkpoint, job, options, records)).await
                }
                Err(e) => Err(e.into()),
            };
        };
        let new = records(&existing.query_id)?;
        let old = Records::of_metadata(&existing);
        let same_text = existing.fingerprint == fingerprint;
        let differences = match &old {
            Some(old) => compat::incompatibilities(old, &new),
            None if same_text => Vec::new(),
            None => vec![
                "the checkpoint was made by an earlier Weir that did not record its operators, \
                 so a changed query cannot be checked against it"
                    .to_string(),
            ],
        };
        let unchanged = old.as_ref().is_some_and(|o| {
            o.operators == new.operators && o.sources == new.sources && o.sinks == new.sinks
        });
        if same_text && unchanged {
            return Ok((existing, Vec::new(), BTreeSet::new()));
        }
        let updated = Metadata {
            sql: job.redacted_sql(),
            fingerprint,
            operators: new.operators.clone(),
            sources: new.sources.clone(),
            sinks: new.sinks.clone(),
            ..existing.clone()
        };
        let mut notes = Vec::new();
        let mut reset = BTreeSet::new();
        if differences.is_empty() {
            if !same_text {
                notes.push(format!(
                    "the query differs from the one that made the checkpoint at {}, but its stateful \
                     operators, sources and sinks are the same: continuing with its state",
                    checkpoint.location()
                ));
            }
        } else if !options.fresh_state {
            let first = existing
                .sql
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("--"))
                .unwrap_or("")
                .to_string();
            return Err(Error::Checkpoint(format!(
                "the checkpoint at {} was made by a different query (it begins `{first}`), and its state \
                 cannot be carried over:\n  - {}\nRun with --fresh-state to start this query with empty \
                 state (sources that did not change keep their progress), give it its own --checkpoint, \
                 or run the original query. The rules are in the README, under \"Changing a query\".",
                checkpoint.location(),
                differences.join("\n  - ")
            )));
        } else {
            let kept = compat::kept_sources(old.as_ref(), &new);
            let dropped = reset_for_fresh_state(checkpoint, &existing, &kept, &options.store_options).await?;
            reset = new
                .sources
                .iter()
                .map(|s| s.name.clone())
                .filter(|n| !kept.contains(n))
                .collect();
            notes.push(format!(
                "--fresh-state: starting the changed query with empty state ({}); {}; {}",
                differences.join("; "),
                if dropped.is_empty() {
                    "there was no operator state to drop".to_string()
                } else {
                    format!("dropped the state of {}", dropped.join(", "))
                },
                if kept.is_empty() {
                    "every source starts from the beginning".to_string()
                } else {
                    format!(
                        "{} keep their progress",
                        kept.iter()
                            .map(|k| format!("'{k}'"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ));
        }
        checkpoint.replace_metadata(&updated).await?;
        Ok((updated, notes, reset))
    }

    async fn recover(&mut self) -> Result<()> {
        let committed = self.checkpoint.commits.latest().await?;
        if let Some(c) = committed {
            let entry: CommitEntry = self.checkpoint.commits.read(c).await?.ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{} vanished while reading it",
                    self.checkpoint.commits.url(c)
                ))
            })?;
            for (source, wm) in entry.watermarks {
                if self.reset_sources.contains(&source) {
                    continue;
                }
                if let Some(w) = self.watermarks.get_mut(&source) {
                    *w = wm;
                }
            }
            for (name, slot) in self.sources.iter_mut() {
                if let Some(restored) = self.checkpoint.restore_state(&source_state_name(name), c).await? {
                    slot.source.restore(&restored.batches).map_err(|e| {
                        Error::Checkpoint(format!(
                            "restoring source '{name}' from {} (epoch {c}): {e}",
                            self.checkpoint.location()
                        ))
                    })?;
                }
            }
            for p in &self.pipelines {
                let wm = entry
                    .pipeline_watermarks
                    .get(&p.index)
                    .copied()
                    .unwrap_or(i64::MIN);
                for (id, op) in &p.operators {
                    if let Some(restored) = self.checkpoint.restore_state(id, c).await? {
                        check_state_columns(&op.state_schema(), &restored.schema).and_then(|()| {
                            op.restore(&restored.batches, wm).map_err(|e| weir_sql::strip_df(&e))
                        }).map_err(|e| {
                            Error::Checkpoint(format!(
                                "state/{id}/ in {} (epoch {c}, from the snapshot of epoch {} and {} deltas): {e}",
                                self.checkpoint.location(),
                                restored.snapshot_epoch,
                                restored.deltas
                            ))
                        })?;
                    }
                }
                p.sink.publish(c).await?;
            }
            for s in self.side_sinks() {
                s.publish(c).await?;
            }
            for (source, ms) in entry.last_data_ms {
                if self.reset_sources.contains(&source) {
                    continue;
                }
                if let Some(slot) = self.sources.get_mut(&source) {
                    slot.last_data_ms = ms;
                }
            }
        }
        self.last_committed = committed;
        let next = committed.map_or(1, |c| c + 1);
        let logged: Vec<u64> = self.checkpoint.offsets.epochs().await?;
        self.check_damage(committed, &logged, next).await?;
        if let Some(&newest) = logged.last()
            && newest >= next
        {
            if newest > next {
                return Err(Error::Checkpoint(format!(
                    "{} is for epoch {newest}, but the last commit is {:?}: the offsets log is ahead by more than one epoch",
                    self.checkpoint.offsets.url(newest),
                    committed
                )));
            }
            let entry: OffsetsEntry = self.checkpoint.offsets.read(next).await?.ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{} vanished while reading it",
                    self.checkpoint.offsets.url(next)
                ))
            })?;
            self.pending = Some((next, entry));
        }
        Ok(())
    }

    /// Damage that recovery would otherwise not notice (files that are
    /// there but unreadable are reported where they are read): a commit
    /// without its offsets entry, state of epochs never started, state of
    /// operators this query does not have.
    async fn check_damage(&self, committed: Option<u64>, logged: &[u64], next: u64) -> Result<()> {
        if let Some(c) = committed
            && !logged.contains(&c)
        {
            return Err(Error::Checkpoint(format!(
                "{} (epoch {c}) has no offsets entry: {} is missing, so what the epoch read cannot be \
                 known. The checkpoint is damaged; roll back to an earlier epoch with \
                 `weir checkpoint rollback {} --to N` (see `weir checkpoint inspect`)",
                self.checkpoint.commits.url(c),
                self.checkpoint.offsets.url(c),
                self.checkpoint.location()
            )));
        }
        let pending = logged.contains(&next).then_some(next);
        self.checkpoint.check_orphan_state(committed, pending).await?;
        let known: BTreeSet<String> = self
            .pipelines
            .iter()
            .flat_map(|p| p.operators.iter().map(|(id, _)| id.clone()))
            .chain(self.sources.keys().map(|s| source_state_name(s)))
            .collect();
        for op in self.checkpoint.state_operators().await? {
            if !known.contains(&op) {
                let files = self.checkpoint.state_files(&op).await?;
                return Err(Error::Checkpoint(format!(
                    "{} (epoch {}) is state of '{op}', which is no operator or source of this query; \
                     it was not written by this job. Remove state/{op}/ if it does not belong there",
                    files.first().map_or_else(
                        || self.checkpoint.location().url_of(&format!("state/{op}")),
                        |f| { self.checkpoint.location().url_of(&f.name) }
                    ),
                    files.first().map_or(0, |f| f.epoch),
                )));
            }
        }
        Ok(())
    }

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
        self.lease.release().await
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
            out.push((
                s.table().to_string(),
                Arc::clone(s.schema()),
                s.location().url().to_string(),
            ));
        }
        out
    }

    /// The columns of a live query's rows (`None` for a saved job).
    pub fn live_schema(&self) -> Option<SchemaRef> {
        self.pipelines
            .iter()
            .find(|p| p.sink.is_live())
            .map(|p| Arc::clone(&p.schema))
    }

    /// Each pipeline's physical plan, as text.
    pub fn explain(&self) -> String {
        let text = self
            .pipelines
            .iter()
            .map(|p| self.explain_pipeline(p, false))
            .collect::<Vec<_>>()
            .join("\n");
        weir_sql::preprocess::hide_placeholders(&text, &self.tvfs)
    }

    /// Each pipeline's physical plan with the rows and time each operator
    /// spent over the epochs this process ran (EXPLAIN ANALYZE).
    pub fn explain_analyze(&self) -> String {
        let text = self
            .pipelines
            .iter()
            .map(|p| self.explain_pipeline(p, true))
            .collect::<Vec<_>>()
            .join("\n");
        weir_sql::preprocess::hide_placeholders(&text, &self.tvfs)
    }

    fn explain_pipeline(&self, p: &Pipeline, analyze: bool) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mode = if p.changelog {
            "changelog (op, then the columns)"
        } else {
            "append"
        };
        let _ = writeln!(out, "== {} (pipeline {}): {mode}", p.sink.describe(), p.index);
        if !analyze {
            let _ = writeln!(out, "-- incremental plan");
            let _ = writeln!(out, "{}", p.logical.display_indent());
            let _ = writeln!(out, "-- stateless prefix: {}", stateless_prefix(&p.logical));
            let origins = watermark_origins(&p.logical);
            if !origins.is_empty() {
                let _ = writeln!(out, "-- watermark: {}", origins.join("; "));
            }
        }
        for (id, op) in &p.operators {
            let t = op.describe();
            let _ = writeln!(
                out,
                "-- state {id}: {} table '{}', {} rows",
                op.kind(),
                t.name,
                op.state_rows()
            );
            let _ = writeln!(out, "     keys:    {}", t.keys.join(", "));
            let _ = writeln!(out, "     values:  {}", t.values.join(", "));
            let _ = writeln!(out, "     evicted: {}", t.evicted_by);
            let emit = if op.kind() == "update-aggregate" {
                "on update: the changed groups of each epoch as +I/-U/+U/-D"
            } else {
                "on window close: each window once, when the watermark passes its end"
            };
            let _ = writeln!(out, "     emits:   {emit}");
        }
        for l in &p.late_sinks {
            let _ = writeln!(out, "-- late rows: to sink {}", l.table());
        }
        for (source, table) in self.dead_letters.routes() {
            if p.sources.contains(source) {
                let _ = writeln!(out, "-- bad records of {source}: to sink {table}");
            }
        }
        let _ = writeln!(
            out,
            "-- physical plan{}",
            if analyze {
                " (totals over the epochs run)"
            } else {
                ""
            }
        );
        let shown = if analyze {
            datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(p.plan.as_ref())
                .indent(true)
                .to_string()
        } else {
            displayable(p.plan.as_ref()).indent(true).to_string()
        };
        out.push_str(&shown);
        out
    }

    /// Runs epochs by the trigger until the input is done (available-now,
    /// once) or `stop` turns true; with `drain`, then closes every window.
    /// An epoch in progress when `stop` turns true is completed first.
    pub async fn run(
        &mut self,
        trigger: Trigger,
        drain: bool,
        mut stop: watch::Receiver<bool>,
        on_progress: &mut (dyn FnMut(&BatchProgress) + Send),
    ) -> Result<RunSummary> {
        if drain && matches!(trigger, Trigger::Interval(_)) {
            return Err(Error::Config(
                "--drain treats the input as complete, so it needs --trigger available-now or once".into(),
            ));
        }
        if trigger == Trigger::AvailableNow {
            for slot in self.sources.values_mut() {
                slot.source.freeze().await?;
            }
        }
        let mut summary = RunSummary::default();
        if let Some((epoch, entry)) = self.pending.take() {
            let p = self.run_epoch(epoch, entry, true).await?;
            summary.add(&p);
            on_progress(&p);
            if trigger == Trigger::Once {
                return Ok(summary.done(self.last_committed, &mut self.warnings));
            }
        }
        loop {
            if *stop.borrow() {
                summary.stopped = true;
                return Ok(summary.done(self.last_committed, &mut self.warnings));
            }
            let started = Instant::now();
            let ran = match self.plan_epoch(false).await? {
                Some(entry) => {
                    let epoch = self.next_epoch();
                    let p = self.run_epoch(epoch, entry, false).await?;
                    summary.add(&p);
                    on_progress(&p);
                    true
                }
                None => false,
            };
            match trigger {
                Trigger::AvailableNow if ran => continue,
                Trigger::AvailableNow | Trigger::Once => break,
                Trigger::Interval(every) => {
                    let wait = every.saturating_sub(started.elapsed());
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            changed = stop.changed() => {
                                // A dropped sender can never say "go on": stop.
                                if changed.is_err() {
                                    return Ok(summary.done(self.last_committed, &mut self.warnings));
                                }
                            }
                        }
                    }
                }
            }
        }
        let undrained = self.watermarks.values().any(|&w| w != i64::MAX);
        if drain && *stop.borrow() && undrained {
            summary.stopped = true;
        } else if drain && undrained {
            let entry = self
                .plan_epoch(true)
                .await?
                .ok_or_else(|| Error::Checkpoint("internal error: no drain epoch was planned".into()))?;
            let epoch = self.next_epoch();
            let p = self.run_epoch(epoch, entry, false).await?;
            summary.add(&p);
            on_progress(&p);
        }
        Ok(summary.done(self.last_committed, &mut self.warnings))
    }

    fn next_epoch(&self) -> u64 {
        self.last_committed.map_or(1, |c| c + 1)
    }

    /// Asks every source for its next batch; `None` when none has input.
    async fn plan_epoch(&mut self, drain: bool) -> Result<Option<OffsetsEntry>> {
        let mut offsets = BTreeMap::new();
        if !drain {
            for (name, slot) in self.sources.iter_mut() {
                let planned = slot.source.plan_batch().await?;
                self.warnings.extend(slot.source.take_warnings());
                if let Some(o) = planned {
                    offsets.insert(name.clone(), o);
                }
            }
            if offsets.is_empty() {
                return Ok(None);
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        let idle = self
            .sources
            .iter()
            .filter(|(name, slot)| {
                !offsets.contains_key(*name)
                    && slot
                        .idle_timeout_ms
                        .is_some_and(|t| now.saturating_sub(slot.last_data_ms) >= t)
            })
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Some(OffsetsEntry {
            sources: offsets,
            watermarks_in: self.watermarks.clone(),
            drain,
            processing_time_ms: now,
            idle,
        }))
    }

    async fn run_epoch(&mut self, epoch: u64, entry: OffsetsEntry, replayed: bool) -> Result<BatchProgress> {
        let started = Instant::now();
        self.lease.check(&format!("starting epoch {epoch}")).await?;
        if !replayed {
            self.checkpoint.offsets.create(epoch, &entry).await.map_err(|e| match e {
                weir_storage::Error::AlreadyExists { url } => Error::Checkpoint(format!(
                    "{url} appeared while this job was running: another process is running this job on the same checkpoint"
                )),
                e => e.into(),
            })?;
        }
        self.hooks.reached(Step::OffsetsWritten, epoch)?;

        // Read.
        let (input, bad) = match self.read_input(epoch, &entry).await {
            Ok(read) => read,
            Err(e) => return Err(self.abandon(epoch, e).await),
        };
        let bad_rows = bad.values().map(|b| b.len() as u64).sum();
        let rows_in = input
            .values()
            .map(|r| r.batches.iter().map(|b| b.num_rows() as u64).sum::<u64>())
            .sum();

        // Watermarks after this epoch's rows.
        let watermarks_in = entry.watermarks_in.clone();
        let mut watermarks_out = watermarks_in.clone();
        for (name, wm) in watermarks_out.iter_mut() {
            if entry.drain {
                *wm = i64::MAX;
                continue;
            }
            let (Some(slot), Some(rows)) = (self.sources.get(name), input.get(name)) else {
                continue;
            };
            let Some(decl) = &slot.watermark else { continue };
            let declared = slot.source.schema().index_of(&decl.column)?;
            let Some(idx) = slot.columns.iter().position(|&c| c == declared) else {
                if !slot.source.knows_max_time(&decl.column) {
                    return Err(Error::Config(format!(
                        "source '{name}' did not read its watermark column"
                    )));
                }
                if let Some(m) = rows.max_time_ms {
                    *wm = (*wm).max(m.saturating_sub(decl.delay_ms));
                }
                continue;
            };
            for b in rows.batches.iter() {
                let ms = to_millis(b.column(idx))?;
                if let Some(m) = max(ms.as_primitive::<TimestampMillisecondType>()) {
                    *wm = (*wm).max(m.saturating_sub(decl.delay_ms));
                }
            }
        }

        // A hash repartition (under keyed operators with `--threads` > 1)
        // runs once per instance: each epoch runs a fresh copy of the plan.
        // Weir's operators share their state and metrics with the copy;
        // DataFusion's own nodes start new metrics (EXPLAIN ANALYZE then
        // shows the last epoch's for them).
        for p in &mut self.pipelines {
            if contains_repartition(&p.plan) {
                p.plan = datafusion::physical_plan::execution_plan::reset_plan_states(Arc::clone(&p.plan))?;
            }
        }

        // Run each pipeline.
        let mut outputs = Vec::with_capacity(self.pipelines.len());
        let mut pipeline_watermarks = BTreeMap::new();
        let mut late_rows = 0;
        // Pipelines whose every row was late: (statement, rows, watermarks before).
        let mut all_late: Vec<(String, u64, BTreeMap<String, i64>)> = Vec::new();
        for p in &self.pipelines {
            // The pipeline's watermarked sources, less the idle ones (unless
            // all are idle: then nothing advances).
            let active: BTreeSet<&String> = {
                let mine: BTreeSet<&String> =
                    watermarks_in.keys().filter(|s| p.sources.contains(*s)).collect();
                let awake: BTreeSet<&String> = mine
                    .iter()
                    .copied()
                    .filter(|s| !entry.idle.contains(*s))
                    .collect();
                if awake.is_empty() { mine } else { awake }
            };
            let pick = |m: &BTreeMap<String, i64>| -> BTreeMap<String, i64> {
                m.iter()
                    .filter(|(s, _)| active.contains(s))
                    .map(|(s, w)| (s.clone(), *w))
                    .collect()
            };
            let wm_out = pick(&watermarks_out).values().copied().min().unwrap_or(i64::MIN);
            pipeline_watermarks.insert(p.index, wm_out);
            let epoch_input = Arc::new(EpochInput {
                epoch,
                batches: input
                    .iter()
                    .filter(|(s, _)| p.sources.contains(*s))
                    .map(|(s, b)| (s.clone(), b.clone()))
                    .collect(),
                source_watermarks_in: pick(&watermarks_in).into_iter().collect(),
                watermark_out: wm_out,
                late_rows: Default::default(),
                late_batches: Default::default(),
                processing_time_ms: entry.processing_time_ms,
            });
            let config = self
                .state
                .config()
                .clone()
                .with_extension(Arc::clone(&epoch_input));
            let ctx = Arc::new(TaskContext::from(&self.state).with_session_config(config));
            let pipeline_rows: u64 = epoch_input
                .batches
                .values()
                .map(|r| r.batches.iter().map(|b| b.num_rows() as u64).sum::<u64>())
                .sum();
            let out = match execute(&p.plan, ctx).await {
                Ok(out) => out,
                Err(e) => {
                    let e = Error::Runtime(weir_sql::preprocess::hide_placeholders(
                        &format!("epoch {epoch}, {}: {e}", p.statement),
                        &self.tvfs,
                    ));
                    return Err(self.abandon(epoch, e).await);
                }
            };
            let late = epoch_input.late_rows.load(Ordering::Relaxed);
            late_rows += late;
            if pipeline_rows > 0 && late >= pipeline_rows {
                all_late.push((p.statement.clone(), pipeline_rows, pick(&watermarks_in)));
            }
            let late =
                std::mem::take(&mut *epoch_input.late_batches.lock().unwrap_or_else(|e| e.into_inner()));
            outputs.push((out, late));
        }
        self.hooks.reached(Step::BeforeSink, epoch)?;

        // Stage output.
        let mut rows_out = 0;
        for (p, (out, late)) in self.pipelines.iter().zip(&outputs) {
            let mid = || self.hooks.reached(Step::MidSinkWrite, epoch);
            let (rows, _) = p.sink.stage(epoch, &p.schema, out, mid).await?;
            rows_out += rows;
            for l in &p.late_sinks {
                let rows: Vec<RecordBatch> = late
                    .iter()
                    .filter(|(t, _)| t == l.table())
                    .map(|(_, b)| b.clone())
                    .collect();
                l.stage(epoch, &rows).await?;
            }
        }
        self.dead_letters.stage(epoch, &bad).await?;
        self.hooks.reached(Step::SinkStaged, epoch)?;

        // State: a delta of what changed, or now and then a snapshot.
        let checkpoint_started = Instant::now();
        let mut state_bytes = 0;
        let mut state_rows = 0u64;
        let mut writes: Vec<(String, StateKind, SchemaRef, usize, crate::exec::StateChange)> = Vec::new();
        for (name, slot) in self.sources.iter_mut() {
            let id = source_state_name(name);
            let full = self.policies.entry(id.clone()).or_default().full();
            if let Some(change) = slot.source.checkpoint(full)? {
                writes.push((id, kind_of(full), slot.source.progress_schema(), 1, change));
            }
        }
        for p in &self.pipelines {
            for (id, op) in &p.operators {
                let full = self.policies.entry(id.clone()).or_default().full();
                if let Some(change) = op.checkpoint(full)? {
                    writes.push((
                        id.clone(),
                        kind_of(full),
                        op.state_schema(),
                        op.unit_key_len(),
                        change,
                    ));
                }
                state_rows += op.state_rows() as u64;
            }
        }
        for (id, kind, schema, unit_key_len, change) in writes {
            let w = StateWrite {
                kind,
                schema: &schema,
                unit_key_len,
                upserts: &change.upserts,
                deletes: &change.deletes,
            };
            let bytes = self.checkpoint.write_state(&id, epoch, w).await?;
            self.policies.entry(id).or_default().record(kind, bytes);
            state_bytes += bytes;
        }
        self.hooks.reached(Step::StateWritten, epoch)?;

        // Commit.
        for name in input.keys() {
            if let Some(slot) = self.sources.get_mut(name) {
                slot.last_data_ms = entry.processing_time_ms;
            }
        }
        self.lease.check(&format!("committing epoch {epoch}")).await?;
        let commit = CommitEntry {
            watermarks: watermarks_out.clone(),
            rows_in,
            rows_out,
            late_rows,
            bad_rows,
            committed_at: chrono::Utc::now().to_rfc3339(),
            last_data_ms: self
                .sources
                .iter()
                .map(|(n, s)| (n.clone(), s.last_data_ms))
                .collect(),
            pipeline_watermarks,
        };
        self.checkpoint.commits.create(epoch, &commit).await.map_err(|e| match e {
            weir_storage::Error::AlreadyExists { url } => Error::Checkpoint(format!(
                "{url} was committed by another process: two processes are running this job on the same checkpoint"
            )),
            e => e.into(),
        })?;
        self.last_committed = Some(epoch);
        self.watermarks = watermarks_out;
        let checkpoint_ms = checkpoint_started.elapsed().as_secs_f64() * 1000.0;
        self.hooks.reached(Step::Committed, epoch)?;

        for p in &self.pipelines {
            p.sink.publish(epoch).await?;
        }
        for s in self.side_sinks() {
            s.publish(epoch).await?;
        }
        self.hooks.reached(Step::Published, epoch)?;
        if epoch.is_multiple_of(RETENTION_EVERY) {
            self.retain(epoch).await?;
        }

        let drained = !watermarks_in.is_empty() && watermarks_in.values().all(|&w| w == i64::MAX);
        if drained && rows_in > 0 && !self.warned_drained {
            self.warned_drained = true;
            let warning = self.drained_warning().await;
            self.warnings.push(warning);
        } else {
            for (statement, rows, wms) in &all_late {
                let shown: Vec<String> = wms
                    .iter()
                    .map(|(s, &w)| format!("'{s}' at {}", shown_watermark(w).1.unwrap_or_default()))
                    .collect();
                self.warnings.push(format!(
                    "every one of the {rows} rows that {statement} read this epoch was late: older than the \
                     watermark when it arrived ({}), so its windows had closed. Late rows are dropped (or \
                     sent to 'late.sink'); a longer WATERMARK delay keeps windows open longer",
                    shown.join(", ")
                ));
            }
        }
        let batch_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (watermark_ms, watermark) =
            shown_watermark(self.watermarks.values().copied().min().unwrap_or(i64::MIN));
        Ok(BatchProgress {
            epoch,
            replayed,
            drain: entry.drain,
            rows_in,
            rows_out,
            late_rows,
            bad_rows,
            rows_per_sec: if batch_ms > 0.0 {
                rows_in as f64 / (batch_ms / 1000.0)
            } else {
                0.0
            },
            watermark_ms,
            watermark,
            state_rows,
            state_bytes,
            batch_ms,
            checkpoint_ms,
            all_late: !all_late.is_empty(),
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    /// The warning for rows read by a checkpoint whose input was declared
    /// complete (`--drain`): every one of them is late.
    async fn drained_warning(&self) -> String {
        let loc = self.checkpoint.location();
        // The drain epoch: the newest offsets entry that says so.
        let mut drain_epoch = None;
        if let Ok(epochs) = self.checkpoint.offsets.epochs().await {
            for e in epochs.into_iter().rev() {
                if let Ok(Some(entry)) = self.checkpoint.offsets.read::<OffsetsEntry>(e).await
                    && entry.drain
                {
                    drain_epoch = Some(e);
                    break;
                }
            }
        }
        let rollback = match drain_epoch {
            Some(e) if e > 1 => format!(
                "`weir checkpoint rollback {loc} --to {}` undoes the drain (epoch {e}), so its windows \
                 stay open for these rows",
                e - 1
            ),
            _ => format!("`weir checkpoint rollback {loc} --to N` to an epoch before the drain undoes it"),
        };
        format!(
            "this checkpoint was drained: a run with --drain declared its input complete, moved the \
             watermark to the end of time and closed every window, so every row read now is late and \
             dropped. To add input to a job, run it without --drain; {rollback}, or give the job a new \
             --checkpoint"
        )
    }
}

impl StreamingJob {
    /// Deletes what no epoch from `newest - retain + 1` on needs: older
    /// offsets and commits, sink manifests, and state files before the
    /// snapshot those epochs restore from.
    async fn retain(&self, newest: u64) -> Result<()> {
        let keep_from = (newest + 1).saturating_sub(self.retain_epochs).max(1);
        for e in self
            .checkpoint
            .commits
            .epochs()
            .await?
            .into_iter()
            .filter(|&e| e < keep_from)
        {
            self.checkpoint.commits.delete(e).await?;
        }
        for e in self
            .checkpoint
            .offsets
            .epochs()
            .await?
            .into_iter()
            .filter(|&e| e < keep_from)
        {
            self.checkpoint.offsets.delete(e).await?;
        }
        for op in self.checkpoint.state_operators().await? {
            self.checkpoint.prune_state(&op, keep_from).await?;
        }
        for p in &self.pipelines {
            p.sink.prune(keep_from).await?;
        }
        for s in self.side_sinks() {
            s.prune(keep_from).await?;
        }
        Ok(())
    }

    /// The sinks fed beside the queries' output: late-row and dead-letter
    /// tables. They are published and pruned with the output.
    fn side_sinks(&self) -> impl Iterator<Item = &SideSink> {
        self.pipelines
            .iter()
            .flat_map(|p| &p.late_sinks)
            .chain(self.dead_letters.sinks())
    }

    /// Reads each source's offset: its rows, and its bad records.
    async fn read_input(
        &mut self,
        epoch: u64,
        entry: &OffsetsEntry,
    ) -> Result<(BTreeMap<String, SourceRows>, BTreeMap<String, Vec<BadRecord>>)> {
        let mut input = BTreeMap::new();
        let mut bad = BTreeMap::new();
        for (name, offset) in &entry.sources {
            let slot = self.sources.get_mut(name).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{} names source '{name}', which this job does not read",
                    self.checkpoint.offsets.url(epoch)
                ))
            })?;
            let read = slot.source.read_batch(offset).await?;
            input.insert(
                name.clone(),
                SourceRows {
                    columns: Arc::clone(&slot.columns),
                    batches: Arc::new(read.batches),
                    max_time_ms: read.max_time_ms,
                },
            );
            bad.insert(name.clone(), read.bad);
        }
        Ok((input, bad))
    }

    /// An epoch whose input cannot be read (a bad or vanished file) is rolled
    /// back: nothing of it was committed or published, so its state files and
    /// offsets entry are removed and the next run plans the epoch again
    /// (after the operator has fixed or removed the file). State files go
    /// first: if this is interrupted, the offsets entry is still there and the
    /// epoch is replayed as after any crash.
    async fn abandon(&self, epoch: u64, error: Error) -> Error {
        let rollback = async {
            self.checkpoint.delete_epoch_state(epoch).await?;
            self.checkpoint.offsets.delete(epoch).await
        };
        let fix = match &error {
            Error::Input(_) => "fix or remove the file and run the job again",
            _ => "the checkpoint is as it was before it; fix the cause and run the job again",
        };
        let wrap = |text: String| match error {
            Error::Input(_) => Error::Input(text),
            _ => Error::Runtime(text),
        };
        match rollback.await {
            Ok(()) => wrap(format!("{error}\n(epoch {epoch} was not committed; {fix})")),
            Err(e) => wrap(format!(
                "{error}\n(and rolling back uncommitted epoch {epoch} failed: {e})"
            )),
        }
    }
}

impl RunSummary {
    fn add(&mut self, p: &BatchProgress) {
        self.epochs += 1;
        self.rows_in += p.rows_in;
        self.rows_out += p.rows_out;
        self.late_rows += p.late_rows;
        self.bad_rows += p.bad_rows;
    }

    fn done(mut self, last: Option<u64>, warnings: &mut Vec<String>) -> Self {
        self.last_epoch = last;
        self.warnings.append(warnings);
        self
    }
}

/// The names of the stateless nodes under the lowest stateful one (the
/// part of the plan that runs as a DataFusion plan over each epoch's rows).
fn stateless_prefix(plan: &datafusion::logical_expr::LogicalPlan) -> String {
    use datafusion::logical_expr::LogicalPlan;
    fn is_stateful(p: &LogicalPlan) -> bool {
        matches!(p, LogicalPlan::Extension(e) if matches!(e.node.name(), "WindowAggregate" | "UpdateAggregate" | "WindowTopN"))
    }
    fn lowest(p: &LogicalPlan) -> &LogicalPlan {
        for input in p.inputs() {
            let mut found = None;
            let _ = input.apply(|n| {
                if is_stateful(n) {
                    found = Some(n);
                    return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            });
            if let Some(n) = found {
                return lowest(n);
            }
        }
        p
    }
    use datafusion::common::tree_node::TreeNode;
    let start = lowest(plan);
    let below: Vec<&LogicalPlan> = if is_stateful(start) {
        start.inputs()
    } else {
        vec![start]
    };
    let mut names = Vec::new();
    for b in below {
        let _ = b.apply(|n| {
            let name = match n {
                LogicalPlan::TableScan(s) => format!("scan {}", s.table_name),
                LogicalPlan::Extension(e) => e.node.name().to_string(),
                other => other
                    .display()
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            names.push(name);
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
    }
    names.join(" <- ")
}

/// Where the plan's window calls take their watermarks from.
fn watermark_origins(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<String> {
    use datafusion::common::tree_node::TreeNode;
    let mut out = Vec::new();
    let _ = plan.apply(|n| {
        if let datafusion::logical_expr::LogicalPlan::Extension(e) = n
            && let Some(w) = e.node.as_any().downcast_ref::<weir_sql::WindowAssignNode>()
        {
            out.push(format!("{} on {}: {}", w.spec, w.time_column, w.watermark));
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    out
}

/// The late sinks of a plan's window calls, with the shape of their rows.
fn late_sink_tables(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, SchemaRef)> {
    let mut out = Vec::new();
    if let Some(w) = plan.downcast_ref::<WindowAssignExec>()
        && let Some((table, schema)) = w.late_sink()
    {
        out.push((table.to_string(), schema));
    }
    for child in plan.children() {
        out.extend(late_sink_tables(child));
    }
    out
}

/// `'watermark.idle_timeout'` of a source, ms.
fn idle_timeout(decl: &weir_sql::TableDecl) -> Result<Option<i64>> {
    let Some(v) = decl.options.get("watermark.idle_timeout") else {
        return Ok(None);
    };
    let d = humantime::parse_duration(v.trim()).map_err(|e| {
        Error::Config(format!(
            "table '{}': 'watermark.idle_timeout' = '{v}': {e} (write e.g. '30s' or '5m')",
            decl.name
        ))
    })?;
    Ok(Some(d.as_millis() as i64))
}

/// Adds the declared columns each source scan in a plan reads.
fn scan_columns(plan: &Arc<dyn ExecutionPlan>, out: &mut BTreeMap<String, BTreeSet<usize>>) {
    if let Some(scan) = plan.downcast_ref::<StreamScanExec>() {
        let cols = out.entry(scan.source().to_string()).or_default();
        match scan.projection() {
            Some(p) => cols.extend(p.iter().copied()),
            None => cols.extend(0..scan.schema().fields().len()),
        }
    }
    for child in plan.children() {
        scan_columns(child, out);
    }
}

/// The state name of a source's progress.
fn source_state_name(source: &str) -> String {
    format!("source-{source}")
}

/// The writer id in a sink's file names: the checkpoint's query and the
/// pipeline (`-late` for its late-row sink).
fn sink_writer(query_id: &str, pipeline: usize, late: bool) -> String {
    format!(
        "{}-p{pipeline}{}",
        &query_id[..8],
        if late { "-late" } else { "" }
    )
}

/// What a source's progress refers to: its connector and what it reads.
/// Rate limits, watermarks and error handling are left out, since changing
/// them leaves the progress meaningful.
fn source_signature(decl: &TableDecl) -> String {
    ["connector", "path", "format", "seed"]
        .iter()
        .filter_map(|k| decl.options.get(k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
}

type PhysicalPipeline = (
    PipelinePlan,
    Arc<dyn ExecutionPlan>,
    Vec<(String, Arc<dyn StatefulOperator>)>,
);

/// The checkpoint records of a job (see `compat`).
fn job_records(
    job: &Job,
    pipelines: &[PhysicalPipeline],
    dead_letters: &BTreeMap<String, String>,
    query_id: &str,
    store_options: &StoreOptions,
) -> Result<Records> {
    let mut r = Records::default();
    for (p, plan, operators) in pipelines {
        for (id, op) in operators {
            let t = op.describe();
            r.operators.push(OperatorRecord {
                id: id.clone(),
                kind: op.kind().to_string(),
                signature: op.signature(),
                keys: t.keys,
                values: t.values,
            });
        }
        for name in &p.sources {
            if !r.sources.iter().any(|s| &s.name == name) {
                r.sources.push(SourceRecord {
                    name: name.clone(),
                    signature: source_signature(&job.tables[name]),
                });
            }
        }
        let mut sinks: Vec<(String, String)> = Vec::new();
        if let Some(decl) = &p.sink {
            sinks.push((decl.name.clone(), sink_writer(query_id, p.index, false)));
        }
        for (table, _) in late_sink_tables(plan) {
            if !sinks.iter().any(|(t, _)| *t == table) {
                sinks.push((table, sink_writer(query_id, p.index, true)));
            }
        }
        sinks_records(job, sinks, store_options, &mut r)?;
    }
    // Dead-letter tables belong to the job's sources, not to a pipeline.
    let mut tables: Vec<&String> = dead_letters.values().collect();
    tables.sort_unstable();
    tables.dedup();
    let sinks = tables
        .into_iter()
        .map(|t| (t.clone(), dead_letter::writer(query_id)))
        .collect();
    sinks_records(job, sinks, store_options, &mut r)?;
    Ok(r)
}

/// Checks the folders a job writes against each other, its sources and
/// checkpoints (`crate::folders`), and that no other query owns a sink
/// folder, before anything is written.
async fn check_job_folders(
    job: &Job,
    pipelines: &[PhysicalPipeline],
    dead_letters: &BTreeMap<String, String>,
    checkpoint: &Checkpoint,
    options: &JobOptions,
) -> Result<()> {
    let mut tables: Vec<String> = Vec::new();
    for (p, plan, _) in pipelines {
        tables.extend(p.sink.iter().map(|d| d.name.clone()));
        if options.live.is_none() {
            tables.extend(late_sink_tables(plan).into_iter().map(|(t, _)| t));
        }
    }
    tables.extend(dead_letters.values().cloned());
    tables.sort();
    tables.dedup();
    let mut sinks = Vec::new();
    for table in &tables {
        let Some(decl) = job.tables.get(table) else {
            continue;
        };
        let (Ok("files"), Some(path)) = (decl.connector(), decl.options.get("path")) else {
            continue;
        };
        let store = table_store_options(decl, &options.store_options);
        let loc = Location::open(path, &store, Create::Yes)
            .map_err(|e| Error::Config(format!("sink table '{table}': {e}")))?;
        sinks.push((table.clone(), loc, store));
    }
    let mut sources = Vec::new();
    for (p, _, _) in pipelines {
        for name in &p.sources {
            let Some(decl) = job.tables.get(name) else {
                continue;
            };
            let (Ok("files"), Some(path)) = (decl.connector(), decl.options.get("path")) else {
                continue;
            };
            if let Ok(loc) = Location::open(
                path,
                &table_store_options(decl, &options.store_options),
                Create::No,
            ) {
                sources.push((name.clone(), loc));
            }
        }
    }
    let folders: Vec<crate::folders::SinkFolder> = sinks
        .iter()
        .map(|(table, loc, store)| crate::folders::SinkFolder {
            table,
            loc,
            options: store.clone(),
        })
        .collect();
    let sources: Vec<(&str, &Location)> = sources.iter().map(|(n, l)| (n.as_str(), l)).collect();
    crate::folders::check(checkpoint.location(), &folders, &sources).await?;
    if options.explain_only {
        return Ok(());
    }
    // The owner: this checkpoint's query, when it has one already (a new
    // checkpoint's query owns no folder yet, so any owner is another).
    let query_id = checkpoint
        .read_metadata()
        .await?
        .map(|m| m.query_id)
        .unwrap_or_else(|| "(a new checkpoint)".into());
    for (table, loc, _) in &sinks {
        let me = weir_storage::SinkOwner {
            version: weir_storage::FORMAT_VERSION,
            checkpoint: checkpoint.location().url().to_string(),
            query_id: query_id.clone(),
            table: table.clone(),
        };
        crate::folders::check_owner(loc, &me).await?;
    }
    Ok(())
}

/// Adds the records of sinks `(table, writer)` to `r`.
fn sinks_records(
    job: &Job,
    sinks: Vec<(String, String)>,
    store_options: &StoreOptions,
    r: &mut Records,
) -> Result<()> {
    for (table, writer) in sinks {
        let Some(decl) = job.tables.get(&table) else {
            continue; // reported when the sink is opened
        };
        let Some(path) = decl.options.get("path") else {
            continue;
        };
        let url = Location::open(path, &table_store_options(decl, store_options), Create::Yes)
            .map_err(|e| Error::Config(format!("sink table '{table}': {e}")))?
            .url()
            .to_string();
        r.sinks.push(SinkRecord {
            table,
            path: path.to_string(),
            url,
            writer,
        });
    }
    Ok(())
}

/// Prepares a checkpoint for a changed query under `fresh_state`: publishes
/// the old sinks' last committed output (a crash may have left it staged),
/// forgets an uncommitted epoch, and deletes the state of every operator
/// and of every source not in `kept`. Returns the state tables dropped.
async fn reset_for_fresh_state(
    checkpoint: &Checkpoint,
    old: &Metadata,
    kept: &[String],
    store_options: &StoreOptions,
) -> Result<Vec<String>> {
    let committed = checkpoint.commits.latest().await?;
    if let Some(c) = committed {
        for s in &old.sinks {
            let loc = Location::open(&s.url, store_options, Create::No)
                .map_err(|e| Error::Config(format!("sink '{}' of the old query: {e}", s.table)))?;
            SinkLayout::new(loc, s.writer.clone()).publish(c).await?;
        }
    }
    let after = committed.unwrap_or(0);
    let keep: BTreeSet<String> = kept.iter().map(|k| source_state_name(k)).collect();
    let mut dropped = Vec::new();
    for op in checkpoint.state_operators().await? {
        if !keep.contains(&op) {
            checkpoint.drop_state(&op).await?;
            dropped.push(op);
        } else {
            for f in checkpoint.state_files(&op).await? {
                if f.epoch > after {
                    checkpoint.delete_state(&op, f.epoch).await?;
                }
            }
        }
    }
    // Offsets last: until they go, leftover state of an uncommitted epoch
    // is that epoch's, not an orphan.
    for e in checkpoint.offsets.epochs().await? {
        if e > after {
            checkpoint.offsets.delete(e).await?;
        }
    }
    Ok(dropped)
}

/// The stateful operators of a pipeline's plan, with ids that are stable as
/// long as the query is (`p<pipeline>-agg<n>`, in plan order).
fn stateful_operators(
    pipeline: usize,
    plan: &Arc<dyn ExecutionPlan>,
) -> Vec<(String, Arc<dyn StatefulOperator>)> {
    fn walk(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Arc<dyn StatefulOperator>>) {
        if let Some(agg) = plan.downcast_ref::<WindowAggregateExec>() {
            out.push(agg.state() as Arc<dyn StatefulOperator>);
        }
        if let Some(agg) = plan.downcast_ref::<SessionAggregateExec>() {
            out.push(agg.state() as Arc<dyn StatefulOperator>);
        }
        if let Some(agg) = plan.downcast_ref::<UpdateAggregateExec>() {
            out.push(agg.state() as Arc<dyn StatefulOperator>);
        }
        if let Some(top) = plan.downcast_ref::<crate::exec::WindowTopNExec>() {
            out.push(top.state() as Arc<dyn StatefulOperator>);
        }
        for child in plan.children() {
            walk(child, out);
        }
    }
    let mut ops = Vec::new();
    walk(plan, &mut ops);
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| (format!("p{pipeline}-agg{i}"), op))
        .collect()
}

/// Runs a pipeline's plan over an epoch. A panic anywhere in it (in a
/// DataFusion operator or one of ours) becomes an error instead of ending
/// the process, so the driver can roll the epoch back.
async fn execute(plan: &Arc<dyn ExecutionPlan>, ctx: Arc<TaskContext>) -> Result<Vec<RecordBatch>> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(collect(Arc::clone(plan), ctx))
        .catch_unwind()
        .await
    {
        Ok(r) => Ok(r?),
        Err(panic) => Err(Error::Runtime(format!(
            "internal error (a bug in Weir, please report it): {}",
            crate::exec::panic_message(panic.as_ref())
        ))),
    }
}

/// Whether a plan holds a `RepartitionExec`, which can be executed only once.
fn contains_repartition(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<datafusion::physical_plan::repartition::RepartitionExec>()
        .is_some()
        || plan.children().into_iter().any(contains_repartition)
}
