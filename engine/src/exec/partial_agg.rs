//! Partial window aggregation, for a window aggregate on more than one
//! thread.
//!
//! Without it, every input row crosses a hash repartition to the shard of
//! its keys (or, without keys, all rows funnel into one shard), and two
//! threads lose to one. With it, as DataFusion's batch aggregate splits into
//! `Partial` and `FinalPartitioned`, each input partition first folds its
//! rows of the epoch into groups by unit (window or slice) and keys, a table
//! per unit as the window aggregate keeps them, and emits their
//! intermediate states: one row per (unit, keys), in the layout
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

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::StreamExt;

use datafusion::physical_expr::expressions::Column;

use super::groups::{AggregateSpec, Groups, column_of};
use super::units::fold_by_unit;

/// What the partial aggregate computes (shared by the node's copies).
pub struct PartialSpec {
    /// The query's keys (without the window unit), aggregates, arguments
    /// and filters over the input rows.
    agg: AggregateSpec,
    /// Where a row's window unit comes from, if it has one.
    unit: Unit,
    /// `__window_start`, `__window_end` (windowed only), the keys, the
    /// aggregates' states.
    pub schema: SchemaRef,
}

/// A windowed partial aggregate's unit start and end expressions.
pub type UnitExprs<'a> = (&'a Arc<dyn PhysicalExpr>, &'a Arc<dyn PhysicalExpr>);

/// The window unit of a partial aggregate's rows.
enum Unit {
    /// None: the partial of an update aggregate (`GROUP BY` keys only).
    None,
    /// Each row's unit (window or slice) is given by `start` and `end`. A
    /// unit gets a table of its own, keyed by the query's keys alone, as
    /// the window aggregate keeps its units: rows mostly come in time
    /// order, so a batch's units are found by comparing neighbours
    /// (`UnitRuns`), and a keyless unit needs no hashing at all.
    Window {
        start: Arc<dyn PhysicalExpr>,
        end: Arc<dyn PhysicalExpr>,
    },
}

impl PartialSpec {
    /// The names of the input columns it reads: its keys', arguments',
    /// filters' and window unit's.
    pub fn input_columns(&self) -> Vec<String> {
        let mut exprs: Vec<&Arc<dyn PhysicalExpr>> = self.agg.keys.iter().map(|(e, _)| e).collect();
        exprs.extend(self.agg.args.iter().flatten());
        exprs.extend(self.agg.filters.iter().flatten());
        if let Unit::Window { start, end } = &self.unit {
            exprs.extend([start, end]);
        }
        exprs
            .into_iter()
            .flat_map(datafusion::physical_expr::utils::collect_columns)
            .map(|c| c.name().to_string())
            .collect()
    }

    /// The partial aggregate of `final_agg` (the window aggregate's spec,
    /// keyed without its unit), each row's unit given by `start` and `end`.
    pub fn try_new(
        final_agg: &AggregateSpec,
        start: &Arc<dyn PhysicalExpr>,
        end: &Arc<dyn PhysicalExpr>,
        input: &Schema,
    ) -> Result<Self> {
        let mut spec = Self::keys_only(final_agg, input)?;
        let mut fields = vec![
            Field::new("__window_start", DataType::Int64, false),
            Field::new("__window_end", DataType::Int64, false),
        ];
        fields.extend(spec.schema.fields().iter().map(|f| f.as_ref().clone()));
        spec.schema = Arc::new(Schema::new(fields));
        spec.unit = Unit::Window {
            start: Arc::clone(start),
            end: Arc::clone(end),
        };
        Ok(spec)
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
        // `a<i>.<state>`: unique even when two aggregates are the same.
        fields.extend(final_agg.state_file_fields());
        Ok(Self {
            agg,
            unit: Unit::None,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// Its aggregate (keys, aggregates, filters, over the input rows) and,
    /// when windowed, the expressions of each row's unit start and end: what
    /// [`PartialSpec::rebuild`] makes it again from (how the node crosses to
    /// a cluster).
    pub fn config(&self) -> (&AggregateSpec, Option<UnitExprs<'_>>) {
        let unit = match &self.unit {
            Unit::None => None,
            Unit::Window { start, end } => Some((start, end)),
        };
        (&self.agg, unit)
    }

    /// The spec [`PartialSpec::config`] describes, over rows of `input`.
    pub fn rebuild(
        keys: Vec<(Arc<dyn PhysicalExpr>, String)>,
        aggr: Vec<Arc<datafusion::physical_expr::aggregate::AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
        unit: Option<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
        input: &Schema,
    ) -> Result<Self> {
        let agg = AggregateSpec::try_new(keys, aggr, filters, input)?;
        match unit {
            Some((start, end)) => Self::try_new(&agg, &start, &end, input),
            None => Self::keys_only(&agg, input),
        }
    }

    /// The node's name in plans and errors.
    fn name(&self) -> &'static str {
        match self.unit {
            Unit::None => "PartialAggregateExec",
            Unit::Window { .. } => "PartialWindowAggregateExec",
        }
    }

    /// Columns the unit takes in the emitted rows.
    fn unit_columns(&self) -> usize {
        match self.unit {
            Unit::None => 0,
            Unit::Window { .. } => 2,
        }
    }

    /// The key columns of the rows it emits (after the unit's two).
    pub fn key_columns(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        let first = self.unit_columns();
        (first..first + self.agg.keys.len())
            .map(|i| Arc::new(Column::new(self.schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>)
            .collect()
    }

    /// Each row's unit start and end (ms), for a windowed partial.
    fn units(&self, batch: &RecordBatch) -> Result<Option<(ArrayRef, ArrayRef)>> {
        let Unit::Window { start, end } = &self.unit else {
            return Ok(None);
        };
        let n = batch.num_rows();
        let starts = cast(&start.evaluate(batch)?.into_array(n)?, &DataType::Int64)?;
        let ends = cast(&end.evaluate(batch)?.into_array(n)?, &DataType::Int64)?;
        Ok(Some((starts, ends)))
    }

    /// Folds a batch into the tables, one per unit ((0, 0) without units).
    fn fold(&self, tables: &mut BTreeMap<(i64, i64), Groups>, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let evaluated = self.agg.evaluate(batch)?;
        let Some((starts, ends)) = self.units(batch)? else {
            return table(tables, (0, 0), &self.agg)?.update(&evaluated);
        };
        fold_by_unit(&starts, &ends, &evaluated, |(end, start), input| {
            table(tables, (start, end), &self.agg)?.update(input)
        })
    }

    /// Each row of a batch as a state row of its own (see
    /// [`PartialState`]); `spare` is any groups of this spec.
    fn rows_as_states(&self, spare: &Groups, batch: &RecordBatch) -> Result<RecordBatch> {
        let mut evaluated = self.agg.evaluate(batch)?;
        let states = spare.states_of_rows(&evaluated)?;
        let keys = std::mem::take(&mut evaluated.keys);
        self.state_rows(self.units(batch)?, keys, states)
    }

    /// The tables' states, as rows, in unit order.
    fn emit(&self, tables: BTreeMap<(i64, i64), Groups>) -> Result<Vec<RecordBatch>> {
        if self.agg.keys.is_empty() && matches!(self.unit, Unit::Window { .. }) {
            return self.emit_keyless(tables);
        }
        let mut out = Vec::with_capacity(tables.len());
        for ((start, end), mut groups) in tables {
            let n = groups.len();
            if n == 0 {
                continue;
            }
            let (keys, states) = groups.take_state()?;
            let units: Option<(ArrayRef, ArrayRef)> = match self.unit {
                Unit::None => None,
                Unit::Window { .. } => Some((
                    Arc::new(Int64Array::from(vec![start; n])),
                    Arc::new(Int64Array::from(vec![end; n])),
                )),
            };
            out.push(self.state_rows(units, keys, states)?);
        }
        // One batch, not one per unit: an epoch may have thousands of
        // small units, and each batch costs the repartition and the merge.
        if out.len() > 1 {
            out = vec![concat_batches(&self.schema, &out)?];
        }
        Ok(out)
    }

    /// [`PartialSpec::emit`] without keys: a unit is one state row, so the
    /// units' states are gathered as scalars and each column built once
    /// (an epoch of a thousand windows made a thousand one-row batches).
    fn emit_keyless(&self, tables: BTreeMap<(i64, i64), Groups>) -> Result<Vec<RecordBatch>> {
        let mut starts = Vec::with_capacity(tables.len());
        let mut ends = Vec::with_capacity(tables.len());
        let mut states: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(tables.len()); self.agg.state_width()];
        for ((start, end), groups) in tables {
            if groups.is_empty() {
                continue;
            }
            let Some(row) = groups.into_single_state() else {
                return Err(DataFusionError::Internal(format!(
                    "{} without keys kept keyed groups",
                    self.name()
                )));
            };
            let row = row?;
            if row.len() != states.len() {
                return Err(DataFusionError::Internal(format!(
                    "{}: {} state values for {} state columns",
                    self.name(),
                    row.len(),
                    states.len()
                )));
            }
            for (column, value) in states.iter_mut().zip(row) {
                column.push(value);
            }
            starts.push(start);
            ends.push(end);
        }
        if starts.is_empty() {
            return Ok(vec![]);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(starts)),
            Arc::new(Int64Array::from(ends)),
        ];
        for (i, column) in states.into_iter().enumerate() {
            columns.push(column_of(column, self.schema.field(2 + i).data_type())?);
        }
        Ok(vec![RecordBatch::try_new(Arc::clone(&self.schema), columns)?])
    }

    /// State rows: the unit's start and end (windowed), the keys, the
    /// aggregates' states.
    fn state_rows(
        &self,
        units: Option<(ArrayRef, ArrayRef)>,
        keys: Vec<ArrayRef>,
        states: Vec<Vec<ArrayRef>>,
    ) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        if let Some((starts, ends)) = units {
            columns.push(starts);
            columns.push(ends);
        }
        columns.extend(keys);
        columns.extend(states.into_iter().flatten());
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

/// The groups of `unit` (made when new).
fn table<'a>(
    tables: &'a mut BTreeMap<(i64, i64), Groups>,
    unit: (i64, i64),
    agg: &AggregateSpec,
) -> Result<&'a mut Groups> {
    Ok(match tables.entry(unit) {
        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::btree_map::Entry::Vacant(v) => v.insert(Groups::new(agg)?),
    })
}

/// One partition's partial aggregate of an epoch. It groups rows, as
/// DataFusion's partial aggregate does, and gives up grouping as
/// DataFusion's does when that does not pay: once [`PROBE_ROWS`] rows have
/// made at least [`SKIP_RATIO`] groups per row (a key nearly unique within
/// its window), the tables' states go out, and each later row goes out as a
/// state of its own (`convert_to_state`). The final aggregate merges states
/// whatever their count per key, so the result is the same.
struct PartialState {
    tables: BTreeMap<(i64, i64), Groups>,
    /// Empty groups, whose accumulators turn rows into states when skipping.
    spare: Groups,
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
        if self.skipping {
            self.out.push(spec.rows_as_states(&self.spare, batch)?);
            self.skipped.add(batch.num_rows());
            return Ok(());
        }
        spec.fold(&mut self.tables, batch)?;
        self.rows += batch.num_rows();
        if self.rows >= PROBE_ROWS {
            let groups: usize = self.tables.values().map(Groups::len).sum();
            if groups as f64 >= SKIP_RATIO * self.rows as f64 {
                let tables = std::mem::take(&mut self.tables);
                self.out.extend(spec.emit(tables)?);
                self.skipping = true;
            }
        }
        Ok(())
    }

    fn finish(mut self, spec: &PartialSpec) -> Result<Vec<RecordBatch>> {
        let tables = std::mem::take(&mut self.tables);
        self.out.extend(spec.emit(tables)?);
        if self.out.is_empty() {
            self.out.push(RecordBatch::new_empty(Arc::clone(&spec.schema)));
        }
        Ok(self.out)
    }
}

/// The plan node: one partition per input partition.
pub struct PartialWindowAggExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Arc<PartialSpec>,
    props: Arc<PlanProperties>,
    metrics: super::SharedMetrics,
}

impl PartialWindowAggExec {
    /// What it computes.
    pub fn spec(&self) -> &Arc<PartialSpec> {
        &self.spec
    }

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
            metrics: super::SharedMetrics::default(),
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
        let unit = match &self.spec.unit {
            Unit::Window { .. } => "window_start, window_end",
            Unit::None => "",
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
        let baseline = self.metrics.baseline(partition);
        let skipped = self.metrics.counter("skipped_aggregation_rows", partition);
        let name = self.spec.name();
        let out = futures::stream::once(async move {
            let mut state = PartialState {
                tables: BTreeMap::new(),
                spare: Groups::new(&spec.agg)?,
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
            super::record_batches(&baseline, &out);
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
