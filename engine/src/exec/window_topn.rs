//! `WindowTopNExec`: `ROW_NUMBER() / RANK() / DENSE_RANK() OVER (PARTITION BY
//! window_start, window_end, ... ORDER BY ...)` over a window, usually with
//! `rn <= N`.
//!
//! Each open window keeps its rows; when N is known, after every epoch only
//! the rows that can still rank within N are kept, so state is at most N
//! rows per partition and window (more only for ties under RANK). When the
//! watermark passes a window's end its rows are sorted, ranked and emitted
//! in (partition, rank) order. Ties keep arrival order, so a restored
//! operator (whose rows come back in the same order) ranks the same way.
//!
//! On more than one thread (`--threads`):
//! - with `PARTITION BY` keys besides the window's bounds, the state is
//!   sharded by those keys (see [`super::shard`]): all rows of a ranking
//!   partition (window, keys) are in one shard, which ranks and emits them;
//! - without such keys (one ranking per window) there is one shard, and
//!   with a limit N each input partition first keeps only its rows that can
//!   still rank within N ([`PartialTopNExec`]), so a few rows per
//!   window, not all of them, funnel into that shard.
//!
//! State file: `__window_start, __window_end: Int64`, then the input columns.
//! A window's rows may be in several shards; a checkpoint writes each
//! changed window whole, from all of them, and a restore deals rows to the
//! shards by the hash of their keys, so a job may resume under another
//! thread count.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use super::keys::KeyRows;
use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::compute::{
    LexicographicalComparator, SortColumn, SortOptions, cast, concat_batches, lexsort_to_indices, take,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::HashMap;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::StreamExt;
use weir_sql::RankKind;

use super::operator::{EpochOperator, OperatorExec};
use super::shard::{Shards, route, shard_count};
use super::units::{split_by_unit, take_batch, unit_deletes};
use crate::epoch::EpochInput;
use crate::exec::{StateChange, StateTable, StatefulOperator};

/// A window Top-N over its input.
pub type WindowTopNExec = OperatorExec<TopNState>;

/// The Top-N's parameters, from the logical node.
#[derive(Clone, Debug)]
pub struct TopNParams {
    /// `PARTITION BY` (window start and end among them).
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// `ORDER BY`.
    pub order_by: Vec<PhysicalSortExpr>,
    /// The ranking function.
    pub rank: RankKind,
    /// Keep ranks up to this.
    pub limit: Option<u64>,
    /// Index of `window_start` in `partition_by`.
    pub window_start: usize,
    /// Index of `window_end` in `partition_by`.
    pub window_end: usize,
    /// How far this operator's watermark trails the pipeline's, ms.
    pub lag_ms: i64,
    /// Output: the input's columns and the rank.
    pub schema: SchemaRef,
}

/// Configuration and state, shared by every copy of the plan node.
pub struct TopNState {
    p: TopNParams,
    input_schema: SchemaRef,
    state_schema: SchemaRef,
    /// `PARTITION BY` without the window's bounds: what the shards are
    /// keyed by.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    shards: Shards<Inner>,
    /// The thread count it was built for.
    threads: usize,
}

#[derive(Default)]
struct Inner {
    /// Open windows' rows, by (end, start).
    windows: BTreeMap<(i64, i64), Vec<RecordBatch>>,
    /// Windows changed since the last checkpoint.
    changed: std::collections::BTreeSet<(i64, i64)>,
    /// Windows emitted since the last checkpoint.
    removed: std::collections::BTreeSet<(i64, i64)>,
}

impl OperatorExec<TopNState> {
    /// Builds the operator for `threads` threads (see the module docs).
    pub fn try_new(input: Arc<dyn ExecutionPlan>, p: TopNParams, threads: usize) -> Result<Self> {
        Self::build(input, p, threads, true)
    }

    /// The operator [`Self::try_new`] builds, over an `input` that already
    /// holds what `try_new` may add (the partial Top-N of one shard): a
    /// plan decoded from its wire form ([`TopNState::config`]).
    pub fn try_new_over(input: Arc<dyn ExecutionPlan>, p: TopNParams, threads: usize) -> Result<Self> {
        Self::build(input, p, threads, false)
    }

    fn build(input: Arc<dyn ExecutionPlan>, p: TopNParams, threads: usize, partial: bool) -> Result<Self> {
        let input_schema = input.schema();
        let mut fields = vec![
            Field::new("__window_start", DataType::Int64, false),
            Field::new("__window_end", DataType::Int64, false),
        ];
        fields.extend(input_schema.fields().iter().map(|f| f.as_ref().clone()));
        let keys: Vec<Arc<dyn PhysicalExpr>> = p
            .partition_by
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != p.window_start && *i != p.window_end)
            .map(|(_, e)| Arc::clone(e))
            .collect();
        let shards = shard_count(threads, keys.len());
        let mut input = input;
        if partial
            && shards == 1
            && threads > 1
            && let Some(limit) = p.limit
        {
            input = partial_top_n(input, p.partition_by.clone(), p.order_by.clone(), p.rank, limit);
        }
        let state = TopNState {
            p,
            input_schema,
            state_schema: Arc::new(Schema::new(fields)),
            keys,
            shards: Shards::new(shards, Inner::default),
            threads,
        };
        Ok(Self::new(input, Arc::new(state)))
    }
}

impl TopNState {
    /// What the operator was built from (how it crosses to a cluster;
    /// never its state): its parameters and thread count.
    pub fn config(&self) -> (&TopNParams, usize) {
        (&self.p, self.threads)
    }
}

impl EpochOperator for TopNState {
    const NAME: &'static str = "WindowTopNExec";
    /// The windows the epoch's rows went to.
    type Acc = Epoch;

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.p.schema)
    }

    fn partitions(&self) -> usize {
        self.shards.count()
    }

    fn shard_keys(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.keys.clone()
    }

    fn expressions(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        let p = &self.p;
        p.partition_by
            .iter()
            .chain(p.order_by.iter().map(|s| &s.expr))
            .cloned()
            .collect()
    }

    fn fmt_node(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let p = &self.p;
        let parts: Vec<String> = p.partition_by.iter().map(|e| e.to_string()).collect();
        let order: Vec<String> = p.order_by.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "{:?} partition=[{}] order=[{}]{}, emit=on window close",
            p.rank,
            parts.join(", "),
            order.join(", "),
            p.limit.map(|l| format!(" limit={l}")).unwrap_or_default()
        )
    }

    fn start(&self, _partition: usize, _epoch: &EpochInput) -> Result<Self::Acc> {
        Ok(Epoch::default())
    }

    fn fold(&self, partition: usize, acc: &mut Self::Acc, batch: &RecordBatch) -> Result<()> {
        // Rows that do not rank within N among this batch's rows alone
        // cannot rank within N in their window (see `PartialTopNExec`
        // for why): drop them now, so a window holds a few rows per batch,
        // not every row until the epoch's end. That pays when partitions
        // are large; when a batch keeps most of its rows (small partitions,
        // as with a key per auction) it is a sort for nothing, so after a
        // sample an epoch stops doing it.
        let pruned = match self.p.limit {
            Some(limit) => {
                acc.prune
                    .apply(&self.p.partition_by, &self.p.order_by, self.p.rank, limit, batch)?
            }
            None => None,
        };
        acc.touched
            .extend(self.update(partition, pruned.as_ref().unwrap_or(batch))?);
        Ok(())
    }

    fn finish(&self, partition: usize, acc: Self::Acc, epoch: &EpochInput) -> Result<RecordBatch> {
        self.prune(partition, &acc.touched)?;
        self.emit_closed(partition, epoch.watermark_out.saturating_sub(self.p.lag_ms))
    }
}

/// A partition's epoch so far.
#[derive(Default)]
pub struct Epoch {
    /// The windows its rows went to.
    touched: Vec<(i64, i64)>,
    prune: ArrivalPrune,
}

/// Rows a partition ranks batch by batch before it judges whether that
/// pays (keeps at most half of them).
const PRUNE_SAMPLE_ROWS: usize = 50_000;

/// Ranking each input batch on its own as it arrives, to drop its rows
/// that cannot rank within N (see [`PartialTopNExec`] for why they cannot),
/// over one partition's epoch. That pays when ranking partitions are large
/// (a few rows of each batch stay); when a batch keeps most of its rows
/// (small partitions, as with a key per auction) it is a sort for nothing,
/// so after a sample of rows it stops if more than half stayed.
#[derive(Default)]
pub(super) struct ArrivalPrune {
    seen: usize,
    kept: usize,
}

impl ArrivalPrune {
    /// `batch` without its rows beyond `limit`; `None` when it keeps all
    /// of them (or no longer ranks batches).
    pub(super) fn apply(
        &mut self,
        partition_by: &[Arc<dyn PhysicalExpr>],
        order_by: &[PhysicalSortExpr],
        kind: RankKind,
        limit: u64,
        batch: &RecordBatch,
    ) -> Result<Option<RecordBatch>> {
        let n = batch.num_rows();
        if n == 0 || (self.seen >= PRUNE_SAMPLE_ROWS && self.kept * 2 > self.seen) {
            return Ok(None);
        }
        let kept = within(partition_by, order_by, kind, limit, batch)?;
        self.seen += n;
        self.kept += kept.as_ref().map_or(n, RecordBatch::num_rows);
        Ok(kept)
    }
}

/// `input` with each of its partitions keeping only its rows within
/// `limit` (see [`PartialTopNExec`]).
pub(super) fn partial_top_n(
    input: Arc<dyn ExecutionPlan>,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    order_by: Vec<PhysicalSortExpr>,
    rank: RankKind,
    limit: u64,
) -> Arc<dyn ExecutionPlan> {
    Arc::new(PartialTopNExec::new(
        input,
        Arc::new(PartialTopN {
            partition_by,
            order_by,
            rank,
            limit,
        }),
    ))
}

impl TopNState {
    fn window_bounds(&self, batch: &RecordBatch) -> Result<(ArrayRef, ArrayRef)> {
        let n = batch.num_rows();
        let s = cast(
            &self.p.partition_by[self.p.window_start]
                .evaluate(batch)?
                .into_array(n)?,
            &DataType::Int64,
        )?;
        let e = cast(
            &self.p.partition_by[self.p.window_end]
                .evaluate(batch)?
                .into_array(n)?,
            &DataType::Int64,
        )?;
        Ok((s, e))
    }

    /// Adds rows to their windows in a shard; returns the windows touched.
    fn update(&self, shard: usize, batch: &RecordBatch) -> Result<Vec<(i64, i64)>> {
        if batch.num_rows() == 0 {
            return Ok(vec![]);
        }
        let (s, e) = self.window_bounds(batch)?;
        let parts = split_by_unit(
            s.as_primitive::<Int64Type>().values(),
            e.as_primitive::<Int64Type>().values(),
        );
        let mut inner = self.shards.lock(shard);
        let mut touched = Vec::new();
        for (window, rows) in parts {
            inner.changed.insert(window);
            let rows = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_batch(batch, &UInt32Array::from(rows))?
            };
            inner.windows.entry(window).or_default().push(rows);
            touched.push(window);
        }
        Ok(touched)
    }

    /// Keeps only a shard's rows that can still rank within the limit.
    fn prune(&self, shard: usize, touched: &[(i64, i64)]) -> Result<()> {
        let Some(limit) = self.p.limit else { return Ok(()) };
        let mut inner = self.shards.lock(shard);
        for w in touched {
            if let Some(batches) = inner.windows.get_mut(w) {
                let all = concat_batches(&self.input_schema, batches.iter())?;
                if let Some(kept) = within(&self.p.partition_by, &self.p.order_by, self.p.rank, limit, &all)?
                {
                    *batches = vec![kept];
                }
            }
        }
        Ok(())
    }

    /// Row indices in (partition, order, arrival) order, and their ranks.
    fn rank(&self, batch: &RecordBatch) -> Result<(Vec<u32>, Vec<u64>)> {
        rank_rows(&self.p.partition_by, &self.p.order_by, self.p.rank, batch)
    }

    /// Ranks and emits a shard's windows that end at or before `watermark`.
    fn emit_closed(&self, shard: usize, watermark: i64) -> Result<RecordBatch> {
        let mut inner = self.shards.lock(shard);
        let mut out = Vec::new();
        while let Some(entry) = inner.windows.first_entry() {
            if entry.key().0 > watermark {
                break;
            }
            let window = *entry.key();
            let batches = entry.remove();
            inner.changed.remove(&window);
            inner.removed.insert(window);
            let all = concat_batches(&self.input_schema, batches.iter())?;
            let (order, ranks) = self.rank(&all)?;
            let keep: Vec<(u32, u64)> = order
                .into_iter()
                .zip(ranks)
                .filter(|(_, r)| self.p.limit.is_none_or(|l| *r <= l))
                .collect();
            let rows = take_batch(
                &all,
                &UInt32Array::from(keep.iter().map(|(i, _)| *i).collect::<Vec<_>>()),
            )?;
            let rank_field = self.p.schema.field(self.p.schema.fields().len() - 1);
            let rank: ArrayRef = Arc::new(UInt64Array::from(
                keep.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
            ));
            let mut columns = rows.columns().to_vec();
            columns.push(cast(&rank, rank_field.data_type())?);
            out.push(RecordBatch::try_new(Arc::clone(&self.p.schema), columns)?);
        }
        Ok(concat_batches(&self.p.schema, &out)?)
    }
}

impl StatefulOperator for TopNState {
    fn signature(&self) -> String {
        ranking_signature(
            &format!("window-top-n {:?} limit={:?}", self.p.rank, self.p.limit),
            &self.p.partition_by,
            &self.p.order_by,
            &self.state_schema,
        )
    }

    fn kind(&self) -> &'static str {
        "window-top-n"
    }

    fn state_rows(&self) -> usize {
        self.shards
            .lock_all()
            .iter()
            .flat_map(|i| i.windows.values().flatten())
            .map(RecordBatch::num_rows)
            .sum()
    }

    fn describe(&self) -> StateTable {
        StateTable {
            name: "window_rows".into(),
            keys: vec!["window_start".into(), "window_end".into()],
            values: self
                .input_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            evicted_by: format!(
                "window_end at or before the watermark (ranked and emitted, then dropped){}",
                match self.p.limit {
                    Some(l) => format!("; rows ranked beyond {l} in their partition, each epoch"),
                    None => String::new(),
                }
            ),
        }
    }

    fn state_schema(&self) -> SchemaRef {
        Arc::clone(&self.state_schema)
    }

    fn unit_key_len(&self) -> usize {
        2
    }

    fn state_shards(&self) -> usize {
        self.shards.count()
    }

    fn checkpoint(&self, full: bool) -> Result<Vec<Option<StateChange>>> {
        // A window may have rows in several shards; each shard's part holds
        // its own rows of the windows that changed in it.
        let mut shards = self.shards.lock_all();
        let mut parts = Vec::with_capacity(shards.len());
        for inner in shards.iter_mut() {
            let windows: BTreeSet<(i64, i64)> = if full {
                inner.windows.keys().copied().collect()
            } else {
                inner
                    .changed
                    .iter()
                    .copied()
                    .filter(|w| inner.windows.contains_key(w))
                    .collect()
            };
            let mut upserts = Vec::new();
            for &(end, start) in &windows {
                let Some(batches) = inner.windows.get(&(end, start)) else {
                    continue;
                };
                let rows = concat_batches(&self.input_schema, batches.iter())?;
                let n = rows.num_rows();
                let mut columns: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(vec![start; n])),
                    Arc::new(Int64Array::from(vec![end; n])),
                ];
                columns.extend(rows.columns().iter().cloned());
                upserts.push(RecordBatch::try_new(Arc::clone(&self.state_schema), columns)?);
            }
            let removed = inner
                .removed
                .iter()
                .copied()
                .filter(|w| !full && !inner.windows.contains_key(w));
            let deletes = unit_deletes(&self.state_schema, removed)?;
            inner.changed.clear();
            inner.removed.clear();
            parts.push(StateChange { upserts, deletes }.part(full));
        }
        Ok(parts)
    }

    fn restore(&self, batches: Vec<RecordBatch>, _watermark: i64) -> Result<()> {
        let mut shards = self.shards.lock_all();
        for inner in shards.iter_mut() {
            **inner = Inner::default();
        }
        let width = self.state_schema.fields().len();
        for batch in batches {
            let batch = batch.with_schema(Arc::clone(&self.state_schema))?;
            if shards.len() == 1 {
                self.restore_rows(&mut shards[0], &batch)?;
                continue;
            }
            // Deal the rows by the hash of their keys, as the input's hash
            // repartition does: the keys are evaluated over the stored input
            // columns and put beside them, for `route` to hash.
            let n = batch.num_rows();
            let rows = RecordBatch::try_new(Arc::clone(&self.input_schema), batch.columns()[2..].to_vec())?;
            let mut fields: Vec<Field> = self
                .state_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            let mut columns = batch.columns().to_vec();
            for (i, key) in self.keys.iter().enumerate() {
                let values = key.evaluate(&rows)?.into_array(n)?;
                fields.push(Field::new(
                    format!("__shard_key_{i}"),
                    values.data_type().clone(),
                    true,
                ));
                columns.push(values);
            }
            let wide = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
            let key_columns: Vec<usize> = (width..width + self.keys.len()).collect();
            for (shard, part) in route(&wide, &key_columns, shards.len())? {
                let part = part.project(&(0..width).collect::<Vec<_>>())?;
                let part = part.with_schema(Arc::clone(&self.state_schema))?;
                self.restore_rows(&mut shards[shard], &part)?;
            }
        }
        Ok(())
    }
}

impl TopNState {
    /// Adds state rows to a shard's windows, in their order.
    fn restore_rows(&self, inner: &mut Inner, batch: &RecordBatch) -> Result<()> {
        let starts = batch.column(0).as_primitive::<Int64Type>().values().to_vec();
        let ends = batch.column(1).as_primitive::<Int64Type>().values().to_vec();
        for (window, rows) in split_by_unit(&starts, &ends) {
            let part = take_batch(batch, &UInt32Array::from(rows))?;
            let rows = RecordBatch::try_new(Arc::clone(&self.input_schema), part.columns()[2..].to_vec())?;
            inner.windows.entry(window).or_default().push(rows);
        }
        Ok(())
    }
}

/// The rows of `batch` that rank within `limit` in their partitions, in
/// their order in `batch`; `None` when that is all of them.
fn within(
    partition_by: &[Arc<dyn PhysicalExpr>],
    order_by: &[PhysicalSortExpr],
    kind: RankKind,
    limit: u64,
    batch: &RecordBatch,
) -> Result<Option<RecordBatch>> {
    let n = batch.num_rows();
    if n as u64 <= limit {
        return Ok(None);
    }
    let mut keep = match kind {
        RankKind::RowNumber | RankKind::Rank if !order_by.is_empty() => {
            top_rows(partition_by, order_by, kind, limit as usize, batch)?
        }
        _ => {
            let (order, ranks) = rank_rows(partition_by, order_by, kind, batch)?;
            order
                .iter()
                .zip(&ranks)
                .filter(|(_, r)| **r <= limit)
                .map(|(i, _)| *i)
                .collect()
        }
    };
    if keep.len() == n {
        return Ok(None);
    }
    // Keep arrival order among the survivors: ties rank by it.
    keep.sort_unstable();
    Ok(Some(take_batch(batch, &UInt32Array::from(keep))?))
}

/// The partition and the order columns of `batch`'s rows.
fn ranking_columns(
    partition_by: &[Arc<dyn PhysicalExpr>],
    order_by: &[PhysicalSortExpr],
    batch: &RecordBatch,
) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
    let n = batch.num_rows();
    let parts = partition_by
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(n))
        .collect::<Result<_>>()?;
    let orders = order_by
        .iter()
        .map(|s| s.expr.evaluate(batch)?.into_array(n))
        .collect::<Result<_>>()?;
    Ok((parts, orders))
}

/// [`within`] for ROW_NUMBER and RANK, without sorting whole partitions:
/// each partition's first `limit` rows by (order, arrival) come from a
/// top-k selection (`lexsort_to_indices` with a limit, a heap when the
/// limit is small), which is what ROW_NUMBER keeps; RANK also keeps every
/// row tied with the last of them (fewer than `limit` rows are strictly
/// better than it). The same rows as ranking the whole batch: arrival
/// breaks ties in both. Returns their indices, in no particular order.
fn top_rows(
    partition_by: &[Arc<dyn PhysicalExpr>],
    order_by: &[PhysicalSortExpr],
    kind: RankKind,
    limit: usize,
    batch: &RecordBatch,
) -> Result<Vec<u32>> {
    if limit == 0 {
        return Ok(vec![]);
    }
    let n = batch.num_rows();
    let (parts, orders) = ranking_columns(partition_by, order_by, batch)?;
    // The rows of each partition, in arrival order.
    let groups: Vec<Vec<u32>> = if parts.is_empty() {
        vec![(0..n as u32).collect()]
    } else {
        let keys = KeyRows::new(parts.iter().map(|c| c.data_type().clone()))?.convert(&parts, n)?;
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        let mut groups: Vec<Vec<u32>> = Vec::new();
        for i in 0..n {
            let g = *index.entry(keys.row(i).data()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i as u32);
        }
        groups
    };
    let mut keep = Vec::new();
    for rows in groups {
        if rows.len() <= limit {
            keep.extend(rows);
            continue;
        }
        let whole = rows.len() == n;
        let at = UInt32Array::from(rows);
        let mut columns: Vec<SortColumn> = orders
            .iter()
            .zip(order_by)
            .map(|(a, s)| {
                Ok(SortColumn {
                    values: if whole { Arc::clone(a) } else { take(a, &at, None)? },
                    options: Some(s.options),
                })
            })
            .collect::<Result<_>>()?;
        columns.push(SortColumn {
            values: Arc::new(UInt32Array::from_iter_values(0..at.len() as u32)),
            options: Some(SortOptions::default()),
        });
        let top = lexsort_to_indices(&columns, Some(limit))?;
        let rows = at.values();
        match kind {
            RankKind::Rank => {
                // Every row not worse than the last kept one, by the order
                // columns alone.
                columns.pop();
                let cmp = LexicographicalComparator::try_new(&columns)?;
                let last = top.values()[limit - 1] as usize;
                keep.extend(
                    (0..rows.len())
                        .filter(|&p| cmp.compare(p, last) != std::cmp::Ordering::Greater)
                        .map(|p| rows[p]),
                );
            }
            _ => keep.extend(top.values().iter().map(|&p| rows[p as usize])),
        }
    }
    Ok(keep)
}

/// What a partial window Top-N keeps: the rows that rank within `limit`.
pub struct PartialTopN {
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    order_by: Vec<PhysicalSortExpr>,
    rank: RankKind,
    limit: u64,
}

/// The partial step of a Top-N without keys (a window Top-N ranking whole
/// windows, or a Top-N over an append-only stream without `PARTITION BY`) on
/// more than one thread, as the partial aggregate is an aggregate's: each
/// input partition
/// keeps, of its rows of the epoch, only those that rank within N among
/// them, in arrival order, and emits them when its input ends. Keeps
/// nothing between epochs.
///
/// Why that loses no answer: a row it drops has N rows before it in its
/// own partition (better, or tied and earlier), so it has N before it in
/// the whole window too. Under RANK and DENSE_RANK it has N strictly better
/// rows (or N better values), so its rank is beyond N whatever else comes;
/// and every row better than a row that does rank within N is kept (it
/// ranks even higher in its partition), so the final ranking, over the
/// survivors, gives each of those rows its true rank. Under ROW_NUMBER the
/// survivors hold a top N of every window; which of several tied rows wins
/// is arrival order, as on one thread (SQL leaves it open).
pub struct PartialTopNExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Arc<PartialTopN>,
    props: Arc<PlanProperties>,
    metrics: super::SharedMetrics,
}

impl PartialTopNExec {
    fn new(input: Arc<dyn ExecutionPlan>, spec: Arc<PartialTopN>) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            spec,
            props: Arc::new(props),
            metrics: super::SharedMetrics::default(),
        }
    }
}

impl fmt::Debug for PartialTopNExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialTopNExec").finish()
    }
}

impl DisplayAs for PartialTopNExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let parts: Vec<String> = self.spec.partition_by.iter().map(|e| e.to_string()).collect();
        let order: Vec<String> = self.spec.order_by.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "PartialTopNExec: {:?} partition=[{}] order=[{}] limit={}, keeps each input partition's rows within the limit",
            self.spec.rank,
            parts.join(", "),
            order.join(", "),
            self.spec.limit
        )
    }
}

impl ExecutionPlan for PartialTopNExec {
    fn name(&self) -> &str {
        "PartialTopNExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let exprs = self
            .spec
            .partition_by
            .iter()
            .chain(self.spec.order_by.iter().map(|s| &s.expr));
        super::visit_each(exprs, f)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut copy = Self::new(children.swap_remove(0), Arc::clone(&self.spec));
        copy.metrics = self.metrics.clone();
        Ok(Arc::new(copy))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let epoch = crate::epoch::EpochInput::from_task(&context)?.epoch;
        let mut input = self.input.execute(partition, context)?;
        let spec = Arc::clone(&self.spec);
        let schema = self.input.schema();
        let baseline = self.metrics.baseline(partition);
        let out_schema = Arc::clone(&schema);
        let out = futures::stream::once(async move {
            // The survivors so far, then each new batch: ranked together,
            // survivors first (they arrived first).
            let mut kept: Option<RecordBatch> = None;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                if batch.num_rows() == 0 {
                    continue;
                }
                let timer = baseline.elapsed_compute().timer();
                let all = match kept.take() {
                    Some(k) => concat_batches(&schema, [&k, &batch])?,
                    None => batch,
                };
                let step = || within(&spec.partition_by, &spec.order_by, spec.rank, spec.limit, &all);
                kept = Some(super::guarded("PartialTopNExec", epoch, step)?.unwrap_or(all));
                timer.done();
            }
            let out = kept.unwrap_or_else(|| RecordBatch::new_empty(schema));
            super::record_batches(&baseline, [&out]);
            Ok::<_, DataFusionError>(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, out)))
    }
}

/// Row indices of `batch` in (partition, order, arrival) order, and their
/// ranks within their partitions. Ties keep arrival (row) order.
pub(super) fn rank_rows(
    partition_by: &[Arc<dyn PhysicalExpr>],
    order_by: &[PhysicalSortExpr],
    kind: RankKind,
    batch: &RecordBatch,
) -> Result<(Vec<u32>, Vec<u64>)> {
    let n = batch.num_rows();
    let (parts, orders) = ranking_columns(partition_by, order_by, batch)?;
    let mut columns: Vec<SortColumn> = parts
        .iter()
        .map(|a| SortColumn {
            values: Arc::clone(a),
            options: Some(SortOptions::default()),
        })
        .collect();
    columns.extend(orders.iter().zip(order_by).map(|(a, s)| SortColumn {
        values: Arc::clone(a),
        options: Some(s.options),
    }));
    // Arrival order breaks ties.
    columns.push(SortColumn {
        values: Arc::new(UInt64Array::from((0..n as u64).collect::<Vec<_>>())),
        options: Some(SortOptions::default()),
    });
    let order = lexsort_to_indices(&columns, None)?;
    let order: Vec<u32> = order.values().to_vec();
    let to_rows = |cols: &[ArrayRef]| -> Result<datafusion::arrow::row::Rows> {
        KeyRows::new(cols.iter().map(|c| c.data_type().clone()))?.convert(cols, n)
    };
    let part_rows = to_rows(&parts)?;
    let order_rows = to_rows(&orders)?;
    let mut ranks = Vec::with_capacity(n);
    let (mut number, mut rank, mut dense) = (0u64, 0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        let i = i as usize;
        let new_partition = k == 0 || part_rows.row(i) != part_rows.row(order[k - 1] as usize);
        if new_partition {
            number = 0;
            rank = 0;
            dense = 0;
        }
        number += 1;
        let tie = !new_partition && order_rows.row(i) == order_rows.row(order[k - 1] as usize);
        if !tie {
            rank = number;
            dense += 1;
        }
        ranks.push(match kind {
            RankKind::RowNumber => number,
            RankKind::Rank => rank,
            RankKind::DenseRank => dense,
        });
    }
    Ok((order, ranks))
}

/// A ranking operator's signature (see [`StatefulOperator::signature`]):
/// `head`, then its partition and order expressions and state columns.
pub(super) fn ranking_signature(
    head: &str,
    partition_by: &[Arc<dyn PhysicalExpr>],
    order_by: &[PhysicalSortExpr],
    state_schema: &Schema,
) -> String {
    let mut s = format!("{head} partition[");
    for e in partition_by {
        s.push_str(&format!("{e};"));
    }
    s.push_str("] order[");
    for e in order_by {
        s.push_str(&format!("{e};"));
    }
    s.push_str("] state[");
    for f in state_schema.fields() {
        s.push_str(&format!("{}:{};", f.name(), f.data_type()));
    }
    s.push(']');
    crate::compat::signature::strip_column_positions(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::physical_expr::expressions::Column;
    use proptest::prelude::*;

    /// [`top_rows`] (a top-k selection per partition) keeps exactly the rows
    /// that ranking the whole batch keeps, ties and nulls included, and
    /// ROW_NUMBER's ties go to the rows that came first.
    fn check(keys: &[u8], prices: &[Option<i8>], descending: bool, rank: RankKind, limit: u64) {
        let n = keys.len().min(prices.len());
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("price", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    keys[..n].iter().map(|k| format!("k{}", k % 3)),
                )),
                Arc::new(Int64Array::from_iter(
                    prices[..n].iter().map(|p| p.map(|p| i64::from(p % 4))),
                )),
            ],
        )
        .unwrap();
        let partition_by: Vec<Arc<dyn PhysicalExpr>> = vec![Arc::new(Column::new("k", 0))];
        let order_by = vec![PhysicalSortExpr {
            expr: Arc::new(Column::new("price", 1)),
            options: SortOptions {
                descending,
                nulls_first: !descending,
            },
        }];
        let (order, ranks) = rank_rows(&partition_by, &order_by, rank, &batch).unwrap();
        let mut want: Vec<u32> = order
            .iter()
            .zip(&ranks)
            .filter(|(_, r)| **r <= limit)
            .map(|(i, _)| *i)
            .collect();
        want.sort_unstable();
        let mut got = top_rows(&partition_by, &order_by, rank, limit as usize, &batch).unwrap();
        got.sort_unstable();
        assert_eq!(got, want, "{rank:?} limit {limit}");
    }

    proptest! {
        #[test]
        fn top_rows_keeps_what_ranking_keeps(
            keys in proptest::collection::vec(any::<u8>(), 0..60),
            prices in proptest::collection::vec(proptest::option::weighted(0.9, any::<i8>()), 0..60),
            descending in any::<bool>(),
            row_number in any::<bool>(),
            limit in 0u64..6,
        ) {
            let rank = if row_number { RankKind::RowNumber } else { RankKind::Rank };
            check(&keys, &prices, descending, rank, limit);
        }
    }
}
