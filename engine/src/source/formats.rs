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
use datafusion::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

// The CSV crate splits a file into records with their lines; Arrow's CSV
// reader is built on the same parser, so both find the same records.
use ::csv as csv_crate;

use super::bad::{BadRecord, BadRecords, OnError, record_text};
use crate::{Error, Result};

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

impl FileRef<'_> {
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

/// Whether every value of type `found` converts to `declared` (so a column
/// the job does not read cannot hold a bad value): the same type, a wider
/// number of the same kind, text to text, a coarser timestamp.
fn lossless(found: &DataType, declared: &DataType) -> bool {
    use DataType::*;
    let int_width = |t: &DataType| match t {
        Int8 => Some((true, 8)),
        Int16 => Some((true, 16)),
        Int32 => Some((true, 32)),
        Int64 => Some((true, 64)),
        UInt8 => Some((false, 8)),
        UInt16 => Some((false, 16)),
        UInt32 => Some((false, 32)),
        UInt64 => Some((false, 64)),
        _ => None,
    };
    let unit_rank = |u: &datafusion::arrow::datatypes::TimeUnit| match u {
        datafusion::arrow::datatypes::TimeUnit::Second => 0,
        datafusion::arrow::datatypes::TimeUnit::Millisecond => 1,
        datafusion::arrow::datatypes::TimeUnit::Microsecond => 2,
        datafusion::arrow::datatypes::TimeUnit::Nanosecond => 3,
    };
    if found == declared {
        return true;
    }
    match (found, declared) {
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (Float16 | Float32, Float32 | Float64) => true,
        (Timestamp(f, _), Timestamp(d, _)) => unit_rank(d) <= unit_rank(f),
        (Null, _) => true,
        (f, d) => match (int_width(f), int_width(d)) {
            (Some((fs, fw)), Some((ds, dw))) => (fs == ds && dw >= fw) || (!fs && ds && dw > fw),
            _ => false,
        },
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
/// when the caller already has them (CSV and JSON).
pub async fn read_range(
    file: &FileRef<'_>,
    format: Format,
    columns: &Columns<'_>,
    on_error: &OnError,
    start: usize,
    max_rows: usize,
    cached: Option<Bytes>,
) -> Result<(FileRows, Option<Fetched>)> {
    let mut bad = BadRecords::new(file.table, on_error);
    let (mut rows, fetched) = match format {
        Format::Parquet => (
            read_parquet(file, columns, start, max_rows, &mut bad).await?,
            None,
        ),
        Format::Csv { delimiter } => {
            let fetched = fetch(file, cached).await?;
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
            let rows = read_json(file, &fetched.bytes, columns, start, max_rows, &mut bad)?;
            (rows, Some(fetched))
        }
    };
    rows.bad = bad.into_records();
    Ok((rows, fetched))
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

/// Whether a file column of type `found` may feed a declared column of type
/// `declared`.
pub fn compatible(found: &DataType, declared: &DataType) -> bool {
    use DataType::*;
    let numeric = |t: &DataType| t.is_numeric();
    let stringy = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let binary = |t: &DataType| matches!(t, Binary | LargeBinary | BinaryView | FixedSizeBinary(_));
    found == declared
        || (numeric(found) && numeric(declared))
        || (stringy(found) && stringy(declared))
        || (binary(found) && binary(declared))
        || (matches!(found, Timestamp(_, _) | Date32 | Date64) && matches!(declared, Timestamp(_, _)))
        || (matches!(found, Date32 | Date64) && matches!(declared, Date32 | Date64))
        || (matches!(found, Null))
}

/// Converts a file's column to the declared type; `None` when some value
/// does not fit (an overflow).
fn conform(col: &ArrayRef, field: &Field) -> Option<ArrayRef> {
    if col.data_type() == field.data_type() {
        return Some(Arc::clone(col));
    }
    let opts = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    cast_with_options(col, field.data_type(), &opts).ok()
}

/// Finds each declared column in the file's columns (exact name first, then
/// case-insensitively), checking types when the file has them.
fn map_columns(file: &FileRef<'_>, found: &Schema, declared: &SchemaRef, typed: bool) -> Result<Vec<usize>> {
    declared
        .fields()
        .iter()
        .map(|f| {
            let idx = found.index_of(f.name()).ok().or_else(|| {
                found
                    .fields()
                    .iter()
                    .position(|g| g.name().eq_ignore_ascii_case(f.name()))
            });
            let Some(idx) = idx else {
                let names: Vec<&str> = found.fields().iter().map(|g| g.name().as_str()).collect();
                return Err(file.err(format!(
                    "column '{}' of table '{}' is missing from the file (it has: {})",
                    f.name(),
                    file.table,
                    names.join(", ")
                )));
            };
            let t = found.field(idx).data_type();
            if typed && !compatible(t, f.data_type()) {
                return Err(file.err(format!(
                    "column '{}' is {t} in the file, but table '{}' declares it {}",
                    f.name(),
                    file.table,
                    f.data_type()
                )));
            }
            Ok(idx)
        })
        .collect()
}

/// Rebuilds a batch in the output schema: output column `j` is the batch's
/// column `positions[j]`, converted to the declared type. The batch's
/// values must convert and fill the NOT NULL columns (the callers have set
/// aside the records where they do not).
fn to_declared(
    file: &FileRef<'_>,
    batch: &RecordBatch,
    positions: &[usize],
    output: &SchemaRef,
) -> Result<RecordBatch> {
    let cols = positions
        .iter()
        .zip(output.fields())
        .map(|(&i, f)| {
            conform(batch.column(i), f).ok_or_else(|| {
                file.err(format!(
                    "column '{}': cannot convert {} to the declared {}",
                    f.name(),
                    batch.column(i).data_type(),
                    f.data_type()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::clone(output), cols, &opts).map_err(|e| file.err(e))
}

/// The schema with every column nullable: what readers decode into, so
/// that a missing value is a NULL to report rather than a reader error.
fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

/// The NOT NULL columns of the output: (column of the decoded batch, name).
fn required_columns(output: &Schema, positions: &[usize]) -> Vec<(usize, String)> {
    output
        .fields()
        .iter()
        .zip(positions)
        .filter(|(f, _)| !f.is_nullable())
        .map(|(f, &p)| (p, f.name().clone()))
        .collect()
}

/// The rows of a decoded batch without a value in a NOT NULL column, with
/// the first such column, in row order.
fn missing_values(batch: &RecordBatch, required: &[(usize, String)]) -> Vec<(usize, String)> {
    if required.iter().all(|(c, _)| batch.column(*c).null_count() == 0) {
        return Vec::new();
    }
    (0..batch.num_rows())
        .filter_map(|r| {
            required
                .iter()
                .find(|(c, _)| batch.column(*c).is_null(r))
                .map(|(_, name)| {
                    (
                        r,
                        format!("column '{name}' has no value (it is declared NOT NULL)"),
                    )
                })
        })
        .collect()
}

/// The batch without the rows at `drop` (ascending).
fn without_rows(batch: &RecordBatch, drop: &[usize]) -> Result<RecordBatch> {
    if drop.is_empty() {
        return Ok(batch.clone());
    }
    let mut keep = vec![true; batch.num_rows()];
    for &r in drop {
        keep[r] = false;
    }
    Ok(filter_record_batch(batch, &BooleanArray::from(keep))?)
}

/// How many records of a range the slow path reads together before going
/// record by record.
const SIFT_GROUP: usize = 256;

/// The slow path, for any record-oriented format: reads `records` in
/// groups with `decode`; a group that fails is read record by record with
/// `one`, which says why a record fails on its own. Rows without a value in
/// a NOT NULL column are bad too. Returns the good rows (as `decode` makes
/// them) and hands the bad records to `bad`.
fn sift<R>(
    records: &[R],
    decode: &dyn Fn(&[&R]) -> std::result::Result<RecordBatch, ArrowError>,
    one: &dyn Fn(&R) -> std::result::Result<RecordBatch, String>,
    to_bad: &dyn Fn(&R, String) -> BadRecord,
    required: &[(usize, String)],
    bad: &mut BadRecords,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for group in records.chunks(SIFT_GROUP) {
        let all: Vec<&R> = group.iter().collect();
        let mut found = Vec::new();
        let (batch, good) = match decode(&all) {
            Ok(b) if b.num_rows() == all.len() => (b, all),
            _ => {
                let mut rows = Vec::new();
                let mut good = Vec::new();
                for r in group {
                    match one(r) {
                        Ok(b) => {
                            rows.push(b);
                            good.push(r);
                        }
                        Err(e) => found.push(to_bad(r, e)),
                    }
                }
                let Some(first) = rows.first() else {
                    bad.add(found)?;
                    continue;
                };
                (concat_batches(&first.schema(), &rows)?, good)
            }
        };
        let missing = missing_values(&batch, required);
        let drop: Vec<usize> = missing.iter().map(|(r, _)| *r).collect();
        found.extend(missing.into_iter().map(|(r, e)| to_bad(good[r], e)));
        bad.add(found)?;
        let kept = without_rows(&batch, &drop)?;
        if kept.num_rows() > 0 {
            out.push(kept);
        }
    }
    Ok(out)
}

/// The file columns (`file_index` of each needed declared column), as the
/// sorted, deduplicated list a reader projects to, and for each needed
/// column its position in that list.
fn projection(file_index: &[usize], needed: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let wanted: Vec<usize> = needed.iter().map(|&c| file_index[c]).collect();
    let mut roots = wanted.clone();
    roots.sort_unstable();
    roots.dedup();
    let positions = wanted
        .iter()
        .map(|w| roots.binary_search(w).expect("every wanted column is a root"))
        .collect();
    (roots, positions)
}

/// Parquet's async reader over an object store: byte ranges on demand, so
/// only the footer and the declared columns' pages are fetched.
struct StoreFileReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl AsyncFileReader for StoreFileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Bytes>> {
        async move { Ok(self.store.get_range(&self.path, range).await?) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<Bytes>>> {
        async move { Ok(self.store.get_ranges(&self.path, &ranges).await?) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_metadata_options(options.map(|o| o.metadata_options().clone()))
                .with_prefetch_hint(Some(64 * 1024))
                .load_and_finish(self, size)
                .await?;
            Ok::<_, ParquetError>(Arc::new(metadata))
        }
        .boxed()
    }
}

async fn read_parquet(
    file: &FileRef<'_>,
    columns: &Columns<'_>,
    start: usize,
    max_rows: usize,
    bad: &mut BadRecords,
) -> Result<FileRows> {
    let reader = StoreFileReader {
        store: Arc::clone(file.store),
        path: file.path.clone(),
        size: file.size,
    };
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| file.err(format!("not a readable Parquet file: {e}")))?;
    let file_schema = Arc::clone(builder.schema());
    // Every declared column must be in the file, even those not read.
    let file_index = map_columns(file, &file_schema, columns.declared, true)?;
    // A row must be good or bad whatever the query reads: besides the
    // needed columns, decode those whose values may not fit the declared
    // column (a narrower type, a NOT NULL the file does not promise).
    let checked = columns.checked(|c| {
        let found = file_schema.field(file_index[c]);
        let declared = columns.declared.field(c);
        !lossless(found.data_type(), declared.data_type()) || (!declared.is_nullable() && found.is_nullable())
    });
    let (roots, positions) = projection(&file_index, &checked);
    // Decode text straight into the declared string type (DataFusion's
    // VARCHAR is Utf8View) instead of converting afterwards.
    let mut hint: Vec<Field> = file_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut hinted = false;
    for (&c, &fi) in checked.iter().zip(checked.iter().map(|c| &file_index[*c])) {
        let want = columns.declared.field(c).data_type();
        let have = hint[fi].data_type().clone();
        let view = match (&have, want) {
            (DataType::Utf8 | DataType::LargeUtf8, DataType::Utf8View) => Some(DataType::Utf8View),
            (DataType::Binary | DataType::LargeBinary, DataType::BinaryView) => Some(DataType::BinaryView),
            _ => None,
        };
        if let Some(t) = view {
            hint[fi] = hint[fi].clone().with_data_type(t);
            hinted = true;
        }
    }
    if hinted {
        let options = ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(hint)));
        let metadata = Arc::clone(builder.metadata());
        let reader = StoreFileReader {
            store: Arc::clone(file.store),
            path: file.path.clone(),
            size: file.size,
        };
        let meta = ArrowReaderMetadata::try_new(metadata, options).map_err(|e| file.err(e))?;
        builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta);
    }
    let total = builder.metadata().file_metadata().num_rows().max(0) as usize;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let start = start.min(total);
    let take = max_rows.min(total - start);
    let mut builder = builder.with_projection(mask).with_batch_size(8192);
    if start > 0 || take < total {
        builder = builder.with_row_selection(RowSelection::from(vec![
            RowSelector::skip(start),
            RowSelector::select(take),
        ]));
    }
    let stream = builder.build().map_err(|e| file.err(e))?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| file.err(e))?;
    let checked_schema = Arc::new(columns.declared.project(&checked)?);
    let keep = columns.within(&checked);
    let mut out = Vec::with_capacity(batches.len());
    let mut row = start;
    for b in &batches {
        let rows = parquet_rows(file, b, &positions, &checked_schema, row, bad)?;
        row += b.num_rows();
        if rows.num_rows() > 0 {
            out.push(if keep.len() == checked.len() {
                rows
            } else {
                rows.project(&keep)?
            });
        }
    }
    Ok(FileRows {
        batches: out,
        records: row - start,
        eof: start + take >= total,
        bad: Vec::new(),
    })
}

/// One decoded Parquet batch in the declared schema, its bad rows (values
/// that do not convert to the declared type, NULLs in NOT NULL columns) set
/// aside. `first_row` is the batch's first row in the file.
fn parquet_rows(
    file: &FileRef<'_>,
    batch: &RecordBatch,
    positions: &[usize],
    output: &SchemaRef,
    first_row: usize,
    bad: &mut BadRecords,
) -> Result<RecordBatch> {
    let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    // Fast path: every value converts and every NOT NULL column is full.
    let strict: Option<Vec<ArrayRef>> = positions
        .iter()
        .zip(output.fields())
        .map(|(&i, f)| conform(batch.column(i), f))
        .collect();
    if let Some(cols) = &strict
        && cols
            .iter()
            .zip(output.fields())
            .all(|(c, f)| f.is_nullable() || c.null_count() == 0)
    {
        return RecordBatch::try_new_with_options(Arc::clone(output), cols.clone(), &opts)
            .map_err(|e| file.err(e));
    }
    // Slow path: convert leniently, and find the rows where that lost a
    // value or left a NOT NULL column empty (the first such column names
    // the error).
    let lenient = CastOptions {
        safe: true,
        format_options: FormatOptions::default(),
    };
    let mut errors: std::collections::BTreeMap<usize, String> = Default::default();
    let mut cols = Vec::with_capacity(positions.len());
    for (&i, f) in positions.iter().zip(output.fields()) {
        let col = batch.column(i);
        let converted = cast_with_options(col, f.data_type(), &lenient).map_err(|e| {
            file.err(format!(
                "column '{}': cannot convert {} to the declared {}: {e}",
                f.name(),
                col.data_type(),
                f.data_type()
            ))
        })?;
        if converted.null_count() > col.null_count() {
            let shown = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())?;
            for r in (0..col.len()).filter(|&r| col.is_valid(r) && converted.is_null(r)) {
                errors.entry(r).or_insert_with(|| {
                    format!(
                        "column '{}': {} ({}) does not convert to the declared {}",
                        f.name(),
                        shown.value(r),
                        col.data_type(),
                        f.data_type()
                    )
                });
            }
        }
        if !f.is_nullable() && converted.null_count() > 0 {
            for r in (0..converted.len()).filter(|&r| converted.is_null(r)) {
                errors.entry(r).or_insert_with(|| {
                    format!("column '{}' has no value (it is declared NOT NULL)", f.name())
                });
            }
        }
        cols.push(converted);
    }
    let found = errors
        .iter()
        .map(|(&r, e)| {
            file.bad(
                None,
                (first_row + r + 1) as u64,
                e.clone(),
                render_row(batch, positions, output, r),
            )
        })
        .collect();
    bad.add(found)?;
    let drop: Vec<usize> = errors.keys().copied().collect();
    let all = RecordBatch::try_new_with_options(nullable(output), cols, &opts)?;
    let kept = without_rows(&all, &drop)?;
    RecordBatch::try_new_with_options(
        Arc::clone(output),
        kept.columns().to_vec(),
        &RecordBatchOptions::new().with_row_count(Some(kept.num_rows())),
    )
    .map_err(|e| file.err(e))
}

/// A row of a file batch as one JSON object of its values as the file has
/// them (the declared columns the job reads, with their declared names).
fn render_row(batch: &RecordBatch, positions: &[usize], output: &SchemaRef, row: usize) -> String {
    let fields: Vec<Field> = positions
        .iter()
        .zip(output.fields())
        .map(|(&i, f)| Field::new(f.name(), batch.column(i).data_type().clone(), true))
        .collect();
    let cols: Vec<ArrayRef> = positions.iter().map(|&i| batch.column(i).slice(row, 1)).collect();
    let as_json = || -> std::result::Result<String, ArrowError> {
        let one = RecordBatch::try_new(Arc::new(Schema::new(fields.clone())), cols.clone())?;
        let mut w = json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, json::writer::LineDelimited>(Vec::new());
        w.write(&one)?;
        w.finish()?;
        Ok(String::from_utf8_lossy(&w.into_inner()).trim_end().to_string())
    };
    as_json().unwrap_or_else(|_| {
        // A type the JSON writer does not know: each value as text.
        let opts = FormatOptions::default().with_null("null");
        let values: Vec<String> = fields
            .iter()
            .zip(&cols)
            .map(|(f, c)| {
                let v = ArrayFormatter::try_new(c.as_ref(), &opts)
                    .map(|fmt| fmt.value(0).to_string())
                    .unwrap_or_default();
                format!(
                    "{}: {}",
                    serde_json::Value::from(f.name().as_str()),
                    serde_json::Value::from(v)
                )
            })
            .collect();
        format!("{{{}}}", values.join(", "))
    })
}

/// The line number (from 1) of the byte at `pos`, counting from `from`
/// (at line `line`).
fn advance_lines(data: &[u8], from: usize, pos: usize, line: u64) -> u64 {
    line + data[from..pos].iter().filter(|&&b| b == b'\n').count() as u64
}

/// One CSV record of the slow path: where its text is and the line it
/// starts on.
struct CsvRecord {
    line: u64,
    row: u64,
    start: usize,
    end: usize,
}

impl CsvRecord {
    fn text<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.start..self.end]
    }
}

/// The pieces of a CSV file read needs, shared by the fast and slow paths.
struct CsvRead<'a> {
    file: &'a FileRef<'a>,
    data: &'a [u8],
    delimiter: u8,
    /// Every header column, typed as declared where the job reads it.
    schema: SchemaRef,
    /// The header columns the job reads, ascending.
    roots: Vec<usize>,
    /// For each root, the declared name (for messages).
    root_names: Vec<String>,
}

impl CsvRead<'_> {
    fn reader_builder(&self, projection: Vec<usize>, batch: usize) -> csv::ReaderBuilder {
        csv::ReaderBuilder::new(Arc::clone(&self.schema))
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_projection(projection)
            .with_batch_size(batch.max(1))
    }

    /// Decodes whole records with Arrow's CSV decoder.
    fn decode(
        &self,
        text: &[u8],
        projection: Vec<usize>,
        rows: usize,
    ) -> std::result::Result<RecordBatch, ArrowError> {
        let mut decoder = self.reader_builder(projection, rows).build_decoder();
        let mut rest = text;
        loop {
            let n = decoder.decode(rest)?;
            rest = &rest[n..];
            if n == 0 || decoder.capacity() == 0 {
                break;
            }
        }
        if rest.iter().any(|b| !matches!(b, b'\r' | b'\n')) {
            return Err(ArrowError::CsvError("more records than expected".into()));
        }
        decoder
            .flush()?
            .ok_or_else(|| ArrowError::CsvError("no record".into()))
    }

    fn decode_group(&self, records: &[&CsvRecord]) -> std::result::Result<RecordBatch, ArrowError> {
        let mut text = Vec::new();
        for r in records {
            text.extend_from_slice(r.text(self.data));
            if !matches!(text.last(), Some(b'\n' | b'\r')) {
                text.push(b'\n');
            }
        }
        self.decode(&text, self.roots.clone(), records.len())
    }

    /// Reads one record on its own: its row, or why it is bad.
    fn decode_one(&self, r: &CsvRecord) -> std::result::Result<RecordBatch, String> {
        let text = r.text(self.data);
        let mut fields = csv_crate::ByteRecord::new();
        let mut rdr = csv_crate::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .from_reader(text);
        if !matches!(rdr.read_byte_record(&mut fields), Ok(true)) {
            return Err("not a CSV record".into());
        }
        let expected = self.schema.fields().len();
        if fields.len() != expected {
            return Err(format!(
                "expected {expected} fields (as in the header), found {}",
                fields.len()
            ));
        }
        if std::str::from_utf8(text).is_err() {
            return Err("the record is not valid UTF-8".into());
        }
        let whole = match self.decode(text, self.roots.clone(), 1) {
            Ok(b) if b.num_rows() == 1 => return Ok(b),
            Ok(b) => format!("read as {} rows", b.num_rows()),
            Err(e) => e.to_string(),
        };
        // Name the column to blame: the first that fails on its own.
        for (&root, name) in self.roots.iter().zip(&self.root_names) {
            if self.decode(text, vec![root], 1).is_err() {
                let value = fields.get(root).map(String::from_utf8_lossy).unwrap_or_default();
                return Err(format!(
                    "column '{name}': failed to parse {} as {}",
                    serde_json::Value::from(value.as_ref()),
                    self.schema.field(root).data_type()
                ));
            }
        }
        Err(whole)
    }

    /// From byte `body` (the start of a record), up to `limit` records with
    /// their lines; `first_row` is the first one's number (from 1).
    fn split(&self, body: usize, limit: usize, first_row: u64) -> Result<Vec<CsvRecord>> {
        let data = self.data;
        let mut rdr = csv_crate::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .from_reader(&data[body..]);
        let mut fields = csv_crate::ByteRecord::new();
        let mut out: Vec<CsvRecord> = Vec::new();
        let mut line = advance_lines(data, 0, body, 1);
        let mut counted = body;
        while out.len() < limit {
            let before = body + rdr.position().byte() as usize;
            match rdr.read_byte_record(&mut fields) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(self.file.err(format!("cannot read the CSV: {e}"))),
            }
            // A record starts after the line ends a reader skips.
            let start = before
                + data[before..]
                    .iter()
                    .position(|b| !matches!(b, b'\r' | b'\n'))
                    .unwrap_or(data.len() - before);
            line = advance_lines(data, counted, start, line);
            counted = start;
            let end = body + rdr.position().byte() as usize;
            if let Some(prev) = out.last_mut() {
                prev.end = start;
            }
            out.push(CsvRecord {
                line,
                row: first_row + out.len() as u64,
                start,
                end,
            });
        }
        Ok(out)
    }
}

fn read_csv(
    file: &FileRef<'_>,
    bytes: &Bytes,
    delimiter: u8,
    columns: &Columns<'_>,
    start: usize,
    max_rows: usize,
    bad: &mut BadRecords,
) -> Result<FileRows> {
    let data = bytes.as_ref();
    let mut rdr = csv_crate::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(data);
    let mut record = csv_crate::ByteRecord::new();
    let names: Vec<String> = match rdr.read_byte_record(&mut record) {
        Ok(true) => record
            .iter()
            .map(|f| String::from_utf8(f.to_vec()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| file.err("cannot read the CSV header: it is not UTF-8"))?,
        // No header: an empty file, which has no records.
        Ok(false) => {
            return Ok(FileRows {
                batches: Vec::new(),
                records: 0,
                eof: true,
                bad: Vec::new(),
            });
        }
        Err(e) => return Err(file.err(format!("cannot read the CSV header: {e}"))),
    };
    let header = Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    // The header gives names only: values are parsed as the declared types.
    let file_index = map_columns(file, &header, columns.declared, false)?;
    // Every declared column is parsed, read or not, so that a record is
    // good or bad whatever the query reads; the rows keep the needed ones.
    let all = columns.checked(|_| true);
    let (roots, all_positions) = projection(&file_index, &all);
    let positions: Vec<usize> = columns.needed.iter().map(|&c| all_positions[c]).collect();
    let schema = Arc::new(Schema::new(
        header
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| match all.iter().find(|&&c| file_index[c] == i) {
                Some(&c) => Field::new(f.name(), columns.declared.field(c).data_type().clone(), true),
                None => Field::new(f.name(), DataType::Utf8, true),
            })
            .collect::<Vec<_>>(),
    ));
    let root_names = roots
        .iter()
        .map(|&r| {
            let c = all.iter().find(|&&c| file_index[c] == r).copied().unwrap_or(0);
            columns.declared.field(c).name().clone()
        })
        .collect();
    // Skip to record `start` (records, not lines: a quoted field may span lines).
    for _ in 0..start {
        match rdr.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(file.err(format!("cannot read the CSV: {e}"))),
        }
    }
    let body = rdr.position().byte() as usize;
    let output = columns.output_schema()?;
    let required = required_columns(columns.declared, &all_positions);
    let read = CsvRead {
        file,
        data,
        delimiter,
        schema,
        roots,
        root_names,
    };

    // Fast path. One record past the limit tells whether the file goes on.
    let fast = || -> std::result::Result<Option<Vec<RecordBatch>>, ArrowError> {
        let reader = read
            .reader_builder(read.roots.clone(), 8192)
            .with_bounds(0, max_rows.saturating_add(1))
            .build(Cursor::new(&data[body..]))?;
        let mut batches = Vec::new();
        for b in reader {
            let b = b?;
            if !missing_values(&b, &required).is_empty() {
                return Ok(None);
            }
            batches.push(b);
        }
        Ok(Some(batches))
    };
    if let Ok(Some(batches)) = fast() {
        let batches = batches
            .iter()
            .map(|b| to_declared(file, b, &positions, &output))
            .collect::<Result<Vec<_>>>()?;
        return Ok(limit(batches, max_rows));
    }

    // Slow path: record by record where needed.
    let mut records = read.split(body, max_rows.saturating_add(1), start as u64 + 1)?;
    let eof = records.len() <= max_rows;
    records.truncate(max_rows);
    let to_bad = |r: &CsvRecord, e: String| {
        let text = String::from_utf8_lossy(r.text(data))
            .trim_end_matches(['\r', '\n'])
            .to_string();
        file.bad(Some(r.line), r.row, e, text)
    };
    let rows = sift(
        &records,
        &|group| read.decode_group(group),
        &|r| read.decode_one(r),
        &to_bad,
        &required,
        bad,
    )?;
    let batches = rows
        .iter()
        .map(|b| to_declared(file, b, &positions, &output))
        .collect::<Result<Vec<_>>>()?;
    Ok(FileRows {
        batches,
        records: records.len(),
        eof,
        bad: Vec::new(),
    })
}

/// One JSON line of the slow path.
struct JsonLine {
    line: u64,
    row: u64,
    start: usize,
    end: usize,
}

/// The end of the line starting at `offset` (after its `\n`).
fn line_end(data: &[u8], offset: usize) -> usize {
    data[offset..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |p| offset + p + 1)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

/// Arrow's JSON error, as a bad record's reason.
fn json_reason(e: &ArrowError) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("Json error: ").unwrap_or(&text);
    if let Some(rest) = text.strip_prefix("whilst decoding field '")
        && let Some((name, why)) = rest.split_once("': ")
    {
        return format!("column '{name}': {why}");
    }
    format!("not a JSON object: {text}")
}

fn read_json(
    file: &FileRef<'_>,
    bytes: &Bytes,
    columns: &Columns<'_>,
    start: usize,
    max_rows: usize,
    bad: &mut BadRecords,
) -> Result<FileRows> {
    let data = bytes.as_ref();
    // Skip `start` records (non-blank lines), counting lines.
    let mut offset = 0;
    let mut line = 1u64;
    let mut skipped = 0;
    while skipped < start && offset < data.len() {
        let end = line_end(data, offset);
        if !is_blank(&data[offset..end]) {
            skipped += 1;
        }
        offset = end;
        line += 1;
    }
    // The range: the next `max_rows` records.
    let mut end = offset;
    let mut taken = 0;
    while taken < max_rows && end < data.len() {
        let next = line_end(data, end);
        if !is_blank(&data[end..next]) {
            taken += 1;
        }
        end = next;
    }
    let eof = is_blank(&data[end..]);
    let output = columns.output_schema()?;
    // Every declared column is decoded, read or not, so that a record is
    // good or bad whatever the query reads; the rows keep the needed ones.
    let schema = nullable(columns.declared);
    let positions: Vec<usize> = columns.needed.to_vec();
    let all: Vec<usize> = (0..columns.declared.fields().len()).collect();
    let required = required_columns(columns.declared, &all);
    let decode = |text: &[u8], rows: usize| -> std::result::Result<Vec<RecordBatch>, ArrowError> {
        json::ReaderBuilder::new(Arc::clone(&schema))
            .with_batch_size(rows.clamp(1, 8192))
            .build(Cursor::new(text))?
            .collect()
    };

    // Fast path: one row per record, every NOT NULL column full.
    if let Ok(batches) = decode(&data[offset..end], taken)
        && batches.iter().map(RecordBatch::num_rows).sum::<usize>() == taken
        && batches.iter().all(|b| missing_values(b, &required).is_empty())
    {
        let batches = batches
            .iter()
            .map(|b| to_declared(file, b, &positions, &output))
            .collect::<Result<Vec<_>>>()?;
        return Ok(FileRows {
            batches,
            records: taken,
            eof,
            bad: Vec::new(),
        });
    }

    // Slow path: line by line where needed.
    let mut lines = Vec::with_capacity(taken);
    let mut at = offset;
    while at < end {
        let next = line_end(data, at);
        let text_end = if data[at..next].ends_with(b"\n") {
            next - 1
        } else {
            next
        };
        if !is_blank(&data[at..text_end]) {
            lines.push(JsonLine {
                line,
                row: (start + lines.len() + 1) as u64,
                start: at,
                end: text_end,
            });
        }
        at = next;
        line += 1;
    }
    let group = |group: &[&JsonLine]| -> std::result::Result<RecordBatch, ArrowError> {
        let mut text = Vec::new();
        for l in group {
            text.extend_from_slice(&data[l.start..l.end]);
            text.push(b'\n');
        }
        let batches = decode(&text, group.len())?;
        concat_batches(&schema, &batches)
    };
    let one = |l: &JsonLine| -> std::result::Result<RecordBatch, String> {
        // Two rows tell a line holding more than one value.
        let batches = decode(&data[l.start..l.end], 2).map_err(|e| json_reason(&e))?;
        let b = concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
        match b.num_rows() {
            1 => Ok(b),
            0 => Err("not a JSON object".into()),
            _ => Err("more than one JSON value on the line".into()),
        }
    };
    let to_bad = |l: &JsonLine, e: String| {
        let text = String::from_utf8_lossy(&data[l.start..l.end])
            .trim_end_matches('\r')
            .to_string();
        file.bad(Some(l.line), l.row, e, text)
    };
    let rows = sift(&lines, &group, &one, &to_bad, &required, bad)?;
    let batches = rows
        .iter()
        .map(|b| to_declared(file, b, &positions, &output))
        .collect::<Result<Vec<_>>>()?;
    Ok(FileRows {
        batches,
        records: lines.len(),
        eof,
        bad: Vec::new(),
    })
}

/// Keeps the first `max_rows` rows; more rows than that means the file goes on.
fn limit(batches: Vec<RecordBatch>, max_rows: usize) -> FileRows {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if total <= max_rows {
        return FileRows {
            batches,
            records: total,
            eof: true,
            bad: Vec::new(),
        };
    }
    let mut out = Vec::new();
    let mut left = max_rows;
    for b in batches {
        if left == 0 {
            break;
        }
        let n = b.num_rows().min(left);
        out.push(b.slice(0, n));
        left -= n;
    }
    FileRows {
        batches: out,
        records: max_rows,
        eof: false,
        bad: Vec::new(),
    }
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
        };
        Ok(read_range(&file, format, &columns, &on_error, start, max, None)
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
        2026-01-01T00:00:06,6,\"\r\n";

    fn bad_csv_records() -> Vec<(Option<u64>, u64, String, String)> {
        vec![
            (
                Some(4),
                2,
                "expected 3 fields (as in the header), found 2".into(),
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
            err.starts_with("in/a.csv: line 4: expected 3 fields (as in the header), found 2 (a bad record of table 'bids';"),
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
        assert!(found[5].2.starts_with("not a JSON object"), "{}", found[5].2);
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
