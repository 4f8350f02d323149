//! The crash harness: a windowed job is killed with SIGKILL again and again,
//! at random instants and at every named step of the epoch protocol, and
//! restarted until its input is drained. Its output must then equal an
//! uninterrupted run's, row for row, and at every kill what a reader of the
//! sink sees must be whole committed rows, never a duplicate.
//!
//! CI runs 30 schedules (`crash_schedules_*`); the soak runs as many as asked
//! and reports how many survived:
//!
//! ```text
//! WEIR_CRASH_SCHEDULES=500 cargo test -p weir-cli --test end_to_end -- --ignored --nocapture crash::soak
//! ```
//!
//! A failure prints how to replay exactly that schedule (its seed and first
//! step, with `WEIR_CRASH_SCHEDULES=1`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::common::kafka;
use crate::common::*;

/// Three pipelines: a tumbling aggregate per auction and a hopping count
/// over the bids, and an interval join of bids with asks into a tumbling
/// aggregate (join state and window state, two sources read at different
/// rates), with rows late enough (disorder 3 s, delay 2 s) that some are
/// dropped, so that lateness decisions are replayed too.
const JOB: &str = "-- crash harness
CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
  WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet', 'max_rows_per_batch' = '250');
CREATE TABLE per_auction WITH ('connector' = 'files', 'path' = 'out/per_auction/', 'format' = 'parquet');
CREATE TABLE hopping WITH ('connector' = 'files', 'path' = 'out/hopping/', 'format' = 'parquet');
INSERT INTO per_auction
SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s, MAX(price) AS m
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction;
INSERT INTO hopping
SELECT window_start, window_end, COUNT(*) AS n, AVG(price) AS avg_price
FROM TABLE(HOP(TABLE bids, DESCRIPTOR(date_time), INTERVAL '5' SECOND, INTERVAL '15' SECOND))
GROUP BY window_start, window_end;
CREATE TABLE asks (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
  WITH ('connector' = 'files', 'path' = 'asks/', 'format' = 'parquet', 'max_rows_per_batch' = '170');
CREATE TABLE matched WITH ('connector' = 'files', 'path' = 'out/matched/', 'format' = 'parquet');
INSERT INTO matched
WITH m AS (
  SELECT b.auction, b.date_time AS ts, b.price AS bid, a.price AS ask
  FROM bids b JOIN asks a
    ON b.auction = a.auction AND a.date_time BETWEEN b.date_time - INTERVAL '1' SECOND AND b.date_time + INTERVAL '2' SECOND)
SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(bid) AS bids, SUM(ask) AS asks
FROM TABLE(TUMBLE(TABLE m, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction;
";

const STEPS: [&str; 8] = [
    "offsets-written",
    "before-sink",
    "mid-sink-write",
    "sink-staged",
    "state-written",
    "committed",
    "mid-publish",
    "published",
];

const SINKS: [&str; 3] = ["out/per_auction", "out/hopping", "out/matched"];

const RUN: [&str; 5] = ["run", "job.sql", "--trigger", "available-now", "--drain"];

fn setup() -> Workspace {
    let ws = Workspace::new();
    for f in 0..4 {
        let bids = gen_bids(40 + f, 800, BASE_MS + f as i64 * 40_000, 3000);
        write_parquet(&ws.path(&format!("in/bids-{f}.parquet")), &bids);
        let asks = gen_bids(90 + f, 400, BASE_MS + f as i64 * 40_000, 3000);
        write_parquet(&ws.path(&format!("asks/asks-{f}.parquet")), &asks);
    }
    ws.write("job.sql", JOB);
    ws
}

fn outputs(ws: &Workspace) -> Vec<Vec<String>> {
    SINKS.iter().map(|s| sink_rows(&ws.path(s))).collect()
}

/// The uninterrupted run's output, computed once.
fn reference() -> &'static Vec<Vec<String>> {
    static REF: OnceLock<Vec<Vec<String>>> = OnceLock::new();
    REF.get_or_init(|| {
        let ws = setup();
        ws.weir(&RUN).ok();
        let out = outputs(&ws);
        assert!(out.iter().all(|rows| rows.len() > 20), "a real amount of output");
        out
    })
}

/// The last committed epoch, from the checkpoint's commit log.
fn last_commit(ws: &Workspace) -> u64 {
    std::fs::read_dir(ws.path("job.checkpoint/commits"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

enum Ended {
    Done,
    Killed,
}

/// One process: killed at a failpoint, at an instant, or left to finish.
fn one_run(ws: &Workspace, failpoint: Option<String>, kill_after: Option<Duration>) -> Result<Ended, String> {
    one_run_on(ws, failpoint, kill_after, None)
}

/// Executors killed while a run was under way, in all.
static EXECUTORS_KILLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A kill of one of a cluster's executors, some time into a run.
struct ExecutorKill<'a> {
    cluster: &'a mut Cluster,
    executor: usize,
    after: Duration,
}

/// [`one_run`], on a cluster (`--cluster`) when given one, whose executor
/// `kill` names is killed on the way (the run then either finishes, its
/// tasks rerun on the other executor, or stops before its epoch commits).
fn one_run_on(
    ws: &Workspace,
    failpoint: Option<String>,
    kill_after: Option<Duration>,
    cluster: Option<(&str, Option<ExecutorKill>)>,
) -> Result<Ended, String> {
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(RUN);
    let mut executor_kill = None;
    if let Some((address, kill)) = cluster {
        cmd.args(["--cluster", address]);
        executor_kill = kill;
    }
    cmd.current_dir(ws.dir.path())
        .env_remove("WEIR_FAILPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(f) = &failpoint {
        cmd.env("WEIR_FAILPOINT", f);
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut lost_executor = false;
    if let Some(kill) = executor_kill {
        std::thread::sleep(kill.after);
        if child.try_wait().map_err(|e| e.to_string())?.is_none() {
            kill.cluster.kill_executor(kill.executor);
            lost_executor = true;
            EXECUTORS_KILLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if lost_executor {
            kill.cluster.restart_executor(kill.executor);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        return match out.status.success() {
            true => Ok(Ended::Done),
            // The job gave up on its epoch: nothing of it was committed.
            false if lost_executor && stderr.contains("was not committed") => Ok(Ended::Killed),
            false => Err(format!(
                "weir failed after losing an executor ({:?}):\n{stderr}",
                out.status
            )),
        };
    }
    if let Some(after) = kill_after {
        std::thread::sleep(after);
        if child.try_wait().map_err(|e| e.to_string())?.is_none() {
            let _ = child.kill(); // SIGKILL
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    match (out.status.success(), out.status.signal()) {
        (true, _) => Ok(Ended::Done),
        (false, Some(9)) => Ok(Ended::Killed),
        _ => Err(format!(
            "weir failed instead of recovering ({:?}, failpoint {failpoint:?}, kill after {kill_after:?}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Runs one schedule: kills (the first at `first_step`, when given), then
/// restarts until done. Returns how many kills it took.
fn schedule(seed: u64, first_step: Option<&str>) -> Result<usize, String> {
    schedule_on(seed, first_step, None)
}

/// [`schedule`], on a cluster when given one: the driver runs with
/// `--cluster`, and some of its runs also lose an executor on the way.
fn schedule_on(
    seed: u64,
    first_step: Option<&str>,
    mut cluster: Option<&mut Cluster>,
) -> Result<usize, String> {
    let expected = reference();
    let ws = setup();
    let mut rng = Rng(seed);
    let mut kills = 0;
    for attempt in 0..60 {
        if let Some(c) = cluster.as_deref_mut()
            && attempt > 0
            && attempt < 8
            && rng.below(3) == 0
        {
            let kill = ExecutorKill {
                executor: rng.below(2) as usize,
                after: Duration::from_millis(rng.below(1500)),
                cluster: &mut *c,
            };
            let address = kill.cluster.scheduler.clone();
            match one_run_on(&ws, None, None, Some((&address, Some(kill))))? {
                Ended::Done => return check_done(&ws, expected, kills),
                Ended::Killed => {
                    kills += 1;
                    check_killed(&ws, expected, kills, &None, &None)?;
                    continue;
                }
            }
        }
        // After enough kills, let it finish.
        let (failpoint, kill_after) = if attempt >= 8 {
            (None, None)
        } else if attempt == 0 && first_step.is_some() || rng.below(2) == 0 {
            let step = match first_step {
                Some(s) if attempt == 0 => s,
                _ => STEPS[rng.below(STEPS.len() as u64) as usize],
            };
            let epoch = last_commit(&ws) + 1 + rng.below(4);
            (Some(format!("{step}@{epoch}")), None)
        } else {
            (None, Some(Duration::from_millis(rng.below(500))))
        };
        let address = cluster.as_deref().map(|c| c.scheduler.clone());
        match one_run_on(
            &ws,
            failpoint.clone(),
            kill_after,
            address.as_deref().map(|a| (a, None)),
        )? {
            Ended::Done => return check_done(&ws, expected, kills),
            Ended::Killed => {
                kills += 1;
                check_killed(&ws, expected, kills, &failpoint, &kill_after)?;
            }
        }
    }
    Err("still not done after 60 runs".into())
}

/// A finished run's output is the uninterrupted run's.
fn check_done(ws: &Workspace, expected: &[Vec<String>], kills: usize) -> Result<usize, String> {
    let got = outputs(ws);
    for (i, sink) in SINKS.iter().enumerate() {
        if got[i] != expected[i] {
            let missing = expected[i].iter().filter(|r| !got[i].contains(r)).count();
            let extra = got[i].len() + missing - expected[i].len();
            return Err(format!(
                "{sink} differs from the uninterrupted run after {kills} kills: \
                 {missing} rows missing, {extra} extra"
            ));
        }
    }
    Ok(kills)
}

/// What a reader sees after a kill: committed rows only, each once.
fn check_killed(
    ws: &Workspace,
    expected: &[Vec<String>],
    kills: usize,
    failpoint: &Option<String>,
    kill_after: &Option<Duration>,
) -> Result<(), String> {
    let got = outputs(ws);
    for (i, sink) in SINKS.iter().enumerate() {
        let mut seen = got[i].clone();
        seen.dedup();
        if seen.len() != got[i].len() {
            return Err(format!("{sink} shows a row twice after kill {kills}"));
        }
        if let Some(r) = got[i].iter().find(|r| expected[i].binary_search(r).is_err()) {
            return Err(format!(
                "{sink} shows a row the uninterrupted run never wrote after kill {kills} \
                 ({failpoint:?}, {kill_after:?}): {r}"
            ));
        }
    }
    Ok(())
}

/// Runs schedules `from..to` of a family seeded by `base`; the first kill of
/// schedule i is at step `i % 8`, so every step is hit.
fn run_schedules(base: u64, from: u64, to: u64) -> (u64, Vec<String>) {
    let mut survived = 0;
    let mut failures = Vec::new();
    let mut kills = 0;
    for i in from..to {
        let seed = base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let step = STEPS[(i % STEPS.len() as u64) as usize];
        match schedule(seed, Some(step)) {
            Ok(k) => {
                survived += 1;
                kills += k;
            }
            Err(e) => failures.push(format!(
                "schedule {i} (replay: WEIR_CRASH_SEED={seed} WEIR_CRASH_STEP={step} WEIR_CRASH_SCHEDULES=1): {e}"
            )),
        }
    }
    println!(
        "crash schedules {from}..{to}: survived {survived} of {}, {kills} kills in all",
        to - from
    );
    (survived, failures)
}

const CI_BASE: u64 = 0x5EED_0000_0000_0001;

#[test]
fn crash_schedules_0_to_15() {
    let (_, failures) = run_schedules(CI_BASE, 0, 15);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn crash_schedules_15_to_30() {
    let (_, failures) = run_schedules(CI_BASE, 15, 30);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The cluster schedules: the same job run with `--cluster` on a scheduler
/// and two executors (the executors read every epoch's input), its driver
/// killed at failpoints and at random instants as above, and a third of its
/// runs losing an executor (SIGKILL) at a random instant, started again
/// after the run.
#[test]
fn crash_schedules_on_a_cluster() {
    let mut c = crate::cluster::cluster_with_env(2, &[]);
    let mut failures = Vec::new();
    let mut kills = 0;
    for i in 0..3u64 {
        let seed = 0xC105_7E40_0000_0000 + i;
        let step = STEPS[(i * 3 % STEPS.len() as u64) as usize];
        match schedule_on(seed, Some(step), Some(&mut c)) {
            Ok(k) => kills += k,
            Err(e) => failures.push(format!(
                "cluster schedule {i} (seed {seed}, first step {step}): {e}"
            )),
        }
    }
    let executors = EXECUTORS_KILLED.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "cluster crash schedules: {} of 3 survived, {kills} runs stopped in all, {executors} executors killed mid-run",
        3 - failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(kills >= 3, "every schedule was killed at least once");
    assert!(executors >= 1, "an executor was killed mid-run");
}

/// The soak: `WEIR_CRASH_SCHEDULES` schedules (default 200) from
/// `WEIR_CRASH_SEED` (default: the clock), reporting how many survived.
#[test]
#[ignore]
fn crash_soak() {
    let n: u64 = std::env::var("WEIR_CRASH_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (base, single) = match std::env::var("WEIR_CRASH_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(seed) => (seed, n == 1),
        None => (
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
            false,
        ),
    };
    let (survived, failures) = if single {
        // Replaying one failed schedule: its seed is used as is.
        match schedule(base, std::env::var("WEIR_CRASH_STEP").ok().as_deref()) {
            Ok(_) => (1, Vec::new()),
            Err(e) => (0, vec![e]),
        }
    } else {
        run_schedules(base, 0, n)
    };
    println!("crash soak: survived {survived} of {n} schedules (seed base {base})");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The Kafka schedule: the windowed job over a topic of four partitions,
/// filled by a real producer with 1,000,000 JSON bids
/// (`WEIR_KAFKA_CRASH_BIDS` to change), killed at failpoints and at random
/// instants, restarted until drained; then its output must equal
/// DataFusion's batch answer over the same bids exactly, and at every kill
/// a reader of the sink sees only rows of that answer, each once. Each
/// epoch's offsets entry names the exact range of each partition, so a
/// replayed epoch reads the same records.
#[test]
fn crash_schedules_kafka() {
    let Some(broker) = kafka::Broker::any() else {
        return;
    };
    let n: usize = std::env::var("WEIR_KAFKA_CRASH_BIDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // Out of order within each partition by up to 1.5 s, under a 2 s delay:
    // no bid is late, so the batch answer is over all of them.
    let bids = gen_bids(2026, n, BASE_MS, 1500);
    let topic = format!("crash-bids-{n}");
    broker.create_topic(&topic, 4);
    kafka::produce_bids(&broker, &topic, 4, &bids);
    let expected = batch_query(&bids, ORACLE);
    let job = kafka::kafka_job(&broker.addr, &topic, ", 'max_rows_per_batch' = '100000'");
    let mut failures = Vec::new();
    let mut kills = 0;
    for i in 0..4u64 {
        let seed = 0x4B41_464B_A000_0000 + i;
        match kafka_schedule(&job, seed, STEPS[(i * 2 % 7) as usize], &expected) {
            Ok(k) => kills += k,
            Err(e) => failures.push(format!("kafka schedule {i} (seed {seed}): {e}")),
        }
    }
    println!(
        "kafka crash schedules: {} of 4 survived, {kills} kills in all",
        4 - failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(kills >= 4, "every schedule was killed at least once");
}

fn kafka_schedule(job: &str, seed: u64, first_step: &str, expected: &[String]) -> Result<usize, String> {
    let ws = Workspace::new();
    ws.write("job.sql", job);
    let mut rng = Rng(seed);
    let mut kills = 0;
    for attempt in 0..40 {
        let (failpoint, kill_after) = if attempt >= 6 {
            (None, None)
        } else if attempt == 0 || rng.below(2) == 0 {
            let step = if attempt == 0 {
                first_step
            } else {
                STEPS[rng.below(STEPS.len() as u64) as usize]
            };
            let epoch = last_commit(&ws) + 1 + rng.below(3);
            (Some(format!("{step}@{epoch}")), None)
        } else {
            (None, Some(Duration::from_millis(300 + rng.below(3000))))
        };
        match one_run(&ws, failpoint.clone(), kill_after)? {
            Ended::Done => {
                let got = sink_rows(&ws.path("out"));
                if got != expected {
                    let missing = expected.iter().filter(|r| got.binary_search(r).is_err()).count();
                    return Err(format!(
                        "the output differs from the batch answer after {kills} kills: {missing} rows missing, \
                         {} rows in all (expected {})",
                        got.len(),
                        expected.len()
                    ));
                }
                return Ok(kills);
            }
            Ended::Killed => {
                kills += 1;
                let got = sink_rows(&ws.path("out"));
                let mut seen = got.clone();
                seen.dedup();
                if seen.len() != got.len() {
                    return Err(format!("a row shows twice after kill {kills}"));
                }
                if let Some(r) = got.iter().find(|r| expected.binary_search(r).is_err()) {
                    return Err(format!(
                        "a row the batch answer does not have after kill {kills} ({failpoint:?}, {kill_after:?}): {r}"
                    ));
                }
            }
        }
    }
    Err("still not done after 40 runs".into())
}
