//! Window calls: each `TUMBLE(...)`-like call becomes a WindowAssign node over
//! its input (a source, a view, a CTE), with its spec checked, its watermark
//! traced and, when its input drops rows, lateness judged at the source.

use super::*;
use crate::nodes::LATE_FOR;
use datafusion::common::DFSchema;

impl StreamPlanner {
    /// Plans the window calls of one statement, in order, and registers a
    /// placeholder table for each with the call's output schema.
    pub(super) async fn register_windows(&self, placeholders: &[String], with: Option<&With>) -> Result<()> {
        for ph in placeholders {
            let call = &self.job.tvfs[ph];
            let usage = format!(
                "{}(TABLE {}, DESCRIPTOR({}), ...)",
                call.kind.name(),
                call.table,
                call.time_column
            );
            let node = self
                .window_node(call, with)
                .await
                .map_err(|e| e.prefixed(&usage))?;
            let placeholder = Arc::new(StreamTable::new(
                TableDecl {
                    name: ph.clone(),
                    schema: None,
                    column_types: Vec::new(),
                    watermark: None,
                    options: Default::default(),
                    bounded: false,
                    metadata: Default::default(),
                    primary_key: Vec::new(),
                },
                Arc::new(UserDefinedLogicalNodeCore::schema(&node).as_arrow().clone()),
                None,
            ));
            self.ctx
                .register_table(ph.as_str(), placeholder as Arc<dyn TableProvider>)?;
            self.windows_lock().insert(ph.clone(), node);
        }
        Ok(())
    }

    /// `SET 'window.max_windows_per_row'`, or its default.
    pub(super) fn max_windows_per_row(&self) -> u64 {
        self.job
            .setting("window.max_windows_per_row")
            .and_then(|v| v.parse().ok())
            .unwrap_or(crate::settings::DEFAULT_MAX_WINDOWS_PER_ROW)
    }

    pub(super) fn windows_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WindowAssignNode>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window node of a call: its input is `[WITH ...] SELECT * FROM t`.
    pub(super) async fn window_node(&self, call: &TvfCall, with: Option<&With>) -> Result<WindowAssignNode> {
        let with = with.and_then(|w| {
            let pos = w
                .cte_tables
                .iter()
                .position(|c| c.alias.name.value.eq_ignore_ascii_case(&call.table))?;
            let mut w = w.clone();
            w.cte_tables.truncate(pos + 1);
            Some(w)
        });
        let sql = match &with {
            Some(w) => format!("{w} SELECT * FROM \"{}\"", call.table),
            None => format!("SELECT * FROM \"{}\"", call.table),
        };
        let plan = self
            .ctx
            .state()
            .create_logical_plan(&sql)
            .await
            .map_err(|e| self.explain_df_error(e))?;
        let input = self.replace_placeholders(plan)?;
        let idx = input
            .schema()
            .index_of_column_by_name(None, &call.time_column)
            .ok_or_else(|| Error::Plan(format!("'{}' has no column '{}'", call.table, call.time_column)))?;
        let field = input.schema().field(idx);
        if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
            return Err(Error::Plan(format!(
                "the time column must be a TIMESTAMP, but '{}' is {}",
                call.time_column,
                crate::catalog::sql_type_name(field.data_type())
            )));
        }
        let origin = match self.trace_time(&input, idx) {
            Some(TimeOrigin::Sources(s)) => {
                let mut names = s.into_iter();
                match (names.next(), names.next()) {
                    (Some(source), None) => {
                        let delay_ms = self
                            .job
                            .tables
                            .get(&source)
                            .and_then(|t| t.watermark.as_ref())
                            .map_or(0, |w| w.delay_ms);
                        WatermarkOrigin::Source { source, delay_ms }
                    }
                    (first, second) => {
                        WatermarkOrigin::Sources(first.into_iter().chain(second).chain(names).collect())
                    }
                }
            }
            Some(TimeOrigin::Upstream(lag_ms)) => WatermarkOrigin::Upstream { lag_ms },
            None => return Err(self.no_watermark(call)),
        };
        let spec = window_spec(call, self.max_windows_per_row())?;
        if let (WindowSpec::Session { .. }, WatermarkOrigin::Upstream { .. }) = (&spec, &origin) {
            return Err(Error::Unsupported(
                "SESSION windows over the results of other windows are not supported".into(),
            ));
        }
        for key in &call.partition_by {
            if input.schema().index_of_column_by_name(None, key).is_none() {
                return Err(Error::Plan(format!(
                    "PARTITION BY {key}: '{}' has no such column",
                    call.table
                )));
            }
        }
        let late_sink = self.late_sink(&origin)?;
        // A window whose input drops rows (a view or subquery with a WHERE)
        // would judge lateness among the rows it keeps; the source's
        // watermark is made of all of them. Judge it at the source instead.
        let input = match &origin {
            WatermarkOrigin::Source { source, delay_ms } if !keeps_every_row(&input) => {
                if late_sink.is_some() {
                    return Err(Error::Unsupported(format!(
                        "'late.policy' = 'sink' on '{source}' with a window over a view or subquery that \
                         filters its rows: write the window over '{source}' itself and filter its results, \
                         or leave late rows dropped"
                    )));
                }
                let Some(w) = self.job.tables.get(source).and_then(|t| t.watermark.clone()) else {
                    return Err(self.no_watermark(call));
                };
                late_filter_at(input, source, &w.column, *delay_ms)?
            }
            _ => input,
        };
        if let Some(table) = &late_sink {
            self.check_late_columns(table, input.schema())?;
        }
        let node = WindowAssignNode::try_new(
            input,
            spec,
            call.time_column.clone(),
            TableReference::bare(call.placeholder.clone()),
            origin,
        )?;
        Ok(node
            .with_partition_by(call.partition_by.clone())
            .with_late_sink(late_sink))
    }

    /// Refuses a query that drops `source`'s late rows outside a window
    /// (`what`: a join, a deduplication) when the source sends its late
    /// rows to a sink: only a window's late rows reach it, and a row the
    /// sink would never see is a row lost against the source's own words.
    pub(super) fn refuse_late_sink_outside_windows(&self, source: &str, what: &str) -> Result<()> {
        let sinks = self.job.tables.get(source).is_some_and(|d| {
            d.options
                .get("late.policy")
                .is_some_and(|p| p.eq_ignore_ascii_case("sink"))
        });
        if sinks {
            return Err(Error::Unsupported(format!(
                "'late.policy' = 'sink' on '{source}': {what} drops the late rows of '{source}' where it reads \
                 them, and only a window's late rows can go to the late sink yet: read '{source}' in a window, \
                 or set 'late.policy' = 'drop' (late rows are counted either way)"
            )));
        }
        Ok(())
    }

    /// Where a window's late rows go: `'late.policy' = 'drop'` (the default)
    /// or `'sink'` with `'late.sink' = '<table>'`, on the source.
    pub(super) fn late_sink(&self, origin: &WatermarkOrigin) -> Result<Option<String>> {
        let sources: Vec<&String> = match origin {
            WatermarkOrigin::Source { source, .. } => vec![source],
            WatermarkOrigin::Sources(s) => s.iter().collect(),
            WatermarkOrigin::Upstream { .. } => vec![],
        };
        let mut sink = None;
        for source in &sources {
            let decl = &self.job.tables[source.as_str()];
            match decl
                .options
                .get("late.policy")
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                // A late sink named without the policy that uses it: its
                // late rows were dropped without a word.
                None | Some("drop") if decl.options.get("late.sink").is_some() => {
                    return Err(Error::Plan(format!(
                        "table '{source}': 'late.sink' = '{}' is only used with 'late.policy' = 'sink' (without \
                         it, late rows are dropped): add 'late.policy' = 'sink', or remove 'late.sink'",
                        decl.options.get("late.sink").unwrap_or_default()
                    )));
                }
                None | Some("drop") => {}
                Some("sink") => {
                    let target = decl.options.get("late.sink").ok_or_else(|| {
                        Error::Plan(format!(
                            "table '{source}': 'late.policy' = 'sink' needs 'late.sink' = '<sink table>'"
                        ))
                    })?;
                    let target = target.to_ascii_lowercase();
                    match self.job.tables.get(&target) {
                        Some(t) if t.schema.is_none() || t.options.get("connector").is_some() => {}
                        _ => {
                            return Err(Error::Plan(format!(
                                "table '{source}': 'late.sink' names '{target}', which is not a declared sink table{}",
                                known_tables(&self.job)
                            )));
                        }
                    }
                    if sources.len() > 1 {
                        return Err(Error::Unsupported(format!(
                            "table '{source}': 'late.policy' = 'sink' on a window over several sources (a UNION ALL) is not supported"
                        )));
                    }
                    sink = Some(target);
                }
                Some(other) => {
                    return Err(Error::Plan(format!(
                        "table '{source}': unknown 'late.policy' '{other}' (drop or sink)"
                    )));
                }
            }
        }
        Ok(sink)
    }

    /// A late table declared with columns must declare the late rows' own:
    /// the window input's columns, then [`LATE_FOR`] (text), of their types.
    /// They are written as they are, so other declared columns or types
    /// would be ignored without a word.
    fn check_late_columns(&self, table: &str, rows: &DFSchema) -> Result<()> {
        let Some(declared) = self.job.tables.get(table).and_then(|t| t.schema.as_ref()) else {
            return Ok(());
        };
        // A late table the job reads is refused for that when the job
        // opens, which is the problem to name, not its columns.
        if self.job_reads(table) {
            return Ok(());
        }
        let same = |a: &DataType, b: &DataType| {
            crate::catalog::sql_type_name(a).eq_ignore_ascii_case(&crate::catalog::sql_type_name(b))
        };
        let expected: Vec<(String, DataType)> = rows
            .fields()
            .iter()
            .map(|f| (f.name().to_ascii_lowercase(), f.data_type().clone()))
            .chain([(LATE_FOR.to_string(), DataType::Utf8)])
            .collect();
        let fits = declared.fields().len() == expected.len()
            && declared
                .fields()
                .iter()
                .zip(&expected)
                .all(|(d, (name, t))| d.name().eq_ignore_ascii_case(name) && same(d.data_type(), t));
        if !fits {
            let show = |fields: Vec<(String, DataType)>| {
                fields
                    .iter()
                    .map(|(n, t)| format!("{n} {}", crate::catalog::sql_type_name(t)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let declared = declared
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect();
            return Err(Error::Plan(format!(
                "late sink '{table}': its late rows have the columns ({}), not the ones it declares ({}); \
                 declare it without columns",
                show(expected),
                show(declared)
            )));
        }
        Ok(())
    }

    /// Whether any statement of the job reads `table` (in FROM, a join, a
    /// subquery, or a window call).
    fn job_reads(&self, table: &str) -> bool {
        use datafusion::sql::sqlparser::ast::visit_relations;
        use std::ops::ControlFlow;
        if self
            .job
            .tvfs
            .values()
            .any(|c| c.table.eq_ignore_ascii_case(table))
        {
            return true;
        }
        let queries = self
            .job
            .inserts
            .iter()
            .map(|i| &i.query)
            .chain(self.job.views.iter().map(|v| &v.query));
        queries.into_iter().any(|q| {
            visit_relations(q.as_ref(), |name| {
                let last = name.0.last().map(|p| p.to_string()).unwrap_or_default();
                if last.trim_matches('"').eq_ignore_ascii_case(table) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .is_break()
        })
    }

    pub(super) fn no_watermark(&self, call: &TvfCall) -> Error {
        let hint = match self.job.tables.get(&call.table) {
            Some(decl) => match &decl.watermark {
                Some(w) => format!(
                    "table '{}' has its watermark on '{}', not '{}'",
                    call.table, w.column, call.time_column
                ),
                None => format!(
                    "table '{}' declares none; add `WATERMARK FOR {} AS {} - INTERVAL '5' SECOND` to its CREATE TABLE",
                    call.table, call.time_column, call.time_column
                ),
            },
            None => format!(
                "'{}' of '{}' is neither a source's watermark column nor the window_end/window_time of an upstream window",
                call.time_column, call.table
            ),
        };
        Error::Unsupported(format!(
            "a window needs an event-time column with a watermark, and {hint}"
        ))
    }

    /// `TableScan(__weir_tvf_N)` → the call's `WindowAssign` node.
    pub(super) fn replace_placeholders(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let windows = self.windows_lock().clone();
        let out = plan.transform_up_with_subqueries(|p| {
            let LogicalPlan::TableScan(scan) = &p else {
                return Ok(Transformed::no(p));
            };
            let name = scan.table_name.table();
            if !name.starts_with(TVF_PREFIX) {
                return Ok(Transformed::no(p));
            }
            let Some(node) = windows.get(name) else {
                return Err(DataFusionError::Plan(format!(
                    "window call {name} was not planned"
                )));
            };
            let mut plan = LogicalPlan::Extension(Extension {
                node: Arc::new(node.clone()),
            });
            if let Some(projection) = &scan.projection {
                let cols: Vec<Expr> = projection
                    .iter()
                    .map(|&i| Expr::Column(Column::from(plan.schema().qualified_field(i))))
                    .collect();
                plan = LogicalPlanBuilder::from(plan).project(cols)?.build()?;
            }
            Ok(Transformed::yes(plan))
        })?;
        Ok(out.data)
    }
}

/// A window call's parameters.
/// The window spec of a call. A HOP or CUMULATE that would put each row in
/// more than `max_per_row` windows is refused: each window is kept and
/// emitted, so 1 ms slides over a day would grow without bound.
pub(super) fn window_spec(call: &TvfCall, max_per_row: u64) -> Result<WindowSpec> {
    let explosive = |windows: i64, what: &str| -> Result<()> {
        if windows as u64 > max_per_row {
            return Err(Error::Plan(format!(
                "each row would be in {windows} windows (the size over the {what}), more than the limit \
                 of {max_per_row}; use a larger {what} or a smaller size, or raise the limit with \
                 SET 'window.max_windows_per_row' = '{windows}'"
            )));
        }
        Ok(())
    };
    let ms: Vec<i64> = call.args.iter().map(|a| interval_ms(a)).collect::<Result<_>>()?;
    // Every interval but an offset (HOP's and CUMULATE's third).
    let lengths = match call.kind {
        TvfKind::Hop | TvfKind::Cumulate => &ms[..ms.len().min(2)],
        _ => &ms[..ms.len().min(1)],
    };
    if lengths.iter().any(|&m| m <= 0) && call.kind != TvfKind::Tumble {
        let what = match call.kind {
            TvfKind::Hop => "the slide and the size",
            TvfKind::Cumulate => "the step and the size",
            _ => "the gap",
        };
        return Err(Error::Plan(format!("{what} of a window must be positive")));
    }
    // An offset shifts every window by it; one of a whole period or more
    // gives the same windows as its remainder (as in Flink, which takes
    // any offset, of either sign).
    let offset = |o: Option<&i64>, period: i64| -> i64 { o.copied().unwrap_or(0) % period };
    Ok(match call.kind {
        TvfKind::Tumble => {
            if ms[0] <= 0 {
                return Err(Error::Plan("the window size must be positive".into()));
            }
            WindowSpec::Tumble {
                size_ms: ms[0],
                offset_ms: offset(ms.get(1), ms[0]),
            }
        }
        TvfKind::Hop => {
            let (slide_ms, size_ms) = (ms[0], ms[1]);
            if size_ms % slide_ms != 0 {
                return Err(Error::Plan(format!(
                    "the size ({}) must be a whole multiple of the slide ({})",
                    crate::nodes::fmt_ms(size_ms),
                    crate::nodes::fmt_ms(slide_ms)
                )));
            }
            explosive(size_ms / slide_ms, "slide")?;
            WindowSpec::Hop {
                slide_ms,
                size_ms,
                offset_ms: offset(ms.get(2), slide_ms),
            }
        }
        TvfKind::Cumulate => {
            let (step_ms, size_ms) = (ms[0], ms[1]);
            if size_ms % step_ms != 0 {
                return Err(Error::Plan(format!(
                    "the size ({}) must be a whole multiple of the step ({})",
                    crate::nodes::fmt_ms(size_ms),
                    crate::nodes::fmt_ms(step_ms)
                )));
            }
            explosive(size_ms / step_ms, "step")?;
            WindowSpec::Cumulate {
                step_ms,
                size_ms,
                offset_ms: offset(ms.get(2), size_ms),
            }
        }
        TvfKind::Session => WindowSpec::Session { gap_ms: ms[0] },
    })
}

/// Whether every row a plan reads reaches its output (only projections and
/// aliases over a scan).
pub(super) fn keeps_every_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::Projection(p) => keeps_every_row(&p.input),
        LogicalPlan::SubqueryAlias(a) => keeps_every_row(&a.input),
        _ => false,
    }
}

/// `plan` with each scan of `source` under a [`crate::nodes::LateFilterNode`].
pub(super) fn late_filter_at(
    plan: LogicalPlan,
    source: &str,
    time_column: &str,
    delay_ms: i64,
) -> Result<LogicalPlan> {
    Ok(plan
        .transform_up(|p| match p {
            LogicalPlan::TableScan(ref s)
                if s.table_name.table() == source
                    && s.projected_schema
                        .index_of_column_by_name(None, time_column)
                        .is_some() =>
            {
                Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                    node: Arc::new(crate::nodes::LateFilterNode {
                        input: p,
                        source: source.to_string(),
                        time_column: time_column.to_string(),
                        delay_ms,
                    }),
                })))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data)
}
