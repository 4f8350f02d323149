//! Physical operators of streaming plans, and the planner hooks that create
//! them from the `sql` crate's logical nodes.
//!
//! The stateful operators (window aggregate, session aggregate, update
//! aggregate, window Top-N) are each an [`operator::EpochOperator`] (their
//! logic and state) inside the one generic plan node
//! [`operator::OperatorExec`]; their state goes into checkpoints through
//! [`StatefulOperator`]. Stateless ones (`WindowAssignExec`,
//! `LateFilterExec`, `StreamScanExec`) are plain DataFusion nodes.
//!
//! To add a stateful operator: write its state struct, implement
//! `StatefulOperator` (signature, state schema, checkpoint, restore) and
//! `EpochOperator` (shard keys, start/fold/finish of an epoch), add a
//! `pub type FooExec = OperatorExec<FooState>`, plan it from its logical
//! node in [`StreamExtensionPlanner`], and name its type in
//! [`stateful_state`] so checkpoints find it.

pub mod distinct;
pub mod groups;
pub mod keys;
pub mod late_filter;
pub mod lookup_join;
pub mod net;
pub mod operator;
pub mod partial_agg;
pub mod scan;
pub mod session_agg;
pub mod shard;
pub mod stream_join;
pub mod stream_topn;
pub mod units;
pub mod update_agg;
pub mod window_agg;
pub mod window_assign;
pub mod window_topn;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::epoch::EpochInput;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::expr::physical_name;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use weir_sql::{
    ScanProvider, TableDecl, UpdateAggregateNode, WindowAggregateNode, WindowAssignNode, WindowSpec,
};

pub use scan::StreamScanExec;
pub use session_agg::SessionAggregateExec;
pub use units::WindowAggregateParams;
pub use update_agg::{UpdateAggregateExec, UpdateAggregateParams};
pub use window_agg::{WindowAggState, WindowAggregateExec};
pub use window_assign::WindowAssignExec;
pub use window_topn::WindowTopNExec;

/// The state of a plan node, if it is a stateful operator: how the driver
/// finds the state it checkpoints. Every stateful operator is listed here.
pub fn stateful_state(plan: &dyn ExecutionPlan) -> Option<Arc<dyn StatefulOperator>> {
    fn of<O: operator::EpochOperator>(plan: &dyn ExecutionPlan) -> Option<Arc<dyn StatefulOperator>> {
        plan.downcast_ref::<operator::OperatorExec<O>>()
            .map(|node| node.state() as Arc<dyn StatefulOperator>)
    }
    of::<WindowAggState>(plan)
        .or_else(|| of::<session_agg::SessionState>(plan))
        .or_else(|| of::<update_agg::UpdateState>(plan))
        .or_else(|| of::<window_topn::TopNState>(plan))
        .or_else(|| of::<stream_topn::StreamTopNState>(plan))
        .or_else(|| {
            plan.downcast_ref::<stream_join::StreamJoinExec>()
                .map(|node| node.state() as Arc<dyn StatefulOperator>)
        })
}

/// What an operator keeps, for EXPLAIN: the state table's key and value
/// columns and what removes its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateTable {
    /// The table's name (`windows`, `slices`, `sessions`, `groups`).
    pub name: String,
    /// Key columns.
    pub keys: Vec<String>,
    /// Value columns.
    pub values: Vec<String>,
    /// What evicts rows.
    pub evicted_by: String,
}

/// What changed in an operator's state since its last checkpoint: whole
/// units (rows sharing the first `unit_key_len()` columns) that are new or
/// changed, and the keys of units that are gone.
#[derive(Debug, Default)]
pub struct StateChange {
    /// Rows of new or changed units, each unit whole (or every row, for a
    /// full checkpoint).
    pub upserts: Vec<RecordBatch>,
    /// Key columns of deleted units.
    pub deletes: Vec<RecordBatch>,
}

impl StateChange {
    /// The change as one shard's part of a checkpoint: `None` when it is
    /// empty, unless `full` (a snapshot is written even when empty).
    pub(crate) fn part(self, full: bool) -> Option<StateChange> {
        (full || self.upserts.iter().chain(&self.deletes).any(|b| b.num_rows() > 0)).then_some(self)
    }
}

/// An operator whose state outlives an epoch and goes into checkpoints.
///
/// Contract: `checkpoint(false)` returns what changed since the previous
/// `checkpoint` call (`None` for a shard where nothing did) and
/// `checkpoint(true)` every row; `restore` given the state rebuilt from those (a snapshot and
/// the deltas after it) brings the operator back to the same state, such
/// that the following epochs produce the same output as if the process had
/// never stopped. `watermark` is the pipeline's watermark of the last
/// committed epoch (what the operator last emitted up to, before its lag).
pub trait StatefulOperator: Send + Sync {
    /// A warning to give once when the job starts (a state that can grow
    /// without bound).
    fn warning(&self) -> Option<String> {
        None
    }
    /// A short name of the operator kind, for messages.
    fn kind(&self) -> &'static str;
    /// When and what it emits, for EXPLAIN.
    fn emits(&self) -> &'static str {
        "on window close: each window once, when the watermark passes its end"
    }
    /// Rows (groups) held.
    fn state_rows(&self) -> usize;
    /// The state table, for EXPLAIN.
    fn describe(&self) -> StateTable;
    /// The schema of state rows.
    fn state_schema(&self) -> SchemaRef;
    /// How many leading columns of a state row identify its unit.
    fn unit_key_len(&self) -> usize;
    /// How many parts a checkpoint of the state comes in: its shards (one
    /// per thread for a keyed operator, else 1). Fixed for its life.
    fn state_shards(&self) -> usize;
    /// The change since the last checkpoint, or every row when `full`,
    /// shard by shard: element k is shard k's (`None` if it has none), in
    /// `state_shards()` elements; when `full`, each is `Some`. Each part is
    /// a state file of its own (`k-of-n`), restored on its own (its
    /// snapshot, then its deltas) and then given to
    /// [`StatefulOperator::restore`] with the other parts' rows: a unit
    /// written in one part replaces that part's rows of it, never another
    /// part's.
    fn checkpoint(&self, full: bool) -> Result<Vec<Option<StateChange>>>;
    /// Replaces the state with restored rows. They are the operator's to
    /// keep (slices of them, without a copy) or to drop batch by batch as
    /// it goes, so that a large state is not held twice at the peak.
    fn restore(&self, batches: Vec<RecordBatch>, watermark: i64) -> Result<()>;
    /// What the state means: the operator's kind and parameters (window,
    /// keys, aggregates and their arguments) and its state columns. Kept in
    /// the checkpoint's metadata; a changed query whose operator has another
    /// signature cannot use the stored state (see [`crate::compat`]).
    /// Column positions (`price@3`) are left out, so that a change upstream
    /// which only moves columns does not count as a change.
    fn signature(&self) -> String;
    /// A second state table the operator keeps beside its own, checkpointed
    /// and restored on its own (under the operator's id and `-<name>`):
    /// its name and the table. An update aggregate's distinct values are
    /// one: their rows are narrow and many, the groups' wide and few, and
    /// one table of both kinds would carry every group column (as nulls,
    /// which Arrow still gives buffers) on every value's row.
    fn side_table(self: Arc<Self>) -> Option<(&'static str, Arc<dyn StatefulOperator>)> {
        None
    }
}

/// The metrics of one of Weir's plan nodes, shared by the node's copies:
/// each epoch runs a fresh copy of the plan (see `driver::epoch`), and
/// Weir's operators keep counting across epochs. Each partition's
/// [`BaselineMetrics`] and named counters are registered once and handed
/// out again: registering new ones at every execution (as DataFusion's
/// nodes do, once per instance) grew the set by a few hundred bytes an
/// epoch, for as long as the job ran.
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedMetrics {
    set: ExecutionPlanMetricsSet,
    registered: Arc<std::sync::Mutex<Registered>>,
}

#[derive(Debug, Default)]
struct Registered {
    baselines: HashMap<usize, BaselineMetrics>,
    counters: HashMap<(&'static str, usize), Count>,
}

impl SharedMetrics {
    /// Partition `partition`'s output rows and compute time.
    pub(crate) fn baseline(&self, partition: usize) -> BaselineMetrics {
        let mut r = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        r.baselines
            .entry(partition)
            .or_insert_with(|| BaselineMetrics::new(&self.set, partition))
            .clone()
    }

    /// Partition `partition`'s counter `name`.
    pub(crate) fn counter(&self, name: &'static str, partition: usize) -> Count {
        let mut r = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        r.counters
            .entry((name, partition))
            .or_insert_with(|| MetricBuilder::new(&self.set).counter(name, partition))
            .clone()
    }

    /// What [`ExecutionPlan::metrics`] gives.
    pub(crate) fn clone_inner(&self) -> MetricsSet {
        self.set.clone_inner()
    }
}

/// Records `batches` as output in `baseline`: rows, batches and bytes
/// (`record_output` alone counts rows, and EXPLAIN ANALYZE showed Weir's
/// operators with no batches and no bytes).
pub(crate) fn record_batches<'a>(
    baseline: &BaselineMetrics,
    batches: impl IntoIterator<Item = &'a RecordBatch>,
) {
    use datafusion::physical_plan::metrics::RecordOutput;
    for b in batches {
        b.record_output(baseline);
    }
}

/// How every stateful operator runs an epoch: fold each input batch into an
/// accumulator (`update`), then turn it into the epoch's output (`finish`,
/// which sees the epoch's watermarks). Partition `partition` of `partitions`
/// reads the same partition of its input (its shard's rows, see
/// [`shard`]); compute time and output rows go to the operator's metrics.
#[allow(clippy::too_many_arguments)]
pub(crate) fn drain_then_emit<A: Send + 'static>(
    name: &'static str,
    partition: usize,
    partitions: usize,
    input: &Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
    metrics: &SharedMetrics,
    schema: SchemaRef,
    init: impl FnOnce(&EpochInput) -> Result<A> + Send + 'static,
    mut update: impl FnMut(&mut A, &RecordBatch) -> Result<()> + Send + 'static,
    finish: impl FnOnce(A, &EpochInput) -> Result<RecordBatch> + Send + 'static,
) -> Result<SendableRecordBatchStream> {
    let input_partitions = input.output_partitioning().partition_count();
    if partition >= partitions || input_partitions != partitions {
        return Err(DataFusionError::Internal(format!(
            "{name} has {partitions} partitions and an input of {input_partitions}, asked for partition {partition}"
        )));
    }
    let epoch = EpochInput::from_task(&context)?;
    let mut input = input.execute(partition, context)?;
    let baseline = metrics.baseline(partition);
    let n = epoch.epoch;
    let out = futures::stream::once(async move {
        let mut acc = guarded(name, n, || init(&epoch))?;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            let timer = baseline.elapsed_compute().timer();
            guarded(name, n, || update(&mut acc, &batch))?;
            timer.done();
        }
        let timer = baseline.elapsed_compute().timer();
        let out = guarded(name, n, || finish(acc, &epoch))?;
        timer.done();
        record_batches(&baseline, [&out]);
        Ok(out)
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, out)))
}

/// `ExecutionPlan::apply_expressions` over `exprs`: calls `f` on each,
/// until it says stop.
pub(crate) fn visit_each<'a>(
    exprs: impl IntoIterator<Item = &'a Arc<dyn PhysicalExpr>>,
    f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
) -> Result<TreeNodeRecursion> {
    for e in exprs {
        if f(e)? == TreeNodeRecursion::Stop {
            return Ok(TreeNodeRecursion::Stop);
        }
    }
    Ok(TreeNodeRecursion::Continue)
}

/// Runs an operator's step, turning a panic into an internal error that
/// names the operator and the epoch. The driver then rolls the epoch back
/// (nothing of it was committed) and the job stops; the operator's memory
/// may be half-updated, but it is dropped with the job.
pub(crate) fn guarded<T>(operator: &str, epoch: u64, step: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(r) => r,
        Err(panic) => Err(DataFusionError::Execution(format!(
            "internal error in {operator} (a bug in Weir, please report it) in epoch {epoch}: {}",
            crate::panics::message(panic.as_ref())
        ))),
    }
}

/// The key columns (the first `n`) of batches, as batches.
pub fn key_columns(batches: &[RecordBatch], n: usize) -> Result<Vec<RecordBatch>> {
    batches
        .iter()
        .map(|b| Ok(b.project(&(0..n).collect::<Vec<_>>())?))
        .collect()
}

/// Source scans as [`StreamScanExec`]s, each with `partitions` output
/// partitions (the job's thread count), so that the stateless operators
/// above a scan run on that many threads.
#[derive(Debug)]
pub struct EngineScans {
    /// Output partitions of each scan (at least 1).
    pub partitions: usize,
}

impl Default for EngineScans {
    fn default() -> Self {
        Self { partitions: 1 }
    }
}

impl ScanProvider for EngineScans {
    fn scan(
        &self,
        table: &TableDecl,
        schema: SchemaRef,
        projection: Option<&Vec<usize>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if table.bounded {
            return Ok(Arc::new(scan::LookupScanExec::try_new(
                &table.name,
                &schema,
                projection,
            )?));
        }
        Ok(Arc::new(
            StreamScanExec::try_new(&table.name, &schema, projection)?.with_partitions(self.partitions),
        ))
    }
}

/// Plans the `sql` crate's streaming nodes.
#[derive(Debug, Default)]
pub struct StreamExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for StreamExtensionPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        // Keyed operators split their state into this many shards.
        let threads = session.config().target_partitions();
        if let Some(n) = node.as_any().downcast_ref::<WindowAssignNode>() {
            let input = Arc::clone(&physical_inputs[0]);
            let time_index = input.schema().index_of(&n.time_column)?;
            let schema = Arc::new(n.schema().as_arrow().clone());
            return Ok(Some(Arc::new(WindowAssignExec::try_new(
                input,
                n.spec.clone(),
                time_index,
                n.watermark.clone(),
                n.slices,
                n.late_sink.clone(),
                schema,
            )?)));
        }
        if node.as_any().is::<weir_sql::nodes::ChangelogNetNode>() {
            let input = Arc::clone(&physical_inputs[0]);
            let schema = Arc::new(node.schema().as_arrow().clone());
            return Ok(Some(Arc::new(net::ChangelogNetExec::new(input, schema))));
        }
        if let Some(n) = node.as_any().downcast_ref::<weir_sql::LateFilterNode>() {
            let input = Arc::clone(&physical_inputs[0]);
            let time_index = input.schema().index_of(&n.time_column)?;
            return Ok(Some(Arc::new(late_filter::LateFilterExec::new(
                input,
                n.source.clone(),
                time_index,
                n.delay_ms,
            ))));
        }
        if let Some(n) = node.as_any().downcast_ref::<WindowAggregateNode>() {
            let input = Arc::clone(&physical_inputs[0]);
            let (group_by, aggr, filters) = lower_aggregate(
                planner,
                &n.group_expr,
                &n.aggr_expr,
                logical_inputs[0],
                &input,
                session,
                planning_ctx,
            )?;
            let params = WindowAggregateParams {
                spec: n.spec.clone(),
                group_by,
                window_columns: n.window_columns.clone(),
                aggr,
                filters,
                slices: n.slices,
                lag_ms: n.watermark_lag_ms,
                schema: Arc::new(n.schema().as_arrow().clone()),
            };
            if let WindowSpec::Session { .. } = n.spec {
                return Ok(Some(Arc::new(SessionAggregateExec::try_new(
                    input,
                    params,
                    &n.session_keys,
                    threads,
                )?)));
            }
            return Ok(Some(Arc::new(WindowAggregateExec::try_new(
                input, params, threads,
            )?)));
        }
        if let Some(n) = node.as_any().downcast_ref::<weir_sql::WindowTopNNode>() {
            let input = Arc::clone(&physical_inputs[0]);
            let (partition_by, order_by) = plan_ranking(
                &n.partition_by,
                &n.order_by,
                logical_inputs[0],
                planner,
                session,
                planning_ctx,
            )?;
            let params = window_topn::TopNParams {
                partition_by,
                order_by,
                rank: n.rank,
                limit: n.limit,
                window_start: n.window_start,
                window_end: n.window_end,
                lag_ms: n.watermark_lag_ms,
                schema: Arc::new(n.schema().as_arrow().clone()),
            };
            return Ok(Some(Arc::new(WindowTopNExec::try_new(input, params, threads)?)));
        }
        if let Some(n) = node.as_any().downcast_ref::<weir_sql::StreamTopNNode>() {
            let (partition_by, order_by) = plan_ranking(
                &n.partition_by,
                &n.order_by,
                logical_inputs[0],
                planner,
                session,
                planning_ctx,
            )?;
            let limit = n
                .limit
                .ok_or_else(|| DataFusionError::Plan("a Top-N outside windows needs WHERE rn <= N".into()))?;
            let params = stream_topn::StreamTopNParams {
                partition_by,
                order_by,
                rank: n.rank,
                limit,
                ttl_ms: n.ttl_ms,
                first_on_time: n.first_on_time,
                retract: weir_sql::planner::is_changelog(logical_inputs[0]),
                schema: Arc::new(n.schema().as_arrow().clone()),
            };
            return Ok(Some(Arc::new(stream_topn::TopNExec::try_new(
                Arc::clone(&physical_inputs[0]),
                params,
                threads,
            )?)));
        }
        if let Some(n) = node.as_any().downcast_ref::<weir_sql::StreamJoinNode>() {
            let params =
                plan_stream_join(n, logical_inputs, physical_inputs, planner, session, planning_ctx)?;
            return Ok(Some(Arc::new(stream_join::StreamJoinExec::try_new(
                Arc::clone(&physical_inputs[0]),
                Arc::clone(&physical_inputs[1]),
                params,
                threads,
            )?)));
        }
        if let Some(n) = node.as_any().downcast_ref::<UpdateAggregateNode>() {
            let input = Arc::clone(&physical_inputs[0]);
            let (group_by, aggr, filters) = lower_aggregate(
                planner,
                &n.group_expr,
                &n.aggr_expr,
                logical_inputs[0],
                &input,
                session,
                planning_ctx,
            )?;
            let having = n
                .having
                .as_ref()
                .map(|h| planner.create_physical_expr(h, &n.aggregate_schema, session, planning_ctx))
                .transpose()?;
            return Ok(Some(Arc::new(UpdateAggregateExec::try_new(
                input,
                group_by,
                aggr,
                filters,
                having,
                n.ttl_ms,
                Arc::new(n.schema().as_arrow().clone()),
                threads,
            )?)));
        }
        Ok(None)
    }
}

/// An interval join's keys and condition as DataFusion's planner lowers
/// them for its own joins: each key over its input, the condition over an
/// intermediate schema of the columns it reads (see `JoinFilter`).
/// A ranking's physical `PARTITION BY` and `ORDER BY`.
type Ranking = (
    Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
    Vec<datafusion::physical_expr::PhysicalSortExpr>,
);

/// The physical `PARTITION BY` and `ORDER BY` of a ranking (window Top-N
/// or Top-N outside windows) over `input`.
fn plan_ranking(
    partition_by: &[datafusion::logical_expr::Expr],
    order_by: &[datafusion::logical_expr::SortExpr],
    input: &LogicalPlan,
    planner: &dyn PhysicalPlanner,
    session: &dyn Session,
    planning_ctx: &PhysicalPlanningContext,
) -> Result<Ranking> {
    let schema = input.schema();
    let partition_by = partition_by
        .iter()
        .map(|e| planner.create_physical_expr(e, schema, session, planning_ctx))
        .collect::<Result<Vec<_>>>()?;
    let order_by = order_by
        .iter()
        .map(|s| {
            let expr = planner.create_physical_expr(&s.expr, schema, session, planning_ctx)?;
            Ok(datafusion::physical_expr::PhysicalSortExpr::new(
                expr,
                datafusion::arrow::compute::SortOptions {
                    descending: !s.asc,
                    nulls_first: s.nulls_first,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((partition_by, order_by))
}

fn plan_stream_join(
    n: &weir_sql::StreamJoinNode,
    logical_inputs: &[&LogicalPlan],
    physical_inputs: &[Arc<dyn ExecutionPlan>],
    planner: &dyn PhysicalPlanner,
    session: &dyn Session,
    planning_ctx: &PhysicalPlanningContext,
) -> Result<stream_join::StreamJoinParams> {
    use datafusion::common::DFSchema;
    use datafusion::physical_plan::joins::utils::JoinFilter;
    let (ls, rs) = (logical_inputs[0].schema(), logical_inputs[1].schema());
    let (pl, pr) = (physical_inputs[0].schema(), physical_inputs[1].schema());
    let on =
        n.on.iter()
            .map(|(l, r)| {
                Ok((
                    planner.create_physical_expr(l, ls, session, planning_ctx)?,
                    planner.create_physical_expr(r, rs, session, planning_ctx)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
    // A bound that became a key (`a.t = b.t`) may leave no condition.
    let filter = if matches!(
        n.filter,
        datafusion::logical_expr::Expr::Literal(datafusion::common::ScalarValue::Boolean(Some(true)), _)
    ) {
        None
    } else {
        let cols = n.filter.column_refs();
        let mut left_idx: Vec<usize> = cols.iter().filter_map(|c| ls.index_of_column(c).ok()).collect();
        let mut right_idx: Vec<usize> = cols.iter().filter_map(|c| rs.index_of_column(c).ok()).collect();
        left_idx.sort_unstable();
        right_idx.sort_unstable();
        let mut df_fields = Vec::new();
        let mut fields = Vec::new();
        for &i in &left_idx {
            let (q, f) = ls.qualified_field(i);
            df_fields.push((q.cloned(), Arc::clone(f)));
            fields.push(pl.field(i).clone());
        }
        for &i in &right_idx {
            let (q, f) = rs.qualified_field(i);
            df_fields.push((q.cloned(), Arc::clone(f)));
            fields.push(pr.field(i).clone());
        }
        let filter_df = DFSchema::new_with_metadata(df_fields, Default::default())?;
        let expr = planner.create_physical_expr(&n.filter, &filter_df, session, planning_ctx)?;
        let filter = JoinFilter::new(
            expr,
            JoinFilter::build_column_indices(left_idx, right_idx),
            Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
        );
        Some(filter)
    };
    let unique = match &n.unique {
        Some(u) => {
            let (schema, side) = if u.right {
                (rs, datafusion::common::JoinSide::Right)
            } else {
                (ls, datafusion::common::JoinSide::Left)
            };
            let filter = u
                .filter
                .as_ref()
                .map(|f| planner.create_physical_expr(f, schema, session, planning_ctx))
                .transpose()?;
            Some(stream_join::UniqueSide { side, filter })
        }
        None => None,
    };
    Ok(stream_join::StreamJoinParams {
        on,
        filter,
        unique,
        join_type: n.join_type,
        null_equality: n.null_equality,
        time: n.time,
        ttl_ms: n.ttl_ms,
        signed: n.signed,
        bound_text: n.bound_text(),
        schema: Arc::new(n.schema().as_arrow().clone()),
    })
}

type Lowered = (
    Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)>,
    Vec<Arc<datafusion::physical_expr::aggregate::AggregateFunctionExpr>>,
    Vec<Option<Arc<dyn datafusion::physical_expr::PhysicalExpr>>>,
);

/// Group and aggregate expressions as DataFusion's planner lowers them for
/// its own `AggregateExec` (same names, same aggregate functions).
fn lower_aggregate(
    planner: &dyn PhysicalPlanner,
    group_expr: &[datafusion::logical_expr::Expr],
    aggr_expr: &[datafusion::logical_expr::Expr],
    logical_input: &LogicalPlan,
    input: &Arc<dyn ExecutionPlan>,
    session: &dyn Session,
    planning_ctx: &PhysicalPlanningContext,
) -> Result<Lowered> {
    let logical_schema = logical_input.schema();
    let physical_schema = input.schema();
    let group_by = group_expr
        .iter()
        .map(|e| {
            Ok((
                planner.create_physical_expr(e, logical_schema, session, planning_ctx)?,
                physical_name(e)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut aggr = Vec::with_capacity(aggr_expr.len());
    let mut filters = Vec::with_capacity(aggr_expr.len());
    for e in aggr_expr {
        let lowered = LoweredAggregateBuilder::new(
            e,
            logical_schema,
            &physical_schema,
            session.execution_props(),
            planning_ctx,
        )
        .build()?;
        aggr.push(lowered.aggregate);
        filters.push(lowered.filter);
    }
    Ok((group_by, aggr, filters))
}

/// A DataFusion query planner that knows the streaming nodes (so `EXPLAIN`
/// and physical planning of streaming plans go through DataFusion).
#[derive(Debug, Default)]
pub struct StreamQueryPlanner;

#[async_trait]
impl QueryPlanner for StreamQueryPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        physical_planner().create_physical_plan(plan, session).await
    }
}

/// DataFusion's physical planner with the streaming nodes added.
pub fn physical_planner() -> DefaultPhysicalPlanner {
    DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(StreamExtensionPlanner)])
}

#[cfg(test)]
mod tests {
    use super::SharedMetrics;

    /// Executing a node again (every epoch, on a copy sharing its metrics)
    /// registers no new metrics: the set's size follows the partitions,
    /// not the epochs, and the counts go on.
    #[test]
    fn shared_metrics_are_registered_once_per_partition() {
        let metrics = SharedMetrics::default();
        let copy = metrics.clone();
        for epoch in 0..100 {
            let m = if epoch % 2 == 0 { &metrics } else { &copy };
            for partition in 0..2 {
                m.baseline(partition).record_output(1);
                m.counter("late_rows", partition).add(1);
            }
        }
        let set = metrics.clone_inner();
        let after = set.iter().count();
        metrics.baseline(0);
        metrics.counter("late_rows", 1);
        assert_eq!(metrics.clone_inner().iter().count(), after);
        assert_eq!(set.output_rows(), Some(200));
        assert_eq!(set.sum_by_name("late_rows").map(|v| v.as_usize()), Some(200));
    }

    /// Output is counted in rows, batches and bytes (EXPLAIN ANALYZE
    /// showed Weir's operators with 0 batches and 0 bytes).
    #[test]
    fn output_counts_batches_and_bytes() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::record_batch::RecordBatch;
        let metrics = SharedMetrics::default();
        let b =
            RecordBatch::try_from_iter([("x", std::sync::Arc::new(Int64Array::from(vec![1, 2, 3])) as _)])
                .expect("batch");
        super::record_batches(&metrics.baseline(0), [&b, &b]);
        assert_eq!(metrics.clone_inner().output_rows(), Some(6));
        let text = format!("{}", metrics.clone_inner());
        assert!(text.contains("output_batches{partition=0}=2"), "{text}");
        assert!(text.contains("output_bytes{partition=0}=48.0 B"), "{text}");
    }
}
