//! Bounded tables: the table side of lookup joins (`JOIN t FOR SYSTEM_TIME
//! AS OF o.proc_time`, or a `files` table declared `'bounded' = 'true'`).
//!
//! A bounded table is read whole, not as a stream. Each epoch joins with
//! the table's *current version*: when an epoch is planned, the table's
//! folder is listed, and a listing that differs from the last one (a file
//! added, removed, resized or rewritten) makes a new version. Its rows are
//! read and written into the checkpoint as a snapshot before the epoch's
//! offsets entry names it:
//!
//! ```text
//! lookups/<table>/<version>.parquet   the table's rows at that version
//!                                     (all declared columns)
//! offsets/N.json  "lookups": { "<table>": "<version>" }
//! ```
//!
//! A replayed epoch loads the version its entry names from the snapshot,
//! whatever the folder holds by then, so it joins exactly as it did before
//! the crash. The version is a hash of the listing (paths, sizes and
//! modification times), so planning again after a restart finds the same
//! version for an unchanged folder and writes nothing new.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use object_store::path::Path;
use sha2::{Digest, Sha256};
use weir_sql::TableDecl;
use weir_storage::location::Create;
use weir_storage::{Checkpoint, Location, StoreOptions};

use crate::source::bad::OnError;
use crate::source::files::{format_of, list_visible};
use crate::source::formats::{Columns, FileRef, Format, read_range};
use crate::source::{check_options, table_store_options};
use crate::{Error, Result};

/// Options a bounded `files` table knows.
/// The options a bounded (lookup) table takes.
pub const OPTIONS: &[&str] = &[
    "connector",
    "path",
    "format",
    "csv.delimiter",
    "bounded",
    "on_error",
];

/// One bounded table, and the version of it last planned or loaded.
pub(super) struct LookupTable {
    name: String,
    loc: Location,
    format: Format,
    schema: SchemaRef,
    on_error: OnError,
    current: Option<(String, Arc<Vec<RecordBatch>>)>,
}

impl LookupTable {
    /// The bounded table `decl` declares.
    pub(super) fn open(decl: &TableDecl, store_options: &StoreOptions) -> Result<Self> {
        if decl.connector()? != "files" {
            return Err(Error::Config(format!(
                "table '{}' is bounded (a lookup join's table), which only the 'files' connector can be",
                decl.name
            )));
        }
        check_options(decl, OPTIONS)?;
        crate::options::refuse_metadata(decl)?;
        let schema = decl.schema.clone().ok_or_else(|| {
            Error::Config(format!("bounded table '{}' must declare its columns", decl.name))
        })?;
        let on_error = OnError::from_decl(decl)?;
        if matches!(on_error, OnError::DeadLetter(_)) {
            return Err(Error::Config(format!(
                "bounded table '{}': 'on_error' = 'dead_letter' is for streams; a bounded table takes 'fail' or 'skip'",
                decl.name
            )));
        }
        let path = decl.require("path")?;
        let loc = Location::open(path, &table_store_options(decl, store_options), Create::No)
            .map_err(|e| Error::Config(format!("bounded table '{}': {e}", decl.name)))?;
        Ok(Self {
            name: decl.name.clone(),
            loc,
            format: format_of(decl)?,
            schema,
            on_error,
            current: None,
        })
    }

    fn snapshot_name(&self, version: &str) -> String {
        format!("lookups/{}/{version}.parquet", self.name)
    }

    /// The table's current version, read and snapshotted into the
    /// checkpoint if it is new; a warning when bad records were skipped.
    pub(super) async fn plan(&mut self, checkpoint: &Checkpoint) -> Result<(String, Option<String>)> {
        let mut files = list_visible(&self.loc).await?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut h = Sha256::new();
        for f in &files {
            h.update(f.path.as_bytes());
            h.update(b"\0");
            h.update(f.size.to_le_bytes());
            h.update(f.modified_ms.to_le_bytes());
        }
        let version: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        if self.current.as_ref().is_some_and(|(v, _)| *v == version) {
            return Ok((version, None));
        }
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let columns = Columns {
            declared: &self.schema,
            needed: &all,
            max_of: None,
        };
        let mut rows = Vec::new();
        let mut skipped = 0usize;
        for f in &files {
            let path: Path = self.loc.path(&f.path);
            let url = self.loc.url_of(&f.path);
            let file = FileRef {
                store: self.loc.store(),
                path: &path,
                size: f.size,
                url: &url,
                table: &self.name,
            };
            let (read, _) = read_range(
                &file,
                self.format,
                &columns,
                &self.on_error,
                0,
                usize::MAX,
                None,
                1,
                crate::source::BATCH_ROWS,
            )
            .await?;
            skipped += read.bad.len();
            rows.extend(read.batches.into_iter().filter(|b| b.num_rows() > 0));
        }
        let name = self.snapshot_name(&version);
        let url = checkpoint.location().url_of(&name);
        let bytes = weir_storage::codec::encode(&url, &self.schema, &rows, &BTreeMap::new())?;
        checkpoint.location().put(&name, bytes).await?;
        self.current = Some((version.clone(), Arc::new(rows)));
        let warning = (skipped > 0).then(|| {
            format!(
                "bounded table '{}': {skipped} bad records skipped in version {version} ('on_error' = 'skip')",
                self.name
            )
        });
        Ok((version, warning))
    }

    /// The rows of `version`: the current one, or its snapshot (a replayed
    /// epoch's).
    pub(super) async fn load(
        &mut self,
        version: &str,
        checkpoint: &Checkpoint,
    ) -> Result<Arc<Vec<RecordBatch>>> {
        if let Some((v, rows)) = &self.current
            && v == version
        {
            return Ok(Arc::clone(rows));
        }
        let name = self.snapshot_name(version);
        let url = checkpoint.location().url_of(&name);
        let bytes = checkpoint.location().get(&name).await?.ok_or_else(|| {
            Error::Checkpoint(format!(
                "{url} is missing: an epoch joins with that version of bounded table '{}', whose snapshot the \
                 checkpoint should hold",
                self.name
            ))
        })?;
        let decoded = weir_storage::codec::decode(&url, None, bytes)?;
        if decoded.schema.fields() != self.schema.fields() {
            return Err(Error::Checkpoint(format!(
                "{url} holds other columns than bounded table '{}' declares now",
                self.name
            )));
        }
        let rows = Arc::new(decoded.batches);
        self.current = Some((version.to_string(), Arc::clone(&rows)));
        Ok(rows)
    }
}
