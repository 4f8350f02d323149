//! Reading a row range of a Parquet file: only the footer and the needed
//! columns' pages are fetched.

use super::*;

/// Parquet's async reader over an object store: byte ranges on demand, so
/// only the footer and the declared columns' pages are fetched.
pub(super) struct StoreFileReader {
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

/// How many rows a Parquet file has (from its footer).
pub async fn parquet_rows_in(file: &FileRef<'_>) -> Result<usize> {
    let mut reader = StoreFileReader {
        store: Arc::clone(file.store),
        path: file.path.clone(),
        size: file.size,
    };
    let meta = reader
        .get_metadata(None)
        .await
        .map_err(|e| file.err(format!("not a readable Parquet file: {e}")))?;
    Ok(meta.file_metadata().num_rows().max(0) as usize)
}

pub(super) async fn read_parquet(
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
    let mut stream = builder.build().map_err(|e| file.err(e))?;
    let checked_schema = Arc::new(columns.declared.project(&checked)?);
    let keep = columns.within(&checked);
    // Where the watermark column is in the rows returned.
    let max_at = columns
        .max_of
        .and_then(|c| columns.needed.iter().position(|&n| n == c));
    let mut out = Vec::new();
    let mut maxima = Vec::new();
    let mut row = start;
    // Each batch is checked (and its greatest event time taken) as soon as
    // it is decoded, while its values are still in the CPU's cache.
    while let Some(b) = stream.try_next().await.map_err(|e| file.err(e))? {
        let rows = parquet_rows(file, &b, &positions, &checked_schema, row, bad)?;
        row += b.num_rows();
        if rows.num_rows() > 0 {
            let rows = if keep.len() == checked.len() {
                rows
            } else {
                rows.project(&keep)?
            };
            if let Some(p) = max_at {
                maxima.push(crate::epoch::max_millis(rows.column(p))?);
            }
            out.push(rows);
        }
    }
    Ok(FileRows {
        batches: out,
        records: row - start,
        eof: start + take >= total,
        maxima,
        bad: Vec::new(),
    })
}

/// One decoded Parquet batch in the declared schema, its bad rows (values
/// that do not convert to the declared type, NULLs in NOT NULL columns) set
/// aside. `first_row` is the batch's first row in the file.
pub(super) fn parquet_rows(
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
pub(super) fn render_row(batch: &RecordBatch, positions: &[usize], output: &SchemaRef, row: usize) -> String {
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
