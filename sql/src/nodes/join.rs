//! Joins of two streams ([`StreamJoinNode`]).

use datafusion::common::{JoinType, NullEquality};

use super::*;

/// A join of two streams: an interval join when the condition bounds the
/// two sides' watermarked times (`time`), a regular join otherwise.
///
/// The join condition itself (`on` and the whole `filter`, time bound
/// included) decides which rows match. The bound only tells the operator
/// how long a row may still find a partner: a left row is kept until the
/// watermark passes `t + hi`, a right row until it passes `t - lo` (Flink's
/// interval join). The bound may also take each end from another column of
/// the row, as in `b.t BETWEEN a.t AND a.expires` (see [`JoinTime`]). Rows of an outer side that found no partner by then are
/// emitted with NULLs. A regular join (an inner or semi join without a
/// bound) keeps its rows until `state.ttl` of processing time has passed
/// since they arrived, or forever.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamJoinNode {
    /// The left input.
    pub left: LogicalPlan,
    /// The right input.
    pub right: LogicalPlan,
    /// Equal keys, (left expression, right expression).
    pub on: Vec<(Expr, Expr)>,
    /// The rest of the join condition, the time bound included.
    pub filter: Expr,
    /// INNER, LEFT, RIGHT, FULL, or a semi or anti join of either side.
    pub join_type: JoinType,
    /// Whether NULL keys match each other (`IS NOT DISTINCT FROM`).
    pub null_equality: NullEquality,
    /// The time bound of an interval join; `None` for a regular join.
    pub time: Option<JoinTime>,
    /// A regular join's state TTL (processing time since a row arrived), ms.
    pub ttl_ms: Option<i64>,
    /// A join of signed rows (an input is a changelog): each input's last
    /// column is its rows' sign (+1, or -1 for a row taken back). An outer
    /// join counts a row's matches by their signs: its NULL-padded row is
    /// out while the count is 0.
    pub signed: bool,
    /// A side whose join keys are unique (see [`UniqueSide`]); only for an
    /// inner regular join of append-only inputs.
    pub unique: Option<UniqueSide>,
    schema: DFSchemaRef,
}

/// An inner regular join's side whose rows each have a key of their own:
/// its source declares `PRIMARY KEY (...) NOT ENFORCED` on columns among
/// the join keys, so at most one of its rows ever matches a row of the
/// other side. Then:
///
/// * a row of the other side that met its partner (a row with its key) is
///   not held: no later row can match it (in Nexmark q20, the bids whose
///   auction had arrived: nearly all of them);
/// * the filter over this side below the join (q20's `category = 10`) is
///   pulled into the join (`filter`): a row failing it is held too, but
///   pairs nothing, so that the other side's rows with its key are known
///   to have met their partner and are not held either. Without it, a bid
///   for an auction of another category would wait forever.
///
/// The output is the same as without: the other side's row pairs with
/// the one row with its key, when both have arrived, if that row passes
/// the filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UniqueSide {
    /// Whether it is the right input (else the left).
    pub right: bool,
    /// The filter pulled up from under this side (over its input's
    /// columns): its rows that fail it pair with nothing.
    pub filter: Option<Expr>,
}

/// The time bound of an interval join, `right.t - left.t BETWEEN lo AND hi`.
///
/// In general, `right.right_until - left.left >= lo` and `right.right -
/// left.left_until <= hi`, where `left` and `right` are the sides'
/// watermarked time columns and the `_until` columns are any time columns
/// of the same rows (the watermarked ones for Flink's interval join). Rows
/// still to come have `left >= W - left_lag` and `right >= W - right_lag`,
/// so a left row can still match while `left_until + hi >= W - right_lag`,
/// and a right row while `right_until - lo >= W - left_lag`. Nexmark's
/// `B.date_time BETWEEN A.date_time AND A.expires` keeps an auction until
/// the watermark passes its expiry and a bid until it passes the bid: no
/// later auction can be older than it (Flink runs it as a regular join,
/// keeping every row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd)]
pub struct JoinTime {
    /// Position of the left time column in the left input.
    pub left: usize,
    /// Position of the right time column in the right input.
    pub right: usize,
    /// The left column bounding from above the right times a left row can
    /// match (`left` for a constant-width interval).
    pub left_until: usize,
    /// The right column bounding from above the left times a right row
    /// can match (`right` for a constant-width interval).
    pub right_until: usize,
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
}

impl JoinTime {
    /// How far the output's copies of the (left, right) time columns can
    /// trail the pipeline's watermark `W`. A pair is emitted when its later
    /// row arrives: a left row arrives with `l.t >= W - left_lag`, and a
    /// right row arriving with `r.t >= W - right_lag` pairs with left rows
    /// down to `r.t - hi`; symmetrically for the right column.
    ///
    /// With a bound taken from another column (`left_until`), a right row
    /// pairs with left rows of any age: the left column's lag is then
    /// unbounded (`None`), and likewise for the right.
    pub fn output_lags(&self) -> (Option<i64>, Option<i64>) {
        (
            (self.left_until == self.left).then(|| {
                self.left_lag_ms
                    .max(self.right_lag_ms.saturating_add(self.hi_ms))
                    .max(0)
            }),
            (self.right_until == self.right).then(|| {
                self.right_lag_ms
                    .max(self.left_lag_ms.saturating_sub(self.lo_ms))
                    .max(0)
            }),
        )
    }

    /// Whether each end of the bound is the watermarked columns' own
    /// (Flink's interval join).
    pub fn constant_width(&self) -> bool {
        self.left_until == self.left && self.right_until == self.right
    }
}

impl StreamJoinNode {
    /// The node, with the `Join` node's output schema.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        left: LogicalPlan,
        right: LogicalPlan,
        on: Vec<(Expr, Expr)>,
        filter: Expr,
        join_type: JoinType,
        null_equality: NullEquality,
        time: Option<JoinTime>,
        ttl_ms: Option<i64>,
        schema: DFSchemaRef,
    ) -> Self {
        Self {
            left,
            right,
            on,
            filter,
            join_type,
            null_equality,
            time,
            ttl_ms,
            signed: false,
            unique: None,
            schema,
        }
    }

    /// The same join, with a unique side (see [`UniqueSide`]): `input` is
    /// that side's input with the filter pulled out of it.
    pub fn with_unique_side(mut self, unique: UniqueSide, input: LogicalPlan) -> Self {
        if unique.right {
            self.right = input;
        } else {
            self.left = input;
        }
        self.unique = Some(unique);
        self
    }

    /// The same join, of signed rows (see [`Self::signed`]).
    pub fn of_signed_rows(mut self) -> Self {
        self.signed = true;
        self
    }

    /// Where the output holds the (left, right) time columns of an interval
    /// join (a semi or anti join outputs one side only).
    pub fn output_time_positions(&self) -> (Option<usize>, Option<usize>) {
        let Some(t) = &self.time else {
            return (None, None);
        };
        match self.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => (Some(t.left), None),
            JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => (None, Some(t.right)),
            _ => (Some(t.left), Some(self.left.schema().fields().len() + t.right)),
        }
    }

    /// The time bound as people write it, for EXPLAIN and messages.
    pub fn bound_text(&self) -> String {
        match &self.time {
            Some(t) if t.constant_width() => {
                let l = self.left.schema().field(t.left).name();
                let r = self.right.schema().field(t.right).name();
                format!("{r} - {l} in [{}, {}]", signed_ms(t.lo_ms), signed_ms(t.hi_ms))
            }
            Some(t) => {
                let name = |p: &LogicalPlan, i: usize| p.schema().field(i).name().clone();
                format!(
                    "{} - {} >= {} and {} - {} <= {}",
                    name(&self.right, t.right_until),
                    name(&self.left, t.left),
                    signed_ms(t.lo_ms),
                    name(&self.right, t.right),
                    name(&self.left, t.left_until),
                    signed_ms(t.hi_ms)
                )
            }
            None => "no time bound".into(),
        }
    }
}

fn signed_ms(ms: i64) -> String {
    if ms < 0 {
        format!("-{}", fmt_ms(ms.saturating_neg()))
    } else {
        fmt_ms(ms)
    }
}

impl PartialOrd for StreamJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.left.partial_cmp(&other.left) {
            Some(Ordering::Equal) => self.right.partial_cmp(&other.right),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for StreamJoinNode {
    fn name(&self) -> &str {
        if self.time.is_some() {
            "IntervalJoin"
        } else {
            "RegularJoin"
        }
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
        if let Some(f) = self.unique.as_ref().and_then(|u| u.filter.as_ref()) {
            v.push(f.clone());
        }
        v
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        // `IS NOT DISTINCT FROM` keys (NULL equals NULL) read as written.
        let eq = match self.null_equality {
            NullEquality::NullEqualsNull => "IS NOT DISTINCT FROM",
            NullEquality::NullEqualsNothing => "=",
        };
        let on: Vec<String> = self.on.iter().map(|(l, r)| format!("{l} {eq} {r}")).collect();
        write!(f, "{}: {} on=[{}]", self.name(), self.join_type, on.join(", "))?;
        if !matches!(
            self.filter,
            Expr::Literal(datafusion::common::ScalarValue::Boolean(Some(true)), _)
        ) {
            write!(f, " filter={}", self.filter)?;
        }
        if let Some(u) = &self.unique {
            write!(
                f,
                ", {} keys unique (PRIMARY KEY NOT ENFORCED): {} rows that met theirs are not held",
                if u.right { "right" } else { "left" },
                if u.right { "left" } else { "right" },
            )?;
            if let Some(p) = &u.filter {
                write!(
                    f,
                    ", {} rows failing {p} pair with nothing",
                    if u.right { "right" } else { "left" }
                )?;
            }
        }
        write!(f, ", ")?;
        match (&self.time, self.ttl_ms) {
            (Some(t), _) => {
                write!(f, "{}, state evicted by the watermark", self.bound_text())?;
                for (side, lag) in [("left", t.left_lag_ms), ("right", t.right_lag_ms)] {
                    if lag > 0 {
                        write!(f, " ({side} times trail it by {})", fmt_ms(lag))?;
                    }
                }
                Ok(())
            }
            (None, Some(ttl)) => write!(f, "no time bound, state kept for state.ttl = {}", fmt_ms(ttl)),
            (None, None) => write!(f, "no time bound and no state.ttl: state grows without bound"),
        }
    }

    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let pulled = self.unique.as_ref().is_some_and(|u| u.filter.is_some());
        if inputs.len() != 2 || exprs.len() != self.on.len() * 2 + 1 + usize::from(pulled) {
            return plan_err!("a stream join takes two inputs and its own expressions");
        }
        let unique = match &self.unique {
            Some(u) if pulled => Some(UniqueSide {
                right: u.right,
                filter: exprs.pop(),
            }),
            u => u.clone(),
        };
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
            unique,
            ..self.clone()
        })
    }
}
