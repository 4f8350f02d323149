//! Checkpoints, sources and sinks on real object storage: an S3 server on
//! loopback (moto), the windowed job of `e2e.rs` run by the real binary with
//! `--checkpoint s3://...`, its input and its sink in a bucket, killed at
//! failpoints and restarted, and compared with an uninterrupted local run.
//!
//! The server: `WEIR_TEST_S3_ENDPOINT` (as `.ci/run` sets it), or else a
//! `moto_server` on PATH started here on a free port. Without either, each
//! test prints a skip line (past the test harness's output capture, so it
//! shows) and passes, unless `WEIR_REQUIRE_S3` is set (CI), so
//! `cargo test --workspace` works on a fresh laptop and CI cannot skip them
//! silently. The server must accept unsigned CreateBucket requests and any
//! credentials, as moto does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use weir_storage::location::Create;
use weir_storage::{Location, StoreOptions};

/// Credentials the tests pass; moto accepts any. They must never be printed.
const ENV_SECRET: &str = "wJalrXUtnFEMI-env-secret-K7MDENG";
const WITH_SECRET: &str = "bPxRfiCY-with-secret-EXAMPLEKEY";
const KEY_ID: &str = "AKIAWEIRTESTKEYID";

/// A running S3 server; one started here is stopped when the last test
/// holding it is done.
struct Server {
    endpoint: String,
    child: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

static SHARED: Mutex<Weak<Server>> = Mutex::new(Weak::new());

/// The S3 server, or `None` (after a note) when there is none and none is required.
fn server() -> Option<Arc<Server>> {
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = shared.upgrade() {
        return Some(s);
    }
    let server = if let Ok(endpoint) = std::env::var("WEIR_TEST_S3_ENDPOINT") {
        Server {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            child: None,
        }
    } else if let Some(moto) = on_path("moto_server") {
        let server = start_moto(&moto);
        loud(&format!(
            "note: WEIR_TEST_S3_ENDPOINT is not set; the S3 tests started {} at {}",
            moto.display(),
            server.endpoint
        ));
        server
    } else {
        let note = "neither WEIR_TEST_S3_ENDPOINT nor moto_server on PATH \
                    (pip install 'moto[server]==5.2.5', or run .ci/run)";
        if std::env::var_os("WEIR_REQUIRE_S3").is_some() {
            panic!("WEIR_REQUIRE_S3 is set, but {note}");
        }
        loud(&format!("SKIPPED: S3 tests not run: {note}"));
        return None;
    };
    let server = Arc::new(server);
    *shared = Arc::downgrade(&server);
    Some(server)
}

/// Writes a line to stderr directly: `eprintln!` in a passing test is
/// captured and never shown, and a skipped test must not pass unseen.
fn loud(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn start_moto(moto: &std::path::Path) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", moto.display()));
    let server = Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        child: Some(child),
    };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} did not listen on port {port} within 60 s",
            moto.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// A new bucket with a unique name.
fn bucket(server: &Server, tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("weir-{tag}-{}-{nanos:x}", std::process::id());
    let host = server.endpoint.trim_start_matches("http://");
    let mut conn = TcpStream::connect(host).expect("connect to the S3 server");
    write!(
        conn,
        "PUT /{name} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or("");
    assert!(status.contains(" 200"), "creating bucket {name}: {status}");
    name
}

/// The environment `weir` gets: the server, and credentials.
fn env(server: &Server) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", server.endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY", ENV_SECRET.into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

fn options(server: &Server) -> StoreOptions {
    StoreOptions::new(env(server).into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The three input files of `three_files`, put in `s3://bucket/in/`.
fn upload_input(server: &Server, bucket: &str, ws: &Workspace) {
    three_files(ws);
    let loc = Location::open(&format!("s3://{bucket}/in"), &options(server), Create::No).unwrap();
    runtime().block_on(async {
        for f in 0..3 {
            let name = format!("bids-{f}.parquet");
            let bytes = std::fs::read(ws.path(&format!("in/{name}"))).unwrap();
            loc.put(&name, Bytes::from(bytes)).await.unwrap();
        }
    });
    std::fs::remove_dir_all(ws.path("in")).unwrap();
}

/// Every object under `s3://bucket/prefix`, relative names and bytes.
fn objects(server: &Server, bucket: &str, prefix: &str) -> Vec<(String, Bytes)> {
    let loc = Location::open(&format!("s3://{bucket}/{prefix}"), &options(server), Create::No).unwrap();
    runtime().block_on(async {
        let mut out = Vec::new();
        for meta in loc.list("").await.unwrap() {
            let name = loc.relative(&meta.location);
            let bytes = loc.get_required(&name).await.unwrap();
            out.push((name, bytes));
        }
        out
    })
}

/// The sink's rows as a reader of `s3://bucket/out/*.parquet` sees them.
fn s3_sink_rows(server: &Server, bucket: &str) -> Vec<String> {
    let mut batches = Vec::new();
    for (name, bytes) in objects(server, bucket, "out") {
        if !name.ends_with(".parquet") {
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap_or_else(|e| panic!("{name} is not a whole Parquet file: {e}"))
            .build()
            .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    rows_of(&batches)
}

/// The windowed job over `s3://bucket/in/` into `s3://bucket/out/`, with
/// credentials in the tables' WITH options too.
fn s3_job(bucket: &str) -> String {
    let with = format!("'s3.access_key_id' = '{KEY_ID}', 's3.secret_access_key' = '{WITH_SECRET}'");
    job(700, "parquet", &format!("s3://{bucket}/in/"))
        .replace(
            "'format' = 'parquet',\n",
            &format!("'format' = 'parquet', {with},\n"),
        )
        .replace(
            "'path' = 'out/', 'format' = 'parquet')",
            &format!("'path' = 's3://{bucket}/out/', 'format' = 'parquet', {with})"),
        )
}

fn run_args(bucket: &str) -> Vec<String> {
    [
        "run",
        "job.sql",
        "--trigger",
        "available-now",
        "--drain",
        "--progress-json",
        "p.json",
        "--checkpoint",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("s3://{bucket}/ck")])
    .collect()
}

fn weir(ws: &Workspace, server: &Server, args: &[String], extra: &[(&str, &str)]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = env(server);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    ws.weir_env(&args, &all)
}

fn assert_no_secrets(what: &str, text: &str) {
    for secret in [ENV_SECRET, WITH_SECRET] {
        assert!(!text.contains(secret), "a secret appears in {what}:\n{text}");
    }
}

#[test]
fn moto_refuses_a_second_create_if_absent() {
    let Some(server) = server() else { return };
    let bucket = bucket(&server, "create");
    let loc = Location::open(&format!("s3://{bucket}/ck"), &options(&server), Create::Yes).unwrap();
    runtime().block_on(async {
        loc.put_if_absent("commits/1.json", Bytes::from_static(b"first"))
            .await
            .unwrap();
        let err = loc
            .put_if_absent("commits/1.json", Bytes::from_static(b"second"))
            .await
            .unwrap_err();
        assert!(matches!(err, weir_storage::Error::AlreadyExists { .. }), "{err}");
        assert_eq!(
            loc.get_required("commits/1.json").await.unwrap(),
            Bytes::from_static(b"first")
        );
        loc.verify_create_if_absent().await.unwrap();
    });
}

#[test]
fn checkpoint_source_and_sink_on_s3_survive_sigkills_and_faults_exactly_once() {
    let Some(server) = server() else { return };
    let (expected, _) = run_straight(700);
    let bucket = bucket(&server, "job");
    let ws = Workspace::new();
    upload_input(&server, &bucket, &ws);
    ws.write("job.sql", &s3_job(&bucket));
    let args = run_args(&bucket);
    let mut printed = String::new();

    for failpoint in ["sink-staged@2", "committed@4"] {
        let killed = weir(&ws, &server, &args, &[("WEIR_FAILPOINT", failpoint)]).killed();
        printed.push_str(&killed.stderr());
        printed.push_str(&killed.stdout());
        let partial = s3_sink_rows(&server, &bucket);
        assert!(
            partial.iter().all(|r| expected.binary_search(r).is_ok()),
            "after a kill at {failpoint}, only committed rows are visible"
        );
    }
    // The last run also meets transient faults on every S3 operation,
    // including creates that took effect and lost their answer.
    let done = weir(&ws, &server, &args, &[("WEIR_FAULTS", "rate=0.2,seed=5")]).ok();
    printed.push_str(&done.stderr());
    printed.push_str(&done.stdout());
    assert!(
        done.stderr().contains("resuming after epoch"),
        "{}",
        done.stderr()
    );
    assert_eq!(s3_sink_rows(&server, &bucket), expected);

    // Everything lives in the bucket: a checkpoint with commits, nothing
    // left of the create-if-absent probe, no secret in what was kept.
    assert!(!ws.path("job.checkpoint").exists());
    let ck = objects(&server, &bucket, "ck");
    assert!(ck.iter().any(|(n, _)| n.starts_with("commits/")), "{ck:?}");
    assert!(!ck.iter().any(|(n, _)| n.starts_with("_probe/")));
    for (name, bytes) in &ck {
        assert_no_secrets(name, &String::from_utf8_lossy(bytes));
    }
    printed.push_str(&std::fs::read_to_string(ws.path("p.json")).unwrap());
    assert_no_secrets("weir's output", &printed);
}

/// `weir run --cluster` of a windowed job with its checkpoint on S3: the
/// executors read the input, run the window aggregate and write its state
/// and sink files in the bucket with their own settings; a SIGKILL of the
/// driver once an epoch's files are staged is survived (the replay's
/// attempts are the ones named), and the output is exactly the local
/// run's. (The driver reads the Parquet footers to cut the parts; a job
/// whose input alone is read on a cluster, the driver denied the files, is
/// in `tests/cluster.rs`.)
#[test]
fn a_windowed_job_on_s3_runs_on_the_executors_exactly_once() {
    let Some(server) = server() else { return };
    let (expected, _) = run_straight(700);
    let bucket = bucket(&server, "cluster");
    let ws = Workspace::new();
    upload_input(&server, &bucket, &ws);
    ws.write("job.sql", &s3_job(&bucket));
    let env = env(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = crate::cluster::cluster_with_env(2, &env);
    let mut args = run_args(&bucket);
    args.extend(["--cluster".to_string(), c.scheduler.clone()]);
    let killed = weir(&ws, &server, &args, &[("WEIR_FAILPOINT", "sink-staged@2")]).killed();
    let done = weir(&ws, &server, &args, &[]).ok();
    assert!(
        done.stderr().contains("resuming after epoch"),
        "{}",
        done.stderr()
    );
    assert!(
        done.stderr().contains("; queries run on the cluster at"),
        "{}",
        done.stderr()
    );
    assert_eq!(s3_sink_rows(&server, &bucket), expected);
    // The state the executors wrote is in the bucket's checkpoint, named
    // after attempts.
    let ck = objects(&server, &bucket, "ck");
    assert!(
        ck.iter()
            .any(|(n, _)| n.starts_with("state/") && n.matches('.').count() >= 4),
        "{:?}",
        ck.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let printed = format!(
        "{}{}{}{}",
        killed.stdout(),
        killed.stderr(),
        done.stdout(),
        done.stderr()
    );
    assert_no_secrets("weir run --cluster's output", &printed);
    for (name, bytes) in &ck {
        assert_no_secrets(name, &String::from_utf8_lossy(bytes));
    }
}

/// `job` with its windowed query replaced by a stateless one.
fn stateless(job: &str) -> String {
    let head = job.split("INSERT INTO out").next().unwrap();
    format!(
        "{head}INSERT INTO out SELECT auction, price * 2 AS doubled, date_time FROM bids WHERE price % 7 <> 0;\n"
    )
}

/// A stateless job on S3 runs on the cluster's executors: they read the
/// input and stage the output files in the bucket themselves (with the
/// sink table's own settings); a SIGKILL of the driver once an epoch's
/// files are staged is survived, and the output is exactly a local run's.
#[test]
fn a_stateless_job_on_s3_runs_on_the_executors_exactly_once() {
    let Some(server) = server() else { return };
    let local = Workspace::new();
    three_files(&local);
    local.write("job.sql", &stateless(&job(700, "parquet", "in/")));
    local
        .weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    let expected = sink_rows(&local.path("out"));
    assert!(expected.len() > 2000, "{} rows", expected.len());

    let bucket = bucket(&server, "stateless");
    let ws = Workspace::new();
    upload_input(&server, &bucket, &ws);
    ws.write("job.sql", &stateless(&s3_job(&bucket)));
    let env = env(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = crate::cluster::cluster_with_env(2, &env);
    let mut args = run_args(&bucket);
    args.extend(["--cluster".to_string(), c.scheduler.clone()]);
    let killed = weir(&ws, &server, &args, &[("WEIR_FAILPOINT", "sink-staged@2")]).killed();
    let done = weir(&ws, &server, &args, &[]).ok();
    assert!(
        done.stderr().contains("; queries run on the cluster at"),
        "{}",
        done.stderr()
    );
    let mut got = s3_sink_rows(&server, &bucket);
    got.sort();
    assert_eq!(got, expected);
    // Every published file is an executor's (one per part of an epoch);
    // what a killed epoch staged and the replay did not choose is never
    // published.
    let published: Vec<String> = objects(&server, &bucket, "out")
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    assert!(!published.is_empty());
    assert!(
        published.iter().all(|n| n.matches('-').count() == 4),
        "{published:?}"
    );
    let printed = format!(
        "{}{}{}{}",
        killed.stdout(),
        killed.stderr(),
        done.stdout(),
        done.stderr()
    );
    assert_no_secrets("weir run --cluster's output", &printed);
}

/// `weir query` reads a quoted `s3://` path as a table, here and on a
/// cluster (whose executors open the bucket with their own settings), with
/// the same answer.
#[test]
fn a_quoted_s3_path_is_a_table_here_and_on_a_cluster() {
    let Some(server) = server() else { return };
    let bucket = bucket(&server, "query");
    let ws = Workspace::new();
    upload_input(&server, &bucket, &ws);
    let sql = format!(
        "SELECT count(*) AS n, sum(price) AS s, count(DISTINCT auction) AS a FROM 's3://{bucket}/in/'"
    );
    let args = |cluster: Option<&str>| -> Vec<String> {
        let mut a = vec!["query".to_string(), "--format".into(), "csv".into(), sql.clone()];
        if let Some(c) = cluster {
            a.extend(["--cluster".to_string(), c.to_string()]);
        }
        a
    };
    let here = weir(&ws, &server, &args(None), &[]).ok();
    assert!(here.stdout().starts_with("n,s,a\n3000,"), "{}", here.stdout());
    let env = env(&server);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = crate::cluster::cluster_with_env(2, &env);
    let there = weir(&ws, &server, &args(Some(&c.scheduler)), &[]).ok();
    assert_eq!(there.stdout(), here.stdout());
    let printed = format!("{}{}{}", here.stderr(), there.stdout(), there.stderr());
    assert_no_secrets("weir query's output", &printed);
}

/// A bucket that does not exist is an answer: not retried, and said in
/// words (it was retried 5 times and printed as the store's XML).
#[test]
fn a_missing_bucket_is_said_plainly_and_not_retried() {
    let Some(server) = server() else { return };
    let ws = Workspace::new();
    ws.write("job.sql", &s3_job("no-such-bucket-weir"));
    let e = weir(&ws, &server, &run_args("no-such-bucket-weir"), &[])
        .fails()
        .stderr();
    assert!(e.contains("the bucket does not exist"), "{e}");
    assert!(!e.contains("<?xml") && !e.contains("gave up after"), "{e}");
    assert_no_secrets("the error", &e);
}

/// An endpoint that refuses connections (a wrong port) is given up soon,
/// the error ending with the cause: the S3 client's own retries (10 within
/// 3 minutes by default) under each of Weir's 5 attempts took 30 s, and
/// its message said only "error sending request". No server needed.
#[test]
fn an_endpoint_that_refuses_connections_is_given_up_saying_why() {
    let port = crate::common::kafka::free_port();
    let ws = Workspace::new();
    ws.write("job.sql", &s3_job("any-bucket"));
    let args: Vec<String> = run_args("any-bucket");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let endpoint = format!("http://127.0.0.1:{port}");
    let e = ws
        .weir_env(
            &args,
            &[
                ("AWS_ENDPOINT", endpoint.as_str()),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", KEY_ID),
                ("AWS_SECRET_ACCESS_KEY", ENV_SECRET),
                ("AWS_ALLOW_HTTP", "true"),
            ],
        )
        .fails()
        .stderr();
    assert!(e.contains("gave up after 5 attempts"), "{e}");
    assert!(e.contains("after 2 retries"), "{e}");
    assert!(e.contains("(cause: Connection refused"), "{e}");
    assert_no_secrets("the error", &e);
}

#[test]
fn a_bucket_without_conditional_writes_is_refused_with_the_reason() {
    let Some(server) = server() else { return };
    let bucket = bucket(&server, "nocond");
    let ws = Workspace::new();
    upload_input(&server, &bucket, &ws);
    ws.write("job.sql", &s3_job(&bucket));
    // A client that cannot create-if-absent (object_store's setting for
    // stores without conditional writes: a create is NotImplemented), and an
    // endpoint that ignores `If-None-Match: *` and overwrites (simulated
    // over the real server by the fault wrapper).
    for (env, why) in [
        (
            ("AWS_CONDITIONAL_PUT", "disabled"),
            "does not support create-if-absent",
        ),
        (
            ("WEIR_FAULTS", "ignore_create=true"),
            "accepted a second create-if-absent",
        ),
    ] {
        let run = weir(&ws, &server, &run_args(&bucket), &[env]).fails();
        let e = run.stderr();
        for needle in [
            &format!("s3://{bucket}/ck") as &str,
            why,
            "exactly-once would be silently weakened",
            "If-None-Match: *",
            "aws_conditional_put",
        ] {
            assert!(e.contains(needle), "{env:?}: missing '{needle}' in:\n{e}");
        }
        assert_no_secrets("the refusal", &e);
        assert!(
            objects(&server, &bucket, "ck").is_empty(),
            "{env:?}: nothing written"
        );
        assert!(objects(&server, &bucket, "out").is_empty());
    }
}

#[test]
fn files_are_read_from_s3_by_any_name() {
    let Some(server) = server() else { return };
    let bucket = bucket(&server, "names");
    let ws = Workspace::new();
    // In the order they are read (by key), later rows in later files.
    let names = [
        "hash#1.parquet",
        "pct%41.parquet",
        "with space.parquet",
        "ünï.parquet",
    ];
    let loc = Location::open(&format!("s3://{bucket}/in"), &options(&server), Create::No).unwrap();
    let mut all = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let bids = gen_bids(i as u64, 100, BASE_MS + i as i64 * 100_000, 0);
        write_parquet(&ws.path("tmp.parquet"), &bids);
        let bytes = std::fs::read(ws.path("tmp.parquet")).unwrap();
        runtime().block_on(loc.put(name, Bytes::from(bytes))).unwrap();
        all.extend(bids);
    }
    ws.write("job.sql", &s3_job(&bucket));
    weir(&ws, &server, &run_args(&bucket), &[]).ok();
    assert_eq!(s3_sink_rows(&server, &bucket), batch_query(&all, ORACLE));
}
