//! The window table function ([`WindowAssignNode`]) and the filter that drops
//! a source's late rows where it is read ([`LateFilterNode`]).

use super::*;

/// The three columns a window table function adds.
pub const WINDOW_COLUMNS: [&str; 3] = ["window_start", "window_end", "window_time"];

/// The column a late sink adds to each late row: the sink table of the
/// query that judged it late (the engine's late sinks write it).
pub const LATE_FOR: &str = "weir_late_for";

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
