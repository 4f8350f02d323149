//! `weir`: the command line. The only crate that owns the tokio runtime,
//! reads the environment, or prints.

mod redact;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use datafusion::prelude::{SessionConfig, SessionContext};
use tokio::sync::watch;
use weir_engine::{BatchProgress, EpochHooks, JobOptions, Step, StreamingJob, Trigger};
use weir_storage::StoreOptions;

use redact::Redactor;

/// Weir: streaming SQL on one machine, exactly once.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The job file.
    job: PathBuf,
    /// When to run epochs: `available-now` (process the input there now, then
    /// exit), `once` (one epoch, then exit), or an interval such as `1s`,
    /// `500ms`, `1m` (keep running).
    #[arg(long, default_value = "1s")]
    trigger: String,
    /// Where the checkpoint lives: a folder or a URL (file://, s3://).
    /// Default: `<job>.checkpoint/` beside the job file.
    #[arg(long)]
    checkpoint: Option<String>,
    /// The input is complete: after the last batch, close every open window.
    /// A later run then treats any new rows as late.
    #[arg(long)]
    drain: bool,
    /// Also write each batch's progress as a JSON line to this file (appended).
    #[arg(long, value_name = "FILE")]
    progress_json: Option<PathBuf>,
    /// Print the job's plans and exit without running it.
    #[arg(long)]
    explain: bool,
}

fn parse_trigger(s: &str) -> Result<Trigger> {
    match s {
        "available-now" | "available_now" => Ok(Trigger::AvailableNow),
        "once" => Ok(Trigger::Once),
        other => {
            let d = humantime::parse_duration(other).with_context(|| {
                format!("--trigger '{other}': expected available-now, once, or an interval such as 1s")
            })?;
            if d.is_zero() {
                bail!("--trigger interval must be positive");
            }
            Ok(Trigger::Interval(d))
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

/// Settings for S3 and friends from the environment (`AWS_*`).
fn store_options_from_env() -> StoreOptions {
    StoreOptions::new(
        std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v)),
    )
}

/// `WEIR_FAILPOINT=<step>@<epoch>`: the process kills itself with SIGKILL
/// when that epoch reaches that step. For crash tests; see `Step` for names.
struct Failpoint {
    step: Step,
    epoch: u64,
}

impl Failpoint {
    fn from_env() -> Result<Option<Failpoint>> {
        let Ok(spec) = std::env::var("WEIR_FAILPOINT") else {
            return Ok(None);
        };
        let (step, epoch) = spec
            .split_once('@')
            .with_context(|| format!("WEIR_FAILPOINT='{spec}': expected <step>@<epoch>"))?;
        let step = Step::from_name(step).with_context(|| {
            let names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
            format!(
                "WEIR_FAILPOINT: unknown step '{step}' (steps: {})",
                names.join(", ")
            )
        })?;
        let epoch = epoch
            .parse()
            .with_context(|| format!("WEIR_FAILPOINT: bad epoch '{epoch}'"))?;
        Ok(Some(Failpoint { step, epoch }))
    }
}

impl EpochHooks for Failpoint {
    fn reached(&self, step: Step, epoch: u64) {
        if step == self.step && epoch == self.epoch {
            // SIGKILL, as `kill -9` would: no destructors, no flushing.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

struct NoHooks;
impl EpochHooks for NoHooks {
    fn reached(&self, _: Step, _: u64) {}
}

fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// The one-line progress report of an epoch.
fn progress_line(p: &BatchProgress) -> String {
    let mut line = format!(
        "epoch {}{}  in {}  out {}  late {}  {} rows/s  watermark {}  state {} rows  batch {:.1} ms",
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
        group_digits(p.late_rows),
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

async fn run(args: RunArgs, redactor: &mut Redactor) -> Result<()> {
    let sql = std::fs::read_to_string(&args.job)
        .with_context(|| format!("cannot read the job file {}", args.job.display()))?;
    // Parse first so the job's own secrets are scrubbed from any later error.
    if let Ok(job) = weir_sql::Job::parse(&sql) {
        for s in job.secret_values() {
            redactor.add(s);
        }
    }
    let trigger = parse_trigger(&args.trigger)?;
    let checkpoint = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| default_checkpoint(&args.job));
    let hooks: Arc<dyn EpochHooks> = match Failpoint::from_env()? {
        Some(f) => Arc::new(f),
        None => Arc::new(NoHooks),
    };
    let options = JobOptions {
        store_options: store_options_from_env(),
        hooks,
        ..JobOptions::new(checkpoint.clone())
    };
    let mut job = StreamingJob::open(&sql, options)
        .await
        .with_context(|| format!("job {}", args.job.display()))?;
    if args.explain {
        println!("{}", redactor.scrub(&job.explain()));
        return Ok(());
    }
    let mut json = match &args.progress_json {
        Some(path) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => None,
    };
    eprintln!(
        "weir: running {} (checkpoint {}{})",
        args.job.display(),
        redactor.scrub(&checkpoint),
        match job.last_committed() {
            Some(e) => format!(", resuming after epoch {e}"),
            None => String::new(),
        }
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("weir: stopping after the current epoch (Ctrl-C again to stop now)");
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                // Safe at any instant: the checkpoint protocol recovers.
                std::process::exit(130);
            }
        }
    });

    let scrub = redactor.clone();
    let mut json_error = None;
    let mut on_progress = |p: &BatchProgress| {
        eprintln!("{}", scrub.scrub(&progress_line(p)));
        if let Some(f) = json.as_mut() {
            let line = serde_json::to_string(p).unwrap_or_default();
            if let Err(e) = writeln!(f, "{}", scrub.scrub(&line)) {
                json_error.get_or_insert(e);
            }
        }
    };
    let summary = job.run(trigger, args.drain, stop_rx, &mut on_progress).await?;
    if let Some(e) = json_error {
        bail!("writing --progress-json: {e}");
    }
    eprintln!(
        "weir: done: {} epoch(s), {} rows in, {} rows out, {} late{}",
        summary.epochs,
        group_digits(summary.rows_in),
        group_digits(summary.rows_out),
        group_digits(summary.late_rows),
        match summary.last_epoch {
            Some(e) => format!("; committed through epoch {e}"),
            None => String::new(),
        }
    );
    Ok(())
}

async fn query(sql: &str) -> Result<()> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true))
        .enable_url_table();
    let df = ctx
        .sql(sql)
        .await
        .map_err(|e| anyhow::anyhow!(weir_sql::strip_df(&e)))?;
    let batches = df
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!(weir_sql::strip_df(&e)))?;
    let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?;
    println!("{table}");
    Ok(())
}

/// glibc's malloc hands large freed blocks back to the kernel, so each
/// epoch's batches (often 100+ MB) are page-faulted and zeroed afresh: in a
/// stateless Nexmark query that was a third of the CPU time. Keep freed
/// memory for the next epoch instead; RSS stays at the job's working set.
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

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let mut redactor = Redactor::from_env();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args, &mut redactor).await,
            Command::Query { sql } => query(&sql).await,
        }
    });
    // Do not wait for a blocked Ctrl-C listener or stray tasks.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", redactor.scrub(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
