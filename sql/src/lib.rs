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

pub mod catalog;
pub mod job;
pub mod nodes;
pub mod planner;
pub mod preprocess;

pub use catalog::{Options, TableDecl, Watermark};
pub use job::{Emit, Insert, Job, JobKind, Select, View};
pub use nodes::{
    OP_COLUMN, RankKind, UpdateAggregateNode, WatermarkOrigin, WindowAggregateNode, WindowAssignNode,
    WindowColumn, WindowSpec, WindowTopNNode,
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
    #[error("statement {index} (`{head}`): {source}")]
    InStatement {
        /// 1-based statement number.
        index: usize,
        /// The statement's first words.
        head: String,
        /// The error.
        source: Box<Error>,
    },
    /// An error from DataFusion.
    #[error("{}", strip_df(.0))]
    DataFusion(#[from] DataFusionError),
}

impl Error {
    /// This error, placed in statement `index` of a job.
    pub fn in_statement(self, index: usize, text: &str) -> Error {
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let head = if flat.chars().count() > 60 {
            format!("{}...", flat.chars().take(57).collect::<String>())
        } else {
            flat
        };
        Error::InStatement {
            index,
            head,
            source: Box::new(self),
        }
    }
}

/// A DataFusion error's message without the backtrace and the generic
/// "Error during planning: " style prefixes.
pub fn strip_df(e: &DataFusionError) -> String {
    let msg = e.strip_backtrace();
    for prefix in [
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

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
