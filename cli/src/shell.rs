//! The shell: what `weir` runs when given no command, and what `weir -f`,
//! `weir -i` and piped input run through, so a saved file behaves exactly as
//! the same text typed.
//!
//! ```text
//!  statement                         runs as
//!  CREATE TABLE / DROP TABLE         the session's catalog (catalog.rs)
//!  INSERT INTO sink SELECT ...       a background StreamingJob (queries.rs), checkpoint
//!                                    <checkpoint_dir>/<sink>, resumed when typed again
//!  SELECT over a declared source     a live query: a StreamingJob with a live sink and a
//!                                    throwaway checkpoint, printed as epochs commit, until Ctrl-C
//!  SELECT over a sink or 'path/'     a DataFusion batch query over committed files (batch.rs)
//!  EXPLAIN, SHOW QUERIES, STOP QUERY, SET, DESCRIBE, \ commands
//! ```
//!
//! A declared table is read as a sink (a batch of its committed files) when
//! it has no columns, when an `INSERT` of this session writes it, or when a
//! query's checkpoint for it exists; otherwise it is a streaming source.
//!
//! Ctrl-C cancels the statement in progress (a live query stops after its
//! current epoch; a second Ctrl-C stops it at once), never the shell.
//! Errors are one or two lines, scrubbed of secrets, and the shell goes on.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::dataframe::DataFrame;
use futures::StreamExt;
use rustyline::config::Configurer;
use rustyline::error::ReadlineError;
use rustyline::history::{FileHistory, History};
use rustyline::{CompletionType, Config, Editor};
use tokio::sync::{mpsc, watch};
use weir_engine::{JobOptions, StreamingJob, Trigger};
use weir_sql::preprocess::normalize_ident;
use weir_sql::{Watermark, strip_df};
use weir_storage::StoreOptions;

use crate::batch;
use crate::catalog::{Catalog, Declared};
use crate::helper::ShellHelper;
use crate::input::{self, Piece, is_quit};
use crate::print::{self, Format, LiveTable};
use crate::progress::{QuerySpinner, stderr_is_terminal};
use crate::queries::{Queries, State, committed_note, show_queries};
use crate::redact::Redactor;

/// Where query checkpoints go unless `SET checkpoint_dir` says otherwise:
/// one folder per query, named after it, under the current directory.
pub const DEFAULT_CHECKPOINT_DIR: &str = ".weir/checkpoints";

/// Rows a table shows on a terminal unless `\maxrows` says otherwise.
const DEFAULT_MAX_ROWS: usize = 40;

const HELP: &str = "\
Statements end with ';' and may span lines:
  CREATE TABLE t (...) WITH (...)   declare a source or a sink
  DROP TABLE t                      forget a declaration (its files stay)
  INSERT INTO sink SELECT ...       start a streaming query in the background
  SELECT ... FROM source            live results as windows close, until Ctrl-C
  SELECT ... FROM sink | 'path/'    a batch query over the committed Parquet files
  EXPLAIN statement                 its plan (the engine's, for streaming queries)
  SHOW QUERIES                      background queries: state, epoch, rows, bad rows, rate, watermark, state
  STOP QUERY name                   stop a query once its current epoch commits
  DESCRIBE t                        a table's columns, watermark and options
  SET name = value                  trigger (1s, available-now, once), drain, threads, state.ttl,
                                    window.max_windows_per_row, checkpoint_dir; SET alone lists them
Commands:
  \\d [table]                 tables and queries, or one table
  \\format [table|csv|json]   how results print
  \\maxrows N                 rows a table shows on a terminal (0: all)
  \\timing [on|off]           how long each statement takes
  \\?                         this help
  \\q                         leave: running queries stop after their current epoch,
                             and resume from their checkpoints when INSERTed again
Tab completes; Up and Down recall earlier statements; Ctrl-C cancels; Ctrl-D leaves.";

/// The session's settings (`SET`, `\format`, `\maxrows`, `\timing`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where query checkpoints go (a folder per query).
    pub checkpoint_dir: String,
    /// When background and live queries run epochs.
    pub trigger: Trigger,
    /// Close every window when the input is done (with a bounded trigger).
    pub drain: bool,
    /// How results print.
    pub format: Format,
    /// Rows a table shows on a terminal (0: all).
    pub max_rows: usize,
    /// Print how long each statement took.
    pub timing: bool,
    /// Threads a query runs on (`SET threads`).
    pub threads: usize,
    /// Settings that go into each query's job text (`state.ttl`,
    /// `window.max_windows_per_row`), by key.
    pub job: std::collections::BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            checkpoint_dir: DEFAULT_CHECKPOINT_DIR.into(),
            trigger: Trigger::Interval(Duration::from_secs(1)),
            drain: false,
            format: Format::Table,
            max_rows: DEFAULT_MAX_ROWS,
            timing: false,
            threads: 1,
            job: Default::default(),
        }
    }
}

/// Parses a trigger as `weir run --trigger` takes it.
pub fn parse_trigger(s: &str) -> Result<Trigger> {
    match s {
        "available-now" | "available_now" => Ok(Trigger::AvailableNow),
        "once" => Ok(Trigger::Once),
        other => {
            let d = humantime::parse_duration(other).map_err(|_| {
                anyhow!("trigger '{other}': expected available-now, once, or an interval such as 1s")
            })?;
            if d.is_zero() {
                bail!("a trigger interval must be positive");
            }
            Ok(Trigger::Interval(d))
        }
    }
}

fn trigger_text(t: Trigger) -> String {
    match t {
        Trigger::AvailableNow => "available-now".into(),
        Trigger::Once => "once".into(),
        Trigger::Interval(d) => humantime::format_duration(d).to_string(),
    }
}

/// What the caller does after a piece of input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    Continue,
    /// Leave the shell.
    Quit,
}

/// Whether a `SELECT` reads streams or results.
enum QueryKind {
    /// Over declared sources: live results.
    Live,
    /// Over sinks, paths, or nothing: a batch query.
    Batch,
}

/// A statement cancelled by Ctrl-C.
#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled (Ctrl-C)")
    }
}

impl std::error::Error for Cancelled {}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A shell session.
pub struct Shell {
    catalog: Catalog,
    queries: Queries,
    settings: Settings,
    redactor: Redactor,
    /// Counts Ctrl-Cs; a statement watches it to cancel.
    interrupts: watch::Receiver<u64>,
    /// Tables an `INSERT` of this session writes.
    written: BTreeSet<String>,
    /// Whether a person reads stdout (tables are cut to `max_rows`).
    terminal_out: bool,
    store_options: StoreOptions,
    /// The catalog changed since completion last asked.
    catalog_changed: bool,
}

/// Counts Ctrl-Cs from now on (the process no longer dies of them).
pub fn interrupts(rt: &tokio::runtime::Runtime) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    let _guard = rt.enter();
    if let Ok(mut sig) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
        rt.spawn(async move {
            while sig.recv().await.is_some() {
                tx.send_modify(|n| *n += 1);
            }
        });
    }
    rx
}

/// Runs `work` unless Ctrl-C (counted by `irq`) comes first.
async fn cancellable<T>(mut irq: watch::Receiver<u64>, work: impl Future<Output = Result<T>>) -> Result<T> {
    irq.mark_unchanged();
    tokio::select! {
        r = work => r,
        _ = irq.changed() => Err(Cancelled.into()),
    }
}

/// Writes to stdout. A reader that went away (`weir query ... | head`) is
/// not an error: the rest of the output is dropped, as `psql` and `duckdb`
/// do.
fn out(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing the output"),
        _ => Ok(()),
    }
}

/// `WATERMARK FOR ts AS ts - INTERVAL '5' SECOND`, as declared.
fn watermark_text(w: &Watermark) -> String {
    let delay = if w.delay_ms % 1000 == 0 {
        format!("INTERVAL '{}' SECOND", w.delay_ms / 1000)
    } else {
        format!("INTERVAL '{}.{:03}' SECOND", w.delay_ms / 1000, w.delay_ms % 1000)
    };
    if w.delay_ms == 0 {
        w.column.clone()
    } else {
        format!("{} - {delay}", w.column)
    }
}

impl Shell {
    /// A session; `interrupts` counts Ctrl-Cs.
    pub fn new(redactor: Redactor, interrupts: watch::Receiver<u64>, store_options: StoreOptions) -> Self {
        Self {
            catalog: Catalog::default(),
            queries: Queries::default(),
            settings: Settings::default(),
            redactor,
            interrupts,
            written: BTreeSet::new(),
            terminal_out: std::io::stdout().is_terminal(),
            store_options,
            catalog_changed: true,
        }
    }

    /// Sets how results print.
    pub fn set_format(&mut self, format: Format) {
        self.settings.format = format;
    }

    /// An error as the user sees it: its message (without the statement
    /// number of an internal job text), scrubbed of secrets.
    pub fn error_text(&self, e: &anyhow::Error) -> String {
        let sql_error = e
            .downcast_ref::<weir_engine::Error>()
            .and_then(|e| match e {
                weir_engine::Error::Sql(s) => Some(s),
                _ => None,
            })
            .or_else(|| e.downcast_ref::<weir_sql::Error>());
        let text = match sql_error {
            Some(weir_sql::Error::InStatement { inner, .. }) => inner.to_string(),
            _ => format!("{e:#}"),
        };
        // The planner names the statement (in `INSERT INTO ...`: ...); here
        // it is the one just typed.
        let text = match text.strip_prefix("in `").and_then(|t| t.split_once("`: ")) {
            Some((_, rest)) => rest.to_string(),
            None => text,
        };
        self.redactor.scrub(text.trim())
    }

    /// Runs a piece of input: a statement or a `\` command.
    pub async fn run_piece(&mut self, piece: &Piece) -> Result<Flow> {
        let started = Instant::now();
        // Secrets typed in it are known before it runs, so that no error
        // about it (a typo the parser quotes back) can print them.
        for s in weir_sql::secrets::secret_literals(&piece.text) {
            self.redactor.add(s);
        }
        let flow = if piece.command {
            self.command(&piece.text).await?
        } else if is_quit(&piece.text) {
            Flow::Quit
        } else {
            self.statement(&piece.text).await?;
            Flow::Continue
        };
        if self.settings.timing && !piece.command && flow == Flow::Continue {
            out(&format!(
                "Time: {:.3} ms\n",
                started.elapsed().as_secs_f64() * 1000.0
            ))?;
        }
        Ok(flow)
    }

    async fn command(&mut self, text: &str) -> Result<Flow> {
        let mut parts = text.split_whitespace();
        let cmd = parts.next().unwrap_or("");
        let arg = parts.next();
        match cmd {
            "\\q" => return Ok(Flow::Quit),
            "\\?" | "\\h" | "\\help" => out(&format!("{HELP}\n"))?,
            "\\d" | "\\dt" | "\\d+" => match arg {
                None => self.list_tables().await?,
                Some(t) => {
                    self.describe(&normalize_ident(t.trim_matches('"'), t.starts_with('"')))
                        .await?
                }
            },
            "\\timing" => {
                self.settings.timing = match arg {
                    None => !self.settings.timing,
                    Some("on") => true,
                    Some("off") => false,
                    Some(other) => bail!("\\timing takes on or off, not '{other}'"),
                };
                out(&format!(
                    "Timing is {}.\n",
                    if self.settings.timing { "on" } else { "off" }
                ))?;
            }
            "\\format" => {
                if let Some(name) = arg {
                    self.settings.format = Format::parse(name)
                        .ok_or_else(|| anyhow!("\\format takes table, csv or json, not '{name}'"))?;
                }
                out(&format!("Output format is {}.\n", self.settings.format.name()))?;
            }
            "\\maxrows" => {
                let n = arg.ok_or_else(|| anyhow!("\\maxrows takes a number of rows (0: all)"))?;
                self.settings.max_rows = n
                    .parse()
                    .map_err(|_| anyhow!("\\maxrows takes a number of rows (0: all), not '{n}'"))?;
                match self.settings.max_rows {
                    0 => out("Tables show every row.\n")?,
                    n => out(&format!("Tables show at most {n} rows on a terminal.\n"))?,
                }
            }
            "\\x" => bail!(
                "\\x (expanded rows) is not here; \\format json prints each row as one object on a line of its own"
            ),
            "\\l" | "\\dn" => bail!("there are no databases or schemas here; \\d lists the tables"),
            other => bail!("unknown command {other} (\\? lists the commands)"),
        }
        Ok(Flow::Continue)
    }

    async fn statement(&mut self, sql: &str) -> Result<()> {
        // Dot-commands are SQLite's and DuckDB's: point to ours.
        if let Some(dot) = sql.strip_prefix('.') {
            let word = dot.split_whitespace().next().unwrap_or("");
            bail!(
                "'.{word}' is a command of SQLite's and DuckDB's shells; here it is {} (\\? lists them)",
                match word {
                    "tables" | "schema" => "\\d, or SHOW TABLES",
                    "quit" | "exit" => "\\q",
                    "mode" => "\\format table|csv|json",
                    "timer" => "\\timing",
                    _ => "a backslash command",
                }
            );
        }
        use weir_sql::statement::Statement as S;
        match weir_sql::statement::classify(sql)? {
            S::CreateTable => self.create_table(sql),
            S::CreateView => self.create_view(sql),
            S::Drop {
                view,
                name,
                if_exists,
            } => {
                let name =
                    name.ok_or_else(|| anyhow!("DROP {} needs a name", if view { "VIEW" } else { "TABLE" }))?;
                self.drop_table(view, &name, if_exists)
            }
            S::Insert { target, into, query } => {
                if !into {
                    bail!("expected INSERT INTO sink SELECT ...");
                }
                let name = target.ok_or_else(|| anyhow!("INSERT INTO needs a sink table's name"))?;
                cancellable(self.interrupts.clone(), self.insert(sql, &name, &query)).await
            }
            S::Query => self.query(sql).await,
            S::Explain { analyze, inner } => {
                cancellable(self.interrupts.clone(), self.explain(sql, analyze, &inner)).await
            }
            S::ShowQueries => self.show_queries(),
            S::ShowTables => self.list_tables().await,
            S::StopQuery { name } => {
                let name = name.ok_or_else(|| anyhow!("STOP QUERY needs a query's name"))?;
                self.stop_query(&name).await
            }
            S::Describe { name } => {
                let name = name.ok_or_else(|| anyhow!("DESCRIBE needs a table's name"))?;
                self.describe(&name).await
            }
            S::ShowSettings => self.list_settings(),
            S::Set => self.set(sql),
            S::Other(head) => bail!(
                "the shell does not run {head} statements; it runs CREATE TABLE, CREATE VIEW, DROP TABLE, \
                 INSERT INTO, SELECT, EXPLAIN, SHOW QUERIES, SHOW TABLES, STOP QUERY, DESCRIBE and SET \
                 (\\? for help)"
            ),
        }
    }

    fn create_table(&mut self, sql: &str) -> Result<()> {
        let declared = self.catalog.declare(sql)?;
        let summary = match &declared.decl.schema {
            Some(s) => format!(
                "declared {} ({} columns{})",
                declared.name(),
                s.fields().len(),
                declared
                    .decl
                    .watermark
                    .as_ref()
                    .map_or(String::new(), |w| format!(", watermark on {}", w.column))
            ),
            None => format!(
                "declared {} (a sink: its columns come from the query that writes it)",
                declared.name()
            ),
        };
        for s in declared.decl.options.secret_values() {
            self.redactor.add(s);
        }
        self.catalog_changed = true;
        out(&format!("{summary}\n"))
    }

    fn drop_table(&mut self, view: bool, name: &str, if_exists: bool) -> Result<()> {
        let name = name.to_string();
        if self.queries.is_running(&name) {
            bail!("query '{name}' writes '{name}'; STOP QUERY {name} first");
        }
        if view {
            return match self.catalog.drop_view(&name) {
                true => {
                    self.catalog_changed = true;
                    out(&format!("dropped view {name}\n"))
                }
                false if if_exists => Ok(()),
                false => bail!("no view '{name}' is declared"),
            };
        }
        match self.catalog.drop_table(&name) {
            Some(_) => {
                self.written.remove(&name);
                self.catalog_changed = true;
                out(&format!("dropped {name} (its files stay where they are)\n"))
            }
            None if if_exists => Ok(()),
            None => bail!("no table '{name}' is declared"),
        }
    }

    fn create_view(&mut self, sql: &str) -> Result<()> {
        let name = self.catalog.declare_view(sql)?.name.clone();
        self.catalog_changed = true;
        out(&format!(
            "declared view {name} (a query over streams: SELECT from it shows live results)\n"
        ))
    }

    /// Whether a declared table is read as a sink (its committed files).
    fn is_sink(&self, d: &Declared) -> bool {
        d.decl.schema.is_none() || self.written.contains(d.name()) || self.has_checkpoint(d.name())
    }

    fn checkpoint_of(&self, query: &str) -> String {
        format!("{}/{query}", self.settings.checkpoint_dir.trim_end_matches('/'))
    }

    fn has_checkpoint(&self, query: &str) -> bool {
        let dir = self.checkpoint_of(query);
        !dir.contains("://") && weir_storage::checkpoint::is_local_checkpoint(Path::new(&dir))
    }

    fn kind_of_query(&self, sql: &str) -> Result<QueryKind> {
        if weir_sql::statement::has_window_call(sql)? {
            return Ok(QueryKind::Live);
        }
        let live = weir_sql::statement::table_references(sql)?.iter().any(|r| {
            r.schema().is_none()
                && (self.catalog.view(r.table()).is_some()
                    || self.catalog.get(r.table()).is_some_and(|d| !self.is_sink(d)))
        });
        Ok(if live { QueryKind::Live } else { QueryKind::Batch })
    }

    async fn query(&mut self, sql: &str) -> Result<()> {
        match self.kind_of_query(sql)? {
            QueryKind::Live => self.live(sql).await,
            QueryKind::Batch => cancellable(self.interrupts.clone(), self.batch(sql)).await,
        }
    }

    /// A context with the sinks a statement names registered.
    async fn batch_context(&self, sql: &str) -> Result<datafusion::prelude::SessionContext> {
        let ctx = batch::context();
        for name in self.catalog.names_in(sql)? {
            if let Some(d) = self.catalog.get(&name)
                && self.is_sink(d)
            {
                batch::register_sink(&ctx, &d.decl, &self.store_options).await?;
            }
        }
        Ok(ctx)
    }

    async fn batch(&self, sql: &str) -> Result<()> {
        let ctx = self.batch_context(sql).await?;
        let df = ctx.sql(sql).await.map_err(|e| self.batch_error(&e))?;
        self.print_dataframe(df).await
    }

    /// A batch query's planning error as a user reads it: a table DataFusion
    /// did not find is a file or folder that does not exist, or a table
    /// that is not declared.
    fn batch_error(&self, e: &datafusion::error::DataFusionError) -> anyhow::Error {
        let msg = strip_df(e);
        let missing = msg
            .strip_prefix("table '")
            .and_then(|rest| rest.split_once("' not found"))
            .map(|(name, _)| {
                name.strip_prefix("datafusion.public.")
                    .unwrap_or(name)
                    .to_string()
            });
        match missing {
            Some(name) if name.contains('/') || name.contains('.') || name.contains("://") => {
                anyhow!("no such file or folder: '{name}'")
            }
            Some(name) => {
                let declared: Vec<&str> = self.catalog.tables().map(|d| d.name()).collect();
                anyhow!(
                    "unknown table '{name}' ({}; a file or folder is a table too, in single quotes: 'out/t/')",
                    if declared.is_empty() {
                        "no tables are declared".to_string()
                    } else {
                        format!("declared: {}", declared.join(", "))
                    }
                )
            }
            None => anyhow!(msg),
        }
    }

    /// Prints a batch query's result as it streams in (CSV, JSON) or when it
    /// is complete (a table), with a spinner meanwhile on a terminal.
    async fn print_dataframe(&self, df: DataFrame) -> Result<()> {
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let format = self.settings.format;
        let limit = (self.terminal_out && format == Format::Table && self.settings.max_rows > 0)
            .then_some(self.settings.max_rows);
        let mut spinner = QuerySpinner::start(stderr_is_terminal());
        let mut stream = df.execute_stream().await.map_err(|e| anyhow!(strip_df(&e)))?;
        if format == Format::Csv {
            out(&print::csv_header(&schema)?)?;
        }
        let (mut kept, mut kept_rows, mut total) = (Vec::new(), 0usize, 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| anyhow!(strip_df(&e)))?;
            let n = batch.num_rows();
            spinner.add_rows(n as u64);
            total += n;
            match format {
                Format::Table => {
                    if limit.is_none_or(|l| kept_rows < l) {
                        kept_rows += n;
                        kept.push(batch);
                    }
                }
                Format::Csv | Format::Json => {
                    let mut buf = Vec::new();
                    if format == Format::Csv {
                        print::csv_rows(&mut buf, &batch)?;
                    } else {
                        print::json_rows(&mut buf, &batch)?;
                    }
                    spinner.suspend(|| out(&String::from_utf8_lossy(&buf)))?;
                }
            }
        }
        drop(spinner);
        if format == Format::Table {
            out(&print::table(&schema, &kept, total, limit)?)?;
        }
        Ok(())
    }

    /// Prints rows made here (SHOW QUERIES, \d) in the session's format.
    fn print_rows(&self, schema: &SchemaRef, batch: RecordBatch) -> Result<()> {
        match self.settings.format {
            Format::Table => out(&print::table(
                schema,
                std::slice::from_ref(&batch),
                batch.num_rows(),
                None,
            )?),
            Format::Csv => {
                let mut buf = print::csv_header(schema)?.into_bytes();
                print::csv_rows(&mut buf, &batch)?;
                out(&String::from_utf8_lossy(&buf))
            }
            Format::Json => {
                let mut buf = Vec::new();
                print::json_rows(&mut buf, &batch)?;
                out(&String::from_utf8_lossy(&buf))
            }
        }
    }

    /// The job text of a statement: the `SET`s queries carry, the
    /// declarations it names, then it.
    fn job_text(&self, statement: &str) -> Result<String> {
        let mut text = String::new();
        for (k, v) in &self.settings.job {
            text.push_str(&format!("SET '{k}' = '{}';\n", v.replace('\'', "''")));
        }
        text.push_str(&self.catalog.job_text(statement)?);
        Ok(text)
    }

    /// The job options of a query with this checkpoint.
    fn job_options(&self, checkpoint: String) -> JobOptions {
        let threads = match self.settings.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        JobOptions {
            store_options: self.store_options.clone(),
            threads,
            owner: weir_engine::LeaseOwner::this_process(crate::host_name()),
            ..JobOptions::new(checkpoint)
        }
    }

    /// Live results of a streaming `SELECT`, until its input is done (a
    /// bounded trigger) or Ctrl-C.
    async fn live(&mut self, sql: &str) -> Result<()> {
        // `SELECT ... LIMIT n` over a stream is a peek, as in Flink's SQL
        // client: the first n rows, then the query stops.
        let (sql, limit) = match weir_sql::statement::peek_limit(sql)? {
            Some((query, n)) => (query, Some(n)),
            None => (sql, None),
        };
        let text = self.job_text(sql)?;
        let scratch = tempfile::Builder::new().prefix("weir-live-").tempdir()?;
        let (tx, mut rx) = mpsc::channel(16);
        let options = JobOptions {
            live: Some(tx),
            ..self.job_options(scratch.path().display().to_string())
        };
        let open = async { Ok(StreamingJob::open(&text, options).await?) };
        let mut job = cancellable(self.interrupts.clone(), open).await?;
        let schema = job
            .live_schema()
            .ok_or_else(|| anyhow!("the live query has no output"))?;
        let mut table = LiveTable::new(&schema, self.settings.format)?;
        let (trigger, drain) = self.query_trigger();
        if self.terminal_out {
            errln!("live results: rows appear as their epochs commit; Ctrl-C stops");
        }
        out(&table.header()?)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        // However this function returns (an error printing, say), the query
        // does not outlive it.
        let mut run = AbortOnDrop(tokio::spawn(async move {
            let r = job.run(trigger, drain, stop_rx, &mut |_| {}).await;
            // Releases the scratch checkpoint and closes the live channel.
            let _ = job.close().await;
            r
        }));
        let mut irq = self.interrupts.clone();
        irq.mark_unchanged();
        let mut stopping = false;
        let mut limited = false;
        let ended = loop {
            tokio::select! {
                received = rx.recv() => match received {
                    Some(live) => {
                        let mut text = String::new();
                        for b in &live.batches {
                            let left = limit.map_or(u64::MAX, |n| n.saturating_sub(table.rows()));
                            if left == 0 {
                                break;
                            }
                            let b = b.slice(0, b.num_rows().min(left.try_into().unwrap_or(usize::MAX)));
                            text.push_str(&table.batch(&b)?);
                        }
                        out(&text)?;
                        if limit.is_some_and(|n| table.rows() >= n) {
                            // Enough rows: the rest of the query is not wanted.
                            limited = true;
                            run.0.abort();
                            break (&mut run.0).await;
                        }
                    }
                    None => break (&mut run.0).await,
                },
                _ = irq.changed() => {
                    if stopping {
                        run.0.abort();
                        break (&mut run.0).await;
                    }
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
            }
        };
        // On a terminal, write over the `^C` the terminal echoed.
        out(&format!(
            "{}{}",
            if self.terminal_out { "\r" } else { "" },
            table.footer()
        ))?;
        let rows = table.rows();
        let note = |how: &str| {
            format!(
                "({} row{}; {how})\n",
                print::group_digits(rows),
                if rows == 1 { "" } else { "s" }
            )
        };
        match ended {
            _ if limited => out(&note("LIMIT reached")),
            Ok(Ok(_)) if stopping => out(&note("stopped")),
            Ok(Ok(_)) => out(&note("the input is done")),
            Ok(Err(e)) => Err(e.into()),
            Err(j) if j.is_cancelled() => out(&note("stopped at once")),
            Err(j) => bail!("the live query stopped on an internal error: {j}"),
        }
    }

    async fn insert(&mut self, sql: &str, name: &str, _query: &str) -> Result<()> {
        let name = name.to_string();
        if self.queries.is_running(&name) {
            bail!("query '{name}' is already running (STOP QUERY {name} first)");
        }
        if self.catalog.get(&name).is_none() {
            bail!(
                "unknown sink table '{name}': declare it first with CREATE TABLE {name} WITH \
                 ('connector' = 'files', 'path' = '...', 'format' = 'parquet')"
            );
        }
        let text = self.job_text(sql)?;
        let checkpoint = self.checkpoint_of(&name);
        // The checkpoint decides, by the same rules as `weir run`: a
        // compatible change goes on with its state, another is refused.
        let job = StreamingJob::open(&text, self.job_options(checkpoint.clone())).await?;
        for note in job.notes() {
            errln!("note: {}", self.redactor.scrub(note));
        }
        let resumed = job.last_committed();
        let (trigger, drain) = self.query_trigger();
        self.queries
            .start(&name, checkpoint.clone(), job, trigger, drain)?;
        self.written.insert(name.clone());
        out(&format!(
            "started query {name} (checkpoint {}{}); SHOW QUERIES shows its progress\n",
            self.redactor.scrub(&checkpoint),
            resumed.map_or(String::new(), |e| format!(", resuming after epoch {e}"))
        ))
    }

    fn query_trigger(&self) -> (Trigger, bool) {
        let t = self.settings.trigger;
        (t, self.settings.drain && !matches!(t, Trigger::Interval(_)))
    }

    async fn explain(&mut self, sql: &str, analyze: bool, inner: &str) -> Result<()> {
        use weir_sql::statement::Statement as S;
        let inner_statement = weir_sql::statement::classify(inner)?;
        let inner_kw = match &inner_statement {
            S::Insert { .. } => "INSERT",
            S::Query => "SELECT",
            _ => "",
        };
        let streaming = match inner_kw {
            "INSERT" => true,
            "SELECT" => matches!(self.kind_of_query(inner)?, QueryKind::Live),
            _ => false,
        };
        if !streaming {
            let ctx = self.batch_context(sql).await?;
            let df = ctx.sql(sql).await.map_err(|e| self.batch_error(&e))?;
            return self.print_dataframe(df).await;
        }
        if analyze {
            return self.explain_analyze(inner_statement, inner).await;
        }
        let text = self.job_text(inner)?;
        let scratch = tempfile::Builder::new().prefix("weir-explain-").tempdir()?;
        let mut options = JobOptions {
            explain_only: true,
            ..self.job_options(scratch.path().display().to_string())
        };
        let _receiver;
        if inner_kw != "INSERT" {
            let (tx, rx) = mpsc::channel(1);
            options.live = Some(tx);
            _receiver = rx;
        }
        let job = StreamingJob::open(&text, options).await?;
        out(&format!("{}\n", self.redactor.scrub(&job.explain())))
    }

    /// `EXPLAIN ANALYZE` of a streaming query: it runs on a throwaway
    /// checkpoint, its rows discarded (an `INSERT` writes nothing: its
    /// `SELECT` runs), for the input there now (`available-now`), or one
    /// epoch when the session's trigger is an interval; then its plan prints
    /// with each operator's rows and time.
    async fn explain_analyze(&mut self, inner: weir_sql::statement::Statement, text: &str) -> Result<()> {
        let query = match &inner {
            weir_sql::statement::Statement::Insert { query, .. } => {
                if query.starts_with('(') {
                    bail!("INSERT INTO t (columns) is not supported: the sink takes the query's columns");
                }
                query.as_str()
            }
            _ => text,
        };
        let text = self.job_text(query)?;
        let scratch = tempfile::Builder::new().prefix("weir-explain-").tempdir()?;
        let (tx, mut rx) = mpsc::channel(16);
        let options = JobOptions {
            live: Some(tx),
            ..self.job_options(scratch.path().display().to_string())
        };
        let mut job = StreamingJob::open(&text, options).await?;
        let (trigger, drain) = match self.query_trigger() {
            (Trigger::Interval(_), _) => (Trigger::Once, false),
            bounded => bounded,
        };
        let (_stop_tx, stop_rx) = watch::channel(false);
        let drained = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let work = async {
            let summary = job.run(trigger, drain, stop_rx, &mut |_| {}).await?;
            Ok::<_, anyhow::Error>(summary)
        };
        let summary = cancellable(self.interrupts.clone(), work).await?;
        let plan = job.explain_analyze();
        let _ = job.close().await;
        drained.abort();
        out(&format!(
            "{}\n({} epoch{}, {} rows in)\n",
            self.redactor.scrub(&plan),
            summary.epochs,
            if summary.epochs == 1 { "" } else { "s" },
            print::group_digits(summary.rows_in)
        ))
    }

    fn show_queries(&self) -> Result<()> {
        let list = self.queries.list();
        if list.is_empty() && self.settings.format == Format::Table {
            return out("(no queries; INSERT INTO a sink starts one)\n");
        }
        let table = self.settings.format == Format::Table;
        let (schema, batch) = show_queries(&list, !table)?;
        let batch = self.scrub_batch(batch)?;
        self.print_rows(&schema, batch)?;
        if table {
            for q in &list {
                if let State::Failed(e) = &q.status.state {
                    out(&format!("{}: {}\n", q.name, self.redactor.scrub(e)))?;
                }
            }
        }
        Ok(())
    }

    /// Text columns of rows made here, scrubbed of secrets.
    fn scrub_batch(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let columns = batch
            .columns()
            .iter()
            .map(|c| match c.as_any().downcast_ref::<StringArray>() {
                Some(s) => Arc::new(
                    s.iter()
                        .map(|v| v.map(|v| self.redactor.scrub(v)))
                        .collect::<StringArray>(),
                ) as _,
                None => Arc::clone(c),
            })
            .collect();
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }

    async fn stop_query(&mut self, name: &str) -> Result<()> {
        let Some(task) = self.queries.stop(name)? else {
            let state = self.queries.status(name).map(|s| s.state);
            return out(&format!(
                "query {name} is not running ({})\n",
                state.as_ref().map_or("unknown", State::name)
            ));
        };
        let mut irq = self.interrupts.clone();
        irq.mark_unchanged();
        tokio::select! {
            _ = task => {}
            _ = irq.changed() => {
                return out(&format!("query {name} goes on stopping after its current epoch\n"));
            }
        }
        let status = self.queries.status(name);
        match status.as_ref().map(|s| &s.state) {
            Some(State::Failed(e)) => bail!("query {name} failed while stopping: {e}"),
            _ => out(&format!(
                "stopped query {name}{}; INSERT it again to resume\n",
                committed_note(status.and_then(|s| s.committed))
            )),
        }
    }

    /// `SET key = value` (the settings `weir_sql::settings` lists, shared
    /// with job files), or `SET` alone to list them.
    fn set(&mut self, sql: &str) -> Result<()> {
        let Some((key, value)) = weir_sql::settings::parse_set(sql)? else {
            bail!("expected SET 'key' = 'value'");
        };
        match key.as_str() {
            "checkpoint_dir" => self.settings.checkpoint_dir = value,
            "trigger" => self.settings.trigger = parse_trigger(&value)?,
            "drain" => self.settings.drain = value == "true",
            "threads" => self.settings.threads = value.parse()?,
            // Settings a query's job text carries (`state.ttl`, ...).
            _ => {
                self.settings.job.insert(key, value);
            }
        }
        out("SET\n")
    }

    /// The value of each setting, in the order `weir_sql::settings` lists them.
    fn setting_values(&self) -> Vec<(&'static str, String)> {
        let s = &self.settings;
        weir_sql::settings::SETTINGS
            .iter()
            .map(|d| {
                let v = match d.name {
                    "checkpoint_dir" => s.checkpoint_dir.clone(),
                    "trigger" => trigger_text(s.trigger),
                    "drain" => s.drain.to_string(),
                    "threads" => s.threads.to_string(),
                    other => s.job.get(other).cloned().unwrap_or_else(|| d.default.to_string()),
                };
                (d.name, v)
            })
            .collect()
    }

    fn list_settings(&self) -> Result<()> {
        let rows = self.setting_values();
        let help: Vec<&str> = weir_sql::settings::SETTINGS.iter().map(|d| d.help).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
            Field::new("meaning", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.clone()))),
                Arc::new(StringArray::from_iter_values(help)),
            ],
        )?;
        self.print_rows(&schema, batch)
    }

    async fn list_tables(&self) -> Result<()> {
        let tables: Vec<&Declared> = self.catalog.tables().collect();
        if tables.is_empty() && self.catalog.views().next().is_none() && self.queries.list().is_empty() {
            return out("(no tables; CREATE TABLE declares one)\n");
        }
        let query_state = |name: &str| {
            self.queries
                .status(name)
                .map_or(String::new(), |s| s.state.name().to_string())
        };
        // name, kind, format, path, watermark, query
        let mut rows: Vec<[String; 6]> = tables
            .iter()
            .map(|d| {
                [
                    d.name().to_string(),
                    if self.is_sink(d) { "sink" } else { "source" }.to_string(),
                    d.decl.options.get("format").unwrap_or("").to_string(),
                    d.decl.options.redacted().get("path").cloned().unwrap_or_default(),
                    d.decl.watermark.as_ref().map(watermark_text).unwrap_or_default(),
                    query_state(d.name()),
                ]
            })
            .collect();
        rows.extend(self.catalog.views().map(|v| {
            [
                v.name.clone(),
                "view".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]
        }));
        let names = ["name", "kind", "format", "path", "watermark", "query"];
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Utf8, false))
                .collect::<Vec<_>>(),
        ));
        let columns = (0..names.len())
            .map(|i| Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[i].clone()))) as _)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        let batch = self.scrub_batch(batch)?;
        self.print_rows(&schema, batch)
    }

    async fn describe(&self, name: &str) -> Result<()> {
        if let Some(v) = self.catalog.view(name) {
            return out(&format!("View {name}\n{};\n", self.redactor.scrub(&v.sql)));
        }
        let Some(d) = self.catalog.get(name) else {
            let names: Vec<&str> = self.catalog.tables().map(|d| d.name()).collect();
            bail!(
                "no table '{name}' is declared{}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" (tables: {})", names.join(", "))
                }
            );
        };
        let sink = self.is_sink(d);
        let mut text = format!("{} {name}\n", if sink { "Sink" } else { "Source" });
        // A sink without declared columns has those of its committed files
        // (looked up on local folders only: a remote store may be slow to ask).
        let local = d.decl.options.get("path").is_some_and(|p| !p.contains("://"));
        let columns = match &d.decl.schema {
            Some(s) => Some((Arc::clone(s), "")),
            None if local => batch::sink_schema(&d.decl, &self.store_options)
                .await
                .ok()
                .map(|s| (s, " (from its committed files)")),
            None => None,
        };
        match columns {
            Some((schema, note)) => {
                let cols = Arc::new(Schema::new(vec![
                    Field::new("column", DataType::Utf8, false),
                    Field::new("type", DataType::Utf8, false),
                    Field::new("nullable", DataType::Utf8, false),
                ]));
                let batch = RecordBatch::try_new(
                    Arc::clone(&cols),
                    vec![
                        Arc::new(StringArray::from_iter_values(
                            schema.fields().iter().map(|f| f.name().clone()),
                        )),
                        // The types as declared (`TIMESTAMP(3)`), else as SQL names them.
                        Arc::new(StringArray::from_iter_values(
                            schema.fields().iter().enumerate().map(|(i, f)| {
                                d.decl
                                    .column_types
                                    .get(i)
                                    .filter(|_| note.is_empty())
                                    .cloned()
                                    .unwrap_or_else(|| weir_sql::catalog::sql_type_name(f.data_type()))
                            }),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            schema
                                .fields()
                                .iter()
                                .map(|f| if f.is_nullable() { "yes" } else { "no" }),
                        )),
                    ],
                )?;
                let rendered = print::table(&cols, &[batch], schema.fields().len(), None)?;
                // The row count says nothing here.
                let rendered: Vec<&str> = rendered.lines().filter(|l| !l.starts_with('(')).collect();
                if !note.is_empty() {
                    text.push_str(&format!("Columns{note}:\n"));
                }
                text.push_str(&rendered.join("\n"));
                text.push('\n');
            }
            None => text.push_str("Columns: those of the query that writes it (none committed yet)\n"),
        }
        if let Some(w) = &d.decl.watermark {
            text.push_str(&format!(
                "Watermark: WATERMARK FOR {} AS {}\n",
                w.column,
                watermark_text(w)
            ));
        }
        text.push_str("Options:\n");
        for (k, v) in d.decl.options.redacted() {
            text.push_str(&format!("  '{k}' = '{v}'\n"));
        }
        if let Some(s) = self.queries.status(name) {
            text.push_str(&format!(
                "Query: {name} ({}, checkpoint {})\n",
                s.state.name(),
                self.checkpoint_of(name)
            ));
        }
        out(&self.redactor.scrub(&text))
    }

    /// What to tell the user before the next prompt.
    pub fn notices(&mut self) -> Vec<String> {
        self.queries
            .notices()
            .into_iter()
            .map(|n| self.redactor.scrub(&n))
            .collect()
    }

    /// The tables and columns to complete, when they changed.
    pub fn completion_tables(&mut self) -> Option<Vec<(String, Vec<String>)>> {
        if !std::mem::take(&mut self.catalog_changed) {
            return None;
        }
        Some(
            self.catalog
                .tables()
                .map(|d| {
                    let cols = d
                        .decl
                        .schema
                        .as_ref()
                        .map(|s| s.fields().iter().map(|f| f.name().clone()).collect())
                        .unwrap_or_default();
                    (d.name().to_string(), cols)
                })
                .collect(),
        )
    }

    /// Leaving: every running query stops after its current epoch (a second
    /// Ctrl-C leaves at once; the checkpoints recover either way).
    pub async fn leave(&mut self) {
        let tasks = self.queries.stop_all();
        if tasks.is_empty() {
            return;
        }
        let names: Vec<String> = tasks.iter().map(|(n, _)| n.clone()).collect();
        errln!(
            "stopping {} after the current epoch (Ctrl-C leaves at once)",
            names.join(", ")
        );
        let mut irq = self.interrupts.clone();
        irq.mark_unchanged();
        let all = futures::future::join_all(tasks.into_iter().map(|(_, t)| t));
        tokio::select! {
            _ = all => {}
            _ = irq.changed() => {
                errln!("leaving at once; the queries resume from their last committed epoch");
                return;
            }
        }
        for name in names {
            if let Some(s) = self.queries.status(&name) {
                match &s.state {
                    State::Failed(e) => errln!("query {name} failed: {}", self.redactor.scrub(e)),
                    _ => errln!(
                        "stopped query {name}{}; INSERT it again to resume",
                        committed_note(s.committed)
                    ),
                }
            }
        }
    }

    /// After a script: waits for its queries to end by themselves (a
    /// bounded trigger); Ctrl-C stops them after their current epoch. Fails
    /// if one failed.
    pub async fn wait_for_queries(&mut self) -> Result<()> {
        let tasks = self.queries.take_running_tasks();
        if !tasks.is_empty() {
            let names: Vec<&str> = tasks.iter().map(|(n, _)| n.as_str()).collect();
            errln!(
                "weir: running {} until {} input is done (Ctrl-C stops after the current epoch)",
                names.join(", "),
                if names.len() == 1 { "its" } else { "their" }
            );
            let mut irq = self.interrupts.clone();
            irq.mark_unchanged();
            let all = futures::future::join_all(tasks.into_iter().map(|(_, t)| t));
            tokio::select! {
                _ = all => {}
                _ = irq.changed() => self.leave().await,
            }
        }
        let failed: Vec<String> = self
            .queries
            .list()
            .into_iter()
            .filter_map(|q| match q.status.state {
                State::Failed(e) => Some(format!("query {} failed: {e}", q.name)),
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            bail!(self.redactor.scrub(&failed.join("\n")));
        }
        for n in self.notices() {
            errln!("{n}");
        }
        Ok(())
    }
}

/// The history file: `$WEIR_HISTORY`, or `~/.weir_history`.
pub fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WEIR_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::home_dir().map(|h| h.join(".weir_history"))
}

/// A history entry for typed input: secret option values replaced by
/// `***` (with or without the `=`). `None` (not kept) when it still holds a
/// secret the session knows (typed where no option name precedes it), or
/// when it failed and names a secret-looking key: a statement the parser
/// rejected may hold a secret where the masking could not tell.
fn history_entry(input: &str, failed: bool, redactor: &Redactor) -> Option<String> {
    let masked = weir_sql::secrets::mask_secrets(input);
    if redactor.finds_secret(&masked) || (failed && weir_sql::secrets::mentions_secret_key(input)) {
        return None;
    }
    Some(masked)
}

/// The interactive shell: reads statements until `\q`, `quit` or Ctrl-D.
pub fn interactive(rt: &tokio::runtime::Runtime, shell: &mut Shell, history: Option<PathBuf>) -> Result<()> {
    let config = Config::builder()
        .auto_add_history(false)
        .history_ignore_space(true)
        .max_history_size(10_000)?
        .completion_type(CompletionType::List)
        .build();
    let mut editor: Editor<ShellHelper, FileHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(ShellHelper::new(batch::function_names())));
    editor.set_history_ignore_dups(true)?;
    if let Some(h) = &history
        && h.exists()
        && let Err(e) = editor.load_history(h)
    {
        errln!("weir: cannot read the history {}: {e}", h.display());
    }
    outln!(
        "weir {}: streaming SQL. End statements with ';'. \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    let mut pending = String::new();
    loop {
        for n in shell.notices() {
            errln!("{n}");
        }
        if let Some(tables) = shell.completion_tables()
            && let Some(h) = editor.helper_mut()
        {
            h.set_tables(tables);
        }
        // psql's way: a statement that is not finished goes on at a
        // continuation prompt, one line at a time.
        let prompt = if pending.is_empty() { "weir> " } else { "   -> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            // Ctrl-C drops the statement being typed.
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                errln!("error: reading input: {e}");
                break;
            }
        };
        if pending.is_empty() && line.trim().is_empty() {
            continue;
        }
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(&line);
        if !input::is_complete(&pending) {
            continue;
        }
        let text = std::mem::take(&mut pending);
        let mut quit = is_quit(&text);
        let mut failed = false;
        if !quit {
            let (pieces, _) = input::split(&text);
            for piece in pieces {
                match rt.block_on(shell.run_piece(&piece)) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Quit) => {
                        quit = true;
                        break;
                    }
                    Err(e) => {
                        errln!("error: {}", shell.error_text(&e));
                        failed = true;
                        break;
                    }
                }
            }
        }
        if let Some(entry) = history_entry(&text, failed, &shell.redactor) {
            let _ = editor.add_history_entry(entry);
            if let Some(h) = &history
                && let Err(e) = editor.append_history(h)
            {
                errln!("weir: cannot write the history {}: {e}", h.display());
            }
        }
        if quit {
            break;
        }
    }
    if editor.history().len() > 0
        && let Some(h) = &history
    {
        let _ = editor.append_history(h);
    }
    rt.block_on(shell.leave());
    Ok(())
}

/// Runs a script as the shell would; the first error stops it, naming
/// where it is (`file:line`).
pub fn run_script(rt: &tokio::runtime::Runtime, shell: &mut Shell, text: &str, name: &str) -> Result<Flow> {
    let (pieces, _) = input::split(text);
    for piece in pieces {
        for n in shell.notices() {
            errln!("{n}");
        }
        match rt.block_on(shell.run_piece(&piece)) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Quit) => return Ok(Flow::Quit),
            Err(e) => {
                let head: String = piece.text.split_whitespace().collect::<Vec<_>>().join(" ");
                let head = if head.chars().count() > 50 {
                    format!("{}...", head.chars().take(47).collect::<String>())
                } else {
                    head
                };
                bail!(
                    "{name}:{}: {}\n(in `{}`)",
                    piece.line,
                    shell.error_text(&e),
                    shell.redactor.scrub(&head)
                );
            }
        }
    }
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell() -> Shell {
        let (_tx, rx) = watch::channel(0);
        let mut s = Shell::new(Redactor::default(), rx, StoreOptions::default());
        s.create_table(
            "CREATE TABLE bids (auction BIGINT, date_time TIMESTAMP(3), \
             WATERMARK FOR date_time AS date_time - INTERVAL '1.5' SECOND) \
             WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet', 'api_token' = 'sekret-value')",
        )
        .unwrap();
        s.create_table(
            "CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet')",
        )
        .unwrap();
        s.create_table(
            "CREATE TABLE typed (auction BIGINT) WITH ('connector' = 'files', 'path' = 't/', 'format' = 'parquet')",
        )
        .unwrap();
        s
    }

    fn live(s: &Shell, sql: &str) -> bool {
        matches!(s.kind_of_query(sql).unwrap(), QueryKind::Live)
    }

    #[test]
    fn a_select_over_a_source_is_live_and_over_results_is_a_batch() {
        let mut s = shell();
        assert!(live(&s, "SELECT auction FROM bids"));
        assert!(live(
            &s,
            "SELECT window_start, COUNT(*) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), \
             INTERVAL '1' SECOND)) GROUP BY window_start, window_end"
        ));
        assert!(
            !live(&s, "SELECT * FROM out"),
            "a table without columns is a sink"
        );
        assert!(!live(&s, "SELECT * FROM 'out/' WHERE bids > 2"));
        assert!(!live(&s, "SELECT 1"));
        assert!(!live(&s, "SELECT 'bids' AS name"), "a string is not a table");
        // A table with columns that an INSERT writes is read as a sink.
        assert!(live(&s, "SELECT * FROM typed"));
        s.written.insert("typed".into());
        assert!(!live(&s, "SELECT * FROM typed"));
    }

    #[test]
    fn errors_lose_internal_statement_numbers_and_secrets() {
        let s = shell();
        let e =
            anyhow::Error::from(weir_sql::Error::Plan("bad 'x'".into()).in_statement(3, "INSERT INTO out"));
        assert_eq!(s.error_text(&e), "bad 'x'");
        let e = anyhow!("in `INSERT INTO out SELECT nope FROM bids`: No field named nope");
        assert_eq!(s.error_text(&e), "No field named nope");
        let e = anyhow!("cannot read with token sekret-value");
        assert_eq!(s.error_text(&e), "cannot read with token ***");
    }

    #[test]
    fn settings_parse_as_weir_run_takes_them() {
        assert_eq!(
            parse_trigger("500ms").unwrap(),
            Trigger::Interval(Duration::from_millis(500))
        );
        assert_eq!(parse_trigger("available-now").unwrap(), Trigger::AvailableNow);
        assert!(parse_trigger("0s").is_err() && parse_trigger("soon").is_err());
        let mut s = shell();
        s.set("SET trigger = 'once'").unwrap();
        s.set("SET drain TO true").unwrap();
        s.set("SET 'checkpoint_dir' = '/tmp/ck'").unwrap();
        s.set("SET 'state.ttl' = '1h'").unwrap();
        assert_eq!(s.settings.trigger, Trigger::Once);
        assert!(s.settings.drain);
        assert_eq!(s.checkpoint_of("q"), "/tmp/ck/q");
        let e = s.set("SET colour = 'blue'").unwrap_err().to_string();
        assert!(e.contains("unknown setting 'colour'"), "{e}");
        let e = s.set("SET state.tll = '1h'").unwrap_err().to_string();
        assert!(e.contains("did you mean 'state.ttl'"), "{e}");
        assert_eq!(s.query_trigger(), (Trigger::Once, true));
        // A query's job carries the settings a job file may hold.
        let text = s.job_text("INSERT INTO out SELECT auction FROM bids").unwrap();
        assert!(text.starts_with("SET 'state.ttl' = '1h';\n"), "{text}");
        weir_sql::Job::parse(&text).unwrap();
    }

    #[test]
    fn a_watermark_prints_as_declared() {
        let s = shell();
        let w = s.catalog.get("bids").unwrap().decl.watermark.clone().unwrap();
        assert_eq!(watermark_text(&w), "date_time - INTERVAL '1.500' SECOND");
    }
}
