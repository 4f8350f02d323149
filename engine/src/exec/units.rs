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
#[derive(Clone)]
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

/// A batch's rows split by window unit: each unit's runs (maximal stretches
/// of neighbouring rows of that unit), in row order. Rows mostly come in
/// time order, so a unit's rows are mostly one run; out-of-order rows near
/// a window's edge break it into a few.
pub struct UnitRuns {
    /// `(end, start)` of each unit, in order of first row.
    units: Vec<(i64, i64)>,
    /// Each unit's first and last run (indices into `runs`).
    ends: Vec<(u32, u32)>,
    /// Runs: rows `start..end` and the unit's next run (`u32::MAX`: none).
    runs: Vec<(u32, u32, u32)>,
}

impl UnitRuns {
    /// The runs of `starts` and `ends` (ms).
    pub fn of(starts: &[i64], ends: &[i64]) -> Self {
        let mut out = UnitRuns {
            units: Vec::new(),
            ends: Vec::new(),
            runs: Vec::new(),
        };
        let mut index: HashMap<(i64, i64), u32> = HashMap::new();
        // The last two units seen: runs mostly alternate between a window
        // and its neighbour, found here without hashing.
        let mut recent: [(i64, i64, u32); 2] = [(i64::MIN, i64::MIN, u32::MAX); 2];
        let n = starts.len().min(ends.len());
        let mut i = 0;
        while i < n {
            let unit = (ends[i], starts[i]);
            let mut j = i + 1;
            while j < n && ends[j] == unit.0 && starts[j] == unit.1 {
                j += 1;
            }
            let u = if (recent[0].0, recent[0].1) == unit {
                recent[0].2
            } else if (recent[1].0, recent[1].1) == unit {
                recent.swap(0, 1);
                recent[0].2
            } else {
                let next = out.units.len() as u32;
                let u = *index.entry(unit).or_insert(next);
                if u == next {
                    out.units.push(unit);
                    out.ends.push((u32::MAX, u32::MAX));
                }
                recent[1] = recent[0];
                recent[0] = (unit.0, unit.1, u);
                u
            };
            let run = out.runs.len() as u32;
            out.runs.push((i as u32, j as u32, u32::MAX));
            let (first, last) = &mut out.ends[u as usize];
            if *first == u32::MAX {
                *first = run;
            } else {
                out.runs[*last as usize].2 = run;
            }
            *last = run;
            i = j;
        }
        out
    }

    /// The units with their runs, in order of first row.
    pub fn iter(&self) -> impl Iterator<Item = ((i64, i64), impl Iterator<Item = (usize, usize)> + '_)> + '_ {
        self.units.iter().zip(&self.ends).map(|(&unit, &(first, _))| {
            let runs = std::iter::successors(Some(first), |&r| {
                let next = self.runs[r as usize].2;
                (next != u32::MAX).then_some(next)
            })
            .map(|r| {
                let (a, b, _) = self.runs[r as usize];
                (a as usize, b as usize)
            });
            (unit, runs)
        })
    }
}

/// A run at least this long is folded as a slice of the batch (no copy)
/// even when its unit has other rows; shorter runs of a unit are gathered
/// and folded together. Folding costs a call per aggregate (and a key
/// lookup when keyed); gathering, a copy of each argument per row.
const SLICE_RUN: usize = 256;

/// Folds a batch's evaluated rows unit by unit (see [`UnitRuns`]):
/// `fold((end, start), rows)` for each unit of `starts` and `ends` (ms), in
/// order of first row, a unit's rows in their order: a long run as a slice,
/// short ones gathered.
pub fn fold_by_unit(
    starts: &ArrayRef,
    ends: &ArrayRef,
    evaluated: &Evaluated,
    mut fold: impl FnMut((i64, i64), &Evaluated) -> Result<()>,
) -> Result<()> {
    let n = evaluated.rows;
    let units = UnitRuns::of(
        starts.as_primitive::<Int64Type>().values(),
        ends.as_primitive::<Int64Type>().values(),
    );
    let mut gathered: Vec<u32> = Vec::new();
    for (unit, runs) in units.iter() {
        for (a, b) in runs {
            if b - a < SLICE_RUN {
                gathered.extend(a as u32..b as u32);
                continue;
            }
            if !gathered.is_empty() {
                fold(
                    unit,
                    &evaluated.take(&UInt32Array::from(std::mem::take(&mut gathered)))?,
                )?;
            }
            if a == 0 && b == n {
                fold(unit, evaluated)?;
            } else {
                fold(unit, &evaluated.slice(a, b - a))?;
            }
        }
        if !gathered.is_empty() {
            fold(
                unit,
                &evaluated.take(&UInt32Array::from(std::mem::take(&mut gathered)))?,
            )?;
        }
    }
    Ok(())
}

/// A state delta's deleted window (or slice) units: their keys, the first
/// two columns of `state_schema` (`window_start`, `window_end`), from
/// units held as `(end, start)`. None when nothing was removed.
pub fn unit_deletes(
    state_schema: &SchemaRef,
    removed: impl IntoIterator<Item = (i64, i64)>,
) -> Result<Vec<RecordBatch>> {
    let (ends, starts): (Vec<i64>, Vec<i64>) = removed.into_iter().unzip();
    if ends.is_empty() {
        return Ok(vec![]);
    }
    Ok(vec![RecordBatch::try_new(
        Arc::new(state_schema.project(&[0, 1])?),
        vec![
            Arc::new(datafusion::arrow::array::Int64Array::from(starts)),
            Arc::new(datafusion::arrow::array::Int64Array::from(ends)),
        ],
    )?])
}

/// Rows of a batch split by unit: (end, start) → row indices, in order of
/// first row.
pub fn split_by_unit(starts: &[i64], ends: &[i64]) -> Vec<((i64, i64), Vec<u32>)> {
    UnitRuns::of(starts, ends)
        .iter()
        .map(|(unit, runs)| (unit, runs.flat_map(|(a, b)| a as u32..b as u32).collect()))
        .collect()
}

/// A timestamp column of `n` copies of `value`, typed as `field`.
pub fn constant_time(field: &Field, value: i64, n: usize) -> Result<ArrayRef> {
    time_column(field, vec![value; n])
}

/// A timestamp column of `millis`, typed as `field`.
pub fn time_column(field: &Field, millis: Vec<i64>) -> Result<ArrayRef> {
    let tz = match field.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    let arr: ArrayRef = Arc::new(TimestampMillisecondArray::from(millis).with_timezone_opt(tz));
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

    /// Each unit's runs, in row order; every row lands in its unit once,
    /// in order, as a plain grouping gives.
    #[test]
    fn rows_split_into_runs_and_units() {
        let starts = [0, 0, 10, 10, 0, 20, 20, 10];
        let ends = [10, 10, 20, 20, 10, 30, 30, 20];
        type Runs = Vec<((i64, i64), Vec<(usize, usize)>)>;
        let runs: Runs = UnitRuns::of(&starts, &ends)
            .iter()
            .map(|(u, r)| (u, r.collect()))
            .collect();
        assert_eq!(
            runs,
            vec![
                ((10, 0), vec![(0, 2), (4, 5)]),
                ((20, 10), vec![(2, 4), (7, 8)]),
                ((30, 20), vec![(5, 7)]),
            ]
        );
        assert_eq!(split_by_unit(&[5; 4], &[6; 4]), vec![((6, 5), vec![0, 1, 2, 3])]);
        assert!(split_by_unit(&[], &[]).is_empty());
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

    /// Folding by unit hands each unit all its rows once, in row order,
    /// whether a run is sliced (long) or gathered (short).
    #[test]
    fn each_unit_is_folded_its_rows_in_order() {
        use datafusion::arrow::array::Int64Array;
        // Units 0..3 in runs of pseudo-random lengths, some long.
        let mut x = 11u64;
        let mut units = Vec::new();
        while units.len() < 5000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let unit = ((x >> 60) % 3) as i64;
            let len = if (x >> 40).is_multiple_of(4) {
                300 + (x >> 20) % 200
            } else {
                1 + (x >> 20) % 20
            };
            units.extend(std::iter::repeat_n(unit, len as usize));
        }
        let n = units.len();
        let starts: ArrayRef = Arc::new(Int64Array::from(units.clone()));
        let ends: ArrayRef = Arc::new(Int64Array::from(units.iter().map(|u| u + 1).collect::<Vec<_>>()));
        let rows: ArrayRef = Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>()));
        let evaluated = Evaluated {
            keys: vec![],
            args: vec![vec![Arc::clone(&rows)], vec![rows]],
            filters: vec![None, None],
            rows: n,
        };
        let mut folded: Vec<((i64, i64), Vec<i64>)> = Vec::new();
        let mut calls = 0;
        fold_by_unit(&starts, &ends, &evaluated, |unit, input| {
            calls += 1;
            assert_eq!(input.args[0][0].len(), input.rows);
            let got = input.args[1][0].as_primitive::<Int64Type>().values().to_vec();
            assert_eq!(
                input.args[0][0].as_primitive::<Int64Type>().values().to_vec(),
                got
            );
            match folded.iter_mut().find(|(u, _)| *u == unit) {
                Some((_, rows)) => rows.extend(got),
                None => folded.push((unit, got)),
            }
            Ok(())
        })
        .unwrap();
        let mut plain: Vec<((i64, i64), Vec<i64>)> = Vec::new();
        for (i, &u) in units.iter().enumerate() {
            match plain.iter_mut().find(|(k, _)| *k == (u + 1, u)) {
                Some((_, rows)) => rows.push(i as i64),
                None => plain.push(((u + 1, u), vec![i as i64])),
            }
        }
        assert_eq!(folded, plain);
        assert!(calls > 3, "long runs are folded on their own");
    }
}
