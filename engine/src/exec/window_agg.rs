//! `WindowAggregateExec`: a windowed `GROUP BY`, kept incrementally.
//!
//! ```text
//!   input rows of epoch N                      state (across epochs)
//!   ───────────────────────▶ split by window ─▶ (end, start) ─▶ WindowGroups
//!                                               (10s, 0s)       keys ─▶ group index (DataFusion GroupValues)
//!                                               (20s,10s)       one GroupsAccumulator per aggregate
//!   watermark after N ─────────────────────────────────────────▶ windows with end ≤ watermark:
//!                                                               evaluate, emit once, drop
//! ```
//!
//! The state is DataFusion's own: `GroupValues` interns the group keys and
//! each aggregate's `GroupsAccumulator` (or the adapter over its
//! `Accumulator`) holds per-group partial state. Checkpointing asks each
//! accumulator for its `state()` (the same intermediate form DataFusion ships
//! between partial and final aggregation) and restoring merges it back with
//! `merge_batch`, so any DataFusion aggregate, built-in or user-defined,
//! works without code here.
//!
//! State file layout (one row per group of an open window):
//! `__window_start: Int64, __window_end: Int64, <key columns>, a<i>.<state field>...`

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::array::{
    ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{EquivalenceProperties, GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateMode, aggregate_expressions};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use weir_sql::WindowSpec;

use crate::epoch::EpochInput;
use crate::exec::StatefulOperator;

/// A windowed aggregate over its input.
pub struct WindowAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WindowSpec,
    state: Arc<WindowAggState>,
    props: Arc<PlanProperties>,
}

impl fmt::Debug for WindowAggregateExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowAggregateExec")
            .field("spec", &self.spec)
            .finish()
    }
}

/// The operator's fixed configuration and its state, shared by every copy
/// of the plan node (DataFusion's optimizer rebuilds nodes).
pub struct WindowAggState {
    group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
    window_start: usize,
    window_end: usize,
    aggr: Vec<Arc<AggregateFunctionExpr>>,
    /// Per aggregate, the expressions whose values feed `update_batch`.
    aggr_args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The group columns other than the window's.
    key_schema: SchemaRef,
    /// The schema of a state file.
    state_schema: SchemaRef,
    /// Output rows: group columns, then aggregate values.
    schema: SchemaRef,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Open windows by (end, start): the first entries close first.
    windows: BTreeMap<(i64, i64), WindowGroups>,
    /// Changed since the last snapshot.
    dirty: bool,
}

/// The groups of one open window.
struct WindowGroups {
    /// Interned keys; `None` when the window is the only grouping.
    keys: Option<Box<dyn GroupValues>>,
    num_groups: usize,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    /// This window's rows of the last snapshot, while it has not changed.
    snapshot: Option<RecordBatch>,
}

impl WindowAggregateExec {
    /// Builds the operator. `group_by[window_start]` and `group_by[window_end]`
    /// are the window's columns; `schema` is the output schema.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        spec: WindowSpec,
        group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
        window_start: usize,
        window_end: usize,
        aggr: Vec<Arc<AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
        schema: SchemaRef,
    ) -> Result<Self> {
        let in_schema = input.schema();
        let mut key_fields = Vec::new();
        for (i, (expr, name)) in group_by.iter().enumerate() {
            if i != window_start && i != window_end {
                key_fields.push(Field::new(name, expr.data_type(&in_schema)?, true));
            }
        }
        let key_schema = Arc::new(Schema::new(key_fields));
        let mut state_fields = vec![
            Field::new("__window_start", DataType::Int64, false),
            Field::new("__window_end", DataType::Int64, false),
        ];
        state_fields.extend(key_schema.fields().iter().map(|f| f.as_ref().clone()));
        for (i, a) in aggr.iter().enumerate() {
            for f in a.state_fields()? {
                state_fields.push(Field::new(
                    format!("a{i}.{}", f.name()),
                    f.data_type().clone(),
                    true,
                ));
            }
        }
        let aggr_args = aggregate_expressions(&aggr, &AggregateMode::Partial, 0)?;
        let state = WindowAggState {
            group_by,
            window_start,
            window_end,
            aggr,
            aggr_args,
            filters,
            key_schema,
            state_schema: Arc::new(Schema::new(state_fields)),
            schema: Arc::clone(&schema),
            inner: Mutex::new(Inner::default()),
        };
        Ok(Self::with_state(input, spec, Arc::new(state)))
    }

    fn with_state(input: Arc<dyn ExecutionPlan>, spec: WindowSpec, state: Arc<WindowAggState>) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&state.schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            spec,
            state,
            props: Arc::new(props),
        }
    }

    /// The operator's state (for checkpoints).
    pub fn state(&self) -> Arc<WindowAggState> {
        Arc::clone(&self.state)
    }
}

impl DisplayAs for WindowAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = self.state.group_by.iter().map(|(_, n)| n.as_str()).collect();
        let aggs: Vec<&str> = self.state.aggr.iter().map(|a| a.name()).collect();
        write!(
            f,
            "WindowAggregateExec: {} gby=[{}], aggr=[{}], emit=on window close",
            self.spec,
            keys.join(", "),
            aggs.join(", ")
        )
    }
}

impl ExecutionPlan for WindowAggregateExec {
    fn name(&self) -> &str {
        "WindowAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for (e, _) in &self.state.group_by {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        for args in &self.state.aggr_args {
            for e in args {
                if f(e)? == TreeNodeRecursion::Stop {
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::with_state(
            children.swap_remove(0),
            self.spec.clone(),
            Arc::clone(&self.state),
        )))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "WindowAggregateExec has one partition, asked for {partition}"
            )));
        }
        let epoch = EpochInput::from_task(&context)?;
        let mut input = self.input.execute(0, context)?;
        let state = Arc::clone(&self.state);
        let out = futures::stream::once(async move {
            while let Some(batch) = input.next().await {
                state.update(&batch?)?;
            }
            state.emit_closed(epoch.watermark_out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.state.schema),
            out,
        )))
    }
}

/// Rows of a batch split by window: (end, start) → row indices.
fn split_by_window(starts: &[i64], ends: &[i64]) -> Vec<((i64, i64), Vec<u32>)> {
    let mut parts: Vec<((i64, i64), Vec<u32>)> = Vec::new();
    let mut index: HashMap<(i64, i64), usize> = HashMap::new();
    let mut last = usize::MAX;
    for (i, (&s, &e)) in starts.iter().zip(ends).enumerate() {
        // Rows of one window usually come in runs: check the last one first.
        if last < parts.len() && parts[last].0 == (e, s) {
            parts[last].1.push(i as u32);
            continue;
        }
        last = *index.entry((e, s)).or_insert_with(|| {
            parts.push(((e, s), Vec::new()));
            parts.len() - 1
        });
        parts[last].1.push(i as u32);
    }
    parts
}

fn take_all(arrays: &[ArrayRef], idx: &UInt32Array) -> Result<Vec<ArrayRef>> {
    arrays.iter().map(|a| Ok(take(a.as_ref(), idx, None)?)).collect()
}

impl WindowAggState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would have aborted the epoch; the
        // process restarts from the checkpoint, so poisoning carries no risk.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_window(&self) -> Result<WindowGroups> {
        let keys = if self.key_schema.fields().is_empty() {
            None
        } else {
            Some(new_group_values(
                Arc::clone(&self.key_schema),
                &GroupOrdering::None,
            )?)
        };
        let accs = self
            .aggr
            .iter()
            .map(|a| -> Result<Box<dyn GroupsAccumulator>> {
                if a.groups_accumulator_supported() {
                    a.create_groups_accumulator()
                } else {
                    let a = Arc::clone(a);
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        a.create_accumulator()
                    })))
                }
            })
            .collect::<Result<_>>()?;
        Ok(WindowGroups {
            keys,
            num_groups: 0,
            accs,
            snapshot: None,
        })
    }

    /// Folds one input batch into the open windows.
    fn update(&self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let groups: Vec<ArrayRef> = self
            .group_by
            .iter()
            .map(|(e, _)| e.evaluate(batch)?.into_array(n))
            .collect::<Result<_>>()?;
        let starts = cast(&groups[self.window_start], &DataType::Int64)?;
        let ends = cast(&groups[self.window_end], &DataType::Int64)?;
        let keys: Vec<ArrayRef> = groups
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.window_start && *i != self.window_end)
            .map(|(_, a)| Arc::clone(a))
            .collect();
        let args: Vec<Vec<ArrayRef>> = self
            .aggr_args
            .iter()
            .map(|exprs| {
                exprs
                    .iter()
                    .map(|e| e.evaluate(batch)?.into_array(n))
                    .collect::<Result<_>>()
            })
            .collect::<Result<_>>()?;
        let filters: Vec<Option<ArrayRef>> = self
            .filters
            .iter()
            .map(|f| f.as_ref().map(|f| f.evaluate(batch)?.into_array(n)).transpose())
            .collect::<Result<_>>()?;

        let parts = split_by_window(
            starts.as_primitive::<Int64Type>().values(),
            ends.as_primitive::<Int64Type>().values(),
        );
        let mut inner = self.lock();
        inner.dirty = true;
        let mut group_idx = Vec::with_capacity(n);
        for (window, rows) in parts {
            let rows_here = rows.len();
            let (keys, args, filters) = if rows_here == n {
                (keys.clone(), args.clone(), filters.clone())
            } else {
                let idx = UInt32Array::from(rows);
                let args = args
                    .iter()
                    .map(|a| take_all(a, &idx))
                    .collect::<Result<Vec<_>>>()?;
                let filters = filters
                    .iter()
                    .map(|f| {
                        f.as_ref()
                            .map(|f| Ok::<_, DataFusionError>(take(f.as_ref(), &idx, None)?))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>>>()?;
                (take_all(&keys, &idx)?, args, filters)
            };
            let w = match inner.windows.entry(window) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(self.new_window()?),
            };
            w.snapshot = None;
            group_idx.clear();
            match &mut w.keys {
                Some(k) => {
                    k.intern(&keys, &mut group_idx)?;
                    w.num_groups = k.len();
                }
                None => {
                    group_idx.resize(rows_here, 0);
                    w.num_groups = 1;
                }
            }
            for (i, acc) in w.accs.iter_mut().enumerate() {
                let filter = filters[i].as_ref().map(|f| f.as_boolean().clone());
                acc.update_batch(&args[i], &group_idx, filter.as_ref(), w.num_groups)?;
            }
        }
        Ok(())
    }

    /// Emits and forgets every window that ends at or before `watermark`.
    fn emit_closed(&self, watermark: i64) -> Result<RecordBatch> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        while let Some(entry) = inner.windows.first_entry() {
            let (end, start) = *entry.key();
            if end > watermark {
                break;
            }
            let w = entry.remove();
            out.push(self.finish(start, end, w)?);
        }
        if !out.is_empty() {
            inner.dirty = true;
        }
        Ok(concat_batches(&self.schema, &out)?)
    }

    fn window_column(&self, index: usize, value: i64, n: usize) -> Result<ArrayRef> {
        let field = self.schema.field(index);
        let tz = match field.data_type() {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let arr: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![value; n]).with_timezone_opt(tz));
        if arr.data_type() == field.data_type() {
            Ok(arr)
        } else {
            Ok(cast(&arr, field.data_type())?)
        }
    }

    /// Final rows of a closed window.
    fn finish(&self, start: i64, end: i64, mut w: WindowGroups) -> Result<RecordBatch> {
        let n = w.num_groups;
        let mut keys = match &mut w.keys {
            Some(k) => k.emit(EmitTo::All)?,
            None => vec![],
        }
        .into_iter();
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for i in 0..self.group_by.len() {
            if i == self.window_start {
                columns.push(self.window_column(i, start, n)?);
            } else if i == self.window_end {
                columns.push(self.window_column(i, end, n)?);
            } else {
                columns.push(
                    keys.next()
                        .ok_or_else(|| DataFusionError::Internal("missing key column".into()))?,
                );
            }
        }
        for acc in &mut w.accs {
            columns.push(acc.evaluate(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// This window's state rows. Taking state out of DataFusion's
    /// accumulators consumes it, so the window is rebuilt from the same rows
    /// (which keeps group order, and so output order, the same as after a
    /// restore from this snapshot).
    fn snapshot_window(&self, start: i64, end: i64, w: &mut WindowGroups) -> Result<RecordBatch> {
        let n = w.num_groups;
        let keys = match &mut w.keys {
            Some(k) => k.emit(EmitTo::All)?,
            None => vec![],
        };
        let states: Vec<Vec<ArrayRef>> = w
            .accs
            .iter_mut()
            .map(|a| a.state(EmitTo::All))
            .collect::<Result<_>>()?;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![start; n])),
            Arc::new(Int64Array::from(vec![end; n])),
        ];
        columns.extend(keys.iter().cloned());
        for s in &states {
            columns.extend(s.iter().cloned());
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.state_schema), columns)?;
        let mut fresh = self.new_window()?;
        self.merge_into(&mut fresh, &keys, &states, n)?;
        *w = fresh;
        Ok(batch)
    }

    fn merge_into(
        &self,
        w: &mut WindowGroups,
        keys: &[ArrayRef],
        states: &[Vec<ArrayRef>],
        n: usize,
    ) -> Result<()> {
        let mut idx = Vec::with_capacity(n);
        match &mut w.keys {
            Some(k) => {
                k.intern(keys, &mut idx)?;
                w.num_groups = k.len();
            }
            None => {
                idx.resize(n, 0);
                w.num_groups = n.min(1);
            }
        }
        for (acc, s) in w.accs.iter_mut().zip(states) {
            acc.merge_batch(s, &idx, w.num_groups)?;
        }
        Ok(())
    }
}

impl StatefulOperator for WindowAggState {
    fn kind(&self) -> &'static str {
        "window-aggregate"
    }

    fn state_rows(&self) -> usize {
        self.lock().windows.values().map(|w| w.num_groups).sum()
    }

    fn snapshot(&self) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>> {
        let mut inner = self.lock();
        if !inner.dirty {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(inner.windows.len());
        for (&(end, start), w) in inner.windows.iter_mut() {
            if w.snapshot.is_none() {
                w.snapshot = Some(self.snapshot_window(start, end, w)?);
            }
            out.extend(w.snapshot.clone());
        }
        inner.dirty = false;
        Ok(Some((Arc::clone(&self.state_schema), out)))
    }

    fn restore(&self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
        let expected: Vec<&DataType> = self.state_schema.fields().iter().map(|f| f.data_type()).collect();
        let found: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
        if expected != found {
            return Err(DataFusionError::Execution(format!(
                "the state file does not match this windowed aggregate (it has columns {:?}, the operator keeps {:?})",
                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
                self.state_schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
            )));
        }
        let mut inner = self.lock();
        inner.windows.clear();
        let n_keys = self.key_schema.fields().len();
        for batch in batches {
            let batch = batch.clone().with_schema(Arc::clone(&self.state_schema))?;
            let starts = batch.column(0).as_primitive::<Int64Type>().values().to_vec();
            let ends = batch.column(1).as_primitive::<Int64Type>().values().to_vec();
            for (window, rows) in split_by_window(&starts, &ends) {
                let idx = UInt32Array::from(rows);
                let part = take_batch(&batch, &idx)?;
                let keys: Vec<ArrayRef> = part.columns()[2..2 + n_keys].to_vec();
                let mut col = 2 + n_keys;
                let mut states = Vec::with_capacity(self.aggr.len());
                for a in &self.aggr {
                    let k = a.state_fields()?.len();
                    states.push(part.columns()[col..col + k].to_vec());
                    col += k;
                }
                let mut w = self.new_window()?;
                self.merge_into(&mut w, &keys, &states, part.num_rows())?;
                w.snapshot = Some(part);
                inner.windows.insert(window, w);
            }
        }
        inner.dirty = false;
        Ok(())
    }
}

fn take_batch(batch: &RecordBatch, idx: &UInt32Array) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        batch.schema(),
        take_all(batch.columns(), idx)?,
    )?)
}
