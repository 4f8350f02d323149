//! `'connector' = 'files'` as a sink: Parquet files, published per epoch.
//!
//! The contract (what exactly-once rests on): `stage(N, rows)` may be called
//! any number of times for an epoch and leaves the same staged output (the
//! rows of an epoch are deterministic); `publish(N)` makes epoch N's output
//! visible and is only called once `commits/N` exists. See
//! [`weir_storage::sink`] for the layout.

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use weir_sql::TableDecl;
use weir_storage::location::Create;
use weir_storage::{Location, SinkLayout, StoreOptions, codec};

use crate::source::{check_options, table_store_options};
use crate::{Error, Result};

const OPTIONS: &[&str] = &["connector", "path", "format", "mode"];

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
                    "sink table '{}': unknown connector '{other}' (supported: files)",
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

    /// Deletes manifests of epochs before `epoch` (their files stay).
    pub async fn prune(&self, epoch: u64) -> Result<()> {
        Ok(self.layout.prune_manifests(epoch).await?)
    }

    /// Publishes a committed epoch's output.
    pub async fn publish(&self, epoch: u64) -> Result<u64> {
        Ok(self.layout.publish(epoch).await?)
    }
}
