//! The logical nodes of the incremental plan that DataFusion does not have.
//!
//! * [`WindowAssignNode`]: a window table function. Passes its input's rows
//!   through (under the call's placeholder name) and adds `window_start`,
//!   `window_end` and `window_time` (`window_end` - 1 ms, Flink's time
//!   attribute of a window). Rows older than the watermark are late and
//!   dropped here.
//! * [`WindowAggregateNode`]: an `Aggregate` whose `GROUP BY` holds a window's
//!   `window_start` and `window_end`. Keeps per-window partial aggregates as
//!   state and emits a window's rows once, when the watermark passes its end.
//! * [`LateFilterNode`]: drops a source's late rows where it is read, for a
//!   window whose input drops rows before it (see there).
//! * [`UpdateAggregateNode`]: an `Aggregate` without a window. Keeps one
//!   partial aggregate per group and emits, each epoch, the groups that
//!   changed as a changelog (`op` = `+I`, `-U`, `+U`, `-D`).
//! * [`WindowTopNNode`]: `ROW_NUMBER()`, `RANK()` or `DENSE_RANK() OVER
//!   (PARTITION BY window_start, window_end, ... ORDER BY ...)`, usually
//!   with `rn <= N` above. Keeps each open window's rows (the top N per
//!   partition when N is known) and emits them ranked when it closes.
//!
//! # Slices
//!
//! HOP and CUMULATE windows overlap. Rather than copying a row into every
//! window it belongs to, a window aggregate over them keeps partial
//! aggregates per *slice* (Flink's name; a "pane" in the literature) and
//! merges a window's slices when it closes:
//!
//! ```text
//!  HOP(slide 2s, size 6s)   slices: |0-2|2-4|4-6|6-8|8-10|
//!                           window [0,6)  = |0-2|2-4|4-6|
//!                           window [2,8)  =     |2-4|4-6|6-8|
//!  CUMULATE(step 2s, size 6s): [0,2) = |0-2|, [0,4) = |0-2|2-4|, [0,6) = |0-2|2-4|4-6|
//! ```
//!
//! State then grows with the number of slices, not windows × size/slide.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::{DFSchema, DFSchemaRef, Result, TableReference, plan_err};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};

/// A window kind and its parameters (all in ms).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowSpec {
    /// Fixed-size, non-overlapping windows `[start, start + size)` with
    /// `start ≡ offset (mod size)`.
    Tumble {
        /// Window length.
        size_ms: i64,
        /// Shift of window boundaries from the epoch.
        offset_ms: i64,
    },
    /// Windows of `size` starting every `slide` (`start ≡ offset mod slide`);
    /// `size` is a multiple of `slide`.
    Hop {
        /// Distance between window starts.
        slide_ms: i64,
        /// Window length.
        size_ms: i64,
        /// Shift of window boundaries from the epoch.
        offset_ms: i64,
    },
    /// Windows growing by `step` from the start of each `size` period:
    /// `[s, s + step)`, `[s, s + 2 step)`, ..., `[s, s + size)`.
    Cumulate {
        /// Growth step.
        step_ms: i64,
        /// Largest window (the period); a multiple of `step`.
        size_ms: i64,
        /// Shift of period boundaries from the epoch.
        offset_ms: i64,
    },
    /// Per key, a window spans rows whose event times are less than `gap`
    /// apart: `[first row, last row + gap)`.
    Session {
        /// The inactivity gap that ends a session.
        gap_ms: i64,
    },
}

fn floor_to(t: i64, step: i64, offset: i64) -> i64 {
    t - (t - offset).rem_euclid(step)
}

impl WindowSpec {
    /// The start of the tumbling window holding event time `t`.
    pub fn tumble_start(t: i64, size_ms: i64, offset_ms: i64) -> i64 {
        floor_to(t, size_ms, offset_ms)
    }

    /// The slice length of sliced windows (`None` for sessions).
    pub fn slice_ms(&self) -> Option<i64> {
        match self {
            WindowSpec::Tumble { size_ms, .. } => Some(*size_ms),
            WindowSpec::Hop { slide_ms, .. } => Some(*slide_ms),
            WindowSpec::Cumulate { step_ms, .. } => Some(*step_ms),
            WindowSpec::Session { .. } => None,
        }
    }

    /// The start of the slice holding event time `t`.
    pub fn slice_start(&self, t: i64) -> i64 {
        match self {
            WindowSpec::Tumble { size_ms, offset_ms } => floor_to(t, *size_ms, *offset_ms),
            WindowSpec::Hop {
                slide_ms, offset_ms, ..
            } => floor_to(t, *slide_ms, *offset_ms),
            WindowSpec::Cumulate {
                step_ms, offset_ms, ..
            } => floor_to(t, *step_ms, *offset_ms),
            WindowSpec::Session { .. } => t,
        }
    }

    /// The windows (start, end) containing the slice that starts at `p`,
    /// in order of their end.
    pub fn windows_of_slice(&self, p: i64) -> Vec<(i64, i64)> {
        match self {
            WindowSpec::Tumble { size_ms, .. } => vec![(p, p + size_ms)],
            WindowSpec::Hop {
                slide_ms, size_ms, ..
            } => {
                let n = size_ms / slide_ms;
                (0..n)
                    .rev()
                    .map(|k| (p - k * slide_ms, p - k * slide_ms + size_ms))
                    .collect()
            }
            WindowSpec::Cumulate {
                step_ms,
                size_ms,
                offset_ms,
            } => {
                let base = floor_to(p, *size_ms, *offset_ms);
                let mut out = Vec::new();
                let mut end = p + step_ms;
                while end <= base + size_ms {
                    out.push((base, end));
                    end += step_ms;
                }
                out
            }
            WindowSpec::Session { gap_ms } => vec![(p, p + gap_ms)],
        }
    }

    /// The windows containing event time `t`, in order of their end.
    pub fn windows_of(&self, t: i64) -> Vec<(i64, i64)> {
        self.windows_of_slice(self.slice_start(t))
    }

    /// The starts of the slices making up window `[start, end)`.
    pub fn slices_of_window(&self, start: i64, end: i64) -> Vec<i64> {
        match self.slice_ms() {
            Some(step) => (start..end).step_by(step as usize).collect(),
            None => vec![start],
        }
    }

    /// When the slice starting at `p` is no longer needed: the end of the
    /// last window containing it.
    pub fn slice_retires_at(&self, p: i64) -> i64 {
        self.windows_of_slice(p).last().map_or(p, |w| w.1)
    }

    /// The largest window, ms (for sessions, unknown).
    pub fn max_size_ms(&self) -> Option<i64> {
        match self {
            WindowSpec::Tumble { size_ms, .. }
            | WindowSpec::Hop { size_ms, .. }
            | WindowSpec::Cumulate { size_ms, .. } => Some(*size_ms),
            WindowSpec::Session { .. } => None,
        }
    }

    /// Whether a window aggregate over it benefits from slices (windows overlap).
    pub fn overlaps(&self) -> bool {
        matches!(self, WindowSpec::Hop { .. } | WindowSpec::Cumulate { .. })
    }

    /// The SQL name of the window kind.
    pub fn kind(&self) -> &'static str {
        match self {
            WindowSpec::Tumble { .. } => "TUMBLE",
            WindowSpec::Hop { .. } => "HOP",
            WindowSpec::Cumulate { .. } => "CUMULATE",
            WindowSpec::Session { .. } => "SESSION",
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offset = |f: &mut fmt::Formatter<'_>, o: i64| {
            if o != 0 {
                write!(f, ", offset={}", fmt_ms(o))
            } else {
                Ok(())
            }
        };
        match self {
            WindowSpec::Tumble { size_ms, offset_ms } => {
                write!(f, "TUMBLE(size={}", fmt_ms(*size_ms))?;
                offset(f, *offset_ms)?;
            }
            WindowSpec::Hop {
                slide_ms,
                size_ms,
                offset_ms,
            } => {
                write!(f, "HOP(slide={}, size={}", fmt_ms(*slide_ms), fmt_ms(*size_ms))?;
                offset(f, *offset_ms)?;
            }
            WindowSpec::Cumulate {
                step_ms,
                size_ms,
                offset_ms,
            } => {
                write!(f, "CUMULATE(step={}, size={}", fmt_ms(*step_ms), fmt_ms(*size_ms))?;
                offset(f, *offset_ms)?;
            }
            WindowSpec::Session { gap_ms } => write!(f, "SESSION(gap={}", fmt_ms(*gap_ms))?,
        }
        f.write_str(")")
    }
}

/// `10s`, `1500ms`, `2m`: durations as people write them.
pub fn fmt_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
    for (n, unit) in UNITS {
        if ms != 0 && ms % n == 0 {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// The type of `window_start` / `window_end` / `window_time`: milliseconds,
/// in the time column's time zone (Flink's `TIMESTAMP(3)`).
pub fn window_type(time_type: &DataType) -> DataType {
    let tz = match time_type {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    DataType::Timestamp(TimeUnit::Millisecond, tz)
}

/// Where a window's notion of "late" and "complete" comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatermarkOrigin {
    /// The time column is a source's watermark column. A row is late when it
    /// is older than the source's running watermark when it arrives (the
    /// largest event time read before it, minus the delay), which does not
    /// depend on how the input was cut into epochs.
    Source {
        /// The source table.
        source: String,
        /// Its watermark delay, ms.
        delay_ms: i64,
    },
    /// The time column comes from several sources (a `UNION ALL`). A row is
    /// late when it is older than the lowest of their watermarks at the
    /// start of the epoch.
    Sources(Vec<String>),
    /// The time column is a window column of an upstream windowed aggregate,
    /// which emits each row once, when it is final: no row is late. The
    /// watermark is the pipeline's, `lag_ms` behind.
    Upstream {
        /// How far this stream's watermark trails the pipeline's, ms.
        lag_ms: i64,
    },
}

impl WatermarkOrigin {
    /// How far windows over this origin trail the pipeline's watermark, ms.
    pub fn lag_ms(&self) -> i64 {
        match self {
            WatermarkOrigin::Upstream { lag_ms } => *lag_ms,
            _ => 0,
        }
    }
}

impl fmt::Display for WatermarkOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatermarkOrigin::Source { source, delay_ms } => {
                write!(f, "source {source} (max event time - {})", fmt_ms(*delay_ms))
            }
            WatermarkOrigin::Sources(s) => write!(f, "lowest of sources {}", s.join(", ")),
            WatermarkOrigin::Upstream { lag_ms } => {
                write!(
                    f,
                    "upstream window results (pipeline watermark - {})",
                    fmt_ms(*lag_ms)
                )
            }
        }
    }
}

/// The three columns a window table function adds.
pub const WINDOW_COLUMNS: [&str; 3] = ["window_start", "window_end", "window_time"];

/// A window table function applied to its input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WindowAssignNode {
    /// The rows to window.
    pub input: LogicalPlan,
    /// The window.
    pub spec: WindowSpec,
    /// The event-time column's name in `input`.
    pub time_column: String,
    /// The name the output is known by (the call's placeholder).
    pub qualifier: TableReference,
    /// Where lateness and completeness come from.
    pub watermark: WatermarkOrigin,
    /// Output each row's *slice* in `window_start`/`window_end` instead of
    /// its windows (set when the consumer is a window aggregate that merges
    /// slices itself). Otherwise a row in several windows (HOP, CUMULATE) is
    /// output once per window.
    pub slices: bool,
    /// SESSION: the input columns that partition sessions.
    pub partition_by: Vec<String>,
    /// Where late rows go (`'late.policy' = 'sink'` on the source): a sink
    /// table that receives them with the window input's columns.
    pub late_sink: Option<String>,
    schema: DFSchemaRef,
}

impl WindowAssignNode {
    /// Builds the node; its schema is the input's columns, requalified, then
    /// `window_start`, `window_end` and `window_time`.
    pub fn try_new(
        input: LogicalPlan,
        spec: WindowSpec,
        time_column: String,
        qualifier: TableReference,
        watermark: WatermarkOrigin,
    ) -> Result<Self> {
        let in_schema = input.schema();
        let Some((_, time_field)) = in_schema.qualified_field_with_unqualified_name(&time_column).ok() else {
            return plan_err!("window time column '{time_column}' is not in the window's input");
        };
        let wtype = window_type(time_field.data_type());
        let mut fields: Vec<Field> = in_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for name in WINDOW_COLUMNS {
            if fields.iter().any(|f| f.name() == name) {
                return plan_err!(
                    "the window's input already has a column '{name}'; rename it (e.g. SELECT {name} AS inner_{name} ...) before windowing again"
                );
            }
            fields.push(Field::new(name, wtype.clone(), false));
        }
        let schema = DFSchema::try_from_qualified_schema(qualifier.clone(), &Schema::new(fields))?;
        Ok(Self {
            input,
            spec,
            time_column,
            qualifier,
            watermark,
            slices: false,
            partition_by: vec![],
            late_sink: None,
            schema: Arc::new(schema),
        })
    }

    /// The same node, with SESSION partition keys.
    pub fn with_partition_by(mut self, keys: Vec<String>) -> Self {
        self.partition_by = keys;
        self
    }

    /// The same node, sending late rows to a sink.
    pub fn with_late_sink(mut self, sink: Option<String>) -> Self {
        self.late_sink = sink;
        self
    }

    /// The same node, emitting slices.
    pub fn with_slices(mut self, slices: bool) -> Self {
        self.slices = slices;
        self
    }

    /// Index of the time column in the input.
    pub fn time_index(&self) -> Result<usize> {
        self.input
            .schema()
            .index_of_column_by_name(None, &self.time_column)
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(format!(
                    "window time column '{}' is not in the window's input",
                    self.time_column
                ))
            })
    }

    /// Index of the first window column (`window_start`) in the output.
    pub fn first_window_column(&self) -> usize {
        self.input.schema().fields().len()
    }
}

impl PartialOrd for WindowAssignNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.spec.partial_cmp(&other.spec) {
            Some(Ordering::Equal) => self.input.partial_cmp(&other.input),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for WindowAssignNode {
    fn name(&self) -> &str {
        "WindowAssign"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "WindowAssign: {} on {}{}, watermark from {}, late rows {}",
            self.spec,
            self.time_column,
            if self.slices { " (slices)" } else { "" },
            self.watermark,
            match &self.late_sink {
                Some(s) => format!("to sink {s}"),
                None => "dropped".into(),
            }
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        // The optimizer may have narrowed the input (projection pushdown):
        // the schema follows it.
        Ok(Self::try_new(
            inputs.swap_remove(0),
            self.spec.clone(),
            self.time_column.clone(),
            self.qualifier.clone(),
            self.watermark.clone(),
        )?
        .with_slices(self.slices)
        .with_partition_by(self.partition_by.clone())
        .with_late_sink(self.late_sink.clone()))
    }

    /// Output column `i < n` is input column `i`; the window columns need the
    /// time column, which is always kept.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let n = self.input.schema().fields().len();
        if self.late_sink.is_some() {
            // Late rows go out whole.
            return Some(vec![(0..n).collect()]);
        }
        let time = self.time_index().ok()?;
        let mut needed: Vec<usize> = output_columns
            .iter()
            .map(|&c| if c < n { c } else { time })
            .collect();
        needed.push(time);
        needed.sort_unstable();
        needed.dedup();
        Some(vec![needed])
    }
}

/// Drops a source's late rows where the source is read: a row is late when
/// older than the source's watermark just before it (the greatest event
/// time of the source's earlier rows, minus its delay), among all the
/// source's rows.
///
/// A window judges lateness itself when every row of the source reaches it.
/// When its input drops rows first (a view or subquery with a `WHERE`), the
/// rows it sees are not the ones the source's watermark is made of, and a
/// row's fate would depend on where an epoch begins; the planner then puts
/// this node on the source, so lateness is the source's, whatever the cuts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LateFilterNode {
    /// The source's scan.
    pub input: LogicalPlan,
    /// The source.
    pub source: String,
    /// Its watermark column.
    pub time_column: String,
    /// Its watermark delay, ms.
    pub delay_ms: i64,
}

impl LateFilterNode {
    /// The position of the watermark column in the input.
    pub fn time_index(&self) -> Result<usize> {
        match self
            .input
            .schema()
            .index_of_column_by_name(None, &self.time_column)
        {
            Some(i) => Ok(i),
            None => plan_err!("'{}' is not read from source '{}'", self.time_column, self.source),
        }
    }
}

impl PartialOrd for LateFilterNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.source.partial_cmp(&other.source) {
            Some(Ordering::Equal) => self.input.partial_cmp(&other.input),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for LateFilterNode {
    fn name(&self) -> &str {
        "LateFilter"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LateFilter: rows of {} older than its watermark ({} - {})",
            self.source,
            self.time_column,
            fmt_ms(self.delay_ms)
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        Ok(Self {
            input: inputs.swap_remove(0),
            ..self.clone()
        })
    }

    /// The output is the input; the watermark column is always read.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let time = self.time_index().ok()?;
        let mut needed = output_columns.to_vec();
        needed.push(time);
        needed.sort_unstable();
        needed.dedup();
        Some(vec![needed])
    }
}

/// Which window column a group expression is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowColumn {
    /// `window_start`.
    Start,
    /// `window_end`.
    End,
    /// `window_time` (`window_end` - 1 ms).
    Time,
}

impl WindowColumn {
    /// By column name.
    pub fn from_name(name: &str) -> Option<WindowColumn> {
        match name {
            "window_start" => Some(WindowColumn::Start),
            "window_end" => Some(WindowColumn::End),
            "window_time" => Some(WindowColumn::Time),
            _ => None,
        }
    }

    /// The value of this column for window `[start, end)`.
    pub fn value(self, start: i64, end: i64) -> i64 {
        match self {
            WindowColumn::Start => start,
            WindowColumn::End => end,
            WindowColumn::Time => end - 1,
        }
    }

    /// How far a stream timed by this column trails the watermark of the
    /// windows it came from, ms.
    pub fn lag_ms(self, spec: &WindowSpec) -> Option<i64> {
        match self {
            WindowColumn::End => Some(0),
            WindowColumn::Time => Some(1),
            WindowColumn::Start => spec.max_size_ms(),
        }
    }
}

/// A windowed aggregate: `GROUP BY window_start, window_end, keys...`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WindowAggregateNode {
    /// The rows to aggregate.
    pub input: LogicalPlan,
    /// Grouping expressions, as in DataFusion's `Aggregate`.
    pub group_expr: Vec<Expr>,
    /// Aggregate expressions, as in DataFusion's `Aggregate`.
    pub aggr_expr: Vec<Expr>,
    /// The window the keys come from.
    pub spec: WindowSpec,
    /// Which group expressions are window columns.
    pub window_columns: Vec<(usize, WindowColumn)>,
    /// For SESSION windows: the group expressions that partition sessions.
    pub session_keys: Vec<usize>,
    /// Input rows carry slices (the operator merges them into windows).
    pub slices: bool,
    /// This aggregate's watermark trails the pipeline's by this much, ms.
    pub watermark_lag_ms: i64,
    schema: DFSchemaRef,
}

impl WindowAggregateNode {
    /// Builds the node with the `Aggregate`'s schema.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input: LogicalPlan,
        group_expr: Vec<Expr>,
        aggr_expr: Vec<Expr>,
        schema: DFSchemaRef,
        spec: WindowSpec,
        window_columns: Vec<(usize, WindowColumn)>,
        session_keys: Vec<usize>,
        slices: bool,
        watermark_lag_ms: i64,
    ) -> Self {
        Self {
            input,
            group_expr,
            aggr_expr,
            spec,
            window_columns,
            session_keys,
            slices,
            watermark_lag_ms,
            schema,
        }
    }

    /// The group expression that is `col`, if any.
    pub fn window_column(&self, col: WindowColumn) -> Option<usize> {
        self.window_columns
            .iter()
            .find(|(_, c)| *c == col)
            .map(|(i, _)| *i)
    }
}

impl PartialOrd for WindowAggregateNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.group_expr.partial_cmp(&other.group_expr) {
            Some(Ordering::Equal) => match self.aggr_expr.partial_cmp(&other.aggr_expr) {
                Some(Ordering::Equal) => self.input.partial_cmp(&other.input),
                o => o,
            },
            o => o,
        }
    }
}

fn list(v: &[Expr]) -> String {
    v.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
}

impl UserDefinedLogicalNodeCore for WindowAggregateNode {
    fn name(&self) -> &str {
        "WindowAggregate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.group_expr.iter().chain(&self.aggr_expr).cloned().collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "WindowAggregate: {}{} groupBy=[{}], aggr=[{}], emit=on window close",
            self.spec,
            if self.slices { " over slices" } else { "" },
            list(&self.group_expr),
            list(&self.aggr_expr)
        )
    }

    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let aggr_expr = exprs.split_off(self.group_expr.len());
        Ok(Self {
            input: inputs.swap_remove(0),
            group_expr: exprs,
            aggr_expr,
            spec: self.spec.clone(),
            window_columns: self.window_columns.clone(),
            session_keys: self.session_keys.clone(),
            slices: self.slices,
            watermark_lag_ms: self.watermark_lag_ms,
            schema: Arc::clone(&self.schema),
        })
    }
}

/// The name of the changelog's operation column in the output.
pub const OP_COLUMN: &str = "op";

/// The operation column while planning (a user column may be called `op`).
pub const PLAN_OP_COLUMN: &str = "__weir_op";

/// An aggregate without a window, in update mode: emits the changed groups
/// of each epoch as a changelog. Its output is the `Aggregate`'s columns
/// followed by `op`; a `HAVING` is applied inside (`having`), so a group that
/// stops satisfying it is retracted with `-D`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpdateAggregateNode {
    /// The rows to aggregate.
    pub input: LogicalPlan,
    /// Grouping expressions.
    pub group_expr: Vec<Expr>,
    /// Aggregate expressions.
    pub aggr_expr: Vec<Expr>,
    /// A `HAVING` predicate over the aggregate's output columns.
    pub having: Option<Expr>,
    /// Groups not updated for this long (processing time, as recorded in
    /// the offsets log) are deleted, with `-D`.
    pub ttl_ms: Option<i64>,
    /// The `Aggregate`'s schema (without `op`).
    pub aggregate_schema: DFSchemaRef,
    schema: DFSchemaRef,
}

impl UpdateAggregateNode {
    /// Builds the node; `aggregate_schema` is the `Aggregate`'s output.
    pub fn try_new(
        input: LogicalPlan,
        group_expr: Vec<Expr>,
        aggr_expr: Vec<Expr>,
        aggregate_schema: DFSchemaRef,
        having: Option<Expr>,
        ttl_ms: Option<i64>,
    ) -> Result<Self> {
        let op = DFSchema::from_unqualified_fields(
            vec![Field::new(PLAN_OP_COLUMN, DataType::Utf8, false)].into(),
            Default::default(),
        )?;
        let mut schema = aggregate_schema.as_ref().clone();
        schema.merge(&op);
        Ok(Self {
            input,
            group_expr,
            aggr_expr,
            having,
            ttl_ms,
            aggregate_schema,
            schema: Arc::new(schema),
        })
    }
}

impl PartialOrd for UpdateAggregateNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.group_expr.partial_cmp(&other.group_expr) {
            Some(Ordering::Equal) => self.input.partial_cmp(&other.input),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for UpdateAggregateNode {
    fn name(&self) -> &str {
        "UpdateAggregate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        let mut v: Vec<Expr> = self.group_expr.iter().chain(&self.aggr_expr).cloned().collect();
        v.extend(self.having.clone());
        v
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "UpdateAggregate: groupBy=[{}], aggr=[{}]",
            list(&self.group_expr),
            list(&self.aggr_expr)
        )?;
        if let Some(h) = &self.having {
            write!(f, ", having={h}")?;
        }
        if let Some(t) = self.ttl_ms {
            write!(f, ", ttl={}", fmt_ms(t))?;
        }
        write!(f, ", emit=on update (changelog)")
    }

    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let having = if self.having.is_some() { exprs.pop() } else { None };
        let aggr_expr = exprs.split_off(self.group_expr.len());
        Ok(Self {
            input: inputs.swap_remove(0),
            group_expr: exprs,
            aggr_expr,
            having,
            ttl_ms: self.ttl_ms,
            aggregate_schema: Arc::clone(&self.aggregate_schema),
            schema: Arc::clone(&self.schema),
        })
    }
}

/// Which ranking function a window Top-N computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RankKind {
    /// `ROW_NUMBER()`: 1, 2, 3, ... (ties in arrival order).
    RowNumber,
    /// `RANK()`: ties share a rank; gaps follow.
    Rank,
    /// `DENSE_RANK()`: ties share a rank; no gaps.
    DenseRank,
}

/// Window Top-N: `ROW_NUMBER() OVER (PARTITION BY window_start, window_end,
/// ... ORDER BY ...)` (or `RANK`, `DENSE_RANK`), usually with `rn <= N`
/// above. Keeps each open window's rows (only the top N per partition when
/// N is known) and emits them ranked once the window closes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WindowTopNNode {
    /// The rows to rank.
    pub input: LogicalPlan,
    /// `PARTITION BY` expressions (including the window's start and end).
    pub partition_by: Vec<Expr>,
    /// `ORDER BY` expressions.
    pub order_by: Vec<datafusion::logical_expr::SortExpr>,
    /// The ranking function.
    pub rank: RankKind,
    /// Keep ranks up to this (from a `WHERE rn <= N` above).
    pub limit: Option<u64>,
    /// Which partition expression is `window_start`.
    pub window_start: usize,
    /// Which partition expression is `window_end`.
    pub window_end: usize,
    /// This operator's watermark trails the pipeline's by this much, ms.
    pub watermark_lag_ms: i64,
    schema: DFSchemaRef,
}

impl WindowTopNNode {
    /// Builds the node with the `Window` node's schema (input + rank).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        input: LogicalPlan,
        partition_by: Vec<Expr>,
        order_by: Vec<datafusion::logical_expr::SortExpr>,
        rank: RankKind,
        window_start: usize,
        window_end: usize,
        watermark_lag_ms: i64,
        schema: DFSchemaRef,
    ) -> Self {
        Self {
            input,
            partition_by,
            order_by,
            rank,
            limit: None,
            window_start,
            window_end,
            watermark_lag_ms,
            schema,
        }
    }

    /// The same node keeping ranks up to `limit`.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(self.limit.map_or(limit, |l| l.min(limit)));
        self
    }
}

impl PartialOrd for WindowTopNNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.partition_by.partial_cmp(&other.partition_by) {
            Some(Ordering::Equal) => self.input.partial_cmp(&other.input),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for WindowTopNNode {
    fn name(&self) -> &str {
        "WindowTopN"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.partition_by
            .iter()
            .cloned()
            .chain(self.order_by.iter().map(|s| s.expr.clone()))
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let order: Vec<String> = self.order_by.iter().map(|s| s.to_string()).collect();
        write!(
            f,
            "WindowTopN: {:?} partitionBy=[{}] orderBy=[{}]{}, emit=on window close",
            self.rank,
            list(&self.partition_by),
            order.join(", "),
            self.limit.map(|l| format!(" limit={l}")).unwrap_or_default()
        )
    }

    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let order = exprs.split_off(self.partition_by.len());
        let order_by = self
            .order_by
            .iter()
            .zip(order)
            .map(|(s, e)| datafusion::logical_expr::SortExpr::new(e, s.asc, s.nulls_first))
            .collect();
        Ok(Self {
            input: inputs.swap_remove(0),
            partition_by: exprs,
            order_by,
            rank: self.rank,
            limit: self.limit,
            window_start: self.window_start,
            window_end: self.window_end,
            watermark_lag_ms: self.watermark_lag_ms,
            schema: Arc::clone(&self.schema),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble_start_handles_offsets_and_negative_times() {
        assert_eq!(WindowSpec::tumble_start(12_345, 10_000, 0), 10_000);
        assert_eq!(WindowSpec::tumble_start(10_000, 10_000, 0), 10_000);
        assert_eq!(WindowSpec::tumble_start(9_999, 10_000, 0), 0);
        assert_eq!(WindowSpec::tumble_start(-1, 10_000, 0), -10_000);
        assert_eq!(WindowSpec::tumble_start(12_345, 10_000, 3_000), 3_000);
        assert_eq!(WindowSpec::tumble_start(13_000, 10_000, 3_000), 13_000);
    }

    #[test]
    fn hop_windows_and_slices() {
        let hop = WindowSpec::Hop {
            slide_ms: 2,
            size_ms: 6,
            offset_ms: 0,
        };
        assert_eq!(hop.windows_of(5), vec![(0, 6), (2, 8), (4, 10)]);
        assert_eq!(hop.slice_start(5), 4);
        assert_eq!(hop.slices_of_window(2, 8), vec![2, 4, 6]);
        assert_eq!(hop.slice_retires_at(4), 10);
        let off = WindowSpec::Hop {
            slide_ms: 2,
            size_ms: 4,
            offset_ms: 1,
        };
        assert_eq!(off.windows_of(4), vec![(1, 5), (3, 7)]);
    }

    #[test]
    fn cumulate_windows_and_slices() {
        let c = WindowSpec::Cumulate {
            step_ms: 2,
            size_ms: 6,
            offset_ms: 0,
        };
        assert_eq!(c.windows_of(3), vec![(0, 4), (0, 6)]);
        assert_eq!(c.windows_of(6), vec![(6, 8), (6, 10), (6, 12)]);
        assert_eq!(c.slices_of_window(0, 6), vec![0, 2, 4]);
        assert_eq!(c.slice_retires_at(2), 6);
    }

    #[test]
    fn every_window_of_a_time_contains_it() {
        for spec in [
            WindowSpec::Tumble {
                size_ms: 10,
                offset_ms: 3,
            },
            WindowSpec::Hop {
                slide_ms: 5,
                size_ms: 15,
                offset_ms: 2,
            },
            WindowSpec::Cumulate {
                step_ms: 5,
                size_ms: 20,
                offset_ms: 1,
            },
        ] {
            for t in -40..40 {
                for (s, e) in spec.windows_of(t) {
                    assert!(s <= t && t < e, "{spec} {t} in [{s},{e})");
                    let slices = spec.slices_of_window(s, e);
                    assert!(slices.contains(&spec.slice_start(t)), "{spec} {t}");
                }
            }
        }
    }

    #[test]
    fn durations_print_as_people_write_them() {
        assert_eq!(fmt_ms(10_000), "10s");
        assert_eq!(fmt_ms(120_000), "2m");
        assert_eq!(fmt_ms(1_500), "1500ms");
    }
}
