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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::max;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::physical_planner::PhysicalPlanner;
use datafusion::prelude::SessionConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use weir_sql::{Job, StreamPlanner, Watermark};
use weir_storage::location::Create;
use weir_storage::{Checkpoint, Location, Metadata, StoreOptions};

use crate::epoch::{EpochInput, SourceRows};
use crate::exec::window_assign::to_millis;
use crate::exec::{EngineScans, StatefulOperator, StreamScanExec, WindowAggregateExec, physical_planner};
use crate::sink::Sink;
use crate::source::{Source, open_source};
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
    pub const ALL: [Step; 6] = [
        Step::OffsetsWritten,
        Step::BeforeSink,
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

/// Called at each step of each epoch (tests inject faults here).
pub trait EpochHooks: Send + Sync {
    /// The epoch reached a step.
    fn reached(&self, step: Step, epoch: u64);
}

struct NoHooks;
impl EpochHooks for NoHooks {
    fn reached(&self, _: Step, _: u64) {}
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
    /// The last committed epoch.
    pub last_epoch: Option<u64>,
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
}

/// `commits/N.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct CommitEntry {
    /// Per watermarked source, its watermark after this epoch (ms).
    watermarks: BTreeMap<String, i64>,
    rows_in: u64,
    rows_out: u64,
    late_rows: u64,
    committed_at: String,
}

struct SourceSlot {
    source: Box<dyn Source>,
    watermark: Option<Watermark>,
    /// The declared columns read (every scan's, and the watermark's).
    columns: Arc<Vec<usize>>,
}

struct Pipeline {
    index: usize,
    plan: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    sink: Sink,
    sources: BTreeSet<String>,
    operators: Vec<(String, Arc<dyn StatefulOperator>)>,
}

/// A job opened on its checkpoint, ready to run.
pub struct StreamingJob {
    checkpoint: Checkpoint,
    metadata: Metadata,
    sources: BTreeMap<String, SourceSlot>,
    pipelines: Vec<Pipeline>,
    /// Per watermarked source, its watermark (ms; `i64::MIN` before any row).
    watermarks: BTreeMap<String, i64>,
    last_committed: Option<u64>,
    /// An uncommitted epoch to run again before anything else.
    pending: Option<(u64, OffsetsEntry)>,
    state: SessionState,
    hooks: Arc<dyn EpochHooks>,
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
        let job = Job::parse(sql)?;
        let config = SessionConfig::new().with_target_partitions(1);
        let planner = StreamPlanner::new(&job, Some(Arc::new(EngineScans)), config)?;
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
        let metadata = Self::claim_checkpoint(&checkpoint, &job).await?;

        let mut sources = BTreeMap::new();
        for p in &plans {
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
                    },
                );
            }
        }

        let mut pipelines = Vec::new();
        for p in plans {
            let plan = physical_planner().create_physical_plan(&p.plan, &state).await?;
            let schema = plan.schema();
            let writer = format!("{}-p{}", &metadata.query_id[..8], p.index);
            let sink = Sink::open(&p.sink, &writer, &options.store_options)?;
            let operators = stateful_operators(p.index, &plan);
            pipelines.push(Pipeline {
                index: p.index,
                plan,
                schema,
                sink,
                sources: p.sources,
                operators,
            });
        }

        // Sources read only the columns some scan needs (and the watermark's).
        let mut needed: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for p in &pipelines {
            scan_columns(&p.plan, &mut needed);
        }
        for (name, slot) in sources.iter_mut() {
            let mut cols = needed.remove(name).unwrap_or_default();
            if let Some(w) = &slot.watermark {
                cols.insert(slot.source.schema().index_of(&w.column)?);
            }
            if cols.is_empty() {
                cols.insert(0); // COUNT(*) alone still needs the rows
            }
            let cols: Vec<usize> = cols.into_iter().collect();
            slot.source.set_columns(cols.clone());
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
            watermarks,
            last_committed: None,
            pending: None,
            state,
            hooks: options.hooks,
        };
        job.recover().await?;
        Ok(job)
    }

    /// Creates the checkpoint's metadata, or checks that an existing
    /// checkpoint was made by this job.
    async fn claim_checkpoint(checkpoint: &Checkpoint, job: &Job) -> Result<Metadata> {
        let fingerprint = job.fingerprint()?;
        if let Some(existing) = checkpoint.read_metadata().await? {
            if existing.fingerprint != fingerprint {
                let first = existing
                    .sql
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with("--"))
                    .unwrap_or("")
                    .to_string();
                return Err(Error::Checkpoint(format!(
                    "the checkpoint at {} was made by a different query (it begins `{first}`); \
                     give this job its own --checkpoint, or delete that folder to start over",
                    checkpoint.location()
                )));
            }
            return Ok(existing);
        }
        let metadata = Metadata {
            version: weir_storage::FORMAT_VERSION,
            query_id: uuid::Uuid::new_v4().simple().to_string(),
            sql: job.redacted_sql(),
            fingerprint,
            created_at: chrono::Utc::now().to_rfc3339(),
            weir_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        match checkpoint.create_metadata(&metadata).await {
            Ok(()) => Ok(metadata),
            // Another process created it first: use theirs if it is ours.
            Err(weir_storage::Error::AlreadyExists { .. }) => {
                Box::pin(Self::claim_checkpoint(checkpoint, job)).await
            }
            Err(e) => Err(e.into()),
        }
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
                if let Some(w) = self.watermarks.get_mut(&source) {
                    *w = wm;
                }
            }
            for (name, slot) in self.sources.iter_mut() {
                if let Some((_, decoded)) = self.checkpoint.read_state(&source_state_name(name), c).await? {
                    slot.source.restore(&decoded.batches).map_err(|e| {
                        Error::Checkpoint(format!(
                            "restoring source '{name}' from {}: {e}",
                            self.checkpoint.location()
                        ))
                    })?;
                }
            }
            for p in &self.pipelines {
                for (id, op) in &p.operators {
                    if let Some((epoch, decoded)) = self.checkpoint.read_state(id, c).await? {
                        op.restore(&decoded.schema, &decoded.batches).map_err(|e| {
                            Error::Checkpoint(format!(
                                "state/{id}/{epoch:020}.parquet in {} (epoch {epoch}): {}",
                                self.checkpoint.location(),
                                weir_sql::strip_df(&e)
                            ))
                        })?;
                    }
                }
                p.sink.publish(c).await?;
            }
        }
        self.last_committed = committed;
        let next = committed.map_or(1, |c| c + 1);
        let logged: Vec<u64> = self.checkpoint.offsets.epochs().await?;
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

    /// The checkpoint's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The last committed epoch.
    pub fn last_committed(&self) -> Option<u64> {
        self.last_committed
    }

    /// Each pipeline's physical plan, as text.
    pub fn explain(&self) -> String {
        self.pipelines
            .iter()
            .map(|p| {
                format!(
                    "-- INSERT INTO {} (pipeline {})\n{}",
                    p.sink.table(),
                    p.index,
                    displayable(p.plan.as_ref()).indent(true)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
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
                return Ok(summary.done(self.last_committed));
            }
        }
        loop {
            if *stop.borrow() {
                return Ok(summary.done(self.last_committed));
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
                            _ = stop.changed() => {}
                        }
                    }
                }
            }
        }
        if drain && !*stop.borrow() && self.watermarks.values().any(|&w| w != i64::MAX) {
            let entry = self
                .plan_epoch(true)
                .await?
                .expect("a drain epoch is always planned");
            let epoch = self.next_epoch();
            let p = self.run_epoch(epoch, entry, false).await?;
            summary.add(&p);
            on_progress(&p);
        }
        Ok(summary.done(self.last_committed))
    }

    fn next_epoch(&self) -> u64 {
        self.last_committed.map_or(1, |c| c + 1)
    }

    /// Asks every source for its next batch; `None` when none has input.
    async fn plan_epoch(&mut self, drain: bool) -> Result<Option<OffsetsEntry>> {
        let mut offsets = BTreeMap::new();
        if !drain {
            for (name, slot) in self.sources.iter_mut() {
                if let Some(o) = slot.source.plan_batch().await? {
                    offsets.insert(name.clone(), o);
                }
            }
            if offsets.is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(OffsetsEntry {
            sources: offsets,
            watermarks_in: self.watermarks.clone(),
            drain,
        }))
    }

    async fn run_epoch(&mut self, epoch: u64, entry: OffsetsEntry, replayed: bool) -> Result<BatchProgress> {
        let started = Instant::now();
        if !replayed {
            self.checkpoint.offsets.create(epoch, &entry).await.map_err(|e| match e {
                weir_storage::Error::AlreadyExists { url } => Error::Checkpoint(format!(
                    "{url} appeared while this job was running: another process is running this job on the same checkpoint"
                )),
                e => e.into(),
            })?;
        }
        self.hooks.reached(Step::OffsetsWritten, epoch);

        // Read.
        let input = match self.read_input(epoch, &entry).await {
            Ok(input) => input,
            Err(e) => return Err(self.abandon(epoch, e).await),
        };
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
            let idx =
                slot.columns.iter().position(|&c| c == declared).ok_or_else(|| {
                    Error::Config(format!("source '{name}' did not read its watermark column"))
                })?;
            for b in rows.batches.iter() {
                let ms = to_millis(b.column(idx))?;
                if let Some(m) = max(ms.as_primitive::<TimestampMillisecondType>()) {
                    *wm = (*wm).max(m.saturating_sub(decl.delay_ms));
                }
            }
        }

        // Run each pipeline.
        let mut outputs = Vec::with_capacity(self.pipelines.len());
        let mut late_rows = 0;
        for p in &self.pipelines {
            let pick = |m: &BTreeMap<String, i64>| -> BTreeMap<String, i64> {
                m.iter()
                    .filter(|(s, _)| p.sources.contains(*s))
                    .map(|(s, w)| (s.clone(), *w))
                    .collect()
            };
            let wm_out = pick(&watermarks_out).values().copied().min().unwrap_or(i64::MIN);
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
            });
            let config = self
                .state
                .config()
                .clone()
                .with_extension(Arc::clone(&epoch_input));
            let ctx = Arc::new(TaskContext::from(&self.state).with_session_config(config));
            let out = collect(Arc::clone(&p.plan), ctx).await?;
            late_rows += epoch_input.late_rows.load(Ordering::Relaxed);
            outputs.push(out);
        }
        self.hooks.reached(Step::BeforeSink, epoch);

        // Stage output.
        let mut rows_out = 0;
        for (p, out) in self.pipelines.iter().zip(&outputs) {
            let (rows, _) = p.sink.stage(epoch, &p.schema, out).await?;
            rows_out += rows;
        }
        self.hooks.reached(Step::SinkStaged, epoch);

        // State.
        let checkpoint_started = Instant::now();
        let mut state_bytes = 0;
        for (name, slot) in self.sources.iter_mut() {
            if let Some((schema, batches)) = slot.source.progress()? {
                state_bytes += self
                    .checkpoint
                    .write_state(&source_state_name(name), epoch, &schema, &batches)
                    .await?;
            }
        }
        let mut state_rows = 0u64;
        for p in &self.pipelines {
            for (id, op) in &p.operators {
                if let Some((schema, batches)) = op.snapshot()? {
                    state_bytes += self.checkpoint.write_state(id, epoch, &schema, &batches).await?;
                }
                state_rows += op.state_rows() as u64;
            }
        }
        self.hooks.reached(Step::StateWritten, epoch);

        // Commit.
        let commit = CommitEntry {
            watermarks: watermarks_out.clone(),
            rows_in,
            rows_out,
            late_rows,
            committed_at: chrono::Utc::now().to_rfc3339(),
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
        self.hooks.reached(Step::Committed, epoch);

        for p in &self.pipelines {
            p.sink.publish(epoch).await?;
        }
        self.hooks.reached(Step::Published, epoch);

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
        })
    }
}

impl StreamingJob {
    async fn read_input(&mut self, epoch: u64, entry: &OffsetsEntry) -> Result<BTreeMap<String, SourceRows>> {
        let mut input = BTreeMap::new();
        for (name, offset) in &entry.sources {
            let slot = self.sources.get_mut(name).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{} names source '{name}', which this job does not read",
                    self.checkpoint.offsets.url(epoch)
                ))
            })?;
            let batches = slot.source.read_batch(offset).await?;
            input.insert(
                name.clone(),
                SourceRows {
                    columns: Arc::clone(&slot.columns),
                    batches: Arc::new(batches),
                },
            );
        }
        Ok(input)
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
        match rollback.await {
            Ok(()) => Error::Input(format!(
                "{error}\n(epoch {epoch} was not committed; fix or remove the file and run the job again)"
            )),
            Err(e) => Error::Input(format!(
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
    }

    fn done(mut self, last: Option<u64>) -> Self {
        self.last_epoch = last;
        self
    }
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
