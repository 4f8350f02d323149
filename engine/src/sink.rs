//! Sinks: `'connector' = 'files'` (Parquet files, published per epoch) and
//! `'connector' = 'blackhole'` (Flink's name: counts rows, keeps nothing; for
//! benchmarks that measure a query without its output).
//!
//! The contract (what exactly-once rests on): `stage(N, rows)` may be called
//! any number of times for an epoch and leaves the same staged output (the
//! rows of an epoch are deterministic); `publish(N)` makes epoch N's output
//! visible and is only called once `commits/N` exists. See
//! [`weir_storage::sink`] for the files sink's layout. The blackhole keeps
//! the contract trivially: nothing is staged, so nothing can be duplicated.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use weir_sql::TableDecl;
use weir_storage::location::Create;
use weir_storage::{Location, SinkLayout, StoreOptions, codec};

use crate::source::{check_options, table_store_options};
use crate::{Error, Result};

const OPTIONS: &[&str] = &["connector", "path", "format"];

/// A job's sink.
#[derive(Debug)]
pub enum Sink {
    /// Parquet files.
    Files(FileSink),
    /// Rows counted and dropped.
    Blackhole(BlackholeSink),
}

impl Sink {
    /// Opens the sink a table declares, writing as `writer`.
    pub fn open(decl: &TableDecl, writer: &str, store_options: &StoreOptions) -> Result<Self> {
        match decl.connector()? {
            "blackhole" => Ok(Sink::Blackhole(BlackholeSink::open(decl)?)),
            _ => Ok(Sink::Files(FileSink::open(decl, writer, store_options)?)),
        }
    }

    /// The sink's table name.
    pub fn table(&self) -> &str {
        match self {
            Sink::Files(s) => s.table(),
            Sink::Blackhole(s) => &s.table,
        }
    }

    /// Stages an epoch's rows; returns rows and bytes written.
    pub async fn stage(&self, epoch: u64, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(u64, u64)> {
        match self {
            Sink::Files(s) => s.stage(epoch, schema, batches).await,
            Sink::Blackhole(s) => Ok(s.stage(batches)),
        }
    }

    /// Publishes a committed epoch's output; returns the files published.
    pub async fn publish(&self, epoch: u64) -> Result<u64> {
        match self {
            Sink::Files(s) => s.publish(epoch).await,
            Sink::Blackhole(_) => Ok(0),
        }
    }
}

/// `'connector' = 'blackhole'`: accepts rows, counts them, writes nothing.
#[derive(Debug)]
pub struct BlackholeSink {
    table: String,
    /// Rows staged, over all epochs (replays count again).
    rows: AtomicU64,
}

impl BlackholeSink {
    /// Opens the sink a table declares.
    pub fn open(decl: &TableDecl) -> Result<Self> {
        check_options(decl, &["connector"])?;
        Ok(Self {
            table: decl.name.clone(),
            rows: AtomicU64::new(0),
        })
    }

    /// Counts an epoch's rows; returns them and 0 bytes.
    pub fn stage(&self, batches: &[RecordBatch]) -> (u64, u64) {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        self.rows.fetch_add(rows, Ordering::Relaxed);
        (rows, 0)
    }

    /// Rows staged so far by this process.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

/// A Parquet file sink.
#[derive(Debug)]
pub struct FileSink {
    table: String,
    layout: SinkLayout,
}

impl FileSink {
    /// Opens the sink a table declares, writing as `writer`.
    pub fn open(decl: &TableDecl, writer: &str, store_options: &StoreOptions) -> Result<Self> {
        match decl.connector()? {
            "files" => {}
            other => {
                return Err(Error::Config(format!(
                    "sink table '{}': unknown connector '{other}' (supported: files, blackhole)",
                    decl.name
                )));
            }
        }
        check_options(decl, OPTIONS)?;
        match decl.require("format")?.to_ascii_lowercase().as_str() {
            "parquet" => {}
            other => {
                return Err(Error::Config(format!(
                    "sink table '{}': format '{other}' is not supported for sinks; use 'parquet'",
                    decl.name
                )));
            }
        }
        let loc = Location::open(
            decl.require("path")?,
            &table_store_options(decl, store_options),
            Create::Yes,
        )
        .map_err(|e| Error::Config(format!("sink table '{}': {e}", decl.name)))?;
        Ok(Self {
            table: decl.name.clone(),
            layout: SinkLayout::new(loc, writer),
        })
    }

    /// The sink's table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The sink folder.
    pub fn location(&self) -> &Location {
        self.layout.location()
    }

    /// Stages an epoch's rows; returns rows and bytes written.
    pub async fn stage(&self, epoch: u64, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(u64, u64)> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            self.layout.stage(epoch, None).await?;
            return Ok((0, 0));
        }
        let url = self.layout.location().url_of(&self.layout.final_name(epoch));
        let meta = BTreeMap::from([("weir.epoch".to_string(), epoch.to_string())]);
        let bytes = codec::encode(&url, schema, batches, &meta)?;
        let len = bytes.len() as u64;
        self.layout.stage(epoch, Some((bytes, rows as u64))).await?;
        Ok((rows as u64, len))
    }

    /// Publishes a committed epoch's output.
    pub async fn publish(&self, epoch: u64) -> Result<u64> {
        Ok(self.layout.publish(epoch).await?)
    }
}
