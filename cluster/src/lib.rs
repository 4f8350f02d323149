//! Weir on Apache DataFusion Ballista.
//!
//! Ballista is DataFusion's distributed engine: a scheduler splits a physical
//! plan into stages at its repartitions and hands their tasks to executors,
//! which shuffle between stages through Arrow Flight. Weir does not build a
//! cluster engine of its own; this crate is the glue:
//!
//! - [`run_scheduler`] and [`run_executor`] are the two processes
//!   (`weir cluster scheduler`, `weir cluster executor`), built on the
//!   `ballista-scheduler` and `ballista-executor` crates;
//! - [`execute`] runs a physical plan planned here (by the client) as one
//!   Ballista job and streams its result back.
//!
//! - [`read::ClusterReader`] reads an epoch's input on the executors for
//!   `weir run --cluster` (see [`read`]).
//!
//! The design's split of work (`design.md`, "On a cluster"): the driver keeps
//! the checkpoint protocol, executors do the work between its steps, and the
//! checkpoint's object store is the only thing they share. The engine never
//! depends on this crate; the `cli` crate puts the two together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures::TryStreamExt;

mod operators;
pub mod pipeline;
pub mod read;
pub mod stages;

pub use read::{ClusterReader, WeirCodec};

/// What can go wrong starting a process or running a plan on a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An address or option that cannot work.
    #[error("{0}")]
    Config(String),
    /// The scheduler or an executor stopped with an error.
    #[error("{0}")]
    Process(String),
    /// A job failed, or the scheduler could not be reached.
    #[error("the cluster at {url}: {reason}")]
    Job {
        /// The scheduler's URL.
        url: String,
        /// Ballista's or DataFusion's message.
        reason: String,
    },
}

/// Result of this crate's functions.
pub type Result<T> = std::result::Result<T, Error>;

/// Options of `weir cluster scheduler`.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Where it listens for clients and executors (gRPC).
    pub bind: SocketAddr,
    /// Settings for the stores the plans it splits name (an `s3://` table
    /// is opened when a plan is decoded; from its own environment).
    pub store_options: weir_storage::StoreOptions,
}

/// Runs a scheduler until the process is stopped. `ready` is called with the
/// address it listens on once it accepts connections (port 0 binds a free
/// one).
pub async fn run_scheduler(options: SchedulerOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        external_host: options.bind.ip().to_string(),
        // Weir's jobs are many small ones (one an epoch): their finished
        // state is dropped after a minute, not kept for the default hour.
        finished_job_state_clean_up_interval_seconds: 60,
        // An executor that stops heartbeating (every 5 s, see
        // `run_executor`) is declared dead after 15 s, checked every 5 s,
        // and its tasks rerun elsewhere: with Ballista's 180 s an epoch
        // waited three minutes for a killed executor.
        executor_timeout_seconds: 15,
        expire_dead_executor_interval_seconds: 5,
        no_executors_grace_period_seconds: 15,
        // Weir's nodes (a remote read) are planned by the driver and split
        // into stages here.
        override_physical_codec: Some(Arc::new(WeirCodec::default())),
        // Decoding a plan opens the stores its scans name: Weir's registry
        // opens an `s3://` bucket with this process's settings.
        override_session_builder: Some(session_builder(options.store_options.clone())),
        ..SchedulerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .map_err(|e| Error::Config(format!("the scheduler cannot listen on {}: {e}", options.bind)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("the scheduler's listening address: {e}")))?;
    let config = Arc::new(SchedulerConfig {
        bind_port: bound.port(),
        ..config
    });
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| Error::Process(format!("the scheduler cannot start: {e}")))?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::clone(&config))
        .await
        .map_err(|e| Error::Process(format!("the scheduler cannot start: {e}")))?;
    cancel_jobs_without_executors(scheduler.clone());
    ready(bound);
    start_grpc_service_with_listener(listener, scheduler)
        .await
        .map_err(|e| Error::Process(format!("the scheduler stopped: {e}")))
}

/// How long a job may wait on a scheduler that has no executor before it
/// is cancelled: longer than an executor takes to register when the
/// scheduler and its executors start together.
pub const NO_EXECUTOR_GRACE: Duration = Duration::from_secs(20);

/// Cancels the jobs that have waited [`NO_EXECUTOR_GRACE`] while no
/// executor was registered. Ballista keeps such a job queued until an
/// executor comes (it fails only the jobs of executors that were lost), so
/// a driver whose executors were never started, or all left, waited for
/// ever without a word; its client now gets the job's cancellation, and
/// `weir run` says why ([`execute`]).
fn cancel_jobs_without_executors(
    scheduler: ballista_scheduler::scheduler_server::SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
) {
    tokio::spawn(async move {
        let mut waiting: std::collections::HashMap<String, std::time::Instant> =
            std::collections::HashMap::new();
        let mut empty_since: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if scheduler.is_ready() {
                empty_since = None;
                waiting.clear();
                continue;
            }
            let since = *empty_since.get_or_insert_with(std::time::Instant::now);
            let jobs = scheduler.state.task_manager.get_running_job_cache();
            waiting.retain(|id, _| jobs.contains_key(id.as_str()));
            for id in jobs.keys() {
                let seen = *waiting
                    .entry(id.to_string())
                    .or_insert_with(std::time::Instant::now);
                if seen.elapsed() >= NO_EXECUTOR_GRACE && since.elapsed() >= NO_EXECUTOR_GRACE {
                    tracing::warn!("cancelling job {id}: no executor is registered");
                    eprintln!(
                        "weir: cancelling job {id}: no executor has been registered for {} s",
                        since.elapsed().as_secs()
                    );
                    let _ = scheduler.cancel_job(id.clone()).await;
                    waiting.remove(&id.to_string());
                }
            }
        }
    });
}

/// Options of `weir cluster executor`.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    /// The scheduler's address.
    pub scheduler: SocketAddr,
    /// Where this executor listens: `port` for Arrow Flight (other executors
    /// and clients fetch shuffle output and results there), `grpc_port` for
    /// the scheduler's task requests.
    pub bind: std::net::IpAddr,
    /// Arrow Flight port.
    pub port: u16,
    /// gRPC port.
    pub grpc_port: u16,
    /// Tasks it runs at once (0: one per core it may use).
    pub concurrency: usize,
    /// Where it keeps shuffle files between stages.
    pub work_dir: PathBuf,
    /// Settings for the stores its tasks read (from its own environment).
    pub store_options: weir_storage::StoreOptions,
}

/// Runs an executor until the process is stopped (SIGTERM or Ctrl-C, after
/// which it tells the scheduler it is leaving).
pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    std::fs::create_dir_all(&options.work_dir).map_err(|e| {
        Error::Config(format!(
            "cannot create the executor's work folder {}: {e}",
            options.work_dir.display()
        ))
    })?;
    let work_dir = options.work_dir.to_str().map(str::to_owned).ok_or_else(|| {
        Error::Config(format!(
            "the executor's work folder {} is not valid UTF-8",
            options.work_dir.display()
        ))
    })?;
    check_executor_ports(options.bind, options.port, options.grpc_port)?;
    let config = ExecutorProcessConfig {
        bind_host: options.bind.to_string(),
        external_host: Some(options.bind.to_string()),
        port: options.port,
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler.ip().to_string(),
        scheduler_port: options.scheduler.port(),
        // Wait for a scheduler that is still starting, as a supervisor
        // starting all three processes at once would.
        scheduler_connect_timeout_seconds: 30,
        vcores: options.concurrency,
        work_dir: Some(work_dir.clone()),
        // A dead executor is noticed by its missing heartbeats: every 5 s
        // here rather than Ballista's 60, so its tasks are rerun sooner.
        executor_heartbeat_interval_seconds: 5,
        print_thread_info: false,
        // Weir's nodes run here, reading with this process's own settings.
        override_physical_codec: Some(Arc::new(WeirCodec::new(options.store_options.clone()))),
        // And so do DataFusion's own scans (`weir query --cluster` over an
        // `s3://` table): the bucket opened with this executor's settings.
        override_runtime_producer: Some(runtime_producer(work_dir.clone(), options.store_options.clone())),
        ..ExecutorProcessConfig::default()
    };
    // Ballista's executor stops, as if asked to, once its scheduler has
    // been gone for a while, and cannot be started again in the same
    // process (its state says it is terminating). Weir's runs until it is
    // stopped (Ctrl-C, SIGTERM): it says so and starts itself again (the
    // same command, in place of this process, with the same pid), which
    // waits for the scheduler to come back, so that a scheduler restarted
    // later finds its executors.
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stopped = Arc::clone(&stopped);
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(t) => { t.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
            stopped.store(true, std::sync::atomic::Ordering::SeqCst);
            // Ballista stops a registered executor on the signal; one
            // still waiting for its scheduler does not notice it.
            tokio::time::sleep(Duration::from_secs(3)).await;
            eprintln!("weir cluster executor: stopped");
            std::process::exit(0);
        });
    }
    let ran = start_executor_process(Arc::new(config)).await;
    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
        return ran.map_err(|e| Error::Process(format!("the executor stopped: {e}")));
    }
    // Another failure (a port taken, a bad setting) will not pass.
    let why = match ran {
        Ok(()) => "it lost its scheduler".to_string(),
        Err(e) if e.to_string().to_lowercase().contains("scheduler") => e.to_string(),
        Err(e) => return Err(Error::Process(format!("the executor stopped: {e}"))),
    };
    eprintln!(
        "weir cluster executor: {why}; starting again, to register with the scheduler at {} when it answers \
         (Ctrl-C stops)",
        options.scheduler
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    restart_self()
}

/// Checks that an executor can listen on its two ports. Ballista binds them
/// in tasks of its own, and a port taken ends the process as if its
/// scheduler were gone: it would restart itself for ever.
pub fn check_executor_ports(bind: std::net::IpAddr, port: u16, grpc_port: u16) -> Result<()> {
    if port == grpc_port {
        return Err(Error::Config(format!(
            "--port and --grpc-port are both {port}: the executor needs two ports"
        )));
    }
    for (flag, p) in [("--port", port), ("--grpc-port", grpc_port)] {
        if let Err(e) = std::net::TcpListener::bind((bind, p)) {
            return Err(Error::Config(format!(
                "the executor cannot listen on {bind}:{p} ({flag}): {e}"
            )));
        }
    }
    Ok(())
}

/// Replaces this process with the same command (same pid): only returns
/// if that fails.
fn restart_self() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map_err(|e| Error::Process(format!("the executor cannot start again: {e}")))?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(Error::Process(format!("the executor cannot start again: {err}")))
}

/// The scheduler's sessions: Ballista's, with Weir's object-store registry.
fn session_builder(
    store_options: weir_storage::StoreOptions,
) -> ballista_scheduler::scheduler_server::SessionBuilder {
    let registry = Arc::new(weir_storage::StoreRegistry::new(store_options));
    Arc::new(move |config: SessionConfig| {
        let state = ballista_core::utils::default_session_builder(config)?;
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::clone(&registry) as _)
            .build_arc()?;
        let mut state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(runtime)
            .build();
        // Weir's MIN and MAX, for queries the scheduler plans itself.
        for f in weir_sql::functions::min_max() {
            datafusion::execution::FunctionRegistry::register_udaf(&mut state, Arc::new(f))?;
        }
        Ok(state)
    })
}

/// The runtime of an executor's tasks: Ballista's (spill files in the work
/// folder), with Weir's object-store registry, which opens an `s3://`
/// bucket a plan names with `store_options`.
fn runtime_producer(
    work_dir: String,
    store_options: weir_storage::StoreOptions,
) -> ballista_core::RuntimeProducer {
    let registry = Arc::new(weir_storage::StoreRegistry::new(store_options));
    Arc::new(move |_config: &SessionConfig| {
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_temp_file_path(work_dir.clone())
            .with_object_store_registry(Arc::clone(&registry) as _)
            .build()?;
        Ok(Arc::new(runtime))
    })
}

/// Runs `plan`, planned by the caller, as one job on the scheduler at `url`
/// (`http://host:port`), and returns its output. Waits for the scheduler
/// while it is not reachable, up to `connect_timeout`.
pub async fn execute(
    url: &str,
    plan: Arc<dyn ExecutionPlan>,
    session: &SessionConfig,
    connect_timeout: Duration,
) -> Result<Vec<RecordBatch>> {
    let job_err = |reason: String| Error::Job {
        url: url.to_string(),
        reason: without_executors(&reason, url).unwrap_or_else(|| task_failure(&reason, url)),
    };
    let session = session.clone().upgrade_for_ballista();
    let config: BallistaConfig = session.ballista_config();
    let codec = WeirCodec::default();
    let session_id = uuid_like_session_id();
    let started = std::time::Instant::now();
    loop {
        let submitted = execute_physical_plan::<PhysicalPlanNode>(
            url.to_string(),
            &config,
            Arc::clone(&plan),
            &codec,
            session_id.clone(),
            session.clone(),
        )
        .await;
        match submitted {
            Ok(stream) => {
                return stream.try_collect().await.map_err(|e| job_err(e.to_string()));
            }
            Err(e) if unreachable(&e.to_string()) && started.elapsed() < connect_timeout => {
                tracing::debug!("the scheduler at {url} is not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) if unreachable(&e.to_string()) => {
                return Err(job_err(format!(
                    "no scheduler answers there (waited {} s; is `weir cluster scheduler` running?)",
                    connect_timeout.as_secs()
                )));
            }
            Err(e) => {
                let message = e.to_string();
                return Err(match not_a_scheduler(&message) {
                    Some(why) => Error::Job {
                        url: url.to_string(),
                        reason: why,
                    },
                    None => job_err(message),
                });
            }
        }
    }
}

/// Why a job could not be submitted at all, when the address is not a
/// scheduler's: what answers there (an executor's port, which its start-up
/// line prints beside the scheduler's; a web server) or a host that does not
/// resolve. The client's own words were its debug text (`Status { code:
/// Unimplemented, metadata: MetadataMap { ... } }`, `ConnectError("dns
/// error", ...)`).
fn not_a_scheduler(message: &str) -> Option<String> {
    const GIVE: &str = "give the address `weir cluster scheduler` printed (\"listening on HOST:PORT\")";
    if message.contains("dns error") || message.contains("failed to lookup address") {
        return Some(format!("its host name does not resolve; {GIVE}"));
    }
    if message.contains("code: Unimplemented") {
        return Some(format!(
            "what answers there is a gRPC service but not a scheduler (an executor's --port or --grpc-port?); {GIVE}"
        ));
    }
    // A web server's answer reaches the client as a protocol error, or as
    // the connection closed under it (whichever it reads first).
    if message.contains("h2 protocol error")
        || (message.contains("code: Cancelled") && message.contains("connection closed"))
        || message.contains("invalid content-type")
        || message.contains("FRAME_SIZE_ERROR")
        || message.contains("frame with invalid size")
    {
        return Some(format!(
            "what answers there does not speak gRPC (a web server?); {GIVE}"
        ));
    }
    None
}

/// The message inside a failed task's error. Ballista reports a task's
/// error in Rust's debug form, each layer of wrapping around it:
/// `Execution error: Job J failed: Job failed due to stage 1 failed: Task
/// failed due to runtime execution error: DataFusionError(Shared(External(
/// DataFusionError(External(Input("file:///in/a.csv: line 102: ...")))))`.
/// The innermost message is the one Weir (or DataFusion) wrote for the
/// user; an error of another shape is left as it is.
fn task_failure(message: &str, scheduler: &str) -> String {
    const TASK: &str = "Task failed due to runtime execution error: ";
    // The job ran, but an executor that held a task's output died before
    // this client fetched it.
    const FETCH: &str = "Error connecting to Ballista scheduler or executor at ";
    if let Some(at) = message.find(FETCH) {
        let address: String = message[at + FETCH.len()..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\\')
            .collect();
        let address = address.trim_end_matches(':');
        if address == scheduler {
            return format!("the scheduler at {address} stopped answering while the job ran");
        }
        return format!(
            "the executor at {address} could not be reached for a task's output (it stopped or died after \
             running the task)"
        );
    }
    let Some(at) = message.find(TASK) else {
        return message.to_string();
    };
    let inner = message[at + TASK.len()..].trim();
    peel(inner).unwrap_or_else(|| message.to_string())
}

/// The message in a debug-printed error: `Name(first, ...)` layers peeled
/// down to their first argument (`Context("label", inner)` to the label
/// and the inner message), a quoted string unescaped. `None` for another
/// shape (a struct's fields).
fn peel(mut inner: &str) -> Option<String> {
    loop {
        inner = inner.trim();
        let name_end = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(inner.len());
        let rest = &inner[name_end..];
        if name_end == 0 || !rest.starts_with('(') {
            break;
        }
        let first = first_argument(&rest[1..])?;
        if inner[..name_end].ends_with("Context") {
            // `Context("label", inner)`: both say something.
            let after = rest[1 + first.len()..].trim_start();
            if let (Some(label), Some(more)) = (peel(first), after.strip_prefix(',')) {
                let more = more.trim().strip_suffix(')').unwrap_or(more);
                if let Some(message) = peel(more) {
                    return Some(format!("{label}: {message}"));
                }
                return Some(label);
            }
        }
        inner = first;
    }
    // A quoted string: the message itself, unescaped.
    if inner.len() >= 2 && inner.starts_with('"') && inner.ends_with('"') {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner[1..inner.len() - 1].chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                Some('u') if chars.peek() == Some(&'{') => {
                    let code: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                    match u32::from_str_radix(&code, 16).ok().and_then(char::from_u32) {
                        Some(c) => out.push(c),
                        None => out.push_str(&format!("\\u{{{code}}}")),
                    }
                }
                Some(other) => out.push(other),
                None => {}
            }
        }
        return Some(out);
    }
    // An error without a message of its own (`ArrowError(DivideByZero)`):
    // its name is the best there is.
    if !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some(format!("a task failed: {inner}"));
    }
    None
}

/// The first argument of a debug-printed call whose `(` came just before
/// `args`: up to its first comma or closing parenthesis at depth 0,
/// quoted strings skipped whole. `None` if it never closes.
fn first_argument(args: &str) -> Option<&str> {
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in args.char_indices() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth > 0 => depth -= 1,
            ')' | ',' if depth == 0 => return Some(&args[..i]),
            _ => {}
        }
    }
    None
}

/// The reason to give for a job that failed as cancelled: only Weir's
/// scheduler cancels a job a client waits on, when no executor is
/// registered (`cancel_jobs_without_executors`). `None` for another error.
fn without_executors(message: &str, scheduler: &str) -> Option<String> {
    message.contains("failed: Cancelled").then(|| {
        format!(
            "no executor is registered with the scheduler: it cancelled the job after {} s \
             (start one with `weir cluster executor --scheduler {}`)",
            NO_EXECUTOR_GRACE.as_secs(),
            scheduler
                .trim_start_matches("http://")
                .trim_start_matches("df://")
        )
    })
}

/// Whether a submission failed because nothing answered at the address (as
/// opposed to a job that ran and failed).
fn unreachable(message: &str) -> bool {
    // A job that ran and failed may quote a task's own connection error
    // (a shuffle fetched from an executor that died): that is its answer,
    // not a scheduler out of reach.
    if message.contains("Job ") && message.contains(" failed") {
        return false;
    }
    message.contains("Connection refused")
        || message.contains("tcp connect error")
        || message.contains("transport error")
        || message.contains("Error connecting to Ballista scheduler")
}

/// A session id for one client's jobs: the scheduler keeps a session's
/// configuration under it.
fn uuid_like_session_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("weir-{}-{nanos:x}", std::process::id())
}

/// A session state for planning a query that runs on a cluster: DataFusion's
/// defaults with Ballista's settings, `partitions` wide.
pub fn session_config(partitions: usize) -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_target_partitions(partitions.max(1))
        // A task is one partition: a part, or one shard of an operator
        // (`stages`), whose number its rows tell it. And the shuffle keeps
        // its partitions, one per shard, whatever their sizes (Ballista's
        // coalescing is off by default; this says it is needed).
        .set_str("ballista.scheduler.max_partitions_per_task", "1")
        .set_str("ballista.planner.coalesce.enabled", "false")
}

#[cfg(test)]
mod tests {
    /// The client's words for an address that is not a scheduler's (as
    /// `weir query --cluster` printed them) become what is wrong there.
    #[test]
    fn an_address_that_is_not_a_schedulers_says_what_answers_there() {
        let cases = [
            (
                r#"Execution error: Status { code: Unimplemented, metadata: MetadataMap { headers: {"content-type": "application/grpc"} }, source: None }"#,
                "not a scheduler (an executor's --port or --grpc-port?)",
            ),
            (
                r#"Execution error: Status { code: Internal, message: "h2 protocol error: http2 error", source: Some(tonic::transport::Error(Transport, hyper::Error(Http2, Error { kind: GoAway(b"", FRAME_SIZE_ERROR, Library) }))) }"#,
                "does not speak gRPC",
            ),
            (
                r#"Execution error: Status { code: Cancelled, message: "operation was canceled", source: Some(tonic::transport::Error(Transport, hyper::Error(Canceled, "connection closed"))) }"#,
                "does not speak gRPC",
            ),
            (
                r#"Execution error: tonic::transport::Error(Transport, ConnectError(ConnectError("dns error", Custom { kind: Uncategorized, error: "failed to lookup address information: Name or service not known" })))"#,
                "does not resolve",
            ),
        ];
        for (raw, says) in cases {
            let why = super::not_a_scheduler(raw).unwrap_or_default();
            assert!(
                why.contains(says) && why.contains("weir cluster scheduler"),
                "{raw}: {why}"
            );
        }
        assert_eq!(super::not_a_scheduler("Execution error: Job 1 failed: ..."), None);
    }

    /// A failed task's message comes out of Ballista's debug wrapping;
    /// an error of another shape is left whole.
    #[test]
    fn a_failed_tasks_message_is_taken_out_of_its_wrapping() {
        let raw = r#"Execution error: Job 038J failed: Job failed due to stage 1 failed: Task failed due to runtime execution error: DataFusionError(Shared(External(DataFusionError(External(Input("file:///in/c1.csv: line 102: column 'price': failed to parse \"cheap\" as Int64"))))))"#;
        assert_eq!(
            super::task_failure(raw, "http://s:1"),
            r#"file:///in/c1.csv: line 102: column 'price': failed to parse "cheap" as Int64"#
        );
        assert_eq!(
            super::task_failure(
                "Job failed: Task failed due to runtime execution error: DataFusionError(Shared(External(ArrowError(DivideByZero))))",
                "http://s:1"
            ),
            "a task failed: DivideByZero"
        );
        assert_eq!(
            super::task_failure(
                r#"Job failed: Task failed due to runtime execution error: ArrowError(CastError("Cannot cast string '1x' to value of Int32 type"), Some(""))"#,
                "http://s:1"
            ),
            "Cannot cast string '1x' to value of Int32 type"
        );
        let lost = r#"Execution error: GrpcConnectionError("Error connecting to Ballista scheduler or executor at http://127.0.0.1:51351: tonic::transport::Error(Transport, ConnectError(...))")"#;
        assert_eq!(
            super::task_failure(lost, "http://s:1"),
            "the executor at http://127.0.0.1:51351 could not be reached for a task's output (it stopped or died after running the task)"
        );
        assert_eq!(
            super::task_failure(
                r#"Job failed: Task failed due to runtime execution error: Context("reading part 3", Execution("caf\u{e9}\r\ngone"))"#,
                "http://s:1"
            ),
            "reading part 3: caf\u{e9}\r\ngone"
        );
        let other = "Execution error: tonic::transport::Error(Transport, ConnectError)";
        assert_eq!(super::task_failure(other, "http://s:1"), other);
        assert_eq!(
            super::task_failure(lost, "http://127.0.0.1:51351"),
            "the scheduler at http://127.0.0.1:51351 stopped answering while the job ran"
        );
    }
}
