//! The logical nodes of the incremental plan that DataFusion does not have.
//!
//! * [`WindowAssignNode`]: a window table function. Passes its input's rows
//!   through (under the call's placeholder name) and adds `window_start` and
//!   `window_end`. Rows older than the watermark are late and dropped here.
//! * [`WindowAggregateNode`]: an `Aggregate` whose `GROUP BY` holds a window's
//!   `window_start` and `window_end`. Keeps per-window partial aggregates as
//!   state and emits a window's rows once, when the watermark passes its end.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::{DFSchema, DFSchemaRef, Result, TableReference, plan_err};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};

/// A window: how event times map to windows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowSpec {
    /// Fixed-size, non-overlapping windows `[start, start + size)` with
    /// `start ≡ offset (mod size)`.
    Tumble {
        /// Window length, ms.
        size_ms: i64,
        /// Shift of window boundaries from the epoch, ms.
        offset_ms: i64,
    },
}

impl WindowSpec {
    /// The start of the window holding event time `t` (ms).
    pub fn tumble_start(t: i64, size_ms: i64, offset_ms: i64) -> i64 {
        t - (t - offset_ms).rem_euclid(size_ms)
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Tumble { size_ms, offset_ms } => {
                write!(f, "TUMBLE(size={})", fmt_ms(*size_ms))?;
                if *offset_ms != 0 {
                    write!(f, ", offset={}", fmt_ms(*offset_ms))?;
                }
                Ok(())
            }
        }
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

/// The type of `window_start` / `window_end`: milliseconds, in the time
/// column's time zone (Flink's `TIMESTAMP(3)`).
pub fn window_type(time_type: &DataType) -> DataType {
    let tz = match time_type {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    DataType::Timestamp(TimeUnit::Millisecond, tz)
}

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
    /// The source whose watermark decides lateness.
    pub source: String,
    /// The source's watermark delay, ms. Lateness is decided row by row:
    /// a row is late when its event time is older than the largest event
    /// time read before it (in this or any earlier epoch) minus the delay,
    /// so it does not depend on how the input was cut into epochs.
    pub delay_ms: i64,
    schema: DFSchemaRef,
}

impl WindowAssignNode {
    /// Builds the node; its schema is the input's columns, requalified, then
    /// `window_start` and `window_end`.
    pub fn try_new(
        input: LogicalPlan,
        spec: WindowSpec,
        time_column: String,
        qualifier: TableReference,
        source: String,
        delay_ms: i64,
    ) -> Result<Self> {
        let in_schema = input.schema();
        let Some((_, time_field)) = in_schema.qualified_field_with_unqualified_name(&time_column).ok() else {
            return plan_err!("window time column '{time_column}' is not in the window's input");
        };
        let wtype = window_type(time_field.data_type());
        let mut fields: Vec<Field> = in_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("window_start", wtype.clone(), false));
        fields.push(Field::new("window_end", wtype, false));
        let schema = DFSchema::try_from_qualified_schema(qualifier.clone(), &Schema::new(fields))?;
        Ok(Self {
            input,
            spec,
            time_column,
            qualifier,
            source,
            delay_ms,
            schema: Arc::new(schema),
        })
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
            "WindowAssign: {} on {} as {}, late if older than the watermark of {}",
            self.spec, self.time_column, self.qualifier, self.source
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        // The optimizer may have narrowed the input (projection pushdown):
        // the schema follows it.
        Self::try_new(
            inputs.swap_remove(0),
            self.spec.clone(),
            self.time_column.clone(),
            self.qualifier.clone(),
            self.source.clone(),
            self.delay_ms,
        )
    }

    /// Output column `i < n` is input column `i`; the window columns need the
    /// time column, which is always kept.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let n = self.input.schema().fields().len();
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

/// A windowed aggregate: `GROUP BY window_start, window_end, keys...`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WindowAggregateNode {
    /// The rows to aggregate.
    pub input: LogicalPlan,
    /// Grouping expressions, as in DataFusion's `Aggregate`.
    pub group_expr: Vec<Expr>,
    /// Aggregate expressions, as in DataFusion's `Aggregate`.
    pub aggr_expr: Vec<Expr>,
    /// The window the `window_start`/`window_end` keys come from.
    pub spec: WindowSpec,
    /// Which `group_expr` is `window_start`.
    pub window_start: usize,
    /// Which `group_expr` is `window_end`.
    pub window_end: usize,
    schema: DFSchemaRef,
}

impl WindowAggregateNode {
    /// Builds the node with the `Aggregate`'s schema.
    pub fn new(
        input: LogicalPlan,
        group_expr: Vec<Expr>,
        aggr_expr: Vec<Expr>,
        schema: DFSchemaRef,
        spec: WindowSpec,
        window_start: usize,
        window_end: usize,
    ) -> Self {
        Self {
            input,
            group_expr,
            aggr_expr,
            spec,
            window_start,
            window_end,
            schema,
        }
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
        let list = |v: &[Expr]| v.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        write!(
            f,
            "WindowAggregate: {} groupBy=[{}], aggr=[{}], emit=on window close",
            self.spec,
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
            window_start: self.window_start,
            window_end: self.window_end,
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
    fn durations_print_as_people_write_them() {
        assert_eq!(fmt_ms(10_000), "10s");
        assert_eq!(fmt_ms(120_000), "2m");
        assert_eq!(fmt_ms(1_500), "1500ms");
    }
}
