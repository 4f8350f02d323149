//! Arrow record batches to and from Parquet bytes: the codec for operator
//! state files and sink output.
//!
//! Every file Weir writes carries key-value metadata `weir.format_version`
//! (and whatever the caller adds), so a later reader can refuse what it does
//! not understand.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::schema::types::ColumnPath;

use crate::{Error, FORMAT_VERSION, Result};

/// The metadata key holding the format version.
pub const VERSION_KEY: &str = "weir.format_version";

/// Encodes batches as one Parquet file. The output depends only on the
/// batches and metadata (no timestamps), so replaying an epoch writes the
/// same bytes.
pub fn encode(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
) -> Result<Bytes> {
    encode_with(url, schema, batches, metadata, false)
}

/// [`encode`] for operator state files: no statistics, LZ4, and
/// dictionaries for string columns only. State is read back whole by Weir
/// alone (never filtered by a reader); building a dictionary for every
/// integer and time column of every delta was the largest cost of a join's
/// checkpoint (Nexmark q4: 154 ms of a 477 ms epoch, 83 ms without).
pub fn encode_state(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
) -> Result<Bytes> {
    encode_with(url, schema, batches, metadata, true)
}

fn encode_with(
    url: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
    state: bool,
) -> Result<Bytes> {
    let err = |e: &dyn std::fmt::Display| Error::Parquet {
        url: url.to_string(),
        reason: format!("cannot encode as Parquet: {e}"),
    };
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
        // Strings keep their dictionary: repeated ones (a channel, a URL
        // prefix, a category name) shrink a join's held rows by a quarter.
        for f in schema.fields() {
            if matches!(
                f.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Binary
                    | DataType::LargeBinary
            ) {
                props = props.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), true);
            }
        }
    }
    let props = props.build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, Arc::clone(schema), Some(props)).map_err(|e| err(&e))?;
    for batch in batches {
        writer.write(batch).map_err(|e| err(&e))?;
    }
    writer.close().map_err(|e| err(&e))?;
    Ok(Bytes::from(buf))
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

/// Decodes a Parquet file Weir wrote, checking its format version.
pub fn decode(url: &str, epoch: Option<u64>, bytes: Bytes) -> Result<Decoded> {
    let corrupt = |reason: String| Error::Corrupt {
        url: url.to_string(),
        epoch,
        reason,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
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
    let schema = Arc::clone(builder.schema());
    let reader = builder
        .build()
        .map_err(|e| corrupt(format!("not a readable Parquet file: {e}")))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(format!("cannot decode its rows: {e}")))?;
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

    #[test]
    fn round_trip_is_deterministic_and_keeps_metadata() {
        let b = batch();
        let meta = BTreeMap::from([("weir.operator".to_string(), "agg".to_string())]);
        let one = encode("x", &b.schema(), std::slice::from_ref(&b), &meta).unwrap();
        let two = encode("x", &b.schema(), std::slice::from_ref(&b), &meta).unwrap();
        assert_eq!(one, two);
        let d = decode("x", Some(1), one).unwrap();
        assert_eq!(d.batches, vec![b]);
        assert_eq!(d.metadata["weir.operator"], "agg");
    }

    #[test]
    fn damaged_files_are_errors_naming_the_file() {
        let b = batch();
        let bytes = encode("x", &b.schema(), &[b], &BTreeMap::new()).unwrap();
        let truncated = bytes.slice(0..bytes.len() / 2);
        let err = decode("mem://s/3.parquet", Some(3), truncated)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mem://s/3.parquet") && err.contains("epoch 3"),
            "{err}"
        );
    }
}
