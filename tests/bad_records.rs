//! End-to-end tests of bad input records (`'on_error'`): JSON and CSV
//! sources with malformed records, values of the wrong type and missing
//! NOT NULL values, run by the real `weir` binary with `skip`,
//! `dead_letter` and `fail`, and killed with SIGKILL in between.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::*;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Rows per epoch: each file spans several epochs.
const MAX_ROWS: usize = 250;

/// The job: one windowed query per source, both sources with `policy`
/// (e.g. `'on_error' = 'skip'`) in their options.
fn job(policy: &str) -> String {
    let source = |name: &str, format: &str| {
        format!(
            "CREATE TABLE {name} (auction BIGINT NOT NULL, price BIGINT NOT NULL, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
  WITH ('connector' = 'files', 'path' = '{format}/', 'format' = '{format}',
        'max_rows_per_batch' = '{MAX_ROWS}'{policy});\n"
        )
    };
    let query = |sink: &str, source: &str| {
        format!(
            "CREATE TABLE {sink} WITH ('connector' = 'files', 'path' = '{sink}/', 'format' = 'parquet');
INSERT INTO {sink}
SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s, MAX(price) AS m
FROM TABLE(TUMBLE(TABLE {source}, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction;\n"
        )
    };
    format!(
        "{}{}CREATE TABLE bad WITH ('connector' = 'files', 'path' = 'bad/', 'format' = 'parquet');\n{}{}",
        source("bids_json", "json"),
        source("bids_csv", "csv"),
        query("out_json", "bids_json"),
        query("out_csv", "bids_csv"),
    )
}

const SKIP: &str = ", 'on_error' = 'skip'";
const DEAD_LETTER: &str = ", 'on_error' = 'dead_letter', 'dead_letter' = 'bad'";

/// The same aggregation as a DataFusion batch query.
const ORACLE: &str = "SELECT date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS ws,
        date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') + INTERVAL '10' SECOND AS we,
        auction, COUNT(*), SUM(price), MAX(price)
 FROM bids GROUP BY 1, 2, 3";

/// A bad record as the dead-letter table should hold it:
/// `source|file name|line|record number|error|record`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    source: String,
    file: String,
    /// `None` for Parquet, whose records have no lines.
    line: Option<i64>,
    number: i64,
    error: String,
    record: String,
}

/// A file's text, built record by record, keeping count of lines.
struct Text {
    source: &'static str,
    file: &'static str,
    text: String,
    line: i64,
    records: i64,
    bad: Vec<Expected>,
}

impl Text {
    fn new(source: &'static str, file: &'static str, header: Option<&str>) -> Self {
        let mut t = Text {
            source,
            file,
            text: String::new(),
            line: 1,
            records: 0,
            bad: Vec::new(),
        };
        if let Some(h) = header {
            t.text.push_str(h);
            t.text.push('\n');
            t.line += 1;
        }
        t
    }

    fn push(&mut self, record: &str) {
        self.text.push_str(record);
        self.text.push('\n');
        self.line += 1 + record.matches('\n').count() as i64;
        self.records += 1;
    }

    fn bad(&mut self, record: &str, error: &str) {
        self.bad.push(Expected {
            source: self.source.into(),
            file: self.file.into(),
            line: Some(self.line),
            number: self.records + 1,
            error: error.into(),
            record: record.into(),
        });
        self.push(record);
    }
}

fn json_record(b: &Bid) -> String {
    format!(
        "{{\"auction\": {}, \"price\": {}, \"date_time\": \"{}\", \"other\": [1, 2]}}",
        b.auction,
        b.price,
        iso(b.ts)
    )
}

fn csv_record(b: &Bid, i: usize) -> String {
    // Now and then a comment over two lines: a record's line is its first.
    let comment = if i.is_multiple_of(7) {
        "\"two\nlines\""
    } else {
        "\"a, b\""
    };
    format!("{},{},{},{comment}", iso(b.ts), b.auction, b.price)
}

/// Bids and a JSON file of them with a bad record of each kind (malformed,
/// wrong type, missing NOT NULL value) every `every` records from `first`
/// (none without `every`).
fn json_file(name: &'static str, bids: &[Bid], first: usize, every: Option<usize>) -> Text {
    let mut t = Text::new("bids_json", name, None);
    for (i, b) in bids.iter().enumerate() {
        if let Some(every) = every
            && i >= first
            && (i - first).is_multiple_of(every)
        {
            match (i / every) % 3 {
                0 => t.bad(
                    &format!(
                        "{{\"auction\": {}, \"price\": {}, \"date_time\": \"{}",
                        b.auction,
                        b.price,
                        iso(b.ts)
                    ),
                    "not a JSON object",
                ),
                1 => t.bad(
                    &format!(
                        "{{\"auction\": {}, \"price\": \"cheap\", \"date_time\": \"{}\"}}",
                        b.auction,
                        iso(b.ts)
                    ),
                    "column 'price': failed to parse \"cheap\" as Int64",
                ),
                _ => t.bad(
                    &format!("{{\"auction\": {}, \"date_time\": \"{}\"}}", b.auction, iso(b.ts)),
                    "column 'price' has no value (it is declared NOT NULL)",
                ),
            }
            if i % 2 == 0 {
                t.text.push('\n'); // a blank line is no record
                t.line += 1;
            }
        }
        t.push(&json_record(b));
    }
    t
}

/// The same for CSV: wrong number of fields, wrong type, missing value.
fn csv_file(name: &'static str, bids: &[Bid], first: usize, every: Option<usize>) -> Text {
    let mut t = Text::new("bids_csv", name, Some("date_time,auction,price,comment"));
    for (i, b) in bids.iter().enumerate() {
        if let Some(every) = every
            && i >= first
            && (i - first).is_multiple_of(every)
        {
            match (i / every) % 3 {
                0 => t.bad(
                    &format!("{},{}", iso(b.ts), b.auction),
                    "expected 4 fields (one per column of the table), found 2",
                ),
                1 => t.bad(
                    &format!("{},{},cheap,\"x\ny\"", iso(b.ts), b.auction),
                    "column 'price': failed to parse \"cheap\" as Int64",
                ),
                _ => t.bad(
                    &format!("{},,{},x", iso(b.ts), b.price),
                    "column 'auction' has no value (it is declared NOT NULL)",
                ),
            }
        }
        t.push(&csv_record(b, i));
    }
    t
}

/// Two files per format, with bad records (or without, `clean`); returns
/// the good bids per format and the bad records expected.
fn write_inputs(ws: &Workspace, clean: bool) -> (Vec<Bid>, Vec<Bid>, Vec<Expected>) {
    let every = (!clean).then_some(97);
    let a = gen_bids(1, 600, BASE_MS, 1500);
    let b = gen_bids(2, 600, BASE_MS + 30_000, 1500);
    let files = [
        json_file("a.json", &a, 5, every),
        json_file("b.json", &b, 0, every),
        csv_file("a.csv", &a, 3, every),
        csv_file("b.csv", &b, 249, every),
    ];
    let mut bad = Vec::new();
    for f in &files {
        let dir = if f.file.ends_with(".json") { "json" } else { "csv" };
        ws.write(&format!("{dir}/{}", f.file), &f.text);
        bad.extend(f.bad.iter().cloned());
    }
    bad.sort();
    let both: Vec<Bid> = a.iter().chain(&b).copied().collect();
    (both.clone(), both, bad)
}

/// The dead-letter table as the rows committed to `dir`, sorted.
fn dead_letters(dir: &Path) -> Vec<Expected> {
    let mut batches: Vec<RecordBatch> = Vec::new();
    for f in parquet_files(dir) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    let mut out = Vec::new();
    for b in &batches {
        let text = |name: &str, i: usize| -> String {
            let c = b.column_by_name(name).unwrap();
            match c.data_type() {
                datafusion::arrow::datatypes::DataType::Utf8View => c.as_string_view().value(i).to_string(),
                _ => c.as_string::<i32>().value(i).to_string(),
            }
        };
        let int = |name: &str, i: usize| {
            let c = b.column_by_name(name).unwrap().as_primitive::<Int64Type>();
            c.is_valid(i).then(|| c.value(i))
        };
        for i in 0..b.num_rows() {
            let file = text("file", i);
            let dir = file.rsplit('.').next().unwrap();
            let name = file.rsplit('/').next().unwrap().to_string();
            assert!(
                file.starts_with("file://") && file.ends_with(&format!("/{dir}/{name}")),
                "{file}"
            );
            let error = text("error", i);
            out.push(Expected {
                source: text("source", i),
                file: name,
                line: int("line", i),
                number: int("record_number", i).unwrap(),
                // A malformed line's reason goes on with the parser's words.
                error: if error.starts_with("not a JSON object") {
                    "not a JSON object".into()
                } else {
                    error
                },
                record: text("record", i),
            });
        }
    }
    out.sort();
    out
}

fn run(ws: &Workspace, env: &[(&str, &str)]) -> Run {
    ws.weir_env(
        &[
            "run",
            "job.sql",
            "--trigger",
            "available-now",
            "--drain",
            "--progress-json",
            "p.json",
        ],
        env,
    )
}

/// The output of the job over the good records only (no bad record, the
/// default policy).
fn good_only() -> (Vec<String>, Vec<String>) {
    let ws = Workspace::new();
    write_inputs(&ws, true);
    ws.write("job.sql", &job(""));
    run(&ws, &[]).ok();
    (sink_rows(&ws.path("out_json")), sink_rows(&ws.path("out_csv")))
}

#[test]
fn skip_and_dead_letter_give_the_output_of_the_good_records_alone() {
    let (json_expected, csv_expected) = good_only();
    for policy in [SKIP, DEAD_LETTER] {
        let ws = Workspace::new();
        let (json_bids, csv_bids, bad) = write_inputs(&ws, false);
        let kinds: BTreeSet<(&str, &str)> = bad
            .iter()
            .map(|b| (b.source.as_str(), b.error.as_str()))
            .collect();
        assert_eq!(
            kinds.len(),
            6,
            "every kind of bad record in both formats: {kinds:?}"
        );
        ws.write("job.sql", &job(policy));
        let r = run(&ws, &[]).ok();
        assert_eq!(sink_rows(&ws.path("out_json")), json_expected, "{policy}");
        assert_eq!(sink_rows(&ws.path("out_csv")), csv_expected, "{policy}");
        // And the good records are exactly the bids written.
        assert_eq!(json_expected, batch_query(&on_time(&json_bids, 2000).0, ORACLE));
        assert_eq!(csv_expected, batch_query(&on_time(&csv_bids, 2000).0, ORACLE));

        let p = progress(&ws.path("p.json"));
        assert!(p.len() > 5, "several epochs");
        assert_eq!(sum_field(&p, "bad_rows") as usize, bad.len(), "{policy}");
        assert_eq!(sum_field(&p, "rows_in"), 2 * 1200, "bad records are not rows in");
        // The progress lines and the summary count them too.
        let err = r.stderr();
        let shown: usize = err
            .lines()
            .filter(|l| l.starts_with("epoch "))
            .map(|l| {
                let n = l.split("  bad ").nth(1).unwrap().split(' ').next().unwrap();
                n.parse::<usize>().unwrap()
            })
            .sum();
        assert_eq!(shown, bad.len(), "{err}");
        assert!(err.contains(&format!("0 late, {} bad;", bad.len())), "{err}");
        if policy == DEAD_LETTER {
            assert_eq!(dead_letters(&ws.path("bad")), bad);
        } else {
            assert!(parquet_files(&ws.path("bad")).is_empty());
        }
        // The commit log has the count too.
        let commits: u64 = std::fs::read_dir(ws.path("job.checkpoint/commits"))
            .unwrap()
            .map(|e| {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap();
                v["bad_rows"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(commits as usize, bad.len());
    }
}

#[test]
fn dead_letters_are_exactly_once_across_sigkill_and_restart() {
    let (json_expected, csv_expected) = good_only();
    for step in [
        "offsets-written",
        "sink-staged",
        "state-written",
        "committed",
        "published",
    ] {
        for epoch in [1, 3] {
            let ws = Workspace::new();
            let (_, _, bad) = write_inputs(&ws, false);
            ws.write("job.sql", &job(DEAD_LETTER));
            let failpoint = format!("{step}@{epoch}");
            run(&ws, &[("WEIR_FAILPOINT", failpoint.as_str())]).killed();
            // What is visible is committed: a part of the bad records, once.
            let partial = dead_letters(&ws.path("bad"));
            let unique: BTreeSet<&Expected> = partial.iter().collect();
            assert_eq!(unique.len(), partial.len(), "{failpoint}: {partial:?}");
            assert!(partial.iter().all(|r| bad.contains(r)), "{failpoint}");
            run(&ws, &[]).ok();
            assert_eq!(dead_letters(&ws.path("bad")), bad, "killed at {failpoint}");
            assert_eq!(sink_rows(&ws.path("out_json")), json_expected, "{failpoint}");
            assert_eq!(sink_rows(&ws.path("out_csv")), csv_expected, "{failpoint}");
        }
    }
}

#[test]
fn fail_stops_naming_file_line_and_column_and_a_fixed_file_continues() {
    let ws = Workspace::new();
    let a = gen_bids(1, 600, BASE_MS, 1500);
    // A good JSON file and CSV file; then one record of each broken.
    let json_line = |b: &Bid| json_record(b);
    let mut json: Vec<String> = a.iter().map(json_line).collect();
    let mut csv: Vec<String> = a.iter().enumerate().map(|(i, b)| csv_record(b, i)).collect();
    let good_json = json[400].clone();
    let good_csv = csv[300].clone();
    json[400] = good_json.replace("\"price\": ", "\"price\": \"x");
    json[400] = json[400].replacen(", \"date_time\"", "\", \"date_time\"", 1);
    assert!(good_csv.ends_with(",\"a, b\""));
    csv[300] = format!("{},{},,\"a, b\"", iso(a[300].ts), a[300].auction);
    let write = |json: &[String], csv: &[String]| {
        ws.write("json/a.json", &(json.join("\n") + "\n"));
        ws.write(
            "csv/a.csv",
            &format!("date_time,auction,price,comment\n{}\n", csv.join("\n")),
        );
    };
    write(&json, &csv);
    ws.write("job.sql", &job(""));

    // Epoch 1 reads records 1-250 of each file; epoch 2 meets the CSV's.
    let e = run(&ws, &[]).fails().stderr();
    let csv_line = 2 + csv[..300]
        .iter()
        .map(|r| 1 + r.matches('\n').count())
        .sum::<usize>();
    assert!(
        e.contains(&format!(
            "/csv/a.csv: line {csv_line}: column 'price' has no value (it is declared NOT NULL)"
        )),
        "{e}"
    );
    assert!(e.contains("epoch 2 was not committed"), "{e}");
    let p = progress(&ws.path("p.json"));
    assert_eq!(p.len(), 1, "epoch 1 committed");
    let committed = (sink_rows(&ws.path("out_json")), sink_rows(&ws.path("out_csv")));

    // Running again without a fix stops again, and changes nothing.
    run(&ws, &[]).fails();
    assert_eq!(
        (sink_rows(&ws.path("out_json")), sink_rows(&ws.path("out_csv"))),
        committed
    );

    // Fixing the CSV record: the JSON one stops the job next.
    csv[300] = good_csv;
    write(&json, &csv);
    let e = run(&ws, &[]).fails().stderr();
    assert!(
        e.contains("/json/a.json: line 401: column 'price': failed to parse \"x"),
        "{e}"
    );

    // Fixing that too: the job finishes, with every row exactly once.
    json[400] = good_json;
    write(&json, &csv);
    run(&ws, &[]).ok();
    let expected = batch_query(&on_time(&a, 2000).0, ORACLE);
    assert_eq!(sink_rows(&ws.path("out_json")), expected);
    assert_eq!(sink_rows(&ws.path("out_csv")), expected);
    assert_eq!(sum_field(&progress(&ws.path("p.json")), "bad_rows"), 0);
}

#[test]
fn a_dead_letter_table_must_be_a_sink_of_its_own() {
    let ws = Workspace::new();
    write_inputs(&ws, true);
    for (options, message) in [
        (
            ", 'on_error' = 'dead_letter'",
            "needs 'dead_letter' = '<sink table>'",
        ),
        (
            ", 'on_error' = 'dead_letter', 'dead_letter' = 'nowhere'",
            "'dead_letter' = 'nowhere': no such table is declared",
        ),
        (
            ", 'on_error' = 'dead_letter', 'dead_letter' = 'out_csv'",
            "already receives a query's rows",
        ),
        (
            ", 'on_error' = 'dead_letter', 'dead_letter' = 'bids_csv'",
            "is a source of this job",
        ),
        (
            ", 'on_error' = 'drop'",
            "unknown 'on_error' 'drop' (fail, skip or dead_letter)",
        ),
    ] {
        ws.write("job.sql", &job(options));
        let e = run(&ws, &[]).fails().stderr();
        assert!(e.contains(message), "{options}: {e}");
        // Refused before the checkpoint is claimed: nothing recorded.
        assert!(!ws.path("job.checkpoint/metadata.json").exists(), "{options}");
    }
    ws.write("job.sql", &job(DEAD_LETTER));
    run(&ws, &[]).ok();
    assert!(ws.path("job.checkpoint/metadata.json").exists());
}

/// A job over Parquet files in `parquet/`, declared narrower than the files
/// (`price INT NOT NULL` where the files have nullable BIGINT), so rows can
/// be bad: a NULL in a NOT NULL column, a price that does not fit an INT.
fn parquet_job(policy: &str) -> String {
    format!(
        "CREATE TABLE bids_pq (auction BIGINT NOT NULL, price INT NOT NULL, date_time TIMESTAMP(3),
  WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
  WITH ('connector' = 'files', 'path' = 'parquet/', 'format' = 'parquet',
        'max_rows_per_batch' = '{MAX_ROWS}'{policy});
CREATE TABLE bad WITH ('connector' = 'files', 'path' = 'bad/', 'format' = 'parquet');
CREATE TABLE out_pq WITH ('connector' = 'files', 'path' = 'out_pq/', 'format' = 'parquet');
INSERT INTO out_pq
SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s, MAX(price) AS m
FROM TABLE(TUMBLE(TABLE bids_pq, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, auction;\n"
    )
}

/// Writes `parquet/a.parquet`: the bids, with a bad row of each kind
/// inserted every 97 rows from row 300 (so epoch 1, rows 1-250, is clean),
/// in row groups of 100. Returns the bad rows as the dead-letter table
/// should hold them.
fn write_parquet_input(ws: &Workspace, bids: &[Bid]) -> Vec<Expected> {
    use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;
    use std::sync::Arc;

    let (mut auctions, mut prices, mut times) = (Vec::new(), Vec::new(), Vec::new());
    let mut bad = Vec::new();
    // The Parquet record: the row's values as JSON (a timestamp without
    // its fraction when it is whole seconds, as Arrow writes it).
    let render = |a: Option<i64>, p: Option<i64>, ts: i64| {
        let v = |x: Option<i64>| x.map_or("null".to_string(), |x| x.to_string());
        format!(
            "{{\"auction\":{},\"price\":{},\"date_time\":\"{}\"}}",
            v(a),
            v(p),
            iso(ts).trim_end_matches(".000")
        )
    };
    for (i, b) in bids.iter().enumerate() {
        if i >= 300 && (i - 300).is_multiple_of(97) {
            let (a, p, error) = match (i / 97) % 3 {
                0 => (
                    None,
                    Some(b.price),
                    "column 'auction' has no value (it is declared NOT NULL)",
                ),
                1 => (
                    Some(b.auction),
                    None,
                    "column 'price' has no value (it is declared NOT NULL)",
                ),
                _ => (
                    Some(b.auction),
                    Some(3_000_000_000),
                    "column 'price': 3000000000 (Int64) does not convert to the declared Int32",
                ),
            };
            auctions.push(a);
            prices.push(p);
            times.push(b.ts);
            bad.push(Expected {
                source: "bids_pq".into(),
                file: "a.parquet".into(),
                line: None,
                number: auctions.len() as i64,
                error: error.into(),
                record: render(a, p, b.ts),
            });
        }
        auctions.push(Some(b.auction));
        prices.push(Some(b.price));
        times.push(b.ts);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(auctions)),
            Arc::new(Int64Array::from(prices)),
            Arc::new(TimestampMillisecondArray::from(times)),
        ],
    )
    .unwrap();
    std::fs::create_dir_all(ws.path("parquet")).unwrap();
    let file = std::fs::File::create(ws.path("parquet/a.parquet")).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(100))
        .build();
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    bad
}

#[test]
fn parquet_bad_rows_in_each_mode_and_a_switch_from_fail_to_dead_letter() {
    let bids = gen_bids(3, 600, BASE_MS, 1500);
    let expected = batch_query(&on_time(&bids, 2000).0, ORACLE);

    // skip: the good rows' output, the bad rows counted.
    let ws = Workspace::new();
    let bad = write_parquet_input(&ws, &bids);
    assert_eq!(bad.len(), 4);
    ws.write("job.sql", &parquet_job(SKIP));
    run(&ws, &[]).ok();
    assert_eq!(sink_rows(&ws.path("out_pq")), expected);
    assert_eq!(sum_field(&progress(&ws.path("p.json")), "bad_rows"), 4);
    assert!(parquet_files(&ws.path("bad")).is_empty());

    // fail: stops at the first bad row, naming it; epoch 1 stays committed.
    let ws = Workspace::new();
    write_parquet_input(&ws, &bids);
    ws.write("job.sql", &parquet_job(""));
    let e = run(&ws, &[]).fails().stderr();
    assert!(
        e.contains(&format!("/parquet/a.parquet: row 301: {}", bad[0].error)),
        "{e}"
    );
    assert!(e.contains("epoch 2 was not committed"), "{e}");
    assert_eq!(progress(&ws.path("p.json")).len(), 1);

    // The same checkpoint, now with a dead-letter table: a compatible
    // change, so the job goes on from epoch 2 with its state.
    ws.write("job.sql", &parquet_job(DEAD_LETTER));
    let r = run(&ws, &[]).ok();
    assert!(!r.stderr().contains("fresh"), "{}", r.stderr());
    assert_eq!(sink_rows(&ws.path("out_pq")), expected);
    assert_eq!(dead_letters(&ws.path("bad")), bad);
}

/// A CSV or JSON number with more decimal places than its DECIMAL column
/// keeps is a bad record naming the value and what it would become (Arrow's
/// readers cut it: 12.35 gave 12.3), as it is in Parquet; trailing zeros
/// and an exponent that needs no more places are fine. A fast path over
/// many good rows and the record-by-record path agree.
#[test]
fn a_decimal_with_more_places_than_its_column_keeps_is_a_bad_record() {
    let ws = Workspace::new();
    let t = "2026-01-01T00:00:00";
    let good: Vec<String> = (0..300).map(|i| format!("{}.{}", i, i % 10)).collect();
    let mut csv = String::from("v,t\n");
    let mut json = String::new();
    for (i, v) in good.iter().enumerate() {
        let bad = i == 150;
        let v = if bad { "12.35" } else { v.as_str() };
        csv.push_str(&format!("{v},{t}\n"));
        json.push_str(&format!("{{\"v\": {v}, \"t\": \"{t}\"}}\n"));
    }
    csv.push_str(&format!("7.50,{t}\n"));
    json.push_str(&format!("{{\"v\": 1.5e1, \"t\": \"{t}\"}}\n"));
    ws.write("csv/a.csv", &csv);
    ws.write("json/a.json", &json);
    for format in ["csv", "json"] {
        let job = |on_error: &str| {
            format!(
                "CREATE TABLE s (v DECIMAL(10,1), t TIMESTAMP(3), WATERMARK FOR t AS t - INTERVAL '1' SECOND)
                   WITH ('connector' = 'files', 'path' = '{format}/', 'format' = '{format}'{on_error});
                 CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out_{format}/', 'format' = 'parquet');
                 INSERT INTO out SELECT CAST(v * 10 AS BIGINT) AS v10 FROM s;"
            )
        };
        let checkpoint = format!("ck_{format}");
        let run = || {
            ws.weir(&[
                "run",
                "job.sql",
                "--trigger",
                "available-now",
                "--checkpoint",
                &checkpoint,
            ])
        };
        ws.write("job.sql", &job(""));
        let e = run().fails().stderr();
        assert!(
            e.contains(
                "column 'v': 12.35 has more decimal places than Decimal128(10, 1) keeps (it would be 12.3)"
            ),
            "{format}: {e}"
        );
        assert!(
            parquet_files(&ws.path(&format!("out_{format}"))).is_empty(),
            "{format}"
        );
        ws.write("job.sql", &job(", 'on_error' = 'skip'"));
        let out = run().ok().stderr();
        assert!(
            out.contains("300 rows in") && out.contains(" 1 bad"),
            "{format}: {out}"
        );
        let rows: BTreeSet<i64> = sink_batches(&ws.path(&format!("out_{format}")))
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        let mut expected: BTreeSet<i64> = (0..300).filter(|&i| i != 150).map(|i| i * 10 + i % 10).collect();
        expected.insert(if format == "csv" { 75 } else { 150 });
        assert_eq!(rows, expected, "{format}");
        // A column of 38 digits has the same check: read as 38 digits,
        // 0.0000001 in DECIMAL(38,6) was cut to 0 unseen.
        ws.write(
            &format!("wide_{format}/a.{format}"),
            if format == "csv" {
                "w\n0.0000001\n"
            } else {
                "{\"w\": 0.0000001}\n"
            },
        );
        ws.write(
            "wide.sql",
            &format!(
                "CREATE TABLE s (w DECIMAL(38,6)) WITH ('connector' = 'files', 'path' = 'wide_{format}/', 'format' = '{format}');
                 CREATE TABLE out WITH ('connector' = 'files', 'path' = 'wide_out_{format}/', 'format' = 'parquet');
                 INSERT INTO out SELECT w FROM s;"
            ),
        );
        let e = ws
            .weir(&[
                "run",
                "wide.sql",
                "--trigger",
                "available-now",
                "--checkpoint",
                &format!("ck_wide_{format}"),
            ])
            .fails()
            .stderr();
        assert!(
            e.contains("column 'w': 0.0000001 has more decimal places than Decimal128(38, 6) keeps (it would be 0.000000)"),
            "{format}: {e}"
        );
    }
}

/// BYTEA in CSV and JSON is hex, as PostgreSQL writes it (`\x0a1b` or
/// `0a1b`): CSV read none (every value a bad record), and JSON took an odd
/// number of digits as if a `0` led the last one ("abc" gave ab 0c).
#[test]
fn bytea_from_csv_and_json_is_hex_and_anything_else_is_a_bad_record() {
    use datafusion::arrow::array::{Array, AsArray};
    let ws = Workspace::new();
    ws.write("csv/a.csv", "id,b\n1,616263\n2,\\x00FF\n3,\n");
    ws.write(
        "json/a.json",
        "{\"id\": 1, \"b\": \"616263\"}\n{\"id\": 2, \"b\": \"\\\\x00ff\"}\n{\"id\": 3, \"b\": null}\n",
    );
    for format in ["csv", "json"] {
        let job = format!(
            "CREATE TABLE s (id BIGINT, b BYTEA) WITH ('connector' = 'files', 'path' = '{format}/', 'format' = '{format}');
             CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out_{format}/', 'format' = 'parquet');
             INSERT INTO out SELECT id, b FROM s;"
        );
        ws.write("job.sql", &job);
        let checkpoint = format!("ck_{format}");
        let run = || {
            ws.weir(&[
                "run",
                "job.sql",
                "--trigger",
                "available-now",
                "--checkpoint",
                &checkpoint,
            ])
        };
        run().ok();
        let mut rows: Vec<(i64, Option<Vec<u8>>)> = sink_batches(&ws.path(&format!("out_{format}")))
            .iter()
            .flat_map(|b| {
                let ids = b.column(0).as_primitive::<Int64Type>().clone();
                let bytes = b.column(1).as_binary::<i32>().clone();
                (0..b.num_rows())
                    .map(|i| (ids.value(i), bytes.is_valid(i).then(|| bytes.value(i).to_vec())))
                    .collect::<Vec<_>>()
            })
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            [(1, Some(b"abc".to_vec())), (2, Some(vec![0, 255])), (3, None)],
            "{format}"
        );
        // An odd number of digits, or not hex: a bad record naming it.
        ws.write(
            &format!("{format}/b.{format}"),
            if format == "csv" {
                "id,b\n4,abc\n"
            } else {
                "{\"id\": 4, \"b\": \"abc\"}\n"
            },
        );
        let e = run().fails().stderr();
        assert!(
            e.contains("column 'b': \"abc\" is not bytes written in hex"),
            "{format}: {e}"
        );
    }
}

/// DECIMAL and BYTEA values inside a JSON list, struct or map are checked
/// as a column's own are: Arrow's reader cut 1.234 in an
/// `ARRAY<DECIMAL(10,2)>` to 1.23 unseen, and read "abc" in an
/// `ARRAY<BYTEA>` as ab 0c.
#[test]
fn decimals_and_bytes_inside_json_lists_and_structs_are_checked() {
    let ws = Workspace::new();
    ws.write(
        "in/a.json",
        "{\"k\": 1, \"ps\": [1.23, 2.5], \"s\": {\"d\": 3.33, \"b\": \"0a1b\"}, \"bs\": [\"\\\\x00ff\", null]}\n",
    );
    ws.write(
        "job.sql",
        "CREATE TABLE src (k BIGINT, ps ARRAY<DECIMAL(10,2)>, s STRUCT<d DECIMAL(10,2), b BYTEA>, bs ARRAY<BYTEA>)
           WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'json');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         INSERT INTO out SELECT k, ps, s.d AS d, s.b AS b, bs FROM src;",
    );
    let run = || ws.weir(&["run", "job.sql", "--trigger", "available-now"]);
    run().ok();
    let rows = ws
        .weir(&[
            "query",
            "--format",
            "csv",
            "SELECT k, CAST(ps AS VARCHAR) AS ps, d, encode(b, 'hex') AS b, CAST(bs AS VARCHAR) AS bs FROM 'out/'",
        ])
        .ok()
        .stdout();
    assert_eq!(
        rows, "k,ps,d,b,bs\n1,\"[1.23, 2.50]\",3.33,0a1b,\"[00ff, ]\"\n",
        "{rows}"
    );
    for (line, reason) in [
        (
            "{\"k\": 2, \"ps\": [1.234], \"s\": null, \"bs\": []}",
            "column 'ps[]': 1.234 has more decimal places than Decimal128(10, 2) keeps (it would be 1.23)",
        ),
        (
            "{\"k\": 3, \"ps\": [], \"s\": {\"d\": 3.333, \"b\": null}, \"bs\": []}",
            "column 's.d': 3.333 has more decimal places than Decimal128(10, 2) keeps (it would be 3.33)",
        ),
        (
            "{\"k\": 4, \"ps\": [], \"s\": null, \"bs\": [\"abc\"]}",
            "column 'bs[]': \"abc\" is not bytes written in hex",
        ),
    ] {
        ws.write("in/b.json", &format!("{line}\n"));
        let e = run().fails().stderr();
        assert!(e.contains(reason), "{line}: {e}");
    }
}

/// A Parquet TIME in microseconds (as pyarrow writes it) feeds a declared
/// TIME (nanoseconds); one outside the day is a bad record (Arrow's cast
/// wrapped 2^62 µs to 00:00:00, and a debug build panicked).
#[test]
fn a_time_in_microseconds_is_read_and_one_outside_the_day_is_a_bad_record() {
    use datafusion::arrow::array::{Int64Array, Time64MicrosecondArray};
    use datafusion::arrow::datatypes::Time64NanosecondType;
    use std::sync::Arc;
    let ws = Workspace::new();
    let write = |name: &str, times: Vec<i64>| {
        let n = times.len() as i64;
        let batch = RecordBatch::try_from_iter(vec![
            ("k", Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())) as _),
            ("t", Arc::new(Time64MicrosecondArray::from(times)) as _),
        ])
        .unwrap();
        std::fs::create_dir_all(ws.path("in")).unwrap();
        let file = std::fs::File::create(ws.path(&format!("in/{name}"))).unwrap();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    };
    write("a.parquet", vec![3_723_456_789, 86_399_999_999]);
    ws.write(
        "job.sql",
        "CREATE TABLE s (k BIGINT, t TIME) WITH ('connector' = 'files', 'path' = 'in/', 'format' = 'parquet');
         CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
         INSERT INTO out SELECT t FROM s;",
    );
    let run = || ws.weir(&["run", "job.sql", "--trigger", "available-now"]);
    run().ok();
    let got: Vec<i64> = sink_batches(&ws.path("out"))
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<Time64NanosecondType>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(got, [3_723_456_789_000, 86_399_999_999_000]);
    write("b.parquet", vec![1 << 62]);
    let e = run().fails().stderr();
    assert!(
        e.contains("b.parquet: row 1: column 't': 4611686018427387904 (Time64(µs)) is no time of day"),
        "{e}"
    );
}

/// Files a reader would misread, refused or set aside by name: a CSV whose
/// quoted field is never closed (the rows after its quote were one good
/// row), a gzip-compressed file (its rows were two "bad records" under
/// 'skip'), and a declared column two file columns match but for case (the
/// first was taken).
#[test]
fn an_open_quote_a_compressed_file_and_an_ambiguous_column_are_named() {
    let ws = Workspace::new();
    let job = |folder: &str, format: &str, policy: &str| {
        format!(
            "CREATE TABLE src (id BIGINT, note VARCHAR)
               WITH ('connector' = 'files', 'path' = '{folder}/', 'format' = '{format}'{policy});
             CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out-{folder}/', 'format' = 'parquet');
             CREATE TABLE bad WITH ('connector' = 'files', 'path' = 'bad-{folder}/', 'format' = 'parquet');
             INSERT INTO out SELECT * FROM src;"
        )
    };
    let run = |name: &str| ws.weir(&["run", name, "--trigger", "available-now"]);

    ws.write("quote/a.csv", "id,note\n1,ok\n2,\"oops\n3,x\n4,y\n");
    ws.write("quote.sql", &job("quote", "csv", ""));
    let e = run("quote.sql").fails().stderr();
    assert!(
        e.contains("a.csv: line 3: a quoted field is never closed: the file ends inside it"),
        "{e}"
    );
    ws.write(
        "quote-dl.sql",
        &job(
            "quote",
            "csv",
            ", 'on_error' = 'dead_letter', 'dead_letter' = 'bad'",
        )
        .replace("out-quote", "out-quote-dl"),
    );
    run("quote-dl.sql").ok();
    assert_eq!(sink_rows(&ws.path("out-quote-dl")), ["1|ok"]);
    let dead = sink_rows(&ws.path("bad-quote"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].contains("|3|2|a quoted field is never closed") && dead[0].ends_with("|2,\"oops\n3,x\n4,y"),
        "{dead:?}"
    );
    // Quotes that close, and a quote inside an unquoted field, are fine.
    ws.write(
        "fine/a.csv",
        "id,note\n1,\"a \"\"b\"\", c\"\n2,12\" pipe\n3,\"x\ny\"\n",
    );
    ws.write("fine.sql", &job("fine", "csv", ""));
    run("fine.sql").ok();
    let mut fine = sink_rows(&ws.path("out-fine"));
    fine.sort();
    assert_eq!(fine, ["1|a \"b\", c", "2|12\" pipe", "3|x\ny"]);

    let mut gz = vec![0x1f, 0x8b, 0x08, 0x00];
    gz.extend_from_slice(&[0; 20]);
    std::fs::create_dir_all(ws.path("gz")).unwrap();
    std::fs::write(ws.path("gz/a.json"), &gz).unwrap();
    ws.write("gz.sql", &job("gz", "json", ", 'on_error' = 'skip'"));
    let e = run("gz.sql").fails().stderr();
    assert!(
        e.contains("a.json: the file is gzip-compressed, and compressed files are not read"),
        "{e}"
    );

    ws.write("case/a.csv", "Id,ID,note\n1,2,x\n");
    ws.write("case.sql", &job("case", "csv", ""));
    let e = run("case.sql").fails().stderr();
    assert!(
        e.contains("column 'id' of table 'src' is more than one column of the file ('Id', 'ID')"),
        "{e}"
    );
}

/// A file's column of another type than declared names both as SQL types
/// and says what to do (it named Arrow's `Binary` and `Utf8View`), and a
/// delimiter of more than one byte says that is what is wrong.
#[test]
fn a_column_of_another_type_names_both_as_sql_types() {
    use datafusion::arrow::array::{ArrayRef, BinaryArray, Int64Array};
    use std::sync::Arc;
    let ws = Workspace::new();
    let batch = RecordBatch::try_from_iter(vec![
        ("k", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("s", Arc::new(BinaryArray::from(vec![b"ab".as_ref()])) as ArrayRef),
    ])
    .unwrap();
    std::fs::create_dir_all(ws.path("in")).unwrap();
    let file = std::fs::File::create(ws.path("in/a.parquet")).unwrap();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let job = |source: &str| {
        format!(
            "CREATE TABLE src (k BIGINT, s VARCHAR) WITH ('connector' = 'files', 'path' = 'in/', {source});
             CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
             INSERT INTO out SELECT k, s FROM src;"
        )
    };
    ws.write("job.sql", &job("'format' = 'parquet'"));
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(
        e.contains("column 's' is BYTEA in the file, but table 'src' declares it VARCHAR (declare it BYTEA if every file holds that)"),
        "{e}"
    );
    ws.write("job.sql", &job("'format' = 'csv', 'csv.delimiter' = 'é'"));
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(
        e.contains("csv.delimiter must be one ASCII character (one byte), not 'é'"),
        "{e}"
    );
    // The Kafka CSV format's (and Flink's) name for it points to this one.
    ws.write("job.sql", &job("'format' = 'csv', 'csv.field-delimiter' = ';'"));
    let e = ws
        .weir(&["run", "job.sql", "--trigger", "available-now"])
        .fails()
        .stderr();
    assert!(
        e.contains("unknown option 'csv.field-delimiter' (did you mean 'csv.delimiter'?"),
        "{e}"
    );
}
