//! From a job's `INSERT INTO ... SELECT` to an incremental logical plan.
//!
//! Each insert becomes a [`PipelinePlan`]: a DataFusion `LogicalPlan` in
//! which window calls are [`WindowAssignNode`]s over source scans and
//! windowed aggregates are [`WindowAggregateNode`]s. Everything else in it is
//! stateless (projection, filter, union, scalar functions) and runs as
//! DataFusion plans it. Nodes that would need unbounded state or a complete
//! input (ORDER BY, LIMIT, an aggregate without a window, joins, OVER windows)
//! are refused here, with a message saying what to write instead.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, LogicalPlanBuilder, TableType, UserDefinedLogicalNode, cast,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Query, Statement};

use crate::job::interval_ms;
use crate::nodes::{WindowAggregateNode, WindowAssignNode, WindowSpec};
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

/// A declared source as a DataFusion table: its schema, and a scan from the
/// engine's [`ScanProvider`].
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
    /// Whether it keeps state (a windowed aggregate).
    pub stateful: bool,
}

/// Plans a job's queries against its declared tables.
pub struct StreamPlanner {
    ctx: SessionContext,
    job: Job,
    sources: BTreeMap<String, Arc<StreamTable>>,
}

/// DataFusion optimizer rules that would undo the streaming shape. The
/// single-distinct rule splits `COUNT(DISTINCT x)` into two stacked
/// aggregates, which would have to be two windowed operators; the
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
        let mut sources = BTreeMap::new();
        for decl in job.tables.values() {
            let Some(schema) = &decl.schema else { continue };
            let table = Arc::new(StreamTable {
                decl: decl.clone(),
                schema: Arc::clone(schema),
                scans: scans.clone(),
            });
            ctx.register_table(decl.name.as_str(), Arc::clone(&table) as Arc<dyn TableProvider>)?;
            sources.insert(decl.name.clone(), table);
        }
        // Placeholders stand for window calls while DataFusion plans the SQL;
        // they are replaced before anything runs.
        for call in job.tvfs.values() {
            let source = sources.get(&call.table).ok_or_else(|| {
                Error::Plan(format!(
                    "unknown table '{}' in {}(TABLE {}, ...){}",
                    call.table,
                    call.kind.name(),
                    call.table,
                    known_tables(job)
                ))
            })?;
            let node = window_node(call, source, &job.tables[&call.table])?;
            let placeholder = Arc::new(StreamTable {
                decl: TableDecl {
                    name: call.placeholder.clone(),
                    schema: None,
                    watermark: None,
                    options: Default::default(),
                },
                schema: Arc::new(node.schema().as_arrow().clone()),
                scans: None,
            });
            ctx.register_table(call.placeholder.as_str(), placeholder as Arc<dyn TableProvider>)?;
        }
        Ok(Self {
            ctx,
            job: job.clone(),
            sources,
        })
    }

    /// The DataFusion context the plans are made in (functions, config).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans every insert of the job.
    pub async fn plan(&self) -> Result<Vec<PipelinePlan>> {
        let mut out = Vec::new();
        for (index, insert) in self.job.inserts.iter().enumerate() {
            let plan = self
                .plan_query(index, insert)
                .await
                .map_err(|e| e.in_statement_of_insert(insert))?;
            out.push(plan);
        }
        if let Some(select) = &self.job.select {
            let plan = self
                .plan_pipeline(out.len(), None, &select.query)
                .await
                .map_err(|e| e.in_statement_of(&select.sql))?;
            out.push(plan);
        }
        Ok(out)
    }

    async fn plan_query(&self, index: usize, insert: &crate::job::Insert) -> Result<PipelinePlan> {
        let sink = self.job.tables.get(&insert.target).cloned().ok_or_else(|| {
            Error::Plan(format!(
                "unknown sink table '{}': declare it with CREATE TABLE {} WITH ('connector' = 'files', 'path' = ..., 'format' = 'parquet'){}",
                insert.target,
                insert.target,
                known_tables(&self.job)
            ))
        })?;
        self.plan_pipeline(index, Some(sink), &insert.query).await
    }

    async fn plan_pipeline(
        &self,
        index: usize,
        sink: Option<TableDecl>,
        query: &Query,
    ) -> Result<PipelinePlan> {
        let state = self.ctx.state();
        let statement = DFStatement::Statement(Box::new(Statement::Query(Box::new(query.clone()))));
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.explain_df_error(e))?;
        let plan = self.replace_placeholders(plan)?;
        let plan = state.optimize(&plan).map_err(|e| self.explain_df_error(e))?;
        let plan = rewrite_streaming(plan)?;
        let plan = match &sink {
            Some(sink) => conform_to_sink(plan, sink)?,
            None => plan,
        };

        let mut sources = BTreeSet::new();
        let mut stateful = false;
        plan.apply(|p| {
            match p {
                LogicalPlan::TableScan(s) => {
                    sources.insert(s.table_name.table().to_string());
                }
                LogicalPlan::Extension(e) if e.node.as_any().is::<WindowAggregateNode>() => {
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
        })
    }

    fn explain_df_error(&self, e: DataFusionError) -> Error {
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

    /// `TableScan(__weir_tvf_N)` → `WindowAssign(TableScan(source))`.
    fn replace_placeholders(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let out = plan.transform_up(|p| {
            let LogicalPlan::TableScan(scan) = &p else {
                return Ok(Transformed::no(p));
            };
            let name = scan.table_name.table();
            if !name.starts_with(TVF_PREFIX) {
                return Ok(Transformed::no(p));
            }
            let call = &self.job.tvfs[name];
            let source = &self.sources[&call.table];
            let node = window_node(call, source, &self.job.tables[&call.table])
                .map_err(|e| DataFusionError::Plan(e.to_string()))?;
            let node = WindowAssignNode::try_new(
                node.input,
                node.spec,
                node.time_column,
                scan.table_name.clone(),
                node.source,
                node.delay_ms,
            )?;
            let mut plan = LogicalPlan::Extension(Extension { node: Arc::new(node) });
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

impl Error {
    fn in_statement_of_insert(self, insert: &crate::job::Insert) -> Error {
        self.in_statement_of(&insert.sql)
    }

    fn in_statement_of(self, sql: &str) -> Error {
        let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        let head: String = flat.chars().take(57).collect();
        let head = if flat.chars().count() > 57 {
            format!("{head}...")
        } else {
            head
        };
        Error::InStatement {
            index: 0,
            head,
            source: Box::new(self),
        }
        .renumbered()
    }

    /// Inserts are planned after parsing, so the statement number is not at
    /// hand; print the statement's head only.
    fn renumbered(self) -> Error {
        match self {
            Error::InStatement { head, source, .. } => Error::Plan(format!("in `{head}`: {source}")),
            e => e,
        }
    }
}

fn known_tables(job: &Job) -> String {
    if job.tables.is_empty() {
        return " (no tables are declared)".into();
    }
    let names: Vec<&str> = job.tables.keys().map(String::as_str).collect();
    format!(" (declared tables: {})", names.join(", "))
}

/// The window node for a call, over a scan of its source (before the
/// placeholder's name is given to it). Checks that the window's time column
/// is the source's watermark column.
fn window_node(call: &TvfCall, source: &Arc<StreamTable>, decl: &TableDecl) -> Result<WindowAssignNode> {
    let usage = format!(
        "{}(TABLE {}, DESCRIPTOR({}), ...)",
        call.kind.name(),
        call.table,
        call.time_column
    );
    let field = source.schema.field_with_name(&call.time_column).map_err(|_| {
        Error::Plan(format!(
            "{usage}: table '{}' has no column '{}'",
            call.table, call.time_column
        ))
    })?;
    if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
        return Err(Error::Plan(format!(
            "{usage}: the time column must be a TIMESTAMP, but '{}' is {}",
            call.time_column,
            field.data_type()
        )));
    }
    let delay_ms = match &decl.watermark {
        Some(w) if w.column == call.time_column => w.delay_ms,
        Some(w) => {
            return Err(Error::Unsupported(format!(
                "{usage}: a window needs an event-time column with a watermark; '{}' has its watermark on '{}', not '{}'",
                call.table, w.column, call.time_column
            )));
        }
        None => {
            return Err(Error::Unsupported(format!(
                "{usage}: a window needs an event-time column with a watermark, and table '{}' declares none; add \
                 `WATERMARK FOR {} AS {} - INTERVAL '5' SECOND` to its CREATE TABLE",
                call.table, call.time_column, call.time_column
            )));
        }
    };
    let ms: Vec<i64> = call
        .args
        .iter()
        .map(|a| interval_ms(a).map_err(|e| Error::Plan(format!("{usage}: {e}"))))
        .collect::<Result<_>>()?;
    let spec = match call.kind {
        TvfKind::Tumble => {
            let size_ms = ms[0];
            let offset_ms = ms.get(1).copied().unwrap_or(0);
            if size_ms <= 0 {
                return Err(Error::Plan(format!("{usage}: the window size must be positive")));
            }
            if offset_ms.abs() >= size_ms {
                return Err(Error::Plan(format!(
                    "{usage}: the offset must be smaller than the window size"
                )));
            }
            WindowSpec::Tumble { size_ms, offset_ms }
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{usage}: {} windows are not supported yet; TUMBLE is",
                other.name()
            )));
        }
    };
    let provider = Arc::clone(source) as Arc<dyn TableProvider>;
    let scan = LogicalPlanBuilder::scan(call.table.as_str(), provider_as_source(provider), None)?.build()?;
    Ok(WindowAssignNode::try_new(
        scan,
        spec,
        call.time_column.clone(),
        TableReference::bare(call.placeholder.clone()),
        call.table.clone(),
        delay_ms,
    )?)
}

/// The streaming rewrite: windowed aggregates become [`WindowAggregateNode`]s;
/// what cannot run incrementally is refused.
fn rewrite_streaming(plan: LogicalPlan) -> Result<LogicalPlan> {
    check_expressions(&plan)?;
    let out = plan.transform_up(|p| match p {
        LogicalPlan::Aggregate(agg) => {
            if agg.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                return Err(unsupported(
                    "GROUPING SETS, CUBE and ROLLUP are not supported on streams",
                ));
            }
            let mut start = None;
            let mut end = None;
            for (i, e) in agg.group_expr.iter().enumerate() {
                let Expr::Column(c) = e else { continue };
                match trace_window(&agg.input, c) {
                    Some((spec, WindowSide::Start)) => start = Some((i, spec)),
                    Some((spec, WindowSide::End)) => end = Some((i, spec)),
                    None => {}
                }
            }
            match (start, end) {
                (Some((s, spec)), Some((e, spec_end))) if spec == spec_end => {
                    let node = WindowAggregateNode::new(
                        agg.input.as_ref().clone(),
                        agg.group_expr.clone(),
                        agg.aggr_expr.clone(),
                        Arc::clone(&agg.schema),
                        spec,
                        s,
                        e,
                    );
                    Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                        node: Arc::new(node),
                    })))
                }
                (Some(_), None) | (None, Some(_)) => Err(DataFusionError::Plan(
                    "a windowed GROUP BY must include both window_start and window_end".into(),
                )),
                _ => Err(unsupported(
                    "an aggregate without a window never produces a final result on an unbounded \
                     stream; group by the window_start and window_end of a window table function, \
                     e.g. FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) \
                     GROUP BY window_start, window_end, ...",
                )),
            }
        }
        LogicalPlan::Sort(s) => Err(unsupported(if s.fetch.is_some() {
            "ORDER BY ... LIMIT (Top-N) without a window never produces a final result on an unbounded stream"
        } else {
            "ORDER BY on an unbounded stream never produces a result; sort the sink's output when you read it"
        })),
        LogicalPlan::Limit(_) => Err(unsupported(
            "LIMIT on an unbounded stream is not supported; filter the rows instead",
        )),
        LogicalPlan::Window(_) => Err(unsupported(
            "window functions with OVER (...) are not supported on streams yet; use a window table function and GROUP BY",
        )),
        LogicalPlan::Join(_) => Err(unsupported("joins of streams are not supported yet")),
        LogicalPlan::Distinct(_) => Err(unsupported(
            "DISTINCT without a window never produces a final result on an unbounded stream",
        )),
        LogicalPlan::RecursiveQuery(_) => Err(unsupported("recursive queries are not supported on streams")),
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::TableScan(_)
        | LogicalPlan::Union(_)
        | LogicalPlan::EmptyRelation(_)
        | LogicalPlan::Values(_)
        | LogicalPlan::Unnest(_)
        | LogicalPlan::Extension(_) => Ok(Transformed::no(p)),
        other => Err(unsupported(&format!(
            "{} is not supported on streams",
            other.display()
        ))),
    });
    match out {
        Ok(t) => Ok(t.data),
        Err(DataFusionError::External(e)) => match e.downcast::<Error>() {
            Ok(e) => Err(*e),
            Err(e) => Err(Error::Plan(e.to_string())),
        },
        Err(e) => Err(Error::Plan(strip_df(&e))),
    }
}

fn unsupported(msg: &str) -> DataFusionError {
    DataFusionError::External(Box::new(Error::Unsupported(msg.to_string())))
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WindowSide {
    Start,
    End,
}

/// Where a column comes from, if it is a window's `window_start` or
/// `window_end`: follows the column down through projections (plain column
/// references and aliases), filters, aliases and unions.
fn trace_window(plan: &LogicalPlan, column: &Column) -> Option<(WindowSpec, WindowSide)> {
    let idx = plan.schema().index_of_column(column).ok()?;
    trace_index(plan, idx)
}

fn trace_index(plan: &LogicalPlan, idx: usize) -> Option<(WindowSpec, WindowSide)> {
    match plan {
        LogicalPlan::Extension(e) => {
            let node = e.node.as_any().downcast_ref::<WindowAssignNode>()?;
            let n = node.input.schema().fields().len();
            match idx.checked_sub(n) {
                Some(0) => Some((node.spec.clone(), WindowSide::Start)),
                Some(1) => Some((node.spec.clone(), WindowSide::End)),
                _ => None,
            }
        }
        LogicalPlan::Projection(p) => {
            let mut e = p.expr.get(idx)?;
            while let Expr::Alias(a) = e {
                e = &a.expr;
            }
            let Expr::Column(c) = e else { return None };
            trace_window(&p.input, c)
        }
        LogicalPlan::Filter(f) => trace_index(&f.input, idx),
        LogicalPlan::SubqueryAlias(s) => trace_index(&s.input, idx),
        LogicalPlan::Union(u) => {
            let mut found = None;
            for input in &u.inputs {
                let t = trace_index(input, idx)?;
                if found.as_ref().is_some_and(|f| f != &t) {
                    return None;
                }
                found = Some(t);
            }
            found
        }
        _ => None,
    }
}

/// When the sink declares columns, the query's output is cast to them by
/// position (as Flink does); otherwise the sink takes the query's schema.
fn conform_to_sink(plan: LogicalPlan, sink: &TableDecl) -> Result<LogicalPlan> {
    let Some(declared) = &sink.schema else {
        return Ok(plan);
    };
    let out = plan.schema();
    if out.fields().len() != declared.fields().len() {
        return Err(Error::Plan(format!(
            "the query produces {} columns but sink '{}' declares {}",
            out.fields().len(),
            sink.name,
            declared.fields().len()
        )));
    }
    let exprs: Vec<Expr> = (0..out.fields().len())
        .map(|i| {
            let col = Expr::Column(Column::from(out.qualified_field(i)));
            let target = declared.field(i);
            let e = if out.field(i).data_type() == target.data_type() {
                col
            } else {
                cast(col, target.data_type().clone())
            };
            e.alias(target.name())
        })
        .collect();
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Whether a node is one of this crate's streaming nodes, and which.
pub fn node_name(node: &dyn UserDefinedLogicalNode) -> &str {
    node.name()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &str = "
        CREATE TABLE bids (auction BIGINT, price BIGINT, url VARCHAR, date_time TIMESTAMP(3),
          WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
          WITH ('connector' = 'files', 'path' = 'data/', 'format' = 'parquet');
        CREATE TABLE plain (a BIGINT, ts TIMESTAMP(3)) WITH ('connector' = 'files', 'path' = 'p/', 'format' = 'csv');
        CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');";

    async fn plan(query: &str) -> Result<Vec<PipelinePlan>> {
        let job = Job::parse(&format!("{TABLES}\nINSERT INTO out {query};"))?;
        StreamPlanner::new(&job, None, SessionConfig::new())?.plan().await
    }

    async fn plan_err(query: &str) -> String {
        plan(query).await.unwrap_err().to_string()
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
        let text = p[0].plan.display_indent().to_string();
        assert!(p[0].stateful);
        assert!(text.contains("WindowAggregate: TUMBLE(size=10s)"), "{text}");
        assert!(
            text.contains("WindowAssign: TUMBLE(size=10s) on date_time"),
            "{text}"
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
        let text = p[0].plan.display_indent().to_string();
        assert!(text.contains("WindowAggregate"), "{text}");
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("Aggregate:")),
            "the distinct must stay one aggregate: {text}"
        );
    }

    #[tokio::test]
    async fn stateless_queries_pass_through() {
        let p = plan("SELECT auction, upper(url) AS u FROM bids WHERE price * 2 > 10")
            .await
            .unwrap();
        assert!(!p[0].stateful);
    }

    #[tokio::test]
    async fn what_cannot_run_on_a_stream_is_refused_with_a_reason() {
        let e = plan_err("SELECT auction FROM bids ORDER BY price").await;
        assert!(e.contains("cannot run on a stream: ORDER BY"), "{e}");
        let e = plan_err("SELECT auction FROM bids LIMIT 3").await;
        assert!(e.contains("LIMIT") || e.contains("Top-N"), "{e}");
        let e = plan_err("SELECT auction, COUNT(*) FROM bids GROUP BY auction").await;
        assert!(e.contains("an aggregate without a window"), "{e}");
        let e = plan_err("SELECT * FROM nope").await;
        assert!(
            e.contains("unknown table 'nope'") && e.contains("declared tables: bids"),
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
        let job = Job::parse(&format!(
            "{TABLES}\nCREATE TABLE typed (a VARCHAR, b DOUBLE) WITH ('connector'='files','path'='t/','format'='parquet');\
             INSERT INTO typed SELECT auction, price FROM bids;"
        ))
        .unwrap();
        let p = StreamPlanner::new(&job, None, SessionConfig::new())
            .unwrap()
            .plan()
            .await
            .unwrap();
        let s = p[0].plan.schema();
        assert_eq!(s.field(0).name(), "a");
        assert_eq!(s.field(1).data_type(), &DataType::Float64);
    }
}
