//! How results look: a table (as psql, DuckDB and datafusion-cli print
//! them), CSV, or JSON lines; and the live table of a streaming `SELECT`,
//! which grows a row at a time and so cannot size its columns from the whole
//! result.
//!
//! A changelog's operation column `op` (`+I`, `-U`, `+U`, `-D`) is shown
//! first, as Flink's SQL client shows it. Long table results are cut to the
//! shell's `\maxrows`, with a note of the total; CSV and JSON are never cut,
//! since they are for other programs.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::{Result, bail};
use comfy_table::{Cell, CellAlignment, Table};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use unicode_width::UnicodeWidthStr;

/// How results are printed (`\format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An aligned table with borders.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row and line (JSON Lines).
    Json,
}

impl Format {
    /// The format with this name.
    pub fn parse(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "table" | "aligned" => Some(Format::Table),
            "csv" => Some(Format::Csv),
            "json" | "jsonl" | "ndjson" => Some(Format::Json),
            _ => None,
        }
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// The name of a changelog's operation column.
pub const OP_COLUMN: &str = "op";

/// arrow's table borders, as datafusion-cli prints them.
const TABLE_PRESET: &str = "||--+-++|    ++++++";

fn format_options() -> FormatOptions<'static> {
    FormatOptions::default()
        .with_null("NULL")
        .with_display_error(true)
}

/// The column order that shows an `op` column first; `None` when there is
/// none (or it is first already). For a live changelog only: a query's
/// result keeps the order its SELECT gave.
fn op_first(schema: &Schema) -> Option<Vec<usize>> {
    let op = schema.index_of(OP_COLUMN).ok().filter(|&i| i > 0)?;
    Some(
        std::iter::once(op)
            .chain((0..schema.fields().len()).filter(|&i| i != op))
            .collect(),
    )
}

/// A batch with its `op` column first.
fn reorder(batch: &RecordBatch) -> Result<RecordBatch> {
    Ok(match op_first(batch.schema_ref()) {
        Some(order) => batch.project(&order)?,
        None => batch.clone(),
    })
}

fn reorder_schema(schema: &SchemaRef) -> Result<SchemaRef> {
    Ok(match op_first(schema) {
        Some(order) => std::sync::Arc::new(schema.project(&order)?),
        None => schema.clone(),
    })
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}

/// Groups digits by thousands: 1234567 → `1,234,567`.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate for people: `4.10M`, `12.3k`, `17`.
pub fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn rows_note(n: usize) -> String {
    match n {
        1 => "(1 row)".into(),
        n => format!("({} rows)", group_digits(n as u64)),
    }
}

/// A cell's text on one line: a newline or carriage return in a value is
/// shown as `\n` or `\r` (as DuckDB's tables show them), since a table
/// would print it as a line break that reads as another row. CSV and JSON
/// keep the value as it is.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\n', '\r']) {
        text.replace('\n', "\\n").replace('\r', "\\r").into()
    } else {
        text.into()
    }
}

/// A whole result as a table: at most `limit` rows (of `total`), then a
/// note of how many rows there are.
pub fn table(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    total: usize,
    limit: Option<usize>,
) -> Result<String> {
    let mut t = Table::new();
    t.load_preset(TABLE_PRESET);
    // Names read left to right, over numbers too.
    t.set_header(
        schema
            .fields()
            .iter()
            .map(|f| Cell::new(f.name()).set_alignment(CellAlignment::Left)),
    );
    let shown = limit.map_or(total, |l| l.min(total));
    let opts = format_options();
    let mut left = shown;
    for batch in batches {
        if left == 0 {
            break;
        }
        let fmts = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows().min(left) {
            t.add_row(
                fmts.iter()
                    .map(|f| Cell::new(one_line(&f.value(row).to_string()))),
            );
        }
        left = left.saturating_sub(batch.num_rows());
    }
    for (i, f) in schema.fields().iter().enumerate() {
        if is_numeric(f.data_type())
            && let Some(col) = t.column_mut(i)
        {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = t.to_string();
    out.push('\n');
    if shown < total {
        let _ = writeln!(
            out,
            "({} of {} rows shown; \\maxrows 0 shows all, \\format csv prints them for other programs)",
            group_digits(shown as u64),
            group_digits(total as u64)
        );
    } else {
        out.push_str(&rows_note(total));
        out.push('\n');
    }
    Ok(out)
}

/// CSV's header line.
pub fn csv_header(schema: &SchemaRef) -> Result<String> {
    let names: Vec<String> = schema.fields().iter().map(|f| csv_field(f.name())).collect();
    Ok(format!("{}\n", names.join(",")))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Rows as CSV lines (no header). A nested value (list, struct, map),
/// which CSV has no form for, is written as the table shows it
/// (`[1, 2]`, `{a: 1}`), quoted as CSV needs.
pub fn csv_rows(out: &mut dyn Write, batch: &RecordBatch) -> Result<()> {
    let mut w = datafusion::arrow::csv::WriterBuilder::new()
        .with_header(false)
        .build(out);
    w.write(&nested_as_text(batch)?)?;
    Ok(())
}

/// `batch` with its nested columns as text (see [`csv_rows`]).
fn nested_as_text(batch: &RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Array, ArrayRef, StringArray};
    use datafusion::arrow::datatypes::Field;
    use std::sync::Arc;
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let options = FormatOptions::default();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.capacity());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if f.data_type().is_nested() {
            let shown = ArrayFormatter::try_new(c.as_ref(), &options)?;
            let text: StringArray = (0..c.len())
                .map(|i| c.is_valid(i).then(|| shown.value(i).to_string()))
                .collect();
            fields.push(Field::new(f.name(), DataType::Utf8, true));
            columns.push(Arc::new(text));
        } else {
            fields.push(f.as_ref().clone());
            columns.push(Arc::clone(c));
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// Rows as JSON lines, nulls written out, and NaN and the infinities as
/// the strings `"NaN"`, `"Infinity"` and `"-Infinity"` (as PostgreSQL's
/// `to_json` writes them, and as Weir's JSON source reads them back):
/// Arrow's writer made them `null`, a value no reader could tell from SQL's
/// NULL.
pub fn json_rows(out: &mut dyn Write, batch: &RecordBatch) -> Result<()> {
    let mut w = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_encoder_factory(std::sync::Arc::new(FloatWords))
        .build::<_, datafusion::arrow::json::writer::LineDelimited>(out);
    w.write(batch)?;
    w.finish()?;
    Ok(())
}

/// JSON encoders of float columns, at any depth, that write the values
/// JSON has no number for as words ([`json_rows`]).
#[derive(Debug)]
struct FloatWords;

impl datafusion::arrow::json::writer::EncoderFactory for FloatWords {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a datafusion::arrow::datatypes::FieldRef,
        array: &'a dyn datafusion::arrow::array::Array,
        _options: &'a datafusion::arrow::json::writer::EncoderOptions,
    ) -> std::result::Result<
        Option<datafusion::arrow::json::writer::NullableEncoder<'a>>,
        datafusion::arrow::error::ArrowError,
    > {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{Float16Type, Float32Type, Float64Type};
        use datafusion::arrow::json::writer::NullableEncoder;
        let values: Vec<f64> = match array.data_type() {
            DataType::Float64 => {
                return Ok(Some(NullableEncoder::new(
                    Box::new(FloatEncoder(array.as_primitive::<Float64Type>().values().clone())),
                    array.logical_nulls(),
                )));
            }
            DataType::Float32 => array
                .as_primitive::<Float32Type>()
                .values()
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
            DataType::Float16 => array
                .as_primitive::<Float16Type>()
                .values()
                .iter()
                .map(|v| v.to_f64())
                .collect(),
            _ => return Ok(None),
        };
        // Narrower floats print as Arrow prints them, from f32 (1.1f32 is
        // 1.1, not 1.100000023841858).
        Ok(Some(NullableEncoder::new(
            Box::new(Float32Encoder(values.into_iter().map(|v| v as f32).collect())),
            array.logical_nulls(),
        )))
    }
}

/// A `DOUBLE` column's values as JSON.
struct FloatEncoder(datafusion::arrow::buffer::ScalarBuffer<f64>);

impl datafusion::arrow::json::writer::Encoder for FloatEncoder {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let v = self.0[idx];
        match float_word(v) {
            Some(word) => out.extend_from_slice(word),
            None => out.extend_from_slice(lexical_core::write(v, &mut [0u8; 64])),
        }
    }
}

/// A `FLOAT` (or half) column's values as JSON.
struct Float32Encoder(Vec<f32>);

impl datafusion::arrow::json::writer::Encoder for Float32Encoder {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let v = self.0[idx];
        match float_word(f64::from(v)) {
            Some(word) => out.extend_from_slice(word),
            None => out.extend_from_slice(lexical_core::write(v, &mut [0u8; 64])),
        }
    }
}

/// The JSON of a float JSON has no number for.
fn float_word(v: f64) -> Option<&'static [u8]> {
    if v.is_nan() {
        Some(b"\"NaN\"")
    } else if v.is_infinite() {
        Some(if v < 0.0 {
            b"\"-Infinity\""
        } else {
            b"\"Infinity\""
        })
    } else {
        None
    }
}

/// The widest string a column shows in a live table before it is cut with
/// `...` (Flink's client cuts at 30 too).
const LIVE_MAX_WIDTH: usize = 30;

/// A column's width in a live table, from its type: wide enough for any
/// value of fixed-width types (timestamps, dates, small integers), a
/// reasonable width for the rest. Numbers wider than that are printed whole
/// and push the row's border out, rather than be cut.
fn type_width(t: &DataType) -> usize {
    match t {
        DataType::Boolean => 5,
        DataType::Int8 => 4,
        DataType::UInt8 => 3,
        DataType::Int16 => 6,
        DataType::UInt16 => 5,
        DataType::Int32 | DataType::UInt32 | DataType::Int64 | DataType::UInt64 => 11,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => 12,
        DataType::Decimal128(p, _) | DataType::Decimal256(p, _) => *p as usize + 2,
        DataType::Date32 | DataType::Date64 => 10,
        DataType::Timestamp(unit, tz) => {
            let base = match unit {
                TimeUnit::Second => 19,
                TimeUnit::Millisecond => 23,
                TimeUnit::Microsecond => 26,
                TimeUnit::Nanosecond => 29,
            };
            base + if tz.is_some() { 6 } else { 0 }
        }
        _ => 20,
    }
}

/// The table of a live query: the header first, then rows as they arrive,
/// with column widths fixed from the column types.
pub struct LiveTable {
    schema: SchemaRef,
    format: Format,
    widths: Vec<usize>,
    right: Vec<bool>,
    rows: u64,
}

impl LiveTable {
    /// A live table for rows of `schema`, printed as `format`.
    pub fn new(schema: &SchemaRef, format: Format) -> Result<Self> {
        let schema = reorder_schema(schema)?;
        let widths = schema
            .fields()
            .iter()
            .map(|f| {
                // `+I`, `-U`, `+U`, `-D`
                let values = if f.name() == OP_COLUMN {
                    2
                } else {
                    type_width(f.data_type())
                };
                f.name().width().max(values.min(LIVE_MAX_WIDTH))
            })
            .collect();
        let right = schema
            .fields()
            .iter()
            .map(|f| is_numeric(f.data_type()))
            .collect();
        Ok(Self {
            schema,
            format,
            widths,
            right,
            rows: 0,
        })
    }

    /// Rows printed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn border(&self) -> String {
        let mut s = String::from("+");
        for w in &self.widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s.push('\n');
        s
    }

    /// A row of cells, numbers right-aligned unless `left` (the header).
    fn line(&self, cells: &[String], left: bool) -> String {
        let mut s = String::from("|");
        for ((cell, &w), &right) in cells.iter().zip(&self.widths).zip(&self.right) {
            let right = right && !left;
            let cell = if right { cell.clone() } else { cut(cell, w) };
            let pad = w.saturating_sub(cell.width());
            if right {
                let _ = write!(s, " {}{cell} |", " ".repeat(pad));
            } else {
                let _ = write!(s, " {cell}{} |", " ".repeat(pad));
            }
        }
        s.push('\n');
        s
    }

    /// What to print before any row.
    pub fn header(&self) -> Result<String> {
        Ok(match self.format {
            Format::Table => {
                let names: Vec<String> = self.schema.fields().iter().map(|f| f.name().clone()).collect();
                format!("{}{}{}", self.border(), self.line(&names, true), self.border())
            }
            Format::Csv => csv_header(&self.schema)?,
            Format::Json => String::new(),
        })
    }

    /// A batch of rows, as lines to print.
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<String> {
        let batch = reorder(batch)?;
        if batch.num_columns() != self.widths.len() {
            bail!(
                "a live batch has {} columns, the query {}",
                batch.num_columns(),
                self.widths.len()
            );
        }
        self.rows += batch.num_rows() as u64;
        let mut buf = Vec::new();
        match self.format {
            Format::Table => {
                let opts = format_options();
                let fmts = batch
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut s = String::new();
                for row in 0..batch.num_rows() {
                    let cells: Vec<String> = fmts.iter().map(|f| f.value(row).to_string()).collect();
                    s.push_str(&self.line(&cells, false));
                }
                return Ok(s);
            }
            Format::Csv => csv_rows(&mut buf, &batch)?,
            Format::Json => json_rows(&mut buf, &batch)?,
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// What to print after the last row.
    pub fn footer(&self) -> String {
        match self.format {
            Format::Table => self.border(),
            Format::Csv | Format::Json => String::new(),
        }
    }
}

/// `s` cut to `width` columns, ending in `...` when cut.
fn cut(s: &str, width: usize) -> String {
    let s = s.replace(['\n', '\r'], " ");
    if s.width() <= width {
        return s;
    }
    let mut out = String::new();
    for c in s.chars() {
        if out.width() + c.to_string().width() + 3 > width {
            break;
        }
        out.push(c);
    }
    out.push_str("...");
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::Field;

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![
                    1_767_225_600_000,
                    1_767_225_610_000,
                    1_767_225_620_000,
                ])),
                Arc::new(StringArray::from(vec![Some("a, \"b\""), None, Some("c")])),
                Arc::new(Int64Array::from(vec![5, 1234, 7])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_table_has_a_header_right_aligned_numbers_and_a_row_count() {
        let b = batch();
        let t = table(b.schema_ref(), std::slice::from_ref(&b), 3, None).unwrap();
        let expected = "\
+---------------------+--------+------+
| ts                  | name   | n    |
+---------------------+--------+------+
| 2026-01-01T00:00:00 | a, \"b\" |    5 |
| 2026-01-01T00:00:10 | NULL   | 1234 |
| 2026-01-01T00:00:20 | c      |    7 |
+---------------------+--------+------+
(3 rows)
";
        assert_eq!(t, expected);
    }

    #[test]
    fn a_long_table_is_cut_with_a_note_of_the_total() {
        let b = batch();
        let t = table(b.schema_ref(), &[b.clone(), b.clone()], 6, Some(4)).unwrap();
        assert_eq!(t.lines().filter(|l| l.starts_with("| 2026")).count(), 4, "{t}");
        assert!(
            t.ends_with(
                "(4 of 6 rows shown; \\maxrows 0 shows all, \\format csv prints them for other programs)\n"
            ),
            "{t}"
        );
        let empty = table(b.schema_ref(), &[], 0, Some(4)).unwrap();
        assert!(
            empty.contains("| ts ") && empty.ends_with("(0 rows)\n"),
            "{empty}"
        );
    }

    #[test]
    fn a_line_break_in_a_value_stays_in_its_row() {
        assert_eq!(one_line("a\nb\r"), "a\\nb\\r");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn csv_writes_nested_values_as_the_table_shows_them() {
        use datafusion::arrow::array::{ArrayRef, ListArray};
        use datafusion::arrow::datatypes::Int64Type;
        let list =
            ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1), Some(2)]), None]);
        let b = RecordBatch::try_from_iter([
            ("l", Arc::new(list) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
        ])
        .unwrap();
        let mut out = Vec::new();
        csv_rows(&mut out, &b).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "\"[1, 2]\",1\n,2\n");
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_json_writes_nulls() {
        let b = batch();
        let mut out = csv_header(b.schema_ref()).unwrap().into_bytes();
        csv_rows(&mut out, &b).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ts,name,n\n2026-01-01T00:00:00,\"a, \"\"b\"\"\",5\n2026-01-01T00:00:10,,1234\n2026-01-01T00:00:20,c,7\n"
        );
        let mut out = Vec::new();
        json_rows(&mut out, &b.slice(1, 1)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"ts\":\"2026-01-01T00:00:10\",\"name\":null,\"n\":1234}\n"
        );
    }

    /// NaN and the infinities are words in JSON, not `null` (SQL's NULL
    /// stays `null`), in nested lists too; other floats print as Arrow
    /// prints them.
    #[test]
    fn json_writes_nan_and_infinities_as_words() {
        use datafusion::arrow::array::{ArrayRef, Float32Array, Float64Array, ListArray};
        use datafusion::arrow::datatypes::Float64Type;
        let d = Float64Array::from(vec![
            Some(1.5),
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            None,
        ]);
        let f = Float32Array::from(vec![
            Some(1.1),
            Some(f32::NAN),
            Some(f32::NEG_INFINITY),
            Some(-0.0),
            None,
        ]);
        let l = ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(vec![Some(f64::NAN), Some(2.0)]),
            None,
            Some(vec![]),
            Some(vec![Some(f64::INFINITY)]),
            Some(vec![None]),
        ]);
        let b = RecordBatch::try_from_iter(vec![
            ("d", std::sync::Arc::new(d) as ArrayRef),
            ("f", std::sync::Arc::new(f) as ArrayRef),
            ("l", std::sync::Arc::new(l) as ArrayRef),
        ])
        .unwrap();
        let mut out = Vec::new();
        json_rows(&mut out, &b).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"d\":1.5,\"f\":1.1,\"l\":[\"NaN\",2.0]}\n\
             {\"d\":\"NaN\",\"f\":\"NaN\",\"l\":null}\n\
             {\"d\":\"Infinity\",\"f\":\"-Infinity\",\"l\":[]}\n\
             {\"d\":\"-Infinity\",\"f\":-0.0,\"l\":[\"Infinity\"]}\n\
             {\"d\":null,\"f\":null,\"l\":[null]}\n"
        );
    }

    #[test]
    fn a_live_table_keeps_its_columns_aligned_as_rows_arrive() {
        let b = batch();
        let mut live = LiveTable::new(b.schema_ref(), Format::Table).unwrap();
        let mut text = live.header().unwrap();
        text.push_str(&live.batch(&b.slice(0, 1)).unwrap());
        text.push_str(&live.batch(&b.slice(1, 2)).unwrap());
        text.push_str(&live.footer());
        let widths: Vec<usize> = text.lines().map(|l| l.width()).collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "{text}");
        assert!(
            text.contains("| 2026-01-01T00:00:10     | NULL                 |        1234 |"),
            "{text}"
        );
        assert_eq!(live.rows(), 3);
    }

    #[test]
    fn a_live_changelog_shows_its_op_column_first_and_a_query_its_own_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("word", DataType::Utf8, false),
            Field::new("cnt", DataType::Int64, false),
            Field::new("op", DataType::Utf8, false),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["hello", "hello", "hello"])),
                Arc::new(Int64Array::from(vec![1, 1, 2])),
                Arc::new(StringArray::from(vec!["+I", "-U", "+U"])),
            ],
        )
        .unwrap();
        let mut live = LiveTable::new(b.schema_ref(), Format::Table).unwrap();
        let header = live.header().unwrap();
        assert!(header.contains("| op | word "), "{header}");
        let rows = live.batch(&b).unwrap();
        assert_eq!(
            rows.lines().nth(1).unwrap(),
            "| -U | hello                |           1 |"
        );
        // A query's result (`SELECT word, cnt, op FROM 'out/'`) keeps the
        // order its SELECT gave, as any SQL tool prints it.
        let t = table(b.schema_ref(), std::slice::from_ref(&b), 3, None).unwrap();
        assert!(t.contains("| word  | cnt | op |"), "{t}");
        assert!(t.contains("| hello |   2 | +U |"), "{t}");
        let mut csv = Vec::new();
        csv_rows(&mut csv, &b.slice(2, 1)).unwrap();
        assert_eq!(String::from_utf8(csv).unwrap(), "hello,2,+U\n");
    }

    #[test]
    fn long_text_in_a_live_table_is_cut() {
        assert_eq!(cut("abcdefghij", 8), "abcde...");
        assert_eq!(cut("abc", 8), "abc");
        assert_eq!(cut("two\nlines", 20), "two lines");
    }
}
