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

pub(crate) struct Cluster {
    pub(crate) scheduler: String,
    work_dirs: Vec<PathBuf>,
    /// The scheduler, then the executors.
    processes: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Kills executor `i` with SIGKILL (no goodbye to the scheduler).
    pub(crate) fn kill_executor(&mut self, i: usize) {
        let executor = &mut self.processes[1 + i].0;
        executor.kill().unwrap();
        executor.wait().unwrap();
    }

    /// Starts executor `i` again (after [`Cluster::kill_executor`]), on
    /// new ports, with the same work folder.
    pub(crate) fn restart_executor(&mut self, i: usize) {
        let work = self.work_dirs[i].clone();
        self.processes[1 + i] = spawn_executor(&self.scheduler, &work, &[]);
    }
}

/// An executor of the scheduler at `address`, with one task slot, on free
/// ports, once it says it runs.
fn spawn_executor(address: &str, work: &Path, env: &[(&str, &str)]) -> Process {
    spawn_executor_with(address, work, env, 1)
}

/// [`spawn_executor`] with `concurrency` task slots.
///
/// A port `free_port` found free may be taken by another test's process
/// before the executor binds it (it then exits: "Address already in
/// use"), so a start that prints nothing is tried again on other ports.
fn spawn_executor_with(address: &str, work: &Path, env: &[(&str, &str)], concurrency: usize) -> Process {
    for attempt in 1..=3 {
        let mut executor = weir()
            .args([
                "cluster",
                "executor",
                "--scheduler",
                address,
                "--concurrency",
                &concurrency.to_string(),
            ])
            .args(["--port", &free_port().to_string()])
            .args(["--grpc-port", &free_port().to_string()])
            .arg("--work-dir")
            .arg(work)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = first_line(&mut executor);
        if line.is_empty() && attempt < 3 {
            let _ = executor.kill();
            let _ = executor.wait();
            continue;
        }
        assert!(line.starts_with("weir cluster executor on "), "{line}");
        return Process(executor);
    }
    unreachable!("the last attempt returns or fails")
}

/// A scheduler on a free port, and `executors` executors with one task slot
/// each, registered with it.
fn cluster(executors: usize) -> Cluster {
    cluster_with_env(executors, &[])
}

/// [`cluster`], its executors started with more environment (their store
/// settings).
pub(crate) fn cluster_with_env(executors: usize, env: &[(&str, &str)]) -> Cluster {
    cluster_with(executors, env, 1)
}

/// [`cluster_with_env`], each executor with `concurrency` task slots.
fn cluster_with(executors: usize, env: &[(&str, &str)], concurrency: usize) -> Cluster {
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
        processes.push(spawn_executor_with(&address, &work, env, concurrency));
        work_dirs.push(work);
    }
    // Registration takes a round trip after the executor starts.
    std::thread::sleep(Duration::from_secs(2));
    Cluster {
        scheduler: address,
        work_dirs,
        processes,
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
    // Weir's MAX of floats (NaN above every number) runs on the executors
    // too, not DataFusion's, whose grouped form kept whichever came last.
    let nan = format!(
        "SELECT auction % 5 AS k, max(CASE WHEN price % 7 = 0 THEN 'NaN'::double ELSE price::double END) AS hi \
         FROM '{bids}' GROUP BY 1 ORDER BY 1"
    );
    let remote = query(&nan, Some(&c.scheduler)).unwrap_or_else(|e| panic!("{nan}\n{e}"));
    assert_eq!(remote, "k,hi\n0,NaN\n1,NaN\n2,NaN\n3,NaN\n4,NaN\n", "{nan}");
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
    // Refused before any connection (they became `http://https://...` or
    // an invalid URI deep in the client).
    let err = query("SELECT 1", Some(&format!("https://127.0.0.1:{port}"))).unwrap_err();
    assert!(err.contains("not https://"), "{err}");
    let err = query("SELECT 1", Some(&format!(" 127.0.0.1:{port}"))).unwrap_err();
    assert!(err.contains("is not a scheduler's address"), "{err}");
    // A host that does not resolve, and a server that is not gRPC: said
    // so, not in the client's debug text.
    let err = query("SELECT 1", Some("no-such-host.invalid:50050")).unwrap_err();
    assert!(err.contains("its host name does not resolve"), "{err}");
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = web.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        // Connections stay open, as a web server's would while the client
        // reads the answer.
        let mut open = Vec::new();
        for mut conn in web.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nBad Request");
            open.push(conn);
        }
    });
    let err = query("SELECT 1", Some(&address)).unwrap_err();
    assert!(
        err.contains("does not speak gRPC") && !err.contains("Status {"),
        "{err}"
    );
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

/// The bids table over the Parquet files in `input`, with a watermark 5 s
/// behind, read as `batch` says.
fn bids_table(input: &str, batch: &str) -> String {
    format!(
        "CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
           date_time TIMESTAMP(3), extra VARCHAR,
           WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
         WITH ('connector' = 'files', 'path' = '{input}', 'format' = 'parquet', {batch});"
    )
}

/// A job of every kind of stateful operator over the example bids (four
/// Parquet files), its sinks under `out`: a tumbling aggregate, session
/// windows, an updating aggregate (a changelog), an interval join, and a
/// Top-N over a window aggregate (two stateful steps, which keep the job's
/// queries on the driver: on a cluster only its input is read there).
/// `batch` is the WITH option that cuts the input into epochs.
fn every_kind_of_job(out: &Path, batch: &str) -> String {
    let table = bids_table(&bids(), batch);
    let out = out.display();
    format!(
        "{table}
         CREATE TABLE windows WITH ('connector' = 'files', 'path' = '{out}/windows/', 'format' = 'parquet');
         CREATE TABLE sessions WITH ('connector' = 'files', 'path' = '{out}/sessions/', 'format' = 'parquet');
         CREATE TABLE channels WITH ('connector' = 'files', 'path' = '{out}/channels/', 'format' = 'parquet', 'mode' = 'changelog');
         CREATE TABLE pairs WITH ('connector' = 'files', 'path' = '{out}/pairs/', 'format' = 'parquet');
         CREATE TABLE tops WITH ('connector' = 'files', 'path' = '{out}/tops/', 'format' = 'parquet');
         INSERT INTO tops
         SELECT window_start, auction, n FROM (
           SELECT window_start, window_end, auction, n,
                  ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY n DESC, auction) AS rn
           FROM (SELECT window_start, window_end, auction, COUNT(*) AS n
                 FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
                 GROUP BY window_start, window_end, auction))
         WHERE rn <= 3;
         INSERT INTO windows
         SELECT window_start, window_end, auction, COUNT(*) AS n, MAX(price) AS top, SUM(price) AS volume
         FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
         GROUP BY window_start, window_end, auction;
         INSERT INTO sessions
         SELECT window_start, window_end, bidder, COUNT(*) AS n
         FROM TABLE(SESSION(TABLE bids PARTITION BY bidder, DESCRIPTOR(date_time), INTERVAL '2' SECOND))
         GROUP BY window_start, window_end, bidder;
         INSERT INTO channels SELECT channel, COUNT(*) AS n, SUM(price) AS volume FROM bids GROUP BY channel;
         INSERT INTO pairs
         SELECT a.auction, a.bidder, a.price, b.price AS next_price
         FROM bids a JOIN bids b
           ON a.auction = b.auction AND a.bidder = b.bidder
          AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '1' SECOND;"
    )
}

/// A sink's rows as sorted CSV lines (header first).
fn sink_rows(dir: &Path) -> Vec<String> {
    let csv = query(&format!("SELECT * FROM '{}/'", dir.display()), None).unwrap();
    let mut lines: Vec<String> = csv.lines().map(str::to_owned).collect();
    lines[1..].sort();
    lines
}

/// Runs `job` to its end (available-now, drained), on the cluster when one
/// is given, with more environment; returns stdout and stderr.
fn run_job(
    job: &Path,
    checkpoint: &Path,
    cluster: Option<&str>,
    env: &[(&str, &str)],
) -> Result<String, String> {
    run_job_with(
        job,
        checkpoint,
        cluster,
        env,
        &["--trigger", "available-now", "--drain"],
    )
}

fn run_job_with(
    job: &Path,
    checkpoint: &Path,
    cluster: Option<&str>,
    env: &[(&str, &str)],
    trigger: &[&str],
) -> Result<String, String> {
    let mut cmd = weir();
    cmd.arg("run")
        .arg(job)
        .args(trigger)
        .args(["--threads", "1", "--checkpoint"])
        .arg(checkpoint);
    if let Some(c) = cluster {
        cmd.args(["--cluster", c]);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() { Ok(text) } else { Err(text) }
}

#[test]
fn a_job_whose_input_is_read_on_a_cluster_writes_what_a_local_run_writes() {
    let c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    // One file an epoch; then a row budget that cuts epochs inside files.
    for (name, batch) in [
        ("files", "'max_files_per_batch' = '1'"),
        ("rows", "'max_rows_per_batch' = '30000'"),
    ] {
        let run = |place: &str, cluster: Option<&str>, env: &[(&str, &str)]| {
            let out = dir.path().join(format!("{name}-{place}"));
            let job = dir.path().join(format!("{name}-{place}.sql"));
            std::fs::write(&job, every_kind_of_job(&out, batch)).unwrap();
            let log = run_job(&job, &dir.path().join(format!("{name}-{place}.ck")), cluster, env)
                .unwrap_or_else(|e| panic!("{name} {place}:\n{e}"));
            (out, log)
        };
        // The driver is denied the input files themselves (their listing
        // still works): the cluster run can only succeed if the executors
        // read them.
        let denied = [("WEIR_FAULTS", "rate=0,permanent=bids-")];
        let (local, local_log) = run("local", None, &[]);
        let (remote, remote_log) = run("cluster", Some(&c.scheduler), &denied);
        let epochs = |log: &str| log.lines().filter(|l| l.starts_with("epoch ")).count();
        assert_eq!(
            epochs(&remote_log),
            epochs(&local_log),
            "{remote_log}\n{local_log}"
        );
        assert!(epochs(&local_log) >= 4, "{local_log}");
        assert!(remote_log.contains("100,000 rows in"), "{remote_log}");
        assert!(
            remote_log.contains(&format!("; input read on the cluster at http://{})", c.scheduler)),
            "{remote_log}"
        );
        for sink in ["windows", "sessions", "channels", "pairs", "tops"] {
            let want = sink_rows(&local.join(sink));
            assert!(want.len() > 10, "{name}/{sink}: {} rows", want.len());
            assert_eq!(sink_rows(&remote.join(sink)), want, "{name}/{sink}");
        }
    }
    // One checkpoint, three runs: an epoch here, one on the cluster, the
    // rest here again; the output is the local run's.
    let out = dir.path().join("moved");
    let job = dir.path().join("moved.sql");
    std::fs::write(&job, every_kind_of_job(&out, "'max_files_per_batch' = '1'")).unwrap();
    let ck = dir.path().join("moved.ck");
    let once = ["--trigger", "once"];
    let log = run_job_with(&job, &ck, None, &[], &once).unwrap();
    assert!(log.contains("committed through epoch 1"), "{log}");
    let log = run_job_with(&job, &ck, Some(&c.scheduler), &[], &once).unwrap();
    assert!(log.contains("committed through epoch 2"), "{log}");
    run_job(&job, &ck, None, &[]).unwrap();
    for sink in ["windows", "sessions", "channels", "pairs", "tops"] {
        let want = sink_rows(&dir.path().join("files-local").join(sink));
        assert_eq!(sink_rows(&out.join(sink)), want, "moved/{sink}");
    }
    // Without the cluster, the same denial stops the job at its input.
    let job = dir.path().join("files-local.sql");
    let err = run_job(
        &job,
        &dir.path().join("denied.ck"),
        None,
        &[("WEIR_FAULTS", "rate=0,permanent=bids-")],
    )
    .unwrap_err();
    assert!(err.contains("injected"), "{err}");
}

/// A stateless job (filters, projections, functions) into a files sink and
/// a blackhole.
fn stateless_job(input: &str, out: &Path, batch: &str) -> String {
    let table = bids_table(input, batch);
    let out = out.display();
    format!(
        "{table}
         CREATE TABLE dear WITH ('connector' = 'files', 'path' = '{out}/dear/', 'format' = 'parquet');
         CREATE TABLE counted WITH ('connector' = 'blackhole');
         INSERT INTO dear
         SELECT auction, bidder, price * 2 AS doubled, upper(channel) AS channel,
                date_trunc('minute', date_time) AS minute
         FROM bids WHERE price > 1000 AND auction % 3 <> 0;
         INSERT INTO counted SELECT auction, length(url) AS n FROM bids WHERE bidder % 2 = 0;"
    )
}

/// The sink folder's published files, by whether they were written in
/// parts (on executors: `part-<epoch>-<writer>-<part>.parquet`).
fn published(dir: &Path) -> (usize, usize) {
    let (mut parts, mut whole) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".parquet") {
            continue;
        }
        let dashes = name.matches('-').count();
        // part-E-<8 hex>-p0.parquet has 3 dashes; a part file one more.
        if dashes == 4 { parts += 1 } else { whole += 1 }
    }
    (parts, whole)
}

#[test]
fn a_stateless_job_runs_on_the_executors_and_writes_what_a_local_run_writes() {
    let mut c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    let input = twenty_files(dir.path());
    let input = input.display().to_string();
    // 60,000 rows an epoch over files of 25,000: the budget cuts a file in
    // most epochs, so the parts are cut from the files' footers.
    let batch = "'max_rows_per_batch' = '60000'";
    let run = |name: &str, cluster: Option<&str>| {
        let out = dir.path().join(name);
        let job = dir.path().join(format!("{name}.sql"));
        std::fs::write(&job, stateless_job(&input, &out, batch)).unwrap();
        let log = run_job(&job, &dir.path().join(format!("{name}.ck")), cluster, &[])
            .unwrap_or_else(|e| panic!("{name}:\n{e}"));
        (out, log)
    };
    let (local, local_log) = run("local", None);
    let (remote, remote_log) = run("remote", Some(&c.scheduler));
    assert!(
        remote_log.contains(&format!(
            "; queries run on the cluster at http://{})",
            c.scheduler
        )),
        "{remote_log}"
    );
    let scheduler = c.scheduler.clone();
    let explain = |job: &Path| {
        let out = weir()
            .arg("run")
            .arg(job)
            .args(["--explain", "--cluster", &scheduler, "--checkpoint"])
            .arg(job.with_extension("explained.ck"))
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let plan = explain(&dir.path().join("remote.sql"));
    assert_eq!(
        plan.matches("-- on the cluster: runs on the executors").count(),
        2,
        "{plan}"
    );
    let epochs = epoch_lines;
    assert!(epochs(&local_log).len() >= 9, "{local_log}");
    assert_eq!(
        epochs(&remote_log),
        epochs(&local_log),
        "{remote_log}\n{local_log}"
    );
    assert!(remote_log.contains("500,000 rows in"), "{remote_log}");
    let want = sink_rows(&local.join("dear"));
    assert!(want.len() > 1000, "{} rows", want.len());
    assert_eq!(sink_rows(&remote.join("dear")), want);
    // Every file the cluster run published was written by an executor,
    // one per part; nothing is left staged.
    let (parts, whole) = published(&remote.join("dear"));
    assert!(parts > epochs(&local_log).len(), "{parts} part files");
    assert_eq!(whole, 0);
    assert_eq!(published(&local.join("dear")).0, 0);

    // A checkpoint moves: two epochs here, two on the cluster, the rest
    // here; an executor killed in the cluster's turn costs time, not rows.
    let out = dir.path().join("moved");
    let job = dir.path().join("moved.sql");
    std::fs::write(&job, stateless_job(&input, &out, batch)).unwrap();
    let ck = dir.path().join("moved.ck");
    let once = ["--trigger", "once"];
    for _ in 0..2 {
        run_job_with(&job, &ck, None, &[], &once).unwrap();
    }
    let log = run_job_with(&job, &ck, Some(&c.scheduler), &[], &once).unwrap();
    assert!(log.contains("committed through epoch 3"), "{log}");
    c.kill_executor(0);
    let log = match run_job_with(&job, &ck, Some(&c.scheduler), &[], &once) {
        Ok(log) => log,
        // Ballista gave up on the epoch: it was not committed, and runs
        // again.
        Err(e) => {
            assert!(e.contains("was not committed"), "{e}");
            run_job_with(&job, &ck, Some(&c.scheduler), &[], &once).unwrap()
        }
    };
    assert!(log.contains("committed through epoch 4"), "{log}");
    run_job(&job, &ck, None, &[]).unwrap();
    assert_eq!(sink_rows(&out.join("dear")), want, "moved");

    // A CSV folder's rows cannot be counted without reading them: the
    // query runs on the driver, over rows the executors read.
    let csv = dir.path().join("csv");
    std::fs::create_dir(&csv).unwrap();
    let mut text = String::from("auction,bidder,price,channel,url,date_time,extra\n");
    for i in 0..500 {
        text.push_str(&format!(
            "{},{},{},Web,https://x/{i},2026-01-01T00:00:{:02}.000,\n",
            i % 17,
            i % 11,
            i * 37 % 5000,
            i % 60
        ));
    }
    std::fs::write(csv.join("bids.csv"), text).unwrap();
    let csv_job = |name: &str| {
        stateless_job(
            &csv.display().to_string(),
            &dir.path().join(name),
            "'max_rows_per_batch' = '200'",
        )
        .replace("'format' = 'parquet', 'max_rows", "'format' = 'csv', 'max_rows")
    };
    let mut csv_rows = Vec::new();
    for (name, cluster) in [("csv-local", None), ("csv-remote", Some(c.scheduler.as_str()))] {
        let job = dir.path().join(format!("{name}.sql"));
        std::fs::write(&job, csv_job(name)).unwrap();
        let log = run_job(&job, &dir.path().join(format!("{name}.ck")), cluster, &[]).unwrap();
        if cluster.is_some() {
            assert!(log.contains("; input read on the cluster at"), "{log}");
        }
        assert!(log.contains("500 rows in"), "{log}");
        csv_rows.push(sink_rows(&dir.path().join(name).join("dear")));
    }
    assert!(csv_rows[0].len() > 100, "{} rows", csv_rows[0].len());
    assert_eq!(csv_rows[1], csv_rows[0]);
    let plan = explain(&dir.path().join("csv-remote.sql"));
    assert!(
        plan.contains("-- on the cluster: input read on the executors, the query runs here (source 'bids' cannot be cut into parts without reading them"),
        "{plan}"
    );
    // A job with state: its rows come back to the driver.
    let windowed = dir.path().join("windowed.sql");
    std::fs::write(&windowed, every_kind_of_job(&dir.path().join("w"), batch)).unwrap();
    let plan = explain(&windowed);
    assert!(
        plan.contains("the query runs here (INSERT INTO tops cannot: it keeps more than one state table)"),
        "{plan}"
    );
}

/// A keyed TUMBLE and a keyless HOP over the bids.
fn windowed_job(input: &str, out: &Path, batch: &str) -> String {
    let table = bids_table(input, batch);
    let out = out.display();
    format!(
        "{table}
         CREATE TABLE windows WITH ('connector' = 'files', 'path' = '{out}/windows/', 'format' = 'parquet');
         CREATE TABLE hops WITH ('connector' = 'files', 'path' = '{out}/hops/', 'format' = 'parquet');
         CREATE TABLE sessions WITH ('connector' = 'files', 'path' = '{out}/sessions/', 'format' = 'parquet');
         INSERT INTO sessions
         SELECT window_start, window_end, bidder, COUNT(*) AS n, MAX(price) AS highest
         FROM TABLE(SESSION(TABLE bids PARTITION BY bidder, DESCRIPTOR(date_time), INTERVAL '2' SECOND))
         WHERE price > 50
         GROUP BY window_start, window_end, bidder;
         INSERT INTO windows
         SELECT window_start, window_end, auction, COUNT(*) AS n, MAX(price) AS top, SUM(price) AS volume
         FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
         WHERE price > 100
         GROUP BY window_start, window_end, auction;
         INSERT INTO hops
         SELECT window_start, window_end, COUNT(*) AS n, SUM(price) AS volume, COUNT(DISTINCT channel) AS channels
         FROM TABLE(HOP(TABLE bids, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
         GROUP BY window_start, window_end;"
    )
}

/// Runs `job` on `threads` threads, as [`run_job_with`].
fn run_threads(
    job: &Path,
    checkpoint: &Path,
    cluster: Option<&str>,
    threads: usize,
    trigger: &[&str],
) -> Result<String, String> {
    let mut cmd = weir();
    cmd.arg("run")
        .arg(job)
        .args(trigger)
        .args(["--threads", &threads.to_string(), "--checkpoint"])
        .arg(checkpoint);
    if let Some(c) = cluster {
        cmd.args(["--cluster", c]);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() { Ok(text) } else { Err(text) }
}

/// Epoch lines but for their timings: rows in and out, late rows,
/// watermark, rows held in state.
fn epoch_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| {
            l.split("  ")
                .filter(|f| {
                    ["epoch ", "in ", "out ", "late ", "bad ", "watermark ", "state "]
                        .iter()
                        .any(|k| f.starts_with(k))
                        && !f.starts_with("state written")
                })
                .collect::<Vec<_>>()
                .join("  ")
        })
        .collect()
}

/// Runs the job `job_for(out)` gives, to its end, locally and on the
/// cluster, on one thread and on two: the cluster run's queries run on the
/// executors, its epoch lines (rows, late rows, watermark, held rows) and
/// each of `sinks` equal the local run's, and the executors wrote the
/// sinks' files. Returns the local runs' output folders (1, then 2
/// threads).
fn runs_alike_on_the_executors(
    c: &Cluster,
    dir: &Path,
    job_for: impl Fn(&Path) -> String,
    sinks: &[&str],
) -> Vec<PathBuf> {
    let all = ["--trigger", "available-now", "--drain"];
    let mut local_rows = Vec::new();
    for threads in [1, 2] {
        let run = |name: &str, cluster: Option<&str>| {
            let out = dir.join(format!("{name}-{threads}"));
            let job = dir.join(format!("{name}-{threads}.sql"));
            std::fs::write(&job, job_for(&out)).unwrap();
            let ck = dir.join(format!("{name}-{threads}.ck"));
            let log =
                run_threads(&job, &ck, cluster, threads, &all).unwrap_or_else(|e| panic!("{name}:\n{e}"));
            (out, log)
        };
        let (local, local_log) = run("local", None);
        let (remote, remote_log) = run("remote", Some(&c.scheduler));
        assert!(
            remote_log.contains(&format!(
                "; queries run on the cluster at http://{})",
                c.scheduler
            )),
            "{remote_log}"
        );
        assert!(epoch_lines(&local_log).len() >= 4, "{local_log}");
        assert!(!local_log.contains(", 0 late,"), "no late rows: {local_log}");
        assert_eq!(
            epoch_lines(&remote_log),
            epoch_lines(&local_log),
            "{remote_log}\n{local_log}"
        );
        for sink in sinks {
            let want = sink_rows(&local.join(sink));
            assert!(want.len() > 100, "{sink}: {} rows", want.len());
            assert_eq!(sink_rows(&remote.join(sink)), want, "{sink} on {threads} threads");
            // Written by the executors, a file per shard with rows.
            assert_eq!(published(&remote.join(sink)).1, 0, "{sink}");
        }
        local_rows.push(local);
    }
    local_rows
}

/// One checkpoint, four runs of `job`: an epoch here on one thread, two on
/// the cluster on two (executor 0 killed before the second, restarted
/// after), the rest here on three.
fn moved_with_a_killed_executor(c: &mut Cluster, job: &Path, ck: &Path) {
    let once = ["--trigger", "once"];
    run_threads(job, ck, None, 1, &once).unwrap();
    let log = run_threads(job, ck, Some(&c.scheduler), 2, &once).unwrap();
    assert!(log.contains("committed through epoch 2"), "{log}");
    assert!(log.contains("queries run on the cluster"), "{log}");
    c.kill_executor(0);
    let log = match run_threads(job, ck, Some(&c.scheduler), 2, &once) {
        Ok(log) => log,
        // Ballista gave up on the epoch: it was not committed, and runs
        // again.
        Err(e) => {
            assert!(e.contains("was not committed"), "{e}");
            run_threads(job, ck, Some(&c.scheduler), 2, &once).unwrap()
        }
    };
    assert!(log.contains("committed through epoch 3"), "{log}");
    c.restart_executor(0);
    run_threads(job, ck, None, 3, &["--trigger", "available-now", "--drain"]).unwrap();
}

/// Window aggregates (TUMBLE, HOP, SESSION) run on the executors: each
/// epoch's parts are read, judged late or not, windowed and partially
/// aggregated (not sessions) where they are read, and each shard of the
/// operator restores its state from the checkpoint, folds, emits and
/// writes its sink file and state change there. Rows, late rows and epochs equal a local run's on one thread
/// and two (two shards), and the checkpoint moves between local and
/// cluster runs, an executor killed on the way.
#[test]
fn a_window_aggregate_runs_on_the_executors_with_its_state_in_the_checkpoint() {
    let mut c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    // Five copies of the example's four files, read five files an epoch:
    // the later copies are older than the watermark the earlier ones set,
    // so parts are late because of the parts before them.
    let input = twenty_files(dir.path());
    let input = input.display().to_string();
    let batch = "'max_files_per_batch' = '5'";
    let all = ["--trigger", "available-now", "--drain"];
    let local_rows = runs_alike_on_the_executors(
        &c,
        dir.path(),
        |out: &Path| windowed_job(&input, out, batch),
        &["windows", "hops", "sessions"],
    );
    // One executor with two task slots: both shards of an epoch may run
    // on it at once, each with an operator of its own.
    {
        let two_slots = cluster_with(1, &[], 2);
        let out = dir.path().join("slots");
        let job = dir.path().join("slots.sql");
        std::fs::write(&job, windowed_job(&input, &out, batch)).unwrap();
        let log = run_threads(
            &job,
            &dir.path().join("slots.ck"),
            Some(&two_slots.scheduler),
            2,
            &all,
        )
        .unwrap();
        assert!(log.contains("queries run on the cluster"), "{log}");
        for sink in ["windows", "hops", "sessions"] {
            assert_eq!(
                sink_rows(&out.join(sink)),
                sink_rows(&local_rows[1].join(sink)),
                "two slots/{sink}"
            );
        }
    }
    // EXPLAIN says where each query runs.
    let explain = |threads: &str| {
        let out = weir()
            .arg("run")
            .arg(dir.path().join("remote-1.sql"))
            .args([
                "--explain",
                "--threads",
                threads,
                "--cluster",
                &c.scheduler,
                "--checkpoint",
            ])
            .arg(dir.path().join(format!("explained-{threads}.ck")))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for threads in ["1", "2"] {
        let plan = explain(threads);
        assert_eq!(
            plan.matches("-- on the cluster: runs on the executors").count(),
            3,
            "{plan}"
        );
    }

    // The state moves between shard counts, an executor killed on the way.
    let out = dir.path().join("moved");
    let job = dir.path().join("moved.sql");
    std::fs::write(&job, windowed_job(&input, &out, batch)).unwrap();
    moved_with_a_killed_executor(&mut c, &job, &dir.path().join("moved.ck"));
    for sink in ["windows", "hops", "sessions"] {
        assert_eq!(
            sink_rows(&out.join(sink)),
            sink_rows(&local_rows[1].join(sink)),
            "moved/{sink}"
        );
    }
}

/// Joins of two sources (the example bids declared twice, each read and
/// cut on its own): an interval join, an interval LEFT join whose
/// unmatched rows come out when the watermark evicts them, and a regular
/// join (its state only grows).
fn join_job(input: &str, out: &Path, batch: &str) -> String {
    let bids = bids_table(input, batch);
    let asks = bids_table(input, batch)
        .replace("CREATE TABLE bids", "CREATE TABLE asks")
        .replace("INTERVAL '5' SECOND", "INTERVAL '2' SECOND");
    let out = out.display();
    format!(
        "{bids}
         {asks}
         CREATE TABLE pairs WITH ('connector' = 'files', 'path' = '{out}/pairs/', 'format' = 'parquet');
         CREATE TABLE outbid WITH ('connector' = 'files', 'path' = '{out}/outbid/', 'format' = 'parquet');
         CREATE TABLE same WITH ('connector' = 'files', 'path' = '{out}/same/', 'format' = 'parquet');
         INSERT INTO pairs
         SELECT a.auction, a.bidder, a.price, b.price AS next_price
         FROM bids a JOIN asks b
           ON a.auction = b.auction AND a.bidder = b.bidder
          AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '1' SECOND;
         INSERT INTO outbid
         SELECT a.auction, a.bidder, a.price, a.date_time, b.bidder AS by_bidder, b.price AS by_price
         FROM bids a LEFT JOIN asks b
           ON a.auction = b.auction AND b.price > a.price
          AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '2' SECOND;
         INSERT INTO same
         SELECT a.auction, a.bidder, a.price, b.channel
         FROM bids a JOIN asks b ON a.auction = b.auction AND a.bidder = b.bidder AND a.price = b.price;"
    )
}

/// Joins run on the executors: each part of each side is read and judged
/// late or not where it is read, both sides are dealt to the join's shards
/// by its keys, and each shard restores its rows from the checkpoint,
/// joins, and writes its output and state change there. Rows, late rows,
/// held rows and epochs equal a local run's on one thread and two, and the
/// checkpoint moves between local and cluster runs, an executor killed on
/// the way.
#[test]
fn joins_run_on_the_executors_with_their_state_in_the_checkpoint() {
    let mut c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    let input = bids();
    let batch = "'max_files_per_batch' = '1'";
    let sinks = ["pairs", "outbid", "same"];
    let local_rows =
        runs_alike_on_the_executors(&c, dir.path(), |out: &Path| join_job(&input, out, batch), &sinks);
    // Some bids were never outbid: their rows came out with NULLs.
    let unmatched = query(
        &format!(
            "SELECT COUNT(*) AS n FROM '{}/' WHERE by_bidder IS NULL",
            local_rows[0].join("outbid").display()
        ),
        None,
    )
    .unwrap();
    assert!(!unmatched.contains("\n0\n"), "{unmatched}");
    // EXPLAIN says where each query runs.
    let out = weir()
        .arg("run")
        .arg(dir.path().join("remote-2.sql"))
        .args([
            "--explain",
            "--threads",
            "2",
            "--cluster",
            &c.scheduler,
            "--checkpoint",
        ])
        .arg(dir.path().join("explained.ck"))
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        plan.matches("-- on the cluster: runs on the executors").count(),
        3,
        "{plan}"
    );
    // The join's rows move between shard counts, an executor killed on
    // the way.
    let out = dir.path().join("moved");
    let job = dir.path().join("moved.sql");
    std::fs::write(&job, join_job(&input, &out, batch)).unwrap();
    moved_with_a_killed_executor(&mut c, &job, &dir.path().join("moved.ck"));
    for sink in sinks {
        assert_eq!(
            sink_rows(&out.join(sink)),
            sink_rows(&local_rows[0].join(sink)),
            "moved/{sink}"
        );
    }
}

/// Aggregates without windows (changelogs): keyed, with `HAVING`, over a
/// source without a watermark, keyless, and with `COUNT(DISTINCT)` (whose
/// values are a second state table).
fn update_job(input: &str, out: &Path, batch: &str) -> String {
    let table = bids_table(input, batch);
    let out = out.display();
    format!(
        "{table}
         CREATE TABLE plain (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR)
         WITH ('connector' = 'files', 'path' = '{input}', 'format' = 'parquet', {batch});
         CREATE TABLE channels WITH ('connector' = 'files', 'path' = '{out}/channels/', 'format' = 'parquet', 'mode' = 'changelog');
         CREATE TABLE busy WITH ('connector' = 'files', 'path' = '{out}/busy/', 'format' = 'parquet', 'mode' = 'changelog');
         CREATE TABLE total WITH ('connector' = 'files', 'path' = '{out}/total/', 'format' = 'parquet', 'mode' = 'changelog');
         INSERT INTO channels SELECT channel, COUNT(*) AS n, SUM(price) AS volume FROM bids GROUP BY channel;
         INSERT INTO busy
         SELECT auction, COUNT(*) AS n, MAX(price) AS highest FROM plain WHERE price > 100
         GROUP BY auction HAVING COUNT(*) > 20;
         INSERT INTO total SELECT COUNT(*) AS n, SUM(price) AS volume FROM plain;
         CREATE TABLE reach WITH ('connector' = 'files', 'path' = '{out}/reach/', 'format' = 'parquet', 'mode' = 'changelog');
         INSERT INTO reach
         SELECT channel, COUNT(DISTINCT bidder) AS bidders, COUNT(DISTINCT auction) FILTER (WHERE price > 1000) AS dear
         FROM bids GROUP BY channel;"
    )
}

/// A changelog sink's rows but for `_seq` (numbered per shard file on a
/// cluster), sorted; then the table they rebuild, with `_seq`, by the
/// README's query.
fn changelog_rows(dir: &Path, columns: &str, key: &str) -> (Vec<String>, Vec<String>) {
    let sorted = |sql: String| {
        let csv = query(&sql, None).unwrap();
        let mut lines: Vec<String> = csv.lines().map(str::to_owned).collect();
        lines[1..].sort();
        lines
    };
    let dir = dir.display();
    let partition = if key.is_empty() {
        String::new()
    } else {
        format!("PARTITION BY {key} ")
    };
    (
        sorted(format!("SELECT op, {columns}, _epoch FROM '{dir}/'")),
        sorted(format!(
            "SELECT {columns} FROM (SELECT *, ROW_NUMBER() OVER ({partition}ORDER BY _epoch DESC, _seq DESC) AS latest \
             FROM '{dir}/') WHERE latest = 1 AND op IN ('+I', '+U')"
        )),
    )
}

/// Aggregates without windows run on the executors as window aggregates
/// do: partial aggregates where the parts are read, each shard restoring
/// its state from the checkpoint and writing its changelog file there. The
/// changelogs equal a local run's on one thread and two, `_seq` keeps each
/// key's rows in order (the latest row of each key is the local run's),
/// and the checkpoint moves between local and cluster runs.
#[test]
fn an_aggregate_without_windows_runs_on_the_executors_with_its_state_in_the_checkpoint() {
    let c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    let input = twenty_files(dir.path());
    let input = input.display().to_string();
    let batch = "'max_files_per_batch' = '5'";
    let all = ["--trigger", "available-now", "--drain"];
    let sinks = [
        ("channels", "channel, n, volume", "channel"),
        ("busy", "auction, n, highest", "auction"),
        ("total", "n, volume", ""),
        ("reach", "channel, bidders, dear", "channel"),
    ];
    let mut local_two = None;
    for threads in [1, 2] {
        let run = |name: &str, cluster: Option<&str>| {
            let out = dir.path().join(format!("{name}-{threads}"));
            let job = dir.path().join(format!("{name}-{threads}.sql"));
            std::fs::write(&job, update_job(&input, &out, batch)).unwrap();
            let ck = dir.path().join(format!("{name}-{threads}.ck"));
            let log =
                run_threads(&job, &ck, cluster, threads, &all).unwrap_or_else(|e| panic!("{name}:\n{e}"));
            (out, log)
        };
        let (local, local_log) = run("local", None);
        let (remote, remote_log) = run("remote", Some(&c.scheduler));
        assert!(remote_log.contains("queries run on the cluster"), "{remote_log}");
        assert!(epoch_lines(&local_log).len() >= 4, "{local_log}");
        assert_eq!(
            epoch_lines(&remote_log),
            epoch_lines(&local_log),
            "{remote_log}\n{local_log}"
        );
        for (sink, columns, key) in sinks {
            let (rows, latest) = changelog_rows(&local.join(sink), columns, key);
            assert!(
                rows.iter().any(|r| r.starts_with("-U,")),
                "{sink}: no updates: {rows:?}"
            );
            let (got_rows, got_latest) = changelog_rows(&remote.join(sink), columns, key);
            assert_eq!(got_rows, rows, "{sink} on {threads} threads");
            assert_eq!(got_latest, latest, "{sink} on {threads} threads");
            assert_eq!(published(&remote.join(sink)).1, 0, "{sink}");
        }
        local_two = Some(local);
    }
    let local = local_two.unwrap();
    // One checkpoint: an epoch here on one thread, two on the cluster on
    // two, the rest here on three.
    let out = dir.path().join("moved");
    let job = dir.path().join("moved.sql");
    std::fs::write(&job, update_job(&input, &out, batch)).unwrap();
    let ck = dir.path().join("moved.ck");
    let once = ["--trigger", "once"];
    run_threads(&job, &ck, None, 1, &once).unwrap();
    for epoch in [2, 3] {
        let log = run_threads(&job, &ck, Some(&c.scheduler), 2, &once).unwrap();
        assert!(log.contains(&format!("committed through epoch {epoch}")), "{log}");
        assert!(log.contains("queries run on the cluster"), "{log}");
    }
    run_threads(&job, &ck, None, 3, &all).unwrap();
    for (sink, columns, key) in sinks {
        assert_eq!(
            changelog_rows(&out.join(sink), columns, key),
            changelog_rows(&local.join(sink), columns, key),
            "moved/{sink}"
        );
    }
}

/// A Top-N and deduplications outside windows (changelogs), and a Top-N
/// within windows. The dedup orders by a column with many ties, so the
/// row it keeps is the first to arrive.
fn ranking_job(input: &str, out: &Path, batch: &str) -> String {
    let table = bids_table(input, batch);
    let out = out.display();
    format!(
        "{table}
         CREATE TABLE top3 WITH ('connector' = 'files', 'path' = '{out}/top3/', 'format' = 'parquet', 'mode' = 'changelog');
         CREATE TABLE firsts WITH ('connector' = 'files', 'path' = '{out}/firsts/', 'format' = 'parquet', 'mode' = 'changelog');
         CREATE TABLE best WITH ('connector' = 'files', 'path' = '{out}/best/', 'format' = 'parquet');
         INSERT INTO top3 SELECT * FROM (
           SELECT auction, bidder, price, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rn FROM bids
         ) WHERE rn <= 3;
         INSERT INTO firsts SELECT * FROM (
           SELECT bidder, channel, price, url, ROW_NUMBER() OVER (PARTITION BY bidder ORDER BY channel) AS rn FROM bids
         ) WHERE rn = 1;
         INSERT INTO best SELECT * FROM (
           SELECT window_start, window_end, auction, price,
                  ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY price DESC) AS rn
           FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
         ) WHERE rn <= 2;"
    )
}

/// Rankings run on the executors: the parts are read there, their rows
/// cross to the operator's shard tasks, each of which puts them back in
/// part order, so ties keep arrival order as locally; the changelogs equal
/// a local run's row for row (but for `_seq`, numbered per shard file, in
/// the same order for each key), and the checkpoint moves between local
/// and cluster runs.
#[test]
fn rankings_run_on_the_executors_with_ties_in_arrival_order() {
    let c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    // Two different files an epoch: a bidder's tied rows are in both, and
    // Ballista's shuffle reader may read the parts in any order.
    let input = bids();
    let batch = "'max_files_per_batch' = '2'";
    let all = ["--trigger", "available-now", "--drain"];
    // Each changelog's columns and key (`best` is append-only).
    let sinks = [
        ("top3", "auction, bidder, price, rn", "auction, rn"),
        ("firsts", "bidder, channel, price, url, rn", "bidder"),
    ];
    let run = |name: &str, cluster: Option<&str>| {
        let out = dir.path().join(name);
        let job = dir.path().join(format!("{name}.sql"));
        std::fs::write(&job, ranking_job(&input, &out, batch)).unwrap();
        let ck = dir.path().join(format!("{name}.ck"));
        let log = run_threads(&job, &ck, cluster, 2, &all).unwrap_or_else(|e| panic!("{name}:\n{e}"));
        (out, log)
    };
    let (local, local_log) = run("local", None);
    let (remote, remote_log) = run("remote", Some(&c.scheduler));
    assert!(remote_log.contains("queries run on the cluster"), "{remote_log}");
    assert_eq!(
        epoch_lines(&remote_log),
        epoch_lines(&local_log),
        "{remote_log}\n{local_log}"
    );
    for (sink, columns, key) in sinks {
        let want = changelog_rows(&local.join(sink), columns, key);
        assert!(want.0.len() > 100, "{sink}: {} rows", want.0.len());
        assert_eq!(changelog_rows(&remote.join(sink), columns, key), want, "{sink}");
    }
    let want = sink_rows(&local.join("best"));
    assert!(want.len() > 10, "best: {} rows", want.len());
    assert_eq!(sink_rows(&remote.join("best")), want, "best");
    // One checkpoint: an epoch here, one on the cluster, the drain here.
    let out = dir.path().join("moved");
    let job = dir.path().join("moved.sql");
    std::fs::write(&job, ranking_job(&input, &out, batch)).unwrap();
    let ck = dir.path().join("moved.ck");
    let once = ["--trigger", "once"];
    run_threads(&job, &ck, None, 2, &once).unwrap();
    let log = run_threads(&job, &ck, Some(&c.scheduler), 2, &once).unwrap();
    assert!(log.contains("committed through epoch 2"), "{log}");
    run_threads(&job, &ck, None, 1, &all).unwrap();
    for (sink, columns, key) in sinks {
        assert_eq!(
            changelog_rows(&out.join(sink), columns, key),
            changelog_rows(&local.join(sink), columns, key),
            "moved/{sink}"
        );
    }
    assert_eq!(
        sink_rows(&out.join("best")),
        sink_rows(&local.join("best")),
        "moved/best"
    );
}

/// An epoch whose every row is late says so on the cluster as it does
/// locally: the epoch line and the warning naming the query.
#[test]
fn an_epoch_of_late_rows_only_is_said_alike_on_the_cluster() {
    let c = cluster(1);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let first = Path::new(&bids()).join("bids-0000.parquet");
    std::fs::copy(&first, input.join("a.parquet")).unwrap();
    // The same rows a day older, read after them: every one late.
    let gen_job = dir.path().join("gen.sql");
    std::fs::write(
        &gen_job,
        format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3))
             WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet');
             CREATE TABLE older WITH ('connector' = 'files', 'path' = '{}/older/', 'format' = 'parquet');
             INSERT INTO older SELECT auction, price, date_time - INTERVAL '1' DAY AS date_time FROM bids;",
            input.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    run_job(&gen_job, &dir.path().join("gen.ck"), None, &[]).unwrap();
    let older = std::fs::read_dir(dir.path().join("older"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .unwrap();
    std::fs::copy(older.path(), input.join("b.parquet")).unwrap();
    let run = |name: &str, cluster: Option<&str>| {
        let job = dir.path().join(format!("{name}.sql"));
        std::fs::write(
            &job,
            format!(
                "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
                   WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
                 WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'max_files_per_batch' = '1');
                 CREATE TABLE windows WITH ('connector' = 'files', 'path' = '{}/{name}/', 'format' = 'parquet');
                 INSERT INTO windows SELECT window_start, window_end, COUNT(*) AS n
                 FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
                 GROUP BY window_start, window_end;",
                input.display(),
                dir.path().display()
            ),
        )
        .unwrap();
        let log = run_threads(
            &job,
            &dir.path().join(format!("{name}.ck")),
            cluster,
            2,
            &["--trigger", "available-now"],
        )
        .unwrap();
        let warnings: Vec<String> = log
            .lines()
            .filter(|l| l.starts_with("weir: warning: every one of"))
            .map(str::to_owned)
            .collect();
        (epoch_lines(&log), warnings, log)
    };
    let (lines, warnings, log) = run("local", None);
    assert!(lines[1].contains("late 25,000 (every row)"), "{log}");
    assert_eq!(warnings.len(), 1, "{log}");
    let (remote_lines, remote_warnings, remote_log) = run("remote", Some(&c.scheduler));
    assert!(remote_log.contains("queries run on the cluster"), "{remote_log}");
    assert_eq!(remote_lines, lines);
    assert_eq!(remote_warnings, warnings);
}

/// A NULL in a column the sink declares NOT NULL stops the epoch on the
/// cluster as it does locally, naming the column, and nothing of the
/// epoch is published.
#[test]
fn a_null_in_a_not_null_column_stops_the_epoch_on_the_cluster_too() {
    let c = cluster(1);
    let dir = tempfile::tempdir().unwrap();
    let bids = bids();
    let out = dir.path().join("out");
    let job = dir.path().join("job.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
               WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
             WITH ('connector' = 'files', 'path' = '{bids}', 'format' = 'parquet');
             CREATE TABLE dear (auction BIGINT NOT NULL, price BIGINT)
             WITH ('connector' = 'files', 'path' = '{}/dear/', 'format' = 'parquet');
             CREATE TABLE counts (auction BIGINT NOT NULL, n BIGINT)
             WITH ('connector' = 'files', 'path' = '{}/counts/', 'format' = 'parquet', 'mode' = 'changelog');
             INSERT INTO dear SELECT CASE WHEN price % 7 = 0 THEN NULL ELSE auction END AS auction, price FROM bids;
             INSERT INTO counts SELECT CASE WHEN price % 7 = 0 THEN NULL ELSE auction END AS auction, COUNT(*) AS n
             FROM bids GROUP BY 1;",
            out.display(),
            out.display()
        ),
    )
    .unwrap();
    for cluster in [None, Some(c.scheduler.as_str())] {
        let err = run_job(
            &job,
            &dir.path().join(format!("{}.ck", cluster.is_some())),
            cluster,
            &[],
        )
        .unwrap_err();
        assert!(
            err.contains("column 'auction' is declared NOT NULL, but the query gave it a NULL in epoch 1"),
            "{err}"
        );
        if cluster.is_some() {
            assert!(err.contains("queries run on the cluster"), "{err}");
        }
        for sink in ["dear", "counts"] {
            let published = std::fs::read_dir(out.join(sink))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                        .count()
                })
                .unwrap_or(0);
            assert_eq!(published, 0, "{sink}");
        }
    }
}

/// The driver killed once an epoch's part files are staged and named in
/// its manifest, but before its commit: the replay on the cluster stages
/// other attempts, and only those are published. The first attempt's files
/// (as a stale executor's late write would be) are never visible, and
/// retention deletes them.
#[test]
fn a_stateless_epoch_replayed_after_a_crash_publishes_only_the_replays_files() {
    let c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    let input = twenty_files(dir.path());
    let input = input.display().to_string();
    let batch = "'max_files_per_batch' = '4'";
    let local = dir.path().join("local");
    let job = dir.path().join("local.sql");
    std::fs::write(&job, stateless_job(&input, &local, batch)).unwrap();
    run_job(&job, &dir.path().join("local.ck"), None, &[]).unwrap();

    let out = dir.path().join("remote");
    let job = dir.path().join("remote.sql");
    // Retention every two epochs.
    std::fs::write(
        &job,
        format!(
            "SET 'checkpoint.retain_epochs' = '2';\n{}",
            stateless_job(&input, &out, batch)
        ),
    )
    .unwrap();
    let ck = dir.path().join("remote.ck");
    let killed = run_job(
        &job,
        &ck,
        Some(&c.scheduler),
        &[("WEIR_FAILPOINT", "sink-staged@2")],
    );
    assert!(killed.is_err(), "{killed:?}");
    let staged = |epoch: u64| -> Vec<String> {
        let mut names = Vec::new();
        for writer in std::fs::read_dir(out.join("dear/_weir/pending")).unwrap() {
            for f in std::fs::read_dir(writer.unwrap().path()).unwrap() {
                let name = f.unwrap().file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("part-{epoch:010}-")) {
                    names.push(name);
                }
            }
        }
        names.sort();
        names
    };
    let first = staged(2);
    assert_eq!(first.len(), 4, "one staged file per part of epoch 2: {first:?}");
    let log = run_job(&job, &ck, Some(&c.scheduler), &[]).unwrap();
    assert!(log.contains("resuming after epoch 1"), "{log}");
    let want = sink_rows(&local.join("dear"));
    assert_eq!(sink_rows(&out.join("dear")), want);
    // Epoch 2 published four files, the replay's; the first attempt's
    // files were staged under other names and are gone.
    let published: Vec<String> = std::fs::read_dir(out.join("dear"))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-0000000002-"))
        .collect();
    assert_eq!(published.len(), 4, "{published:?}");
    let left = staged(2);
    assert!(
        left.iter().all(|n| !first.contains(n)),
        "the first attempt's files are still staged: {left:?}"
    );
}

#[test]
fn a_job_a_cluster_cannot_read_is_refused_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let bids = bids();
    // Bad records set aside on an executor are not brought back yet.
    let job = dir.path().join("skip.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3))
             WITH ('connector' = 'files', 'path' = '{bids}', 'format' = 'parquet', 'on_error' = 'skip');
             CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}/out/', 'format' = 'parquet');
             INSERT INTO out SELECT auction, price FROM bids;",
            dir.path().display()
        ),
    )
    .unwrap();
    let err = run_job(&job, &dir.path().join("skip.ck"), Some(&address), &[]).unwrap_err();
    assert!(
        err.contains("only 'on_error' = 'fail' can be read on a cluster"),
        "{err}"
    );
    assert!(err.contains(&address), "{err}");
    // A Kafka topic is not read on a cluster yet.
    let job = dir.path().join("kafka.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT) WITH ('connector' = 'kafka', 'topic' = 'bids',
               'properties.bootstrap.servers' = '127.0.0.1:1', 'format' = 'json');
             CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}/k/', 'format' = 'parquet');
             INSERT INTO out SELECT auction, price FROM bids;",
            dir.path().display()
        ),
    )
    .unwrap();
    let err = run_job(&job, &dir.path().join("kafka.ck"), Some(&address), &[]).unwrap_err();
    assert!(
        err.contains("source 'bids' (connector 'kafka') cannot be read on a cluster yet: only 'files' and 'nexmark' sources can"),
        "{err}"
    );
    // Refused before anything is written: no checkpoint, no sink folder.
    assert!(!dir.path().join("kafka.ck").exists());
    assert!(!dir.path().join("k").exists());
    // A cluster that does not answer: the epoch is not committed, and the
    // job runs on from the same checkpoint once it can read.
    let out = dir.path().join("late-cluster");
    let job = dir.path().join("late.sql");
    std::fs::write(&job, every_kind_of_job(&out, "'max_files_per_batch' = '2'")).unwrap();
    let ck = dir.path().join("late.ck");
    let err = run_job(&job, &ck, Some(&address), &[]).unwrap_err();
    assert!(err.contains("no scheduler answers there"), "{err}");
    assert!(err.contains("epoch 1 was not committed"), "{err}");
    let log = run_job(&job, &ck, None, &[]).unwrap();
    assert!(log.contains("100,000 rows in"), "{log}");
}

#[test]
fn an_executor_killed_mid_run_costs_time_not_rows() {
    killed_mid_run(Kill::Executor);
}

#[test]
fn a_scheduler_killed_mid_run_stops_the_job_before_its_epoch_commits() {
    killed_mid_run(Kill::Scheduler);
}

enum Kill {
    Executor,
    Scheduler,
}

/// A run on a cluster that loses a process after two epochs, then (if it
/// stopped) runs on from its checkpoint; its output is the local run's.
fn killed_mid_run(kill: Kill) {
    let mut c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    // Twenty files (the example's four, five times), one an epoch.
    let input = twenty_files(dir.path());
    let job_for = |out: &str| {
        every_kind_of_job(&dir.path().join(out), "'max_files_per_batch' = '1'")
            .replace(&bids(), &input.display().to_string())
    };
    let local_job = dir.path().join("local.sql");
    std::fs::write(&local_job, job_for("local")).unwrap();
    run_job(&local_job, &dir.path().join("local.ck"), None, &[]).unwrap();

    let job = dir.path().join("remote.sql");
    std::fs::write(&job, job_for("remote")).unwrap();
    let ck = dir.path().join("remote.ck");
    let mut run = weir()
        .arg("run")
        .arg(&job)
        .args([
            "--trigger",
            "available-now",
            "--drain",
            "--threads",
            "1",
            "--cluster",
            &c.scheduler,
        ])
        .arg("--checkpoint")
        .arg(&ck)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(run.stderr.take().unwrap());
    let mut log = String::new();
    let mut killed = false;
    for line in stderr.lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        // Two epochs in, one executor goes: the scheduler notices its
        // missing heartbeats and reruns its tasks on the other.
        if !killed && line.starts_with("epoch 2 ") {
            match kill {
                Kill::Executor => c.kill_executor(0),
                Kill::Scheduler => {
                    let scheduler = &mut c.processes[0].0;
                    scheduler.kill().unwrap();
                    scheduler.wait().unwrap();
                }
            }
            killed = true;
        }
    }
    let status = run.wait().unwrap();
    assert!(killed, "{log}");
    if !status.success() {
        // A job Ballista gave up on is an epoch not committed: it names
        // the cluster, and the next run goes on from the checkpoint.
        assert!(log.contains("the cluster at"), "{log}");
        assert!(log.contains("was not committed"), "{log}");
        let cluster = match kill {
            Kill::Executor => Some(c.scheduler.as_str()),
            // No scheduler: the job goes on here.
            Kill::Scheduler => None,
        };
        run_job(&job, &ck, cluster, &[]).unwrap();
    } else {
        assert!(
            matches!(kill, Kill::Executor),
            "the job ran on without its scheduler:\n{log}"
        );
    }
    for sink in ["windows", "sessions", "channels", "pairs", "tops"] {
        let want = sink_rows(&dir.path().join("local").join(sink));
        assert_eq!(
            sink_rows(&dir.path().join("remote").join(sink)),
            want,
            "{sink}\n{log}"
        );
    }
}

#[test]
fn a_nexmark_job_generated_on_a_cluster_writes_what_a_local_run_writes() {
    let c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    // 1.2M events in epochs of 600k: each epoch is three parts (250k
    // events each, the last one short) generated on the executors.
    let job_for = |out: &str| {
        format!(
            "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
               date_time TIMESTAMP(3), extra VARCHAR,
               WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
             WITH ('connector' = 'nexmark', 'table' = 'bid', 'events' = '1200000', 'max_events_per_batch' = '600000');
             CREATE TABLE out WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet');
             INSERT INTO out
             SELECT window_start, window_end, auction, COUNT(*) AS n, MAX(price) AS top
             FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
             GROUP BY window_start, window_end, auction;",
            dir.path().join(out).display()
        )
    };
    let mut logs = Vec::new();
    for (name, cluster) in [("local", None), ("remote", Some(c.scheduler.as_str()))] {
        let job = dir.path().join(format!("{name}.sql"));
        std::fs::write(&job, job_for(name)).unwrap();
        logs.push(run_job(&job, &dir.path().join(format!("{name}.ck")), cluster, &[]).unwrap());
    }
    let epochs = |log: &str| log.lines().filter(|l| l.starts_with("epoch ")).count();
    assert_eq!(epochs(&logs[1]), epochs(&logs[0]), "{}\n{}", logs[1], logs[0]);
    let want = sink_rows(&dir.path().join("local"));
    assert!(want.len() > 1000, "{} rows", want.len());
    assert_eq!(sink_rows(&dir.path().join("remote")), want);

    // Nexmark's q1 (stateless): generated, converted and written on the
    // executors, each part's file staged there.
    let q1 = |out: &str| {
        job_for(out).replace(
            "SELECT window_start, window_end, auction, COUNT(*) AS n, MAX(price) AS top
             FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
             GROUP BY window_start, window_end, auction;",
            "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid WHERE auction % 5 = 0;",
        )
    };
    let mut logs = Vec::new();
    for (name, cluster) in [("q1-local", None), ("q1-remote", Some(c.scheduler.as_str()))] {
        let job = dir.path().join(format!("{name}.sql"));
        std::fs::write(&job, q1(name)).unwrap();
        assert!(std::fs::read_to_string(&job).unwrap().contains("0.908"));
        logs.push(run_job(&job, &dir.path().join(format!("{name}.ck")), cluster, &[]).unwrap());
    }
    assert!(logs[1].contains("; queries run on the cluster at"), "{}", logs[1]);
    assert_eq!(epochs(&logs[1]), epochs(&logs[0]), "{}\n{}", logs[1], logs[0]);
    let want = sink_rows(&dir.path().join("q1-local"));
    assert!(want.len() > 10_000, "{} rows", want.len());
    assert_eq!(sink_rows(&dir.path().join("q1-remote")), want);
}

/// Twenty files of 25,000 bids under `dir/bids`: the example's four, five
/// times over.
fn twenty_files(dir: &Path) -> PathBuf {
    let input = dir.join("bids");
    std::fs::create_dir(&input).unwrap();
    for entry in std::fs::read_dir(bids()).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        for copy in 0..5 {
            std::fs::copy(&path, input.join(format!("{stem}-{copy}.parquet"))).unwrap();
        }
    }
    input
}

#[test]
fn a_row_budget_over_many_files_is_read_in_waves_with_the_local_runs_epochs() {
    let c = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    let input = twenty_files(dir.path());
    // 230,000 rows an epoch: more than the first wave of eight files
    // holds, and a cut inside a file each epoch.
    let job_for = |out: &str| {
        every_kind_of_job(&dir.path().join(out), "'max_rows_per_batch' = '230000'")
            .replace(&bids(), &input.display().to_string())
    };
    let mut logs = Vec::new();
    for (name, cluster) in [("local", None), ("remote", Some(c.scheduler.as_str()))] {
        let job = dir.path().join(format!("{name}.sql"));
        std::fs::write(&job, job_for(name)).unwrap();
        let env: &[(&str, &str)] = match cluster {
            Some(_) => &[("WEIR_FAULTS", "rate=0,permanent=bids-")],
            None => &[],
        };
        logs.push(run_job(&job, &dir.path().join(format!("{name}.ck")), cluster, env).unwrap());
    }
    let epochs = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.starts_with("epoch "))
            .map(|l| l.split("  ").take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(epochs(&logs[1]), epochs(&logs[0]), "{}\n{}", logs[1], logs[0]);
    assert!(logs[0].contains("epoch 2  in 230,000"), "{}", logs[0]);
    for sink in ["windows", "sessions", "channels", "pairs", "tops"] {
        let want = sink_rows(&dir.path().join("local").join(sink));
        assert_eq!(sink_rows(&dir.path().join("remote").join(sink)), want, "{sink}");
    }
}

/// A job sent to a scheduler that has no executor is cancelled after
/// `weir_cluster::NO_EXECUTOR_GRACE` (20 s), with an error that says why:
/// it waited for ever, without a word.
#[test]
fn a_job_on_a_cluster_without_executors_fails_saying_so() {
    let c = cluster(0);
    let started = Instant::now();
    let err = query("SELECT 1", Some(&c.scheduler)).unwrap_err();
    assert!(
        err.contains("no executor is registered with the scheduler")
            && err.contains(&format!("weir cluster executor --scheduler {}", c.scheduler)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(90));
}

/// An executor outlives its scheduler: when the scheduler goes away it
/// starts again (it exited, with status 0 and no word), and registers with
/// a scheduler restarted at the same address.
#[test]
fn an_executor_registers_again_with_a_restarted_scheduler() {
    let mut c = cluster(1);
    let scheduler = &mut c.processes[0].0;
    scheduler.kill().unwrap();
    scheduler.wait().unwrap();
    // Ballista's executor gives up on its scheduler after about 20 s.
    std::thread::sleep(Duration::from_secs(30));
    let mut again = weir()
        .args(["cluster", "scheduler", "--bind", &c.scheduler])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut again);
    assert!(line.contains(&c.scheduler), "{line}");
    c.processes[0] = Process(again);
    let started = Instant::now();
    let answer = loop {
        match query("SELECT 41 + 1 AS x", Some(&c.scheduler)) {
            Ok(out) => break out,
            Err(e) if started.elapsed() < Duration::from_secs(120) => {
                assert!(e.contains("no executor is registered"), "{e}");
            }
            Err(e) => panic!("the executor never came back: {e}"),
        }
    };
    assert!(answer.contains("42"), "{answer}");
}

/// An executor that cannot reach its scheduler still stops on Ctrl-C and
/// SIGTERM (it waited for the scheduler deaf to both), and one given a
/// port already taken says so and exits, instead of restarting itself for
/// ever as if its scheduler were gone.
#[test]
fn an_executor_stops_on_a_signal_and_refuses_a_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("127.0.0.1:{}", free_port());
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut executor = weir()
            .args(["cluster", "executor", "--scheduler", &nobody])
            .args(["--port", &free_port().to_string()])
            .args(["--grpc-port", &free_port().to_string()])
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = first_line(&mut executor);
        assert!(line.starts_with("weir cluster executor on "), "{line}");
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: a signal to a child this test started.
        unsafe {
            libc::kill(executor.id() as i32, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = executor.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                executor.kill().unwrap();
                executor.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.is_some(), "signal {signal}: the executor did not stop");
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (flight, grpc) in [(port, free_port()), (free_port(), port)] {
        let out = weir()
            .args(["cluster", "executor", "--scheduler", &nobody])
            .args(["--port", &flight.to_string(), "--grpc-port", &grpc.to_string()])
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            "{err}"
        );
        assert!(err.contains("in use"), "{err}");
    }
    let same = free_port().to_string();
    let out = weir()
        .args([
            "cluster",
            "executor",
            "--scheduler",
            &nobody,
            "--port",
            &same,
            "--grpc-port",
            &same,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the executor needs two ports"), "{err}");
}
