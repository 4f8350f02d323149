//! The streaming rewrite: DataFusion's optimized plan turned into the
//! incremental plan (window aggregates, update aggregates, window Top-N), and
//! what cannot run on a stream refused with a reason.

use super::*;

impl StreamPlanner {
    /// The streaming rewrite: aggregates become window or update aggregates;
    /// changelogs carry their `op` column up; what cannot run incrementally
    /// is refused.
    pub(super) fn rewrite_streaming(&self, plan: LogicalPlan, emit: Option<Emit>) -> Result<LogicalPlan> {
        check_expressions(&plan, &|p| self.is_static(p))?;
        check_ordered_aggregates(&plan, &|p| self.is_static(p))?;
        let ttl_ms = self.ttl_ms(&plan)?;
        let mut sessions_used: BTreeSet<String> = BTreeSet::new();
        let out = plan.transform_up(|p| {
            self.rewrite_node(p, emit, ttl_ms, &mut sessions_used)
                .map_err(|e| DataFusionError::External(Box::new(e)))
        });
        let plan = match out {
            Ok(t) => t.data,
            Err(DataFusionError::External(e)) => {
                return Err(match e.downcast::<Error>() {
                    Ok(e) => *e,
                    Err(e) => Error::Plan(e.to_string()),
                });
            }
            Err(e) => return Err(Error::Plan(strip_df(&e))),
        };
        check_subqueries_over_changelogs(&plan)?;
        // A SESSION window only exists as the grouping of an aggregate.
        let mut stray = None;
        plan.apply(|p| {
            if let LogicalPlan::Extension(e) = p
                && let Some(n) = e.node.as_any().downcast_ref::<WindowAssignNode>()
                && matches!(n.spec, WindowSpec::Session { .. })
                && !sessions_used.contains(n.qualifier.table())
            {
                stray = Some(n.spec.to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        // A Top-N outside windows keeps N rows per partition; without a
        // limit it would keep the whole stream.
        let mut unlimited = false;
        plan.apply(|p| {
            if let LogicalPlan::Extension(e) = p
                && let Some(n) = e.node.as_any().downcast_ref::<crate::nodes::StreamTopNNode>()
                && n.limit.is_none()
            {
                unlimited = true;
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if unlimited {
            return Err(Error::Unsupported(
                "ROW_NUMBER()/RANK()/DENSE_RANK() OVER (...) without a window ranks a stream that never ends: keep \
                 the top N with WHERE rn <= N (rn = 1 deduplicates), or rank within windows (PARTITION BY \
                 window_start, window_end, ...)"
                    .into(),
            ));
        }
        if let Some(spec) = stray {
            return Err(Error::Unsupported(format!(
                "{spec} windows can only be used as the GROUP BY window_start, window_end of an aggregate \
                 (a session's bounds are known only once it closes)"
            )));
        }
        Ok(plan)
    }

    /// `state.ttl` for update aggregates: a job-level `SET 'state.ttl'`, or
    /// the smallest of the sources' `'state.ttl'` options.
    pub(super) fn ttl_ms(&self, plan: &LogicalPlan) -> Result<Option<i64>> {
        let parse = |v: &str, what: &str| -> Result<i64> {
            let sql = if v.trim().to_ascii_uppercase().starts_with("INTERVAL") {
                v.to_string()
            } else {
                match humanish(v) {
                    Some(sql) => sql,
                    None => format!("INTERVAL '{v}'"),
                }
            };
            interval_ms(&sql).map_err(|e| Error::Plan(format!("{what} '{v}': {e}")))
        };
        if let Some(v) = self.job.setting("state.ttl") {
            return Ok(Some(parse(v, "SET 'state.ttl'")?));
        }
        let mut ttl: Option<i64> = None;
        plan.apply(|p| {
            if let LogicalPlan::TableScan(s) = p
                && let Some(decl) = self.job.tables.get(s.table_name.table())
                && let Some(v) = decl.options.get("state.ttl")
            {
                match parse(v, &format!("table '{}': option 'state.ttl'", decl.name)) {
                    Ok(ms) => ttl = Some(ttl.map_or(ms, |t| t.min(ms))),
                    Err(e) => return Err(DataFusionError::External(Box::new(e))),
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| match e {
            DataFusionError::External(e) => match e.downcast::<Error>() {
                Ok(e) => *e,
                Err(e) => Error::Plan(e.to_string()),
            },
            e => Error::Plan(strip_df(&e)),
        })?;
        Ok(ttl)
    }

    pub(super) fn rewrite_node(
        &self,
        p: LogicalPlan,
        emit: Option<Emit>,
        ttl_ms: Option<i64>,
        sessions_used: &mut BTreeSet<String>,
    ) -> Result<Transformed<LogicalPlan>> {
        // Bounded tables alone (a lookup table's subquery, an aggregate of
        // it): a batch query, run whole each epoch.
        if self.is_static(&p) {
            return Ok(Transformed::no(p));
        }
        // An operator's expired state leaves with `-D` rows, which reach an
        // operator over its changelog: that one may have expired the same
        // rows' contributions already, and netted against new rows in one
        // epoch they left it wrong (a COUNT of -1, live rows missing from a
        // Top-N or a join). Flink's aggregates expire silently instead.
        if ttl_ms.is_some()
            && matches!(
                p,
                LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) | LogicalPlan::Join(_)
            )
            && p.inputs().iter().any(|i| is_changelog(i))
        {
            return Err(Error::Unsupported(
                "'state.ttl' with an aggregate, ranking or join over another one's changelog (an aggregate \
                 without a window, an updating join, a Top-N): the rows the first one takes back when its \
                 state expires reach the second, whose own state for them may have expired, and its results \
                 would go wrong; drop 'state.ttl', or give the first operator's results a sink of their own \
                 and read them from there"
                    .into(),
            ));
        }
        if let LogicalPlan::Union(u) = &p
            && u.inputs.iter().any(|i| self.is_static(i))
        {
            return Err(Error::Unsupported(
                "a UNION branch that reads no stream (VALUES, a SELECT without FROM, or bounded tables only) \
                 would give its rows again every epoch; join it with the stream instead, or put its rows in \
                 a file of the stream's folder"
                    .into(),
            ));
        }
        match p {
            LogicalPlan::Aggregate(agg) => {
                if agg.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                    return Err(Error::Unsupported(
                        "GROUPING SETS, CUBE and ROLLUP are not supported on streams".into(),
                    ));
                }
                let mut windows: Vec<(usize, WindowTrace)> = Vec::new();
                for (i, e) in agg.group_expr.iter().enumerate() {
                    if let Expr::Column(c) = e
                        && let Some(t) = trace_window(&agg.input, c)
                    {
                        windows.push((i, t));
                    }
                }
                if is_changelog(&agg.input) && !windows.is_empty() {
                    return Err(Error::Unsupported(
                        "a window over a changelog (the rows of an aggregate without a window, which retract) is not \
                         supported: a window's rows are final when it closes; aggregate the changelog without a window"
                            .into(),
                    ));
                }
                if windows.is_empty() {
                    if emit == Some(Emit::OnWindowClose) {
                        return Err(Error::Unsupported(
                            "EMIT ON WINDOW CLOSE needs a window: group by the window_start and window_end of a window table function".into(),
                        ));
                    }
                    if is_changelog(&agg.input) {
                        return retract::changelog_aggregate(&agg, ttl_ms).map(Transformed::yes);
                    }
                    let node = UpdateAggregateNode::try_new(
                        agg.input.as_ref().clone(),
                        agg.group_expr.clone(),
                        agg.aggr_expr.clone(),
                        Arc::clone(&agg.schema),
                        None,
                        ttl_ms,
                    )?;
                    return Ok(Transformed::yes(LogicalPlan::Extension(Extension { node: Arc::new(node) })));
                }
                if emit == Some(Emit::OnUpdate) {
                    return Err(Error::Unsupported(
                        "EMIT ON UPDATE of a windowed aggregate is not supported: a window's rows are emitted once, when it closes".into(),
                    ));
                }
                self.window_aggregate(&agg, windows, sessions_used).map(Transformed::yes)
            }
            // HAVING over an update aggregate is applied inside it, so that a
            // group that stops satisfying it is retracted.
            LogicalPlan::Filter(f) if is_update_aggregate(&f.input) => {
                let n = match f.input.as_ref() {
                    LogicalPlan::Extension(e) => e.node.as_any().downcast_ref::<UpdateAggregateNode>(),
                    _ => None,
                }
                .ok_or_else(|| DataFusionError::Internal("HAVING's input is not the update aggregate it was".into()))?;
                if n.having.is_some() {
                    return Ok(Transformed::no(LogicalPlan::Filter(f)));
                }
                let node = UpdateAggregateNode::try_new(
                    n.input.clone(),
                    n.group_expr.clone(),
                    n.aggr_expr.clone(),
                    Arc::clone(&n.aggregate_schema),
                    Some(f.predicate.clone()),
                    n.ttl_ms,
                )?;
                Ok(Transformed::yes(LogicalPlan::Extension(Extension { node: Arc::new(node) })))
            }
            // A projection over a changelog keeps the operation column.
            LogicalPlan::Projection(proj) if is_changelog(&proj.input) && !is_changelog_schema(&proj.schema) => {
                let mut expr = proj.expr.clone();
                let (q, f) = proj.input.schema().qualified_field(proj.input.schema().fields().len() - 1);
                expr.push(Expr::Column(Column::from((q, f))));
                let p = Projection::try_new(expr, Arc::clone(&proj.input))?;
                Ok(Transformed::yes(LogicalPlan::Projection(p)))
            }
            LogicalPlan::Union(u) => {
                let kinds: BTreeSet<bool> = u.inputs.iter().map(|i| is_changelog(i)).collect();
                if kinds.len() > 1 {
                    return Err(Error::Unsupported(
                        "UNION ALL of a changelog (an aggregate without a window) and an append-only stream is not supported".into(),
                    ));
                }
                // Its stored schema predates the rewrite of its inputs: a
                // changelog's operation column must show in it.
                Ok(Transformed::yes(LogicalPlan::Union(u).recompute_schema()?))
            }
            // The same for an alias over a changelog (`FROM (SELECT k,
            // COUNT(*) ... GROUP BY k) a`).
            LogicalPlan::SubqueryAlias(a) if is_changelog(&a.input) && !is_changelog_schema(&a.schema) => {
                Ok(Transformed::yes(LogicalPlan::SubqueryAlias(a).recompute_schema()?))
            }
            LogicalPlan::Sort(s) => Err(Error::Unsupported(if s.fetch.is_some() {
                "ORDER BY ... LIMIT (Top-N) without a window never produces a final result on an unbounded stream; \
                 rank within windows instead: SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, \
                 window_end ORDER BY ...) AS rn FROM TABLE(TUMBLE(...))) WHERE rn <= N"
                    .into()
            } else {
                "ORDER BY on an unbounded stream never produces a result; sort the sink's output when you read it, \
                 or rank within windows: ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY ...)"
                    .into()
            })),
            LogicalPlan::Limit(l) => Err(Error::Unsupported(format!(
                "{} on an unbounded stream never completes; filter the rows, or keep the top N per window with \
                 ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY ...) <= N",
                if l.fetch.is_none() { "OFFSET" } else { "LIMIT" }
            ))),
            LogicalPlan::Window(w) => self.window_top_n(w, ttl_ms).map(Transformed::yes),
            // `WHERE rn <= N` over a window Top-N: keep only N per partition.
            LogicalPlan::Filter(f) if top_n_below(&f.input).is_some() => {
                let Some(limit) = top_n_below(&f.input).and_then(|rank_col| rank_limit(&f.predicate, &rank_col)) else {
                    return Ok(Transformed::no(LogicalPlan::Filter(f)));
                };
                let mut input = set_top_n_limit(f.input.as_ref().clone(), limit)?;
                if limit == 1
                    && let Some(first) = self.keep_first_on_time(&input)?
                {
                    input = first;
                }
                let filter = Filter::try_new(f.predicate.clone(), Arc::new(input))?;
                Ok(Transformed::yes(LogicalPlan::Filter(filter)))
            }
            LogicalPlan::Join(j) => self.stream_join(j, ttl_ms).map(Transformed::yes),
            LogicalPlan::Distinct(_) => Err(Error::Unsupported(
                "DISTINCT of a stream is not supported; GROUP BY the columns (with or without a window) instead".into(),
            )),
            LogicalPlan::RecursiveQuery(_) => {
                Err(Error::Unsupported("recursive queries are not supported on streams".into()))
            }
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::TableScan(_)
            | LogicalPlan::EmptyRelation(_)
            | LogicalPlan::Values(_)
            | LogicalPlan::Unnest(_)
            | LogicalPlan::Extension(_) => Ok(Transformed::no(p)),
            other => Err(Error::Unsupported(format!(
                "{} is not supported on streams",
                other.display()
            ))),
        }
    }

    /// `ROW_NUMBER() OVER (PARTITION BY k ORDER BY t) = 1` with `t` a
    /// watermarked time column of the sources (ascending): keep-first
    /// deduplication on event time, which is append-only (Flink's
    /// "deduplicate keep first row" on a rowtime). `plan` is the Top-N
    /// under the `rn = 1` filter (perhaps under projections, which lose the
    /// operation column they carried); `None` when the ranking is another.
    pub(super) fn keep_first_on_time(&self, plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
        match plan {
            LogicalPlan::Extension(e) => {
                let Some(n) = e.node.as_any().downcast_ref::<crate::nodes::StreamTopNNode>() else {
                    return Ok(None);
                };
                // Over a changelog the first row may be taken back.
                if is_changelog(&n.input) {
                    return Ok(None);
                }
                let [order] = n.order_by.as_slice() else {
                    return Ok(None);
                };
                let (Expr::Column(c), true, crate::nodes::RankKind::RowNumber) =
                    (&order.expr, order.asc, n.rank)
                else {
                    return Ok(None);
                };
                let Ok(idx) = n.input.schema().index_of_column(c) else {
                    return Ok(None);
                };
                let Some(TimeOrigin::Sources(sources)) = self.trace_time(&n.input, idx) else {
                    return Ok(None);
                };
                // Late rows are dropped where they are read, as for windows:
                // a row older than the watermark might come before a first
                // row already emitted.
                let mut input = n.input.clone();
                for source in sources {
                    let Some(w) = self.job.tables.get(&source).and_then(|t| t.watermark.clone()) else {
                        continue;
                    };
                    self.refuse_late_sink_outside_windows(&source, "the deduplication (keep first)")?;
                    input = windows::late_filter_at(input, &source, &w.column, w.delay_ms)?;
                }
                let node = n.clone().keep_first_on_time(input, idx);
                Ok(Some(LogicalPlan::Extension(Extension { node: Arc::new(node) })))
            }
            LogicalPlan::Projection(p) => {
                let Some(input) = self.keep_first_on_time(&p.input)? else {
                    return Ok(None);
                };
                let mut expr = p.expr.clone();
                if is_changelog_schema(&p.schema) {
                    expr.pop();
                }
                Ok(Some(LogicalPlan::Projection(Projection::try_new(
                    expr,
                    Arc::new(input),
                )?)))
            }
            _ => Ok(None),
        }
    }

    /// `ROW_NUMBER() / RANK() / DENSE_RANK() OVER (PARTITION BY window_start,
    /// window_end, ... ORDER BY ...)`: a window Top-N. Other OVER windows
    /// would need their whole input, which a stream never completes.
    pub(super) fn window_top_n(
        &self,
        w: datafusion::logical_expr::Window,
        ttl_ms: Option<i64>,
    ) -> Result<LogicalPlan> {
        use datafusion::logical_expr::expr::{WindowFunction, WindowFunctionDefinition};
        let refuse = || {
            Error::Unsupported(
                "window functions with OVER (...) are not run incrementally, except ranking: ROW_NUMBER(), RANK() \
                 or DENSE_RANK() OVER ([PARTITION BY ...] ORDER BY ...) kept to rn <= N (rn = 1 deduplicates), or \
                 ranked within windows (PARTITION BY window_start, window_end, ...); for totals, aggregate with \
                 GROUP BY window_start, window_end"
                    .into(),
            )
        };
        let [expr] = w.window_expr.as_slice() else {
            return Err(refuse());
        };
        let mut e = expr;
        while let Expr::Alias(a) = e {
            e = &a.expr;
        }
        let Expr::WindowFunction(wf) = e else {
            return Err(refuse());
        };
        let WindowFunction { fun, params } = wf.as_ref();
        let rank = match fun {
            WindowFunctionDefinition::WindowUDF(f) => match f.name() {
                "row_number" => crate::nodes::RankKind::RowNumber,
                "rank" => crate::nodes::RankKind::Rank,
                "dense_rank" => crate::nodes::RankKind::DenseRank,
                _ => return Err(refuse()),
            },
            _ => return Err(refuse()),
        };
        if !params.args.is_empty() || params.filter.is_some() || params.order_by.is_empty() {
            return Err(refuse());
        }
        let mut start = None;
        let mut end = None;
        let mut lag = 0;
        for (i, p) in params.partition_by.iter().enumerate() {
            if let Expr::Column(c) = p
                && let Some(t) = trace_window(&w.input, c)
            {
                match t.col {
                    WindowColumn::Start => start = Some(i),
                    WindowColumn::End => end = Some(i),
                    WindowColumn::Time => {}
                }
                lag = t.lag_ms;
            }
        }
        let (Some(start), Some(end)) = (start, end) else {
            if start.is_some() || end.is_some() {
                return Err(refuse());
            }
            // Outside windows: Top-N (deduplication when N = 1) in update
            // mode, over a stream or a changelog (Flink's retracting
            // Top-N: every live row is held, since a retraction brings back
            // a row ranked beyond N). The Window node's schema predates the
            // rewrite of its input, so it has no operation column: the
            // node's schema is that, then the operation.
            return Ok(LogicalPlan::Extension(Extension {
                node: Arc::new(crate::nodes::StreamTopNNode::try_new(
                    w.input.as_ref().clone(),
                    params.partition_by.clone(),
                    params.order_by.clone(),
                    rank,
                    ttl_ms,
                    Arc::clone(&w.schema),
                )?),
            }));
        };
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(crate::nodes::WindowTopNNode::new(
                w.input.as_ref().clone(),
                params.partition_by.clone(),
                params.order_by.clone(),
                rank,
                start,
                end,
                lag,
                Arc::clone(&w.schema),
            )),
        }))
    }

    pub(super) fn window_aggregate(
        &self,
        agg: &datafusion::logical_expr::Aggregate,
        windows: Vec<(usize, WindowTrace)>,
        sessions_used: &mut BTreeSet<String>,
    ) -> Result<LogicalPlan> {
        let first = &windows[0].1;
        if windows
            .iter()
            .any(|(_, t)| t.spec != first.spec || t.assign != first.assign || t.lag_ms != first.lag_ms)
        {
            return Err(Error::Plan(
                "a GROUP BY may use the columns of one window only".into(),
            ));
        }
        let has = |c: WindowColumn| windows.iter().any(|(_, t)| t.col == c);
        if !has(WindowColumn::Start) || !has(WindowColumn::End) {
            return Err(Error::Plan(
                "a windowed GROUP BY must include both window_start and window_end".into(),
            ));
        }
        let window_columns: Vec<(usize, WindowColumn)> = windows.iter().map(|(i, t)| (*i, t.col)).collect();
        let spec = first.spec.clone();
        let mut session_keys = Vec::new();
        let mut slices = false;
        if let WindowSpec::Session { .. } = spec {
            let assign = first.assign.clone().ok_or_else(|| {
                Error::Unsupported(
                    "grouping again by the windows of an upstream SESSION aggregate is not supported".into(),
                )
            })?;
            if !clean_path(&agg.input, &assign) || references_window(&agg.aggr_expr, &agg.input) {
                return Err(Error::Unsupported(format!(
                    "{spec}: between the window call and its GROUP BY, window_start and window_end may only be passed \
                     through (a session's bounds are known only once it closes)"
                )));
            }
            for key in &first.partition_by {
                let i = agg.group_expr.iter().position(|e| match e {
                    Expr::Column(c) => {
                        trace_input_column(&agg.input, c, &assign).as_deref() == Some(key.as_str())
                    }
                    _ => false,
                });
                match i {
                    Some(i) => session_keys.push(i),
                    None => {
                        return Err(Error::Plan(format!(
                            "{spec} PARTITION BY {key}: the GROUP BY must include {key}"
                        )));
                    }
                }
            }
            sessions_used.insert(assign.table().to_string());
        } else if spec.overlaps()
            && let Some(assign) = &first.assign
            && clean_path(&agg.input, assign)
            && !references_window(&agg.aggr_expr, &agg.input)
        {
            slices = true;
        }
        let input = match (&first.assign, slices) {
            (Some(assign), true) => set_slices(agg.input.as_ref().clone(), assign)?,
            _ => agg.input.as_ref().clone(),
        };
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(WindowAggregateNode::new(
                input,
                agg.group_expr.clone(),
                agg.aggr_expr.clone(),
                Arc::clone(&agg.schema),
                spec,
                window_columns,
                session_keys,
                slices,
                first.lag_ms,
            )),
        }))
    }
}

/// The rank column of a window Top-N directly below (through a projection
/// that passes it on), as a column of `plan`.
pub(super) fn top_n_below(plan: &LogicalPlan) -> Option<Column> {
    match plan {
        LogicalPlan::Extension(e) if e.node.as_any().is::<crate::nodes::WindowTopNNode>() => {
            let s = plan.schema();
            Some(Column::from(s.qualified_field(s.fields().len() - 1)))
        }
        // The rank, then the operation column (none when append-only).
        LogicalPlan::Extension(e) if e.node.as_any().is::<crate::nodes::StreamTopNNode>() => {
            let s = plan.schema();
            let back = if is_changelog_schema(s) { 2 } else { 1 };
            Some(Column::from(s.qualified_field(s.fields().len() - back)))
        }
        LogicalPlan::Projection(p) => {
            let rank = top_n_below(&p.input)?;
            p.expr.iter().enumerate().find_map(|(i, e)| {
                (plain_column(e) == Some(&rank)).then(|| Column::from(p.schema.qualified_field(i)))
            })
        }
        _ => None,
    }
}

/// `rank <= N`, `rank < N`, `rank = N` (either side) → N.
pub(super) fn rank_limit(predicate: &Expr, rank: &Column) -> Option<u64> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let split = datafusion::logical_expr::utils::split_conjunction(predicate);
    split.iter().find_map(|p| {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = p else {
            return None;
        };
        let n = |e: &Expr| match e {
            Expr::Literal(v, _) => v.to_string().parse::<i64>().ok(),
            _ => None,
        };
        let is_rank = |e: &Expr| matches!(e, Expr::Column(c) if c == rank);
        let (op, n) = if is_rank(left) {
            (*op, n(right)?)
        } else if is_rank(right) {
            (op.swap()?, n(left)?)
        } else {
            return None;
        };
        match op {
            Operator::LtEq => u64::try_from(n).ok(),
            Operator::Lt => u64::try_from(n - 1).ok(),
            // `rank = N` keeps the top N, and the filter above keeps rank N
            // (a changelog's rows carry their rank, so its retractions
            // pass the filter with the rows they take back).
            Operator::Eq if n >= 1 => u64::try_from(n).ok(),
            _ => None,
        }
    })
}

pub(super) fn set_top_n_limit(plan: LogicalPlan, limit: u64) -> Result<LogicalPlan> {
    Ok(plan
        .transform_down(|p| {
            if let LogicalPlan::Extension(e) = &p
                && let Some(n) = e.node.as_any().downcast_ref::<crate::nodes::WindowTopNNode>()
            {
                let node = n.clone().with_limit(limit);
                return Ok(Transformed::new(
                    LogicalPlan::Extension(Extension { node: Arc::new(node) }),
                    true,
                    TreeNodeRecursion::Jump,
                ));
            }
            if let LogicalPlan::Extension(e) = &p
                && let Some(n) = e.node.as_any().downcast_ref::<crate::nodes::StreamTopNNode>()
            {
                let node = n.clone().with_limit(limit);
                return Ok(Transformed::new(
                    LogicalPlan::Extension(Extension { node: Arc::new(node) }),
                    true,
                    TreeNodeRecursion::Jump,
                ));
            }
            Ok(Transformed::no(p))
        })?
        .data)
}

/// `1h`, `30 min`, `2 days` as SQL intervals, for option values.
pub(super) fn humanish(v: &str) -> Option<String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = v.split_at(split);
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => "MILLISECOND",
        "s" | "sec" | "secs" | "second" | "seconds" => "SECOND",
        "m" | "min" | "mins" | "minute" | "minutes" => "MINUTE",
        "h" | "hour" | "hours" => "HOUR",
        "d" | "day" | "days" => "DAY",
        _ => return None,
    };
    (!n.is_empty()).then(|| format!("INTERVAL '{n}' {unit}"))
}

/// Whether any expression anywhere in `plan` (sub-expressions included)
/// is one `hit` says.
fn any_expression(plan: &LogicalPlan, hit: &dyn Fn(&Expr) -> bool) -> Result<bool> {
    let mut found = false;
    plan.apply(|p| {
        p.apply_expressions(|e| {
            e.apply(|e| {
                if hit(e) {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// Why an IN or EXISTS subquery that decorrelation left in an expression
/// (one in the SELECT list, say) is refused: DataFusion's physical planner
/// cannot plan it, and said so in its own terms.
pub const IN_OR_EXISTS_LEFT: &str = "`x IN (SELECT ...)` and `EXISTS (SELECT ...)` work as conditions (in WHERE, \
     HAVING or ON, alone or under AND/OR), where they become joins; elsewhere (in the SELECT list, a CASE, a \
     function's argument) DataFusion cannot plan them. Join the subquery instead: `LEFT JOIN (SELECT DISTINCT y \
     ...) AS m ON m.y = x` and test `m.y IS NOT NULL`";

/// Subqueries in expressions become joins, which streams do not support yet.
/// Subqueries left in expressions after DataFusion's decorrelation (an
/// uncorrelated scalar subquery stays one) run only over bounded tables:
/// each epoch computes them anew over the tables' versions of the epoch.
pub(super) fn check_expressions(plan: &LogicalPlan, is_static: &dyn Fn(&LogicalPlan) -> bool) -> Result<()> {
    if any_expression(plan, &|e| matches!(e, Expr::InSubquery(_) | Expr::Exists(_)))? {
        return Err(Error::Unsupported(IN_OR_EXISTS_LEFT.into()));
    }
    let found = any_expression(plan, &|e| {
        let sub = match e {
            Expr::ScalarSubquery(s) => Some(&s.subquery),
            Expr::InSubquery(s) => Some(&s.subquery.subquery),
            Expr::Exists(s) => Some(&s.subquery.subquery),
            _ => None,
        };
        sub.is_some_and(|s| !is_static(s))
    })?;
    if found {
        return Err(Error::Unsupported(
            "a subquery over a stream in an expression (a scalar subquery, or IN/EXISTS that could not become a \
             join) never has a final value; subqueries in expressions can read bounded tables only"
                .into(),
        ));
    }
    Ok(())
}

/// Where DataFusion 55 answers `x IN (SELECT ...)` wrongly, refused:
///
/// - a correlated `NOT IN`: its NULL-aware anti join looks for a NULL among
///   all the subquery's rows, not those of the outer row
///   (apache/datafusion#25336, #25347, #25480), and an equality
///   correlation fails to plan;
/// - an IN whose UNKNOWN (the subquery holds a NULL) matters: the mark join
///   it becomes reads UNKNOWN as false, so `NOT` of a correlated IN, or any
///   IN under `IS FALSE`, `COALESCE`, a comparison, keeps or drops the
///   wrong rows.
///
/// An IN only truth-tested (a WHERE or ON condition, under AND and OR, IS
/// [NOT] TRUE, CASE WHEN) is right: there UNKNOWN and false act alike (a
/// formula of AND and OR is true with UNKNOWN inputs exactly when it is
/// with false ones). So are an uncorrelated `NOT IN` and `NOT (x IN ...)`,
/// which DataFusion plans NULL-aware. Checked on the plan before
/// decorrelation, in filters and join conditions (an IN elsewhere cannot
/// be planned, and says so).
///
/// `checked` picks the subqueries this applies to: a streaming query's
/// over a stream are refused anyway, with their own reason.
pub fn check_not_in_subqueries(plan: &LogicalPlan, checked: &dyn Fn(&LogicalPlan) -> bool) -> Result<()> {
    /// How the value of an expression is used.
    #[derive(Clone, Copy, PartialEq)]
    enum Use {
        /// Only whether it is true.
        Tested,
        /// Directly under a NOT that is itself only tested.
        Negated,
        /// Any other way.
        Other,
    }
    /// Why `e` holds an IN subquery answered wrongly, used as `u`.
    fn wrong(e: &Expr, u: Use, checked: &dyn Fn(&LogicalPlan) -> bool) -> Option<&'static str> {
        use datafusion::logical_expr::Operator;
        match e {
            Expr::InSubquery(s) if checked(&s.subquery.subquery) => {
                let correlated = !s.subquery.outer_ref_columns.is_empty();
                let right = matches!(
                    (correlated, s.negated, u),
                    (_, false, Use::Tested) | (false, true, Use::Tested) | (false, false, Use::Negated)
                );
                if right {
                    return None;
                }
                Some(if correlated {
                    "a correlated `x NOT IN (SELECT y ... WHERE <correlation>)` (or NOT of such an IN, or one whose \
                     NULL answer matters) is refused: DataFusion 55 gives wrong answers for it when y holds NULLs \
                     (apache/datafusion#25336). Write it as `NOT EXISTS (SELECT 1 ... WHERE <correlation> AND (y = x \
                     OR y IS NULL OR x IS NULL))`, which means the same, or as NOT EXISTS (... AND y = x) if NULLs \
                     in y should not count"
                } else {
                    "an `x IN (SELECT ...)` whose NULL answer matters where it stands (under IS FALSE, IS NULL, \
                     COALESCE, a comparison) is refused: DataFusion 55 reads it as false when the subquery holds a \
                     NULL. Use it as a condition (in WHERE or ON, under AND, OR, CASE WHEN, IS [NOT] TRUE), or as \
                     `x NOT IN (...)` or `NOT (x IN (...))`, which are right"
                })
            }
            Expr::BinaryExpr(b) if matches!(b.op, Operator::And | Operator::Or) => {
                let inner = if u == Use::Tested { Use::Tested } else { Use::Other };
                wrong(&b.left, inner, checked).or_else(|| wrong(&b.right, inner, checked))
            }
            Expr::Not(inner) => wrong(
                inner,
                if u == Use::Tested {
                    Use::Negated
                } else {
                    Use::Other
                },
                checked,
            ),
            Expr::IsTrue(inner) | Expr::IsNotTrue(inner) => wrong(inner, Use::Tested, checked),
            Expr::Case(c) => c
                .when_then_expr
                .iter()
                .find_map(|(when, then)| {
                    let when_use = if c.expr.is_none() { Use::Tested } else { Use::Other };
                    wrong(when, when_use, checked).or_else(|| wrong(then, Use::Other, checked))
                })
                .or_else(|| c.expr.as_deref().and_then(|e| wrong(e, Use::Other, checked)))
                .or_else(|| c.else_expr.as_deref().and_then(|e| wrong(e, Use::Other, checked))),
            e => {
                let mut found = None;
                let _ = e.apply_children(|c| {
                    found = wrong(c, Use::Other, checked);
                    Ok(if found.is_some() {
                        TreeNodeRecursion::Stop
                    } else {
                        TreeNodeRecursion::Continue
                    })
                });
                found
            }
        }
    }
    let mut found = None;
    plan.apply_with_subqueries(|p| {
        // Only a filter's (or a join's) condition is truth-tested; an IN
        // anywhere else cannot be planned (see `IN_OR_EXISTS_LEFT`).
        if !matches!(p, LogicalPlan::Filter(_) | LogicalPlan::Join(_)) {
            return Ok(TreeNodeRecursion::Continue);
        }
        p.apply_expressions(|e| {
            found = wrong(e, Use::Tested, checked);
            Ok(if found.is_some() {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    })?;
    match found {
        Some(why) => Err(Error::Unsupported(why.into())),
        None => Ok(()),
    }
}

/// NTH_VALUE(x, n ORDER BY y) counts on its input arriving sorted
/// (DataFusion sorts before it in a batch query; FIRST_VALUE, LAST_VALUE,
/// ARRAY_AGG and STRING_AGG order what they keep themselves). A stream's
/// rows arrive as they come, so its answer would be wrong: refused.
/// Over bounded tables alone (a lookup join's subquery) it runs as a batch
/// query, sorted: allowed there.
pub(super) fn check_ordered_aggregates(
    plan: &LogicalPlan,
    is_static: &dyn Fn(&LogicalPlan) -> bool,
) -> Result<()> {
    let mut found = false;
    plan.apply(|p| {
        if is_static(p) {
            return Ok(TreeNodeRecursion::Jump);
        }
        p.apply_expressions(|e| {
            e.apply(|e| {
                if matches!(e, Expr::AggregateFunction(f)
                    if !f.params.order_by.is_empty() && f.func.name().eq_ignore_ascii_case("nth_value"))
                {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    if found {
        return Err(Error::Unsupported(
            "NTH_VALUE(x, n ORDER BY ...) on a stream: it needs its input sorted, and a stream's rows arrive \
             as they come; use FIRST_VALUE(x ORDER BY ...) or LAST_VALUE(x ORDER BY ...), or \
             array_element(ARRAY_AGG(x ORDER BY ...), n)"
                .into(),
        ));
    }
    Ok(())
}

/// A retraction must carry the values its row was emitted with. A
/// bounded table may change between epochs, so a subquery over it
/// evaluated on a changelog's rows (after the streaming rewrite) would take
/// back rows never emitted: `-U` with the new value after `+I` with the old.
pub(super) fn check_subqueries_over_changelogs(plan: &LogicalPlan) -> Result<()> {
    let mut found = false;
    plan.apply(|p| {
        if !p.inputs().iter().any(|i| is_changelog(i)) {
            return Ok(TreeNodeRecursion::Continue);
        }
        p.apply_expressions(|e| {
            e.apply(|e| {
                if matches!(e, Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)) {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    if found {
        return Err(Error::Unsupported(
            "a subquery over a bounded table in an expression over a changelog (the rows of an aggregate without a \
             window, an updating join, a Top-N) is not supported: the table may change between epochs, and a \
             retraction must carry the value its row was emitted with; use the subquery before the aggregate"
                .into(),
        ));
    }
    Ok(())
}

pub(super) fn is_changelog_schema(schema: &datafusion::common::DFSchema) -> bool {
    schema.fields().last().is_some_and(|f| f.name() == PLAN_OP_COLUMN)
}

/// Whether a plan's rows are a changelog (its last column is the operation).
pub fn is_changelog(plan: &LogicalPlan) -> bool {
    is_changelog_schema(plan.schema())
}

pub(super) fn is_update_aggregate(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Extension(e) if e.node.as_any().is::<UpdateAggregateNode>())
}
