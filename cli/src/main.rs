//! `weir`: the command line. The only crate that owns the tokio runtime,
//! reads the environment, or prints.
//!
//! `weir` alone opens the shell (`shell/`: the line loop, the backslash
//! commands, statements); `weir -f FILE` and piped input
//! run statements as the shell would; `weir run` runs a saved job and
//! `weir query` prints one batch query's result. What a running job shows
//! is made here from the engine's per-epoch `BatchProgress`: the progress
//! lines and bar (`progress`) and the Prometheus endpoint (`metrics`).

/// `eprintln!` that never panics: a closed stderr (`weir run ... 2>&1 | head`)
/// must not stop a job, so what cannot be written is dropped.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that never panics: output to a closed pipe is dropped.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that never panics.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod batch;
mod catalog;
mod env;
mod helper;
mod input;
mod metrics;
mod print;
mod progress;
mod queries;
mod redact;
mod shell;

use std::fs::OpenOptions;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc, as datafusion-cli: fewer cycles in malloc and free with
/// several threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use weir_engine::{BatchProgress, EpochHooks, JobOptions, StreamingJob, Trigger};

pub use env::host_name;
use env::{Failpoint, NoHooks, store_options_from_env};

use input::Piece;
use print::{Format, group_digits, rate};
use progress::RunProgress;
use redact::Redactor;
use shell::{Flow, Shell, parse_trigger};

/// Weir: streaming SQL on one machine, exactly once. With no command, opens
/// the shell (or runs the statements piped to it).
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Run the statements in FILE as the shell would, then exit (`-` reads
    /// standard input). The first error stops it with a non-zero exit code.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Run the statements in FILE, then open the shell.
    #[arg(short = 'i', long = "init", value_name = "FILE")]
    init: Option<PathBuf>,
    /// How results print: table, csv or json (the shell's `\format`).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    format: Option<Format>,
    #[command(subcommand)]
    command: Option<Command>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("'{s}': expected table, csv or json"))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a saved job (CREATE TABLE ...; INSERT INTO ... SELECT ...;),
    /// resuming from its checkpoint.
    Run(RunArgs),
    /// Run one batch SQL query over Parquet/CSV/JSON files and print the result,
    /// e.g. `weir query "SELECT * FROM 'out/hot_items/' ORDER BY 1"`.
    Query {
        /// The SQL. Tables are file or folder paths in single quotes.
        sql: String,
        /// How the result prints: table, csv or json.
        #[arg(long, default_value = "table", value_parser = parse_format)]
        format: Format,
        /// Run it on a Ballista cluster: the scheduler's address
        /// (`host:port` or `http://host:port`). Its executors must reach
        /// the files the query reads.
        #[arg(long, value_name = "SCHEDULER")]
        cluster: Option<String>,
    },
    /// Run the processes of a cluster (Apache DataFusion Ballista): one
    /// scheduler, and executors that do its work.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Look at a job's checkpoint, or roll it back to an earlier epoch.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
}

#[derive(Subcommand, Debug)]
enum CheckpointCommand {
    /// List the checkpoint's query, epochs (offsets, watermark, rows), state
    /// tables with sizes and rows, sinks and lease; report any damage, naming
    /// the file and epoch (exit status 1 when there is some).
    Inspect {
        /// The checkpoint folder or URL.
        path: String,
    },
    /// Go back to committed epoch N: later commits, offsets, state and the
    /// sinks' output of later epochs are deleted, so the next run redoes
    /// those epochs and replaces their output (never duplicates it).
    Rollback {
        /// The checkpoint folder or URL.
        path: String,
        /// The epoch to go back to (see `weir checkpoint inspect`).
        #[arg(long)]
        to: u64,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// The scheduler: clients send it jobs, it splits them into tasks for
    /// its executors. Runs until stopped.
    Scheduler {
        /// Address to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
    },
    /// An executor: runs the scheduler's tasks. Runs until stopped (it then
    /// tells the scheduler it leaves).
    Executor {
        /// The scheduler's address.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Address this executor listens on, as others reach it.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Port for Arrow Flight: results and shuffle data are fetched there.
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// Port for the scheduler's task requests.
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks it runs at once (0: one per CPU it may use).
        #[arg(long, default_value_t = 0)]
        concurrency: usize,
        /// Folder for its shuffle files (default: a new temporary folder).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The job file.
    job: PathBuf,
    /// When to run epochs: `available-now` (process the input there now, then
    /// exit), `once` (one epoch, then exit), or an interval such as `1s`,
    /// `500ms`, `1m` (keep running). Default: the job's `SET trigger`, else 1s.
    #[arg(long)]
    trigger: Option<String>,
    /// Where the checkpoint lives: a folder or a URL (file://, s3://).
    /// Default: `<job>.checkpoint/` beside the job file.
    #[arg(long)]
    checkpoint: Option<String>,
    /// The input is complete: after the last batch, move the watermark to the
    /// end of time, closing every open window. This is final for the
    /// checkpoint: every row a later run reads on it is late (dropped, with a
    /// warning). Leave it off for a job you add input to. Needs a bounded
    /// trigger (available-now, once).
    #[arg(long)]
    drain: bool,
    /// Also write each batch's progress as a JSON line to this file (appended).
    #[arg(long, value_name = "FILE")]
    progress_json: Option<PathBuf>,
    /// Print the job's incremental plan (stateless prefix, stateful operators
    /// with their state tables, emit modes, watermarks) and exit.
    #[arg(long)]
    explain: bool,
    /// Run the job (as the trigger says), then print each operator's rows and
    /// time over the epochs run.
    #[arg(long, conflicts_with = "explain")]
    explain_analyze: bool,
    /// The query changed in a way its checkpointed state cannot follow
    /// (another GROUP BY key, window or aggregate, a source that moved):
    /// start it with empty state instead of refusing. Sources that did not
    /// change keep their progress. See the README, "Changing a query".
    #[arg(long, conflicts_with = "explain")]
    fresh_state: bool,
    /// Threads the job may use: DataFusion's target partitions, the tokio
    /// worker threads, and the threads a source reads with. Stateless work
    /// runs on all of them, and keyed aggregates split their state by the
    /// keys' hash into that many shards. `0`: one per CPU this process may use.
    /// Default: the job's `SET threads`, else one per CPU this process may use.
    #[arg(long)]
    threads: Option<usize>,
    /// Serve the job's metrics in Prometheus's text format at
    /// `http://ADDR/metrics`: `PORT` or `:PORT` listens on 127.0.0.1 only,
    /// `HOST:PORT` (e.g. `0.0.0.0:9464`) where it says. Port 0 picks a free
    /// port; the address is printed on stderr.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Run on a Ballista cluster: the scheduler's address (`HOST:PORT`,
    /// from `weir cluster scheduler`). The executors read and decode each
    /// epoch's files from the source's store (which they must reach at the
    /// same path or URL); a job of stateless queries also runs and writes
    /// there. This process plans each epoch, runs any stateful operators,
    /// checkpoints and commits. With `--explain`, the plan says which.
    #[arg(long, value_name = "HOST:PORT")]
    cluster: Option<String>,
}

/// A run's settings: the command line's, else the job's `SET`s, else the
/// defaults (the list is `weir_sql::settings`).
struct RunSettings {
    trigger: Trigger,
    drain: bool,
    threads: usize,
}

impl RunSettings {
    fn of(args: &RunArgs, job: Option<&weir_sql::Job>) -> Result<RunSettings> {
        let set = |key: &str| job.and_then(|j| j.setting(key)).map(str::to_string);
        let trigger = match &args.trigger {
            Some(t) => parse_trigger(t).context("--trigger")?,
            None => parse_trigger(&set("trigger").unwrap_or_else(|| "1s".into())).context("SET trigger")?,
        };
        let asked = args
            .threads
            .or_else(|| set("threads").and_then(|t| t.parse().ok()))
            .unwrap_or(0);
        if asked > weir_sql::settings::MAX_THREADS {
            bail!(
                "--threads {asked}: at most {} threads (0, the default, is one per CPU)",
                weir_sql::settings::MAX_THREADS
            );
        }
        let threads = resolve_threads(asked);
        Ok(RunSettings {
            trigger,
            drain: args.drain || set("drain").is_some_and(|d| d == "true"),
            threads,
        })
    }
}

/// The threads a run asks for: `0` (the default everywhere) is one per CPU
/// this process may use (its affinity mask and cgroup quota, as
/// `available_parallelism` reads them), as DataFusion and tokio default.
pub fn resolve_threads(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// `weir checkpoint inspect|rollback`.
async fn checkpoint_command(command: &CheckpointCommand, redactor: &Redactor) -> Result<()> {
    match command {
        CheckpointCommand::Inspect { path } => {
            let found = weir_engine::admin::inspect(path, &store_options_from_env()?).await?;
            // The operators' records name their columns as planned; the
            // placeholders of window calls mean nothing to a reader.
            let text = weir_sql::preprocess::hide_placeholders(&found.text, &Default::default());
            out!("{}", redactor.scrub(&text));
            if !found.problems.is_empty() {
                bail!(
                    "the checkpoint is damaged ({} problem{}, listed above)",
                    found.problems.len(),
                    if found.problems.len() == 1 { "" } else { "s" }
                );
            }
            Ok(())
        }
        CheckpointCommand::Rollback { path, to } => {
            let owner = weir_engine::LeaseOwner::this_process(host_name());
            let done = weir_engine::admin::rollback(path, &store_options_from_env()?, *to, &owner).await?;
            let epochs = |v: &[u64]| match (v.first(), v.last()) {
                (Some(a), Some(b)) if a == b => format!("epoch {a}"),
                (Some(a), Some(b)) => format!("epochs {a} to {b}"),
                _ => "none".into(),
            };
            outln!(
                "rolled back to epoch {to}: removed commits of {}, offsets of {}, {} state file(s)",
                epochs(&done.commits),
                epochs(&done.offsets),
                done.state_files
            );
            // One line per folder, though two queries' writers share it
            // (a source's late.sink).
            let mut sinks: Vec<(&str, &str, usize)> = Vec::new();
            for (table, url, n) in &done.sink_files {
                match sinks.iter_mut().find(|(t, u, _)| t == table && u == url) {
                    Some((_, _, total)) => *total += n,
                    None => sinks.push((table, url, *n)),
                }
            }
            for (table, url, n) in sinks {
                outln!("  sink {table} ({url}): removed {n} file(s) of later epochs");
            }
            outln!("the next run continues after epoch {to} and writes the later output again");
            Ok(())
        }
    }
}

/// The default checkpoint: `<dir>/<stem>.checkpoint` beside the job file.
fn default_checkpoint(job: &Path) -> String {
    let stem = job.file_stem().and_then(|s| s.to_str()).unwrap_or("job");
    let dir = job
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(format!("{stem}.checkpoint"))
        .to_string_lossy()
        .into_owned()
}

/// The one-line progress report of an epoch.
fn progress_line(p: &BatchProgress) -> String {
    let mut line = format!(
        "epoch {}{}  in {}  out {}  late {}  bad {}  {} rows/s  watermark {}  state {} rows  batch {:.1} ms",
        p.epoch,
        if p.replayed {
            " (replayed)"
        } else if p.drain {
            " (drain)"
        } else {
            ""
        },
        group_digits(p.rows_in),
        group_digits(p.rows_out),
        if p.all_late {
            format!("{} (every row)", group_digits(p.late_rows))
        } else {
            group_digits(p.late_rows)
        },
        group_digits(p.bad_rows),
        rate(p.rows_per_sec),
        p.watermark.as_deref().unwrap_or("-"),
        group_digits(p.state_rows),
        p.batch_ms
    );
    if p.state_bytes > 0 {
        line.push_str(&format!("  state written {} B", group_digits(p.state_bytes)));
    }
    line
}

/// SQL text without the UTF-8 byte order mark some editors (on Windows)
/// put first: the parser would read it as part of the first word.
fn without_bom(text: String) -> String {
    match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

/// `weir run`; `Some(code)` when it was stopped before its input was done.
async fn run(args: RunArgs, redactor: &mut Redactor) -> Result<Option<u8>> {
    let sql = std::fs::read_to_string(&args.job)
        .map(without_bom)
        .with_context(|| format!("cannot read the job file {}", args.job.display()))?;
    // Secrets are known before anything else, so that no error (not even
    // one about the text not parsing) prints them.
    for s in weir_sql::secrets::secret_literals(&sql) {
        redactor.add(s);
    }
    let parsed = weir_sql::Job::parse(&sql).ok();
    if let Some(job) = &parsed {
        for s in job.secret_values() {
            redactor.add(s);
        }
    }
    let settings = RunSettings::of(&args, parsed.as_ref())?;
    let trigger = settings.trigger;
    let checkpoint = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| default_checkpoint(&args.job));
    let hooks: Arc<dyn EpochHooks> = match Failpoint::from_env()? {
        Some(f) => Arc::new(f),
        None => Arc::new(NoHooks),
    };
    // What sources report between epochs (a Kafka broker out of reach),
    // on stderr as it happens, scrubbed like every other line.
    let notice_scrub = redactor.clone();
    let notice: weir_engine::source::Notice = Arc::new(move |m: &str| {
        errln!("weir: {}", notice_scrub.scrub(m));
    });
    // And what the object store's retries report when it hangs.
    let slow_scrub = redactor.clone();
    weir_storage::retry::set_slow_notice(Box::new(move |m: &str| {
        errln!("weir: {}", slow_scrub.scrub(m));
    }));
    let options = JobOptions {
        store_options: store_options_from_env()?,
        hooks,
        notice: Some(notice),
        owner: weir_engine::LeaseOwner::this_process(host_name()),
        fresh_state: args.fresh_state,
        explain_only: args.explain,
        threads: settings.threads,
        remote: match &args.cluster {
            Some(address) => Some(Arc::new(weir_cluster::ClusterReader::new(
                &scheduler_url(address)?,
                CLUSTER_CONNECT_TIMEOUT,
            ))),
            None => None,
        },
        ..JobOptions::new(checkpoint.clone())
    };
    let mut job = StreamingJob::open(&sql, options)
        .await
        .with_context(|| format!("job {}", args.job.display()))?;
    for note in job.notes() {
        errln!("weir: note: {}", redactor.scrub(note));
    }
    if args.explain {
        outln!("{}", redactor.scrub(&job.explain()));
        // Opening took the checkpoint's lease: give it back, or the next
        // run elsewhere waits for it to lapse.
        job.close().await?;
        return Ok(None);
    }
    let mut json = match &args.progress_json {
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                let _ = job.close().await;
                return Err(e).with_context(|| format!("cannot open {}", path.display()));
            }
        },
        None => None,
    };
    errln!(
        "weir: running {} (checkpoint {}{}{})",
        args.job.display(),
        redactor.scrub(&checkpoint),
        match job.last_committed() {
            Some(e) => format!(", resuming after epoch {e}"),
            None => String::new(),
        },
        match &args.cluster {
            Some(address) if job.queries_run_remotely() =>
                format!("; queries run on the cluster at {}", scheduler_url(address)?),
            Some(address) => format!("; input read on the cluster at {}", scheduler_url(address)?),
            None => String::new(),
        }
    );

    // The query's name in metrics: the job file's, without `.sql`.
    let query_name = args
        .job
        .file_stem()
        .map_or_else(|| "job".into(), |s| s.to_string_lossy().into_owned());
    let metrics = Arc::new(metrics::Metrics::default());
    metrics.start(&query_name, job.last_committed(), &job.standing());
    let _server = match &args.metrics {
        Some(addr) => {
            let server = match metrics::Server::start(addr, Arc::clone(&metrics), redactor.clone()) {
                Ok(server) => server,
                Err(e) => {
                    let _ = job.close().await;
                    return Err(e);
                }
            };
            errln!("weir: metrics at {}", server.url());
            Some(server)
        }
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped_by = stop_on_signals(stop_tx);

    // The progress line and the JSON file are written from two callbacks:
    // each epoch's progress, and warnings found between epochs.
    let scrub = redactor.clone();
    let json_error: std::sync::Mutex<Option<std::io::Error>> = std::sync::Mutex::new(None);
    let json = std::sync::Mutex::new(json.take());
    let shown = std::sync::Mutex::new(RunProgress::new(trigger == Trigger::AvailableNow));
    fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
    let write_json = |line: &str| {
        if let Some(f) = lock(&json).as_mut()
            && let Err(e) = writeln!(f, "{line}")
        {
            lock(&json_error).get_or_insert(e);
        }
    };
    let warn = |w: &str| {
        lock(&shown).println(&scrub.scrub(&format!("weir: warning: {w}")));
        write_json(&scrub.scrub(&serde_json::json!({ "warnings": [w] }).to_string()));
    };
    let mut on_progress = |p: &BatchProgress| {
        metrics.record(&query_name, p);
        let mut bar = lock(&shown);
        bar.epoch(&scrub.scrub(&progress_line(p)), p);
        for w in &p.warnings {
            bar.println(&scrub.scrub(&format!("weir: warning: {w}")));
        }
        drop(bar);
        write_json(&scrub.scrub(&serde_json::to_string(p).unwrap_or_default()));
    };
    let mut on_warning = |w: &str| warn(w);
    let summary = job
        .run_with_warnings(
            trigger,
            settings.drain,
            stop_rx,
            &mut on_progress,
            Some(&mut on_warning),
        )
        .await;
    // The bar is cleared before the summary's lines.
    let _ = (on_progress, on_warning, warn);
    drop(shown);
    let summary = match summary {
        Ok(summary) => summary,
        Err(e) => {
            // A job stopped by an error lets go of its checkpoint too (the
            // error is the one to report, not a failed release).
            let _ = job.close().await;
            return Err(e).with_context(|| format!("job {}", args.job.display()));
        }
    };
    for w in &summary.warnings {
        errln!("weir: warning: {}", redactor.scrub(w));
        write_json(&redactor.scrub(&serde_json::json!({ "warnings": [w] }).to_string()));
    }
    let json_error = json_error.into_inner().unwrap_or_else(|p| p.into_inner());
    if args.explain_analyze {
        outln!("{}", redactor.scrub(&job.explain_analyze()));
    }
    job.close().await?;
    if let Some(e) = json_error {
        bail!("writing --progress-json: {e}");
    }
    errln!(
        "weir: done: {} epoch(s), {} rows in, {} rows out, {} late, {} bad{}",
        summary.epochs,
        group_digits(summary.rows_in),
        group_digits(summary.rows_out),
        group_digits(summary.late_rows),
        group_digits(summary.bad_rows),
        match summary.last_epoch {
            Some(e) => format!("; committed through epoch {e}"),
            None => String::new(),
        }
    );
    // Stopped before a bounded trigger was done: a script must be able to
    // tell this run from one that finished (128 + the signal, as shells do).
    let signal = stopped_by.load(std::sync::atomic::Ordering::Relaxed);
    if summary.stopped && !matches!(trigger, Trigger::Interval(_)) {
        errln!("weir: stopped before the input was done; the next run continues from the checkpoint");
        return Ok(Some(128 + signal.max(libc::SIGINT as u8)));
    }
    Ok(None)
}

/// Stops the run after its current epoch on the first Ctrl-C (SIGINT) or
/// SIGTERM, and at once on the second (safe at any instant: the checkpoint
/// protocol recovers). Returns the number of the signal that stopped it
/// (0 while none has).
///
/// The signals are awaited on a thread with a runtime of its own: an
/// epoch's operators keep the main runtime's workers busy, and a listener
/// there waited for one (the second signal did not stop the run at once).
fn stop_on_signals(stop: watch::Sender<bool>) -> Arc<std::sync::atomic::AtomicU8> {
    let by = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let seen = Arc::clone(&by);
    let _ = std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(listen_for_stop(stop, seen));
            }
        });
    by
}

async fn listen_for_stop(stop: watch::Sender<bool>, seen: Arc<std::sync::atomic::AtomicU8>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return;
    };
    loop {
        let number = tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
        } as u8;
        // Which signal, before the run can see it stopped.
        if seen.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            seen.store(number, std::sync::atomic::Ordering::Relaxed);
        }
        if stop.send_replace(true) {
            std::process::exit(128 + i32::from(number));
        }
        errln!(
            "weir: stopping after the current epoch ({} again to stop now)",
            if i32::from(number) == libc::SIGINT {
                "Ctrl-C"
            } else {
                "SIGTERM"
            }
        );
    }
}

/// `weir query`: one statement's result, as the shell prints it.
fn query(
    rt: &tokio::runtime::Runtime,
    redactor: Redactor,
    sql: &str,
    format: Format,
    cluster: Option<&str>,
) -> Result<()> {
    let mut shell = Shell::new(redactor, shell::interrupts(rt, false), store_options_from_env()?);
    shell.set_format(format);
    // One command's output, asked for: every row, as `psql -c` prints
    // them (the shell's `\maxrows` cut and its hint are for a session).
    shell.set_max_rows(0);
    if let Some(address) = cluster {
        shell.set_cluster(scheduler_url(address)?);
    }
    let text = sql.trim().trim_end_matches(';').trim();
    if text.is_empty() {
        anyhow::bail!("weir query needs a statement, e.g. weir query \"SELECT * FROM 'out/'\"");
    }
    let piece = Piece {
        text: text.to_string(),
        line: 1,
        command: false,
    };
    rt.block_on(shell.run_piece(&piece))
        .map_err(|e| anyhow::anyhow!(shell.error_text(&e)))?;
    Ok(())
}

/// How long `weir run --cluster` and `weir query --cluster` wait for a
/// scheduler that does not answer (one starting, or restarting) before
/// giving up with an error.
pub const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A scheduler's URL from what a user typed: `host:port`, or the URL.
fn scheduler_url(address: &str) -> Result<String> {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("df://"))
        .unwrap_or(address);
    if let Some((scheme, _)) = rest.split_once("://") {
        bail!(
            "'{address}': a scheduler is reached over plain gRPC, not {scheme}://; give host:port, such as 127.0.0.1:50050"
        );
    }
    match rest.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && port.parse::<u16>().is_ok()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')) =>
        {
            Ok(format!("http://{rest}"))
        }
        _ => bail!("'{address}' is not a scheduler's address: expected host:port, such as 127.0.0.1:50050"),
    }
}

/// `weir cluster scheduler` and `weir cluster executor`: run until stopped.
async fn cluster_command(command: &ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Scheduler { bind } => {
            let options = weir_cluster::SchedulerOptions {
                bind: *bind,
                store_options: store_options_from_env()?,
            };
            weir_cluster::run_scheduler(options, |address| {
                // The line a supervisor (or a test) waits for.
                outln!("weir cluster scheduler listening on {address}");
            })
            .await?;
        }
        ClusterCommand::Executor {
            scheduler,
            bind,
            port,
            grpc_port,
            concurrency,
            work_dir,
        } => {
            let url = scheduler_url(scheduler)?;
            let host_port = url.trim_start_matches("http://");
            let scheduler = tokio::net::lookup_host(host_port)
                .await
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| format!("cannot resolve the scheduler's address '{scheduler}'"))?;
            let temporary;
            let work_dir = match work_dir {
                Some(d) => d.clone(),
                None => {
                    temporary = tempfile::Builder::new()
                        .prefix("weir-executor-")
                        .tempdir()
                        .context("cannot create the executor's work folder")?;
                    temporary.path().to_path_buf()
                }
            };
            weir_cluster::check_executor_ports(*bind, *port, *grpc_port)?;
            outln!("weir cluster executor on {bind}:{port} (tasks on {grpc_port}), scheduler {scheduler}");
            weir_cluster::run_executor(weir_cluster::ExecutorOptions {
                scheduler,
                bind: *bind,
                port: *port,
                grpc_port: *grpc_port,
                concurrency: *concurrency,
                work_dir,
                store_options: store_options_from_env()?,
            })
            .await?;
        }
    }
    Ok(())
}

/// `weir`, `weir -f FILE`, `weir -i FILE`, or statements piped in.
/// Returns the exit status a signal that stopped a script's queries asks
/// for (128 + the signal), as `weir run` does.
fn shell_mode(rt: &tokio::runtime::Runtime, cli: &Cli, redactor: Redactor) -> Result<Option<u8>> {
    // A script (no terminal to type in) stops on SIGTERM as on Ctrl-C.
    let scripted = cli.file.is_some() || !std::io::stdin().is_terminal();
    let mut shell = Shell::new(
        redactor,
        shell::interrupts(rt, scripted),
        store_options_from_env()?,
    );
    if let Some(f) = cli.format {
        shell.set_format(f);
    }
    let read = |path: &Path| -> Result<(String, String)> {
        if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            return Ok((without_bom(text), "<stdin>".into()));
        }
        let text = std::fs::read_to_string(path)
            .map(without_bom)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok((text, path.display().to_string()))
    };
    let script = |shell: &mut Shell, path: &Path| -> Result<Flow> {
        let (text, name) = read(path)?;
        let flow = shell::run_script(rt, shell, &text, &name);
        if flow.is_err() {
            rt.block_on(shell.leave());
        }
        flow
    };
    if let Some(init) = &cli.init {
        match script(&mut shell, init) {
            Ok(Flow::Quit) => {
                rt.block_on(shell.leave());
                return Ok(None);
            }
            Ok(Flow::Continue) => {}
            // The shell still opens, as after any error in it.
            Err(e) if cli.file.is_none() && std::io::stdin().is_terminal() => errln!("error: {e:#}"),
            Err(e) => return Err(e),
        }
    }
    let file = match &cli.file {
        Some(f) => Some(f.clone()),
        None if !std::io::stdin().is_terminal() => Some(PathBuf::from("-")),
        None => None,
    };
    match file {
        Some(f) => {
            if script(&mut shell, &f)? == Flow::Quit {
                rt.block_on(shell.leave());
                return Ok(None);
            }
            rt.block_on(shell.wait_for_queries())
        }
        None => shell::interactive(rt, &mut shell, shell::history_path()).map(|()| None),
    }
}

/// glibc's malloc hands large freed blocks back to the kernel, so each
/// epoch's batches (often 100+ MB) were page-faulted and zeroed afresh: in a
/// stateless Nexmark query that was a third of the CPU time. Rust's
/// allocations now go to mimalloc (`GLOBAL` above); this still keeps what C
/// code allocates through glibc for the next epoch. (Setting mimalloc's own
/// `purge_delay` to 5 s made no difference measurable above run-to-run
/// noise on Nexmark q5_agg, once the binary was warm.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

// mimalloc's C API (linked in through the `mimalloc` crate).
unsafe extern "C" {
    #[cfg(test)]
    fn mi_option_get(option: libc::c_int) -> libc::c_long;
    fn mi_option_set(option: libc::c_int, value: libc::c_long);
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (v2 and v3 alike;
/// a test checks it is the option whose default is v3's 1000 ms).
const MI_OPTION_PURGE_DELAY: libc::c_int = 15;

/// mimalloc returns memory freed for a second (v3's `purge_delay`) to the
/// kernel, and the next epoch faults it in and zeroes it again: Nexmark q20
/// (epochs of ~250 ms of large batches) took 230,000 page faults and 5%
/// more CPU than with the memory kept (`perf stat -e task-clock,page-faults`
/// over five runs each). Memory idle for 10 s still goes back. Setting
/// `MIMALLOC_PURGE_DELAY` leaves the choice to mimalloc.
fn keep_memory_between_epochs() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets one of mimalloc's options; any thread may, at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
}

/// mimalloc asks the kernel for transparent huge pages, and it returns
/// freed memory to the kernel after a short delay. Together they cost one
/// 2 MiB page zeroed for every huge page an epoch touches again: with
/// checkpoints of joins and state this was a third to half of the whole
/// run's CPU (Nexmark q20 9.6 s -> 6.5 s, q9 8.3 -> 5.5 s, q4 1.5 -> 1.1 s
/// without them; the tumble bench unchanged), and a job of small epochs
/// spent 2 ms an epoch zeroing pages. So Weir turns THP off for its own
/// process, as mimalloc does with `MIMALLOC_ALLOW_THP=0`; setting that
/// variable (to anything) leaves the choice to mimalloc.
#[cfg(target_os = "linux")]
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag on this
    // process's memory map; a failure (an old kernel) changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn no_transparent_huge_pages() {}

fn main() -> ExitCode {
    // Panics are caught and reported as errors (with where they happened),
    // once: an operator's in its epoch, anything else here.
    weir_engine::panics::install_hook();
    match std::panic::catch_unwind(weir_main) {
        Ok(code) => code,
        Err(panic) => {
            errln!(
                "error: internal error (a bug in Weir, please report it): {}",
                weir_engine::panics::message(panic.as_ref())
            );
            ExitCode::from(101)
        }
    }
}

fn weir_main() -> ExitCode {
    keep_freed_memory();
    keep_memory_between_epochs();
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let mut redactor = Redactor::from_env();
    // `weir run --threads N` runs N tokio workers (0: one per CPU we may use,
    // which is also tokio's default).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(Command::Run(args)) = &cli.command {
        // The job may set its threads (`SET threads`); the flag wins.
        let job = std::fs::read_to_string(&args.job)
            .map(without_bom)
            .ok()
            .and_then(|sql| weir_sql::Job::parse(&sql).ok());
        if let Ok(settings) = RunSettings::of(args, job.as_ref()) {
            builder.worker_threads(settings.threads);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            errln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut code = None;
    let result = match cli.command {
        Some(Command::Run(args)) => runtime.block_on(run(args, &mut redactor)).map(|c| code = c),
        Some(Command::Query {
            ref sql,
            format,
            ref cluster,
        }) => query(&runtime, redactor.clone(), sql, format, cluster.as_deref()),
        Some(Command::Cluster(ref c)) => runtime.block_on(cluster_command(c)),
        Some(Command::Checkpoint(ref c)) => runtime.block_on(checkpoint_command(c, &redactor)),
        None => shell_mode(&runtime, &cli, redactor.clone()).map(|c| code = c),
    };
    // Do not wait for a blocked Ctrl-C listener or stray tasks.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if std::env::var_os("WEIR_FAULTS").is_some() {
        errln!(
            "weir: WEIR_FAULTS injected {}; storage: {}",
            weir_storage::faults::injected(),
            weir_storage::retry::stats()
        );
    }
    match result {
        Ok(()) => code.map_or(ExitCode::SUCCESS, ExitCode::from),
        Err(e) => {
            errln!("error: {}", redactor.scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option index is mimalloc's purge delay: its default (v3's
    /// 1000 ms, unless the environment set one) and a value set come back.
    /// A mimalloc whose options were renumbered fails here, not silently.
    #[test]
    fn the_purge_delay_option_is_mimallocs() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads one of mimalloc's options.
            assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        }
        keep_memory_between_epochs();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: as above.
            assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 10_000);
        }
    }
}
