//! Reading a row range of one file (Parquet, CSV with a header, or
//! newline-delimited JSON) into a table's declared schema.
//!
//! The declared schema is enforced: every declared column must be in the
//! file, with a type that converts to the declared one without guessing
//! (numbers to numbers, timestamps of any unit or zone to timestamps,
//! strings to strings). Anything else is an error naming the file and the
//! column. Columns the table does not declare are ignored.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json;
use datafusion::arrow::util::display::FormatOptions;
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
    /// How many rows.
    pub rows: usize,
    /// Whether the file has no rows after these.
    pub eof: bool,
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
}

/// Reads up to `max_rows` rows from row `start` of a file. `cached` holds
/// the file's bytes when the caller already has them (CSV and JSON).
pub async fn read_range(
    file: &FileRef<'_>,
    format: Format,
    columns: &Columns<'_>,
    start: usize,
    max_rows: usize,
    cached: Option<Bytes>,
) -> Result<(FileRows, Option<Bytes>)> {
    match format {
        Format::Parquet => Ok((read_parquet(file, columns, start, max_rows).await?, None)),
        Format::Csv { delimiter } => {
            let bytes = fetch(file, cached).await?;
            Ok((
                read_csv(file, &bytes, delimiter, columns, start, max_rows)?,
                Some(bytes),
            ))
        }
        Format::Json => {
            let bytes = fetch(file, cached).await?;
            Ok((read_json(file, &bytes, columns, start, max_rows)?, Some(bytes)))
        }
    }
}

async fn fetch(file: &FileRef<'_>, cached: Option<Bytes>) -> Result<Bytes> {
    if let Some(b) = cached {
        return Ok(b);
    }
    let got = file.store.get(file.path).await.map_err(|e| file.err(e))?;
    got.bytes().await.map_err(|e| file.err(e))
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

/// Converts a file's column to the declared type; values that do not fit
/// (an overflow) are an error naming the column.
fn conform(file: &FileRef<'_>, col: &ArrayRef, field: &Field) -> Result<ArrayRef> {
    if col.data_type() == field.data_type() {
        return Ok(Arc::clone(col));
    }
    let opts = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    cast_with_options(col, field.data_type(), &opts).map_err(|e| {
        file.err(format!(
            "column '{}': cannot convert {} to the declared {}: {e}",
            field.name(),
            col.data_type(),
            field.data_type()
        ))
    })
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
/// column `positions[j]`, converted to the declared type.
fn to_declared(
    file: &FileRef<'_>,
    batch: &RecordBatch,
    positions: &[usize],
    output: &SchemaRef,
) -> Result<RecordBatch> {
    let cols = positions
        .iter()
        .zip(output.fields())
        .map(|(&i, f)| conform(file, batch.column(i), f))
        .collect::<Result<Vec<_>>>()?;
    let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::clone(output), cols, &opts).map_err(|e| file.err(e))
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
    let (roots, positions) = projection(&file_index, columns.needed);
    // Decode text straight into the declared string type (DataFusion's
    // VARCHAR is Utf8View) instead of converting afterwards.
    let mut hint: Vec<Field> = file_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut hinted = false;
    for (&c, &fi) in columns
        .needed
        .iter()
        .zip(columns.needed.iter().map(|c| &file_index[*c]))
    {
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
    let output = columns.output_schema()?;
    let batches = batches
        .iter()
        .map(|b| to_declared(file, b, &positions, &output))
        .collect::<Result<Vec<_>>>()?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    Ok(FileRows {
        batches,
        rows,
        eof: start + take >= total,
    })
}

fn read_csv(
    file: &FileRef<'_>,
    bytes: &Bytes,
    delimiter: u8,
    columns: &Columns<'_>,
    start: usize,
    max_rows: usize,
) -> Result<FileRows> {
    let format = csv::reader::Format::default()
        .with_header(true)
        .with_delimiter(delimiter);
    let (header, _) = format
        .infer_schema(Cursor::new(bytes.as_ref()), Some(0))
        .map_err(|e| file.err(format!("cannot read the CSV header: {e}")))?;
    // The header gives names only: values are parsed as the declared types.
    let file_index = map_columns(file, &header, columns.declared, false)?;
    let (roots, positions) = projection(&file_index, columns.needed);
    let read_schema = Arc::new(Schema::new(
        header
            .fields()
            .iter()
            .enumerate()
            .map(
                |(i, f)| match columns.needed.iter().find(|&&c| file_index[c] == i) {
                    Some(&c) => Field::new(f.name(), columns.declared.field(c).data_type().clone(), true),
                    None => Field::new(f.name(), DataType::Utf8, true),
                },
            )
            .collect::<Vec<_>>(),
    ));
    // One row past the limit tells whether the file goes on.
    let end = start.saturating_add(max_rows).saturating_add(1);
    let reader = csv::ReaderBuilder::new(read_schema)
        .with_header(true)
        .with_delimiter(delimiter)
        .with_bounds(start, end)
        .with_projection(roots)
        .with_batch_size(8192)
        .build(Cursor::new(bytes.as_ref()))
        .map_err(|e| file.err(e))?;
    let output = columns.output_schema()?;
    let mut batches = Vec::new();
    for b in reader {
        let b = b.map_err(|e| file.err(e))?;
        batches.push(to_declared(file, &b, &positions, &output)?);
    }
    Ok(limit(batches, max_rows))
}

fn read_json(
    file: &FileRef<'_>,
    bytes: &Bytes,
    columns: &Columns<'_>,
    start: usize,
    max_rows: usize,
) -> Result<FileRows> {
    // Skip `start` records (non-blank lines).
    let mut offset = 0;
    let mut skipped = 0;
    let data = bytes.as_ref();
    while skipped < start && offset < data.len() {
        let end = data[offset..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |p| offset + p + 1);
        if data[offset..end].iter().any(|b| !b.is_ascii_whitespace()) {
            skipped += 1;
        }
        offset = end;
    }
    let reader = json::ReaderBuilder::new(columns.output_schema()?)
        .with_batch_size(8192)
        .build(Cursor::new(&data[offset..]))
        .map_err(|e| file.err(e))?;
    let mut batches = Vec::new();
    let mut rows = 0;
    for b in reader {
        let b = b.map_err(|e| file.err(format!("bad JSON record after row {}: {e}", start + rows)))?;
        rows += b.num_rows();
        batches.push(b);
        if rows > max_rows {
            break;
        }
    }
    Ok(limit(batches, max_rows))
}

/// Keeps the first `max_rows` rows; more rows than that means the file goes on.
fn limit(batches: Vec<RecordBatch>, max_rows: usize) -> FileRows {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if total <= max_rows {
        return FileRows {
            batches,
            rows: total,
            eof: true,
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
        rows: max_rows,
        eof: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{Int64Type, TimeUnit};
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    fn declared() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    async fn read(
        name: &str,
        body: &'static [u8],
        format: Format,
        start: usize,
        max: usize,
    ) -> Result<FileRows> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from(name);
        store.put(&path, PutPayload::from_static(body)).await.unwrap();
        let file = FileRef {
            store: &store,
            path: &path,
            size: body.len() as u64,
            url: name,
            table: "bids",
        };
        let declared = declared();
        let columns = Columns {
            declared: &declared,
            needed: &[0, 1],
        };
        Ok(read_range(&file, format, &columns, start, max, None).await?.0)
    }

    fn prices(rows: &FileRows) -> Vec<i64> {
        rows.batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn csv_by_header_name_in_ranges() {
        let csv =
            b"ts,extra,price\n2026-01-01T00:00:01,x,1\n2026-01-01T00:00:02,y,2\n2026-01-01T00:00:03,z,3\n";
        let all = read("a.csv", csv, Format::Csv { delimiter: b',' }, 0, 10)
            .await
            .unwrap();
        assert_eq!((prices(&all), all.eof), (vec![1, 2, 3], true));
        let mid = read("a.csv", csv, Format::Csv { delimiter: b',' }, 1, 1)
            .await
            .unwrap();
        assert_eq!((prices(&mid), mid.eof), (vec![2], false));
        let end = read("a.csv", csv, Format::Csv { delimiter: b',' }, 1, 2)
            .await
            .unwrap();
        assert_eq!((prices(&end), end.eof), (vec![2, 3], true));
    }

    #[tokio::test]
    async fn json_lines_in_ranges() {
        let json = b"{\"price\": 1, \"ts\": \"2026-01-01T00:00:01\"}\n\n{\"price\": 2, \"ts\": \"2026-01-01T00:00:02\", \"other\": true}\n{\"price\": 3}\n";
        let all = read("a.json", json, Format::Json, 0, 10).await.unwrap();
        assert_eq!(prices(&all), vec![1, 2, 3]);
        let rest = read("a.json", json, Format::Json, 2, 10).await.unwrap();
        assert_eq!((prices(&rest), rest.eof), (vec![3], true));
    }

    #[tokio::test]
    async fn wrong_files_name_the_file_and_column() {
        let err = read(
            "bad.csv",
            b"ts,cost\n2026-01-01T00:00:01,1\n",
            Format::Csv { delimiter: b',' },
            0,
            10,
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("bad.csv") && err.contains("column 'price'") && err.contains("missing"),
            "{err}"
        );
        let err = read(
            "bad.csv",
            b"ts,price\n2026-01-01T00:00:01,abc\n",
            Format::Csv { delimiter: b',' },
            0,
            10,
        )
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
        let _ = Int64Array::from(vec![1]);
    }
}
