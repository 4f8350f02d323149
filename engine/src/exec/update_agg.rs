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

use datafusion::common::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, interleave_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::groups::{AggregateSpec, Groups};
use super::keys::KeyRows;
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
}

struct Chunk {
    batch: RecordBatch,
    alive: Vec<bool>,
    live: usize,
    min_updated: i64,
}

#[derive(Default)]
struct Inner {
    index: HashMap<Vec<u8>, (usize, usize)>,
    chunks: Vec<Chunk>,
    dead: usize,
    /// Groups' new versions since the last checkpoint (a delta's upserts).
    pending_upserts: Vec<RecordBatch>,
    /// Keys of groups deleted since the last checkpoint.
    pending_deletes: Vec<RecordBatch>,
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
        let agg = AggregateSpec::try_new(group_by, aggr, filters, &in_schema)?;
        // With more than one thread, each input partition aggregates its
        // rows of the epoch first, and only their states cross to the
        // shards (one shard without keys), as for window aggregates.
        let (input, partial_keys) = if threads > 1 {
            let spec = PartialSpec::keys_only(&agg, &in_schema)?;
            let keys = spec.key_columns();
            let node: Arc<dyn ExecutionPlan> = Arc::new(PartialWindowAggExec::new(input, Arc::new(spec)));
            (node, Some(keys))
        } else {
            (input, None)
        };
        let agg_schema = Arc::new(Schema::new(
            schema.fields()[..schema.fields().len() - 1]
                .iter()
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>(),
        ));
        let n_keys = agg.key_schema.fields().len();
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
        let state = UpdateState {
            agg,
            having,
            ttl_ms,
            keys,
            values,
            agg_schema,
            chunk_schema: Arc::new(Schema::new(fields)),
            schema,
            shards: Shards::new(shard_count(threads, n_keys), Inner::default),
            input_schema: in_schema,
            partial_keys,
        };
        Ok(Self::new(input, Arc::new(state)))
    }
}

impl EpochOperator for UpdateState {
    const NAME: &'static str = "UpdateAggregateExec";
    /// This epoch's changes, aggregated apart, then applied at once.
    type Acc = Groups;

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
        write!(f, ", emit=changelog")
    }

    fn start(&self, _partition: usize) -> Result<Groups> {
        Groups::new(&self.agg)
    }

    fn fold(&self, _partition: usize, delta: &mut Groups, batch: &RecordBatch) -> Result<()> {
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
        delta.update(&self.agg.evaluate(batch)?)
    }

    fn finish(&self, partition: usize, mut delta: Groups, epoch: &EpochInput) -> Result<RecordBatch> {
        // The aggregate of a table without keys is one row even before (or
        // without) any input, as in batch SQL: COUNT(*) 0 over no rows.
        if self.n_keys() == 0 && self.ttl_ms.is_none() && self.shards.lock(partition).index.is_empty() {
            delta.ensure_keyless_group(
                &self
                    .agg
                    .evaluate(&RecordBatch::new_empty(Arc::clone(&self.input_schema)))?,
            )?;
        }
        self.apply(partition, delta, epoch.processing_time_ms)
    }
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

    /// Folds an epoch's delta into the state; returns the changelog.
    fn apply(&self, shard: usize, mut delta: Groups, now: i64) -> Result<RecordBatch> {
        let mut inner = self.shards.lock(shard);
        let mut pieces: Vec<RecordBatch> = Vec::new();
        let n = delta.len();
        if n > 0 {
            let (dkeys, dstates) = delta.take_state()?;
            let rows = self.keys.convert(&dkeys, n)?;
            let locs: Vec<Option<(usize, usize)>> = (0..n)
                .map(|i| inner.index.get(rows.row(i).as_ref()).copied())
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
            for (i, loc) in locs.iter().enumerate() {
                let key = rows.row(i);
                // A known group's key stays; only a new group's is copied.
                match loc.and_then(|_| inner.index.get_mut(key.as_ref())) {
                    Some(at) => *at = (c, i),
                    None => {
                        inner.index.insert(key.as_ref().to_vec(), (c, i));
                    }
                }
            }
            inner.pending_upserts.push(batch.clone());
            inner.chunks.push(Chunk {
                batch,
                alive: vec![true; n],
                live: n,
                min_updated: now,
            });
        }
        if let Some(ttl) = self.ttl_ms {
            let expired = self.expire(&mut inner, now.saturating_sub(ttl))?;
            if expired.num_rows() > 0 {
                pieces.push(expired);
            }
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
                inner.index.remove(rows.row(0).as_ref());
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
        for i in 0..n {
            inner.index.insert(rows.row(i).as_ref().to_vec(), (0, i));
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
    fn signature(&self) -> String {
        crate::compat::signature::strip_column_positions(&format!(
            "update-aggregate having({}) {}",
            self.having.as_ref().map(|h| h.to_string()).unwrap_or_default(),
            crate::compat::signature::aggregate_signature(&self.agg)
        ))
    }

    fn kind(&self) -> &'static str {
        "update-aggregate"
    }

    fn state_rows(&self) -> usize {
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

    fn checkpoint(&self, full: bool) -> Result<Option<StateChange>> {
        // A group is in one shard: the change is the shards' changes.
        let mut shards = self.shards.lock_all();
        let mut change = StateChange::default();
        for inner in shards.iter_mut() {
            if full {
                change.upserts.extend(self.live_rows(inner)?);
                inner.pending_upserts.clear();
                inner.pending_deletes.clear();
            } else {
                change.upserts.append(&mut inner.pending_upserts);
                change.deletes.append(&mut inner.pending_deletes);
            }
        }
        if !full && change.upserts.is_empty() && change.deletes.is_empty() {
            return Ok(None);
        }
        Ok(Some(change))
    }

    fn restore(&self, batches: &[RecordBatch], _watermark: i64) -> Result<()> {
        let batches = batches
            .iter()
            .map(|b| b.clone().with_schema(Arc::clone(&self.chunk_schema)))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = concat_batches(&self.chunk_schema, &batches)?;
        let mut shards = self.shards.lock_all();
        for inner in shards.iter_mut() {
            **inner = Inner::default();
        }
        let key_columns: Vec<usize> = (0..self.n_keys()).collect();
        for (shard, part) in route(&batch, &key_columns, shards.len())? {
            self.load(&mut shards[shard], part)?;
        }
        Ok(())
    }
}
