//! Arrow record batches to and from Parquet bytes: the codec for operator
//! state files and sink output.
//!
//! Every file Weir writes carries key-value metadata `weir.format_version`
//! (and whatever the caller adds), so a later reader can refuse what it does
//! not understand.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory, ArrowWriterOptions,
    compute_leaves,
};
use datafusion::parquet::arrow::{ArrowSchemaConverter, ArrowWriter, add_encoded_arrow_schema_to_metadata};
use datafusion::parquet::basic::{Compression, LogicalType, Type as PhysicalType};
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::file::writer::SerializedFileWriter;
use datafusion::parquet::schema::types::ColumnPath;
pub use object_store::PutPayload;

use crate::{Error, FORMAT_VERSION, Result};

/// The metadata key holding the format version.
pub const VERSION_KEY: &str = "weir.format_version";

/// The metadata key of a state file's checksum, `<n>:<crc>`: the CRC-32
/// (hex) of the file's first n bytes, which hold every row group's pages
/// (what follows them is the page index and the footer, where this key
/// is). Parquet's own page checksums are optional and not written by the
/// Rust writer, and a changed byte in an uncompressed page (an integer, a
/// string) decodes to another value without an error: a damaged state file
/// would restore wrong state silently. [`decode`] checks the sum when a
/// file has one (state files of older Weirs have none).
pub const CHECKSUM_KEY: &str = "weir.crc32";

/// The [`CHECKSUM_KEY`] entry for the bytes written so far.
fn checksum_entry(buf: &Chunks) -> KeyValue {
    let (n, crc) = buf.checksum();
    KeyValue::new(CHECKSUM_KEY.into(), format!("{n}:{crc:08x}"))
}

/// Encoded output, gathered in chunks of [`CHUNK_BYTES`] rather than one
/// growing buffer: a buffer that doubles as a file grows copies the file
/// again at every step and faults in fresh pages for it (Nexmark q20, whose
/// join writes 84 MB of held bids an epoch, spent a fifth of its time
/// there). The object stores take the chunks as they are ([`PutPayload`]).
#[derive(Default)]
struct Chunks {
    done: Vec<Bytes>,
    current: Vec<u8>,
}

/// The size of one chunk of encoded output.
const CHUNK_BYTES: usize = 1 << 20;

impl std::io::Write for Chunks {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            if self.current.capacity() == 0 {
                self.current = Vec::with_capacity(CHUNK_BYTES);
            }
            let take = (self.current.capacity() - self.current.len()).min(data.len());
            self.current.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.current.len() == self.current.capacity() {
                self.done.push(Bytes::from(std::mem::take(&mut self.current)));
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Chunks {
    /// The bytes written so far and their CRC-32 (see [`CHECKSUM_KEY`]).
    fn checksum(&self) -> (usize, u32) {
        let mut h = crc32fast::Hasher::new();
        let mut n = 0;
        for c in self.done.iter().map(|b| &b[..]).chain([&self.current[..]]) {
            h.update(c);
            n += c.len();
        }
        (n, h.finalize())
    }

    fn finish(mut self) -> PutPayload {
        if !self.current.is_empty() {
            self.done.push(Bytes::from(self.current));
        }
        self.done.into_iter().collect()
    }
}

/// The bytes of a payload in one buffer (to read back what was encoded;
/// the stores take the payload as it is).
pub fn contiguous(payload: &PutPayload) -> Bytes {
    let mut chunks = payload.iter();
    match (chunks.next(), chunks.next()) {
        (None, _) => Bytes::new(),
        (Some(one), None) => one.clone(),
        _ => {
            let mut all = Vec::with_capacity(payload.content_length());
            for c in payload.iter() {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    }
}

/// Encodes batches as one Parquet file. The output depends only on the
/// batches and metadata (no timestamps), so replaying an epoch writes the
/// same bytes.
pub fn encode(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
) -> Result<PutPayload> {
    encode_with(url, schema, batches, metadata, Kind::Plain)
}

/// [`encode`] on up to `threads` threads: each row group's columns are
/// encoded at once, one column at a time per thread (as DataFusion's
/// parallel Parquet writer does). The file is the one [`encode`] writes,
/// byte for byte: the same row groups, each column encoded alone either
/// way. Below [`PARALLEL_MIN_ROWS`] rows, or on one thread, this is
/// [`encode`].
pub fn encode_parallel(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
    threads: usize,
) -> Result<PutPayload> {
    encode_parallel_with(url, schema, batches, metadata, threads, Kind::Plain)
}

/// [`encode_parallel`] for a sink's output file: every top-level column is
/// written as nullable (Parquet's OPTIONAL), whatever the query's plan says,
/// as Spark writes every Parquet column. A sink folder outlives changes of
/// its query: when a column is added (or dropped), the older (newer) files
/// lack it, and a reader merging the files' schemas fills it with NULL.
/// Had a file declared it REQUIRED, the merged column would be too:
/// DataFusion then refused `SELECT *` ("declared as non-nullable but
/// contains null values") and answered `IS NULL` with false.
pub fn encode_sink_parallel(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
    threads: usize,
) -> Result<PutPayload> {
    let nullable = all_nullable(schema);
    if &nullable == schema {
        return encode_parallel_with(url, schema, batches, metadata, threads, Kind::Sink);
    }
    let batches = batches
        .iter()
        .map(|b| {
            // Same columns, a schema that allows more: cannot fail.
            RecordBatch::try_new(Arc::clone(&nullable), b.columns().to_vec()).map_err(|e| Error::Parquet {
                url: url.to_string(),
                reason: format!("cannot encode as Parquet: {e}"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    encode_parallel_with(url, &nullable, &batches, metadata, threads, Kind::Sink)
}

/// `schema` with every top-level field nullable (metadata kept).
pub fn all_nullable(schema: &SchemaRef) -> SchemaRef {
    if schema.fields().iter().all(|f| f.is_nullable()) {
        return Arc::clone(schema);
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

/// [`encode_state`] on up to `threads` threads, as [`encode_parallel`]
/// does for sink files: the same file, byte for byte. A join's held rows
/// (Nexmark q20: 920,000 rows, 81 MB an epoch) took 280-830 ms an epoch to
/// encode on one thread while the job's other threads waited.
pub fn encode_state_parallel(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
    threads: usize,
) -> Result<PutPayload> {
    encode_parallel_with(url, schema, batches, metadata, threads, Kind::State)
}

fn encode_parallel_with(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
    threads: usize,
    kind: Kind,
) -> Result<PutPayload> {
    let state = kind == Kind::State;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if threads <= 1 || rows < PARALLEL_MIN_ROWS || schema.fields().len() < 2 {
        return encode_with(url, schema, batches, metadata, kind);
    }
    let err = |e: &dyn std::fmt::Display| Error::Parquet {
        url: url.to_string(),
        reason: format!("cannot encode as Parquet: {e}"),
    };
    let mut props = properties(schema, metadata, state);
    // What ArrowWriter adds: the Arrow schema, so that readers get the
    // exact types back (time zones, units).
    add_encoded_arrow_schema_to_metadata(&arrow_hint(schema, kind), &mut props);
    let props = Arc::new(props);
    let parquet_schema = ArrowSchemaConverter::new()
        .with_coerce_types(props.coerce_types())
        .convert(schema)
        .map_err(|e| err(&e))?;
    let mut buf = Chunks::default();
    let mut writer =
        SerializedFileWriter::new(&mut buf, parquet_schema.root_schema_ptr(), Arc::clone(&props))
            .map_err(|e| err(&e))?;
    let factory = ArrowRowGroupWriterFactory::new(&writer, Arc::clone(schema));
    // Row groups cut as ArrowWriter cuts them: every max_row_group_size rows.
    let group_rows = props.max_row_group_row_count().unwrap_or(usize::MAX).max(1);
    let mut groups: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut in_group = 0;
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if in_group == group_rows {
                groups.push(Vec::new());
                in_group = 0;
            }
            let n = (batch.num_rows() - offset).min(group_rows - in_group);
            if let Some(g) = groups.last_mut() {
                g.push(batch.slice(offset, n));
            }
            in_group += n;
            offset += n;
        }
    }
    for (index, group) in groups.iter().enumerate() {
        let writers = factory.create_column_writers(index).map_err(|e| err(&e))?;
        // Each leaf column's arrays, in the order of the writers.
        let mut leaves: Vec<Vec<ArrowLeafColumn>> = writers.iter().map(|_| Vec::new()).collect();
        for batch in group {
            let mut leaf = 0;
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                for l in compute_leaves(field, column).map_err(|e| err(&e))? {
                    leaves
                        .get_mut(leaf)
                        .ok_or_else(|| err(&"more leaf columns than writers"))?
                        .push(l);
                    leaf += 1;
                }
            }
        }
        let jobs: Vec<Mutex<Option<ColumnJob>>> = writers
            .into_iter()
            .zip(leaves)
            .map(|job| Mutex::new(Some(job)))
            .collect();
        let done: Vec<Mutex<Option<ParquetResult<ArrowColumnChunk>>>> =
            jobs.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        // Threads take the next column until none is left.
        std::thread::scope(|scope| {
            for _ in 0..threads.min(jobs.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let Some((mut writer, arrays)) = job.lock().unwrap_or_else(|p| p.into_inner()).take()
                        else {
                            continue;
                        };
                        let chunk = arrays
                            .iter()
                            .try_for_each(|a| writer.write(a))
                            .and_then(|()| writer.close());
                        *done[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(chunk);
                    }
                });
            }
        });
        let mut row_group = writer.next_row_group().map_err(|e| err(&e))?;
        for chunk in done {
            let chunk = chunk
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .ok_or_else(|| err(&"a column was not encoded"))?
                .map_err(|e| err(&e))?;
            chunk.append_to_row_group(&mut row_group).map_err(|e| err(&e))?;
        }
        row_group.close().map_err(|e| err(&e))?;
    }
    if state {
        writer.flush().map_err(|e| err(&e))?;
        let entry = checksum_entry(writer.inner());
        writer.append_key_value_metadata(entry);
    }
    writer.close().map_err(|e| err(&e))?;
    Ok(buf.finish())
}

/// What a Parquet file is, for how it is encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A sink's output, read by any tool.
    Sink,
    /// A file Weir reads back as it wrote it (a lookup table's snapshot).
    Plain,
    /// An operator's state ([`encode_state`]).
    State,
}

/// The Arrow schema a file carries for readers (`ARROW:schema`): a sink
/// file's with DataFusion's string and binary views as plain strings and
/// binaries, at any depth. The Parquet columns are the same either way;
/// the hint only says what a reader builds. Told "string_view", pyarrow
/// built tables it could not sort, filter, take from, join or write as
/// CSV, nor concatenate with its own strings. (DataFusion, and so Weir,
/// reads text as views whatever the hint says.) Files Weir alone reads
/// keep the types as they are.
fn arrow_hint(schema: &SchemaRef, kind: Kind) -> Schema {
    fn plain(t: &DataType) -> DataType {
        let field = |f: &FieldRef| Arc::new(f.as_ref().clone().with_data_type(plain(f.data_type())));
        match t {
            DataType::Utf8View => DataType::Utf8,
            DataType::BinaryView => DataType::Binary,
            DataType::List(f) => DataType::List(field(f)),
            DataType::ListView(f) => DataType::List(field(f)),
            DataType::LargeList(f) => DataType::LargeList(field(f)),
            DataType::LargeListView(f) => DataType::LargeList(field(f)),
            DataType::FixedSizeList(f, n) => DataType::FixedSizeList(field(f), *n),
            DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
            DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
            DataType::Dictionary(k, v) => DataType::Dictionary(k.clone(), Box::new(plain(v))),
            other => other.clone(),
        }
    }
    if kind != Kind::Sink {
        return schema.as_ref().clone();
    }
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|f| Arc::new(f.as_ref().clone().with_data_type(plain(f.data_type()))))
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// One column's writer and its arrays, taken by the thread that encodes it.
type ColumnJob = (ArrowColumnWriter, Vec<ArrowLeafColumn>);

/// Below this many rows a file is encoded on one thread: starting threads
/// would cost more than they save.
pub const PARALLEL_MIN_ROWS: usize = 65_536;

/// [`encode`] for operator state files: no statistics, dictionaries for
/// string columns only, integers and times delta-encoded, neither strings
/// nor integers compressed, the rest LZ4. State is read back whole by Weir alone (never
/// filtered by a reader); building a dictionary for every integer and time
/// column of every delta was the largest cost of a join's checkpoint
/// (Nexmark q4: 154 ms of a 477 ms epoch, 83 ms without). Delta encoding
/// halved q4's state bytes per epoch (10.9 to 5.6 MB) and cut q20's by 4%
/// at 4% less CPU (`benches/ab.py`); restoring is no slower. Any Parquet
/// reader reads these files (`DELTA_BINARY_PACKED` is standard).
pub fn encode_state(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
) -> Result<PutPayload> {
    encode_with(url, schema, batches, metadata, Kind::State)
}

fn encode_with(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
    kind: Kind,
) -> Result<PutPayload> {
    let state = kind == Kind::State;
    let err = |e: &dyn std::fmt::Display| Error::Parquet {
        url: url.to_string(),
        reason: format!("cannot encode as Parquet: {e}"),
    };
    let mut props = properties(schema, metadata, state);
    add_encoded_arrow_schema_to_metadata(&arrow_hint(schema, kind), &mut props);
    let mut buf = Chunks::default();
    let options = ArrowWriterOptions::new()
        .with_properties(props)
        .with_skip_arrow_metadata(true);
    let mut writer =
        ArrowWriter::try_new_with_options(&mut buf, Arc::clone(schema), options).map_err(|e| err(&e))?;
    for batch in batches {
        writer.write(batch).map_err(|e| err(&e))?;
    }
    if state {
        writer.flush().map_err(|e| err(&e))?;
        writer.sync().map_err(|e| err(&e))?;
        let entry = checksum_entry(writer.inner());
        writer.append_key_value_metadata(entry);
    }
    writer.close().map_err(|e| err(&e))?;
    Ok(buf.finish())
}

/// The writer properties of a sink file (`state`: an operator state file).
fn properties(schema: &SchemaRef, metadata: &BTreeMap<String, String>, state: bool) -> WriterProperties {
    let mut kv = vec![KeyValue::new(VERSION_KEY.into(), FORMAT_VERSION.to_string())];
    kv.extend(metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(kv));
    if state {
        props = props
            .set_compression(Compression::LZ4_RAW)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(datafusion::parquet::file::properties::EnabledStatistics::None);
        for f in schema.fields() {
            // Integers and times are delta-encoded, not compressed: a
            // state file's bookkeeping columns (epoch, arrival time, side)
            // are constant and its keys and times near-sorted, so the
            // deltas pack into a few bits each, which LZ4 would then scan
            // for nothing.
            if matches!(
                f.data_type(),
                DataType::Int32
                    | DataType::Int64
                    | DataType::UInt32
                    | DataType::UInt64
                    | DataType::Timestamp(..)
            ) {
                let path = ColumnPath::from(f.name().as_str());
                props = props
                    .set_column_encoding(
                        path.clone(),
                        datafusion::parquet::basic::Encoding::DELTA_BINARY_PACKED,
                    )
                    .set_column_compression(path, Compression::UNCOMPRESSED);
            }
            // Strings keep their dictionary: repeated ones (a channel, a URL
            // prefix, a category name) shrink a join's held rows by a quarter.
            // They are not compressed: on Nexmark q20's held bids LZ4 took
            // 17% of the encoding for 5% fewer bytes (260 against 215 ms,
            // 81 against 85 MB an epoch).
            if matches!(
                f.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Binary
                    | DataType::LargeBinary
            ) {
                let path = ColumnPath::from(f.name().as_str());
                props = props
                    .set_column_dictionary_enabled(path.clone(), true)
                    .set_column_compression(path, Compression::UNCOMPRESSED);
            }
        }
    } else {
        // A sink file's float columns carry no min/max statistics. Parquet
        // leaves NaN out of them, and DataFusion 55 then reads a column
        // whose min equals its max as that constant, NaN rows included, and
        // prunes NaN rows from `x > c` (apache/datafusion#24804): `weir
        // query` showed a NaN SUM as 100.0. Without them the column is read.
        if let Ok(descr) = ArrowSchemaConverter::new().convert(schema) {
            for column in descr.columns() {
                let float = matches!(column.physical_type(), PhysicalType::FLOAT | PhysicalType::DOUBLE)
                    || matches!(column.logical_type_ref(), Some(LogicalType::Float16));
                if float {
                    props =
                        props.set_column_statistics_enabled(column.path().clone(), EnabledStatistics::None);
                }
            }
        }
    }
    props.build()
}

/// A decoded Parquet file.
#[derive(Debug)]
pub struct Decoded {
    /// The file's Arrow schema.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
    /// Its key-value metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Rows per batch when reading a file back: as many as keep a batch near
/// [`READ_BATCH_BYTES`] (by the file's own sizes), between 1,024 (the
/// reader's default) and 65,536. Large batches matter for state: restored
/// rows are slices of the read batches (see `state::UnitTable::rows`), and
/// an operator keeps one piece of state per batch it is given.
fn read_batch_rows(metadata: &datafusion::parquet::file::metadata::ParquetMetaData) -> usize {
    let widest = metadata
        .row_groups()
        .iter()
        .filter(|g| g.num_rows() > 0)
        .map(|g| g.total_byte_size() / g.num_rows())
        .max()
        .unwrap_or(0)
        .max(1);
    (READ_BATCH_BYTES / widest).clamp(DEFAULT_READ_BATCH_ROWS as i64, 65_536) as usize
}

/// The Parquet reader's own batch size.
const DEFAULT_READ_BATCH_ROWS: usize = 1024;

/// Reads every batch of a file, `batch_rows` rows at a time.
fn read_batches(
    builder: ParquetRecordBatchReaderBuilder<Bytes>,
    batch_rows: usize,
    corrupt: &dyn Fn(String) -> Error,
) -> Result<Vec<RecordBatch>> {
    let reader = builder
        .with_batch_size(batch_rows)
        .build()
        .map_err(|e| corrupt(format!("not a readable Parquet file: {e}")))?;
    // A column that is all NULL in a batch becomes one shared NULL array
    // per type and length: a state table that keeps two kinds of rows (a
    // join's two sides) has the other kind's columns NULL on every row, and
    // each decoded copy of them would hold zeroed buffers (9.2M held bids
    // of q20: 1 GB of NULL auction columns).
    let mut nulls: Vec<ArrayRef> = Vec::new();
    let batches = reader
        .map(|batch| {
            let batch = batch.map_err(|e| corrupt(format!("cannot decode its rows: {e}")))?;
            if !batch
                .columns()
                .iter()
                .any(|c| !c.is_empty() && c.null_count() == c.len())
            {
                return Ok(batch);
            }
            let columns = batch
                .columns()
                .iter()
                .map(|c| {
                    if c.is_empty() || c.null_count() != c.len() {
                        return Arc::clone(c);
                    }
                    match nulls
                        .iter()
                        .find(|n| n.len() == c.len() && n.data_type() == c.data_type())
                    {
                        Some(n) => Arc::clone(n),
                        None => {
                            let n = new_null_array(c.data_type(), c.len());
                            nulls.push(Arc::clone(&n));
                            n
                        }
                    }
                })
                .collect();
            RecordBatch::try_new(batch.schema(), columns)
                .map_err(|e| corrupt(format!("cannot decode its rows: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(batches)
}

/// The size a read batch aims at (see [`read_batch_rows`]).
const READ_BATCH_BYTES: i64 = 64 << 20;

/// Decodes a Parquet file Weir wrote, checking its format version.
pub fn decode(url: &str, epoch: Option<u64>, bytes: Bytes) -> Result<Decoded> {
    let corrupt = |reason: String| Error::Corrupt {
        url: url.to_string(),
        epoch,
        reason,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
        .map_err(|e| corrupt(format!("not a readable Parquet file: {e}")))?;
    let metadata: BTreeMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let version: u32 = metadata
        .get(VERSION_KEY)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(format!("no {VERSION_KEY} in the file's metadata")))?;
    if version > FORMAT_VERSION {
        return Err(Error::FutureVersion {
            url: url.to_string(),
            epoch,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if let Some(entry) = metadata.get(CHECKSUM_KEY) {
        let (n, crc) = entry
            .split_once(':')
            .and_then(|(n, crc)| Some((n.parse::<usize>().ok()?, u32::from_str_radix(crc, 16).ok()?)))
            .ok_or_else(|| corrupt(format!("its {CHECKSUM_KEY} entry '{entry}' is not <bytes>:<crc>")))?;
        if bytes.get(..n).is_none_or(|b| crc32fast::hash(b) != crc) {
            return Err(corrupt(
                "its checksum does not match its contents: the file was changed or damaged after it was written"
                    .into(),
            ));
        }
    }
    let schema = Arc::clone(builder.schema());
    let batch_rows = read_batch_rows(builder.metadata());
    let batches = match read_batches(builder, batch_rows, &corrupt) {
        Ok(batches) => batches,
        // The size estimate comes from the file's encoded sizes, which a
        // dictionary of a few long, repeated strings understates: a batch of
        // them can overflow a string column's 32-bit offsets. The reader's
        // default batch size reads whatever an older Weir could.
        Err(_) if batch_rows > DEFAULT_READ_BATCH_ROWS => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(|e| corrupt(format!("not a readable Parquet file: {e}")))?;
            read_batches(builder, DEFAULT_READ_BATCH_ROWS, &corrupt)?
        }
        Err(e) => return Err(e),
    };
    Ok(Decoded {
        schema,
        batches,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap()
    }

    /// The parallel encoder writes the sequential encoder's file, byte for
    /// byte, across row groups (1,050,000 rows: the second starts inside
    /// the third batch), with nulls, strings, a time zone and a nested
    /// column.
    #[test]
    fn parallel_encoding_writes_the_same_file() {
        use datafusion::arrow::array::{ListArray, TimestampMillisecondArray};
        use datafusion::arrow::datatypes::Int64Type;
        let n = 350_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
            Field::new(
                "t",
                DataType::Timestamp(
                    datafusion::arrow::datatypes::TimeUnit::Millisecond,
                    Some("+01:00".into()),
                ),
                true,
            ),
            Field::new_list("l", Field::new_list_field(DataType::Int64, true), true),
        ]));
        let batches: Vec<RecordBatch> = (0..3)
            .map(|b| {
                let k: StringArray = (0..n)
                    .map(|i| (i % 7 != 0).then(|| format!("key-{}", (i * 31 + b) % 1000)))
                    .collect();
                let v = Int64Array::from_iter_values((0..n as i64).map(|i| i * 3 - b as i64));
                let t = TimestampMillisecondArray::from_iter(
                    (0..n as i64).map(|i| (i % 5 != 0).then_some(i * 1000)),
                )
                .with_timezone("+01:00");
                let l = ListArray::from_iter_primitive::<Int64Type, _, _>(
                    (0..n as i64).map(|i| (i % 3 != 0).then(|| vec![Some(i), None, Some(-i)])),
                );
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(k), Arc::new(v), Arc::new(t), Arc::new(l)],
                )
                .unwrap()
            })
            .collect();
        let meta = BTreeMap::from([("weir.epoch".to_string(), "7".to_string())]);
        let one = contiguous(&encode("x", &schema, &batches, &meta).unwrap());
        assert!(one.len() > CHUNK_BYTES, "the file spans more than one chunk");
        let groups = ParquetRecordBatchReaderBuilder::try_new(one.clone())
            .unwrap()
            .metadata()
            .num_row_groups();
        assert_eq!(groups, 2);
        for threads in [2, 3] {
            let many = contiguous(&encode_parallel("x", &schema, &batches, &meta, threads).unwrap());
            assert!(one == many, "{threads} threads wrote another file");
        }
        // State files too, with their own encodings (delta-packed
        // integers, dictionaries for strings only).
        let state_one = contiguous(&encode_state("x", &schema, &batches, &meta).unwrap());
        assert!(state_one != one, "state files are encoded differently");
        for threads in [2, 3] {
            let many = contiguous(&encode_state_parallel("x", &schema, &batches, &meta, threads).unwrap());
            assert!(state_one == many, "{threads} threads wrote another state file");
        }
        let d = decode("x", Some(7), one).unwrap();
        assert_eq!(d.batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 3 * n);
        assert_eq!(d.schema.fields(), schema.fields());
    }

    /// A sink file's float columns (nested ones too) carry no min/max:
    /// DataFusion 55 would read `[NaN, 100.0]` as 100.0 twice. Other
    /// columns keep theirs (readers prune by them).
    #[test]
    fn sink_float_columns_have_no_min_max() {
        use datafusion::arrow::array::{Float64Array, StructArray};
        let f = Arc::new(Float64Array::from(vec![f64::NAN, 100.0]));
        let nested = StructArray::from(vec![(
            Arc::new(Field::new("x", DataType::Float64, true)),
            Arc::clone(&f) as ArrayRef,
        )]);
        let b = RecordBatch::try_from_iter(vec![
            ("v", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("f", f as ArrayRef),
            ("s", Arc::new(nested) as ArrayRef),
        ])
        .unwrap();
        let file = contiguous(&encode("x", &b.schema(), std::slice::from_ref(&b), &BTreeMap::new()).unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(file.clone()).unwrap();
        let group = reader.metadata().row_group(0);
        let has_min = |i: usize| {
            group
                .column(i)
                .statistics()
                .is_some_and(|s| s.min_bytes_opt().is_some())
        };
        assert!(has_min(0), "the integer column keeps its statistics");
        assert!(!has_min(1), "f: no min/max");
        assert!(!has_min(2), "s.x: no min/max");
        let d = decode("x", None, file).unwrap();
        assert!(
            d.batches[0]
                .column(1)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(0)
                .is_nan()
        );
    }

    /// A sink file tells readers its views are plain strings and binaries
    /// (pyarrow could not sort or filter a "string_view" table), on one
    /// thread or many; the values are the same. A state file keeps views.
    #[test]
    fn sink_files_hint_plain_strings_for_views() {
        use datafusion::arrow::array::{
            Array, AsArray, BinaryViewArray, ListBuilder, StringViewArray, StringViewBuilder,
        };
        let n = PARALLEL_MIN_ROWS + 10;
        let text: StringViewArray = (0..n)
            .map(|i| (i % 3 != 0).then(|| format!("text-{i}")))
            .collect();
        let bytes: BinaryViewArray = (0..n).map(|i| Some(vec![i as u8; i % 4])).collect();
        let mut list = ListBuilder::new(StringViewBuilder::new());
        for i in 0..n {
            list.values().append_value(format!("item-{i}"));
            list.append(i % 5 != 0);
        }
        let b = RecordBatch::try_from_iter(vec![
            ("s", Arc::new(text) as ArrayRef),
            ("b", Arc::new(bytes) as ArrayRef),
            ("l", Arc::new(list.finish()) as ArrayRef),
        ])
        .unwrap();
        let sink = |threads| {
            contiguous(
                &encode_sink_parallel(
                    "x",
                    &b.schema(),
                    std::slice::from_ref(&b),
                    &BTreeMap::new(),
                    threads,
                )
                .unwrap(),
            )
        };
        let (one, many) = (sink(1), sink(2));
        assert!(one == many, "two threads wrote another file");
        // As a reader that follows the hint (pyarrow, arrow-rs) reads it.
        let read: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(one)
            .unwrap()
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        let schema = read[0].schema();
        assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
        assert_eq!(schema.field(1).data_type(), &DataType::Binary);
        assert_eq!(
            schema.field(2).data_type(),
            &DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
        );
        let read = datafusion::arrow::compute::concat_batches(&schema, &read).unwrap();
        let strings = read.column(0).as_string::<i32>();
        assert_eq!(strings.len(), n);
        assert!(
            strings.is_null(0)
                && strings.value(1) == "text-1"
                && strings.value(n - 1) == format!("text-{}", n - 1)
        );
        assert_eq!(read.column(1).as_binary::<i32>().value(3), [3u8, 3, 3]);
        let lists = read.column(2).as_list::<i32>();
        assert!(lists.is_null(0) && lists.value(1).as_string::<i32>().value(0) == "item-1");
        let state =
            contiguous(&encode_state("x", &b.schema(), std::slice::from_ref(&b), &BTreeMap::new()).unwrap());
        let state = ParquetRecordBatchReaderBuilder::try_new(state).unwrap();
        assert_eq!(state.schema().field(0).data_type(), &DataType::Utf8View);
    }

    #[test]
    fn round_trip_is_deterministic_and_keeps_metadata() {
        let b = batch();
        let meta = BTreeMap::from([("weir.operator".to_string(), "agg".to_string())]);
        let one = contiguous(&encode("x", &b.schema(), std::slice::from_ref(&b), &meta).unwrap());
        let two = contiguous(&encode("x", &b.schema(), std::slice::from_ref(&b), &meta).unwrap());
        assert_eq!(one, two);
        let d = decode("x", Some(1), one).unwrap();
        assert_eq!(d.batches, vec![b]);
        assert_eq!(d.metadata["weir.operator"], "agg");
    }

    /// State files delta-encode integers and times (extremes, nulls and
    /// unsorted values included) and give back exactly what was written.
    #[test]
    fn state_files_delta_encode_integers_and_round_trip() {
        use datafusion::arrow::array::{TimestampMillisecondArray, UInt32Array, UInt64Array};
        use datafusion::parquet::basic::Encoding;
        use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
        let n = 10_000i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("u", DataType::UInt64, false),
            Field::new("w", DataType::UInt32, false),
            Field::new(
                "t",
                DataType::Timestamp(
                    datafusion::arrow::datatypes::TimeUnit::Millisecond,
                    Some("UTC".into()),
                ),
                false,
            ),
            Field::new("s", DataType::Utf8, false),
        ]));
        let ints: Vec<Option<i64>> = (0..n)
            .map(|i| match i % 7 {
                0 => None,
                1 => Some(i64::MIN),
                2 => Some(i64::MAX),
                _ => Some((i * 7_919) % 1_000 - 500),
            })
            .collect();
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ints)),
                Arc::new(UInt64Array::from_iter_values(
                    (0..n as u64).map(|i| if i % 2 == 0 { u64::MAX - i } else { i }),
                )),
                Arc::new(UInt32Array::from_iter_values(
                    (0..n as u32).map(|i| i.wrapping_mul(2_654_435_761)),
                )),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values((0..n).map(|i| 1_767_225_600_000 + i))
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("s{}", i % 3)),
                )),
            ],
        )
        .unwrap();
        let bytes =
            contiguous(&encode_state("x", &schema, std::slice::from_ref(&b), &BTreeMap::new()).unwrap());
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let group = reader.metadata().row_group(0);
        for c in 0..4 {
            let column = group.column(c);
            assert!(
                column.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED),
                "column {c}: {:?}",
                column.encodings().collect::<Vec<_>>()
            );
        }
        assert!(
            !group
                .column(4)
                .encodings()
                .any(|e| e == Encoding::DELTA_BINARY_PACKED)
        );
        let d = decode("x", Some(1), bytes).unwrap();
        let read = datafusion::arrow::compute::concat_batches(&schema, &d.batches).unwrap();
        assert_eq!(read, b);
    }

    /// Read back in batches of up to 65,536 rows, a column that is all
    /// NULL in a batch is one shared NULL array per length (not a zeroed
    /// buffer per batch), and the rows read equal the rows written.
    #[test]
    fn all_null_columns_decode_to_one_shared_array() {
        use datafusion::arrow::array::Array;
        let n = 140_000i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("gone", DataType::Int64, true),
            Field::new("text", DataType::Utf8View, true),
            Field::new("some", DataType::Int64, true),
        ]));
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(Int64Array::from(vec![None::<i64>; n as usize])),
                Arc::new(datafusion::arrow::array::StringViewArray::from(vec![
                    None::<&str>;
                    n as usize
                ])),
                // NULL in the first read batch, not in the others.
                Arc::new(Int64Array::from_iter((0..n).map(|i| (i >= 65_536).then_some(i)))),
            ],
        )
        .unwrap();
        let bytes =
            contiguous(&encode_state("x", &schema, std::slice::from_ref(&b), &BTreeMap::new()).unwrap());
        let d = decode("x", Some(1), bytes).unwrap();
        let sizes: Vec<usize> = d.batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, vec![65_536, 65_536, 8_928]);
        let same = |x: &dyn Array, y: &dyn Array| {
            x.to_data().buffers()[0].as_ptr() == y.to_data().buffers()[0].as_ptr()
        };
        let (first, second) = (&d.batches[0], &d.batches[1]);
        assert!(same(first.column(1).as_ref(), second.column(1).as_ref()));
        assert!(same(first.column(2).as_ref(), second.column(2).as_ref()));
        assert!(
            same(first.column(1).as_ref(), first.column(3).as_ref()),
            "same type and length"
        );
        assert!(
            !same(second.column(1).as_ref(), second.column(3).as_ref()),
            "values are not shared"
        );
        let read = datafusion::arrow::compute::concat_batches(&schema, &d.batches).unwrap();
        assert_eq!(read, b);
    }

    #[test]
    fn damaged_files_are_errors_naming_the_file() {
        let b = batch();
        let bytes = contiguous(&encode("x", &b.schema(), &[b], &BTreeMap::new()).unwrap());
        let truncated = bytes.slice(0..bytes.len() / 2);
        let err = decode("mem://s/3.parquet", Some(3), truncated)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mem://s/3.parquet") && err.contains("epoch 3"),
            "{err}"
        );
    }

    /// Any byte of a state file's pages changed is found by its checksum,
    /// on either encoding path; before, an integer or a string in an
    /// uncompressed page decoded to another value without an error.
    #[test]
    fn a_changed_byte_of_a_state_file_fails_its_checksum() {
        let b = batch();
        let n = PARALLEL_MIN_ROWS + 10;
        let big = RecordBatch::try_new(
            b.schema(),
            vec![
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 3 > 0).then(|| format!("k{}", i % 97))),
                )),
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 7))),
            ],
        )
        .unwrap();
        for (rows, threads) in [(b.clone(), 1), (big, 4)] {
            let bytes = contiguous(
                &encode_state_parallel(
                    "x",
                    &b.schema(),
                    std::slice::from_ref(&rows),
                    &BTreeMap::new(),
                    threads,
                )
                .unwrap(),
            );
            let decoded = decode("x", None, bytes.clone()).unwrap();
            assert_eq!(
                decoded.batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
                rows.num_rows()
            );
            let entry = decoded.metadata.get(CHECKSUM_KEY).expect("a checksum");
            let covered: usize = entry.split_once(':').unwrap().0.parse().unwrap();
            assert!(covered > 4 && covered < bytes.len(), "{entry}");
            // Bytes of the pages, after the magic number: every one of a
            // small file, 100 spread over a large one.
            let step = ((covered - 4) / 100).max(1);
            for at in (4..covered).step_by(step) {
                let mut changed = bytes.to_vec();
                changed[at] ^= 0x5a;
                let err = decode("mem://s/7.parquet", Some(7), Bytes::from(changed))
                    .expect_err("a changed byte is an error")
                    .to_string();
                assert!(err.contains("mem://s/7.parquet"), "{err}");
            }
        }
        // Sink files carry no checksum (any tool reads them).
        let sink = contiguous(&encode("x", &b.schema(), &[b], &BTreeMap::new()).unwrap());
        assert!(
            !decode("x", None, sink)
                .unwrap()
                .metadata
                .contains_key(CHECKSUM_KEY)
        );
    }
}
