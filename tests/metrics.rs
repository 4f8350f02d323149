//! What a running job shows: `weir run --metrics` served to a scraper and
//! checked by Prometheus's own parser, and the input backlog in
//! `--progress-json` (what the metrics and the progress bar are made of).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

/// Two files of 1,000 bids, read 100 rows per epoch: 20 epochs.
fn two_files(ws: &Workspace) -> Vec<Bid> {
    let bids = gen_bids(5, 2000, BASE_MS, 0);
    write_parquet(&ws.path("in/a.parquet"), &bids[..1000]);
    write_parquet(&ws.path("in/b.parquet"), &bids[1000..]);
    ws.write("job.sql", &job(100, "parquet", "in/"));
    bids
}

/// `weir run` in the background; stderr lines arrive on the channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(ws: &Workspace, args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .current_dir(ws.dir.path())
            .env_remove("WEIR_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line containing `text`.
    fn wait_line(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {text:?} on stderr:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scrapes until `done` holds for the text; returns it.
fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_running_job_serves_its_metrics_for_prometheus() {
    let ws = Workspace::new();
    let bids = two_files(&ws);
    let mut run = Running::start(&ws, &["run", "job.sql", "--trigger", "100ms", "--metrics", ":0"]);
    let line = run.wait_line("weir: metrics at http://");
    let addr = metrics_addr(&line).unwrap();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "loopback unless told otherwise: {line}"
    );

    let q = "{query=\"job\"}";
    let text = scrape_until(&addr, "every epoch", |t| {
        metric(t, &format!("weir_last_committed_epoch{q}")) == Some(20.0)
    });
    promtool_check(&text);

    let src = "{query=\"job\",source=\"bids\"}";
    let sink = "{query=\"job\",sink=\"out\"}";
    assert_eq!(metric(&text, &format!("weir_epochs_total{q}")), Some(20.0));
    assert_eq!(
        metric(&text, &format!("weir_source_rows_total{src}")),
        Some(2000.0)
    );
    assert_eq!(
        metric(&text, &format!("weir_source_bad_rows_total{src}")),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, &format!("weir_source_backlog_files{src}")),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, &format!("weir_source_backlog_bytes{src}")),
        Some(0.0)
    );
    // What the sink holds is what was counted into it.
    let written = sink_rows(&ws.path("out")).len() as f64;
    assert!(written > 0.0);
    assert_eq!(
        metric(&text, &format!("weir_sink_rows_total{sink}")),
        Some(written)
    );
    assert_eq!(
        metric(&text, &format!("weir_sink_late_rows_total{sink}")),
        Some(0.0)
    );
    // The watermark: the newest bid less the declared 2 s, in seconds;
    // its lag behind the wall clock is measured at the scrape.
    let newest = bids.iter().map(|b| b.ts).max().unwrap();
    let watermark = (newest - 2000) as f64 / 1000.0;
    assert_eq!(
        metric(&text, &format!("weir_watermark_timestamp_seconds{q}")),
        Some(watermark)
    );
    assert_eq!(
        metric(&text, &format!("weir_source_watermark_timestamp_seconds{src}")),
        Some(watermark)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let lag = metric(&text, &format!("weir_watermark_lag_seconds{q}")).unwrap();
    assert!((lag - (now - watermark)).abs() < 60.0, "lag {lag}");
    // Open windows are state; state is in the checkpoint.
    let op = "{query=\"job\",operator=\"p0-agg0\"}";
    assert!(
        metric(&text, &format!("weir_operator_state_rows{op}")).unwrap() > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, &format!("weir_operator_state_bytes{op}")).unwrap() > 0.0,
        "{text}"
    );
    assert!(metric(&text, &format!("weir_checkpoint_bytes_total{q}")).unwrap() > 0.0);
    // Histograms: one observation per epoch, cumulative buckets.
    for h in ["weir_epoch_duration_seconds", "weir_checkpoint_duration_seconds"] {
        assert_eq!(metric(&text, &format!("{h}_count{q}")), Some(20.0), "{h}");
        assert_eq!(
            metric(&text, &format!("{h}_bucket{{query=\"job\",le=\"+Inf\"}}")),
            Some(20.0),
            "{h}"
        );
        assert!(metric(&text, &format!("{h}_sum{q}")).unwrap() > 0.0, "{h}");
    }

    // New input is read by the running job, and counted.
    // (Written under a hidden name first: the job must not list it half
    // written.)
    let more = gen_bids(6, 300, newest + 1, 0);
    write_parquet(&ws.path("in/.c.parquet"), &more);
    std::fs::rename(ws.path("in/.c.parquet"), ws.path("in/c.parquet")).unwrap();
    let text = scrape_until(&addr, "the new file", |t| {
        metric(t, &format!("weir_source_rows_total{src}")) == Some(2300.0)
    });
    assert_eq!(
        metric(&text, &format!("weir_source_backlog_files{src}")),
        Some(0.0)
    );
    promtool_check(&text);

    // Anything but the metrics is not found.
    let (status, body) = http_get(&addr, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(body.contains("/metrics"), "{body}");

    // Restarted with no new input: no epoch runs, and its watermarks and
    // state show as the checkpoint has them (they were absent until an
    // epoch committed, so a stuck restarted job showed no lag at all).
    drop(run);
    let mut again = Running::start(&ws, &["run", "job.sql", "--trigger", "100ms", "--metrics", ":0"]);
    let addr = metrics_addr(&again.wait_line("weir: metrics at http://")).unwrap();
    let text = scrape_until(&addr, "the restored gauges", |t| {
        metric(t, &format!("weir_last_committed_epoch{q}")).is_some()
    });
    assert_eq!(
        metric(&text, &format!("weir_epochs_total{q}")),
        Some(0.0),
        "{text}"
    );
    let restored = (bids.iter().chain(&more).map(|b| b.ts).max().unwrap() - 2000) as f64 / 1000.0;
    assert_eq!(
        metric(&text, &format!("weir_watermark_timestamp_seconds{q}")),
        Some(restored),
        "{text}"
    );
    assert_eq!(
        metric(&text, &format!("weir_source_watermark_timestamp_seconds{src}")),
        Some(restored)
    );
    assert!(metric(&text, &format!("weir_watermark_lag_seconds{q}")).is_some());
    assert!(
        metric(&text, &format!("weir_operator_state_rows{op}")).unwrap() > 0.0,
        "{text}"
    );
    promtool_check(&text);
}

#[test]
fn a_bad_metrics_address_is_refused_before_the_job_runs() {
    let ws = Workspace::new();
    two_files(&ws);
    let err = ws
        .weir(&["run", "job.sql", "--trigger", "once", "--metrics", "localhost"])
        .fails()
        .stderr();
    assert!(
        err.contains("metrics address 'localhost': expected PORT"),
        "{err}"
    );
    assert!(!ws.path("out").exists() || sink_rows(&ws.path("out")).is_empty());

    // A port another process holds.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let err = ws
        .weir(&["run", "job.sql", "--trigger", "once", "--metrics", &port])
        .fails()
        .stderr();
    assert!(
        err.contains(&format!("cannot serve metrics at 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn each_epoch_reports_the_backlog_it_leaves() {
    let ws = Workspace::new();
    two_files(&ws);
    let lines = run_logged(&ws);
    let size = |f: &str| std::fs::metadata(ws.path(f)).unwrap().len();
    let (a, b) = (size("in/a.parquet"), size("in/b.parquet"));
    assert_eq!(lines.len(), 20);
    // (epoch, unread files, unread bytes, read files, read bytes): a file
    // counts whole until its last row is read.
    let seen: Vec<(u64, u64, u64, u64, u64)> = lines
        .iter()
        .map(|l| {
            let s = &l["sources"][0];
            assert_eq!(s["name"], "bids");
            let b = &s["backlog"];
            let n = |v: &serde_json::Value| v.as_u64().unwrap();
            (
                n(&l["epoch"]),
                n(&b["unread"]["files"]),
                n(&b["unread"]["bytes"]),
                n(&b["read"]["files"]),
                n(&b["read"]["bytes"]),
            )
        })
        .collect();
    assert_eq!(seen[0], (1, 2, a + b, 0, 0));
    assert_eq!(seen[9], (10, 1, b, 1, a));
    assert_eq!(seen[19], (20, 0, 0, 2, a + b));
    // Rows by source and by sink add up to the epoch's.
    for l in &lines {
        assert_eq!(l["sources"][0]["rows_in"], l["rows_in"]);
        assert_eq!(l["sinks"][0]["rows_out"], l["rows_out"]);
        assert_eq!(l["sinks"][0]["name"], "out");
        assert!(l["checkpoint_bytes"].as_u64().unwrap() > 0);
    }
}
