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
//! | `INSERT INTO sink SELECT ...` | a streaming query of the job (declare all before the first `RUN`) |
//! | `RUN` | runs one micro-batch (epoch) |
//! | `RUN ALL` | runs epochs until the input is processed |
//! | `RUN DRAIN` | `RUN ALL`, then closes every window (`--drain`) |
//! | `RESTART` | stops the job and opens it again from its checkpoint |
//! | `SELECT ... FROM sink` | a batch query over a sink's committed files |
//! | `STATE ROWS` / `LATE ROWS` / `BAD ROWS` | rows held by the job's operators / late rows dropped / bad input records set aside, so far |
//! | `EXPLAIN` | the job's plans, one line per row (put `skipif threads` before it: with two threads the physical plan differs) |
//!
//! Every file runs four times, each with a fresh checkpoint, and must give
//! the same answers: **straight**; **restart**, the job reopened from its
//! checkpoint before every epoch; **crash**, every epoch failed just before its
//! commit (state and sink output written, commit not) and then replayed by a
//! reopened job; **threads**, with two threads, so that keyed state is split
//! into two shards, reopened before every other epoch (state dealt back to
//! the shards; a plan run for several epochs).
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
    /// Two threads (keyed state in two shards), restarted before every
    /// other epoch.
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
            options.threads = 2;
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
    fn create_table(&mut self, sql: &str) -> Result<(), SltError> {
        let decl = weir_sql::job::parse_create_table(sql).map_err(err)?;
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

    /// `INSERT INTO source VALUES ...`: one more input file.
    async fn append(&mut self, table: &str, values: &str) -> Result<(), SltError> {
        let (schema, folder) = self.inputs.get(table).cloned().ok_or_else(|| {
            err(format!(
                "INSERT ... VALUES into '{table}', which declares no columns"
            ))
        })?;
        let ctx = SessionContext::new();
        let batches = ctx.sql(values).await.map_err(err)?.collect().await.map_err(err)?;
        // Files may hold what the declaration refuses (bad records).
        let schema: SchemaRef = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
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
                self.create_table(sql)?;
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
