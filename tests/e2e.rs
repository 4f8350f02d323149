//! End-to-end tests of `weir run`: the real binary, real files, real
//! checkpoints, real SIGKILLs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use crate::common::*;

#[test]
fn window_results_equal_a_batch_group_by_over_the_same_rows() {
    let ws = Workspace::new();
    let bids = three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    let run = ws
        .weir(&[
            "run",
            "job.sql",
            "--trigger",
            "available-now",
            "--drain",
            "--progress-json",
            "p.json",
        ])
        .ok();
    let p = progress(&ws.path("p.json"));
    assert!(p.len() >= 5, "several epochs expected: {}", run.stderr());
    assert_eq!(sum_field(&p, "rows_in"), 3000);
    assert_eq!(
        sum_field(&p, "late_rows"),
        0,
        "out-of-order rows within the delay are not late"
    );
    let got = sink_rows(&ws.path("out"));
    assert_eq!(got, batch_query(&bids, ORACLE));
    assert_eq!(sum_field(&p, "rows_out") as usize, got.len());
    // One progress line per epoch on stderr, with the watermark.
    assert!(run.stderr().contains("epoch 1  in 700"), "{}", run.stderr());
    assert!(
        run.stderr().contains("watermark 2026-01-01 00:00:"),
        "{}",
        run.stderr()
    );
}

#[test]
fn without_drain_exactly_the_windows_the_watermark_closed_are_emitted() {
    let ws = Workspace::new();
    let bids = three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    let p = run_logged(&ws);
    let wm = p.last().unwrap()["watermark_ms"].as_i64().unwrap();
    assert_eq!(wm, bids.iter().map(|b| b.ts).max().unwrap() - 2000);
    let closed_before = |r: &String| {
        // `we` (second column) is at or before the watermark.
        let we = r.split('|').nth(1).unwrap();
        we <= iso(wm).as_str()
    };
    let expected: Vec<String> = batch_query(&bids, ORACLE)
        .into_iter()
        .filter(closed_before)
        .collect();
    let got = sink_rows(&ws.path("out"));
    assert!(!got.is_empty() && got.len() < batch_query(&bids, ORACLE).len());
    assert_eq!(got, expected);

    // A later run with --drain completes the open windows, once.
    ws.weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
}

#[test]
fn late_rows_are_dropped_counted_and_never_change_a_closed_window() {
    let ws = Workspace::new();
    let mut bids = gen_bids(7, 1500, BASE_MS, 1500);
    // Rows far behind the watermark, spread through the input.
    for i in (100..1500).step_by(97) {
        bids[i].ts -= 30_000;
    }
    write_parquet(&ws.path("in/a.parquet"), &bids[..800]);
    write_parquet(&ws.path("in/b.parquet"), &bids[800..]);
    ws.write("job.sql", &job(333, "parquet", "in/"));
    ws.weir(&[
        "run",
        "job.sql",
        "--trigger",
        "available-now",
        "--drain",
        "--progress-json",
        "p.json",
    ])
    .ok();
    let (kept, late) = on_time(&bids, 2000);
    assert!(late > 5);
    let p = progress(&ws.path("p.json"));
    assert_eq!(sum_field(&p, "late_rows") as usize, late);
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&kept, ORACLE));
}

#[test]
fn the_result_is_the_same_whatever_the_batch_size() {
    let (one, p1) = run_straight(100_000);
    let (many, p2) = run_straight(137);
    assert_eq!(p1.len(), 2, "one batch and the drain");
    assert!(p2.len() > 20);
    assert_eq!(one, many);
}

#[test]
fn csv_and_json_sources_give_the_same_result_as_parquet() {
    let (expected, _) = run_straight(500);
    for (format, write) in [
        ("csv", write_csv as fn(&std::path::Path, &[Bid])),
        ("json", write_json),
    ] {
        let ws = Workspace::new();
        for f in 0..3 {
            let bids = gen_bids(f + 1, 1000, BASE_MS + f as i64 * 50_000, 1500);
            write(&ws.path(&format!("in/bids-{f}.{format}")), &bids);
        }
        ws.write("job.sql", &job(500, format, "in/"));
        ws.weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
            .ok();
        assert_eq!(sink_rows(&ws.path("out")), expected, "format {format}");
    }
}

#[test]
fn restarting_after_every_batch_gives_the_same_output() {
    let (expected, _) = run_straight(700);
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    let mut runs = 0;
    loop {
        let r = ws.weir(&["run", "job.sql", "--trigger", "once"]).ok();
        runs += 1;
        if r.stderr().contains("done: 0 epoch(s)") {
            break;
        }
        assert!(runs < 20, "too many runs");
        assert!(r.stderr().contains("done: 1 epoch(s)"), "{}", r.stderr());
    }
    assert_eq!(runs, 6, "five batches of at most 700 rows, then nothing");
    ws.weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    assert_eq!(sink_rows(&ws.path("out")), expected);
}

#[test]
fn keyed_state_moves_between_thread_counts_across_restarts() {
    // The window state is split by auction over --threads shards; each run
    // restores it into another number of shards.
    let (expected, _) = run_straight(700);
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    run_across_thread_counts(&ws);
    assert_eq!(sink_rows(&ws.path("out")), expected);
}

#[test]
fn sigkill_at_every_step_of_an_epoch_then_restart_gives_the_same_output() {
    let (expected, _) = run_straight(700);
    for step in [
        "offsets-written",
        "before-sink",
        "mid-sink-write",
        "sink-staged",
        "state-written",
        "committed",
        "mid-publish",
        "published",
    ] {
        for epoch in [1, 3, 6] {
            let ws = Workspace::new();
            three_files(&ws);
            ws.write("job.sql", &job(700, "parquet", "in/"));
            let failpoint = format!("{step}@{epoch}");
            ws.weir_env(
                &["run", "job.sql", "--trigger", "available-now", "--drain"],
                &[("WEIR_FAILPOINT", failpoint.as_str())],
            )
            .killed();
            // Whatever is visible now is whole and committed: a prefix of
            // the final output, never a partial file or a duplicate.
            let partial = sink_rows(&ws.path("out"));
            assert!(
                partial.iter().all(|r| expected.binary_search(r).is_ok()),
                "{failpoint}"
            );
            let again = ws
                .weir(&[
                    "run",
                    "job.sql",
                    "--trigger",
                    "available-now",
                    "--drain",
                    "--progress-json",
                    "p.json",
                ])
                .ok();
            assert_eq!(sink_rows(&ws.path("out")), expected, "killed at {failpoint}");
            let p = progress(&ws.path("p.json"));
            let replayed = p.first().is_some_and(|l| l["replayed"].as_bool().unwrap());
            let uncommitted = matches!(
                step,
                "offsets-written" | "before-sink" | "mid-sink-write" | "sink-staged" | "state-written"
            );
            assert_eq!(replayed, uncommitted, "{failpoint}: {}", again.stderr());
        }
    }
}

#[test]
fn files_added_between_runs_are_processed_exactly_once() {
    let ws = Workspace::new();
    let first = gen_bids(1, 1000, BASE_MS, 1500);
    let second = gen_bids(2, 1000, BASE_MS + 50_000, 1500);
    let third = gen_bids(3, 1000, BASE_MS + 100_000, 1500);
    write_parquet(&ws.path("in/2026/01/a.parquet"), &first);
    ws.write("job.sql", &job(400, "parquet", "in/"));
    run_logged(&ws);
    write_parquet(&ws.path("in/2026/01/b.parquet"), &second);
    // A hidden file and a file being written are not input.
    ws.write("in/.b.parquet.crc", "junk");
    ws.write("in/_SUCCESS", "");
    run_logged(&ws);
    // A file that sorts before the ones already read is still read.
    write_parquet(&ws.path("in/2025/z.parquet"), &third);
    ws.weir(&[
        "run",
        "job.sql",
        "--trigger",
        "available-now",
        "--drain",
        "--progress-json",
        "p.json",
    ])
    .ok();
    ws.weir(&[
        "run",
        "job.sql",
        "--trigger",
        "available-now",
        "--drain",
        "--progress-json",
        "p.json",
    ])
    .ok();
    let p = progress(&ws.path("p.json"));
    assert_eq!(sum_field(&p, "rows_in"), 3000, "every row read exactly once");
    let arrival: Vec<Bid> = first.iter().chain(&second).chain(&third).copied().collect();
    let (kept, late) = on_time(&arrival, 2000);
    assert_eq!(sum_field(&p, "late_rows") as usize, late);
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&kept, ORACLE));
}

/// The state an operator would restore at the checkpoint's last commit
/// (its snapshot with the deltas after it applied).
fn restored_state(ckpt: &std::path::Path, op: &str) -> Vec<datafusion::arrow::array::RecordBatch> {
    use weir_storage::location::Create;
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let loc =
            weir_storage::Location::open(ckpt.to_str().unwrap(), &Default::default(), Create::No).unwrap();
        let ck = weir_storage::Checkpoint::new(loc);
        let last = ck.commits.latest().await.unwrap().unwrap();
        ck.restore_state(op, last)
            .await
            .unwrap()
            .map(|r| r.batches)
            .unwrap_or_default()
    })
}

#[test]
fn state_of_closed_windows_leaves_the_checkpoint() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    let p = run_logged(&ws);
    let wm = p.last().unwrap()["watermark_ms"].as_i64().unwrap();
    let state = restored_state(&ws.path("job.checkpoint"), "p0-agg0");
    let ends: Vec<i64> = state
        .iter()
        .flat_map(|b| {
            b.column_by_name("__window_end")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert!(!ends.is_empty(), "open windows are kept");
    assert!(
        ends.iter().all(|&e| e > wm),
        "only windows ending after the watermark {wm}: {ends:?}"
    );
    assert_eq!(
        ends.len() as u64,
        p.last().unwrap()["state_rows"].as_u64().unwrap()
    );
    // Every earlier window's state is gone: at most the windows within the delay remain.
    let windows: std::collections::BTreeSet<i64> = ends.iter().copied().collect();
    assert!(windows.len() <= 2, "{windows:?}");

    ws.weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    let state = restored_state(&ws.path("job.checkpoint"), "p0-agg0");
    assert_eq!(
        state.iter().map(|b| b.num_rows()).sum::<usize>(),
        0,
        "drained: no state left"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_a_nonzero_exit() {
    let ws = Workspace::new();
    three_files(&ws);

    ws.write(
        "syntax.sql",
        &job(700, "parquet", "in/").replace("GROUP BY window_start", "GROUP window_start"),
    );
    let e = ws
        .weir(&["run", "syntax.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(
        e.contains("syntax.sql: line 7 (`INSERT INTO out")
            && e.contains("SQL syntax error: Expected: end of statement, found: GROUP at line 10, column 1"),
        "{e}"
    );

    ws.write("missing.sql", &job(700, "parquet", "no/such/folder/"));
    let e = ws
        .weir(&["run", "missing.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(
        e.contains("no/such/folder") && e.contains("no such file or directory"),
        "{e}"
    );

    ws.write("nofile.sql", "SELECT 1");
    let e = ws.weir(&["run", "absent.sql"]).fails().stderr();
    assert!(e.contains("absent.sql"), "{e}");

    ws.write(
        "order.sql",
        &job(700, "parquet", "in/").replace(
            "GROUP BY window_start, window_end, auction;",
            "GROUP BY window_start, window_end, auction ORDER BY n;",
        ),
    );
    let e = ws
        .weir(&["run", "order.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(e.contains("ORDER BY"), "{e}");

    ws.write("nowindow.sql", &job(700, "parquet", "in/").replace(
        "SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s, MAX(price) AS m\nFROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))\nGROUP BY window_start, window_end, auction",
        "SELECT auction, COUNT(*) FROM bids GROUP BY auction",
    ));
    let e = ws
        .weir(&["run", "nowindow.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(e.contains("an aggregate without a window"), "{e}");

    ws.write(
        "unknown.sql",
        &job(700, "parquet", "in/").replace("TABLE(TUMBLE(TABLE bids", "TABLE(TUMBLE(TABLE bidz"),
    );
    let e = ws
        .weir(&["run", "unknown.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(e.contains("unknown table 'bidz'"), "{e}");
}

#[test]
fn a_file_of_the_wrong_schema_is_an_error_naming_file_and_column_and_loses_nothing() {
    let ws = Workspace::new();
    let good = gen_bids(1, 1000, BASE_MS, 1500);
    write_parquet(&ws.path("in/a.parquet"), &good);
    ws.write("job.sql", &job(100_000, "parquet", "in/"));
    ws.weir(&["run", "job.sql", "--trigger", "available-now"]).ok();
    let before = sink_rows(&ws.path("out"));
    assert!(!before.is_empty());

    // A CSV dropped into a Parquet folder, and a Parquet file whose price is text.
    ws.write("in/b.parquet", "auction,price\n1,2\n");
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(e.contains("in/b.parquet") && e.contains("Parquet"), "{e}");
    std::fs::remove_file(ws.path("in/b.parquet")).unwrap();

    {
        use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, false),
            Field::new("price", DataType::Utf8, false),
            Field::new(
                "date_time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(StringArray::from(vec!["12.50 EUR"])),
                Arc::new(TimestampMillisecondArray::from(vec![BASE_MS + 60_000])),
            ],
        )
        .unwrap();
        let f = std::fs::File::create(ws.path("in/c.parquet")).unwrap();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(
        e.contains("in/c.parquet")
            && e.contains("column 'price' is VARCHAR in the file, but table 'bids' declares it BIGINT"),
        "{e}"
    );
    assert_eq!(
        sink_rows(&ws.path("out")),
        before,
        "committed output is untouched"
    );

    // Fixing the input lets the job continue where it stopped.
    std::fs::remove_file(ws.path("in/c.parquet")).unwrap();
    let more = gen_bids(2, 500, BASE_MS + 50_000, 1500);
    write_parquet(&ws.path("in/d.parquet"), &more);
    ws.weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    let all: Vec<Bid> = good.iter().chain(&more).copied().collect();
    assert_eq!(
        sink_rows(&ws.path("out")),
        batch_query(&on_time(&all, 2000).0, ORACLE)
    );
}

#[test]
fn a_checkpoint_of_another_query_is_refused() {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    ws.weir(&RUN_CK).ok();
    // Reformatting the same query is fine, and says nothing.
    ws.write(
        "same.sql",
        &job(700, "parquet", "in/")
            .replace("\n", "\n  ")
            .replace("SELECT", "select"),
    );
    let same = ws
        .weir(&[
            "run",
            "same.sql",
            "--trigger",
            "available-now",
            "--checkpoint",
            "ck",
        ])
        .ok();
    assert!(!same.stderr().contains("note:"), "{}", same.stderr());
    ws.write(
        "other.sql",
        &job(700, "parquet", "in/").replace("INTERVAL '10' SECOND", "INTERVAL '20' SECOND"),
    );
    let e = ws
        .weir(&[
            "run",
            "other.sql",
            "--trigger",
            "available-now",
            "--checkpoint",
            "ck",
        ])
        .fails()
        .stderr();
    assert!(e.contains("different query") && e.contains("ck"), "{e}");
    assert!(
        e.contains("window-aggregate p0-agg0 computes something else")
            && e.contains("size_ms: 10000")
            && e.contains("size_ms: 20000"),
        "the message names the operator and what changed: {e}"
    );
    assert!(e.contains("--fresh-state"), "{e}");
}

/// `args --drain --fresh-state`, SIGKILLed at the failpoint `at`
/// (`<step>@<epoch>`).
fn fresh_state_killed(ws: &Workspace, args: &[&str], at: &str) -> Run {
    ws.weir_env(
        &[args, &["--drain", "--fresh-state"]].concat(),
        &[("WEIR_FAILPOINT", at)],
    )
    .killed()
}

/// The compatibility rules end to end: a changed filter keeps the state (the
/// windows left open carry over, so the result equals the batch answer); a
/// changed GROUP BY key is refused with the difference; `--fresh-state`
/// starts it empty while the source keeps its progress.
#[test]
fn a_changed_query_keeps_compatible_state_and_starts_afresh_only_when_asked() {
    let ws = Workspace::new();
    let mut bids = Vec::new();
    for f in 0..3 {
        bids.push(gen_bids(f + 1, 1000, BASE_MS + f as i64 * 50_000, 1500));
    }
    write_parquet(&ws.path("in/bids-0.parquet"), &bids[0]);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    let args = RUN_CK;
    ws.weir(&args).ok();

    // A filter in the stateless prefix that every row passes: the open
    // windows (the last seconds of file 0) must continue with their state.
    let filtered = job(700, "parquet", "in/").replace(
        "GROUP BY window_start",
        "WHERE price > 0 AND auction IS NOT NULL\nGROUP BY window_start",
    );
    ws.write("job.sql", &filtered);
    write_parquet(&ws.path("in/bids-1.parquet"), &bids[1]);
    let r = ws.weir(&args).ok();
    assert!(
        r.stderr().contains("note: the query differs") && r.stderr().contains("continuing with its state"),
        "{}",
        r.stderr()
    );
    // No drain: the windows the watermark closed. The one ending at 0:50
    // was open at the change and holds rows of both files.
    let first_two: Vec<Bid> = bids[..2].concat();
    let watermark = iso(first_two.iter().map(|b| b.ts).max().unwrap() - 2000);
    let closed: Vec<String> = batch_query(&first_two, ORACLE)
        .into_iter()
        .filter(|r| r.split('|').nth(1).unwrap() <= watermark.as_str())
        .collect();
    assert!(closed.iter().any(|r| r.contains("|2026-01-01T00:00:50|")));
    assert_eq!(sink_rows(&ws.path("out")), closed);
    let meta = std::fs::read_to_string(ws.path("ck/metadata.json")).unwrap();
    assert!(
        meta.contains("price > 0"),
        "the metadata follows the query: {meta}"
    );

    // Another GROUP BY key: refused, naming the operator and both keys.
    let by_window = |sink: &str| {
        job(700, "parquet", "in/")
            .replace(", auction, COUNT(*)", ", COUNT(*)")
            .replace(
                "GROUP BY window_start, window_end, auction",
                "GROUP BY window_start, window_end",
            )
            .replace("'path' = 'out/'", &format!("'path' = '{sink}/'"))
            .replace("TABLE out", &format!("TABLE {sink}"))
            .replace("INTO out", &format!("INTO {sink}"))
    };
    ws.write("job.sql", &by_window("out2"));
    write_parquet(&ws.path("in/bids-2.parquet"), &bids[2]);
    let e = ws.weir(&args).fails().stderr();
    assert!(
        e.contains("its state key was (window_start, window_end, auction), now (window_start, window_end)"),
        "{e}"
    );
    assert!(
        e.contains("sink 'out2' is new") && e.contains("sink 'out' is no longer written"),
        "{e}"
    );
    assert!(!ws.path("out2").exists() || sink_rows(&ws.path("out2")).is_empty());

    // --fresh-state: empty state, but files 0 and 1 are not read again.
    // Killed once its first epoch's state is written, and run again (now
    // the same query): the last commit still names the dropped state's
    // files, which are gone, and the rerun must start empty all the same.
    let last = last_commit(&ws);
    // As a reset killed after deleting the aggregate's state would leave
    // it: the folder gone, the metadata still the old query's.
    std::fs::remove_dir_all(ws.path("ck/state/p0-agg0")).unwrap();
    let r = fresh_state_killed(&ws, &args, &format!("state-written@{}", last + 1));
    assert!(
        r.stderr().contains("note: --fresh-state") && r.stderr().contains("'bids' keep their progress"),
        "{}",
        r.stderr()
    );
    let meta = std::fs::read_to_string(ws.path("ck/metadata.json")).unwrap();
    assert!(meta.contains("state_generations"), "{meta}");
    ws.weir(&[&args[..], &["--drain"]].concat()).ok();
    let oracle = "SELECT date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS ws,
        date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') + INTERVAL '10' SECOND AS we,
        COUNT(*), SUM(price), MAX(price) FROM bids GROUP BY 1, 2";
    assert_eq!(sink_rows(&ws.path("out2")), batch_query(&bids[2], oracle));
    // The old sink kept its committed output.
    assert_eq!(sink_rows(&ws.path("out")), closed);
    // Running it again is now the same query: nothing to say, nothing new.
    let again = ws.weir(&[&args[..], &["--drain"]].concat()).ok();
    assert!(!again.stderr().contains("note:"), "{}", again.stderr());
    assert_eq!(sink_rows(&ws.path("out2")), batch_query(&bids[2], oracle));
}

/// `--fresh-state` with a changed source (read from the beginning), killed
/// before its first epoch's offsets are written: the rerun sees an
/// unchanged query, but must still not give the source its old watermark,
/// which is past every row of the new folder (they would all be dropped as
/// late). (Killed later, the replayed epoch's offsets carry the right
/// watermark.)
#[test]
fn a_source_reset_by_fresh_state_keeps_no_old_watermark_after_a_kill() {
    let ws = Workspace::new();
    let late = gen_bids(1, 1000, BASE_MS + 200_000, 1500);
    let early = gen_bids(2, 1000, BASE_MS, 1500);
    write_parquet(&ws.path("in/bids.parquet"), &late);
    write_parquet(&ws.path("in2/bids.parquet"), &early);
    let args = RUN_CK;
    ws.write("job.sql", &job(300, "parquet", "in/"));
    ws.weir(&args).ok();
    let before = sink_rows(&ws.path("out"));
    assert!(!before.is_empty());
    let last = last_commit(&ws);

    ws.write("job.sql", &job(300, "parquet", "in2/"));
    // Killed just after the offsets are written, which are then removed:
    // as a kill just before writing them leaves the checkpoint.
    let r = fresh_state_killed(&ws, &args, &format!("offsets-written@{}", last + 1));
    assert!(
        r.stderr().contains("every source starts from the beginning"),
        "{}",
        r.stderr()
    );
    std::fs::remove_file(ws.path(&format!("ck/offsets/{:020}.json", last + 1))).unwrap();
    let again = ws.weir(&[&args[..], &["--drain"]].concat()).ok();
    assert!(again.stderr().contains(" 0 late"), "{}", again.stderr());
    let mut want = before;
    want.extend(batch_query(&early, ORACLE));
    want.sort();
    let mut got = sink_rows(&ws.path("out"));
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn secrets_in_options_never_reach_output_or_the_checkpoint() {
    let ws = Workspace::new();
    three_files(&ws);
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY";
    let sql = job(700, "parquet", "in/").replace(
        "'format' = 'parquet',\n",
        &format!("'format' = 'parquet', 's3.secret_access_key' = '{secret}',\n"),
    );
    assert!(sql.contains(secret));
    ws.write("job.sql", &sql);
    let r = ws
        .weir(&[
            "run",
            "job.sql",
            "--trigger",
            "available-now",
            "--progress-json",
            "p.json",
        ])
        .ok();
    assert!(!r.stderr().contains(secret));
    let meta = std::fs::read_to_string(ws.path("job.checkpoint/metadata.json")).unwrap();
    assert!(!meta.contains(secret) && meta.contains("'***'"), "{meta}");
    // An error that would quote the job does not quote the secret either.
    ws.write(
        "bad.sql",
        &sql.replace("'path' = 'in/'", &format!("'path' = 'in/{secret}/'")),
    );
    let e = ws
        .weir(&["run", "bad.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(!e.contains(secret), "{e}");
    let explain = ws.weir(&["run", "job.sql", "--explain"]).ok().stdout();
    assert!(
        !explain.contains(secret) && explain.contains("WindowAggregateExec"),
        "{explain}"
    );
}

/// Credentials written into URLs (an endpoint's, a proxy's, one in the
/// environment or on the command line) are secrets too, as are the options
/// that hold keys under other names (an SSE-C customer key). An s3:// path
/// cannot carry them at all (S3 would read them as part of the bucket).
#[test]
fn credentials_in_urls_never_reach_output_or_the_checkpoint() {
    let ws = Workspace::new();
    let secrets = [
        "AKIAUSERX",
        "UrlSecretPw123",
        "EndpointPass99",
        "ProxyPa;ss77",
        "CustomerKey4242",
        "EnvPassWord55",
        "InspPass11",
        "KP,Wzz63",
        "ClusterPw48",
        "U&SECRET",
        "CDzz96xyz",
    ];
    let job = |path: &str| {
        format!(
            "CREATE TABLE src (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH ('connector' = 'files', 'path' = '{path}', 'format' = 'csv',
        's3.endpoint' = 'http://admin:EndpointPass99@127.0.0.1:1', 's3.allow_http' = 'true',
        's3.proxy_url' = 'http://proxy:ProxyPa;ss77@127.0.0.1:2', 's3.sse_customer_key_base64' = 'CustomerKey4242');
CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
INSERT INTO out SELECT k FROM src;
"
        )
    };
    let check = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows {s}:\n{text}");
        }
    };
    // A path with credentials: refused, without showing them, whatever the
    // password holds.
    // The job refused, its error and any metadata without the credentials.
    let refused = || {
        let r = ws.weir(&["run", "job.sql", "--trigger", "available-now"]).fails();
        check("the error", &r.stderr());
        assert!(r.stderr().contains("cannot carry credentials"), "{}", r.stderr());
        if let Ok(meta) = std::fs::read_to_string(ws.path("job.checkpoint/metadata.json")) {
            check("metadata.json", &meta);
        }
    };
    for path in [
        "s3://AKIAUSERX:UrlSecretPw123@127.0.0.1:1/bucket/in/",
        "s3://AKIAUSERX:Url/SecretPw123@bucket/in/",
        "s3://AKIAUSERX:Url;SecretPw123@bucket/in/",
    ] {
        ws.write("job.sql", &job(path));
        refused();
    }
    // A sink's path with credentials: refused alike, nothing kept of them.
    std::fs::remove_dir_all(ws.path("job.checkpoint")).ok();
    ws.write("in/a.csv", "k,ts\n1,2026-01-01 00:00:01\n");
    ws.write(
        "job.sql",
        &job("in/").replace(
            "'path' = 'out/'",
            "'path' = 's3://AKIAUSERX:UrlSecretPw123@bucket/out/'",
        ),
    );
    refused();
    std::fs::remove_dir_all(ws.path("job.checkpoint")).ok();
    // The endpoint's and the proxy's, and one in the environment.
    ws.write("job.sql", &job("s3://bucket/in/"));
    let r = ws
        .weir_env(
            &["run", "job.sql", "--trigger", "available-now"],
            &[("AWS_ENDPOINT", "http://u:EnvPassWord55@127.0.0.1:1")],
        )
        .fails();
    check("the error", &r.stderr());
    let meta = std::fs::read_to_string(ws.path("job.checkpoint/metadata.json")).unwrap();
    check("metadata.json", &meta);
    assert!(meta.contains("http://***@127.0.0.1:1"), "{meta}");
    check(
        "EXPLAIN",
        &ws.weir(&["run", "job.sql", "--explain"]).ok().stdout(),
    );
    check(
        "inspect",
        &ws.weir(&["checkpoint", "inspect", "job.checkpoint"])
            .ok()
            .stdout(),
    );
    // A URL on the command line, and one in the environment.
    let r = ws
        .weir_env(
            &["checkpoint", "inspect", "s3://bkt/ck"],
            &[
                ("AWS_ENDPOINT", "http://u:EnvPassWord55@127.0.0.1:1"),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_ACCESS_KEY_ID", "x"),
                ("AWS_SECRET_ACCESS_KEY", "yyyy"),
            ],
        )
        .fails();
    check(
        "inspect of an unreachable store",
        &format!("{}{}", r.stdout(), r.stderr()),
    );
    // A store that cannot be reached is not a damaged checkpoint.
    assert!(
        r.stderr().contains("cannot read the checkpoint") && !r.stderr().contains("damaged"),
        "{}",
        r.stderr()
    );
    let r = ws
        .weir(&["run", "--cluster", "cu:ClusterPw48@127.0.0.1:1", "job.sql"])
        .fails();
    check("--cluster", &r.stderr());
    // A broker list's user info, a password with a `,` in it.
    ws.write(
        "kafka.sql",
        "CREATE TABLE src (k BIGINT) WITH ('connector' = 'kafka', 'topic' = 't', 'format' = 'json',
  'properties.bootstrap.servers' = 'ku:KP,Wzz63@127.0.0.1:1');
CREATE TABLE out WITH ('connector' = 'blackhole');
INSERT INTO out SELECT k FROM src;
",
    );
    let r = ws
        .weir(&["run", "kafka.sql", "--trigger", "available-now"])
        .fails();
    check("the Kafka error", &r.stderr());
    // Forms of a value the scan does not decode, quoted back by the parser.
    for typo in [
        "'s3.secret_access_key' U&'U&SECRET'",
        "'s3.secret_access_key' = 'AB' 'CDzz96xyz'",
    ] {
        ws.write(
            "typo.sql",
            &job("in/").replace("'format' = 'csv',", &format!("'format' = 'csv', {typo},")),
        );
        let r = ws
            .weir(&["run", "typo.sql", "--trigger", "available-now"])
            .fails();
        check("a parser error", &r.stderr());
        assert!(!r.stderr().contains("T***LE"), "{}", r.stderr());
    }
}

/// A damaged lease file says what to do about it; doing that runs the job.
#[test]
fn a_damaged_lease_file_says_how_to_go_on() {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    ws.weir(&["run", "job.sql", "--trigger", "once"]).ok();
    let leases: Vec<_> = std::fs::read_dir(ws.path("job.checkpoint/lease"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let last = leases.iter().max().unwrap().clone();
    std::fs::write(&last, "{ not json").unwrap();
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(
        e.contains("not a lease record") && e.contains("delete it and run again"),
        "{e}"
    );
    std::fs::remove_file(&last).unwrap();
    ws.weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    let (expected, _) = run_straight(700);
    assert_eq!(sink_rows(&ws.path("out")), expected);
}

/// An expression too long to plan is refused, not a stack overflow.
#[test]
fn an_expression_too_long_to_plan_is_refused() {
    let ws = Workspace::new();
    let sum = (0..10_000).map(|_| "1").collect::<Vec<_>>().join("+");
    let e = ws.weir(&["query", &format!("SELECT {sum}")]).fails().stderr();
    assert!(e.contains("9999 operators in a row"), "{e}");
    three_files(&ws);
    let ors = (0..10_000)
        .map(|i| format!("auction = {i}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    ws.write(
        "job.sql",
        &job(700, "parquet", "in/").replace(
            "GROUP BY window_start",
            &format!("WHERE {ors}\nGROUP BY window_start"),
        ),
    );
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(e.contains("operators in a row"), "{e}");
}

/// A thread count far beyond any machine is refused, not an abort.
#[test]
fn too_many_threads_are_refused() {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    let e = ws
        .weir(&[
            "run",
            "job.sql",
            "--threads",
            "100000",
            "--trigger",
            "available-now",
        ])
        .fails()
        .stderr();
    assert!(e.contains("--threads 100000: at most 1024 threads"), "{e}");
    ws.write(
        "set.sql",
        &format!("SET 'threads' = '30000';\n{}", job(700, "parquet", "in/")),
    );
    let e = ws
        .weir(&["run", "set.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(e.contains("at most 1024 threads"), "{e}");
}

#[test]
fn a_second_run_on_the_same_checkpoint_is_refused_until_the_first_is_gone() {
    use std::process::{Command, Stdio};
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    // The first run keeps running (an interval trigger) after its epochs.
    let mut first = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "job.sql", "--trigger", "100ms"])
        .current_dir(ws.dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let commits = ws.path("job.checkpoint/commits");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&commits).map_or(0, |d| d.count()) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(
        e.contains(&format!("in use by process {}", first.id())) && e.contains("job.checkpoint"),
        "{e}"
    );
    // kill -9: the lease is not released, but its holder is gone.
    first.kill().unwrap();
    first.wait().unwrap();
    let started = std::time::Instant::now();
    ws.weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took over without waiting for the lease to lapse"
    );
    let (expected, _) = run_straight(700);
    assert_eq!(sink_rows(&ws.path("out")), expected);
}

const INTERVAL_JOIN: &str = "SELECT b.auction, b.price, a.price AS ask, b.date_time FROM bids b LEFT JOIN asks a
    ON b.auction = a.auction AND a.date_time BETWEEN b.date_time - INTERVAL '1' SECOND AND b.date_time + INTERVAL '2' SECOND";
const REGULAR_JOIN: &str = "SELECT b.auction, b.price, a.price AS ask FROM bids b JOIN asks a
    ON b.auction = a.auction AND b.price > a.price + 950";

/// Three files each of bids and asks (never late under the 2 s delay), and
/// a job with an interval LEFT join and a regular join of them.
fn join_workspace() -> (Workspace, Vec<Bid>, Vec<Bid>) {
    let ws = Workspace::new();
    let mut bids = Vec::new();
    let mut asks = Vec::new();
    for f in 0..3 {
        let b = gen_bids(70 + f, 600, BASE_MS + f as i64 * 30_000, 1500);
        write_parquet(&ws.path(&format!("in/bids-{f}.parquet")), &b);
        bids.extend(b);
        let a = gen_bids(80 + f, 300, BASE_MS + f as i64 * 30_000, 1500);
        write_parquet(&ws.path(&format!("asks/asks-{f}.parquet")), &a);
        asks.extend(a);
    }
    ws.write(
        "job.sql",
        &format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
               WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
               WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet', 'max_rows_per_batch' = '250');
             CREATE TABLE asks (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
               WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
               WITH ('connector' = 'files', 'path' = 'asks/', 'format' = 'parquet', 'max_rows_per_batch' = '100');
             CREATE TABLE near WITH ('connector' = 'files', 'path' = 'out/near/', 'format' = 'parquet');
             CREATE TABLE pairs WITH ('connector' = 'files', 'path' = 'out/pairs/', 'format' = 'parquet');
             INSERT INTO near {INTERVAL_JOIN};
             INSERT INTO pairs {REGULAR_JOIN};"
        ),
    );
    (ws, bids, asks)
}

/// DataFusion's batch answer of `sql` over the bids and asks.
fn join_batch(bids: &[Bid], asks: &[Bid], sql: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_batch("bids", bids_batch(bids)).unwrap();
        ctx.register_batch("asks", bids_batch(asks)).unwrap();
        rows_of(&ctx.sql(sql).await.unwrap().collect().await.unwrap())
    })
}

/// Joins through the binary: an interval LEFT join and a regular join of
/// two sources give DataFusion's batch join of the same rows; the regular
/// join's unbounded state is warned about once, with the fixes; EXPLAIN
/// and `weir checkpoint inspect` say what holds and evicts each join's rows.
#[test]
fn joins_give_the_batch_join_and_say_how_their_state_is_bounded() {
    let (ws, bids, asks) = join_workspace();
    let explain = ws.weir(&["run", "job.sql", "--explain"]).ok().stdout();
    assert!(
        explain.contains("IntervalJoin: Left") && explain.contains("date_time - date_time in [-1s, 2s]"),
        "{explain}"
    );
    assert!(
        explain.contains("evicted: nothing: no time bound and no 'state.ttl'"),
        "{explain}"
    );
    let run = ws
        .weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    let warned = run.stderr().matches("its state grows without bound").count();
    assert_eq!(
        warned,
        1,
        "one warning, for the regular join only: {}",
        run.stderr()
    );
    assert!(run.stderr().contains("SET 'state.ttl'"), "{}", run.stderr());

    let near = sink_rows(&ws.path("out/near"));
    assert!(near.len() > 1000 && near.iter().any(|r| r.contains("||")));
    assert_eq!(near, join_batch(&bids, &asks, INTERVAL_JOIN));
    let pairs = sink_rows(&ws.path("out/pairs"));
    assert!(!pairs.is_empty());
    assert_eq!(pairs, join_batch(&bids, &asks, REGULAR_JOIN));

    let inspect = ws
        .weir(&["checkpoint", "inspect", "job.checkpoint"])
        .ok()
        .stdout();
    assert!(
        inspect.contains("interval-join keyed by (side, arrival_epoch, auction = auction)"),
        "{inspect}"
    );
    assert!(
        inspect.contains("evicted by the watermark: a left row once date_time + 2s"),
        "{inspect}"
    );
    assert!(inspect.contains("regular-join keyed by"), "{inspect}");

    // `=` and `IS NOT DISTINCT FROM` keys hold different rows (an inner
    // `=` join does not hold NULL keys): a switch is a query change.
    let job = std::fs::read_to_string(ws.path("job.sql")).unwrap();
    let nulls_equal = job.replace(
        "ON b.auction = a.auction AND b.price",
        "ON (b.auction IS NOT DISTINCT FROM a.auction) AND b.price",
    );
    assert_ne!(job, nulls_equal);
    ws.write("job.sql", &nulls_equal);
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(
        e.contains("different query") && e.contains("regular-join") && e.contains("--fresh-state"),
        "{e}"
    );
}

/// Without `--threads` (or `SET threads`), a job, the shell and a batch
/// query plan for one thread per CPU the process may use; `--threads 1`
/// still gives one, and the output is the batch answer either way.
#[test]
fn threads_default_to_every_cpu_the_process_may_use() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ws = Workspace::new();
    let bids = three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    // With more than one thread, the window aggregate's rows are first
    // aggregated per partition.
    let partial = |args: &[&str]| {
        let mut all = vec!["run", "job.sql", "--explain"];
        all.extend_from_slice(args);
        ws.weir(&all).ok().stdout().contains("PartialWindowAggregateExec")
    };
    assert_eq!(partial(&[]), cpus > 1, "{cpus} CPUs");
    assert!(!partial(&["--threads", "1"]));
    assert_eq!(partial(&["--threads", "0"]), cpus > 1);
    ws.weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));

    let shell = ws.weir_input(&[], "SET;\nSET threads = 'two';\n");
    assert!(
        shell
            .stdout()
            .lines()
            .any(|l| l.starts_with("| threads ") && l.contains(&format!("0 ({cpus} CPUs)"))),
        "{}",
        shell.stdout()
    );
    assert!(
        shell
            .stderr()
            .contains("SET threads = 'two': expected a whole number"),
        "{}",
        shell.stderr()
    );
}

/// Runs `job.sql` one epoch at a time on 2, 1, 3, 2, 1 threads (each run
/// restores the keyed state into another number of shards), then drains it
/// on 2.
fn run_across_thread_counts(ws: &Workspace) {
    for threads in ["2", "1", "3", "2", "1"] {
        let r = ws
            .weir(&["run", "job.sql", "--trigger", "once", "--threads", threads])
            .ok();
        assert!(r.stderr().contains("done: 1 epoch(s)"), "{}", r.stderr());
    }
    ws.weir(&[
        "run",
        "job.sql",
        "--trigger",
        "available-now",
        "--drain",
        "--threads",
        "2",
    ])
    .ok();
}

/// A join's state, split by its keys over --threads shards, is dealt back
/// into another number of shards by each run; the result is the same.
#[test]
fn join_state_moves_between_thread_counts_across_restarts() {
    let (ws, bids, asks) = join_workspace();
    run_across_thread_counts(&ws);
    assert_eq!(
        sink_rows(&ws.path("out/near")),
        join_batch(&bids, &asks, INTERVAL_JOIN)
    );
    assert_eq!(
        sink_rows(&ws.path("out/pairs")),
        join_batch(&bids, &asks, REGULAR_JOIN)
    );
}

/// The README's bundled jobs, run as it says, give the row counts it states.
#[test]
fn the_bundled_examples_give_the_rows_the_readme_states() {
    let ws = Workspace::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    std::fs::create_dir_all(ws.path("examples/data/bids")).unwrap();
    for name in ["hot_items.sql", "outbid.sql"] {
        std::fs::copy(examples.join(name), ws.path(&format!("examples/{name}"))).unwrap();
    }
    for f in std::fs::read_dir(examples.join("data/bids")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, ws.path("examples/data/bids").join(f.file_name().unwrap())).unwrap();
    }
    let readme = std::fs::read_to_string(examples.join("../README.md")).unwrap();
    ws.weir(&["run", "examples/hot_items.sql", "--trigger", "available-now"])
        .ok();
    assert_eq!(sink_rows(&ws.path("out/hot_items")).len(), 8730);
    let run = ws
        .weir(&[
            "run",
            "examples/outbid.sql",
            "--trigger",
            "available-now",
            "--drain",
        ])
        .ok();
    let outbid = sink_rows(&ws.path("out/outbid")).len();
    assert_eq!(outbid, 25_496);
    assert!(readme.contains("# 25,496 rows"), "the README states the count");
    assert!(run.stderr().contains("180 late"), "{}", run.stderr());
}

/// A changelog's rows (`op` first) folded into the table they describe:
/// each row's insertions (+I, +U) less its retractions (-U, -D).
fn fold_changelog(rows: &[String]) -> Vec<String> {
    let mut net: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for r in rows {
        let (op, row) = r.split_once('|').unwrap();
        *net.entry(row).or_default() += if op.starts_with('+') { 1 } else { -1 };
    }
    assert!(
        net.values().all(|n| *n >= 0),
        "a row retracted more often than inserted"
    );
    net.into_iter()
        .flat_map(|(r, n)| std::iter::repeat_n(r.to_string(), n as usize))
        .collect()
}

/// A Top-N outside windows and an aggregate over a changelog keep state
/// sharded by their keys; each run deals it into another number of shards,
/// and the changelogs still fold into DataFusion's batch answer.
#[test]
fn top_n_and_changelog_aggregate_state_moves_between_thread_counts() {
    const TOP3: &str = "SELECT auction, price, rn FROM (SELECT auction, price,
        ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC, date_time DESC) AS rn FROM bids) WHERE rn <= 3";
    const PER_GROUP: &str = "SELECT auction % 5 AS g, COUNT(*) AS n, SUM(m) AS s, AVG(m) AS a
        FROM (SELECT auction, MAX(price) AS m FROM bids GROUP BY auction) q GROUP BY auction % 5";
    let (ws, bids, _) = join_workspace();
    ws.write(
        "job.sql",
        &format!(
            "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
               WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
               WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet', 'max_rows_per_batch' = '250');
             CREATE TABLE top3 WITH ('connector' = 'files', 'path' = 'out/top3/', 'format' = 'parquet', 'mode' = 'changelog');
             CREATE TABLE per_group WITH ('connector' = 'files', 'path' = 'out/per_group/', 'format' = 'parquet', 'mode' = 'changelog');
             INSERT INTO top3 {TOP3};
             INSERT INTO per_group {PER_GROUP};"
        ),
    );
    run_across_thread_counts(&ws);
    let top3 = sink_rows(&ws.path("out/top3"));
    assert!(top3.iter().any(|r| r.starts_with("-U|")), "ranks moved");
    assert_eq!(fold_changelog(&top3), join_batch(&bids, &[], TOP3));
    assert_eq!(
        fold_changelog(&sink_rows(&ws.path("out/per_group"))),
        join_batch(&bids, &[], PER_GROUP)
    );
    // The README's rebuild of a changelog sink's latest state, by `weir
    // query` over the files: each key's last row by (_epoch, _seq), if it
    // is not a retraction.
    let rebuild = |table: &str, cols: &str, key: &str| -> Vec<String> {
        let sql = format!(
            "SELECT {cols} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY _epoch DESC NULLS LAST, _seq DESC NULLS LAST) AS last
               FROM 'out/{table}/') WHERE last = 1 AND op IN ('+I', '+U')"
        );
        let out = ws.weir(&["query", "--format", "csv", &sql]).ok().stdout();
        let mut rows: Vec<String> = out.lines().skip(1).map(|l| l.replace(',', "|")).collect();
        rows.sort();
        rows
    };
    assert_eq!(
        rebuild("top3", "auction, price, rn", "auction, rn"),
        join_batch(&bids, &[], TOP3)
    );
    let per_group = rebuild("per_group", "g, n, s, a", "g");
    let want = join_batch(&bids, &[], PER_GROUP);
    assert_eq!(per_group.len(), want.len());
    for (got, want) in per_group.iter().zip(&want) {
        // AVG prints with all its digits in CSV and rounded in the batch rows.
        let (g, w) = (got.rsplit_once('|').unwrap(), want.rsplit_once('|').unwrap());
        assert_eq!(g.0, w.0);
        let (gv, wv): (f64, f64) = (g.1.parse().unwrap(), w.1.parse().unwrap());
        assert!(
            (gv - wv).abs() <= 1e-9 * wv.abs().max(1.0),
            "{got} against {want}"
        );
    }
}

/// A lookup join joins each epoch with the bounded table as it was when the
/// epoch was planned: a crash after the epoch's offsets entry, then a change
/// to the table, and the replayed epoch still joins with the version its
/// entry names; the next epoch sees the change.
#[test]
fn a_lookup_join_replays_with_the_table_version_its_epoch_logged() {
    let ws = Workspace::new();
    ws.write("side/names.csv", "key,name\n1,one\n2,two\n");
    ws.write("in/b1.csv", "auction,price\n1,10\n2,20\n3,30\n");
    ws.write(
        "job.sql",
        "CREATE TABLE bids (auction BIGINT, price BIGINT) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
         CREATE TABLE side (\"key\" BIGINT, name VARCHAR) WITH ('connector' = 'files', 'path' = 'side/', 'format' = 'csv');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         INSERT INTO out
         SELECT b.auction, b.price, s.name
         FROM (SELECT *, PROCTIME() AS pt FROM bids) b
         LEFT JOIN side FOR SYSTEM_TIME AS OF b.pt AS s ON b.auction = s.\"key\";",
    );
    let run = [
        "run",
        "job.sql",
        "--checkpoint",
        "ck",
        "--trigger",
        "available-now",
    ];
    ws.weir(&run).ok();
    assert_eq!(
        sink_rows(&ws.path("out")),
        ["1|10|one", "2|20|two", "3|30|"].map(String::from)
    );

    // Epoch 2 is logged with version 2 of the table, then the job dies.
    ws.write("in/b2.csv", "auction,price\n1,11\n3,31\n");
    ws.write("side/names.csv", "key,name\n1,uno\n3,tres\n");
    ws.weir_env(&run, &[("WEIR_FAILPOINT", "before-sink@2")]).killed();
    // The table changes again before the restart.
    ws.write("side/names.csv", "key,name\n1,eins\n3,drei\n2,zwei\n");
    let out = ws.weir(&run).ok().stderr();
    assert!(out.contains("epoch 2 (replayed)"), "{out}");
    ws.write("in/b3.csv", "auction,price\n2,22\n3,32\n");
    ws.weir(&run).ok();
    assert_eq!(
        sink_rows(&ws.path("out")),
        [
            "1|10|one",
            "1|11|uno",
            "2|20|two",
            "2|22|zwei",
            "3|30|",
            "3|31|tres",
            "3|32|drei"
        ]
        .map(String::from)
    );

    // Each epoch's entry names its version, whose snapshot the checkpoint holds.
    let mut versions = Vec::new();
    for epoch in 1..=3 {
        let entry: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(ws.path(&format!("ck/offsets/{epoch:020}.json"))).unwrap(),
        )
        .unwrap();
        let v = entry["lookups"]["side"].as_str().unwrap().to_string();
        assert!(ws.path(&format!("ck/lookups/side/{v}.parquet")).exists(), "{v}");
        versions.push(v);
    }
    // `weir checkpoint inspect` shows each epoch's version.
    let inspect = ws.weir(&["checkpoint", "inspect", "ck"]).ok().stdout();
    for v in &versions {
        assert!(inspect.contains(&format!("side: version {v}")), "{inspect}");
    }
    versions.dedup();
    assert_eq!(versions.len(), 3, "{versions:?}");

    // EXPLAIN names the bounded table's scan.
    ws.write(
        "explain.sql",
        &std::fs::read_to_string(ws.path("job.sql"))
            .unwrap()
            .replace("INSERT INTO out", "EXPLAIN INSERT INTO out"),
    );
    let plan = ws.weir(&["-f", "explain.sql"]).ok().stdout();
    assert!(plan.contains("LookupScanExec: table=side (bounded"), "{plan}");
    // The table builds the join's hash table, shared by every thread; the
    // stream's rows are probed where they are, not repartitioned.
    let plan = ws
        .weir(&[
            "run",
            "job.sql",
            "--explain",
            "--threads",
            "2",
            "--checkpoint",
            "ck-explain",
        ])
        .ok()
        .stdout();
    let physical = plan.split("-- physical plan").nth(1).unwrap_or_default();
    let join = physical
        .lines()
        .find(|l| l.contains("HashJoinExec"))
        .unwrap_or_default();
    assert!(join.contains("mode=CollectLeft"), "{plan}");
    let build = physical
        .lines()
        .skip_while(|l| !l.contains("HashJoinExec"))
        .find(|l| l.contains("ScanExec"))
        .unwrap_or_default();
    assert!(build.contains("LookupScanExec"), "{plan}");
    assert!(!physical.contains("RepartitionExec"), "{plan}");
}

/// DataFusion 55 answers a correlated `NOT IN` wrongly when the
/// subquery's column holds a NULL (apache/datafusion#25336): here it gave no
/// row, where `6 NOT IN ()` keeps (6, 5). Refused, in a job and in
/// `weir query`, naming the NOT EXISTS that says the same, which gives
/// DuckDB's and PostgreSQL's answer. IN and EXISTS in a SELECT list (which
/// DataFusion cannot plan) say where they work, with the statement.
#[test]
fn a_correlated_not_in_is_refused_and_its_not_exists_form_is_right() {
    let ws = Workspace::new();
    ws.write("in/s.csv", "k,v\n6,5\n1,10\n");
    ws.write("dim/d.csv", "k,floor\n1,5\n,7\n");
    let job = |condition: &str| {
        stream_and_bounded_job(
            "floor BIGINT",
            "out/",
            &format!("SELECT k, v FROM s WHERE {condition}"),
        )
    };
    let refused = [
        "k NOT IN (SELECT d.k FROM d WHERE d.floor < s.v)",
        "NOT (k IN (SELECT d.k FROM d WHERE d.floor < s.v))",
        "v NOT IN (SELECT floor FROM d WHERE d.k = s.k)",
    ];
    for condition in refused {
        ws.write("job.sql", &job(condition));
        let e = ws.weir(&RUN_CK).fails().stderr();
        assert!(
            e.contains("line 5") && e.contains("correlated `x NOT IN") && e.contains("NOT EXISTS"),
            "{condition}: {e}"
        );
    }
    let e = ws
        .weir(&[
            "query",
            "SELECT k FROM 'in/' s WHERE k NOT IN (SELECT d.k FROM 'dim/' d WHERE d.floor < s.v)",
        ])
        .fails()
        .stderr();
    assert!(e.contains("correlated `x NOT IN"), "{e}");
    for select in [
        "k IN (SELECT k FROM d)",
        "EXISTS (SELECT 1 FROM d WHERE d.k = s.k)",
    ] {
        ws.write(
            "job.sql",
            &job("true").replace(
                "SELECT k, v FROM s WHERE true",
                &format!("SELECT k, {select} AS m FROM s"),
            ),
        );
        let e = ws.weir(&RUN_CK).fails().stderr();
        assert!(
            e.contains("line 5") && e.contains("work as conditions"),
            "{select}: {e}"
        );
    }
    let e = ws
        .weir(&["query", "SELECT k, k IN (SELECT k FROM 'dim/') FROM 'in/'"])
        .fails()
        .stderr();
    assert!(e.contains("work as conditions"), "{e}");
    // An IN whose UNKNOWN matters (DataFusion reads it as false) is
    // refused, correlated or not; one only truth-tested runs, and is right.
    for sql in [
        "SELECT k FROM 'in/' WHERE (k IN (SELECT d.k FROM 'dim/' d)) IS FALSE",
        "SELECT k FROM 'in/' WHERE COALESCE(k IN (SELECT d.k FROM 'dim/' d), true)",
    ] {
        let e = ws.weir(&["query", sql]).fails().stderr();
        assert!(e.contains("whose NULL answer matters"), "{sql}: {e}");
    }
    let q = ws
        .weir(&[
            "query",
            "--format",
            "csv",
            "SELECT k FROM 'in/' s WHERE (k IN (SELECT d.k FROM 'dim/' d WHERE d.floor < s.v)) IS NOT TRUE ORDER BY k",
        ])
        .ok()
        .stdout();
    assert_eq!(q.trim(), "k\n6");
    // The rewrite the refusal names, and the uncorrelated NOT IN (right in
    // DataFusion), run.
    ws.write(
        "job.sql",
        &job(
            "NOT EXISTS (SELECT 1 FROM d WHERE d.floor < s.v AND (d.k = s.k OR d.k IS NULL OR s.k IS NULL))",
        ),
    );
    ws.weir(&RUN_CK).ok();
    assert_eq!(sink_rows(&ws.path("out")), vec!["6|5".to_string()]);
    let q = ws
        .weir(&[
            "query",
            "--format",
            "csv",
            "SELECT k FROM 'in/' WHERE k NOT IN (SELECT 6 UNION ALL SELECT 2)",
        ])
        .ok()
        .stdout();
    assert_eq!(q.trim(), "k\n1");
}

/// A window over a lookup join: the join's output comes in whichever
/// order its probe side gives (under one thread, the bounded table's),
/// but lateness is judged where the stream is read, in its own order. Rows
/// in time order are never late, under any thread count, and a run killed
/// under two threads and resumed under one writes what an uninterrupted
/// run does (it lost three quarters of its rows to "late" before).
#[test]
fn a_window_over_a_lookup_join_judges_lateness_in_the_streams_order() {
    let ws = Workspace::new();
    let mut csv = String::from("auction,price,date_time\n");
    for i in 0..2000i64 {
        csv.push_str(&format!("{},{i},{}\n", i % 10, iso(BASE_MS + 100 * i)));
    }
    ws.write("in/bids.csv", &csv);
    let dims: String = (0..10).map(|i| format!("{i},{}\n", i % 3)).collect();
    ws.write("dims/dims.csv", &format!("id,category\n{dims}"));
    ws.write(
        "job.sql",
        "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
           WATERMARK FOR date_time AS date_time - INTERVAL '3' SECOND)
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv', 'max_rows_per_batch' = '500');
         CREATE TABLE dims (id BIGINT, category BIGINT)
           WITH ('connector' = 'files', 'path' = 'dims/', 'format' = 'csv', 'bounded' = 'true');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         CREATE VIEW enriched AS SELECT b.price, b.date_time, d.category FROM bids b JOIN dims d ON b.auction = d.id;
         INSERT INTO out
         SELECT window_start, window_end, category, COUNT(*) AS n, SUM(price) AS s
         FROM TABLE(TUMBLE(TABLE enriched, DESCRIPTOR(date_time), INTERVAL '20' SECOND))
         GROUP BY window_start, window_end, category;",
    );
    let run = |threads: &str, extra: &[(&str, &str)]| {
        ws.weir_env(&[&RUN_CK[..], &["--drain", "--threads", threads]].concat(), extra)
    };
    let mut outputs = Vec::new();
    for threads in ["1", "2"] {
        let r = run(threads, &[]).ok();
        assert!(
            r.stderr().contains(" 0 late"),
            "{threads} threads: {}",
            r.stderr()
        );
        let rows = sink_rows(&ws.path("out"));
        let counted: i64 = rows
            .iter()
            .map(|r| r.split('|').nth(3).unwrap().parse::<i64>().unwrap())
            .sum();
        assert_eq!((rows.len(), counted), (30, 2000), "{threads} threads");
        outputs.push(rows);
        std::fs::remove_dir_all(ws.path("ck")).unwrap();
        std::fs::remove_dir_all(ws.path("out")).unwrap();
    }
    assert_eq!(outputs[0], outputs[1]);
    run("2", &[("WEIR_FAILPOINT", "published@1")]).killed();
    run("1", &[]).ok();
    assert_eq!(sink_rows(&ws.path("out")), outputs[0]);
}

/// Ties in a ranking keep arrival order on any thread count: a Top-N or
/// dedup runs on one thread, its input read in order. On two threads the
/// row kept among ties was the first of whichever thread's batch came
/// first (rows 8192-8194 of the file in about half the runs).
#[test]
fn ties_in_a_ranking_keep_arrival_order_on_two_threads() {
    let ws = Workspace::new();
    let rows: String = (0..40_000)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"k\": \"k{}\", \"ts\": \"2026-01-01 00:00:01.000\"}}\n",
                i % 3
            )
        })
        .collect();
    ws.write("in/one.json", &rows);
    let queries = [
        (
            "last",
            "SELECT k, id FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts DESC) AS rn FROM s) WHERE rn = 1",
        ),
        (
            "first",
            "SELECT k, id FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM s) WHERE rn = 1",
        ),
        (
            "top",
            "SELECT id, rn FROM (SELECT *, ROW_NUMBER() OVER (ORDER BY ts DESC) AS rn FROM s) WHERE rn <= 3",
        ),
    ];
    for (name, query) in queries {
        let mut seen = Vec::new();
        for run in 0..4 {
            let out = format!("out-{name}-{run}");
            let job = format!(
                "CREATE TABLE s (id BIGINT, k VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
                   WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'json');
                 CREATE TABLE o WITH ('connector' = 'files', 'path' = '{out}/', 'format' = 'parquet', 'mode' = 'changelog');
                 INSERT INTO o {query};"
            );
            ws.write(&format!("{name}-{run}.sql"), &job);
            let threads = if run == 0 { "1" } else { "2" };
            ws.weir(&[
                "run",
                &format!("{name}-{run}.sql"),
                "--trigger",
                "available-now",
                "--drain",
                "--threads",
                threads,
            ])
            .ok();
            seen.push(fold_changelog(&sink_rows(&ws.path(&out))));
        }
        assert!(!seen[0].is_empty(), "{name}");
        for (run, rows) in seen.iter().enumerate() {
            assert_eq!(rows, &seen[0], "{name}, run {run}");
        }
    }
}

/// A NaN in a sink's DOUBLE column reads back as NaN with `weir query`,
/// filters included. Parquet leaves NaN out of min/max statistics, and
/// DataFusion 55 read a column whose min equals its max as that constant
/// (apache/datafusion#24804): the NaN sum showed as 100.0, and `s > 200`
/// (true for NaN in DataFusion's order) found nothing. Sink files carry no
/// min/max on float columns.
#[test]
fn a_nan_in_a_sink_reads_back_as_nan() {
    let ws = Workspace::new();
    ws.write(
        "in/1.csv",
        "k,ts,f\na,2026-01-01 00:00:06,NaN\nc,2026-01-01 00:00:12,100.0\n",
    );
    ws.write(
        "job.sql",
        "CREATE TABLE src (k VARCHAR, ts TIMESTAMP(3), f DOUBLE, WATERMARK FOR ts AS ts)
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         INSERT INTO out SELECT k, SUM(f) AS s
         FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '15' SECOND)) GROUP BY window_start, window_end, k;",
    );
    ws.weir(&["run", "job.sql", "--trigger", "available-now", "--drain"])
        .ok();
    let query = |sql: &str| ws.weir(&["query", "--format", "csv", sql]).ok().stdout();
    assert_eq!(
        query("SELECT k, s, isnan(s) AS nan FROM 'out/' ORDER BY k"),
        "k,s,nan\na,NaN,true\nc,100.0,false\n"
    );
    assert_eq!(query("SELECT k FROM 'out/' WHERE s > 200"), "k\na\n");
    // Grouped MIN and MAX of floats order NaN above every number, whatever
    // the order of the rows (DataFusion 55's kept the last NaN or number).
    assert_eq!(
        query(
            "SELECT k, MIN(f) AS lo, MAX(f) AS hi FROM (VALUES ('a', 1.0::double), ('a', 'NaN'::double), \
             ('b', 'NaN'::double), ('b', 1.0::double)) AS t(k, f) GROUP BY k ORDER BY k"
        ),
        "k,lo,hi\na,1.0,NaN\nb,1.0,NaN\n"
    );
}

/// A batch join on a list or struct key keeps its matches with ORDER BY:
/// DataFusion 55's hash join pushed a dynamic filter of the build side's
/// keys into the probe side, which dropped matching rows of nested keys
/// (the same join without ORDER BY gave them all).
#[test]
fn a_batch_join_on_a_nested_key_keeps_its_matches() {
    let ws = Workspace::new();
    let lists = ["[1, 2]", "[]", "null", "[null, 3]"];
    let a: String = (0..8)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"l\": {}, \"s\": {{\"x\": 1, \"y\": {}}}}}\n",
                lists[i % 4],
                ["\"p\"", "null"][i % 2]
            )
        })
        .collect();
    let b: String = lists.iter().map(|l| format!("{{\"l\": {l}}}\n")).collect();
    ws.write("a/a.json", &a);
    ws.write("b/b.json", &b);
    ws.write(
        "job.sql",
        "CREATE TABLE a (id BIGINT, l ARRAY<BIGINT>, s STRUCT<x BIGINT, y VARCHAR>)
           WITH ('connector' = 'files', 'path' = 'a/', 'format' = 'json');
         CREATE TABLE b (l ARRAY<BIGINT>) WITH ('connector' = 'files', 'path' = 'b/', 'format' = 'json');
         CREATE TABLE a_out WITH ('connector' = 'files', 'path' = 'a_out/', 'format' = 'parquet');
         CREATE TABLE b_out WITH ('connector' = 'files', 'path' = 'b_out/', 'format' = 'parquet');
         INSERT INTO a_out SELECT id, l, s FROM a;
         INSERT INTO b_out SELECT l FROM b;",
    );
    ws.weir(&["run", "job.sql", "--trigger", "available-now"]).ok();
    let query = |sql: &str| ws.weir(&["query", "--format", "csv", sql]).ok().stdout();
    let join = "SELECT a.id FROM 'a_out/' a JOIN 'b_out/' b ON a.l = b.l";
    let sorted = |text: String| {
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines.sort();
        lines.join("\n")
    };
    assert_eq!(sorted(query(join)), "0\n1\n3\n4\n5\n7\nid");
    assert_eq!(query(&format!("{join} ORDER BY a.id")), "id\n0\n1\n3\n4\n5\n7\n");
    // A struct with a NULL field, in a subquery (a semi join).
    assert_eq!(
        query("SELECT id FROM 'a_out/' x WHERE x.s IN (SELECT s FROM 'a_out/' WHERE id < 2) ORDER BY id"),
        "id\n0\n1\n2\n3\n4\n5\n6\n7\n"
    );
}

/// `weir query` refuses INTERSECT ALL and EXCEPT ALL, which DataFusion 55
/// answers as a semi and an anti join, and runs their set forms.
#[test]
fn intersect_all_and_except_all_are_refused_in_batch_queries() {
    let ws = Workspace::new();
    let sevens = "SELECT * FROM (VALUES (7), (7), (7)) AS a(x)";
    let seven = "SELECT * FROM (VALUES (7)) AS b(x)";
    for (op, join) in [("INTERSECT ALL", "a semi join"), ("EXCEPT ALL", "an anti join")] {
        let e = ws
            .weir(&["query", &format!("{sevens} {op} {seven}")])
            .fails()
            .stderr();
        assert!(
            e.contains(&format!(
                "{op} is not supported: DataFusion 55 answers it as {join}"
            )),
            "{e}"
        );
    }
    let out = ws
        .weir(&["query", "--format", "csv", &format!("{sevens} INTERSECT {seven}")])
        .ok()
        .stdout();
    assert_eq!(out, "x\n7\n");
}

/// An UNNEST in FROM of another table's column, which DataFusion 55 cannot
/// plan, is said in words with the statement's line (it was the Debug text
/// of a plan node), in a job and in `weir query`.
#[test]
fn a_lateral_unnest_is_refused_in_words() {
    let ws = Workspace::new();
    ws.write("in/a.csv", "id,k,price\n1,2,3\n");
    ws.write(
        "job.sql",
        "CREATE TABLE t (id BIGINT, k BIGINT, price BIGINT) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
         CREATE TABLE o WITH ('connector' = 'files', 'path' = 'o/', 'format' = 'parquet');
         INSERT INTO o SELECT t.id, u.v FROM t CROSS JOIN UNNEST(make_array(t.k, t.price)) AS u(v);",
    );
    let want = "a subquery or UNNEST in FROM that refers to another table's columns (a LATERAL correlation) is not supported";
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    // Placed in its statement as the planner's errors are.
    assert!(
        e.contains("line 3 (`INSERT INTO o SELECT t.id") && e.contains(want),
        "{e}"
    );
    assert!(!e.contains("OuterReferenceColumn"), "{e}");
    let e = ws
        .weir(&[
            "query",
            "SELECT t.id, u.v FROM 'in/' t CROSS JOIN UNNEST(make_array(t.k, t.price)) AS u(v)",
        ])
        .fails()
        .stderr();
    assert!(e.contains(want), "{e}");
    // In the SELECT list it runs.
    let out = ws
        .weir(&[
            "query",
            "--format",
            "csv",
            "SELECT id, unnest(make_array(k, price)) AS v FROM 'in/'",
        ])
        .ok()
        .stdout();
    assert_eq!(out, "id,v\n1,2\n1,3\n");
}

/// Two output columns of one name (`SELECT *` over a self-join) into a sink
/// declared without columns: the later one is written as `id0`, as Flink
/// names it. The files had `id` twice, which `weir query` read as the
/// left side's columns alone and pyarrow refused.
#[test]
fn a_name_taken_twice_is_written_numbered() {
    let ws = Workspace::new();
    ws.write("in/a.csv", "id,k\n1,x\n2,y\n");
    ws.write(
        "job.sql",
        "CREATE TABLE t (id BIGINT, k VARCHAR) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
         CREATE TABLE o WITH ('connector' = 'files', 'path' = 'o/', 'format' = 'parquet');
         INSERT INTO o SELECT *, b.k AS \"K\" FROM t a JOIN t b ON a.id = b.id + 1;",
    );
    ws.weir(&["run", "job.sql", "--trigger", "available-now"]).ok();
    let out = ws
        .weir(&["query", "--format", "csv", "SELECT * FROM 'o/'"])
        .ok()
        .stdout();
    assert_eq!(out, "id,k,id0,k0,K1\n2,y,1,x,x\n");
}

/// `a IS NOT DISTINCT FROM b AND c = d`, which sqlparser 0.62 reads as
/// `a IS NOT DISTINCT FROM (b AND c = d)`, is refused with the way to write
/// it (DataFusion said only "Int64 AND Boolean"), in `weir query` and in
/// jobs; written with parentheses, it runs.
#[test]
fn an_unparenthesized_is_not_distinct_from_and_is_refused_in_words() {
    let ws = Workspace::new();
    let t = "(VALUES (1, 2), (NULL, 3)) AS {}(uid, val)";
    let on = |cond: &str| {
        format!(
            "SELECT COUNT(*) AS n FROM {} JOIN {} ON {cond}",
            t.replace("{}", "c"),
            t.replace("{}", "v")
        )
    };
    let advice = "put the comparison in parentheses";
    let e = ws
        .weir(&["query", &on("c.uid IS NOT DISTINCT FROM v.uid AND c.val = v.val")])
        .fails()
        .stderr();
    assert!(e.contains(advice) && !e.contains("Int64 AND Boolean"), "{e}");
    let out = ws
        .weir(&[
            "query",
            "--format",
            "csv",
            &on("(c.uid IS NOT DISTINCT FROM v.uid) AND c.val = v.val"),
        ])
        .ok()
        .stdout();
    assert_eq!(out, "n\n2\n");
    ws.write("in/a.csv", "uid,val\n1,2\n,3\n");
    let job = |cond: &str| {
        format!(
            "CREATE TABLE c (uid BIGINT, val BIGINT) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
             CREATE TABLE o WITH ('connector' = 'files', 'path' = 'o/', 'format' = 'parquet');
             INSERT INTO o SELECT c.uid, v.val FROM c JOIN c AS v ON {cond};"
        )
    };
    ws.write(
        "job.sql",
        &job("c.uid IS NOT DISTINCT FROM v.uid AND c.val = v.val"),
    );
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(e.contains(advice) && e.contains("line 3"), "{e}");
    ws.write(
        "job.sql",
        &job("(c.uid IS NOT DISTINCT FROM v.uid) AND c.val = v.val"),
    );
    ws.weir(&["run", "job.sql", "--trigger", "available-now"]).ok();
    assert_eq!(sink_rows(&ws.path("o")).len(), 2);
}

/// Sink files tell other readers their text is plain strings (pyarrow
/// could not sort or filter a table it read as "string_view"), and a
/// folder holding files that say views (Weir's before) and files that say
/// strings (Weir's now, pyarrow's) is read whole, by `weir query` and by a
/// declared sink; files whose columns really disagree are named.
#[test]
fn a_folder_of_view_and_plain_string_files_reads_whole() {
    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::array::{
        ArrayRef, Int32Array, Int64Array, ListArray, StringArray, StringViewArray,
    };
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::sync::Arc;
    let ws = Workspace::new();
    ws.write("in/a.csv", "id,s\n1,a\n2,b\n");
    ws.write(
        "job.sql",
        "CREATE TABLE src (id BIGINT, s VARCHAR) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         INSERT INTO out SELECT id, s, ARRAY[s] AS l, MAP([s], [id]) AS m FROM src;",
    );
    ws.weir(&["run", "job.sql", "--trigger", "available-now"]).ok();
    let files = parquet_files(&ws.path("out"));
    assert_eq!(files.len(), 1);
    let file = std::fs::File::open(&files[0]).unwrap();
    let schema = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .schema()
        .clone();
    assert_eq!(schema.field_with_name("s").unwrap().data_type(), &DataType::Utf8);
    assert_eq!(
        schema.field_with_name("l").unwrap().data_type().to_string(),
        "List(Utf8)"
    );
    // A file as Weir wrote them before, with views, beside it.
    let write = |path: &str, columns: Vec<(&str, ArrayRef)>| {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let file = std::fs::File::create(ws.path(path)).unwrap();
        let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    };
    let view_map = {
        let names = datafusion::arrow::array::MapFieldNames {
            entry: "entries".into(),
            key: "key".into(),
            value: "value".into(),
        };
        let mut b = datafusion::arrow::array::MapBuilder::new(
            Some(names),
            datafusion::arrow::array::StringViewBuilder::new(),
            datafusion::arrow::array::Int64Builder::new(),
        );
        b.keys().append_value("c");
        b.values().append_value(3);
        b.append(true).unwrap();
        b.finish()
    };
    let view_list = {
        let mut b =
            datafusion::arrow::array::ListBuilder::new(datafusion::arrow::array::StringViewBuilder::new());
        b.values().append_value("c");
        b.append(true);
        b.finish()
    };
    write(
        "out/older.parquet",
        vec![
            ("id", Arc::new(Int64Array::from(vec![3])) as ArrayRef),
            ("s", Arc::new(StringViewArray::from(vec!["c"])) as ArrayRef),
            ("l", Arc::new(view_list) as ArrayRef),
            ("m", Arc::new(view_map) as ArrayRef),
        ],
    );
    let query = |sql: &str| ws.weir(&["query", "--format", "csv", sql]);
    let want = "id,s,l,m\n1,a,[a],{a: 1}\n2,b,[b],{b: 2}\n3,c,[c],{c: 3}\n";
    assert_eq!(query("SELECT * FROM 'out/' ORDER BY id").ok().stdout(), want);
    assert_eq!(
        query("SELECT * FROM 'out/*.parquet' ORDER BY id").ok().stdout(),
        want
    );
    let shell = ws
        .weir_input(
            &["--format", "csv", "-f", "-"],
            "CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');\nSELECT * FROM out ORDER BY id;\n",
        )
        .ok()
        .stdout();
    assert!(shell.contains(want), "{shell}");
    // Columns that disagree: the two files named.
    std::fs::create_dir_all(ws.path("odd")).unwrap();
    let ints = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1)])]);
    write(
        "odd/a.parquet",
        vec![
            ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("l", Arc::new(ints) as ArrayRef),
        ],
    );
    write(
        "odd/b.parquet",
        vec![
            ("id", Arc::new(Int32Array::from(vec![2])) as ArrayRef),
            ("l", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
        ],
    );
    let e = query("SELECT * FROM 'odd/'").fails().stderr();
    assert!(
        e.contains("the files of") && e.contains("(a.parquet and b.parquet)"),
        "{e}"
    );
    // Files in key=value folders keep the keys as columns.
    std::fs::create_dir_all(ws.path("hive/d=1")).unwrap();
    std::fs::create_dir_all(ws.path("hive/d=2")).unwrap();
    write(
        "hive/d=1/a.parquet",
        vec![("x", Arc::new(Int64Array::from(vec![10])) as ArrayRef)],
    );
    write(
        "hive/d=2/b.parquet",
        vec![("x", Arc::new(Int64Array::from(vec![20])) as ArrayRef)],
    );
    assert_eq!(
        query("SELECT d, x FROM 'hive/' ORDER BY x").ok().stdout(),
        "d,x\n1,10\n2,20\n"
    );
}

/// A table declared with a quoted mixed-case name is found by that name,
/// in a job and in the shell (it was registered folded to lower case, so
/// `FROM "Src"` was an unknown table).
#[test]
fn a_quoted_mixed_case_table_name_is_found() {
    let ws = Workspace::new();
    ws.write("in/a.csv", "k,v\n1,2\n");
    ws.write(
        "job.sql",
        "CREATE TABLE \"Src\" (k BIGINT, v BIGINT) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
         CREATE TABLE o WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         INSERT INTO o SELECT * FROM \"Src\";",
    );
    ws.weir(&["run", "job.sql", "--trigger", "available-now"]).ok();
    let out = ws
        .weir_input(
            &["--format", "csv", "-f", "-"],
            "CREATE TABLE \"Out\" WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');\nSELECT k, v FROM \"Out\";\n",
        )
        .ok()
        .stdout();
    assert!(out.contains("k,v\n1,2\n"), "{out}");
}
