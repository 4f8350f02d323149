//! Tracing columns through a plan: where a time column's watermark comes from,
//! and which window a GROUP BY's window columns belong to.

use super::*;
use datafusion::logical_expr::JoinType;

impl StreamPlanner {
    /// Follows an output column down to where its watermark comes from.
    pub(super) fn trace_time(&self, plan: &LogicalPlan, idx: usize) -> Option<TimeOrigin> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let name = scan.table_name.table();
                let decl = self.job.tables.get(name)?;
                let w = decl.watermark.as_ref()?;
                let field = scan.projected_schema.field(idx);
                (field.name() == &w.column).then(|| TimeOrigin::Sources(BTreeSet::from([name.to_string()])))
            }
            LogicalPlan::Projection(p) => {
                let c = plain_column(p.expr.get(idx)?)?;
                let i = p.input.schema().index_of_column(c).ok()?;
                self.trace_time(&p.input, i)
            }
            LogicalPlan::Filter(f) => self.trace_time(&f.input, idx),
            LogicalPlan::SubqueryAlias(s) => self.trace_time(&s.input, idx),
            // A window column in the GROUP BY of an upstream aggregate (not
            // yet rewritten into a window aggregate).
            LogicalPlan::Aggregate(a) => {
                let c = plain_column(a.group_expr.get(idx)?)?;
                let t = trace_window(&a.input, c)?;
                Some(TimeOrigin::Upstream(t.lag_ms + t.col.lag_ms(&t.spec)?))
            }
            LogicalPlan::Union(u) => {
                let mut acc: Option<TimeOrigin> = None;
                for input in &u.inputs {
                    let t = self.trace_time(input, idx)?;
                    acc = Some(match (acc, t) {
                        (None, t) => t,
                        (Some(TimeOrigin::Sources(mut a)), TimeOrigin::Sources(b)) => {
                            a.extend(b);
                            TimeOrigin::Sources(a)
                        }
                        (Some(TimeOrigin::Upstream(a)), TimeOrigin::Upstream(b)) if a == b => {
                            TimeOrigin::Upstream(a)
                        }
                        _ => return None,
                    });
                }
                acc
            }
            // A time column of an interval join's output trails the
            // watermark by up to the join's bound on the other side.
            // A lookup join passes its stream side's times through.
            LogicalPlan::Join(j) if self.is_static(&j.left) || self.is_static(&j.right) => {
                let nl = j.left.schema().fields().len();
                match j.join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                        (idx < nl).then(|| self.trace_time(&j.left, idx)).flatten()
                    }
                    JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                        self.trace_time(&j.right, idx)
                    }
                    _ if idx < nl => self.trace_time(&j.left, idx),
                    _ => self.trace_time(&j.right, idx - nl),
                }
            }
            LogicalPlan::Join(j) => self.join_time_lag(j, idx).map(TimeOrigin::Upstream),
            LogicalPlan::Extension(e) => {
                if let Some(n) = e.node.as_any().downcast_ref::<crate::nodes::StreamJoinNode>() {
                    return joins::stream_join_time_lag(n, idx).map(TimeOrigin::Upstream);
                }
                if let Some(n) = e.node.as_any().downcast_ref::<WindowAssignNode>() {
                    let first = n.first_window_column();
                    if idx < first {
                        return self.trace_time(&n.input, idx);
                    }
                    // A window column of a window call's rows (joined on,
                    // as in a window join): its rows are on time, so a
                    // later row's window ends after the watermark and
                    // starts at most a window's size before it.
                    if n.slices {
                        return None;
                    }
                    let col = match idx - first {
                        0 => WindowColumn::Start,
                        1 => WindowColumn::End,
                        2 => WindowColumn::Time,
                        _ => return None,
                    };
                    return Some(TimeOrigin::Upstream(
                        n.watermark.lag_ms().saturating_add(col.lag_ms(&n.spec)?),
                    ));
                }
                if let Some(n) = e.node.as_any().downcast_ref::<WindowAggregateNode>() {
                    let (_, col) = n.window_columns.iter().find(|(i, _)| *i == idx)?;
                    return Some(TimeOrigin::Upstream(n.watermark_lag_ms + col.lag_ms(&n.spec)?));
                }
                None
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TimeOrigin {
    /// Watermarked sources (more than one through a union).
    Sources(BTreeSet<String>),
    /// A window column of an upstream window aggregate; lag in ms.
    Upstream(i64),
}

pub(super) fn plain_column(e: &Expr) -> Option<&Column> {
    let mut e = e;
    while let Expr::Alias(a) = e {
        e = &a.expr;
    }
    match e {
        Expr::Column(c) => Some(c),
        _ => None,
    }
}

/// Where a window column of a GROUP BY comes from.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct WindowTrace {
    pub(super) spec: WindowSpec,
    pub(super) col: WindowColumn,
    pub(super) lag_ms: i64,
    /// The window call (`None`: an upstream window aggregate's output).
    pub(super) assign: Option<TableReference>,
    pub(super) partition_by: Vec<String>,
}

/// Follows a column down through projections (plain column references and
/// aliases), filters, aliases and unions to a window column.
pub(super) fn trace_window(plan: &LogicalPlan, column: &Column) -> Option<WindowTrace> {
    let idx = plan.schema().index_of_column(column).ok()?;
    trace_window_index(plan, idx)
}

pub(super) fn trace_window_index(plan: &LogicalPlan, idx: usize) -> Option<WindowTrace> {
    match plan {
        LogicalPlan::Extension(e) => {
            if let Some(n) = e.node.as_any().downcast_ref::<WindowAssignNode>() {
                let col = match idx.checked_sub(n.first_window_column())? {
                    0 => WindowColumn::Start,
                    1 => WindowColumn::End,
                    2 => WindowColumn::Time,
                    _ => return None,
                };
                return Some(WindowTrace {
                    spec: n.spec.clone(),
                    col,
                    lag_ms: n.watermark.lag_ms(),
                    assign: Some(n.qualifier.clone()),
                    partition_by: n.partition_by.clone(),
                });
            }
            if let Some(n) = e.node.as_any().downcast_ref::<WindowAggregateNode>() {
                let (_, col) = n.window_columns.iter().find(|(i, _)| *i == idx)?;
                return Some(WindowTrace {
                    spec: n.spec.clone(),
                    col: *col,
                    lag_ms: n.watermark_lag_ms,
                    assign: None,
                    partition_by: vec![],
                });
            }
            None
        }
        LogicalPlan::Projection(p) => trace_window(&p.input, plain_column(p.expr.get(idx)?)?),
        LogicalPlan::Filter(f) => trace_window_index(&f.input, idx),
        LogicalPlan::SubqueryAlias(s) => trace_window_index(&s.input, idx),
        // After the streaming rewrite, a join still in DataFusion's form is
        // a lookup join (joins of streams are `StreamJoinNode`s): its
        // stream side's window columns pass through.
        LogicalPlan::Join(j) => {
            let nl = j.left.schema().fields().len();
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    (idx < nl).then(|| trace_window_index(&j.left, idx)).flatten()
                }
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                    trace_window_index(&j.right, idx)
                }
                _ if idx < nl => trace_window_index(&j.left, idx),
                _ => trace_window_index(&j.right, idx - nl),
            }
        }
        LogicalPlan::Union(u) => {
            let mut found: Option<WindowTrace> = None;
            for input in &u.inputs {
                let t = trace_window_index(input, idx)?;
                if found
                    .as_ref()
                    .is_some_and(|f| f.spec != t.spec || f.lag_ms != t.lag_ms || f.col != t.col)
                {
                    return None;
                }
                // Windows of different calls meet in a union: no slices.
                found = Some(match found {
                    Some(f) if f.assign != t.assign => WindowTrace { assign: None, ..t },
                    _ => t,
                });
            }
            found
        }
        _ => None,
    }
}

/// The name of the window call's input column a column comes from.
pub(super) fn trace_input_column(
    plan: &LogicalPlan,
    column: &Column,
    assign: &TableReference,
) -> Option<String> {
    let idx = plan.schema().index_of_column(column).ok()?;
    fn walk(plan: &LogicalPlan, idx: usize, assign: &TableReference) -> Option<String> {
        match plan {
            LogicalPlan::Extension(e) => {
                let n = e.node.as_any().downcast_ref::<WindowAssignNode>()?;
                (&n.qualifier == assign && idx < n.first_window_column())
                    .then(|| n.input.schema().field(idx).name().clone())
            }
            LogicalPlan::Projection(p) => {
                let c = plain_column(p.expr.get(idx)?)?;
                walk(&p.input, p.input.schema().index_of_column(c).ok()?, assign)
            }
            LogicalPlan::Filter(f) => walk(&f.input, idx, assign),
            LogicalPlan::SubqueryAlias(s) => walk(&s.input, idx, assign),
            _ => None,
        }
    }
    walk(plan, idx, assign)
}

/// Whether the path from `plan` down to the window call passes the window
/// columns through untouched: projections only reference them as plain
/// columns, filters do not read them. Only then can the call emit slices (or
/// sessions) instead of exact windows.
pub(super) fn clean_path(plan: &LogicalPlan, assign: &TableReference) -> bool {
    let touches_window = |input: &LogicalPlan, e: &Expr| {
        e.column_refs()
            .iter()
            .any(|c| trace_window(input, c).is_some_and(|t| t.assign.as_ref() == Some(assign)))
    };
    match plan {
        LogicalPlan::Extension(e) => e
            .node
            .as_any()
            .downcast_ref::<WindowAssignNode>()
            .is_some_and(|n| &n.qualifier == assign),
        LogicalPlan::Projection(p) => {
            p.expr
                .iter()
                .all(|e| plain_column(e).is_some() || !touches_window(&p.input, e))
                && clean_path(&p.input, assign)
        }
        LogicalPlan::Filter(Filter { predicate, input, .. }) => {
            !touches_window(input, predicate) && clean_path(input, assign)
        }
        LogicalPlan::SubqueryAlias(s) => clean_path(&s.input, assign),
        _ => false,
    }
}

/// Whether aggregate arguments read a window column.
pub(super) fn references_window(aggr: &[Expr], input: &LogicalPlan) -> bool {
    aggr.iter()
        .any(|e| e.column_refs().iter().any(|c| trace_window(input, c).is_some()))
}

/// Switches a window call to emitting slices.
pub(super) fn set_slices(plan: LogicalPlan, assign: &TableReference) -> Result<LogicalPlan> {
    Ok(plan
        .transform_down(|p| {
            if let LogicalPlan::Extension(e) = &p
                && let Some(n) = e.node.as_any().downcast_ref::<WindowAssignNode>()
                && &n.qualifier == assign
            {
                let node = n.clone().with_slices(true);
                return Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                    node: Arc::new(node),
                })));
            }
            Ok(Transformed::no(p))
        })?
        .data)
}
