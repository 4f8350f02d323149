//! Fitting a file's columns to the table's declared ones: finding them,
//! checking and converting their types, setting aside the rows that do
//! not fit (shared by the Parquet, CSV and JSON readers).

use super::*;
use datafusion::arrow::datatypes::FieldRef;

/// Whether every value of type `found` converts to `declared` (so a column
/// the job does not read cannot hold a bad value): the same type, a wider
/// number of the same kind, text to text, a coarser timestamp.
pub(super) fn lossless(found: &DataType, declared: &DataType) -> bool {
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
    // A list's item field is named `item` by Arrow, `element` by pyarrow,
    // Spark and DuckDB: only the item types count.
    let item = |t: &DataType| match t {
        List(f) | LargeList(f) | ListView(f) | LargeListView(f) | FixedSizeList(f, _) => {
            Some(f.data_type().clone())
        }
        _ => None,
    };
    match (found, declared) {
        (Dictionary(_, values), d) => lossless(values, d),
        (
            List(_) | LargeList(_) | ListView(_) | LargeListView(_) | FixedSizeList(..),
            List(_) | LargeList(_),
        ) => {
            matches!((item(found), item(declared)), (Some(f), Some(d)) if lossless(&f, &d))
        }
        // Struct fields by name, in order (a cast pairs them by position).
        (Struct(f), Struct(d)) => {
            f.len() == d.len()
                && f.iter().zip(d.iter()).all(|(f, d)| {
                    f.name().eq_ignore_ascii_case(d.name()) && lossless(f.data_type(), d.data_type())
                })
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (Float16 | Float32, Float32 | Float64) => true,
        (Timestamp(f, _), Timestamp(d, _)) => unit_rank(d) <= unit_rank(f),
        // A time of day to a finer unit: pyarrow, Spark and DuckDB write
        // TIME in microseconds, and a declared TIME is in nanoseconds.
        (Time32(f) | Time64(f), Time32(d) | Time64(d)) => unit_rank(d) >= unit_rank(f),
        (Null, _) => true,
        (f, d) => match (int_width(f), int_width(d)) {
            (Some((fs, fw)), Some((ds, dw))) => (fs == ds && dw >= fw) || (!fs && ds && dw > fw),
            _ => false,
        },
    }
}

/// Whether a file column of type `found` may feed a declared column of type
/// `declared`.
pub fn compatible(found: &DataType, declared: &DataType) -> bool {
    use DataType::*;
    let numeric = |t: &DataType| t.is_numeric();
    let stringy = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let binary = |t: &DataType| matches!(t, Binary | LargeBinary | BinaryView | FixedSizeBinary(_));
    // Nested and dictionary-encoded columns convert only where nothing can
    // change (a list of text as a list of text, a struct of the same
    // fields); [`changed_rows`] does not look inside them.
    let nested_or_dictionary = |t: &DataType| t.is_nested() || matches!(t, Dictionary(..));
    if nested_or_dictionary(found) || nested_or_dictionary(declared) {
        return lossless(found, declared);
    }
    lossless(found, declared)
        || (numeric(found) && numeric(declared))
        || (stringy(found) && stringy(declared))
        || (binary(found) && binary(declared))
        || (matches!(found, Timestamp(_, _) | Date32 | Date64) && matches!(declared, Timestamp(_, _)))
        || (matches!(found, Date32 | Date64) && matches!(declared, Date32 | Date64))
        || (matches!(found, Null))
}

/// Converts a file's column to the declared type; `None` when some value
/// does not fit (an overflow) or would change (see [`changed_rows`]).
pub(super) fn conform(col: &ArrayRef, field: &Field) -> Option<ArrayRef> {
    if col.data_type() == field.data_type() {
        return Some(Arc::clone(col));
    }
    let opts = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    if !outside_the_day(col).is_empty() {
        return None;
    }
    let converted = match floored_time(col, field.data_type()) {
        Some(floored) => floored.ok()?,
        None => {
            // Times inside a list or struct are cut down as a column's are
            // (Arrow's cast of the container cut them toward zero).
            let col = floored_nested(col, field.data_type()).ok()?;
            cast_with_options(&col, field.data_type(), &opts).ok()?
        }
    };
    match changed_rows(col, &converted) {
        Ok(rows) if rows.is_empty() => Some(converted),
        _ => None,
    }
}

/// The rows of a time-of-day column whose value is outside the day (its
/// raw number, in the column's unit), none for another type. Arrow's cast
/// of a time to a finer unit multiplies without a check: 2^62 µs came out
/// as 00:00:00 (and a debug build panicked), so such a value is a bad
/// record before any cast.
pub(super) fn outside_the_day(col: &ArrayRef) -> Vec<(usize, i64)> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Int64Type, TimeUnit};
    let (DataType::Time32(unit) | DataType::Time64(unit)) = col.data_type() else {
        return vec![];
    };
    let day: i64 = match unit {
        TimeUnit::Second => 86_400,
        TimeUnit::Millisecond => 86_400_000,
        TimeUnit::Microsecond => 86_400_000_000,
        TimeUnit::Nanosecond => 86_400_000_000_000,
    };
    let Ok(raw) = datafusion::arrow::compute::cast(col, &DataType::Int64) else {
        return vec![];
    };
    let raw = raw.as_primitive::<Int64Type>();
    (0..raw.len())
        .filter(|&r| raw.is_valid(r) && !(0..day).contains(&raw.value(r)))
        .map(|r| (r, raw.value(r)))
        .collect()
}

/// A column with these rows NULL, and zero beneath (a kernel computes on
/// the values under a NULL too: a wild time there still overflowed).
pub(super) fn nulled_rows(col: &ArrayRef, rows: &[usize]) -> Result<ArrayRef> {
    use datafusion::arrow::array::{BooleanArray, new_null_array};
    let keep: BooleanArray = (0..col.len()).map(|r| Some(!rows.contains(&r))).collect();
    let nulls = new_null_array(col.data_type(), col.len());
    Ok(datafusion::arrow::compute::kernels::zip::zip(&keep, col, &nulls)?)
}

/// A time column cut to a coarser declared unit, down (toward the past),
/// as the CSV and JSON readers cut the same text and as windows cut a
/// finer event time (`to_millis`): Arrow's cast divides toward zero, so
/// 1969-12-31 23:59:59.999999 became 1970-01-01 00:00:00 and landed in a
/// window after it. `None` when `col` is no finer time than `declared`.
fn floored_time(col: &ArrayRef, declared: &DataType) -> Option<Result<ArrayRef>> {
    use datafusion::arrow::array::{Array, AsArray, PrimitiveArray};
    use datafusion::arrow::datatypes::{Int64Type, TimeUnit};
    let per_second = |u: &TimeUnit| match u {
        TimeUnit::Second => 1i64,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    let (DataType::Timestamp(found, _), DataType::Timestamp(to, _)) = (col.data_type(), declared) else {
        return None;
    };
    let ratio = per_second(found) / per_second(to);
    if ratio <= 1 {
        return None;
    }
    Some((|| {
        let raw = datafusion::arrow::compute::cast(col, &DataType::Int64)?;
        let floored: PrimitiveArray<Int64Type> =
            raw.as_primitive::<Int64Type>().unary(|v| v.div_euclid(ratio));
        Ok(datafusion::arrow::compute::cast(&floored, declared)?)
    })())
}

/// `col` with every time inside its lists and structs that is finer than
/// the declared one cut down to the declared unit ([`floored_time`]); the
/// rest as it is, for the cast to convert.
fn floored_nested(col: &ArrayRef, declared: &DataType) -> Result<ArrayRef> {
    use datafusion::arrow::array::{Array, AsArray, LargeListArray, ListArray, StructArray};
    let retyped = |f: &FieldRef, values: &ArrayRef| {
        Arc::new(f.as_ref().clone().with_data_type(values.data_type().clone()))
    };
    Ok(match (col.data_type(), declared) {
        (DataType::Timestamp(..), DataType::Timestamp(..)) => match floored_time(col, declared) {
            Some(floored) => floored?,
            None => Arc::clone(col),
        },
        (DataType::List(f), DataType::List(d)) => {
            let list = col.as_list::<i32>();
            let values = floored_nested(list.values(), d.data_type())?;
            Arc::new(ListArray::try_new(
                retyped(f, &values),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )?)
        }
        (DataType::LargeList(f), DataType::LargeList(d)) => {
            let list = col.as_list::<i64>();
            let values = floored_nested(list.values(), d.data_type())?;
            Arc::new(LargeListArray::try_new(
                retyped(f, &values),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )?)
        }
        (DataType::Struct(fields), DataType::Struct(declared)) if fields.len() == declared.len() => {
            let st = col.as_struct();
            let children = st
                .columns()
                .iter()
                .zip(declared.iter())
                .map(|(c, d)| floored_nested(c, d.data_type()))
                .collect::<Result<Vec<_>>>()?;
            let fields = fields
                .iter()
                .zip(&children)
                .map(|(f, c)| retyped(f, c))
                .collect::<Vec<_>>();
            Arc::new(StructArray::try_new(
                fields.into(),
                children,
                st.nulls().cloned(),
            )?)
        }
        _ => Arc::clone(col),
    })
}

/// The rows whose value a conversion changed rather than only retyped: a
/// number with a fraction declared an integer or a decimal of fewer places
/// (3.7 into BIGINT is 3, 12.345 into DECIMAL(10,1) is 12.3), a finite
/// float that became infinite (1e300 into FLOAT). Each is a bad record,
/// as the same value written in a CSV file is. A float narrowed to a
/// float keeps what precision it can (0.1 into FLOAT), as a cast does.
/// Rows where either side is NULL are not counted (an overflow to NULL is
/// found by the NULL it leaves).
pub(super) fn changed_rows(col: &ArrayRef, converted: &ArrayRef) -> Result<Vec<usize>> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float64Type;
    let (found, declared) = (col.data_type(), converted.data_type());
    if lossless(found, declared) {
        return Ok(vec![]);
    }
    let decimal = |t: &DataType| {
        matches!(
            t,
            DataType::Decimal32(..)
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
                | DataType::Decimal256(..)
        )
    };
    let exact_target = declared.is_integer() || decimal(declared);
    if exact_target && (found.is_floating() || decimal(found)) {
        // Back to the file's type: a value that comes back different was
        // rounded or cut.
        let back = datafusion::arrow::compute::cast(converted, found)?;
        let differ = datafusion::arrow::compute::kernels::cmp::distinct(col, &back)?;
        return Ok((0..col.len())
            .filter(|&r| col.is_valid(r) && converted.is_valid(r) && differ.value(r))
            .collect());
    }
    if declared.is_floating() && found.is_floating() {
        let (wide, narrow) = (
            datafusion::arrow::compute::cast(col, &DataType::Float64)?,
            datafusion::arrow::compute::cast(converted, &DataType::Float64)?,
        );
        let (wide, narrow) = (
            wide.as_primitive::<Float64Type>(),
            narrow.as_primitive::<Float64Type>(),
        );
        return Ok((0..col.len())
            .filter(|&r| {
                wide.is_valid(r)
                    && narrow.is_valid(r)
                    && wide.value(r).is_finite()
                    && narrow.value(r).is_infinite()
            })
            .collect());
    }
    Ok(vec![])
}

/// Finds each declared column in the file's columns (exact name first, then
/// case-insensitively), checking types when the file has them.
pub(super) fn map_columns(
    file: &FileRef<'_>,
    found: &Schema,
    declared: &SchemaRef,
    typed: bool,
) -> Result<Vec<usize>> {
    declared
        .fields()
        .iter()
        .map(|f| {
            // Exactly one file column may be the declared one: taking the
            // first of two silently read the wrong values.
            let exact: Vec<&str> = found
                .fields()
                .iter()
                .map(|g| g.name().as_str())
                .filter(|g| *g == f.name())
                .collect();
            let folded: Vec<&str> = found
                .fields()
                .iter()
                .map(|g| g.name().as_str())
                .filter(|g| g.eq_ignore_ascii_case(f.name()))
                .collect();
            if exact.len() > 1 || (exact.is_empty() && folded.len() > 1) {
                let names: Vec<String> = folded.iter().map(|n| format!("'{n}'")).collect();
                return Err(file.err(format!(
                    "column '{}' of table '{}' is more than one column of the file ({}): rename them apart",
                    f.name(),
                    file.table,
                    names.join(", ")
                )));
            }
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
                let (found, declared) = (weir_sql::catalog::sql_type_name(t), weir_sql::catalog::sql_type_name(f.data_type()));
                // Two Arrow types of one SQL name (a timestamp's unit, a
                // decimal's width): Arrow's names tell them apart.
                let (found, declared) = match found == declared {
                    true => (t.to_string(), f.data_type().to_string()),
                    false => (found, declared),
                };
                return Err(file.err(format!(
                    "column '{}' is {found} in the file, but table '{}' declares it {declared} (declare it {found} \
                     if every file holds that)",
                    f.name(),
                    file.table,
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
pub(super) fn to_declared(
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
pub(super) fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

/// The NOT NULL columns of the output: (column of the decoded batch, name).
pub(super) fn required_columns(output: &Schema, positions: &[usize]) -> Vec<(usize, String)> {
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
pub(super) fn missing_values(batch: &RecordBatch, required: &[(usize, String)]) -> Vec<(usize, String)> {
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
pub(super) fn without_rows(batch: &RecordBatch, drop: &[usize]) -> Result<RecordBatch> {
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
pub(super) const SIFT_GROUP: usize = 256;

/// The slow path, for any record-oriented format: reads `records` in
/// groups with `decode`; a group that fails is read record by record with
/// `one`, which says why a record fails on its own. Rows without a value in
/// a NOT NULL column are bad too. Returns the good rows (as `decode` makes
/// them) and hands the bad records to `bad`.
pub(super) fn sift<R>(
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
pub(super) fn projection(file_index: &[usize], needed: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let wanted: Vec<usize> = needed.iter().map(|&c| file_index[c]).collect();
    let mut roots = wanted.clone();
    roots.sort_unstable();
    roots.dedup();
    // Every wanted column is among the roots: its position is the number
    // of roots before it.
    let positions = wanted.iter().map(|w| roots.partition_point(|r| r < w)).collect();
    (roots, positions)
}

/// Keeps the first `max_rows` rows; more rows than that means the file goes on.
pub(super) fn limit(batches: Vec<RecordBatch>, max_rows: usize) -> FileRows {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if total <= max_rows {
        return FileRows {
            batches,
            records: total,
            eof: true,
            bad: Vec::new(),
            maxima: Vec::new(),
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
        maxima: Vec::new(),
    }
}

/// The DECIMAL columns of a CSV or JSON table, read wider than declared.
/// Arrow's CSV and JSON readers cut a number with more decimal places than
/// the column's scale (12.35 into `DECIMAL(10,1)` gives 12.3), where the
/// Parquet reader's check makes such a value a bad record. Read instead as
/// `DECIMAL(76, s')`, `s'` the most places that leave the declared integer
/// digits (66 for `DECIMAL(12,2)`, 44 for `DECIMAL(38,6)`), a value shows
/// the places it had (up to `s'`: at least 38 more than the scale for any
/// column of up to 38 digits), and [`CheckedColumns::narrow`] makes one with
/// more than the scale a bad record, then brings the others to the
/// declared type exactly. One read, and a division per value: only tables
/// declaring a DECIMAL pay. (Read as `DECIMAL(38, s')` before, a
/// `DECIMAL(38,6)` had no room for a seventh place, and `0.0000001` was
/// cut to 0 unseen. A `DECIMAL` of a negative scale is read as declared.)
///
/// BYTEA columns too: read as text, then decoded as hex, as PostgreSQL
/// writes bytes (`\x0a1b`, or `0a1b`). Arrow's CSV reader parses no
/// binary at all (every value was a bad record, an empty field too), and
/// its JSON reader took an odd number of digits as if a `0` led the last
/// one (`"abc"` gave `ab 0c`); here a value that is not whole hex bytes is
/// a bad record naming it.
pub(super) struct CheckedColumns {
    /// The columns read otherwise than declared (a DECIMAL or BYTEA, at
    /// any depth of a list, struct or map): name, declared type, read type.
    columns: Vec<(String, DataType, DataType)>,
    /// The schema to read with: the declared one, those columns wider.
    read: SchemaRef,
}

/// The type a value declared `t` is read as, when not `t` itself: a
/// DECIMAL as `DECIMAL(76, s')`, a BYTEA as text, and a list, struct or
/// map holding either with them so (Arrow's JSON reader parses nested
/// values with the same parsers, and cut or made up the same values
/// inside them).
fn read_type(t: &DataType) -> Option<DataType> {
    let field = |f: &FieldRef| -> Option<FieldRef> {
        read_type(f.data_type()).map(|t| Arc::new(f.as_ref().clone().with_data_type(t)))
    };
    match t {
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s)
            if *s >= 0 =>
        {
            Some(DataType::Decimal256(76, 76 - (*p as i8 - *s)))
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Some(DataType::Utf8),
        DataType::List(f) => field(f).map(DataType::List),
        DataType::LargeList(f) => field(f).map(DataType::LargeList),
        DataType::FixedSizeList(f, n) => field(f).map(|f| DataType::FixedSizeList(f, *n)),
        DataType::Struct(fields) => {
            let read: Vec<Option<FieldRef>> = fields.iter().map(field).collect();
            read.iter().any(Option::is_some).then(|| {
                DataType::Struct(
                    fields
                        .iter()
                        .zip(read)
                        .map(|(f, r)| r.unwrap_or_else(|| Arc::clone(f)))
                        .collect(),
                )
            })
        }
        DataType::Map(entries, sorted) => field(entries).map(|e| DataType::Map(e, *sorted)),
        _ => None,
    }
}

impl CheckedColumns {
    /// `None` when `schema` has no DECIMAL or BYTEA column, at any depth.
    pub(super) fn of(schema: &SchemaRef) -> Option<Self> {
        let mut columns = Vec::new();
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| match read_type(f.data_type()) {
                Some(read) => {
                    columns.push((f.name().clone(), f.data_type().clone(), read.clone()));
                    f.as_ref().clone().with_data_type(read)
                }
                None => f.as_ref().clone(),
            })
            .collect();
        (!columns.is_empty()).then(|| Self {
            columns,
            read: Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        })
    }

    /// The schema to read with.
    pub(super) fn read_schema(&self) -> &SchemaRef {
        &self.read
    }

    /// A batch read with [`Self::read_schema`] (all its columns or some,
    /// found by name) with its DECIMAL and BYTEA values as declared; an
    /// error naming the first value that is not one (more places than its
    /// column keeps, or not hex).
    pub(super) fn narrow(&self, batch: RecordBatch) -> std::result::Result<RecordBatch, ArrowError> {
        let schema = batch.schema();
        let mut fields: Vec<Field> = Vec::with_capacity(schema.fields().len());
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            let checked = self
                .columns
                .iter()
                .find(|(name, _, read)| name == field.name() && column.data_type() == read);
            match checked {
                Some((name, declared, _)) => {
                    columns.push(narrow_array(name, declared, column)?);
                    fields.push(field.as_ref().clone().with_data_type(declared.clone()));
                }
                None => {
                    fields.push(field.as_ref().clone());
                    columns.push(Arc::clone(column));
                }
            }
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
    }
}

/// `array`, read as [`read_type`] of `declared`, as `declared`: its
/// DECIMAL values checked and narrowed, its BYTEA values decoded, at any
/// depth. `path` names the value in errors (`prices[]`, `bid.price`).
fn narrow_array(
    path: &str,
    declared: &DataType,
    array: &ArrayRef,
) -> std::result::Result<ArrayRef, ArrowError> {
    use datafusion::arrow::array::{
        AsArray, FixedSizeListArray, LargeListArray, ListArray, MapArray, StructArray,
    };
    let item = |f: &FieldRef, values: &ArrayRef, path: String| -> std::result::Result<ArrayRef, ArrowError> {
        narrow_array(&path, f.data_type(), values)
    };
    Ok(match declared {
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s)
            if *s >= 0 =>
        {
            narrow_decimal(path, declared, *p, *s, 76 - (*p as i8 - *s), array)?
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => decode_hex(path, declared, array)?,
        DataType::List(f) => {
            let list = array.as_list::<i32>();
            let values = item(f, list.values(), format!("{path}[]"))?;
            Arc::new(ListArray::try_new(
                Arc::clone(f),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )?)
        }
        DataType::LargeList(f) => {
            let list = array.as_list::<i64>();
            let values = item(f, list.values(), format!("{path}[]"))?;
            Arc::new(LargeListArray::try_new(
                Arc::clone(f),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )?)
        }
        DataType::FixedSizeList(f, n) => {
            let list = array.as_fixed_size_list();
            let values = item(f, list.values(), format!("{path}[]"))?;
            Arc::new(FixedSizeListArray::try_new(
                Arc::clone(f),
                *n,
                values,
                list.nulls().cloned(),
            )?)
        }
        DataType::Struct(fields) => {
            let st = array.as_struct();
            let children = fields
                .iter()
                .zip(st.columns())
                .map(|(f, c)| item(f, c, format!("{path}.{}", f.name())))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Arc::new(StructArray::try_new(
                fields.clone(),
                children,
                st.nulls().cloned(),
            )?)
        }
        DataType::Map(entries, sorted) => {
            let map = array.as_map();
            let DataType::Struct(fields) = entries.data_type() else {
                return Ok(Arc::clone(array));
            };
            let pairs: ArrayRef = Arc::new(map.entries().clone());
            let pairs = narrow_array(path, &DataType::Struct(fields.clone()), &pairs)?;
            Arc::new(MapArray::try_new(
                Arc::clone(entries),
                map.offsets().clone(),
                pairs.as_struct().clone(),
                map.nulls().cloned(),
                *sorted,
            )?)
        }
        _ => Arc::clone(array),
    })
}

/// A DECIMAL read as `DECIMAL(76, wide)`, as declared (`DECIMAL(p, s)`),
/// or an error naming the first value with more places, or more digits,
/// than the column keeps.
fn narrow_decimal(
    name: &str,
    declared: &DataType,
    p: u8,
    s: i8,
    wide: i8,
    column: &ArrayRef,
) -> std::result::Result<ArrayRef, ArrowError> {
    use datafusion::arrow::array::{AsArray, Decimal256Array};
    use datafusion::arrow::datatypes::{Decimal256Type, DecimalType, i256};
    let ten = i256::from_i128(10);
    let values = column.as_primitive::<Decimal256Type>();
    // 10^(wide - s) and 10^p fit: both at most 10^76 < 2^255.
    let factor = ten.wrapping_pow((wide - s) as u32);
    let limit = ten.wrapping_pow(u32::from(p));
    let mut narrowed = Vec::with_capacity(values.len());
    for v in values.iter() {
        let Some(v) = v else {
            narrowed.push(None);
            continue;
        };
        let n = v.wrapping_div(factor);
        if v.wrapping_rem(factor) != i256::ZERO || n.wrapping_abs() >= limit {
            let written = Decimal256Type::format_decimal(v, 76, wide);
            let written = match written.contains('.') {
                true => written.trim_end_matches('0').trim_end_matches('.').to_string(),
                false => written,
            };
            let reason = if n.wrapping_abs() >= limit {
                format!("column '{name}': {written} has more digits than {declared} holds")
            } else {
                format!(
                    "column '{name}': {written} has more decimal places than {declared} keeps (it would be {})",
                    Decimal256Type::format_decimal(n, p, s)
                )
            };
            return Err(ArrowError::ExternalError(Box::new(BadValue(reason))));
        }
        narrowed.push(Some(n));
    }
    let narrowed: ArrayRef =
        Arc::new(Decimal256Array::from(narrowed).with_precision_and_scale(p.min(76), s)?);
    Ok(match declared {
        DataType::Decimal256(..) => narrowed,
        // |n| < 10^p: it fits the declared width.
        other => datafusion::arrow::compute::cast(&narrowed, other)?,
    })
}

/// A BYTEA read as text, decoded as hex, as PostgreSQL writes bytes
/// (`\x0a1b`, or `0a1b`); an error naming the first value that is not
/// whole hex bytes.
fn decode_hex(
    name: &str,
    declared: &DataType,
    column: &ArrayRef,
) -> std::result::Result<ArrayRef, ArrowError> {
    use datafusion::arrow::array::{AsArray, BinaryBuilder};
    let text = column.as_string::<i32>();
    let mut out = BinaryBuilder::with_capacity(text.len(), text.value_data().len() / 2);
    let mut bytes = Vec::new();
    for v in text.iter() {
        let Some(v) = v else {
            out.append_null();
            continue;
        };
        let digits = v.strip_prefix("\\x").unwrap_or(v).as_bytes();
        bytes.clear();
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let whole = digits.len() % 2 == 0
            && digits.chunks(2).all(|pair| match (hex(pair[0]), hex(pair[1])) {
                (Some(hi), Some(lo)) => {
                    bytes.push(hi << 4 | lo);
                    true
                }
                _ => false,
            });
        if !whole {
            let reason = format!(
                "column '{name}': {} is not bytes written in hex (BYTEA is read as two hex digits a byte, \
                 as PostgreSQL writes it: \\x0a1b or 0a1b)",
                serde_json::Value::from(v)
            );
            return Err(ArrowError::ExternalError(Box::new(BadValue(reason))));
        }
        out.append_value(&bytes);
    }
    let decoded: ArrayRef = Arc::new(out.finish());
    match declared {
        DataType::Binary => Ok(decoded),
        other => datafusion::arrow::compute::cast(&decoded, other),
    }
}

/// A value written with more decimal places (or digits) than its column
/// keeps: the bad record's reason, carried through Arrow's error type.
#[derive(Debug)]
struct BadValue(String);

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadValue {}

/// The reason a [`CheckedColumns::narrow`] error gives, if `e` is one.
pub(super) fn bad_value(e: &ArrowError) -> Option<String> {
    match e {
        ArrowError::ExternalError(b) => b.downcast_ref::<BadValue>().map(|l| l.0.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    /// A time before 1970 finer than its declared unit is cut down (toward
    /// the past) inside a list or a struct as at top level: Arrow's cast of
    /// the container cut it toward zero, into 1970.
    #[test]
    fn nested_times_are_cut_down_as_columns_are() {
        use datafusion::arrow::array::{AsArray, ListArray, StructArray, TimestampMicrosecondArray};
        use datafusion::arrow::buffer::OffsetBuffer;
        use datafusion::arrow::datatypes::{Fields, TimeUnit, TimestampMillisecondType};
        let us: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![-1i64, 1_500]));
        let item = |u: TimeUnit| Arc::new(Field::new("item", DataType::Timestamp(u, None), true));
        let list: ArrayRef = Arc::new(
            ListArray::try_new(
                item(TimeUnit::Microsecond),
                OffsetBuffer::from_lengths([2]),
                Arc::clone(&us),
                None,
            )
            .unwrap(),
        );
        let declared = DataType::List(item(TimeUnit::Millisecond));
        let got = conform(&list, &Field::new("l", declared, true)).unwrap();
        let values = got
            .as_list::<i32>()
            .values()
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec();
        assert_eq!(values, [-1, 1]);
        let field = |u: TimeUnit| Fields::from(vec![Field::new("t", DataType::Timestamp(u, None), true)]);
        let st: ArrayRef =
            Arc::new(StructArray::try_new(field(TimeUnit::Microsecond), vec![us], None).unwrap());
        let got = conform(
            &st,
            &Field::new("s", DataType::Struct(field(TimeUnit::Millisecond)), true),
        )
        .unwrap();
        let values = got
            .as_struct()
            .column(0)
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec();
        assert_eq!(values, [-1, 1]);
    }

    /// Nested and dictionary columns written by other tools (a list item
    /// named `element`, a struct of Utf8, pandas' dictionary-encoded text)
    /// feed the declared types they hold without change; where a value
    /// could change inside them (floats into a list of integers), refused.
    #[test]
    fn nested_and_dictionary_columns_convert_where_nothing_changes() {
        use datafusion::arrow::array::{
            AsArray, DictionaryArray, Int32Array, ListArray, StringArray, StructArray,
        };
        use datafusion::arrow::datatypes::{Fields, Int32Type};
        let list_of = |name: &str, t: DataType| DataType::List(Arc::new(Field::new(name, t, true)));
        let declared_list = list_of("item", DataType::Int64);
        assert!(compatible(&list_of("element", DataType::Int32), &declared_list));
        assert!(!compatible(
            &list_of("element", DataType::Float64),
            &declared_list
        ));
        let s = |t: DataType| {
            DataType::Struct(Fields::from(vec![
                Field::new("a", DataType::Int64, true),
                Field::new("b", t, true),
            ]))
        };
        assert!(compatible(&s(DataType::Utf8), &s(DataType::Utf8View)));
        let other = DataType::Struct(Fields::from(vec![
            Field::new("b", DataType::Utf8, true),
            Field::new("a", DataType::Int64, true),
        ]));
        assert!(
            !compatible(&other, &s(DataType::Utf8View)),
            "fields are paired by name"
        );
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        assert!(compatible(&dict, &DataType::Utf8View));
        assert!(!compatible(&dict, &DataType::Int64));

        let items = ListArray::new(
            Arc::new(Field::new("element", DataType::Int32, true)),
            datafusion::arrow::buffer::OffsetBuffer::from_lengths([2, 0]),
            Arc::new(Int32Array::from(vec![Some(1), None])),
            None,
        );
        let got = conform(
            &(Arc::new(items) as ArrayRef),
            &Field::new("l", declared_list.clone(), true),
        )
        .unwrap();
        assert_eq!(got.data_type(), &declared_list);
        assert_eq!(
            got.as_any().downcast_ref::<ListArray>().unwrap().value_length(0),
            2
        );
        let structs = StructArray::from(vec![
            (
                Arc::new(Field::new("a", DataType::Int64, true)),
                Arc::new(datafusion::arrow::array::Int64Array::from(vec![1, 2])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("b", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef,
            ),
        ]);
        let got = conform(
            &(Arc::new(structs) as ArrayRef),
            &Field::new("s", s(DataType::Utf8View), true),
        )
        .unwrap();
        assert_eq!(got.data_type(), &s(DataType::Utf8View));
        let d: DictionaryArray<Int32Type> = vec!["p", "q", "p"].into_iter().collect();
        let got = conform(
            &(Arc::new(d) as ArrayRef),
            &Field::new("d", DataType::Utf8View, true),
        )
        .unwrap();
        assert_eq!(got.as_string_view().value(2), "p");
    }

    /// A time of day written in microseconds or milliseconds (pyarrow,
    /// Spark, DuckDB) feeds a declared TIME (nanoseconds); it was refused,
    /// and no declaration read such a file.
    #[test]
    fn a_time_of_day_widens_to_nanoseconds() {
        use datafusion::arrow::array::{AsArray, Time32MillisecondArray, Time64MicrosecondArray};
        use datafusion::arrow::datatypes::{Time64NanosecondType, TimeUnit};
        let ns = DataType::Time64(TimeUnit::Nanosecond);
        let micros: ArrayRef = Arc::new(Time64MicrosecondArray::from(vec![Some(3_723_456_789), None]));
        let millis: ArrayRef = Arc::new(Time32MillisecondArray::from(vec![86_399_999]));
        for (col, want) in [
            (micros, vec![Some(3_723_456_789_000), None]),
            (millis, vec![Some(86_399_999_000_000)]),
        ] {
            assert!(compatible(col.data_type(), &ns), "{}", col.data_type());
            let got = conform(&col, &Field::new("t", ns.clone(), true)).unwrap();
            assert_eq!(
                got.as_primitive::<Time64NanosecondType>()
                    .iter()
                    .collect::<Vec<_>>(),
                want
            );
        }
        // A time outside the day is no time (it wrapped to 00:00:00).
        let wild: ArrayRef = Arc::new(Time64MicrosecondArray::from(vec![1 << 62, -1, 5]));
        assert_eq!(outside_the_day(&wild), [(0, 1 << 62), (1, -1)]);
        assert!(conform(&wild, &Field::new("t", ns.clone(), true)).is_none());
        // A time is no timestamp.
        assert!(!compatible(
            &DataType::Time64(TimeUnit::Microsecond),
            &DataType::Timestamp(TimeUnit::Nanosecond, None)
        ));
    }

    /// DECIMAL columns read wide come back as declared; a value with more
    /// places, or more digits, than the column keeps is an error naming it.
    #[test]
    fn wide_decimals_narrow_exactly_or_name_the_value() {
        use datafusion::arrow::array::{AsArray, Decimal256Array, Int64Array};
        use datafusion::arrow::datatypes::{Decimal64Type, Decimal128Type, i256};
        let declared = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Decimal64(6, 2), true),
            Field::new("w", DataType::Decimal128(38, 6), true),
        ]));
        let wide = CheckedColumns::of(&declared).unwrap();
        assert_eq!(
            wide.read_schema().field(1).data_type(),
            &DataType::Decimal256(76, 72)
        );
        assert_eq!(
            wide.read_schema().field(2).data_type(),
            &DataType::Decimal256(76, 44)
        );
        let ten = i256::from_i128(10);
        // `x` with `places` decimal places, at `scale`.
        let num = |x: i128, places: u32, scale: u32| {
            Some(i256::from_i128(x).wrapping_mul(ten.wrapping_pow(scale - places)))
        };
        let read = |v: Vec<Option<i256>>, w: Vec<Option<i256>>| {
            let n = v.len();
            RecordBatch::try_new(
                Arc::clone(wide.read_schema()),
                vec![
                    Arc::new(Int64Array::from(vec![1; n])),
                    Arc::new(Decimal256Array::from(v).with_precision_and_scale(76, 72).unwrap()),
                    Arc::new(Decimal256Array::from(w).with_precision_and_scale(76, 44).unwrap()),
                ],
            )
            .unwrap()
        };
        // 12.3, -0.05, NULL, 9999.99 and 0.000001, -1.5, NULL, 10^32 - 10^-6:
        // as declared.
        let top = 10i128.pow(38) - 1;
        let ok = wide
            .narrow(read(
                vec![num(123, 1, 72), num(-5, 2, 72), None, num(999_999, 2, 72)],
                vec![num(1, 6, 44), num(-15, 1, 44), None, num(top, 6, 44)],
            ))
            .unwrap();
        assert_eq!(ok.schema().field(1).data_type(), &DataType::Decimal64(6, 2));
        let got: Vec<Option<i64>> = ok.column(1).as_primitive::<Decimal64Type>().iter().collect();
        assert_eq!(got, [Some(1230), Some(-5), None, Some(999_999)]);
        let got: Vec<Option<i128>> = ok.column(2).as_primitive::<Decimal128Type>().iter().collect();
        assert_eq!(got, [Some(1), Some(-1_500_000), None, Some(top)]);
        for (v, w, reason) in [
            (
                num(-12_345, 3, 72),
                num(1, 0, 44),
                "column 'v': -12.345 has more decimal places than Decimal64(6, 2) keeps (it would be -12.34)",
            ),
            (
                num(1, 3, 72),
                num(1, 0, 44),
                "column 'v': 0.001 has more decimal places than Decimal64(6, 2) keeps (it would be 0.00)",
            ),
            // A seventh place in DECIMAL(38,6): read as DECIMAL(38,...)
            // before, it had no room, and was cut unseen.
            (
                num(1, 0, 72),
                num(1, 7, 44),
                "column 'w': 0.0000001 has more decimal places than Decimal128(38, 6) keeps (it would be 0.000000)",
            ),
        ] {
            let e = wide
                .narrow(read(vec![num(1, 0, 72), v], vec![num(1, 0, 44), w]))
                .unwrap_err();
            assert_eq!(bad_value(&e).as_deref(), Some(reason));
        }
        // A table without DECIMAL columns reads as declared.
        let plain = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        assert!(CheckedColumns::of(&plain).is_none());
    }

    use super::*;
    use datafusion::arrow::array::{Decimal128Array, Float32Array, Float64Array, Int64Array};

    fn changed(col: ArrayRef, to: DataType) -> Vec<usize> {
        let lenient = CastOptions {
            safe: true,
            format_options: FormatOptions::default(),
        };
        let converted = cast_with_options(&col, &to, &lenient).unwrap();
        let rows = changed_rows(&col, &converted).unwrap();
        // `conform` refuses the column exactly when a row changed (or overflowed).
        let field = Field::new("v", to, true);
        assert_eq!(
            conform(&col, &field).is_some(),
            rows.is_empty() && converted.null_count() == col.null_count()
        );
        rows
    }

    /// A finer file time is cut down to the declared unit, before 1970
    /// too (Arrow's cast went toward zero: -1 µs became 1970-01-01).
    #[test]
    fn a_finer_time_is_cut_down() {
        use datafusion::arrow::array::{AsArray, TimestampMicrosecondArray, TimestampNanosecondArray};
        use datafusion::arrow::datatypes::{TimeUnit, TimestampMillisecondType, TimestampSecondType};
        let us: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            Some(-1),
            Some(-1000),
            Some(-1001),
            Some(1500),
            None,
        ]));
        let ms = conform(
            &us,
            &Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        )
        .unwrap();
        let ms = ms.as_primitive::<TimestampMillisecondType>();
        assert_eq!(
            ms.iter().collect::<Vec<_>>(),
            vec![Some(-1), Some(-1), Some(-2), Some(1), None]
        );
        let ns: ArrayRef =
            Arc::new(TimestampNanosecondArray::from(vec![-1, 1_999_999_999]).with_timezone("UTC"));
        let s = conform(
            &ns,
            &Field::new("t", DataType::Timestamp(TimeUnit::Second, None), true),
        )
        .unwrap();
        let s = s.as_primitive::<TimestampSecondType>();
        assert_eq!(s.values().to_vec(), vec![-1, 1]);
        assert_eq!(s.data_type(), &DataType::Timestamp(TimeUnit::Second, None));
    }

    #[test]
    fn a_conversion_that_changes_a_value_is_found() {
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(3.0),
            Some(3.7),
            None,
            Some(-2.9),
            Some(1e300),
        ]));
        assert_eq!(changed(Arc::clone(&floats), DataType::Int64), vec![1, 3]);
        // 1e300 overflows Int64 to NULL: found by the NULL, not here.
        assert_eq!(changed(Arc::clone(&floats), DataType::Float32), vec![4]);
        assert!(changed(Arc::clone(&floats), DataType::Decimal128(10, 1)).is_empty());
        let quarter: ArrayRef = Arc::new(Float64Array::from(vec![3.25, 0.5]));
        assert_eq!(changed(quarter, DataType::Decimal128(10, 1)), vec![0]);
        let dec: ArrayRef = Arc::new(
            Decimal128Array::from(vec![12_345, 12_300, -1])
                .with_precision_and_scale(10, 3)
                .unwrap(),
        );
        assert_eq!(changed(Arc::clone(&dec), DataType::Decimal128(10, 1)), vec![0, 2]);
        assert_eq!(changed(dec, DataType::Int64), vec![0, 1, 2]);
        // Precision a float cannot keep is not a change; neither are
        // integers into floats or wider types.
        let tenth: ArrayRef = Arc::new(Float64Array::from(vec![0.1, 1e-300]));
        assert!(changed(tenth, DataType::Float32).is_empty());
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, i64::MAX]));
        assert!(changed(Arc::clone(&ints), DataType::Float64).is_empty());
        let small: ArrayRef = Arc::new(Float32Array::from(vec![1.5]));
        assert!(changed(small, DataType::Float64).is_empty());
    }
}
