//! Joins of streams: which joins can run incrementally, and their time
//! bounds.
//!
//! An interval join is a join whose condition bounds the difference of the
//! two sides' watermarked time columns from below and above, e.g.
//! `b.t BETWEEN a.t - INTERVAL '5' SECOND AND a.t + INTERVAL '10' SECOND`.
//! The bound is found among the condition's conjuncts, each a comparison of
//! `column [± interval]` on one side with the same on the other (BETWEEN,
//! `<`, `<=`, `>`, `>=`, `=`), and normalized to
//! `right.t - left.t BETWEEN lo AND hi`.

use datafusion::arrow::datatypes::TimeUnit;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Join, JoinType, Operator};

use super::*;
use crate::nodes::{JoinTime, StreamJoinNode, UniqueSide};

/// A time bound of a join: `right.t - left.t` in `[lo, hi]`, ms (either
/// end may be missing). It only decides how long rows are held (the join's
/// condition decides matches), so it errs wide, never narrow: a bound finer
/// than a millisecond is rounded outward (`INTERVAL '0.0005' SECOND` holds
/// rows for up to 1 ms), and a cast to a coarser unit widens it by that
/// unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TimeBound {
    /// Position of the time column in the left input.
    pub(super) left: usize,
    /// Position of the time column in the right input.
    pub(super) right: usize,
    pub(super) lo_ms: Option<i64>,
    pub(super) hi_ms: Option<i64>,
}

/// The time bounds in a join's condition, one per pair of columns compared,
/// in the order first met.
pub(super) fn time_bounds(j: &Join) -> Vec<TimeBound> {
    let mut bounds: Vec<TimeBound> = Vec::new();
    // Equal times may have become keys (`a.t = b.t`).
    let mut comparisons: Vec<(Expr, Operator, Expr)> =
        j.on.iter()
            .map(|(l, r)| (l.clone(), Operator::Eq, r.clone()))
            .collect();
    let conjuncts = match &j.filter {
        Some(f) => datafusion::logical_expr::utils::split_conjunction(f),
        None => vec![],
    };
    for c in conjuncts {
        match c {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                comparisons.push((left.as_ref().clone(), *op, right.as_ref().clone()))
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                comparisons.push((expr.as_ref().clone(), Operator::GtEq, low.as_ref().clone()));
                comparisons.push((expr.as_ref().clone(), Operator::LtEq, high.as_ref().clone()));
            }
            _ => {}
        }
    }
    let (ls, rs) = (j.left.schema(), j.right.schema());
    for (a, op, b) in comparisons {
        if !matches!(
            op,
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq | Operator::Eq
        ) {
            continue;
        }
        let (Some((ca, oa, cast_a)), Some((cb, ob, cast_b))) = (time_term(&a), time_term(&b)) else {
            continue;
        };
        // (right.t + cr) OP (left.t + cl)  =>  right.t - left.t OP cl - cr
        let (left_col, cl, right_col, cr, op) = match (
            ls.index_of_column(&ca).ok(),
            rs.index_of_column(&cb).ok(),
            rs.index_of_column(&ca).ok(),
            ls.index_of_column(&cb).ok(),
        ) {
            (Some(l), Some(r), _, _) => (l, oa, r, ob, op.swap().unwrap_or(op)),
            (_, _, Some(r), Some(l)) => (l, ob, r, oa, op),
            _ => continue,
        };
        // Only times bound rows in time (`a.k = b.k` is a key, not a bound).
        let is_time =
            |f: &datafusion::arrow::datatypes::Field| matches!(f.data_type(), DataType::Timestamp(..));
        if !is_time(ls.field(left_col)) || !is_time(rs.field(right_col)) {
            continue;
        }
        // A cast to a coarser unit than its column's (CAST(t AS
        // TIMESTAMP(0))) moves a time by up to that unit, either way (it
        // cuts toward zero): the bound widens by as much.
        let unit_of = |c: &Column| {
            let f = match ls.index_of_column(c) {
                Ok(i) => ls.field(i),
                Err(_) => rs.field(rs.index_of_column(c).ok()?),
            };
            match f.data_type() {
                DataType::Timestamp(u, _) => Some(*u),
                _ => None,
            }
        };
        let slack = |col: &Column, cast: Option<TimeUnit>| match (cast, unit_of(col)) {
            (Some(to), Some(from)) if unit_ns(to) > unit_ns(from) => unit_ns(to),
            _ => 0,
        };
        let slack = slack(&ca, cast_a) + slack(&cb, cast_b);
        // Rounded outward to ms. Held rows' finer times are floored to
        // their ms, which loses nothing: an on-time row is at or after
        // the (whole ms) watermark, so `t >= W - hi` with `hi` a whole ms
        // holds for `floor(t)` too.
        let v = cl - cr;
        let ms = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        let lo = ms((v - slack).div_euclid(NS_PER_MS));
        let hi = ms(-((-v - slack).div_euclid(NS_PER_MS)));
        let i = match bounds
            .iter()
            .position(|b| b.left == left_col && b.right == right_col)
        {
            Some(i) => i,
            None => {
                bounds.push(TimeBound {
                    left: left_col,
                    right: right_col,
                    lo_ms: None,
                    hi_ms: None,
                });
                bounds.len() - 1
            }
        };
        let b = &mut bounds[i];
        // `<` and `>` are kept as `<=` and `>=`: the bound only decides how
        // long rows are kept (the condition itself decides matches), so
        // erring by the unit keeps a row a moment longer, never too short.
        if matches!(op, Operator::GtEq | Operator::Gt | Operator::Eq) {
            b.lo_ms = Some(b.lo_ms.map_or(lo, |l| l.max(lo)));
        }
        if matches!(op, Operator::LtEq | Operator::Lt | Operator::Eq) {
            b.hi_ms = Some(b.hi_ms.map_or(hi, |h| h.min(hi)));
        }
    }
    bounds
}

const NS_PER_MS: i128 = 1_000_000;

/// A time unit's length in ns.
fn unit_ns(u: TimeUnit) -> i128 {
    match u {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// `column`, `column + interval`, `column - interval` (the column perhaps
/// cast to a timestamp): the column, the offset in ns (exact: i128 holds
/// any sum of intervals a query can write), and the coarsest unit it was
/// cast to, if any.
fn time_term(e: &Expr) -> Option<(Column, i128, Option<TimeUnit>)> {
    let coarsest = |a: Option<TimeUnit>, b: TimeUnit| {
        Some(a.map_or(b, |a| if unit_ns(a) >= unit_ns(b) { a } else { b }))
    };
    match e {
        Expr::Column(c) => Some((c.clone(), 0, None)),
        Expr::Cast(datafusion::logical_expr::Cast { expr, field })
        | Expr::TryCast(datafusion::logical_expr::TryCast { expr, field }) => match field.data_type() {
            DataType::Timestamp(u, _) => {
                let (c, o, cast) = time_term(expr)?;
                Some((c, o, coarsest(cast, *u)))
            }
            _ => None,
        },
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Plus => match (time_term(left), interval_literal_ns(right)) {
                (Some((c, o, cast)), Some(ns)) => Some((c, o + ns, cast)),
                _ => {
                    let (c, o, cast) = time_term(right)?;
                    Some((c, o + interval_literal_ns(left)?, cast))
                }
            },
            Operator::Minus => {
                let (c, o, cast) = time_term(left)?;
                Some((c, o - interval_literal_ns(right)?, cast))
            }
            _ => None,
        },
        _ => None,
    }
}

/// An interval literal of fixed length (days and smaller), in ns.
fn interval_literal_ns(e: &Expr) -> Option<i128> {
    const NS_PER_DAY: i128 = 86_400 * 1_000_000_000;
    match e {
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            Some(i128::from(v.days) * NS_PER_DAY + i128::from(v.milliseconds) * NS_PER_MS)
        }
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            Some(i128::from(v.days) * NS_PER_DAY + i128::from(v.nanoseconds))
        }
        Expr::Cast(c) => interval_literal_ns(&c.expr),
        _ => None,
    }
}

impl StreamPlanner {
    /// The bound an interval join keeps its rows by (lags still 0): a pair
    /// of time columns bounded from both ends (Flink's interval join), or
    /// else a lower end on a watermarked left column and an upper end on a
    /// watermarked right column, each against any time column of the
    /// other side (`b.t BETWEEN a.t AND a.expires`; see [`JoinTime`]).
    /// `None`: a regular join.
    fn interval_bound(&self, j: &Join, bounds: &[TimeBound]) -> Option<JoinTime> {
        let (lower, upper) = match bounds.iter().find(|b| b.lo_ms.is_some() && b.hi_ms.is_some()) {
            Some(b) => (b, b),
            None => (
                bounds
                    .iter()
                    .find(|b| b.lo_ms.is_some() && self.trace_time(&j.left, b.left).is_some())?,
                bounds
                    .iter()
                    .find(|b| b.hi_ms.is_some() && self.trace_time(&j.right, b.right).is_some())?,
            ),
        };
        Some(JoinTime {
            left: lower.left,
            right: upper.right,
            left_until: upper.left,
            right_until: lower.right,
            lo_ms: lower.lo_ms.unwrap_or(0),
            hi_ms: upper.hi_ms.unwrap_or(0),
            left_lag_ms: 0,
            right_lag_ms: 0,
        })
    }

    /// A join of two streams, as an interval join, or refused with what to
    /// write instead.
    pub(super) fn stream_join(&self, j: Join, ttl_ms: Option<i64>) -> Result<LogicalPlan> {
        if self.is_static(&j.left) || self.is_static(&j.right) {
            return self.lookup_join(j);
        }
        if matches!(j.join_type, JoinType::LeftMark | JoinType::RightMark) {
            return Err(Error::Unsupported(
                "IN or EXISTS subqueries combined with OR are not supported on streams; \
                 write them as separate conditions joined by AND, or as a UNION ALL"
                    .into(),
            ));
        }
        if j.null_aware {
            return Err(Error::Unsupported(
                "NOT IN over a stream: a NULL arriving later would change every earlier answer; \
                 write NOT EXISTS (SELECT ... WHERE a.k = b.k ...) instead"
                    .into(),
            ));
        }
        if is_changelog(&j.left) || is_changelog(&j.right) {
            return self.join_of_changelogs(j, ttl_ms);
        }
        let filter = j
            .filter
            .clone()
            .unwrap_or(Expr::Literal(ScalarValue::Boolean(Some(true)), None));
        let bounds = time_bounds(&j);
        let Some(bound) = self.interval_bound(&j, &bounds) else {
            // No bound on both sides: a regular join. Inner and semi joins
            // of append-only streams are append-only too (a match, once
            // emitted, stays true). Outer and anti joins emit a row without
            // a match at once and take it back (-D) when a match arrives:
            // their output is a changelog, as in Flink.
            let retracts = matches!(
                j.join_type,
                JoinType::Left | JoinType::Right | JoinType::Full | JoinType::LeftAnti | JoinType::RightAnti
            );
            if retracts
                || matches!(
                    j.join_type,
                    JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
                )
            {
                let schema = if retracts {
                    let op = datafusion::common::DFSchema::from_unqualified_fields(
                        vec![datafusion::arrow::datatypes::Field::new(
                            crate::nodes::PLAN_OP_COLUMN,
                            DataType::Utf8,
                            false,
                        )]
                        .into(),
                        Default::default(),
                    )?;
                    let mut schema = j.schema.as_ref().clone();
                    schema.merge(&op);
                    Arc::new(schema)
                } else {
                    Arc::clone(&j.schema)
                };
                let mut node = StreamJoinNode::new(
                    j.left.as_ref().clone(),
                    j.right.as_ref().clone(),
                    j.on.clone(),
                    filter,
                    j.join_type,
                    j.null_equality,
                    None,
                    ttl_ms,
                    schema,
                );
                if j.join_type == JoinType::Inner
                    && let Some((unique, input)) = unique_side(&j)?
                {
                    node = node.with_unique_side(unique, input);
                }
                return Ok(LogicalPlan::Extension(Extension { node: Arc::new(node) }));
            }
            let fix = match bounds.first() {
                Some(b) => {
                    let l = Column::from(j.left.schema().qualified_field(b.left));
                    let r = Column::from(j.right.schema().qualified_field(b.right));
                    format!(
                        "its condition bounds {r} - {l} only {}; write {r} BETWEEN {l} - INTERVAL ... AND {l} + INTERVAL ...",
                        if b.lo_ms.is_some() { "from below" } else { "from above" }
                    )
                }
                None => "add a time bound between the two sides' watermarked time columns (an interval join, \
                         e.g. ON a.k = b.k AND b.t BETWEEN a.t - INTERVAL '5' SECOND AND a.t + INTERVAL '5' SECOND)"
                    .into(),
            };
            return Err(Error::Unsupported(format!(
                "{} joins of streams without a time bound are not supported yet (a row emitted without a match \
                 would have to be taken back when one arrives, an updating join); {fix}",
                j.join_type
            )));
        };
        let (left, left_lag) = self.watermarked_side(j.left.as_ref().clone(), bound.left)?;
        let (right, right_lag) = self.watermarked_side(j.right.as_ref().clone(), bound.right)?;
        let time = JoinTime {
            left_lag_ms: left_lag,
            right_lag_ms: right_lag,
            ..bound
        };
        let node = StreamJoinNode::new(
            left,
            right,
            j.on.clone(),
            filter,
            j.join_type,
            j.null_equality,
            Some(time),
            None,
            Arc::clone(&j.schema),
        );
        Ok(LogicalPlan::Extension(Extension { node: Arc::new(node) }))
    }

    /// An inner or outer join whose input is a changelog (an aggregate's
    /// rows, an updating join's): a regular join of *signed* rows (+1 for `+I`/`+U`,
    /// -1 for `-U`/`-D`; an append-only side's rows are +1). A pair's sign
    /// is the product of its rows' (a retracted row takes back every pair
    /// it made, as Flink's retracting join does), and each epoch's signed
    /// pairs are netted into `-D`/`+I` rows ([`ChangelogNetNode`]). Each
    /// side keeps every row it received, retractions too (a retraction is
    /// a row of sign -1: it cancels its row in every later match), unless
    /// `'state.ttl'` drops them. An outer join's row counts its matches by
    /// sign, and its NULL-padded row is out while the count is 0 (emitted
    /// `+I` or taken back `-D` by the operator; the sign multiplies that in).
    fn join_of_changelogs(&self, j: Join, ttl_ms: Option<i64>) -> Result<LogicalPlan> {
        use crate::nodes::{ChangelogNetNode, PLAN_OP_COLUMN, SIGN_COLUMN};
        let outer = matches!(j.join_type, JoinType::Left | JoinType::Right | JoinType::Full);
        // Semi and anti joins (`IN`, `EXISTS`, `NOT EXISTS`) emit one
        // side's rows, without the other's columns.
        let one_side = match j.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => Some("__weir_sign_l"),
            JoinType::RightSemi | JoinType::RightAnti => Some("__weir_sign_r"),
            _ => None,
        };
        if j.join_type != JoinType::Inner && !outer && one_side.is_none() {
            return Err(Error::Unsupported(format!(
                "a {} join of a changelog (the rows of an aggregate without a window, or of an updating join) is \
                 not supported; join inner or outer, or aggregate after the join",
                j.join_type.to_string().to_uppercase()
            )));
        }
        let with_op = outer || one_side.is_some();
        if time_bounds(&j)
            .iter()
            .any(|b| b.lo_ms.is_some() && b.hi_ms.is_some())
        {
            return Err(Error::Unsupported(
                "an interval join of a changelog is not supported: a changelog's rows have no watermark to evict \
                 them by; drop the time bound (a regular join, with 'state.ttl' to bound its state)"
                    .into(),
            ));
        }
        let signed = |plan: &LogicalPlan, name: &str| -> Result<LogicalPlan> {
            let schema = plan.schema();
            let n = schema.fields().len();
            let (values, sign) = if is_changelog(plan) {
                let op = Expr::Column(Column::from(schema.qualified_field(n - 1)));
                let positive = op.in_list(
                    vec![
                        Expr::Literal(ScalarValue::from("+I"), None),
                        Expr::Literal(ScalarValue::from("+U"), None),
                    ],
                    false,
                );
                let sign = datafusion::logical_expr::when(
                    positive,
                    Expr::Literal(ScalarValue::Int64(Some(1)), None),
                )
                .otherwise(Expr::Literal(ScalarValue::Int64(Some(-1)), None))?;
                (n - 1, sign)
            } else {
                (n, Expr::Literal(ScalarValue::Int64(Some(1)), None))
            };
            let mut expr: Vec<Expr> = (0..values)
                .map(|i| Expr::Column(Column::from(schema.qualified_field(i))))
                .collect();
            expr.push(sign.alias(name));
            Ok(LogicalPlan::Projection(Projection::try_new(
                expr,
                Arc::new(plan.clone()),
            )?))
        };
        let left = signed(&j.left, "__weir_sign_l")?;
        let right = signed(&j.right, "__weir_sign_r")?;
        // An outer join's output: the sides (an outer side's other side
        // nullable), then the operation of its NULL-padded rows (`+I` when
        // a row's match count drops to 0, `-D` when it leaves 0). A semi or
        // anti join's: its side's rows, then the operation (`+I` when a
        // row starts to qualify, `-D` when it stops).
        let schema = if with_op {
            let mut schema =
                datafusion::logical_expr::build_join_schema(left.schema(), right.schema(), &j.join_type)?;
            let op = datafusion::common::DFSchema::from_unqualified_fields(
                vec![datafusion::arrow::datatypes::Field::new(
                    PLAN_OP_COLUMN,
                    DataType::Utf8,
                    false,
                )]
                .into(),
                Default::default(),
            )?;
            schema.merge(&op);
            Arc::new(schema)
        } else {
            Arc::new(left.schema().join(right.schema())?)
        };
        let filter = j
            .filter
            .clone()
            .unwrap_or(Expr::Literal(ScalarValue::Boolean(Some(true)), None));
        let join = StreamJoinNode::new(
            left,
            right,
            j.on.clone(),
            filter,
            j.join_type,
            j.null_equality,
            None,
            ttl_ms,
            schema,
        )
        .of_signed_rows();
        let join = LogicalPlan::Extension(Extension { node: Arc::new(join) });
        // The join's own columns (not its inputs' operation columns), then
        // the pair's sign.
        let mut expr: Vec<Expr> = j
            .schema
            .iter()
            .filter(|(_, f)| f.name() != PLAN_OP_COLUMN)
            .map(|(q, f)| Expr::Column(Column::from((q, f.as_ref()))))
            .collect();
        // A padded row has no sign on its NULL side, and is taken back
        // (`-D`) or put back (`+I`).
        let one = || Expr::Literal(ScalarValue::Int64(Some(1)), None);
        let side_sign = |c: &str| {
            // (A CASE, not COALESCE: the plan is past the optimizer that
            // would rewrite COALESCE.)
            if outer {
                datafusion::logical_expr::when(col(c).is_null(), one()).otherwise(col(c))
            } else {
                Ok(col(c))
            }
        };
        let mut sign = match one_side {
            Some(c) => col(c),
            None => Expr::BinaryExpr(BinaryExpr::new(
                Box::new(side_sign("__weir_sign_l")?),
                Operator::Multiply,
                Box::new(side_sign("__weir_sign_r")?),
            )),
        };
        if with_op {
            let op_sign = datafusion::logical_expr::when(
                col(PLAN_OP_COLUMN).eq(Expr::Literal(ScalarValue::from("-D"), None)),
                Expr::Literal(ScalarValue::Int64(Some(-1)), None),
            )
            .otherwise(one())?;
            sign = Expr::BinaryExpr(BinaryExpr::new(
                Box::new(sign),
                Operator::Multiply,
                Box::new(op_sign),
            ));
        }
        expr.push(sign.alias(SIGN_COLUMN));
        let pairs = LogicalPlan::Projection(Projection::try_new(expr, Arc::new(join))?);
        let net = ChangelogNetNode::try_new(pairs)?;
        Ok(LogicalPlan::Extension(Extension { node: Arc::new(net) }))
    }

    /// A join of a stream with bounded tables (a lookup join): each epoch,
    /// DataFusion's own join of the epoch's rows with the tables' version of
    /// that epoch. A stream row's matches are final when it is joined, so
    /// the join keeps no state; only joins that emit stream rows can run
    /// (a bounded side's unmatched rows would never be final).
    fn lookup_join(&self, j: Join) -> Result<LogicalPlan> {
        let table_on_right = self.is_static(&j.right);
        let (stream, table) = if table_on_right {
            (&j.left, &j.right)
        } else {
            (&j.right, &j.left)
        };
        let mut names = BTreeSet::new();
        table.apply(|p| {
            if let LogicalPlan::TableScan(s) = p {
                names.insert(s.table_name.table().to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let names: Vec<String> = names.into_iter().collect();
        // A constant relation (VALUES, a SELECT without FROM) has no name.
        let names = if names.is_empty() {
            "of constants (VALUES)".to_string()
        } else {
            names.join(", ")
        };
        if is_changelog(stream) {
            return Err(Error::Unsupported(format!(
                "joining a changelog (the rows of an aggregate without a window) with the bounded table {names} is \
                 not supported yet; join the stream with the table before aggregating"
            )));
        }
        let ok = if table_on_right {
            matches!(
                j.join_type,
                JoinType::Inner
                    | JoinType::Left
                    | JoinType::LeftSemi
                    | JoinType::LeftAnti
                    | JoinType::LeftMark
            )
        } else {
            matches!(
                j.join_type,
                JoinType::Inner
                    | JoinType::Right
                    | JoinType::RightSemi
                    | JoinType::RightAnti
                    | JoinType::RightMark
            )
        };
        if !ok {
            return Err(Error::Unsupported(format!(
                "a {} join of a stream with the bounded table {names} is not supported: it would emit the table's \
                 rows that no stream row matches, which a stream that never ends cannot decide; join with the \
                 stream on the preserved side (stream LEFT JOIN table) or as an inner join",
                j.join_type.to_string().to_uppercase()
            )));
        }
        Ok(LogicalPlan::Join(j))
    }

    /// A join input whose column `time` must carry a watermark, and how far
    /// that column trails the pipeline's watermark. A source's late rows are
    /// dropped where they are read, so that the join sees only rows no
    /// later than the watermark allows (and which rows those are does not
    /// depend on where epochs begin); a window column of an upstream window
    /// aggregate trails the watermark by that window's lag and is never late.
    fn watermarked_side(&self, input: LogicalPlan, time: usize) -> Result<(LogicalPlan, i64)> {
        let column = Column::from(input.schema().qualified_field(time));
        match self.trace_time(&input, time) {
            Some(TimeOrigin::Sources(sources)) => {
                let mut input = input;
                for source in sources {
                    let Some(w) = self.job.tables.get(&source).and_then(|t| t.watermark.clone()) else {
                        continue;
                    };
                    self.refuse_late_sink_outside_windows(&source, "the join")?;
                    input = windows::late_filter_at(input, &source, &w.column, w.delay_ms)?;
                }
                Ok((input, 0))
            }
            Some(TimeOrigin::Upstream(lag)) => Ok((input, lag)),
            None => Err(Error::Plan(format!(
                "the join's time bound uses {column}, which has no watermark: declare \
                 WATERMARK FOR {name} AS {name} - INTERVAL ... on its source, or bound the join on a column that has one",
                name = column.name
            ))),
        }
    }
}

impl StreamPlanner {
    /// The output lag of a join's time column (`idx` of its output), before
    /// the join is rewritten into a [`StreamJoinNode`]; `None` for a column
    /// that is not a bounded time (a regular join's times trail the
    /// watermark without limit).
    pub(super) fn join_time_lag(&self, j: &Join, idx: usize) -> Option<i64> {
        let b = self.interval_bound(j, &time_bounds(j))?;
        let lag = |plan: &LogicalPlan, i: usize| match self.trace_time(plan, i)? {
            TimeOrigin::Sources(_) => Some(0),
            TimeOrigin::Upstream(lag) => Some(lag),
        };
        let time = JoinTime {
            left_lag_ms: lag(&j.left, b.left)?,
            right_lag_ms: lag(&j.right, b.right)?,
            ..b
        };
        let node = StreamJoinNode::new(
            j.left.as_ref().clone(),
            j.right.as_ref().clone(),
            vec![],
            Expr::Literal(ScalarValue::Boolean(Some(true)), None),
            j.join_type,
            j.null_equality,
            Some(time),
            None,
            Arc::clone(&j.schema),
        );
        stream_join_time_lag(&node, idx)
    }
}

/// The same for a rewritten [`StreamJoinNode`].
pub(super) fn stream_join_time_lag(n: &StreamJoinNode, idx: usize) -> Option<i64> {
    let t = n.time.as_ref()?;
    let (l, r) = n.output_time_positions();
    let (left_lag, right_lag) = t.output_lags();
    if Some(idx) == l {
        left_lag
    } else if Some(idx) == r {
        right_lag
    } else {
        None
    }
}

/// An inner regular join's side whose keys are unique (see
/// [`UniqueSide`]), and that side's input with its top filter pulled out:
/// the side whose plan carries, from a source's `PRIMARY KEY`, a
/// functional dependency of mode `Single` (each key once) on columns that
/// are all among its plain-column join keys. The right side is preferred
/// (the build side of a batch hash join), then one with a filter to pull.
///
/// The filter pulled is the one directly under the join (or under its
/// table alias): `Filter(p, X)` keeps `X`'s schema, so the join's columns
/// do not move. A filter under a projection stays where it is (its side
/// is still unique, only without the pull). A filter that calls a
/// volatile function or holds a subquery stays too: the operator
/// evaluates the pulled filter on each row as it arrives.
///
/// Only when NULL keys match nothing (`=`, not `IS NOT DISTINCT FROM`):
/// Weir does not make a declared key's columns NOT NULL, and DataFusion
/// calls a primary key non-nullable, so rows with a NULL key could repeat
/// it unseen.
pub(super) fn unique_side(j: &Join) -> Result<Option<(UniqueSide, LogicalPlan)>> {
    if j.null_equality != datafusion::common::NullEquality::NullEqualsNothing {
        return Ok(None);
    }
    let unique = |plan: &LogicalPlan, keys: Vec<&Expr>| -> bool {
        let schema = plan.schema();
        let at: Vec<usize> = keys
            .into_iter()
            .filter_map(|e| match e {
                Expr::Column(c) => schema.index_of_column(c).ok(),
                _ => None,
            })
            .collect();
        schema.functional_dependencies().iter().any(|d| {
            d.mode == datafusion::common::Dependency::Single
                && !d.source_indices.is_empty()
                && d.source_indices.iter().all(|i| at.contains(i))
        })
    };
    let mut found = Vec::new();
    for right in [true, false] {
        let (plan, keys): (&LogicalPlan, Vec<&Expr>) = if right {
            (&j.right, j.on.iter().map(|(_, r)| r).collect())
        } else {
            (&j.left, j.on.iter().map(|(l, _)| l).collect())
        };
        if unique(plan, keys) {
            found.push((right, pull_filter(plan)?));
        }
    }
    let pick = found.iter().position(|(_, pulled)| pulled.is_some()).unwrap_or(0);
    if found.is_empty() {
        return Ok(None);
    }
    let (right, pulled) = found.swap_remove(pick);
    Ok(Some(match pulled {
        Some((filter, input)) => (
            UniqueSide {
                right,
                filter: Some(filter),
            },
            input,
        ),
        None => (
            UniqueSide { right, filter: None },
            if right {
                j.right.as_ref().clone()
            } else {
                j.left.as_ref().clone()
            },
        ),
    }))
}

/// `Filter(p, X)` (or `SubqueryAlias(a, Filter(p, X))`) → (`p`, `X`)
/// (`p` over the alias's columns, and `SubqueryAlias(a, X)`).
fn pull_filter(plan: &LogicalPlan) -> Result<Option<(Expr, LogicalPlan)>> {
    use datafusion::logical_expr::SubqueryAlias;
    match plan {
        LogicalPlan::Filter(f) if pullable(&f.predicate) => {
            Ok(Some((f.predicate.clone(), f.input.as_ref().clone())))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let LogicalPlan::Filter(f) = a.input.as_ref() else {
                return Ok(None);
            };
            if !pullable(&f.predicate) {
                return Ok(None);
            }
            let input =
                LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::clone(&f.input), a.alias.clone())?);
            // The alias qualifies every column anew.
            let predicate = f
                .predicate
                .clone()
                .transform(|e| {
                    Ok(match e {
                        Expr::Column(c) => {
                            Transformed::yes(Expr::Column(Column::new(Some(a.alias.clone()), c.name)))
                        }
                        e => Transformed::no(e),
                    })
                })?
                .data;
            Ok(Some((predicate, input)))
        }
        _ => Ok(None),
    }
}

/// A filter the join can evaluate on its own, again on restore: no
/// volatile function, no subquery.
fn pullable(p: &Expr) -> bool {
    !p.is_volatile()
        && !p
            .exists(|e| {
                Ok(matches!(
                    e,
                    Expr::ScalarSubquery(_)
                        | Expr::Exists(_)
                        | Expr::InSubquery(_)
                        | Expr::OuterReferenceColumn(..)
                ))
            })
            .unwrap_or(true)
}
