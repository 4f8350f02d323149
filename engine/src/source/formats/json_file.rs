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
    if let Some(lost) = conform::bad_value(e) {
        return lost;
    }
    let text = e.to_string();
    let text = text.strip_prefix("Json error: ").unwrap_or(&text);
    // "whilst decoding field 'm': whilst decoding field 'x': ...": the
    // column, then the fields within it.
    let mut path = Vec::new();
    let mut rest = text;
    while let Some(inner) = rest.strip_prefix("whilst decoding field '")
        && let Some((name, why)) = inner.split_once("': ")
    {
        path.push(name);
        rest = why;
    }
    match path.split_first() {
        Some((column, fields)) => {
            let fields: String = fields.iter().map(|f| format!("field '{f}': ")).collect();
            format!("column '{column}': {fields}{}", expected_found(rest))
        }
        None => format!("not a JSON object: {}", expected_found(text)),
    }
}

/// Arrow's "expected primitive got {"a": 1"b": 2}" said in words: its
/// rendering of the value it found drops the commas (a record that is not
/// in the file); the record itself is kept beside the reason.
fn expected_found(why: &str) -> String {
    let Some((expected, found)) = why.strip_prefix("expected ").and_then(|r| r.split_once(" got ")) else {
        return why.to_string();
    };
    let kind = |t: &str| -> Option<&'static str> {
        Some(match t.trim_start().chars().next()? {
            '{' => "an object",
            '[' => "an array",
            '"' => "a string",
            't' | 'f' => "a boolean",
            'n' => "null",
            c if c == '-' || c.is_ascii_digit() => "a number",
            _ => return None,
        })
    };
    let expected = match expected {
        "primitive" => Some("a single value (a number, string or boolean)"),
        "string" => Some("a string"),
        e => kind(e),
    };
    match (expected, kind(found)) {
        (Some(e), Some(f)) => format!("expected {e}, found {f}"),
        _ => why.to_string(),
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
    // Skip `start` records (non-blank lines), counting lines. A UTF-8 byte
    // order mark (Windows tools write one) is not part of the first record.
    let mut offset = if data.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
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
    let wide = conform::CheckedColumns::of(&schema);
    let decode = |text: &[u8], rows: usize| -> std::result::Result<Vec<RecordBatch>, ArrowError> {
        let read = wide.as_ref().map_or(&schema, |w| w.read_schema());
        let batches = json::ReaderBuilder::new(Arc::clone(read))
            .with_batch_size(rows.clamp(1, 8192))
            .build(Cursor::new(text))?;
        match &wide {
            Some(w) => batches.map(|b| w.narrow(b?)).collect(),
            None => batches.collect(),
        }
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
    let wide = conform::CheckedColumns::of(&schema);
    let positions: Vec<usize> = columns.needed.to_vec();
    let all: Vec<usize> = (0..columns.declared.fields().len()).collect();
    let required = required_columns(columns.declared, &all);
    let Ok(mut decoder) =
        json::ReaderBuilder::new(Arc::clone(wide.as_ref().map_or(&schema, |w| w.read_schema())))
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
    for v in values {
        if feed(v, &mut decoded).is_err() || feed(b"\n", &mut decoded).is_err() {
            return Ok(None);
        }
    }
    match decoder.flush() {
        Ok(Some(b)) => decoded.push(b),
        Ok(None) => {}
        Err(_) => return Ok(None),
    }
    if let Some(w) = &wide {
        // A value with more places than its column keeps: the slow path
        // names its record.
        let Ok(narrowed) = decoded
            .into_iter()
            .map(|b| w.narrow(b))
            .collect::<std::result::Result<Vec<_>, _>>()
        else {
            return Ok(None);
        };
        decoded = narrowed;
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

#[cfg(test)]
mod tests {
    use super::expected_found;

    /// Arrow's rendering of the value found drops its commas; the reason
    /// says what kind of value it was instead.
    #[test]
    fn expected_and_found_are_said_in_words() {
        assert_eq!(
            expected_found(r#"expected primitive got {"a": 1"b": [1, 2]}"#),
            "expected a single value (a number, string or boolean), found an object"
        );
        assert_eq!(
            expected_found(r#"expected { got [{"id": 2"name": "arr"}]"#),
            "expected an object, found an array"
        );
        assert_eq!(
            expected_found("failed to parse \"abc\" as Int64"),
            "failed to parse \"abc\" as Int64"
        );
        let e = datafusion::arrow::error::ArrowError::JsonError(
            r#"whilst decoding field 'm': whilst decoding field 'x': expected string got {"a": 1"b": 2}"#
                .into(),
        );
        assert_eq!(
            super::json_reason(&e),
            "column 'm': field 'x': expected a string, found an object"
        );
    }
}
