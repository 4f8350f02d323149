//! Where a pipeline's output goes: `'connector' = 'files'` (Parquet files,
//! published per epoch), `'connector' = 'blackhole'` (Flink's name: counts
//! rows, keeps nothing; for benchmarks that measure a query without its
//! output), or, for a live query, the caller (the shell) that prints rows as
//! epochs commit. Rows set aside beside the output (late rows, bad input
//! records) go to [`SideSink`]s, which keep the same contract.
//!
//! The contract (what exactly-once rests on): `stage(N, rows)` may be called
//! any number of times for an epoch and leaves the same staged output (the
//! rows of an epoch are deterministic); `publish(N)` makes epoch N's output
//! visible and is only called once `commits/N` exists. See
//! [`weir_storage::sink`] for the files sink's layout. The blackhole keeps
//! the contract trivially: nothing is staged, so nothing can be duplicated.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_sql::TableDecl;
use weir_storage::location::Create;
use weir_storage::{Location, SinkLayout, SinkOwner, StoreOptions, codec};

use crate::source::{check_options, table_store_options};
use crate::{Error, Result};

/// The options a file sink takes.
pub const OPTIONS: &[&str] = &["connector", "path", "format", "mode"];

/// `'connector' = 'blackhole'`: accepts rows, counts them, writes nothing.
#[derive(Debug)]
pub struct BlackholeSink {
    table: String,
    /// Rows staged, over all epochs (replays count again).
    rows: AtomicU64,
}

impl BlackholeSink {
    /// Opens the sink a table declares.
    pub fn open(decl: &TableDecl) -> Result<Self> {
        check_options(decl, &["connector"])?;
        Ok(Self {
            table: decl.name.clone(),
            rows: AtomicU64::new(0),
        })
    }

    /// The sink's table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Counts an epoch's rows; returns them and 0 bytes.
    pub fn stage(&self, batches: &[RecordBatch]) -> (u64, u64) {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        self.rows.fetch_add(rows, Ordering::Relaxed);
        (rows, 0)
    }

    /// Counts rows written elsewhere (a query run on a cluster).
    pub fn add_rows(&self, rows: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// Rows staged so far by this process.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

/// A Parquet file sink.
#[derive(Debug)]
pub struct FileSink {
    table: String,
    layout: SinkLayout,
    /// The checkpoint's query, which owns the folder (`crate::folders`);
    /// set once the checkpoint is claimed.
    owner: OnceLock<SinkOwner>,
    /// Whether the owner is recorded in the folder (done before the first
    /// output is staged).
    claimed: AtomicBool,
    /// `'mode' = 'changelog'`: rows carry their epoch and order (see
    /// [`with_changelog_order`]).
    changelog: bool,
    /// The columns the table declares NOT NULL: a NULL for one stops the
    /// epoch (as Flink's default `table.exec.sink.not-null-enforcer`).
    not_null: Vec<String>,
    /// Threads an epoch's file is encoded on (the job's `--threads`).
    threads: usize,
    /// The table's own store settings (`s3.` options), for writers
    /// elsewhere (`Options`: its Debug hides credentials).
    store_keys: weir_sql::Options,
    /// Whether the folder's owner record says it holds files written in
    /// parts (see [`weir_storage::sink::PARTS_VERSION`]).
    parts_marked: AtomicBool,
}

/// The column of a changelog row's epoch.
pub const EPOCH_COLUMN: &str = "_epoch";
/// The column of a changelog row's position within its epoch's output.
pub const SEQ_COLUMN: &str = "_seq";

/// A changelog's rows with `_epoch` and `_seq` (0, 1, ... in the order the
/// epoch emitted them) appended, so that a reader can apply them in order,
/// or rebuild the latest row of each key with a plain query (`ROW_NUMBER()
/// OVER (PARTITION BY key ORDER BY _epoch DESC, _seq DESC) = 1` and an `op`
/// of `+I` or `+U`). A replayed epoch emits the same rows, so the same
/// numbers.
///
/// On a cluster each part of the input (a stateless query) or shard of the
/// operator writes its own file: part `k` numbers its rows from `k * 2^32`
/// (`part` = `k`; 0 locally), so numbers stay unique in the epoch and in
/// the order of the parts, and a shard holds every row of its keys.
pub fn with_changelog_order(
    epoch: u64,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    part: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    // Nullable: a folder may also hold files written before these columns.
    fields.push(Field::new(EPOCH_COLUMN, DataType::Int64, true));
    fields.push(Field::new(SEQ_COLUMN, DataType::Int64, true));
    let out_schema = std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let mut seq = i64::try_from(part)
        .ok()
        .and_then(|k| k.checked_mul(1 << 32))
        .ok_or_else(|| Error::Config(format!("changelog order columns: part {part}")))?;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let n = b.num_rows() as i64;
        let mut columns: Vec<ArrayRef> = b.columns().to_vec();
        columns.push(std::sync::Arc::new(Int64Array::from(vec![
            epoch as i64;
            n as usize
        ])));
        columns.push(std::sync::Arc::new(Int64Array::from_iter_values(seq..seq + n)));
        seq += n;
        out.push(
            RecordBatch::try_new(std::sync::Arc::clone(&out_schema), columns)
                .map_err(|e| Error::Config(format!("changelog order columns: {e}")))?,
        );
    }
    Ok((out_schema, out))
}

impl FileSink {
    /// Opens the sink a table declares, writing as `writer`.
    pub fn open(decl: &TableDecl, writer: &str, store_options: &StoreOptions) -> Result<Self> {
        Self::check(decl)?;
        let loc = Location::open(
            decl.require("path")?,
            &table_store_options(decl, store_options),
            Create::Yes,
        )
        .map_err(|e| Error::Config(format!("sink table '{}': {e}", decl.name)))?;
        Ok(Self {
            table: decl.name.clone(),
            layout: SinkLayout::new(loc, writer),
            owner: OnceLock::new(),
            claimed: AtomicBool::new(false),
            changelog: decl
                .options
                .get("mode")
                .is_some_and(|m| m.eq_ignore_ascii_case("changelog")),
            not_null: not_null_columns(decl),
            threads: 1,
            store_keys: weir_sql::Options::new(
                decl.options
                    .iter()
                    .filter(|(k, _)| k.starts_with("s3."))
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            ),
            parts_marked: AtomicBool::new(false),
        })
    }

    /// The checks of a sink table's declaration that need no store: its
    /// connector, options and format.
    pub fn check(decl: &TableDecl) -> Result<()> {
        match decl.connector()? {
            "files" => {}
            other => {
                return Err(Error::Config(format!(
                    "sink table '{}': unknown connector '{other}' (supported: files, kafka, blackhole; a late-row or dead-letter table must be 'files')",
                    decl.name
                )));
            }
        }
        check_options(decl, OPTIONS)?;
        crate::options::refuse_metadata(decl)?;
        match decl.require("format")?.to_ascii_lowercase().as_str() {
            "parquet" => {}
            other => {
                return Err(Error::Config(format!(
                    "sink table '{}': format '{other}' is not supported for sinks; use 'parquet'",
                    decl.name
                )));
            }
        }
        Ok(())
    }

    /// Sets the query that owns the folder, and checks that no other query
    /// does.
    pub async fn set_owner(&self, checkpoint: &str, query_id: &str) -> Result<()> {
        let owner = SinkOwner {
            version: weir_storage::FORMAT_VERSION,
            checkpoint: checkpoint.to_string(),
            query_id: query_id.to_string(),
            table: self.table.clone(),
        };
        // The copy check ran when the job's folders were (see
        // `crate::folders::copy_conflict`): an owner of this query at
        // another place is this checkpoint, moved, and the record follows
        // it, so that a copy of it left at the new place is told apart.
        match SinkOwner::read(self.location()).await? {
            Some(found) if !found.same_as(&owner) => {
                return Err(crate::folders::owner_conflict(self.location(), &owner, &found));
            }
            Some(found) if found.checkpoint.trim_end_matches('/') != checkpoint.trim_end_matches('/') => {
                owner.record_move(self.location(), &found).await?;
            }
            _ => {}
        }
        let _ = self.owner.set(owner);
        Ok(())
    }

    /// Records the owner in the folder, once, before any output.
    async fn claim(&self) -> Result<()> {
        if self.claimed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(me) = self.owner.get() else {
            return Err(Error::Config(format!(
                "internal error: sink table '{}' has no owner to record",
                self.table
            )));
        };
        let found = me.claim(self.location()).await?;
        if !found.same_as(me) {
            return Err(crate::folders::owner_conflict(self.location(), me, &found));
        }
        self.claimed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The sink's table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The sink folder.
    pub fn location(&self) -> &Location {
        self.layout.location()
    }

    /// Stages an epoch's rows; returns rows and bytes written. `between`
    /// runs once the data file is written and before its manifest is.
    pub async fn stage(
        &self,
        epoch: u64,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        between: impl FnOnce() -> Result<()>,
    ) -> Result<(u64, u64)> {
        check_not_null(&self.table, &self.not_null, epoch, schema, batches)?;
        self.claim().await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            self.layout.stage_with(epoch, None, between).await?;
            return Ok((0, 0));
        }
        let url = self.layout.location().url_of(&self.layout.final_name(epoch));
        let meta = BTreeMap::from([("weir.epoch".to_string(), epoch.to_string())]);
        let bytes = if self.changelog {
            let (schema, batches) = with_changelog_order(epoch, schema, batches, 0)?;
            codec::encode_sink_parallel(&url, &schema, &batches, &meta, self.threads)?
        } else {
            codec::encode_sink_parallel(&url, schema, batches, &meta, self.threads)?
        };
        let len = bytes.content_length() as u64;
        self.layout
            .stage_with(epoch, Some((bytes, rows as u64)), between)
            .await?;
        Ok((rows as u64, len))
    }

    /// Where an epoch's files written elsewhere go (see
    /// [`crate::remote::RemoteSink::Files`]): the folder's URL and the
    /// writer and the table's own store settings. Claims the folder first,
    /// as staging does, so that no file lands in a folder another query
    /// owns.
    pub async fn remote_target(&self) -> Result<crate::remote::RemoteSink> {
        self.claim().await?;
        if !self.parts_marked.load(Ordering::Relaxed) {
            if let Some(me) = self.owner.get() {
                me.mark_parts(self.location()).await?;
            }
            self.parts_marked.store(true, Ordering::Relaxed);
        }
        Ok(crate::remote::RemoteSink::Files {
            folder: self.layout.location().url().to_string(),
            writer: self.layout.writer().to_string(),
            options: self
                .store_keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            table: self.table.clone(),
            changelog: self.changelog,
            not_null: self.not_null.clone(),
        })
    }

    /// Records an epoch whose files were staged elsewhere, one report per
    /// part: its manifest names their files (see
    /// [`weir_storage::SinkLayout::stage_files`]), once each is checked to
    /// be this sink's, there, and whole.
    pub async fn stage_remote(&self, epoch: u64, reports: Vec<crate::remote::PartReport>) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        let mut files = Vec::with_capacity(reports.len());
        for r in reports {
            match r.file {
                Some(f) => files.push((r.part, f)),
                None if r.rows_out > 0 => {
                    return Err(Error::Runtime(format!(
                        "sink table '{}': part {} of epoch {epoch} wrote {} rows but reported no file",
                        self.table, r.part, r.rows_out
                    )));
                }
                None => {}
            }
        }
        let checks: Vec<_> = files
            .iter()
            .map(|(part, f)| self.layout.check_staged(epoch, *part, f))
            .collect();
        futures::stream::iter(checks)
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await
            .map_err(|e| Error::Runtime(format!("sink table '{}': {e}", self.table)))?;
        Ok(self
            .layout
            .stage_files(epoch, files.into_iter().map(|(_, f)| f).collect())
            .await?)
    }

    /// Deletes manifests of epochs before `epoch` (their files stay).
    pub async fn prune(&self, epoch: u64) -> Result<()> {
        Ok(self.layout.prune_manifests(epoch).await?)
    }

    /// Encodes each epoch's file on up to `threads` threads (the same
    /// bytes as on one).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Publishes a committed epoch's output.
    pub async fn publish(&self, epoch: u64) -> Result<u64> {
        Ok(self.layout.publish(epoch).await?)
    }
}

/// A sink table fed beside a query's output: the late rows of a window
/// (`'late.policy' = 'sink'`) or a source's bad records
/// (`'on_error' = 'dead_letter'`). An epoch's rows are staged with the
/// epoch's output and published after its commit, so a replayed epoch
/// stages the same rows again and they appear exactly once, as output does.
/// Every epoch is staged, with or without rows.
#[derive(Debug)]
pub struct SideSink {
    /// The rows it receives (a late sink: the source's rows as a query
    /// reads them).
    schema: SchemaRef,
    sink: FileSink,
    /// A late sink's tag: the sink table of the query that judged the rows
    /// late, written beside them as [`LATE_FOR`].
    late_for: Option<String>,
}

/// The column a late sink adds to each row: the sink table of the query
/// (`INSERT INTO ...`) that judged the row late. A source read by two
/// windowed queries may have a row late for both: it is in the late table
/// once for each, told apart by this column (as Flink's late-data side
/// outputs are per window operator).
pub const LATE_FOR: &str = weir_sql::nodes::LATE_FOR;

impl SideSink {
    /// Opens the sink a table declares, for rows of `schema`, writing as
    /// `writer`.
    pub fn open(
        decl: &TableDecl,
        writer: &str,
        store_options: &StoreOptions,
        schema: SchemaRef,
    ) -> Result<Self> {
        Ok(Self {
            schema,
            sink: FileSink::open(decl, writer, store_options)?,
            late_for: None,
        })
    }

    /// Opens a source's late sink for the late rows (of `schema`) of the
    /// query that writes to sink table `late_for`; each row written gets
    /// [`LATE_FOR`].
    pub fn open_late(
        decl: &TableDecl,
        writer: &str,
        store_options: &StoreOptions,
        schema: SchemaRef,
        late_for: &str,
    ) -> Result<Self> {
        if schema.field_with_name(LATE_FOR).is_ok() {
            return Err(Error::Config(format!(
                "late sink '{}': the source has a column named '{LATE_FOR}', the name of the column a late \
                 sink adds (the query that judged the row late); rename it in the query",
                decl.name
            )));
        }
        Ok(Self {
            schema,
            sink: FileSink::open(decl, writer, store_options)?,
            late_for: Some(late_for.to_string()),
        })
    }

    /// The sink's table name.
    pub fn table(&self) -> &str {
        self.sink.table()
    }

    /// The shape of the rows it receives.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The shape of the rows it writes: those it receives, and a late
    /// sink's [`LATE_FOR`].
    pub fn file_schema(&self) -> SchemaRef {
        if self.late_for.is_none() {
            return Arc::clone(&self.schema);
        }
        let mut fields: Vec<_> = self.schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(LATE_FOR, DataType::Utf8, false)));
        Arc::new(Schema::new_with_metadata(fields, self.schema.metadata().clone()))
    }

    /// The sink folder.
    pub fn location(&self) -> &Location {
        self.sink.location()
    }

    /// The file sink it writes with.
    pub fn files(&self) -> &FileSink {
        &self.sink
    }

    /// Stages an epoch's rows; returns how many.
    pub async fn stage(&self, epoch: u64, rows: &[RecordBatch]) -> Result<u64> {
        let Some(tag) = &self.late_for else {
            return Ok(self.sink.stage(epoch, &self.schema, rows, || Ok(())).await?.0);
        };
        let schema = self.file_schema();
        let tagged = rows
            .iter()
            .map(|b| {
                let mut columns = b.columns().to_vec();
                columns.push(Arc::new(StringArray::from(vec![tag.as_str(); b.num_rows()])));
                RecordBatch::try_new(Arc::clone(&schema), columns)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(self.sink.stage(epoch, &schema, &tagged, || Ok(())).await?.0)
    }

    /// Publishes a committed epoch's rows.
    pub async fn publish(&self, epoch: u64) -> Result<()> {
        self.sink.publish(epoch).await.map(|_| ())
    }

    /// Deletes manifests of epochs before `epoch` (their files stay).
    pub async fn prune(&self, epoch: u64) -> Result<()> {
        self.sink.prune(epoch).await
    }
}

/// One committed epoch of a live query's output.
#[derive(Clone, Debug)]
pub struct LiveBatch {
    /// The epoch.
    pub epoch: u64,
    /// Its rows (never empty: epochs without output are not sent).
    pub batches: Vec<RecordBatch>,
}

/// Where a live query's committed output is sent. Sending waits while the
/// receiver is behind, so a slow reader slows the query instead of
/// buffering without bound.
pub type LiveSender = mpsc::Sender<LiveBatch>;

/// A live query's sink: holds an epoch's rows until the epoch commits, then
/// sends them to the caller.
#[derive(Debug)]
pub struct LiveSink {
    sender: LiveSender,
    staged: Mutex<Option<LiveBatch>>,
}

impl LiveSink {
    /// A sink sending to `sender`.
    pub fn new(sender: LiveSender) -> Self {
        Self {
            sender,
            staged: Mutex::new(None),
        }
    }

    fn stage(&self, epoch: u64, batches: &[RecordBatch]) -> u64 {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let batches: Vec<RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).cloned().collect();
        let staged = (rows > 0).then_some(LiveBatch { epoch, batches });
        *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = staged;
        rows as u64
    }

    async fn publish(&self, epoch: u64) -> Result<()> {
        let staged = self.staged.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(batch) = staged.filter(|b| b.epoch == epoch) else {
            return Ok(());
        };
        self.sender
            .send(batch)
            .await
            .map_err(|_| Error::Config("the live query's reader has gone".into()))
    }
}

/// A pipeline's sink.
#[derive(Debug)]
pub enum PipelineSink {
    /// A declared sink table.
    Files(Box<FileSink>),
    /// A declared `'connector' = 'blackhole'` table.
    Blackhole(BlackholeSink),
    /// A declared `'connector' = 'kafka'` table.
    Kafka(Box<crate::kafka_sink::KafkaSink>),
    /// The caller of a live query.
    Live(LiveSink),
}

impl PipelineSink {
    /// The sink of a pipeline: the declared table's, or (with no table) the
    /// live query's sender.
    /// A Kafka sink stages its epochs in `checkpoint`, under
    /// `kafka-sinks/<writer>/`.
    pub fn open(
        decl: Option<&TableDecl>,
        writer: &str,
        store_options: &StoreOptions,
        live: Option<&LiveSender>,
        checkpoint: &weir_storage::Location,
    ) -> Result<Self> {
        match (decl, live) {
            (Some(decl), _) if decl.connector()? == "blackhole" => {
                Ok(Self::Blackhole(BlackholeSink::open(decl)?))
            }
            (Some(decl), _) if decl.connector()? == "kafka" => Ok(Self::Kafka(Box::new(
                crate::kafka_sink::KafkaSink::open(decl, checkpoint.child(&format!("kafka-sinks/{writer}")))?,
            ))),
            (Some(decl), _) => Ok(Self::Files(Box::new(FileSink::open(
                decl,
                writer,
                store_options,
            )?))),
            (None, Some(sender)) => Ok(Self::Live(LiveSink::new(sender.clone()))),
            (None, None) => Err(Error::Config(
                "a query without a sink table needs a live output to send its rows to".into(),
            )),
        }
    }

    /// The checks of [`PipelineSink::open`] that write nothing: run before
    /// a job's checkpoint is created, so that a sink declared wrongly
    /// leaves no checkpoint folder behind.
    pub fn check(decl: &TableDecl) -> Result<()> {
        match decl.connector()? {
            "blackhole" => BlackholeSink::open(decl).map(drop),
            "kafka" => {
                // The staging location is not touched when opening.
                let staging = weir_storage::Location::open(
                    "memory://weir-sink-check/",
                    &StoreOptions::default(),
                    Create::Yes,
                )
                .map_err(|e| Error::Config(format!("sink table '{}': {e}", decl.name)))?;
                crate::kafka_sink::KafkaSink::open(decl, staging).map(drop)
            }
            _ => FileSink::check(decl),
        }
    }

    /// What the pipeline writes to, for plans and messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Files(f) => format!("INSERT INTO {}", f.table()),
            Self::Blackhole(b) => format!("INSERT INTO {} (blackhole)", b.table()),
            Self::Kafka(k) => format!("INSERT INTO {} (Kafka topic '{}')", k.table(), k.topic()),
            Self::Live(_) => "SELECT (live results)".into(),
        }
    }

    /// The sink table's name (`live` for a live query's output), as in
    /// metrics.
    pub fn name(&self) -> &str {
        match self {
            Self::Files(f) => f.table(),
            Self::Blackhole(b) => b.table(),
            Self::Kafka(k) => k.table(),
            Self::Live(_) => "live",
        }
    }

    /// Whether this is a live query's sink.
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Live(_))
    }

    /// Threads a file sink encodes an epoch's file on.
    pub fn set_threads(&mut self, threads: usize) {
        if let Self::Files(f) = self {
            f.set_threads(threads);
        }
    }

    /// The file sink, for a declared sink table.
    pub fn files(&self) -> Option<&FileSink> {
        match self {
            Self::Files(f) => Some(f),
            Self::Blackhole(_) | Self::Kafka(_) | Self::Live(_) => None,
        }
    }

    /// Deletes manifests of epochs before `epoch` (file sinks).
    pub async fn prune(&self, epoch: u64) -> Result<()> {
        match self {
            Self::Files(f) => f.prune(epoch).await,
            Self::Blackhole(_) | Self::Kafka(_) | Self::Live(_) => Ok(()),
        }
    }

    /// Stages an epoch's rows; returns rows and bytes written. `between`
    /// runs mid-write (see [`FileSink::stage`]).
    pub async fn stage(
        &self,
        epoch: u64,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        between: impl FnOnce() -> Result<()>,
    ) -> Result<(u64, u64)> {
        match self {
            Self::Files(f) => f.stage(epoch, schema, batches, between).await,
            Self::Kafka(k) => k.stage(epoch, schema, batches, between).await,
            Self::Blackhole(b) => {
                between()?;
                Ok(b.stage(batches))
            }
            Self::Live(l) => Ok((l.stage(epoch, batches), 0)),
        }
    }

    /// Publishes a committed epoch's output (for a live query: sends it).
    /// `between` runs once the output is out (a Kafka sink's records
    /// produced) and before the sink notes it is (see
    /// [`crate::kafka_sink::KafkaSink::publish`]).
    pub async fn publish(&self, epoch: u64, between: impl FnOnce() -> Result<()>) -> Result<()> {
        match self {
            Self::Files(f) => {
                f.publish(epoch).await?;
                between()
            }
            Self::Kafka(k) => k.publish(epoch, between).await.map(|_| ()),
            Self::Blackhole(_) => between(),
            Self::Live(l) => {
                l.publish(epoch).await?;
                between()
            }
        }
    }
}

/// The columns a sink table declares NOT NULL.
pub(crate) fn not_null_columns(decl: &TableDecl) -> Vec<String> {
    decl.schema
        .iter()
        .flat_map(|s| s.fields().iter())
        .filter(|f| !f.is_nullable())
        .map(|f| f.name().clone())
        .collect()
}

/// Refuses an epoch's rows when one of `not_null` holds a NULL, as Flink's
/// default `table.exec.sink.not-null-enforcer` does: the sink checks before
/// it stages anything, so the epoch is not committed and the fixed query
/// replays it.
pub fn check_not_null(
    table: &str,
    not_null: &[String],
    epoch: u64,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<()> {
    for name in not_null {
        let Ok(i) = schema.index_of(name) else { continue };
        if batches.iter().any(|b| b.column(i).null_count() > 0) {
            return Err(Error::Config(format!(
                "sink table '{table}': column '{name}' is declared NOT NULL, but the query gave it a NULL in \
                 epoch {epoch} (nothing of the epoch was written). Filter such rows out (WHERE {name} IS \
                 NOT NULL), give a default (COALESCE), or declare the column without NOT NULL"
            )));
        }
    }
    Ok(())
}
