//! From a job's `INSERT INTO ... SELECT` to an incremental logical plan.
//!
//! Each insert becomes a [`PipelinePlan`]: a DataFusion `LogicalPlan` in
//! which window calls are [`WindowAssignNode`]s, windowed aggregates are
//! [`WindowAggregateNode`]s and aggregates without a window are
//! [`UpdateAggregateNode`]s. Everything else in it is stateless (projection,
//! filter, union, scalar functions) and runs as DataFusion plans it. Nodes
//! that would need unbounded state or a complete input (ORDER BY, LIMIT,
//! joins, OVER windows) are refused here, with a message saying what to
//! write instead.
//!
//! Window calls are planned statement by statement: the input of
//! `TUMBLE(TABLE t, DESCRIPTOR(ts), ...)` is whatever `SELECT * FROM t` means
//! at that point (a source, a view, a CTE of the statement), and `ts` is
//! traced back to where its watermark comes from: a source's `WATERMARK`
//! column, several sources through a `UNION ALL`, or a window column of an
//! upstream windowed aggregate (windows over windows).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, TableReference};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    Expr, Extension, Filter, LogicalPlan, LogicalPlanBuilder, Projection, TableType,
    UserDefinedLogicalNodeCore, cast, col,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Query, Statement, With};

use crate::job::{Insert, interval_ms};
use crate::nodes::{
    OP_COLUMN, PLAN_OP_COLUMN, UpdateAggregateNode, WatermarkOrigin, WindowAggregateNode, WindowAssignNode,
    WindowColumn, WindowSpec,
};
use crate::preprocess::Emit;
use crate::preprocess::{TVF_PREFIX, TvfCall, TvfKind};
use crate::{Error, Job, Result, TableDecl, strip_df};

/// Creates the physical scan of a source. The engine implements this; the
/// planner only passes it to DataFusion.
pub trait ScanProvider: Send + Sync + fmt::Debug {
    /// The scan of `table` (its declared `schema`), projected to `projection`.
    fn scan(
        &self,
        table: &TableDecl,
        schema: SchemaRef,
        projection: Option<&Vec<usize>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>>;
}

/// A declared source (or a placeholder) as a DataFusion table.
#[derive(Debug)]
struct StreamTable {
    decl: TableDecl,
    schema: SchemaRef,
    scans: Option<Arc<dyn ScanProvider>>,
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        match &self.scans {
            Some(s) => s.scan(&self.decl, Arc::clone(&self.schema), projection),
            None => datafusion::common::plan_err!(
                "'{}' is a stream and has no scan in this context",
                self.decl.name
            ),
        }
    }
}

/// The plan of one `INSERT INTO` of a job (or of a live query's `SELECT`).
#[derive(Clone, Debug)]
pub struct PipelinePlan {
    /// Position of the insert in the job (0-based); names its operators.
    pub index: usize,
    /// The sink; `None` for a live query, whose rows go to the caller.
    pub sink: Option<TableDecl>,
    /// The incremental plan. Its output is what the sink receives.
    pub plan: LogicalPlan,
    /// The sources it reads.
    pub sources: BTreeSet<String>,
    /// Whether it keeps state.
    pub stateful: bool,
    /// Whether its output is a changelog (first column `op`).
    pub changelog: bool,
    /// The statement, for messages: its first words and its line in the
    /// job's text.
    pub statement: String,
}

/// Plans a job's queries against its declared tables.
pub struct StreamPlanner {
    ctx: SessionContext,
    job: Job,
    /// Window calls planned so far, by placeholder.
    windows: Mutex<HashMap<String, WindowAssignNode>>,
}

/// DataFusion optimizer rules that would undo the streaming shape. The
/// single-distinct rule splits `COUNT(DISTINCT x)` into two stacked
/// aggregates, which would have to be two stateful operators; the
/// accumulator's own distinct state is what a window needs.
const REMOVED_RULES: &[&str] = &["single_distinct_aggregation_to_group_by"];

impl StreamPlanner {
    /// A planner over the job's tables; `scans` builds physical source scans
    /// (`None` when only logical plans are wanted).
    pub fn new(job: &Job, scans: Option<Arc<dyn ScanProvider>>, config: SessionConfig) -> Result<Self> {
        let ctx = SessionContext::new_with_config(config);
        for rule in REMOVED_RULES {
            ctx.remove_optimizer_rule(rule);
        }
        for decl in job.tables.values() {
            let Some(schema) = &decl.schema else { continue };
            let table = Arc::new(StreamTable {
                decl: decl.clone(),
                schema: Arc::clone(schema),
                scans: scans.clone(),
            });
            ctx.register_table(decl.name.as_str(), table as Arc<dyn TableProvider>)?;
        }
        Ok(Self {
            ctx,
            job: job.clone(),
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// The DataFusion context the plans are made in (functions, config).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans the job's views, then every insert.
    pub async fn plan(&self) -> Result<Vec<PipelinePlan>> {
        self.plan_all()
            .await
            .map_err(|e| e.without_placeholders(&self.job.tvfs))
    }

    async fn plan_all(&self) -> Result<Vec<PipelinePlan>> {
        for view in &self.job.views {
            self.plan_view(view)
                .await
                .map_err(|e| e.in_statement(view.line, &view.sql))?;
        }
        let mut out = Vec::new();
        for (index, insert) in self.job.inserts.iter().enumerate() {
            let mut plan = self
                .plan_insert(index, insert)
                .await
                .map_err(|e| e.in_statement(insert.line, &insert.sql))?;
            plan.statement = statement_text(insert.line, &insert.sql);
            out.push(plan);
        }
        if let Some(select) = &self.job.select {
            let mut plan = self
                .plan_pipeline(out.len(), None, &select.query, &select.tvfs, None)
                .await
                .map_err(|e| e.in_statement(select.line, &select.sql))?;
            plan.statement = statement_text(select.line, &select.sql);
            out.push(plan);
        }
        Ok(out)
    }

    async fn plan_view(&self, view: &crate::job::View) -> Result<()> {
        self.register_windows(&view.tvfs, view.query.with.as_ref())
            .await?;
        let plan = self.plan_query(&view.query).await?;
        let table = ViewTable::new(plan, Some(view.sql.clone()));
        self.ctx.register_table(view.name.as_str(), Arc::new(table))?;
        Ok(())
    }

    async fn plan_query(&self, query: &Query) -> Result<LogicalPlan> {
        let statement = DFStatement::Statement(Box::new(Statement::Query(Box::new(query.clone()))));
        let plan = self
            .ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.explain_df_error(e))?;
        self.replace_placeholders(plan)
    }

    async fn plan_insert(&self, index: usize, insert: &Insert) -> Result<PipelinePlan> {
        let sink = self.job.tables.get(&insert.target).cloned().ok_or_else(|| {
            Error::Plan(format!(
                "unknown sink table '{}': declare it with CREATE TABLE {} WITH ('connector' = 'files', 'path' = ..., 'format' = 'parquet'){}",
                insert.target,
                insert.target,
                known_tables(&self.job)
            ))
        })?;
        self.plan_pipeline(index, Some(sink), &insert.query, &insert.tvfs, insert.emit)
            .await
    }

    /// Plans one streaming query: an insert's (`sink` given) or a live
    /// query's (`sink` None: its rows, changelog or not, go to the caller).
    async fn plan_pipeline(
        &self,
        index: usize,
        sink: Option<TableDecl>,
        query: &Query,
        tvfs: &[String],
        emit: Option<Emit>,
    ) -> Result<PipelinePlan> {
        self.register_windows(tvfs, query.with.as_ref()).await?;
        let plan = self.plan_query(query).await?;
        let plan = self
            .ctx
            .state()
            .optimize(&plan)
            .map_err(|e| self.explain_df_error(e))?;
        let plan = self.rewrite_streaming(plan, emit)?;
        let changelog = is_changelog(&plan);
        let plan = finish_output(plan, changelog)?;
        let plan = match &sink {
            Some(sink) => {
                check_sink(sink, changelog)?;
                conform_to_sink(plan, sink, changelog)?
            }
            None => plan,
        };

        let mut sources = BTreeSet::new();
        let mut stateful = false;
        plan.apply(|p| {
            match p {
                LogicalPlan::TableScan(s) => {
                    sources.insert(s.table_name.table().to_string());
                }
                LogicalPlan::Extension(e)
                    if e.node.as_any().is::<WindowAggregateNode>()
                        || e.node.as_any().is::<UpdateAggregateNode>()
                        || e.node.as_any().is::<crate::nodes::WindowTopNNode>() =>
                {
                    stateful = true;
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(PipelinePlan {
            index,
            sink,
            plan,
            sources,
            stateful,
            changelog,
            statement: String::new(),
        })
    }

    fn explain_df_error(&self, e: DataFusionError) -> Error {
        if let DataFusionError::External(inner) = e {
            return match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::Plan(other.to_string()),
            };
        }
        let msg = strip_df(&e);
        // "table 'datafusion.public.x' not found"
        if let Some(rest) = msg.strip_prefix("table '")
            && let Some((name, _)) = rest.split_once("' not found")
        {
            let short = name.rsplit('.').next().unwrap_or(name);
            return Error::Plan(format!("unknown table '{short}'{}", known_tables(&self.job)));
        }
        Error::Plan(msg)
    }

    /// Plans the window calls of one statement, in order, and registers a
    /// placeholder table for each with the call's output schema.
    async fn register_windows(&self, placeholders: &[String], with: Option<&With>) -> Result<()> {
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
            let placeholder = Arc::new(StreamTable {
                decl: TableDecl {
                    name: ph.clone(),
                    schema: None,
                    column_types: Vec::new(),
                    watermark: None,
                    options: Default::default(),
                },
                schema: Arc::new(UserDefinedLogicalNodeCore::schema(&node).as_arrow().clone()),
                scans: None,
            });
            self.ctx
                .register_table(ph.as_str(), placeholder as Arc<dyn TableProvider>)?;
            self.windows_lock().insert(ph.clone(), node);
        }
        Ok(())
    }

    /// `SET 'window.max_windows_per_row'`, or its default.
    fn max_windows_per_row(&self) -> u64 {
        self.job
            .setting("window.max_windows_per_row")
            .and_then(|v| v.parse().ok())
            .unwrap_or(crate::settings::DEFAULT_MAX_WINDOWS_PER_ROW)
    }

    fn windows_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WindowAssignNode>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window node of a call: its input is `[WITH ...] SELECT * FROM t`.
    async fn window_node(&self, call: &TvfCall, with: Option<&With>) -> Result<WindowAssignNode> {
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
                field.data_type()
            )));
        }
        let origin = match self.trace_time(&input, idx) {
            Some(TimeOrigin::Sources(s)) if s.len() == 1 => {
                let source = s.into_iter().next().expect("one source");
                let delay_ms = self.job.tables[&source]
                    .watermark
                    .as_ref()
                    .map_or(0, |w| w.delay_ms);
                WatermarkOrigin::Source { source, delay_ms }
            }
            Some(TimeOrigin::Sources(s)) => WatermarkOrigin::Sources(s.into_iter().collect()),
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

    /// Where a window's late rows go: `'late.policy' = 'drop'` (the default)
    /// or `'sink'` with `'late.sink' = '<table>'`, on the source.
    fn late_sink(&self, origin: &WatermarkOrigin) -> Result<Option<String>> {
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

    fn no_watermark(&self, call: &TvfCall) -> Error {
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

    /// Follows an output column down to where its watermark comes from.
    fn trace_time(&self, plan: &LogicalPlan, idx: usize) -> Option<TimeOrigin> {
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
            LogicalPlan::Extension(e) => {
                if let Some(n) = e.node.as_any().downcast_ref::<WindowAssignNode>() {
                    let first = n.first_window_column();
                    return (idx < first).then(|| self.trace_time(&n.input, idx)).flatten();
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

    /// `TableScan(__weir_tvf_N)` → the call's `WindowAssign` node.
    fn replace_placeholders(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let windows = self.windows_lock().clone();
        let out = plan.transform_up(|p| {
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

    /// The streaming rewrite: aggregates become window or update aggregates;
    /// changelogs carry their `op` column up; what cannot run incrementally
    /// is refused.
    fn rewrite_streaming(&self, plan: LogicalPlan, emit: Option<Emit>) -> Result<LogicalPlan> {
        check_expressions(&plan)?;
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
    fn ttl_ms(&self, plan: &LogicalPlan) -> Result<Option<i64>> {
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

    fn rewrite_node(
        &self,
        p: LogicalPlan,
        emit: Option<Emit>,
        ttl_ms: Option<i64>,
        sessions_used: &mut BTreeSet<String>,
    ) -> Result<Transformed<LogicalPlan>> {
        match p {
            LogicalPlan::Aggregate(agg) => {
                if agg.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                    return Err(Error::Unsupported(
                        "GROUPING SETS, CUBE and ROLLUP are not supported on streams".into(),
                    ));
                }
                if is_changelog(&agg.input) {
                    return Err(Error::Unsupported(
                        "aggregating the changelog of another aggregate (retractions) is not supported yet".into(),
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
                if windows.is_empty() {
                    if emit == Some(Emit::OnWindowClose) {
                        return Err(Error::Unsupported(
                            "EMIT ON WINDOW CLOSE needs a window: group by the window_start and window_end of a window table function".into(),
                        ));
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
                let LogicalPlan::Extension(e) = f.input.as_ref() else {
                    unreachable!("checked by is_update_aggregate")
                };
                let n = e.node.as_any().downcast_ref::<UpdateAggregateNode>().expect("checked");
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
                Ok(Transformed::no(LogicalPlan::Union(u)))
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
            LogicalPlan::Limit(_) => Err(Error::Unsupported(
                "LIMIT on an unbounded stream never completes; filter the rows, or keep the top N per window with \
                 ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY ...) <= N"
                    .into(),
            )),
            LogicalPlan::Window(w) => self.window_top_n(w).map(Transformed::yes),
            // `WHERE rn <= N` over a window Top-N: keep only N per partition.
            LogicalPlan::Filter(f) if top_n_below(&f.input).is_some() => {
                let Some(limit) = top_n_below(&f.input).and_then(|rank_col| rank_limit(&f.predicate, &rank_col)) else {
                    return Ok(Transformed::no(LogicalPlan::Filter(f)));
                };
                let input = set_top_n_limit(f.input.as_ref().clone(), limit)?;
                let filter = Filter::try_new(f.predicate.clone(), Arc::new(input))?;
                Ok(Transformed::yes(LogicalPlan::Filter(filter)))
            }
            LogicalPlan::Join(_) => Err(Error::Unsupported("joins of streams are not supported yet".into())),
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

    /// `ROW_NUMBER() / RANK() / DENSE_RANK() OVER (PARTITION BY window_start,
    /// window_end, ... ORDER BY ...)`: a window Top-N. Other OVER windows
    /// would need their whole input, which a stream never completes.
    fn window_top_n(&self, w: datafusion::logical_expr::Window) -> Result<LogicalPlan> {
        use datafusion::logical_expr::expr::{WindowFunction, WindowFunctionDefinition};
        let refuse = || {
            Error::Unsupported(
                "window functions with OVER (...) are not run incrementally, except ranking within windows: \
                 ROW_NUMBER(), RANK() or DENSE_RANK() OVER (PARTITION BY window_start, window_end[, ...] ORDER BY ...) \
                 over a window table function; for totals, aggregate with GROUP BY window_start, window_end"
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
            return Err(refuse());
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

    fn window_aggregate(
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
fn top_n_below(plan: &LogicalPlan) -> Option<Column> {
    match plan {
        LogicalPlan::Extension(e) if e.node.as_any().is::<crate::nodes::WindowTopNNode>() => {
            let s = plan.schema();
            Some(Column::from(s.qualified_field(s.fields().len() - 1)))
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

/// `rank <= N`, `rank < N`, `rank = 1` (either side) → N.
fn rank_limit(predicate: &Expr, rank: &Column) -> Option<u64> {
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
            Operator::Eq if n == 1 => Some(1),
            _ => None,
        }
    })
}

fn set_top_n_limit(plan: LogicalPlan, limit: u64) -> Result<LogicalPlan> {
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
            Ok(Transformed::no(p))
        })?
        .data)
}

/// `1h`, `30 min`, `2 days` as SQL intervals, for option values.
fn humanish(v: &str) -> Option<String> {
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

#[derive(Clone, Debug, PartialEq, Eq)]
enum TimeOrigin {
    /// Watermarked sources (more than one through a union).
    Sources(BTreeSet<String>),
    /// A window column of an upstream window aggregate; lag in ms.
    Upstream(i64),
}

impl Error {
    fn prefixed(self, what: &str) -> Error {
        match self {
            Error::Plan(m) => Error::Plan(format!("{what}: {m}")),
            Error::Unsupported(m) => Error::Unsupported(format!("{what}: {m}")),
            Error::Syntax(m) => Error::Syntax(format!("{what}: {m}")),
            e => e,
        }
    }
}

/// A statement for messages: `` `INSERT INTO out SELECT ...` (line 12) ``.
fn statement_text(line: u64, sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let head = if flat.chars().count() > 60 {
        format!("{}...", flat.chars().take(57).collect::<String>())
    } else {
        flat
    };
    format!("`{head}` (line {line})")
}

fn known_tables(job: &Job) -> String {
    if job.tables.is_empty() && job.views.is_empty() {
        return " (no tables are declared)".into();
    }
    let mut names: Vec<&str> = job.tables.keys().map(String::as_str).collect();
    names.extend(job.views.iter().map(|v| v.name.as_str()));
    format!(" (declared tables: {})", names.join(", "))
}

/// A window call's parameters.
/// The window spec of a call. A HOP or CUMULATE that would put each row in
/// more than `max_per_row` windows is refused: each window is kept and
/// emitted, so 1 ms slides over a day would grow without bound.
fn window_spec(call: &TvfCall, max_per_row: u64) -> Result<WindowSpec> {
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
    if ms.iter().any(|&m| m <= 0) && call.kind != TvfKind::Tumble {
        return Err(Error::Plan("window intervals must be positive".into()));
    }
    let offset = |o: Option<&i64>, unit: i64, what: &str| -> Result<i64> {
        let o = o.copied().unwrap_or(0);
        if o.abs() >= unit {
            return Err(Error::Plan(format!("the offset must be smaller than the {what}")));
        }
        Ok(o)
    };
    Ok(match call.kind {
        TvfKind::Tumble => {
            if ms[0] <= 0 {
                return Err(Error::Plan("the window size must be positive".into()));
            }
            WindowSpec::Tumble {
                size_ms: ms[0],
                offset_ms: offset(ms.get(1), ms[0], "window size")?,
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
                offset_ms: offset(ms.get(2), slide_ms, "slide")?,
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
                offset_ms: offset(ms.get(2), size_ms, "size")?,
            }
        }
        TvfKind::Session => WindowSpec::Session { gap_ms: ms[0] },
    })
}

/// Subqueries in expressions become joins, which streams do not support yet.
fn check_expressions(plan: &LogicalPlan) -> Result<()> {
    let mut found = false;
    plan.apply(|p| {
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
            "subqueries in expressions (IN (SELECT ...), EXISTS, scalar subqueries) are joins, which streams do not support yet".into(),
        ));
    }
    Ok(())
}

fn plain_column(e: &Expr) -> Option<&Column> {
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
struct WindowTrace {
    spec: WindowSpec,
    col: WindowColumn,
    lag_ms: i64,
    /// The window call (`None`: an upstream window aggregate's output).
    assign: Option<TableReference>,
    partition_by: Vec<String>,
}

/// Follows a column down through projections (plain column references and
/// aliases), filters, aliases and unions to a window column.
fn trace_window(plan: &LogicalPlan, column: &Column) -> Option<WindowTrace> {
    let idx = plan.schema().index_of_column(column).ok()?;
    trace_window_index(plan, idx)
}

fn trace_window_index(plan: &LogicalPlan, idx: usize) -> Option<WindowTrace> {
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
fn trace_input_column(plan: &LogicalPlan, column: &Column, assign: &TableReference) -> Option<String> {
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
fn clean_path(plan: &LogicalPlan, assign: &TableReference) -> bool {
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

/// Whether every row a plan reads reaches its output (only projections and
/// aliases over a scan).
fn keeps_every_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::Projection(p) => keeps_every_row(&p.input),
        LogicalPlan::SubqueryAlias(a) => keeps_every_row(&a.input),
        _ => false,
    }
}

/// `plan` with each scan of `source` under a [`crate::nodes::LateFilterNode`].
fn late_filter_at(plan: LogicalPlan, source: &str, time_column: &str, delay_ms: i64) -> Result<LogicalPlan> {
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

/// Whether aggregate arguments read a window column.
fn references_window(aggr: &[Expr], input: &LogicalPlan) -> bool {
    aggr.iter()
        .any(|e| e.column_refs().iter().any(|c| trace_window(input, c).is_some()))
}

/// Switches a window call to emitting slices.
fn set_slices(plan: LogicalPlan, assign: &TableReference) -> Result<LogicalPlan> {
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

fn is_changelog_schema(schema: &datafusion::common::DFSchema) -> bool {
    schema.fields().last().is_some_and(|f| f.name() == PLAN_OP_COLUMN)
}

/// Whether a plan's rows are a changelog (its last column is the operation).
pub fn is_changelog(plan: &LogicalPlan) -> bool {
    is_changelog_schema(plan.schema())
}

fn is_update_aggregate(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Extension(e) if e.node.as_any().is::<UpdateAggregateNode>())
}

/// The output's final shape: a changelog's operation column becomes the
/// first column, named `op` (as Flink's SQL client shows it).
fn finish_output(plan: LogicalPlan, changelog: bool) -> Result<LogicalPlan> {
    if !changelog {
        return Ok(plan);
    }
    let schema = Arc::clone(plan.schema());
    let n = schema.fields().len();
    let mut exprs = vec![Expr::Column(Column::from(schema.qualified_field(n - 1))).alias(OP_COLUMN)];
    for i in 0..n - 1 {
        let (q, f) = schema.qualified_field(i);
        exprs.push(Expr::Column(Column::from((q, f))).alias(f.name()));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// A changelog can only go to a sink that accepts one.
fn check_sink(sink: &TableDecl, changelog: bool) -> Result<()> {
    let mode = sink.options.get("mode").unwrap_or("append").to_ascii_lowercase();
    match (mode.as_str(), changelog) {
        ("append", false) | ("changelog", _) => Ok(()),
        ("append", true) => Err(Error::Unsupported(format!(
            "the query produces a changelog (an aggregate without a window updates its rows), but sink '{}' is \
             append-only: declare it with 'mode' = 'changelog' to receive op/+I/-U/+U/-D rows, or aggregate over a \
             window (TUMBLE, HOP, CUMULATE, SESSION) to emit final rows",
            sink.name
        ))),
        (other, _) => Err(Error::Plan(format!(
            "sink '{}': unknown mode '{other}' (append or changelog)",
            sink.name
        ))),
    }
}

/// When the sink declares columns, the query's output is cast to them by
/// position (as Flink does); otherwise the sink takes the query's schema.
fn conform_to_sink(plan: LogicalPlan, sink: &TableDecl, changelog: bool) -> Result<LogicalPlan> {
    let Some(declared) = &sink.schema else {
        return Ok(plan);
    };
    let out = plan.schema();
    let skip = usize::from(changelog);
    let n = out.fields().len() - skip;
    if n != declared.fields().len() {
        return Err(Error::Plan(format!(
            "the query produces {n} columns but sink '{}' declares {}",
            sink.name,
            declared.fields().len()
        )));
    }
    let mut exprs = Vec::with_capacity(out.fields().len());
    if changelog {
        exprs.push(col(Column::from(out.qualified_field(0))));
    }
    for i in 0..n {
        let column = Expr::Column(Column::from(out.qualified_field(i + skip)));
        let target = declared.field(i);
        let given = out.field(i + skip);
        let e = if given.data_type() == target.data_type() {
            column
        } else if sink_cast_allowed(given.data_type(), target.data_type()) {
            cast(column, target.data_type().clone())
        } else {
            let declared_type = sink
                .column_types
                .get(i)
                .cloned()
                .unwrap_or_else(|| crate::catalog::sql_type_name(target.data_type()));
            return Err(Error::Plan(format!(
                "sink table '{}': column '{}' (column {} of {n}) is declared {declared_type}, but the query gives \
                 '{}' of type {}, which does not convert to it; CAST it in the query if that is meant",
                sink.name,
                target.name(),
                i + 1,
                given.name(),
                crate::catalog::sql_type_name(given.data_type())
            )));
        };
        exprs.push(e.alias(target.name()));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Whether a query's column of type `given` is cast to a sink's declared
/// `target` without asking: numbers to numbers, text to text, times to
/// times, anything to text. Others (text to a number or a boolean) are
/// refused at planning rather than failing on the first row that does not
/// parse.
fn sink_cast_allowed(given: &DataType, target: &DataType) -> bool {
    use DataType::*;
    let text = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let time = |t: &DataType| matches!(t, Timestamp(_, _) | Date32 | Date64);
    (given.is_numeric() && target.is_numeric())
        || text(target)
        || (time(given) && time(target))
        || matches!(given, Null)
        || (matches!(given, Boolean) && matches!(target, Boolean))
        || (matches!(given, Binary | LargeBinary | BinaryView)
            && matches!(target, Binary | LargeBinary | BinaryView))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &str = "
        CREATE TABLE bids (auction BIGINT, price BIGINT, url VARCHAR, date_time TIMESTAMP(3),
          WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
          WITH ('connector' = 'files', 'path' = 'data/', 'format' = 'parquet');
        CREATE TABLE asks (auction BIGINT, price BIGINT, url VARCHAR, date_time TIMESTAMP(3),
          WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
          WITH ('connector' = 'files', 'path' = 'asks/', 'format' = 'parquet');
        CREATE TABLE plain (a BIGINT, ts TIMESTAMP(3)) WITH ('connector' = 'files', 'path' = 'p/', 'format' = 'csv');
        CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
        CREATE TABLE changes WITH ('connector' = 'files', 'path' = 'ch/', 'format' = 'parquet', 'mode' = 'changelog');";

    async fn plan_sql(sql: &str) -> Result<Vec<PipelinePlan>> {
        let job = Job::parse(&format!("{TABLES}\n{sql}"))?;
        StreamPlanner::new(&job, None, SessionConfig::new())?.plan().await
    }

    async fn plan(query: &str) -> Result<Vec<PipelinePlan>> {
        plan_sql(&format!("INSERT INTO out {query};")).await
    }

    async fn plan_err(query: &str) -> String {
        plan(query).await.unwrap_err().to_string()
    }

    fn text(p: &PipelinePlan) -> String {
        p.plan.display_indent().to_string()
    }

    #[tokio::test]
    async fn a_tumbling_aggregate_becomes_a_window_aggregate() {
        let p = plan(
            "SELECT window_start, window_end, auction, COUNT(*) AS n, SUM(price) AS s \
             FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) \
             WHERE price > 10 GROUP BY window_start, window_end, auction HAVING COUNT(*) > 1",
        )
        .await
        .unwrap();
        let t = text(&p[0]);
        assert!(p[0].stateful && !p[0].changelog);
        assert!(t.contains("WindowAggregate: TUMBLE(size=10s) groupBy"), "{t}");
        assert!(t.contains("WindowAssign: TUMBLE(size=10s) on date_time"), "{t}");
        assert!(
            t.contains("watermark from source bids (max event time - 5s)"),
            "{t}"
        );
        assert_eq!(p[0].sources, BTreeSet::from(["bids".to_string()]));
        let names: Vec<String> = p[0]
            .plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, vec!["window_start", "window_end", "auction", "n", "s"]);
    }

    #[tokio::test]
    async fn the_window_is_traced_through_aliases_and_subqueries() {
        let p = plan(
            "SELECT ws, we, c FROM (SELECT w.window_start AS ws, w.window_end AS we, COUNT(DISTINCT w.auction) AS c \
             FROM (SELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '1' MINUTE)) WHERE url <> '') AS w \
             GROUP BY w.window_start, w.window_end)",
        )
        .await
        .unwrap();
        let t = text(&p[0]);
        assert!(t.contains("WindowAggregate"), "{t}");
        assert!(
            !t.lines().any(|l| l.trim_start().starts_with("Aggregate:")),
            "the distinct must stay one aggregate: {t}"
        );
    }

    #[tokio::test]
    async fn hop_and_cumulate_aggregate_slices_when_the_path_is_clean() {
        let p = plan(
            "SELECT window_start, window_end, COUNT(*) FROM TABLE(HOP(TABLE bids, DESCRIPTOR(date_time), \
             INTERVAL '2' SECOND, INTERVAL '10' SECOND)) WHERE price > 3 GROUP BY window_start, window_end",
        )
        .await
        .unwrap();
        let t = text(&p[0]);
        assert!(t.contains("HOP(slide=2s, size=10s) over slices"), "{t}");
        assert!(t.contains("(slices)"), "{t}");
        // A filter on the window columns needs the exact windows.
        let p = plan(
            "SELECT window_start, window_end, COUNT(*) FROM TABLE(CUMULATE(TABLE bids, DESCRIPTOR(date_time), \
             INTERVAL '2' SECOND, INTERVAL '10' SECOND)) WHERE window_end > window_start + INTERVAL '4' SECOND \
             GROUP BY window_start, window_end",
        )
        .await
        .unwrap();
        let t = text(&p[0]);
        assert!(t.contains("CUMULATE(step=2s, size=10s) groupBy"), "{t}");
        assert!(!t.contains("slices"), "{t}");
        let e = plan_err(
            "SELECT window_start, window_end, COUNT(*) FROM TABLE(HOP(TABLE bids, DESCRIPTOR(date_time), \
             INTERVAL '3' SECOND, INTERVAL '10' SECOND)) GROUP BY window_start, window_end",
        )
        .await;
        assert!(e.contains("whole multiple of the slide"), "{e}");
    }

    #[tokio::test]
    async fn sessions_partition_by_keys_in_the_group_by() {
        let p = plan(
            "SELECT window_start, window_end, auction, COUNT(*) FROM TABLE(SESSION(TABLE bids PARTITION BY auction, \
             DESCRIPTOR(date_time), INTERVAL '30' SECOND)) GROUP BY window_start, window_end, auction",
        )
        .await
        .unwrap();
        assert!(text(&p[0]).contains("SESSION(gap=30s)"));
        let e = plan_err(
            "SELECT window_start, window_end, COUNT(*) FROM TABLE(SESSION(TABLE bids PARTITION BY auction, \
             DESCRIPTOR(date_time), INTERVAL '30' SECOND)) GROUP BY window_start, window_end",
        )
        .await;
        assert!(e.contains("must include auction"), "{e}");
        let e =
            plan_err("SELECT * FROM TABLE(SESSION(TABLE bids, DESCRIPTOR(date_time), INTERVAL '30' SECOND))")
                .await;
        assert!(e.contains("can only be used as the GROUP BY"), "{e}");
    }

    #[tokio::test]
    async fn windows_over_views_ctes_unions_and_other_windows() {
        let p = plan_sql(
            "CREATE VIEW dear AS SELECT auction, price, date_time FROM bids WHERE price > 100;
             INSERT INTO out
             WITH per10 AS (
               SELECT window_start AS w10_start, window_time AS rowtime, auction, COUNT(*) AS n
               FROM TABLE(TUMBLE(TABLE dear, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
               GROUP BY window_start, window_end, window_time, auction)
             SELECT window_start, window_end, SUM(n) AS total
             FROM TABLE(TUMBLE(TABLE per10, DESCRIPTOR(rowtime), INTERVAL '1' MINUTE))
             GROUP BY window_start, window_end;",
        )
        .await
        .unwrap();
        let t = text(&p[0]);
        assert!(
            t.contains("watermark from upstream window results (pipeline watermark - 1ms)"),
            "{t}"
        );
        assert_eq!(t.matches("WindowAggregate:").count(), 2, "{t}");

        let p = plan_sql(
            "CREATE VIEW both_sides AS SELECT auction, date_time FROM bids UNION ALL SELECT auction, date_time FROM asks;
             INSERT INTO out SELECT window_start, window_end, COUNT(*) FROM
             TABLE(TUMBLE(TABLE both_sides, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY window_start, window_end;",
        )
        .await
        .unwrap();
        assert!(
            text(&p[0]).contains("lowest of sources asks, bids"),
            "{}",
            text(&p[0])
        );
    }

    #[tokio::test]
    async fn aggregates_without_a_window_emit_a_changelog() {
        let p = plan_sql(
            "INSERT INTO changes SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction HAVING COUNT(*) > 2;",
        )
        .await
        .unwrap();
        let t = text(&p[0]);
        assert!(p[0].changelog, "{t}");
        assert!(t.contains("UpdateAggregate: groupBy=[bids.auction]"), "{t}");
        assert!(t.contains("having=count(Int64(1)) > Int64(2)"), "{t}");
        let names: Vec<String> = p[0]
            .plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, vec!["op", "auction", "n"]);
        let e = plan_err("SELECT auction, COUNT(*) FROM bids GROUP BY auction").await;
        assert!(
            e.contains("append-only") && e.contains("'mode' = 'changelog'"),
            "{e}"
        );
        let e = plan_sql(
            "INSERT INTO changes SELECT auction, COUNT(*) FROM bids GROUP BY auction EMIT ON WINDOW CLOSE;",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("EMIT ON WINDOW CLOSE needs a window"), "{e}");
    }

    #[tokio::test]
    async fn stateless_queries_pass_through() {
        let p = plan("SELECT auction, CASE WHEN price > 5 THEN 'hi' ELSE 'lo' END AS band, CAST(price AS DOUBLE) AS p FROM bids WHERE price * 2 > 10 UNION ALL SELECT auction, 'ask', 0.0 FROM asks").await.unwrap();
        assert!(!p[0].stateful);
        assert_eq!(p[0].sources.len(), 2);
    }

    #[tokio::test]
    async fn what_cannot_run_on_a_stream_is_refused_with_a_reason() {
        let e = plan_err("SELECT auction FROM bids ORDER BY price").await;
        assert!(
            e.contains("cannot run on a stream: ORDER BY") && e.contains("ROW_NUMBER"),
            "{e}"
        );
        let e = plan_err("SELECT auction FROM bids LIMIT 3").await;
        assert!(e.contains("LIMIT") || e.contains("Top-N"), "{e}");
        let e = plan_err("SELECT * FROM nope").await;
        assert!(
            e.contains("unknown table 'nope'") && e.contains("declared tables: asks, bids"),
            "{e}"
        );
        let e = plan_err("SELECT window_start, COUNT(*) FROM TABLE(TUMBLE(TABLE plain, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY window_start, window_end").await;
        assert!(
            e.contains("declares none") && e.contains("WATERMARK FOR ts"),
            "{e}"
        );
        let e = plan_err("SELECT window_start, COUNT(*) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '1' SECOND)) GROUP BY window_start").await;
        assert!(e.contains("both window_start and window_end"), "{e}");
        let e = plan_err("SELECT auction, ROW_NUMBER() OVER (ORDER BY price) FROM bids").await;
        assert!(e.contains("OVER"), "{e}");
        let e = plan_err("SELECT a.auction FROM bids a JOIN bids b ON a.auction = b.auction").await;
        assert!(e.contains("joins"), "{e}");
        let e = plan_err("SELECT window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '1' SECOND)) GROUP BY window_start, window_end EMIT ON UPDATE").await;
        assert!(e.contains("EMIT ON UPDATE of a windowed aggregate"), "{e}");
    }

    #[tokio::test]
    async fn a_live_select_is_a_pipeline_without_a_sink() {
        let job = Job::parse_as(
            &format!(
                "{TABLES}\nSELECT window_start, window_end, COUNT(*) AS n \
                 FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) \
                 GROUP BY window_start, window_end"
            ),
            crate::JobKind::Live,
        )
        .unwrap();
        let p = StreamPlanner::new(&job, None, SessionConfig::new())
            .unwrap()
            .plan()
            .await
            .unwrap();
        assert_eq!(p.len(), 1);
        assert!(p[0].sink.is_none() && p[0].stateful);
        let job = Job::parse_as(
            &format!("{TABLES}\nSELECT auction FROM bids LIMIT 3"),
            crate::JobKind::Live,
        )
        .unwrap();
        let e = StreamPlanner::new(&job, None, SessionConfig::new())
            .unwrap()
            .plan()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LIMIT") && e.contains("SELECT auction FROM bids"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_sink_with_columns_gets_the_query_cast_to_them() {
        let p = plan_sql(
            "CREATE TABLE typed (a VARCHAR, b DOUBLE) WITH ('connector'='files','path'='t/','format'='parquet');
             INSERT INTO typed SELECT auction, price FROM bids;",
        )
        .await
        .unwrap();
        let s = p[0].plan.schema();
        assert_eq!(s.field(0).name(), "a");
        assert_eq!(s.field(1).data_type(), &DataType::Float64);
        // Text into a number is not guessed at: the table and column are named.
        let e = plan_sql(
            "CREATE TABLE typed (a BIGINT, b BOOLEAN NOT NULL) WITH ('connector'='files','path'='t/','format'='parquet');
             INSERT INTO typed SELECT auction, url FROM bids;",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sink table 'typed': column 'b' (column 2 of 2) is declared BOOLEAN NOT NULL")
                && e.contains("'url' of type VARCHAR"),
            "{e}"
        );
    }
}
