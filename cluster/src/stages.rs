//! A stateful query's epoch as two stages of one Ballista job (issue 16,
//! part B.2, slices 3 and 5 of `docs/cluster-operators.md`): a window or
//! session aggregate, one without windows (a changelog; no row is late
//! there, so the lateness below is moot), a Top-N, or a join of two
//! sources. A session aggregate has no partial aggregate: its rows cross
//! the shuffle, as a Top-N's and a join's do.
//!
//! ```text
//! ShardStageExec          a task per shard k: shard k's state as of the last
//!   (shuffle by keys)     commit, fold (or join), emit, stage the sink file,
//! PartStageExec           write the state delta; one report row
//!   parts table           a task per part i: read it, judge lateness from W_i,
//!                         window, aggregate partially
//! ```
//!
//! A join has a `PartStageExec` and a shuffle per side (each side's
//! source read and cut on its own), both into the join's shards, and the
//! shard stage reads the two.
//!
//! **Lateness.** Locally a row is late when older than the greatest event
//! time of every row of its source read before it, minus the delay. A part
//! does not see the parts before it, so the driver gives part `i` that
//! watermark as of its first row, `W_i = max(W_in, max time of parts < i -
//! delay)`, from the parts' greatest event times (which it learns first,
//! from a read of the time column alone). Within the part the rule runs row
//! by row as locally, so every row is judged as a local run judges it, and
//! the aggregation can be partial before the shuffle.
//!
//! **Markers and routing.** Stage 1's rows go only to the shuffle, and a
//! stage-2 task is not told which shuffle partition it reads (Ballista
//! narrows its reader to it). So each part sends every shard one marker
//! row naming it (`__weir_shard`; shard 0's also carries the part's late
//! rows in `__weir_late`; every other column null), and every row is
//! routed on `__weir_route`, a value that the shuffle's hash sends to its
//! shard ([`route_values`]). A shard task learns its number from its
//! markers, counts the late rows and drops the markers. The stage-1 rows
//! are the prefix's columns, made nullable, then those three. (With one
//! thread the prefix has no partial aggregate: rows cross the shuffle.)
//!
//! **One operator per run.** Each shard's run builds an operator of its
//! own from the decoded one's configuration: Ballista may run several
//! partitions of one decoded plan at once, and a restore or a checkpoint
//! of an operator touches all its shards.
//!
//! **Attempts.** A stage-2 task names the files it writes after an attempt
//! id drawn when it starts (the sink file and the state file), and reports
//! them; the driver keeps one report per shard and names exactly that
//! attempt's files in the manifest and the commit, so a task Ballista ran
//! twice, or a stale executor's late write, leaves only files no commit
//! names.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array, UInt64Array, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use weir_engine::epoch::{EpochInput, SourceRows};
use weir_engine::exec::{StatefulOperator, StreamScanExec, stateful_state};
use weir_engine::remote::{RemoteRead, RemoteSink, ShardReport, SideTable};
use weir_storage::location::Create;
use weir_storage::{Checkpoint, Location, ShardOf, StateChains, StateKind, StateWrite, StoreOptions};

use crate::operators::{put_block, put_json, take_block, take_json};
use crate::pipeline::{attempt_id, stage_output, task_context};
use crate::read::{parts_in, parts_table};

/// The column of a stage-1 marker row: the part's late rows.
pub const LATE_COLUMN: &str = "__weir_late";

/// Stage 1 of a stateful query's epoch, run where each part is read.
#[derive(Clone)]
pub struct PartStage {
    /// The source and the epoch's parts of it (in the node's input).
    pub read: RemoteRead,
    /// The query's plan below the shuffle (its scan of one partition,
    /// window assignment, the partial aggregate), run on each part as if
    /// the part were the epoch's input.
    pub prefix: Arc<dyn ExecutionPlan>,
    /// The epoch.
    pub epoch: u64,
    /// The epoch's processing time.
    pub processing_time_ms: i64,
    /// Part i's source watermark as of its first row (`W_i` above).
    pub watermarks_before: Vec<i64>,
    /// The operator's shards.
    pub shards: usize,
    /// The prefix's output columns the operator's shards are split by.
    pub key_columns: Vec<usize>,
}

/// The column of a stage-1 row (or marker) naming the part it came from:
/// a shard task puts its rows back in part order, so that an operator for
/// which order matters (a Top-N's ties keep arrival order) sees them as a
/// local run does (Ballista's shuffle reader interleaves the parts).
pub const PART_COLUMN: &str = "__weir_part";
/// The column of a stage-1 marker row naming the shard it is for.
pub const SHARD_COLUMN: &str = "__weir_shard";
/// The column the shuffle hashes: a value that Ballista's hash sends to
/// the row's shard ([`route_values`]).
pub const ROUTE_COLUMN: &str = "__weir_route";

/// The rows stage 1 sends through the shuffle: the prefix's columns, all
/// nullable, then [`PART_COLUMN`], [`LATE_COLUMN`], [`SHARD_COLUMN`] and
/// [`ROUTE_COLUMN`].
///
/// Why the route column: Ballista's scheduler narrows a stage-2 task's
/// shuffle reader to the one partition it reads, so the task is not told
/// which partition (shard) that is, and a shard no part sent a row has no
/// shuffle file to tell it either. So every part sends each shard a marker
/// row naming it, and every row goes where its shard's number sends it.
pub fn stage_one_schema(prefix: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = prefix
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(PART_COLUMN, DataType::UInt32, false));
    fields.push(Field::new(LATE_COLUMN, DataType::UInt64, true));
    fields.push(Field::new(SHARD_COLUMN, DataType::UInt32, true));
    fields.push(Field::new(ROUTE_COLUMN, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// For each of `shards` shards, a value of [`ROUTE_COLUMN`] that the hash
/// repartition (DataFusion's, which Ballista's shuffle uses) sends to it.
pub fn route_values(shards: usize) -> DfResult<Vec<u64>> {
    let mut out: Vec<Option<u64>> = vec![None; shards.max(1)];
    if shards <= 1 {
        return Ok(vec![0]);
    }
    let schema = Arc::new(Schema::new(vec![Field::new(
        ROUTE_COLUMN,
        DataType::UInt64,
        false,
    )]));
    let mut missing = shards;
    let mut v = 0u64;
    while missing > 0 {
        // A thousand candidates at a time; a few cover every shard.
        let candidates: Vec<u64> = (v..v + 1024).collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(UInt64Array::from(candidates))])?;
        for (shard, rows) in weir_engine::exec::shard::route(&batch, &[0], shards)? {
            if out[shard].is_none() && rows.num_rows() > 0 {
                out[shard] = Some(rows.column(0).as_primitive::<UInt64Type>().value(0));
                missing -= 1;
            }
        }
        v += 1024;
        if v > 1 << 24 {
            return Err(DataFusionError::Internal(format!(
                "no route to each of {shards} shards"
            )));
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Runs [`PartStage`]: a partition per part.
pub struct PartStageExec {
    stage: PartStage,
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
    store_options: StoreOptions,
}

impl fmt::Debug for PartStageExec {
    // The declaration's options may hold credentials: name the table only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartStageExec")
            .field("table", &self.stage.read.table.name)
            .field("epoch", &self.stage.epoch)
            .finish()
    }
}

impl PartStageExec {
    /// The stage over its parts; the prefix's scans are made one partition.
    pub fn try_new(mut stage: PartStage, store_options: StoreOptions) -> DfResult<Self> {
        if stage.watermarks_before.len() != stage.read.parts.len() {
            return Err(DataFusionError::Internal(format!(
                "{} parts but {} watermarks",
                stage.read.parts.len(),
                stage.watermarks_before.len()
            )));
        }
        stage.prefix = one_partition(Arc::clone(&stage.prefix))?;
        // Without parts, one task still sends each shard its marker: the
        // shards run (the watermark may close windows) and know which
        // they are.
        let input = if stage.read.parts.is_empty() {
            Arc::new(
                datafusion::physical_plan::placeholder_row::PlaceholderRowExec::new(
                    Arc::new(Schema::empty()),
                ),
            ) as Arc<dyn ExecutionPlan>
        } else {
            parts_table(&stage.read.parts)?
        };
        Ok(Self::over(stage, input, store_options))
    }

    pub(crate) fn over(
        mut stage: PartStage,
        input: Arc<dyn ExecutionPlan>,
        store_options: StoreOptions,
    ) -> Self {
        stage.read.parts = Vec::new();
        let props = PlanProperties::new(
            EquivalenceProperties::new(stage_one_schema(&stage.prefix.schema())),
            Partitioning::UnknownPartitioning(input.properties().output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            stage,
            input,
            props: Arc::new(props),
            store_options,
        }
    }

    /// What it runs.
    pub fn stage(&self) -> &PartStage {
        &self.stage
    }
}

/// `plan` with every scan of one partition (a part is read whole by one
/// task), the nodes above rebuilt to match.
fn one_partition(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        Ok(match node.downcast_ref::<StreamScanExec>() {
            Some(scan) if scan.partitions() != 1 => {
                let one =
                    StreamScanExec::with_schema(scan.source(), scan.schema(), scan.projection().cloned());
                Transformed::yes(Arc::new(one) as Arc<dyn ExecutionPlan>)
            }
            _ => Transformed::no(node),
        })
    })
    .map(|t| t.data)
}

impl DisplayAs for PartStageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PartStageExec: source={}, epoch={}",
            self.stage.read.table.name, self.stage.epoch
        )
    }
}

impl ExecutionPlan for PartStageExec {
    fn name(&self) -> &str {
        "PartStageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("PartStageExec has one child".into()))?;
        Ok(Arc::new(Self::over(
            self.stage.clone(),
            input,
            self.store_options.clone(),
        )))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let parts = self.input.execute(partition, Arc::clone(&context))?;
        let stage = self.stage.clone();
        let store_options = self.store_options.clone();
        let schema = self.schema();
        let out_schema = Arc::clone(&schema);
        let run = async move {
            let parts: Vec<RecordBatch> = parts.try_collect().await?;
            let routes = route_values(stage.shards)?;
            let mut out = Vec::new();
            if stage.read.parts.is_empty() && stage.watermarks_before.is_empty() {
                out.extend(markers(&out_schema, &routes, 0, 0)?);
            }
            for batch in parts {
                if batch.num_columns() == 0 {
                    continue;
                }
                for (index, part) in parts_in(&batch)? {
                    out.extend(
                        run_part(
                            &stage,
                            &store_options,
                            &context,
                            &out_schema,
                            &routes,
                            index,
                            &part,
                        )
                        .await?,
                    );
                }
            }
            Ok::<_, DataFusionError>(out)
        };
        let stream = futures::stream::once(run).flat_map(|r| match r {
            Ok(batches) => futures::stream::iter(batches.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Reads part `index`, runs the prefix over it from `W_index`; its rows for
/// the shuffle, then its marker row.
#[allow(clippy::too_many_arguments)]
async fn run_part(
    stage: &PartStage,
    store_options: &StoreOptions,
    context: &Arc<TaskContext>,
    schema: &SchemaRef,
    routes: &[u64],
    index: u32,
    part: &Value,
) -> DfResult<Vec<RecordBatch>> {
    // Ballista sends a task's error back in its debug form: the message
    // itself, as `Execution("...")`, reads best there (see `task_failure`).
    let external = |e: weir_engine::Error| DataFusionError::Execution(e.to_string());
    let table = &stage.read.table;
    let watermark = *stage
        .watermarks_before
        .get(index as usize)
        .ok_or_else(|| DataFusionError::Internal(format!("no watermark for part {index}")))?;
    let batches =
        weir_engine::source::read_whole_part(table, store_options, stage.read.columns.clone(), part)
            .await
            .map_err(external)?;
    let input = Arc::new(EpochInput {
        epoch: stage.epoch,
        batches: HashMap::from([(
            table.name.clone(),
            SourceRows {
                columns: Arc::new(stage.read.columns.clone()),
                batches: Arc::new(batches),
                ..SourceRows::default()
            },
        )]),
        source_watermarks_in: HashMap::from([(table.name.clone(), watermark)]),
        processing_time_ms: stage.processing_time_ms,
        watermark_out: i64::MIN,
        ..EpochInput::default()
    });
    let config = context
        .session_config()
        .clone()
        .with_extension(Arc::clone(&input));
    let ctx = Arc::new(task_context(context, config, context.scalar_functions().clone()));
    let mut out = Vec::new();
    for p in 0..stage.prefix.properties().output_partitioning().partition_count() {
        let stream = stage.prefix.execute(p, Arc::clone(&ctx))?;
        for b in datafusion::physical_plan::common::collect(stream).await? {
            for (shard, rows) in weir_engine::exec::shard::route(&b, &stage.key_columns, stage.shards)? {
                let n = rows.num_rows();
                let mut columns = rows.columns().to_vec();
                columns.push(Arc::new(UInt32Array::from(vec![index; n])));
                columns.push(new_null_array(&DataType::UInt64, n));
                columns.push(new_null_array(&DataType::UInt32, n));
                columns.push(Arc::new(UInt64Array::from(vec![routes[shard]; n])));
                out.push(RecordBatch::try_new(Arc::clone(schema), columns)?);
            }
        }
    }
    let late = input.late_rows.load(std::sync::atomic::Ordering::Relaxed);
    out.extend(markers(schema, routes, late, index)?);
    Ok(out)
}

/// Part `part`'s marker rows: one to each shard, naming it; the first
/// carries the part's late rows.
fn markers(schema: &SchemaRef, routes: &[u64], late: u64, part: u32) -> DfResult<Vec<RecordBatch>> {
    let n = routes.len();
    let width = schema.fields().len();
    let mut columns: Vec<ArrayRef> = schema.fields()[..width - 4]
        .iter()
        .map(|f| new_null_array(f.data_type(), n))
        .collect();
    columns.push(Arc::new(UInt32Array::from(vec![part; n])));
    columns.push(Arc::new(UInt64Array::from_iter_values(
        (0..n).map(|k| if k == 0 { late } else { 0 }),
    )));
    let shards: Vec<u32> = (0..n)
        .map(|k| u32::try_from(k).map_err(|_| DataFusionError::Internal("too many shards".into())))
        .collect::<DfResult<_>>()?;
    columns.push(Arc::new(UInt32Array::from(shards)));
    columns.push(Arc::new(UInt64Array::from(routes.to_vec())));
    Ok(vec![RecordBatch::try_new(Arc::clone(schema), columns)?])
}

/// Stage 2 of a stateful query's epoch: a task per shard of its operator.
#[derive(Clone)]
pub struct ShardStage {
    /// The query's plan from the operator up (nodes that keep partitions
    /// apart: projections, filters); the operator's input is a stand-in of
    /// its partitions, replaced by each task's rows.
    pub upper: Arc<dyn ExecutionPlan>,
    /// The operator's state table in the checkpoint (`p0-agg0`).
    pub operator_id: String,
    /// The checkpoint's URL.
    pub checkpoint: String,
    /// The checkpoint's store settings (they may be credentials: never
    /// shown).
    pub checkpoint_options: Vec<(String, String)>,
    /// The operator's state files as of the last commit (`None`: no state).
    pub chains: Option<StateChains>,
    /// The pipeline's watermark of the last commit (what the operator has
    /// emitted up to).
    pub watermark_in: i64,
    /// Write a snapshot of the shard, not a delta.
    pub full: bool,
    /// The epoch.
    pub epoch: u64,
    /// The epoch's processing time.
    pub processing_time_ms: i64,
    /// The pipeline's watermark after the epoch.
    pub watermark_out: i64,
    /// Where the output goes.
    pub sink: RemoteSink,
    /// The operator's side table, if it has one.
    pub side: Option<SideTable>,
}

fn report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::UInt32, false),
        Field::new("attempt", DataType::Utf8, false),
        Field::new("rows_out", DataType::UInt64, false),
        Field::new("late_rows", DataType::UInt64, false),
        Field::new("file", DataType::Utf8, true),
        Field::new("staged", DataType::Utf8, true),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("state_kind", DataType::Utf8, true),
        Field::new("state_bytes", DataType::UInt64, false),
        Field::new("state_rows", DataType::UInt64, false),
        Field::new("side_kind", DataType::Utf8, true),
        Field::new("side_bytes", DataType::UInt64, false),
        Field::new("side_rows", DataType::UInt64, false),
    ]))
}

/// Runs [`ShardStage`] over the shuffles' partitions, one per shard: one
/// shuffle per input of the operator (a join has two, dealt alike).
pub struct ShardStageExec {
    stage: ShardStage,
    inputs: Vec<Arc<dyn ExecutionPlan>>,
    props: Arc<PlanProperties>,
    store_options: StoreOptions,
}

impl fmt::Debug for ShardStageExec {
    // The checkpoint's options may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardStageExec")
            .field("operator", &self.stage.operator_id)
            .field("epoch", &self.stage.epoch)
            .finish()
    }
}

impl ShardStageExec {
    /// The stage over `inputs` (a shuffle per input of the operator, a
    /// partition per shard).
    pub fn try_new(
        stage: ShardStage,
        inputs: Vec<Arc<dyn ExecutionPlan>>,
        store_options: StoreOptions,
    ) -> DfResult<Self> {
        // Ballista narrows each input to the partitions each task reads
        // (one); each task learns its shard from the rows.
        let shards = operator_of(&stage.upper)?.state_shards().max(1);
        let wanted = stand_ins(&stage.upper)?.len();
        if inputs.len() != wanted {
            return Err(DataFusionError::Internal(format!(
                "a shard stage of an operator of {wanted} inputs over {}",
                inputs.len()
            )));
        }
        let partitions = inputs
            .iter()
            .map(|i| i.properties().output_partitioning().partition_count())
            .max()
            .unwrap_or(0);
        if partitions > shards {
            return Err(DataFusionError::Internal(format!(
                "an operator of {shards} shards over {partitions} partitions"
            )));
        }
        let props = PlanProperties::new(
            EquivalenceProperties::new(report_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            stage,
            inputs,
            props: Arc::new(props),
            store_options,
        })
    }

    /// What it runs.
    pub fn stage(&self) -> &ShardStage {
        &self.stage
    }
}

/// The inputs of the one stateful operator of `upper`: stand-ins of its
/// shuffles (see `weir_engine::driver`'s `split_stateful`).
fn stand_ins(upper: &Arc<dyn ExecutionPlan>) -> DfResult<Vec<Arc<dyn ExecutionPlan>>> {
    let mut found = None;
    upper.apply(|node| {
        if stateful_state(node.as_ref()).is_some() {
            found = Some(node.children().into_iter().map(Arc::clone).collect::<Vec<_>>());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match found {
        Some(inputs) if !inputs.is_empty() => Ok(inputs),
        _ => Err(DataFusionError::Internal("an operator without an input".into())),
    }
}

/// The one stateful operator of `upper`.
fn operator_of(upper: &Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn StatefulOperator>> {
    let mut found = Vec::new();
    upper.apply(|node| {
        if let Some(op) = stateful_state(node.as_ref()) {
            found.push(op);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match <[_; 1]>::try_from(found) {
        Ok([op]) => Ok(op),
        Err(found) => Err(DataFusionError::Internal(format!(
            "a shard stage over {} stateful operators, not one",
            found.len()
        ))),
    }
}

impl DisplayAs for ShardStageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShardStageExec: operator={}, epoch={}",
            self.stage.operator_id, self.stage.epoch
        )
    }
}

impl ExecutionPlan for ShardStageExec {
    fn name(&self) -> &str {
        "ShardStageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inputs.iter().collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::try_new(
            self.stage.clone(),
            children,
            self.store_options.clone(),
        )?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let streams = self
            .inputs
            .iter()
            .map(|i| i.execute(partition, Arc::clone(&context)))
            .collect::<DfResult<Vec<_>>>()?;
        let stage = self.stage.clone();
        let store_options = self.store_options.clone();
        let run = async move {
            let rows: Vec<Vec<RecordBatch>> =
                futures::future::try_join_all(streams.into_iter().map(|s| s.try_collect())).await?;
            run_shard(&stage, &store_options, &context, rows).await
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            report_schema(),
            futures::stream::once(run),
        )))
    }
}

/// Splits stage-1 rows into the partial aggregate's rows (as `schema`), in
/// part order (each part's rows in the order it sent them), the late rows
/// their markers count, and the shard the markers name (all the same: the
/// shuffle sends each shard's markers to it alone).
fn split_markers(
    rows: &[RecordBatch],
    schema: &SchemaRef,
) -> DfResult<(Vec<RecordBatch>, u64, Option<usize>)> {
    use datafusion::arrow::datatypes::UInt32Type;
    let mut data: Vec<(u32, RecordBatch)> = Vec::with_capacity(rows.len());
    let mut late = 0;
    let mut shard: Option<usize> = None;
    let wide = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    for b in rows {
        let width = b.num_columns();
        if width < 4 {
            return Err(DataFusionError::Internal(
                "stage-1 rows without their markers' columns".into(),
            ));
        }
        let (Some(parts), Some(marks), Some(shards)) = (
            b.column(width - 4).as_primitive_opt::<UInt32Type>(),
            b.column(width - 3).as_primitive_opt::<UInt64Type>(),
            b.column(width - 2).as_primitive_opt::<UInt32Type>(),
        ) else {
            return Err(DataFusionError::Internal(format!(
                "stage-1 rows without {PART_COLUMN} or {LATE_COLUMN}"
            )));
        };
        let columns = b.columns()[..width - 4].to_vec();
        late += marks.iter().flatten().sum::<u64>();
        for s in shards.iter().flatten() {
            let s = s as usize;
            if shard.is_some_and(|k| k != s) {
                return Err(DataFusionError::Internal(format!(
                    "a shard task received the markers of shards {} and {s}",
                    shard.unwrap_or_default()
                )));
            }
            shard = Some(s);
        }
        let narrow = RecordBatch::try_new(Arc::clone(&wide), columns)?;
        // Each part's data rows (not markers) of the batch, in order: a
        // batch holds one part's rows unless something merged batches.
        let is_data = datafusion::arrow::compute::is_null(shards)?;
        let mut seen: Vec<u32> = parts.values().to_vec();
        seen.sort_unstable();
        seen.dedup();
        for part in seen {
            let of_part = datafusion::arrow::compute::kernels::cmp::eq(
                parts,
                &datafusion::arrow::array::UInt32Array::new_scalar(part),
            )?;
            let keep = datafusion::arrow::compute::and(&is_data, &of_part)?;
            if keep.true_count() == 0 {
                continue;
            }
            let kept = if keep.true_count() == b.num_rows() {
                narrow.clone()
            } else {
                datafusion::arrow::compute::filter_record_batch(&narrow, &keep)?
            };
            data.push((
                part,
                RecordBatch::try_new(Arc::clone(schema), kept.columns().to_vec())?,
            ));
        }
    }
    // Stable: a part's batches keep the order they came in.
    data.sort_by_key(|(part, _)| *part);
    Ok((data.into_iter().map(|(_, b)| b).collect(), late, shard))
}

/// A shard task's rows as its operator's input: partition `k` holds
/// shard k's rows (the others none), declared partitioned as the shuffle
/// that dealt them was.
#[derive(Debug)]
struct ShardRowsExec {
    partitions: Vec<Vec<RecordBatch>>,
    props: Arc<PlanProperties>,
}

impl ShardRowsExec {
    fn new(schema: SchemaRef, partitioning: Partitioning, partitions: Vec<Vec<RecordBatch>>) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            partitions,
            props: Arc::new(props),
        }
    }
}

impl DisplayAs for ShardRowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ShardRowsExec")
    }
}

impl ExecutionPlan for ShardRowsExec {
    fn name(&self) -> &str {
        "ShardRowsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let rows = self.partitions.get(partition).cloned().unwrap_or_default();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            futures::stream::iter(rows.into_iter().map(Ok)),
        )))
    }
}

/// An empty operator of `node`'s kind and configuration over `feds` (one
/// per input; `None` when `node` is not a stateful operator a shard stage
/// runs).
fn fresh_operator(
    node: &Arc<dyn ExecutionPlan>,
    feds: &[Arc<dyn ExecutionPlan>],
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    use weir_engine::exec::stream_join::StreamJoinExec;
    use weir_engine::exec::stream_topn::TopNExec;
    use weir_engine::exec::{SessionAggregateExec, UpdateAggregateExec, WindowAggregateExec, WindowTopNExec};
    if let Some(n) = node.downcast_ref::<StreamJoinExec>() {
        let [left, right] = feds else {
            return Err(DataFusionError::Internal(
                "a join fed other than two inputs".into(),
            ));
        };
        let state = n.state();
        let (params, threads) = state.config();
        let op = StreamJoinExec::try_new_over(
            Arc::clone(left),
            Arc::clone(right),
            params.clone(),
            threads,
            n.projection_indices().map(<[usize]>::to_vec),
        )?;
        return Ok(Some(Arc::new(op)));
    }
    if stateful_state(node.as_ref()).is_none() {
        return Ok(None);
    }
    let [fed] = feds else {
        return Err(DataFusionError::Internal(format!(
            "{} fed {} inputs",
            node.name(),
            feds.len()
        )));
    };
    let fed = Arc::clone(fed);
    if let Some(n) = node.downcast_ref::<WindowAggregateExec>() {
        let state = n.state();
        let (params, threads, in_schema) = state.config();
        let op = WindowAggregateExec::try_new_over(fed, params.clone(), threads, Arc::clone(in_schema))?;
        return Ok(Some(Arc::new(op)));
    }
    if let Some(n) = node.downcast_ref::<SessionAggregateExec>() {
        let state = n.state();
        let (params, session_keys, threads) = state.config();
        let op = SessionAggregateExec::try_new(fed, params.clone(), session_keys, threads)?;
        return Ok(Some(Arc::new(op)));
    }
    if let Some(n) = node.downcast_ref::<UpdateAggregateExec>() {
        let state = n.state();
        let (params, threads, in_schema) = state.config();
        let op = UpdateAggregateExec::try_new_over(fed, params.clone(), threads, Arc::clone(in_schema))?;
        return Ok(Some(Arc::new(op)));
    }
    if let Some(n) = node.downcast_ref::<TopNExec>() {
        let state = n.state();
        let (params, threads) = state.config();
        return Ok(Some(Arc::new(TopNExec::try_new_over(
            fed,
            params.clone(),
            threads,
        )?)));
    }
    if let Some(n) = node.downcast_ref::<WindowTopNExec>() {
        let state = n.state();
        let (params, threads) = state.config();
        return Ok(Some(Arc::new(WindowTopNExec::try_new_over(
            fed,
            params.clone(),
            threads,
        )?)));
    }
    Err(DataFusionError::Internal(format!(
        "a shard stage runs aggregates, Top-Ns and joins, not {}",
        node.name()
    )))
}

/// Shard `shard`'s task: restore, fold (or join), emit, stage, checkpoint;
/// its report. `rows`: each input's stage-1 rows.
async fn run_shard(
    stage: &ShardStage,
    store_options: &StoreOptions,
    context: &Arc<TaskContext>,
    rows: Vec<Vec<RecordBatch>>,
) -> DfResult<RecordBatch> {
    let store = |e: weir_storage::Error| DataFusionError::Execution(e.to_string());
    let attempt = attempt_id();
    let shards = operator_of(&stage.upper)?.state_shards().max(1);
    // The operator's inputs: each input's rows (the partial aggregate's,
    // a join side's), every partition but this shard's empty.
    let stand_ins = stand_ins(&stage.upper)?;
    if stand_ins.len() != rows.len() {
        return Err(DataFusionError::Internal(format!(
            "an operator of {} inputs given {}",
            stand_ins.len(),
            rows.len()
        )));
    }
    let mut late_rows = 0;
    let mut shard: Option<usize> = None;
    let mut feds: Vec<Arc<dyn ExecutionPlan>> = Vec::with_capacity(rows.len());
    let mut fed_rows = Vec::with_capacity(rows.len());
    for (stand_in, rows) in stand_ins.iter().zip(&rows) {
        let (data, late, named) = split_markers(rows, &stand_in.schema())?;
        late_rows += late;
        if let (Some(a), Some(b)) = (shard, named)
            && a != b
        {
            return Err(DataFusionError::Internal(format!(
                "a shard task received the markers of shards {a} and {b}"
            )));
        }
        shard = shard.or(named);
        fed_rows.push(data);
    }
    let shard = shard.ok_or_else(|| {
        DataFusionError::Internal("a shard task received no marker naming its shard".into())
    })?;
    if shard >= shards {
        return Err(DataFusionError::Internal(format!(
            "shard {shard} of an operator of {shards}"
        )));
    }
    for (stand_in, data) in stand_ins.iter().zip(fed_rows) {
        let mut partitions = vec![Vec::new(); shards];
        partitions[shard] = data;
        // Declared partitioned as the operator's own shuffle was (the
        // stand-in is that shuffle, over nothing): the operator checks it.
        let partitioning = stand_in.properties().output_partitioning().clone();
        feds.push(Arc::new(ShardRowsExec::new(
            stand_in.schema(),
            partitioning,
            partitions,
        )));
    }
    // An operator of this run's own, empty: the decoded plan is shared by
    // every partition Ballista gives the task, and a restore or a
    // checkpoint of one operator touches all its shards, so two shards run
    // in one task on one operator would wipe each other's state.
    let upper = Arc::clone(&stage.upper)
        .transform_down(|node| {
            if let Some(fresh) = fresh_operator(&node, &feds)? {
                return Ok(Transformed::new(fresh, true, TreeNodeRecursion::Jump));
            }
            Ok(Transformed::no(node))
        })?
        .data;
    let op = operator_of(&upper)?;
    let settings = store_options.merged(&StoreOptions::new(stage.checkpoint_options.iter().cloned()));
    let checkpoint =
        Checkpoint::new(Location::open(&stage.checkpoint, &settings, Create::No).map_err(store)?);
    // The operator's state table, and its side table (an update
    // aggregate's distinct values), each restored and written alike.
    let mut tables = vec![StateTable {
        id: &stage.operator_id,
        op: Arc::clone(&op),
        chains: stage.chains.as_ref(),
        full: stage.full,
    }];
    match (&stage.side, Arc::clone(&op).side_table()) {
        (Some(side), Some((_, table))) => tables.push(StateTable {
            id: &side.operator_id,
            op: table,
            chains: side.chains.as_ref(),
            full: side.full,
        }),
        (None, None) => {}
        _ => {
            return Err(DataFusionError::Internal(
                "an operator's side table and the stage's disagree".into(),
            ));
        }
    }
    let mut restored_all = Vec::with_capacity(tables.len());
    for t in &tables {
        restored_all
            .push(restore_table(&checkpoint, t, shard, shards, stage.epoch, stage.watermark_in).await?);
    }
    let input = Arc::new(EpochInput {
        epoch: stage.epoch,
        processing_time_ms: stage.processing_time_ms,
        watermark_out: stage.watermark_out,
        ..EpochInput::default()
    });
    let config = context
        .session_config()
        .clone()
        .with_extension(Arc::clone(&input));
    let ctx = Arc::new(task_context(context, config, context.scalar_functions().clone()));
    let output = datafusion::physical_plan::common::collect(upper.execute(shard, ctx)?).await?;
    // Rows the operator itself found late (a join's, older than what its
    // state was evicted to), beside those stage 1 counted.
    let late_rows = late_rows + input.late_rows.load(std::sync::atomic::Ordering::Relaxed);
    let rows_out: u64 = output.iter().map(|b| b.num_rows() as u64).sum();
    let (file, staged, bytes) = stage_output(
        &stage.sink,
        store_options,
        stage.epoch,
        shard,
        &attempt,
        &upper.schema(),
        &output,
    )
    .await?;
    let mut written = Vec::with_capacity(tables.len());
    for (t, all) in tables.iter().zip(restored_all) {
        written.push(write_table(&checkpoint, t, shard, shards, stage.epoch, &attempt, all).await?);
    }
    // The state files on the disk before the report names them.
    checkpoint.location().sync().await.map_err(store)?;
    let kind_name = |state: Option<(StateKind, u64)>| {
        state.map(|(k, _)| match k {
            StateKind::Snapshot => "snapshot",
            StateKind::Delta => "delta",
        })
    };
    let (state, state_rows) = written[0];
    let (side_state, side_rows) = written.get(1).copied().unwrap_or((None, 0));
    let shard_index =
        u32::try_from(shard).map_err(|_| DataFusionError::Internal("too many shards".into()))?;
    Ok(RecordBatch::try_new(
        report_schema(),
        vec![
            Arc::new(UInt32Array::from(vec![shard_index])),
            Arc::new(StringArray::from(vec![attempt])),
            Arc::new(UInt64Array::from(vec![rows_out])),
            Arc::new(UInt64Array::from(vec![late_rows])),
            Arc::new(StringArray::from(vec![file])),
            Arc::new(StringArray::from(vec![staged])),
            Arc::new(UInt64Array::from(vec![bytes])),
            Arc::new(StringArray::from(vec![kind_name(state)])),
            Arc::new(UInt64Array::from(vec![state.map_or(0, |(_, b)| b)])),
            Arc::new(UInt64Array::from(vec![state_rows])),
            Arc::new(StringArray::from(vec![kind_name(side_state)])),
            Arc::new(UInt64Array::from(vec![side_state.map_or(0, |(_, b)| b)])),
            Arc::new(UInt64Array::from(vec![side_rows])),
        ],
    )?)
}

/// A state table a shard task restores and writes.
struct StateTable<'a> {
    /// Its id in the checkpoint (`p0-agg0`, `p0-agg0-values`).
    id: &'a str,
    op: Arc<dyn StatefulOperator>,
    /// Its files as of the last commit (`None`: no state).
    chains: Option<&'a StateChains>,
    /// Write a snapshot of the shard, not a delta.
    full: bool,
}

/// Restores shard `shard` of table `t` as of the last commit (and the
/// watermark, also without state: the operator then knows how far windows
/// were emitted, as a local restore sets it). Under another shard count
/// its rows are in every old shard's files: all are restored, and the
/// operator deals them to its shards (this task writes only its own);
/// `true` then.
async fn restore_table(
    checkpoint: &Checkpoint,
    t: &StateTable<'_>,
    shard: usize,
    shards: usize,
    epoch: u64,
    watermark_in: i64,
) -> DfResult<bool> {
    let store = |e: weir_storage::Error| DataFusionError::Execution(e.to_string());
    let mut restored_all = false;
    let batches = match t.chains {
        Some(chains) if chains.shards.len() == shards => {
            checkpoint
                .restore_shard(t.id, chains, shard)
                .await
                .map_err(store)?
                .1
        }
        Some(chains) => {
            restored_all = true;
            let listed = BTreeMap::from([(t.id.to_string(), chains.clone())]);
            checkpoint
                .restore_state_listed(t.id, epoch.saturating_sub(1), Some(&listed))
                .await
                .map_err(store)?
                .map(|r| r.batches)
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    t.op.restore(batches, watermark_in)?;
    Ok(restored_all)
}

/// Writes shard `shard`'s change of table `t` (all of it, when full) under
/// the attempt's name; the file's kind and bytes (`None`: no change), and
/// the rows the shard holds.
async fn write_table(
    checkpoint: &Checkpoint,
    t: &StateTable<'_>,
    shard: usize,
    shards: usize,
    epoch: u64,
    attempt: &str,
    restored_all: bool,
) -> DfResult<(Option<(StateKind, u64)>, u64)> {
    let store = |e: weir_storage::Error| DataFusionError::Execution(e.to_string());
    let mut parts = t.op.checkpoint(t.full)?;
    if parts.len() != shards {
        return Err(DataFusionError::Internal(format!(
            "a table of {shards} shards checkpointed {} parts",
            parts.len()
        )));
    }
    let mut change = parts.swap_remove(shard);
    if t.full {
        change.get_or_insert_with(Default::default);
    }
    // The rows the shard holds. Restored under another shard count, the
    // operator also holds the other shards' rows (never written here); the
    // driver then asks for a snapshot, which is the shard's whole state.
    let rows = match (&change, restored_all) {
        (Some(c), true) => c.upserts.iter().map(|b| b.num_rows() as u64).sum(),
        _ => t.op.state_rows() as u64,
    };
    let kind = if t.full {
        StateKind::Snapshot
    } else {
        StateKind::Delta
    };
    let Some(change) = change else {
        return Ok((None, rows));
    };
    let schema = t.op.state_schema();
    let w = StateWrite {
        kind,
        shard: ShardOf::new(shard, shards),
        schema: &schema,
        unit_key_len: t.op.unit_key_len(),
        upserts: &change.upserts,
        deletes: &change.deletes,
        attempt: Some(attempt),
    };
    let written = checkpoint.write_state(t.id, epoch, w).await.map_err(store)?;
    Ok((Some((kind, written)), rows))
}

pub(crate) const PART_STAGE_MAGIC: &[u8] = b"WEIR-PART-STAGE/1\n";
pub(crate) const SHARD_STAGE_MAGIC: &[u8] = b"WEIR-SHARD-STAGE/1\n";

#[derive(serde::Serialize, serde::Deserialize)]
struct WirePartStage {
    epoch: u64,
    processing_time_ms: i64,
    watermarks_before: Vec<i64>,
    shards: usize,
    key_columns: Vec<usize>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireShardStage {
    operator_id: String,
    checkpoint: String,
    checkpoint_options: Vec<(String, String)>,
    chains: Option<StateChains>,
    watermark_in: i64,
    full: bool,
    epoch: u64,
    processing_time_ms: i64,
    watermark_out: i64,
    /// `None`: a blackhole; else the folder, the writer and the table's
    /// store settings.
    files: Option<crate::pipeline::WireFiles>,
    side: Option<SideTable>,
}

/// Encodes a stage node; `false` when `node` is neither.
pub(crate) fn try_encode(
    node: &Arc<dyn ExecutionPlan>,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
    buf: &mut Vec<u8>,
) -> DfResult<bool> {
    let plan_bytes = |plan: &Arc<dyn ExecutionPlan>| {
        datafusion_proto::bytes::physical_plan_to_bytes_with_proto_converter(
            Arc::clone(plan),
            codec,
            converter,
        )
    };
    if let Some(n) = node.downcast_ref::<PartStageExec>() {
        let stage = &n.stage;
        let wire = WirePartStage {
            epoch: stage.epoch,
            processing_time_ms: stage.processing_time_ms,
            watermarks_before: stage.watermarks_before.clone(),
            shards: stage.shards,
            key_columns: stage.key_columns.clone(),
        };
        put_json(PART_STAGE_MAGIC, &wire, buf)?;
        let mut read = Vec::new();
        crate::read::encode_read(&stage.read, &mut read)?;
        put_block(&read, buf)?;
        buf.extend_from_slice(&plan_bytes(&stage.prefix)?);
        return Ok(true);
    }
    if let Some(n) = node.downcast_ref::<ShardStageExec>() {
        let stage = &n.stage;
        let wire = WireShardStage {
            operator_id: stage.operator_id.clone(),
            checkpoint: stage.checkpoint.clone(),
            checkpoint_options: stage.checkpoint_options.clone(),
            chains: stage.chains.clone(),
            watermark_in: stage.watermark_in,
            full: stage.full,
            epoch: stage.epoch,
            processing_time_ms: stage.processing_time_ms,
            watermark_out: stage.watermark_out,
            files: crate::pipeline::wire_files(&stage.sink),
            side: stage.side.clone(),
        };
        put_json(SHARD_STAGE_MAGIC, &wire, buf)?;
        buf.extend_from_slice(&plan_bytes(&stage.upper)?);
        return Ok(true);
    }
    Ok(false)
}

/// Decodes a stage node; `None` when `buf` is neither.
pub(crate) fn try_decode(
    buf: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
    ctx: &TaskContext,
    codec: &dyn PhysicalExtensionCodec,
    converter: &dyn PhysicalProtoConverterExtension,
    store_options: &StoreOptions,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let input = || match inputs {
        [input] => Ok(Arc::clone(input)),
        _ => Err(DataFusionError::Internal(
            "a Weir part stage has one input".into(),
        )),
    };
    let with_weir = || crate::pipeline::with_weir_functions(ctx);
    if let Some(rest) = buf.strip_prefix(PART_STAGE_MAGIC) {
        let (w, rest): (WirePartStage, _) = take_json(rest)?;
        let (read, rest) = take_block(rest)?;
        let read = crate::read::decode_read(
            read.strip_prefix(crate::read::MAGIC)
                .ok_or_else(|| DataFusionError::Internal("a Weir stage without its read".into()))?,
        )?;
        let prefix = datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter(
            rest,
            &with_weir(),
            codec,
            converter,
        )?;
        let stage = PartStage {
            read,
            prefix,
            epoch: w.epoch,
            processing_time_ms: w.processing_time_ms,
            watermarks_before: w.watermarks_before,
            shards: w.shards,
            key_columns: w.key_columns,
        };
        return Ok(Some(Arc::new(PartStageExec::over(
            stage,
            input()?,
            store_options.clone(),
        ))));
    }
    if let Some(rest) = buf.strip_prefix(SHARD_STAGE_MAGIC) {
        let (w, rest): (WireShardStage, _) = take_json(rest)?;
        let upper = datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter(
            rest,
            &with_weir(),
            codec,
            converter,
        )?;
        let stage = ShardStage {
            upper,
            operator_id: w.operator_id,
            checkpoint: w.checkpoint,
            checkpoint_options: w.checkpoint_options,
            chains: w.chains,
            watermark_in: w.watermark_in,
            full: w.full,
            epoch: w.epoch,
            processing_time_ms: w.processing_time_ms,
            watermark_out: w.watermark_out,
            sink: crate::pipeline::sink_of(w.files),
            side: w.side,
        };
        return Ok(Some(Arc::new(ShardStageExec::try_new(
            stage,
            inputs.to_vec(),
            store_options.clone(),
        )?)));
    }
    Ok(None)
}

/// The two stages of a [`weir_engine::remote::RemoteAggregate`] as one
/// plan: [`ShardStageExec`] over a shuffle over a [`PartStageExec`] per
/// input of the operator (a join's two sides are read, cut and dealt to
/// the shards each on its own).
pub fn stage_plan(
    job: weir_engine::remote::RemoteAggregate,
    store_options: StoreOptions,
) -> weir_engine::Result<ShardStageExec> {
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::repartition::RepartitionExec;
    let mut shuffles = Vec::with_capacity(job.inputs.len());
    for input in job.inputs {
        let table = input.read.table.name.clone();
        let runtime = |e: DataFusionError| weir_engine::Error::Runtime(format!("source '{table}': {e}"));
        // The operator's shards and the prefix columns they are split by.
        let (shards, key_columns) = match &input.shuffle {
            None => (1, Vec::new()),
            Some(datafusion::physical_plan::Partitioning::Hash(exprs, n)) => {
                let columns: Option<Vec<usize>> = exprs
                    .iter()
                    .map(|e| {
                        e.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                            .map(|c| c.index())
                    })
                    .collect();
                let columns = columns.ok_or_else(|| {
                    weir_engine::Error::Runtime(format!(
                        "source '{table}': the stateful operator's shards are split by expressions, not columns"
                    ))
                })?;
                (*n, columns)
            }
            Some(other) => {
                return Err(weir_engine::Error::Runtime(format!(
                    "source '{table}': the stateful operator's input is partitioned as {other}"
                )));
            }
        };
        let parts = PartStageExec::try_new(
            PartStage {
                read: input.read,
                prefix: input.prefix,
                epoch: job.epoch,
                processing_time_ms: job.processing_time_ms,
                watermarks_before: input.watermarks_before,
                shards,
                key_columns,
            },
            store_options.clone(),
        )
        .map_err(runtime)?;
        // Ballista cuts the job into its stages here: each row goes to
        // the shard its route column names (see `stages::stage_one_schema`).
        let route = parts.schema().fields().len() - 1;
        let parts: Arc<dyn ExecutionPlan> = Arc::new(parts);
        shuffles.push(if shards > 1 {
            let column = Arc::new(datafusion::physical_expr::expressions::Column::new(
                crate::stages::ROUTE_COLUMN,
                route,
            ));
            Arc::new(
                RepartitionExec::try_new(
                    parts,
                    datafusion::physical_plan::Partitioning::Hash(vec![column], shards),
                )
                .map_err(runtime)?,
            ) as Arc<dyn ExecutionPlan>
        } else {
            Arc::new(CoalescePartitionsExec::new(parts))
        });
    }
    let operator_id = job.operator_id.clone();
    ShardStageExec::try_new(
        ShardStage {
            upper: job.upper,
            operator_id: job.operator_id,
            checkpoint: job.checkpoint,
            checkpoint_options: Vec::new(),
            chains: job.chains,
            watermark_in: job.watermark_in,
            full: job.full,
            epoch: job.epoch,
            processing_time_ms: job.processing_time_ms,
            watermark_out: job.watermark_out,
            sink: job.sink,
            side: job.side,
        },
        shuffles,
        store_options,
    )
    .map_err(|e| weir_engine::Error::Runtime(format!("operator {operator_id}: {e}")))
}

/// One report per shard from a stage-2 job's rows: the first of a shard
/// that ran twice (only its files are named; the other attempt's stay
/// unnamed).
pub fn gather_shard_reports(shards: usize, batches: &[RecordBatch]) -> Result<Vec<ShardReport>, String> {
    let mut out: Vec<Option<ShardReport>> = vec![None; shards];
    for b in batches {
        if b.schema() != report_schema() {
            return Err("a shard report of another shape".into());
        }
        let u32s = |i: usize| {
            b.column(i)
                .as_primitive::<datafusion::arrow::datatypes::UInt32Type>()
        };
        let u64s = |i: usize| b.column(i).as_primitive::<UInt64Type>();
        let strs = |i: usize| b.column(i).as_string::<i32>();
        for row in 0..b.num_rows() {
            let shard = u32s(0).value(row) as usize;
            let slot = out
                .get_mut(shard)
                .ok_or_else(|| format!("a report of shard {shard} of {shards}"))?;
            if slot.is_some() {
                continue;
            }
            let text = |i: usize| strs(i).is_valid(row).then(|| strs(i).value(row).to_string());
            let state = match text(7).as_deref() {
                None => None,
                Some("snapshot") => Some((StateKind::Snapshot, u64s(8).value(row))),
                Some("delta") => Some((StateKind::Delta, u64s(8).value(row))),
                Some(other) => return Err(format!("a state file of kind '{other}'")),
            };
            *slot = Some(ShardReport {
                shard,
                attempt: strs(1).value(row).to_string(),
                rows_out: u64s(2).value(row),
                state_rows: u64s(9).value(row),
                side_state: match text(10).as_deref() {
                    None => None,
                    Some("snapshot") => Some((StateKind::Snapshot, u64s(11).value(row))),
                    Some("delta") => Some((StateKind::Delta, u64s(11).value(row))),
                    Some(other) => return Err(format!("a state file of kind '{other}'")),
                },
                side_rows: u64s(12).value(row),
                late_rows: u64s(3).value(row),
                file: match (text(4), text(5)) {
                    (Some(name), Some(staged)) => Some((name, staged, u64s(6).value(row))),
                    _ => None,
                },
                state,
            });
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| format!("no report of shard {i} of {shards} came back")))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_planner::PhysicalPlanner;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;
    use weir_engine::exec::{EngineScans, physical_planner};
    use weir_sql::TableDecl;

    use super::*;
    use crate::read::WeirCodec;

    const DELAY_MS: i64 = 1_000;

    fn job(dir: &std::path::Path, group: &str) -> String {
        format!(
            "CREATE TABLE t (ts TIMESTAMP(3), k VARCHAR, v BIGINT, \
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             WITH ('connector' = 'files', 'path' = '{}', 'format' = 'json');\n\
             CREATE TABLE out WITH ('connector' = 'blackhole');\n\
             INSERT INTO out SELECT window_start, window_end{group}, COUNT(*) AS n, SUM(v) AS s, \
             MAX(v) FILTER (WHERE v > 3) AS m \
             FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '2' SECOND)) \
             GROUP BY window_start, window_end{group};",
            dir.display()
        )
    }

    /// Sessions of the same table, partitioned by the group's key if any.
    fn session_job(dir: &std::path::Path, group: &str) -> String {
        let keys = group.trim_start_matches(", ");
        let partition = if keys.is_empty() {
            String::new()
        } else {
            format!(" PARTITION BY {keys}")
        };
        format!(
            "CREATE TABLE t (ts TIMESTAMP(3), k VARCHAR, v BIGINT, \
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             WITH ('connector' = 'files', 'path' = '{}', 'format' = 'json');\n\
             CREATE TABLE out WITH ('connector' = 'blackhole');\n\
             INSERT INTO out SELECT window_start, window_end{group}, COUNT(*) AS n, SUM(v) AS s \
             FROM TABLE(SESSION(TABLE t{partition}, DESCRIPTOR(ts), INTERVAL '400' MILLISECOND)) \
             GROUP BY window_start, window_end{group};",
            dir.display()
        )
    }

    /// An aggregate without windows over the same table: a changelog.
    fn update_job(dir: &std::path::Path, group: &str) -> String {
        let keys = group.trim_start_matches(", ");
        let (select, group_by) = if keys.is_empty() {
            (String::new(), String::new())
        } else {
            (
                format!("{keys}, "),
                format!(" GROUP BY {keys} HAVING COUNT(*) > 2"),
            )
        };
        format!(
            "CREATE TABLE t (ts TIMESTAMP(3), k VARCHAR, v BIGINT, \
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             WITH ('connector' = 'files', 'path' = '{}', 'format' = 'json');\n\
             CREATE TABLE out WITH ('connector' = 'blackhole');\n\
             INSERT INTO out SELECT {select}COUNT(*) AS n, SUM(v) AS s, MAX(v) FILTER (WHERE v > 3) AS m \
             FROM t{group_by};",
            dir.display()
        )
    }

    async fn plan(sql: &str, threads: usize) -> (TableDecl, Arc<dyn ExecutionPlan>) {
        let job = weir_sql::Job::parse(sql).unwrap();
        let config = SessionConfig::new().with_target_partitions(threads);
        let planner =
            weir_sql::StreamPlanner::new(&job, Some(Arc::new(EngineScans { partitions: threads })), config)
                .unwrap();
        let plans = planner.plan().await.unwrap();
        let plan = physical_planner()
            .create_physical_plan(&plans[0].plan, &planner.context().state())
            .await
            .unwrap();
        (job.tables["t"].clone(), plan)
    }

    /// Writes one JSON file per part in `dir`, each of `rows` rows whose
    /// times step 150 ms from `from` and run back up to 1.2 s now and then
    /// (late rows, with the 1 s delay).
    fn write_parts(dir: &std::path::Path, parts: &[(i64, usize)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (i, &(from, rows)) in parts.iter().enumerate() {
            let text: String = (0..rows)
                .map(|r| {
                    let r = r as i64;
                    let ts = from + r * 150 - if r % 9 == 4 { 1_200 } else { 0 };
                    let k = if r % 13 == 0 {
                        "null".to_string()
                    } else {
                        format!("\"k{}\"", r % 4)
                    };
                    format!("{{\"ts\": {ts}, \"k\": {k}, \"v\": {}}}\n", r % 7)
                })
                .collect();
            std::fs::write(dir.join(format!("part-{i}.json")), text).unwrap();
        }
    }

    /// The epoch's parts of `decl`'s folder and their rows.
    async fn parts_of(decl: &TableDecl, columns: &[usize]) -> (Vec<Value>, Vec<Vec<RecordBatch>>) {
        let mut source = weir_engine::source::open_source(decl, &StoreOptions::default()).unwrap();
        let offset = source.plan_batch().await.unwrap().unwrap();
        let parts = source.remote_parts(&offset).unwrap();
        let mut rows = Vec::new();
        for p in &parts {
            rows.push(
                weir_engine::source::read_remote_part(decl, &StoreOptions::default(), columns.to_vec(), p)
                    .await
                    .unwrap(),
            );
        }
        (parts, rows)
    }

    fn sorted_text(batches: &[RecordBatch]) -> Vec<String> {
        let text = datafusion::arrow::util::pretty::pretty_format_batches(batches)
            .unwrap()
            .to_string();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// The plan cut for the stages: the prefix under the operator (under
    /// its shuffle, if it has one), the upper plan over a stand-in, and
    /// the shuffle's partitioning (`None`: all rows to one shard).
    fn cut(
        plan: &Arc<dyn ExecutionPlan>,
    ) -> (
        Arc<dyn ExecutionPlan>,
        Arc<dyn ExecutionPlan>,
        Option<Partitioning>,
    ) {
        let mut prefix = None;
        let upper = Arc::clone(plan)
            .transform_down(|node| {
                if stateful_state(node.as_ref()).is_none() {
                    return Ok(Transformed::no(node));
                }
                let child = Arc::clone(node.children()[0]);
                let (below, partitioning) = if let Some(r) = child.downcast_ref::<RepartitionExec>() {
                    (Arc::clone(r.input()), Some(r.partitioning().clone()))
                } else if let Some(c) = child.downcast_ref::<CoalescePartitionsExec>() {
                    (Arc::clone(c.input()), None)
                } else {
                    (Arc::clone(&child), None)
                };
                // As the driver cuts it (`remote_epoch::split_stateful`).
                let n = child.properties().output_partitioning().partition_count();
                let stand_in: Arc<dyn ExecutionPlan> = match &partitioning {
                    Some(p) => Arc::new(
                        RepartitionExec::try_new(Arc::new(EmptyExec::new(below.schema())), p.clone())
                            .unwrap(),
                    ),
                    None => Arc::new(EmptyExec::new(below.schema()).with_partitions(n)),
                };
                prefix = Some((below, partitioning));
                let node = datafusion::physical_plan::execution_plan::replace_children_if_necessary(
                    node,
                    vec![stand_in],
                )?;
                Ok(Transformed::new(node, true, TreeNodeRecursion::Jump))
            })
            .unwrap()
            .data;
        let (prefix, partitioning) = prefix.expect("an operator");
        (prefix, upper, partitioning)
    }

    /// The local plan over one epoch's rows (the parts in order): its
    /// output and late rows.
    async fn run_local(
        plan: &Arc<dyn ExecutionPlan>,
        epoch: u64,
        columns: &[usize],
        rows: Vec<RecordBatch>,
        watermark_in: i64,
        watermark_out: i64,
    ) -> (Vec<RecordBatch>, u64) {
        let input = Arc::new(EpochInput {
            epoch,
            batches: HashMap::from([(
                "t".to_string(),
                SourceRows {
                    columns: Arc::new(columns.to_vec()),
                    batches: Arc::new(rows),
                    ..SourceRows::default()
                },
            )]),
            source_watermarks_in: HashMap::from([("t".to_string(), watermark_in)]),
            watermark_out,
            ..EpochInput::default()
        });
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_extension(Arc::clone(&input)));
        // As the driver does before each epoch: a repartition runs once.
        let plan = datafusion::physical_plan::execution_plan::reset_plan_states(Arc::clone(plan)).unwrap();
        let out = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        (out, input.late_rows.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn max_time(batches: &[RecordBatch]) -> Option<i64> {
        batches
            .iter()
            .filter_map(|b| weir_engine::epoch::max_millis(b.column(0)).unwrap())
            .max()
    }

    /// A shard task puts its rows back in part order, each part's rows in
    /// the order the part sent them, whatever order the shuffle reader
    /// read the parts in (Ballista's reads them in a random order); marker
    /// rows are dropped and counted, also from a batch that mixes parts.
    #[test]
    fn a_shard_gets_its_rows_in_part_order() {
        let prefix = Schema::new(vec![Field::new("v", DataType::Int64, false)]);
        let schema = stage_one_schema(&prefix);
        let rows = |part: u32, values: &[i64]| {
            let n = values.len();
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(datafusion::arrow::array::Int64Array::from(values.to_vec())),
                    Arc::new(UInt32Array::from(vec![part; n])),
                    new_null_array(&DataType::UInt64, n),
                    new_null_array(&DataType::UInt32, n),
                    Arc::new(UInt64Array::from(vec![0; n])),
                ],
            )
            .unwrap()
        };
        let routes = route_values(1).unwrap();
        let mixed = datafusion::arrow::compute::concat_batches(
            &schema,
            &[
                rows(1, &[13, 14]),
                markers(&schema, &routes, 5, 1).unwrap().remove(0),
                rows(0, &[3]),
            ],
        )
        .unwrap();
        let received = vec![
            rows(2, &[20, 21]),
            markers(&schema, &routes, 2, 2).unwrap().remove(0),
            rows(1, &[10, 11]),
            rows(2, &[22]),
            rows(0, &[1, 2]),
            mixed,
            markers(&schema, &routes, 0, 0).unwrap().remove(0),
        ];
        let data_schema = Arc::new(prefix.clone());
        let (data, late, shard) = split_markers(&received, &data_schema).unwrap();
        let values: Vec<i64> = data
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values, [1, 2, 3, 10, 11, 13, 14, 20, 21, 22]);
        assert_eq!((late, shard), (7, Some(0)));
    }

    /// Two epochs of a windowed aggregate run as the two stages (in this
    /// process: DataFusion runs the shuffle), the plans sent through the
    /// codec, state kept between the epochs only in the checkpoint's
    /// files: the sink files hold exactly the local run's rows, late rows
    /// counted alike; keyed on two shards and keyless on one. The same for
    /// sessions, and for an aggregate without windows: its second epoch's
    /// changelog (`-U`, `+U`) comes from the state the first left in the
    /// store.
    #[tokio::test]
    async fn an_aggregate_runs_as_two_stages_with_its_state_in_the_store() {
        for (kind, group, threads) in [
            ("tumble", ", k", 2),
            ("tumble", "", 2),
            ("tumble", ", k", 1),
            ("session", ", k", 2),
            ("session", "", 2),
            ("update", ", k", 2),
            ("update", "", 2),
            ("update", ", k", 1),
        ] {
            let windowed = kind != "update";
            let job = match kind {
                "tumble" => job,
                "session" => session_job,
                _ => update_job,
            };
            let tmp = tempfile::tempdir().unwrap();
            let epochs = [tmp.path().join("in1"), tmp.path().join("in2")];
            // The third part is older than the second: late from its first row.
            write_parts(&epochs[0], &[(0, 40), (5_000, 30), (3_000, 10), (9_000, 25)]);
            write_parts(&epochs[1], &[(11_000, 40), (16_000, 20)]);
            let out_dir = tmp.path().join("out");
            std::fs::create_dir_all(&out_dir).unwrap();
            let ck_url = format!("file://{}", tmp.path().join("ck").display());
            Location::open(&ck_url, &StoreOptions::default(), Create::Yes).unwrap();
            let (_, local) = plan(&job(&epochs[0], group), threads).await;
            let codec = WeirCodec::default();
            let ctx = SessionContext::new();
            let mut watermark = i64::MIN;
            let mut chains: Option<StateChains> = None;
            for (e, dir) in epochs.iter().enumerate() {
                let epoch = e as u64 + 1;
                let (decl, shipped) = plan(&job(dir, group), threads).await;
                let scan_columns: Vec<usize> = vec![0, 1, 2];
                let (parts, rows) = parts_of(&decl, &scan_columns).await;
                // W_i from the parts' greatest times, as the driver gives them.
                let mut before = Vec::new();
                let mut w = watermark;
                for part in &rows {
                    before.push(w);
                    if let Some(m) = max_time(part) {
                        w = w.max(m - DELAY_MS);
                    }
                }
                let watermark_out = w;
                let (want, want_late) = run_local(
                    &local,
                    epoch,
                    &scan_columns,
                    rows.concat(),
                    watermark,
                    watermark_out,
                )
                .await;
                let (prefix, upper, partitioning) = cut(&shipped);
                let job = weir_engine::remote::RemoteAggregate {
                    inputs: vec![weir_engine::remote::StageInput {
                        read: RemoteRead {
                            table: decl.clone(),
                            columns: scan_columns.clone(),
                            parts,
                        },
                        prefix,
                        shuffle: partitioning,
                        watermarks_before: before,
                    }],
                    upper,
                    operator_id: "p0-agg0".into(),
                    checkpoint: ck_url.clone(),
                    chains: chains.clone(),
                    watermark_in: watermark,
                    full: epoch == 1,
                    epoch,
                    processing_time_ms: 0,
                    watermark_out,
                    sink: RemoteSink::Files {
                        folder: format!("file://{}", out_dir.display()),
                        writer: "w".into(),
                        options: vec![],
                        table: "out".into(),
                        changelog: false,
                        not_null: vec![],
                    },
                    side: None,
                };
                let shard_stage = stage_plan(job, StoreOptions::default()).unwrap();
                // Through the codec, as Ballista would send it.
                let proto = PhysicalPlanNode::try_from_physical_plan(Arc::new(shard_stage), &codec).unwrap();
                let decoded = proto.try_into_physical_plan(&ctx.task_ctx(), &codec).unwrap();
                let shards = decoded.properties().output_partitioning().partition_count();
                let reports = datafusion::physical_plan::collect(decoded, ctx.task_ctx())
                    .await
                    .unwrap();
                let reports = gather_shard_reports(shards, &reports).unwrap();
                let mut got = Vec::new();
                for r in &reports {
                    if let Some((_, staged, _)) = &r.file {
                        let file = std::fs::File::open(out_dir.join(staged)).unwrap();
                        let reader =
                            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                                file, 1024,
                            )
                            .unwrap();
                        got.extend(reader.map(Result::unwrap));
                    }
                }
                let late: u64 = reports.iter().map(|r| r.late_rows).sum();
                assert!(
                    !want.is_empty() && (want_late > 0) == windowed,
                    "epoch {epoch}: the test shows nothing"
                );
                if !windowed && epoch == 2 {
                    let text = sorted_text(&want).concat();
                    assert!(text.contains("| -U ") && text.contains("| +U "), "{text}");
                }
                assert_eq!(late, want_late, "{group} on {threads}, epoch {epoch}");
                assert_eq!(
                    sorted_text(&got),
                    sorted_text(&want),
                    "{group} on {threads}, epoch {epoch}"
                );
                // The chains the commit would name.
                let mut next = chains.clone().unwrap_or(StateChains {
                    shards: vec![Vec::new(); shards],
                    ..StateChains::default()
                });
                for r in &reports {
                    if let Some((kind, _)) = r.state {
                        if kind == StateKind::Snapshot {
                            next.shards[r.shard].clear();
                        }
                        next.shards[r.shard].push(epoch);
                        next.attempts.insert(
                            weir_storage::state::attempt_key(r.shard, epoch),
                            r.attempt.clone(),
                        );
                    }
                }
                chains = Some(next);
                watermark = watermark_out;
            }
        }
    }
}
