//! How a job is run and what it reports: the trigger, the protocol's named
//! steps (for fault injection), the options a job opens with, and the
//! progress of an epoch and of a run.

use super::*;
use crate::source::Backlog;

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
    /// A sink has published (a Kafka sink: produced its records, not yet
    /// marked them published); the others may not have.
    MidPublish,
    /// The epoch is complete.
    Published,
}

impl Step {
    /// Every step, in protocol order.
    pub const ALL: [Step; 8] = [
        Step::OffsetsWritten,
        Step::BeforeSink,
        Step::MidSinkWrite,
        Step::SinkStaged,
        Step::StateWritten,
        Step::Committed,
        Step::MidPublish,
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
            Step::MidPublish => "mid-publish",
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

pub(super) struct NoHooks;

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
    /// Where sources report what happens between epochs (a Kafka broker
    /// out of reach); by default, tracing's log.
    pub notice: Option<crate::source::Notice>,
    /// Where the sources' input is read (`weir run --cluster`): `None`
    /// reads it in this process. See [`crate::remote`].
    pub remote: Option<Arc<dyn crate::remote::RemoteReader>>,
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
            notice: None,
            remote: None,
        }
    }
}

impl JobOptions {
    /// These options with what the job's `SET`s say of the checkpoint and
    /// the stores (`checkpoint.retain_epochs`, `storage.retry_*`); the
    /// settings were checked when the job was parsed.
    pub(super) fn with_job_settings(mut self, job: &Job) -> Result<Self> {
        let bad = |key: &str, v: &str| Error::Config(format!("SET {key} = '{v}': not a valid value"));
        if let Some(v) = job.setting("checkpoint.retain_epochs") {
            self.retain_epochs = v.parse().map_err(|_| bad("checkpoint.retain_epochs", v))?;
        }
        let ms = |key: &str| -> Result<Option<String>> {
            job.setting(key)
                .map(|v| {
                    weir_sql::settings::parse_duration(v)
                        .map(|d| d.as_millis().to_string())
                        .ok_or_else(|| bad(key, v))
                })
                .transpose()
        };
        let mut retry = Vec::new();
        if let Some(v) = job.setting("storage.retry_attempts") {
            retry.push(("weir.retry_attempts".to_string(), v.to_string()));
        }
        if let Some(v) = ms("storage.retry_backoff")? {
            retry.push(("weir.retry_base_ms".to_string(), v));
        }
        if let Some(v) = ms("storage.retry_max_backoff")? {
            retry.push(("weir.retry_max_ms".to_string(), v));
        }
        if !retry.is_empty() {
            self.store_options = self.store_options.merged(&StoreOptions::new(retry));
        }
        Ok(self)
    }
}

/// What one epoch did, as reported on stderr and in `--progress-json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
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
    /// Bytes written to the checkpoint this epoch: state files and the
    /// offsets and commit entries.
    #[serde(default)]
    pub checkpoint_bytes: u64,
    /// Each source's part, by name.
    #[serde(default)]
    pub sources: Vec<SourceProgress>,
    /// Each query's sink's part, in the job's order.
    #[serde(default)]
    pub sinks: Vec<SinkProgress>,
    /// Each stateful operator's state after the epoch.
    #[serde(default)]
    pub operators: Vec<OperatorProgress>,
}

/// What one source did in an epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceProgress {
    /// The source table.
    pub name: String,
    /// Rows read.
    pub rows_in: u64,
    /// Bad records set aside.
    pub bad_rows: u64,
    /// Its watermark after the epoch (ms), if it has one yet.
    pub watermark_ms: Option<i64>,
    /// Input it knows of and has not read yet, if it can tell.
    pub backlog: Option<Backlog>,
    /// Records not read yet, by unit (a Kafka source's `topic/partition`),
    /// as of the epoch's plan.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lag: std::collections::BTreeMap<String, i64>,
}

/// What one query's sink received in an epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SinkProgress {
    /// The sink table (`live` for a live query's output).
    pub name: String,
    /// Rows written.
    pub rows_out: u64,
    /// Rows the query dropped as late (or sent to its late sink).
    pub late_rows: u64,
}

/// A stateful operator's state after an epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OperatorProgress {
    /// The operator's state table (`p0-agg0`, as in
    /// `weir checkpoint inspect`).
    pub name: String,
    /// Rows of state it holds.
    pub state_rows: u64,
    /// Bytes of its state in the checkpoint: its last snapshot and the
    /// deltas written since (what a restore reads).
    pub state_bytes: u64,
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

impl RunSummary {
    pub(super) fn add(&mut self, p: &BatchProgress) {
        self.epochs += 1;
        self.rows_in += p.rows_in;
        self.rows_out += p.rows_out;
        self.late_rows += p.late_rows;
        self.bad_rows += p.bad_rows;
    }

    pub(super) fn done(mut self, last: Option<u64>, warnings: &mut Vec<String>) -> Self {
        self.last_epoch = last;
        self.warnings.append(warnings);
        self
    }
}
