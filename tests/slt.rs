//! The streaming SQL test suite: `.slt` files under `tests/slt/`, run with
//! the `sqllogictest` crate against Weir's engine (in-process).
//!
//! ```sh
//! cargo test -p weir-engine --test slt                   # every file, every mode
//! cargo test -p weir-engine --test slt -- hop            # files whose name contains "hop"
//! cargo test -p weir-engine --test slt -- --complete     # rewrite expected output
//! ```
//!
//! Besides SQL, a file uses these statements:
//!
//! | statement | meaning |
//! |---|---|
//! | `CREATE TABLE t (...) WITH (...)` | a table; `path` and `format` default to a folder of this test and Parquet |
//! | `INSERT INTO t VALUES (...), ...` | appends one input file of these rows to source `t` (every column nullable in the file, so a `NULL` in a `NOT NULL` column makes a bad record) |
//! | `INSERT INTO t/P VALUES (...), ...` | for a Kafka table `t`: produces the rows as JSON records to partition `P` (one record batch; `t` alone is partition 0) |
//! | `INSERT INTO sink SELECT ...` | a streaming query of the job (declare all before the first `RUN`) |
//! | `RUN` | runs one micro-batch (epoch) |
//! | `RUN ALL` | runs epochs until the input is processed |
//! | `RUN DRAIN` | `RUN ALL`, then closes every window (`--drain`) |
//! | `RESTART` | stops the job and opens it again from its checkpoint |
//! | `SELECT ... FROM sink` | a batch query over a sink's committed files |
//! | `STATE ROWS` / `LATE ROWS` / `BAD ROWS` | rows held by the job's operators / late rows dropped / bad input records set aside, so far |
//! | `EXPLAIN` | the job's plans, one line per row (put `skipif threads` before it: with two threads the physical plan differs) |
//!
//! A Kafka table (`'connector' = 'kafka'`, `'topic' = 'name'`) is read from
//! the broker at `WEIR_TEST_KAFKA` (as `.ci/run` sets it): each run gets
//! topics of its own (`slt-<pid>-<n>-name`), made with
//! `'slt.partitions' = 'N'` partitions (default 1; the option is the
//! harness's, taken out of the SQL), and the broker's address and
//! `'format' = 'json'` are filled in. A record's timestamp is its row's first
//! TIMESTAMP column (else 0). Without a broker such a file is skipped with a
//! note, unless `WEIR_REQUIRE_KAFKA` is set.
//!
//! Every file runs four times, each with a fresh checkpoint, and must give
//! the same answers: **straight**; **restart**, the job reopened from its
//! checkpoint before every epoch; **crash**, every epoch failed just before its
//! commit (state and sink output written, commit not) and then replayed by a
//! reopened job; **threads**, with several threads, so that keyed state is
//! split into shards, reopened before every other epoch under another
//! thread count (2, 3, 1, ...: every shard's state file read back and dealt
//! to the new shards; a plan run for several epochs).
//! `--complete` rewrites the expected output from a straight run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionContext;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use weir_engine::{EpochHooks, JobOptions, Step, StreamingJob, Trigger};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Straight,
    Restart,
    Crash,
    /// Several threads (keyed state in shards), restarted before every
    /// other epoch under another thread count: 2, then 3, then 1, and
    /// again (a checkpoint's state is one file per shard; a restore deals
    /// every shard's rows to the new shards).
    Threads,
}

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

fn err(e: impl std::fmt::Display) -> SltError {
    SltError(e.to_string())
}

/// Fails the first epoch that reaches the step before its commit, once.
struct CrashBeforeCommit {
    armed: AtomicBool,
}

impl EpochHooks for CrashBeforeCommit {
    fn reached(&self, step: Step, epoch: u64) -> weir_engine::Result<()> {
        if step == Step::StateWritten && self.armed.swap(false, Ordering::SeqCst) {
            return Err(weir_engine::Error::Checkpoint(format!(
                "injected crash before commit of epoch {epoch}"
            )));
        }
        Ok(())
    }
}

struct StreamDb {
    mode: Mode,
    dir: tempfile::TempDir,
    /// CREATE TABLE / CREATE VIEW / SET statements, with paths filled in.
    ddl: Vec<String>,
    /// The job's INSERT INTO ... SELECT statements.
    queries: Vec<String>,
    /// Tables with declared columns (they can take `INSERT ... VALUES`).
    inputs: BTreeMap<String, (SchemaRef, PathBuf)>,
    job: Option<StreamingJob>,
    files: usize,
    /// Steps run (the threads mode reopens the job before every other one).
    steps: u64,
    late_rows: u64,
    bad_rows: u64,
    /// Kafka tables: name -> (declared schema, topic made for this run).
    kafka: BTreeMap<String, (SchemaRef, String)>,
}

/// The broker of the Kafka tables (`WEIR_TEST_KAFKA`).
fn kafka_broker() -> Option<String> {
    std::env::var("WEIR_TEST_KAFKA").ok().filter(|b| !b.is_empty())
}

async fn kafka_client() -> Result<rskafka::client::Client, SltError> {
    let broker = kafka_broker().ok_or_else(|| err("a Kafka table needs WEIR_TEST_KAFKA"))?;
    rskafka::client::ClientBuilder::new(vec![broker])
        .build()
        .await
        .map_err(err)
}

impl StreamDb {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            dir: tempfile::tempdir().expect("tempdir"),
            ddl: vec![],
            queries: vec![],
            inputs: BTreeMap::new(),
            job: None,
            files: 0,
            steps: 0,
            late_rows: 0,
            bad_rows: 0,
            kafka: BTreeMap::new(),
        }
    }

    fn job_sql(&self, extra: Option<&str>) -> String {
        let mut s: String = self
            .ddl
            .iter()
            .chain(&self.queries)
            .map(|q| format!("{q};\n"))
            .collect();
        if let Some(e) = extra {
            s.push_str(e);
            s.push_str(";\n");
        }
        s
    }

    fn checkpoint(&self) -> String {
        self.dir.path().join("checkpoint").display().to_string()
    }

    async fn open(&self, crash: bool) -> Result<StreamingJob, SltError> {
        let mut options = JobOptions::new(self.checkpoint());
        if self.mode == Mode::Threads {
            options.threads = [2, 3, 1][(self.steps / 2 % 3) as usize];
        }
        if crash {
            options.hooks = Arc::new(CrashBeforeCommit {
                armed: AtomicBool::new(true),
            });
        }
        StreamingJob::open(&self.job_sql(None), options)
            .await
            .map_err(err)
    }

    /// Runs at most one epoch, as the mode says; returns epochs committed.
    async fn step(&mut self, trigger: Trigger, drain: bool) -> Result<u64, SltError> {
        let (_tx, stop) = tokio::sync::watch::channel(false);
        let (mut late, mut bad) = (0, 0);
        let mut on_progress = |p: &weir_engine::BatchProgress| {
            late += p.late_rows;
            bad += p.bad_rows;
        };
        let epochs = match self.mode {
            Mode::Straight => {
                if self.job.is_none() {
                    self.job = Some(self.open(false).await?);
                }
                let job = self.job.as_mut().expect("opened");
                job.run(trigger, drain, stop, &mut on_progress)
                    .await
                    .map_err(err)?
                    .epochs
            }
            Mode::Threads if self.job.is_some() && self.steps % 2 == 1 => {
                self.steps += 1;
                let job = self.job.as_mut().expect("opened");
                job.run(trigger, drain, stop, &mut on_progress)
                    .await
                    .map_err(err)?
                    .epochs
            }
            Mode::Restart | Mode::Threads => {
                self.steps += 1;
                self.job = None;
                let mut job = self.open(false).await?;
                let n = job
                    .run(trigger, drain, stop, &mut on_progress)
                    .await
                    .map_err(err)?
                    .epochs;
                self.job = Some(job);
                n
            }
            Mode::Crash => {
                self.job = None;
                let mut job = self.open(true).await?;
                let first = job.run(trigger, drain, stop.clone(), &mut |_| {}).await;
                drop(job);
                let mut job = self.open(false).await?;
                let n = match first {
                    // Nothing to do: no epoch ran, none crashed.
                    Ok(s) if s.epochs == 0 => 0,
                    Ok(s) => {
                        return Err(err(format!(
                            "the injected crash did not happen ({} epochs)",
                            s.epochs
                        )));
                    }
                    Err(e) if e.to_string().contains("injected crash") => {
                        // The replay of the crashed epoch.
                        job.run(Trigger::Once, false, stop, &mut on_progress)
                            .await
                            .map_err(err)?
                            .epochs
                    }
                    Err(e) => return Err(err(e)),
                };
                self.job = Some(job);
                n
            }
        };
        self.late_rows += late;
        self.bad_rows += bad;
        Ok(epochs)
    }

    async fn run_command(&mut self, cmd: &str) -> Result<(), SltError> {
        match cmd {
            "RUN" => {
                self.step(Trigger::Once, false).await?;
            }
            "RUN ALL" | "RUN DRAIN" => {
                if self.mode == Mode::Straight {
                    self.step(Trigger::AvailableNow, false).await?;
                } else {
                    while self.step(Trigger::Once, false).await? > 0 {}
                }
                if cmd == "RUN DRAIN" {
                    // The drain epoch itself (it has no input).
                    self.step(Trigger::AvailableNow, true).await?;
                }
            }
            "RESTART" => {
                self.job = None;
                self.job = Some(self.open(false).await?);
            }
            other => return Err(err(format!("unknown harness statement {other}"))),
        }
        Ok(())
    }

    /// `CREATE TABLE` with `path` and `format` filled in.
    async fn create_table(&mut self, sql: &str) -> Result<(), SltError> {
        let decl = weir_sql::job::parse_create_table(sql).map_err(err)?;
        if decl.options.get("connector") == Some("kafka") {
            return self.create_kafka_table(sql, &decl).await;
        }
        let folder = self.dir.path().join("tables").join(&decl.name);
        let mut extra = Vec::new();
        if decl.options.get("path").is_none() {
            extra.push(format!("'path' = '{}/'", folder.display()));
        }
        if decl.options.get("format").is_none() {
            extra.push("'format' = 'parquet'".to_string());
        }
        if decl.options.get("connector").is_none() {
            extra.push("'connector' = 'files'".to_string());
        }
        let sql = if extra.is_empty() {
            sql.to_string()
        } else if let Some(pos) = sql.to_ascii_uppercase().rfind("WITH (") {
            let at = pos + "WITH (".len();
            format!("{}{}, {}", &sql[..at], extra.join(", "), &sql[at..])
        } else {
            format!("{sql} WITH ({})", extra.join(", "))
        };
        if let Some(schema) = &decl.schema {
            std::fs::create_dir_all(&folder).map_err(err)?;
            self.inputs
                .insert(decl.name.clone(), (Arc::clone(schema), folder));
        }
        self.ddl.push(sql);
        Ok(())
    }

    /// A Kafka table: a topic of this run's own, and the broker filled in.
    async fn create_kafka_table(&mut self, sql: &str, decl: &weir_sql::TableDecl) -> Result<(), SltError> {
        static TOPICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let broker = kafka_broker().ok_or_else(|| err("a Kafka table needs WEIR_TEST_KAFKA"))?;
        let name = decl
            .options
            .get("topic")
            .ok_or_else(|| err("a Kafka table names its 'topic'"))?;
        let topic = format!(
            "slt-{}-{}-{name}",
            std::process::id(),
            TOPICS.fetch_add(1, Ordering::SeqCst)
        );
        let partitions: i32 = match decl.options.get("slt.partitions") {
            Some(n) => n.parse().map_err(err)?,
            None => 1,
        };
        let client = kafka_client().await?;
        client
            .controller_client()
            .map_err(err)?
            .create_topic(&topic, partitions, 1, 5_000)
            .await
            .map_err(err)?;
        for p in 0..partitions {
            client
                .partition_client(
                    topic.as_str(),
                    p,
                    rskafka::client::partition::UnknownTopicHandling::Retry,
                )
                .await
                .map_err(err)?;
        }
        let mut sql = sql
            .replace(&format!("'topic' = '{name}'"), &format!("'topic' = '{topic}'"))
            .replace(&format!(", 'slt.partitions' = '{partitions}'"), "")
            .replace(&format!("'slt.partitions' = '{partitions}',"), "");
        let mut extra = vec![format!("'properties.bootstrap.servers' = '{broker}'")];
        if decl.options.get("format").is_none() {
            extra.push("'format' = 'json'".to_string());
        }
        let pos = sql
            .to_ascii_uppercase()
            .rfind("WITH (")
            .ok_or_else(|| err("a Kafka table has a WITH clause"))?;
        sql.insert_str(pos + "WITH (".len(), &format!("{}, ", extra.join(", ")));
        if let Some(schema) = &decl.schema {
            // The record's value holds the columns that are not metadata.
            let value: Vec<Field> = schema
                .fields()
                .iter()
                .filter(|f| !decl.metadata.contains_key(f.name()))
                .map(|f| f.as_ref().clone())
                .collect();
            self.kafka
                .insert(decl.name.clone(), (Arc::new(Schema::new(value)), topic));
        }
        self.ddl.push(sql);
        Ok(())
    }

    /// `INSERT INTO t[/P] VALUES ...` into a Kafka table: one record per
    /// row, as a JSON object (a NULL field left out), to partition `P`.
    async fn produce(&mut self, table: &str, values: &str) -> Result<(), SltError> {
        let (table, partition) = match table.split_once('/') {
            Some((t, p)) => (t, p.parse::<i32>().map_err(err)?),
            None => (table, 0),
        };
        let (schema, topic) = self.kafka.get(table).cloned().ok_or_else(|| {
            err(format!(
                "INSERT ... VALUES into '{table}', which is not a Kafka table with columns"
            ))
        })?;
        let mut records = Vec::new();
        for b in self.values_batches(table, &schema, values).await? {
            let mut buf = Vec::new();
            {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
                w.write(&b).map_err(err)?;
                w.finish().map_err(err)?;
            }
            let times = b
                .columns()
                .iter()
                .find(|c| matches!(c.data_type(), DataType::Timestamp(..)))
                .map(|c| {
                    cast(
                        c,
                        &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
                    )
                })
                .transpose()
                .map_err(err)?;
            for (i, line) in buf.split(|&c| c == b'\n').filter(|l| !l.is_empty()).enumerate() {
                let ms = times
                    .as_ref()
                    .map(|t| {
                        use datafusion::arrow::array::AsArray;
                        let t = t.as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
                        if datafusion::arrow::array::Array::is_valid(t, i) {
                            t.value(i)
                        } else {
                            0
                        }
                    })
                    .unwrap_or(0);
                records.push(rskafka::record::Record {
                    key: None,
                    value: Some(line.to_vec()),
                    headers: BTreeMap::new(),
                    timestamp: chrono::DateTime::from_timestamp_millis(ms)
                        .ok_or_else(|| err("a timestamp"))?,
                });
            }
        }
        let client = kafka_client().await?;
        client
            .partition_client(
                topic.as_str(),
                partition,
                rskafka::client::partition::UnknownTopicHandling::Error,
            )
            .await
            .map_err(err)?
            .produce(records, rskafka::client::partition::Compression::NoCompression)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// The rows of `VALUES ...` as batches of `schema`, every column nullable.
    async fn values_batches(
        &self,
        table: &str,
        schema: &SchemaRef,
        values: &str,
    ) -> Result<Vec<RecordBatch>, SltError> {
        let ctx = SessionContext::new();
        let batches = ctx.sql(values).await.map_err(err)?.collect().await.map_err(err)?;
        let schema = nullable(schema);
        let mut out = Vec::new();
        for b in batches {
            if b.num_columns() != schema.fields().len() {
                return Err(err(format!(
                    "{table} has {} columns, the VALUES {}",
                    schema.fields().len(),
                    b.num_columns()
                )));
            }
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            out.push(RecordBatch::try_new(Arc::clone(&schema), cols).map_err(err)?);
        }
        Ok(out)
    }

    /// `INSERT INTO source VALUES ...`: one more input file.
    async fn append(&mut self, table: &str, values: &str) -> Result<(), SltError> {
        if self.kafka.contains_key(table.split('/').next().unwrap_or(table)) {
            return self.produce(table, values).await;
        }
        let (schema, folder) = self.inputs.get(table).cloned().ok_or_else(|| {
            err(format!(
                "INSERT ... VALUES into '{table}', which declares no columns"
            ))
        })?;
        let out = self.values_batches(table, &schema, values).await?;
        let schema = nullable(&schema);
        self.files += 1;
        let path = folder.join(format!("in-{:05}.parquet", self.files));
        let tmp = folder.join(format!(".in-{:05}.writing", self.files));
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(&tmp).map_err(err)?,
            Arc::clone(&schema),
            None,
        )
        .map_err(err)?;
        for b in &out {
            w.write(b).map_err(err)?;
        }
        w.close().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok(())
    }

    /// A batch query over the sinks' committed files.
    async fn select(&mut self, sql: &str) -> Result<Vec<Vec<String>>, SltError> {
        if self.job.is_none() {
            self.job = Some(self.open(false).await?);
        }
        let job = self.job.as_ref().expect("opened");
        let ctx = SessionContext::new();
        for (table, schema, url) in job.sinks() {
            let path = url.strip_prefix("file://").unwrap_or(&url).to_string();
            // A changelog's files also carry each row's epoch and its
            // position in it.
            let schema = if schema.fields().first().is_some_and(|f| f.name() == "op") {
                let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(Field::new("_epoch", DataType::Int64, true));
                fields.push(Field::new("_seq", DataType::Int64, true));
                Arc::new(Schema::new(fields))
            } else {
                schema
            };
            let options =
                ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
            ctx.register_listing_table(table.as_str(), format!("{path}/"), options, Some(schema), None)
                .await
                .map_err(err)?;
        }
        let batches = ctx.sql(sql).await.map_err(err)?.collect().await.map_err(err)?;
        Ok(rows_of(&batches))
    }
}

/// The schema with every column nullable: input may hold what the
/// declaration refuses (bad records).
fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

fn rows_of(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let f: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("formattable"))
            .collect();
        for i in 0..b.num_rows() {
            rows.push(
                f.iter()
                    .map(|f| {
                        let v = f.value(i).to_string();
                        if v.is_empty() { "(empty)".to_string() } else { v }
                    })
                    .collect(),
            );
        }
    }
    rows
}

fn text_rows(n: usize, rows: Vec<Vec<String>>) -> DBOutput<DefaultColumnType> {
    DBOutput::Rows {
        types: vec![DefaultColumnType::Any; n],
        rows,
    }
}

#[async_trait]
impl AsyncDB for StreamDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let sql = sql.trim().trim_end_matches(';').trim();
        let words: Vec<String> = sql
            .split_whitespace()
            .take(4)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let first = |n: usize| words.iter().take(n).cloned().collect::<Vec<_>>().join(" ");
        match first(1).as_str() {
            "RUN" | "RESTART" => {
                self.run_command(&words.join(" ")).await?;
                return Ok(DBOutput::StatementComplete(0));
            }
            "STATE" => {
                let rows = self.job.as_ref().map_or(0, |j| j.state_rows());
                return Ok(text_rows(1, vec![vec![rows.to_string()]]));
            }
            "LATE" => return Ok(text_rows(1, vec![vec![self.late_rows.to_string()]])),
            "BAD" => return Ok(text_rows(1, vec![vec![self.bad_rows.to_string()]])),
            "EXPLAIN" => {
                if self.job.is_none() {
                    self.job = Some(self.open(false).await?);
                }
                let text = self.job.as_ref().expect("opened").explain();
                let rows = text
                    .lines()
                    .map(|l| vec![l.trim_end().to_string()])
                    .filter(|r| !r[0].is_empty())
                    .collect();
                return Ok(text_rows(1, rows));
            }
            "SELECT" | "WITH" => {
                let rows = self.select(sql).await?;
                let n = rows.first().map_or(1, Vec::len);
                return Ok(text_rows(n, rows));
            }
            "SET" => {
                self.ddl.push(sql.to_string());
                return Ok(DBOutput::StatementComplete(0));
            }
            _ => {}
        }
        match first(2).as_str() {
            "CREATE TABLE" => {
                self.create_table(sql).await?;
                return Ok(DBOutput::StatementComplete(0));
            }
            "CREATE VIEW" => {
                self.ddl.push(sql.to_string());
                return Ok(DBOutput::StatementComplete(0));
            }
            "INSERT INTO" => {
                let table = sql.split_whitespace().nth(2).unwrap_or("").to_ascii_lowercase();
                let rest = sql
                    .splitn(4, char::is_whitespace)
                    .nth(3)
                    .unwrap_or("")
                    .trim_start();
                if rest.to_ascii_uppercase().starts_with("VALUES") {
                    self.append(&table, rest).await?;
                    return Ok(DBOutput::StatementComplete(0));
                }
                if self.job.is_some() {
                    return Err(err("declare every INSERT INTO ... SELECT before the first RUN"));
                }
                // Plan it now, so that `statement error` sees planning errors.
                let job = weir_sql::Job::parse(&self.job_sql(Some(sql))).map_err(err)?;
                weir_sql::StreamPlanner::new(&job, None, Default::default())
                    .map_err(err)?
                    .plan()
                    .await
                    .map_err(err)?;
                self.queries.push(sql.to_string());
                return Ok(DBOutput::StatementComplete(0));
            }
            _ => {}
        }
        Err(err(format!("the harness does not know what to do with `{sql}`")))
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "weir"
    }
}

fn slt_files(filter: &[String]) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .filter(|p| filter.is_empty() || filter.iter().any(|f| p.to_string_lossy().contains(f.as_str())))
        .collect();
    files.sort();
    files
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filter: Vec<String> = args.iter().filter(|a| !a.starts_with('-')).cloned().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut failures = 0;
    let files = slt_files(&filter);
    for file in &files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if complete {
            let mut runner = sqllogictest::Runner::new(|| async { Ok(StreamDb::new(Mode::Straight)) });
            let result = rt.block_on(runner.update_test_file(
                file,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            ));
            match result {
                Ok(()) => println!("completed {name}"),
                Err(e) => {
                    failures += 1;
                    println!("FAILED to complete {name}: {e}");
                }
            }
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains("'connector' = 'kafka'") && kafka_broker().is_none() {
            if std::env::var_os("WEIR_REQUIRE_KAFKA").is_some() {
                failures += 1;
                println!("FAIL {name}: WEIR_REQUIRE_KAFKA is set, but WEIR_TEST_KAFKA (a broker) is not");
            } else {
                println!(
                    "SKIPPED {name}: its Kafka tables need a broker (WEIR_TEST_KAFKA; .ci/run starts one)"
                );
            }
            continue;
        }
        for mode in [Mode::Straight, Mode::Restart, Mode::Crash, Mode::Threads] {
            if mode == Mode::Threads && name == "explain.slt" {
                // Its physical plans show one thread; with two, each keyed
                // operator gets a hash repartition under it.
                continue;
            }
            let mut runner = sqllogictest::Runner::new(move || async move { Ok(StreamDb::new(mode)) });
            if mode == Mode::Threads {
                // `skipif threads` before a record: its physical plan has a
                // hash repartition under each keyed operator here.
                runner.add_label("threads");
            }
            match rt.block_on(runner.run_file_async(file)) {
                Ok(()) => println!("ok   {name} ({mode:?})"),
                Err(e) => {
                    failures += 1;
                    println!("FAIL {name} ({mode:?}):\n{}", e.display(false));
                }
            }
        }
    }
    println!("{} file(s), {} failure(s)", files.len(), failures);
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
