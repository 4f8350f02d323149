//! Parsing a job file: `CREATE TABLE` declarations and `INSERT INTO` queries.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DFSchema, ScalarValue, TableReference};
use datafusion::logical_expr::planner::ContextProvider;
use datafusion::logical_expr::{AggregateUDF, Expr, ScalarUDF, TableSource, WindowUDF};
use datafusion::sql::planner::{PlannerContext, SqlToRel};
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, CreateTableOptions, ObjectName, Query, SqlOption, Statement, TableObject,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use sha2::{Digest, Sha256};

use crate::catalog::{Options, TableDecl, Watermark};
pub use crate::preprocess::Emit;
use crate::preprocess::{self, TvfCall, normalize_ident};
use crate::secrets;
use crate::{Error, Result};

/// An `INSERT INTO sink SELECT ...`: one streaming pipeline.
#[derive(Clone, Debug)]
pub struct Insert {
    /// The sink table.
    pub target: String,
    /// The query, with window calls replaced by placeholders.
    pub query: Box<Query>,
    /// The statement as written, secrets redacted.
    pub sql: String,
    /// The placeholders of the window calls in this statement, in order.
    pub tvfs: Vec<String>,
    /// An explicit `EMIT ON ...` clause.
    pub emit: Option<Emit>,
    /// The line of the job's text the statement starts on.
    pub line: u64,
}

/// A `CREATE VIEW name AS SELECT ...` over streams.
#[derive(Clone, Debug)]
pub struct View {
    /// The line of the job's text the statement starts on.
    pub line: u64,
    /// The view's name.
    pub name: String,
    /// Its query, with window calls replaced by placeholders.
    pub query: Box<Query>,
    /// The statement as written, secrets redacted.
    pub sql: String,
    /// The placeholders of the window calls in this statement, in order.
    pub tvfs: Vec<String>,
}

/// A bare `SELECT` of a live query: its rows go to the caller (the shell),
/// not to a sink.
#[derive(Clone, Debug)]
pub struct Select {
    /// The line of the job's text the statement starts on.
    pub line: u64,
    /// The query, with window calls replaced by placeholders.
    pub query: Box<Query>,
    /// The statement as written, secrets redacted.
    pub sql: String,
    /// The placeholders of the window calls in this statement, in order.
    pub tvfs: Vec<String>,
}

/// What a job text may hold besides `CREATE TABLE` declarations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JobKind {
    /// A saved job (`weir run`): one or more `INSERT INTO sink SELECT ...`;
    /// a bare `SELECT` is refused, since nothing would receive its rows.
    #[default]
    Saved,
    /// A live query (the shell's bare `SELECT` over streams): exactly one
    /// `SELECT`, whose rows the caller receives epoch by epoch.
    Live,
    /// Declarations only (the shell's catalog of `CREATE TABLE`s).
    Declarations,
}

/// A parsed job file.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// Declared tables, by name.
    pub tables: BTreeMap<String, TableDecl>,
    /// The streaming queries, in file order.
    pub inserts: Vec<Insert>,
    /// Views, in file order (a view may use the views before it).
    pub views: Vec<View>,
    /// `SET 'key' = 'value'` settings (e.g. `state.ttl`), keys lower-cased.
    pub settings: BTreeMap<String, String>,
    /// The bare `SELECT` of a live query ([`JobKind::Live`] only).
    pub select: Option<Select>,
    /// Every window call, by placeholder name.
    pub tvfs: BTreeMap<String, TvfCall>,
    /// Every `FOR SYSTEM_TIME AS OF` (lookup join), in file order.
    pub lookups: Vec<preprocess::LookupClause>,
    /// The line and text of the statement of each of `lookups`, for errors.
    lookup_statements: Vec<(u64, String)>,
    /// Each statement, secrets redacted, in file order.
    statements: Vec<String>,
    /// What the text may hold.
    kind: JobKind,
}

/// Feeds one statement, normalized, to `h`: whitespace, comments and
/// keyword case do not count.
fn hash_statement(h: &mut Sha256, s: &str) -> Result<()> {
    for t in preprocess::tokens(s)? {
        match &t {
            Token::Whitespace(_) => continue,
            Token::Word(w) if w.quote_style.is_none() => h.update(w.value.to_ascii_uppercase().as_bytes()),
            other => h.update(other.to_string().as_bytes()),
        }
        h.update(b" ");
    }
    h.update(b";");
    Ok(())
}

/// A short hash of one statement's text, normalized as
/// [`Job::fingerprint`] normalizes a job's: what tells one `INSERT` from
/// another when several write one table (`SinkRecord::statement`).
pub fn statement_fingerprint(s: &str) -> Result<String> {
    let mut h = Sha256::new();
    hash_statement(&mut h, s)?;
    Ok(h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

impl Job {
    /// Parses a job's text. Errors name the statement (by number and first
    /// words) and the problem.
    pub fn parse(text: &str) -> Result<Job> {
        Self::parse_as(text, JobKind::Saved)
    }

    /// Parses a text that holds what `kind` allows: a saved job, a live
    /// query, or declarations only.
    pub fn parse_as(text: &str, kind: JobKind) -> Result<Job> {
        let mut job = Job {
            kind,
            ..Job::default()
        };
        // Secrets are found before parsing, so that no error (the parser
        // quotes what it did not expect) can print one.
        let secrets = secrets::secret_literals(text);
        let mut next_tvf = 0;
        let statements =
            preprocess::split_statements(text).map_err(|e| e.relocated(1, 1).scrubbed(&secrets))?;
        if statements.is_empty() {
            return Err(Error::Plan("the job has no statements".into()));
        }
        for stmt in &statements {
            job.add_statement(&stmt.text, stmt.line, &mut next_tvf)
                .map_err(|e| {
                    e.relocated(stmt.line, stmt.column)
                        .scrubbed(&secrets)
                        .hiding_found(&stmt.text)
                        .in_statement(stmt.line, &stmt.text)
                        .scrubbed(&secrets)
                })?;
        }
        job.mark_lookup_tables().map_err(|e| e.scrubbed(&secrets))?;
        if kind == JobKind::Saved && job.inserts.is_empty() {
            return Err(Error::Plan(
                "the job has no INSERT INTO statement: a job runs `INSERT INTO sink SELECT ...` queries"
                    .into(),
            ));
        }
        if kind == JobKind::Live && job.select.is_none() {
            return Err(Error::Plan("a live query needs a SELECT".into()));
        }
        Ok(job)
    }

    /// A table looked up with `FOR SYSTEM_TIME AS OF` is read as a bounded
    /// table. Only processing-time lookups exist: an event-time temporal
    /// join (a versioned table) is refused.
    fn mark_lookup_tables(&mut self) -> Result<()> {
        for i in 0..self.lookups.len() {
            self.mark_lookup_table(i)
                .map_err(|e| match self.lookup_statements.get(i) {
                    Some((line, text)) => e.in_statement(*line, text),
                    None => e,
                })?;
        }
        Ok(())
    }

    /// [`Job::mark_lookup_tables`] for the `i`-th lookup.
    fn mark_lookup_table(&mut self, i: usize) -> Result<()> {
        {
            let l = self.lookups[i].clone();
            let watermarked = |c: &str| {
                self.tables
                    .values()
                    .any(|t| t.watermark.as_ref().is_some_and(|w| w.column == c))
            };
            if let Some(c) = &l.column
                && watermarked(c)
            {
                return Err(Error::Unsupported(format!(
                    "FOR SYSTEM_TIME AS OF {}: '{c}' is an event-time column; an event-time temporal join (of a \
                     versioned table) is not supported. Weir looks a bounded table up as of processing time: \
                     define a PROCTIME() column (SELECT *, PROCTIME() AS proc_time FROM ...) and join FOR \
                     SYSTEM_TIME AS OF it",
                    l.attribute
                )));
            }
            let Some(t) = self.tables.get_mut(&l.table) else {
                return Err(Error::Plan(format!(
                    "FOR SYSTEM_TIME AS OF: '{}' is not a declared table; a lookup join reads a table declared with \
                     CREATE TABLE {} (...) WITH ('connector' = 'files', 'path' = ..., 'format' = ...)",
                    l.table, l.table
                )));
            };
            if t.watermark.is_some() {
                return Err(Error::Plan(format!(
                    "table '{}' is looked up (FOR SYSTEM_TIME AS OF), so it is read whole as a bounded table: it \
                     cannot have a WATERMARK",
                    t.name
                )));
            }
            t.bounded = true;
        }
        Ok(())
    }

    fn add_statement(&mut self, text: &str, line: u64, next_tvf: &mut usize) -> Result<()> {
        let scope = match self.kind {
            JobKind::Saved => crate::settings::Scope::Everywhere,
            _ => crate::settings::Scope::Shell,
        };
        if let Some((key, value)) = crate::settings::parse_set_in(text, scope)? {
            if self.kind == JobKind::Saved
                && crate::settings::lookup(&key)?.scope == crate::settings::Scope::Shell
            {
                let flag = match key.as_str() {
                    "checkpoint_dir" => "its checkpoint from --checkpoint",
                    "metrics" => "its metrics address from --metrics",
                    _ => "it as a flag (weir run --help)",
                };
                return Err(Error::Plan(format!(
                    "SET {key} is a shell setting; a job run by `weir run` takes {flag}"
                )));
            }
            self.settings.insert(key, value);
            self.statements.push(redact_sql(text)?);
            return Ok(());
        }
        let pre = preprocess::preprocess(text, next_tvf)?;
        let mut parsed = Parser::parse_sql(&GenericDialect {}, &pre.rewritten).map_err(Error::syntax)?;
        if parsed.len() != 1 {
            return Err(Error::Syntax("expected one statement".into()));
        }
        crate::statement::check_set_quantifiers(&parsed[0])?;
        crate::statement::check_distinct_from(&parsed[0])?;
        let redacted = redact_sql(&pre.original)?;
        self.lookups.extend(pre.lookups.iter().cloned());
        self.lookup_statements
            .extend(pre.lookups.iter().map(|_| (line, text.to_string())));
        match parsed.remove(0) {
            Statement::CreateTable(ct) => {
                if !pre.tvfs.is_empty() {
                    return Err(Error::Plan(
                        "window functions cannot appear in CREATE TABLE".into(),
                    ));
                }
                let decl = table_decl(ct, pre.watermark, &pre.metadata)?;
                if self.tables.contains_key(&decl.name) || self.views.iter().any(|v| v.name == decl.name) {
                    return Err(Error::Plan(format!("table '{}' is declared twice", decl.name)));
                }
                self.tables.insert(decl.name.clone(), decl);
            }
            Statement::Insert(_) | Statement::Query(_) if self.kind == JobKind::Declarations => {
                return Err(Error::Plan(
                    "only CREATE TABLE statements are expected here".into(),
                ));
            }
            Statement::Insert(_) if self.kind == JobKind::Live => {
                return Err(Error::Plan(
                    "a live query is one SELECT; INSERT INTO runs as a query of its own".into(),
                ));
            }
            Statement::Query(query) if self.kind == JobKind::Live => {
                if self.select.is_some() {
                    return Err(Error::Plan("a live query is one SELECT".into()));
                }
                self.select = Some(Select {
                    query,
                    line,
                    sql: redacted.clone(),
                    tvfs: pre.tvfs.iter().map(|c| c.placeholder.clone()).collect(),
                });
                for call in pre.tvfs {
                    self.tvfs.insert(call.placeholder.clone(), call);
                }
            }
            Statement::Insert(ins) => {
                let TableObject::TableName(name) = &ins.table else {
                    return Err(Error::Plan("INSERT INTO needs a table name".into()));
                };
                let target = object_name(name)?;
                if ins.overwrite {
                    return Err(Error::Plan(format!(
                        "INSERT OVERWRITE {target} is not supported: a streaming sink appends each epoch's rows \
                         (exactly once). To start its output anew, delete the sink's folder and the job's \
                         checkpoint, and use INSERT INTO"
                    )));
                }
                if ins.partitioned.is_some()
                    || ins.on.is_some()
                    || ins.returning.is_some()
                    || ins.replace_into
                {
                    return Err(Error::Plan(format!(
                        "INSERT INTO {target} takes only a query: PARTITION, ON CONFLICT, RETURNING and REPLACE \
                         are not supported (a sink appends the query's rows)"
                    )));
                }
                if !ins.columns.is_empty() {
                    return Err(Error::Plan(format!(
                        "INSERT INTO {target} (columns) is not supported: the sink takes the \
                         query's columns, so select them in the order you want"
                    )));
                }
                let Some(query) = ins.source else {
                    return Err(Error::Plan(format!("INSERT INTO {target} needs a SELECT")));
                };
                self.inserts.push(Insert {
                    target,
                    query,
                    sql: redacted.clone(),
                    tvfs: pre.tvfs.iter().map(|c| c.placeholder.clone()).collect(),
                    emit: pre.emit,
                    line,
                });
                for call in pre.tvfs {
                    self.tvfs.insert(call.placeholder.clone(), call);
                }
            }
            Statement::CreateView(cv) => {
                let name = object_name(&cv.name)?;
                if cv.materialized {
                    return Err(Error::Plan(format!(
                        "CREATE MATERIALIZED VIEW {name} is not supported; use CREATE VIEW, or a sink and INSERT INTO"
                    )));
                }
                if !cv.columns.is_empty() {
                    return Err(Error::Plan(format!(
                        "CREATE VIEW {name} (columns) is not supported; name the columns with AS in the query"
                    )));
                }
                if pre.emit.is_some() {
                    return Err(Error::Plan(
                        "EMIT belongs on an INSERT INTO, not on a view".into(),
                    ));
                }
                if self.tables.contains_key(&name) || self.views.iter().any(|v| v.name == name) {
                    return Err(Error::Plan(format!("'{name}' is declared twice")));
                }
                self.views.push(View {
                    line,
                    name,
                    query: cv.query,
                    sql: redacted.clone(),
                    tvfs: pre.tvfs.iter().map(|c| c.placeholder.clone()).collect(),
                });
                for call in pre.tvfs {
                    self.tvfs.insert(call.placeholder.clone(), call);
                }
            }
            Statement::Query(_) => {
                return Err(Error::Plan(
                    "a job file runs INSERT INTO statements; to see a query's rows, write them \
                     to a sink with INSERT INTO <sink> SELECT ..."
                        .into(),
                ));
            }
            other => {
                let words: String = other
                    .to_string()
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(Error::Plan(format!(
                    "{words} is not supported in a job; use CREATE TABLE and INSERT INTO"
                )));
            }
        }
        self.statements.push(redacted);
        Ok(())
    }

    /// The job's statements with secrets redacted, as kept in checkpoint
    /// metadata.
    pub fn redacted_sql(&self) -> String {
        self.statements.iter().map(|s| format!("{s};\n")).collect()
    }

    /// A hash of the job's normalized, redacted statements: whitespace,
    /// comments and keyword case do not change it; any change to a
    /// declaration or query does. Rotating a secret does not.
    pub fn fingerprint(&self) -> Result<String> {
        let mut h = Sha256::new();
        for s in &self.statements {
            // Settings say how to run the job (trigger, TTL), not what it
            // computes; what they may change is checked elsewhere.
            if crate::settings::parse_set(s).ok().flatten().is_some() {
                continue;
            }
            hash_statement(&mut h, s)?;
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A job-level setting (`SET 'key' = 'value'`).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// Every secret value in the job's options, so that printed text can be
    /// scrubbed of them.
    pub fn secret_values(&self) -> Vec<String> {
        self.tables
            .values()
            .flat_map(|t| t.options.secret_values())
            .collect()
    }
}

/// Parses one `CREATE TABLE` statement (for tools that declare tables one
/// at a time, such as the shell and the test harness).
pub fn parse_create_table(text: &str) -> Result<TableDecl> {
    let mut next_tvf = 0;
    let pre = preprocess::preprocess(text, &mut next_tvf)?;
    let mut parsed = Parser::parse_sql(&GenericDialect {}, &pre.rewritten).map_err(Error::syntax)?;
    match (parsed.len(), parsed.pop()) {
        (1, Some(Statement::CreateTable(ct))) => table_decl(ct, pre.watermark, &pre.metadata),
        _ => Err(Error::Plan("expected one CREATE TABLE statement".into())),
    }
}

fn object_name(name: &ObjectName) -> Result<String> {
    let last = name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .ok_or_else(|| Error::Plan(format!("bad table name '{name}'")))?;
    Ok(normalize_ident(&last.value, last.quote_style.is_some()))
}

fn option_value(expr: &ast::Expr) -> Option<String> {
    match expr {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s)
            | ast::Value::DoubleQuotedString(s)
            | ast::Value::EscapedStringLiteral(s) => Some(s.clone()),
            ast::Value::DollarQuotedString(d) => Some(d.value.clone()),
            ast::Value::Number(n, _) => Some(n.clone()),
            ast::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        ast::Expr::Identifier(i) => Some(i.value.clone()),
        _ => None,
    }
}

fn table_decl(
    ct: ast::CreateTable,
    watermark: Option<preprocess::WatermarkClause>,
    metadata_clauses: &[preprocess::MetadataClause],
) -> Result<TableDecl> {
    let name = object_name(&ct.name)?;
    if ct.query.is_some() {
        return Err(Error::Plan(format!(
            "CREATE TABLE {name} AS SELECT is not supported; declare the table and INSERT INTO it"
        )));
    }
    if ct.like.is_some() || ct.clone.is_some() {
        return Err(Error::Plan(format!(
            "CREATE TABLE {name} LIKE (or CLONE) another table is not supported; declare its columns and \
             options"
        )));
    }
    let key_columns = primary_key(&name, &ct)?;
    let options = match &ct.table_options {
        CreateTableOptions::With(opts) | CreateTableOptions::Options(opts) => {
            let mut pairs = Vec::new();
            for o in opts {
                let SqlOption::KeyValue { key, value } = o else {
                    return Err(Error::Plan(format!(
                        "table '{name}': options must be 'key' = 'value' pairs"
                    )));
                };
                let v = option_value(value).ok_or_else(|| {
                    Error::Plan(format!(
                        "table '{name}': option '{}' needs a literal value",
                        key.value
                    ))
                })?;
                if pairs
                    .iter()
                    .any(|(k, _): &(String, String)| k.eq_ignore_ascii_case(&key.value))
                {
                    return Err(Error::Plan(format!(
                        "table '{name}': option '{}' is given twice",
                        key.value
                    )));
                }
                pairs.push((key.value.clone(), v));
            }
            Options::new(pairs)
        }
        CreateTableOptions::None => Options::default(),
        _ => {
            return Err(Error::Plan(format!(
                "table '{name}': give options as WITH ('key' = 'value', ...)"
            )));
        }
    };
    for (i, c) in ct.columns.iter().enumerate() {
        if ct.columns[..i]
            .iter()
            .any(|d| d.name.value.eq_ignore_ascii_case(&c.name.value))
        {
            return Err(Error::Plan(format!(
                "table '{name}': column '{}' is declared twice",
                c.name.value
            )));
        }
    }
    // DataFusion 55 reads `TIMESTAMP WITH TIME ZONE` as a TIMESTAMP without
    // one (its session has no time zone): the column lost its zone without
    // a word (a New York time read as the UTC wall-clock time, and written
    // so). Weir's times are UTC instants as TIMESTAMP.
    fn zoned(t: &ast::DataType) -> bool {
        use ast::{ArrayElemTypeDef, DataType as T, TimezoneInfo};
        match t {
            T::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => true,
            T::Array(ArrayElemTypeDef::AngleBracket(t) | ArrayElemTypeDef::SquareBracket(t, _))
            | T::Array(ArrayElemTypeDef::Parenthesis(t)) => zoned(t),
            T::Map(k, v) => zoned(k) || zoned(v),
            T::Struct(fields, _) => fields.iter().any(|f| zoned(&f.field_type)),
            _ => false,
        }
    }
    for c in &ct.columns {
        if zoned(&c.data_type) {
            return Err(Error::Unsupported(format!(
                "table '{name}': column '{}' is {}: a TIMESTAMP with a time zone is not supported; declare it \
                 TIMESTAMP(3) (a file's zoned times are read as UTC)",
                c.name.value, c.data_type
            )));
        }
    }
    let schema: Option<SchemaRef> = if ct.columns.is_empty() {
        None
    } else {
        let provider = MinimalProvider::default();
        let schema = SqlToRel::new(&provider)
            .build_schema(ct.columns.clone())
            .map_err(|e| Error::Plan(format!("table '{name}': {}", crate::strip_df(&e))))?;
        Some(Arc::new(schema))
    };
    let watermark = match watermark {
        None => None,
        Some(w) => {
            let Some(schema) = &schema else {
                return Err(Error::Plan(format!(
                    "table '{name}': a WATERMARK needs declared columns"
                )));
            };
            let field = schema.field_with_name(&w.column).map_err(|_| {
                Error::Plan(format!(
                    "table '{name}': WATERMARK FOR {}: no such column",
                    w.column
                ))
            })?;
            if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
                return Err(Error::Plan(format!(
                    "table '{name}': the watermark column '{}' must be a TIMESTAMP, not {}",
                    w.column,
                    crate::catalog::sql_type_name(field.data_type())
                )));
            }
            Some(Watermark {
                delay_ms: watermark_delay(&name, &w)?,
                column: w.column,
            })
        }
    };
    let column_types = ct
        .columns
        .iter()
        .map(|c| {
            let not_null = c
                .options
                .iter()
                .any(|o| matches!(o.option, ast::ColumnOption::NotNull));
            format!("{}{}", c.data_type, if not_null { " NOT NULL" } else { "" })
        })
        .collect();
    let bounded = match options.get("bounded").map(|v| v.to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(v) => {
            return Err(Error::Plan(format!(
                "table '{name}': option 'bounded' must be 'true' or 'false', not '{v}'"
            )));
        }
    };
    if bounded && watermark.is_some() {
        return Err(Error::Plan(format!(
            "table '{name}' is bounded (a table read whole, not a stream): it cannot have a WATERMARK"
        )));
    }
    let primary_key = match (&schema, key_columns) {
        (_, None) => vec![],
        (None, Some(_)) => {
            return Err(Error::Plan(format!(
                "table '{name}': a PRIMARY KEY needs declared columns"
            )));
        }
        (Some(schema), Some(columns)) => {
            let mut at = Vec::with_capacity(columns.len());
            for c in columns {
                let i = schema
                    .index_of(&c)
                    .map_err(|_| Error::Plan(format!("table '{name}': PRIMARY KEY ({c}): no such column")))?;
                if at.contains(&i) {
                    return Err(Error::Plan(format!(
                        "table '{name}': PRIMARY KEY names column '{c}' twice"
                    )));
                }
                at.push(i);
            }
            at
        }
    };
    let mut metadata = BTreeMap::new();
    for m in metadata_clauses {
        if metadata.insert(m.column.clone(), m.key.clone()).is_some() {
            return Err(Error::Plan(format!(
                "table '{name}': column '{}' is declared METADATA twice",
                m.column
            )));
        }
    }
    Ok(TableDecl {
        name,
        schema,
        column_types,
        watermark,
        options,
        bounded,
        metadata,
        primary_key,
    })
}

/// The columns of a table's `PRIMARY KEY (...) NOT ENFORCED` (as a table
/// constraint or a column's), if it declares one. As in Flink, the key is
/// a promise, not checked: only `NOT ENFORCED` is accepted, so that nobody
/// reads it as a check Weir makes. Other constraints are refused.
fn primary_key(name: &str, ct: &ast::CreateTable) -> Result<Option<Vec<String>>> {
    let not_enforced = |c: &Option<ast::ConstraintCharacteristics>| -> Result<()> {
        match c.as_ref().and_then(|c| c.enforced) {
            Some(false) => Ok(()),
            _ => Err(Error::Plan(format!(
                "table '{name}': write PRIMARY KEY (...) NOT ENFORCED: Weir does not check that keys are \
                 unique (as in Flink); the key is your promise, which lets a join on it hold fewer rows"
            ))),
        }
    };
    let mut keys: Vec<Vec<String>> = Vec::new();
    for c in &ct.constraints {
        match c {
            ast::TableConstraint::PrimaryKey(pk) => {
                not_enforced(&pk.characteristics)?;
                let mut columns = Vec::with_capacity(pk.columns.len());
                for ic in &pk.columns {
                    match &ic.column.expr {
                        ast::Expr::Identifier(i) => {
                            columns.push(normalize_ident(&i.value, i.quote_style.is_some()))
                        }
                        e => {
                            return Err(Error::Plan(format!(
                                "table '{name}': PRIMARY KEY takes column names, not `{e}`"
                            )));
                        }
                    }
                }
                keys.push(columns);
            }
            other => {
                return Err(Error::Plan(format!(
                    "table '{name}': the constraint `{other}` is not supported (only PRIMARY KEY (...) NOT ENFORCED)"
                )));
            }
        }
    }
    for col in &ct.columns {
        for o in &col.options {
            match &o.option {
                ast::ColumnOption::PrimaryKey(pk) => {
                    not_enforced(&pk.characteristics)?;
                    keys.push(vec![normalize_ident(
                        &col.name.value,
                        col.name.quote_style.is_some(),
                    )]);
                }
                ast::ColumnOption::Unique(_)
                | ast::ColumnOption::ForeignKey(_)
                | ast::ColumnOption::Check(_) => {
                    return Err(Error::Plan(format!(
                        "table '{name}': column '{}': the constraint `{}` is not supported (only PRIMARY KEY NOT ENFORCED)",
                        col.name.value, o.option
                    )));
                }
                _ => {}
            }
        }
    }
    if keys.len() > 1 {
        return Err(Error::Plan(format!("table '{name}': more than one PRIMARY KEY")));
    }
    Ok(keys.pop())
}

/// `col` or `col - INTERVAL ...` → the delay in ms.
fn watermark_delay(table: &str, w: &preprocess::WatermarkClause) -> Result<i64> {
    let bad = || {
        Error::Plan(format!(
            "table '{table}': the watermark must be `{c}` or `{c} - INTERVAL '<n>' <unit>`, not `{}`",
            w.expr,
            c = w.column
        ))
    };
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(&w.expr)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| Error::Syntax(format!("WATERMARK FOR {}: {e}", w.column)))?;
    let is_col = |e: &ast::Expr| {
        matches!(e, ast::Expr::Identifier(i)
            if normalize_ident(&i.value, i.quote_style.is_some()) == w.column)
    };
    match &expr {
        e if is_col(e) => Ok(0),
        ast::Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if is_col(left) => {
            let delay = interval_ms(&right.to_string())
                .map_err(|e| Error::Plan(format!("table '{table}': watermark delay: {e}")))?;
            if delay < 0 {
                return Err(bad());
            }
            Ok(delay)
        }
        _ => Err(bad()),
    }
}

/// Evaluates an interval literal (`INTERVAL '10' SECOND`, `INTERVAL '1 minute'`)
/// to milliseconds, with DataFusion's own interval parsing. Month-based and
/// sub-millisecond intervals are refused: windows and watermarks are in ms.
pub fn interval_ms(sql: &str) -> Result<i64> {
    let ast = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| Error::Syntax(format!("'{sql}': {e}")))?;
    let provider = MinimalProvider::default();
    let expr = SqlToRel::new(&provider)
        .sql_to_expr(ast, &DFSchema::empty(), &mut PlannerContext::new())
        .map_err(|e| Error::Plan(format!("'{sql}': {}", crate::strip_df(&e))))?;
    let not_interval = || Error::Plan(format!("'{sql}' is not an interval such as INTERVAL '10' SECOND"));
    let Expr::Literal(value, _) = expr else {
        return Err(not_interval());
    };
    let ms = match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            if v.months != 0 {
                return Err(Error::Plan(format!(
                    "'{sql}': intervals of months or years are not supported here; use days"
                )));
            }
            if v.nanoseconds % 1_000_000 != 0 {
                return Err(Error::Plan(format!(
                    "'{sql}': intervals finer than a millisecond are not supported"
                )));
            }
            i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(v)) => i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds),
        ScalarValue::IntervalYearMonth(Some(_)) => {
            return Err(Error::Plan(format!(
                "'{sql}': intervals of months or years are not supported here; use days"
            )));
        }
        _ => return Err(not_interval()),
    };
    // A window or delay this long would put window ends and watermarks
    // past the year 9999, where no timestamp reaches (other tools then
    // cannot read the window ends written).
    if ms.unsigned_abs() > MAX_INTERVAL_MS as u64 {
        return Err(Error::Plan(format!(
            "'{sql}': more than 1,000 years is longer than any window, delay or time-to-live Weir can use"
        )));
    }
    Ok(ms)
}

/// The longest interval a window, a watermark delay or a time-to-live may
/// be: 1,000 years (of 365.25 days).
pub const MAX_INTERVAL_MS: i64 = 1_000 * 36_525 * 86_400_000 / 100;

/// Replaces the values of secret options (`'s3.secret_access_key' = '...'`,
/// with or without the `=`) with `'***'`, leaving the rest of the text as
/// written.
pub fn redact_sql(text: &str) -> Result<String> {
    Ok(secrets::mask_secrets(text))
}

/// A `ContextProvider` with no tables or functions: enough to convert column
/// types and literal expressions with DataFusion's own rules.
#[derive(Default)]
struct MinimalProvider {
    options: ConfigOptions,
}

impl ContextProvider for MinimalProvider {
    fn get_table_source(&self, name: TableReference) -> datafusion::common::Result<Arc<dyn TableSource>> {
        datafusion::common::plan_err!("no table '{name}' here")
    }
    fn get_function_meta(&self, _: &str) -> Option<Arc<ScalarUDF>> {
        None
    }
    fn get_higher_order_meta(&self, _: &str) -> Option<Arc<datafusion::logical_expr::HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, _: &str) -> Option<Arc<AggregateUDF>> {
        None
    }
    fn get_window_meta(&self, _: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        vec![]
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        vec![]
    }
    fn udaf_names(&self) -> Vec<String> {
        vec![]
    }
    fn udwf_names(&self) -> Vec<String> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    const JOB: &str = "
        -- bids arrive as Parquet files
        CREATE TABLE bids (
          auction BIGINT, price BIGINT, date_time TIMESTAMP(3),
          WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND
        ) WITH ('connector' = 'files', 'path' = 'data/bids/', 'format' = 'parquet',
                's3.secret_access_key' = 'hunter2');
        CREATE TABLE out WITH ('connector' = 'files', 'path' = 'out/', 'format' = 'parquet');
        INSERT INTO out
        SELECT window_start, window_end, auction, COUNT(*) AS n
        FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
        GROUP BY window_start, window_end, auction;";

    /// A refused lookup names its statement's line, as other errors do.
    #[test]
    fn a_lookup_on_event_time_is_refused_naming_its_line() {
        let job = format!(
            "{JOB}\nCREATE TABLE dim (auction BIGINT, tier VARCHAR) WITH ('connector' = 'files', 'path' = 'd/', \
             'format' = 'json');\nINSERT INTO out SELECT b.auction, d.tier FROM bids b \
             JOIN dim FOR SYSTEM_TIME AS OF b.date_time AS d ON b.auction = d.auction;"
        );
        let e = Job::parse(&job).unwrap_err().to_string();
        let line = job.lines().position(|l| l.contains("FOR SYSTEM_TIME")).unwrap() + 1;
        assert!(
            e.contains(&format!("line {line} (`INSERT INTO out SELECT b.auction")),
            "{e}"
        );
        assert!(e.contains("'date_time' is an event-time column"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_watermark_on_text_is_refused_in_sql_types() {
        let e = Job::parse(&JOB.replace("date_time TIMESTAMP(3)", "date_time VARCHAR"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the watermark column 'date_time' must be a TIMESTAMP, not VARCHAR"),
            "{e}"
        );
    }

    #[test]
    fn parses_sources_sinks_and_queries() {
        let job = Job::parse(JOB).unwrap();
        let bids = &job.tables["bids"];
        let schema = bids.schema.as_ref().unwrap();
        assert_eq!(
            schema.field_with_name("date_time").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert_eq!(
            bids.watermark,
            Some(Watermark {
                column: "date_time".into(),
                delay_ms: 5000
            })
        );
        assert!(job.tables["out"].schema.is_none());
        assert_eq!(job.inserts.len(), 1);
        assert_eq!(job.inserts[0].target, "out");
        assert_eq!(job.tvfs["__weir_tvf_0"].table, "bids");
    }

    #[test]
    fn secrets_are_redacted_and_do_not_change_the_fingerprint() {
        let job = Job::parse(JOB).unwrap();
        let sql = job.redacted_sql();
        assert!(!sql.contains("hunter2") && sql.contains("'***'"), "{sql}");
        assert!(!format!("{job:?}").contains("hunter2"));
        assert_eq!(job.secret_values(), vec!["hunter2".to_string()]);
        let rotated = Job::parse(&JOB.replace("hunter2", "swordfish")).unwrap();
        assert_eq!(job.fingerprint().unwrap(), rotated.fingerprint().unwrap());
        let reformatted = Job::parse(&JOB.replace("\n        ", "\n").replace("SELECT", "select")).unwrap();
        assert_eq!(job.fingerprint().unwrap(), reformatted.fingerprint().unwrap());
        let changed = Job::parse(&JOB.replace("'10' SECOND", "'20' SECOND")).unwrap();
        assert_ne!(job.fingerprint().unwrap(), changed.fingerprint().unwrap());
    }

    #[test]
    fn intervals_in_milliseconds() {
        assert_eq!(interval_ms("INTERVAL '10' SECOND").unwrap(), 10_000);
        assert_eq!(interval_ms("INTERVAL '1' MINUTE").unwrap(), 60_000);
        assert_eq!(interval_ms("INTERVAL '2 hours'").unwrap(), 7_200_000);
        assert_eq!(interval_ms("INTERVAL '1' DAY").unwrap(), 86_400_000);
        assert!(
            interval_ms("INTERVAL '1' MONTH")
                .unwrap_err()
                .to_string()
                .contains("months")
        );
        assert!(interval_ms("5").is_err());
        assert_eq!(interval_ms("INTERVAL '365250' DAY").unwrap(), MAX_INTERVAL_MS);
        let e = interval_ms("INTERVAL '100000000' DAY").unwrap_err().to_string();
        assert!(e.contains("more than 1,000 years"), "{e}");
    }

    #[test]
    fn a_live_query_is_one_bare_select_and_a_saved_job_refuses_it() {
        let tables = JOB.split("INSERT INTO").next().unwrap();
        let live = Job::parse_as(&format!("{tables} SELECT auction FROM bids"), JobKind::Live).unwrap();
        assert!(live.inserts.is_empty());
        assert!(live.select.as_ref().unwrap().sql.contains("SELECT auction"));
        let err = Job::parse(&format!("{tables} SELECT auction FROM bids")).unwrap_err();
        assert!(err.to_string().contains("runs INSERT INTO statements"), "{err}");
        let err = Job::parse_as(&format!("{tables} SELECT 1; SELECT 2"), JobKind::Live).unwrap_err();
        assert!(err.to_string().contains("one SELECT"), "{err}");
        let err = Job::parse_as(JOB, JobKind::Live).unwrap_err();
        assert!(
            err.to_string().contains("INSERT INTO runs as a query of its own"),
            "{err}"
        );
        let err = Job::parse_as(tables, JobKind::Live).unwrap_err();
        assert!(err.to_string().contains("needs a SELECT"), "{err}");
    }

    #[test]
    fn statements_a_stream_cannot_honour_or_that_say_a_thing_twice_are_refused() {
        let tables = JOB.split("INSERT INTO").next().unwrap();
        for (sql, want) in [
            (
                "INSERT OVERWRITE out SELECT auction FROM bids",
                "INSERT OVERWRITE out is not supported",
            ),
            (
                "INSERT INTO out SELECT auction FROM bids RETURNING auction",
                "RETURNING",
            ),
            (
                "CREATE TABLE t LIKE bids",
                "LIKE (or CLONE) another table is not supported",
            ),
            ("CREATE TABLE t (a INT, A INT)", "column 'A' is declared twice"),
            (
                "CREATE TABLE t (a TIMESTAMP(3) WITH TIME ZONE)",
                "column 'a' is TIMESTAMP(3) WITH TIME ZONE: a TIMESTAMP with a time zone is not supported",
            ),
            (
                "CREATE TABLE t (a TIMESTAMPTZ)",
                "a TIMESTAMP with a time zone is not supported",
            ),
            (
                "CREATE TABLE t (s STRUCT<t TIMESTAMP WITH TIME ZONE>)",
                "a TIMESTAMP with a time zone is not supported",
            ),
            (
                "CREATE TABLE t WITH ('connector' = 'files', 'path' = 'a/', 'PATH' = 'b/')",
                "option 'PATH' is given twice",
            ),
        ] {
            let err = Job::parse(&format!("{tables} {sql}")).unwrap_err().to_string();
            assert!(err.contains(want), "{sql}: {err}");
        }
    }

    /// Only a zoned TIMESTAMP type is refused, not a name that says so.
    #[test]
    fn a_field_named_like_a_zoned_type_is_fine() {
        for sql in [
            "CREATE TABLE t (s STRUCT<timestamptz_note VARCHAR>)",
            "CREATE TABLE t (\"with time zone\" TIMESTAMP(3) WITHOUT TIME ZONE)",
        ] {
            Job::parse_as(sql, JobKind::Declarations).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn declarations_alone_parse_as_a_catalog() {
        let tables = JOB.split("INSERT INTO").next().unwrap();
        let job = Job::parse_as(tables, JobKind::Declarations).unwrap();
        assert_eq!(job.tables.len(), 2);
        let err = Job::parse_as(JOB, JobKind::Declarations).unwrap_err();
        assert!(err.to_string().contains("only CREATE TABLE"), "{err}");
    }

    #[test]
    fn malformed_statements_are_clear_errors() {
        let err =
            Job::parse("CREATE TABLE t (a BIGINT) WITH ('connector'='files'); INSERT INTO x SELEC a FROM t")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("line 1 (`INSERT INTO x SELEC") && err.contains("found: SELEC at line 1, column 69"),
            "{err}"
        );
        let err = Job::parse(
            "CREATE TABLE t (a BIGINT) WITH ('connector'='files');\n\nINSERT INTO x\nSELEC a FROM t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 3 (") && err.contains("at line 4, column 1"),
            "{err}"
        );
        let err = Job::parse("CREATE TABLE t (a BIGINT, WATERMARK FOR a AS a) WITH ('connector'='files'); INSERT INTO x SELECT a FROM t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be a TIMESTAMP"), "{err}");
        let err = Job::parse("CREATE TABLE t (ts TIMESTAMP(3), WATERMARK FOR ts AS ts + INTERVAL '1' SECOND) WITH ('connector'='files'); INSERT INTO x SELECT ts FROM t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the watermark must be"), "{err}");
        let err = Job::parse("CREATE TABLE t (a INT);").unwrap_err().to_string();
        assert!(err.contains("no INSERT INTO"), "{err}");
    }
}
