//! Weir's streaming SQL: parsing a job, the catalog of declared tables,
//! window table functions, and the rewrite of a DataFusion logical plan into
//! an incremental plan, with clear errors for what cannot run on an unbounded
//! stream. Plans only: this crate does no I/O.
//!
//! ```text
//!  job text ──split──▶ statements ──preprocess──▶ sqlparser AST ──▶ Job (tables, inserts)
//!                      (WATERMARK clauses cut out, TUMBLE(...) → __weir_tvf_N)
//!
//!  INSERT's query ──DataFusion SQL planner──▶ LogicalPlan
//!     ──placeholders → WindowAssign(TableScan(source))──▶ DataFusion optimizer
//!     ──Aggregate over a window → WindowAggregate; unsupported nodes → errors──▶ PipelinePlan
//! ```
//!
//! Modules: [`job`] and [`preprocess`] (a job's text to statements, window
//! calls and `EMIT` cut out), [`catalog`] (declared tables and options),
//! [`planner`] (windows, watermark tracing, the streaming rewrite, sink
//! conformance), [`nodes`] (the logical nodes DataFusion does not have),
//! [`statement`] (what kind of statement a text is, for the shell: the CLI
//! never tokenises SQL itself), [`settings`] (the one list of `SET` keys),
//! [`secrets`] (finding and masking credentials in SQL text).

pub mod catalog;
pub mod functions;
pub mod job;
pub mod nodes;
pub mod planner;
pub mod preprocess;
pub mod secrets;
pub mod settings;
pub mod statement;

pub use catalog::{Options, TableDecl, Watermark};
pub use job::{Emit, Insert, Job, JobKind, Select, View};
pub use nodes::{
    LateFilterNode, OP_COLUMN, RankKind, StreamJoinNode, StreamTopNNode, UpdateAggregateNode,
    WatermarkOrigin, WindowAggregateNode, WindowAssignNode, WindowColumn, WindowSpec, WindowTopNNode,
};
pub use planner::{PipelinePlan, ScanProvider, StreamPlanner};

use datafusion::error::DataFusionError;

/// Errors from parsing and planning streaming SQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text does not parse.
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    /// The SQL parses but is wrong (unknown table, bad option, ...).
    #[error("{0}")]
    Plan(String),
    /// The SQL is valid but cannot run on an unbounded stream.
    #[error("cannot run on a stream: {0}")]
    Unsupported(String),
    /// An error in a given statement of a job.
    #[error("line {line} (`{head}`): {inner}")]
    InStatement {
        /// The line of the job's text where the statement starts.
        line: u64,
        /// The statement's first words.
        head: String,
        /// The error. (Not a `source()`: the message already holds it, and
        /// printing the chain of causes would say it twice.)
        inner: Box<Error>,
    },
    /// An error from DataFusion. (Not a `source()`, as above.)
    #[error("{}", strip_df(.0))]
    DataFusion(DataFusionError),
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        Error::DataFusion(e)
    }
}

impl Error {
    /// A bug in Weir, not in the query: printed as `internal error: ...`.
    pub fn internal(what: impl Into<String>) -> Error {
        Error::DataFusion(DataFusionError::Internal(what.into()))
    }

    /// A parser's or tokenizer's error, without its generic prefix.
    pub fn syntax(e: impl std::fmt::Display + std::any::Any) -> Error {
        if let Some(text) = (&e as &dyn std::any::Any)
            .downcast_ref::<DataFusionError>()
            .and_then(parser_text)
        {
            return Error::Syntax(text);
        }
        let text = e.to_string();
        let text = text.strip_prefix("sql parser error: ").unwrap_or(&text);
        // DataFusion's wrapping of a parser error prints its Rust form:
        // `SQL error: ParserError("Expected: ), found: EOF")`.
        let text = text
            .strip_prefix("SQL error: ParserError(\"")
            .or_else(|| text.strip_prefix("SQL error: TokenizerError(\""))
            .and_then(|t| t.strip_suffix("\")"))
            .map_or_else(|| text.to_string(), |t| t.replace("\\\"", "\""));
        Error::Syntax(text)
    }

    /// This error, placed in the statement of a job that starts at `line`.
    pub fn in_statement(self, line: u64, text: &str) -> Error {
        // Secrets masked before the text is cut: a cut secret no longer
        // matches its whole value when the message is scrubbed.
        let masked = secrets::mask_secrets(text);
        let flat: String = masked.split_whitespace().collect::<Vec<_>>().join(" ");
        let head = if flat.chars().count() > 60 {
            format!("{}...", flat.chars().take(57).collect::<String>())
        } else {
            flat
        };
        Error::InStatement {
            line,
            head,
            inner: Box::new(self),
        }
    }

    /// A parser error about a statement that starts at `line`, `column` of
    /// a job's text, with its position moved into the job's text.
    pub fn relocated(self, line: u64, column: u64) -> Error {
        match self {
            Error::Syntax(m) => Error::Syntax(preprocess::relocate(&m, line, column)),
            other => other,
        }
    }

    /// This error with its text changed by `f` (its structure kept).
    pub fn map_text(self, f: &dyn Fn(String) -> String) -> Error {
        match self {
            Error::Syntax(m) => Error::Syntax(f(m)),
            Error::Plan(m) => Error::Plan(f(m)),
            Error::Unsupported(m) => Error::Unsupported(f(m)),
            Error::InStatement { line, head, inner } => Error::InStatement {
                line,
                head: f(head),
                inner: Box::new(inner.map_text(f)),
            },
            Error::DataFusion(e) => Error::Plan(f(strip_df(&e))),
        }
    }

    /// This error without the placeholder names that stand for window
    /// calls (`__weir_tvf_0`), which mean nothing to the user: a column
    /// `__weir_tvf_0.price` is `price`, the table is the call.
    pub fn without_placeholders(
        self,
        tvfs: &std::collections::BTreeMap<String, preprocess::TvfCall>,
    ) -> Error {
        if tvfs.is_empty() {
            return self;
        }
        self.map_text(&|m| preprocess::hide_placeholders(&m, tvfs))
    }

    /// A parser error about `text`: when the statement sets a secret, the
    /// token the parser quotes back (`found: ...`) is not shown. It may be
    /// part of the secret's value in a form the scan for secrets does not
    /// decode (`U&'\0041...'`, `E'\x41...'`, a second string literal
    /// after the value).
    pub fn hiding_found(self, text: &str) -> Error {
        if !secrets::mentions_secret_key(text) {
            return self;
        }
        self.map_text(&|m| hide_found(&m))
    }

    /// This error with each of `secrets` in its text replaced by `***`.
    pub fn scrubbed(self, secrets: &[String]) -> Error {
        if secrets.is_empty() {
            return self;
        }
        self.map_text(&|m| secrets::scrub(&m, secrets))
    }
}

/// `message` (a parser's) without the token it quotes back (`found:
/// ...`), for a statement that sets a secret (see [`Error::hiding_found`]).
pub fn hide_found(message: &str) -> String {
    let Some(i) = message.find("found: ") else {
        return message.to_string();
    };
    let rest = &message[i + "found: ".len()..];
    // The parser says `at Line: L, Column: C`; a relocated message, `at
    // line L, column C`.
    let end = rest.to_ascii_lowercase().find(" at line").unwrap_or(rest.len());
    // A keyword or a punctuation mark tells where the statement went
    // wrong and holds no value; a masked one neither.
    let token = &rest[..end];
    if !token.contains(['\'', '"', '$']) || token == "'***'" {
        return message.to_string();
    }
    format!(
        "{}found: (not shown: the statement sets a secret){}",
        &message[..i],
        &rest[end..]
    )
}

/// The parser's own words in a DataFusion error that wraps one (its
/// Display is the Rust form, `SQL error: ParserError("...")`).
fn parser_text(e: &DataFusionError) -> Option<String> {
    use datafusion::sql::sqlparser::parser::ParserError;
    match e {
        DataFusionError::SQL(p, _) => Some(match p.as_ref() {
            ParserError::ParserError(s) | ParserError::TokenizerError(s) => s.clone(),
            ParserError::RecursionLimitExceeded => "the statement nests too deeply".to_string(),
        }),
        DataFusionError::Context(_, inner) => parser_text(inner),
        _ => None,
    }
}

/// Why `COUNT(DISTINCT a, b)` is refused, and what to write.
pub const COUNT_DISTINCT_PAIRS: &str = "COUNT(DISTINCT a, b) of more than one argument is not supported by DataFusion \
     55: count the distinct pairs as one value, COUNT(DISTINCT struct(a, b))";

/// A DataFusion error's message without the backtrace and the generic
/// "Error during planning: " style prefixes.
pub fn strip_df(e: &DataFusionError) -> String {
    if let Some(text) = parser_text(e) {
        return text;
    }
    let msg = e.strip_backtrace();
    // DataFusion asks for a bug report on its internal errors; when one
    // reaches a user, the query is what DataFusion could not handle.
    let msg = match msg.split_once(".\nThis issue was likely caused by a bug in DataFusion's code") {
        Some((head, _)) => head.replace("Internal error: ", "internal error: "),
        None => msg,
    };
    if let Some(m) = no_signature(&msg) {
        return m;
    }
    if msg.contains("COUNT DISTINCT with multiple arguments") {
        return COUNT_DISTINCT_PAIRS.to_string();
    }
    // A correlation DataFusion 55 cannot plan, said as Debug text of its
    // plan nodes: `CROSS JOIN UNNEST(t.col)`, a LATERAL subquery correlated
    // by more than equalities.
    if msg.contains("does not support logical expression OuterReferenceColumn")
        || msg.contains("Optimizer rule 'decorrelate_lateral_join' failed")
    {
        return "a subquery or UNNEST in FROM that refers to another table's columns (a LATERAL correlation) is \
                not supported in this form by DataFusion 55: UNNEST a column in the SELECT list (`SELECT id, \
                unnest(col) FROM t`), and correlate a LATERAL subquery by equalities only"
            .to_string();
    }
    for prefix in [
        "Execution error: ",
        "Arrow error: ",
        "Error during planning: ",
        "Schema error: ",
        "This feature is not implemented: ",
        "SQL error: ",
        "Optimizer rule 'type_coercion' failed\ncaused by\n",
        "type_coercion\ncaused by\n",
    ] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            return rest.trim().to_string();
        }
    }
    msg.trim().to_string()
}

/// DataFusion's "Function 'sum' failed to match any signature, errors:
/// ... requires Decimal, but received String (DataType: Utf8View). ..."
/// (an internal error, as DataFusion raises it) as the planning error it
/// is: the function, the type it got, and the types it takes.
fn no_signature(msg: &str) -> Option<String> {
    let at = msg.find("Function '")?;
    let rest = &msg[at + "Function '".len()..];
    let (name, rest) = rest.split_once('\'')?;
    if !rest.starts_with(" failed to match any signature") {
        return None;
    }
    let mut wanted: Vec<&str> = Vec::new();
    let mut received = None;
    for part in rest.split("requires ").skip(1) {
        let (want, tail) = part.split_once(", but received ")?;
        wanted.push(want.trim());
        received = received.or_else(|| {
            let (_, t) = tail.split_once("(DataType: ")?;
            // Up to the parenthesis that closes "(DataType: ": types have
            // their own (`Timestamp(ms)`).
            let mut depth = 0;
            let end = t.char_indices().find_map(|(i, c)| match c {
                '(' => {
                    depth += 1;
                    None
                }
                ')' if depth == 0 => Some(i),
                ')' => {
                    depth -= 1;
                    None
                }
                _ => None,
            })?;
            Some(t[..end].to_string())
        });
    }
    wanted.dedup();
    let got = received.map(|t| format!(" of type {t}")).unwrap_or_default();
    Some(format!(
        "function '{name}' does not take an argument{got}{}",
        if wanted.is_empty() {
            String::new()
        } else {
            format!(" (it takes {})", wanted.join(", "))
        }
    ))
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parser_error_through_datafusion_reads_as_text() {
        let e = DataFusionError::SQL(
            Box::new(datafusion::sql::sqlparser::parser::ParserError::ParserError(
                "Expected: ), found: EOF".into(),
            )),
            None,
        );
        assert_eq!(
            Error::syntax(e).to_string(),
            "SQL syntax error: Expected: ), found: EOF"
        );
        assert_eq!(
            Error::syntax("sql parser error: Expected: an expression").to_string(),
            "SQL syntax error: Expected: an expression"
        );
        // Its own words, escapes and all, wherever it is printed.
        let e = DataFusionError::SQL(
            Box::new(datafusion::sql::sqlparser::parser::ParserError::TokenizerError(
                "Unterminated string literal at 'a\\b'".into(),
            )),
            None,
        );
        assert_eq!(strip_df(&e), "Unterminated string literal at 'a\\b'");
    }
}
