//! `IntervalJoinExec`: an interval join of two streams (see
//! `weir_sql::StreamJoinNode`), `INNER`, `LEFT`, `RIGHT` or `FULL`.
//!
//! Each side keeps the rows that a later row of the other side can still
//! match. With the condition `right.t - left.t BETWEEN lo AND hi` and the
//! pipeline's watermark `W` (no row arriving later is older than `W`, or
//! than `W - lag` for a side whose times trail the watermark, such as the
//! window_end of an upstream window aggregate):
//!
//! * a left row can still match while `t + hi >= W - right_lag`;
//! * a right row can still match while `t - lo >= W - left_lag`.
//!
//! (With a bound whose ends come from other columns, `b.t BETWEEN a.t AND
//! a.expires`, `t` is that column: `a.expires` for the left row, see
//! `weir_sql::nodes::JoinTime`.)
//!
//! Semi joins (`IN`, `EXISTS`) emit a row of their side once, when it
//! first matches; anti joins (`NOT EXISTS`) emit it when it is evicted
//! without having matched.
//!
//! An epoch joins its new left rows with every right row held (and the new
//! ones), and the rows held on the left with the new right rows; it then
//! adds the new rows to the state and evicts what the epoch's closing
//! watermark rules out. Rows of an outer side that are evicted without
//! having matched are emitted then, with NULLs for the other side: only then
//! is it certain that they have no match.
//!
//! The matching itself is DataFusion's: each of the two joins is a
//! `HashJoinExec` (a `NestedLoopJoinExec` without equal keys) over the
//! epoch's rows and the state, building its hash table on the epoch's new
//! rows and streaming the held rows through it, with the query's whole join
//! condition as its filter.
//! An inner join takes in the projection above it (see [`Projected`]), so
//! those joins build only the columns the rest of the plan uses.
//!
//! Rows older than the watermark the state was last evicted to (less their
//! side's lag) are late (their partners may be gone): they are dropped and
//! counted. The planner
//! puts a late filter on the sources under each side, so this happens only
//! when a source was idle while the watermark moved on without it.
//!
//! Keyed on the equal keys: with `--threads N` both inputs are
//! hash-partitioned on them and each partition keeps one shard. The one
//! exception is a side with one row per window (a window aggregate without
//! keys) met by a side of many rows (Nexmark q7): that side is broadcast,
//! read once and held whole in every shard, and the other side is not
//! repartitioned at all (see [`broadcast_side`]). The state file is the
//! same either way.
//!
//! State file, one row per held row:
//! `__side: UInt8` (0 left, 1 right), `__epoch: Int64` (the epoch it
//! arrived in), `__key0..`: the equal keys' values (to deal rows back to
//! shards), `__matched: Boolean` (on the unique side of a join on a
//! primary key with a pulled filter, whether the row passes it: see
//! [`UniqueSide`]), then the left columns (`__l<i>_<name>`,
//! NULL on right rows) and the right columns (`__r<i>_<name>`), then, for a
//! join of signed rows (a changelog input), `__matches: Int64` (an outer
//! side's row's matches net of their signs). A unit is
//! (side, arrival epoch): an epoch writes the units it added, evicted from
//! or marked matched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, UInt8Array, UInt32Array,
    UInt64Array, new_null_array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimestampMillisecondType, UInt64Type,
};
use datafusion::arrow::row::Rows;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{JoinType, NullEquality};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::projection::{EmbeddedProjection, ProjectionExec, try_embed_projection};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, collect,
};
use futures::{FutureExt, TryStreamExt};
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

use super::shard::{Shards, check_input, input_distribution, route, shard_count};
use super::units::{compact_views, take_batch};
use super::window_assign::to_millis;

/// Operations of an updating join's changelog.
const INSERT: &str = "+I";
const DELETE: &str = "-D";
use super::{StateChange, StateTable, StatefulOperator, guarded};
use crate::epoch::EpochInput;
use weir_sql::nodes::JoinTime;

/// What the planner hands the operator.
#[derive(Clone)]
pub struct StreamJoinParams {
    /// Equal keys: (left expression, right expression), over each input.
    pub on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    /// The join condition beyond the equal keys, time bound included.
    pub filter: Option<JoinFilter>,
    /// INNER, LEFT, RIGHT or FULL.
    pub join_type: JoinType,
    /// Whether NULL keys match each other.
    pub null_equality: NullEquality,
    /// The time bound of an interval join (`None`: a regular join).
    pub time: Option<JoinTime>,
    /// A regular join's state TTL: rows are dropped this long (processing
    /// time) after they arrived.
    pub ttl_ms: Option<i64>,
    /// Signed rows (a changelog input): each input's last column is its
    /// rows' sign; an outer join counts matches by sign (see
    /// [`StreamJoinState::apply_signed`]).
    pub signed: bool,
    /// An inner regular join's side whose keys are unique (a declared
    /// `PRIMARY KEY`; see `weir_sql::nodes::UniqueSide`).
    pub unique: Option<UniqueSide>,
    /// The bound as written in EXPLAIN.
    pub bound_text: String,
    /// Output: left columns, then right columns.
    pub schema: SchemaRef,
}

/// A side of an inner regular join whose rows each have a key of their
/// own (see `weir_sql::nodes::UniqueSide`): the other side's rows that met
/// their partner (passing `filter` or not) are not held, and this side's
/// rows that fail `filter` pair with nothing. Rows of the other side that
/// arrived before their partner stay held after it came (they can never
/// pair again; dropping them would rewrite their epoch's state unit for
/// little: in Nexmark q20, the bids for an auction of the next few).
#[derive(Clone)]
pub struct UniqueSide {
    /// Which input.
    pub side: datafusion::common::JoinSide,
    /// The filter pulled up from under this side, over its input.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

/// Which input a row came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Left = 0,
    Right = 1,
}

/// Rows of one side that arrived in one epoch, in one shard.
struct Chunk {
    epoch: i64,
    /// Processing time of the epoch they arrived in (for `state.ttl`).
    arrived_ms: i64,
    rows: RecordBatch,
    /// Each row's time it is evicted by (`StreamJoinState::until_of`), ms
    /// (`i64::MIN` for none: such a row can match nothing); empty for a
    /// regular join.
    times: Vec<i64>,
    matched: Vec<bool>,
    /// An outer join of signed rows: each row's matches, net of signs
    /// (`matched` is `count != 0`); empty otherwise.
    counts: Vec<i64>,
    /// The unique side's rows (see [`UniqueSide`]): whether each passes
    /// the filter pulled into the join (evaluated when the rows arrive or
    /// are restored); empty when every row passes.
    passes: Vec<bool>,
}

impl Chunk {
    fn new(
        epoch: i64,
        arrived_ms: i64,
        rows: RecordBatch,
        time: Option<usize>,
        matched: Vec<bool>,
    ) -> Result<Self> {
        let times = match time {
            Some(time) => to_millis(rows.column(time))?
                .as_primitive::<TimestampMillisecondType>()
                .iter()
                .map(|t| t.unwrap_or(i64::MIN))
                .collect(),
            None => vec![],
        };
        Ok(Self {
            epoch,
            arrived_ms,
            rows,
            times,
            matched,
            counts: vec![],
            passes: vec![],
        })
    }

    /// Whether row `r` pairs at all (see [`Self::passes`]).
    fn passes(&self, r: usize) -> bool {
        self.passes.get(r).copied().unwrap_or(true)
    }
}

/// One shard's rows.
#[derive(Default)]
struct Held {
    left: Vec<Chunk>,
    right: Vec<Chunk>,
    /// The watermark this shard last evicted to: rows older than it are
    /// late.
    evicted_to: Option<i64>,
    /// A regular join's rows by key, per side (left, right); `None` until
    /// built, and again after rows were evicted.
    index: [Option<KeyIndex>; 2],
}

/// A side's held rows by join key. A regular join only ever appends chunks
/// (until `state.ttl` evicts, which drops the index to be rebuilt), so an
/// epoch indexes its new chunk and probes with its new rows: its cost
/// follows the new rows and their matches, not the rows held. Rows with a
/// NULL key are left out when NULL matches nothing.
///
/// Layout (no allocation per key or per row): each indexed row has an id,
/// its position among the side's rows in chunk order. `heads` holds, per
/// distinct key, the key's hash and its newest row; `prev[id]` is the row
/// with the same key before `id` ([`NO_ROW`] at a key's first). A key's rows
/// are that chain, walked newest first and given oldest first. Keys are
/// compared in Arrow's row format, kept per chunk (`keys`). (It was a map
/// from each key's bytes to a `Vec` of its rows: two allocations per new
/// key, a fifth of q3's time.)
#[derive(Default)]
struct KeyIndex {
    heads: HashTable<(u64, u32)>,
    prev: Vec<u32>,
    /// Each row id's (chunk, row).
    at: Vec<(u32, u32)>,
    /// Each indexed chunk's keys.
    keys: Vec<Rows>,
    hasher: DefaultHashBuilder,
}

/// The end of a key's chain in [`KeyIndex::prev`].
const NO_ROW: u32 = u32::MAX;

/// The key of row `id` of a [`KeyIndex`] (its `keys` and `at`).
fn key_at<'a>(keys: &'a [Rows], at: &[(u32, u32)], id: u32) -> &'a [u8] {
    let (c, r) = at[id as usize];
    keys[c as usize].row(r as usize).data()
}

impl KeyIndex {
    /// Chunks indexed so far (the first ones of the side).
    fn chunks(&self) -> usize {
        self.keys.len()
    }

    /// Row `id`'s key.
    fn key(&self, id: u32) -> &[u8] {
        key_at(&self.keys, &self.at, id)
    }

    /// Indexes the next chunk from its keys; `dead` rows (NULL keys) stay
    /// out.
    fn add(&mut self, keys: Rows, dead: &[bool]) -> Result<()> {
        let c = self.keys.len();
        self.keys.push(keys);
        // Room for every row as a new key: growing the table row by row
        // rehashes it again and again.
        self.heads.reserve(dead.len(), |&(h, _)| h);
        self.at.reserve(dead.len());
        self.prev.reserve(dead.len());
        for (r, &dead) in dead.iter().enumerate() {
            if dead {
                continue;
            }
            let id = u32::try_from(self.at.len())
                .ok()
                .filter(|&id| id != NO_ROW)
                .ok_or_else(|| {
                    DataFusionError::Execution(
                        "a join side holds more than 4 billion rows in one shard: give the job more \
                         --threads, or bound its state with a time condition or 'state.ttl'"
                            .into(),
                    )
                })?;
            self.at.push((c as u32, r as u32));
            let (heads, keys, at) = (&mut self.heads, &self.keys, &self.at);
            let key = keys[c].row(r);
            let hash = self.hasher.hash_one(key.data());
            match heads.find_mut(hash, |&(h, g)| h == hash && key_at(keys, at, g) == key.data()) {
                Some(head) => {
                    self.prev.push(head.1);
                    head.1 = id;
                }
                None => {
                    self.prev.push(NO_ROW);
                    heads.insert_unique(hash, (hash, id), |&(h, _)| h);
                }
            }
        }
        Ok(())
    }

    /// Calls `f(chunk, row)` for each indexed row whose key is `key`, oldest
    /// first. `chain` is scratch space.
    fn matches(&self, key: &[u8], chain: &mut Vec<u32>, mut f: impl FnMut(u32, u32)) {
        let hash = self.hasher.hash_one(key);
        let Some(&(_, newest)) = self.heads.find(hash, |&(h, g)| h == hash && self.key(g) == key) else {
            return;
        };
        chain.clear();
        let mut g = newest;
        while g != NO_ROW {
            chain.push(g);
            g = self.prev[g as usize];
        }
        for &g in chain.iter().rev() {
            let (c, r) = self.at[g as usize];
            f(c, r);
        }
    }
}

impl Held {
    fn side(&mut self, side: Side) -> &mut Vec<Chunk> {
        match side {
            Side::Left => &mut self.left,
            Side::Right => &mut self.right,
        }
    }
}

/// Configuration and state, shared by every copy of the plan node.
pub struct StreamJoinState {
    p: StreamJoinParams,
    /// The `--threads` it was built for (its shards follow from them).
    threads: usize,
    left_schema: SchemaRef,
    right_schema: SchemaRef,
    state_schema: SchemaRef,
    shards: Shards<Held>,
    /// Units (side, arrival epoch) changed since the last checkpoint.
    dirty: Mutex<BTreeSet<(u8, i64)>>,
    /// The side every partition sees whole (see [`broadcast_side`]), if
    /// any: its rows are held in every shard, and the other side is not
    /// repartitioned.
    broadcast: Option<Side>,
    /// NULL columns of each side's schema (left, right), as long as the
    /// longest asked for so far: a row of one side is padded with the
    /// other's NULLs in every state file and outer row, and a new NULL
    /// array of N strings zeroes 16 bytes a row (a tenth of Nexmark q20's
    /// checkpoint). Slices of one array cost nothing.
    null_columns: Mutex<[Vec<ArrayRef>; 2]>,
}

/// The plan node.
pub struct StreamJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    state: Arc<StreamJoinState>,
    props: Arc<PlanProperties>,
    metrics: super::SharedMetrics,
    /// The broadcast side's rows of this epoch, read once (by whichever
    /// partition asks first) and handed to every partition. A copy of the
    /// node (one per epoch) starts empty.
    broadcast_rows: Mutex<Option<SharedRows>>,
    /// The output columns, when a projection above was embedded (see
    /// [`Projected`]); `None`: every column of `StreamJoinParams::schema`.
    projection: Option<Arc<Projected>>,
}

/// A projection embedded into an inner join's matching (DataFusion's
/// projection pushdown offers it, see `try_swapping_with_projection`): the
/// epoch's joins then build only the columns the plan above uses, not
/// every column of both sides (Nexmark q4 keeps 3 of 7), and no row ids.
/// The state still holds whole rows: its file is the same with or without.
pub struct Projected {
    /// Positions in the join's full output (left columns, then right).
    indices: Vec<usize>,
    schema: SchemaRef,
}

/// A regular join's pairs built for a projection: the columns of each
/// side (positions in its schema, ascending) that the rows hold.
#[derive(Clone, Copy)]
struct Built<'a> {
    proj: &'a Projected,
    left: &'a [usize],
    right: &'a [usize],
}

impl Projected {
    /// The columns of `side` (of `nl` left columns) to build for the
    /// output and the join's filter, ascending.
    fn needs(&self, side: Side, nl: usize, filter: Option<&JoinFilter>) -> Vec<usize> {
        let mut cols: Vec<usize> = match side {
            Side::Left => self.indices.iter().filter(|&&i| i < nl).copied().collect(),
            Side::Right => self
                .indices
                .iter()
                .filter(|&&i| i >= nl)
                .map(|&i| i - nl)
                .collect(),
        };
        if let Some(f) = filter {
            let want = match side {
                Side::Left => datafusion::common::JoinSide::Left,
                Side::Right => datafusion::common::JoinSide::Right,
            };
            cols.extend(
                f.column_indices()
                    .iter()
                    .filter(|c| c.side == want)
                    .map(|c| c.index),
            );
        }
        cols.sort_unstable();
        cols.dedup();
        // A batch of no columns would lose its row count in `take`.
        if cols.is_empty() {
            cols.push(0);
        }
        cols
    }
}

/// A broadcast side's rows, collected once and shared.
type SharedRows = futures::future::Shared<
    futures::future::BoxFuture<'static, std::result::Result<Arc<Vec<RecordBatch>>, Arc<DataFusionError>>>,
>;

impl StreamJoinExec {
    /// The join of `left` and `right` under `threads` threads.
    pub fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        p: StreamJoinParams,
        threads: usize,
    ) -> Result<Self> {
        let (left_schema, right_schema) = (left.schema(), right.schema());
        let mut fields = vec![
            Field::new("__side", DataType::UInt8, false),
            Field::new("__epoch", DataType::Int64, false),
            Field::new("__arrived_ms", DataType::Int64, false),
        ];
        for (i, (l, _)) in p.on.iter().enumerate() {
            fields.push(Field::new(format!("__key{i}"), l.data_type(&left_schema)?, true));
        }
        fields.push(Field::new("__matched", DataType::Boolean, false));
        for (i, f) in left_schema.fields().iter().enumerate() {
            fields.push(Field::new(
                format!("__l{i}_{}", f.name()),
                f.data_type().clone(),
                true,
            ));
        }
        for (i, f) in right_schema.fields().iter().enumerate() {
            fields.push(Field::new(
                format!("__r{i}_{}", f.name()),
                f.data_type().clone(),
                true,
            ));
        }
        if p.signed {
            fields.push(Field::new("__matches", DataType::Int64, false));
        }
        let shards = shard_count(threads, p.on.len());
        let mut state = StreamJoinState {
            p,
            threads,
            left_schema,
            right_schema,
            state_schema: Arc::new(Schema::new(fields)),
            null_columns: Mutex::new([vec![], vec![]]),
            shards: Shards::new(shards, Held::default),
            dirty: Mutex::new(BTreeSet::new()),
            broadcast: None,
        };
        state.broadcast = broadcast_side(&state, &left, &right);
        Ok(Self::with_state(left, right, Arc::new(state), None))
    }

    fn with_state(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        state: Arc<StreamJoinState>,
        projection: Option<Arc<Projected>>,
    ) -> Self {
        let schema = projection
            .as_ref()
            .map_or_else(|| Arc::clone(&state.p.schema), |p| Arc::clone(&p.schema));
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(state.shards.count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            left,
            right,
            state,
            props: Arc::new(props),
            metrics: super::SharedMetrics::default(),
            broadcast_rows: Mutex::new(None),
            projection,
        }
    }

    fn input(&self, side: Side) -> &Arc<dyn ExecutionPlan> {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }

    /// The broadcast side's rows of this epoch: its one partition, run
    /// once for all partitions (running it per partition would run its
    /// stateful operators again).
    fn broadcast_rows(&self, side: Side, context: &Arc<TaskContext>) -> Result<SharedRows> {
        let mut once = self.broadcast_rows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rows) = once.as_ref() {
            return Ok(rows.clone());
        }
        let stream = self.input(side).execute(0, Arc::clone(context))?;
        let rows = async move {
            stream
                .try_collect::<Vec<_>>()
                .await
                .map(Arc::new)
                .map_err(Arc::new)
        }
        .boxed()
        .shared();
        *once = Some(rows.clone());
        Ok(rows)
    }

    /// The operator's state (for checkpoints).
    pub fn state(&self) -> Arc<StreamJoinState> {
        Arc::clone(&self.state)
    }

    /// The positions in the full output (left columns, then right) of the
    /// projection taken in, if any (see [`Projected`]).
    pub fn projection_indices(&self) -> Option<&[usize]> {
        self.projection.as_deref().map(|p| p.indices.as_slice())
    }

    /// An empty join of the same configuration and projection over other
    /// inputs (a cluster's shard task runs one of its own; see
    /// `weir_cluster::stages`).
    pub fn try_new_over(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        p: StreamJoinParams,
        threads: usize,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let join = Self::try_new(left, right, p, threads)?;
        match projection {
            Some(indices) => join.with_projection(Some(indices)),
            None => Ok(join),
        }
    }

    fn keys(&self, side: Side) -> Vec<Arc<dyn PhysicalExpr>> {
        self.state
            .p
            .on
            .iter()
            .map(|(l, r)| Arc::clone(if side == Side::Left { l } else { r }))
            .collect()
    }
}

impl fmt::Debug for StreamJoinExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntervalJoinExec").finish()
    }
}

impl DisplayAs for StreamJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let p = &self.state.p;
        let eq = match p.null_equality {
            NullEquality::NullEqualsNull => "IS NOT DISTINCT FROM",
            NullEquality::NullEqualsNothing => "=",
        };
        let on: Vec<String> = p.on.iter().map(|(l, r)| format!("{l} {eq} {r}")).collect();
        write!(
            f,
            "{}: {} on=[{}]{}, {}{}{}{}",
            self.name(),
            p.join_type,
            on.join(", "),
            p.filter
                .as_ref()
                .map(|j| format!(" filter={}", j.expression()))
                .unwrap_or_default(),
            p.bound_text,
            self.state.unique_text(),
            match self.state.broadcast {
                Some(Side::Left) => ", left side broadcast to every partition",
                Some(Side::Right) => ", right side broadcast to every partition",
                None => "",
            },
            self.projection
                .as_ref()
                .map(|p| {
                    let names: Vec<String> = p
                        .indices
                        .iter()
                        .map(|&i| format!("{}@{i}", self.state.p.schema.field(i).name()))
                        .collect();
                    format!(", projection=[{}]", names.join(", "))
                })
                .unwrap_or_default()
        )
    }
}

impl ExecutionPlan for StreamJoinExec {
    fn name(&self) -> &str {
        if self.state.p.time.is_some() {
            "IntervalJoinExec"
        } else {
            "RegularJoinExec"
        }
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let n = self.state.shards.count();
        [Side::Left, Side::Right]
            .into_iter()
            .map(|side| match self.state.broadcast {
                Some(b) if b == side => Distribution::SinglePartition,
                Some(_) => Distribution::UnspecifiedDistribution,
                None => input_distribution(n, self.keys(side)),
            })
            .collect()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        super::visit_each(self.state.p.on.iter().flat_map(|(l, r)| [l, r]), f)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 2 {
            return Err(DataFusionError::Internal(
                "IntervalJoinExec takes two inputs".into(),
            ));
        }
        let right = children.swap_remove(1);
        let left = children.swap_remove(0);
        // A copy shares the state and the metrics.
        let mut copy = Self::with_state(left, right, Arc::clone(&self.state), self.projection.clone());
        copy.metrics = self.metrics.clone();
        Ok(Arc::new(copy))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    /// Takes in the columns a projection above keeps, for a join whose
    /// output is only its pairs (an inner join of unsigned rows): its
    /// matching then builds just those (see [`Projected`]).
    fn try_swapping_with_projection(
        &self,
        projection: &ProjectionExec,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if !self.state.only_pairs() || projection.expr().is_empty() {
            return Ok(None);
        }
        try_embed_projection(projection, self)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let shards = self.state.shards.count();
        let broadcast = self.state.broadcast;
        for (input, side) in [(&self.left, Side::Left), (&self.right, Side::Right)] {
            let n = input.output_partitioning().partition_count();
            let want = if broadcast == Some(side) { 1 } else { shards };
            if broadcast.is_none() {
                check_input(
                    "IntervalJoinExec",
                    input.output_partitioning(),
                    &self.keys(side),
                    shards,
                )?;
            }
            if n != want || partition >= shards {
                return Err(DataFusionError::Internal(format!(
                    "IntervalJoinExec has {shards} partitions and an input of {n}, asked for partition {partition}"
                )));
            }
        }
        let epoch = EpochInput::from_task(&context)?;
        // Each side's rows for this partition: its own partition, or the
        // broadcast side's one partition, shared.
        let rows_of = |side: Side| -> Result<futures::future::BoxFuture<'static, Result<Vec<RecordBatch>>>> {
            Ok(if broadcast == Some(side) {
                self.broadcast_rows(side, &context)?
                    .map(|rows| rows.map(|r| r.as_ref().clone()).map_err(DataFusionError::Shared))
                    .boxed()
            } else {
                self.input(side)
                    .execute(partition, Arc::clone(&context))?
                    .try_collect::<Vec<_>>()
                    .boxed()
            })
        };
        let (left, right) = (rows_of(Side::Left)?, rows_of(Side::Right)?);
        let state = Arc::clone(&self.state);
        let projection = self.projection.clone();
        let baseline = self.metrics.baseline(partition);
        let out = futures::stream::once(async move {
            let (l, r) = futures::try_join!(left, right)?;
            // Both inputs are in: what follows is the join's own work.
            let timer = baseline.elapsed_compute().timer();
            let out = state
                .run(partition, l, r, &epoch, projection.as_deref(), &context)
                .await?;
            timer.done();
            super::record_batches(&baseline, &out);
            Ok::<_, DataFusionError>(futures::stream::iter(out.into_iter().map(Ok)))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), out)))
    }
}

impl EmbeddedProjection for StreamJoinExec {
    /// `projection`: positions in this node's output (itself projected or
    /// not), as DataFusion's `try_embed_projection` gives them.
    fn with_projection(&self, projection: Option<Vec<usize>>) -> Result<Self> {
        let Some(indices) = projection else {
            return Ok(Self::with_state(
                Arc::clone(&self.left),
                Arc::clone(&self.right),
                Arc::clone(&self.state),
                None,
            ));
        };
        let full = &self.state.p.schema;
        let indices: Vec<usize> = match &self.projection {
            Some(p) => indices
                .iter()
                .map(|&i| {
                    p.indices.get(i).copied().ok_or_else(|| {
                        DataFusionError::Internal(format!("IntervalJoinExec has no output column {i}"))
                    })
                })
                .collect::<Result<_>>()?,
            None => indices,
        };
        if let Some(&i) = indices.iter().find(|&&i| i >= full.fields().len()) {
            return Err(DataFusionError::Internal(format!(
                "IntervalJoinExec has no output column {i}"
            )));
        }
        let schema = Arc::new(full.project(&indices)?);
        Ok(Self::with_state(
            Arc::clone(&self.left),
            Arc::clone(&self.right),
            Arc::clone(&self.state),
            Some(Arc::new(Projected { indices, schema })),
        ))
    }
}

/// The side a join reads whole in every partition, instead of
/// hash-partitioning both sides on the keys: a side with one row per window
/// (a window aggregate without keys, such as Nexmark q7's highest price of
/// each window) met by a side of many rows (q7's bids). Repartitioning the
/// many rows cost more than the join itself on two threads (every bid, with
/// every column, crossed threads to meet a few hundred rows); held in every
/// shard, the small side costs a few rows a shard.
///
/// Only a side whose rows need not remember their matches (not an outer,
/// semi or anti join's preserved side), since each copy meets only a part
/// of the other side; and only when the other side comes in as many
/// partitions as the join has shards. Its rows are the same in every shard,
/// so its state is written once and a checkpoint is the same as with keyed
/// shards: a job can stop with one layout and resume with the other.
fn broadcast_side(
    state: &StreamJoinState,
    left: &Arc<dyn ExecutionPlan>,
    right: &Arc<dyn ExecutionPlan>,
) -> Option<Side> {
    let shards = state.shards.count();
    if shards <= 1 {
        return None;
    }
    let parts = |p: &Arc<dyn ExecutionPlan>| p.output_partitioning().partition_count();
    [(Side::Right, right, left), (Side::Left, left, right)]
        .into_iter()
        .find(|(side, small, big)| {
            !state.tracks(*side) && parts(small) == 1 && parts(big) == shards && one_row_per_window(small)
        })
        .map(|(side, ..)| side)
}

/// Whether `plan` is a window aggregate without keys (one partition), under
/// stateless nodes that keep or drop rows one by one.
fn one_row_per_window(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut plan = plan;
    loop {
        match plan.name() {
            "WindowAggregateExec" => return plan.output_partitioning().partition_count() == 1,
            "ProjectionExec" | "FilterExec" | "CoalesceBatchesExec" => {}
            _ => return false,
        }
        match plan.children().as_slice() {
            [child] => plan = child,
            _ => return false,
        }
    }
}

/// `+ 3s`, `- 2s`, `+ 0s`: an offset added to a time, for EXPLAIN.
fn offset(ms: i64) -> String {
    if ms < 0 {
        format!("- {}", weir_sql::nodes::fmt_ms(ms.saturating_neg()))
    } else {
        format!("+ {}", weir_sql::nodes::fmt_ms(ms))
    }
}

/// `batch` without its rows whose time (column `time`) is NULL or before
/// `from` (`None` when none is left), and how many were dropped; `batch`
/// itself when none is.
fn keep_from_time(batch: RecordBatch, time: usize, from: i64) -> Result<(Option<RecordBatch>, u64)> {
    let times = to_millis(batch.column(time))?;
    let times = times.as_primitive::<TimestampMillisecondType>();
    if datafusion::arrow::array::Array::null_count(times) == 0 && times.values().iter().all(|&t| t >= from) {
        return Ok((Some(batch), 0));
    }
    // Packed 64 rows at a time; a NULL time (the mask's own NULL) is not
    // kept, as `filter` treats a NULL in the mask as false.
    let values = times.values();
    let keep = BooleanArray::new(
        datafusion::arrow::buffer::BooleanBuffer::collect_bool(times.len(), |i| values[i] >= from),
        datafusion::arrow::array::Array::nulls(times).cloned(),
    );
    let kept = filter_record_batch(&batch, &keep)?;
    let dropped = (batch.num_rows() - kept.num_rows()) as u64;
    Ok(((kept.num_rows() > 0).then_some(kept), dropped))
}

/// Row ids appended to a side's rows for the epoch's joins (their position
/// in the list given), so the matched rows can be found afterwards.
fn with_ids(batches: &[RecordBatch], schema: &SchemaRef) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("__weir_row_id", DataType::UInt64, false));
    let with = Arc::new(Schema::new(fields));
    let mut next = 0u64;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let n = b.num_rows() as u64;
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_iter_values(next..next + n)));
        next += n;
        out.push(RecordBatch::try_new(Arc::clone(&with), columns)?);
    }
    Ok((with, out))
}

/// The rows at `at` ((batch, row) positions) of `batches`, in that order.
fn gather(batches: &[&RecordBatch], at: &[(usize, usize)], schema: &SchemaRef) -> Result<RecordBatch> {
    if at.is_empty() {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    }
    Ok(datafusion::arrow::compute::interleave_record_batch(batches, at)?)
}

/// Marks the rows `ids` (positions across `chunks` in order) matched;
/// returns those that were not yet, as (chunk, row).
fn mark(chunks: &mut [Chunk], ids: &[u64]) -> Vec<(usize, usize)> {
    let mut starts = Vec::with_capacity(chunks.len());
    let mut at = 0u64;
    for c in chunks.iter() {
        starts.push(at);
        at += c.rows.num_rows() as u64;
    }
    let mut newly = Vec::new();
    for &id in ids {
        let i = starts.partition_point(|&s| s <= id).saturating_sub(1);
        let row = (id - starts[i]) as usize;
        if let Some(c) = chunks.get_mut(i)
            && let Some(m) = c.matched.get_mut(row)
            && !*m
        {
            *m = true;
            newly.push((i, row));
        }
    }
    newly
}

impl StreamJoinState {
    /// What it was built from: its parameters and `--threads`.
    pub fn config(&self) -> (&StreamJoinParams, usize) {
        (&self.p, self.threads)
    }

    /// Whether one side is read whole by every shard (see
    /// [`broadcast_side`]) rather than split by the keys.
    pub fn broadcasts(&self) -> bool {
        self.broadcast.is_some()
    }

    /// A chunk of rows of `side` arriving (or restored), with their
    /// [`Chunk::passes`] on the unique side.
    fn chunk(
        &self,
        side: Side,
        epoch: i64,
        arrived_ms: i64,
        rows: RecordBatch,
        matched: Vec<bool>,
    ) -> Result<Chunk> {
        let passes = self.passes(side, &rows)?;
        let rows = self.key_only_where_failing(side, rows, &passes)?;
        let mut chunk = Chunk::new(epoch, arrived_ms, rows, self.until_of(side), matched)?;
        chunk.passes = passes;
        Ok(chunk)
    }

    /// The unique side's rows that fail the pulled filter with every
    /// column but the join keys' NULL: such a row only ever tells a row of
    /// the other side that its partner came (in Nexmark q20, 80% of the
    /// auctions: without this they were most of the state file's bytes).
    /// A column declared NOT NULL keeps its values. Whether a row passes is
    /// then no longer computable from it: the state file keeps it (see
    /// [`Self::state_rows_of`]).
    fn key_only_where_failing(&self, side: Side, rows: RecordBatch, passes: &[bool]) -> Result<RecordBatch> {
        if passes.iter().all(|&p| p) {
            return Ok(rows);
        }
        let keys: std::collections::HashSet<usize> = self
            .p
            .on
            .iter()
            .flat_map(|(l, r)| {
                datafusion::physical_expr::utils::collect_columns(if side == Side::Left { l } else { r })
            })
            .map(|c| c.index())
            .collect();
        let failing: BooleanArray = passes.iter().map(|&p| Some(!p)).collect();
        let columns = rows
            .columns()
            .iter()
            .zip(rows.schema().fields())
            .enumerate()
            .map(|(i, (c, f))| {
                if keys.contains(&i) || !f.is_nullable() {
                    Ok(Arc::clone(c))
                } else {
                    Ok(datafusion::arrow::compute::nullif(c, &failing)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        // Copied out, so that the failing rows' strings are freed.
        compact_views(RecordBatch::try_new(rows.schema(), columns)?)
    }

    /// Whether a regular join's new rows with a NULL key are not held: a
    /// NULL key matches nothing (unless `IS NOT DISTINCT FROM`), so in an
    /// inner join such a row pairs with nothing, ever, and no outer row or
    /// anti join is waiting on it. A changelog input keeps them, so that
    /// a retraction finds what it retracts. (They were held for ever: in
    /// a join of clicks to users, every click without a user.)
    fn drops_null_keys(&self) -> bool {
        self.p.time.is_none()
            && !self.p.on.is_empty()
            && self.p.join_type == JoinType::Inner
            && !self.p.signed
            && self.p.null_equality == NullEquality::NullEqualsNothing
    }

    /// The unique side (see [`UniqueSide`]), if any.
    fn unique(&self) -> Option<Side> {
        self.p.unique.as_ref().map(|u| match u.side {
            datafusion::common::JoinSide::Right => Side::Right,
            _ => Side::Left,
        })
    }

    /// Whether each row of `rows` (of `side`) passes the filter pulled
    /// into the join: empty (all pass) unless `side` is the unique side
    /// with a filter. NULL (unknown) fails, as in a WHERE clause.
    fn passes(&self, side: Side, rows: &RecordBatch) -> Result<Vec<bool>> {
        let Some(f) = self
            .p
            .unique
            .as_ref()
            .filter(|_| self.unique() == Some(side))
            .and_then(|u| u.filter.as_ref())
        else {
            return Ok(vec![]);
        };
        let n = rows.num_rows();
        let v = f.evaluate(rows)?.into_array(n)?;
        let v = v.as_boolean_opt().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "a join's pulled filter gave {}, not booleans",
                v.data_type()
            ))
        })?;
        Ok((0..n)
            .map(|i| datafusion::arrow::array::Array::is_valid(v, i) && v.value(i))
            .collect())
    }

    fn dirty(&self) -> MutexGuard<'_, BTreeSet<(u8, i64)>> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a side's rows that never matched are emitted when evicted:
    /// an outer side (with NULLs for the other side), an anti join's side.
    fn preserves(&self, side: Side) -> bool {
        match side {
            Side::Left => matches!(
                self.p.join_type,
                JoinType::Left | JoinType::Full | JoinType::LeftAnti
            ),
            Side::Right => matches!(
                self.p.join_type,
                JoinType::Right | JoinType::Full | JoinType::RightAnti
            ),
        }
    }

    /// The side a semi join emits (each row once, when it first matches).
    fn semi(&self) -> Option<Side> {
        match self.p.join_type {
            JoinType::LeftSemi => Some(Side::Left),
            JoinType::RightSemi => Some(Side::Right),
            _ => None,
        }
    }

    /// Whether matches are emitted as pairs (not a semi or anti join).
    fn emits_pairs(&self) -> bool {
        matches!(
            self.p.join_type,
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
        )
    }

    /// Whether a side's rows remember that they matched.
    fn tracks(&self, side: Side) -> bool {
        self.preserves(side) || self.semi() == Some(side)
    }

    fn schema_of(&self, side: Side) -> &SchemaRef {
        match side {
            Side::Left => &self.left_schema,
            Side::Right => &self.right_schema,
        }
    }

    /// A side's watermarked time column (rows older than the watermark
    /// are late).
    fn time_of(&self, side: Side) -> Option<usize> {
        let t = self.p.time.as_ref()?;
        Some(match side {
            Side::Left => t.left,
            Side::Right => t.right,
        })
    }

    /// The column a side's held rows are evicted by ([`Chunk::times`]): the
    /// time bounding the other side's times they can match.
    fn until_of(&self, side: Side) -> Option<usize> {
        let t = self.p.time.as_ref()?;
        Some(match side {
            Side::Left => t.left_until,
            Side::Right => t.right_until,
        })
    }

    /// The new rows of a side, the late ones (older than `since`) dropped
    /// (and a row without a time); and how many were. Batch by batch: a
    /// batch without late rows is passed on as it is, not copied.
    fn on_time(
        &self,
        side: Side,
        batches: Vec<RecordBatch>,
        since: Option<i64>,
    ) -> Result<(Vec<RecordBatch>, u64)> {
        let (Some(since), Some(t), Some(time)) = (since, &self.p.time, self.time_of(side)) else {
            return Ok((batches, 0));
        };
        let since = since.saturating_sub(match side {
            Side::Left => t.left_lag_ms,
            Side::Right => t.right_lag_ms,
        });
        let (mut kept, mut late) = (Vec::with_capacity(batches.len()), 0u64);
        for b in batches {
            let (b, dropped) = keep_from_time(b, time, since)?;
            late += dropped;
            kept.extend(b);
        }
        Ok((kept, late))
    }

    /// The new rows of a side as one batch, to be held. An interval join's
    /// side whose rows need not remember their matches drops at once the
    /// rows that the epoch's closing watermark evicts (in Nexmark q4, all
    /// but the last seconds' bids: they met their auctions in this epoch's
    /// joins), so that only the rows kept are copied into the state.
    fn arrivals(&self, side: Side, batches: &[RecordBatch], watermark: i64) -> Result<RecordBatch> {
        let schema = self.schema_of(side);
        let (Some(until), Some(keep_from)) = (self.until_of(side), self.keep_from(side, watermark)) else {
            return Ok(concat_batches(schema, batches)?);
        };
        if self.tracks(side) || self.p.signed {
            return Ok(concat_batches(schema, batches)?);
        }
        let mut kept = Vec::with_capacity(batches.len());
        for b in batches {
            kept.extend(keep_from_time(b.clone(), until, keep_from)?.0);
        }
        Ok(concat_batches(schema, &kept)?)
    }

    /// An interval join's eviction bound for a side's held rows under
    /// `watermark`: a row stays while its [`Self::until_of`] time is at
    /// least this (a left row can still match while t + hi >= W -
    /// right_lag, a right row while t - lo >= W - left_lag). `None` for a
    /// regular join.
    fn keep_from(&self, side: Side, watermark: i64) -> Option<i64> {
        let t = self.p.time.as_ref()?;
        if watermark == i64::MAX {
            return Some(i64::MAX);
        }
        Some(match side {
            Side::Left => watermark.saturating_sub(t.right_lag_ms).saturating_sub(t.hi_ms),
            Side::Right => watermark.saturating_sub(t.left_lag_ms).saturating_add(t.lo_ms),
        })
    }

    /// One inner join of `left` rows with `right` rows (with row ids), by
    /// DataFusion, building on the left (`build_right`: on the right).
    /// With `proj`, only the projected columns, and no row ids.
    async fn join(
        &self,
        left: Vec<RecordBatch>,
        right: Vec<RecordBatch>,
        build_right: bool,
        proj: Option<&Projected>,
        context: &Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let ((ls, left), (rs, right)) = if proj.is_some() {
            (
                (Arc::clone(&self.left_schema), left),
                (Arc::clone(&self.right_schema), right),
            )
        } else {
            (
                with_ids(&left, &self.left_schema)?,
                with_ids(&right, &self.right_schema)?,
            )
        };
        // Without ids, the join's columns are the output's (left, right).
        let projection = proj.map(|p| p.indices.clone());
        let left = MemorySourceConfig::try_new_exec(&[left], ls, None)? as Arc<dyn ExecutionPlan>;
        let right = MemorySourceConfig::try_new_exec(&[right], rs, None)? as Arc<dyn ExecutionPlan>;
        let plan: Arc<dyn ExecutionPlan> = if self.p.on.is_empty() {
            Arc::new(NestedLoopJoinExec::try_new(
                left,
                right,
                self.p.filter.clone(),
                &JoinType::Inner,
                projection,
            )?)
        } else {
            let join = HashJoinExec::try_new(
                left,
                right,
                self.p.on.clone(),
                self.p.filter.clone(),
                &JoinType::Inner,
                projection,
                PartitionMode::CollectLeft,
                self.p.null_equality,
                false,
            )?;
            if build_right {
                join.swap_inputs(PartitionMode::CollectLeft)?
            } else {
                Arc::new(join)
            }
        };
        collect(plan, Arc::clone(context)).await
    }

    /// The join keys of `rows` (of `side`) in row format, and which rows
    /// can match nothing (a NULL key, when NULL matches nothing).
    fn key_rows(&self, side: Side, rows: &RecordBatch) -> Result<(datafusion::arrow::row::Rows, Vec<bool>)> {
        let n = rows.num_rows();
        let mut arrays = Vec::with_capacity(self.p.on.len());
        let mut fields = Vec::with_capacity(self.p.on.len());
        for (l, r) in &self.p.on {
            // Both sides in the left keys' types, so equal keys are equal
            // bytes; a float's -0.0 as 0.0, which it equals (a batch join
            // matches them; the bytes differ in the sign bit).
            let t = l.data_type(&self.left_schema)?;
            let e = if side == Side::Left { l } else { r };
            let a = e.evaluate(rows)?.into_array(n)?;
            let a = if a.data_type() == &t { a } else { cast(&a, &t)? };
            arrays.push(super::keys::positive_zero(&a));
            fields.push(datafusion::arrow::row::SortField::new(t));
        }
        let dead: Vec<bool> = if self.p.null_equality == NullEquality::NullEqualsNothing {
            (0..n).map(|i| arrays.iter().any(|a| a.is_null(i))).collect()
        } else {
            vec![false; n]
        };
        let converted = datafusion::arrow::row::RowConverter::new(fields)?.convert_columns(&arrays)?;
        Ok((converted, dead))
    }

    /// Brings a side's key index up to its chunks (building it when absent).
    fn ensure_index(&self, held: &mut Held, side: Side) -> Result<()> {
        let mut index = held.index[side as usize].take().unwrap_or_default();
        let chunks = match side {
            Side::Left => &held.left,
            Side::Right => &held.right,
        };
        // An index ahead of its chunks took an epoch's new rows (see
        // `index_joins`) that were never held: the epoch failed before.
        if index.chunks() > chunks.len() {
            index = KeyIndex::default();
        }
        for chunk in chunks.iter().skip(index.chunks()) {
            let (keys, dead) = self.key_rows(side, &chunk.rows)?;
            index.add(keys, &dead)?;
        }
        held.index[side as usize] = Some(index);
        Ok(())
    }

    /// A regular join's two joins of the epoch through the key indexes:
    /// the new left rows with every right row (held and new), and the held
    /// left rows with the new right rows. Each gives batches in the layout
    /// of [`Self::join`]'s (left columns, left row id, right columns, right
    /// row id; ids are positions in the held chunks, new rows after them),
    /// the query's condition applied.
    /// With `proj`, the pairs are built of the columns the projection and
    /// the condition use, and come out projected, without ids.
    ///
    /// With a unique side (see [`UniqueSide`]), a pair whose unique row
    /// fails the pulled filter is left out. The last two vectors tell which
    /// new rows (left, right) need not be held: with a unique side, the
    /// other side's rows that met their partner (by key, filter or not);
    /// where [`Self::drops_null_keys`], the rows with a NULL key. Empty
    /// when none need be dropped.
    #[allow(clippy::type_complexity)]
    fn index_joins(
        &self,
        held: &mut Held,
        new_left: &RecordBatch,
        new_right: &RecordBatch,
        proj: Option<&Projected>,
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>, Vec<bool>, Vec<bool>)> {
        self.ensure_index(held, Side::Left)?;
        self.ensure_index(held, Side::Right)?;
        let starts = |chunks: &[Chunk]| -> Vec<u64> {
            let mut at = 0u64;
            chunks
                .iter()
                .map(|c| {
                    let s = at;
                    at += c.rows.num_rows() as u64;
                    s
                })
                .collect()
        };
        let (left_starts, right_starts) = (starts(&held.left), starts(&held.right));
        let held_right_len: u64 = held.right.iter().map(|c| c.rows.num_rows() as u64).sum();
        let n_held_right = held.right.len();
        let (lkeys, ldead) = self.key_rows(Side::Left, new_left)?;
        let (rkeys, rdead) = self.key_rows(Side::Right, new_right)?;
        let unique = self.unique();
        // The new right rows are indexed once, for good, where the epoch
        // will hold them all as the side's next chunk: then the held index
        // takes them now, as chunk `n_held_right`, and the next epoch need
        // not index that chunk again (it was a tenth of Nexmark q3). That
        // is so unless some are dropped before they are held (the other
        // side is the unique one, or a NULL key is dropped), or the input
        // is a changelog (`apply_signed` holds them its own way). Else
        // they get an index of their own for this epoch.
        let provisional = new_right.num_rows() > 0
            && !self.p.signed
            && unique != Some(Side::Left)
            && !(self.drops_null_keys() && rdead.iter().any(|&d| d));
        let mut new_right_index = KeyIndex::default();
        if provisional {
            held.index[1]
                .get_or_insert_with(KeyIndex::default)
                .add(rkeys, &rdead)?;
        } else {
            new_right_index.add(rkeys, &rdead)?;
        }
        let empty = KeyIndex::default();
        let left_index = held.index[0].as_ref().unwrap_or(&empty);
        let right_index = held.index[1].as_ref().unwrap_or(&empty);
        let (new_left_passes, new_right_passes) = (
            self.passes(Side::Left, new_left)?,
            self.passes(Side::Right, new_right)?,
        );
        let pass = |v: &[bool], i: usize| v.get(i).copied().unwrap_or(true);
        let (held_left_chunks, held_right_chunks) = (&held.left, &held.right);
        // New rows of the other side than the unique one that met their
        // partner.
        let mut left_met = vec![
            false;
            if unique == Some(Side::Right) {
                ldead.len()
            } else {
                0
            }
        ];
        let mut right_met = vec![
            false;
            if unique == Some(Side::Left) {
                rdead.len()
            } else {
                0
            }
        ];

        // New left rows with the held right rows and the new ones (in the
        // held index as its last chunk, or indexed here as one chunk).
        let (mut li, mut rpos, mut rid) = (Vec::new(), Vec::new(), Vec::new());
        let mut chain = Vec::new();
        for (i, &dead) in ldead.iter().enumerate() {
            if dead {
                continue;
            }
            let key = lkeys.row(i);
            let left_passes = pass(&new_left_passes, i);
            // A match with right row `r` of held chunk `c`, or with new
            // right row `r` when `c` is `n_held_right`.
            let mut on_match = |c: u32, r: u32| {
                let new = c as usize == n_held_right;
                match unique {
                    Some(Side::Right) => {
                        left_met[i] = true;
                        let passes = if new {
                            pass(&new_right_passes, r as usize)
                        } else {
                            held_right_chunks[c as usize].passes(r as usize)
                        };
                        if !passes {
                            return;
                        }
                    }
                    Some(Side::Left) if new => right_met[r as usize] = true,
                    _ => {}
                }
                if !left_passes {
                    return;
                }
                li.push(i as u32);
                rpos.push((c as usize, r as usize));
                rid.push(if new {
                    held_right_len + r as u64
                } else {
                    right_starts[c as usize] + r as u64
                });
            };
            // Oldest first, the new rows last.
            right_index.matches(key.data(), &mut chain, &mut on_match);
            if !provisional {
                new_right_index.matches(key.data(), &mut chain, |_, j| on_match(n_held_right as u32, j));
            }
        }
        // The columns built of each side (all, or those `proj` needs).
        let nl = self.left_schema.fields().len();
        let cols = |side: Side| proj.map(|p| p.needs(side, nl, self.p.filter.as_ref()));
        let (lcols, rcols) = (cols(Side::Left), cols(Side::Right));
        let narrow = |b: &RecordBatch, cols: &Option<Vec<usize>>| -> Result<RecordBatch> {
            Ok(match cols {
                Some(c) => b.project(c)?,
                None => b.clone(),
            })
        };
        let narrow_schema = |schema: &SchemaRef, cols: &Option<Vec<usize>>| -> Result<SchemaRef> {
            Ok(match cols {
                Some(c) => Arc::new(schema.project(c)?),
                None => Arc::clone(schema),
            })
        };
        let (left_schema, right_schema) = (
            narrow_schema(&self.left_schema, &lcols)?,
            narrow_schema(&self.right_schema, &rcols)?,
        );
        let (new_left, new_right) = (narrow(new_left, &lcols)?, narrow(new_right, &rcols)?);
        let held_right: Vec<RecordBatch> = held
            .right
            .iter()
            .map(|c| narrow(&c.rows, &rcols))
            .collect::<Result<_>>()?;
        let mut right_batches: Vec<&RecordBatch> = held_right.iter().collect();
        right_batches.push(&new_right);
        let left_rows = take_batch(&new_left, &UInt32Array::from(li.clone()))?;
        let right_rows = gather(&right_batches, &rpos, &right_schema)?;
        let lids: Vec<u64> = li.iter().map(|&i| i as u64).collect();
        let built = proj
            .zip(lcols.as_deref().zip(rcols.as_deref()))
            .map(|(proj, (left, right))| Built { proj, left, right });
        let first = self.pairs(left_rows, lids, right_rows, rid, built)?;

        // Held left rows with the new right rows.
        let (mut lpos, mut lid, mut rj) = (Vec::new(), Vec::new(), Vec::new());
        let rkeys = if provisional {
            &right_index.keys[n_held_right]
        } else {
            &new_right_index.keys[0]
        };
        for (j, &dead) in rdead.iter().enumerate() {
            if dead {
                continue;
            }
            let right_passes = pass(&new_right_passes, j);
            left_index.matches(rkeys.row(j).data(), &mut chain, |c, r| {
                if unique == Some(Side::Left) {
                    right_met[j] = true;
                    if !held_left_chunks[c as usize].passes(r as usize) {
                        return;
                    }
                }
                if !right_passes {
                    return;
                }
                lpos.push((c as usize, r as usize));
                lid.push(left_starts[c as usize] + r as u64);
                rj.push(j as u32);
            });
        }
        let held_left: Vec<RecordBatch> = held
            .left
            .iter()
            .map(|c| narrow(&c.rows, &lcols))
            .collect::<Result<_>>()?;
        let left_batches: Vec<&RecordBatch> = held_left.iter().collect();
        let left_rows = gather(&left_batches, &lpos, &left_schema)?;
        let right_rows = take_batch(&new_right, &UInt32Array::from(rj.clone()))?;
        let rids: Vec<u64> = rj.iter().map(|&j| j as u64).collect();
        let second = self.pairs(left_rows, lid, right_rows, rids, built)?;
        if self.drops_null_keys() {
            let or_dead = |met: &mut Vec<bool>, dead: &[bool]| {
                if !dead.iter().any(|&d| d) {
                    return;
                }
                if met.is_empty() {
                    *met = dead.to_vec();
                } else {
                    met.iter_mut().zip(dead).for_each(|(m, &d)| *m |= d);
                }
            };
            or_dead(&mut left_met, &ldead);
            or_dead(&mut right_met, &rdead);
        }
        Ok((first, second, left_met, right_met))
    }

    /// Candidate pairs (equal keys) kept by the join's condition, in
    /// [`Self::join`]'s layout. With `built` (a projection, and the columns
    /// of each side that `left` and `right` hold), projected, without ids.
    fn pairs(
        &self,
        left: RecordBatch,
        lid: Vec<u64>,
        right: RecordBatch,
        rid: Vec<u64>,
        built: Option<Built<'_>>,
    ) -> Result<Vec<RecordBatch>> {
        if left.num_rows() == 0 {
            return Ok(vec![]);
        }
        // Where a column of a side's full schema is in the rows built.
        let at = |cols: &[usize], i: usize| -> Result<usize> {
            cols.binary_search(&i)
                .map_err(|_| DataFusionError::Internal(format!("a join column {i} was not built")))
        };
        let (lat, rat) = (built.map(|b| b.left), built.map(|b| b.right));
        let column = |b: &RecordBatch, cols: Option<&[usize]>, i: usize| -> Result<ArrayRef> {
            Ok(Arc::clone(b.column(match cols {
                Some(c) => at(c, i)?,
                None => i,
            })))
        };
        let (mut left, mut right, mut lid, mut rid) = (
            left,
            right,
            Arc::new(UInt64Array::from(lid)) as ArrayRef,
            Arc::new(UInt64Array::from(rid)) as ArrayRef,
        );
        if let Some(f) = &self.p.filter {
            let columns: Vec<ArrayRef> = f
                .column_indices()
                .iter()
                .map(|c| match c.side {
                    datafusion::common::JoinSide::Left => column(&left, lat, c.index),
                    _ => column(&right, rat, c.index),
                })
                .collect::<Result<_>>()?;
            let input = RecordBatch::try_new(Arc::clone(f.schema()), columns)?;
            let keep = f.expression().evaluate(&input)?.into_array(input.num_rows())?;
            let keep = keep.as_boolean();
            // NULL (unknown) keeps nothing.
            let keep = if datafusion::arrow::array::Array::null_count(keep) > 0 {
                datafusion::arrow::compute::prep_null_mask_filter(keep)
            } else {
                keep.clone()
            };
            left = filter_record_batch(&left, &keep)?;
            right = filter_record_batch(&right, &keep)?;
            if built.is_none() {
                lid = datafusion::arrow::compute::filter(&lid, &keep)?;
                rid = datafusion::arrow::compute::filter(&rid, &keep)?;
            }
        }
        if let Some(Built { proj: p, .. }) = built {
            let nl = self.left_schema.fields().len();
            let columns: Vec<ArrayRef> = p
                .indices
                .iter()
                .map(|&i| {
                    if i < nl {
                        column(&left, lat, i)
                    } else {
                        column(&right, rat, i - nl)
                    }
                })
                .collect::<Result<_>>()?;
            return Ok(vec![RecordBatch::try_new(Arc::clone(&p.schema), columns)?]);
        }
        let mut fields: Vec<Field> = self
            .left_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("__weir_row_id", DataType::UInt64, false));
        fields.extend(self.right_schema.fields().iter().map(|f| f.as_ref().clone()));
        fields.push(Field::new("__weir_row_id", DataType::UInt64, false));
        let mut columns = left.columns().to_vec();
        columns.push(lid);
        columns.extend(right.columns().iter().cloned());
        columns.push(rid);
        Ok(vec![RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?])
    }

    /// One epoch of shard `shard`: joins, then state update and eviction.
    async fn run(
        &self,
        shard: usize,
        new_left: Vec<RecordBatch>,
        new_right: Vec<RecordBatch>,
        epoch: &EpochInput,
        proj: Option<&Projected>,
        context: &Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let n = epoch.epoch;
        let name = "IntervalJoinExec";
        // `state.ttl`: rows held that long are gone before the epoch's rows
        // probe them (as Flink's state TTL never returns expired state),
        // silently; a quiet spell longer than the TTL leaves nothing to
        // match.
        if let Some(ttl) = self.p.ttl_ms {
            let expired_before = epoch.processing_time_ms.saturating_sub(ttl);
            let mut held = self.shards.lock(shard);
            let mut dirty = Vec::new();
            for side in [Side::Left, Side::Right] {
                let chunks = held.side(side);
                let before = chunks.len();
                chunks.retain(|c| {
                    let keep = c.arrived_ms >= expired_before;
                    if !keep {
                        dirty.push((side as u8, c.epoch));
                    }
                    keep
                });
                if chunks.len() != before {
                    held.index[side as usize] = None;
                }
            }
            drop(held);
            self.dirty().extend(dirty);
        }
        let (since, held_left, held_right) = {
            let held = self.shards.lock(shard);
            let rows = |c: &Vec<Chunk>| c.iter().map(|c| c.rows.clone()).collect::<Vec<_>>();
            (held.evicted_to, rows(&held.left), rows(&held.right))
        };
        let (new_left, late_l) = guarded(name, n, || self.on_time(Side::Left, new_left, since))?;
        let (new_right, late_r) = guarded(name, n, || self.on_time(Side::Right, new_right, since))?;
        // A broadcast side's late rows are in every shard: count them once.
        let late = match self.broadcast {
            Some(Side::Left) if shard > 0 => late_r,
            Some(Side::Right) if shard > 0 => late_l,
            _ => late_l + late_r,
        };
        epoch.add_late(late);

        // A regular join probes its key index (see `KeyIndex`).
        if self.p.time.is_none() && !self.p.on.is_empty() {
            let held_right_len = held_right.iter().map(RecordBatch::num_rows).sum::<usize>();
            drop((held_left, held_right));
            let new_left = concat_batches(&self.left_schema, &new_left)?;
            let new_right = concat_batches(&self.right_schema, &new_right)?;
            let (pairs_new_left, pairs_new_right, left_met, right_met) = guarded(name, n, || {
                let mut held = self.shards.lock(shard);
                self.index_joins(&mut held, &new_left, &new_right, proj)
            })?;
            // Rows that met their unique partner, and rows with a NULL key
            // (see `drops_null_keys`), are not held: only an inner join has
            // a unique side or drops them, and nothing else reads them.
            let unmet = |rows: RecordBatch, met: &[bool]| -> Result<RecordBatch> {
                if !met.iter().any(|&m| m) {
                    return Ok(rows);
                }
                let keep: BooleanArray = met.iter().map(|&m| Some(!m)).collect();
                // Copied out: the few rows held must not pin the strings
                // of the whole batch (in Nexmark q20, every epoch's bids).
                compact_views(filter_record_batch(&rows, &keep)?)
            };
            let new_left = unmet(new_left, &left_met)?;
            let new_right = unmet(new_right, &right_met)?;
            return guarded(name, n, || {
                self.apply_any(
                    shard,
                    n as i64,
                    new_left,
                    new_right,
                    held_right_len as u64,
                    &pairs_new_left,
                    &pairs_new_right,
                    epoch.watermark_out,
                    epoch.processing_time_ms,
                    proj,
                )
            });
        }

        // New left rows with every right row; held left rows with the new
        // right rows.
        let mut pairs_new_left = Vec::new();
        let mut pairs_new_right = Vec::new();
        // Each join builds its hash table on the smaller side: the build
        // side is copied into one batch and hashed, the probe side streams.
        let held_right_len: usize = held_right.iter().map(RecordBatch::num_rows).sum();
        let held_left_len: usize = held_left.iter().map(RecordBatch::num_rows).sum();
        let new_left_len: usize = new_left.iter().map(RecordBatch::num_rows).sum();
        let new_right_len: usize = new_right.iter().map(RecordBatch::num_rows).sum();
        if new_left_len > 0 && held_right_len + new_right_len > 0 {
            let build_right = held_right_len + new_right_len < new_left_len;
            let mut right = held_right;
            right.extend(new_right.iter().cloned());
            pairs_new_left = self
                .join(new_left.clone(), right, build_right, proj, context)
                .await?;
        }
        if new_right_len > 0 && held_left_len > 0 {
            let build_right = new_right_len <= held_left_len;
            pairs_new_right = self
                .join(held_left, new_right.clone(), build_right, proj, context)
                .await?;
        }
        guarded(name, n, || {
            let new_left = self.arrivals(Side::Left, &new_left, epoch.watermark_out)?;
            let new_right = self.arrivals(Side::Right, &new_right, epoch.watermark_out)?;
            self.apply_any(
                shard,
                n as i64,
                new_left,
                new_right,
                held_right_len as u64,
                &pairs_new_left,
                &pairs_new_right,
                epoch.watermark_out,
                epoch.processing_time_ms,
                proj,
            )
        })
    }

    /// Checks a batch of the epoch's pairs (left columns, left row id,
    /// right columns, right row id) and, for a join that emits pairs, adds
    /// them to `out` without their ids. With `proj`, the batch is the
    /// output's columns already.
    fn emit_pairs(
        &self,
        b: &RecordBatch,
        proj: Option<&Projected>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if let Some(p) = proj {
            if b.num_columns() != p.indices.len() {
                return Err(DataFusionError::Internal(format!(
                    "a join of the epoch gave {} columns, not the {} projected",
                    b.num_columns(),
                    p.indices.len()
                )));
            }
            out.push(RecordBatch::try_new(Arc::clone(&p.schema), b.columns().to_vec())?);
            return Ok(());
        }
        let nl = self.left_schema.fields().len();
        let nr = self.right_schema.fields().len();
        if b.num_columns() != nl + nr + 2 {
            return Err(DataFusionError::Internal(format!(
                "a join of the epoch gave {} columns, not {}",
                b.num_columns(),
                nl + nr + 2
            )));
        }
        if self.emits_pairs() {
            let mut columns: Vec<ArrayRef> = b.columns()[..nl].to_vec();
            columns.extend(b.columns()[nl + 1..nl + 1 + nr].iter().cloned());
            out.push(self.output(columns, INSERT)?);
        }
        Ok(())
    }

    /// [`Self::apply_signed`] for an outer join of signed rows, else
    /// [`Self::apply`].
    #[allow(clippy::too_many_arguments)]
    fn apply_any(
        &self,
        shard: usize,
        epoch: i64,
        new_left: RecordBatch,
        new_right: RecordBatch,
        held_right_len: u64,
        pairs_new_left: &[RecordBatch],
        pairs_new_right: &[RecordBatch],
        watermark: i64,
        now_ms: i64,
        proj: Option<&Projected>,
    ) -> Result<Vec<RecordBatch>> {
        if proj.is_some() && !self.only_pairs() {
            return Err(DataFusionError::Internal(format!(
                "a projection was embedded into a {} join, which emits more than pairs",
                self.p.join_type
            )));
        }
        if self.p.signed && (self.tracks(Side::Left) || self.tracks(Side::Right)) {
            return self.apply_signed(
                shard,
                epoch,
                [new_left, new_right],
                held_right_len,
                [pairs_new_left, pairs_new_right],
                watermark,
                now_ms,
            );
        }
        self.apply(
            shard,
            epoch,
            new_left,
            new_right,
            held_right_len,
            pairs_new_left,
            pairs_new_right,
            watermark,
            now_ms,
            proj,
        )
    }

    /// An outer, semi or anti join of signed rows (an input is a
    /// changelog; each side's last column is its rows' sign, -1 for a row
    /// taken back, which stays held as a row of its own). A preserved (or
    /// semi) side's row counts its matches, net of the partners' signs. An
    /// outer or anti join's row shows (NULL-padded, or alone) while the
    /// count is 0, a semi join's while it is not: a new row that shows is
    /// emitted (`+I`); a held row that stops showing is taken back (`-D`),
    /// and one that starts to is emitted (`+I`).
    /// The planner multiplies each output row's sign by the row's own and
    /// nets the epoch, so a retracted row's padded rows cancel too.
    #[allow(clippy::too_many_arguments)]
    fn apply_signed(
        &self,
        shard: usize,
        epoch: i64,
        new_rows: [RecordBatch; 2],
        held_right_len: u64,
        pairs: [&[RecordBatch]; 2],
        watermark: i64,
        now_ms: i64,
    ) -> Result<Vec<RecordBatch>> {
        let nl = self.left_schema.fields().len();
        let nr = self.right_schema.fields().len();
        let u64s = |b: &RecordBatch, col: usize| -> Vec<u64> {
            b.column(col).as_primitive::<UInt64Type>().values().to_vec()
        };
        let signs = |b: &RecordBatch, col: usize| -> Vec<i64> {
            b.column(col)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .iter()
                .map(|s| s.unwrap_or(0))
                .collect()
        };
        let mut held = self.shards.lock(shard);
        let mut dirty = BTreeSet::new();
        // Where each held row is, by its position across its side's chunks.
        let locate = |chunks: &[Chunk]| -> Vec<u64> {
            let mut starts = Vec::with_capacity(chunks.len());
            let mut at = 0u64;
            for c in chunks {
                starts.push(at);
                at += c.rows.num_rows() as u64;
            }
            starts
        };
        let starts = [locate(&held.left), locate(&held.right)];
        let at = |side: usize, id: u64| -> (usize, usize) {
            let i = starts[side].partition_point(|&s| s <= id).saturating_sub(1);
            (i, (id - starts[side][i]) as usize)
        };
        let mut new_counts = [
            vec![0i64; new_rows[0].num_rows()],
            vec![0i64; new_rows[1].num_rows()],
        ];
        let mut held_deltas: [BTreeMap<(usize, usize), i64>; 2] = [BTreeMap::new(), BTreeMap::new()];
        let (track_l, track_r) = (self.tracks(Side::Left), self.tracks(Side::Right));
        // Whether a tracked row shows in the output with this count: a
        // semi join's while it has a match, an outer or anti join's
        // (NULL-padded) while it has none.
        let semi = self.semi().is_some();
        let shows = |count: i64| if semi { count != 0 } else { count == 0 };
        let mut out = Vec::new();
        for (b, new_is_left) in pairs[0]
            .iter()
            .map(|b| (b, true))
            .chain(pairs[1].iter().map(|b| (b, false)))
        {
            self.emit_pairs(b, None, &mut out)?;
            let (lid, rid) = (u64s(b, nl), u64s(b, nl + nr + 1));
            let (ls, rs) = (signs(b, nl - 1), signs(b, nl + nr));
            for k in 0..b.num_rows() {
                // A pair from the new left rows: its left row is new, its
                // right row held (below `held_right_len`) or new. A pair
                // from the new right rows: its left row is held.
                if track_l {
                    if new_is_left {
                        new_counts[0][lid[k] as usize] += rs[k];
                    } else {
                        *held_deltas[0].entry(at(0, lid[k])).or_default() += rs[k];
                    }
                }
                if track_r {
                    if !new_is_left {
                        new_counts[1][rid[k] as usize] += ls[k];
                    } else if rid[k] < held_right_len {
                        *held_deltas[1].entry(at(1, rid[k])).or_default() += ls[k];
                    } else {
                        new_counts[1][(rid[k] - held_right_len) as usize] += ls[k];
                    }
                }
            }
        }
        // Held rows whose count left 0 (taken back first) or returned to 0.
        let mut retracted = Vec::new();
        for (side, deltas) in [(Side::Left, &held_deltas[0]), (Side::Right, &held_deltas[1])] {
            let chunks = held.side(side);
            let (mut back, mut again): (BTreeMap<usize, Vec<u32>>, BTreeMap<usize, Vec<u32>>) =
                (BTreeMap::new(), BTreeMap::new());
            for (&(c, r), &d) in deltas {
                if d == 0 {
                    continue;
                }
                let chunk = &mut chunks[c];
                if chunk.counts.len() != chunk.matched.len() {
                    chunk.counts = vec![0; chunk.matched.len()];
                }
                let old = chunk.counts[r];
                let now = old + d;
                chunk.counts[r] = now;
                chunk.matched[r] = now != 0;
                dirty.insert((side as u8, chunk.epoch));
                if shows(old) && !shows(now) {
                    back.entry(c).or_default().push(r as u32);
                } else if !shows(old) && shows(now) {
                    again.entry(c).or_default().push(r as u32);
                }
            }
            for (c, rows) in back {
                let rows = take_batch(&chunks[c].rows, &UInt32Array::from(rows))?;
                retracted.push(self.padded(side, &rows, DELETE)?);
            }
            for (c, rows) in again {
                let rows = take_batch(&chunks[c].rows, &UInt32Array::from(rows))?;
                out.push(self.padded(side, &rows, INSERT)?);
            }
        }
        // The new rows: a preserved side's row without a match, padded.
        let [new_left, new_right] = new_rows;
        let [left_counts, right_counts] = new_counts;
        for (side, rows, counts) in [
            (Side::Left, new_left, left_counts),
            (Side::Right, new_right, right_counts),
        ] {
            if rows.num_rows() == 0 {
                continue;
            }
            let matched: Vec<bool> = counts.iter().map(|&c| c != 0).collect();
            if self.tracks(side) && counts.iter().any(|&c| shows(c)) {
                let showing: BooleanArray = counts.iter().map(|&c| Some(shows(c))).collect();
                out.push(self.padded(side, &filter_record_batch(&rows, &showing)?, INSERT)?);
            }
            let mut chunk = Chunk::new(epoch, now_ms, rows, None, matched)?;
            if self.tracks(side) {
                chunk.counts = counts;
            }
            held.side(side).push(chunk);
            dirty.insert((side as u8, epoch));
        }
        // (`state.ttl` expired rows before the epoch: see `run`.)
        held.evicted_to = Some(held.evicted_to.map_or(watermark, |w| w.max(watermark)));
        drop(held);
        self.dirty().extend(dirty);
        retracted.extend(out);
        // As they are: copying them into one batch cost q4 a pass over
        // every joined row.
        retracted.retain(|b| b.num_rows() > 0);
        Ok(retracted)
    }

    /// Emits the pairs, records which rows matched, adds the new rows and
    /// evicts what the watermark rules out.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        shard: usize,
        epoch: i64,
        new_left: RecordBatch,
        new_right: RecordBatch,
        held_right_len: u64,
        pairs_new_left: &[RecordBatch],
        pairs_new_right: &[RecordBatch],
        watermark: i64,
        now_ms: i64,
        proj: Option<&Projected>,
    ) -> Result<Vec<RecordBatch>> {
        let nl = self.left_schema.fields().len();
        let nr = self.right_schema.fields().len();
        let mut out = Vec::new();
        let ids = |b: &RecordBatch, col: usize| -> Vec<u64> {
            b.column(col).as_primitive::<UInt64Type>().values().to_vec()
        };
        let mut held = self.shards.lock(shard);
        let mut dirty = BTreeSet::new();
        let mut new_left_matched = vec![false; new_left.num_rows()];
        let mut new_right_matched = vec![false; new_right.num_rows()];
        // Held rows that matched for the first time, by side.
        let mut newly_left = Vec::new();
        let mut newly_right = Vec::new();
        for (b, new_is_left) in pairs_new_left
            .iter()
            .map(|b| (b, true))
            .chain(pairs_new_right.iter().map(|b| (b, false)))
        {
            self.emit_pairs(b, proj, &mut out)?;
            // Row ids only matter to a side that tracks its matches (and
            // a projected join has none).
            if !self.tracks(Side::Left) && !self.tracks(Side::Right) {
                continue;
            }
            let (lid, rid) = (ids(b, nl), ids(b, nl + nr + 1));
            if new_is_left {
                if self.tracks(Side::Left) {
                    for i in lid {
                        new_left_matched[i as usize] = true;
                    }
                }
                if self.tracks(Side::Right) {
                    let (held_ids, new_ids): (Vec<u64>, Vec<u64>) =
                        rid.into_iter().partition(|&i| i < held_right_len);
                    newly_right.extend(mark(&mut held.right, &held_ids));
                    for i in new_ids {
                        new_right_matched[(i - held_right_len) as usize] = true;
                    }
                }
            } else {
                if self.tracks(Side::Left) {
                    newly_left.extend(mark(&mut held.left, &lid));
                }
                if self.tracks(Side::Right) {
                    for i in rid {
                        new_right_matched[i as usize] = true;
                    }
                }
            }
        }
        // Taken back first (an updating join): the rows emitted without a
        // match that have one now.
        let mut retracted = Vec::new();
        for (side, newly) in [(Side::Left, &newly_left), (Side::Right, &newly_right)] {
            let chunks = held.side(side);
            for &(c, _) in newly.iter() {
                dirty.insert((side as u8, chunks[c].epoch));
            }
            if self.changelog() && self.preserves(side) {
                let mut by_chunk: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
                for &(c, row) in newly.iter() {
                    by_chunk.entry(c).or_default().push(row as u32);
                }
                for (c, rows) in by_chunk {
                    let rows = take_batch(&chunks[c].rows, &UInt32Array::from(rows))?;
                    retracted.push(self.padded(side, &rows, DELETE)?);
                }
            }
            // A semi join emits a held row when it first matches.
            if self.semi() == Some(side) {
                let mut by_chunk: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
                for &(c, row) in newly.iter() {
                    by_chunk.entry(c).or_default().push(row as u32);
                }
                for (c, rows) in by_chunk {
                    let rows = take_batch(&chunks[c].rows, &UInt32Array::from(rows))?;
                    out.push(RecordBatch::try_new(
                        Arc::clone(&self.p.schema),
                        rows.columns().to_vec(),
                    )?);
                }
            }
        }
        for (side, rows, matched) in [
            (Side::Left, new_left, new_left_matched),
            (Side::Right, new_right, new_right_matched),
        ] {
            if rows.num_rows() > 0 {
                // ... and a new row that matched in its first epoch.
                if self.semi() == Some(side) && matched.iter().any(|&m| m) {
                    let rows = filter_record_batch(&rows, &BooleanArray::from(matched.clone()))?;
                    out.push(RecordBatch::try_new(
                        Arc::clone(&self.p.schema),
                        rows.columns().to_vec(),
                    )?);
                }
                // ... and, in an updating join, a new row of a preserved
                // side without a match, at once.
                if self.changelog() && self.preserves(side) && matched.iter().any(|&m| !m) {
                    let unmatched: BooleanArray = matched.iter().map(|&m| Some(!m)).collect();
                    let rows = filter_record_batch(&rows, &unmatched)?;
                    out.push(self.padded(side, &rows, INSERT)?);
                }
                let chunk = self.chunk(side, epoch, now_ms, rows, matched)?;
                held.side(side).push(chunk);
                dirty.insert((side as u8, epoch));
            }
        }
        // Eviction. Interval join: a left row can still match while t + hi
        // >= W - right_lag, a right row while t - lo >= W - left_lag.
        // (`state.ttl` expired rows before the epoch: see `run`.)
        for side in [Side::Left, Side::Right] {
            let keep_from = self.keep_from(side, watermark).unwrap_or(i64::MIN);
            let preserved = self.preserves(side);
            let chunks = std::mem::take(held.side(side));
            let n_before = chunks.len();
            let mut changed_chunks = false;
            let mut kept = Vec::with_capacity(chunks.len());
            for c in chunks {
                if c.times.iter().all(|&t| t >= keep_from) {
                    kept.push(c);
                    continue;
                }
                dirty.insert((side as u8, c.epoch));
                let keep: Vec<bool> = c.times.iter().map(|&t| t >= keep_from).collect();
                if preserved && !self.changelog() {
                    let unmatched: Vec<u32> = (0..c.times.len())
                        .filter(|&i| !keep[i] && !c.matched[i])
                        .map(|i| i as u32)
                        .collect();
                    if !unmatched.is_empty() {
                        let rows = take_batch(&c.rows, &UInt32Array::from(unmatched))?;
                        out.push(self.padded(side, &rows, INSERT)?);
                    }
                }
                changed_chunks = true;
                if keep.iter().any(|&k| k) {
                    let mask = BooleanArray::from(keep.clone());
                    // Copied out: the kept rows must not pin the evicted ones' strings.
                    let rows = compact_views(filter_record_batch(&c.rows, &mask)?)?;
                    let (times, matched) = c
                        .times
                        .iter()
                        .zip(&c.matched)
                        .zip(&keep)
                        .filter(|(_, k)| **k)
                        .map(|((t, m), _)| (*t, *m))
                        .unzip();
                    let passes = if c.passes.is_empty() {
                        vec![]
                    } else {
                        c.passes
                            .iter()
                            .zip(&keep)
                            .filter(|(_, k)| **k)
                            .map(|(p, _)| *p)
                            .collect()
                    };
                    kept.push(Chunk {
                        epoch: c.epoch,
                        arrived_ms: c.arrived_ms,
                        rows,
                        times,
                        matched,
                        counts: vec![],
                        passes,
                    });
                }
            }
            if kept.len() != n_before || changed_chunks {
                held.index[side as usize] = None;
            }
            *held.side(side) = kept;
        }
        held.evicted_to = Some(held.evicted_to.map_or(watermark, |w| w.max(watermark)));
        drop(held);
        self.dirty().extend(dirty);
        retracted.extend(out);
        // As they are: copying them into one batch cost q4 a pass over
        // every joined row.
        retracted.retain(|b| b.num_rows() > 0);
        Ok(retracted)
    }

    /// Whether the output is only the matched pairs, each once (an inner
    /// join of unsigned rows): nothing is padded, taken back or emitted
    /// alone, so the output may be projected (see [`Projected`]).
    fn only_pairs(&self) -> bool {
        self.p.join_type == JoinType::Inner && !self.p.signed && !self.changelog()
    }

    /// Whether the output is a changelog: a regular (unbounded) outer or
    /// anti join emits a row without a match at once, and takes it back
    /// (`-D`) when a match arrives. Its last column is the operation.
    fn changelog(&self) -> bool {
        self.p.time.is_none()
            && (matches!(
                self.p.join_type,
                JoinType::Left | JoinType::Right | JoinType::Full | JoinType::LeftAnti | JoinType::RightAnti
            ) || (self.p.signed && self.semi().is_some()))
    }

    /// An output batch of these columns; in a changelog, with operation
    /// `op` on every row.
    fn output(&self, mut columns: Vec<ArrayRef>, op: &str) -> Result<RecordBatch> {
        if self.changelog() {
            let n = columns.first().map_or(0, |c| c.len());
            columns.push(Arc::new(StringArray::from(vec![op; n])));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.p.schema), columns)?)
    }

    /// Rows of one side with NULLs for the other's columns (an anti join's
    /// rows as they are).
    fn padded(&self, side: Side, rows: &RecordBatch, op: &str) -> Result<RecordBatch> {
        if matches!(
            self.p.join_type,
            JoinType::LeftAnti | JoinType::RightAnti | JoinType::LeftSemi | JoinType::RightSemi
        ) {
            return self.output(rows.columns().to_vec(), op);
        }
        let n = rows.num_rows();
        let mut columns = Vec::with_capacity(self.p.schema.fields().len());
        match side {
            Side::Left => {
                columns.extend(rows.columns().iter().cloned());
                columns.extend(self.nulls(Side::Right, n));
            }
            Side::Right => {
                columns.extend(self.nulls(Side::Left, n));
                columns.extend(rows.columns().iter().cloned());
            }
        }
        self.output(columns, op)
    }

    /// `n` NULLs for each column of `side`'s schema.
    fn nulls(&self, side: Side, n: usize) -> Vec<ArrayRef> {
        let mut cache = self.null_columns.lock().unwrap_or_else(|e| e.into_inner());
        let cached = &mut cache[side as usize];
        if cached.first().is_none_or(|c| c.len() < n) {
            let len = n.max(cached.first().map_or(0, |c| 2 * c.len()));
            *cached = self
                .schema_of(side)
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), len))
                .collect();
        }
        cached.iter().map(|c| c.slice(0, n)).collect()
    }

    /// The unique side, for EXPLAIN: `, unique right keys, filter=...`.
    fn unique_text(&self) -> String {
        let Some(u) = &self.p.unique else {
            return String::new();
        };
        format!(
            ", unique {} keys{}",
            if u.side == datafusion::common::JoinSide::Right {
                "right"
            } else {
                "left"
            },
            u.filter
                .as_ref()
                .map(|f| format!(" (pulled filter={f})"))
                .unwrap_or_default()
        )
    }

    /// What removes rows, for EXPLAIN.
    fn eviction_text(&self) -> String {
        let Some(t) = &self.p.time else {
            return match self.p.ttl_ms {
                Some(ttl) => format!(
                    "state.ttl: a row {} (processing time) after the epoch it arrived in",
                    weir_sql::nodes::fmt_ms(ttl)
                ),
                None if self.p.unique.is_some() => {
                    let (u, o) = match self.unique() {
                        Some(Side::Right) => ("right", "left"),
                        _ => ("left", "right"),
                    };
                    format!(
                        "nothing: no time bound and no 'state.ttl', so the state grows without bound (bound the \
                         join's times, or SET 'state.ttl'); the {u} keys are unique (PRIMARY KEY), so a {o} row is \
                         held only until its {u} row arrives"
                    )
                }
                None => "nothing: no time bound and no 'state.ttl', so the state grows without bound \
                         (bound the join's times, or SET 'state.ttl')"
                    .into(),
            } + if self.drops_null_keys() {
                "; a row with a NULL key is never held (it matches nothing)"
            } else {
                ""
            };
        };
        let l = self.left_schema.field(t.left_until).name();
        let r = self.right_schema.field(t.right_until).name();
        format!(
            "the watermark: a left row once {l} {} is behind it, a right row once {r} {} is \
             (no later row can match them then){}",
            offset(t.hi_ms.saturating_add(t.right_lag_ms)),
            offset(t.left_lag_ms.saturating_sub(t.lo_ms)),
            match self.p.join_type {
                JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi => "",
                JoinType::LeftAnti | JoinType::RightAnti => "; unmatched rows are emitted at that moment",
                _ => "; an outer side's unmatched rows are emitted with NULLs at that moment",
            }
        )
    }

    /// A chunk as state rows.
    fn state_rows_of(&self, side: Side, c: &Chunk) -> Result<RecordBatch> {
        let n = c.rows.num_rows();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from(vec![side as u8; n])),
            Arc::new(Int64Array::from(vec![c.epoch; n])),
            Arc::new(Int64Array::from(vec![c.arrived_ms; n])),
        ];
        for (i, (l, r)) in self.p.on.iter().enumerate() {
            let e = if side == Side::Left { l } else { r };
            let key = e.evaluate(&c.rows)?.into_array(n)?;
            columns.push(cast(&key, self.state_schema.field(3 + i).data_type())?);
        }
        // The unique side's rows do not track matches (an inner join):
        // the column holds whether they pass the pulled filter instead.
        if self.unique() == Some(side) && self.p.unique.as_ref().is_some_and(|u| u.filter.is_some()) {
            let passes = if c.passes.is_empty() {
                vec![true; n]
            } else {
                c.passes.clone()
            };
            columns.push(Arc::new(BooleanArray::from(passes)));
        } else {
            columns.push(Arc::new(BooleanArray::from(c.matched.clone())));
        }
        match side {
            Side::Left => {
                columns.extend(c.rows.columns().iter().cloned());
                columns.extend(self.nulls(Side::Right, n));
            }
            Side::Right => {
                columns.extend(self.nulls(Side::Left, n));
                columns.extend(c.rows.columns().iter().cloned());
            }
        }
        if self.p.signed {
            let counts = if c.counts.len() == n {
                c.counts.clone()
            } else {
                vec![0; n]
            };
            columns.push(Arc::new(Int64Array::from(counts)));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.state_schema), columns)?)
    }
}

impl StatefulOperator for StreamJoinState {
    fn kind(&self) -> &'static str {
        if self.p.time.is_some() {
            "interval-join"
        } else {
            "regular-join"
        }
    }

    fn emits(&self) -> &'static str {
        if self.p.time.is_some() {
            "each match in the epoch its later row arrives; an outer side's unmatched rows once evicted"
        } else {
            "on update: each match in the epoch its later row arrives, as +I; an outer side's row without a \
             match at once, padded with NULLs, and taken back (-D) when its first match arrives; rows an input \
             changelog takes back are taken back"
        }
    }

    fn warning(&self) -> Option<String> {
        (self.p.time.is_none() && self.p.ttl_ms.is_none()).then(|| {
            "keeps every row of both inputs forever (a join without a time bound and without \
             'state.ttl'): its state grows without bound; bound the join's times \
             (b.t BETWEEN a.t - INTERVAL ... AND a.t + INTERVAL ..., with intervals of days or less: \
             months and years vary in length) or SET 'state.ttl' = '1h'"
                .to_string()
        })
    }

    fn state_rows(&self) -> usize {
        let rows = |chunks: &[Chunk]| chunks.iter().map(|c| c.rows.num_rows()).sum::<usize>();
        self.shards
            .lock_all()
            .iter()
            .enumerate()
            .map(|(shard, h)| {
                // A broadcast side's rows are counted once, as written.
                [(Side::Left, &h.left), (Side::Right, &h.right)]
                    .into_iter()
                    .filter(|(side, _)| shard == 0 || self.broadcast != Some(*side))
                    .map(|(_, chunks)| rows(chunks))
                    .sum::<usize>()
            })
            .sum()
    }

    fn describe(&self) -> StateTable {
        let mut keys = vec!["side".to_string(), "arrival_epoch".to_string()];
        keys.extend(
            self.p
                .on
                .iter()
                .map(|(l, r)| crate::compat::signature::strip_column_positions(&format!("{l} = {r}"))),
        );
        let mut values = vec!["matched".to_string()];
        values.extend(
            self.left_schema
                .fields()
                .iter()
                .map(|f| format!("left.{}", f.name())),
        );
        values.extend(
            self.right_schema
                .fields()
                .iter()
                .map(|f| format!("right.{}", f.name())),
        );
        StateTable {
            name: "join_rows".into(),
            keys,
            values,
            evicted_by: self.eviction_text(),
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
        let held = self.shards.lock_all();
        let mut dirty = self.dirty();
        let mut parts = Vec::with_capacity(held.len());
        for (shard, h) in held.iter().enumerate() {
            // A unit is a side's rows of one arrival epoch: each shard's
            // part rewrites its own rows of the dirty units, and deletes
            // the dirty units it no longer holds.
            let mut upserts = Vec::new();
            let mut present = BTreeSet::new();
            for (side, chunks) in [(Side::Left, &h.left), (Side::Right, &h.right)] {
                // A broadcast side's rows are the same in every shard (the
                // same rows in, evicted by the same watermark): written
                // once, in shard 0's part; a restore gives them to every
                // shard.
                if shard > 0 && self.broadcast == Some(side) {
                    continue;
                }
                for c in chunks {
                    let unit = (side as u8, c.epoch);
                    if full || dirty.contains(&unit) {
                        present.insert(unit);
                        upserts.push(self.state_rows_of(side, c)?);
                    }
                }
            }
            let gone: Vec<(u8, i64)> = if full {
                vec![]
            } else {
                dirty
                    .iter()
                    .copied()
                    .filter(|u| !present.contains(u))
                    .filter(|&(side, _)| shard == 0 || self.broadcast.is_none_or(|b| b as u8 != side))
                    .collect()
            };
            let deletes = if gone.is_empty() {
                vec![]
            } else {
                let (sides, epochs): (Vec<u8>, Vec<i64>) = gone.into_iter().unzip();
                vec![RecordBatch::try_new(
                    Arc::new(self.state_schema.project(&[0, 1])?),
                    vec![
                        Arc::new(UInt8Array::from(sides)),
                        Arc::new(Int64Array::from(epochs)),
                    ],
                )?]
            };
            parts.push(StateChange { upserts, deletes }.part(full));
        }
        dirty.clear();
        Ok(parts)
    }

    fn restore(&self, batches: Vec<RecordBatch>, watermark: i64) -> Result<()> {
        let mut held = self.shards.lock_all();
        for h in held.iter_mut() {
            **h = Held {
                // Before any watermark (a first epoch run elsewhere, or a
                // restore before any row), nothing was evicted yet: no row
                // is late, as in a run that never stopped.
                evicted_to: (watermark != i64::MIN).then_some(watermark),
                ..Held::default()
            };
        }
        self.dirty().clear();
        let k = self.p.on.len();
        let nl = self.left_schema.fields().len();
        let nr = self.right_schema.fields().len();
        let first = 4 + k;
        for batch in batches {
            let batch = batch.with_schema(Arc::clone(&self.state_schema))?;
            let sides = batch
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::UInt8Type>();
            let epochs = batch
                .column(1)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let mut units: BTreeMap<(u8, i64), Vec<u32>> = BTreeMap::new();
            for i in 0..batch.num_rows() {
                units
                    .entry((sides.value(i), epochs.value(i)))
                    .or_default()
                    .push(i as u32);
            }
            let whole = units.len() == 1;
            for ((side, epoch), rows) in units {
                let side = if side == Side::Left as u8 {
                    Side::Left
                } else {
                    Side::Right
                };
                // Only this side's columns go on (the other side's are NULL
                // on its rows, but Arrow still gives them buffers), and a
                // batch of one unit (the usual case: a unit is written as
                // one run) is used as it is, not copied.
                let n = if side == Side::Left { nl } else { nr };
                let mut keep: Vec<usize> = (0..first).collect();
                let from = if side == Side::Left { first } else { first + nl };
                keep.extend(from..from + n);
                if self.p.signed {
                    keep.push(first + nl + nr);
                }
                let part = batch.project(&keep)?;
                let part = if whole {
                    part
                } else {
                    take_batch(&part, &UInt32Array::from(rows))?
                };
                let key_columns: Vec<usize> = (3..3 + k).collect();
                let parts = if self.broadcast == Some(side) {
                    (0..held.len()).map(|shard| (shard, part.clone())).collect()
                } else {
                    route(&part, &key_columns, held.len())?
                };
                for (shard, part) in parts {
                    let arrived_ms = part
                        .column(2)
                        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                        .values()
                        .first()
                        .copied()
                        .unwrap_or(i64::MIN);
                    let matched: Vec<bool> = part
                        .column(3 + k)
                        .as_boolean()
                        .iter()
                        .map(|m| m.unwrap_or(false))
                        .collect();
                    let schema = if side == Side::Left {
                        &self.left_schema
                    } else {
                        &self.right_schema
                    };
                    let rows =
                        RecordBatch::try_new(Arc::clone(schema), part.columns()[first..first + n].to_vec())?;
                    // The unique side's `__matched` is whether its rows
                    // pass the pulled filter (their other columns may be
                    // NULL, see `key_only_where_failing`).
                    let mut chunk = if self.unique() == Some(side)
                        && self.p.unique.as_ref().is_some_and(|u| u.filter.is_some())
                    {
                        let mut c = Chunk::new(
                            epoch,
                            arrived_ms,
                            rows,
                            self.until_of(side),
                            vec![false; matched.len()],
                        )?;
                        c.passes = matched;
                        c
                    } else {
                        self.chunk(side, epoch, arrived_ms, rows, matched)?
                    };
                    if self.p.signed && self.tracks(side) {
                        chunk.counts = part
                            .column(first + n)
                            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                            .values()
                            .to_vec();
                    }
                    held[shard].side(side).push(chunk);
                }
            }
        }
        Ok(())
    }

    fn signature(&self) -> String {
        let p = &self.p;
        let mut s = format!("{} {} on[", self.kind(), p.join_type);
        for (l, r) in &p.on {
            s.push_str(&format!("{l}={r};"));
        }
        s.push_str(&format!(
            "] filter[{}] time[{:?}] ttl[{:?}] state[",
            p.filter
                .as_ref()
                .map(|f| f.expression().to_string())
                .unwrap_or_default(),
            time_signature(p.time.as_ref()),
            p.ttl_ms
        ));
        for f in self.state_schema.fields() {
            s.push_str(&format!("{}:{};", f.name(), f.data_type()));
        }
        s.push(']');
        // Only when there is one, so that other joins' signatures stay as
        // they were. A unique side's state holds different rows (its rows
        // failing the pulled filter; not the other side's rows that met
        // theirs): a checkpoint of either cannot restore into the other.
        // (`keyed`: f8b15c2 wrote `unique`, and its files held no filter
        // results in `__matched`.)
        if let Some(u) = &p.unique {
            s.push_str(&format!(
                " keyed[{:?} {}]",
                u.side,
                u.filter.as_ref().map(|f| f.to_string()).unwrap_or_default()
            ));
        }
        // `=` and `IS NOT DISTINCT FROM` keys hold different rows (an
        // inner `=` join drops NULL keys, see `drops_null_keys`): a switch
        // between them is a query change. Only when NULLs are equal, so
        // that `=` joins keep their signatures.
        if p.null_equality == NullEquality::NullEqualsNull {
            s.push_str(" nulls-equal");
        }
        crate::compat::signature::strip_column_positions(&s)
    }
}

/// The time bound in the operator's signature: as the bound's `Debug` read
/// before bounds could take their ends from other columns, so that
/// checkpoints of the joins that could run then keep their signature.
fn time_signature(time: Option<&JoinTime>) -> String {
    match time {
        None => "None".into(),
        Some(t) => {
            let until = if t.constant_width() {
                String::new()
            } else {
                format!(", left_until: {}, right_until: {}", t.left_until, t.right_until)
            };
            format!(
                "Some(JoinTime {{ left: {}, right: {}, lo_ms: {}, hi_ms: {}, left_lag_ms: {}, right_lag_ms: {}{until} }})",
                t.left, t.right, t.lo_ms, t.hi_ms, t.left_lag_ms, t.right_lag_ms
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::row::{RowConverter, SortField};

    fn keys(values: &[Option<i64>]) -> (Rows, Vec<bool>) {
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let array: ArrayRef = Arc::new(Int64Array::from(values.to_vec()));
        let dead = values.iter().map(Option::is_none).collect();
        (converter.convert_columns(&[array]).unwrap(), dead)
    }

    /// Rows before the bound and rows without a time are dropped and
    /// counted; a batch that keeps every row is passed on as it is.
    #[test]
    fn keep_from_time_drops_earlier_and_null_times() {
        use datafusion::arrow::array::TimestampMillisecondArray;
        use datafusion::arrow::datatypes::{Int64Type, TimeUnit};
        let times: Vec<Option<i64>> = (0..200).map(|i| (i % 9 != 4).then_some((i * 37) % 101)).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..200)),
                Arc::new(TimestampMillisecondArray::from(times.clone()).with_timezone("UTC")),
            ],
        )
        .unwrap();
        for from in [-1, 0, 50, 100, 101] {
            let (kept, dropped) = keep_from_time(batch.clone(), 1, from).unwrap();
            let want: Vec<i64> = (0..200)
                .filter(|&i| times[i as usize].is_some_and(|t| t >= from))
                .collect();
            let got: Vec<i64> = kept
                .map(|k| k.column(0).as_primitive::<Int64Type>().values().to_vec())
                .unwrap_or_default();
            assert_eq!(got, want, "from {from}");
            assert_eq!(dropped, 200 - want.len() as u64, "from {from}");
        }
        let full = batch.slice(0, 4);
        let (kept, dropped) = keep_from_time(full.clone(), 1, 0).unwrap();
        assert_eq!((kept, dropped), (Some(full), 0));
    }

    /// Every key's rows, from the index and from a scan of the chunks, in
    /// the order they were added; NULL keys match nothing.
    #[test]
    fn a_key_index_finds_each_keys_rows_oldest_first() {
        let chunks: Vec<Vec<Option<i64>>> = vec![
            vec![Some(1), Some(2), Some(1), None, Some(3)],
            vec![],
            vec![Some(2), Some(2), Some(4), None, Some(1)],
            (0..1000).map(|i| Some(i % 7)).collect(),
        ];
        let mut index = KeyIndex::default();
        for values in &chunks {
            let (rows, dead) = keys(values);
            index.add(rows, &dead).unwrap();
        }
        assert_eq!(index.chunks(), chunks.len());
        let mut chain = Vec::new();
        for probe in [
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(6),
            Some(99),
        ] {
            let (probe_rows, _) = keys(&[probe]);
            let mut got = Vec::new();
            index.matches(probe_rows.row(0).data(), &mut chain, |c, r| got.push((c, r)));
            let want: Vec<(u32, u32)> = chunks
                .iter()
                .enumerate()
                .flat_map(|(c, values)| {
                    values
                        .iter()
                        .enumerate()
                        .filter(move |(_, v)| probe.is_some() && **v == probe)
                        .map(move |(r, _)| (c as u32, r as u32))
                })
                .collect();
            assert_eq!(got, want, "key {probe:?}");
        }
    }
}
