//! Reading a row range of a CSV file with a header line.

use super::*;

/// The line number (from 1) of the byte at `pos`, counting from `from`
/// (at line `line`).
pub(super) fn advance_lines(data: &[u8], from: usize, pos: usize, line: u64) -> u64 {
    line + data[from..pos].iter().filter(|&&b| b == b'\n').count() as u64
}

/// Whether CSV text that starts at a record ends inside a quoted field (an
/// opening `"` never closed). The CSV readers take such a last field to the
/// end of the file, so every record after the open quote was swallowed into
/// it as a good row. Quoting as the readers do it: a `"` opens a quoted
/// field only at a field's start, `""` inside one is a quote, and a `"`
/// elsewhere in an unquoted field is a character.
pub(super) fn ends_inside_quotes(text: &[u8], delimiter: u8) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum At {
        FieldStart,
        Unquoted,
        Quoted,
        /// A `"` inside a quoted field: its end, or the first of `""`.
        QuoteInQuoted,
    }
    if !text.contains(&b'"') {
        return false;
    }
    let mut at = At::FieldStart;
    for &b in text {
        let ends_field = b == delimiter || b == b'\n' || b == b'\r';
        at = match at {
            At::FieldStart if b == b'"' => At::Quoted,
            At::FieldStart | At::Unquoted if ends_field => At::FieldStart,
            At::FieldStart | At::Unquoted => At::Unquoted,
            At::Quoted if b == b'"' => At::QuoteInQuoted,
            At::Quoted => At::Quoted,
            At::QuoteInQuoted if b == b'"' => At::Quoted,
            At::QuoteInQuoted if ends_field => At::FieldStart,
            At::QuoteInQuoted => At::Unquoted,
        };
    }
    at == At::Quoted
}

/// What a record swallowed by an open quote is told.
const OPEN_QUOTE: &str = "a quoted field is never closed: the file ends inside it, so every line after its \
                          opening '\"' was read into it (a missing '\"', or a file still being written)";

/// One CSV record of the slow path: where its text is and the line it
/// starts on.
pub(super) struct CsvRecord {
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
pub(super) struct CsvRead<'a> {
    file: &'a FileRef<'a>,
    data: &'a [u8],
    delimiter: u8,
    /// Every header column, typed as declared where the job reads it.
    schema: SchemaRef,
    /// The header columns the job reads, ascending.
    roots: Vec<usize>,
    /// For each root, the declared name (for messages).
    root_names: Vec<String>,
    /// DECIMAL columns, read wider than declared to see the places a
    /// value had ([`conform::CheckedColumns`]).
    wide: Option<conform::CheckedColumns>,
}

impl CsvRead<'_> {
    /// A reader of the schema to read with (DECIMAL columns wider).
    fn reader_builder(&self, projection: Vec<usize>, batch: usize) -> csv::ReaderBuilder {
        let schema = self.wide.as_ref().map_or(&self.schema, |w| w.read_schema());
        csv::ReaderBuilder::new(Arc::clone(schema))
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_projection(projection)
            .with_batch_size(batch.max(1))
    }

    /// A batch read by [`Self::reader_builder`] with its columns as
    /// declared: a value with more decimal places than its column keeps is
    /// an error ([`conform::bad_value`]).
    fn narrow(&self, batch: RecordBatch) -> std::result::Result<RecordBatch, ArrowError> {
        match &self.wide {
            Some(w) => w.narrow(batch),
            None => Ok(batch),
        }
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
        let batch = decoder
            .flush()?
            .ok_or_else(|| ArrowError::CsvError("no record".into()))?;
        self.narrow(batch)
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
                "expected {expected} fields (one per column of the table), found {}",
                fields.len()
            ));
        }
        if std::str::from_utf8(text).is_err() {
            return Err("the record is not valid UTF-8".into());
        }
        let whole = match self.decode(text, self.roots.clone(), 1) {
            Ok(b) if b.num_rows() == 1 => return Ok(b),
            Ok(b) => format!("read as {} rows", b.num_rows()),
            Err(e) => match conform::bad_value(&e) {
                Some(reason) => return Err(reason),
                None => e.to_string(),
            },
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

pub(super) fn read_csv(
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
                maxima: Vec::new(),
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
    let wide = conform::CheckedColumns::of(&schema);
    let read = CsvRead {
        file,
        data,
        delimiter,
        schema,
        roots,
        root_names,
        wide,
    };

    // Fast path. One record past the limit tells whether the file goes on.
    let fast = || -> std::result::Result<Option<Vec<RecordBatch>>, ArrowError> {
        let reader = read
            .reader_builder(read.roots.clone(), 8192)
            .with_bounds(0, max_rows.saturating_add(1))
            .build(Cursor::new(&data[body..]))?;
        let mut batches = Vec::new();
        for b in reader {
            let b = read.narrow(b?)?;
            if !missing_values(&b, &required).is_empty() {
                return Ok(None);
            }
            batches.push(b);
        }
        Ok(Some(batches))
    };
    // The part that reaches the end of the file: does it end in an open
    // quote? (Only then: each part scans its own text once.)
    let open_quote = |rows: usize| rows <= max_rows && ends_inside_quotes(&data[body..], delimiter);
    if let Ok(Some(batches)) = fast()
        && !open_quote(batches.iter().map(RecordBatch::num_rows).sum())
    {
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
    let read_records = records.len();
    let swallowed = if eof && open_quote(records.len()) {
        records.pop()
    } else {
        None
    };
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
    if let Some(r) = swallowed {
        bad.add(vec![to_bad(&r, OPEN_QUOTE.into())])?;
    }
    let batches = rows
        .iter()
        .map(|b| to_declared(file, b, &positions, &output))
        .collect::<Result<Vec<_>>>()?;
    Ok(FileRows {
        batches,
        records: read_records,
        eof,
        bad: Vec::new(),
        maxima: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::ends_inside_quotes;

    #[test]
    fn an_open_quote_is_found_as_the_readers_quote() {
        let open = |t: &str| ends_inside_quotes(t.as_bytes(), b',');
        assert!(!open("1,ok\n"));
        assert!(!open("1,\"a, \"\"b\"\"\"\n2,x"));
        assert!(
            !open("1,12\" pipe\n"),
            "a quote inside an unquoted field is a character"
        );
        assert!(!open("1,\"x\"y\n"), "after the closing quote, characters");
        assert!(open("1,\"oops\n2,x\n"));
        assert!(open("1,\"a \"\"b\n"), "an escaped quote does not close it");
        assert!(open("\""));
        assert!(!ends_inside_quotes(b"1\t\"a\tb\"\n", b'\t'));
    }
}
