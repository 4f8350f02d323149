//! `UpdateAggregateExec`: an aggregate without a window, in update mode.
//!
//! Each epoch it aggregates its input into a fresh [`Groups`] (the *delta*),
//! merges each changed group's stored partial state with the delta, and
//! emits the changed groups as a changelog, as Flink names the kinds:
//!
//! ```text
//!   group first seen (and passes HAVING)        +I new
//!   group changed                               -U old, +U new   (nothing if the values are equal)
//!   group no longer passes HAVING, or expired   -D old
//! ```
//!
//! Work per epoch is proportional to the groups that changed, not to all
//! groups. Stored state is a list of *chunks*, Arrow batches appended once
//! per epoch with the changed groups' new versions, and an index from each
//! group's key (Arrow row format) to its latest version. Superseded rows are
//! marked dead and chunks are compacted when dead rows outnumber live ones.
//!
//! With a TTL (`state.ttl`), a group not updated for that long is deleted
//! with `-D`. Time here is processing time, taken once per epoch and written
//! to the offsets log, so a replayed epoch expires the same groups.
//!
//! State file (one row per group):
//! `<key columns>, a<i>.<state field>..., v<i> (last emitted values)..., __visible, __updated_ms`
//!
//! ## Distinct values (`COUNT/SUM/AVG(DISTINCT x)`)
//!
//! DataFusion's distinct accumulators keep each group's values as one list,
//! so merging an epoch into a group, evaluating it and checkpointing it
//! would cost the group's whole set of values every epoch it changes: a
//! day-long `COUNT(DISTINCT bidder)` gets slower every epoch. Instead, as
//! Flink does, each group's distinct values are kept here, keyed, with one
//! bit per aggregate over the same argument (`COUNT(DISTINCT bidder)` with
//! and without a `FILTER` share one set of values): bit `b` says a row with
//! that value passed aggregate `b`'s filter. The aggregate itself becomes
//! the plain function fed only the rows whose value is new to it in the
//! group (`COUNT(DISTINCT x) = COUNT(x)` over each value's first row), so
//! its state is a count or a sum, and an epoch costs its new values only.
//! The input of an update aggregate never retracts (a changelog input is
//! rewritten to signed sums, which refuse DISTINCT), so a value, once seen,
//! stays counted while its group lives.
//!
//! The values are a state table of their own (the operator's side table,
//! `<id>-values`), one row per (group, argument, value), each value in the
//! `__value<d>` column of its argument, typed:
//! `<key columns>, __distinct (the argument's number), __value0.., __filters`.
//! A value is a unit of its own, so a delta carries only the values that
//! are new or newly seen by another filter, and a group deleted by the TTL
//! deletes its values.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Int32Array, Int64Array, RecordBatch,
    StringArray, UInt64Array, new_null_array,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, interleave_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef, UInt64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};

use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::new_group_values;
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::distinct::{Changes, MAX_MEMBERS, SeenValues};
use super::groups::{AggregateSpec, Evaluated, Groups};
use super::keys::{GroupIndex, KeyRows};
use super::operator::{EpochOperator, OperatorExec};
use super::partial_agg::{PartialSpec, PartialWindowAggExec};
use super::shard::{Shards, route, shard_count};
use crate::epoch::EpochInput;
use crate::exec::{StateChange, StateTable, StatefulOperator};

/// The changelog kinds, as Flink prints them.
pub const INSERT: &str = "+I";
/// Update, the row before.
pub const UPDATE_BEFORE: &str = "-U";
/// Update, the row after.
pub const UPDATE_AFTER: &str = "+U";
/// Delete.
pub const DELETE: &str = "-D";

/// An update-mode aggregate over its input.
pub type UpdateAggregateExec = OperatorExec<UpdateState>;

/// Configuration and state, shared by every copy of the plan node.
pub struct UpdateState {
    agg: AggregateSpec,
    /// [`crate::compat::signature::aggregate_signature`] of the aggregate as
    /// planned (`agg` may read computed keys from a projection instead).
    agg_signature: String,
    having: Option<Arc<dyn PhysicalExpr>>,
    ttl_ms: Option<i64>,
    keys: KeyRows,
    values: KeyRows,
    /// Keys then values: the aggregate's own output.
    agg_schema: SchemaRef,
    /// Keys, states, values, `__visible`, `__updated_ms`.
    chunk_schema: SchemaRef,
    /// `agg_schema` then the operation column.
    schema: SchemaRef,
    /// One part of the state per partition, split by the keys' hash.
    shards: Shards<Inner>,
    /// The input's schema.
    input_schema: SchemaRef,
    /// With more than one thread, the input is a [`PartialWindowAggExec`]'s
    /// partial states (keys, states), merged in, not rows; these are its key
    /// columns.
    partial_keys: Option<Vec<Arc<dyn PhysicalExpr>>>,
    /// The arguments of `DISTINCT` aggregates whose values are kept here
    /// (see the module's comment); empty when there are none.
    distinct: Vec<DistinctArg>,
    /// The side table's schema: keys, `__distinct`, `__value<d>`...,
    /// `__filters`.
    values_schema: SchemaRef,
    /// What it was built from.
    params: UpdateAggregateParams,
    /// Its thread count.
    threads: usize,
}

/// One argument of `COUNT/SUM/AVG(DISTINCT arg)` and the aggregates over it.
struct DistinctArg {
    /// The argument, as the plan prints it.
    expr: String,
    data_type: DataType,
    /// Values compare by their bytes in Arrow's row format.
    rows: KeyRows,
    /// The aggregates over it (their indices); `members[b]` is bit `b` of a
    /// value's flags, so at most [`MAX_MEMBERS`].
    members: Vec<usize>,
}

/// Splits `COUNT/SUM/AVG(DISTINCT x)` aggregates into the plain function
/// (fed each value's first row in its group) and the argument whose values
/// this operator keeps. Other aggregates, DISTINCT or not, stay as they are.
fn split_distinct(
    aggr: Vec<Arc<AggregateFunctionExpr>>,
    input: &SchemaRef,
) -> Result<(Vec<Arc<AggregateFunctionExpr>>, Vec<DistinctArg>)> {
    let mut out = Vec::with_capacity(aggr.len());
    let mut args: Vec<DistinctArg> = Vec::new();
    for (i, a) in aggr.into_iter().enumerate() {
        let exprs = a.expressions();
        let plain_form = a.is_distinct()
            && exprs.len() == 1
            && a.order_bys().is_empty()
            && matches!(a.fun().name(), "count" | "sum" | "avg");
        if !plain_form {
            out.push(a);
            continue;
        }
        let expr = exprs[0].to_string();
        match args
            .iter_mut()
            .find(|d| d.expr == expr && d.members.len() < MAX_MEMBERS)
        {
            Some(d) => d.members.push(i),
            None => {
                let data_type = exprs[0].data_type(input)?;
                args.push(DistinctArg {
                    expr,
                    rows: KeyRows::new([data_type.clone()])?,
                    data_type,
                    members: vec![i],
                });
            }
        }
        let mut plain = AggregateExprBuilder::new(Arc::new(a.fun().clone()), exprs)
            .schema(Arc::clone(input))
            .alias(a.name())
            .with_ignore_nulls(a.ignore_nulls());
        if let Some(h) = a.human_display() {
            plain = plain.human_display(h);
        }
        out.push(Arc::new(plain.build()?));
    }
    Ok((out, args))
}

struct Chunk {
    batch: RecordBatch,
    alive: Vec<bool>,
    live: usize,
    min_updated: i64,
}

struct Inner {
    /// Each live group's key to its row (chunk, row).
    index: GroupIndex<(usize, usize)>,
    chunks: Vec<Chunk>,
    dead: usize,
    /// Groups' new versions since the last checkpoint (a delta's upserts).
    pending_upserts: Vec<RecordBatch>,
    /// Keys of groups deleted since the last checkpoint.
    pending_deletes: Vec<RecordBatch>,
    /// The groups' distinct values (empty without DISTINCT aggregates).
    seen: SeenValues,
}

impl Inner {
    fn new(distinct_args: usize) -> Self {
        Self {
            index: GroupIndex::default(),
            chunks: Vec::new(),
            dead: 0,
            pending_upserts: Vec::new(),
            pending_deletes: Vec::new(),
            seen: SeenValues::new(distinct_args),
        }
    }
}

/// What an update aggregate is built from: how it crosses to a cluster
/// ([`UpdateState::config`]), never its state.
#[derive(Clone, Debug)]
pub struct UpdateAggregateParams {
    /// The keys, over the rows the operator reads (after the projection of
    /// computed keys that [`UpdateAggregateExec::try_new`] may add).
    pub group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
    /// The aggregates as planned (`DISTINCT` ones not yet split).
    pub aggr: Vec<Arc<AggregateFunctionExpr>>,
    /// Each aggregate's `FILTER`.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// `HAVING`, over the aggregate's output (keys then values).
    pub having: Option<Arc<dyn PhysicalExpr>>,
    /// `state.ttl`.
    pub ttl_ms: Option<i64>,
    /// The output: keys, values, then the operation column.
    pub schema: SchemaRef,
    /// [`crate::compat::signature::aggregate_signature`] of the aggregate
    /// as planned.
    pub signature: String,
}

impl OperatorExec<UpdateState> {
    /// Builds the operator. `having` is over `agg_schema`, the aggregate's
    /// output (keys then values); `schema` adds the operation column. With
    /// keys, its state is split into `threads` shards.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
        aggr: Vec<Arc<AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
        having: Option<Arc<dyn PhysicalExpr>>,
        ttl_ms: Option<i64>,
        schema: SchemaRef,
        threads: usize,
    ) -> Result<Self> {
        let in_schema = input.schema();
        let (split, distinct) = split_distinct(aggr.clone(), &in_schema)?;
        let agg = AggregateSpec::try_new(group_by.clone(), split, filters.clone(), &in_schema)?;
        // What the state means, from the keys as written (before the
        // projection below turns computed keys into columns).
        let signature = crate::compat::signature::aggregate_signature(&agg);
        // With distinct values kept, rows (not partial states) go to the
        // shards, hashed on the keys, and the shard evaluates its keys again:
        // a computed key (`to_char(date_time, '%Y-%m-%d')`, half of q15's
        // CPU) would run twice a row. A projection computes such keys once,
        // as columns after the input's own, and everything reads those.
        let computed =
            !distinct.is_empty() && group_by.iter().any(|(e, _)| e.downcast_ref::<Column>().is_none());
        let (input, group_by) = if computed {
            let mut exprs: Vec<ProjectionExpr> = in_schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| ProjectionExpr {
                    expr: Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>,
                    alias: f.name().clone(),
                })
                .collect();
            let mut keys = Vec::with_capacity(group_by.len());
            for (e, name) in &group_by {
                if e.downcast_ref::<Column>().is_some() {
                    keys.push((Arc::clone(e), name.clone()));
                } else {
                    let at = exprs.len();
                    keys.push((
                        Arc::new(Column::new(name, at)) as Arc<dyn PhysicalExpr>,
                        name.clone(),
                    ));
                    exprs.push(ProjectionExpr {
                        expr: Arc::clone(e),
                        alias: name.clone(),
                    });
                }
            }
            let projected: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(exprs, input)?);
            (projected, keys)
        } else {
            (input, group_by)
        };
        let in_schema = input.schema();
        let params = UpdateAggregateParams {
            group_by,
            aggr,
            filters,
            having,
            ttl_ms,
            schema,
            signature,
        };
        let (state, partial) = UpdateState::build(params, threads, in_schema)?;
        let input: Arc<dyn ExecutionPlan> = match partial {
            Some(spec) => Arc::new(PartialWindowAggExec::new(input, Arc::new(spec))),
            None => input,
        };
        Ok(Self::new(input, Arc::new(state)))
    }

    /// The operator [`Self::try_new`] builds, over an `input` that already
    /// holds what `try_new` adds (the projection of computed keys, the
    /// partial aggregate): a plan decoded from its wire form. `in_schema`
    /// is the schema of the rows `p`'s expressions read
    /// ([`UpdateState::config`]).
    pub fn try_new_over(
        input: Arc<dyn ExecutionPlan>,
        p: UpdateAggregateParams,
        threads: usize,
        in_schema: SchemaRef,
    ) -> Result<Self> {
        let (state, _) = UpdateState::build(p, threads, in_schema)?;
        Ok(Self::new(input, Arc::new(state)))
    }
}

impl UpdateState {
    /// What the operator was built from: its parameters, its thread count
    /// and the schema of the rows their expressions read.
    pub fn config(&self) -> (&UpdateAggregateParams, usize, &SchemaRef) {
        (&self.params, self.threads, &self.input_schema)
    }

    /// The state of an operator over rows of `in_schema`, and the partial
    /// aggregate to put under it (more than one thread, no distinct values
    /// kept).
    fn build(
        p: UpdateAggregateParams,
        threads: usize,
        in_schema: SchemaRef,
    ) -> Result<(Self, Option<PartialSpec>)> {
        let params = p.clone();
        let UpdateAggregateParams {
            group_by,
            aggr,
            filters,
            having,
            ttl_ms,
            schema,
            signature: agg_signature,
        } = p;
        let (aggr, distinct) = split_distinct(aggr, &in_schema)?;
        let agg = AggregateSpec::try_new(group_by, aggr, filters, &in_schema)?;
        // With more than one thread, each input partition aggregates its
        // rows of the epoch first, and only their states cross to the
        // shards (one shard without keys), as for window aggregates. Not
        // with distinct values kept: a value is new or not to its group's
        // shard, so the rows go there.
        let (partial, partial_keys) = if threads > 1 && distinct.is_empty() {
            let spec = PartialSpec::keys_only(&agg, &in_schema)?;
            let keys = spec.key_columns();
            (Some(spec), Some(keys))
        } else {
            (None, None)
        };
        let n_keys = agg.key_schema.fields().len();
        // The output: keys, one value per aggregate, the operation (a plan
        // decoded from bytes is checked, not trusted).
        if schema.fields().len() != n_keys + agg.aggr.len() + 1 {
            return Err(DataFusionError::Internal(format!(
                "an update aggregate of {n_keys} keys and {} aggregates whose output has {} columns",
                agg.aggr.len(),
                schema.fields().len()
            )));
        }
        let agg_schema = Arc::new(Schema::new(
            schema.fields()[..schema.fields().len() - 1]
                .iter()
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>(),
        ));
        let keys = KeyRows::new(agg.key_schema.fields().iter().map(|f| f.data_type().clone()))?;
        let values = KeyRows::new(
            agg_schema.fields()[n_keys..]
                .iter()
                .map(|f| f.data_type().clone()),
        )?;
        let mut fields: Vec<Field> = agg
            .key_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(agg.state_file_fields());
        fields.extend(
            agg_schema.fields()[n_keys..]
                .iter()
                .enumerate()
                .map(|(i, f)| Field::new(format!("v{i}"), f.data_type().clone(), true)),
        );
        fields.push(Field::new("__visible", DataType::Boolean, false));
        fields.push(Field::new("__updated_ms", DataType::Int64, false));
        let chunk_schema = Arc::new(Schema::new(fields));
        let values_schema = {
            let mut fields: Vec<Field> = chunk_schema.fields()[..n_keys]
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new("__distinct", DataType::Int32, false));
            fields.extend(
                distinct
                    .iter()
                    .enumerate()
                    .map(|(d, a)| Field::new(format!("__value{d}"), a.data_type.clone(), true)),
            );
            fields.push(Field::new("__filters", DataType::UInt64, false));
            Arc::new(Schema::new(fields))
        };
        let state = UpdateState {
            agg,
            agg_signature,
            having,
            ttl_ms,
            keys,
            values,
            agg_schema,
            chunk_schema,
            schema,
            shards: Shards::new(shard_count(threads, n_keys), || Inner::new(distinct.len())),
            input_schema: in_schema,
            params,
            threads,
            partial_keys,
            distinct,
            values_schema,
        };
        Ok((state, partial))
    }
}

impl EpochOperator for UpdateState {
    const NAME: &'static str = "UpdateAggregateExec";
    /// This epoch's changes, aggregated apart, then applied at once.
    type Acc = UpdateAcc;

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn partitions(&self) -> usize {
        self.shards.count()
    }

    fn shard_keys(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        match &self.partial_keys {
            Some(keys) => keys.clone(),
            None => self.agg.keys.iter().map(|(e, _)| Arc::clone(e)).collect(),
        }
    }

    /// The expressions over the input (HAVING is over the output).
    fn expressions(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        if let Some(keys) = &self.partial_keys {
            return keys.clone();
        }
        self.agg
            .keys
            .iter()
            .map(|(e, _)| e)
            .chain(self.agg.args.iter().flatten())
            .cloned()
            .collect()
    }

    fn fmt_node(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = self.agg.keys.iter().map(|(_, n)| n.as_str()).collect();
        let aggs: Vec<&str> = self.agg.aggr.iter().map(|a| a.name()).collect();
        write!(f, "gby=[{}], aggr=[{}]", keys.join(", "), aggs.join(", "))?;
        if let Some(h) = &self.having {
            write!(f, ", having={h}")?;
        }
        if let Some(t) = self.ttl_ms {
            write!(f, ", ttl={t}ms")?;
        }
        if !self.distinct.is_empty() {
            let args: Vec<&str> = self.distinct.iter().map(|d| d.expr.as_str()).collect();
            write!(f, ", distinct values kept=[{}]", args.join(", "))?;
        }
        write!(f, ", emit=changelog")
    }

    fn start(&self, partition: usize, epoch: &EpochInput) -> Result<UpdateAcc> {
        // `state.ttl`: groups not updated for that long are gone before the
        // epoch's rows come in, so a row of such a group starts it afresh
        // (as Flink's state TTL never returns expired state). Before the
        // rows are folded: a group's DISTINCT values go with it.
        let mut expired = None;
        if let Some(ttl) = self.ttl_ms {
            let mut inner = self.shards.lock(partition);
            let rows = self.expire(&mut inner, epoch.processing_time_ms.saturating_sub(ttl))?;
            if rows.num_rows() > 0 {
                expired = Some(rows);
            }
        }
        Ok(UpdateAcc {
            delta: Groups::new(&self.agg)?,
            expired,
        })
    }

    fn fold(&self, partition: usize, acc: &mut UpdateAcc, batch: &RecordBatch) -> Result<()> {
        let delta = &mut acc.delta;
        if self.partial_keys.is_some() {
            // Partial states: keys, then each aggregate's state columns.
            if batch.num_rows() == 0 {
                return Ok(());
            }
            let nk = self.n_keys();
            let states = self.agg.split_states(&batch.columns()[nk..]);
            delta.merge(&batch.columns()[..nk], &states, batch.num_rows())?;
            return Ok(());
        }
        let mut input = self.agg.evaluate(batch)?;
        if !self.distinct.is_empty() && input.rows > 0 {
            self.first_seen(&mut self.shards.lock(partition).seen, &mut input)?;
        }
        delta.update(&input)
    }

    fn finish(&self, partition: usize, acc: UpdateAcc, epoch: &EpochInput) -> Result<RecordBatch> {
        let UpdateAcc { mut delta, expired } = acc;
        // The aggregate of a table without keys is one row even before (or
        // without) any input, as in batch SQL: COUNT(*) 0 over no rows.
        if self.n_keys() == 0 && self.ttl_ms.is_none() && self.shards.lock(partition).index.is_empty() {
            delta.ensure_keyless_group(
                &self
                    .agg
                    .evaluate(&RecordBatch::new_empty(Arc::clone(&self.input_schema)))?,
            )?;
        }
        let out = self.apply(partition, delta, epoch.processing_time_ms)?;
        // The expired groups' `-D` rows first: a group that comes back in
        // this epoch is then `+I` again.
        match expired {
            Some(gone) => Ok(concat_batches(&self.schema, [&gone, &out])?),
            None => Ok(out),
        }
    }
}

/// An update aggregate's accumulator for one epoch.
pub struct UpdateAcc {
    /// The changes of the groups the epoch's rows touched.
    delta: Groups,
    /// The `-D` rows of the groups `state.ttl` expired before the epoch.
    expired: Option<RecordBatch>,
}

impl UpdateState {
    fn n_keys(&self) -> usize {
        self.agg.key_schema.fields().len()
    }

    fn n_values(&self) -> usize {
        self.agg_schema.fields().len() - self.n_keys()
    }

    /// The aggregate's output rows (keys, values) of chunk-shaped rows.
    fn output_of(&self, chunk_rows: &RecordBatch) -> Result<RecordBatch> {
        let nk = self.n_keys();
        let values_at = nk + self.agg.state_width();
        let mut columns: Vec<ArrayRef> = chunk_rows.columns()[..nk].to_vec();
        columns.extend(
            chunk_rows.columns()[values_at..values_at + self.n_values()]
                .iter()
                .cloned(),
        );
        Ok(RecordBatch::try_new(Arc::clone(&self.agg_schema), columns)?)
    }

    fn visible(&self, out: &RecordBatch) -> Result<BooleanArray> {
        match &self.having {
            None => Ok(BooleanArray::from(vec![true; out.num_rows()])),
            Some(h) => {
                let v = h.evaluate(out)?.into_array(out.num_rows())?;
                let b = v.as_boolean();
                // NULL does not pass HAVING.
                Ok(b.iter().map(|x| Some(x == Some(true))).collect())
            }
        }
    }

    /// Records the distinct values of `input` in the groups' sets, and sets
    /// each `DISTINCT` aggregate's filter to the rows whose value is new to
    /// it (in that group, with its filter passing), so that the plain
    /// function it became counts or sums each value once.
    fn first_seen(&self, seen: &mut SeenValues, input: &mut Evaluated) -> Result<()> {
        let n = input.rows;
        // Each row's group, as a slot of `seen`: the batch's groups are
        // interned first (DataFusion's vectorized group table), so a group's
        // key is converted and looked up once per batch, not once per row.
        let (ids, slots) = if self.n_keys() == 0 {
            let key = self.keys.convert(&[], 1)?;
            (vec![0; n], vec![seen.slot(key.row(0).as_ref())])
        } else {
            let mut table = new_group_values(Arc::clone(&self.agg.key_schema), &GroupOrdering::None)?;
            let mut ids = Vec::with_capacity(n);
            table.intern(&input.keys, &mut ids)?;
            let groups = table.len();
            let keys = self.keys.convert(&table.emit(EmitTo::All)?, groups)?;
            let slots = (0..groups).map(|g| seen.slot(keys.row(g).as_ref())).collect();
            (ids, slots)
        };
        for (d, arg) in self.distinct.iter().enumerate() {
            let values = Arc::clone(&input.args[arg.members[0]][0]);
            let value_rows = arg.rows.convert(std::slice::from_ref(&values), n)?;
            let filters: Vec<Option<BooleanArray>> = arg
                .members
                .iter()
                .map(|&m| input.filters[m].as_ref().map(|f| f.as_boolean().clone()))
                .collect();
            let mut firsts: Vec<BooleanBufferBuilder> = arg
                .members
                .iter()
                .map(|_| {
                    let mut b = BooleanBufferBuilder::new(n);
                    b.append_n(n, false);
                    b
                })
                .collect();
            for r in 0..n {
                // NULL is no value: COUNT, SUM and AVG skip it.
                if values.is_null(r) {
                    continue;
                }
                let mut wanted = 0u64;
                for (b, f) in filters.iter().enumerate() {
                    if f.as_ref().is_none_or(|f| f.is_valid(r) && f.value(r)) {
                        wanted |= 1 << b;
                    }
                }
                if wanted == 0 {
                    continue;
                }
                let new = seen.see(slots[ids[r]], d, value_rows.row(r).as_ref(), wanted);
                if new == 0 {
                    continue;
                }
                for (b, first) in firsts.iter_mut().enumerate() {
                    if new & (1 << b) != 0 {
                        first.set_bit(r, true);
                    }
                }
            }
            for (&m, mut first) in arg.members.iter().zip(firsts) {
                input.filters[m] = Some(Arc::new(BooleanArray::new(first.finish(), None)));
            }
        }
        Ok(())
    }

    /// State-file rows of distinct values (deleted ones' flags are unused).
    fn value_rows(&self, changes: &Changes) -> Result<Vec<RecordBatch>> {
        let nk = self.n_keys();
        // (Arrow's row format gives a dictionary column back as its values:
        // cast to the state's types.)
        let fit = |cols: Vec<ArrayRef>, fields: &[Arc<Field>]| -> Result<Vec<ArrayRef>> {
            cols.iter()
                .zip(fields)
                .map(|(c, f)| match c.data_type() == f.data_type() {
                    true => Ok(Arc::clone(c)),
                    false => Ok(datafusion::arrow::compute::cast(c, f.data_type())?),
                })
                .collect()
        };
        let fields = self.values_schema.fields();
        let key_columns = fit(
            self.keys.columns_of(changes.keys.iter().map(Vec::as_slice))?,
            &fields[..nk],
        )?;
        let mut out = Vec::new();
        for (d, arg) in self.distinct.iter().enumerate() {
            let mine: Vec<_> = changes.items.iter().filter(|x| x.0 == d).collect();
            if mine.is_empty() {
                continue;
            }
            let n = mine.len();
            let at = datafusion::arrow::array::UInt32Array::from_iter_values(mine.iter().map(|x| x.1));
            let mut cols = key_columns
                .iter()
                .map(|c| Ok(datafusion::arrow::compute::take(c.as_ref(), &at, None)?))
                .collect::<Result<Vec<ArrayRef>>>()?;
            cols.push(Arc::new(Int32Array::from(vec![d as i32; n])));
            for (e, other) in self.distinct.iter().enumerate() {
                if e == d {
                    cols.extend(fit(
                        arg.rows
                            .columns_of(mine.iter().map(|x| &changes.bytes[x.3.clone()]))?,
                        &fields[nk + 1 + d..nk + 2 + d],
                    )?);
                } else {
                    cols.push(new_null_array(&other.data_type, n));
                }
            }
            cols.push(Arc::new(UInt64Array::from_iter_values(mine.iter().map(|x| x.2))));
            out.push(RecordBatch::try_new(Arc::clone(&self.values_schema), cols)?);
        }
        Ok(out)
    }

    /// The changed (or all) distinct values of a shard as state-file rows:
    /// (upserts, deletes).
    fn value_changes(
        &self,
        seen: &mut SeenValues,
        all: bool,
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
        let (changed, deleted) = seen.take_changes(all);
        Ok((self.value_rows(&changed)?, self.value_rows(&deleted)?))
    }

    /// Adds restored distinct values (state-file rows) to a shard.
    fn load_values(&self, inner: &mut Inner, part: &RecordBatch) -> Result<()> {
        let nk = self.n_keys();
        let n = part.num_rows();
        let n_args = self.distinct.len();
        let groups = self.keys.convert(&part.columns()[..nk], n)?;
        let args = part.column(nk).as_primitive::<Int32Type>();
        let flags = part.column(part.num_columns() - 1).as_primitive::<UInt64Type>();
        if let Some(bad) = args.values().iter().find(|&&d| d < 0 || d as usize >= n_args) {
            return Err(DataFusionError::Execution(format!(
                "the update aggregate's state has a value of DISTINCT argument {bad}, but the query has {n_args}"
            )));
        }
        for (d, arg) in self.distinct.iter().enumerate() {
            let values = arg.rows.convert(&[Arc::clone(part.column(nk + 1 + d))], n)?;
            for r in (0..n).filter(|&r| args.value(r) as usize == d) {
                inner
                    .seen
                    .restore(groups.row(r).as_ref(), d, values.row(r).as_ref(), flags.value(r));
            }
        }
        Ok(())
    }

    /// Folds an epoch's delta into the state; returns the changelog.
    fn apply(&self, shard: usize, mut delta: Groups, now: i64) -> Result<RecordBatch> {
        let mut inner = self.shards.lock(shard);
        let mut pieces: Vec<RecordBatch> = Vec::new();
        let n = delta.len();
        if n > 0 {
            let (dkeys, dstates) = delta.take_state()?;
            let rows = self.keys.convert(&dkeys, n)?;
            let hashes: Vec<u64> = (0..n).map(|i| inner.index.hash(rows.row(i).as_ref())).collect();
            let locs: Vec<Option<(usize, usize)>> = (0..n)
                .map(|i| inner.index.get(hashes[i], rows.row(i).as_ref()))
                .collect();
            let existing: Vec<(usize, (usize, usize))> = locs
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.map(|l| (i, l)))
                .collect();
            let old = if existing.is_empty() {
                None
            } else {
                let batches: Vec<&RecordBatch> = inner.chunks.iter().map(|c| &c.batch).collect();
                let at: Vec<(usize, usize)> = existing.iter().map(|(_, l)| *l).collect();
                Some(interleave_record_batch(&batches, &at)?)
            };
            // Merge stored states with the delta; groups come out in delta order.
            let mut merged = Groups::new(&self.agg)?;
            merged.merge(&dkeys, &dstates, n)?;
            if let Some(old) = &old {
                let nk = self.n_keys();
                let states = self
                    .agg
                    .split_states(&old.columns()[nk..nk + self.agg.state_width()]);
                merged.merge(&old.columns()[..nk], &states, old.num_rows())?;
            }
            let (keys, states) = merged.take_state()?;
            let mut finals = Groups::new(&self.agg)?;
            finals.merge(&keys, &states, n)?;
            let (_, values) = finals.evaluate()?;
            let mut out_cols = keys.clone();
            out_cols.extend(values.iter().cloned());
            let new_out = RecordBatch::try_new(Arc::clone(&self.agg_schema), out_cols)?;
            let new_vis = self.visible(&new_out)?;

            // Old rows' outputs and visibility, by delta position.
            let mut old_pos: Vec<Option<usize>> = vec![None; n];
            for (j, (i, _)) in existing.iter().enumerate() {
                old_pos[*i] = Some(j);
            }
            let (old_out, old_vis) = match &old {
                Some(o) => {
                    let vis_col = o.column(o.num_columns() - 2).as_boolean().clone();
                    (Some(self.output_of(o)?), Some(vis_col))
                }
                None => (None, None),
            };
            let nk = self.n_keys();
            let new_vals = self.values.convert(&new_out.columns()[nk..], n)?;
            let old_vals = match &old_out {
                Some(o) => Some(self.values.convert(&o.columns()[nk..], o.num_rows())?),
                None => None,
            };
            // Changelog, in delta order: (source, row) with kinds.
            let mut ops: Vec<&'static str> = Vec::new();
            let mut at: Vec<(usize, usize)> = Vec::new(); // (0 = old, 1 = new, row)
            for (i, pos) in old_pos.iter().enumerate() {
                let nv = new_vis.value(i);
                match *pos {
                    None => {
                        if nv {
                            ops.push(INSERT);
                            at.push((1, i));
                        }
                    }
                    Some(j) => {
                        let ov = old_vis.as_ref().is_some_and(|v| v.value(j));
                        let same = old_vals.as_ref().is_some_and(|o| o.row(j) == new_vals.row(i));
                        match (ov, nv) {
                            (false, true) => {
                                ops.push(INSERT);
                                at.push((1, i));
                            }
                            (true, true) if !same => {
                                ops.push(UPDATE_BEFORE);
                                at.push((0, j));
                                ops.push(UPDATE_AFTER);
                                at.push((1, i));
                            }
                            (true, false) => {
                                ops.push(DELETE);
                                at.push((0, j));
                            }
                            _ => {}
                        }
                    }
                }
            }
            if !at.is_empty() {
                let empty = RecordBatch::new_empty(Arc::clone(&self.agg_schema));
                let old_ref = old_out.as_ref().unwrap_or(&empty);
                let rows = interleave_record_batch(&[old_ref, &new_out], &at)?;
                let mut cols = rows.columns().to_vec();
                cols.push(Arc::new(StringArray::from(ops)));
                pieces.push(RecordBatch::try_new(Arc::clone(&self.schema), cols)?);
            }

            // Store the new versions; retire the old ones.
            for (_, (c, r)) in &existing {
                let chunk = &mut inner.chunks[*c];
                chunk.alive[*r] = false;
                chunk.live -= 1;
            }
            inner.dead += existing.len();
            let mut cols = keys;
            cols.extend(states.into_iter().flatten());
            cols.extend(values);
            cols.push(Arc::new(new_vis));
            cols.push(Arc::new(Int64Array::from(vec![now; n])));
            let batch = RecordBatch::try_new(Arc::clone(&self.chunk_schema), cols)?;
            let c = inner.chunks.len();
            inner.index.reserve(locs.iter().filter(|l| l.is_none()).count());
            for (i, &hash) in hashes.iter().enumerate() {
                // A known group's key stays; only a new group's is copied.
                inner.index.set(hash, rows.row(i).as_ref(), (c, i));
            }
            inner.pending_upserts.push(batch.clone());
            inner.chunks.push(Chunk {
                batch,
                alive: vec![true; n],
                live: n,
                min_updated: now,
            });
        }
        if inner.dead > 1024 && inner.dead > inner.index.len() {
            self.compact(&mut inner)?;
        }
        Ok(concat_batches(&self.schema, &pieces)?)
    }

    /// Deletes groups last updated before `cutoff`, returning their `-D` rows.
    fn expire(&self, inner: &mut Inner, cutoff: i64) -> Result<RecordBatch> {
        let mut out = Vec::new();
        let mut removed = Vec::new();
        let key_rows_of = |b: &RecordBatch| self.keys.convert(&b.columns()[..self.n_keys()], b.num_rows());
        for (c, chunk) in inner.chunks.iter_mut().enumerate() {
            if chunk.live == 0 || chunk.min_updated >= cutoff {
                continue;
            }
            let updated = chunk
                .batch
                .column(chunk.batch.num_columns() - 1)
                .as_primitive::<Int64Type>();
            let visible = chunk.batch.column(chunk.batch.num_columns() - 2).as_boolean();
            let mut dead_visible = Vec::new();
            let mut min = i64::MAX;
            for r in 0..chunk.batch.num_rows() {
                if !chunk.alive[r] {
                    continue;
                }
                if updated.value(r) < cutoff {
                    chunk.alive[r] = false;
                    chunk.live -= 1;
                    removed.push((c, r));
                    if visible.value(r) {
                        dead_visible.push(r);
                    }
                } else {
                    min = min.min(updated.value(r));
                }
            }
            chunk.min_updated = min;
            if !dead_visible.is_empty() {
                let idx = datafusion::arrow::array::UInt32Array::from(
                    dead_visible.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                );
                let rows = super::units::take_batch(&chunk.batch, &idx)?;
                let o = self.output_of(&rows)?;
                let mut cols = o.columns().to_vec();
                cols.push(Arc::new(StringArray::from(vec![DELETE; o.num_rows()])));
                out.push(RecordBatch::try_new(Arc::clone(&self.schema), cols)?);
            }
        }
        if !removed.is_empty() {
            let mut keys = Vec::new();
            for (c, r) in &removed {
                keys.push(
                    inner.chunks[*c]
                        .batch
                        .slice(*r, 1)
                        .project(&(0..self.n_keys()).collect::<Vec<_>>())?,
                );
            }
            if !keys.is_empty() {
                inner.pending_deletes.push(concat_batches(
                    &Arc::new(
                        self.chunk_schema
                            .project(&(0..self.n_keys()).collect::<Vec<_>>())?,
                    ),
                    &keys,
                )?);
            }
            for (c, r) in &removed {
                let one = inner.chunks[*c].batch.slice(*r, 1);
                let rows = key_rows_of(&one)?;
                let key = rows.row(0);
                let hash = inner.index.hash(key.as_ref());
                inner.index.remove(hash, key.as_ref());
                // The group's distinct values go with it.
                inner.seen.remove(key.as_ref());
            }
            inner.dead += removed.len();
        }
        Ok(concat_batches(&self.schema, &out)?)
    }

    /// The live rows, in chunk order.
    fn live_rows(&self, inner: &Inner) -> Result<Vec<RecordBatch>> {
        inner
            .chunks
            .iter()
            .filter(|c| c.live > 0)
            .map(|c| {
                Ok(filter_record_batch(
                    &c.batch,
                    &BooleanArray::from(c.alive.clone()),
                )?)
            })
            .collect()
    }

    fn compact(&self, inner: &mut Inner) -> Result<()> {
        let live = self.live_rows(inner)?;
        let batch = concat_batches(&self.chunk_schema, &live)?;
        self.load(inner, batch)
    }

    /// Replaces the state with one chunk of live rows.
    fn load(&self, inner: &mut Inner, batch: RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        let rows = self.keys.convert(&batch.columns()[..self.n_keys()], n)?;
        let min_updated = batch
            .column(batch.num_columns() - 1)
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .copied()
            .min()
            .unwrap_or(i64::MAX);
        inner.index.clear();
        inner.index.reserve(n);
        for i in 0..n {
            let key = rows.row(i);
            let hash = inner.index.hash(key.as_ref());
            inner.index.set(hash, key.as_ref(), (0, i));
        }
        inner.chunks = vec![Chunk {
            batch,
            alive: vec![true; n],
            live: n,
            min_updated,
        }];
        inner.dead = 0;
        Ok(())
    }
}

impl StatefulOperator for UpdateState {
    // The TTL is not part of it: a longer or shorter TTL reads the same
    // state (rows idle longer than the new TTL are dropped next epoch).
    fn side_table(self: Arc<Self>) -> Option<(&'static str, Arc<dyn StatefulOperator>)> {
        if self.distinct.is_empty() {
            return None;
        }
        Some(("values", Arc::new(DistinctValuesTable(self))))
    }

    fn signature(&self) -> String {
        let distinct: Vec<String> = self
            .distinct
            .iter()
            .map(|d| format!("{}:{:?}", d.expr, d.members))
            .collect();
        crate::compat::signature::strip_column_positions(&format!(
            "update-aggregate having({}) {}{}",
            self.having.as_ref().map(|h| h.to_string()).unwrap_or_default(),
            self.agg_signature,
            if distinct.is_empty() {
                String::new()
            } else {
                format!(" distinct-values[{}]", distinct.join(";"))
            }
        ))
    }

    fn kind(&self) -> &'static str {
        "update-aggregate"
    }

    fn emits(&self) -> &'static str {
        "on update: the changed groups of each epoch as +I/-U/+U/-D"
    }

    fn state_rows(&self) -> usize {
        // Groups (the side table counts their distinct values).
        self.shards.lock_all().iter().map(|i| i.index.len()).sum()
    }

    fn describe(&self) -> StateTable {
        StateTable {
            name: "groups".into(),
            keys: self
                .agg
                .key_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            values: self
                .agg
                .state_file_fields()
                .iter()
                .map(|f| f.name().clone())
                .chain((0..self.n_values()).map(|i| format!("v{i} (last emitted)")))
                .chain(["__visible".into(), "__updated_ms".into()])
                .collect(),
            evicted_by: match self.ttl_ms {
                Some(t) => {
                    format!("__updated_ms older than the state TTL ({t}ms, processing time): deleted with -D")
                }
                None => "never (no state.ttl): one row per group for the life of the query".into(),
            },
        }
    }

    fn state_schema(&self) -> SchemaRef {
        Arc::clone(&self.chunk_schema)
    }

    fn unit_key_len(&self) -> usize {
        self.n_keys()
    }

    fn state_shards(&self) -> usize {
        self.shards.count()
    }

    fn checkpoint(&self, full: bool) -> Result<Vec<Option<StateChange>>> {
        // A group is in one shard: each shard's change is its own.
        let mut shards = self.shards.lock_all();
        let mut parts = Vec::with_capacity(shards.len());
        for inner in shards.iter_mut() {
            let mut change = StateChange::default();
            if full {
                change.upserts.extend(self.live_rows(inner)?);
                inner.pending_upserts.clear();
                inner.pending_deletes.clear();
            } else {
                change.upserts.append(&mut inner.pending_upserts);
                change.deletes.append(&mut inner.pending_deletes);
            }
            parts.push(change.part(full));
        }
        Ok(parts)
    }

    fn restore(&self, batches: Vec<RecordBatch>, _watermark: i64) -> Result<()> {
        let batches = batches
            .into_iter()
            .map(|b| b.with_schema(Arc::clone(&self.chunk_schema)))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = concat_batches(&self.chunk_schema, &batches)?;
        // One copy at a time (the rows read go once they are one batch).
        drop(batches);
        let mut shards = self.shards.lock_all();
        // The groups only: the distinct values are the side table's.
        for inner in shards.iter_mut() {
            let seen = std::mem::take(&mut inner.seen);
            **inner = Inner::new(self.distinct.len());
            inner.seen = seen;
        }
        let key_columns: Vec<usize> = (0..self.n_keys()).collect();
        let parts = route(&batch, &key_columns, shards.len())?;
        drop(batch);
        for (shard, part) in parts {
            self.load(&mut shards[shard], part)?;
        }
        Ok(())
    }
}

/// An update aggregate's distinct values, as a state table of its own
/// (see the module's comment).
struct DistinctValuesTable(Arc<UpdateState>);

impl StatefulOperator for DistinctValuesTable {
    fn kind(&self) -> &'static str {
        "update-aggregate-values"
    }

    fn emits(&self) -> &'static str {
        "nothing itself: the aggregate above counts a value once, when it is new"
    }

    fn state_rows(&self) -> usize {
        self.0.shards.lock_all().iter().map(|i| i.seen.len()).sum()
    }

    fn describe(&self) -> StateTable {
        let u = &self.0;
        StateTable {
            name: "distinct values".into(),
            keys: u
                .agg
                .key_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .chain(std::iter::once("__distinct (the argument)".to_string()))
                .chain(u.distinct.iter().enumerate().map(|(d, a)| {
                    format!(
                        "__value{d} (a value of {})",
                        crate::compat::signature::strip_column_positions(&a.expr)
                    )
                }))
                .collect(),
            values: vec!["__filters (the aggregates that saw the value, one bit each)".into()],
            evicted_by: match u.ttl_ms {
                Some(_) => "with its group, when the state TTL deletes the group".into(),
                None => {
                    "never (no state.ttl): one row per distinct value of each group for the life of the query"
                        .into()
                }
            },
        }
    }

    fn state_schema(&self) -> SchemaRef {
        Arc::clone(&self.0.values_schema)
    }

    fn unit_key_len(&self) -> usize {
        self.0.n_keys() + 1 + self.0.distinct.len()
    }

    fn state_shards(&self) -> usize {
        self.0.shards.count()
    }

    fn checkpoint(&self, full: bool) -> Result<Vec<Option<StateChange>>> {
        let mut shards = self.0.shards.lock_all();
        let mut parts = Vec::with_capacity(shards.len());
        for inner in shards.iter_mut() {
            let (upserts, deletes) = self.0.value_changes(&mut inner.seen, full)?;
            parts.push(StateChange { upserts, deletes }.part(full));
        }
        Ok(parts)
    }

    fn restore(&self, batches: Vec<RecordBatch>, _watermark: i64) -> Result<()> {
        let u = &self.0;
        let mut shards = u.shards.lock_all();
        for inner in shards.iter_mut() {
            inner.seen = SeenValues::new(u.distinct.len());
        }
        let key_columns: Vec<usize> = (0..u.n_keys()).collect();
        for b in batches {
            let b = b.with_schema(Arc::clone(&u.values_schema))?;
            for (shard, part) in route(&b, &key_columns, shards.len())? {
                u.load_values(&mut shards[shard], &part)?;
            }
        }
        Ok(())
    }

    fn signature(&self) -> String {
        format!("values of {}", self.0.signature())
    }
}
