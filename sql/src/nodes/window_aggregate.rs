//! A windowed aggregate ([`WindowAggregateNode`]) and which window column a
//! group expression is ([`WindowColumn`]).

use super::*;

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
