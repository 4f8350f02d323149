//! The shell's background queries: each `INSERT INTO` runs as a
//! `StreamingJob` in a tokio task of its own while the user goes on typing.
//!
//! A query is named after its sink. Its task reports each epoch
//! (`BatchProgress`) into a shared status that `SHOW QUERIES` reads; it has
//! its own stop channel, so `STOP QUERY` (and leaving the shell) stops it
//! after the epoch in progress commits, and its checkpoint resumes it when
//! the same `INSERT` runs again. Tasks never print: a query that fails or
//! finishes on its own is reported at the next prompt.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_engine::{BatchProgress, StreamingJob, Trigger};

/// Where a query is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Running epochs.
    Running,
    /// Asked to stop; finishing its current epoch.
    Stopping,
    /// Stopped by the user; its checkpoint resumes it.
    Stopped,
    /// Its input is done (an `available-now` or `once` trigger).
    Finished,
    /// It stopped with an error.
    Failed(String),
}

impl State {
    /// The state's name in `SHOW QUERIES`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Finished => "finished",
            State::Failed(_) => "failed",
        }
    }
}

/// How far rates look back.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What a query has done in this session.
#[derive(Clone, Debug)]
pub struct Status {
    /// The state.
    pub state: State,
    /// The last committed epoch (from the checkpoint, before any ran here).
    pub committed: Option<u64>,
    /// Rows read since the query started in this session.
    pub rows_in: u64,
    /// Rows written since it started.
    pub rows_out: u64,
    /// Late rows dropped since it started.
    pub late_rows: u64,
    /// Bad input records set aside since it started (`'on_error'`).
    pub bad_rows: u64,
    /// The watermark after the last epoch.
    pub watermark: Option<String>,
    /// Rows of operator state after the last epoch.
    pub state_rows: u64,
    /// Records not read yet by unit (a Kafka partition), as of the last
    /// epoch: `bids/0=120, bids/1=0`.
    pub lag: Option<String>,
    /// When recent epochs ended, and the rows each read.
    recent: VecDeque<(Instant, u64)>,
    started: Instant,
    /// Whether the user has been told how it ended.
    reported: bool,
}

impl Status {
    fn new(committed: Option<u64>) -> Self {
        Self {
            state: State::Running,
            committed,
            rows_in: 0,
            rows_out: 0,
            late_rows: 0,
            bad_rows: 0,
            watermark: None,
            state_rows: 0,
            lag: None,
            recent: VecDeque::new(),
            started: Instant::now(),
            reported: false,
        }
    }

    /// Takes in an epoch's report.
    pub fn record(&mut self, p: &BatchProgress, now: Instant) {
        self.committed = Some(p.epoch);
        self.rows_in += p.rows_in;
        self.rows_out += p.rows_out;
        self.late_rows += p.late_rows;
        self.bad_rows += p.bad_rows;
        self.watermark = p.watermark.clone();
        self.state_rows = p.state_rows;
        let lag: Vec<String> = p
            .sources
            .iter()
            .flat_map(|s| s.lag.iter().map(|(unit, n)| format!("{unit}={n}")))
            .collect();
        self.lag = (!lag.is_empty()).then(|| lag.join(", "));
        self.recent.push_back((now, p.rows_in));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
    }

    /// Rows read per second over the last few seconds of wall time.
    pub fn rows_per_sec(&self, now: Instant) -> f64 {
        let rows: u64 = self
            .recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
            .map(|(_, r)| r)
            .sum();
        let span = now.duration_since(self.started).min(RATE_WINDOW).as_secs_f64();
        if span > 0.0 { rows as f64 / span } else { 0.0 }
    }
}

fn lock(status: &Mutex<Status>) -> MutexGuard<'_, Status> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

struct Query {
    checkpoint: String,
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// A query as `SHOW QUERIES` lists it.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Its name (the sink's).
    pub name: String,
    /// Its checkpoint.
    pub checkpoint: String,
    /// Its status.
    pub status: Status,
}

/// The session's background queries, by name.
#[derive(Default)]
pub struct Queries {
    queries: BTreeMap<String, Query>,
    /// Every query's epochs, for `SET metrics` (recorded whether or not
    /// they are served).
    metrics: Arc<crate::metrics::Metrics>,
}

impl Queries {
    /// The queries' metrics.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Whether a query of this name is running (or stopping).
    pub fn is_running(&self, name: &str) -> bool {
        self.queries
            .get(name)
            .is_some_and(|q| matches!(lock(&q.status).state, State::Running | State::Stopping))
    }

    /// The names of the queries still running.
    pub fn running(&self) -> Vec<String> {
        self.queries
            .keys()
            .filter(|n| self.is_running(n))
            .cloned()
            .collect()
    }

    /// Starts a query in the background (replacing an ended one of the same
    /// name).
    pub fn start(
        &mut self,
        name: &str,
        checkpoint: String,
        mut job: StreamingJob,
        trigger: Trigger,
        drain: bool,
    ) -> Result<()> {
        if self.is_running(name) {
            bail!("query '{name}' is already running (STOP QUERY {name} first)");
        }
        // Where a resumed query stands until its first epoch here: its
        // restored watermark and state (they showed as NULL and 0, as if
        // the state were lost).
        let standing = job.standing();
        let mut first = Status::new(job.last_committed());
        first.watermark = standing.watermark.clone();
        first.state_rows = standing.operators.iter().map(|(_, n)| n).sum();
        let status = Arc::new(Mutex::new(first));
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::clone(&status);
        let metrics = Arc::clone(&self.metrics);
        metrics.start(name, job.last_committed(), &standing);
        let query = name.to_string();
        let task = tokio::spawn(async move {
            let mut on_progress = |p: &BatchProgress| {
                metrics.record(&query, p);
                lock(&shared).record(p, Instant::now());
            };
            let run = job.run(trigger, drain, stop_rx.clone(), &mut on_progress);
            let result = AssertUnwindSafe(run).catch_unwind().await;
            // Let go of the checkpoint so the query can be started again at once.
            let released = job.close().await;
            let stopped = *stop_rx.borrow();
            let mut s = lock(&shared);
            s.state = match result {
                Ok(Ok(_)) if released.is_err() => State::Failed(format!(
                    "releasing its checkpoint: {}",
                    released.err().map(|e| e.to_string()).unwrap_or_default()
                )),
                Ok(Ok(_)) if stopped => State::Stopped,
                Ok(Ok(_)) => State::Finished,
                Ok(Err(e)) => State::Failed(e.to_string()),
                Err(panic) => State::Failed(format!(
                    "the query stopped on an internal error: {}",
                    weir_engine::panics::message(panic.as_ref())
                )),
            };
        });
        self.queries.insert(
            name.to_string(),
            Query {
                checkpoint,
                status,
                stop,
                task: Some(task),
            },
        );
        Ok(())
    }

    /// Asks a query to stop after its current epoch; returns its task to
    /// wait for (`None` when it is not running).
    pub fn stop(&mut self, name: &str) -> Result<Option<JoinHandle<()>>> {
        let Some(q) = self.queries.get_mut(name) else {
            let names: Vec<&str> = self.queries.keys().map(String::as_str).collect();
            bail!(
                "no query named '{name}'{}",
                if names.is_empty() {
                    " (no queries have run; INSERT INTO a sink starts one)".to_string()
                } else {
                    format!(" (queries: {})", names.join(", "))
                }
            );
        };
        {
            let mut s = lock(&q.status);
            if !matches!(s.state, State::Running | State::Stopping) {
                s.reported = true;
                return Ok(None);
            }
            s.state = State::Stopping;
            s.reported = true;
        }
        let _ = q.stop.send(true);
        Ok(q.task.take())
    }

    /// Asks every running query to stop; returns their tasks.
    pub fn stop_all(&mut self) -> Vec<(String, JoinHandle<()>)> {
        let mut out = Vec::new();
        for name in self.running() {
            if let Ok(Some(task)) = self.stop(&name) {
                out.push((name, task));
            }
        }
        out
    }

    /// The tasks of the running queries, to wait until they end by
    /// themselves (a script's queries with an `available-now` trigger).
    pub fn take_running_tasks(&mut self) -> Vec<(String, JoinHandle<()>)> {
        let running = self.running();
        running
            .into_iter()
            .filter_map(|n| {
                let task = self.queries.get_mut(&n)?.task.take()?;
                Some((n, task))
            })
            .collect()
    }

    /// A query's status.
    pub fn status(&self, name: &str) -> Option<Status> {
        self.queries.get(name).map(|q| lock(&q.status).clone())
    }

    /// Every query, by name.
    pub fn list(&self) -> Vec<Listed> {
        self.queries
            .iter()
            .map(|(name, q)| Listed {
                name: name.clone(),
                checkpoint: q.checkpoint.clone(),
                status: lock(&q.status).clone(),
            })
            .collect()
    }

    /// Queries that ended by themselves since the last call: what to tell
    /// the user at the next prompt.
    pub fn notices(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, q) in &self.queries {
            let mut s = lock(&q.status);
            if s.reported {
                continue;
            }
            match &s.state {
                State::Failed(e) => out.push(format!("query {name} failed: {e}")),
                State::Finished => out.push(format!(
                    "query {name} finished: its input is done{}",
                    committed_note(s.committed)
                )),
                _ => continue,
            }
            s.reported = true;
        }
        out
    }
}

/// `; committed through epoch N`, when there is one.
pub fn committed_note(epoch: Option<u64>) -> String {
    epoch.map_or(String::new(), |e| format!(" (committed through epoch {e})"))
}

/// `SHOW QUERIES` as rows: name, state, epoch, rows in and out, bad input
/// records set aside, rows/s, watermark, state rows, checkpoint and lag
/// (records not read yet by Kafka partition) (and the error, when asked).
pub fn show_queries(list: &[Listed], with_error: bool) -> Result<(SchemaRef, RecordBatch)> {
    let now = Instant::now();
    let mut fields = vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("epoch", DataType::UInt64, true),
        Field::new("rows_in", DataType::UInt64, false),
        Field::new("rows_out", DataType::UInt64, false),
        Field::new("bad_rows", DataType::UInt64, false),
        Field::new("rows_per_sec", DataType::Float64, false),
        Field::new("watermark", DataType::Utf8, true),
        Field::new("state_rows", DataType::UInt64, false),
        Field::new("checkpoint", DataType::Utf8, false),
        Field::new("lag", DataType::Utf8, true),
    ];
    let s = |f: &dyn Fn(&Listed) -> String| -> ArrayRef {
        Arc::new(StringArray::from(list.iter().map(f).collect::<Vec<_>>()))
    };
    let mut columns: Vec<ArrayRef> = vec![
        s(&|q| q.name.clone()),
        s(&|q| q.status.state.name().to_string()),
        Arc::new(UInt64Array::from(
            list.iter().map(|q| q.status.committed).collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            list.iter().map(|q| q.status.rows_in).collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            list.iter().map(|q| q.status.rows_out).collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            list.iter().map(|q| q.status.bad_rows).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            list.iter()
                .map(|q| {
                    let r = if q.status.state == State::Running {
                        q.status.rows_per_sec(now)
                    } else {
                        0.0
                    };
                    (r * 10.0).round() / 10.0
                })
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            list.iter()
                .map(|q| q.status.watermark.clone())
                .collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            list.iter().map(|q| q.status.state_rows).collect::<Vec<_>>(),
        )),
        s(&|q| q.checkpoint.clone()),
        Arc::new(StringArray::from(
            list.iter().map(|q| q.status.lag.clone()).collect::<Vec<_>>(),
        )),
    ];
    if with_error {
        fields.push(Field::new("error", DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(
            list.iter()
                .map(|q| match &q.status.state {
                    State::Failed(e) => Some(e.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )));
    }
    let schema = Arc::new(Schema::new(fields));
    Ok((schema.clone(), RecordBatch::try_new(schema, columns)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(epoch: u64, rows_in: u64) -> BatchProgress {
        BatchProgress {
            epoch,
            rows_in,
            rows_out: rows_in / 10,
            late_rows: 1,
            bad_rows: 2,
            watermark_ms: Some(0),
            watermark: Some(format!("2026-01-01 00:00:0{epoch}.000")),
            state_rows: 7,
            batch_ms: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn status_adds_up_epochs_and_rates_look_at_recent_ones() {
        let mut s = Status::new(Some(3));
        let t0 = s.started;
        s.record(&progress(4, 1000), t0 + Duration::from_secs(1));
        s.record(&progress(5, 3000), t0 + Duration::from_secs(2));
        assert_eq!(
            (s.committed, s.rows_in, s.rows_out, s.late_rows, s.bad_rows),
            (Some(5), 4000, 400, 2, 4)
        );
        assert_eq!(s.watermark.as_deref(), Some("2026-01-01 00:00:05.000"));
        assert_eq!(s.rows_per_sec(t0 + Duration::from_secs(4)), 1000.0);
        // Twenty seconds later, nothing was read in the last ten.
        assert_eq!(s.rows_per_sec(t0 + Duration::from_secs(22)), 0.0);
    }

    #[test]
    fn show_queries_lists_state_progress_and_errors() {
        let mut running = Status::new(None);
        running.record(&progress(1, 500), Instant::now());
        let mut failed = Status::new(Some(2));
        failed.state = State::Failed("bad file".into());
        let list = vec![
            Listed {
                name: "a".into(),
                checkpoint: ".weir/checkpoints/a".into(),
                status: running,
            },
            Listed {
                name: "b".into(),
                checkpoint: ".weir/checkpoints/b".into(),
                status: failed,
            },
        ];
        let (schema, batch) = show_queries(&list, true).unwrap();
        let text = crate::print::table(&schema, &[batch], 2, None).unwrap();
        assert!(
            text.contains("| a    | running |     1 |     500 |       50 |        2 |"),
            "{text}"
        );
        assert!(text.contains("| b    | failed  |     2 |       0 |"), "{text}");
        assert!(text.contains("bad file"), "{text}");
        let (schema, _) = show_queries(&list, false).unwrap();
        assert!(schema.index_of("error").is_err());
    }
}
