//! Partial window aggregation, for a window aggregate on more than one
//! thread.
//!
//! Without it, every input row crosses a hash repartition to the shard of
//! its keys (or, without keys, all rows funnel into one shard), and two
//! threads lose to one. With it, as DataFusion's batch aggregate splits into
//! `Partial` and `FinalPartitioned`, each input partition first folds its
//! rows of the epoch into groups by unit (window or slice) and keys, in one
//! hash table, and emits their intermediate states: one row per (unit, keys), in the layout
//! of the window aggregate's state rows (`__window_start`, `__window_end`,
//! the keys, each aggregate's state columns). Only those rows cross the
//! repartition (on the key columns) or the merge into a keyless aggregate's
//! one shard, and the window aggregate merges them into its state
//! ([`super::window_agg`], `merge_partial`).
//!
//! The node keeps nothing between epochs: it drains its input partition,
//! then emits. The window aggregate's state, its checkpoints and its restore
//! are the same with or without it, so a job may change its thread count.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::StreamExt;

use datafusion::physical_expr::expressions::Column;

use super::groups::{AggregateSpec, Evaluated, Groups};

/// What the partial aggregate computes (shared by the node's copies).
pub struct PartialSpec {
    /// Keys, aggregates, arguments and filters over the input rows; the
    /// first keys are the unit's (one hash table for the whole epoch, as
    /// DataFusion's batch aggregate groups by a `date_bin`): its end alone
    /// when every unit has the same length, else its start and end.
    agg: AggregateSpec,
    /// How a row's window unit is keyed, if it has one.
    unit: Unit,
    /// `__window_start`, `__window_end` (windowed only), the keys, the
    /// aggregates' states.
    pub schema: SchemaRef,
}

/// The window unit among a partial aggregate's keys.
enum Unit {
    /// None: the partial of an update aggregate (`GROUP BY` keys only).
    None,
    /// Every unit has this length (end - start: tumble, hop, slices), so it
    /// is keyed by its end alone, one `i64` column that hashes as fast as
    /// the batch aggregate's single key; `start` checks the length.
    End {
        length: i64,
        start: Arc<dyn PhysicalExpr>,
    },
    /// Keyed by start and end.
    StartEnd,
}

impl Unit {
    /// Key columns the unit takes.
    fn keys(&self) -> usize {
        match self {
            Unit::None => 0,
            Unit::End { .. } => 1,
            Unit::StartEnd => 2,
        }
    }

    /// Columns the unit takes in the emitted rows.
    fn columns(&self) -> usize {
        match self {
            Unit::None => 0,
            _ => 2,
        }
    }
}

impl PartialSpec {
    /// The partial aggregate of `final_agg` (the window aggregate's spec,
    /// keyed without its unit), each row's unit given by `start` and `end`.
    pub fn try_new(
        final_agg: &AggregateSpec,
        start: &Arc<dyn PhysicalExpr>,
        end: &Arc<dyn PhysicalExpr>,
        unit_length: Option<i64>,
        input: &Schema,
    ) -> Result<Self> {
        let unit_keys = match unit_length {
            Some(_) => vec![(Arc::clone(end), "__window_end".to_string())],
            None => vec![
                (Arc::clone(start), "__window_start".to_string()),
                (Arc::clone(end), "__window_end".to_string()),
            ],
        };
        let keys = unit_keys
            .into_iter()
            .chain(final_agg.keys.iter().cloned())
            .collect();
        let agg = AggregateSpec::try_new(keys, final_agg.aggr.clone(), final_agg.filters.clone(), input)?;
        let mut fields = vec![
            Field::new("__window_start", DataType::Int64, false),
            Field::new("__window_end", DataType::Int64, false),
        ];
        fields.extend(final_agg.key_schema.fields().iter().map(|f| f.as_ref().clone()));
        // `a<i>.<state>`: unique even when two aggregates are the same.
        fields.extend(final_agg.state_file_fields());
        Ok(Self {
            agg,
            unit: match unit_length {
                Some(length) => Unit::End {
                    length,
                    start: Arc::clone(start),
                },
                None => Unit::StartEnd,
            },
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The partial aggregate of an update aggregate's `final_agg`: its
    /// keys, then the aggregates' states.
    pub fn keys_only(final_agg: &AggregateSpec, input: &Schema) -> Result<Self> {
        let agg = AggregateSpec::try_new(
            final_agg.keys.clone(),
            final_agg.aggr.clone(),
            final_agg.filters.clone(),
            input,
        )?;
        let mut fields: Vec<Field> = final_agg
            .key_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(final_agg.state_file_fields());
        Ok(Self {
            agg,
            unit: Unit::None,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The node's name in plans and errors.
    fn name(&self) -> &'static str {
        match self.unit {
            Unit::None => "PartialAggregateExec",
            _ => "PartialWindowAggregateExec",
        }
    }

    /// The key columns of the rows it emits (after the unit's two).
    pub fn key_columns(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        let first = self.unit.columns();
        (first..first + self.agg.keys.len() - self.unit.keys())
            .map(|i| Arc::new(Column::new(self.schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>)
            .collect()
    }

    /// Folds a batch into the groups.
    fn fold(&self, groups: &mut Option<Groups>, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let evaluated = self.evaluate(batch)?;
        let groups = match groups {
            Some(g) => g,
            None => groups.insert(Groups::new(&self.agg)?),
        };
        groups.update(&evaluated)
    }

    /// A batch's keys, arguments and filters; checks `unit_length`.
    fn evaluate(&self, batch: &RecordBatch) -> Result<Evaluated> {
        let evaluated = self.agg.evaluate(batch)?;
        if let Unit::End { length, start } = &self.unit {
            let length = *length;
            // The unit is keyed by its end: every start must be end - length.
            let n = batch.num_rows();
            let starts = cast(&start.evaluate(batch)?.into_array(n)?, &DataType::Int64)?;
            let ends = cast(&evaluated.keys[0], &DataType::Int64)?;
            let (starts, ends) = (
                starts.as_primitive::<Int64Type>(),
                ends.as_primitive::<Int64Type>(),
            );
            let same = starts
                .values()
                .iter()
                .zip(ends.values())
                .fold(true, |ok, (s, e)| ok & (e.wrapping_sub(*s) == length));
            if !same || starts.null_count() + ends.null_count() > 0 {
                return Err(DataFusionError::Internal(format!(
                    "PartialWindowAggregateExec: a unit is not {length} ms long"
                )));
            }
        }
        Ok(evaluated)
    }

    /// Each row of a batch as a state row of its own (see
    /// [`PartialState`]).
    fn rows_as_states(&self, groups: &Groups, batch: &RecordBatch) -> Result<RecordBatch> {
        let mut evaluated = self.evaluate(batch)?;
        let states = groups.states_of_rows(&evaluated)?;
        let keys = std::mem::take(&mut evaluated.keys);
        self.state_rows(keys, states)
    }

    /// The groups' states, as rows.
    fn emit(&self, groups: Option<Groups>) -> Result<RecordBatch> {
        let Some(mut groups) = groups else {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.schema)));
        };
        let (keys, states) = groups.take_state()?;
        self.state_rows(keys, states)
    }

    /// State rows from the unit's and the query's keys and the aggregates'
    /// states.
    fn state_rows(&self, keys: Vec<ArrayRef>, states: Vec<Vec<ArrayRef>>) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        let mut keys = keys.into_iter();
        if let Unit::End { length, .. } = self.unit {
            let ends = cast(
                &keys
                    .next()
                    .unwrap_or_else(|| Arc::new(Int64Array::from(Vec::<i64>::new()))),
                &DataType::Int64,
            )?;
            let starts: Int64Array = ends.as_primitive::<Int64Type>().unary(|e| e - length);
            columns.push(Arc::new(starts));
            columns.push(ends);
        } else if let Unit::StartEnd = self.unit {
            for k in keys.by_ref().take(2) {
                columns.push(cast(&k, &DataType::Int64)?);
            }
        }
        columns.extend(keys);
        columns.extend(states.into_iter().flatten());
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

/// One partition's partial aggregate of an epoch. It groups rows in a hash
/// table, as DataFusion's partial aggregate does, and gives up grouping as
/// DataFusion's does when that does not pay: once [`PROBE_ROWS`] rows have
/// made at least [`SKIP_RATIO`] groups per row (a key nearly unique within
/// its window), the table's states go out, and each later row goes out as a
/// state of its own (`convert_to_state`). The window aggregate merges states
/// whatever their count per key, so the result is the same.
struct PartialState {
    groups: Option<Groups>,
    rows: usize,
    skipping: bool,
    out: Vec<RecordBatch>,
    /// Rows passed on ungrouped (`skipped_aggregation_rows` in EXPLAIN
    /// ANALYZE, as DataFusion names it).
    skipped: Count,
}

/// Rows folded before the partial aggregate judges its reduction
/// (DataFusion's `skip_partial_aggregation_probe_rows_threshold`).
const PROBE_ROWS: usize = 100_000;
/// Groups per row at or above which grouping stops (DataFusion's
/// `skip_partial_aggregation_probe_ratio_threshold`).
const SKIP_RATIO: f64 = 0.8;

impl PartialState {
    fn add(&mut self, spec: &PartialSpec, batch: &RecordBatch) -> Result<()> {
        if self.skipping
            && let Some(groups) = &self.groups
        {
            self.out.push(spec.rows_as_states(groups, batch)?);
            self.skipped.add(batch.num_rows());
            return Ok(());
        }
        spec.fold(&mut self.groups, batch)?;
        self.rows += batch.num_rows();
        let groups = self.groups.as_ref().map_or(0, Groups::len);
        if !self.skipping && self.rows >= PROBE_ROWS && groups as f64 >= SKIP_RATIO * self.rows as f64 {
            // Flush the table, keeping an empty one for its accumulators.
            self.out.push(spec.emit(self.groups.take())?);
            self.groups = Some(Groups::new(&spec.agg)?);
            self.skipping = true;
        }
        Ok(())
    }

    fn finish(mut self, spec: &PartialSpec) -> Result<Vec<RecordBatch>> {
        let table = self.groups.take().filter(|g| !g.is_empty());
        if table.is_some() || self.out.is_empty() {
            self.out.push(spec.emit(table)?);
        }
        Ok(self.out)
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
        let keys: Vec<&str> = self.spec.agg.keys[self.spec.unit.keys()..]
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        let aggs: Vec<&str> = self.spec.agg.aggr.iter().map(|a| a.name()).collect();
        let unit = match &self.spec.unit {
            Unit::End { length, .. } => format!("window_end (window_start = window_end - {length} ms)"),
            Unit::StartEnd => "window_start, window_end".to_string(),
            Unit::None => String::new(),
        };
        write!(
            f,
            "{}: gby=[{}{}{}], aggr=[{}]",
            self.spec.name(),
            unit,
            if keys.is_empty() || unit.is_empty() {
                ""
            } else {
                ", "
            },
            keys.join(", "),
            aggs.join(", ")
        )
    }
}

impl ExecutionPlan for PartialWindowAggExec {
    fn name(&self) -> &str {
        self.spec.name()
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
        let exprs = spec
            .agg
            .keys
            .iter()
            .map(|(e, _)| e)
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
        let skipped = MetricBuilder::new(&self.metrics).counter("skipped_aggregation_rows", partition);
        let name = self.spec.name();
        let out = futures::stream::once(async move {
            let mut state = PartialState {
                groups: None,
                rows: 0,
                skipping: false,
                out: Vec::new(),
                skipped,
            };
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let timer = baseline.elapsed_compute().timer();
                super::guarded(name, epoch, || state.add(&spec, &batch))?;
                timer.done();
            }
            let timer = baseline.elapsed_compute().timer();
            let out = super::guarded(name, epoch, || state.finish(&spec))?;
            timer.done();
            baseline.record_output(out.iter().map(RecordBatch::num_rows).sum());
            Ok::<_, DataFusionError>(out)
        })
        .flat_map(|result| {
            futures::stream::iter(match result {
                Ok(batches) => batches.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.spec.schema),
            out,
        )))
    }
}
