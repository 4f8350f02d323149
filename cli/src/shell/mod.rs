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

use std::collections::{BTreeMap, BTreeSet};
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

mod commands;
mod line_loop;
mod statements;

pub use line_loop::{history_path, interactive, run_script};

/// Where query checkpoints go unless `SET checkpoint_dir` says otherwise:
/// one folder per query, named after it, under the current directory.
pub const DEFAULT_CHECKPOINT_DIR: &str = ".weir/checkpoints";

/// Rows a table shows on a terminal unless `\maxrows` says otherwise.
const DEFAULT_MAX_ROWS: usize = 40;

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
    /// Where the queries' metrics are served (`SET metrics`), or `off`.
    pub metrics: String,
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
            threads: 0,
            metrics: "off".into(),
            job: Default::default(),
        }
    }
}

/// Parses a trigger as `weir run --trigger` takes it.
/// The shortest trigger interval.
const MIN_TRIGGER: Duration = Duration::from_millis(1);

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
            // Below a millisecond an idle query would spin a core listing
            // its sources, for no output any sooner than an epoch takes.
            if d < MIN_TRIGGER {
                bail!("trigger '{other}': an interval is at least 1ms");
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
    /// The tables and views each background query started here reads, by
    /// query: neither may be dropped while the query runs.
    reads: BTreeMap<String, Vec<String>>,
    /// Whether a person reads stdout (tables are cut to `max_rows`).
    terminal_out: bool,
    store_options: StoreOptions,
    /// The catalog changed since completion last asked.
    catalog_changed: bool,
    /// The metrics server `SET metrics` started.
    metrics_server: Option<crate::metrics::Server>,
    /// The Ballista scheduler batch queries run on (`weir query
    /// --cluster`); `None` runs them here.
    cluster: Option<String>,
}

/// The last signal counted by [`interrupts`] (0: none), for the exit
/// status of a script it stopped (128 + the signal, as `weir run`'s).
static LAST_SIGNAL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The signal that last interrupted this process, if any.
pub fn last_signal() -> Option<u8> {
    match LAST_SIGNAL.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// Counts Ctrl-Cs from now on (the process no longer dies of them), and
/// with `term` SIGTERMs too: a script (`weir -f`) run by a service manager
/// is stopped with SIGTERM, and stops after the current epoch as `weir
/// run` does. (An interactive shell still dies of SIGTERM.)
///
/// The signals are awaited on a thread of their own, with a runtime of its
/// own: a query's operators keep every worker of the main runtime busy
/// (a hash join's build does not yield), and a listener there was not run
/// until one came free: Ctrl-C took 10 to 50 s to cancel a large join.
pub fn interrupts(_rt: &tokio::runtime::Runtime, term: bool) -> watch::Receiver<u64> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(0u64);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                let _ = ready_tx.send(());
                return;
            };
            rt.block_on(async move {
                let mut kinds = vec![(SignalKind::interrupt(), libc::SIGINT)];
                if term {
                    kinds.push((SignalKind::terminate(), libc::SIGTERM));
                }
                let tx = std::sync::Arc::new(tx);
                let mut listeners = Vec::new();
                for (kind, number) in kinds {
                    if let Ok(mut sig) = signal(kind) {
                        let tx = std::sync::Arc::clone(&tx);
                        listeners.push(tokio::spawn(async move {
                            while sig.recv().await.is_some() {
                                LAST_SIGNAL.store(number as u8, std::sync::atomic::Ordering::Relaxed);
                                tx.send_modify(|n| *n += 1);
                            }
                        }));
                    }
                }
                // Handlers are installed: the process no longer dies of
                // the signals.
                let _ = ready_tx.send(());
                futures::future::join_all(listeners).await;
            });
        });
    if spawned.is_ok() {
        // Until the handlers are in, a Ctrl-C would still kill the process.
        let _ = ready_rx.recv();
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
            reads: BTreeMap::new(),
            terminal_out: std::io::stdout().is_terminal(),
            store_options,
            catalog_changed: true,
            metrics_server: None,
            cluster: None,
        }
    }

    /// Runs batch queries on the cluster whose scheduler is at `url`.
    pub fn set_cluster(&mut self, url: String) {
        self.cluster = Some(url);
    }

    /// Sets how results print.
    pub fn set_format(&mut self, format: Format) {
        self.settings.format = format;
    }

    /// The rows a table shows on a terminal (0: all), as `\maxrows` sets.
    pub fn set_max_rows(&mut self, rows: usize) {
        self.settings.max_rows = rows;
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
        // A changed query refused by its checkpoint: the way out `weir run`
        // is told (--fresh-state, --checkpoint) is not the shell's as it
        // stands. The rest (what a fresh start would write again, the
        // README's rules) still holds.
        const RUN_WAY: &str = "\nRun with --fresh-state to start this query with empty state (sources that did \
                               not change keep their progress), give it its own --checkpoint, or run the \
                               original query.";
        let text = match (
            text.find(RUN_WAY),
            text.strip_prefix("the checkpoint at ")
                .and_then(|t| t.split_once(" was made by"))
                .map(|(loc, _)| loc.to_string()),
        ) {
            (Some(at), Some(loc)) => format!(
                "{}\nIn the shell, INSERT the changed query into a sink table of its own (another name and \
                 'path'), or run it as a job file on this checkpoint with empty state: `weir run FILE \
                 --checkpoint {loc} --fresh-state`.{}",
                &text[..at],
                &text[at + RUN_WAY.len()..]
            ),
            _ => text,
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
            self.statement(&piece.text).await.map_err(|e| {
                // A parser's quoted token may be part of a secret in a form
                // the scan does not decode (see `Error::hiding_found`).
                if weir_sql::secrets::mentions_secret_key(&piece.text) {
                    anyhow::anyhow!(weir_sql::hide_found(&self.error_text(&e)))
                } else {
                    e
                }
            })?;
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
        self.report_stopped(&names);
    }

    /// Says how each of the queries `names`, asked to stop, ended.
    fn report_stopped(&self, names: &[String]) {
        for name in names {
            if let Some(s) = self.queries.status(name) {
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
    pub async fn wait_for_queries(&mut self) -> Result<Option<u8>> {
        let tasks = self.queries.take_running_tasks();
        let mut code = None;
        if !tasks.is_empty() {
            let names: Vec<&str> = tasks.iter().map(|(n, _)| n.as_str()).collect();
            // Under an interval trigger a query never ends by itself.
            let bounded = !matches!(self.settings.trigger, Trigger::Interval(_));
            if bounded {
                errln!(
                    "weir: running {} until {} input is done (Ctrl-C stops after the current epoch)",
                    names.join(", "),
                    if names.len() == 1 { "its" } else { "their" }
                );
            } else {
                errln!(
                    "weir: running {} until Ctrl-C (the trigger is an interval: new input is read as it comes; \
                     Ctrl-C stops after the current epoch)",
                    names.join(", ")
                );
            }
            let mut irq = self.interrupts.clone();
            // A signal that came while the script's statements ran (one
            // that did not cancel a statement) counts now.
            let already = *irq.borrow_and_update() > 0;
            let mut all = Box::pin(futures::future::join_all(tasks.into_iter().map(|(_, t)| t)));
            let signalled = already
                || tokio::select! {
                    _ = &mut all => false,
                    _ = irq.changed() => true,
                };
            if signalled {
                // The tasks are `all`'s now: ask the queries to stop, then
                // wait for them here (leaving at a second signal).
                let names = self.queries.running();
                for n in &names {
                    let _ = self.queries.stop(n);
                }
                errln!(
                    "stopping {} after the current epoch (the signal again leaves at once)",
                    names.join(", ")
                );
                irq.mark_unchanged();
                tokio::select! {
                    _ = &mut all => self.report_stopped(&names),
                    _ = irq.changed() => {
                        errln!("leaving at once; the queries resume from their last committed epoch");
                    }
                }
                // As `weir run`: stopping is how an interval trigger ends
                // (status 0); a bounded one stopped before its input was
                // done ends with 128 + the signal, for scripts to tell.
                if bounded {
                    code = Some(128 + last_signal().unwrap_or(libc::SIGINT as u8));
                }
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
        Ok(code)
    }
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
             WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet', 's3.secret_access_key' = 'sekret-value')",
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
        assert!(parse_trigger("1ns").is_err() && parse_trigger("1ms").is_ok());
        let mut s = shell();
        s.set("SET trigger = 'once'").unwrap();
        s.set("SET drain TO true").unwrap();
        let e = s.set("SET 'checkpoint_dir' = ''").unwrap_err().to_string();
        assert!(e.contains("not an empty value"), "{e}");
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
    fn a_wildcard_into_subfolders_is_refused() {
        for ok in ["g/*.csv", "g/", "s3://b/x/part-*.parquet", "g/f?.json"] {
            statements::check_glob(ok).unwrap();
        }
        for bad in ["g/**/*.csv", "g/*/f.csv", "g/**", "s3://b/dt=*/x.parquet"] {
            let e = statements::check_glob(bad).unwrap_err().to_string();
            assert!(e.contains("one folder only"), "{bad}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), "x\n1\n").unwrap();
        std::fs::write(dir.path().join("_ignored.json"), "{}").unwrap();
        let folder = format!("{}/", dir.path().display());
        statements::check_glob(&folder).unwrap();
        std::fs::write(dir.path().join("b.json"), "{\"x\": 2}\n").unwrap();
        let e = statements::check_glob(&folder).unwrap_err().to_string();
        assert!(e.contains("holds files of several kinds (.csv, .json)"), "{e}");
        statements::check_glob(&format!("{folder}*.csv")).unwrap();
    }

    #[test]
    fn a_watermark_prints_as_declared() {
        let s = shell();
        let w = s.catalog.get("bids").unwrap().decl.watermark.clone().unwrap();
        assert_eq!(watermark_text(&w), "date_time - INTERVAL '1.500' SECOND");
    }
}
