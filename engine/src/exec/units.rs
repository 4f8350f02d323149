//! What the window operators share: how a group column is made, the window
//! aggregate's parameters (the session aggregate takes them too), and
//! splitting a batch's rows by window unit.

use datafusion::common::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, SchemaRef};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use weir_sql::{WindowColumn, WindowSpec};

use super::groups::Evaluated;

/// Where each output group column comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupColumn {
    /// A window column, computed from the window.
    Window(WindowColumn),
    /// The `k`-th key.
    Key(usize),
}

/// The window aggregate's parameters, from the logical node.
pub struct WindowAggregateParams {
    /// The window.
    pub spec: WindowSpec,
    /// Group expressions, with names.
    pub group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
    /// Which group expressions are window columns.
    pub window_columns: Vec<(usize, WindowColumn)>,
    /// Aggregates.
    pub aggr: Vec<Arc<datafusion::physical_expr::aggregate::AggregateFunctionExpr>>,
    /// Their filters.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// Whether input rows carry slices.
    pub slices: bool,
    /// How far this aggregate's watermark trails the pipeline's, ms.
    pub lag_ms: i64,
    /// Output schema.
    pub schema: SchemaRef,
}

/// The rows of one unit in a batch.
#[derive(Debug, PartialEq)]
pub enum UnitRows {
    /// Rows `start..end`, all the unit has: a slice, no copy.
    Range(usize, usize),
    /// Rows in several runs, in order.
    Scattered(Vec<u32>),
}

impl UnitRows {
    /// The row indices.
    pub fn indices(self) -> Vec<u32> {
        match self {
            UnitRows::Range(a, b) => (a as u32..b as u32).collect(),
            UnitRows::Scattered(v) => v,
        }
    }
}

/// Rows of a batch split by unit, (end, start), in order of first row.
/// Rows mostly come in time order, so a unit's rows are mostly one run:
/// runs are found by comparing neighbours, and only a unit that comes back
/// after another one gets a list of indices.
pub fn split_runs(starts: &[i64], ends: &[i64]) -> Vec<((i64, i64), UnitRows)> {
    let mut parts: Vec<((i64, i64), UnitRows)> = Vec::new();
    let mut index: HashMap<(i64, i64), usize> = HashMap::new();
    let n = starts.len().min(ends.len());
    let mut i = 0;
    while i < n {
        let unit = (ends[i], starts[i]);
        let mut j = i + 1;
        while j < n && ends[j] == unit.0 && starts[j] == unit.1 {
            j += 1;
        }
        match index.entry(unit) {
            datafusion::common::hash_map::Entry::Vacant(v) => {
                v.insert(parts.len());
                parts.push((unit, UnitRows::Range(i, j)));
            }
            datafusion::common::hash_map::Entry::Occupied(o) => {
                let rows = &mut parts[*o.get()].1;
                let mut indices = std::mem::replace(rows, UnitRows::Scattered(Vec::new())).indices();
                indices.extend(i as u32..j as u32);
                *rows = UnitRows::Scattered(indices);
            }
        }
        i = j;
    }
    parts
}

/// Folds a batch's evaluated rows unit by unit (see [`split_runs`]):
/// `fold((end, start), rows)` for each unit of `starts` and `ends` (ms), in
/// order of first row, the rows a slice when they are one run, else
/// gathered.
pub fn fold_by_unit(
    starts: &ArrayRef,
    ends: &ArrayRef,
    evaluated: &Evaluated,
    mut fold: impl FnMut((i64, i64), &Evaluated) -> Result<()>,
) -> Result<()> {
    let n = evaluated.rows;
    let parts = split_runs(
        starts.as_primitive::<Int64Type>().values(),
        ends.as_primitive::<Int64Type>().values(),
    );
    for (unit, rows) in parts {
        match rows {
            UnitRows::Range(0, end) if end == n => fold(unit, evaluated)?,
            UnitRows::Range(start, end) => fold(unit, &evaluated.slice(start, end - start))?,
            UnitRows::Scattered(rows) => fold(unit, &evaluated.take(&UInt32Array::from(rows))?)?,
        }
    }
    Ok(())
}

/// Rows of a batch split by unit: (end, start) → row indices.
pub fn split_by_unit(starts: &[i64], ends: &[i64]) -> Vec<((i64, i64), Vec<u32>)> {
    split_runs(starts, ends)
        .into_iter()
        .map(|(unit, rows)| (unit, rows.indices()))
        .collect()
}

/// A timestamp column of `n` copies of `value`, typed as `field`.
pub fn constant_time(field: &Field, value: i64, n: usize) -> Result<ArrayRef> {
    let tz = match field.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    let arr: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![value; n]).with_timezone_opt(tz));
    if arr.data_type() == field.data_type() {
        Ok(arr)
    } else {
        Ok(cast(&arr, field.data_type())?)
    }
}

/// The rows of a batch at `idx`.
pub fn take_batch(batch: &RecordBatch, idx: &UInt32Array) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| Ok(datafusion::arrow::compute::take(c.as_ref(), idx, None)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// `batch` with its string and binary *view* columns copied into buffers
/// of their own. A view array taken or sliced from a larger one still
/// points into all of that one's data buffers; state that keeps a few rows
/// for a long time would otherwise keep every input batch they came from
/// alive (and concatenating many such arrays copies the buffer lists).
pub fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::DataType;
    if !batch
        .columns()
        .iter()
        .any(|c| matches!(c.data_type(), DataType::Utf8View | DataType::BinaryView))
    {
        return Ok(batch);
    }
    let columns: Vec<datafusion::arrow::array::ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as _,
            DataType::BinaryView => Arc::new(c.as_binary_view().gc()) as _,
            _ => Arc::clone(c),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs become ranges; a unit that comes back becomes indices; every
    /// row lands in its unit once, in order, as a plain grouping gives.
    #[test]
    fn rows_split_into_runs_and_units() {
        let starts = [0, 0, 10, 10, 0, 20, 20, 10];
        let ends = [10, 10, 20, 20, 10, 30, 30, 20];
        let parts = split_runs(&starts, &ends);
        assert_eq!(
            parts,
            vec![
                ((10, 0), UnitRows::Scattered(vec![0, 1, 4])),
                ((20, 10), UnitRows::Scattered(vec![2, 3, 7])),
                ((30, 20), UnitRows::Range(5, 7)),
            ]
        );
        assert_eq!(
            split_runs(&[5; 4], &[6; 4]),
            vec![((6, 5), UnitRows::Range(0, 4))]
        );
        assert!(split_runs(&[], &[]).is_empty());
        // Against a plain grouping, over pseudo-random units.
        let mut x = 7u64;
        let units: Vec<i64> = (0..1000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((x >> 60) % 5) as i64
            })
            .collect();
        let ends: Vec<i64> = units.iter().map(|u| u + 1).collect();
        let mut plain: Vec<((i64, i64), Vec<u32>)> = Vec::new();
        for (i, (&s, &e)) in units.iter().zip(&ends).enumerate() {
            match plain.iter_mut().find(|(u, _)| *u == (e, s)) {
                Some((_, rows)) => rows.push(i as u32),
                None => plain.push(((e, s), vec![i as u32])),
            }
        }
        assert_eq!(split_by_unit(&units, &ends), plain);
    }
}
