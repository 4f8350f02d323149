//! `TopNExec`: `ROW_NUMBER() / RANK() / DENSE_RANK() OVER (PARTITION BY k
//! ORDER BY ...)` with `rn <= N` over an append-only stream, outside
//! windows: Top-N, and deduplication (`rn = 1`, keeping the first or the
//! last row of each key by the order).
//!
//! Each partition (value of `k`) keeps its current top N rows with the rank
//! each was last emitted with. An epoch ranks, per partition it touches, the
//! held rows together with the new ones (held rows first, so ties keep
//! arrival order, as in the window Top-N), and emits the difference as a
//! changelog, retractions first:
//!
//! ```text
//!   held row, same rank                 nothing
//!   held row, rank moved (still <= N)   -U (old rank), +U (new rank)
//!   held row, pushed beyond N           -D (old rank)
//!   new row within N                    +I
//!   (a -D and a +I at the same rank of a partition are paired as -U/+U)
//!   partition expired (state.ttl)       -D for each of its rows
//! ```
//!
//! The input is append-only, so a row pushed beyond N can never come back:
//! N rows per partition (more only for ties under RANK) are all it needs.
//! State is sharded by the partition keys (`--threads`), like the
//! aggregates'. A shard keeps its rows columnar, in chunks (one per epoch:
//! the rows it kept), and an index from each partition to its rows'
//! positions; a partition's old positions die when it changes, and the
//! chunks are rewritten once dead rows outnumber live ones. So an epoch
//! costs a few gathers, not a batch per partition. With `'state.ttl'`, a partition not changed for that long
//! (processing time, recorded in the offsets log) is deleted with `-D` rows.
//!
//! State file (one row per held row; unit = the partition):
//! `__k0.. (partition key values, or __all = 0 without PARTITION BY),
//! __rank, __updated_ms, <input columns>`

use datafusion::common::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, interleave_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use datafusion::error::Result;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use weir_sql::RankKind;

use super::keys::KeyRows;
use super::operator::{EpochOperator, OperatorExec};
use super::shard::{Shards, route, shard_count};
use super::units::{compact_views, take_batch};
use super::update_agg::{DELETE, INSERT, UPDATE_AFTER, UPDATE_BEFORE};
use super::window_assign::ceil_millis;
use super::window_topn::{ArrivalPrune, partial_top_n, rank_rows, ranking_signature};
use crate::epoch::EpochInput;
use crate::exec::{StateChange, StateTable, StatefulOperator};

/// A Top-N outside windows, over its input.
pub type TopNExec = OperatorExec<StreamTopNState>;

/// The Top-N's parameters, from the logical node.
#[derive(Clone, Debug)]
pub struct StreamTopNParams {
    /// `PARTITION BY`.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// `ORDER BY`.
    pub order_by: Vec<PhysicalSortExpr>,
    /// The ranking function.
    pub rank: RankKind,
    /// Keep ranks up to this.
    pub limit: u64,
    /// Partitions unchanged this long are deleted.
    pub ttl_ms: Option<i64>,
    /// Keep-first deduplication on the event time at this input column:
    /// append-only (see [`StreamTopNState::apply_first`]).
    pub first_on_time: Option<usize>,
    /// The input is a changelog (its last column the operation): see
    /// "Over a changelog" in the module docs.
    pub retract: bool,
    /// Output: the input's columns, the rank, then the operation (none when
    /// append-only).
    pub schema: SchemaRef,
}

/// Configuration and state, shared by every copy of the plan node.
pub struct StreamTopNState {
    p: StreamTopNParams,
    /// The input's rows (without the operation column of a changelog).
    input_schema: SchemaRef,
    /// Row format of every input column, to find the held row that a
    /// retraction takes back (a changelog input only).
    whole_rows: Option<KeyRows>,
    /// The unit key columns, then `__rank`, `__updated_ms`, the input's.
    state_schema: SchemaRef,
    /// Row format of the partition keys.
    keys: KeyRows,
    shards: Shards<Inner>,
    /// The thread count it was built for.
    threads: usize,
}

/// Where a held row is: (chunk, row in chunk).
type At = (usize, usize);

/// One partition's top rows, in arrival order.
struct Part {
    at: Vec<At>,
    updated_ms: i64,
}

/// Rows kept by one epoch (or a compaction), with their last emitted ranks.
/// Rows of partitions that changed since are dead; [`Inner::dead`] counts
/// them, and the chunks are rewritten when they outnumber the live rows.
struct Chunk {
    rows: RecordBatch,
    ranks: Vec<u64>,
}

/// A shard's state: the rows in columnar chunks, and each partition's
/// positions in them (one index entry per partition, not one batch).
#[derive(Default)]
struct Inner {
    chunks: Vec<Chunk>,
    parts: HashMap<Vec<u8>, Part>,
    live: usize,
    dead: usize,
    /// Partitions changed since the last checkpoint.
    changed: HashSet<Vec<u8>>,
    /// Key columns (unit keys) of partitions deleted since then.
    deleted: Vec<RecordBatch>,
    /// Keep-first on event time: partitions whose first row is not emitted
    /// yet, with its time (rebuilt from the ranks on restore).
    pending: HashMap<Vec<u8>, i64>,
}

impl Inner {
    /// The rows at `at`, in that order (one copy, from any chunks).
    fn rows(&self, schema: &SchemaRef, at: &[At]) -> Result<RecordBatch> {
        if at.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(schema)));
        }
        let batches: Vec<&RecordBatch> = self.chunks.iter().map(|c| &c.rows).collect();
        Ok(interleave_record_batch(&batches, at)?)
    }

    fn ranks(&self, at: &[At]) -> Vec<u64> {
        at.iter().map(|&(c, r)| self.chunks[c].ranks[r]).collect()
    }

    /// Rewrites the live rows into one chunk once dead rows outnumber them.
    fn maybe_compact(&mut self, schema: &SchemaRef) -> Result<()> {
        if self.dead <= 1024 || self.dead <= self.live {
            return Ok(());
        }
        let mut at: Vec<At> = Vec::with_capacity(self.live);
        let mut owners: Vec<(&Vec<u8>, usize)> = Vec::with_capacity(self.parts.len());
        for (k, p) in &self.parts {
            owners.push((k, p.at.len()));
            at.extend(&p.at);
        }
        let rows = compact_views(self.rows(schema, &at)?)?;
        let ranks = self.ranks(&at);
        let owners: Vec<(Vec<u8>, usize)> = owners.into_iter().map(|(k, n)| (k.clone(), n)).collect();
        let mut next = 0;
        for (k, n) in owners {
            if let Some(p) = self.parts.get_mut(&k) {
                p.at = (next..next + n).map(|r| (0, r)).collect();
            }
            next += n;
        }
        self.chunks = vec![Chunk { rows, ranks }];
        self.dead = 0;
        Ok(())
    }
}

impl OperatorExec<StreamTopNState> {
    /// Builds the operator, its state split into `threads` shards by the
    /// partition keys.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, p: StreamTopNParams, threads: usize) -> Result<Self> {
        Self::build(input, p, threads, true)
    }

    /// The operator [`Self::try_new`] builds, over an `input` that already
    /// holds what `try_new` may add (the partial Top-N without keys): a
    /// plan decoded from its wire form ([`StreamTopNState::config`]).
    pub fn try_new_over(input: Arc<dyn ExecutionPlan>, p: StreamTopNParams, threads: usize) -> Result<Self> {
        Self::build(input, p, threads, false)
    }

    fn build(
        input: Arc<dyn ExecutionPlan>,
        p: StreamTopNParams,
        threads: usize,
        partial: bool,
    ) -> Result<Self> {
        let mut input_schema = input.schema();
        let mut whole_rows = None;
        if p.retract {
            // The rows without their operation (the last column).
            let n = input_schema.fields().len().saturating_sub(1);
            input_schema = Arc::new(input_schema.project(&(0..n).collect::<Vec<_>>())?);
            whole_rows = Some(KeyRows::new(
                input_schema.fields().iter().map(|f| f.data_type().clone()),
            )?);
        }
        let key_types: Vec<DataType> = p
            .partition_by
            .iter()
            .map(|e| e.data_type(&input_schema))
            .collect::<Result<_>>()?;
        let mut fields: Vec<Field> = if key_types.is_empty() {
            vec![Field::new("__all", DataType::Int64, false)]
        } else {
            key_types
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("__k{i}"), t.clone(), true))
                .collect()
        };
        fields.push(Field::new("__rank", DataType::UInt64, false));
        fields.push(Field::new("__updated_ms", DataType::Int64, false));
        fields.extend(input_schema.fields().iter().map(|f| f.as_ref().clone()));
        let n_keys = p.partition_by.len();
        // Without keys there is one shard: on more than one thread, each
        // input partition first keeps its rows within N (append-only input
        // only, as on arrival in `fold`).
        let mut input = input;
        if partial && n_keys == 0 && threads > 1 && !p.retract && p.first_on_time.is_none() {
            input = partial_top_n(input, vec![], p.order_by.clone(), p.rank, p.limit);
        }
        let state = StreamTopNState {
            keys: KeyRows::new(key_types)?,
            shards: Shards::new(shard_count(threads, n_keys), Inner::default),
            p,
            input_schema,
            whole_rows,
            state_schema: Arc::new(Schema::new(fields)),
            threads,
        };
        Ok(Self::new(input, Arc::new(state)))
    }
}

impl StreamTopNState {
    /// What the operator was built from (how it crosses to a cluster;
    /// never its state): its parameters and thread count.
    pub fn config(&self) -> (&StreamTopNParams, usize) {
        (&self.p, self.threads)
    }
}

impl EpochOperator for StreamTopNState {
    const NAME: &'static str = "TopNExec";
    /// The epoch's rows of this shard.
    type Acc = Arrivals;

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.p.schema)
    }

    fn partitions(&self) -> usize {
        self.shards.count()
    }

    fn shard_keys(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.p.partition_by.clone()
    }

    fn expressions(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.p
            .partition_by
            .iter()
            .chain(self.p.order_by.iter().map(|s| &s.expr))
            .cloned()
            .collect()
    }

    fn fmt_node(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let parts: Vec<String> = self.p.partition_by.iter().map(|e| e.to_string()).collect();
        let order: Vec<String> = self.p.order_by.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "{:?} partition=[{}] order=[{}] limit={}{}, emit={}",
            self.p.rank,
            parts.join(", "),
            order.join(", "),
            self.p.limit,
            self.p.ttl_ms.map(|t| format!(", ttl={t}ms")).unwrap_or_default(),
            if self.p.first_on_time.is_some() {
                "append-only (first row by time, once the watermark passes it)"
            } else {
                "changelog"
            }
        )
    }

    fn start(&self, _partition: usize, _epoch: &EpochInput) -> Result<Self::Acc> {
        Ok(Arrivals::default())
    }

    fn fold(&self, _partition: usize, acc: &mut Self::Acc, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // Over an append-only stream (not keep-first, whose pending rows
        // follow the watermark), a row beyond N among its own batch's rows
        // is beyond N among the held and the new rows too: drop it now. A
        // partition it touched is still touched by the rows before it.
        if !self.p.retract && self.p.first_on_time.is_none() {
            let p = &self.p;
            if let Some(kept) = acc
                .prune
                .apply(&p.partition_by, &p.order_by, p.rank, p.limit, batch)?
            {
                acc.batches.push(kept);
                return Ok(());
            }
        }
        acc.batches.push(batch.clone());
        Ok(())
    }

    fn finish(&self, partition: usize, acc: Self::Acc, epoch: &EpochInput) -> Result<RecordBatch> {
        let acc = acc.batches;
        let now = epoch.processing_time_ms;
        // `state.ttl`: partitions unchanged for that long are gone before
        // the epoch's rows are ranked, so a row of such a partition starts
        // it afresh (as Flink's state TTL never returns expired state).
        let expired = match self.p.ttl_ms {
            Some(ttl) => Some(self.expire(partition, now.saturating_sub(ttl))?),
            None => None,
        };
        let out = match self.p.first_on_time {
            Some(time) => self.apply_first(partition, &acc, now, epoch.watermark_out, time)?,
            None => self.apply(partition, &acc, now)?,
        };
        match expired {
            Some(gone) if gone.num_rows() > 0 => Ok(concat_batches(&self.p.schema, [&gone, &out])?),
            _ => Ok(out),
        }
    }
}

/// A shard's rows of the epoch so far.
#[derive(Default)]
pub struct Arrivals {
    batches: Vec<RecordBatch>,
    prune: ArrivalPrune,
}

impl StreamTopNState {
    /// The partition keys of `batch`'s rows, as Arrow arrays.
    fn key_arrays(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let n = batch.num_rows();
        self.p
            .partition_by
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(n))
            .collect()
    }

    /// The unit key columns of state rows for `rows`.
    fn unit_columns(&self, rows: &RecordBatch) -> Result<Vec<ArrayRef>> {
        if self.p.partition_by.is_empty() {
            return Ok(vec![Arc::new(Int64Array::from(vec![0; rows.num_rows()]))]);
        }
        self.key_arrays(rows)
    }

    /// Output rows: `rows` with `ranks` and the operation `op` (none when
    /// append-only).
    fn output(&self, rows: &RecordBatch, ranks: Vec<u64>, ops: Vec<&'static str>) -> Result<RecordBatch> {
        let append = self.p.first_on_time.is_some();
        let n = self.p.schema.fields().len();
        let rank_type = self
            .p
            .schema
            .field(if append { n - 1 } else { n - 2 })
            .data_type();
        let rank: ArrayRef = Arc::new(UInt64Array::from(ranks));
        let mut columns = rows.columns().to_vec();
        columns.push(cast(&rank, rank_type)?);
        if !append {
            columns.push(Arc::new(StringArray::from(ops)));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.p.schema), columns)?)
    }

    /// Keep-first deduplication on event time, append-only. Each partition
    /// holds one row: its first by time so far (rank 0: not emitted yet),
    /// or the row it emitted (rank 1). A pending row is emitted once the
    /// watermark passes its time: a row arriving later is no older than
    /// the watermark (older ones are late, dropped below), so it cannot
    /// come first, and a tie keeps the row that arrived first. Rows of a
    /// partition whose first row was emitted are dropped.
    fn apply_first(
        &self,
        shard: usize,
        new: &[RecordBatch],
        now: i64,
        watermark: i64,
        time: usize,
    ) -> Result<RecordBatch> {
        let new = concat_batches(&self.input_schema, new)?;
        let mut inner = self.shards.lock(shard);
        if new.num_rows() > 0 {
            let keys = self.keys.convert(&self.key_arrays(&new)?, new.num_rows())?;
            let emitted = |inner: &Inner, k: &[u8]| {
                inner
                    .parts
                    .get(k)
                    .and_then(|p| p.at.first())
                    .is_some_and(|&(c, r)| inner.chunks[c].ranks[r] == 1)
            };
            let mut touched: Vec<Vec<u8>> = Vec::new();
            let mut seen: HashSet<&[u8]> = HashSet::default();
            let mut keep = Vec::with_capacity(new.num_rows());
            for i in 0..new.num_rows() {
                let k = keys.row(i);
                let open = !emitted(&inner, k.data());
                keep.push(open);
                if open && seen.insert(k.data()) {
                    touched.push(k.as_ref().to_vec());
                }
            }
            let new = filter_record_batch(&new, &BooleanArray::from(keep))?;
            if new.num_rows() > 0 {
                let mut at: Vec<At> = Vec::new();
                for k in &touched {
                    if let Some(part) = inner.parts.get(k) {
                        at.extend(&part.at);
                    }
                }
                let held = inner.rows(&self.input_schema, &at)?;
                let all = compact_views(concat_batches(&self.input_schema, [&held, &new])?)?;
                let (order, ranks) = rank_rows(&self.p.partition_by, &self.p.order_by, self.p.rank, &all)?;
                let mut kept: Vec<u32> = order
                    .iter()
                    .zip(&ranks)
                    .filter(|(_, r)| **r == 1)
                    .map(|(i, _)| *i)
                    .collect();
                kept.sort_unstable();
                let rows = compact_views(take_batch(&all, &UInt32Array::from(kept))?)?;
                let row_keys = self.keys.convert(&self.key_arrays(&rows)?, rows.num_rows())?;
                // Up, not down: see `ceil_millis`.
                let times = ceil_millis(rows.column(time))?;
                let c = inner.chunks.len();
                for (j, &t) in times.iter().enumerate() {
                    let k = row_keys.row(j).as_ref().to_vec();
                    inner.pending.insert(k.clone(), t);
                    inner.changed.insert(k.clone());
                    inner.live += 1;
                    if let Some(old) = inner.parts.insert(
                        k,
                        Part {
                            at: vec![(c, j)],
                            updated_ms: now,
                        },
                    ) {
                        inner.live -= old.at.len();
                        inner.dead += old.at.len();
                    }
                }
                let n = rows.num_rows();
                inner.chunks.push(Chunk {
                    rows,
                    ranks: vec![0; n],
                });
                inner.maybe_compact(&self.input_schema)?;
            }
        }
        let ready: Vec<Vec<u8>> = inner
            .pending
            .iter()
            .filter(|(_, t)| **t <= watermark)
            .map(|(k, _)| k.clone())
            .collect();
        let mut at = Vec::with_capacity(ready.len());
        for k in ready {
            inner.pending.remove(&k);
            let Some(&(c, r)) = inner.parts.get(&k).and_then(|p| p.at.first()) else {
                continue;
            };
            inner.chunks[c].ranks[r] = 1;
            inner.changed.insert(k);
            at.push((c, r));
        }
        let rows = inner.rows(&self.input_schema, &at)?;
        self.output(&rows, vec![1; at.len()], vec![])
    }

    /// Splits a changelog epoch's rows into the rows it adds (`+I`, `+U`)
    /// and the rows it takes back (`-D`, `-U`), each without the
    /// operation column.
    fn split_changelog(&self, batch: &RecordBatch) -> Result<(RecordBatch, RecordBatch)> {
        let n = batch.num_columns().saturating_sub(1);
        let ops = cast(batch.column(n), &DataType::Utf8)?;
        let adds: BooleanArray = ops
            .as_string::<i32>()
            .iter()
            .map(|o| Some(matches!(o, Some(INSERT) | Some(UPDATE_AFTER))))
            .collect();
        let data = RecordBatch::try_new(Arc::clone(&self.input_schema), batch.columns()[..n].to_vec())?;
        let takes_back = datafusion::arrow::compute::not(&adds)?;
        Ok((
            filter_record_batch(&data, &adds)?,
            filter_record_batch(&data, &takes_back)?,
        ))
    }

    /// Ranks the touched partitions' held and new rows; returns the changes.
    fn apply(&self, shard: usize, new: &[RecordBatch], now: i64) -> Result<RecordBatch> {
        let Some(first) = new.first() else {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.p.schema)));
        };
        let new = concat_batches(&first.schema(), new)?;
        // Over a changelog: the rows added, and those taken back.
        let (new, gone) = if self.p.retract {
            let (added, gone) = self.split_changelog(&new)?;
            (added, Some(gone).filter(|g| g.num_rows() > 0))
        } else {
            (new, None)
        };
        if new.num_rows() == 0 && gone.is_none() {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.p.schema)));
        }
        let new_keys = self.keys.convert(&self.key_arrays(&new)?, new.num_rows())?;
        let gone_keys = match &gone {
            Some(g) => Some(self.keys.convert(&self.key_arrays(g)?, g.num_rows())?),
            None => None,
        };
        let mut inner = self.shards.lock(shard);
        // Held rows of the touched partitions first (each in arrival order),
        // then the new rows: row order is arrival order within a partition.
        let mut touched: Vec<Vec<u8>> = Vec::new();
        let mut seen: HashSet<&[u8]> = HashSet::default();
        let gone_rows = gone_keys
            .iter()
            .flat_map(|k| (0..k.num_rows()).map(move |i| k.row(i)));
        for k in (0..new.num_rows()).map(|i| new_keys.row(i)).chain(gone_rows) {
            if seen.insert(k.data()) {
                touched.push(k.as_ref().to_vec());
            }
        }
        let mut at: Vec<At> = Vec::new();
        for k in &touched {
            if let Some(part) = inner.parts.get(k) {
                at.extend(&part.at);
            }
        }
        // A held row's last emitted rank; rank 0 is a row held but not
        // emitted (ranked beyond N, over a changelog).
        let mut old_rank: Vec<Option<u64>> = inner
            .ranks(&at)
            .into_iter()
            .map(|r| (r > 0).then_some(r))
            .collect();
        old_rank.resize(at.len() + new.num_rows(), None);
        let held = inner.rows(&self.input_schema, &at)?;
        // Compacted once: view arrays from many batches carry all their
        // buffers, and each take below would clone that whole list.
        let all = compact_views(concat_batches(&self.input_schema, [&held, &new])?)?;
        // Each row taken back removes one equal row, held or new (the
        // latest: a row added and taken back in one epoch never shows).
        // One that matches none (its partition expired) is ignored, as
        // Flink does.
        let mut dead = vec![false; all.num_rows()];
        if let (Some(gone), Some(whole)) = (&gone, &self.whole_rows) {
            let all_rows = whole.convert(all.columns(), all.num_rows())?;
            let gone_rows = whole.convert(gone.columns(), gone.num_rows())?;
            let mut by_row: HashMap<&[u8], Vec<usize>> = HashMap::new();
            for i in 0..all.num_rows() {
                by_row.entry(all_rows.row(i).data()).or_default().push(i);
            }
            for j in 0..gone.num_rows() {
                if let Some(i) = by_row.get_mut(gone_rows.row(j).data()).and_then(|v| v.pop()) {
                    dead[i] = true;
                }
            }
        }
        let alive: Option<Vec<u32>> = dead.contains(&true).then(|| {
            (0..all.num_rows() as u32)
                .filter(|&i| !dead[i as usize])
                .collect()
        });
        let (order, ranks) = match &alive {
            Some(alive) => {
                let live = take_batch(&all, &UInt32Array::from(alive.clone()))?;
                let (order, ranks) = rank_rows(&self.p.partition_by, &self.p.order_by, self.p.rank, &live)?;
                (
                    order.iter().map(|&i| alive[i as usize]).collect::<Vec<u32>>(),
                    ranks,
                )
            }
            None => rank_rows(&self.p.partition_by, &self.p.order_by, self.p.rank, &all)?,
        };

        // The changes, and each partition's new rows.
        let limit = self.p.limit;
        let (mut retract, mut retract_rank, mut retract_op) = (Vec::new(), Vec::new(), Vec::new());
        let (mut insert, mut insert_rank, mut insert_op) = (Vec::new(), Vec::new(), Vec::new());
        let mut kept: Vec<(u32, u64)> = Vec::new();
        for (i, o) in old_rank.iter().enumerate() {
            if let (true, Some(o)) = (dead[i], o) {
                retract.push(i as u32);
                retract_rank.push(*o);
                retract_op.push(DELETE);
            }
        }
        for (&i, &r) in order.iter().zip(&ranks) {
            let within = r <= limit;
            match old_rank[i as usize] {
                Some(o) if within && o == r => {}
                Some(o) if within => {
                    retract.push(i);
                    retract_rank.push(o);
                    retract_op.push(UPDATE_BEFORE);
                    insert.push(i);
                    insert_rank.push(r);
                    insert_op.push(UPDATE_AFTER);
                }
                Some(o) => {
                    retract.push(i);
                    retract_rank.push(o);
                    retract_op.push(DELETE);
                }
                None if within => {
                    insert.push(i);
                    insert_rank.push(r);
                    insert_op.push(INSERT);
                }
                None => {}
            }
            // Over an append-only stream a row beyond N never comes back;
            // over a changelog it may (when a row above it is taken back),
            // so it is kept, not emitted (rank 0).
            if within {
                kept.push((i, r));
            } else if self.p.retract {
                kept.push((i, 0));
            }
        }
        let all_keys = self.keys.convert(&self.key_arrays(&all)?, all.num_rows())?;
        // A row that takes the place of another at the same rank is an
        // update of that rank, as Flink emits it: -D/+I become -U/+U.
        let mut entered: HashMap<(&[u8], u64), usize> = HashMap::new();
        for (j, (&i, &op)) in insert.iter().zip(&insert_op).enumerate() {
            if op == INSERT {
                entered.insert((all_keys.row(i as usize).data(), insert_rank[j]), j);
            }
        }
        for (j, &i) in retract.iter().enumerate() {
            if retract_op[j] == DELETE
                && let Some(&k) = entered.get(&(all_keys.row(i as usize).data(), retract_rank[j]))
            {
                retract_op[j] = UPDATE_BEFORE;
                insert_op[k] = UPDATE_AFTER;
            }
        }
        // The kept rows become one new chunk, in arrival (row) order; each
        // touched partition's old rows die.
        kept.sort_unstable_by_key(|(i, _)| *i);
        let c = inner.chunks.len();
        let mut by_part: HashMap<&[u8], Vec<At>> = HashMap::new();
        for (j, (i, _)) in kept.iter().enumerate() {
            by_part
                .entry(all_keys.row(*i as usize).data())
                .or_default()
                .push((c, j));
        }
        // A partition left with no rows (all taken back) is deleted; a row
        // of it names its unit for the checkpoint.
        let mut emptied: Vec<u32> = Vec::new();
        let mut first_row: HashMap<&[u8], u32> = HashMap::new();
        if self.p.retract {
            for i in 0..all.num_rows() {
                first_row.entry(all_keys.row(i).data()).or_insert(i as u32);
            }
        }
        for k in &touched {
            let at = by_part.remove(k.as_slice()).unwrap_or_default();
            if at.is_empty() {
                if let Some(old) = inner.parts.remove(k) {
                    inner.live -= old.at.len();
                    inner.dead += old.at.len();
                    inner.changed.remove(k);
                    emptied.extend(first_row.get(k.as_slice()));
                }
                continue;
            }
            inner.changed.insert(k.clone());
            inner.live += at.len();
            if let Some(old) = inner.parts.insert(k.clone(), Part { at, updated_ms: now }) {
                inner.live -= old.at.len();
                inner.dead += old.at.len();
            }
        }
        if !emptied.is_empty() {
            let unit = self.unit_columns(&take_batch(&all, &UInt32Array::from(emptied))?)?;
            let schema = Arc::new(
                self.state_schema
                    .project(&(0..self.unit_key_len()).collect::<Vec<_>>())?,
            );
            inner.deleted.push(RecordBatch::try_new(schema, unit)?);
        }
        let rows = compact_views(take_batch(
            &all,
            &UInt32Array::from(kept.iter().map(|(i, _)| *i).collect::<Vec<_>>()),
        )?)?;
        inner.chunks.push(Chunk {
            rows,
            ranks: kept.iter().map(|(_, r)| *r).collect(),
        });
        inner.maybe_compact(&self.input_schema)?;
        let retractions = self.output(
            &take_batch(&all, &UInt32Array::from(retract))?,
            retract_rank,
            retract_op,
        )?;
        let insertions = self.output(
            &take_batch(&all, &UInt32Array::from(insert))?,
            insert_rank,
            insert_op,
        )?;
        Ok(concat_batches(&self.p.schema, [&retractions, &insertions])?)
    }

    /// Deletes partitions unchanged since before `cutoff`; their `-D` rows.
    fn expire(&self, shard: usize, cutoff: i64) -> Result<RecordBatch> {
        let mut inner = self.shards.lock(shard);
        let old: Vec<Vec<u8>> = inner
            .parts
            .iter()
            .filter(|(_, p)| p.updated_ms < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        if old.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.p.schema)));
        }
        let (mut at, mut firsts) = (Vec::new(), Vec::new());
        for k in &old {
            inner.pending.remove(k);
            if let Some(part) = inner.parts.remove(k) {
                inner.changed.remove(k);
                inner.live -= part.at.len();
                inner.dead += part.at.len();
                firsts.extend(part.at.first());
                at.extend(part.at);
            }
        }
        // The deleted units' keys, from one row of each.
        let unit = self.unit_columns(&inner.rows(&self.input_schema, &firsts)?)?;
        let schema = Arc::new(
            self.state_schema
                .project(&(0..self.unit_key_len()).collect::<Vec<_>>())?,
        );
        inner.deleted.push(RecordBatch::try_new(schema, unit)?);
        // An append-only deduplication forgets an expired key silently (its
        // row was final when emitted), as Flink does.
        // Rows held but not emitted (rank 0, beyond N over a changelog)
        // have nothing to retract.
        let out = if self.p.first_on_time.is_some() {
            RecordBatch::new_empty(Arc::clone(&self.p.schema))
        } else {
            at.retain(|&(c, r)| inner.chunks[c].ranks[r] > 0);
            let rows = inner.rows(&self.input_schema, &at)?;
            self.output(&rows, inner.ranks(&at), vec![DELETE; at.len()])?
        };
        inner.maybe_compact(&self.input_schema)?;
        Ok(out)
    }

    /// The state rows of the partitions `keys`, as one batch.
    fn state_rows_of(&self, inner: &Inner, keys: &[&Vec<u8>]) -> Result<RecordBatch> {
        let mut at = Vec::new();
        let mut updated = Vec::new();
        for k in keys {
            let part = &inner.parts[*k];
            at.extend(&part.at);
            updated.extend(std::iter::repeat_n(part.updated_ms, part.at.len()));
        }
        let rows = inner.rows(&self.input_schema, &at)?;
        let mut columns = self.unit_columns(&rows)?;
        columns.push(Arc::new(UInt64Array::from(inner.ranks(&at))));
        columns.push(Arc::new(Int64Array::from(updated)));
        columns.extend(rows.columns().iter().cloned());
        Ok(RecordBatch::try_new(Arc::clone(&self.state_schema), columns)?)
    }
}

impl StatefulOperator for StreamTopNState {
    fn signature(&self) -> String {
        ranking_signature(
            &format!(
                "top-n {:?} limit={} ttl={:?} first_on_time={:?}{}",
                self.p.rank,
                self.p.limit,
                self.p.ttl_ms,
                self.p.first_on_time,
                // Over a changelog the state also holds rows beyond N.
                if self.p.retract { " over a changelog" } else { "" }
            ),
            &self.p.partition_by,
            &self.p.order_by,
            &self.state_schema,
        )
    }

    fn kind(&self) -> &'static str {
        "top-n"
    }

    fn emits(&self) -> &'static str {
        if self.p.first_on_time.is_some() {
            "append-only: each partition's first row by time once, when the watermark passes its time"
        } else {
            "on update: the rank changes of each epoch as +I/-U/+U/-D (a row pushed out of the top is taken back)"
        }
    }

    fn state_rows(&self) -> usize {
        self.shards.lock_all().iter().map(|s| s.live).sum()
    }

    fn describe(&self) -> StateTable {
        let keys = if self.p.partition_by.is_empty() {
            vec!["(one partition)".into()]
        } else {
            self.p.partition_by.iter().map(|e| e.to_string()).collect()
        };
        let mut values = vec!["rank".to_string()];
        values.extend(self.input_schema.fields().iter().map(|f| f.name().clone()));
        StateTable {
            name: "top_rows".into(),
            keys: crate::compat::signature::strip_column_positions(&keys.join(", "))
                .split(", ")
                .map(String::from)
                .collect(),
            values,
            evicted_by: format!(
                "{}{}",
                if self.p.first_on_time.is_some() {
                    "rows after a partition's first by time (rank 0: waiting for the watermark to pass its time; \
                     rank 1: emitted), each epoch"
                        .to_string()
                } else if self.p.retract {
                    format!(
                        "rows the input changelog takes back (-D/-U), each epoch; rows ranked beyond {} are kept \
                         (rank 0) while they live, since a retraction above them brings them back",
                        self.p.limit
                    )
                } else {
                    format!(
                        "rows ranked beyond {} in their partition, each epoch",
                        self.p.limit
                    )
                },
                match self.p.ttl_ms {
                    Some(t) if self.p.first_on_time.is_some() =>
                        format!("; a partition unchanged for {t} ms (state.ttl, processing time), silently"),
                    Some(t) => format!(
                        "; a partition unchanged for {t} ms (state.ttl, processing time), with -D rows"
                    ),
                    None => "; partitions are kept for the life of the query (no state.ttl)".into(),
                }
            ),
        }
    }

    fn state_schema(&self) -> SchemaRef {
        Arc::clone(&self.state_schema)
    }

    fn unit_key_len(&self) -> usize {
        self.p.partition_by.len().max(1)
    }

    fn state_shards(&self) -> usize {
        self.shards.count()
    }

    fn checkpoint(&self, full: bool) -> Result<Vec<Option<StateChange>>> {
        let mut shards = self.shards.lock_all();
        let mut parts = Vec::with_capacity(shards.len());
        for inner in shards.iter_mut() {
            let mut change = StateChange::default();
            let keys: Vec<&Vec<u8>> = if full {
                inner.parts.keys().collect()
            } else {
                inner
                    .changed
                    .iter()
                    .filter(|k| inner.parts.contains_key(*k))
                    .collect()
            };
            // One batch per shard, gathered from the chunks at once.
            if !keys.is_empty() {
                change.upserts.push(self.state_rows_of(inner, &keys)?);
            }
            if !full {
                change.deletes.append(&mut inner.deleted);
            }
            inner.deleted.clear();
            inner.changed.clear();
            parts.push(change.part(full));
        }
        Ok(parts)
    }

    fn restore(&self, batches: Vec<RecordBatch>, _watermark: i64) -> Result<()> {
        let mut shards = self.shards.lock_all();
        for s in shards.iter_mut() {
            **s = Inner::default();
        }
        let n_units = self.unit_key_len();
        let key_columns: Vec<usize> = if self.p.partition_by.is_empty() {
            vec![]
        } else {
            (0..n_units).collect()
        };
        // One batch, so that a partition's rows (a unit) are grouped whole.
        let batches: Vec<RecordBatch> = batches
            .into_iter()
            .map(|b| b.with_schema(Arc::clone(&self.state_schema)))
            .collect::<std::result::Result<_, _>>()?;
        let batch = concat_batches(&self.state_schema, &batches)?;
        // Each copy goes as soon as the next is made (a large state should
        // not be held three times over at the peak).
        drop(batches);
        let parts = route(&batch, &key_columns, shards.len())?;
        drop(batch);
        {
            for (shard, part) in parts {
                let inner = &mut shards[shard];
                let rows = compact_views(RecordBatch::try_new(
                    Arc::clone(&self.input_schema),
                    part.columns()[n_units + 2..].to_vec(),
                )?)?;
                let keys = self.keys.convert(&self.key_arrays(&rows)?, rows.num_rows())?;
                let ranks = part.column(n_units).as_primitive::<UInt64Type>();
                let updated = part.column(n_units + 1).as_primitive::<Int64Type>();
                // Each shard gets one chunk; rows keep their stored order,
                // which is each partition's arrival order.
                let c = inner.chunks.len();
                for i in 0..rows.num_rows() {
                    let p = inner.parts.entry(keys.row(i).as_ref().to_vec()).or_insert(Part {
                        at: Vec::new(),
                        updated_ms: updated.value(i),
                    });
                    p.at.push((c, i));
                }
                if let Some(time) = self.p.first_on_time {
                    let times = ceil_millis(rows.column(time))?;
                    for (i, &t) in times.iter().enumerate() {
                        if ranks.value(i) == 0 {
                            inner.pending.insert(keys.row(i).as_ref().to_vec(), t);
                        }
                    }
                }
                inner.live += rows.num_rows();
                inner.chunks.push(Chunk {
                    rows,
                    ranks: ranks.values().to_vec(),
                });
            }
        }
        Ok(())
    }
}
