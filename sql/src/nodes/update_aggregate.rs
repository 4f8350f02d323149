//! An aggregate without a window, in update mode ([`UpdateAggregateNode`]).

use super::*;

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
