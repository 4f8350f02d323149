//! `weir cluster scheduler`, `weir cluster executor` and `weir query
//! --cluster`: one scheduler and two executors as separate processes on
//! loopback, and batch queries whose answer on the cluster must equal the
//! local one row for row.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// A process killed when the test ends, pass or fail.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first line a process prints, within 60 s.
fn first_line(child: &mut Child) -> String {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("no line from the process")
}

struct Cluster {
    scheduler: String,
    work_dirs: Vec<PathBuf>,
    _processes: Vec<Process>,
    _dir: tempfile::TempDir,
}

/// A scheduler on a free port, and `executors` executors with one task slot
/// each, registered with it.
fn cluster(executors: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut scheduler = weir()
        .args(["cluster", "scheduler", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut scheduler);
    let address = line
        .trim()
        .strip_prefix("weir cluster scheduler listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    let mut processes = vec![Process(scheduler)];
    let mut work_dirs = Vec::new();
    for i in 0..executors {
        let work = dir.path().join(format!("executor-{i}"));
        let mut executor = weir()
            .args([
                "cluster",
                "executor",
                "--scheduler",
                &address,
                "--concurrency",
                "1",
            ])
            .args(["--port", &free_port().to_string()])
            .args(["--grpc-port", &free_port().to_string()])
            .arg("--work-dir")
            .arg(&work)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = first_line(&mut executor);
        assert!(line.starts_with("weir cluster executor on "), "{line}");
        processes.push(Process(executor));
        work_dirs.push(work);
    }
    // Registration takes a round trip after the executor starts.
    std::thread::sleep(Duration::from_secs(2));
    Cluster {
        scheduler: address,
        work_dirs,
        _processes: processes,
        _dir: dir,
    }
}

fn query(sql: &str, cluster: Option<&str>) -> Result<String, String> {
    let mut cmd = weir();
    cmd.args(["query", "--format", "csv", sql]);
    if let Some(c) = cluster {
        cmd.args(["--cluster", c]);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn bids() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/bids/")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// Files under a folder, recursively.
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { files_under(&p) } else { 1 }
        })
        .sum()
}

#[test]
fn queries_on_a_cluster_of_two_executors_equal_the_local_answer() {
    let c = cluster(2);
    let bids = bids();
    // Each needs a shuffle between stages: an aggregate by key, a join of
    // two scans, a sort over all partitions, a window of time buckets.
    let queries = [
        format!(
            "SELECT auction, count(*) AS n, max(price) AS top, sum(price) AS total \
             FROM '{bids}' GROUP BY auction ORDER BY auction"
        ),
        format!(
            "SELECT a.auction, count(*) AS pairs FROM '{bids}' a JOIN '{bids}' b \
             ON a.auction = b.auction AND a.bidder = b.bidder GROUP BY a.auction ORDER BY a.auction"
        ),
        format!("SELECT auction, bidder, price FROM '{bids}' ORDER BY price DESC, auction, bidder LIMIT 20"),
        format!(
            "SELECT date_bin(INTERVAL '10 seconds', date_time) AS bucket, count(DISTINCT bidder) AS bidders \
             FROM '{bids}' GROUP BY 1 ORDER BY 1"
        ),
    ];
    for sql in &queries {
        let local = query(sql, None).unwrap();
        let remote = query(sql, Some(&c.scheduler)).unwrap_or_else(|e| panic!("{sql}\n{e}"));
        assert!(
            local.lines().count() > 2,
            "{sql}: too few rows to compare:\n{local}"
        );
        assert_eq!(remote, local, "{sql}");
    }
    // The executors did the work: their shuffle files are there.
    let shuffled: usize = c.work_dirs.iter().map(|d| files_under(d)).sum();
    assert!(shuffled > 0, "no shuffle file under {:?}", c.work_dirs);
}

#[test]
fn a_query_on_a_cluster_that_is_not_there_is_a_clear_error() {
    let port = free_port();
    let started = Instant::now();
    let err = query("SELECT 1", Some(&format!("127.0.0.1:{port}"))).unwrap_err();
    assert!(err.contains("no scheduler answers there"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let err = query("SELECT 1", Some("not-an-address")).unwrap_err();
    assert!(err.contains("is not a scheduler's address"), "{err}");
}

#[test]
fn a_query_error_on_the_cluster_names_the_problem() {
    let c = cluster(1);
    let err = query("SELECT nope FROM '/definitely/not/here/'", Some(&c.scheduler)).unwrap_err();
    assert!(err.contains("no such file or folder"), "{err}");
    // A failure inside a task comes back as the job's error.
    let bids = bids();
    let err = query(
        &format!("SELECT CAST(CAST(bidder AS VARCHAR) || 'x' AS INT) FROM '{bids}'"),
        Some(&c.scheduler),
    )
    .unwrap_err();
    assert!(err.contains("the cluster at"), "{err}");
    assert!(err.to_lowercase().contains("cast"), "{err}");
}
