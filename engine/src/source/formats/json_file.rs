//! Reading a row range of a newline-delimited JSON file.

use super::*;

/// One JSON line of the slow path.
pub(super) struct JsonLine {
    line: u64,
    row: u64,
    start: usize,
    end: usize,
}

/// The end of the line starting at `offset` (after its `\n`).
pub(super) fn line_end(data: &[u8], offset: usize) -> usize {
    data[offset..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |p| offset + p + 1)
}

pub(super) fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

/// Arrow's JSON error, as a bad record's reason.
pub(super) fn json_reason(e: &ArrowError) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("Json error: ").unwrap_or(&text);
    if let Some(rest) = text.strip_prefix("whilst decoding field '")
        && let Some((name, why)) = rest.split_once("': ")
    {
        return format!("column '{name}': {why}");
    }
    format!("not a JSON object: {text}")
}

/// Arrow's JSON reader cuts a number with a fraction written for an
/// integer column (`{"v": 3.7}` into `v BIGINT` gives 3). Such a value is
/// a bad record here, as the same text is in a CSV file. This finds the
/// cases cheaply: the names of the integer columns, checked against the
/// text only when one of them is written with a fraction or an exponent.
pub(super) struct IntegerCheck {
    /// The declared integer columns' names.
    names: Vec<String>,
    /// The schema with those columns as Float64, to read them unrounded.
    as_floats: SchemaRef,
}

impl IntegerCheck {
    /// `None` when the table declares no integer column.
    pub(super) fn of(schema: &SchemaRef) -> Option<Self> {
        let names: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| f.data_type().is_integer())
            .map(|f| f.name().clone())
            .collect();
        if names.is_empty() {
            return None;
        }
        let as_floats = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| {
                    if f.data_type().is_integer() {
                        f.as_ref().clone().with_data_type(DataType::Float64)
                    } else {
                        f.as_ref().clone()
                    }
                })
                .collect::<Vec<_>>(),
        ));
        Some(Self { names, as_floats })
    }

    /// Whether `text` gives one of the integer columns a number with a
    /// fraction or an exponent (`"v": 3.7`, `"v": 1e3`): a scan of keys and
    /// number tokens, outside strings. It may answer yes for a nested key
    /// of the same name (the rows are then compared, and pass).
    pub(super) fn suspects(&self, text: &[u8]) -> bool {
        let (mut i, mut key, mut last_string) = (0, None::<(usize, usize)>, None::<(usize, usize)>);
        while i < text.len() {
            match text[i] {
                b'"' => {
                    let start = i + 1;
                    i += 1;
                    while i < text.len() && text[i] != b'"' {
                        i += if text[i] == b'\\' { 2 } else { 1 };
                    }
                    last_string = Some((start, i.min(text.len())));
                    i += 1;
                }
                b':' => {
                    key = last_string.take();
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < text.len() && matches!(text[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                    {
                        i += 1;
                    }
                    if text[start..i].iter().any(|b| matches!(b, b'.' | b'e' | b'E'))
                        && let Some((a, b)) = key
                        && self.names.iter().any(|n| n.as_bytes() == &text[a..b])
                    {
                        return true;
                    }
                }
                b',' | b'{' | b'}' | b'[' | b']' => {
                    key = None;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        false
    }

    /// Checks `rows` (decoded from `text`): the first row and column whose
    /// number had a fraction, as a bad record's reason.
    pub(super) fn check(&self, text: &[u8], rows: &RecordBatch) -> std::result::Result<(), ArrowError> {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::Float64Type;
        if !self.suspects(text) {
            return Ok(());
        }
        let floats = json::ReaderBuilder::new(Arc::clone(&self.as_floats))
            .with_batch_size(rows.num_rows().clamp(1, 8192))
            .build(Cursor::new(text))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let floats = concat_batches(&self.as_floats, &floats)?;
        if floats.num_rows() != rows.num_rows() {
            return Ok(()); // not the same rows: the caller's own checks decide
        }
        for r in 0..rows.num_rows() {
            for name in &self.names {
                let (Ok(i), Ok(j)) = (rows.schema().index_of(name), floats.schema().index_of(name)) else {
                    continue;
                };
                let (int, float) = (rows.column(i), floats.column(j).as_primitive::<Float64Type>());
                if int.is_null(r) || float.is_null(r) {
                    continue;
                }
                let exact = datafusion::arrow::compute::cast(&int.slice(r, 1), &DataType::Float64)?;
                if exact.as_primitive::<Float64Type>().value(0) != float.value(r) {
                    return Err(ArrowError::JsonError(format!(
                        "whilst decoding field '{name}': {} is not an integer (the column is declared {})",
                        float.value(r),
                        int.data_type()
                    )));
                }
            }
        }
        Ok(())
    }
}

pub(super) fn read_json(
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
    let integers = IntegerCheck::of(&schema);
    let decode = |text: &[u8], rows: usize| -> std::result::Result<Vec<RecordBatch>, ArrowError> {
        let batches: Vec<RecordBatch> = json::ReaderBuilder::new(Arc::clone(&schema))
            .with_batch_size(rows.clamp(1, 8192))
            .build(Cursor::new(text))?
            .collect::<std::result::Result<_, _>>()?;
        if let Some(check) = &integers
            && check.suspects(text)
        {
            check.check(text, &concat_batches(&schema, &batches)?)?;
        }
        Ok(batches)
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
            maxima: Vec::new(),
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
        maxima: Vec::new(),
    })
}

/// The fast path of [`read_json`] over values held apart (a Kafka topic's
/// records), each one JSON object, decoded without copying them into one
/// text: the rows, or `None` when a value is not one good row (the caller
/// then reads them through [`super::read_text`], which finds the bad ones).
pub(super) fn json_values_fast<'a>(
    file: &FileRef<'_>,
    values: impl Iterator<Item = &'a [u8]>,
    count: usize,
    columns: &Columns<'_>,
) -> Result<Option<Vec<RecordBatch>>> {
    let output = columns.output_schema()?;
    let schema = nullable(columns.declared);
    let positions: Vec<usize> = columns.needed.to_vec();
    let all: Vec<usize> = (0..columns.declared.fields().len()).collect();
    let required = required_columns(columns.declared, &all);
    let Ok(mut decoder) = json::ReaderBuilder::new(Arc::clone(&schema))
        .with_batch_size(count.clamp(1, 8192))
        .build_decoder()
    else {
        return Ok(None);
    };
    let mut decoded = Vec::new();
    // Feeds bytes whole, flushing whenever the decoder has a batch full.
    let mut feed =
        |mut bytes: &[u8], decoded: &mut Vec<RecordBatch>| -> std::result::Result<(), ArrowError> {
            while !bytes.is_empty() {
                let n = decoder.decode(bytes)?;
                bytes = &bytes[n..];
                if !bytes.is_empty()
                    && let Some(b) = decoder.flush()?
                {
                    decoded.push(b);
                }
            }
            Ok(())
        };
    let integers = IntegerCheck::of(&schema);
    for v in values {
        // A fraction for an integer column: the slow path finds the record.
        if integers.as_ref().is_some_and(|c| c.suspects(v)) {
            return Ok(None);
        }
        if feed(v, &mut decoded).is_err() || feed(b"\n", &mut decoded).is_err() {
            return Ok(None);
        }
    }
    match decoder.flush() {
        Ok(Some(b)) => decoded.push(b),
        Ok(None) => {}
        Err(_) => return Ok(None),
    }
    if decoded.iter().map(RecordBatch::num_rows).sum::<usize>() != count
        || decoded.iter().any(|b| !missing_values(b, &required).is_empty())
    {
        return Ok(None);
    }
    decoded
        .iter()
        .map(|b| to_declared(file, b, &positions, &output))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
