//! `WindowAggregateExec`: a windowed `GROUP BY`, kept incrementally.
//!
//! ```text
//!   input rows of epoch N                        state (across epochs)
//!   ─────────────────────▶ split by (end, start) ─▶ units: BTreeMap<(end, start), Groups>
//!                                                   exact windows (TUMBLE, expanded rows)
//!                                                   or slices (HOP, CUMULATE; see sql::nodes)
//!   watermark after N ───────────────────────────▶ windows with end ≤ watermark:
//!                                                   exact: evaluate the unit, drop it
//!                                                   slices: merge the window's slices, evaluate;
//!                                                           drop slices no open window needs
//! ```
//!
//! The state is DataFusion's own ([`Groups`]): any aggregate works, and a
//! checkpoint holds its partial states. A window's rows are emitted exactly
//! once, in (end, start) order, groups in first-seen order.
//!
//! On several threads the input is the partitions' partial states
//! (`partial_agg`), merged into the units; without keys, an exact window
//! keeps them as rows until it closes (`UnitState::Parts`), and all the
//! windows an epoch closes are merged at once.
//!
//! State rows (one per group of a unit; the unit is `(start, end)`):
//! `__window_start, __window_end: Int64, <key columns>, a<i>.<state field>...`
//! A keyless window kept as partial rows writes one row per partial row; a
//! restore merges a unit's rows, however many.
//! How far windows have been emitted is not state: it is the watermark of
//! the last committed epoch, which `restore` is given.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, interleave_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::{HashMap, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use weir_sql::{WindowColumn, WindowSpec};

use super::groups::{AggregateSpec, Groups, column_of, keyless_values};
use super::operator::{EpochOperator, OperatorExec};
use super::partial_agg::{PartialSpec, PartialWindowAggExec};
use super::shard::{Shards, route, shard_count};
use super::units::{
    GroupColumn, UnitRuns, WindowAggregateParams, constant_time, fold_by_unit, split_by_unit, take_batch,
    time_column, unit_deletes,
};
use crate::epoch::EpochInput;
use crate::exec::{StateChange, StateTable, StatefulOperator};

/// A windowed aggregate over its input.
pub type WindowAggregateExec = OperatorExec<WindowAggState>;

/// The operator's fixed configuration and its state, shared by every copy
/// of the plan node (DataFusion's optimizer rebuilds nodes).
pub struct WindowAggState {
    spec: WindowSpec,
    agg: AggregateSpec,
    layout: Vec<GroupColumn>,
    /// The expressions giving each row's unit (window or slice) start and end.
    start: Arc<dyn PhysicalExpr>,
    end: Arc<dyn PhysicalExpr>,
    slices: bool,
    lag_ms: i64,
    state_schema: SchemaRef,
    schema: SchemaRef,
    /// One part of the state per partition, split by the keys' hash.
    shards: Shards<Inner>,
    /// With more than one thread, the input is a [`PartialWindowAggExec`]'s
    /// partial states, merged in (`merge_partial`), not rows; then these are
    /// its key columns, which the shards are split by.
    partial_keys: Option<Vec<Arc<dyn PhysicalExpr>>>,
    /// What it was built from ([`WindowAggState::config`]).
    params: WindowAggregateParams,
    threads: usize,
    in_schema: SchemaRef,
}

#[derive(Default)]
struct Inner {
    /// Exact windows or slices, by (end, start): the first close first.
    units: BTreeMap<(i64, i64), Unit>,
    /// Slices: windows (end, start) with rows, not yet emitted.
    open: BTreeSet<(i64, i64)>,
    /// Slices: the watermark through which windows were emitted.
    frontier: i64,
    /// Units changed since the last checkpoint.
    changed: BTreeSet<(i64, i64)>,
    /// Units removed since the last checkpoint.
    removed: BTreeSet<(i64, i64)>,
}

enum UnitState {
    /// Still receiving rows.
    Live(Groups),
    /// Complete (a slice all of whose rows are in): its state as arrays, to
    /// be merged into each window that contains it.
    Frozen {
        keys: Vec<ArrayRef>,
        states: Vec<Vec<ArrayRef>>,
        rows: usize,
    },
    /// Without keys, on several threads (exact windows only): the partial
    /// states the partitions sent, not yet merged, each a row of a
    /// [`PartialWindowAggExec`] batch (laid out as state rows). The final
    /// merge runs on one thread; an epoch closes about a thousand windows
    /// of the tumble bench, and merging each window's rows into its own
    /// fresh accumulators as they came was most of that thread's work. The
    /// rows are merged when the window closes, all closed windows at once
    /// (`finish_all`), or into [`UnitState::Live`] groups once a window has
    /// gathered [`MAX_PARTS`] of them.
    Parts(Vec<(Arc<RecordBatch>, usize)>),
}

/// The most partial-state rows a keyless window keeps unmerged
/// ([`UnitState::Parts`]): a window that spans many epochs is merged into
/// groups rather than holding every epoch's partial batch.
const MAX_PARTS: usize = 16;

struct Unit {
    state: UnitState,
    /// This unit's rows of the last snapshot, while it has not changed.
    snapshot: Option<RecordBatch>,
}

impl Unit {
    fn rows(&self) -> usize {
        match &self.state {
            UnitState::Live(g) => g.len(),
            UnitState::Frozen { rows, .. } => *rows,
            // One group, however many partial rows it has.
            UnitState::Parts(_) => 1,
        }
    }
}

/// The rows `parts` name, gathered into one batch (in the partial batches'
/// layout, which is the state rows').
fn gather_parts<'a>(parts: impl IntoIterator<Item = &'a (Arc<RecordBatch>, usize)>) -> Result<RecordBatch> {
    let mut batches: Vec<&RecordBatch> = Vec::new();
    let mut index: HashMap<*const RecordBatch, usize> = HashMap::new();
    let mut at = Vec::new();
    for (batch, row) in parts {
        let b = *index.entry(Arc::as_ptr(batch)).or_insert_with(|| {
            batches.push(batch.as_ref());
            batches.len() - 1
        });
        at.push((b, *row));
    }
    if batches.is_empty() {
        return Err(DataFusionError::Internal(
            "a keyless window kept no partial rows".to_string(),
        ));
    }
    Ok(interleave_record_batch(&batches, &at)?)
}

impl OperatorExec<WindowAggState> {
    /// Builds the operator; with keys, its state is split into `threads`
    /// shards (see [`super::shard`]).
    pub fn try_new(input: Arc<dyn ExecutionPlan>, p: WindowAggregateParams, threads: usize) -> Result<Self> {
        let in_schema = input.schema();
        let (state, partial) = WindowAggState::build(p, threads, in_schema)?;
        // With more than one thread, each input partition aggregates its
        // rows first, and only their states cross to the shards (see
        // `partial_agg`).
        let input = match partial {
            Some(spec) => Arc::new(PartialWindowAggExec::new(input, Arc::new(spec))),
            None => input,
        };
        Ok(Self::new(input, Arc::new(state)))
    }

    /// The operator [`Self::try_new`] builds, over an `input` that already
    /// holds what `try_new` adds (the partial aggregate, with more than one
    /// thread): a plan decoded from its wire form. `in_schema` is the
    /// schema of the rows `p`'s expressions read ([`WindowAggState::config`]).
    pub fn try_new_over(
        input: Arc<dyn ExecutionPlan>,
        p: WindowAggregateParams,
        threads: usize,
        in_schema: SchemaRef,
    ) -> Result<Self> {
        let (state, _) = WindowAggState::build(p, threads, in_schema)?;
        Ok(Self::new(input, Arc::new(state)))
    }
}

impl WindowAggState {
    /// What the operator was built from: its parameters, its thread count
    /// and the schema of the rows their expressions read (how it crosses
    /// to a cluster; never its state).
    pub fn config(&self) -> (&WindowAggregateParams, usize, &SchemaRef) {
        (&self.params, self.threads, &self.in_schema)
    }

    /// The state of an operator over rows of `in_schema`, and the partial
    /// aggregate to put under it (more than one thread).
    fn build(
        p: WindowAggregateParams,
        threads: usize,
        in_schema: SchemaRef,
    ) -> Result<(Self, Option<PartialSpec>)> {
        let params = p.clone();
        let mut keys = Vec::new();
        let mut layout = Vec::new();
        let mut start = None;
        let mut end = None;
        for (i, (expr, name)) in p.group_by.iter().enumerate() {
            match p.window_columns.iter().find(|(j, _)| *j == i) {
                Some((_, c)) => {
                    layout.push(GroupColumn::Window(*c));
                    match c {
                        WindowColumn::Start => start = Some(Arc::clone(expr)),
                        WindowColumn::End => end = Some(Arc::clone(expr)),
                        WindowColumn::Time => {}
                    }
                }
                None => {
                    layout.push(GroupColumn::Key(keys.len()));
                    keys.push((Arc::clone(expr), name.clone()));
                }
            }
        }
        let (Some(start), Some(end)) = (start, end) else {
            return Err(DataFusionError::Internal(
                "a window aggregate needs window_start and window_end".into(),
            ));
        };
        let agg = AggregateSpec::try_new(keys, p.aggr, p.filters, &in_schema)?;
        let mut partial_keys = None;
        let mut partial = None;
        if threads > 1 {
            let spec = PartialSpec::try_new(&agg, &start, &end, &in_schema)?;
            partial_keys = Some(spec.key_columns());
            partial = Some(spec);
        }
        let mut fields = vec![
            Field::new("__window_start", DataType::Int64, false),
            Field::new("__window_end", DataType::Int64, false),
        ];
        fields.extend(agg.key_schema.fields().iter().map(|f| f.as_ref().clone()));
        fields.extend(agg.state_file_fields());
        let shards = Shards::new(shard_count(threads, agg.keys.len()), || Inner {
            frontier: i64::MIN,
            ..Default::default()
        });
        let state = WindowAggState {
            spec: p.spec,
            agg,
            layout,
            start,
            end,
            slices: p.slices,
            lag_ms: p.lag_ms,
            state_schema: Arc::new(Schema::new(fields)),
            schema: p.schema,
            shards,
            partial_keys,
            params,
            threads,
            in_schema,
        };
        Ok((state, partial))
    }
}

impl EpochOperator for WindowAggState {
    const NAME: &'static str = "WindowAggregateExec";
    type Acc = ();

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

    fn expressions(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        if let Some(keys) = &self.partial_keys {
            // Over the partial states: the unit columns and the keys.
            let unit = |i: usize, name: &str| Arc::new(Column::new(name, i)) as Arc<dyn PhysicalExpr>;
            return [unit(0, "__window_start"), unit(1, "__window_end")]
                .into_iter()
                .chain(keys.iter().cloned())
                .collect();
        }
        [&self.start, &self.end]
            .into_iter()
            .chain(self.agg.keys.iter().map(|(e, _)| e))
            .chain(self.agg.args.iter().flatten())
            .cloned()
            .collect()
    }

    fn fmt_node(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = (0..self.layout.len())
            .map(|i| self.schema.field(i).name().as_str())
            .collect();
        let aggs: Vec<&str> = self.agg.aggr.iter().map(|a| a.name()).collect();
        write!(
            f,
            "{}{} gby=[{}], aggr=[{}], emit=on window close",
            self.spec,
            if self.slices { " over slices" } else { "" },
            keys.join(", "),
            aggs.join(", ")
        )?;
        if self.lag_ms != 0 {
            write!(f, ", watermark lag {}ms", self.lag_ms)?;
        }
        Ok(())
    }

    fn start(&self, _partition: usize, _epoch: &EpochInput) -> Result<()> {
        Ok(())
    }

    fn fold(&self, partition: usize, _acc: &mut (), batch: &RecordBatch) -> Result<()> {
        if self.partial_keys.is_some() {
            return self.merge_partial(partition, batch);
        }
        self.update(partition, batch)
    }

    fn finish(&self, partition: usize, _acc: (), epoch: &EpochInput) -> Result<RecordBatch> {
        self.emit_closed(partition, epoch.watermark_out.saturating_sub(self.lag_ms))
    }
}

impl WindowAggState {
    /// Folds one input batch into the units of a shard.
    fn update(&self, shard: usize, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let starts = cast(&self.start.evaluate(batch)?.into_array(n)?, &DataType::Int64)?;
        let ends = cast(&self.end.evaluate(batch)?.into_array(n)?, &DataType::Int64)?;
        let evaluated = self.agg.evaluate(batch)?;
        let mut inner = self.shards.lock(shard);
        fold_by_unit(&starts, &ends, &evaluated, |unit, input| {
            self.live_unit(&mut inner, unit)?.update(input)
        })
    }

    /// The live groups of `unit` in a shard (made when new), marked changed.
    fn live_unit<'a>(&self, inner: &'a mut Inner, unit: (i64, i64)) -> Result<&'a mut Groups> {
        if let Entry::Vacant(v) = inner.units.entry(unit) {
            v.insert(Unit {
                state: UnitState::Live(Groups::new(&self.agg)?),
                snapshot: None,
            });
            if self.slices {
                let windows = self.spec.windows_of_slice(unit.1);
                inner.open.extend(windows.into_iter().map(|(s, e)| (e, s)));
            }
        }
        inner.changed.insert(unit);
        inner.removed.remove(&unit);
        let Some(u) = inner.units.get_mut(&unit) else {
            return Err(DataFusionError::Internal(format!(
                "WindowAggregateExec lost the unit [{}, {}) it just added",
                unit.1, unit.0
            )));
        };
        u.snapshot = None;
        if matches!(u.state, UnitState::Parts(_)) {
            // (Not reached: an operator merges either rows or partial
            // states, and only partial states are kept as parts.)
            let parts = std::mem::replace(&mut u.state, UnitState::Parts(Vec::new()));
            u.state = UnitState::Live(self.groups_of(parts)?);
        }
        match &mut u.state {
            UnitState::Live(g) => Ok(g),
            UnitState::Parts(_) => Err(DataFusionError::Internal(format!(
                "the window [{}, {}) kept its partial rows unmerged",
                unit.1, unit.0
            ))),
            UnitState::Frozen { .. } => Err(DataFusionError::Internal(format!(
                "rows arrived for slice [{}, {}) after it was complete",
                unit.1, unit.0
            ))),
        }
    }

    /// Merges a batch of partial states (a [`PartialWindowAggExec`]'s rows)
    /// into the units of a shard.
    fn merge_partial(&self, shard: usize, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let n_keys = self.agg.key_schema.fields().len();
        let starts = batch.column(0).as_primitive::<Int64Type>().values();
        let ends = batch.column(1).as_primitive::<Int64Type>().values();
        let mut inner = self.shards.lock(shard);
        if n_keys == 0 && !self.slices {
            let batch = Arc::new(batch.clone());
            for (unit, runs) in UnitRuns::of(starts, ends).iter() {
                self.add_parts(&mut inner, unit, &batch, runs)?;
            }
            return Ok(());
        }
        // A partial batch holds each unit's rows in a run or a few (one row
        // per window without keys): each run is merged as a slice, not
        // gathered (a thousand windows an epoch made a thousand copies).
        for (unit, runs) in UnitRuns::of(starts, ends).iter() {
            for (a, b) in runs {
                let part = batch.slice(a, b - a);
                let keys: Vec<ArrayRef> = part.columns()[2..2 + n_keys].to_vec();
                let states = self.agg.split_states(&part.columns()[2 + n_keys..]);
                self.live_unit(&mut inner, unit)?
                    .merge(&keys, &states, part.num_rows())?;
            }
        }
        Ok(())
    }

    /// Keeps a keyless window's partial rows `runs` of `batch` for later
    /// ([`UnitState::Parts`]); merges them in if the window has live groups
    /// (restored from a checkpoint) or too many rows waiting.
    fn add_parts(
        &self,
        inner: &mut Inner,
        unit: (i64, i64),
        batch: &Arc<RecordBatch>,
        runs: impl Iterator<Item = (usize, usize)>,
    ) -> Result<()> {
        inner.changed.insert(unit);
        inner.removed.remove(&unit);
        let u = inner.units.entry(unit).or_insert_with(|| Unit {
            state: UnitState::Parts(Vec::new()),
            snapshot: None,
        });
        u.snapshot = None;
        match &mut u.state {
            UnitState::Parts(parts) => {
                parts.extend(runs.flat_map(|(a, b)| (a..b).map(|row| (Arc::clone(batch), row))));
                if parts.len() >= MAX_PARTS {
                    let rows = gather_parts(parts.iter())?;
                    let mut g = Groups::new(&self.agg)?;
                    g.merge(&[], &self.agg.split_states(&rows.columns()[2..]), rows.num_rows())?;
                    u.state = UnitState::Live(g);
                }
            }
            UnitState::Live(g) => {
                for (a, b) in runs {
                    let part = batch.slice(a, b - a);
                    let states = self.agg.split_states(&part.columns()[2..]);
                    g.merge(&[], &states, part.num_rows())?;
                }
            }
            UnitState::Frozen { .. } => {
                return Err(DataFusionError::Internal(format!(
                    "rows arrived for window [{}, {}) after it was complete",
                    unit.1, unit.0
                )));
            }
        }
        Ok(())
    }

    /// Emits a shard's part of every window that ends at or before
    /// `watermark`, and forgets state no open window needs.
    fn emit_closed(&self, shard: usize, watermark: i64) -> Result<RecordBatch> {
        let mut inner = self.shards.lock(shard);
        let mut closed = Vec::new();
        if self.slices {
            while let Some(&(end, start)) = inner.open.first() {
                if end > watermark {
                    break;
                }
                inner.open.pop_first();
                let mut merged = Groups::new(&self.agg)?;
                let step = self.spec.slice_ms().unwrap_or(end - start);
                for s in self.spec.slices_of_window(start, end) {
                    if let Some(u) = inner.units.get_mut(&(s + step, s)) {
                        freeze(u)?;
                        if let UnitState::Frozen { keys, states, rows } = &u.state {
                            merged.merge(keys, states, *rows)?;
                        }
                    }
                }
                if !merged.is_empty() {
                    closed.push((start, end, UnitState::Live(merged)));
                }
            }
            let spec = &self.spec;
            let retired: Vec<(i64, i64)> = inner
                .units
                .keys()
                .copied()
                .filter(|&(_, s)| spec.slice_retires_at(s) <= watermark)
                .collect();
            for unit in retired {
                inner.units.remove(&unit);
                inner.changed.remove(&unit);
                inner.removed.insert(unit);
            }
            if watermark > inner.frontier {
                inner.frontier = watermark;
            }
        } else {
            while let Some(entry) = inner.units.first_entry() {
                let (end, start) = *entry.key();
                if end > watermark {
                    break;
                }
                closed.push((start, end, entry.remove().state));
                inner.changed.remove(&(end, start));
                inner.removed.insert((end, start));
            }
        }
        drop(inner);
        self.finish_all(closed)
    }

    /// A unit's state as groups.
    fn groups_of(&self, state: UnitState) -> Result<Groups> {
        match state {
            UnitState::Live(g) => Ok(g),
            UnitState::Frozen { keys, states, rows } => {
                let mut g = Groups::new(&self.agg)?;
                g.merge(&keys, &states, rows)?;
                Ok(g)
            }
            UnitState::Parts(parts) => {
                let rows = gather_parts(&parts)?;
                let n_keys = self.agg.key_schema.fields().len();
                let states = self.agg.split_states(&rows.columns()[2 + n_keys..]);
                let mut g = Groups::new(&self.agg)?;
                g.merge(&rows.columns()[2..2 + n_keys], &states, rows.num_rows())?;
                Ok(g)
            }
        }
    }

    /// Final rows of closed windows `(start, end, state)`, in order.
    fn finish_all(&self, closed: Vec<(i64, i64, UnitState)>) -> Result<RecordBatch> {
        if !self.agg.key_schema.fields().is_empty() {
            let out = closed
                .into_iter()
                .map(|(start, end, state)| self.finish(start, end, self.groups_of(state)?))
                .collect::<Result<Vec<_>>>()?;
            return Ok(concat_batches(&self.schema, &out)?);
        }
        if closed.iter().any(|(_, _, s)| matches!(s, UnitState::Parts(_))) {
            return self.finish_parts(closed);
        }
        // Without keys a window is one row: the windows' values are gathered
        // as scalars and each column is built once (a thousand windows
        // closing in an epoch made a thousand one-row batches to
        // concatenate, on the one thread that merges the partitions).
        let mut windows = Vec::with_capacity(closed.len());
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(closed.len()); self.agg.aggr.len()];
        for (start, end, state) in closed {
            let groups = self.groups_of(state)?;
            if groups.is_empty() {
                continue;
            }
            let Some(row) = groups.into_single_values() else {
                return Err(DataFusionError::Internal(
                    "a keyless window aggregate kept keyed groups".to_string(),
                ));
            };
            for (column, value) in values.iter_mut().zip(row?) {
                column.push(value);
            }
            windows.push((start, end));
        }
        let values = values
            .into_iter()
            .zip(&self.agg.aggr)
            .map(|(column, a)| column_of(column, a.field().data_type()))
            .collect::<Result<Vec<_>>>()?;
        self.keyless_rows(&windows, values)
    }

    /// Final rows of closed keyless windows of which some kept their
    /// partial rows unmerged ([`UnitState::Parts`]): every window's rows
    /// are gathered and merged at once ([`keyless_values`]).
    fn finish_parts(&self, closed: Vec<(i64, i64, UnitState)>) -> Result<RecordBatch> {
        let mut windows = Vec::with_capacity(closed.len());
        let mut parts: Vec<(Arc<RecordBatch>, usize)> = Vec::with_capacity(closed.len() * 2);
        let mut groups = Vec::with_capacity(closed.len() * 2);
        for (start, end, state) in closed {
            let g = windows.len();
            match state {
                UnitState::Parts(p) => {
                    groups.extend(std::iter::repeat_n(g, p.len()));
                    parts.extend(p);
                }
                // Restored or merged windows: their state as rows.
                other => {
                    let mut live = self.groups_of(other)?;
                    let n = live.len();
                    if n == 0 {
                        continue;
                    }
                    let (keys, states) = live.take_state()?;
                    let rows = Arc::new(self.unit_rows((end, start), &keys, &states, n)?);
                    groups.extend(std::iter::repeat_n(g, n));
                    parts.extend((0..n).map(|r| (Arc::clone(&rows), r)));
                }
            }
            windows.push((start, end));
        }
        if windows.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.schema)));
        }
        let rows = gather_parts(&parts)?;
        let states = self.agg.split_states(&rows.columns()[2..]);
        let values = keyless_values(&self.agg, &states, &groups, windows.len())?;
        self.keyless_rows(&windows, values)
    }

    /// Output rows of keyless windows `(start, end)` with their values,
    /// one column per aggregate.
    fn keyless_rows(&self, windows: &[(i64, i64)], values: Vec<ArrayRef>) -> Result<RecordBatch> {
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (i, c) in self.layout.iter().enumerate() {
            columns.push(match c {
                GroupColumn::Window(w) => time_column(
                    self.schema.field(i),
                    windows.iter().map(|&(start, end)| w.value(start, end)).collect(),
                )?,
                GroupColumn::Key(_) => {
                    return Err(DataFusionError::Internal(
                        "a keyless window aggregate has a key column".to_string(),
                    ));
                }
            });
        }
        columns.extend(values);
        let options = RecordBatchOptions::new().with_row_count(Some(windows.len()));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &options,
        )?)
    }

    /// Final rows of a closed window.
    fn finish(&self, start: i64, end: i64, groups: Groups) -> Result<RecordBatch> {
        let n = groups.len();
        let (keys, values) = groups.evaluate()?;
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (i, c) in self.layout.iter().enumerate() {
            columns.push(match c {
                GroupColumn::Window(w) => constant_time(self.schema.field(i), w.value(start, end), n)?,
                GroupColumn::Key(k) => Arc::clone(&keys[*k]),
            });
        }
        columns.extend(values);
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    fn unit_rows(
        &self,
        unit: (i64, i64),
        keys: &[ArrayRef],
        states: &[Vec<ArrayRef>],
        n: usize,
    ) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![unit.1; n])),
            Arc::new(Int64Array::from(vec![unit.0; n])),
        ];
        columns.extend(keys.iter().cloned());
        for s in states {
            columns.extend(s.iter().cloned());
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.state_schema), columns)?)
    }
}

/// Turns a complete slice's live groups into arrays (once).
fn freeze(u: &mut Unit) -> Result<()> {
    if let UnitState::Live(g) = &mut u.state {
        let rows = g.len();
        let (keys, states) = g.take_state()?;
        u.state = UnitState::Frozen { keys, states, rows };
    }
    Ok(())
}

impl StatefulOperator for WindowAggState {
    fn signature(&self) -> String {
        format!(
            "window-aggregate {:?} {} {}",
            self.spec,
            if self.slices { "slices" } else { "windows" },
            crate::compat::signature::aggregate_signature(&self.agg)
        )
    }

    fn kind(&self) -> &'static str {
        "window-aggregate"
    }

    fn state_rows(&self) -> usize {
        self.shards
            .lock_all()
            .iter()
            .map(|inner| inner.units.values().map(Unit::rows).sum::<usize>())
            .sum()
    }

    fn describe(&self) -> StateTable {
        let keys: Vec<String> = ["window_start", "window_end"]
            .into_iter()
            .map(String::from)
            .chain(self.agg.key_schema.fields().iter().map(|f| f.name().clone()))
            .collect();
        StateTable {
            name: if self.slices { "slices" } else { "windows" }.into(),
            keys,
            values: self
                .agg
                .state_file_fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            evicted_by: if self.slices {
                "a slice, once the last window containing it ends at or before the watermark".into()
            } else {
                "window_end at or before the watermark (the window is emitted, then dropped)".into()
            },
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
        // A unit (window or slice) may have rows in several shards; each
        // shard's part holds its own rows of the units that changed in it.
        let mut shards = self.shards.lock_all();
        let mut parts = Vec::with_capacity(shards.len());
        for inner in shards.iter_mut() {
            let units: BTreeSet<(i64, i64)> = if full {
                inner.units.keys().copied().collect()
            } else {
                inner.changed.iter().copied().collect()
            };
            let mut upserts = Vec::with_capacity(units.len());
            for unit in &units {
                let Some(u) = inner.units.get_mut(unit) else {
                    continue;
                };
                if u.snapshot.is_none() {
                    let batch = match &mut u.state {
                        UnitState::Live(g) => {
                            let n = g.len();
                            let (k, s) = g.snapshot(&self.agg)?;
                            self.unit_rows(*unit, &k, &s, n)?
                        }
                        UnitState::Frozen { keys, states, rows } => {
                            self.unit_rows(*unit, keys, states, *rows)?
                        }
                        // One state row per partial row (a restore merges
                        // a window's rows, however many).
                        UnitState::Parts(parts) => {
                            let rows = gather_parts(parts.iter())?;
                            RecordBatch::try_new(Arc::clone(&self.state_schema), rows.columns().to_vec())?
                        }
                    };
                    u.snapshot = Some(batch);
                }
                upserts.extend(u.snapshot.clone());
            }
            let removed = inner
                .removed
                .iter()
                .copied()
                .filter(|u| !full && !inner.units.contains_key(u));
            let deletes = unit_deletes(&self.state_schema, removed)?;
            inner.changed.clear();
            inner.removed.clear();
            parts.push(StateChange { upserts, deletes }.part(full));
        }
        Ok(parts)
    }

    fn restore(&self, batches: Vec<RecordBatch>, watermark: i64) -> Result<()> {
        let mut shards = self.shards.lock_all();
        for inner in shards.iter_mut() {
            **inner = Inner {
                frontier: watermark.saturating_sub(self.lag_ms),
                ..Default::default()
            };
        }
        let n_keys = self.agg.key_schema.fields().len();
        let key_columns: Vec<usize> = (2..2 + n_keys).collect();
        for batch in batches {
            let batch = batch.with_schema(Arc::clone(&self.state_schema))?;
            for (shard, batch) in route(&batch, &key_columns, shards.len())? {
                self.restore_rows(&mut shards[shard], &batch, n_keys)?;
            }
        }
        // Windows at or before the frontier were emitted before the checkpoint.
        for inner in shards.iter_mut() {
            let frontier = inner.frontier;
            inner.open.retain(|&(end, _)| end > frontier);
        }
        Ok(())
    }
}

impl WindowAggState {
    /// Adds restored state rows to a shard.
    fn restore_rows(&self, inner: &mut Inner, batch: &RecordBatch, n_keys: usize) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let starts = batch.column(0).as_primitive::<Int64Type>().values().to_vec();
        let ends = batch.column(1).as_primitive::<Int64Type>().values().to_vec();
        for (unit, rows) in split_by_unit(&starts, &ends) {
            let idx = UInt32Array::from(rows);
            let part = take_batch(batch, &idx)?;
            let keys: Vec<ArrayRef> = part.columns()[2..2 + n_keys].to_vec();
            let states = self.agg.split_states(&part.columns()[2 + n_keys..]);
            if self.slices {
                let windows = self.spec.windows_of_slice(unit.1);
                inner.open.extend(windows.into_iter().map(|(s, e)| (e, s)));
            }
            // A unit's rows may come in more than one batch (the state
            // files are read back in batches of a few thousand rows):
            // add them to what earlier batches restored, never replace it.
            if let Some(u) = inner.units.get_mut(&unit) {
                let UnitState::Live(g) = &mut u.state else {
                    unreachable!("restore makes only live units")
                };
                g.merge(&keys, &states, part.num_rows())?;
                u.snapshot = match u.snapshot.take() {
                    Some(prev) => Some(concat_batches(&prev.schema(), [&prev, &part])?),
                    None => Some(part),
                };
                continue;
            }
            let mut g = Groups::new(&self.agg)?;
            g.merge(&keys, &states, part.num_rows())?;
            inner.units.insert(
                unit,
                Unit {
                    state: UnitState::Live(g),
                    snapshot: Some(part),
                },
            );
        }
        Ok(())
    }
}
