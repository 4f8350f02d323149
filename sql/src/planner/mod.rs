//! From a job's `INSERT INTO ... SELECT` to an incremental logical plan.
//!
//! Each insert becomes a [`PipelinePlan`]: a DataFusion `LogicalPlan` in
//! which window calls are [`WindowAssignNode`]s, windowed aggregates are
//! [`WindowAggregateNode`]s (SESSION windows among them), aggregates without
//! a window are [`UpdateAggregateNode`]s, and a ranking within windows
//! (`ROW_NUMBER() OVER (PARTITION BY window_start, window_end ...)`) is a
//! [`WindowTopNNode`](crate::WindowTopNNode). Everything else in it is stateless (projection,
//! filter, union, scalar functions) and runs as DataFusion plans it. Nodes
//! that would need unbounded state or a complete input (ORDER BY, LIMIT,
//! joins, other OVER windows) are refused here, with a message saying what
//! to write instead.
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
use datafusion::common::{Column, Constraint, Constraints, TableReference};
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

mod joins;
mod retract;
mod rewrite;
mod sink;
mod watermarks;
mod windows;

pub use rewrite::{IN_OR_EXISTS_LEFT, check_not_in_subqueries, is_changelog};
use sink::*;
use watermarks::*;

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
    /// The declared `PRIMARY KEY` as DataFusion's constraint: its plans
    /// then carry the key as a functional dependency, through filters,
    /// projections and aliases, to the joins (see `joins::unique_side`).
    constraints: Option<Constraints>,
}

impl StreamTable {
    fn new(decl: TableDecl, schema: SchemaRef, scans: Option<Arc<dyn ScanProvider>>) -> Self {
        let constraints = (!decl.primary_key.is_empty())
            .then(|| Constraints::new_unverified(vec![Constraint::PrimaryKey(decl.primary_key.clone())]));
        Self {
            decl,
            schema,
            scans,
            constraints,
        }
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.constraints.as_ref()
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
    /// The sources (streams) it reads.
    pub sources: BTreeSet<String>,
    /// The bounded tables it joins with (lookup joins): read whole, at the
    /// version each epoch's offsets entry names.
    pub lookups: BTreeSet<String>,
    /// Whether it keeps state.
    pub stateful: bool,
    /// Whether its output is a changelog (first column `op`).
    pub changelog: bool,
    /// The statement, for messages: its first words and its line in the
    /// job's text.
    pub statement: String,
    /// Its line in the job's text and its text (for [`Self::in_statement`]).
    origin: (u64, String),
}

impl PipelinePlan {
    /// A hash of the statement's text, normalized
    /// ([`crate::job::statement_fingerprint`]).
    pub fn fingerprint(&self) -> String {
        crate::job::statement_fingerprint(&self.origin.1).unwrap_or_default()
    }

    /// `e`, placed in this plan's statement, as the planner's own errors
    /// are (`line 3 (`INSERT ...`): ...`).
    pub fn in_statement(&self, e: Error) -> Error {
        e.in_statement(self.origin.0, &self.origin.1)
    }
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
        ctx.register_udf(crate::functions::proctime());
        for f in crate::functions::min_max() {
            ctx.register_udaf(f);
        }
        for rule in REMOVED_RULES {
            ctx.remove_optimizer_rule(rule);
        }
        for decl in job.tables.values() {
            let Some(schema) = &decl.schema else { continue };
            let table = Arc::new(StreamTable::new(decl.clone(), Arc::clone(schema), scans.clone()));
            ctx.register_table(
                datafusion::common::TableReference::bare(decl.name.as_str()),
                table as Arc<dyn TableProvider>,
            )?;
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
            plan.origin = (insert.line, insert.sql.clone());
            out.push(plan);
        }
        if let Some(select) = &self.job.select {
            let mut plan = self
                .plan_pipeline(out.len(), None, &select.query, &select.tvfs, None)
                .await
                .map_err(|e| e.in_statement(select.line, &select.sql))?;
            plan.statement = statement_text(select.line, &select.sql);
            plan.origin = (select.line, select.sql.clone());
            out.push(plan);
        }
        Ok(out)
    }

    async fn plan_view(&self, view: &crate::job::View) -> Result<()> {
        self.register_windows(&view.tvfs, view.query.with.as_ref())
            .await?;
        let plan = self.plan_query(&view.query).await?;
        let table = ViewTable::new(plan, Some(view.sql.clone()));
        self.ctx.register_table(
            datafusion::common::TableReference::bare(view.name.as_str()),
            Arc::new(table),
        )?;
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
        check_not_in_subqueries(&plan, &|s| self.is_static(s))?;
        check_count_distinct_pairs(&plan)?;
        let plan = self
            .ctx
            .state()
            .optimize(&plan)
            .map_err(|e| self.explain_df_error(e))?;
        let plan = self.rewrite_streaming(plan, emit)?;
        let changelog = is_changelog(&plan);
        if let Some(sink) = &sink
            && (changelog || sink::takes_changelog(sink))
        {
            check_changelog_names(&plan, sink)?;
        }
        let plan = finish_output(plan, changelog)?;
        let (plan, changelog) = match &sink {
            Some(sink) => {
                check_sink(sink, changelog)?;

                // An append-only query into a changelog sink: each row is
                // an insert, with its `op` like any changelog's, so that
                // the sink's readers (and the README's query for a
                // changelog's latest rows) find the columns they expect.
                let (plan, changelog) = if !changelog && sink::takes_changelog(sink) {
                    (sink::as_inserts(plan)?, true)
                } else {
                    (plan, changelog)
                };
                let plan = if sink.schema.is_none() {
                    unique_names(plan)?
                } else {
                    plan
                };
                let plan = conform_to_sink(plan, sink, changelog)?;
                sink::check_parquet_types(&plan, sink)?;
                (plan, changelog)
            }
            None => (plan, changelog),
        };

        let mut sources = BTreeSet::new();
        let mut lookups = BTreeSet::new();
        let mut stateful = false;
        // Into subqueries too: a scalar subquery over a bounded table reads it.
        plan.apply_with_subqueries(|p| {
            match p {
                LogicalPlan::TableScan(s) if self.is_bounded_table(s.table_name.table()) => {
                    lookups.insert(s.table_name.table().to_string());
                }
                LogicalPlan::TableScan(s) => {
                    sources.insert(s.table_name.table().to_string());
                }
                LogicalPlan::Extension(e)
                    if e.node.as_any().is::<WindowAggregateNode>()
                        || e.node.as_any().is::<UpdateAggregateNode>()
                        || e.node.as_any().is::<crate::nodes::WindowTopNNode>()
                        || e.node.as_any().is::<crate::nodes::StreamTopNNode>()
                        || e.node.as_any().is::<crate::nodes::StreamJoinNode>() =>
                {
                    stateful = true;
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        // DataFusion may prove that a result does not depend on the rows
        // (COUNT(*) over a one-row aggregate becomes a constant): a stream
        // query without a source would never run an epoch.
        if sources.is_empty() && !lookups.is_empty() {
            let names: Vec<&str> = lookups.iter().map(String::as_str).collect();
            return Err(Error::Unsupported(format!(
                "the query reads only bounded tables ({}), no stream: a job runs over a stream (join it with the \
                 bounded tables); query bounded tables with `weir query` instead",
                names.join(", ")
            )));
        }
        if sources.is_empty() && stateful {
            return Err(Error::Unsupported(
                "the query's result does not depend on any source's rows (DataFusion's optimizer reduced it to a \
                 constant, e.g. COUNT(*) over an aggregate without GROUP BY, which is always one row); select the \
                 constant directly, or aggregate the source's rows"
                    .into(),
            ));
        }
        if sources.is_empty() && lookups.is_empty() && sink.is_some() {
            return Err(Error::Unsupported(
                "the query reads no source table (VALUES, a SELECT of constants, or a filter that is always \
                 false): a job writes rows as a stream's rows arrive, so it would never write one. Select from \
                 a source table"
                    .into(),
            ));
        }
        Ok(PipelinePlan {
            index,
            sink,
            plan,
            sources,
            lookups,
            stateful,
            changelog,
            statement: String::new(),
            origin: (0, String::new()),
        })
    }

    /// Whether `name` is a bounded table (read whole, not a stream).
    pub(super) fn is_bounded_table(&self, name: &str) -> bool {
        self.job.tables.get(name).is_some_and(|t| t.bounded)
    }

    /// Whether `plan` reads bounded tables only (no stream, no streaming
    /// node): DataFusion runs it whole, as a batch query, in each epoch,
    /// over the tables' versions of that epoch.
    /// Whether `plan` reads no stream: bounded tables and constant
    /// relations (`VALUES`, a `SELECT` without `FROM`) only. Such a plan is
    /// a batch query run whole each epoch, so it may only meet the epoch's
    /// stream rows (a lookup join, a subquery); on its own (a UNION branch,
    /// a side of a join that holds its rows) it would give its rows again
    /// every epoch.
    pub(super) fn is_static(&self, plan: &LogicalPlan) -> bool {
        let (mut leaf, mut stream) = (false, false);
        let _ = plan.apply(|p| {
            match p {
                LogicalPlan::TableScan(s) if self.is_bounded_table(s.table_name.table()) => leaf = true,
                LogicalPlan::TableScan(_) | LogicalPlan::Extension(_) => stream = true,
                LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => leaf = true,
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
        leaf && !stream
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

/// `COUNT(DISTINCT a, b)`: refused when planned, not when its first epoch
/// runs (DataFusion 55 plans it, then fails to execute it).
fn check_count_distinct_pairs(plan: &LogicalPlan) -> Result<()> {
    let mut found = false;
    plan.apply_with_subqueries(|p| {
        p.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::AggregateFunction(af) = e
                    && af.params.distinct
                    && af.params.args.len() > 1
                    && af.func.name().eq_ignore_ascii_case("count")
                {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    if found {
        return Err(Error::Unsupported(crate::COUNT_DISTINCT_PAIRS.into()));
    }
    Ok(())
}

/// A changelog sink's files add `op` before the query's columns and
/// `_epoch`, `_seq` after them: a query column of one of those names was
/// written twice (pyarrow refused the folder, `weir query` showed the
/// query's `_epoch` as the epoch).
fn check_changelog_names(plan: &LogicalPlan, sink: &TableDecl) -> Result<()> {
    let declared = sink
        .schema
        .as_ref()
        .map(|s| s.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>());
    let names = declared.unwrap_or_else(|| {
        plan.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != crate::nodes::PLAN_OP_COLUMN)
            .collect()
    });
    for n in names {
        if ["op", "_epoch", "_seq"].iter().any(|r| n.eq_ignore_ascii_case(r)) {
            return Err(Error::Plan(format!(
                "column '{n}' is named like a changelog sink's own columns (op first, _epoch and _seq last, which \
                 Weir adds): rename it"
            )));
        }
    }
    Ok(())
}

/// A sink declared without columns takes the query's names, and a Parquet
/// file's columns need distinct ones: `SELECT a.price, b.price` over a join
/// wrote `price` twice, which `weir query` read as the first alone and
/// pyarrow refused. A later column of a name already taken (whatever its
/// case, as DuckDB and Spark read names) is written as that name with a
/// number, `price0`, `price1`, ..., as Flink names them.
fn unique_names(plan: LogicalPlan) -> Result<LogicalPlan> {
    let schema = Arc::clone(plan.schema());
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut renamed = false;
    let mut exprs = Vec::with_capacity(schema.fields().len());
    let all: BTreeSet<String> = schema
        .fields()
        .iter()
        .map(|f| f.name().to_ascii_lowercase())
        .collect();
    for (q, f) in schema.iter() {
        let column = Expr::Column(Column::from((q, f.as_ref())));
        if taken.insert(f.name().to_ascii_lowercase()) {
            exprs.push(column.alias(f.name()));
            continue;
        }
        let name = (0..)
            .map(|n| format!("{}{n}", f.name()))
            .find(|n| !all.contains(&n.to_ascii_lowercase()) && !taken.contains(&n.to_ascii_lowercase()))
            .unwrap_or_default();
        taken.insert(name.to_ascii_lowercase());
        exprs.push(column.alias(name));
        renamed = true;
    }
    if !renamed {
        return Ok(plan);
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
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
        CREATE TABLE changes WITH ('connector' = 'files', 'path' = 'ch/', 'format' = 'parquet', 'mode' = 'changelog');
        CREATE TABLE nowhere WITH ('connector' = 'blackhole');";

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

    /// A join on a declared key uses it (and pulls the filter above the
    /// key's side in) only where each key is one row: not through a UNION
    /// of two keyed sources, nor when NULL keys equal each other (a key's
    /// columns may hold NULLs: Weir does not check them).
    #[tokio::test]
    async fn a_join_uses_a_declared_key_only_where_keys_cannot_repeat() {
        let keyed = "CREATE TABLE items (id BIGINT, cat BIGINT, PRIMARY KEY (id) NOT ENFORCED)
              WITH ('connector' = 'files', 'path' = 'i/', 'format' = 'parquet');
            CREATE TABLE more_items (id BIGINT, cat BIGINT, PRIMARY KEY (id) NOT ENFORCED)
              WITH ('connector' = 'files', 'path' = 'm/', 'format' = 'parquet');";
        let join = |q: &str| format!("{keyed}\nINSERT INTO out {q};");
        let p = plan_sql(&join(
            "SELECT b.price, i.cat FROM bids b JOIN items i ON b.auction = i.id WHERE i.cat = 10",
        ))
        .await
        .unwrap();
        let t = text(&p[0]);
        assert!(t.contains("right keys unique (PRIMARY KEY NOT ENFORCED)"), "{t}");
        assert!(
            t.contains("right rows failing i.cat = Int64(10) pair with nothing"),
            "{t}"
        );
        assert!(!t.contains("Filter:"), "the filter is pulled into the join: {t}");
        for q in [
            "SELECT b.price, i.cat FROM bids b JOIN (SELECT * FROM items UNION ALL SELECT * FROM more_items) i \
             ON b.auction = i.id",
            "SELECT b.price, i.cat FROM bids b JOIN items i ON b.auction IS NOT DISTINCT FROM i.id",
            "SELECT b.price, i.cat FROM bids b JOIN items i ON b.auction = i.cat",
        ] {
            let p = plan_sql(&join(q)).await.unwrap();
            let t = text(&p[0]);
            assert!(t.contains("RegularJoin"), "{q}: {t}");
            assert!(!t.contains("keys unique"), "{q}: {t}");
        }
    }

    /// A subquery over a bounded table may read another version each
    /// epoch: over a changelog it would give retractions of rows never
    /// emitted, so it is refused there, and runs over append-only rows.
    #[tokio::test]
    async fn a_subquery_over_a_bounded_table_is_refused_over_a_changelog_only() {
        let table = "CREATE TABLE tiers (k VARCHAR, tier VARCHAR)
              WITH ('connector' = 'files', 'path' = 't/', 'format' = 'json', 'bounded' = 'true');";
        let over_changelog = [
            "INSERT INTO changes SELECT SUM(n * c) AS s FROM (SELECT a.n, (SELECT COUNT(*) FROM tiers) AS c \
             FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction) a)",
            "INSERT INTO changes SELECT a.auction, a.n, (SELECT COUNT(*) FROM tiers) AS c \
             FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction) a",
        ];
        for q in over_changelog {
            let err = plan_sql(&format!("{table}\n{q};")).await.unwrap_err().to_string();
            assert!(
                err.contains("a subquery over a bounded table in an expression over a changelog"),
                "{q}: {err}"
            );
        }
        let append = "INSERT INTO out SELECT auction, price, (SELECT COUNT(*) FROM tiers) AS c FROM bids \
             WHERE price > (SELECT COUNT(*) FROM tiers)";
        plan_sql(&format!("{table}\n{append};")).await.unwrap();
        // A filter on an aggregate's result becomes its HAVING, which keeps
        // what each group last emitted: its retractions stay true.
        let having = "INSERT INTO changes SELECT a.auction, a.n \
             FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction) a WHERE a.n > (SELECT COUNT(*) FROM tiers)";
        plan_sql(&format!("{table}\n{having};")).await.unwrap();
    }

    /// `rn = N` keeps the N-th row of each partition, as Flink's rank range
    /// `rownum = N` does: a Top-N of N under a filter on the rank (it was
    /// refused as a ranking without a limit).
    #[tokio::test]
    async fn a_rank_equal_to_n_is_a_top_n_of_n_under_a_filter() {
        let p = plan_sql(
            "INSERT INTO changes SELECT auction, price, rn FROM (SELECT *, ROW_NUMBER() OVER \
             (PARTITION BY auction ORDER BY price DESC) AS rn FROM bids) WHERE rn = 2;",
        )
        .await
        .unwrap();
        let t = text(&p[0]);
        assert!(t.contains("limit=2"), "{t}");
        assert!(
            t.contains("CURRENT ROW = UInt64(2)"),
            "the filter stays above: {t}"
        );
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
            t.contains("watermark from upstream results (pipeline watermark - 1ms)"),
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
        // The blackhole takes a changelog as it is (Flink's does too).
        let p = plan_sql("INSERT INTO nowhere SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction;")
            .await
            .unwrap();
        assert!(p[0].changelog);
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
        let e = plan_err("SELECT a.auction FROM bids a LEFT JOIN bids b ON a.auction = b.auction").await;
        // An outer join without a time bound is an updating join: its
        // changelog needs a changelog sink.
        assert!(
            e.contains("the query produces a changelog") && e.contains("bound the join in time"),
            "{e}"
        );
        let e = plan_err("SELECT window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '1' SECOND)) GROUP BY window_start, window_end EMIT ON UPDATE").await;
        assert!(e.contains("EMIT ON UPDATE of a windowed aggregate"), "{e}");
        for constant in [
            "SELECT 1 AS one",
            "VALUES (1, 'x')",
            "SELECT auction FROM bids WHERE 1 = 0",
        ] {
            let e = plan_err(constant).await;
            assert!(e.contains("reads no source table"), "{constant}: {e}");
        }
    }

    /// The interval join's bound, however it is written, normalized to
    /// `right.t - left.t in [lo, hi]`.
    #[tokio::test]
    async fn interval_join_bounds_are_found_in_any_form() {
        let cases = [
            (
                "b.date_time BETWEEN a.date_time - INTERVAL '5' SECOND AND a.date_time + INTERVAL '10' SECOND",
                "[-5s, 10s]",
            ),
            // Reversed sides and strict comparisons (kept as non-strict).
            (
                "a.date_time > b.date_time - INTERVAL '1' MINUTE AND a.date_time < b.date_time",
                "[0ms, 1m]",
            ),
            // Several conjuncts: the tightest wins; an offset on both sides.
            (
                "b.date_time >= a.date_time AND b.date_time >= a.date_time + INTERVAL '1' SECOND \
                 AND b.date_time + INTERVAL '1' SECOND <= a.date_time + INTERVAL '4' SECOND AND a.price > b.price",
                "[1s, 3s]",
            ),
            ("a.date_time = b.date_time", "[0ms, 0ms]"),
            (
                "b.date_time BETWEEN a.date_time - INTERVAL '2' HOUR AND a.date_time - INTERVAL '1' HOUR",
                "[-2h, -1h]",
            ),
        ];
        for (bound, want) in cases {
            let p = plan(&format!(
                "SELECT a.auction, b.price FROM bids a JOIN asks b ON a.auction = b.auction AND {bound}"
            ))
            .await
            .unwrap();
            let t = text(&p[0]);
            assert!(
                t.contains(&format!("date_time - date_time in {want}")),
                "{bound}: {t}"
            );
            assert!(
                t.contains("LateFilter: rows of bids") && t.contains("LateFilter: rows of asks"),
                "{t}"
            );
            assert!(p[0].stateful);
        }
    }

    #[tokio::test]
    async fn joins_without_a_usable_time_bound_are_refused_with_the_fix() {
        let e = plan_err(
            "SELECT a.auction FROM bids a RIGHT JOIN asks b ON a.auction = b.auction AND b.date_time <= a.date_time",
        )
        .await;
        // Half a bound leaves an updating (regular) outer join, which an
        // append-only sink refuses, naming the time bound as a fix.
        assert!(
            e.contains("the query produces a changelog") && e.contains("bound the join in time"),
            "{e}"
        );
        // An inner join with half a bound is a regular join, its state unbounded.
        let p = plan(
            "SELECT a.auction FROM bids a JOIN asks b ON a.auction = b.auction AND b.date_time <= a.date_time",
        )
        .await
        .unwrap();
        assert!(text(&p[0]).contains("RegularJoin: Inner"), "{}", text(&p[0]));
        assert!(
            text(&p[0]).contains("state grows without bound"),
            "{}",
            text(&p[0])
        );
        let e = plan_err(
            "SELECT a.auction FROM bids a JOIN plain p ON a.auction = p.a \
             AND p.ts BETWEEN a.date_time AND a.date_time + INTERVAL '1' SECOND",
        )
        .await;
        assert!(e.contains("p.ts, which has no watermark"), "{e}");
        // A bound on months has no fixed length.
        let e = plan_err(
            "SELECT a.auction FROM bids a LEFT JOIN asks b ON a.auction = b.auction \
             AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '1' MONTH",
        )
        .await;
        assert!(e.contains("the query produces a changelog"), "{e}");
        let p = plan(
            "SELECT a.auction FROM bids a WHERE a.auction IN (SELECT b.auction FROM asks b \
             WHERE b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '1' SECOND)",
        )
        .await
        .unwrap();
        assert!(text(&p[0]).contains("IntervalJoin: LeftSemi"), "{}", text(&p[0]));
        let e = plan_sql(
            "INSERT INTO out SELECT a.auction FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction) a \
             JOIN asks b ON a.auction = b.auction;",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("the query produces a changelog"), "{e}");
    }

    #[tokio::test]
    async fn a_window_over_an_interval_join_trails_the_watermark_by_the_bound() {
        let p = plan_sql(
            "INSERT INTO out WITH m AS (SELECT a.date_time AS ts, b.date_time AS bts FROM bids a JOIN asks b \
               ON a.auction = b.auction AND b.date_time BETWEEN a.date_time - INTERVAL '3' SECOND AND a.date_time + INTERVAL '7' SECOND) \
             SELECT window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE m, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
             GROUP BY window_start, window_end;
             INSERT INTO out WITH m AS (SELECT a.date_time AS ts, b.date_time AS bts FROM bids a JOIN asks b \
               ON a.auction = b.auction AND b.date_time BETWEEN a.date_time - INTERVAL '3' SECOND AND a.date_time + INTERVAL '7' SECOND) \
             SELECT window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE m, DESCRIPTOR(bts), INTERVAL '10' SECOND)) \
             GROUP BY window_start, window_end;",
        )
        .await
        .unwrap();
        assert!(text(&p[0]).contains("pipeline watermark - 7s"), "{}", text(&p[0]));
        assert!(text(&p[1]).contains("pipeline watermark - 3s"), "{}", text(&p[1]));
    }

    /// An alias or a union over an aggregate's changelog keeps the
    /// operation column (their stored schemas predate the rewrite).
    #[tokio::test]
    async fn a_changelog_stays_a_changelog_through_an_alias_and_a_union() {
        let p = plan_sql(
            "INSERT INTO changes SELECT * FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction) a;
             INSERT INTO changes SELECT auction, n FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction) a
               UNION ALL SELECT auction, n FROM (SELECT auction, COUNT(*) AS n FROM asks GROUP BY auction) b;",
        )
        .await
        .unwrap();
        assert!(p[0].changelog && p[1].changelog);
        let e = plan_sql(
            "INSERT INTO out SELECT * FROM (SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction) a;",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("append-only"), "{e}");
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
