//! Bad input records: what a source does with a record it cannot turn into
//! a row of its table (`'on_error'`), and what it keeps of one.
//!
//! A record is *bad* when a reader of its format rejects it on its own: a
//! line that is not one JSON object, a CSV row with the wrong number of
//! fields, a value that does not parse as (or convert to) the declared type
//! of its column, or no value for a column declared `NOT NULL`. Values are
//! checked in the columns the job reads. A whole file that cannot be read
//! (not Parquet, a declared column missing from its header or schema, a
//! column whose type never converts) is not a bad record: it stops the job
//! whatever the policy.
//!
//! Per source, `'on_error'` says what happens to bad records:
//!
//! | policy | |
//! |---|---|
//! | `fail` (default) | the epoch stops with an error naming the file, the line (or row) and the column |
//! | `skip` | the record is dropped and counted |
//! | `dead_letter` | as `skip`, and the record is written to the sink table named by `'dead_letter'` |
//!
//! Bad records belong to the offset they were read under: reading the same
//! offset again finds the same bad records, in the same order, so a replayed
//! epoch stages the same dead-letter rows and exactly-once holds for the
//! dead-letter table as for any sink. Bad records count as consumed input:
//! the source's position moves past them.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_sql::TableDecl;

use crate::{Error, Result};

/// What a source does with a bad record (`'on_error'`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Stop with an error (the default).
    Fail,
    /// Drop the record; count it.
    Skip,
    /// Drop the record, count it, and write it to this sink table.
    DeadLetter(String),
}

impl OnError {
    /// The policy a table declares with `'on_error'` (and `'dead_letter'`).
    pub fn from_decl(decl: &TableDecl) -> Result<Self> {
        let target = decl
            .options
            .get("dead_letter")
            .map(|t| t.trim().to_ascii_lowercase());
        let policy = decl
            .options
            .get("on_error")
            .map(|p| p.trim().to_ascii_lowercase());
        match (policy.as_deref(), target) {
            (None | Some("fail"), None) => Ok(OnError::Fail),
            (Some("skip"), None) => Ok(OnError::Skip),
            (Some("dead_letter"), Some(t)) if !t.is_empty() => Ok(OnError::DeadLetter(t)),
            (Some("dead_letter"), _) => Err(Error::Config(format!(
                "table '{}': 'on_error' = 'dead_letter' needs 'dead_letter' = '<sink table>' to write bad records to",
                decl.name
            ))),
            (None | Some("fail") | Some("skip"), Some(t)) => Err(Error::Config(format!(
                "table '{}': 'dead_letter' = '{t}' is only used with 'on_error' = 'dead_letter'",
                decl.name
            ))),
            (Some(other), _) => Err(Error::Config(format!(
                "table '{}': unknown 'on_error' '{other}' (fail, skip or dead_letter)",
                decl.name
            ))),
        }
    }

    /// The dead-letter table, if bad records go to one.
    pub fn dead_letter(&self) -> Option<&str> {
        match self {
            OnError::DeadLetter(t) => Some(t),
            _ => None,
        }
    }
}

/// How much of a bad record's text is kept (bytes). A "record" may be a
/// whole file when its newlines are missing, and dead-letter rows are read
/// by people: the start of it is enough to find it (file and line say
/// where the rest is).
pub const MAX_RECORD_TEXT: usize = 4096;

/// The text kept of a bad record: all of it, or its first
/// [`MAX_RECORD_TEXT`] bytes (cut at a character boundary) and how long it
/// was.
pub fn record_text(text: &str) -> String {
    if text.len() <= MAX_RECORD_TEXT {
        return text.to_string();
    }
    let mut cut = MAX_RECORD_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..cut], text.len())
}

/// How a Kafka record's bad record names its partition in `file`:
/// `kafka://<topic>/<partition>` (its `row` is then the record's offset).
pub const KAFKA_PREFIX: &str = "kafka://";

/// A record that could not be read as a row of its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord {
    /// The file's URL; for a Kafka record, `kafka://<topic>/<partition>`.
    pub file: String,
    /// The line the record starts on, counting from 1 (CSV and JSON).
    pub line: Option<u64>,
    /// The record's number in the file, counting from 1 (a CSV header is
    /// not a record); for a Kafka record, its offset.
    pub row: u64,
    /// What is wrong with it, naming the column where one is to blame.
    pub error: String,
    /// The record: its text (CSV, JSON) or a JSON rendering of the row's
    /// values (Parquet), cut by [`record_text`].
    pub record: String,
}

impl BadRecord {
    /// The error that stops a read of `table` at this record
    /// (`'on_error' = 'fail'`).
    pub fn stops(&self, table: &str) -> Error {
        Error::Input(format!(
            "{}: {}: {} (a bad record of table '{table}'; with 'on_error' = 'skip' or 'dead_letter' \
             the job would set such records aside and go on)",
            self.file,
            self.position(),
            self.error,
        ))
    }

    /// Where the record is, for messages: `line 7`, `row 7`, or a Kafka
    /// record's `offset 7`.
    pub fn position(&self) -> String {
        match self.line {
            Some(l) => format!("line {l}"),
            None if self.file.starts_with(KAFKA_PREFIX) => format!("offset {}", self.row),
            None => format!("row {}", self.row),
        }
    }
}

/// Collects the bad records of one read, or under `'on_error' = 'fail'`
/// turns the first into the read's error.
pub struct BadRecords {
    fail: bool,
    table: String,
    records: Vec<BadRecord>,
}

impl BadRecords {
    /// A collector for a read of `table` under `policy`.
    pub fn new(table: &str, policy: &OnError) -> Self {
        Self {
            fail: *policy == OnError::Fail,
            table: table.to_string(),
            records: Vec::new(),
        }
    }

    /// An empty collector under the same policy, for a part of a read
    /// whose records are then [`add`](Self::add)ed here in file order.
    pub fn empty_like(&self) -> Self {
        Self {
            fail: self.fail,
            table: self.table.clone(),
            records: Vec::new(),
        }
    }

    /// Adds the bad records of one stretch of a file (any order): under
    /// `fail`, the first of them in the file is the error.
    pub fn add(&mut self, mut found: Vec<BadRecord>) -> Result<()> {
        found.sort_by_key(|r| r.row);
        if self.fail
            && let Some(first) = found.first()
        {
            return Err(first.stops(&self.table));
        }
        self.records.extend(found);
        Ok(())
    }

    /// The bad records collected, in file order.
    pub fn into_records(self) -> Vec<BadRecord> {
        self.records
    }
}

/// The columns of a dead-letter table.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("file", DataType::Utf8, false),
        Field::new("line", DataType::Int64, true),
        Field::new("record_number", DataType::Int64, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
    ]))
}

/// The dead-letter rows of a source's bad records.
pub fn dead_letter_rows(source: &str, records: &[BadRecord]) -> Result<RecordBatch> {
    let n = records.len();
    let sources: StringArray = std::iter::repeat_n(Some(source), n).collect();
    let files: StringArray = records.iter().map(|r| Some(r.file.as_str())).collect();
    let lines: Int64Array = records.iter().map(|r| r.line.map(|l| l as i64)).collect();
    let rows: Int64Array = records.iter().map(|r| Some(r.row as i64)).collect();
    let errors: StringArray = records.iter().map(|r| Some(r.error.as_str())).collect();
    let texts: StringArray = records.iter().map(|r| Some(r.record.as_str())).collect();
    Ok(RecordBatch::try_new(
        dead_letter_schema(),
        vec![
            Arc::new(sources),
            Arc::new(files),
            Arc::new(lines),
            Arc::new(rows),
            Arc::new(errors),
            Arc::new(texts),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(options: &str) -> TableDecl {
        weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE bids (price BIGINT) WITH ('connector' = 'files'{options})"
        ))
        .unwrap()
    }

    #[test]
    fn policies_from_options() {
        assert_eq!(OnError::from_decl(&decl("")).unwrap(), OnError::Fail);
        assert_eq!(
            OnError::from_decl(&decl(", 'on_error' = 'SKIP'")).unwrap(),
            OnError::Skip
        );
        assert_eq!(
            OnError::from_decl(&decl(", 'on_error' = 'dead_letter', 'dead_letter' = 'Bad'")).unwrap(),
            OnError::DeadLetter("bad".into())
        );
        let e = OnError::from_decl(&decl(", 'on_error' = 'dead_letter'"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 'dead_letter'"), "{e}");
        let e = OnError::from_decl(&decl(", 'dead_letter' = 'bad'"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only used with 'on_error' = 'dead_letter'"), "{e}");
        let e = OnError::from_decl(&decl(", 'on_error' = 'ignore'"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown 'on_error' 'ignore'"), "{e}");
    }

    #[test]
    fn fail_reports_the_first_bad_record_in_the_file() {
        let bad = |row, line: Option<u64>| BadRecord {
            file: "file:///in/a.csv".into(),
            line,
            row,
            error: format!("column 'price': error {row}"),
            record: String::new(),
        };
        let mut skip = BadRecords::new("bids", &OnError::Skip);
        skip.add(vec![bad(9, Some(10)), bad(3, Some(4))]).unwrap();
        assert_eq!(
            skip.into_records().iter().map(|r| r.row).collect::<Vec<_>>(),
            vec![3, 9]
        );
        let mut fail = BadRecords::new("bids", &OnError::Fail);
        fail.add(vec![]).unwrap();
        let e = fail
            .add(vec![bad(9, Some(10)), bad(3, Some(4))])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("file:///in/a.csv: line 4: column 'price': error 3 (a bad record of table 'bids'"),
            "{e}"
        );
        let e = BadRecords::new("bids", &OnError::Fail)
            .add(vec![bad(5, None)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.csv: row 5: column 'price'"), "{e}");
    }

    #[test]
    fn long_records_are_cut_at_a_character_boundary() {
        assert_eq!(record_text("{\"a\": 1}"), "{\"a\": 1}");
        let exact = "x".repeat(MAX_RECORD_TEXT);
        assert_eq!(record_text(&exact), exact);
        // 'é' is two bytes: the cut may not split it.
        let long = format!("{}é{}", "x".repeat(MAX_RECORD_TEXT - 1), "y".repeat(10));
        let kept = record_text(&long);
        assert_eq!(
            kept,
            format!(
                "{}... ({} bytes in all)",
                "x".repeat(MAX_RECORD_TEXT - 1),
                long.len()
            )
        );
    }

    #[test]
    fn dead_letter_rows_have_the_dead_letter_columns() {
        let rows = dead_letter_rows(
            "bids",
            &[BadRecord {
                file: "f".into(),
                line: None,
                row: 2,
                error: "e".into(),
                record: "{}".into(),
            }],
        )
        .unwrap();
        assert_eq!(rows.schema(), dead_letter_schema());
        assert_eq!(rows.num_rows(), 1);
        assert!(rows.column(2).is_null(0));
    }
}
