//! `'connector' = 'files'`: a folder (or prefix) of Parquet, CSV or JSON
//! files on any object store.
//!
//! Files are read in path order, each exactly once; files that appear later
//! are picked up by a later batch. Hidden files (a path part starting with
//! `.` or `_`) are skipped. Files are assumed immutable once they appear:
//! write them elsewhere and move them in.
//!
//! Offset of a batch (in `offsets/N.json`):
//! `{"files": [{"path": "b/2.parquet", "size": 1234, "modified_ms": 1767225600000, "start_row": 0}, ...],
//! "max_rows": 1000000}`: read these files in order, each from `start_row`,
//! until `max_rows` rows. `path` is the name as the store lists it (a local
//! folder escapes `ü` as `%C3%BC`, S3 does not), used as it is.
//! Progress (state `source-<table>`): one row per file seen,
//! `path, size, rows_read, done, modified_ms`. Rows are counted as records,
//! good and bad: a bad record set aside (`'on_error'`) is read, and never
//! again.
//!
//! Files are assumed not to change once they appear. One that does (its
//! size or modification time in the listing differs from what its progress
//! recorded) gets a warning in the progress line, once per run: a file read
//! whole is not read again; a file read in part (a bad record stopped the
//! job, and the user fixed the file) is read on from where it stopped. A
//! replayed epoch whose file changed since the epoch was logged stops with
//! an error saying so, since its rows can no longer be read as they were.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_sql::TableDecl;
use weir_storage::location::Create;
use weir_storage::{Location, StoreOptions};

use super::bad::OnError;
use super::formats::{
    Columns, Fetched, FileRef, FileRows, Format, OwnedFile, parquet_max_time_in, parquet_rows_in, read_range,
};
use super::{Amount, Backlog, Source, SourceBatch, check_options, table_store_options};
use crate::{Error, Result};
use object_store::path::Path;

/// Options this connector knows.
const OPTIONS: &[&str] = &[
    "connector",
    "path",
    "format",
    "max_files_per_batch",
    "max_rows_per_batch",
    "csv.delimiter",
    "bounded",
];

/// Default cap on files per batch.
pub const DEFAULT_MAX_FILES: usize = 1000;
/// Default cap on rows per batch.
pub const DEFAULT_MAX_ROWS: usize = 1_000_000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct FileRange {
    path: String,
    size: u64,
    /// Modification time in the listing (ms); absent in offsets of an
    /// earlier Weir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modified_ms: Option<i64>,
    start_row: u64,
}

/// Whether two modification times are the same to the second. Stores
/// differ in what they give: a listing may have milliseconds where a GET's
/// `Last-Modified` header has whole seconds (MinIO), so finer is not
/// comparable.
fn same_second(a: i64, b: i64) -> bool {
    a.div_euclid(1000) == b.div_euclid(1000)
}

/// A file as the store lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    /// Path relative to the table's folder.
    pub(crate) path: String,
    pub(crate) size: u64,
    /// Last modification time, ms.
    pub(crate) modified_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct FilesOffset {
    files: Vec<FileRange>,
    max_rows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileProgress {
    size: u64,
    rows_read: u64,
    done: bool,
    /// Modification time when it was read (ms); `None` in progress of an
    /// earlier Weir.
    modified_ms: Option<i64>,
}

impl FileProgress {
    /// Whether the listed file is not the one that was read.
    fn changed(&self, now: &Listed) -> bool {
        self.size != now.size || self.modified_ms.is_some_and(|m| !same_second(m, now.modified_ms))
    }
}

/// A source over the files in a folder.
pub struct FilesSource {
    table: String,
    loc: Location,
    format: Format,
    schema: SchemaRef,
    /// The declared columns the job reads.
    columns: Vec<usize>,
    max_files: usize,
    max_rows: usize,
    /// What to do with bad records.
    on_error: OnError,
    progress: BTreeMap<String, FileProgress>,
    /// Files whose progress changed since the last checkpoint.
    changed: std::collections::BTreeSet<String>,
    /// The listing fixed by `freeze` (available-now).
    frozen: Option<Vec<Listed>>,
    /// The files (path, size) of the listing the last batch was planned
    /// from, for the backlog: `None` until this process lists the folder (a
    /// replayed epoch's files come from the offsets log), when the backlog
    /// is unknown, not empty.
    last_listing: Option<Vec<(String, u64)>>,
    /// Files (and their bytes) read to their end by this process.
    read_files: u64,
    read_bytes: u64,
    /// Files that changed after they were read, already warned about.
    warned: std::collections::BTreeSet<String>,
    /// Warnings for the next progress line.
    warnings: Vec<String>,
    /// The bytes of the last CSV/JSON file read, which the next batch often
    /// continues.
    cache: Option<(String, Bytes)>,
    /// Threads the job runs on: with more than one, an epoch's Parquet
    /// files are decoded at once (`spawn_parquet_ranges`).
    threads: usize,
    /// The declared index of the watermark column, whose per-batch maxima
    /// a Parquet read computes as it decodes (`SourceBatch::time_maxima`).
    watermark: Option<usize>,
    /// The last offset cut by `remote_whole_parts`: each file's range, the
    /// rows its part takes, and whether that reaches the file's end.
    remote_cut: Option<(Value, Vec<RemoteCut>)>,
    /// The next batch, planned and being decoded while the driver finishes
    /// the epoch before it (`plan_ahead`): its offset and its ranges'
    /// tasks. `read_batch` of that offset takes them; any other offset
    /// drops them.
    ahead: Option<(Value, Vec<Option<ReadTask>>)>,
}

/// A file range's rows as `read_range` decoded them, and the bytes fetched.
type ReadRows = (FileRows, Option<Fetched>);

/// A file range being decoded on its own task.
type ReadTask = tokio::task::JoinHandle<Result<ReadRows>>;

/// A file's share of an offset cut for a remote query: its range, the rows
/// its part takes, and whether they reach the file's end.
type RemoteCut = (FileRange, u64, bool);

/// The format a `files` table declares (`'format'`, `'csv.delimiter'`).
pub(crate) fn format_of(decl: &TableDecl) -> Result<Format> {
    let format = decl.require("format")?.to_ascii_lowercase();
    crate::options::refuse_csv_options_unless_csv(decl, &format)?;
    Ok(match format.as_str() {
        "parquet" => Format::Parquet,
        "csv" => {
            let delimiter = match decl.options.get("csv.delimiter") {
                None => b',',
                // The quote, a line end or a carriage return cannot
                // separate fields: every line would read as one field.
                Some(d @ ("\"" | "\n" | "\r")) => {
                    let what = match d {
                        "\"" => "'\"', the quote",
                        "\n" => "a line end",
                        _ => "a carriage return",
                    };
                    return Err(Error::Config(format!(
                        "table '{}': csv.delimiter cannot be {what}: fields are quoted with '\"' and records end at line ends",
                        decl.name
                    )));
                }
                Some(d) if d.len() == 1 => d.as_bytes()[0],
                Some("\\t") | Some("tab") => b'\t',
                Some(d) => {
                    return Err(Error::Config(format!(
                        "table '{}': csv.delimiter must be one ASCII character (one byte), not '{d}'",
                        decl.name
                    )));
                }
            };
            Format::Csv { delimiter }
        }
        "json" => Format::Json,
        other => {
            return Err(Error::Config(format!(
                "table '{}': unknown format '{other}' (supported: parquet, csv, json)",
                decl.name
            )));
        }
    })
}

/// Every visible file under `loc` (names starting with `.` or `_`, and
/// folders so named, are hidden), in path order.
pub(crate) async fn list_visible(loc: &Location) -> Result<Vec<Listed>> {
    let all = loc.list("").await?;
    Ok(all
        .into_iter()
        .map(|m| Listed {
            path: loc.relative(&m.location),
            size: m.size,
            modified_ms: m.last_modified.timestamp_millis(),
        })
        .filter(|f| {
            !f.path
                .split('/')
                .any(|part| part.starts_with('.') || part.starts_with('_'))
        })
        .collect())
}

/// Checks the values of a `files` table's options that do not depend on
/// its role (source, sink or lookup table), when it is declared: the shell
/// took `'max_rows_per_batch' = 'abc'` or an empty path at CREATE TABLE and
/// failed at the first statement that used the table.
pub(crate) fn check_option_values(decl: &TableDecl) -> Result<()> {
    if decl.options.get("path").is_some_and(|p| p.trim().is_empty()) {
        return Err(Error::Config(format!(
            "table '{}': option 'path' is empty",
            decl.name
        )));
    }
    if decl.options.get("format").is_some() {
        format_of(decl)?;
    }
    parse_count(decl, "max_files_per_batch", DEFAULT_MAX_FILES)?;
    parse_count(decl, "max_rows_per_batch", DEFAULT_MAX_ROWS)?;
    Ok(())
}

fn parse_count(decl: &TableDecl, key: &str, default: usize) -> Result<usize> {
    match decl.options.get(key) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::Config(format!(
                "table '{}': option '{key}' must be a positive whole number, not '{v}'",
                decl.name
            ))),
        },
    }
}

/// The index of `column` in a declared schema.
fn schema_index(schema: &Option<SchemaRef>, column: &str) -> Option<usize> {
    schema.as_ref().and_then(|s| s.index_of(column).ok())
}

impl FilesSource {
    /// The watermark column, when this epoch's rows hold it: each batch's
    /// greatest value is then computed as the batch is decoded.
    fn max_of(&self) -> Option<usize> {
        self.watermark.filter(|w| self.columns.contains(w))
    }

    /// The options a files source takes.
    pub fn known_options() -> Vec<&'static str> {
        OPTIONS.iter().chain(super::SOURCE_OPTIONS).copied().collect()
    }

    /// Opens the source a table declares.
    pub fn open(decl: &TableDecl, store_options: &StoreOptions) -> Result<Self> {
        let known = Self::known_options();
        check_options(decl, &known)?;
        let schema = decl
            .schema
            .clone()
            .ok_or_else(|| Error::Config(format!("source table '{}' must declare its columns", decl.name)))?;
        let format = format_of(decl)?;
        let path = decl.require("path")?;
        let loc = Location::open(path, &table_store_options(decl, store_options), Create::No)
            .map_err(|e| Error::Config(format!("source table '{}': {e}", decl.name)))?;
        Ok(Self {
            table: decl.name.clone(),
            loc,
            format,
            columns: (0..schema.fields().len()).collect(),
            schema,
            max_files: parse_count(decl, "max_files_per_batch", DEFAULT_MAX_FILES)?,
            max_rows: parse_count(decl, "max_rows_per_batch", DEFAULT_MAX_ROWS)?,
            on_error: OnError::from_decl(decl)?,
            progress: BTreeMap::new(),
            changed: Default::default(),
            frozen: None,
            last_listing: None,
            read_files: 0,
            read_bytes: 0,
            warned: Default::default(),
            warnings: Vec::new(),
            cache: None,
            threads: 1,
            remote_cut: None,
            ahead: None,
            watermark: decl
                .watermark
                .as_ref()
                .and_then(|w| schema_index(&decl.schema, &w.column)),
        })
    }

    /// Every visible file, in path order.
    async fn list(&self) -> Result<Vec<Listed>> {
        list_visible(&self.loc).await
    }

    /// Warns (once) about each file deleted before it was read to its end:
    /// its rows not read yet are lost, and only this says so. (A file read
    /// whole may go: Weir reads it once.)
    fn warn_deleted(&mut self, listing: &[Listed]) {
        let listed: std::collections::BTreeSet<&str> = listing.iter().map(|f| f.path.as_str()).collect();
        let gone: Vec<(String, FileProgress)> = self
            .progress
            .iter()
            .filter(|(path, p)| !p.done && !listed.contains(path.as_str()))
            .map(|(path, p)| (path.clone(), *p))
            .collect();
        for (path, p) in gone {
            if !self.warned.insert(path.clone()) {
                continue;
            }
            self.warnings.push(format!(
                "source '{}': {} was deleted after its first {} records were read; the rest of it is lost. \
                 Files must stay until they are read to their end",
                self.table,
                self.loc.url_of(&path),
                p.rows_read
            ));
        }
    }

    /// Warns (once) about a file that changed after it was read.
    fn warn_changed(&mut self, was: FileProgress, now: &Listed) {
        if !self.warned.insert(now.path.clone()) {
            return;
        }
        let when = |ms: Option<i64>| {
            ms.and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| format!(", modified {}", t.format("%Y-%m-%d %H:%M:%S%.3f")))
                .unwrap_or_default()
        };
        let (read, fate) = if was.done {
            (
                "after it was read".to_string(),
                "Weir reads a file once, so the change is not read. Write new rows as a new file",
            )
        } else {
            (
                format!("after its first {} records were read", was.rows_read),
                "the rest of it is read as it is now, from record {next} on (as after fixing a bad \
                 record); files must not change otherwise, so write new rows as a new file",
            )
        };
        let fate = fate.replace("{next}", &(was.rows_read + 1).to_string());
        self.warnings.push(format!(
            "source '{}': {} changed {read} (it was {} bytes{}, it is {} bytes{}); {fate}",
            self.table,
            self.loc.url_of(&now.path),
            was.size,
            when(was.modified_ms),
            now.size,
            when(Some(now.modified_ms)),
        ));
    }

    /// How many rows each of an offset's Parquet files has (from its
    /// footer, once the file is checked to be as planned), in order, for
    /// the files the row budget reaches: the files after those are left
    /// out, unread, as the one-by-one loop of `read_batch` leaves them (a
    /// folder of a thousand files costs no thousand requests an epoch, and
    /// a file the budget does not reach cannot fail the epoch whatever the
    /// thread count). Footers are read in waves of 1, 2, 4, ... at once; a
    /// file's error counts only if the budget reaches it.
    async fn rows_within_budget(&self, offset: &FilesOffset) -> Result<Vec<usize>> {
        let store = self.loc.store();
        let mut totals = Vec::new();
        let mut left = offset.max_rows as usize;
        let mut wave = 1;
        while totals.len() < offset.files.len() && left > 0 {
            let from = totals.len();
            let to = offset.files.len().min(from + wave);
            let rows = futures::future::join_all(offset.files[from..to].iter().map(|range| async move {
                let (path, url) = (self.loc.path(&range.path), self.loc.url_of(&range.path));
                let meta = store
                    .head(&path)
                    .await
                    .map_err(|e| Error::Input(format!("source '{}': {url}: {e}", self.table)))?;
                self.check_unchanged(range, meta.size, meta.last_modified.timestamp_millis())?;
                let file = FileRef {
                    store,
                    path: &path,
                    size: range.size,
                    url: &url,
                    table: &self.table,
                };
                parquet_rows_in(&file).await
            }))
            .await;
            for (range, total) in offset.files[from..to].iter().zip(rows) {
                if left == 0 {
                    break;
                }
                // A file's error counts only if the budget reaches it.
                let total = total?;
                left = left.saturating_sub(total.saturating_sub(range.start_row as usize));
                totals.push(total);
            }
            wave *= 2;
        }
        Ok(totals)
    }

    /// Starts decoding an epoch's Parquet ranges at once, each on its own
    /// task, reading from each exactly the rows the one-by-one loop of
    /// `read_batch` would (their footers say how many each has, and the
    /// budget is dealt out in order). `None` for a range left to that loop
    /// (nothing of it fits the budget, or it is at its end). The tasks run
    /// on while the caller goes on: `read_ahead` awaits them. With fewer
    /// ranges than threads, each range is decoded in parts at once (an
    /// epoch of one file would otherwise be decoded on one thread).
    async fn spawn_parquet_ranges(&self, offset: &FilesOffset) -> Result<Vec<Option<ReadTask>>> {
        let store = self.loc.store();
        let files: Vec<(Path, String)> = offset
            .files
            .iter()
            .map(|r| (self.loc.path(&r.path), self.loc.url_of(&r.path)))
            .collect();
        let totals = self.rows_within_budget(offset).await?;
        let mut budget = offset.max_rows as usize;
        let takes: Vec<usize> = offset
            .files
            .iter()
            .zip(&totals)
            .map(|(range, &total)| {
                let take = total.saturating_sub(range.start_row as usize).min(budget);
                budget -= take;
                take
            })
            .collect();
        let reading = takes.iter().filter(|&&t| t > 0).count().max(1);
        let pieces = self.threads.div_ceil(reading);
        let batch_rows = super::batch_rows(self.threads);
        let mut tasks = Vec::with_capacity(offset.files.len());
        for ((range, (path, url)), &take) in offset.files.iter().zip(files).zip(&takes) {
            let start = range.start_row as usize;
            if take == 0 {
                tasks.push(None);
                continue;
            }
            let file = OwnedFile {
                store: Arc::clone(store),
                path,
                size: range.size,
                url,
                table: self.table.clone(),
            };
            let (schema, needed, on_error, max_of) = (
                Arc::clone(&self.schema),
                self.columns.clone(),
                self.on_error.clone(),
                self.max_of(),
            );
            tasks.push(Some(tokio::spawn(async move {
                let file = file.file();
                let columns = Columns {
                    declared: &schema,
                    needed: &needed,
                    max_of,
                };
                read_range(
                    &file,
                    Format::Parquet,
                    &columns,
                    &on_error,
                    start,
                    take,
                    None,
                    pieces,
                    batch_rows,
                )
                .await
            })));
        }
        Ok(tasks)
    }

    /// The rows of the tasks `spawn_parquet_ranges` started.
    async fn read_ahead(&self, tasks: Vec<Option<ReadTask>>) -> Result<Vec<Option<ReadRows>>> {
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(match task {
                Some(t) => Some(t.await.map_err(|e| {
                    Error::Runtime(format!("source '{}': a read task failed: {e}", self.table))
                })??),
                None => None,
            });
        }
        Ok(out)
    }

    /// Whether an offset's Parquet files are decoded at once, each on a
    /// task, and each in parts when there are fewer files than threads
    /// (with more than one thread).
    fn reads_at_once(&self, offset: &FilesOffset) -> bool {
        self.threads > 1 && self.format == Format::Parquet && !offset.files.is_empty()
    }

    /// Checks that a file is still what the offset says it was when its
    /// epoch was logged (size and modification time).
    fn check_unchanged(&self, range: &FileRange, size: u64, modified_ms: i64) -> Result<()> {
        let changed = size != range.size || range.modified_ms.is_some_and(|m| !same_second(m, modified_ms));
        if !changed {
            return Ok(());
        }
        Err(Error::Input(format!(
            "source '{}': {} changed after this epoch was logged (it was {} bytes, it is {size} bytes{}), \
             so the rows the epoch read can no longer be read as they were. Files must not change once \
             they appear; write new rows as a new file",
            self.table,
            self.loc.url_of(&range.path),
            range.size,
            if size == range.size {
                ", and its modification time differs"
            } else {
                ""
            }
        )))
    }

    /// Progress past `records` records of `range` (to the file's end when
    /// `eof`), read here or on a cluster.
    fn record_read(&mut self, range: &FileRange, records: u64, eof: bool) {
        if eof && !self.progress.get(&range.path).is_some_and(|p| p.done) {
            self.read_files += 1;
            self.read_bytes += range.size;
        }
        self.progress.insert(
            range.path.clone(),
            FileProgress {
                size: range.size,
                rows_read: range.start_row + records,
                done: eof,
                modified_ms: range.modified_ms,
            },
        );
        self.changed.insert(range.path.clone());
    }

    /// That a part [`Source::remote_whole_parts`] cut gave the rows its
    /// footer promised: the driver may have counted them as read from the
    /// footers alone ([`Source::remote_parts_known`]).
    pub(crate) fn check_whole_part(&self, part: &Value, batches: &[RecordBatch]) -> Result<()> {
        // Only a Parquet folder is cut into whole parts (from footers); a
        // part of another format promised nothing.
        if self.format != Format::Parquet {
            return Ok(());
        }
        let parsed = self.parse_offset(part)?;
        let read: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if read != parsed.max_rows {
            let (url, from) = parsed
                .files
                .first()
                .map_or((String::new(), 0), |r| (self.loc.url_of(&r.path), r.start_row));
            return Err(Error::Input(format!(
                "source '{}': {url} gave {read} rows from row {from} where its footer promised {}; \
                 files must not change once they appear",
                self.table, parsed.max_rows
            )));
        }
        Ok(())
    }

    fn parse_offset(&self, offset: &Value) -> Result<FilesOffset> {
        serde_json::from_value(offset.clone()).map_err(|e| {
            Error::Checkpoint(format!(
                "source '{}': unreadable offset in the offsets log: {e}",
                self.table
            ))
        })
    }

    fn progress_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("size", DataType::UInt64, false),
            Field::new("rows_read", DataType::UInt64, false),
            Field::new("done", DataType::Boolean, false),
            Field::new("modified_ms", DataType::Int64, true),
        ]))
    }
}

#[async_trait]
impl Source for FilesSource {
    fn name(&self) -> &str {
        &self.table
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn set_columns(&mut self, columns: Vec<usize>) {
        self.columns = columns;
    }

    async fn freeze(&mut self) -> Result<()> {
        self.frozen = Some(self.list().await?);
        Ok(())
    }

    async fn plan_batch(&mut self) -> Result<Option<Value>> {
        let listing = match &self.frozen {
            Some(l) => l.clone(),
            None => self.list().await?,
        };
        self.last_listing = Some(listing.iter().map(|f| (f.path.clone(), f.size)).collect());
        self.warn_deleted(&listing);
        let mut files = Vec::new();
        for f in listing {
            let progress = self.progress.get(&f.path).copied();
            if let Some(p) = progress
                && p.changed(&f)
            {
                self.warn_changed(p, &f);
                // The bytes kept of it are the old version's.
                if self.cache.as_ref().is_some_and(|(path, _)| *path == f.path) {
                    self.cache = None;
                }
            }
            match progress {
                Some(p) if p.done => {}
                Some(p) => files.push(FileRange {
                    path: f.path,
                    size: f.size,
                    modified_ms: Some(f.modified_ms),
                    start_row: p.rows_read,
                }),
                None => files.push(FileRange {
                    path: f.path,
                    size: f.size,
                    modified_ms: Some(f.modified_ms),
                    start_row: 0,
                }),
            }
            if files.len() >= self.max_files {
                break;
            }
        }
        if files.is_empty() {
            return Ok(None);
        }
        let offset = FilesOffset {
            files,
            max_rows: self.max_rows as u64,
        };
        Ok(Some(
            serde_json::to_value(offset).map_err(|e| Error::Checkpoint(e.to_string()))?,
        ))
    }

    async fn plan_ahead(&mut self) -> Result<Option<Option<Value>>> {
        // Only a frozen listing plans the same batch now as later; a live
        // folder's next batch should see the files that appear meanwhile.
        if self.frozen.is_none() || self.threads <= 1 || self.format != Format::Parquet {
            return Ok(None);
        }
        self.ahead = None;
        let planned = self.plan_batch().await?;
        if let Some(value) = &planned {
            let offset = self.parse_offset(value)?;
            // A file that cannot be read now is left to `read_batch`, which
            // reports it once the epoch is logged (and rolls it back).
            // Even one file is worth decoding ahead: it decodes while the
            // epoch before it runs (a job that reads one file an epoch
            // otherwise decodes, then runs, then decodes, on one thread).
            if let Ok(tasks) = self.spawn_parquet_ranges(&offset).await {
                self.ahead = Some((value.clone(), tasks));
            }
        }
        Ok(Some(planned))
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    fn backlog(&self) -> Option<Backlog> {
        let (mut files, mut bytes) = (0, 0);
        for (path, size) in self.last_listing.as_ref()? {
            if !self.progress.get(path).is_some_and(|p| p.done) {
                files += 1;
                bytes += size;
            }
        }
        Some(Backlog {
            unread: Amount {
                files: Some(files),
                bytes: Some(bytes),
                events: None,
            },
            read: Amount {
                files: Some(self.read_files),
                bytes: Some(self.read_bytes),
                events: None,
            },
        })
    }

    async fn read_batch(&mut self, offset_value: &Value) -> Result<SourceBatch> {
        let offset = self.parse_offset(offset_value)?;
        let mut budget = offset.max_rows as usize;
        let mut out = SourceBatch::default();
        // Each batch's greatest event time, while every read computed them.
        let mut maxima = self.max_of().map(|_| Vec::new());
        let mut decoded = match self.ahead.take() {
            Some((planned, tasks)) if planned == *offset_value => self.read_ahead(tasks).await?,
            _ if self.reads_at_once(&offset) => {
                let tasks = self.spawn_parquet_ranges(&offset).await?;
                self.read_ahead(tasks).await?
            }
            _ => Vec::new(),
        };
        for (i, range) in offset.files.iter().enumerate() {
            if budget == 0 {
                break;
            }
            let path = self.loc.path(&range.path);
            let url = self.loc.url_of(&range.path);
            let (rows, fetched) =
                match decoded.get_mut(i).and_then(Option::take) {
                    Some(read) => read,
                    None => {
                        let file = FileRef {
                            store: self.loc.store(),
                            path: &path,
                            size: range.size,
                            url: &url,
                            table: &self.table,
                        };
                        let cached = match &self.cache {
                            Some((p, b)) if p == &range.path => Some(b.clone()),
                            _ => None,
                        };
                        // CSV and JSON are fetched whole, which tells their size and
                        // time; a Parquet file is read in ranges, so ask for them.
                        if cached.is_none() && self.format == Format::Parquet {
                            let meta =
                                self.loc.store().head(&path).await.map_err(|e| {
                                    Error::Input(format!("source '{}': {url}: {e}", self.table))
                                })?;
                            self.check_unchanged(range, meta.size, meta.last_modified.timestamp_millis())?;
                        }
                        let columns = Columns {
                            declared: &self.schema,
                            needed: &self.columns,
                            max_of: self.max_of(),
                        };
                        read_range(
                            &file,
                            self.format,
                            &columns,
                            &self.on_error,
                            range.start_row as usize,
                            budget,
                            cached,
                            1,
                            super::batch_rows(self.threads),
                        )
                        .await?
                    }
                };
            let bytes = match fetched {
                Some(f) => {
                    if let Some(meta) = &f.meta {
                        self.check_unchanged(range, meta.size, meta.last_modified.timestamp_millis())?;
                    }
                    Some(f.bytes)
                }
                None => None,
            };
            self.cache = bytes.filter(|_| !rows.eof).map(|b| (range.path.clone(), b));
            budget -= rows.records;
            maxima = maxima.filter(|_| rows.maxima.len() == rows.batches.len());
            if let Some(m) = &mut maxima {
                m.extend(rows.maxima);
            }
            out.batches.extend(rows.batches);
            out.bad.extend(rows.bad);
            self.record_read(range, rows.records as u64, rows.eof);
        }
        if let (Some(m), Some(wm)) = (maxima, self.max_of()) {
            let position = self.columns.iter().position(|&c| c == wm);
            out.time_maxima = position.map(|p| (p, m));
        }
        Ok(out)
    }

    fn check_remote(&self) -> Result<()> {
        // A bad record set aside on an executor would have to travel back
        // with its position; until it does, only a read that stops at the
        // first one can run there.
        if self.on_error != OnError::Fail {
            return Err(Error::Config(format!(
                "source '{}': only 'on_error' = 'fail' can be read on a cluster yet (bad records set aside on an executor are not brought back)",
                self.table
            )));
        }
        Ok(())
    }

    /// One part per file, each read from its start row for at most one row
    /// more than the epoch's whole budget (`max_rows`): the one more tells
    /// a file cut by the budget from one that ends exactly there. The
    /// budget is applied afterwards by `assemble_remote`, in file order, as
    /// `read_batch` applies it.
    fn remote_parts(&self, offset: &Value) -> Result<Vec<Value>> {
        self.check_remote()?;
        let offset = self.parse_offset(offset)?;
        let cap = offset.max_rows.saturating_add(1);
        offset
            .files
            .into_iter()
            .map(|range| {
                serde_json::to_value(FilesOffset {
                    files: vec![range],
                    max_rows: cap,
                })
                .map_err(|e| Error::Checkpoint(e.to_string()))
            })
            .collect()
    }

    /// The budget usually ends within the first files: read eight, then
    /// twice as many each time, while it does not.
    fn remote_first_wave(&self) -> Option<usize> {
        Some(8)
    }

    fn remote_wants_more(&self, offset: &Value, read: &[Vec<RecordBatch>]) -> Result<bool> {
        let offset = self.parse_offset(offset)?;
        let rows: u64 = read.iter().flatten().map(|b| b.num_rows() as u64).sum();
        Ok(rows < offset.max_rows)
    }

    fn assemble_remote(&mut self, offset: &Value, parts: Vec<Vec<RecordBatch>>) -> Result<SourceBatch> {
        self.check_remote()?;
        let offset = self.parse_offset(offset)?;
        let rows: u64 = parts.iter().flatten().map(|b| b.num_rows() as u64).sum();
        if parts.len() > offset.files.len() || (parts.len() < offset.files.len() && rows < offset.max_rows) {
            return Err(Error::Runtime(format!(
                "source '{}': a cluster read {} parts of an offset of {} files",
                self.table,
                parts.len(),
                offset.files.len()
            )));
        }
        let mut budget = offset.max_rows;
        let mut out = SourceBatch::default();
        for (range, batches) in offset.files.iter().zip(parts) {
            if budget == 0 {
                break;
            }
            // Under 'on_error' = 'fail' every record read is a row.
            let records: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            let taken = records.min(budget);
            let eof = records <= budget;
            let mut left = taken as usize;
            for batch in batches {
                if left == 0 {
                    break;
                }
                let n = batch.num_rows().min(left);
                left -= n;
                out.batches.push(if n == batch.num_rows() {
                    batch
                } else {
                    batch.slice(0, n)
                });
            }
            budget -= taken;
            self.record_read(range, taken, eof);
        }
        Ok(out)
    }

    /// A Parquet folder's parts are cut from the files' footers (their row
    /// counts): each file from its start row for the rows the budget leaves
    /// it, in order, as `read_batch` takes them; the files after the
    /// budget runs out are not in this epoch. CSV and JSON files must be
    /// read to be counted: `None`.
    async fn remote_whole_parts(&mut self, offset: &Value) -> Result<Option<Vec<Value>>> {
        self.check_remote()?;
        if self.format != Format::Parquet {
            return Ok(None);
        }
        let parsed = self.parse_offset(offset)?;
        let totals = self.rows_within_budget(&parsed).await?;
        let mut budget = parsed.max_rows;
        let mut cut = Vec::new();
        let mut parts = Vec::new();
        for (range, total) in parsed.files.into_iter().zip(totals) {
            if budget == 0 {
                break;
            }
            let left = (total as u64).saturating_sub(range.start_row);
            let take = left.min(budget);
            budget -= take;
            parts.push(
                serde_json::to_value(FilesOffset {
                    files: vec![range.clone()],
                    max_rows: take,
                })
                .map_err(|e| Error::Checkpoint(e.to_string()))?,
            );
            cut.push((range, take, take == left));
        }
        self.remote_cut = Some((offset.clone(), cut));
        Ok(Some(parts))
    }

    fn cuts_whole_parts(&self) -> bool {
        self.format == Format::Parquet && self.on_error == OnError::Fail
    }

    fn record_remote(&mut self, offset: &Value, rows: &[u64]) -> Result<Option<i64>> {
        let cut = match self.remote_cut.take() {
            Some((o, cut)) if &o == offset => cut,
            _ => {
                return Err(Error::Runtime(format!(
                    "source '{}': a read made elsewhere was recorded for an offset it was not cut for",
                    self.table
                )));
            }
        };
        if cut.len() != rows.len() {
            return Err(Error::Runtime(format!(
                "source '{}': {} parts were read of an offset cut in {}",
                self.table,
                rows.len(),
                cut.len()
            )));
        }
        for ((range, take, _), &read) in cut.iter().zip(rows) {
            if read != *take {
                return Err(Error::Input(format!(
                    "source '{}': {} gave {read} rows from row {} where its footer promised {take}; \
                     files must not change once they appear",
                    self.table,
                    self.loc.url_of(&range.path),
                    range.start_row
                )));
            }
        }
        for (range, take, eof) in cut {
            self.record_read(&range, take, eof);
        }
        Ok(None)
    }

    async fn remote_parts_known(&self, column: Option<&str>) -> Result<Option<Vec<(u64, Option<i64>)>>> {
        let Some((_, cut)) = &self.remote_cut else {
            return Ok(None);
        };
        // The rows are the footers' (a part's read checks them).
        let Some(column) = column else {
            return Ok(Some(cut.iter().map(|(_, take, _)| (*take, None)).collect()));
        };
        let Ok(declared) = self.schema.field_with_name(column) else {
            return Ok(None);
        };
        let store = self.loc.store();
        let known = futures::future::join_all(cut.iter().map(|(range, take, _)| async move {
            let (path, url) = (self.loc.path(&range.path), self.loc.url_of(&range.path));
            let file = FileRef {
                store,
                path: &path,
                size: range.size,
                url: &url,
                table: &self.table,
            };
            let max = parquet_max_time_in(
                &file,
                column,
                declared.data_type(),
                range.start_row as usize,
                *take as usize,
            )
            .await?;
            Ok::<_, Error>(max.map(|m| (*take, m)))
        }))
        .await;
        let mut parts = Vec::with_capacity(known.len());
        for part in known {
            match part? {
                Some(p) => parts.push(p),
                None => return Ok(None),
            }
        }
        Ok(Some(parts))
    }

    fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    fn progress_schema(&self) -> SchemaRef {
        Self::progress_schema()
    }

    fn checkpoint(&mut self, full: bool) -> Result<Option<crate::exec::StateChange>> {
        if !full && self.changed.is_empty() {
            return Ok(None);
        }
        let entries: Vec<(&String, &FileProgress)> = if full {
            self.progress.iter().collect()
        } else {
            self.changed
                .iter()
                .filter_map(|p| self.progress.get_key_value(p))
                .collect()
        };
        let schema = Self::progress_schema();
        let paths: StringArray = entries.iter().map(|(p, _)| Some(p.as_str())).collect();
        let sizes: UInt64Array = entries.iter().map(|(_, p)| p.size).collect();
        let rows: UInt64Array = entries.iter().map(|(_, p)| p.rows_read).collect();
        let done: BooleanArray = entries.iter().map(|(_, p)| Some(p.done)).collect();
        let modified: Int64Array = entries.iter().map(|(_, p)| p.modified_ms).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(paths),
                Arc::new(sizes),
                Arc::new(rows),
                Arc::new(done),
                Arc::new(modified),
            ],
        )?;
        self.changed.clear();
        Ok(Some(crate::exec::StateChange {
            upserts: vec![batch],
            deletes: vec![],
        }))
    }

    fn restore(&mut self, batches: &[RecordBatch]) -> Result<()> {
        self.progress.clear();
        for b in batches {
            // Progress of an earlier Weir has no `modified_ms` column.
            if !matches!(b.num_columns(), 4 | 5) {
                return Err(Error::Checkpoint(format!(
                    "source '{}': its progress state has {} columns, expected 5",
                    self.table,
                    b.num_columns()
                )));
            }
            let paths = b.column(0).as_string::<i32>();
            let sizes = b.column(1).as_primitive::<UInt64Type>();
            let rows = b.column(2).as_primitive::<UInt64Type>();
            let done = b.column(3).as_boolean();
            let modified = (b.num_columns() == 5).then(|| b.column(4).as_primitive::<Int64Type>());
            for i in 0..b.num_rows() {
                if paths.is_null(i) {
                    continue;
                }
                self.progress.insert(
                    paths.value(i).to_string(),
                    FileProgress {
                        size: sizes.value(i),
                        rows_read: rows.value(i),
                        done: done.value(i),
                        modified_ms: modified.filter(|m| m.is_valid(i)).map(|m| m.value(i)),
                    },
                );
            }
        }
        self.changed.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_option_on_another_format_is_refused() {
        let decl = |format: &str| {
            weir_sql::job::parse_create_table(&format!(
                "CREATE TABLE t (n BIGINT) WITH ('connector' = 'files', 'path' = 'in/', \
                 'format' = '{format}', 'csv.delimiter' = ';')"
            ))
            .unwrap()
        };
        let e = format_of(&decl("parquet")).unwrap_err().to_string();
        assert!(
            e.contains("option 'csv.delimiter' applies to 'format' = 'csv' only, and the table is 'parquet'"),
            "{e}"
        );
        assert!(format_of(&decl("json")).is_err());
        assert!(matches!(
            format_of(&decl("csv")),
            Ok(Format::Csv { delimiter: b';' })
        ));
        // The quote character cannot separate fields.
        let quote = weir_sql::job::parse_create_table(
            "CREATE TABLE t (n BIGINT) WITH ('connector' = 'files', 'path' = 'in/', \
             'format' = 'csv', 'csv.delimiter' = '\"')",
        )
        .unwrap();
        let e = format_of(&quote).unwrap_err().to_string();
        assert!(e.contains("csv.delimiter cannot be '\"', the quote"), "{e}");
    }

    fn lines(from: usize, to: usize) -> String {
        (from..to)
            .map(|i| format!("{{\"n\": {i}}}\n"))
            .collect::<Vec<_>>()
            .join("")
    }

    fn numbers(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_file_read_in_part_that_changes_is_read_on_as_it_is_now_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, lines(0, 10)).unwrap();
        let decl = weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE t (n BIGINT) WITH ('connector' = 'files', 'path' = '{}', \
             'format' = 'json', 'max_rows_per_batch' = '4')",
            dir.path().display()
        ))
        .unwrap();
        let mut source = FilesSource::open(&decl, &StoreOptions::default()).unwrap();
        let offset = source.plan_batch().await.unwrap().unwrap();
        let read = source.read_batch(&offset).await.unwrap();
        assert_eq!(numbers(&read.batches), vec![0, 1, 2, 3]);
        // Lines appended (a different size, so no modification time is
        // needed to tell): the next batches read the file as it is now,
        // not the bytes kept of it.
        std::fs::write(&file, lines(0, 12)).unwrap();
        let mut rest = Vec::new();
        while let Some(offset) = source.plan_batch().await.unwrap() {
            rest.extend(numbers(&source.read_batch(&offset).await.unwrap().batches));
        }
        assert_eq!(rest, (4..12).collect::<Vec<_>>());
        let warnings = source.take_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("changed after its first 4 records were read"),
            "{warnings:?}"
        );
    }

    /// A replayed epoch reads the files its offsets entry names, without
    /// listing the folder: until a listing, the backlog is unknown (it
    /// said "0 files unread" with rows left to read).
    #[tokio::test]
    async fn the_backlog_is_unknown_until_the_folder_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), lines(0, 10)).unwrap();
        let decl = weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE t (n BIGINT) WITH ('connector' = 'files', 'path' = '{}', \
             'format' = 'json', 'max_rows_per_batch' = '4')",
            dir.path().display()
        ))
        .unwrap();
        let mut planner = FilesSource::open(&decl, &StoreOptions::default()).unwrap();
        let offset = planner.plan_batch().await.unwrap().unwrap();
        // Another process replays the logged batch.
        let mut replayer = FilesSource::open(&decl, &StoreOptions::default()).unwrap();
        assert_eq!(
            numbers(&replayer.read_batch(&offset).await.unwrap().batches),
            vec![0, 1, 2, 3]
        );
        assert_eq!(replayer.backlog(), None);
        let next = replayer.plan_batch().await.unwrap().unwrap();
        replayer.read_batch(&next).await.unwrap();
        assert_eq!(replayer.backlog().unwrap().unread.files, Some(1));
    }

    /// A file deleted before it was read to its end loses its other rows:
    /// said once. One read whole may go without a word.
    #[tokio::test]
    async fn a_file_deleted_before_its_end_is_read_is_warned_about_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), lines(0, 10)).unwrap();
        std::fs::write(dir.path().join("b.json"), lines(10, 12)).unwrap();
        let decl = weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE t (n BIGINT) WITH ('connector' = 'files', 'path' = '{}', \
             'format' = 'json', 'max_rows_per_batch' = '4', 'max_files_per_batch' = '1')",
            dir.path().display()
        ))
        .unwrap();
        let mut source = FilesSource::open(&decl, &StoreOptions::default()).unwrap();
        let offset = source.plan_batch().await.unwrap().unwrap();
        assert_eq!(
            numbers(&source.read_batch(&offset).await.unwrap().batches),
            vec![0, 1, 2, 3]
        );
        std::fs::remove_file(dir.path().join("a.json")).unwrap();
        let mut rest = Vec::new();
        while let Some(offset) = source.plan_batch().await.unwrap() {
            rest.extend(numbers(&source.read_batch(&offset).await.unwrap().batches));
        }
        assert_eq!(rest, vec![10, 11]);
        let warnings = source.take_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0]
                .contains("a.json was deleted after its first 4 records were read; the rest of it is lost"),
            "{warnings:?}"
        );
        // b.json, read whole, goes without a warning.
        std::fs::remove_file(dir.path().join("b.json")).unwrap();
        assert!(source.plan_batch().await.unwrap().is_none());
        assert!(source.take_warnings().is_empty());
    }

    /// An epoch of one big Parquet file, on two threads, is decoded in two
    /// parts at once (its batches show the cut at the middle row), with
    /// the rows, epochs and greatest event times of one thread; a small
    /// file is read whole.
    #[tokio::test]
    async fn one_big_parquet_file_is_decoded_in_parts_on_two_threads() {
        use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
        use datafusion::arrow::datatypes::TimeUnit;
        use datafusion::parquet::arrow::ArrowWriter;
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]));
        for (name, from, to) in [("a", 0, 200_000), ("b", 200_000, 230_000)] {
            let file = std::fs::File::create(dir.path().join(format!("{name}.parquet"))).unwrap();
            let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), None).unwrap();
            let n = Int64Array::from((from..to).collect::<Vec<i64>>());
            let t =
                TimestampMillisecondArray::from_iter_values((from..to).map(|i| 1_000 * i - 700 * (i % 5)));
            w.write(&RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(n), Arc::new(t)]).unwrap())
                .unwrap();
            w.close().unwrap();
        }
        let decl = weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE t (n BIGINT NOT NULL, t TIMESTAMP(3) NOT NULL, WATERMARK FOR t AS t) \
             WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet', 'max_files_per_batch' = '1')",
            dir.path().display()
        ))
        .unwrap();
        let mut runs = Vec::new();
        for threads in [1, 2] {
            let mut source = FilesSource::open(&decl, &StoreOptions::default()).unwrap();
            source.set_threads(threads);
            let mut epochs = Vec::new();
            while let Some(offset) = source.plan_batch().await.unwrap() {
                let read = source.read_batch(&offset).await.unwrap();
                let sizes: Vec<usize> = read.batches.iter().map(RecordBatch::num_rows).collect();
                let (at, maxima) = read.time_maxima.expect("each batch's greatest time");
                assert_eq!((at, maxima.len()), (1, sizes.len()));
                let greatest = maxima.into_iter().flatten().max();
                epochs.push((numbers(&read.batches), sizes, greatest));
            }
            runs.push(epochs);
        }
        let (one, two) = (&runs[0], &runs[1]);
        assert_eq!(one.len(), 2);
        assert_eq!(one[0].0, (0..200_000).collect::<Vec<i64>>());
        for (a, b) in one.iter().zip(two) {
            assert_eq!((&a.0, a.2), (&b.0, b.2));
        }
        // One thread: 8,192-row batches to the end of each file. Two:
        // 16,384-row batches (`batch_rows`), the big file cut at row
        // 100,000 (6 batches and 1,696 rows a part), the small one (under
        // two parts' worth of rows) read whole.
        assert_eq!(one[0].1[12], 8_192);
        assert_eq!(one[0].1.len(), 25);
        let part = [vec![16_384; 6], vec![1_696]].concat();
        assert_eq!(two[0].1, [part.clone(), part].concat());
        assert_eq!(two[1].1, vec![16_384, 13_616]);
    }

    /// Why a source reads bigger batches on more threads (`batch_rows`): a
    /// Parquet string column's values share the column's dictionary, and
    /// they still do after the hash repartition that two threads put under
    /// a keyed operator. From batches of one thread's size they would not:
    /// DataFusion coalesces the small pieces, copying every row's string.
    #[tokio::test]
    async fn two_threads_keep_parquet_strings_shared_through_the_repartition() {
        use datafusion::arrow::array::{Array, AsArray, Int64Array, StringArray};
        use datafusion::execution::SendableRecordBatchStream;
        use datafusion::parquet::arrow::ArrowWriter;
        use datafusion::physical_plan::expressions::Column;
        use datafusion::physical_plan::repartition::RepartitionExec;
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
        use datafusion::physical_plan::{Partitioning, collect_partitioned};
        use datafusion::prelude::SessionContext;
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("url", DataType::Utf8, false),
        ]));
        // 12 batches of 16,384 rows, so that no batch is a short one (a
        // short piece, coalesced, would draw the large pieces after it into
        // the coalescing too: see `batch_rows`).
        let rows = 12 * 16_384i64;
        let file = std::fs::File::create(dir.path().join("a.parquet")).unwrap();
        let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), None).unwrap();
        let n = Int64Array::from((0..rows).collect::<Vec<i64>>());
        // 10,000 distinct URLs of 30 bytes (Nexmark's bids have 10,004 of
        // 63): a dictionary larger than twice a 4,096-row piece's strings.
        let url = StringArray::from_iter_values(
            (0..rows).map(|i| format!("https://example.com/item/{:05}", i % 10_000)),
        );
        w.write(&RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(n), Arc::new(url)]).unwrap())
            .unwrap();
        w.close().unwrap();
        let decl = weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE t (n BIGINT NOT NULL, url VARCHAR NOT NULL) \
             WITH ('connector' = 'files', 'path' = '{}', 'format' = 'parquet')",
            dir.path().display()
        ))
        .unwrap();
        // The string bytes the repartitioned rows hold: each data buffer
        // once, however many arrays share it.
        async fn held_bytes(batches: Vec<RecordBatch>) -> usize {
            let schema = batches[0].schema();
            let dealt: Vec<Vec<RecordBatch>> = (0..2)
                .map(|p| batches.iter().skip(p).step_by(2).cloned().collect())
                .collect();
            // Dealt round-robin as `StreamScanExec` deals them (a memory
            // `DataSourceExec` would cut them to DataFusion's batch size).
            #[derive(Debug)]
            struct Part(SchemaRef, Vec<RecordBatch>);
            impl PartitionStream for Part {
                fn schema(&self) -> &SchemaRef {
                    &self.0
                }
                fn execute(&self, _: Arc<datafusion::execution::TaskContext>) -> SendableRecordBatchStream {
                    let batches = self.1.clone().into_iter().map(Ok);
                    Box::pin(RecordBatchStreamAdapter::new(
                        Arc::clone(&self.0),
                        futures::stream::iter(batches),
                    ))
                }
            }
            let parts: Vec<Arc<dyn PartitionStream>> = dealt
                .into_iter()
                .map(|b| Arc::new(Part(Arc::clone(&schema), b)) as _)
                .collect();
            let scan = Arc::new(
                StreamingTableExec::try_new(Arc::clone(&schema), parts, None, vec![], false, None).unwrap(),
            );
            let hash = Partitioning::Hash(vec![Arc::new(Column::new("n", 0))], 2);
            let plan = Arc::new(RepartitionExec::try_new(scan, hash).unwrap());
            let out = collect_partitioned(plan, SessionContext::new().task_ctx())
                .await
                .unwrap();
            let mut buffers = std::collections::HashMap::new();
            for b in out.iter().flatten() {
                assert_eq!(b.column(1).data_type(), &DataType::Utf8View);
                for buf in b.column(1).as_string_view().data_buffers() {
                    buffers.insert(buf.as_ptr() as usize, buf.len());
                }
            }
            assert_eq!(
                out.iter().flatten().map(RecordBatch::num_rows).sum::<usize>(),
                12 * 16_384
            );
            buffers.values().sum()
        }
        let mut held = Vec::new();
        for threads in [1, 2] {
            let mut source = FilesSource::open(&decl, &StoreOptions::default()).unwrap();
            source.set_threads(threads);
            let offset = source.plan_batch().await.unwrap().unwrap();
            let read = source.read_batch(&offset).await.unwrap();
            held.push(held_bytes(read.batches).await);
        }
        // 30 bytes a row copied: 5.9 MB. Shared: the dictionary's 0.34 MB
        // (once per part: two threads decode the file in two parts).
        assert!(
            held[1] < 1_000_000,
            "two threads' batches: {} bytes held",
            held[1]
        );
        assert!(
            held[0] > 3_000_000,
            "one thread's batches were expected to be copied apart ({} bytes); if DataFusion no \
             longer copies them, `batch_rows` may no longer be needed",
            held[0]
        );
    }

    /// Parquet files of 3, 5 and 2 rows under a budget of 5 rows an epoch,
    /// then a file that is no Parquet at all: on one thread (file by file)
    /// and on two (the files decoded at once), every epoch the budget
    /// keeps off the broken file reads the same rows, and only the epoch
    /// that reaches it fails, naming it.
    #[tokio::test]
    async fn the_thread_count_changes_no_epoch_and_a_file_past_the_budget_is_not_touched() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::parquet::arrow::ArrowWriter;
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        for (name, from, to) in [("a", 0, 3), ("b", 3, 8), ("c", 8, 10)] {
            let file = std::fs::File::create(dir.path().join(format!("{name}.parquet"))).unwrap();
            let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), None).unwrap();
            let rows = Int64Array::from((from..to).collect::<Vec<i64>>());
            w.write(&RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(rows)]).unwrap())
                .unwrap();
            w.close().unwrap();
        }
        std::fs::write(dir.path().join("d.parquet"), b"not parquet").unwrap();
        // A budget of 5 rows makes batches of two files; one file a batch,
        // batches of one file.
        for budget in ["max_rows_per_batch' = '5", "max_files_per_batch' = '1"] {
            let decl = weir_sql::job::parse_create_table(&format!(
                "CREATE TABLE t (n BIGINT NOT NULL) WITH ('connector' = 'files', 'path' = '{}', \
                 'format' = 'parquet', '{budget}')",
                dir.path().display()
            ))
            .unwrap();
            let mut epochs_by_threads = Vec::new();
            for threads in [1, 2] {
                let mut source = FilesSource::open(&decl, &StoreOptions::default()).unwrap();
                source.set_threads(threads);
                let mut epochs = Vec::new();
                let err = loop {
                    let offset = source.plan_batch().await.unwrap().unwrap();
                    match source.read_batch(&offset).await {
                        Ok(read) => epochs.push(numbers(&read.batches)),
                        Err(e) => break e,
                    }
                };
                assert!(err.to_string().contains("d.parquet"), "{threads} threads: {err}");
                epochs_by_threads.push(epochs);
            }
            let one_thread = if budget.contains("rows") {
                vec![vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8, 9]]
            } else {
                vec![vec![0, 1, 2], vec![3, 4, 5, 6, 7], vec![8, 9]]
            };
            assert_eq!(epochs_by_threads[0], one_thread, "one thread, {budget}");
            assert_eq!(
                epochs_by_threads[1], epochs_by_threads[0],
                "two threads, budget {budget}"
            );

            // Two threads over a frozen listing, each next batch planned
            // (and its files' decoding started, one file or several) while
            // the driver would still run the epoch before: the same epochs.
            // Planning ahead leaves progress to `read_batch` (planning again
            // gives the same batch), and the broken file fails only the read
            // of the epoch that reaches it.
            let mut source = FilesSource::open(&decl, &StoreOptions::default()).unwrap();
            source.set_threads(2);
            source.freeze().await.unwrap();
            let mut offset = source.plan_batch().await.unwrap().unwrap();
            let mut epochs = Vec::new();
            let mut one_file_ahead = false;
            let err = loop {
                match source.read_batch(&offset).await {
                    Ok(read) => epochs.push(numbers(&read.batches)),
                    Err(e) => break e,
                }
                let next = source
                    .plan_ahead()
                    .await
                    .unwrap()
                    .expect("a frozen listing plans ahead");
                let next = next.expect("the broken file is still to read");
                // (A batch that reaches a file whose footer cannot be read
                // is left to `read_batch`, which reports it once its epoch
                // is logged.)
                let files = source.parse_offset(&next).unwrap().files;
                let broken = files.iter().any(|f| f.path.contains("d.parquet"));
                assert!(
                    broken || source.ahead.is_some(),
                    "the next batch's files are being decoded"
                );
                one_file_ahead |= files.len() == 1 && !broken;
                assert_eq!(source.plan_batch().await.unwrap(), Some(next.clone()));
                offset = next;
            };
            assert!(err.to_string().contains("d.parquet"), "planned ahead: {err}");
            assert_eq!(epochs, epochs_by_threads[0], "planned ahead, budget {budget}");
            assert_eq!(
                one_file_ahead,
                budget.contains("files"),
                "a batch of one file, decoded ahead"
            );
        }
    }

    /// Files of 3, 5 and 2 lines under a budget of 4 rows an epoch: local
    /// reads and remote ones (each part read by `read_remote_part`, as an
    /// executor does, then assembled) give the same rows epoch by epoch,
    /// and the same progress, so either can plan the next epoch.
    #[tokio::test]
    async fn a_remote_read_gives_a_local_reads_rows_and_progress_under_a_row_budget() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), lines(0, 3)).unwrap();
        std::fs::write(dir.path().join("b.json"), lines(3, 8)).unwrap();
        std::fs::write(dir.path().join("c.json"), lines(8, 10)).unwrap();
        let decl = weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE t (n BIGINT) WITH ('connector' = 'files', 'path' = '{}', \
             'format' = 'json', 'max_rows_per_batch' = '4')",
            dir.path().display()
        ))
        .unwrap();
        let options = StoreOptions::default();
        let mut local = FilesSource::open(&decl, &options).unwrap();
        let mut remote = FilesSource::open(&decl, &options).unwrap();
        let mut epochs = Vec::new();
        while let Some(offset) = local.plan_batch().await.unwrap() {
            assert_eq!(remote.plan_batch().await.unwrap(), Some(offset.clone()));
            let want = numbers(&local.read_batch(&offset).await.unwrap().batches);
            let mut parts = Vec::new();
            for part in remote.remote_parts(&offset).unwrap() {
                parts.push(
                    super::super::read_remote_part(&decl, &options, vec![0], &part)
                        .await
                        .unwrap(),
                );
            }
            let got = remote.assemble_remote(&offset, parts).unwrap();
            assert_eq!(numbers(&got.batches), want);
            assert_eq!(remote.progress, local.progress);
            epochs.push(want);
        }
        assert_eq!(
            epochs,
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]],
            "the budget cuts b.json after its first row"
        );
        // What a cluster cannot read is refused by name.
        let skip = weir_sql::job::parse_create_table(&format!(
            "CREATE TABLE t (n BIGINT) WITH ('connector' = 'files', 'path' = '{}', \
             'format' = 'json', 'on_error' = 'skip')",
            dir.path().display()
        ))
        .unwrap();
        let err = FilesSource::open(&skip, &options)
            .unwrap()
            .check_remote()
            .unwrap_err();
        assert!(err.to_string().contains("only 'on_error' = 'fail'"), "{err}");
    }

    #[test]
    fn modification_times_compare_to_the_second() {
        assert!(same_second(1_767_225_600_123, 1_767_225_600_000));
        assert!(!same_second(1_767_225_600_999, 1_767_225_601_000));
    }
}
