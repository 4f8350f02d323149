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
        async move {
            // A read of part of a row group (a split read) asks for each of
            // its pages apart, as the offset index lists them: thousands of
            // requests an epoch. A column's pages are adjacent, so they are
            // fetched as one range and cut back into pages.
            let merged = merge_ranges(&ranges, MERGE_GAP);
            let fetched = self.store.get_ranges(&self.path, &merged).await?;
            Ok(ranges
                .iter()
                .map(|r| {
                    let i = merged.partition_point(|m| m.start <= r.start) - 1;
                    let from = (r.start - merged[i].start) as usize;
                    fetched[i].slice(from..from + (r.end - r.start) as usize)
                })
                .collect())
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let mut reader = ParquetMetaDataReader::new()
                .with_metadata_options(options.map(|o| o.metadata_options().clone()))
                .with_prefetch_hint(Some(64 * 1024));
            if let Some(options) = options {
                reader = reader.with_offset_index_policy(options.offset_index_policy());
            }
            let metadata = reader.load_and_finish(self, size).await?;
            Ok::<_, ParquetError>(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Ranges of a file less than this apart are fetched as one.
const MERGE_GAP: u64 = 64 * 1024;

/// `ranges` (any order, possibly overlapping) as fewer ranges in ascending
/// order, each covering the ones less than `gap` bytes apart: every range
/// lies whole within one of them.
fn merge_ranges(ranges: &[std::ops::Range<u64>], gap: u64) -> Vec<std::ops::Range<u64>> {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut out: Vec<std::ops::Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// A Parquet file's footer.
async fn footer(file: &FileRef<'_>) -> Result<Arc<ParquetMetaData>> {
    let mut reader = StoreFileReader {
        store: Arc::clone(file.store),
        path: file.path.clone(),
        size: file.size,
    };
    reader
        .get_metadata(None)
        .await
        .map_err(|e| file.err(format!("not a readable Parquet file: {e}")))
}

/// How many rows a Parquet file has (from its footer).
pub async fn parquet_rows_in(file: &FileRef<'_>) -> Result<usize> {
    Ok(footer(file).await?.file_metadata().num_rows().max(0) as usize)
}

/// The greatest value of the timestamp column `name` among rows `start ..
/// start + take` of a Parquet file, as a read of those rows would find it
/// (`crate::epoch::max_millis`), from the footer's row-group statistics
/// alone: `Some(None)` when every such row's value is NULL, `None` when
/// the statistics cannot tell it exactly. They can when the rows are whole
/// row groups, the file's column has the declared type `declared` (a
/// millisecond timestamp: no conversion to get right), and each group's
/// statistics have an exact maximum, or say the group is all NULLs.
pub async fn parquet_max_time_in(
    file: &FileRef<'_>,
    name: &str,
    declared: &DataType,
    start: usize,
    take: usize,
) -> Result<Option<Option<i64>>> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{TimeUnit, TimestampMillisecondType};
    use datafusion::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
    if !matches!(declared, DataType::Timestamp(TimeUnit::Millisecond, _)) {
        return Ok(None);
    }
    let meta = footer(file).await?;
    let descr = meta.file_metadata().schema_descr();
    let Ok(schema) =
        datafusion::parquet::arrow::parquet_to_arrow_schema(descr, meta.file_metadata().key_value_metadata())
    else {
        return Ok(None);
    };
    if schema.field_with_name(name).ok().map(|f| f.data_type()) != Some(declared) {
        return Ok(None);
    }
    // The row groups that make up the rows exactly, or none.
    let end = start + take;
    let mut groups = Vec::new();
    let mut at = 0usize;
    for group in meta.row_groups() {
        let rows = group.num_rows().max(0) as usize;
        let (from, to) = (at, at + rows);
        at = to;
        if to <= start || from >= end || rows == 0 {
            continue;
        }
        if from < start || to > end {
            return Ok(None);
        }
        groups.push(group);
    }
    if at < end {
        return Ok(None);
    }
    let Ok(stats) = StatisticsConverter::try_new(name, &schema, descr) else {
        return Ok(None);
    };
    let (Ok(maxes), Ok(exact), Ok(nulls)) = (
        stats.row_group_maxes(groups.iter().copied()),
        stats.row_group_is_max_value_exact(groups.iter().copied()),
        stats.row_group_null_counts(groups.iter().copied()),
    ) else {
        return Ok(None);
    };
    let Ok(maxes) = crate::exec::window_assign::to_millis(&maxes) else {
        return Ok(None);
    };
    let maxes = maxes.as_primitive::<TimestampMillisecondType>();
    let mut greatest: Option<i64> = None;
    for (i, group) in groups.iter().enumerate() {
        if maxes.is_valid(i) && exact.is_valid(i) && exact.value(i) {
            let m = maxes.value(i);
            // A time beyond the event range does not move the watermark,
            // so the greatest one within it would take reading the rows.
            if m > crate::exec::window_assign::MAX_EVENT_MS {
                return Ok(None);
            }
            greatest = greatest.max(Some(m));
        } else if !(nulls.is_valid(i) && nulls.value(i) == group.num_rows() as u64) {
            return Ok(None);
        }
    }
    Ok(Some(greatest))
}

/// Reads up to `max_rows` rows from row `start` of a Parquet file, in
/// `pieces` parts at once when it is worth it (see [`cuts`]): each part is
/// decoded on its own task, and the parts' rows are put back in file order,
/// so the rows, their bad records and the first error are those of one
/// read from start to end; only the batches are cut differently.
pub(super) async fn read_parquet(
    file: &FileRef<'_>,
    columns: &Columns<'_>,
    start: usize,
    max_rows: usize,
    bad: &mut BadRecords,
    pieces: usize,
    batch_rows: usize,
) -> Result<FileRows> {
    let mut reader = StoreFileReader {
        store: Arc::clone(file.store),
        path: file.path.clone(),
        size: file.size,
    };
    // Parts need the offset index (each page's first row and bytes) to
    // fetch and decode only their own pages.
    let mut options = ArrowReaderOptions::new();
    if pieces > 1 {
        options = options.with_offset_index_policy(PageIndexPolicy::Optional);
    }
    let mut meta = ArrowReaderMetadata::load_async(&mut reader, options.clone())
        .await
        .map_err(|e| file.err(format!("not a readable Parquet file: {e}")))?;
    let file_schema = Arc::clone(meta.schema());
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
        let options = options.with_schema(Arc::new(Schema::new(hint)));
        meta = ArrowReaderMetadata::try_new(Arc::clone(meta.metadata()), options).map_err(|e| file.err(e))?;
    }
    let total = meta.metadata().file_metadata().num_rows().max(0) as usize;
    let start = start.min(total);
    let take = max_rows.min(total - start);
    let decode = Decode {
        mask: ProjectionMask::roots(
            meta.metadata().file_metadata().schema_descr(),
            roots.iter().copied(),
        ),
        total,
        checked_schema: Arc::new(columns.declared.project(&checked)?),
        keep: Some(columns.within(&checked)).filter(|keep| keep.len() != checked.len()),
        // Where the watermark column is in the rows returned.
        max_at: columns
            .max_of
            .and_then(|c| columns.needed.iter().position(|&n| n == c)),
        positions,
        meta,
        batch_rows: batch_rows.max(1),
    };
    let parts = cuts(decode.meta.metadata(), start, take, pieces);
    let (batches, maxima, records) = if parts.len() <= 1 {
        decode.rows(file, start, take, bad).await?
    } else {
        let decode = Arc::new(decode);
        let mut tasks: Vec<tokio::task::JoinHandle<Result<PartRows>>> = parts
            .iter()
            .map(|&(from, rows)| {
                let decode = Arc::clone(&decode);
                let file = file.to_owned();
                let mut bad = bad.empty_like();
                tokio::spawn(async move {
                    let rows = decode.rows(&file.file(), from, rows, &mut bad).await?;
                    Ok((rows, bad))
                })
            })
            .collect();
        let (mut batches, mut maxima, mut records) = (Vec::new(), Vec::new(), 0);
        for i in 0..tasks.len() {
            let part = match (&mut tasks[i]).await {
                Ok(Ok(part)) => Ok(part),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(file.err(format!("a task decoding part of the file failed: {e}"))),
            };
            // The first part's error is the read's (the one a read from
            // start to end would meet first); the parts after it stop.
            let ((b, m, n), part_bad) = match part {
                Ok(part) => part,
                Err(e) => {
                    tasks[i + 1..].iter().for_each(|t| t.abort());
                    return Err(e);
                }
            };
            if let Err(e) = bad.add(part_bad.into_records()) {
                tasks[i + 1..].iter().for_each(|t| t.abort());
                return Err(e);
            }
            batches.extend(b);
            maxima.extend(m);
            records += n;
        }
        (batches, maxima, records)
    };
    Ok(FileRows {
        batches,
        records,
        eof: start + take >= total,
        maxima,
        bad: Vec::new(),
    })
}

/// A part's rows, their batches' greatest event times, and its bad records.
type PartRows = (Decoded, BadRecords);

/// Decoded rows: the batches, each one's greatest event time, and how many
/// rows of the file they cover (bad ones included).
type Decoded = (Vec<RecordBatch>, Vec<Option<i64>>, usize);

/// The fewest rows a part of a split read gets: below it, a task costs
/// more than it saves.
const MIN_PART_ROWS: usize = 64 * 1024;

/// Where a read of `take` rows from row `start` splits into up to `pieces`
/// parts of about equal rows, as (first row, rows). A part may start at any
/// row when every column chunk has an offset index (Weir's and Arrow's
/// writers write one; pyarrow's does not by default): it then fetches and
/// decodes only its own pages. Otherwise parts start only at row groups: a
/// part starting inside one would decode the pages before it to skip them.
fn cuts(meta: &ParquetMetaData, start: usize, take: usize, pieces: usize) -> Vec<(usize, usize)> {
    let pieces = pieces.min(take / MIN_PART_ROWS).max(1);
    if pieces == 1 {
        return vec![(start, take)];
    }
    let end = start + take;
    let indexed = meta.offset_index().is_some_and(|index| {
        index.len() == meta.num_row_groups()
            && index
                .iter()
                .zip(meta.row_groups())
                .all(|(columns, group)| columns.len() == group.num_columns())
    });
    // Row-group starts inside the range.
    let mut group_starts = Vec::new();
    let mut at = 0usize;
    for group in meta.row_groups() {
        if at > start && at < end {
            group_starts.push(at);
        }
        at += group.num_rows().max(0) as usize;
    }
    let mut bounds = vec![start];
    for i in 1..pieces {
        let ideal = start + take * i / pieces;
        let cut = if indexed {
            Some(ideal)
        } else {
            group_starts.iter().copied().min_by_key(|&g| g.abs_diff(ideal))
        };
        if let Some(cut) = cut
            && cut > *bounds.last().unwrap_or(&start)
            && cut < end
        {
            bounds.push(cut);
        }
    }
    bounds.push(end);
    bounds.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

/// What decoding a range of a file needs besides the file itself; shared by
/// the parts of a split read.
struct Decode {
    meta: ArrowReaderMetadata,
    mask: ProjectionMask,
    total: usize,
    positions: Vec<usize>,
    checked_schema: SchemaRef,
    /// The needed columns among the checked ones, when some are only checked.
    keep: Option<Vec<usize>>,
    max_at: Option<usize>,
    /// Rows per decoded batch.
    batch_rows: usize,
}

impl Decode {
    /// The rows `from..from + take` of `file`.
    async fn rows(
        &self,
        file: &FileRef<'_>,
        from: usize,
        take: usize,
        bad: &mut BadRecords,
    ) -> Result<Decoded> {
        let reader = StoreFileReader {
            store: Arc::clone(file.store),
            path: file.path.clone(),
            size: file.size,
        };
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, self.meta.clone())
            .with_projection(self.mask.clone())
            .with_batch_size(self.batch_rows);
        if from > 0 || take < self.total {
            builder = builder.with_row_selection(RowSelection::from(vec![
                RowSelector::skip(from),
                RowSelector::select(take),
            ]));
        }
        let mut stream = builder.build().map_err(|e| file.err(e))?;
        let mut out = Vec::new();
        let mut maxima = Vec::new();
        let mut row = from;
        // Each batch is checked (and its greatest event time taken) as soon
        // as it is decoded, while its values are still in the CPU's cache.
        while let Some(b) = stream.try_next().await.map_err(|e| file.err(e))? {
            let rows = parquet_rows(file, &b, &self.positions, &self.checked_schema, row, bad)?;
            row += b.num_rows();
            if rows.num_rows() > 0 {
                let rows = match &self.keep {
                    Some(keep) => rows.project(keep)?,
                    None => rows,
                };
                if let Some(p) = self.max_at {
                    maxima.push(crate::epoch::max_millis(rows.column(p))?);
                }
                out.push(rows);
            }
        }
        Ok((out, maxima, row - from))
    }
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
        // A time outside the day: NULL before the cast (which would wrap
        // it), a bad record named here.
        let outside = conform::outside_the_day(col);
        for &(r, v) in &outside {
            errors.entry(r).or_insert_with(|| {
                format!(
                    "column '{}': {v} ({}) is no time of day",
                    f.name(),
                    col.data_type()
                )
            });
        }
        let in_day = match outside.is_empty() {
            true => Arc::clone(col),
            false => conform::nulled_rows(col, &outside.iter().map(|&(r, _)| r).collect::<Vec<_>>())?,
        };
        let converted = cast_with_options(&in_day, f.data_type(), &lenient).map_err(|e| {
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
        let changed = conform::changed_rows(col, &converted)?;
        if !changed.is_empty() {
            let shown = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())?;
            let became = ArrayFormatter::try_new(converted.as_ref(), &FormatOptions::default())?;
            for r in changed {
                errors.entry(r).or_insert_with(|| {
                    format!(
                        "column '{}': {} ({}) would become {} in the declared {}",
                        f.name(),
                        shown.value(r),
                        col.data_type(),
                        became.value(r),
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
    // A time outside the day shows as its raw number: formatted as a
    // time, its conversion overflows (a panic in a debug build).
    let cols: Vec<ArrayRef> = positions
        .iter()
        .map(|&i| {
            let c = batch.column(i).slice(row, 1);
            match conform::outside_the_day(&c).is_empty() {
                true => c,
                false => datafusion::arrow::compute::cast(&c, &DataType::Int64).unwrap_or(c),
            }
        })
        .collect();
    let fields: Vec<Field> = cols
        .iter()
        .zip(output.fields())
        .map(|(c, f)| Field::new(f.name(), c.data_type().clone(), true))
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Int32Type, TimeUnit};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
    use object_store::PutPayload;
    use object_store::memory::InMemory;

    const ROWS: usize = 300_000;

    /// `price` i (NULL where `i % 100_003 == 7`, 3e9 where `i % 90_001 ==
    /// 5`: bad rows for an `INT NOT NULL`), `ts`; 1,000-row pages, `group`
    /// rows per row group, with or without an offset index.
    fn file(group: usize, offset_index: bool) -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let prices: Int64Array = (0..ROWS as i64)
            .map(|i| match () {
                _ if i % 100_003 == 7 => None,
                _ if i % 90_001 == 5 => Some(3_000_000_000),
                _ => Some(i),
            })
            .collect();
        // Times rise, with a dip, so each batch has its own greatest one.
        let ts =
            TimestampMillisecondArray::from_iter_values((0..ROWS as i64).map(|i| 1_000 * i - 500 * (i % 3)));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(prices), Arc::new(ts)]).unwrap();
        let mut props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group))
            .set_write_batch_size(1_000)
            .set_data_page_row_count_limit(1_000);
        if !offset_index {
            props = props
                .set_statistics_enabled(EnabledStatistics::Chunk)
                .set_offset_index_disabled(true);
        }
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, schema, Some(props.build())).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    async fn stored(body: &[u8]) -> (Arc<dyn ObjectStore>, Path) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("a.parquet");
        store.put(&path, PutPayload::from(body.to_vec())).await.unwrap();
        (store, path)
    }

    /// Rows `start..start + max` read in up to `pieces` parts, declared
    /// `price INT NOT NULL, ts TIMESTAMP(3)`, each batch's greatest `ts`
    /// taken.
    async fn read(
        body: &[u8],
        on_error: OnError,
        start: usize,
        max: usize,
        pieces: usize,
    ) -> Result<FileRows> {
        let (store, path) = stored(body).await;
        let file = FileRef {
            store: &store,
            path: &path,
            size: body.len() as u64,
            url: "a.parquet",
            table: "bids",
        };
        let declared = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int32, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let columns = Columns {
            declared: &declared,
            needed: &[0, 1],
            max_of: Some(1),
        };
        Ok(read_range(
            &file,
            Format::Parquet,
            &columns,
            &on_error,
            start,
            max,
            None,
            pieces,
            crate::source::BATCH_ROWS,
        )
        .await?
        .0)
    }

    /// What a read gives, batches aside: prices, records, end of file, bad
    /// records (row, reason), the greatest time.
    type Seen = (Vec<i32>, usize, bool, Vec<(u64, String)>, Option<i64>);

    fn seen(rows: &FileRows) -> Seen {
        let prices = rows
            .batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int32Type>().values().to_vec())
            .collect();
        let bad = rows.bad.iter().map(|b| (b.row, b.error.clone())).collect();
        assert_eq!(rows.maxima.len(), rows.batches.len());
        let greatest = rows.maxima.iter().flatten().max().copied();
        (prices, rows.records, rows.eof, bad, greatest)
    }

    /// The parts a read of the whole file is cut into.
    async fn parts_of(body: &[u8], pieces: usize) -> Vec<(usize, usize)> {
        let (store, path) = stored(body).await;
        let mut reader = StoreFileReader {
            store,
            path,
            size: body.len() as u64,
        };
        let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        let meta = ArrowReaderMetadata::load_async(&mut reader, options)
            .await
            .unwrap();
        cuts(meta.metadata(), 0, ROWS, pieces)
    }

    #[tokio::test]
    async fn a_read_in_parts_gives_the_rows_and_bad_records_of_one_read() {
        // With an offset index, parts start anywhere; without one, at row
        // groups only; a file of one row group without one is read whole.
        let indexed = file(ROWS, true);
        let groups = file(70_000, false);
        let one_group = file(ROWS, false);
        assert_eq!(
            parts_of(&indexed, 3).await,
            vec![(0, 100_000), (100_000, 100_000), (200_000, 100_000)]
        );
        assert_eq!(
            parts_of(&groups, 3).await,
            vec![(0, 70_000), (70_000, 140_000), (210_000, 90_000)]
        );
        assert_eq!(parts_of(&one_group, 3).await, vec![(0, ROWS)]);
        // No part under MIN_PART_ROWS.
        assert_eq!(parts_of(&indexed, 8).await.len(), ROWS / MIN_PART_ROWS);

        for body in [&indexed, &groups, &one_group] {
            for (start, max) in [(0, usize::MAX), (1_234, 250_000), (299_000, 5_000)] {
                let whole = read(body, OnError::Skip, start, max, 1).await.unwrap();
                let parts = read(body, OnError::Skip, start, max, 3).await.unwrap();
                let expected = seen(&whole);
                assert_eq!(seen(&parts), expected, "rows {start} + {max}");
                // The bad rows are set aside in both: NULLs and 3e9s.
                if start == 0 {
                    assert_eq!(expected.3.len(), 7);
                    assert_eq!(expected.0.len() + 7, ROWS);
                }
            }
            // Under 'fail', the error is the first bad record's: row 6
            // (the 3e9 of row index 5), in the first part.
            let whole = read(body, OnError::Fail, 0, usize::MAX, 1).await.err().unwrap();
            let parts = read(body, OnError::Fail, 0, usize::MAX, 3).await.err().unwrap();
            assert_eq!(parts.to_string(), whole.to_string());
            assert!(whole.to_string().starts_with("a.parquet: row 6: "), "{whole}");
            // ... and from row 100,000 on (the NULL of row 100,011, in the
            // first part; the parts after it hold bad records too).
            let whole = read(body, OnError::Fail, 100_000, usize::MAX, 1)
                .await
                .err()
                .unwrap();
            let parts = read(body, OnError::Fail, 100_000, usize::MAX, 3)
                .await
                .err()
                .unwrap();
            assert_eq!(parts.to_string(), whole.to_string());
        }
    }

    #[test]
    fn merged_ranges_cover_each_range_once() {
        let ranges = vec![30..40, 0..10, 10..20, 5..8, 200_000..200_010, 100..150];
        assert_eq!(merge_ranges(&ranges, 50), vec![0..40, 100..150, 200_000..200_010]);
        assert_eq!(merge_ranges(&ranges, 60), vec![0..150, 200_000..200_010]);
        assert_eq!(
            merge_ranges(&ranges, 0),
            vec![0..20, 30..40, 100..150, 200_000..200_010]
        );
        assert_eq!(merge_ranges(&[], 64), Vec::<std::ops::Range<u64>>::new());
    }

    /// The greatest time from the footer is the one a read finds, for rows
    /// that are whole row groups; anything else is left to a read.
    #[tokio::test]
    async fn a_footer_tells_the_greatest_time_of_whole_row_groups_only() {
        let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
        let greatest =
            |from: usize, to: usize| (from as i64..to as i64).map(|i| 1_000 * i - 500 * (i % 3)).max();
        let max_in = |body: Vec<u8>, declared: DataType, start: usize, take: usize| async move {
            let (store, path) = stored(&body).await;
            let file = FileRef {
                store: &store,
                path: &path,
                size: body.len() as u64,
                url: "a.parquet",
                table: "bids",
            };
            parquet_max_time_in(&file, "ts", &declared, start, take)
                .await
                .unwrap()
        };
        let groups = file(70_000, true);
        // Whole groups: the first, the middle three, the last (shorter).
        assert_eq!(
            max_in(groups.clone(), ms.clone(), 0, 70_000).await,
            Some(greatest(0, 70_000))
        );
        assert_eq!(
            max_in(groups.clone(), ms.clone(), 70_000, 210_000).await,
            Some(greatest(70_000, 280_000))
        );
        assert_eq!(
            max_in(groups.clone(), ms.clone(), 280_000, 20_000).await,
            Some(greatest(280_000, ROWS))
        );
        // Part of a group, or past the file's end: not told.
        assert_eq!(max_in(groups.clone(), ms.clone(), 0, 69_999).await, None);
        assert_eq!(max_in(groups.clone(), ms.clone(), 1, 69_999).await, None);
        assert_eq!(max_in(groups.clone(), ms.clone(), 280_000, 20_001).await, None);
        // Another declared type (a conversion to get right): not told.
        let us = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(max_in(groups.clone(), us, 0, 70_000).await, None);
        // Without statistics: not told.
        let schema = Arc::new(Schema::new(vec![Field::new("ts", ms.clone(), true)]));
        let write = |times: Vec<Option<i64>>, stats: EnabledStatistics| {
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(TimestampMillisecondArray::from(times))],
            )
            .unwrap();
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(2))
                .set_statistics_enabled(stats)
                .build();
            let mut out = Vec::new();
            let mut w = ArrowWriter::try_new(&mut out, Arc::clone(&schema), Some(props)).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            out
        };
        let times = vec![Some(5), Some(9), None, None, Some(7), None];
        assert_eq!(
            max_in(write(times.clone(), EnabledStatistics::None), ms.clone(), 0, 6).await,
            None
        );
        // A group of NULLs alone has no greatest time; with others, theirs.
        let with = write(times, EnabledStatistics::Chunk);
        assert_eq!(max_in(with.clone(), ms.clone(), 2, 2).await, Some(None));
        assert_eq!(max_in(with.clone(), ms.clone(), 2, 4).await, Some(Some(7)));
        assert_eq!(max_in(with, ms.clone(), 0, 6).await, Some(Some(9)));
        // A time past the event range would take reading the rows.
        let far = write(
            vec![Some(1), Some(crate::exec::window_assign::MAX_EVENT_MS + 1)],
            EnabledStatistics::Chunk,
        );
        assert_eq!(max_in(far, ms, 0, 2).await, None);
    }
}
