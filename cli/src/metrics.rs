//! Metrics a running job shows to Prometheus: `weir run --metrics ADDR` and
//! the shell's `SET metrics = 'ADDR'` serve `GET /metrics` in Prometheus's
//! text format (version 0.0.4), one series per query (label `query`).
//!
//! The numbers come from each epoch's [`BatchProgress`], recorded as the
//! epoch ends; nothing is measured twice. Counters count since the process
//! started (Prometheus's `rate()` copes with restarts). The watermark's lag
//! behind the wall clock is computed when scraped, so it grows while a
//! source is quiet.
//!
//! The server is a small HTTP/1.1 responder on tokio (one request per
//! connection, `Connection: close`): a scrape is all it serves, and a full
//! HTTP stack is not worth its build time for that.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use weir_engine::{Backlog, BatchProgress, Standing};

use crate::redact::Redactor;

/// Upper bounds (seconds) of the duration histograms' buckets: from a tiny
/// epoch of a few rows to a slow checkpoint on a remote store.
const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram of durations in seconds.
#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`] (not cumulative).
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Clone, Debug, Default)]
struct SourceSeries {
    rows: u64,
    bad: u64,
    watermark_ms: Option<i64>,
    backlog: Option<Backlog>,
}

#[derive(Clone, Debug, Default)]
struct SinkSeries {
    rows: u64,
    late: u64,
}

#[derive(Clone, Debug, Default)]
struct OperatorSeries {
    rows: u64,
    /// Unknown until this process writes the operator's state.
    bytes: Option<u64>,
}

/// One query's numbers.
#[derive(Clone, Debug, Default)]
struct QuerySeries {
    epochs: u64,
    replayed: u64,
    last_committed: Option<u64>,
    watermark_ms: Option<i64>,
    epoch_seconds: Histogram,
    checkpoint_seconds: Histogram,
    checkpoint_bytes: u64,
    sources: BTreeMap<String, SourceSeries>,
    sinks: BTreeMap<String, SinkSeries>,
    operators: BTreeMap<String, OperatorSeries>,
}

/// The metrics of every query this process runs.
#[derive(Debug, Default)]
pub struct Metrics {
    queries: Mutex<BTreeMap<String, QuerySeries>>,
}

impl Metrics {
    fn queries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, QuerySeries>> {
        self.queries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A query starts (or starts again): its last committed epoch, its
    /// watermarks and its operators' state as the checkpoint has them, so
    /// the gauges exist before its first epoch ends (a restarted job with no
    /// new input shows its lag growing).
    pub fn start(&self, query: &str, last_committed: Option<u64>, standing: &Standing) {
        let mut all = self.queries();
        let q = all.entry(query.to_string()).or_default();
        q.last_committed = last_committed.or(q.last_committed);
        if last_committed.is_some() {
            q.watermark_ms = standing.watermark_ms.or(q.watermark_ms);
            for (name, watermark_ms) in &standing.sources {
                let s = q.sources.entry(name.clone()).or_default();
                s.watermark_ms = watermark_ms.or(s.watermark_ms);
            }
            for (name, rows) in &standing.operators {
                q.operators.entry(name.clone()).or_default().rows = *rows;
            }
        }
    }

    /// An epoch of `query` ended.
    pub fn record(&self, query: &str, p: &BatchProgress) {
        let mut all = self.queries();
        let q = all.entry(query.to_string()).or_default();
        q.epochs += 1;
        q.replayed += u64::from(p.replayed);
        q.last_committed = Some(p.epoch);
        q.watermark_ms = p.watermark_ms;
        q.epoch_seconds.observe(p.batch_ms / 1000.0);
        q.checkpoint_seconds.observe(p.checkpoint_ms / 1000.0);
        q.checkpoint_bytes += p.checkpoint_bytes;
        for s in &p.sources {
            let e = q.sources.entry(s.name.clone()).or_default();
            e.rows += s.rows_in;
            e.bad += s.bad_rows;
            e.watermark_ms = s.watermark_ms;
            e.backlog = s.backlog;
        }
        for s in &p.sinks {
            let e = q.sinks.entry(s.name.clone()).or_default();
            e.rows += s.rows_out;
            e.late += s.late_rows;
        }
        for o in &p.operators {
            q.operators.insert(
                o.name.clone(),
                OperatorSeries {
                    rows: o.state_rows,
                    bytes: Some(o.state_bytes),
                },
            );
        }
    }

    /// Everything, in Prometheus's text format, as of `now_ms` (ms since
    /// the Unix epoch: the watermarks' lag is measured against it).
    pub fn render(&self, now_ms: i64) -> String {
        let all = self.queries().clone();
        let mut out = Text::default();
        for f in QUERY_FAMILIES {
            out.family(f.name, f.kind, f.help);
            for (query, q) in &all {
                if let Some(v) = (f.value)(q, now_ms) {
                    out.sample(f.name, &[("query", query)], v);
                }
            }
        }
        for f in SOURCE_FAMILIES {
            out.family(f.name, f.kind, f.help);
            for (query, q) in &all {
                for (source, s) in &q.sources {
                    if let Some(v) = (f.value)(s) {
                        out.sample(f.name, &[("query", query), ("source", source)], v);
                    }
                }
            }
        }
        for f in SINK_FAMILIES {
            out.family(f.name, f.kind, f.help);
            for (query, q) in &all {
                for (sink, s) in &q.sinks {
                    out.sample(f.name, &[("query", query), ("sink", sink)], (f.value)(s));
                }
            }
        }
        for f in OPERATOR_FAMILIES {
            out.family(f.name, f.kind, f.help);
            for (query, q) in &all {
                for (op, o) in &q.operators {
                    if let Some(v) = (f.value)(o) {
                        out.sample(f.name, &[("query", query), ("operator", op)], v);
                    }
                }
            }
        }
        for (name, help, pick) in HISTOGRAMS {
            out.family(name, "histogram", help);
            for (query, q) in &all {
                out.histogram(name, query, pick(q));
            }
        }
        out.0
    }
}

/// A metric family: its name, type, help, and how a series' value is found
/// (`None`: no sample).
struct Family<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: T,
}

/// Per query (the wall clock in ms is given, for the lag).
type QueryValue = fn(&QuerySeries, i64) -> Option<f64>;
const QUERY_FAMILIES: [Family<QueryValue>; 6] = [
    Family {
        name: "weir_epochs_total",
        kind: "counter",
        help: "Epochs committed by this process.",
        value: |q, _| Some(q.epochs as f64),
    },
    Family {
        name: "weir_replayed_epochs_total",
        kind: "counter",
        help: "Epochs run again after a restart (their offsets were logged by an earlier process).",
        value: |q, _| Some(q.replayed as f64),
    },
    Family {
        name: "weir_last_committed_epoch",
        kind: "gauge",
        help: "The query's last committed epoch (absent before its first commit).",
        value: |q, _| q.last_committed.map(|e| e as f64),
    },
    Family {
        name: "weir_watermark_timestamp_seconds",
        kind: "gauge",
        help: "The query's watermark (the lowest of its sources'), as seconds since the Unix epoch (+Inf once drained).",
        value: |q, _| q.watermark_ms.map(watermark_seconds),
    },
    Family {
        name: "weir_watermark_lag_seconds",
        kind: "gauge",
        help: "How far the query's watermark is behind the wall clock, when scraped.",
        value: |q, now_ms| {
            q.watermark_ms
                .filter(|&ms| ms != i64::MAX)
                .map(|ms| now_ms.saturating_sub(ms) as f64 / 1000.0)
        },
    },
    Family {
        name: "weir_checkpoint_bytes_total",
        kind: "counter",
        help: "Bytes written to the checkpoint: state files, offsets and commit entries.",
        value: |q, _| Some(q.checkpoint_bytes as f64),
    },
];

/// Per source of a query.
type SourceValue = fn(&SourceSeries) -> Option<f64>;
const SOURCE_FAMILIES: [Family<SourceValue>; 6] = [
    Family {
        name: "weir_source_rows_total",
        kind: "counter",
        help: "Rows read from a source.",
        value: |s| Some(s.rows as f64),
    },
    Family {
        name: "weir_source_bad_rows_total",
        kind: "counter",
        help: "Bad input records a source set aside ('on_error' skip or dead_letter).",
        value: |s| Some(s.bad as f64),
    },
    Family {
        name: "weir_source_watermark_timestamp_seconds",
        kind: "gauge",
        help: "A watermarked source's watermark, as seconds since the Unix epoch (+Inf once drained).",
        value: |s| s.watermark_ms.map(watermark_seconds),
    },
    Family {
        name: "weir_source_backlog_files",
        kind: "gauge",
        help: "Files a source knows of and has not read to their end.",
        value: |s| s.backlog.and_then(|b| b.unread.files).map(|v| v as f64),
    },
    Family {
        name: "weir_source_backlog_bytes",
        kind: "gauge",
        help: "Bytes of the files a source knows of and has not read to their end.",
        value: |s| s.backlog.and_then(|b| b.unread.bytes).map(|v| v as f64),
    },
    Family {
        name: "weir_source_backlog_events",
        kind: "gauge",
        help: "Events a bounded generator has not generated yet.",
        value: |s| s.backlog.and_then(|b| b.unread.events).map(|v| v as f64),
    },
];

/// Per sink of a query.
type SinkValue = fn(&SinkSeries) -> f64;
const SINK_FAMILIES: [Family<SinkValue>; 2] = [
    Family {
        name: "weir_sink_rows_total",
        kind: "counter",
        help: "Rows written to a query's sink.",
        value: |s| s.rows as f64,
    },
    Family {
        name: "weir_sink_late_rows_total",
        kind: "counter",
        help: "Rows the query feeding a sink dropped as late (or sent to its late sink).",
        value: |s| s.late as f64,
    },
];

/// Per stateful operator of a query.
type OperatorValue = fn(&OperatorSeries) -> Option<f64>;
const OPERATOR_FAMILIES: [Family<OperatorValue>; 2] = [
    Family {
        name: "weir_operator_state_rows",
        kind: "gauge",
        help: "Rows of state a stateful operator holds.",
        value: |o| Some(o.rows as f64),
    },
    Family {
        name: "weir_operator_state_bytes",
        kind: "gauge",
        help: "Bytes of a stateful operator's state in the checkpoint: its last snapshot and the deltas since.",
        value: |o| o.bytes.map(|b| b as f64),
    },
];

/// Per query: durations.
type HistogramOf = fn(&QuerySeries) -> &Histogram;
const HISTOGRAMS: [(&str, &str, HistogramOf); 2] = [
    (
        "weir_epoch_duration_seconds",
        "Wall time of an epoch, from its offsets entry to its output published.",
        |q| &q.epoch_seconds,
    ),
    (
        "weir_checkpoint_duration_seconds",
        "Of an epoch, the time spent writing its state and its commit.",
        |q| &q.checkpoint_seconds,
    ),
];

/// A watermark (ms) as Prometheus's seconds; the end of time (a drained
/// query's) is +Inf.
fn watermark_seconds(ms: i64) -> f64 {
    if ms == i64::MAX {
        f64::INFINITY
    } else {
        ms as f64 / 1000.0
    }
}

/// Text in Prometheus's exposition format.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    fn histogram(&mut self, name: &str, query: &str, h: &Histogram) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(h.counts) {
            cumulative += n;
            let le = number(*bound);
            self.sample(
                &format!("{name}_bucket"),
                &[("query", query), ("le", &le)],
                cumulative as f64,
            );
        }
        self.sample(
            &format!("{name}_bucket"),
            &[("query", query), ("le", "+Inf")],
            h.count as f64,
        );
        self.sample(&format!("{name}_sum"), &[("query", query)], h.sum);
        self.sample(&format!("{name}_count"), &[("query", query)], h.count as f64);
    }
}

/// A sample value as the format writes it (`+Inf`, `-Inf`, `NaN`, else
/// Rust's shortest round-trip form).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Where `--metrics` (or `SET metrics`) listens: `PORT` and `:PORT` are on
/// 127.0.0.1; `HOST:PORT` (`0.0.0.0:9464`, `[::1]:9464`, `localhost:9464`)
/// as written.
pub fn listen_address(text: &str) -> Result<String> {
    let t = text.trim();
    let port_only = t.strip_prefix(':').unwrap_or(t);
    if port_only.parse::<u16>().is_ok() {
        return Ok(format!("127.0.0.1:{port_only}"));
    }
    match t.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(t.to_string()),
        _ => bail!("metrics address '{t}': expected PORT, :PORT or HOST:PORT (e.g. 9464 or 127.0.0.1:9464)"),
    }
}

/// A running metrics server; dropping it stops it, and returns once its
/// port is closed (so `SET metrics = off` is true when it says so, and the
/// same port can be served again at once).
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Says the accept loop has ended and dropped its listener.
    stopped: std::sync::mpsc::Receiver<()>,
}

impl Server {
    /// Serves `metrics` at `address` (see [`listen_address`]); must be
    /// called inside the tokio runtime. Text is scrubbed of the process's
    /// secrets, as everything Weir writes is.
    pub fn start(address: &str, metrics: Arc<Metrics>, redactor: Redactor) -> Result<Server> {
        let address = listen_address(address)?;
        let listener = std::net::TcpListener::bind(&address)
            .with_context(|| format!("cannot serve metrics at {address}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    // Stopped (or the server dropped without a word).
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((conn, _)) = accepted else {
                    // Out of file descriptors, say: try again shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let (metrics, redactor) = (Arc::clone(&metrics), redactor.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), answer(conn, &metrics, &redactor))
                        .await;
                });
            }
            drop(listener);
            let _ = stopped_tx.send(());
        });
        Ok(Server {
            addr,
            task,
            stop: Some(stop),
            stopped,
        })
    }

    /// The address it listens at (with the port chosen, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a scraper takes.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Aborting alone closes the port only when the runtime next gets to
        // the task: a client could still connect after "metrics off". Ask
        // the loop to end and wait (bounded: never hang the shell) for it
        // to drop its listener; it runs on a worker thread, while the shell
        // and `weir run` drop the server on the thread that blocks on them.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            let _ = self.stopped.recv_timeout(Duration::from_secs(2));
        }
        self.task.abort();
    }
}

/// Answers one HTTP request on `conn`.
async fn answer(
    mut conn: tokio::net::TcpStream,
    metrics: &Metrics,
    redactor: &Redactor,
) -> std::io::Result<()> {
    // The request head only; a scrape has no body. 8 KiB is far more than
    // any scraper sends.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
                true,
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let with_body = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let text = redactor.scrub(&metrics.render(now));
            respond(
                &mut conn,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &text,
                with_body,
            )
            .await
        }
        ("GET" | "HEAD", _) => {
            respond(
                &mut conn,
                "404 Not Found",
                "text/plain",
                "not found: Weir's metrics are at /metrics\n",
                with_body,
            )
            .await
        }
        _ => {
            respond(
                &mut conn,
                "405 Method Not Allowed",
                "text/plain",
                "only GET /metrics is served\n",
                true,
            )
            .await
        }
    }
}

async fn respond(
    conn: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    if with_body {
        conn.write_all(body.as_bytes()).await?;
    }
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use weir_engine::{Amount, OperatorProgress, SinkProgress, SourceProgress};

    use super::*;

    fn progress(epoch: u64) -> BatchProgress {
        BatchProgress {
            epoch,
            rows_in: 100,
            rows_out: 7,
            late_rows: 2,
            watermark_ms: Some(1_700_000_000_000),
            batch_ms: 30.0,
            checkpoint_ms: 4.0,
            checkpoint_bytes: 900,
            sources: vec![SourceProgress {
                name: "bids".into(),
                rows_in: 100,
                bad_rows: 1,
                watermark_ms: Some(1_700_000_000_000),
                backlog: Some(Backlog {
                    unread: Amount {
                        files: Some(3),
                        bytes: Some(4096),
                        events: None,
                    },
                    read: Amount::default(),
                }),
                ..Default::default()
            }],
            sinks: vec![SinkProgress {
                name: "out \"x\"".into(),
                rows_out: 7,
                late_rows: 2,
            }],
            operators: vec![OperatorProgress {
                name: "p0-agg0".into(),
                state_rows: 12,
                state_bytes: 3000,
            }],
            ..Default::default()
        }
    }

    fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .map(|l| &l[series.len() + 1..])
    }

    #[test]
    fn epochs_add_up_and_gauges_take_the_last() {
        let m = Metrics::default();
        // Restarted on a checkpoint: its watermarks and state show before
        // the first epoch of this run ends (bytes are known once written).
        let standing = Standing {
            watermark_ms: Some(1_699_999_990_000),
            watermark: Some("2023-11-14 22:13:10.000".into()),
            sources: vec![("bids".into(), Some(1_699_999_990_000))],
            operators: vec![("p0-agg0".into(), 9)],
        };
        m.start("job", Some(4), &standing);
        let before = m.render(1_700_000_000_000);
        assert_eq!(
            value(&before, "weir_last_committed_epoch{query=\"job\"}"),
            Some("4")
        );
        assert_eq!(
            value(&before, "weir_watermark_lag_seconds{query=\"job\"}"),
            Some("10")
        );
        assert_eq!(
            value(
                &before,
                "weir_source_watermark_timestamp_seconds{query=\"job\",source=\"bids\"}"
            ),
            Some("1699999990")
        );
        assert_eq!(
            value(
                &before,
                "weir_operator_state_rows{query=\"job\",operator=\"p0-agg0\"}"
            ),
            Some("9")
        );
        assert_eq!(
            value(
                &before,
                "weir_operator_state_bytes{query=\"job\",operator=\"p0-agg0\"}"
            ),
            None
        );
        // A new checkpoint has none yet.
        let fresh = Metrics::default();
        fresh.start("job", None, &standing);
        assert_eq!(
            value(
                &fresh.render(0),
                "weir_watermark_timestamp_seconds{query=\"job\"}"
            ),
            None
        );
        m.record("job", &progress(5));
        m.record("job", &progress(6));
        let t = m.render(1_700_000_060_000);
        assert_eq!(value(&t, "weir_epochs_total{query=\"job\"}"), Some("2"));
        assert_eq!(value(&t, "weir_last_committed_epoch{query=\"job\"}"), Some("6"));
        assert_eq!(
            value(&t, "weir_source_rows_total{query=\"job\",source=\"bids\"}"),
            Some("200")
        );
        assert_eq!(
            value(&t, "weir_source_bad_rows_total{query=\"job\",source=\"bids\"}"),
            Some("2")
        );
        assert_eq!(
            value(&t, "weir_source_backlog_files{query=\"job\",source=\"bids\"}"),
            Some("3")
        );
        assert_eq!(
            value(&t, "weir_source_backlog_bytes{query=\"job\",source=\"bids\"}"),
            Some("4096")
        );
        assert_eq!(
            value(&t, "weir_source_backlog_events{query=\"job\",source=\"bids\"}"),
            None
        );
        // Label values are escaped.
        assert_eq!(
            value(&t, "weir_sink_rows_total{query=\"job\",sink=\"out \\\"x\\\"\"}"),
            Some("14")
        );
        assert_eq!(
            value(
                &t,
                "weir_sink_late_rows_total{query=\"job\",sink=\"out \\\"x\\\"\"}"
            ),
            Some("4")
        );
        assert_eq!(
            value(&t, "weir_watermark_timestamp_seconds{query=\"job\"}"),
            Some("1700000000")
        );
        assert_eq!(value(&t, "weir_watermark_lag_seconds{query=\"job\"}"), Some("60"));
        assert_eq!(
            value(&t, "weir_operator_state_rows{query=\"job\",operator=\"p0-agg0\"}"),
            Some("12")
        );
        assert_eq!(
            value(
                &t,
                "weir_operator_state_bytes{query=\"job\",operator=\"p0-agg0\"}"
            ),
            Some("3000")
        );
        assert_eq!(
            value(&t, "weir_checkpoint_bytes_total{query=\"job\"}"),
            Some("1800")
        );
        // 30 ms: in the 0.05 bucket and every one above, not in 0.025.
        assert_eq!(
            value(
                &t,
                "weir_epoch_duration_seconds_bucket{query=\"job\",le=\"0.025\"}"
            ),
            Some("0")
        );
        assert_eq!(
            value(
                &t,
                "weir_epoch_duration_seconds_bucket{query=\"job\",le=\"0.05\"}"
            ),
            Some("2")
        );
        assert_eq!(
            value(
                &t,
                "weir_epoch_duration_seconds_bucket{query=\"job\",le=\"+Inf\"}"
            ),
            Some("2")
        );
        assert_eq!(
            value(&t, "weir_epoch_duration_seconds_count{query=\"job\"}"),
            Some("2")
        );
        assert_eq!(
            value(&t, "weir_epoch_duration_seconds_sum{query=\"job\"}"),
            Some("0.06")
        );
        assert_eq!(
            value(
                &t,
                "weir_checkpoint_duration_seconds_bucket{query=\"job\",le=\"0.005\"}"
            ),
            Some("2")
        );
    }

    #[test]
    fn a_drained_watermark_is_infinite_and_has_no_lag() {
        let m = Metrics::default();
        let mut p = progress(1);
        p.watermark_ms = Some(i64::MAX);
        m.record("q", &p);
        let t = m.render(0);
        assert_eq!(
            value(&t, "weir_watermark_timestamp_seconds{query=\"q\"}"),
            Some("+Inf")
        );
        assert_eq!(value(&t, "weir_watermark_lag_seconds{query=\"q\"}"), None);
    }

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(listen_address("9464").unwrap(), "127.0.0.1:9464");
        assert_eq!(listen_address(":0").unwrap(), "127.0.0.1:0");
        assert_eq!(listen_address("0.0.0.0:9464").unwrap(), "0.0.0.0:9464");
        assert_eq!(listen_address("[::1]:9464").unwrap(), "[::1]:9464");
        let e = listen_address("localhost").unwrap_err().to_string();
        assert!(e.contains("expected PORT"), "{e}");
        assert!(listen_address("host:99999").is_err());
    }

    #[test]
    fn a_stopped_server_has_closed_its_port_and_the_port_serves_again() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        let start = |address: &str| {
            rt.block_on(async { Server::start(address, Arc::clone(&metrics), Redactor::default()) })
        };
        let first = start(":0").unwrap();
        let addr = first.addr();
        drop(first);
        for _ in 0..20 {
            let server = start(&addr.to_string()).unwrap_or_else(|e| panic!("{addr} not free again: {e}"));
            assert!(std::net::TcpStream::connect(addr).is_ok());
            drop(server);
            assert!(
                std::net::TcpStream::connect(addr).is_err(),
                "still serving at {addr}"
            );
        }
    }
}
