//! What a new user meets on day one, each behind a test named after the
//! problem it fixed: a sink folder has one owner, a drained checkpoint
//! says so, first queries do not panic, a record is bad or good whatever
//! the query reads, files are read by any name and their changes are
//! noticed, secrets never print, errors point at the job file, settings
//! are one list, windows cannot explode, and signals stop a run cleanly.
//! Each drives the real `weir` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A bids source over `in/` and a sink `out` over `out/`, with `query`.
fn job_with(query: &str, source_options: &str, sink_options: &str) -> String {
    format!(
        "CREATE TABLE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
           WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet'{source_options});
         CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet'{sink_options});
         INSERT INTO out {query};
"
    )
}

fn run_now(ws: &Workspace, job: &str, extra: &[&str]) -> Run {
    let mut args = vec!["run", job, "--trigger", "available-now"];
    args.extend_from_slice(extra);
    ws.weir(&args)
}

// ---------------------------------------------------------------- part 1

#[test]
fn a_second_checkpoint_on_the_same_sink_is_refused_naming_both_and_the_fix() {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    run_now(&ws, "job.sql", &[]).ok();
    let before = sink_rows(&ws.path("out"));
    let e = run_now(&ws, "job.sql", &["--checkpoint", "other.checkpoint"])
        .fails()
        .stderr();
    assert!(
        e.contains("sink table 'out' writes to file://")
            && e.contains("job.checkpoint")
            && e.contains("other.checkpoint")
            && e.contains("Give the sink a 'path' of its own"),
        "{e}"
    );
    assert_eq!(sink_rows(&ws.path("out")), before, "nothing was written twice");
    // The owner itself goes on.
    run_now(&ws, "job.sql", &[]).ok();
}

#[test]
fn a_checkpoint_made_anew_does_not_write_its_sink_a_second_time() {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    run_now(&ws, "job.sql", &[]).ok();
    let before = sink_rows(&ws.path("out"));
    std::fs::remove_dir_all(ws.path("job.checkpoint")).unwrap();
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(e.contains("made anew since") && e.contains("delete"), "{e}");
    assert_eq!(sink_rows(&ws.path("out")), before);
}

#[test]
fn a_job_moved_with_its_checkpoint_keeps_its_sink() {
    let ws = Workspace::new();
    let bids = three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    run_now(&ws, "job.sql", &[]).ok();
    // The whole project elsewhere: the checkpoint's URL is another, the
    // query (its id) the same.
    let moved = Workspace::new();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    copy(ws.dir.path(), moved.dir.path());
    let later = gen_bids(9, 300, BASE_MS + 200_000, 0);
    write_parquet(&moved.path("in/bids-9.parquet"), &later);
    run_now(&moved, "job.sql", &["--drain"]).ok();
    let mut all = bids;
    all.extend(later);
    assert_eq!(sink_rows(&moved.path("out")), batch_query(&all, ORACLE));
}

/// A moved job whose two window queries send late rows to one table:
/// that table has a record per query, and the move was refused as if its
/// INSERT had moved ("statements were added, removed or reordered").
#[test]
fn a_moved_job_with_a_shared_late_table_resumes() {
    let ws = Workspace::new();
    ws.write(
        "in/f1.csv",
        "k,ts\n1,2026-01-01 00:00:10\n1,2026-01-01 00:00:00\n2,2026-01-01 00:00:20\n",
    );
    ws.write(
        "job.sql",
        "CREATE TABLE s (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv', 'late.policy' = 'sink', 'late.sink' = 'late_t');
         CREATE TABLE late_t WITH ('connector' = 'files', 'path' = 'out/late/', 'format' = 'parquet');
         CREATE TABLE w1 WITH ('connector' = 'files', 'path' = 'out/w1/', 'format' = 'parquet');
         CREATE TABLE w2 WITH ('connector' = 'files', 'path' = 'out/w2/', 'format' = 'parquet');
         INSERT INTO w1 SELECT window_start, COUNT(*) AS n
           FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '5' SECOND)) GROUP BY window_start, window_end;
         INSERT INTO w2 SELECT window_start, k, COUNT(*) AS n
           FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '5' SECOND)) GROUP BY window_start, window_end, k;",
    );
    run_now(&ws, "job.sql", &[]).ok();
    let moved = Workspace::new();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", ws.dir.path().display()))
        .arg(moved.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    moved.write("in/f2.csv", "k,ts\n3,2026-01-01 00:00:30\n");
    let out = run_now(&moved, "job.sql", &["--drain"]).ok().stderr();
    assert!(out.contains("resuming after epoch 1"), "{out}");
    // Windows at 10 s, 20 s and (after the move) 30 s; the row at 0 s late.
    assert_eq!(sink_rows(&moved.path("out/w1")).len(), 3);
    assert_eq!(sink_rows(&moved.path("out/late")).len(), 2, "late once per query");
}

/// Two INSERTs into one table: an edit of one (a filter) continues with
/// their state, as for a single INSERT (every change of such a job was
/// refused: "the INSERT INTO o moved"); the two in the other order are a
/// swap, refused, though their aggregates are the same.
#[test]
fn two_inserts_into_one_table_may_be_edited_but_not_swapped() {
    let ws = Workspace::new();
    ws.write(
        "in/f1.csv",
        "k,ts\n1,2026-01-01 00:00:01\n2,2026-01-01 00:00:02\n3,2026-01-01 00:00:12\n",
    );
    let job = |first: &str, second: &str| {
        format!(
            "CREATE TABLE s (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
               WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
             CREATE TABLE o WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
             INSERT INTO o SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '10' SECOND))
               WHERE {first} GROUP BY window_start, window_end;
             INSERT INTO o SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '10' SECOND))
               WHERE {second} GROUP BY window_start, window_end;"
        )
    };
    ws.write("job.sql", &job("k > 1", "k < 100"));
    run_now(&ws, "job.sql", &[]).ok();
    // A checkpoint of the Weir before, whose records have no statement
    // hashes: the same text goes on (and records them).
    let meta = ws.path("job.checkpoint/metadata.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    for sink in m["sinks"].as_array_mut().unwrap() {
        assert!(
            sink.as_object_mut().unwrap().remove("statement").is_some(),
            "{sink}"
        );
    }
    std::fs::write(&meta, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    run_now(&ws, "job.sql", &[]).ok();
    assert!(std::fs::read_to_string(&meta).unwrap().contains("\"statement\""));
    // Swapped: refused, naming the table.
    ws.write("job.sql", &job("k < 100", "k > 1"));
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(e.contains("the INSERTs into o are in another order"), "{e}");
    // The first one's filter edited: it goes on with the state of both.
    ws.write("job.sql", &job("k > 0", "k < 100"));
    ws.write("in/f2.csv", "k,ts\n4,2026-01-01 00:00:13\n");
    let out = run_now(&ws, "job.sql", &["--drain"]).ok().stderr();
    assert!(out.contains("resuming after epoch 1"), "{out}");
    // Window 0 s: 1 row (k > 1) + 2 rows; window 10 s: 2 (k > 0) + 2.
    let mut counts: Vec<String> = sink_rows(&ws.path("out"))
        .into_iter()
        .map(|r| r.rsplit('|').next().unwrap().to_string())
        .collect();
    counts.sort();
    assert_eq!(counts, ["1", "2", "2", "2"], "{:?}", sink_rows(&ws.path("out")));
}

/// Two INSERTs into one table that write a column as two types are
/// refused before anything runs: the folder's files would not read as one
/// table.
#[test]
fn two_inserts_into_one_table_must_agree_on_column_types() {
    let ws = Workspace::new();
    ws.write("in/f1.csv", "k,ts\n1,2026-01-01 00:00:01\n");
    ws.write(
        "job.sql",
        "CREATE TABLE s (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
         CREATE TABLE o WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         INSERT INTO o SELECT k, k * 10 AS x FROM s;
         INSERT INTO o SELECT k, CAST(k AS VARCHAR) AS x FROM s;",
    );
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(
        e.contains("two INSERTs into 'o' write column 'x' as different types (BIGINT in"),
        "{e}"
    );
    assert!(
        !ws.path("out").exists() && !ws.path("job.checkpoint").exists(),
        "{e}"
    );
    // Text in a list of either width, or a NULL column, goes with the
    // other INSERT's column; a later INSERT is checked against the first
    // that wrote each column.
    let ok = "CREATE TABLE s (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv');
         CREATE TABLE o WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         INSERT INTO o SELECT k, make_array(CAST(k AS VARCHAR)) AS tags FROM s;
         INSERT INTO o SELECT k, make_array('x') AS tags, NULL AS x FROM s;
         INSERT INTO o SELECT k, k AS x FROM s;";
    ws.write("ok.sql", ok);
    run_now(&ws, "ok.sql", &[]).ok();
    ws.write(
        "third.sql",
        &format!("{ok}\nINSERT INTO o SELECT k, 'a' AS x FROM s;"),
    );
    let e = run_now(&ws, "third.sql", &["--checkpoint", "third.ck"])
        .fails()
        .stderr();
    assert!(
        e.contains("write column 'x' as different types (BIGINT in"),
        "{e}"
    );
}

#[test]
fn a_sink_in_its_source_or_a_checkpoint_and_sinks_sharing_a_folder_are_refused() {
    let ws = Workspace::new();
    three_files(&ws);
    let base = job(700, "parquet", "in/");
    let cases = [
        (
            "'path' = 'out/'",
            "'path' = 'in/'",
            "also the folder of source 'bids'",
        ),
        (
            "'path' = 'out/'",
            "'path' = 'in/sub/'",
            "inside the folder of source 'bids'",
        ),
        (
            "'path' = 'out/'",
            "'path' = 'job.checkpoint/x/'",
            "inside the checkpoint",
        ),
    ];
    for (from, to, expected) in cases {
        ws.write("bad.sql", &base.replace(from, to));
        let e = ws
            .weir(&[
                "run",
                "bad.sql",
                "--trigger",
                "available-now",
                "--checkpoint",
                "job.checkpoint",
            ])
            .fails()
            .stderr();
        assert!(e.contains(expected), "{to}: {e}");
        assert!(
            parquet_files(&ws.path("in")).len() == 3,
            "nothing written into the source"
        );
    }
    // A checkpoint inside the sink folder.
    ws.write("good.sql", &base);
    let e = ws
        .weir(&[
            "run",
            "good.sql",
            "--trigger",
            "available-now",
            "--checkpoint",
            "out/ck",
        ])
        .fails()
        .stderr();
    assert!(e.contains("is inside the folder of sink table 'out'"), "{e}");
    // A checkpoint inside a source folder (the default one of a job file
    // kept in its data folder): the job read its own lease and log files
    // as input records.
    ws.write("in/job.sql", &base);
    let e = run_now(&ws, "in/job.sql", &[]).fails().stderr();
    assert!(
        e.contains("is inside the folder of source 'bids'") && e.contains("--checkpoint"),
        "{e}"
    );
    assert!(parquet_files(&ws.path("out")).is_empty(), "nothing written");
    assert!(
        !ws.path("in/job.checkpoint").exists(),
        "refused before the checkpoint was made, which a later run would read"
    );
    std::fs::remove_file(ws.path("in/job.sql")).unwrap();
    // Two sinks sharing a folder.
    let two = base.replace(
        "INSERT INTO out",
        "CREATE TABLE out2 WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         INSERT INTO out2 SELECT auction FROM bids;
         INSERT INTO out",
    );
    ws.write("two.sql", &two);
    let e = run_now(&ws, "two.sql", &[]).fails().stderr();
    assert!(e.contains("share a folder"), "{e}");
}

/// A bounded (lookup) table is read again every epoch: a sink in its folder
/// fed the job's own output back into the join (a row written in epoch 1
/// matched in epoch 2), and a checkpoint there was read as table files.
#[test]
fn a_sink_or_checkpoint_in_a_bounded_tables_folder_is_refused() {
    let ws = Workspace::new();
    ws.write("in/s.csv", "k,v\n1,1\n");
    ws.write("dim/d.csv", "k,name\n1,one\n");
    let job = |sink: &str| {
        stream_and_bounded_job(
            "name VARCHAR",
            sink,
            "SELECT s.k + 1 AS k, d.name FROM s JOIN d ON s.k = d.k",
        )
    };
    ws.write("inside.sql", &job("dim/sub/"));
    let e = run_now(&ws, "inside.sql", &[]).fails().stderr();
    assert!(e.contains("inside the folder of source 'd'"), "{e}");
    assert!(
        parquet_files(&ws.path("dim")).is_empty(),
        "refused before anything was written"
    );
    ws.write("good.sql", &job("out/"));
    let e = run_now(&ws, "good.sql", &["--checkpoint", "dim/ck"])
        .fails()
        .stderr();
    assert!(e.contains("is inside the folder of source 'd'"), "{e}");
    assert!(
        !ws.path("dim/ck").exists(),
        "refused before the checkpoint was made"
    );
    run_now(&ws, "good.sql", &[]).ok();
    assert_eq!(sink_rows(&ws.path("out")), vec!["2|one".to_string()]);
}

// ---------------------------------------------------------------- part 2

#[test]
fn rows_read_by_a_drained_checkpoint_are_all_late_and_the_run_says_how_to_undo_it() {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    run_now(&ws, "job.sql", &["--drain"]).ok();
    // Three minutes past the last row: late only because of the drain.
    let later = gen_bids(9, 200, BASE_MS + 300_000, 0);
    write_parquet(&ws.path("in/bids-9.parquet"), &later);
    let r = run_now(&ws, "job.sql", &["--progress-json", "p.json"]).ok();
    let e = r.stderr();
    assert!(e.contains("late 200 (every row)"), "{e}");
    assert!(
        e.contains("this checkpoint was drained") && e.contains("weir checkpoint rollback"),
        "{e}"
    );
    assert_eq!(
        e.matches("this checkpoint was drained").count(),
        1,
        "warned once: {e}"
    );
    let p = progress(&ws.path("p.json"));
    let last = p.last().unwrap();
    assert_eq!(last["all_late"], true);
    assert!(last["warnings"][0].as_str().unwrap().contains("drained"));
    // The way back it names works: the new rows' windows are emitted.
    let rollback_to = e
        .split("--to ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .trim_matches('`')
        .to_string();
    ws.weir(&["checkpoint", "rollback", "job.checkpoint", "--to", &rollback_to])
        .ok();
    let r = run_now(&ws, "job.sql", &["--drain"]).ok();
    assert!(!r.stderr().contains("every row"), "{}", r.stderr());
    let mut all = Vec::new();
    for f in 0..3 {
        all.extend(gen_bids(f + 1, 1000, BASE_MS + f as i64 * 50_000, 1500));
    }
    all.extend(later);
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&all, ORACLE));
}

#[test]
fn drain_help_says_it_is_final() {
    let ws = Workspace::new();
    let help = ws.weir(&["run", "--help"]).ok().stdout();
    assert!(
        help.contains("every row a later run reads on it is late"),
        "{help}"
    );
}

// ---------------------------------------------------------------- part 3

#[test]
fn first_queries_that_panicked_run_over_many_epochs() {
    let ws = Workspace::new();
    let bids = three_files(&ws);
    let cases = [
        // An aggregate without GROUP BY.
        (
            "SELECT COUNT(*) AS n, SUM(price) AS s FROM bids",
            "'mode' = 'changelog'",
            "SELECT COUNT(*), SUM(price) FROM bids",
        ),
        // DISTINCT, and GROUP BY without aggregates, from the second epoch on.
        (
            "SELECT DISTINCT auction FROM bids",
            "'mode' = 'changelog'",
            "SELECT DISTINCT auction FROM bids",
        ),
        (
            "SELECT auction FROM bids GROUP BY auction",
            "'mode' = 'changelog'",
            "SELECT auction FROM bids GROUP BY auction",
        ),
    ];
    for (query, mode, oracle) in cases {
        let _ = std::fs::remove_dir_all(ws.path("out"));
        let _ = std::fs::remove_dir_all(ws.path("q.checkpoint"));
        ws.write(
            "q.sql",
            &job_with(query, ", 'max_rows_per_batch' = '400'", &format!(", {mode}")),
        );
        run_now(&ws, "q.sql", &[]).ok();
        // The changelog's last row per key is the answer.
        let rows = sink_rows(&ws.path("out"));
        let mut live: Vec<String> = Vec::new();
        // Rows are `op|values`; fold them in epoch order (file order).
        let mut ordered: Vec<(String, String)> = Vec::new();
        for f in parquet_files(&ws.path("out")) {
            let file = std::fs::File::open(&f).unwrap();
            let reader =
                datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
            for b in reader {
                for line in rows_in_order(&without_changelog_order(&b.unwrap())) {
                    let (op, row) = line.split_once('|').unwrap();
                    ordered.push((op.to_string(), row.to_string()));
                }
            }
        }
        for (op, row) in ordered {
            match op.as_str() {
                "+I" | "+U" => live.push(row),
                _ => {
                    let at = live
                        .iter()
                        .position(|r| *r == row)
                        .expect("retracts a row it emitted");
                    live.remove(at);
                }
            }
        }
        live.sort();
        assert!(!rows.is_empty());
        assert_eq!(live, batch_query(&bids, oracle), "{query}");
    }
    // SESSION without PARTITION BY.
    let _ = std::fs::remove_dir_all(ws.path("out"));
    ws.write(
        "s.sql",
        &job_with(
            "SELECT window_start, window_end, COUNT(*) AS n FROM TABLE(SESSION(TABLE bids, DESCRIPTOR(date_time), INTERVAL '1' SECOND)) GROUP BY window_start, window_end",
            ", 'max_rows_per_batch' = '400'",
            "",
        ),
    );
    run_now(&ws, "s.sql", &["--drain"]).ok();
    let n: u64 = sink_rows(&ws.path("out"))
        .iter()
        .map(|r| r.rsplit('|').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(n, 3000, "every row in a session");
}

/// Rows of a batch as `a|b|c` lines, in their order.
fn rows_in_order(b: &datafusion::arrow::array::RecordBatch) -> Vec<String> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let opts = FormatOptions::default();
    let f: Vec<ArrayFormatter> = b
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
        .collect();
    (0..b.num_rows())
        .map(|i| {
            f.iter()
                .map(|f| f.value(i).to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[test]
fn a_closed_stderr_does_not_stop_a_run() {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job(300, "parquet", "in/"));
    // `weir run ... 2>&1 >/dev/null | head -2`: stderr closes after two lines.
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "job.sql", "--trigger", "available-now", "--drain"])
        .current_dir(ws.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut first = [0u8; 64];
    let _ = err.read(&mut first).unwrap();
    drop(err);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let commits = std::fs::read_dir(ws.path("job.checkpoint/commits"))
        .unwrap()
        .count();
    assert!(commits >= 10, "every epoch ran: {commits}");
    assert_eq!(sink_rows(&ws.path("out")).len(), run_straight(300).0.len());
}

#[test]
fn a_query_stopped_by_a_runtime_error_names_job_statement_and_epoch_and_is_not_wedged() {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write(
        "div.sql",
        &job_with("SELECT auction, price / (price - price) AS x FROM bids", "", ""),
    );
    let e = run_now(&ws, "div.sql", &[]).fails().stderr();
    assert!(
        e.contains("job div.sql: epoch 1, `INSERT INTO out SELECT auction, price / (price - price)")
            && e.contains("(line 5)")
            && e.contains("Divide by zero"),
        "{e}"
    );
    assert!(
        !ws.path("div.checkpoint/offsets/00000000000000000001.json")
            .exists(),
        "rolled back"
    );
    // Fixed, it runs from where it was.
    ws.write(
        "div.sql",
        &job_with("SELECT auction, price AS x FROM bids", "", ""),
    );
    run_now(&ws, "div.sql", &[]).ok();
    assert_eq!(sink_rows(&ws.path("out")).len(), 3000);
}

// ---------------------------------------------------------------- part 4

#[test]
fn a_bad_record_is_bad_whatever_the_query_reads() {
    let ws = Workspace::new();
    let mut lines = Vec::new();
    for i in 0..20 {
        let auction = if i == 7 {
            "\"x1\"".to_string()
        } else {
            i.to_string()
        };
        lines.push(format!(
            "{{\"auction\": {auction}, \"price\": {}, \"date_time\": \"{}\"}}",
            100 + i,
            iso(BASE_MS + i * 1000)
        ));
    }
    ws.write("in/a.json", &(lines.join("\n") + "\n"));
    let csv: Vec<String> = (0..20)
        .map(|i| {
            let auction = if i == 7 { "x1".to_string() } else { i.to_string() };
            format!("{auction},{},{}", 100 + i, iso(BASE_MS + i * 1000))
        })
        .collect();
    ws.write(
        "csv/a.csv",
        &format!("auction,price,date_time\n{}\n", csv.join("\n")),
    );
    for (format, path) in [("json", "in/"), ("csv", "csv/")] {
        for query in ["SELECT * FROM bids", "SELECT date_time, price FROM bids"] {
            let text = job_with(query, ", 'on_error' = 'skip'", "").replace(
                "'path' = 'in/', 'format' = 'parquet'",
                &format!("'path' = '{path}', 'format' = '{format}'"),
            );
            let _ = std::fs::remove_dir_all(ws.path("out"));
            let _ = std::fs::remove_dir_all(ws.path("j.checkpoint"));
            ws.write("j.sql", &text);
            let r = run_now(&ws, "j.sql", &["--progress-json", "j.json"]).ok();
            let p = progress(&ws.path("j.json"));
            let last = p.last().unwrap();
            assert_eq!(last["bad_rows"], 1, "{format} {query}: {}", r.stderr());
            assert_eq!(last["rows_in"], 19, "{format} {query}");
            assert_eq!(sink_rows(&ws.path("out")).len(), 19, "{format} {query}");
            std::fs::remove_file(ws.path("j.json")).unwrap();
        }
    }
}

// ---------------------------------------------------------------- part 5

#[test]
fn files_are_read_by_any_name_and_empty_files_are_empty() {
    let ws = Workspace::new();
    // In the order they are read (by path), later rows in later files.
    let names = [
        "hash#1.parquet",
        "pct%41.parquet",
        "with space.parquet",
        "ünï.parquet",
    ];
    for (i, n) in names.iter().enumerate() {
        let start = BASE_MS + i as i64 * 100_000;
        write_parquet(&ws.path(&format!("in/{n}")), &gen_bids(i as u64, 100, start, 0));
    }
    ws.write("job.sql", &job(10_000, "parquet", "in/"));
    run_now(&ws, "job.sql", &["--drain"]).ok();
    let n: u64 = sink_rows(&ws.path("out"))
        .iter()
        .map(|r| r.split('|').nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(n, 400, "every file read once");
    for format in ["csv", "json"] {
        let dir = format!("{format}_in/");
        ws.write(&format!("{dir}empty.{format}"), "");
        ws.write(
            &format!("{dir}one.{format}"),
            if format == "csv" {
                "date_time,auction,price\n2026-01-01T00:00:01,1,5\n"
            } else {
                "{\"date_time\": \"2026-01-01T00:00:01\", \"auction\": 1, \"price\": 5}\n"
            },
        );
        let text = job(10_000, format, &dir).replace("'path' = 'out/'", &format!("'path' = 'out_{format}/'"));
        ws.write(&format!("{format}.sql"), &text);
        let r = run_now(&ws, &format!("{format}.sql"), &["--drain"]).ok();
        assert!(r.stderr().contains("1 rows in"), "{format}: {}", r.stderr());
    }
}

#[test]
fn a_file_changed_after_it_was_read_is_warned_about_and_a_replay_of_it_is_an_error() {
    let ws = Workspace::new();
    let bids = gen_bids(1, 500, BASE_MS, 0);
    write_parquet(&ws.path("in/a.parquet"), &bids);
    ws.write("job.sql", &job(10_000, "parquet", "in/"));
    run_now(&ws, "job.sql", &[]).ok();
    // Rewritten with more rows.
    write_parquet(&ws.path("in/a.parquet"), &gen_bids(1, 600, BASE_MS, 0));
    write_parquet(&ws.path("in/b.parquet"), &gen_bids(2, 10, BASE_MS + 40_000, 0));
    let r = run_now(&ws, "job.sql", &["--progress-json", "p.json"]).ok();
    let e = r.stderr();
    assert!(
        e.contains("in/a.parquet changed after it was read") && e.contains("is not read"),
        "{e}"
    );
    let p = progress(&ws.path("p.json"));
    assert!(
        p[0]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("a.parquet changed"),
        "{p:?}"
    );
    assert_eq!(p[0]["rows_in"], 10, "only the new file");

    // A crash after an epoch is logged, then its file changes: the replay
    // cannot read the same rows, and says so.
    write_parquet(&ws.path("in/c.parquet"), &gen_bids(3, 10, BASE_MS + 50_000, 0));
    ws.weir_env(
        &["run", "job.sql", "--trigger", "available-now"],
        &[("WEIR_FAILPOINT", "offsets-written@3")],
    )
    .killed();
    write_parquet(&ws.path("in/c.parquet"), &gen_bids(3, 20, BASE_MS + 50_000, 0));
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(
        e.contains("c.parquet changed after this epoch was logged") && e.contains("epoch 3"),
        "{e}"
    );
}

// ---------------------------------------------------------------- part 6

#[test]
fn a_typo_next_to_a_secret_never_prints_it() {
    let ws = Workspace::new();
    three_files(&ws);
    let typo = job(700, "parquet", "in/").replace(
        "'max_rows_per_batch' = '700'",
        "'max_rows_per_batch' = '700', 's3.secret_access_key' 'SECRET123XYZ'",
    );
    ws.write("typo.sql", &typo);
    let e = run_now(&ws, "typo.sql", &[]).fails().stderr();
    assert!(!e.contains("SECRET123XYZ"), "{e}");
    assert!(e.contains("'***'"), "{e}");
    assert_eq!(e.matches("Expected").count(), 1, "the error once: {e}");
    // In a SET, in a job and in a script.
    ws.write(
        "set.sql",
        &format!(
            "SET s3.secret_access_key 'SECRET123XYZ';\n{}",
            job(700, "parquet", "in/")
        ),
    );
    let e = run_now(&ws, "set.sql", &[]).fails().stderr();
    assert!(!e.contains("SECRET123XYZ") && e.contains("line 1"), "{e}");
    let e = ws.weir(&["-f", "set.sql"]).fails().stderr();
    assert!(!e.contains("SECRET123XYZ"), "{e}");
    let e = ws
        .weir_input(&[], "SET 'password' = 'SECRET123XYZ';\n")
        .fails()
        .stderr();
    assert!(
        !e.contains("SECRET123XYZ") && e.contains("unknown setting 'password'"),
        "{e}"
    );
    // A value unquoted (the parser takes a name), E-quoted,
    // dollar-quoted, or holding a quote written twice (`''`, which was
    // refused as an unterminated string): never printed, and never kept
    // in the checkpoint.
    for (value, ck) in [
        ("SECRET123XYZ", "ck1"),
        ("E'SECRET123XYZ'", "ck2"),
        ("$$SECRET123XYZ$$", "ck3"),
        ("'SECRET''123XYZ'", "ck4"),
    ] {
        let sink = format!("'path' = '{ck}-out/', 'format' = 'parquet', 's3.secret_access_key' = {value}");
        let at = "'path' = 'out/', 'format' = 'parquet'";
        ws.write("bare.sql", &job(700, "parquet", "in/").replace(at, &sink));
        let out = run_now(&ws, "bare.sql", &["--checkpoint", ck]).ok();
        let text = format!("{}{}", out.stdout(), out.stderr());
        assert!(!text.contains("123XYZ"), "{value}: {text}");
        let meta = std::fs::read_to_string(ws.path(&format!("{ck}/metadata.json"))).unwrap();
        assert!(!meta.contains("123XYZ"), "{value}: {meta}");
        // A mistyped statement after it quotes the statement back.
        ws.write(
            "bare.sql",
            &job(700, "parquet", "in/").replace(at, &format!("{sink} 'x'")),
        );
        let e = run_now(&ws, "bare.sql", &["--checkpoint", ck]).fails().stderr();
        assert!(!e.contains("123XYZ") && e.contains("line "), "{value}: {e}");
    }
    // What the checkpoint keeps.
    let ok = job(700, "parquet", "in/").replace(
        "'max_rows_per_batch' = '700'",
        "'max_rows_per_batch' = '700', 'api_token' = 'SECRET123XYZ'",
    );
    ws.write("ok.sql", &ok);
    let e = run_now(&ws, "ok.sql", &[]).fails().stderr();
    assert!(
        e.contains("unknown option 'api_token'") && !e.contains("SECRET123XYZ"),
        "{e}"
    );
    // A mistyped s3.* option is refused on a local table too, before its
    // path moves to S3; a real one is taken.
    for (option, refused) in [("'s3.regoin' = 'x'", true), ("'s3.region' = 'eu-west-1'", false)] {
        ws.write(
            "s3.sql",
            &job(700, "parquet", "in/").replace(
                "'max_rows_per_batch' = '700'",
                &format!("'max_rows_per_batch' = '700', {option}"),
            ),
        );
        let r = run_now(&ws, "s3.sql", &["--checkpoint", "s3.checkpoint"]);
        if refused {
            let e = r.fails().stderr();
            assert!(e.contains("unknown option 's3.regoin'"), "{e}");
        } else {
            r.ok();
        }
    }
}

// ---------------------------------------------------------------- part 7

/// An append-only query into a sink declared `'mode' = 'changelog'`
/// writes a changelog of inserts: `op` = `+I` first, `_epoch` and `_seq`
/// last, so the README's query for a changelog's latest rows reads it.
#[test]
fn an_append_only_query_into_a_changelog_sink_writes_inserts() {
    let ws = Workspace::new();
    let bids = three_files(&ws);
    ws.write(
        "job.sql",
        &job_with("SELECT auction, price FROM bids", "", ", 'mode' = 'changelog'"),
    );
    ws.weir(&["run", "job.sql", "--trigger", "available-now"]).ok();
    let batches = sink_batches(&ws.path("out"));
    let names: Vec<String> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["op", "auction", "price", "_epoch", "_seq"], "{names:?}");
    let rows = sink_rows(&ws.path("out"));
    assert_eq!(rows.len(), bids.len());
    assert!(rows.iter().all(|r| r.starts_with("+I|")), "{:?}", &rows[..3]);
}

/// A NULL for a sink column declared NOT NULL stops the epoch before any
/// of it is written; the query fixed, the epoch replays.
#[test]
fn a_null_for_a_not_null_sink_column_stops_the_epoch() {
    let ws = Workspace::new();
    let bids = three_files(&ws);
    let job = |query: &str| {
        job_with(query, "", "").replace(
            "CREATE TABLE out WITH",
            "CREATE TABLE out (auction BIGINT NOT NULL, p BIGINT) WITH",
        )
    };
    ws.write(
        "job.sql",
        &job("SELECT CASE WHEN price > 500 THEN auction END, price FROM bids"),
    );
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(
        e.contains("column 'auction' is declared NOT NULL") && e.contains("epoch 1"),
        "{e}"
    );
    assert!(parquet_files(&ws.path("out")).is_empty());
    ws.write(
        "job.sql",
        &job("SELECT auction, price FROM bids WHERE price > 500"),
    );
    run_now(&ws, "job.sql", &[]).ok();
    assert_eq!(
        sink_rows(&ws.path("out")).len(),
        bids.iter().filter(|b| b.price > 500).count()
    );
}

/// A changed query may not change the type of a column its sink has
/// output for (the folder would no longer read as one table), not even
/// with --fresh-state; a new column is fine.
/// A query change that computes a group key or an aggregate's argument
/// another way under the same name, through a view, is refused like a
/// changed `GROUP BY`: the operator's state holds the old keys and sums,
/// and mixing them with new ones gave wrong windows. A column added to the
/// view or a filter is still a compatible change.
#[test]
fn a_view_that_computes_a_key_another_way_is_a_changed_query() {
    let ws = Workspace::new();
    three_files(&ws);
    let job = |view: &str| {
        job_with(
            "SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s
             FROM TABLE(TUMBLE(TABLE b2, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
             GROUP BY window_start, window_end, auction",
            "",
            "",
        )
        .replace(
            "CREATE TABLE out",
            &format!("CREATE VIEW b2 AS {view};\n CREATE TABLE out"),
        )
    };
    ws.write("job.sql", &job("SELECT auction, price, date_time FROM bids"));
    run_now(&ws, "job.sql", &[]).ok();
    for (view, says) in [
        (
            "SELECT auction % 5 AS auction, price, date_time FROM bids",
            "auction=auction % 5",
        ),
        (
            "SELECT price AS auction, auction AS price, date_time FROM bids",
            "auction=price; price=auction",
        ),
        (
            "SELECT auction, price * 100 AS price, date_time FROM bids",
            "price=price * 100",
        ),
    ] {
        ws.write("job.sql", &job(view));
        let e = run_now(&ws, "job.sql", &[]).fails().stderr();
        assert!(
            e.contains("computes something else") && e.contains(says),
            "{view}: {e}"
        );
    }
    // Compatible: a column added, a filter, the view's columns reordered,
    // a column that only a filter above the view reads.
    for view in [
        "SELECT auction, price, date_time, price + 1 AS more FROM bids WHERE price > 0",
        "SELECT date_time, price, auction FROM bids",
    ] {
        ws.write("job.sql", &job(view));
        let r = run_now(&ws, "job.sql", &[]).ok().stderr();
        assert!(
            r.contains("continuing with its state") || r.contains("done:"),
            "{view}: {r}"
        );
    }
    ws.write(
        "job.sql",
        &job("SELECT auction, price, date_time, price % 7 AS pick FROM bids")
            .replace("GROUP BY window_start", "WHERE pick > 0 GROUP BY window_start"),
    );
    run_now(&ws, "job.sql", &[]).ok();
}

/// What the operator's record did not follow before: a view's branch of a
/// UNION computing its key another way, and a window moved to another time
/// column, both resumed with the old windows' state (keys and counts of
/// the old computation mixed into the new one's).
#[test]
fn a_changed_union_branch_or_window_time_column_is_a_changed_query() {
    let ws = Workspace::new();
    three_files(&ws);
    let job = |view: &str, time: &str| {
        job_with(
            &format!(
                "SELECT window_start, window_end, auction, COUNT(*) AS n
                 FROM TABLE(TUMBLE(TABLE b2, DESCRIPTOR({time}), INTERVAL '10' SECOND))
                 GROUP BY window_start, window_end, auction"
            ),
            "",
            "",
        )
        .replace(
            "CREATE TABLE out",
            &format!("CREATE VIEW b2 AS {view};\n CREATE TABLE out"),
        )
    };
    let union = |key: &str| {
        format!(
            "SELECT {key} AS auction, date_time, date_time AS later FROM bids WHERE price < 500
             UNION ALL SELECT {key} AS auction, date_time, date_time AS later FROM bids WHERE price >= 500"
        )
    };
    ws.write("job.sql", &job(&union("auction"), "date_time"));
    run_now(&ws, "job.sql", &[]).ok();
    // Unchanged, it resumes.
    run_now(&ws, "job.sql", &[]).ok();
    ws.write("job.sql", &job(&union("auction % 5"), "date_time"));
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(
        e.contains("computes something else") && e.contains("auction % 5"),
        "{e}"
    );
    ws.write("job.sql", &job(&union("auction"), "later"));
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(
        e.contains("computes something else") && e.contains("window time=later"),
        "{e}"
    );
    // A computation moved from one branch to the other (each branch's
    // record alike, in the other order).
    let moved = |first: &str, second: &str| {
        format!(
            "SELECT {first} AS auction, date_time, date_time AS later FROM bids WHERE price < 500
             UNION ALL SELECT {second} AS auction, date_time, date_time AS later FROM bids WHERE price >= 500"
        )
    };
    ws.write("job.sql", &job(&moved("auction + 100", "auction"), "date_time"));
    let e = run_now(&ws, "job.sql", &["--fresh-state"]).ok().stderr();
    assert!(e.contains("done:"), "{e}");
    ws.write("job.sql", &job(&moved("auction", "auction + 100"), "date_time"));
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(e.contains("computes something else"), "{e}");
}

#[test]
fn a_changed_query_may_not_retype_a_sink_column() {
    let ws = Workspace::new();
    three_files(&ws);
    ws.write("job.sql", &job_with("SELECT auction, price FROM bids", "", ""));
    run_now(&ws, "job.sql", &[]).ok();
    ws.write(
        "job.sql",
        &job_with(
            "SELECT auction, CAST(price AS VARCHAR) AS price FROM bids",
            "",
            "",
        ),
    );
    for extra in [&[][..], &["--fresh-state"][..]] {
        let e = run_now(&ws, "job.sql", extra).fails().stderr();
        assert!(
            e.contains("sink 'out': column 'price' would now be Utf8") && e.contains("as Int64"),
            "{e}"
        );
    }
    // A column added, then dropped again, with new input each time: the
    // files of the three versions read as one table, the column NULL
    // where a file lacks it (a REQUIRED column in the files that have it
    // made `SELECT *` fail and `IS NULL` answer false).
    let more = |f: u64| {
        let bids = gen_bids(f + 1, 100, BASE_MS + 200_000 + f as i64 * 50_000, 1500);
        write_parquet(&ws.path(&format!("in/bids-{f}.parquet")), &bids);
    };
    more(3);
    ws.write(
        "job.sql",
        &job_with("SELECT auction, price, price * 2 AS twice FROM bids", "", ""),
    );
    run_now(&ws, "job.sql", &[]).ok();
    more(4);
    ws.write("job.sql", &job_with("SELECT auction FROM bids", "", ""));
    run_now(&ws, "job.sql", &[]).ok();
    let count = |sql: &str| ws.weir(&["query", "--format", "csv", sql]).ok().stdout();
    assert_eq!(
        count("SELECT COUNT(*) AS n, COUNT(twice) AS with_twice, COUNT(price) AS with_price FROM 'out/'"),
        "n,with_twice,with_price\n3200,100,3100\n"
    );
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM 'out/' WHERE twice IS NULL"),
        "n\n3100\n"
    );
    ws.weir(&["query", "SELECT * FROM 'out/'"]).ok();
    // A dropped column added back as another type: refused, as a direct
    // retype is (the records keep the dropped column's type).
    ws.write(
        "job.sql",
        &job_with(
            "SELECT auction, CAST(price AS VARCHAR) AS price FROM bids",
            "",
            "",
        ),
    );
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(e.contains("column 'price' would now be"), "{e}");
}

/// A first run that fails before its first epoch (a mistyped source
/// path) leaves a checkpoint; the corrected job takes it over instead of
/// being refused as "a different query".
#[test]
fn a_job_fixed_after_its_first_run_failed_runs_on_the_same_checkpoint() {
    let ws = Workspace::new();
    let bids = three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "inn/"));
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(e.contains("inn/"), "{e}");
    ws.write("job.sql", &job(700, "parquet", "in/"));
    let r = run_now(&ws, "job.sql", &["--drain"]).ok();
    assert!(r.stderr().contains("never ran an epoch"), "{}", r.stderr());
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
    // Once it has run, a change is checked as always; the refusal warns
    // that --fresh-state would read the changed source again into the
    // same sink.
    ws.write("job.sql", &job(700, "parquet", "inn/"));
    std::fs::create_dir_all(ws.path("inn")).unwrap();
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(e.contains("made by a different query"), "{e}");
    assert!(
        e.contains("With --fresh-state, source 'bids' would start from its beginning"),
        "{e}"
    );
    // The same folder written another way is the same source: it goes on.
    ws.write("job.sql", &job(700, "parquet", "./in"));
    run_now(&ws, "job.sql", &["--drain"]).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids, ORACLE));
}

/// A sink declared wrongly is refused before anything is written: no
/// checkpoint folder (with a lease and metadata) is left for the next run
/// to take up, and no sink folder.
#[test]
fn a_wrongly_declared_sink_leaves_no_checkpoint_behind() {
    let ws = Workspace::new();
    three_files(&ws);
    for (sink, expected) in [
        ("'format' = 'csv'", "format 'csv' is not supported for sinks"),
        ("'format' = 'parquet', 'sink.rolling' = '1'", "sink.rolling"),
    ] {
        let job = job_with("SELECT auction, price FROM bids", "", "").replace(
            "'path' = 'out/', 'format' = 'parquet'",
            &format!("'path' = 'out/', {sink}"),
        );
        ws.write("job.sql", &job);
        let e = run_now(&ws, "job.sql", &[]).fails().stderr();
        assert!(e.contains(expected), "{e}");
        assert!(!ws.path("job.checkpoint").exists(), "a checkpoint was left: {e}");
        assert!(!ws.path("out").exists(), "a sink folder was left: {e}");
    }
}

#[test]
fn errors_a_user_can_act_on() {
    let ws = Workspace::new();
    three_files(&ws);
    // A path that does not exist.
    let e = ws
        .weir(&["query", "SELECT * FROM '/no/such/x/'"])
        .fails()
        .stderr();
    assert!(e.contains("no such file or folder: '/no/such/x/'"), "{e}");
    assert!(!e.contains("datafusion.public"), "{e}");
    // A folder that exists but holds nothing to read (a sink's before its
    // first commit), and a file of a kind read only when declared: not
    // "no such file or folder".
    std::fs::create_dir_all(ws.path("empty")).unwrap();
    ws.write("t.txt", "a,b\n1,2\n");
    // A sink's folder whose job committed epochs without a row yet (its
    // windows open) said it had none "until its first epoch commits".
    ws.write("quiet/_weir/owner.json", "{}");
    for (path, expected) in [
        ("empty/", "'empty/' holds no file to read"),
        ("quiet/", "'quiet/' is a sink's folder with no rows yet"),
        ("t.txt", "'t.txt': not a file kind a query reads by its name"),
    ] {
        let e = ws
            .weir(&["query", &format!("SELECT * FROM '{path}'")])
            .fails()
            .stderr();
        assert!(e.contains(expected), "{e}");
    }
    // A wildcard into subfolders, which DataFusion would answer from the
    // top folder's files alone.
    ws.write("g/a/f.csv", "x\n1\n");
    ws.write("g/top.csv", "x\n3\n");
    for path in ["g/**/*.csv", "g/*/f.csv"] {
        let e = ws
            .weir(&["query", &format!("SELECT * FROM '{path}'")])
            .fails()
            .stderr();
        assert!(
            e.contains("a wildcard matches the files of one folder only"),
            "{e}"
        );
    }
    // A folder (or wildcard) of CSV files with different headers: read by
    // position under one file's header, `n,id` values landed in `id,n`.
    ws.write("h/x.csv", "id,n\n1,10\n");
    ws.write("h/y.csv", "n,id\n20,2\n");
    for path in ["h/", "h/*.csv"] {
        let e = ws
            .weir(&["query", &format!("SELECT id, n FROM '{path}'")])
            .fails()
            .stderr();
        assert!(
            e.contains(&format!(
                "'{path}': its CSV files list different columns (x.csv has id,n; y.csv has n,id)"
            )),
            "{e}"
        );
    }
    // Files in key=value subfolders are read, so checked too.
    ws.write("c2/d=1/a.csv", "id,n\n1,2\n");
    ws.write("c2/d=2/b.csv", "n,id\n4,3\n");
    let e = ws.weir(&["query", "SELECT * FROM 'c2/'"]).fails().stderr();
    assert!(
        e.contains("'c2/': its CSV files list different columns (d=1/a.csv has id,n; d=2/b.csv has n,id)"),
        "{e}"
    );
    // Parquet files under a wildcard are no CSV.
    ws.write("h/z.parquet", "PAR1 not read");
    let e = ws
        .weir(&["query", "SELECT * FROM 'h/*.parquet'"])
        .fails()
        .stderr();
    assert!(!e.contains("CSV"), "{e}");
    std::fs::remove_file(ws.path("h/z.parquet")).unwrap();
    // The same header, quoted or not: read.
    ws.write("h/y.csv", "\"id\",n\r\n2,20\r\n");
    let out = ws
        .weir(&["query", "--format", "csv", "SELECT id, n FROM 'h/' ORDER BY id"])
        .ok()
        .stdout();
    assert_eq!(out, "id,n\n1,10\n2,20\n");
    // An object store that cannot be reached says so, not "no such file".
    let e = ws
        .weir_env(
            &["query", "SELECT * FROM 's3://bkt/x/'"],
            &[
                ("AWS_ENDPOINT", "http://127.0.0.1:1"),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_ACCESS_KEY_ID", "x"),
                ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret"),
            ],
        )
        .fails()
        .stderr();
    assert!(
        e.contains("cannot read 's3://bkt/x/'") && e.contains("Connection refused"),
        "{e}"
    );
    assert!(!e.contains("not-a-real-secret"), "{e}");
    // A declared table asked for with a schema, and a batch query's limit
    // of operators (not "on a stream").
    let e = ws
        .weir_input(
            &["-f", "-"],
            "CREATE TABLE t (a BIGINT) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet');\n\
             SELECT * FROM public.t;",
        )
        .fails()
        .stderr();
    assert!(
        e.contains("'t' is declared here without a schema or catalog"),
        "{e}"
    );
    // A bad option value is refused at CREATE TABLE (line 1), not at the
    // first statement that uses the table.
    for (option, says) in [
        (
            "'max_rows_per_batch' = 'abc'",
            "must be a positive whole number, not 'abc'",
        ),
        ("'csv.delimiter' = ''", "csv.delimiter"),
    ] {
        let e = ws
            .weir_input(
                &["-f", "-"],
                &format!(
                    "CREATE TABLE t (a BIGINT) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'csv', {option});\n\
                     SELECT 1;"
                ),
            )
            .fails()
            .stderr();
        assert!(e.contains("<stdin>:1") && e.contains(says), "{option}: {e}");
    }
    let long = format!("SELECT {} AS n", vec!["1"; 3000].join(" + "));
    let e = ws.weir(&["query", &long]).fails().stderr();
    assert!(
        e.contains("3000 operators in a row") || e.contains("2999 operators in a row"),
        "{e}"
    );
    assert!(!e.contains("on a stream"), "{e}");
    // A script saved with a byte order mark, and nested values as CSV.
    let out = ws
        .weir_input(
            &["--format", "csv", "-f", "-"],
            "\u{feff}SELECT make_array(1, 2) AS l, 7 AS n;",
        )
        .ok()
        .stdout();
    assert_eq!(out, "l,n\n\"[1, 2]\",7\n");
    // A sink's declared type that the query's does not convert to.
    ws.write(
        "typed.sql",
        &job_with("SELECT auction, 'x' AS flag FROM bids", "", "").replace(
            "CREATE TABLE out WITH",
            "CREATE TABLE out (auction BIGINT, flag BOOLEAN) WITH",
        ),
    );
    let e = run_now(&ws, "typed.sql", &[]).fails().stderr();
    assert!(
        e.contains("sink table 'out': column 'flag' (column 2 of 2) is declared BOOLEAN"),
        "{e}"
    );
    // A type Parquet cannot store, refused at planning by name (it failed
    // the first write, and every rerun replayed the epoch into it); as
    // text it runs.
    for (select, says) in [
        (
            "auction, INTERVAL '1' MONTH AS mon",
            "column 'mon' is INTERVAL, which Parquet cannot store",
        ),
        (
            "auction, make_array(INTERVAL '1' DAY) AS l",
            "column 'l' is ARRAY<INTERVAL>, holding INTERVAL, which Parquet cannot store",
        ),
    ] {
        ws.write(
            "interval.sql",
            &job_with(&format!("SELECT {select} FROM bids"), "", ""),
        );
        let e = run_now(&ws, "interval.sql", &[]).fails().stderr();
        assert!(e.contains(says), "{e}");
    }
    ws.write(
        "interval.sql",
        &job_with(
            "SELECT auction, CAST(INTERVAL '1' MONTH AS VARCHAR) AS mon FROM bids",
            "",
            "",
        ),
    );
    run_now(&ws, "interval.sql", &[]).ok();
    // Internal names do not show, in errors or in plans.
    ws.write(
        "nope.sql",
        &job_with(
            "SELECT window_start, window_end, MAX(nope) AS m FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY window_start, window_end",
            "",
            "",
        ),
    );
    let e = run_now(&ws, "nope.sql", &[]).fails().stderr();
    assert!(e.contains("No field named nope") && !e.contains("__weir"), "{e}");
    ws.write("job.sql", &job(700, "parquet", "in/"));
    let plan = ws.weir(&["run", "job.sql", "--explain"]).ok().stdout();
    assert!(
        plan.contains("WindowAggregate") && !plan.contains("__weir"),
        "{plan}"
    );
    // An aggregate over a type it does not take: a planning error.
    ws.write(
        "sum.sql",
        &job_with(
            "SELECT window_start, window_end, SUM(date_time) AS s FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY window_start, window_end",
            "",
            "",
        ),
    );
    let e = run_now(&ws, "sum.sql", &[]).fails().stderr();
    assert!(
        e.contains("function 'sum' does not take an argument of type Timestamp")
            && !e.to_lowercase().contains("internal")
            && !e.contains("bug"),
        "{e}"
    );
}

#[test]
fn sum_over_bigint_wraps_as_datafusion_batch_does() {
    let ws = Workspace::new();
    let bids: Vec<Bid> = (0..4)
        .map(|i| Bid {
            auction: 1,
            price: i64::MAX / 2 + i,
            ts: BASE_MS + i * 100,
        })
        .collect();
    write_parquet(&ws.path("in/a.parquet"), &bids);
    ws.write(
        "sum.sql",
        &job_with(
            "SELECT window_start, SUM(price) AS s FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY window_start, window_end",
            "",
            "",
        ),
    );
    run_now(&ws, "sum.sql", &["--drain"]).ok();
    let got = sink_rows(&ws.path("out"));
    let want = batch_query(
        &bids,
        "SELECT date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00'), SUM(price) FROM bids GROUP BY 1",
    );
    assert_eq!(got, want);
    let wrapped: i128 = bids.iter().map(|b| b.price as i128).sum::<i128>() - (1i128 << 64);
    assert!(got[0].ends_with(&format!("|{wrapped}")), "{got:?}");
}

// ---------------------------------------------------------------- part 8

#[test]
fn settings_are_one_list_in_job_files_and_the_shell() {
    let ws = Workspace::new();
    three_files(&ws);
    // A run option set in the job file works; the flag overrides it.
    ws.write(
        "set.sql",
        &format!(
            "SET 'trigger' = 'available-now';\nSET drain = true;\n{}",
            job(700, "parquet", "in/")
        ),
    );
    let r = ws.weir(&["run", "set.sql"]).ok();
    assert!(r.stderr().contains("(drain)"), "{}", r.stderr());
    assert_eq!(sink_rows(&ws.path("out")), run_straight(700).0);
    // A misspelled key gets the nearest one.
    ws.write(
        "typo.sql",
        &format!("SET 'state.tll' = '1h';\n{}", job(700, "parquet", "in/")),
    );
    let e = ws.weir(&["run", "typo.sql"]).fails().stderr();
    assert!(
        e.contains("unknown setting 'state.tll' (did you mean 'state.ttl'?"),
        "{e}"
    );
    // A shell setting in a job file is refused.
    ws.write(
        "ck.sql",
        &format!("SET checkpoint_dir = 'x';\n{}", job(700, "parquet", "in/")),
    );
    let e = ws.weir(&["run", "ck.sql"]).fails().stderr();
    assert!(e.contains("checkpoint_dir is a shell setting"), "{e}");
    // The shell takes state.ttl and lists every setting.
    let out = ws
        .weir_input(&[], "SET 'state.ttl' = '1h';\nSET;\n")
        .ok()
        .stdout();
    assert!(out.contains("| state.ttl") && out.contains("| 1h"), "{out}");
    assert!(out.contains("window.max_windows_per_row"), "{out}");
}

// ---------------------------------------------------------------- part 9

#[test]
fn a_window_that_puts_each_row_in_too_many_windows_is_refused_with_the_setting() {
    let ws = Workspace::new();
    three_files(&ws);
    let hop = "SELECT window_start, window_end, COUNT(*) AS n FROM TABLE(HOP(TABLE bids, DESCRIPTOR(date_time), INTERVAL '1' MILLISECOND, INTERVAL '1' DAY)) GROUP BY window_start, window_end";
    ws.write("hop.sql", &job_with(hop, "", ""));
    let e = run_now(&ws, "hop.sql", &[]).fails().stderr();
    assert!(
        e.contains("each row would be in 86400000 windows")
            && e.contains("limit of 10000")
            && e.contains("SET 'window.max_windows_per_row'"),
        "{e}"
    );
    let cumulate = "SELECT window_start, window_end, COUNT(*) AS n FROM TABLE(CUMULATE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '1' SECOND, INTERVAL '1' DAY)) GROUP BY window_start, window_end";
    ws.write("cum.sql", &job_with(cumulate, "", ""));
    let e = run_now(&ws, "cum.sql", &[]).fails().stderr();
    assert!(e.contains("86400 windows"), "{e}");
    ws.write(
        "cum.sql",
        &format!(
            "SET 'window.max_windows_per_row' = '86400';\n{}",
            job_with(cumulate, "", "")
        ),
    );
    run_now(&ws, "cum.sql", &[]).ok();
}

// ---------------------------------------------------------------- part 10

/// Starts a long `available-now` run, sends `signal` once its first epoch
/// is done, and returns its exit code and stderr.
fn interrupted(signal: i32) -> (Option<i32>, String, Workspace) {
    let ws = Workspace::new();
    for f in 0..6 {
        write_parquet(
            &ws.path(&format!("in/bids-{f}.parquet")),
            &gen_bids(f, 2000, BASE_MS + f as i64 * 100_000, 0),
        );
    }
    ws.write("job.sql", &job(100, "parquet", "in/"));
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "job.sql", "--trigger", "available-now"])
        .current_dir(ws.dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_first_commit(&ws);
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        ws,
    )
}

#[test]
fn sigterm_stops_after_the_epoch_and_an_unfinished_run_exits_non_zero() {
    for (signal, code) in [(15, 143), (2, 130)] {
        let (status, e, ws) = interrupted(signal);
        assert_eq!(status, Some(code), "{e}");
        assert!(e.contains("stopping after the current epoch"), "{e}");
        assert!(e.contains("stopped before the input was done"), "{e}");
        // The checkpoint is whole: the next run finishes the job.
        ws.weir(&["run", "job.sql", "--trigger", "available-now"]).ok();
        let last = std::fs::read_dir(ws.path("job.checkpoint/commits"))
            .unwrap()
            .count();
        assert!(last > 1);
    }
}

// ---------------------------------------------------------------- part 11

/// The shell's statements for the bids in `in/`.
const DECLARE: &str = "CREATE TABLE bids (auction BIGINT, price BIGINT NOT NULL, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
  WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet');
SET trigger = 'available-now';
";

#[test]
fn the_shell_knows_views_peeks_explain_analyze_and_other_shells_habits() {
    let ws = Workspace::new();
    three_files(&ws);
    let script = format!(
        "{DECLARE}
CREATE VIEW pricey AS SELECT * FROM bids WHERE price > 900;
SELECT auction, price FROM pricey LIMIT 3;
SHOW TABLES;
\\dt
\\d bids
EXPLAIN ANALYZE SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE pricey, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY window_start, window_end;
CREATE TABLE sunk WITH ('connector' = 'files', 'path' = 'sunk/', 'format' = 'parquet');
EXPLAIN ANALYZE INSERT INTO sunk SELECT auction FROM pricey;
"
    );
    let out = ws.weir_input(&[], &script).ok().stdout();
    assert!(out.contains("declared view pricey"), "{out}");
    assert!(out.contains("(3 rows; LIMIT reached)"), "{out}");
    assert_eq!(
        out.matches("| pricey | view").count(),
        2,
        "SHOW TABLES and \\dt: {out}"
    );
    assert!(
        out.contains("| price     | BIGINT NOT NULL | no"),
        "types as declared: {out}"
    );
    assert!(out.contains("| date_time | TIMESTAMP(3)"), "{out}");
    assert!(
        out.contains("WindowAggregateExec") && out.contains("output_rows=") && out.contains("LateFilterExec"),
        "{out}"
    );
    // EXPLAIN ANALYZE of an INSERT runs its query and writes nothing.
    assert!(
        out.contains("== INSERT INTO sunk (its query run, nothing written)")
            && out.matches("SELECT (live results)").count() == 1,
        "{out}"
    );
    assert!(!ws.path("sunk").exists() || parquet_files(&ws.path("sunk")).is_empty());
    for (typed, hint) in [
        ("\\x\n", "\\format json"),
        (".tables\n", "\\d, or SHOW TABLES"),
        (".help\n", "\\?"),
    ] {
        let e = ws.weir_input(&[], typed).fails().stderr();
        assert!(e.contains(hint), "{typed}: {e}");
    }
    // `.quit` leaves, as in SQLite's and DuckDB's shells: what follows it
    // does not run.
    let run = ws.weir_input(&[], ".quit\nSELECT 'after' AS a;\n").ok();
    assert!(!run.stdout().contains("after"), "{}", run.stdout());
}

/// A script whose queries run under an interval trigger never ends by
/// itself: the shell says it runs until Ctrl-C (it said "until their
/// input is done"), and Ctrl-C stops it after the epoch.
#[test]
fn a_script_under_an_interval_trigger_says_it_runs_until_ctrl_c() {
    use std::io::Write;
    let ws = Workspace::new();
    three_files(&ws);
    let script = format!(
        "{DECLARE}SET trigger = '100ms';
CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
INSERT INTO out SELECT auction, price FROM bids;
"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(ws.dir.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while parquet_files(&ws.path("out")).is_empty() {
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("weir: running out until Ctrl-C"), "{e}");
    assert!(!e.contains("input is done"), "{e}");
}

#[test]
fn the_shells_background_insert_follows_the_rules_weir_run_follows() {
    let ws = Workspace::new();
    three_files(&ws);
    let insert = |filter: &str, key: &str| {
        format!(
            "{DECLARE}
CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
INSERT INTO out SELECT window_start, window_end, {key}, COUNT(*) AS n
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) {filter}
GROUP BY window_start, window_end, {key};
"
        )
    };
    ws.weir_input(&[], &insert("", "auction")).ok();
    // A new filter is a compatible change: it continues, with a note.
    let r = ws.weir_input(&[], &insert("WHERE price > 10", "auction")).ok();
    assert!(r.stderr().contains("continuing with its state"), "{}", r.stderr());
    // Another key is not: refused, with the way forward.
    let e = ws.weir_input(&[], &insert("", "price")).fails().stderr();
    assert!(
        e.contains("--fresh-state") || e.contains("cannot be carried over"),
        "{e}"
    );
}

/// An epoch whose every row has no event time (NULL) says so, and how to
/// make such rows bad records; it said they were older than a watermark
/// shown empty ("'src' at "), and offered a longer delay.
#[test]
fn rows_without_an_event_time_are_said_to_be_so() {
    let ws = Workspace::new();
    ws.write("in/a.json", "{\"k\":1,\"ts\":null}\n{\"k\":2}\n");
    ws.write(
        "job.sql",
        "CREATE TABLE src (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'json');
         CREATE TABLE o WITH ('connector' = 'files', 'path' = 'o/', 'format' = 'parquet');
         INSERT INTO o SELECT window_start, COUNT(*) AS n
         FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end;",
    );
    let e = run_now(&ws, "job.sql", &[]).ok().stderr();
    assert!(
        e.contains("every one of the 2 rows")
            && e.contains("had no event time (NULL in the WATERMARK column)")
            && e.contains("declare the column NOT NULL"),
        "{e}"
    );
    assert!(
        !e.contains("at )") && !e.contains("longer WATERMARK delay"),
        "{e}"
    );
}

/// A peek (`SELECT ... LIMIT n` over a source) shows the input's first
/// rows, in file and row order, on any thread count: on two threads it
/// showed rows from the middle of a file in most runs.
#[test]
fn a_peek_shows_the_first_rows_on_any_thread_count() {
    let ws = Workspace::new();
    let bids = three_files(&ws);
    let expected: String = bids[..3]
        .iter()
        .map(|b| format!("{},{}\n", b.auction, b.price))
        .collect();
    for _ in 0..3 {
        let out = ws
            .weir_input(
                &["--format", "csv"],
                &format!("SET threads = 2;\n{DECLARE}SELECT auction, price FROM bids LIMIT 3;\n"),
            )
            .ok()
            .stdout();
        assert!(out.contains(&format!("auction,price\n{expected}")), "{out}");
    }
}

/// An event time beyond year 9999 (a corrupt value; DuckDB's 'infinity')
/// has no window: the row is late (counted, sent to the late sink) and
/// leaves the watermark where it was. It was given a window whose end had
/// wrapped to before 1970 (TUMBLE), or vanished uncounted (HOP).
#[test]
fn an_event_time_beyond_year_9999_is_late_not_a_wrapped_window() {
    for window in [
        "TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '10' SECOND)",
        "HOP(TABLE src, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND)",
    ] {
        let ws = Workspace::new();
        ws.write(
            "in/a.json",
            "{\"k\":1,\"ts\":\"2026-01-01 00:00:00\"}\n{\"k\":2,\"ts\":9223372036854770000}\n\
             {\"k\":3,\"ts\":\"2026-01-01 00:00:01\"}\n",
        );
        ws.write(
            "job.sql",
            &format!(
                "CREATE TABLE src (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)
                   WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'json',
                         'late.policy' = 'sink', 'late.sink' = 'late');
                 CREATE TABLE late WITH ('connector' = 'files', 'path' = 'late/', 'format' = 'parquet');
                 CREATE TABLE o WITH ('connector' = 'files', 'path' = 'o/', 'format' = 'parquet');
                 INSERT INTO o SELECT window_start, window_end, COUNT(*) AS n
                 FROM TABLE({window}) GROUP BY window_start, window_end;"
            ),
        );
        let r = run_now(&ws, "job.sql", &["--drain", "--progress-json", "p.json"]).ok();
        let late: u64 = progress(&ws.path("p.json"))
            .iter()
            .map(|l| l["late_rows"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(late, 1, "{}", r.stderr());
        let q = |sql: &str| ws.weir(&["query", "--format", "csv", sql]).ok().stdout();
        assert_eq!(q("SELECT k FROM 'late/'"), "k\n2\n");
        assert_eq!(
            q("SELECT COUNT(*) AS bad FROM 'o/' WHERE window_end <= window_start OR n <> 2"),
            "bad\n0\n",
            "{window}"
        );
        assert!(!q("SELECT * FROM 'o/'").is_empty());
    }
}

/// A file deleted after its epoch was planned: the run says the file is
/// gone and to run again (not "fix or remove the file"), and the next run
/// plans the epoch anew without it, exactly once.
#[test]
fn a_file_gone_after_its_epoch_was_planned_is_said_to_be_gone() {
    let ws = Workspace::new();
    let bids = three_files(&ws);
    ws.write("job.sql", &job(700, "parquet", "in/"));
    let crashed = ws.weir_env(
        &["run", "job.sql", "--trigger", "available-now"],
        &[("WEIR_FAILPOINT", "offsets-written@1")],
    );
    assert!(!crashed.0.status.success());
    std::fs::remove_file(ws.path("in/bids-0.parquet")).unwrap();
    let e = run_now(&ws, "job.sql", &[]).fails().stderr();
    assert!(
        e.contains("the file is gone: run the job again") && !e.contains("fix or remove"),
        "{e}"
    );
    run_now(&ws, "job.sql", &["--drain"]).ok();
    assert_eq!(sink_rows(&ws.path("out")), batch_query(&bids[1000..], ORACLE));
}

/// Two queries writing one sink each judge lateness: their late rows are
/// told apart by the statement as well as the sink.
#[test]
fn late_rows_of_two_queries_into_one_sink_are_told_apart() {
    let ws = Workspace::new();
    ws.write(
        "in/a.json",
        "{\"k\":1,\"ts\":\"2026-01-01 00:00:10\"}\n{\"k\":2,\"ts\":\"2026-01-01 00:00:01\"}\n",
    );
    ws.write(
        "job.sql",
        "CREATE TABLE src (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'json', 'late.policy' = 'sink', 'late.sink' = 'late');
CREATE TABLE late WITH ('connector' = 'files', 'path' = 'late/', 'format' = 'parquet');
CREATE TABLE o WITH ('connector' = 'files', 'path' = 'o/', 'format' = 'parquet');
INSERT INTO o SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '5' SECOND)) GROUP BY window_start, window_end;
INSERT INTO o SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end;
",
    );
    run_now(&ws, "job.sql", &[]).ok();
    let tags = ws
        .weir(&[
            "query",
            "--format",
            "csv",
            "SELECT COUNT(DISTINCT weir_late_for) AS n, MIN(weir_late_for) AS t FROM 'late/'",
        ])
        .ok()
        .stdout();
    assert!(tags.starts_with("n,t\n2,\"o (`INSERT INTO o SELECT"), "{tags}");
    assert!(tags.contains("(line 5)"), "{tags}");
}

/// A late sink receives late rows only, of one shape: not a query's rows
/// (the helper that found this mixed aggregates and late rows in one
/// folder), not a source's, not two sources' rows of different columns.
#[test]
fn a_late_sink_is_a_table_of_its_own() {
    let ws = Workspace::new();
    ws.write("in/a.csv", "c,ts\nx,2026-01-01 00:00:05\ny,2026-01-01 00:00:01\n");
    ws.write("in2/a.csv", "n,ts\n1,2026-01-01 00:00:05\n");
    let source = |name: &str, path: &str, column: &str, late: &str| {
        format!(
            "CREATE TABLE {name} ({column}, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH ('connector' = 'files', 'path' = '{path}/', 'format' = 'csv', 'late.policy' = 'sink', 'late.sink' = '{late}');\n"
        )
    };
    let count = |sink: &str, from: &str| {
        format!(
            "INSERT INTO {sink} SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE {from}, DESCRIPTOR(ts), INTERVAL '2' SECOND)) GROUP BY window_start, window_end;\n"
        )
    };
    let sinks = "CREATE TABLE o WITH ('connector' = 'files', 'path' = 'o/', 'format' = 'parquet');
CREATE TABLE o2 WITH ('connector' = 'files', 'path' = 'o2/', 'format' = 'parquet');
CREATE TABLE late WITH ('connector' = 'files', 'path' = 'late/', 'format' = 'parquet');\n";
    for (job, message) in [
        (
            format!(
                "{}{sinks}{}",
                source("src", "in", "c VARCHAR", "o"),
                count("o", "src")
            ),
            "late sink 'o' (`INSERT INTO o",
        ),
        (
            format!(
                "{}{}{sinks}{}{}",
                source("src", "in", "c VARCHAR", "late"),
                source("src2", "in2", "n BIGINT", "late"),
                count("o", "src"),
                count("o2", "src2")
            ),
            "it already receives late rows of another shape",
        ),
        (
            format!(
                "{}{}{sinks}{}{}",
                source("src", "in", "c VARCHAR", "src2"),
                source("src2", "in2", "n BIGINT", "late"),
                count("o", "src"),
                count("o2", "src2")
            ),
            "that table is a source of this job",
        ),
    ] {
        ws.write("job.sql", &job);
        let e = run_now(&ws, "job.sql", &[]).fails().stderr();
        assert!(e.contains(message), "{job}\n{e}");
        // Refused before the checkpoint is claimed: nothing recorded.
        assert!(!ws.path("job.checkpoint/metadata.json").exists(), "{job}");
    }
    // Each source with a late table of its own runs.
    let job = format!(
        "{}{}{sinks}CREATE TABLE late2 WITH ('connector' = 'files', 'path' = 'late2/', 'format' = 'parquet');\n{}{}",
        source("src", "in", "c VARCHAR", "late"),
        source("src2", "in2", "n BIGINT", "late2"),
        count("o", "src"),
        count("o2", "src2")
    );
    ws.write("job.sql", &job);
    run_now(&ws, "job.sql", &[]).ok();
    let late = ws
        .weir(&["query", "--format", "csv", "SELECT c FROM 'late/'"])
        .ok()
        .stdout();
    assert_eq!(late, "c\ny\n");
}

/// A file changed after it was read, in a stream with no new input: the
/// warning comes at the next listing (progress line and JSON), not at the
/// next epoch, which a quiet stream may not have for hours.
#[test]
fn a_change_found_between_epochs_is_warned_about_at_once() {
    let ws = Workspace::new();
    write_parquet(&ws.path("in/a.parquet"), &gen_bids(1, 50, BASE_MS, 0));
    ws.write("job.sql", &job(10_000, "parquet", "in/"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "run",
            "job.sql",
            "--trigger",
            "100ms",
            "--progress-json",
            "p.json",
        ])
        .current_dir(ws.dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let warned = |deadline: Instant| {
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(ws.path("p.json")).unwrap_or_default();
            if text.contains("a.parquet changed after it was read") {
                return Some(text);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    };
    wait_for_first_commit(&ws);
    write_parquet(&ws.path("in/a.parquet"), &gen_bids(1, 60, BASE_MS, 0));
    let text = warned(Instant::now() + Duration::from_secs(60));
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    let text = text.expect("no warning while the job ran");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one epoch, then the warning alone: {text}");
    assert!(
        lines[1].starts_with("{\"warnings\":[\"") && lines[1].contains("in/a.parquet changed"),
        "{text}"
    );
    assert_eq!(status.code(), Some(0));
}

/// Waits (up to a minute) until a running job has committed its first
/// epoch into `job.checkpoint`.
fn wait_for_first_commit(ws: &Workspace) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ws
        .path("job.checkpoint/commits/00000000000000000001.json")
        .exists()
    {
        assert!(Instant::now() < deadline, "no epoch committed");
        std::thread::sleep(Duration::from_millis(10));
    }
}
