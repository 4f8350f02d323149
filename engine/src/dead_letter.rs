//! Dead-letter tables: where a source with `'on_error' = 'dead_letter'`
//! sends its bad records, one row each:
//!
//! ```text
//! source        VARCHAR  the source table
//! file          VARCHAR  the file's URL
//! line          BIGINT   the line the record starts on (CSV, JSON; NULL for Parquet)
//! record_number BIGINT   the record's number in the file, from 1
//! error         VARCHAR  what is wrong, naming the column
//! record        VARCHAR  the record's text (CSV, JSON) or its values as JSON (Parquet)
//! ```
//!
//! A dead-letter table is a [`SideSink`], like a late-row table: an epoch's
//! bad records are staged with the epoch's output and published after its
//! commit. Reading an offset again finds the same bad records, so a replayed
//! epoch stages the same rows and each bad record appears exactly once.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::RecordBatch;
use weir_sql::Job;
use weir_storage::StoreOptions;

use crate::sink::SideSink;
use crate::source::bad::{BadRecord, OnError, dead_letter_rows, dead_letter_schema};
use crate::{Error, Result};

/// What a dead-letter sink's files are named after: the checkpoint's query
/// and this suffix (a query's own sinks are `-p<N>`, late-row sinks
/// `-p<N>-late`).
const WRITER_SUFFIX: &str = "-bad";

/// The writer id of a query's dead-letter sinks.
pub fn writer(query_id: &str) -> String {
    format!("{}{WRITER_SUFFIX}", &query_id[..8])
}

/// Whether a sink record's writer is a dead-letter sink's.
pub fn is_dead_letter_writer(writer: &str) -> bool {
    writer.ends_with(WRITER_SUFFIX)
}

/// Each of `sources` with a dead-letter table, and the table, checked: a
/// declared table, not a source of the job, none of `written` (the tables
/// the job writes otherwise: query sinks, late-row tables), and declared
/// without columns or with the dead-letter columns. Checked before the
/// checkpoint is touched, so a wrong option changes nothing.
pub fn routes(
    job: &Job,
    sources: &BTreeSet<String>,
    written: &BTreeSet<String>,
) -> Result<BTreeMap<String, String>> {
    let mut routes = BTreeMap::new();
    for source in sources {
        let Some(decl) = job.tables.get(source) else {
            continue;
        };
        let Some(table) = OnError::from_decl(decl)?.dead_letter().map(str::to_string) else {
            continue;
        };
        let refuse = |why: &str| {
            Err(Error::Config(format!(
                "table '{source}': 'dead_letter' = '{table}': {why}"
            )))
        };
        let Some(target) = job.tables.get(&table) else {
            let mut known: Vec<&str> = job.tables.keys().map(String::as_str).collect();
            known.sort_unstable();
            return refuse(&format!(
                "no such table is declared (declared: {})",
                known.join(", ")
            ));
        };
        if sources.contains(&table) {
            return refuse("that table is a source of this job; bad records need a sink table of their own");
        }
        if written.contains(&table) {
            return refuse(
                "that table already receives a query's rows or late rows; bad records need a sink table of their own",
            );
        }
        if let Some(declared) = &target.schema {
            let expected = dead_letter_schema();
            let names = |s: &datafusion::arrow::datatypes::Schema| -> Vec<String> {
                s.fields().iter().map(|f| f.name().to_ascii_lowercase()).collect()
            };
            if names(declared) != names(&expected) {
                return refuse(&format!(
                    "a dead-letter table has the columns ({}); declare it without columns",
                    names(&expected).join(", ")
                ));
            }
        }
        routes.insert(source.clone(), table);
    }
    Ok(routes)
}

/// The dead-letter tables of a job's sources.
#[derive(Debug, Default)]
pub struct DeadLetters {
    /// Each source with a dead-letter table, and the table.
    routes: BTreeMap<String, String>,
    /// One sink per table (sources may share one).
    sinks: Vec<SideSink>,
}

impl DeadLetters {
    /// Opens the dead-letter tables of `routes` (from [`routes`]), writing
    /// as `writer`.
    pub fn open(
        job: &Job,
        routes: BTreeMap<String, String>,
        writer: &str,
        store_options: &StoreOptions,
    ) -> Result<Self> {
        let mut sinks: Vec<SideSink> = Vec::new();
        for table in routes.values() {
            if sinks.iter().any(|s| s.table() == table) {
                continue;
            }
            let decl = job
                .tables
                .get(table)
                .ok_or_else(|| Error::Config(format!("dead-letter table '{table}' is not declared")))?;
            sinks.push(SideSink::open(decl, writer, store_options, dead_letter_schema())?);
        }
        Ok(Self { routes, sinks })
    }

    /// Each source with a dead-letter table, and the table.
    pub fn routes(&self) -> &BTreeMap<String, String> {
        &self.routes
    }

    /// The dead-letter sinks.
    pub fn sinks(&self) -> &[SideSink] {
        &self.sinks
    }

    /// Stages an epoch's bad records (by source) in their tables; every
    /// table is staged, with or without rows. Sources without a dead-letter
    /// table are left out (their bad records are only counted).
    pub async fn stage(&self, epoch: u64, bad: &BTreeMap<String, Vec<BadRecord>>) -> Result<()> {
        for sink in &self.sinks {
            let mut rows: Vec<RecordBatch> = Vec::new();
            for (source, table) in &self.routes {
                if table != sink.table() {
                    continue;
                }
                if let Some(records) = bad.get(source).filter(|r| !r.is_empty()) {
                    rows.push(dead_letter_rows(source, records)?);
                }
            }
            sink.stage(epoch, &rows).await?;
        }
        Ok(())
    }
}
