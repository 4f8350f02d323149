//! Checkpoints as an operator meets them: `weir checkpoint inspect`,
//! `weir checkpoint rollback`, and damaged checkpoints.
//!
//! The damaged checkpoints are committed fixtures under
//! `tests/fixtures/damaged/<case>/` (a job, its input, its sink and its
//! checkpoint with one thing broken). Each must stop `weir run` with an
//! error naming the broken file and its epoch, and show up in `weir
//! checkpoint inspect` as a problem; none may be skipped silently. The
//! fixtures are made by the ignored test `regenerate_damaged_fixtures`
//! (`cargo test -p weir-cli --test end_to_end -- --ignored checkpoints::regenerate`),
//! which needs rerunning only when the checkpoint format changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use crate::common::*;

const JOB: &str = "-- fixture job
CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
  WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet', 'max_rows_per_batch' = '100');
CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
INSERT INTO out
SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction;
";

const ORACLE: &str = "SELECT date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS ws,
        date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') + INTERVAL '10' SECOND AS we,
        auction, COUNT(*), SUM(price)
 FROM bids GROUP BY 1, 2, 3";

/// `JOB` over 1,000 bids in a new workspace, not run yet.
fn job_workspace() -> (Workspace, Vec<Bid>) {
    let ws = Workspace::new();
    let bids = gen_bids(5, 1000, BASE_MS, 1500);
    write_parquet(&ws.path("in/bids.parquet"), &bids);
    ws.write("job.sql", JOB);
    (ws, bids)
}

/// `JOB` run into `ck/` over 1,000 bids (10 epochs of 100 rows).
fn ran_job() -> (Workspace, Vec<Bid>) {
    let (ws, bids) = job_workspace();
    ws.weir(&RUN_CK).ok();
    (ws, bids)
}

/// Runs `JOB` on to its end, drained, and checks that its sink holds
/// every row once.
fn finishes_with_every_row_once(ws: &Workspace, bids: &[Bid]) {
    ws.weir(&[&RUN_CK[..], &["--drain"]].concat()).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(bids, ORACLE));
}

/// The epochs committed in `ck/`, ascending.
fn committed(ws: &Workspace) -> Vec<u64> {
    let mut c: Vec<u64> = std::fs::read_dir(ws.path("ck/commits"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap()[..20].parse().unwrap())
        .collect();
    c.sort();
    c
}

fn commit(epoch: u64) -> String {
    format!("ck/commits/{epoch:020}.json")
}

#[test]
fn inspect_shows_epochs_state_and_sinks_and_rollback_replaces_later_output() {
    let (ws, bids) = job_workspace();
    ws.weir(&RUN_CK).ok(); // 10 epochs of 100 rows

    let shown = ws.weir(&["checkpoint", "inspect", "ck"]).ok().stdout();
    for want in [
        "operator   p0-agg0 window-aggregate keyed by (window_start, window_end, auction)",
        "source     bids (connector=files path=in/ format=parquet)",
        "sink       out -> file://",
        "epochs (10 committed",
        "bids.parquet@900",
        "state (as of epoch 10)",
        "p0-agg0",
        "source-bids",
        "lease      free",
    ] {
        assert!(shown.contains(want), "inspect shows `{want}`:\n{shown}");
    }
    assert!(!shown.contains("problems"), "{shown}");
    let epoch_lines = shown.lines().filter(|l| l.contains(" committed ")).count();
    assert_eq!(epoch_lines, 10, "{shown}");

    // Back to epoch 4: later commits, offsets, state and output go.
    let before: Vec<PathBuf> = parquet_files(&ws.path("out"));
    assert!(before.len() >= 3, "output in several epochs: {before:?}");
    let r = ws
        .weir(&["checkpoint", "rollback", "ck", "--to", "4"])
        .ok()
        .stdout();
    assert!(r.contains("removed commits of epochs 5 to 10"), "{r}");
    assert!(
        r.contains("sink out (file://") && r.contains("/out): removed"),
        "{r}"
    );
    assert!(!ws.path(&commit(5)).exists() && ws.path(&commit(4)).exists());
    for f in parquet_files(&ws.path("out")) {
        let name = f.file_name().unwrap().to_str().unwrap();
        let epoch: u64 = name[5..15].parse().unwrap();
        assert!(epoch <= 4, "{name} is of a rolled-back epoch");
    }
    let shown = ws.weir(&["checkpoint", "inspect", "ck"]).ok().stdout();
    assert!(
        shown.contains("epochs (4 committed") && shown.contains("state (as of epoch 4)"),
        "{shown}"
    );

    // A rollback to an epoch that is not there is refused, changing nothing.
    let e = ws
        .weir(&["checkpoint", "rollback", "ck", "--to", "9"])
        .fails()
        .stderr();
    assert!(
        e.contains("epoch 9") && e.contains("not a retained committed epoch"),
        "{e}"
    );

    // Running again redoes epochs 5.. and the sink holds every row once.
    let again = ws.weir(&[&RUN_CK[..], &["--drain"]].concat()).ok();
    assert!(
        again.stderr().contains("resuming after epoch 4"),
        "{}",
        again.stderr()
    );
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
}

/// The last commit's offsets entry damaged: the run stops naming it
/// (the commit alone would let it go on, but a rollback or a replay needs
/// the entry), and a rollback to an earlier epoch recovers.
#[test]
fn a_damaged_offsets_entry_of_the_last_commit_stops_the_run() {
    let (ws, bids) = ran_job();
    let last = last_commit(&ws);
    let entry = ws.path(&format!("ck/offsets/{last:020}.json"));
    let text = std::fs::read_to_string(&entry).unwrap();
    std::fs::write(&entry, &text[..10]).unwrap();
    let e = ws.weir(&RUN_CK).fails().stderr();
    assert!(
        e.contains(&format!("offsets/{last:020}.json (epoch {last})")) && e.contains("rollback"),
        "{e}"
    );
    let to = (last - 1).to_string();
    ws.weir(&["checkpoint", "rollback", "ck", "--to", &to]).ok();
    finishes_with_every_row_once(&ws, &bids);
}

/// A rollback killed after deleting the later commits, before their
/// offsets, state and output (what `rollback.json` marks): the next run
/// finishes it, then redoes the epochs, every row once.
#[test]
fn a_rollback_killed_midway_is_finished_by_the_next_run() {
    let (ws, bids) = ran_job();
    let last = last_commit(&ws);
    ws.write("ck/rollback.json", "{\"to\": 4}");
    for e in 5..=last {
        std::fs::remove_file(ws.path(&commit(e))).unwrap();
    }
    // `inspect` says so, and calls none of the files left damage.
    let inspect = ws.weir(&["checkpoint", "inspect", "ck"]).ok().stdout();
    assert!(
        inspect.contains("rollback   to epoch 4, interrupted") && !inspect.contains("problems"),
        "{inspect}"
    );
    let r = ws.weir(&[&RUN_CK[..], &["--drain"]].concat()).ok();
    assert!(
        r.stderr().contains("finished the rollback to epoch 4")
            && r.stderr().contains("resuming after epoch 4"),
        "{}",
        r.stderr()
    );
    assert!(!ws.path("ck/rollback.json").exists());
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
}

/// A log entry damaged in the middle of the retained epochs (an offsets
/// entry or a commit truncated or gone): the run stops naming it, as
/// `inspect` reports it, rather than going on from the last commit and
/// leaving a checkpoint that cannot be rolled back through; a rollback to
/// the epoch before it recovers, every row once.
#[test]
fn a_damaged_log_entry_in_the_middle_stops_the_run() {
    for (log, truncate) in [
        ("offsets", true),
        ("offsets", false),
        ("commits", true),
        ("commits", false),
    ] {
        let (ws, bids) = ran_job();
        let last = last_commit(&ws);
        let middle = last / 2;
        assert!(middle > 1, "{last}");
        let entry = ws.path(&format!("ck/{log}/{middle:020}.json"));
        if truncate {
            let text = std::fs::read_to_string(&entry).unwrap();
            std::fs::write(&entry, &text[..10]).unwrap();
        } else {
            std::fs::remove_file(&entry).unwrap();
        }
        let case = format!("{log}, truncated: {truncate}");
        let named = format!("{log}/{middle:020}.json");
        let e = ws.weir(&RUN_CK).fails().stderr();
        assert!(e.contains(&named) && e.contains("damaged"), "{case}: {e}");
        assert_eq!(last_commit(&ws), last, "{case}: nothing committed");
        let inspect = ws.weir(&["checkpoint", "inspect", "ck"]).fails().stdout();
        assert!(inspect.contains(&named), "{case}: {inspect}");
        let to = (middle - 1).to_string();
        ws.weir(&["checkpoint", "rollback", "ck", "--to", &to]).ok();
        finishes_with_every_row_once(&ws, &bids);
    }
}

/// A damaged file is one problem, however many times inspect reads it
/// (metadata.json is read for each state table).
#[test]
fn inspect_lists_each_problem_once() {
    let (ws, _) = ran_job();
    let meta = ws.path("ck/metadata.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, &text[..30]).unwrap();
    let r = ws.weir(&["checkpoint", "inspect", "ck"]).fails();
    let out = r.stdout();
    assert_eq!(out.matches("metadata.json: not valid JSON").count(), 1, "{out}");
    assert!(r.stderr().contains("(1 problem"), "{}", r.stderr());
}

/// A copy of a checkpoint left beside the original is the same query, but
/// it must not write or roll back the original's sink folder: rolling the
/// copy back deleted output the original had committed. A checkpoint that
/// moved (the old place gone) keeps its folder, and the folder's owner
/// record follows it.
#[test]
fn a_copy_of_a_checkpoint_may_not_touch_the_originals_output_but_a_moved_one_may() {
    let (ws, bids) = ran_job();
    let files = parquet_files(&ws.path("out"));
    copy_dir(&ws.path("ck"), &ws.path("copy"));
    let refused = |r: Run| {
        let e = r.fails().stderr();
        assert!(
            e.contains("is a copy of it") && e.contains("/ck (or, if this copy is to take over"),
            "{e}"
        );
        assert_eq!(parquet_files(&ws.path("out")), files, "nothing deleted");
    };
    refused(ws.weir(&["checkpoint", "rollback", "copy", "--to", "4"]));
    let run_on = |ck: &str, extra: &[&str]| {
        ws.weir(
            &[
                &["run", "job.sql", "--trigger", "available-now", "--checkpoint", ck][..],
                extra,
            ]
            .concat(),
        )
    };
    refused(run_on("copy", &[]));

    // Moved: the old place gone, the folder is the moved checkpoint's.
    std::fs::rename(ws.path("ck"), ws.path("moved")).unwrap();
    run_on("moved", &[]).ok();
    let owner = std::fs::read_to_string(ws.path("out/_weir/owner.json")).unwrap();
    assert!(owner.contains("/moved\""), "{owner}");
    // The copy still lies beside it, and is still refused; the moved one
    // rolls back and finishes with every row once.
    refused_copy_of(&ws, "moved");
    ws.weir(&["checkpoint", "rollback", "moved", "--to", "4"]).ok();
    run_on("moved", &["--drain"]).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
}

/// `copy` (a copy of the checkpoint `of`) is refused a rollback.
fn refused_copy_of(ws: &Workspace, of: &str) {
    let e = ws
        .weir(&["checkpoint", "rollback", "copy", "--to", "4"])
        .fails()
        .stderr();
    assert!(
        e.contains("is a copy of it") && e.contains(&format!("/{of} (or")),
        "{e}"
    );
}

/// The state files in `ck/state/<op>/`, by name.
fn state_file_names(ws: &Workspace, op: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ws.path(&format!("ck/state/{op}")))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The state files commit `epoch` names for `op`, per shard (epochs).
fn named_by_commit(ws: &Workspace, epoch: u64, op: &str) -> Vec<Vec<u64>> {
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path(&commit(epoch))).unwrap()).unwrap();
    serde_json::from_value(c["state"][op]["shards"].clone()).unwrap()
}

/// Keyed state is checkpointed one file per shard, and each commit names
/// the files that restore it; the job stops and resumes under 2, 3 and 1
/// threads and gives the batch answer. A file the commit does not name (a
/// crashed attempt's, here garbage) is never read; a file it names that is
/// gone stops the job, naming it.
#[test]
fn state_is_one_file_per_shard_and_restores_from_the_files_its_commit_names() {
    let ws = Workspace::new();
    let bids = gen_bids(9, 1500, BASE_MS, 1500);
    write_parquet(&ws.path("in/bids.parquet"), &bids);
    ws.write("job.sql", JOB);
    let once = |threads: &str| {
        let mut args = RUN_CK.to_vec();
        args[3] = "once";
        args.extend(["--threads", threads]);
        ws.weir(&args).ok();
    };
    once("2");
    once("2");
    let names = state_file_names(&ws, "p0-agg0");
    for want in [
        "00000000000000000001.snapshot.0-of-2.parquet",
        "00000000000000000001.snapshot.1-of-2.parquet",
        "00000000000000000002.snapshot.1-of-2.parquet",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    assert_eq!(named_by_commit(&ws, 2, "p0-agg0"), vec![vec![2], vec![2]]);
    assert_eq!(named_by_commit(&ws, 2, "source-bids"), vec![vec![2]]);

    // Garbage under the name an old layout would read first for epoch 2.
    std::fs::write(
        ws.path("ck/state/p0-agg0/00000000000000000002.delta.parquet"),
        b"not parquet",
    )
    .unwrap();
    once("3");
    assert_eq!(
        named_by_commit(&ws, 3, "p0-agg0"),
        vec![vec![3], vec![3], vec![3]]
    );
    let shown = ws.weir(&["checkpoint", "inspect", "ck"]).ok().stdout();
    let line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("p0-agg0 "))
        .unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (cells[2], cells[3]),
        ("3", "3"),
        "3 shards from epoch 3's snapshot: {line}"
    );
    // Files and bytes are what a restore reads (epoch 3's three shards);
    // the older files kept for rollback, and the garbage, are `other`.
    let on_disk = state_file_names(&ws, "p0-agg0").len();
    assert_eq!(cells[1], "3", "{line}");
    assert!(
        line.contains(&format!("{} file(s), ", on_disk - 3)),
        "{on_disk} files on disk: {line}"
    );
    once("1");
    assert_eq!(named_by_commit(&ws, 4, "p0-agg0"), vec![vec![4]]);
    assert!(state_file_names(&ws, "p0-agg0").contains(&"00000000000000000004.snapshot.parquet".to_string()));

    // The rest in one process: a snapshot of both shards, then deltas.
    ws.weir(&[&RUN_CK[..], &["--threads", "2"]].concat()).ok();
    let last = last_commit(&ws);
    assert!(last >= 7, "several epochs: {last}");
    let chains = named_by_commit(&ws, last, "p0-agg0");
    assert_eq!(chains.len(), 2, "{chains:?}");
    assert!(chains.iter().all(|c| c[0] == 5 && c.len() > 1), "{chains:?}");

    // A named file that is gone: the job stops and names it.
    let name = format!("{:020}.delta.1-of-2.parquet", chains[1][1]);
    let gone = ws.path(&format!("ck/state/p0-agg0/{name}"));
    let kept = std::fs::read(&gone).unwrap();
    std::fs::remove_file(&gone).unwrap();
    let e = ws.weir(&RUN_CK).fails().stderr();
    assert!(
        e.contains(&format!("corrupt checkpoint file file://{}", gone.display()))
            && e.contains(&format!(
                "(epoch {last}): commit {last} names this state file, which is missing, and 'p0-agg0' cannot be \
                 restored without it"
            )),
        "{e}"
    );
    std::fs::write(&gone, kept).unwrap();

    // The whole folder gone: a rollback to an epoch whose commit names the
    // table is refused, changing nothing (the table is no longer listed).
    let folder = ws.path("ck/state/p0-agg0");
    let aside = ws.path("p0-agg0-aside");
    std::fs::rename(&folder, &aside).unwrap();
    let to = (last - 1).to_string();
    let e = ws
        .weir(&["checkpoint", "rollback", "ck", "--to", &to])
        .fails()
        .stderr();
    assert!(e.contains("cannot roll back") && e.contains("p0-agg0"), "{e}");
    assert!(ws.path(&commit(last)).exists());
    std::fs::rename(&aside, &folder).unwrap();

    ws.weir(&[&RUN_CK[..], &["--drain", "--threads", "3"]].concat())
        .ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
}

/// A checkpoint whose commits name no state files (written by a Weir
/// before they did) resumes from a listing of its state folders, here
/// under another thread count, and its next commit names its files.
#[test]
fn a_checkpoint_whose_commits_name_no_state_files_resumes() {
    let ws = Workspace::new();
    let bids = gen_bids(4, 1200, BASE_MS, 1500);
    write_parquet(&ws.path("in/bids.parquet"), &bids);
    ws.write("job.sql", JOB);
    // One file per table and epoch, as such a Weir wrote them.
    let mut once = RUN_CK.to_vec();
    once[3] = "once";
    for _ in 0..4 {
        ws.weir(&[&once[..], &["--threads", "1"]].concat()).ok();
    }
    for e in 1..=4 {
        let path = ws.path(&commit(e));
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(c.as_object_mut().unwrap().remove("state").is_some());
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    }
    ws.weir(&[&once[..], &["--threads", "2"]].concat()).ok();
    assert_eq!(named_by_commit(&ws, 5, "p0-agg0"), vec![vec![5], vec![5]]);
    finishes_with_every_row_once(&ws, &bids);
}

/// Retention: a long run keeps a bounded checkpoint (20 epochs of logs, sink
/// manifests to match) and the oldest epoch it keeps is still restorable:
/// rolled back to it, the job redoes everything after it exactly.
#[test]
fn retention_bounds_the_checkpoint_and_the_oldest_kept_epoch_restores() {
    let ws = Workspace::new();
    let bids = gen_bids(9, 3500, BASE_MS, 1500);
    write_parquet(&ws.path("in/bids.parquet"), &bids);
    ws.write("job.sql", JOB);
    ws.weir(&RUN_CK).ok(); // 35 epochs of 100 rows
    let count = |dir: &str| std::fs::read_dir(ws.path(dir)).map_or(0, |d| d.count());
    let commits = committed(&ws);
    assert_eq!(*commits.last().unwrap(), 35);
    assert!(
        commits.len() <= 26,
        "retention keeps about 20 epochs: {commits:?}"
    );
    assert!(count("ck/offsets") <= 26);
    let manifests = std::fs::read_dir(ws.path("out/_weir/manifests"))
        .unwrap()
        .map(|w| std::fs::read_dir(w.unwrap().path()).unwrap().count())
        .sum::<usize>();
    assert!(manifests <= 26, "sink manifests are pruned too: {manifests}");

    let oldest = commits[0];
    assert!(oldest > 1);
    ws.weir(&["checkpoint", "rollback", "ck", "--to", &oldest.to_string()])
        .ok();
    finishes_with_every_row_once(&ws, &bids);
}

/// `SET checkpoint.retain_epochs` bounds what a checkpoint keeps (the
/// default is 20), and the oldest epoch it keeps still restores.
#[test]
fn retention_is_a_setting() {
    let ws = Workspace::new();
    let bids = gen_bids(9, 1500, BASE_MS, 1500);
    write_parquet(&ws.path("in/bids.parquet"), &bids);
    ws.write("job.sql", &format!("SET checkpoint.retain_epochs = 3;\n{JOB}"));
    ws.weir(&RUN_CK).ok(); // 15 epochs of 100 rows: retention runs at epoch 15
    assert_eq!(committed(&ws), [13, 14, 15], "three epochs kept");
    let offsets = std::fs::read_dir(ws.path("ck/offsets")).unwrap().count();
    assert_eq!(offsets, 3);
    let e = ws
        .weir(&["checkpoint", "rollback", "ck", "--to", "12"])
        .fails()
        .stderr();
    assert!(e.contains("not a retained committed epoch"), "{e}");
    ws.weir(&["checkpoint", "rollback", "ck", "--to", "13"]).ok();
    finishes_with_every_row_once(&ws, &bids);
}

/// A drained checkpoint keeps the epoch before its drain, however many
/// epochs a later run adds: the run's warning names it as the way back,
/// and the rollback to it must still work once retention has run (it
/// deleted that epoch, and the rows read after the drain were lost).
#[test]
fn retention_keeps_the_way_back_from_a_drain() {
    let ws = Workspace::new();
    let first = gen_bids(9, 500, BASE_MS, 1500);
    write_parquet(&ws.path("in/a.parquet"), &first);
    ws.write("job.sql", &format!("SET checkpoint.retain_epochs = 3;\n{JOB}"));
    ws.weir(&[&RUN_CK[..], &["--drain"]].concat()).ok();
    let drained = *committed(&ws).last().unwrap();
    // 1,000 rows more: ten epochs, every row late for the window.
    let later = gen_bids(10, 1000, BASE_MS + 600_000, 1500);
    write_parquet(&ws.path("in/b.parquet"), &later);
    let e = ws.weir(&RUN_CK).ok().stderr();
    let way_back = format!("--to {}` undoes the drain (epoch {drained})", drained - 1);
    assert!(e.contains(&way_back), "{e}");
    let kept = committed(&ws);
    assert!(kept.len() > 3 && kept[0] == drained - 1, "{kept:?}");
    ws.weir(&["checkpoint", "rollback", "ck", "--to", &(drained - 1).to_string()])
        .ok();
    let all: Vec<Bid> = first.iter().chain(&later).cloned().collect();
    finishes_with_every_row_once(&ws, &all);
}

/// The fixture cases: folder name, and what the error must say besides the
/// file and epoch.
const CASES: &[(&str, &str, &str)] = &[
    (
        "truncated-commit",
        "commits/00000000000000000003.json (epoch 3)",
        "truncated",
    ),
    (
        "missing-offsets",
        "commits/00000000000000000003.json (epoch 3)",
        "has no offsets entry",
    ),
    (
        "corrupt-state",
        "state/p0-agg0/00000000000000000003.delta.parquet (epoch 3)",
        "not a readable Parquet file",
    ),
    (
        "future-version",
        "commits/00000000000000000003.json (epoch 3)",
        "format version 99",
    ),
    (
        "orphan-state",
        "state/p0-agg0/00000000000000000007.delta.parquet (epoch 7)",
        "orphan state file",
    ),
    (
        "unknown-operator",
        "state/p9-agg0/00000000000000000002.delta.parquet (epoch 2)",
        "no operator",
    ),
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/damaged")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(base).unwrap().display().to_string();
                out.push((rel, e.metadata().unwrap().len()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.retain(|(n, _)| !n.starts_with("ck/lease/") && n != "ck/metadata.json");
    out.sort();
    out
}

#[test]
fn every_damaged_checkpoint_is_reported_with_its_file_and_epoch() {
    for (case, file, what) in CASES {
        let ws = Workspace::new();
        copy_dir(&fixtures().join(case), ws.dir.path());
        let before = listing(ws.dir.path());
        let e = ws.weir(&RUN_CK).fails().stderr();
        assert!(
            e.contains(file) && e.contains(what),
            "{case}: the error names {file} and says {what}:\n{e}"
        );
        assert!(!e.contains("panicked"), "{case}: {e}");
        // Nothing committed was touched: the sink and the checkpoint's logs
        // and state are as they were.
        assert_eq!(
            listing(ws.dir.path()),
            before,
            "{case}: the failed run changed files"
        );

        let inspect = ws.weir(&["checkpoint", "inspect", "ck"]).fails();
        let (out, err) = (inspect.stdout(), inspect.stderr());
        assert!(
            out.contains("problems") && out.contains(file) && err.contains("damaged"),
            "{case}: inspect lists the problem:\n{out}\n{err}"
        );
    }
}

#[test]
fn a_damaged_checkpoint_can_be_rolled_back_to_a_good_epoch() {
    // The truncated commit of epoch 3: roll back to 2, then finish.
    let ws = Workspace::new();
    copy_dir(&fixtures().join("truncated-commit"), ws.dir.path());
    ws.weir(&RUN_CK).fails();
    // Epoch 3 cannot be read, so it cannot be kept; 2 can.
    let e = ws
        .weir(&["checkpoint", "rollback", "ck", "--to", "3"])
        .fails()
        .stderr();
    assert!(e.contains("commits/00000000000000000003.json (epoch 3)"), "{e}");
    let r = ws
        .weir(&["checkpoint", "rollback", "ck", "--to", "2"])
        .ok()
        .stdout();
    assert!(
        r.contains("removed commits of epoch 3")
            && r.contains("sink out (file://")
            && r.contains("/out): removed"),
        "{r}"
    );
    for f in parquet_files(&ws.path("out")) {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            name[5..15].parse::<u64>().unwrap() <= 2,
            "{name} is of a rolled-back epoch"
        );
    }
    ws.weir(&[&RUN_CK[..], &["--drain"]].concat()).ok();
    let bids = fixture_bids();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
}

fn fixture_bids() -> Vec<Bid> {
    gen_bids(11, 500, BASE_MS, 1500)
}

/// Makes the fixtures: a job run for 5 epochs, then one thing broken per
/// case. Run by hand when the checkpoint format changes.
#[test]
#[ignore]
fn regenerate_damaged_fixtures() {
    let root = fixtures();
    let _ = std::fs::remove_dir_all(&root);
    for (case, _, _) in CASES {
        let ws = Workspace::new();
        write_parquet(&ws.path("in/bids.parquet"), &fixture_bids());
        ws.write("job.sql", JOB);
        ws.weir(&RUN_CK).ok();
        let ck = ws.path("ck");
        let state = |name: &str| ck.join("state/p0-agg0").join(name);
        match *case {
            "truncated-commit" => {
                let c = ws.path(&commit(3));
                let text = std::fs::read(&c).unwrap();
                std::fs::write(&c, &text[..text.len() / 2]).unwrap();
                for e in 4..=5 {
                    std::fs::remove_file(ws.path(&commit(e))).unwrap();
                }
            }
            "missing-offsets" => {
                for e in 4..=5 {
                    std::fs::remove_file(ws.path(&commit(e))).unwrap();
                    std::fs::remove_file(ck.join(format!("offsets/{e:020}.json"))).unwrap();
                }
                std::fs::remove_file(ck.join(format!("offsets/{:020}.json", 3))).unwrap();
            }
            "corrupt-state" => {
                std::fs::write(state("00000000000000000003.delta.parquet"), b"not parquet at all").unwrap();
            }
            "future-version" => {
                let c = ws.path(&commit(3));
                let text = std::fs::read_to_string(&c).unwrap();
                std::fs::write(&c, text.replace("\"version\": 1", "\"version\": 99")).unwrap();
                for e in 4..=5 {
                    std::fs::remove_file(ws.path(&commit(e))).unwrap();
                }
            }
            "orphan-state" => {
                std::fs::copy(
                    state("00000000000000000005.delta.parquet"),
                    state("00000000000000000007.delta.parquet"),
                )
                .unwrap();
            }
            "unknown-operator" => {
                let dir = ck.join("state/p9-agg0");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(
                    state("00000000000000000002.delta.parquet"),
                    dir.join("00000000000000000002.delta.parquet"),
                )
                .unwrap();
            }
            other => panic!("no recipe for {other}"),
        }
        let _ = std::fs::remove_dir_all(ck.join("lease"));
        copy_dir(ws.dir.path(), &root.join(case));
    }
}

/// A whole job folder copied (job, input, output and checkpoint), then the
/// original's checkpoint deleted, as the copy refusal says to: the copy's
/// metadata still names the original's output folder, but its job writes
/// its relative `'path'` beside it. A rollback of the copy rolls back the
/// copy's own output, never the original's (which it once emptied, leaving
/// the later epochs' old files in the copy to be written a second time).
#[test]
fn a_rollback_of_a_copied_job_folder_rolls_back_its_own_output() {
    let (ws, bids) = ran_job();
    let copy = Workspace::new();
    copy_dir(ws.dir.path(), copy.dir.path());
    std::fs::remove_dir_all(ws.path("ck")).unwrap();
    let original = listing(&ws.path("out"));
    copy.weir(&["checkpoint", "rollback", "ck", "--to", "4"]).ok();
    assert_eq!(
        listing(&ws.path("out")),
        original,
        "the original's output untouched"
    );
    finishes_with_every_row_once(&copy, &bids);
}

/// A rollback to an epoch that the query made before a `--fresh-state`
/// change is refused: that epoch's state was the old query's, deleted by
/// the change, and the changed query would go on from it with none, losing
/// the rows of the windows open then. The first epoch of the new state is
/// named, and rolling back to it works.
#[test]
fn a_rollback_to_before_a_fresh_state_change_is_refused() {
    let (ws, _) = ran_job();
    let before = last_commit(&ws);
    let later = gen_bids(9, 300, BASE_MS + 400_000, 1500);
    write_parquet(&ws.path("in/bids-later.parquet"), &later);
    ws.write(
        "job.sql",
        &JOB.replace("INTERVAL '10' SECOND))", "INTERVAL '20' SECOND))"),
    );
    ws.weir(&[&RUN_CK[..], &["--fresh-state"]].concat()).ok();
    assert!(last_commit(&ws) > before + 1);
    let e = ws
        .weir(&["checkpoint", "rollback", "ck", "--to", &before.to_string()])
        .fails()
        .stderr();
    let first = before + 1;
    assert!(
        e.contains("before `--fresh-state` dropped the state")
            && e.contains(&format!("the earliest epoch to roll back to is {first}")),
        "{e}"
    );
    ws.weir(&["checkpoint", "rollback", "ck", "--to", &first.to_string()])
        .ok();
}

/// One changed byte in a state file's pages (disk or copy damage) stops
/// the run and shows in `inspect`, naming the file: each state file
/// carries a checksum of its pages. Before, a changed integer or string
/// restored wrong state without an error (windows lost, NULL keys).
#[test]
fn a_changed_byte_in_a_state_file_is_found_not_restored() {
    let (ws, _) = ran_job();
    let last = last_commit(&ws);
    let ops: Vec<String> = std::fs::read_dir(ws.path("ck/state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
        .collect();
    let op = ops
        .iter()
        .find(|o| !o.starts_with("source-"))
        .expect("an operator's state");
    let shards = named_by_commit(&ws, last, op);
    let epoch = *shards[0].last().unwrap();
    let name = state_file_names(&ws, op)
        .into_iter()
        .find(|n| n.starts_with(&format!("{epoch:020}")))
        .expect("the file the last commit names");
    let path = ws.path(&format!("ck/state/{op}/{name}"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[50] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    let e = ws.weir(&RUN_CK).fails().stderr();
    assert!(e.contains(&name) && e.contains("checksum does not match"), "{e}");
    let inspect = ws.weir(&["checkpoint", "inspect", "ck"]).fails().stdout();
    assert!(
        inspect.contains(&name) && inspect.contains("checksum"),
        "{inspect}"
    );
}

/// An epoch committed but not yet published (the process died between),
/// whose staged output file was then deleted: `inspect` reports the lost
/// file, as the next run's recovery stops at it. Before, `inspect` said
/// nothing was wrong.
#[test]
fn inspect_finds_committed_output_that_is_neither_staged_nor_published() {
    let (ws, _) = job_workspace();
    ws.weir_env(&RUN_CK, &[("WEIR_FAILPOINT", "committed@5")])
        .killed();
    let staged: Vec<PathBuf> = walk_files(&ws.path("out/_weir/pending"))
        .into_iter()
        .filter(|p| p.to_str().unwrap().ends_with(".pending"))
        .collect();
    assert!(!staged.is_empty(), "epoch 5's output is staged");
    ws.weir(&["checkpoint", "inspect", "ck"]).ok();
    for f in &staged {
        std::fs::remove_file(f).unwrap();
    }
    let out = ws.weir(&["checkpoint", "inspect", "ck"]).fails().stdout();
    assert!(
        out.contains("(epoch 5): sink 'out' has committed this file, and it is neither staged nor published"),
        "{out}"
    );
    let e = ws.weir(&RUN_CK).fails().stderr();
    assert!(e.contains("neither staged nor published"), "{e}");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// A kill in the middle of a local write leaves its temporary
/// (`<name>#<n>`), which listings skip and retention never deleted:
/// inspect counts them, and the next run deletes them, in the checkpoint
/// and in its sinks' `_weir/` folder, and finishes exactly once.
#[test]
fn a_killed_writes_temporaries_are_deleted_by_the_next_run() {
    let (ws, bids) = ran_job();
    let leftovers = [
        format!("{}#3", commit(2)),
        "ck/offsets/00000000000000000011.json#1".to_string(),
        "ck/state/p0-agg0/00000000000000000011.delta.parquet#12".to_string(),
        "ck/metadata.json#7".to_string(),
        "ck/kafka-sinks/q-p0/00000000000000000002.parquet#4".to_string(),
        "out/_weir/pending/x.parquet.pending#1".to_string(),
    ];
    for f in &leftovers {
        ws.write(f, "half");
    }
    // A user's files in the folder are not Weir's temporaries, whatever
    // their names.
    let kept = ["ck/notes#a", "ck/notes#1", "ck/sub/report#2", "out/x.parquet#3"];
    for f in kept {
        ws.write(f, "keep");
    }
    let shown = ws.weir(&["checkpoint", "inspect", "ck"]).ok().stdout();
    assert!(
        shown.contains("leftovers  5 temporary file(s) of writes a kill interrupted"),
        "{shown}"
    );
    finishes_with_every_row_once(&ws, &bids);
    for f in &leftovers {
        assert!(!ws.path(f).exists(), "{f} is still there");
    }
    for f in kept {
        assert!(ws.path(f).exists(), "{f} was deleted");
    }
    let shown = ws.weir(&["checkpoint", "inspect", "ck"]).ok().stdout();
    assert!(!shown.contains("leftovers"), "{shown}");
}

/// The newest lease record of the checkpoint `ck`.
fn newest_lease_of(ws: &Workspace, ck: &str) -> serde_json::Value {
    let mut leases: Vec<PathBuf> = std::fs::read_dir(ws.path(&format!("{ck}/lease")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    leases.sort();
    serde_json::from_slice(&std::fs::read(leases.last().unwrap()).unwrap()).unwrap()
}

/// The newest lease record of `ck/`.
fn newest_lease(ws: &Workspace) -> serde_json::Value {
    newest_lease_of(ws, "ck")
}

/// `--explain` and a run stopped by an error give the checkpoint's lease
/// back: `--explain` used to leave it held, so `inspect` named a process
/// long gone as its holder, and a run on another host (a checkpoint on S3)
/// had to wait for it to lapse.
#[test]
fn explain_and_a_failed_run_give_the_lease_back() {
    let (ws, _) = ran_job();
    ws.weir(&[&RUN_CK[..], &["--explain"]].concat()).ok();
    assert_eq!(newest_lease(&ws)["released"], true, "after --explain");
    let inspect = ws.weir(&["checkpoint", "inspect", "ck"]).ok().stdout();
    assert!(
        inspect
            .lines()
            .any(|l| l.starts_with("lease") && l.contains(" free ")),
        "{inspect}"
    );
    // A file that is not Parquet stops the job in its next epoch.
    ws.write("in/zz-broken.parquet", "not parquet");
    let e = ws.weir(&RUN_CK).fails().stderr();
    assert!(e.contains("zz-broken.parquet"), "{e}");
    assert_eq!(newest_lease(&ws)["released"], true, "after a failed run");
    // A progress file that cannot be opened (a folder), after the open.
    let e = ws
        .weir(&[&RUN_CK[..], &["--progress-json", "in"]].concat())
        .fails()
        .stderr();
    assert!(e.contains("cannot open in"), "{e}");
    assert_eq!(
        newest_lease(&ws)["released"],
        true,
        "after --progress-json failed"
    );
    // A job refused while it is opened, after the lease was taken (a
    // bounded table whose folder is not there).
    ws.write(
        "dim.sql",
        "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3))
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet');
         CREATE TABLE d (auction BIGINT, name VARCHAR)
           WITH ('connector' = 'files', 'path' = 'no-such-folder/', 'format' = 'csv', 'bounded' = 'true');
         CREATE TABLE named WITH ('connector' = 'files', 'path' = 'named/', 'format' = 'parquet');
         INSERT INTO named SELECT b.auction, d.name FROM bids b JOIN d ON b.auction = d.auction;",
    );
    let e = ws
        .weir(&[
            "run",
            "dim.sql",
            "--trigger",
            "available-now",
            "--checkpoint",
            "ck2",
        ])
        .fails()
        .stderr();
    assert!(e.contains("no-such-folder"), "{e}");
    assert_eq!(
        newest_lease_of(&ws, "ck2")["released"],
        true,
        "after a refused open"
    );
}

/// A source's late sink that two queries write has a writer each; inspect
/// and rollback show the table once (they listed it once per writer, and
/// rollback's two "removed" lines looked like one folder done twice).
#[test]
fn a_late_sink_two_queries_write_is_shown_once() {
    let ws = Workspace::new();
    ws.write(
        "in/a.csv",
        "k,v,ts\na,1,2026-01-01 00:00:01\nc,6,2026-01-01 00:00:25\na,7,2026-01-01 00:00:03\n",
    );
    ws.write(
        "job.sql",
        "CREATE TABLE src (k VARCHAR, v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv', 'late.policy' = 'sink', 'late.sink' = 'lates');
         CREATE TABLE lates WITH ('connector' = 'files', 'path' = 'lates/', 'format' = 'parquet');
         CREATE TABLE o1 WITH ('connector' = 'files', 'path' = 'o1/', 'format' = 'parquet');
         CREATE TABLE o2 WITH ('connector' = 'files', 'path' = 'o2/', 'format' = 'parquet');
         INSERT INTO o1 SELECT window_start, k, COUNT(*) AS c
           FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, k;
         INSERT INTO o2 SELECT window_start, COUNT(*) AS c
           FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '5' SECOND)) GROUP BY window_start, window_end;",
    );
    ws.weir(&RUN_CK).ok();
    ws.write(
        "in/b.csv",
        "k,v,ts\nd,1,2026-01-01 00:00:40\na,7,2026-01-01 00:00:03\n",
    );
    ws.weir(&RUN_CK).ok();
    let shown = ws.weir(&["checkpoint", "inspect", "ck"]).ok().stdout();
    let lates: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with("sink       lates "))
        .collect();
    assert_eq!(lates.len(), 1, "{shown}");
    assert!(
        lates[0].contains("(writers ") && lates[0].contains("-p0-late, ") && lates[0].contains("-p1-late)"),
        "{shown}"
    );
    let done = ws
        .weir(&["checkpoint", "rollback", "ck", "--to", "1"])
        .ok()
        .stdout();
    let lines: Vec<&str> = done.lines().filter(|l| l.contains("sink lates ")).collect();
    assert_eq!(lines.len(), 1, "{done}");
    // Each query wrote its late row of epoch 2: a data file each.
    assert!(lines[0].contains("removed 4 file(s)"), "{done}");
}
