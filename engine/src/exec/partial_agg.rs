//! Partial window aggregation, for a window aggregate on more than one
//! thread.
//!
//! Without it, every input row crosses a hash repartition to the shard of
//! its keys (or, without keys, all rows funnel into one shard), and two
//! threads lose to one. With it, as DataFusion's batch aggregate splits into
//! `Partial` and `FinalPartitioned`, each input partition first folds its
//! rows of the epoch into groups per unit (window or slice) and keys, and
//! emits their intermediate states: one row per (unit, keys), in the layout
//! of the window aggregate's state rows (`__window_start`, `__window_end`,
//! the keys, each aggregate's state columns). Only those rows cross the
//! repartition (on the key columns) or the merge into a keyless aggregate's
//! one shard, and the window aggregate merges them into its state
//! ([`super::window_agg`], `merge_partial`).
//!
//! The node keeps nothing between epochs: it drains its input partition,
//! then emits. The window aggregate's state, its checkpoints and its restore
//! are the same with or without it, so a job may change its thread count.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::StreamExt;

use super::groups::{AggregateSpec, Evaluated, Groups};
use super::units::{UnitRows, split_runs};

/// What the partial aggregate computes (shared by the node's copies).
pub struct PartialSpec {
    /// Keys, aggregates, arguments and filters over the input rows.
    pub agg: AggregateSpec,
    /// Each row's unit start.
    pub start: Arc<dyn PhysicalExpr>,
    /// Each row's unit end.
    pub end: Arc<dyn PhysicalExpr>,
    /// `__window_start`, `__window_end`, the keys, the aggregates' states.
    pub schema: SchemaRef,
}

impl PartialSpec {
    /// The layout of the rows it emits (the in-memory form of the window
    /// aggregate's state rows).
    pub fn schema_of(agg: &AggregateSpec) -> SchemaRef {
        let mut fields = vec![
            Field::new("__window_start", DataType::Int64, false),
            Field::new("__window_end", DataType::Int64, false),
        ];
        fields.extend(agg.key_schema.fields().iter().map(|f| f.as_ref().clone()));
        // `a<i>.<state>`: unique even when two aggregates are the same.
        fields.extend(agg.state_file_fields());
        Arc::new(Schema::new(fields))
    }

    /// Folds a batch into the units' groups.
    fn fold(&self, units: &mut BTreeMap<(i64, i64), Groups>, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let starts = cast(&self.start.evaluate(batch)?.into_array(n)?, &DataType::Int64)?;
        let ends = cast(&self.end.evaluate(batch)?.into_array(n)?, &DataType::Int64)?;
        let evaluated = self.agg.evaluate(batch)?;
        for (unit, rows) in split_runs(
            starts.as_primitive::<Int64Type>().values(),
            ends.as_primitive::<Int64Type>().values(),
        ) {
            let part: Evaluated;
            let input = match rows {
                UnitRows::Range(0, end) if end == n => &evaluated,
                UnitRows::Range(start, end) => {
                    part = evaluated.slice(start, end - start);
                    &part
                }
                UnitRows::Scattered(rows) => {
                    part = evaluated.take(&UInt32Array::from(rows))?;
                    &part
                }
            };
            let groups = match units.entry(unit) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(Groups::new(&self.agg)?),
            };
            groups.update(input)?;
        }
        Ok(())
    }

    /// The units' states, as rows.
    fn emit(&self, units: BTreeMap<(i64, i64), Groups>) -> Result<RecordBatch> {
        let mut out = Vec::with_capacity(units.len());
        for ((end, start), mut groups) in units {
            let n = groups.len();
            let (keys, states) = groups.take_state()?;
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(vec![start; n])),
                Arc::new(Int64Array::from(vec![end; n])),
            ];
            columns.extend(keys);
            columns.extend(states.into_iter().flatten());
            out.push(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
        }
        Ok(concat_batches(&self.schema, &out)?)
    }
}

/// The plan node: one partition per input partition.
pub struct PartialWindowAggExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Arc<PartialSpec>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl PartialWindowAggExec {
    /// The node over `input`.
    pub fn new(input: Arc<dyn ExecutionPlan>, spec: Arc<PartialSpec>) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&spec.schema)),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            spec,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl fmt::Debug for PartialWindowAggExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartialWindowAggregateExec").finish()
    }
}

impl DisplayAs for PartialWindowAggExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = self.spec.agg.keys.iter().map(|(_, n)| n.as_str()).collect();
        let aggs: Vec<&str> = self.spec.agg.aggr.iter().map(|a| a.name()).collect();
        write!(
            f,
            "PartialWindowAggregateExec: gby=[window_start, window_end{}{}], aggr=[{}]",
            if keys.is_empty() { "" } else { ", " },
            keys.join(", "),
            aggs.join(", ")
        )
    }
}

impl ExecutionPlan for PartialWindowAggExec {
    fn name(&self) -> &str {
        "PartialWindowAggregateExec"
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
        let spec = &self.spec;
        let exprs = [&spec.start, &spec.end]
            .into_iter()
            .chain(spec.agg.keys.iter().map(|(e, _)| e))
            .chain(spec.agg.args.iter().flatten())
            .chain(spec.agg.filters.iter().flatten());
        for e in exprs {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
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
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        const NAME: &str = "PartialWindowAggregateExec";
        let out = futures::stream::once(async move {
            let mut units = BTreeMap::new();
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let timer = baseline.elapsed_compute().timer();
                super::guarded(NAME, epoch, || spec.fold(&mut units, &batch))?;
                timer.done();
            }
            let timer = baseline.elapsed_compute().timer();
            let out = super::guarded(NAME, epoch, || spec.emit(units))?;
            timer.done();
            baseline.record_output(out.num_rows());
            Ok(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.spec.schema),
            out,
        )))
    }
}
