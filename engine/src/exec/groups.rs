//! Grouped partial aggregates, as DataFusion keeps them: the building block
//! of every stateful aggregate operator here.
//!
//! [`Groups`] interns group keys with DataFusion's `GroupValues` and keeps
//! one `GroupsAccumulator` per aggregate (the adapter over a plain
//! `Accumulator` when the function has no grouped form); without keys it
//! keeps one plain `Accumulator` per aggregate. Its state can be
//! taken out as Arrow arrays (`state()`: the intermediate form DataFusion
//! ships between partial and final aggregation) and merged back
//! (`merge_batch`), which is how operators checkpoint, restore, and combine
//! slices and sessions, for any aggregate, built-in or user-defined.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, new_empty_array};
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateMode, aggregate_expressions};

/// What an aggregate operator computes: its keys, aggregates and their
/// arguments. Fixed for the operator's life.
pub struct AggregateSpec {
    /// Key expressions (the group columns other than window columns), with
    /// their output names.
    pub keys: Vec<(Arc<dyn PhysicalExpr>, String)>,
    /// The aggregates.
    pub aggr: Vec<Arc<AggregateFunctionExpr>>,
    /// Per aggregate, the expressions whose values feed `update_batch`.
    pub args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Per aggregate, its `FILTER (WHERE ...)`.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The schema of the key columns.
    pub key_schema: SchemaRef,
    /// The state fields of each aggregate.
    pub state_fields: Vec<Vec<Field>>,
}

/// One input batch, evaluated: its keys, aggregate arguments and filters.
pub struct Evaluated {
    /// Key columns.
    pub keys: Vec<ArrayRef>,
    /// Per aggregate, its argument columns.
    pub args: Vec<Vec<ArrayRef>>,
    /// Per aggregate, its filter column.
    pub filters: Vec<Option<ArrayRef>>,
    /// Rows.
    pub rows: usize,
}

impl Evaluated {
    /// Rows `offset..offset + len` only (no copy).
    pub fn slice(&self, offset: usize, len: usize) -> Evaluated {
        let slice = |a: &ArrayRef| a.slice(offset, len);
        Evaluated {
            keys: self.keys.iter().map(slice).collect(),
            args: self.args.iter().map(|a| a.iter().map(slice).collect()).collect(),
            filters: self.filters.iter().map(|f| f.as_ref().map(slice)).collect(),
            rows: len,
        }
    }

    /// The rows at `idx` only. A column several aggregates read (MAX(price)
    /// and SUM(price)) is gathered once.
    pub fn take(&self, idx: &datafusion::arrow::array::UInt32Array) -> Result<Evaluated> {
        let done: std::cell::RefCell<Vec<(ArrayRef, ArrayRef)>> = Default::default();
        let take = |a: &ArrayRef| -> Result<ArrayRef> {
            if let Some((_, t)) = done.borrow().iter().find(|(from, _)| Arc::ptr_eq(from, a)) {
                return Ok(Arc::clone(t));
            }
            let t = datafusion::arrow::compute::take(a.as_ref(), idx, None)?;
            done.borrow_mut().push((Arc::clone(a), Arc::clone(&t)));
            Ok(t)
        };
        Ok(Evaluated {
            keys: self.keys.iter().map(take).collect::<Result<_>>()?,
            args: self
                .args
                .iter()
                .map(|a| a.iter().map(take).collect::<Result<_>>())
                .collect::<Result<_>>()?,
            filters: self
                .filters
                .iter()
                .map(|f| f.as_ref().map(take).transpose())
                .collect::<Result<_>>()?,
            rows: idx.len(),
        })
    }
}

impl AggregateSpec {
    /// The spec of `aggr` grouped by `keys`, over an input of `input` schema.
    pub fn try_new(
        keys: Vec<(Arc<dyn PhysicalExpr>, String)>,
        aggr: Vec<Arc<AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
        input: &Schema,
    ) -> Result<Self> {
        // NTH_VALUE(x, n ORDER BY y) counts on its input arriving sorted
        // (DataFusion sorts before it in a batch query); a stream's rows
        // arrive as they come, and the answer would be wrong.
        if let Some(a) = aggr
            .iter()
            .find(|a| !a.order_bys().is_empty() && a.fun().name().eq_ignore_ascii_case("nth_value"))
        {
            return datafusion::common::plan_err!(
                "NTH_VALUE(x, n ORDER BY ...) ({}) on a stream: it needs its input sorted, and a stream's rows \
                 arrive as they come; use FIRST_VALUE(x ORDER BY ...) or LAST_VALUE(x ORDER BY ...), or \
                 array_element(ARRAY_AGG(x ORDER BY ...), n)",
                a.name()
            );
        }
        let key_schema = Arc::new(Schema::new(
            keys.iter()
                .map(|(e, name)| Ok(Field::new(name, e.data_type(input)?, true)))
                .collect::<Result<Vec<_>>>()?,
        ));
        let args = aggregate_expressions(&aggr, &AggregateMode::Partial, 0)?;
        let state_fields = aggr
            .iter()
            .map(|a| Ok(a.state_fields()?.iter().map(|f| f.as_ref().clone()).collect()))
            .collect::<Result<_>>()?;
        Ok(Self {
            keys,
            aggr,
            args,
            filters,
            key_schema,
            state_fields,
        })
    }

    /// Evaluates keys, arguments and filters on a batch.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Evaluated> {
        let n = batch.num_rows();
        Ok(Evaluated {
            keys: self
                .keys
                .iter()
                .map(|(e, _)| e.evaluate(batch)?.into_array(n))
                .collect::<Result<_>>()?,
            args: self
                .args
                .iter()
                .map(|exprs| {
                    exprs
                        .iter()
                        .map(|e| e.evaluate(batch)?.into_array(n))
                        .collect::<Result<_>>()
                })
                .collect::<Result<_>>()?,
            filters: self
                .filters
                .iter()
                .map(|f| f.as_ref().map(|f| f.evaluate(batch)?.into_array(n)).transpose())
                .collect::<Result<_>>()?,
            rows: n,
        })
    }

    /// Number of state columns over all aggregates.
    pub fn state_width(&self) -> usize {
        self.state_fields.iter().map(Vec::len).sum()
    }

    /// Splits state columns (as laid out in a state file) per aggregate.
    pub fn split_states(&self, columns: &[ArrayRef]) -> Vec<Vec<ArrayRef>> {
        let mut at = 0;
        self.state_fields
            .iter()
            .map(|f| {
                let part = columns[at..at + f.len()].to_vec();
                at += f.len();
                part
            })
            .collect()
    }

    /// State file fields for the aggregates: `a<i>.<state field>`, nullable.
    pub fn state_file_fields(&self) -> Vec<Field> {
        self.state_fields
            .iter()
            .enumerate()
            .flat_map(|(i, fields)| {
                fields
                    .iter()
                    .map(move |f| Field::new(format!("a{i}.{}", f.name()), f.data_type().clone(), true))
            })
            .collect()
    }
}

/// The groups of one unit of state (a window, a slice, a session, or all of
/// an update aggregate's recent changes).
pub struct Groups {
    accs: Accumulators,
    num_groups: usize,
    scratch: Vec<usize>,
    /// The aggregates, to make fresh accumulators (keyless state taken out)
    /// and grouped ones for [`Groups::states_of_rows`].
    aggr: Vec<Arc<AggregateFunctionExpr>>,
}

/// How a unit's aggregates are kept.
enum Accumulators {
    /// Keyed: DataFusion's group interner and one grouped accumulator per
    /// aggregate, as its hash aggregate keeps them.
    Grouped {
        keys: Box<dyn GroupValues>,
        accs: Vec<Box<dyn GroupsAccumulator>>,
    },
    /// No keys (a window's one total, say): one plain accumulator per
    /// aggregate, as DataFusion's aggregate without GROUP BY keeps them.
    /// Their `update_batch` runs Arrow's vectorised kernels over the rows
    /// (SUM, MAX, COUNT's null count), where a grouped accumulator walks
    /// the rows one by one through a group index that is always 0: the
    /// largest cost of a keyless window's fold (`benches/tumble.sh`).
    Single(Vec<Box<dyn Accumulator>>),
}

fn grouped_accumulators(aggr: &[Arc<AggregateFunctionExpr>]) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
    aggr.iter()
        .map(|a| -> Result<Box<dyn GroupsAccumulator>> {
            if a.groups_accumulator_supported() {
                a.create_groups_accumulator()
            } else {
                let a = Arc::clone(a);
                Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                    a.create_accumulator()
                })))
            }
        })
        .collect()
}

fn plain_accumulators(aggr: &[Arc<AggregateFunctionExpr>]) -> Result<Vec<Box<dyn Accumulator>>> {
    aggr.iter().map(|a| a.create_accumulator()).collect()
}

/// `array` as `data_type` (a plain accumulator's scalar may come back in
/// a form other than the declared one, a dictionary or a view, say).
fn as_type(array: ArrayRef, data_type: &DataType) -> Result<ArrayRef> {
    if array.data_type() == data_type {
        Ok(array)
    } else {
        Ok(cast(&array, data_type)?)
    }
}

/// Rows of `args` where `filter` is true (null counts as false).
fn filtered(args: &[ArrayRef], filter: Option<&ArrayRef>) -> Result<Vec<ArrayRef>> {
    match filter {
        None => Ok(args.to_vec()),
        Some(f) => {
            let f = f.as_boolean();
            args.iter()
                .map(|a| Ok(datafusion::arrow::compute::filter(a.as_ref(), f)?))
                .collect()
        }
    }
}

impl Groups {
    /// Empty groups for a spec.
    pub fn new(spec: &AggregateSpec) -> Result<Self> {
        let accs = if spec.key_schema.fields().is_empty() {
            Accumulators::Single(plain_accumulators(&spec.aggr)?)
        } else {
            Accumulators::Grouped {
                keys: new_group_values(Arc::clone(&spec.key_schema), &GroupOrdering::None)?,
                accs: grouped_accumulators(&spec.aggr)?,
            }
        };
        Ok(Self {
            accs,
            num_groups: 0,
            scratch: Vec::new(),
            aggr: spec.aggr.clone(),
        })
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.num_groups
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.num_groups == 0
    }

    /// Without keys, makes the one group exist even with no input rows: the
    /// aggregate of an empty table is one row (COUNT 0, SUM NULL), as in
    /// batch SQL. `empty` is the evaluation of a zero-row input.
    pub fn ensure_keyless_group(&mut self, _empty: &Evaluated) -> Result<()> {
        if let Accumulators::Single(_) = self.accs {
            // A fresh plain accumulator is the aggregate of no rows.
            self.num_groups = 1;
        }
        Ok(())
    }

    /// Folds input rows in.
    pub fn update(&mut self, input: &Evaluated) -> Result<()> {
        if input.rows == 0 {
            return Ok(());
        }
        match &mut self.accs {
            Accumulators::Grouped { keys, accs } => {
                self.scratch.clear();
                keys.intern(&input.keys, &mut self.scratch)?;
                self.num_groups = keys.len();
                for (i, acc) in accs.iter_mut().enumerate() {
                    let filter = input.filters[i].as_ref().map(|f| f.as_boolean().clone());
                    acc.update_batch(&input.args[i], &self.scratch, filter.as_ref(), self.num_groups)?;
                }
            }
            Accumulators::Single(accs) => {
                self.num_groups = 1;
                for (i, acc) in accs.iter_mut().enumerate() {
                    acc.update_batch(&filtered(&input.args[i], input.filters[i].as_ref())?)?;
                }
            }
        }
        Ok(())
    }

    /// Each input row as a partial state of its own (DataFusion's
    /// `convert_to_state`: COUNT's 1, SUM's value, ...), without grouping.
    pub fn states_of_rows(&self, input: &Evaluated) -> Result<Vec<Vec<ArrayRef>>> {
        let convert = |i: usize, acc: &dyn GroupsAccumulator| {
            let filter = input.filters[i].as_ref().map(|f| f.as_boolean().clone());
            acc.convert_to_state(&input.args[i], filter.as_ref())
        };
        match &self.accs {
            Accumulators::Grouped { accs, .. } => accs
                .iter()
                .enumerate()
                .map(|(i, acc)| convert(i, acc.as_ref()))
                .collect(),
            Accumulators::Single(_) => grouped_accumulators(&self.aggr)?
                .iter()
                .enumerate()
                .map(|(i, acc)| convert(i, acc.as_ref()))
                .collect(),
        }
    }

    /// Merges partial states (one row per key) in; returns each row's group.
    pub fn merge(&mut self, keys: &[ArrayRef], states: &[Vec<ArrayRef>], rows: usize) -> Result<Vec<usize>> {
        if rows == 0 {
            return Ok(vec![]);
        }
        match &mut self.accs {
            Accumulators::Grouped { keys: values, accs } => {
                self.scratch.clear();
                values.intern(keys, &mut self.scratch)?;
                self.num_groups = values.len();
                for (acc, s) in accs.iter_mut().zip(states) {
                    acc.merge_batch(s, &self.scratch, self.num_groups)?;
                }
                Ok(self.scratch.clone())
            }
            Accumulators::Single(accs) => {
                self.num_groups = 1;
                for (acc, s) in accs.iter_mut().zip(states) {
                    acc.merge_batch(s)?;
                }
                Ok(vec![0; rows])
            }
        }
    }

    /// Takes the keys and partial states out, leaving the groups empty.
    pub fn take_state(&mut self) -> Result<(Vec<ArrayRef>, Vec<Vec<ArrayRef>>)> {
        let n = std::mem::take(&mut self.num_groups);
        match &mut self.accs {
            Accumulators::Grouped { keys, accs } => {
                let keys = keys.emit(EmitTo::All)?;
                let states = accs
                    .iter_mut()
                    .map(|a| a.state(EmitTo::All))
                    .collect::<Result<_>>()?;
                Ok((keys, states))
            }
            Accumulators::Single(accs) => {
                // Taking state may leave an accumulator spent (a DISTINCT
                // one hands its set over): start afresh.
                let mut spent = std::mem::replace(accs, plain_accumulators(&self.aggr)?);
                let states = spent
                    .iter_mut()
                    .zip(&self.aggr)
                    .map(|(acc, a)| {
                        let fields = a.state_fields()?;
                        let values = acc.state()?;
                        values
                            .into_iter()
                            .zip(fields.iter())
                            .map(|(v, f)| as_type(v.to_array_of_size(n)?, f.data_type()))
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<_>>()?;
                Ok((vec![], states))
            }
        }
    }

    /// Without keys, the one group's partial state, aggregate after
    /// aggregate (the columns of [`Groups::take_state`], as scalars); `None`
    /// when keyed. Consumes the accumulators: for an operator that is about
    /// to drop these groups and gathers many units' states into one batch
    /// (a thousand one-row windows made a thousand batches).
    pub fn into_single_state(mut self) -> Option<Result<Vec<ScalarValue>>> {
        let Accumulators::Single(accs) = &mut self.accs else {
            return None;
        };
        Some(accs.iter_mut().try_fold(Vec::new(), |mut all, acc| {
            all.extend(acc.state()?);
            Ok(all)
        }))
    }

    /// Without keys, the one group's final values, one per aggregate;
    /// `None` when keyed. As [`Groups::into_single_state`], for many units'
    /// results gathered into one batch.
    pub fn into_single_values(mut self) -> Option<Result<Vec<ScalarValue>>> {
        let Accumulators::Single(accs) = &mut self.accs else {
            return None;
        };
        Some(accs.iter_mut().map(|acc| acc.evaluate()).collect())
    }

    /// Takes the keys and final values out.
    pub fn evaluate(mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let n = self.num_groups;
        match &mut self.accs {
            Accumulators::Grouped { keys, accs } => {
                let keys = keys.emit(EmitTo::All)?;
                let values = accs
                    .iter_mut()
                    .map(|a| a.evaluate(EmitTo::All))
                    .collect::<Result<_>>()?;
                Ok((keys, values))
            }
            Accumulators::Single(accs) => {
                let values = accs
                    .iter_mut()
                    .zip(&self.aggr)
                    .map(|(acc, a)| as_type(acc.evaluate()?.to_array_of_size(n)?, a.field().data_type()))
                    .collect::<Result<_>>()?;
                Ok((vec![], values))
            }
        }
    }

    /// The state as rows `(keys..., states...)`, leaving these groups
    /// rebuilt from the same rows (taking state out of an accumulator
    /// consumes it). Group order is kept.
    pub fn snapshot(&mut self, spec: &AggregateSpec) -> Result<(Vec<ArrayRef>, Vec<Vec<ArrayRef>>)> {
        let n = self.num_groups;
        let (keys, states) = self.take_state()?;
        let mut fresh = Groups::new(spec)?;
        fresh.merge(&keys, &states, n)?;
        *self = fresh;
        Ok((keys, states))
    }
}

/// The final values of many units of a keyless aggregate at once, from
/// their partial state rows: row `i` of `states` (split per aggregate, as
/// [`AggregateSpec::split_states`] does) belongs to unit `groups[i]`, and
/// every unit `0..units` has at least one row. One grouped accumulator per
/// aggregate merges all the rows, as a keyed aggregate's groups are merged;
/// a plain accumulator set per unit cost fresh accumulators and a call per
/// aggregate for each of an epoch's thousand windows. Rows of a unit are
/// merged in their order, as one unit's plain accumulators would merge them.
pub fn keyless_values(
    spec: &AggregateSpec,
    states: &[Vec<ArrayRef>],
    groups: &[usize],
    units: usize,
) -> Result<Vec<ArrayRef>> {
    let mut accs = grouped_accumulators(&spec.aggr)?;
    accs.iter_mut()
        .zip(states)
        .zip(&spec.aggr)
        .map(|((acc, s), a)| {
            acc.merge_batch(s, groups, units)?;
            as_type(acc.evaluate(EmitTo::All)?, a.field().data_type())
        })
        .collect()
}

/// The partial states of many one-group units at once (sessions whose
/// keys all partition them): unit `u`'s earlier partial states (rows `i`
/// of `states`, split per aggregate, with `state_groups[i] == u`) merged,
/// then its new rows (rows `i` of `input` with `row_groups[i] == u`)
/// folded in, in that order. One grouped accumulator per aggregate does
/// every unit, as [`keyless_values`] does. Returns the state columns,
/// aggregate after aggregate (as a state file lays them out), one row per
/// unit.
///
/// Every unit must have a row, and the units with earlier states must be
/// the first ones (`0..m`, each with a state). DataFusion's accumulators
/// count on every group below a call's `total_num_groups` having come in
/// some call: given values without nulls and no filter, `NullState` takes
/// every group below the total as having seen a value (`SeenValues::All`),
/// so a unit with no state, counted in the merge's total, would come out
/// of a filtered aggregate that skipped all its rows as `MAX = i64::MIN`
/// rather than NULL.
pub fn fold_units(
    spec: &AggregateSpec,
    states: &[Vec<ArrayRef>],
    state_groups: &[usize],
    input: &Evaluated,
    row_groups: &[usize],
    units: usize,
) -> Result<Vec<ArrayRef>> {
    let mut out = Vec::with_capacity(spec.state_width());
    for (i, mut acc) in grouped_accumulators(&spec.aggr)?.into_iter().enumerate() {
        if let Some(m) = state_groups.iter().max() {
            acc.merge_batch(&states[i], state_groups, m + 1)?;
        }
        let filter = input.filters[i].as_ref().map(|f| f.as_boolean().clone());
        acc.update_batch(&input.args[i], row_groups, filter.as_ref(), units)?;
        for (a, f) in acc.state(EmitTo::All)?.into_iter().zip(&spec.state_fields[i]) {
            out.push(as_type(a, f.data_type())?);
        }
    }
    Ok(out)
}

/// One column of `data_type` from per-unit scalars (see
/// [`Groups::into_single_values`]). A plain accumulator's scalar may come
/// back in a form other than the declared one (a dictionary, a view, a
/// typeless null): such values are cast one by one, as
/// [`Groups::evaluate`] casts them.
pub fn column_of(values: Vec<ScalarValue>, data_type: &DataType) -> Result<ArrayRef> {
    if values.is_empty() {
        return Ok(new_empty_array(data_type));
    }
    if values.iter().all(|v| &v.data_type() == data_type) {
        return ScalarValue::iter_to_array(values);
    }
    let arrays = values
        .iter()
        .map(|v| as_type(v.to_array_of_size(1)?, data_type))
        .collect::<Result<Vec<_>>>()?;
    Ok(concat(&arrays.iter().map(|a| a.as_ref()).collect::<Vec<_>>())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Int32Type;
    use datafusion::functions_aggregate::min_max::max_udaf;
    use datafusion::functions_aggregate::sum::sum_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::col;

    fn sum_and_max(keyed: bool) -> AggregateSpec {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("price", DataType::Int64, true),
        ]));
        let agg = |f, name: &str| {
            Arc::new(
                AggregateExprBuilder::new(f, vec![col("price", &schema).unwrap()])
                    .schema(Arc::clone(&schema))
                    .alias(name)
                    .build()
                    .unwrap(),
            )
        };
        let keys = if keyed {
            vec![(col("k", &schema).unwrap(), "k".to_string())]
        } else {
            vec![]
        };
        AggregateSpec::try_new(
            keys,
            vec![agg(sum_udaf(), "s"), agg(max_udaf(), "m")],
            vec![None, None],
            &schema,
        )
        .unwrap()
    }

    fn rows(prices: Vec<Option<i64>>) -> RecordBatch {
        let n = prices.len();
        RecordBatch::try_from_iter(vec![
            ("k", Arc::new(StringArray::from(vec!["a"; n])) as ArrayRef),
            ("price", Arc::new(Int64Array::from(prices)) as ArrayRef),
        ])
        .unwrap()
    }

    /// Rows of `prices`, each passing the aggregates' filter or not.
    fn filtered_rows(spec: &AggregateSpec, prices: Vec<i64>, pass: Vec<bool>) -> Evaluated {
        let mut e = spec
            .evaluate(&rows(prices.into_iter().map(Some).collect()))
            .unwrap();
        let f: ArrayRef = Arc::new(datafusion::arrow::array::BooleanArray::from(pass));
        e.filters = vec![Some(Arc::clone(&f)), Some(f)];
        e
    }

    #[test]
    fn a_unit_whose_rows_the_filter_skips_folds_to_null() {
        // Unit 0 has an earlier state (SUM 5, MAX 5) and a row of 1; unit 1
        // has no state and one row the filter skips: its SUM and MAX are
        // NULL, not the accumulators' starting values.
        let spec = sum_and_max(false);
        let first = fold_units(
            &spec,
            &[],
            &[],
            &filtered_rows(&spec, vec![5], vec![true]),
            &[0],
            1,
        )
        .unwrap();
        let input = filtered_rows(&spec, vec![1, 7], vec![true, false]);
        let out = fold_units(&spec, &spec.split_states(&first), &[0], &input, &[0, 1], 2).unwrap();
        let values = keyless_values(&spec, &spec.split_states(&out), &[0, 1], 2).unwrap();
        let sum = values[0].as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let max = values[1].as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        assert_eq!((sum.value(0), max.value(0)), (6, 5));
        assert!(sum.is_null(1) && max.is_null(1), "{sum:?} {max:?}");
    }

    #[test]
    fn a_keyless_group_gives_its_values_and_state_as_scalars() {
        let spec = sum_and_max(false);
        let mut g = Groups::new(&spec).unwrap();
        g.update(
            &spec
                .evaluate(&rows(vec![Some(1), Some(5), None, Some(3)]))
                .unwrap(),
        )
        .unwrap();
        let values = g.into_single_values().unwrap().unwrap();
        assert_eq!(
            values,
            vec![ScalarValue::Int64(Some(9)), ScalarValue::Int64(Some(5))]
        );

        let mut g = Groups::new(&spec).unwrap();
        g.update(&spec.evaluate(&rows(vec![Some(2), Some(7)])).unwrap())
            .unwrap();
        // The same state `take_state` gives, as one scalar per state column.
        let mut same = Groups::new(&spec).unwrap();
        same.update(&spec.evaluate(&rows(vec![Some(2), Some(7)])).unwrap())
            .unwrap();
        let (_, states) = same.take_state().unwrap();
        let scalars = g.into_single_state().unwrap().unwrap();
        let flat: Vec<ScalarValue> = states
            .iter()
            .flatten()
            .map(|a| ScalarValue::try_from_array(a, 0).unwrap())
            .collect();
        assert_eq!(scalars, flat);
        assert_eq!(scalars.len(), spec.state_width());

        let keyed = sum_and_max(true);
        let mut g = Groups::new(&keyed).unwrap();
        g.update(&keyed.evaluate(&rows(vec![Some(1)])).unwrap()).unwrap();
        assert!(g.into_single_values().is_none());
        assert!(Groups::new(&keyed).unwrap().into_single_state().is_none());
    }

    #[test]
    fn keyless_units_merged_at_once_give_each_units_values() {
        let spec = sum_and_max(false);
        // Partial states of three units, as rows interleaved: unit 1 has
        // two rows, unit 0 one, unit 2 one (a NULL price only).
        let state = |prices: Vec<Option<i64>>| {
            let mut g = Groups::new(&spec).unwrap();
            g.update(&spec.evaluate(&rows(prices)).unwrap()).unwrap();
            g.take_state().unwrap().1
        };
        let parts = [
            (1, state(vec![Some(4), Some(9)])),
            (0, state(vec![Some(2)])),
            (1, state(vec![Some(1)])),
            (2, state(vec![None])),
        ];
        let states: Vec<Vec<ArrayRef>> = (0..spec.aggr.len())
            .map(|a| {
                (0..parts[0].1[a].len())
                    .map(|c| {
                        let arrays: Vec<&dyn Array> = parts.iter().map(|(_, s)| s[a][c].as_ref()).collect();
                        concat(&arrays).unwrap()
                    })
                    .collect()
            })
            .collect();
        let groups: Vec<usize> = parts.iter().map(|(g, _)| *g).collect();
        let values = keyless_values(&spec, &states, &groups, 3).unwrap();
        assert_eq!(
            values[0].as_primitive::<datafusion::arrow::datatypes::Int64Type>(),
            &Int64Array::from(vec![Some(2), Some(14), None])
        );
        assert_eq!(
            values[1].as_primitive::<datafusion::arrow::datatypes::Int64Type>(),
            &Int64Array::from(vec![Some(2), Some(9), None])
        );
    }

    #[test]
    fn a_column_of_scalars_takes_the_declared_type() {
        let a = column_of(
            vec![ScalarValue::Int64(Some(4)), ScalarValue::Int64(None)],
            &DataType::Int64,
        )
        .unwrap();
        assert_eq!(
            a.as_primitive::<datafusion::arrow::datatypes::Int64Type>(),
            &Int64Array::from(vec![Some(4), None])
        );

        // A value in another form than declared (a string for a dictionary
        // column, a typeless null) is cast, not refused.
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let a = column_of(
            vec![
                ScalarValue::Utf8(Some("x".into())),
                ScalarValue::Null,
                ScalarValue::Utf8(Some("y".into())),
            ],
            &dict,
        )
        .unwrap();
        assert_eq!(a.data_type(), &dict);
        assert_eq!(a.len(), 3);
        assert!(a.is_null(1));
        let strings = cast(&a, &DataType::Utf8).unwrap();
        assert_eq!(strings.as_string::<i32>().value(2), "y");
        let _ = a.as_dictionary::<Int32Type>();

        let empty = column_of(vec![], &DataType::Float64).unwrap();
        assert_eq!((empty.len(), empty.data_type()), (0, &DataType::Float64));
    }
}
