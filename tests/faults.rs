//! Storage faults, end to end: the windowed job of `e2e.rs` run by the real
//! binary while every store it opens (checkpoint, source, sink) fails on
//! purpose (`WEIR_FAULTS`, see `weir_storage::faults`).
//!
//! - Transient faults (a fifth of all operations, some writes failing after
//!   they took effect) are retried away: the output is exactly the
//!   uninterrupted run's, and the run reports that faults were injected on
//!   reads and writes and retried, so this test cannot pass by injecting
//!   nothing.
//! - A permanent failure of one object stops the job with an error naming
//!   it (no panic); a rerun without faults resumes and produces exactly the
//!   uninterrupted output.
//! - A store that ignores create-if-absent is refused before anything is
//!   written.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use crate::common::*;

/// A fifth of all operations fail; 2 ms more for every operation.
const FAULTS: &str = "rate=0.2,latency_ms=2,seed=7";

/// The numbers of `weir: WEIR_FAULTS injected ...; storage: ...`.
#[derive(Debug, Default)]
struct Report {
    reads: u64,
    writes: u64,
    after_write: u64,
    permanent: u64,
    retries: u64,
    gave_up: u64,
}

fn report(stderr: &str) -> Report {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("weir: WEIR_FAULTS injected"))
        .unwrap_or_else(|| panic!("no fault report in:\n{stderr}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    // The last number (creates confirmed by reading back) depends on which
    // commits happen to lose their answer; the storage unit tests cover it.
    let [
        reads,
        writes,
        after_write,
        permanent,
        retries,
        gave_up,
        _confirmed,
    ] = numbers[..]
    else {
        panic!("unexpected fault report: {line}");
    };
    Report {
        reads,
        writes,
        after_write,
        permanent,
        retries,
        gave_up,
    }
}

const RUN: [&str; 7] = [
    "run",
    "job.sql",
    "--trigger",
    "available-now",
    "--drain",
    "--progress-json",
    "p.json",
];

fn workspace() -> Workspace {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    ws
}

#[test]
fn transient_faults_on_every_store_are_retried_and_change_nothing() {
    let (expected, _) = run_straight(700);
    let ws = workspace();
    let run = ws.weir_env(&RUN, &[("WEIR_FAULTS", FAULTS)]).ok();
    assert_eq!(sink_rows(&ws.path("out")), expected);
    let p = progress(&ws.path("p.json"));
    assert_eq!(sum_field(&p, "rows_in"), 3000, "every row read exactly once");

    let r = report(&run.stderr());
    assert!(
        r.reads >= 5 && r.writes >= 5 && r.after_write >= 1,
        "faults on reads and writes, some after the write: {r:?}"
    );
    assert_eq!(r.permanent, 0);
    assert_eq!(r.gave_up, 0, "{r:?}");
    assert!(
        r.retries >= r.reads + r.writes,
        "every injected fault was retried: {r:?}"
    );

    // Another seed fails other operations, and still changes nothing.
    let ws2 = workspace();
    ws2.weir_env(&RUN, &[("WEIR_FAULTS", "rate=0.3,seed=99")]).ok();
    assert_eq!(sink_rows(&ws2.path("out")), expected);
}

#[test]
fn a_sigkill_under_transient_faults_then_a_faulty_restart_is_still_exactly_once() {
    let (expected, _) = run_straight(700);
    for failpoint in ["sink-staged@2", "committed@3"] {
        let ws = workspace();
        ws.weir_env(&RUN, &[("WEIR_FAULTS", FAULTS), ("WEIR_FAILPOINT", failpoint)])
            .killed();
        let run = ws
            .weir_env(&RUN, &[("WEIR_FAULTS", "rate=0.2,latency_ms=2,seed=11")])
            .ok();
        assert_eq!(sink_rows(&ws.path("out")), expected, "killed at {failpoint}");
        assert!(report(&run.stderr()).retries > 0);
    }
}

#[test]
fn a_permanent_failure_names_the_object_and_a_clean_rerun_resumes_exactly_once() {
    let (expected, _) = run_straight(700);
    // One prefix on each kind of store: the checkpoint's commits and state,
    // a source file, the sink's manifests.
    for (prefix, object) in [
        ("commits/", "job.checkpoint/commits/00000000000000000001.json"),
        ("state/", "job.checkpoint/state/"),
        ("bids-1.parquet", "in/bids-1.parquet"),
        ("_weir/manifests/", "out/_weir/manifests/"),
        ("part-", "part-0000000001-"),
    ] {
        let ws = workspace();
        let spec = format!("{FAULTS},permanent={prefix}");
        let failed = ws.weir_env(&RUN, &[("WEIR_FAULTS", spec.as_str())]).fails();
        let e = failed.stderr();
        let error = e
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("{prefix}: no error line in:\n{e}"));
        assert!(
            error.contains(object)
                && error.contains("gave up after 5 attempts")
                && error.contains("injected permanent fault"),
            "{prefix}: {error}"
        );
        assert_eq!(error.matches("injected").count(), 1, "each cause once: {error}");
        // State and sink files fail while the epoch is written: it is
        // left for the next run to replay, and the error says so.
        if prefix == "state/" || prefix == "_weir/manifests/" {
            assert!(
                e.contains("was not committed; the next run replays it"),
                "{prefix}: {e}"
            );
        }
        // A commit that failed may have been written (a store can fail
        // a write it kept); publishing fails after the commit.
        if prefix == "commits/" {
            assert!(
                e.contains("(epoch 1 was not committed, or its commit was written but not confirmed: the next run looks"),
                "{prefix}: {e}"
            );
        }
        if prefix == "part-" {
            assert!(
                e.contains("(epoch 1 is committed; the next run publishes its output, as after a crash)"),
                "{prefix}: {e}"
            );
        }
        let r = report(&e);
        assert!(r.permanent >= 5 && r.gave_up >= 1, "{prefix}: {r:?}");

        // What is visible is committed output only.
        let partial = sink_rows(&ws.path("out"));
        assert!(
            partial.iter().all(|row| expected.binary_search(row).is_ok()),
            "{prefix}"
        );
        assert!(partial.len() < expected.len(), "{prefix}: the job stopped early");

        ws.weir(&RUN).ok();
        assert_eq!(sink_rows(&ws.path("out")), expected, "after {prefix}");
    }
}

#[test]
fn a_store_that_ignores_create_if_absent_is_refused_before_anything_is_written() {
    let ws = workspace();
    let e = ws
        .weir_env(&RUN, &[("WEIR_FAULTS", "ignore_create=true")])
        .fails()
        .stderr();
    for needle in [
        "job.checkpoint",
        "accepted a second create-if-absent",
        "exactly-once would be silently weakened",
        "aws_conditional_put",
    ] {
        assert!(e.contains(needle), "missing '{needle}' in:\n{e}");
    }
    let written: Vec<_> = walk(&ws.path("job.checkpoint"));
    assert!(written.is_empty(), "nothing written: {written:?}");
    assert!(parquet_files(&ws.path("out")).is_empty());
}

#[test]
fn a_bad_fault_specification_is_named() {
    let ws = workspace();
    for (spec, needle) in [
        ("rate=2", "weir.fault_rate must be a number from 0 to 1"),
        ("rat=0.1", "unknown key 'rat'"),
    ] {
        let e = ws.weir_env(&RUN, &[("WEIR_FAULTS", spec)]).fails().stderr();
        assert!(e.contains("WEIR_FAULTS") && e.contains(needle), "{e}");
    }
}

/// Every file under `dir`, at any depth.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The retry limits are settings: a job file's `SET storage.retry_attempts`
/// changes how often a failing operation is tried (default 5), and its
/// backoff settings are checked like any other.
#[test]
fn retry_limits_are_settings() {
    let ws = workspace();
    let text = format!(
        "SET storage.retry_attempts = 2;\nSET storage.retry_backoff = '1ms';\nSET storage.retry_max_backoff = '5ms';\n{}",
        job(700, "parquet", "in/")
    );
    ws.write("job.sql", &text);
    // Only the permanent fault (no random transient ones, which two
    // attempts may also give up on): the first commit is tried exactly
    // twice.
    let e = ws
        .weir_env(&RUN, &[("WEIR_FAULTS", "rate=0,permanent=commits/")])
        .fails()
        .stderr();
    let error = e.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(error.contains("gave up after 2 attempts"), "{e}");
    assert!(error.contains("commits/"), "{e}");
    let r = report(&e);
    assert!(r.permanent == 2 && r.gave_up == 1 && r.retries == 1, "{r:?}");

    ws.write(
        "job.sql",
        &format!("SET storage.retry_attempts = 0;\n{}", job(700, "parquet", "in/")),
    );
    let e = ws.weir(&RUN).fails().stderr();
    assert!(
        e.contains("storage.retry_attempts") && e.contains("from 1 to 100"),
        "{e}"
    );
}
