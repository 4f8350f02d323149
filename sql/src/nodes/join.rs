//! Joins of two streams ([`IntervalJoinNode`]).

use datafusion::common::{JoinType, NullEquality};

use super::*;

/// An interval join (Flink's form): two streams joined on equal keys and a
/// time bound between their watermarked time columns,
/// `right.t - left.t BETWEEN lo AND hi`.
///
/// The join condition itself (`on` and the whole `filter`, time bound
/// included) decides which rows match; `lo` and `hi` only tell the operator
/// how long a row may still find a partner: a left row is kept until the
/// watermark passes `t + hi`, a right row until it passes `t - lo`. Rows of
/// an outer side that found no partner by then are emitted with NULLs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IntervalJoinNode {
    /// The left input.
    pub left: LogicalPlan,
    /// The right input.
    pub right: LogicalPlan,
    /// Equal keys, (left expression, right expression).
    pub on: Vec<(Expr, Expr)>,
    /// The rest of the join condition, the time bound included.
    pub filter: Expr,
    /// INNER, LEFT, RIGHT or FULL.
    pub join_type: JoinType,
    /// Whether NULL keys match each other (`IS NOT DISTINCT FROM`).
    pub null_equality: NullEquality,
    /// Position of the left time column in the left input.
    pub left_time: usize,
    /// Position of the right time column in the right input.
    pub right_time: usize,
    /// Lowest `right.t - left.t` that can match, ms.
    pub lo_ms: i64,
    /// Highest `right.t - left.t` that can match, ms.
    pub hi_ms: i64,
    /// How far the left time column of rows still to come can trail the
    /// pipeline's watermark, ms (0 for a source's watermark column; the
    /// lag of a window column of an upstream window aggregate).
    pub left_lag_ms: i64,
    /// The same for the right time column.
    pub right_lag_ms: i64,
    schema: DFSchemaRef,
}

impl IntervalJoinNode {
    /// The node, with the `Join` node's output schema (left columns, then
    /// right columns).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        left: LogicalPlan,
        right: LogicalPlan,
        on: Vec<(Expr, Expr)>,
        filter: Expr,
        join_type: JoinType,
        null_equality: NullEquality,
        (left_time, right_time): (usize, usize),
        (lo_ms, hi_ms): (i64, i64),
        (left_lag_ms, right_lag_ms): (i64, i64),
        schema: DFSchemaRef,
    ) -> Self {
        Self {
            left,
            right,
            on,
            filter,
            join_type,
            null_equality,
            left_time,
            right_time,
            lo_ms,
            hi_ms,
            left_lag_ms,
            right_lag_ms,
            schema,
        }
    }

    /// How far the output's copy of the left time column can trail the
    /// pipeline's watermark, ms (see [`output_time_lags`]).
    pub fn left_time_lag_ms(&self) -> i64 {
        output_time_lags(self.lo_ms, self.hi_ms, self.left_lag_ms, self.right_lag_ms).0
    }

    /// The same for the right time column.
    pub fn right_time_lag_ms(&self) -> i64 {
        output_time_lags(self.lo_ms, self.hi_ms, self.left_lag_ms, self.right_lag_ms).1
    }

    /// The time bound as people write it, for EXPLAIN and messages.
    pub fn bound_text(&self) -> String {
        let l = self.left.schema().field(self.left_time).name();
        let r = self.right.schema().field(self.right_time).name();
        format!(
            "{r} - {l} in [{}, {}]",
            signed_ms(self.lo_ms),
            signed_ms(self.hi_ms)
        )
    }
}

/// How far an interval join's output time columns (left, right) can trail
/// the pipeline's watermark `W`, given the bound `right.t - left.t in [lo,
/// hi]` and the inputs' own lags. A pair is emitted when its later row
/// arrives: a left row arrives with `l.t >= W - left_lag`, and a right row
/// arriving with `r.t >= W - right_lag` pairs with left rows down to
/// `r.t - hi`; symmetrically for the right column.
pub fn output_time_lags(lo_ms: i64, hi_ms: i64, left_lag_ms: i64, right_lag_ms: i64) -> (i64, i64) {
    (
        left_lag_ms.max(right_lag_ms.saturating_add(hi_ms)).max(0),
        right_lag_ms.max(left_lag_ms.saturating_sub(lo_ms)).max(0),
    )
}

fn signed_ms(ms: i64) -> String {
    if ms < 0 {
        format!("-{}", fmt_ms(ms.saturating_neg()))
    } else {
        fmt_ms(ms)
    }
}

impl PartialOrd for IntervalJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.left.partial_cmp(&other.left) {
            Some(Ordering::Equal) => self.right.partial_cmp(&other.right),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for IntervalJoinNode {
    fn name(&self) -> &str {
        "IntervalJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        let mut v: Vec<Expr> = self.on.iter().flat_map(|(l, r)| [l.clone(), r.clone()]).collect();
        v.push(self.filter.clone());
        v
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let on: Vec<String> = self.on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
        write!(
            f,
            "IntervalJoin: {} on=[{}] filter={}, {}, state evicted by the watermark",
            self.join_type,
            on.join(", "),
            self.filter,
            self.bound_text()
        )?;
        for (side, lag) in [("left", self.left_lag_ms), ("right", self.right_lag_ms)] {
            if lag > 0 {
                write!(f, " ({side} times trail it by {})", fmt_ms(lag))?;
            }
        }
        Ok(())
    }

    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        if inputs.len() != 2 || exprs.len() != self.on.len() * 2 + 1 {
            return plan_err!("IntervalJoin takes two inputs and its own expressions");
        }
        let filter = exprs.pop().unwrap_or_else(|| self.filter.clone());
        let mut on = Vec::with_capacity(self.on.len());
        let mut it = exprs.into_iter();
        while let (Some(l), Some(r)) = (it.next(), it.next()) {
            on.push((l, r));
        }
        let right = inputs.pop().unwrap_or_else(|| self.right.clone());
        let left = inputs.pop().unwrap_or_else(|| self.left.clone());
        Ok(Self {
            left,
            right,
            on,
            filter,
            ..self.clone()
        })
    }
}
