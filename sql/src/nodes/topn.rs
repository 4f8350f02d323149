//! Ranking within windows ([`WindowTopNNode`]).

use super::*;

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

/// Top-N outside windows (and deduplication, its N = 1 case):
/// `ROW_NUMBER() / RANK() / DENSE_RANK() OVER (PARTITION BY k ... ORDER BY
/// ...)` over an append-only stream, with `rn <= N` (or `rn = 1`) above.
/// Keeps the top N rows of each partition and emits, each epoch, how they
/// changed as a changelog: `+I` for a row entering, `-D` for one pushed out,
/// `-U`/`+U` for a row whose rank moved. Its output is the `Window` node's
/// columns (the input's, then the rank) followed by the operation column.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamTopNNode {
    /// The rows to rank.
    pub input: LogicalPlan,
    /// `PARTITION BY` expressions (none: one ranking of the whole stream).
    pub partition_by: Vec<Expr>,
    /// `ORDER BY` expressions.
    pub order_by: Vec<datafusion::logical_expr::SortExpr>,
    /// The ranking function.
    pub rank: RankKind,
    /// Keep ranks up to this (from a `WHERE rn <= N` above); required.
    pub limit: Option<u64>,
    /// Partitions not changed for this long (processing time, recorded in
    /// the offsets log) are forgotten, as Flink's state TTL does.
    pub ttl_ms: Option<i64>,
    /// The `Window` node's schema (input, then rank).
    pub window_schema: DFSchemaRef,
    /// Keep-first deduplication on event time (`ROW_NUMBER() OVER
    /// (PARTITION BY k ORDER BY t) = 1`, `t` a watermarked time column, at
    /// this position of the input): append-only, each key's first row
    /// emitted once, when the watermark passes its time (no earlier row can
    /// arrive then). The output has no operation column.
    pub first_on_time: Option<usize>,
    schema: DFSchemaRef,
}

impl StreamTopNNode {
    /// The same node as an append-only keep-first deduplication on the
    /// event time at `time` of `input` (the input with its late rows
    /// dropped).
    pub fn keep_first_on_time(mut self, input: LogicalPlan, time: usize) -> Self {
        self.input = input;
        self.first_on_time = Some(time);
        self.limit = Some(1);
        self.schema = Arc::clone(&self.window_schema);
        self
    }

    /// Builds the node from the `Window` node's parts and schema.
    pub fn try_new(
        input: LogicalPlan,
        partition_by: Vec<Expr>,
        order_by: Vec<datafusion::logical_expr::SortExpr>,
        rank: RankKind,
        ttl_ms: Option<i64>,
        window_schema: DFSchemaRef,
    ) -> Result<Self> {
        let op = DFSchema::from_unqualified_fields(
            vec![Field::new(PLAN_OP_COLUMN, DataType::Utf8, false)].into(),
            Default::default(),
        )?;
        let mut schema = window_schema.as_ref().clone();
        schema.merge(&op);
        Ok(Self {
            input,
            partition_by,
            order_by,
            rank,
            limit: None,
            ttl_ms,
            window_schema,
            first_on_time: None,
            schema: Arc::new(schema),
        })
    }

    /// The same node keeping ranks up to `limit`.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(self.limit.map_or(limit, |l| l.min(limit)));
        self
    }
}

impl PartialOrd for StreamTopNNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.partition_by.partial_cmp(&other.partition_by) {
            Some(Ordering::Equal) => self.input.partial_cmp(&other.input),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for StreamTopNNode {
    fn name(&self) -> &str {
        "TopN"
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
            "TopN: {:?} partitionBy=[{}] orderBy=[{}]{}{}, emit={}",
            self.rank,
            list(&self.partition_by),
            order.join(", "),
            self.limit.map(|l| format!(" limit={l}")).unwrap_or_default(),
            self.ttl_ms.map(|t| format!(" ttl={t}ms")).unwrap_or_default(),
            if self.first_on_time.is_some() {
                "append-only (each key's first row, once the watermark passes its time)"
            } else {
                "on update (changelog)"
            }
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
            ttl_ms: self.ttl_ms,
            window_schema: Arc::clone(&self.window_schema),
            first_on_time: self.first_on_time,
            schema: Arc::clone(&self.schema),
        })
    }
}
