//! Reading a row range of one file (Parquet, CSV with a header, or
//! newline-delimited JSON) into a table's declared schema.
//!
//! The declared schema is enforced: every declared column must be in the
//! file, with a type that converts to the declared one without guessing
//! (numbers to numbers, timestamps of any unit or zone to timestamps,
//! strings to strings). Anything else is an error naming the file and the
//! column. Columns the table does not declare are ignored.
//!
//! A range is counted in *records*: a CSV row after the header, a non-blank
//! JSON line, a Parquet row. Records that cannot be read as rows of the
//! table are bad records (see [`super::bad`]); they count as read, so the
//! same range always yields the same rows and the same bad records.
//!
//! ```text
//!  fast path   Arrow's reader over the whole range ──ok──▶ rows
//!                 │ an error, a row count that is not the record count,
//!                 │ a NULL in a NOT NULL column, a value that does not convert
//!                 ▼
//!  slow path   the range split into records (with their line numbers),
//!              read in groups of SIFT_GROUP; a group that fails is read
//!              record by record, and each record that fails on its own is
//!              a bad record with the reason
//! ```

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches, filter_record_batch};
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ParquetRecordBatchStreamBuilder;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

// The CSV crate splits a file into records with their lines; Arrow's CSV
// reader is built on the same parser, so both find the same records.
use ::csv as csv_crate;

use super::bad::{BadRecord, BadRecords, OnError, record_text};
use crate::{Error, Result};

mod conform;
mod csv_file;
mod json_file;
mod parquet_file;

use conform::*;
use csv_file::read_csv;
use json_file::read_json;
use parquet_file::read_parquet;
pub use parquet_file::{parquet_max_time_in, parquet_rows_in};

/// A file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header line.
    Csv {
        /// The field delimiter.
        delimiter: u8,
    },
    /// Newline-delimited JSON objects.
    Json,
}

/// Rows read from a file.
pub struct FileRows {
    /// The rows, in the declared schema.
    pub batches: Vec<RecordBatch>,
    /// How many records were read, good and bad: how far the read moved in
    /// the file.
    pub records: usize,
    /// Whether the file has no records after these.
    pub eof: bool,
    /// The bad records among them, in file order (none under
    /// `'on_error' = 'fail'`: the first one is the read's error).
    pub bad: Vec<BadRecord>,
    /// Each batch's greatest value (ms) of [`Columns::max_of`], one per
    /// batch, when the reader computed them (Parquet); else empty.
    pub maxima: Vec<Option<i64>>,
}

/// Identifies the file in errors.
pub struct FileRef<'a> {
    /// The store holding it.
    pub store: &'a Arc<dyn ObjectStore>,
    /// Its path in the store.
    pub path: &'a Path,
    /// Its size in bytes.
    pub size: u64,
    /// Its URL, for messages.
    pub url: &'a str,
    /// The table it is read for, for messages.
    pub table: &'a str,
}

/// A [`FileRef`]'s parts, owned: for a task of its own.
pub struct OwnedFile {
    /// The store holding it.
    pub store: Arc<dyn ObjectStore>,
    /// Its path in the store.
    pub path: Path,
    /// Its size in bytes.
    pub size: u64,
    /// Its URL, for messages.
    pub url: String,
    /// The table it is read for, for messages.
    pub table: String,
}

impl OwnedFile {
    /// The file, borrowed.
    pub fn file(&self) -> FileRef<'_> {
        FileRef {
            store: &self.store,
            path: &self.path,
            size: self.size,
            url: &self.url,
            table: &self.table,
        }
    }
}

impl FileRef<'_> {
    /// The file's parts, owned.
    pub fn to_owned(&self) -> OwnedFile {
        OwnedFile {
            store: Arc::clone(self.store),
            path: self.path.clone(),
            size: self.size,
            url: self.url.to_string(),
            table: self.table.to_string(),
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Input(format!("{}: {msg}", self.url))
    }

    /// A bad record of this file. Its reason may quote a value, so it is
    /// cut like the record.
    fn bad(&self, line: Option<u64>, row: u64, error: String, record: String) -> BadRecord {
        BadRecord {
            file: self.url.to_string(),
            line,
            row,
            error: record_text(&error),
            record: record_text(&record),
        }
    }
}

/// What to read from a file: the table's declared schema, and which of its
/// columns the job needs (sorted indices). Rows come back with exactly those
/// columns; the rest are checked against the file where the format allows
/// it cheaply (Parquet footer, CSV header) but not decoded.
pub struct Columns<'a> {
    /// The declared schema.
    pub declared: &'a SchemaRef,
    /// The needed columns, ascending.
    pub needed: &'a [usize],
    /// A needed timestamp column (declared index) whose greatest value a
    /// reader that decodes batch by batch records for each batch
    /// ([`FileRows::maxima`]).
    pub max_of: Option<usize>,
}

impl Columns<'_> {
    fn output_schema(&self) -> Result<SchemaRef> {
        Ok(Arc::new(self.declared.project(self.needed)?))
    }

    /// The declared columns to decode and check: the needed ones, and those
    /// for which `also` says so (ascending).
    fn checked(&self, also: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..self.declared.fields().len())
            .filter(|c| self.needed.contains(c) || also(*c))
            .collect()
    }

    /// The positions of the needed columns within `checked` (which holds
    /// them all).
    fn within(&self, checked: &[usize]) -> Vec<usize> {
        self.needed
            .iter()
            .filter_map(|c| checked.iter().position(|k| k == c))
            .collect()
    }
}

/// A CSV or JSON file's bytes, fetched whole (and kept by the caller for
/// the next range of the same file).
pub struct Fetched {
    /// The file's bytes.
    pub bytes: Bytes,
    /// What the store said of the file when it was fetched (`None` when the
    /// bytes came from the caller's cache).
    pub meta: Option<object_store::ObjectMeta>,
}

/// Reads up to `max_rows` records from record `start` of a file, setting
/// bad records aside as `on_error` says. `cached` holds the file's bytes
/// when the caller already has them (CSV and JSON). A Parquet file may be
/// decoded in up to `pieces` parts at once (the same rows), in batches of
/// `batch_rows` rows (see [`crate::source::batch_rows`]).
#[allow(clippy::too_many_arguments)]
pub async fn read_range(
    file: &FileRef<'_>,
    format: Format,
    columns: &Columns<'_>,
    on_error: &OnError,
    start: usize,
    max_rows: usize,
    cached: Option<Bytes>,
    pieces: usize,
    batch_rows: usize,
) -> Result<(FileRows, Option<Fetched>)> {
    let mut bad = BadRecords::new(file.table, on_error);
    let (mut rows, fetched) = match format {
        Format::Parquet => (
            read_parquet(file, columns, start, max_rows, &mut bad, pieces, batch_rows).await?,
            None,
        ),
        Format::Csv { delimiter } => {
            let fetched = fetch(file, cached).await?;
            refuse_compressed(file, &fetched.bytes)?;
            let rows = read_csv(
                file,
                &fetched.bytes,
                delimiter,
                columns,
                start,
                max_rows,
                &mut bad,
            )?;
            (rows, Some(fetched))
        }
        Format::Json => {
            let fetched = fetch(file, cached).await?;
            refuse_compressed(file, &fetched.bytes)?;
            let rows = read_json(file, &fetched.bytes, columns, start, max_rows, &mut bad)?;
            (rows, Some(fetched))
        }
    };
    rows.bad = bad.into_records();
    Ok((rows, fetched))
}

/// A CSV or JSON file that starts as a compressed file does (gzip, zstd,
/// bzip2, xz, zip) is refused by name: read as text, it was a header "not
/// UTF-8", or under `'on_error' = 'skip'` a few bad records standing for
/// every row in it.
fn refuse_compressed(file: &FileRef<'_>, data: &[u8]) -> Result<()> {
    const MAGIC: [(&[u8], &str); 4] = [
        (&[0x1f, 0x8b], "gzip"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (b"PK\x03\x04", "zip"),
    ];
    // bzip2: "BZh", the block size digit, then a block's magic (the digits
    // of pi), so that a header naming a column "BZh..." is not taken for it.
    let bzip2 = data.len() >= 10
        && data.starts_with(b"BZh")
        && data[3].is_ascii_digit()
        && data[4..10] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
    let kind = match MAGIC.iter().find(|(magic, _)| data.starts_with(magic)) {
        Some((_, kind)) => Some(*kind),
        None => bzip2.then_some("bzip2"),
    };
    match kind {
        Some(kind) => Err(file.err(format!(
            "the file is {kind}-compressed, and compressed files are not read: decompress it (or write \
             Parquet, which compresses inside the file)"
        ))),
        None => Ok(()),
    }
}

/// Reads CSV (with its header) or JSON lines held in memory, every record
/// of them, collecting the bad records whatever the policy (the caller
/// applies it: a Kafka record's bad record names its partition and offset,
/// not a line of this text). `url` names the text in errors that stop the
/// read whole (a declared column the CSV header lacks).
pub fn read_text(
    url: &str,
    table: &str,
    format: Format,
    text: Bytes,
    columns: &Columns<'_>,
) -> Result<FileRows> {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let path = Path::from("records");
    let file = FileRef {
        store: &store,
        path: &path,
        size: text.len() as u64,
        url,
        table,
    };
    let mut bad = BadRecords::new(table, &OnError::Skip);
    let mut rows = match format {
        Format::Csv { delimiter } => read_csv(&file, &text, delimiter, columns, 0, usize::MAX, &mut bad)?,
        Format::Json => read_json(&file, &text, columns, 0, usize::MAX, &mut bad)?,
        Format::Parquet => {
            return Err(Error::Config(format!(
                "table '{table}': Parquet is a file format, not a record format"
            )));
        }
    };
    rows.bad = bad.into_records();
    Ok(rows)
}

/// JSON values held apart (a Kafka topic's records), each a JSON object, as
/// rows when every one is a good row; `None` otherwise (read them with
/// [`read_text`] then, to find the bad ones).
pub fn read_json_values<'a>(
    url: &str,
    table: &str,
    values: impl Iterator<Item = &'a [u8]>,
    count: usize,
    columns: &Columns<'_>,
) -> Result<Option<Vec<RecordBatch>>> {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let path = Path::from("records");
    let file = FileRef {
        store: &store,
        path: &path,
        size: 0,
        url,
        table,
    };
    json_file::json_values_fast(&file, values, count, columns)
}

async fn fetch(file: &FileRef<'_>, cached: Option<Bytes>) -> Result<Fetched> {
    if let Some(bytes) = cached {
        return Ok(Fetched { bytes, meta: None });
    }
    let got = file.store.get(file.path).await.map_err(|e| file.err(e))?;
    let meta = got.meta.clone();
    let bytes = got.bytes().await.map_err(|e| file.err(e))?;
    Ok(Fetched {
        bytes,
        meta: Some(meta),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Int32Type, Int64Type, TimeUnit};
    use datafusion::parquet::arrow::ArrowWriter;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    const CSV: Format = Format::Csv { delimiter: b',' };

    fn declared() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    /// `price BIGINT NOT NULL, ts TIMESTAMP(3), note VARCHAR`.
    fn strict() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("note", DataType::Utf8View, true),
        ]))
    }

    async fn read_as(
        name: &str,
        body: &[u8],
        format: Format,
        declared: SchemaRef,
        on_error: OnError,
        start: usize,
        max: usize,
    ) -> Result<FileRows> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from(name);
        store.put(&path, PutPayload::from(body.to_vec())).await.unwrap();
        let file = FileRef {
            store: &store,
            path: &path,
            size: body.len() as u64,
            url: name,
            table: "bids",
        };
        let needed: Vec<usize> = (0..declared.fields().len()).collect();
        let columns = Columns {
            declared: &declared,
            needed: &needed,
            max_of: None,
        };
        Ok(read_range(
            &file,
            format,
            &columns,
            &on_error,
            start,
            max,
            None,
            1,
            crate::source::BATCH_ROWS,
        )
        .await?
        .0)
    }

    async fn read(name: &str, body: &[u8], format: Format, start: usize, max: usize) -> Result<FileRows> {
        read_as(name, body, format, declared(), OnError::Fail, start, max).await
    }

    fn prices(rows: &FileRows) -> Vec<i64> {
        rows.batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    /// Each bad record as `(line or row, error, record)`.
    fn bad(rows: &FileRows) -> Vec<(Option<u64>, u64, String, String)> {
        rows.bad
            .iter()
            .map(|b| (b.line, b.row, b.error.clone(), b.record.clone()))
            .collect()
    }

    #[tokio::test]
    async fn csv_by_header_name_in_ranges() {
        let csv =
            b"ts,extra,price\n2026-01-01T00:00:01,x,1\n2026-01-01T00:00:02,y,2\n2026-01-01T00:00:03,z,3\n";
        let all = read("a.csv", csv, CSV, 0, 10).await.unwrap();
        assert_eq!((prices(&all), all.eof), (vec![1, 2, 3], true));
        let mid = read("a.csv", csv, CSV, 1, 1).await.unwrap();
        assert_eq!((prices(&mid), mid.eof), (vec![2], false));
        let end = read("a.csv", csv, CSV, 1, 2).await.unwrap();
        assert_eq!((prices(&end), end.eof), (vec![2, 3], true));
    }

    #[tokio::test]
    async fn csv_blank_lines_are_no_records_on_either_path() {
        // The fast path (Arrow's reader) and the record splitter that finds
        // where a range starts must count records alike.
        let csv =
            b"ts,price\n2026-01-01T00:00:01,1\n\n2026-01-01T00:00:02,2\r\n\r\n2026-01-01T00:00:03,3\n\n";
        let mut got = Vec::new();
        for start in 0..3 {
            let r = read("a.csv", csv, CSV, start, 1).await.unwrap();
            assert_eq!(
                (r.records, r.eof, r.bad.len()),
                (1, start == 2, 0),
                "from {start}"
            );
            got.extend(prices(&r));
        }
        assert_eq!(got, vec![1, 2, 3]);
        let end = read("a.csv", csv, CSV, 3, 1).await.unwrap();
        assert_eq!((end.records, end.eof), (0, true));
    }

    #[tokio::test]
    async fn json_lines_in_ranges() {
        let json = b"{\"price\": 1, \"ts\": \"2026-01-01T00:00:01\"}\n\n{\"price\": 2, \"ts\": \"2026-01-01T00:00:02\", \"other\": true}\n{\"price\": 3}\n";
        let all = read("a.json", json, Format::Json, 0, 10).await.unwrap();
        assert_eq!(prices(&all), vec![1, 2, 3]);
        let rest = read("a.json", json, Format::Json, 2, 10).await.unwrap();
        assert_eq!((prices(&rest), rest.eof), (vec![3], true));
        let first = read("a.json", json, Format::Json, 0, 2).await.unwrap();
        assert_eq!((prices(&first), first.records, first.eof), (vec![1, 2], 2, false));
        // A byte order mark is not part of the first record.
        let bom = [b"\xEF\xBB\xBF".as_slice(), json].concat();
        let all = read("a.json", &bom, Format::Json, 0, 10).await.unwrap();
        assert_eq!((prices(&all), all.bad.len()), (vec![1, 2, 3], 0));
        let rest = read("a.json", &bom, Format::Json, 1, 10).await.unwrap();
        assert_eq!(prices(&rest), vec![2, 3]);
    }

    #[tokio::test]
    async fn wrong_files_name_the_file_and_column() {
        let err = read("bad.csv", b"ts,cost\n2026-01-01T00:00:01,1\n", CSV, 0, 10)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("bad.csv") && err.contains("column 'price'") && err.contains("missing"),
            "{err}"
        );
        let err = read("bad.csv", b"ts,price\n2026-01-01T00:00:01,abc\n", CSV, 0, 10)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("bad.csv") && err.contains("abc"), "{err}");
        let err = read("bad.json", b"{\"price\": \"abc\"}\n", Format::Json, 0, 10)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("bad.json") && err.contains("price"), "{err}");
        let err = read("bad.parquet", b"not parquet at all", Format::Parquet, 0, 10)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("bad.parquet") && err.contains("Parquet"), "{err}");
    }

    #[tokio::test]
    async fn a_wrong_file_is_an_error_whatever_the_policy() {
        // A missing column is the file's fault, not a record's.
        for policy in [OnError::Skip, OnError::DeadLetter("bad".into())] {
            let err = read_as(
                "bad.csv",
                b"ts,cost\n2026-01-01T00:00:01,1\n",
                CSV,
                declared(),
                policy,
                0,
                10,
            )
            .await
            .err()
            .unwrap()
            .to_string();
            assert!(err.contains("column 'price'") && err.contains("missing"), "{err}");
        }
    }

    /// A CSV file with a good record spanning two lines, then a record of
    /// each bad kind.
    const BAD_CSV: &[u8] = b"ts,price,note\n\
        2026-01-01T00:00:01,1,\"two\nlines\"\n\
        2026-01-01T00:00:02,2\n\
        2026-01-01T00:00:03,abc,x\n\
        \n\
        2026-01-01T00:00:04,,\"y\nz\"\n\
        2026-01-01T00:00:05,5,ok\n\
        2026-01-01T00:00:06,6,\"\r\n\"\n";

    fn bad_csv_records() -> Vec<(Option<u64>, u64, String, String)> {
        vec![
            (
                Some(4),
                2,
                "expected 3 fields (one per column of the table), found 2".into(),
                "2026-01-01T00:00:02,2".into(),
            ),
            (
                Some(5),
                3,
                "column 'price': failed to parse \"abc\" as Int64".into(),
                "2026-01-01T00:00:03,abc,x".into(),
            ),
            (
                Some(7),
                4,
                "column 'price' has no value (it is declared NOT NULL)".into(),
                "2026-01-01T00:00:04,,\"y\nz\"".into(),
            ),
        ]
    }

    #[tokio::test]
    async fn csv_bad_records_are_set_aside_with_their_lines() {
        for policy in [OnError::Skip, OnError::DeadLetter("bad".into())] {
            let rows = read_as("a.csv", BAD_CSV, CSV, strict(), policy, 0, 100)
                .await
                .unwrap();
            assert_eq!(prices(&rows), vec![1, 5, 6]);
            assert_eq!((rows.records, rows.eof), (6, true));
            assert_eq!(bad(&rows), bad_csv_records());
            assert!(rows.bad.iter().all(|b| b.file == "a.csv"));
            // The good rows keep their text, quoted newlines included.
            let notes: Vec<String> = rows
                .batches
                .iter()
                .flat_map(|b| {
                    b.column(2)
                        .as_string_view()
                        .iter()
                        .map(|v| v.unwrap_or("NULL").to_string())
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(notes, vec!["two\nlines", "ok", "\r\n"]);
        }
    }

    #[tokio::test]
    async fn csv_ranges_count_bad_records_as_read() {
        let skip = || OnError::Skip;
        let first = read_as("a.csv", BAD_CSV, CSV, strict(), skip(), 0, 2)
            .await
            .unwrap();
        assert_eq!((prices(&first), first.records, first.eof), (vec![1], 2, false));
        assert_eq!(bad(&first), bad_csv_records()[..1]);
        let rest = read_as("a.csv", BAD_CSV, CSV, strict(), skip(), 2, 100)
            .await
            .unwrap();
        assert_eq!((prices(&rest), rest.records, rest.eof), (vec![5, 6], 4, true));
        assert_eq!(bad(&rest), bad_csv_records()[1..]);
        // After the bad records, the fast path alone.
        let tail = read_as("a.csv", BAD_CSV, CSV, strict(), skip(), 4, 100)
            .await
            .unwrap();
        assert_eq!((prices(&tail), tail.records, tail.bad.len()), (vec![5, 6], 2, 0));
        // The same range read again: the same rows and bad records.
        let again = read_as("a.csv", BAD_CSV, CSV, strict(), skip(), 2, 100)
            .await
            .unwrap();
        assert_eq!((prices(&again), bad(&again)), (prices(&rest), bad(&rest)));
    }

    #[tokio::test]
    async fn csv_fail_names_the_file_line_and_column() {
        let err = read_as("in/a.csv", BAD_CSV, CSV, strict(), OnError::Fail, 0, 100)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("in/a.csv: line 4: expected 3 fields (one per column of the table), found 2 (a bad record of table 'bids';"),
            "{err}"
        );
        let err = read_as("in/a.csv", BAD_CSV, CSV, strict(), OnError::Fail, 2, 100)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("in/a.csv: line 5: column 'price': failed to parse \"abc\" as Int64"),
            "{err}"
        );
        let err = read_as("in/a.csv", BAD_CSV, CSV, strict(), OnError::Fail, 3, 100)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("in/a.csv: line 7: column 'price' has no value (it is declared NOT NULL)"),
            "{err}"
        );
    }

    const BAD_JSON: &[u8] = b"{\"price\": 1, \"ts\": \"2026-01-01T00:00:01\"}\n\
        {\"price\": 2, \"ts\": \"2026-01-01T00:00:02\"\n\
        \n\
        {\"price\": \"abc\"}\n\
        {\"ts\": \"2026-01-01T00:00:04\"}\r\n\
        {\"price\": null}\n\
        {\"price\": 7} {\"price\": 8}\n\
        [1, 2]\n\
        {\"price\": 9, \"note\": \"fine\"}";

    #[tokio::test]
    async fn json_bad_records_are_set_aside_with_their_lines() {
        let rows = read_as("a.json", BAD_JSON, Format::Json, strict(), OnError::Skip, 0, 100)
            .await
            .unwrap();
        assert_eq!(prices(&rows), vec![1, 9]);
        assert_eq!((rows.records, rows.eof), (8, true));
        let found = bad(&rows);
        let lines: Vec<(Option<u64>, u64)> = found.iter().map(|b| (b.0, b.1)).collect();
        assert_eq!(
            lines,
            vec![
                (Some(2), 2),
                (Some(4), 3),
                (Some(5), 4),
                (Some(6), 5),
                (Some(7), 6),
                (Some(8), 7)
            ]
        );
        assert!(found[0].2.starts_with("not a JSON object: "), "{}", found[0].2);
        assert_eq!(found[0].3, "{\"price\": 2, \"ts\": \"2026-01-01T00:00:02\"");
        assert_eq!(found[1].2, "column 'price': failed to parse \"abc\" as Int64");
        assert_eq!(found[1].3, "{\"price\": \"abc\"}");
        assert_eq!(
            found[2].2,
            "column 'price' has no value (it is declared NOT NULL)"
        );
        assert_eq!(found[2].3, "{\"ts\": \"2026-01-01T00:00:04\"}");
        assert_eq!(
            found[3].2,
            "column 'price' has no value (it is declared NOT NULL)"
        );
        assert_eq!(found[4].2, "more than one JSON value on the line");
        assert_eq!(
            found[5].2,
            "not a JSON object: expected an object, found an array"
        );
        assert_eq!(found[5].3, "[1, 2]");

        // In ranges: bad records count as read, and each is found once.
        let first = read_as("a.json", BAD_JSON, Format::Json, strict(), OnError::Skip, 0, 3)
            .await
            .unwrap();
        let rest = read_as("a.json", BAD_JSON, Format::Json, strict(), OnError::Skip, 3, 100)
            .await
            .unwrap();
        assert_eq!((first.records, first.eof, rest.records), (3, false, 5));
        assert_eq!((prices(&first), prices(&rest)), (vec![1], vec![9]));
        let mut both = bad(&first);
        both.extend(bad(&rest));
        assert_eq!(both, found);

        let err = read_as("a.json", BAD_JSON, Format::Json, strict(), OnError::Fail, 2, 100)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("a.json: line 4: column 'price': failed to parse \"abc\" as Int64 (a bad record of table 'bids'"),
            "{err}"
        );
    }

    fn parquet_file(prices: Vec<Option<i64>>) -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let n = prices.len() as i64;
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(prices)),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..n).map(|i| 1_767_225_600_000 + 1000 * (i + 1)),
                )),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    #[tokio::test]
    async fn parquet_bad_rows_are_set_aside_by_row() {
        // Declared `price INT NOT NULL`: 3e9 does not fit, NULL is missing.
        let declared = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int32, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let file = parquet_file(vec![Some(1), Some(3_000_000_000), None, Some(4)]);
        let rows = read_as(
            "a.parquet",
            &file,
            Format::Parquet,
            Arc::clone(&declared),
            OnError::Skip,
            0,
            100,
        )
        .await
        .unwrap();
        let got: Vec<i32> = rows
            .batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int32Type>().values().to_vec())
            .collect();
        assert_eq!((got, rows.records, rows.eof), (vec![1, 4], 4, true));
        assert_eq!(rows.batches[0].schema(), declared);
        assert_eq!(
            bad(&rows),
            vec![
                (
                    None,
                    2,
                    "column 'price': 3000000000 (Int64) does not convert to the declared Int32".into(),
                    "{\"price\":3000000000,\"ts\":\"2026-01-01T00:00:02\"}".into()
                ),
                (
                    None,
                    3,
                    "column 'price' has no value (it is declared NOT NULL)".into(),
                    "{\"price\":null,\"ts\":\"2026-01-01T00:00:03\"}".into()
                ),
            ]
        );
        let rest = read_as(
            "a.parquet",
            &file,
            Format::Parquet,
            Arc::clone(&declared),
            OnError::Skip,
            2,
            2,
        )
        .await
        .unwrap();
        assert_eq!((rest.records, rest.eof, rest.bad.len()), (2, true, 1));
        assert_eq!(rest.bad[0].row, 3);
        let err = read_as(
            "a.parquet",
            &file,
            Format::Parquet,
            declared,
            OnError::Fail,
            0,
            100,
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with("a.parquet: row 2: column 'price': 3000000000 (Int64) does not convert to the declared Int32 (a bad record of table 'bids'"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn good_files_take_the_fast_path_unchanged() {
        // NOT NULL columns that are full, and a file of good records, read
        // in ranges, give every row once and no bad records.
        let file = parquet_file(vec![Some(1), Some(2), Some(3)]);
        let strict_parquet = Arc::new(Schema::new(vec![Field::new("price", DataType::Int64, false)]));
        let rows = read_as(
            "a.parquet",
            &file,
            Format::Parquet,
            strict_parquet,
            OnError::Fail,
            1,
            5,
        )
        .await
        .unwrap();
        assert_eq!((prices(&rows), rows.records, rows.bad.len()), (vec![2, 3], 2, 0));
    }

    #[test]
    fn compatible_types() {
        use DataType::*;
        assert!(compatible(&Int32, &Int64));
        assert!(compatible(
            &Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            &Timestamp(TimeUnit::Millisecond, None)
        ));
        assert!(!compatible(&Utf8, &Int64));
        assert!(!compatible(&Int64, &Utf8));
    }
}
