//! `'connector' = 'files'`: a folder (or prefix) of Parquet, CSV or JSON
//! files on any object store.
//!
//! Files are read in path order, each exactly once; files that appear later
//! are picked up by a later batch. Hidden files (a path part starting with
//! `.` or `_`) are skipped. Files are assumed immutable once they appear:
//! write them elsewhere and move them in.
//!
//! Offset of a batch (in `offsets/N.json`):
//! `{"files": [{"path": "b/2.parquet", "size": 1234, "start_row": 0}, ...], "max_rows": 1000000}`:
//! read these files in order, each from `start_row`, until `max_rows` rows.
//! Progress (state `source-<table>`): one row per file seen,
//! `path, size, rows_read, done`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_sql::TableDecl;
use weir_storage::location::Create;
use weir_storage::{Location, StoreOptions};

use super::formats::{Columns, FileRef, Format, read_range};
use super::{Source, check_options, table_store_options};
use crate::{Error, Result};

/// Options this connector knows.
const OPTIONS: &[&str] = &[
    "connector",
    "path",
    "format",
    "max_files_per_batch",
    "max_rows_per_batch",
    "csv.delimiter",
];

/// Default cap on files per batch.
pub const DEFAULT_MAX_FILES: usize = 1000;
/// Default cap on rows per batch.
pub const DEFAULT_MAX_ROWS: usize = 1_000_000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct FileRange {
    path: String,
    size: u64,
    start_row: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct FilesOffset {
    files: Vec<FileRange>,
    max_rows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileProgress {
    size: u64,
    rows_read: u64,
    done: bool,
}

/// A source over the files in a folder.
pub struct FilesSource {
    table: String,
    loc: Location,
    format: Format,
    schema: SchemaRef,
    /// The declared columns the job reads.
    columns: Vec<usize>,
    max_files: usize,
    max_rows: usize,
    progress: BTreeMap<String, FileProgress>,
    /// Files whose progress changed since the last checkpoint.
    changed: std::collections::BTreeSet<String>,
    /// The listing fixed by `freeze` (available-now).
    frozen: Option<Vec<(String, u64)>>,
    /// The bytes of the last CSV/JSON file read, which the next batch often
    /// continues.
    cache: Option<(String, Bytes)>,
}

fn parse_count(decl: &TableDecl, key: &str, default: usize) -> Result<usize> {
    match decl.options.get(key) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::Config(format!(
                "table '{}': option '{key}' must be a positive whole number, not '{v}'",
                decl.name
            ))),
        },
    }
}

impl FilesSource {
    /// Opens the source a table declares.
    pub fn open(decl: &TableDecl, store_options: &StoreOptions) -> Result<Self> {
        let known: Vec<&str> = OPTIONS.iter().chain(super::SOURCE_OPTIONS).copied().collect();
        check_options(decl, &known)?;
        let schema = decl
            .schema
            .clone()
            .ok_or_else(|| Error::Config(format!("source table '{}' must declare its columns", decl.name)))?;
        let format = match decl.require("format")?.to_ascii_lowercase().as_str() {
            "parquet" => Format::Parquet,
            "csv" => {
                let delimiter = match decl.options.get("csv.delimiter") {
                    None => b',',
                    Some(d) if d.len() == 1 => d.as_bytes()[0],
                    Some("\\t") | Some("tab") => b'\t',
                    Some(d) => {
                        return Err(Error::Config(format!(
                            "table '{}': csv.delimiter must be one character, not '{d}'",
                            decl.name
                        )));
                    }
                };
                Format::Csv { delimiter }
            }
            "json" => Format::Json,
            other => {
                return Err(Error::Config(format!(
                    "table '{}': unknown format '{other}' (supported: parquet, csv, json)",
                    decl.name
                )));
            }
        };
        let path = decl.require("path")?;
        let loc = Location::open(path, &table_store_options(decl, store_options), Create::No)
            .map_err(|e| Error::Config(format!("source table '{}': {e}", decl.name)))?;
        Ok(Self {
            table: decl.name.clone(),
            loc,
            format,
            columns: (0..schema.fields().len()).collect(),
            schema,
            max_files: parse_count(decl, "max_files_per_batch", DEFAULT_MAX_FILES)?,
            max_rows: parse_count(decl, "max_rows_per_batch", DEFAULT_MAX_ROWS)?,
            progress: BTreeMap::new(),
            changed: Default::default(),
            frozen: None,
            cache: None,
        })
    }

    /// Every visible file, in path order.
    async fn list(&self) -> Result<Vec<(String, u64)>> {
        let all = self.loc.list("").await?;
        Ok(all
            .into_iter()
            .map(|m| (self.loc.relative(&m.location), m.size))
            .filter(|(p, _)| {
                !p.split('/')
                    .any(|part| part.starts_with('.') || part.starts_with('_'))
            })
            .collect())
    }

    fn progress_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("size", DataType::UInt64, false),
            Field::new("rows_read", DataType::UInt64, false),
            Field::new("done", DataType::Boolean, false),
        ]))
    }
}

#[async_trait]
impl Source for FilesSource {
    fn name(&self) -> &str {
        &self.table
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn set_columns(&mut self, columns: Vec<usize>) {
        self.columns = columns;
    }

    async fn freeze(&mut self) -> Result<()> {
        self.frozen = Some(self.list().await?);
        Ok(())
    }

    async fn plan_batch(&mut self) -> Result<Option<Value>> {
        let listing = match &self.frozen {
            Some(l) => l.clone(),
            None => self.list().await?,
        };
        let files: Vec<FileRange> = listing
            .into_iter()
            .filter_map(|(path, size)| match self.progress.get(&path) {
                Some(p) if p.done => None,
                Some(p) => Some(FileRange {
                    path,
                    size,
                    start_row: p.rows_read,
                }),
                None => Some(FileRange {
                    path,
                    size,
                    start_row: 0,
                }),
            })
            .take(self.max_files)
            .collect();
        if files.is_empty() {
            return Ok(None);
        }
        let offset = FilesOffset {
            files,
            max_rows: self.max_rows as u64,
        };
        Ok(Some(
            serde_json::to_value(offset).map_err(|e| Error::Checkpoint(e.to_string()))?,
        ))
    }

    async fn read_batch(&mut self, offset: &Value) -> Result<Vec<RecordBatch>> {
        let offset: FilesOffset = serde_json::from_value(offset.clone()).map_err(|e| {
            Error::Checkpoint(format!(
                "source '{}': unreadable offset in the offsets log: {e}",
                self.table
            ))
        })?;
        let mut budget = offset.max_rows as usize;
        let mut out = Vec::new();
        for range in &offset.files {
            if budget == 0 {
                break;
            }
            let path = self.loc.path(&range.path);
            let url = self.loc.url_of(&range.path);
            let file = FileRef {
                store: self.loc.store(),
                path: &path,
                size: range.size,
                url: &url,
                table: &self.table,
            };
            let cached = match &self.cache {
                Some((p, b)) if p == &range.path => Some(b.clone()),
                _ => None,
            };
            let columns = Columns {
                declared: &self.schema,
                needed: &self.columns,
            };
            let (rows, bytes) = read_range(
                &file,
                self.format,
                &columns,
                range.start_row as usize,
                budget,
                cached,
            )
            .await?;
            self.cache = bytes.filter(|_| !rows.eof).map(|b| (range.path.clone(), b));
            budget -= rows.rows;
            out.extend(rows.batches);
            self.progress.insert(
                range.path.clone(),
                FileProgress {
                    size: range.size,
                    rows_read: range.start_row + rows.rows as u64,
                    done: rows.eof,
                },
            );
            self.changed.insert(range.path.clone());
        }
        Ok(out)
    }

    fn progress_schema(&self) -> SchemaRef {
        Self::progress_schema()
    }

    fn checkpoint(&mut self, full: bool) -> Result<Option<crate::exec::StateChange>> {
        if !full && self.changed.is_empty() {
            return Ok(None);
        }
        let entries: Vec<(&String, &FileProgress)> = if full {
            self.progress.iter().collect()
        } else {
            self.changed
                .iter()
                .filter_map(|p| self.progress.get_key_value(p))
                .collect()
        };
        let schema = Self::progress_schema();
        let paths: StringArray = entries.iter().map(|(p, _)| Some(p.as_str())).collect();
        let sizes: UInt64Array = entries.iter().map(|(_, p)| p.size).collect();
        let rows: UInt64Array = entries.iter().map(|(_, p)| p.rows_read).collect();
        let done: BooleanArray = entries.iter().map(|(_, p)| Some(p.done)).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(paths), Arc::new(sizes), Arc::new(rows), Arc::new(done)],
        )?;
        self.changed.clear();
        Ok(Some(crate::exec::StateChange {
            upserts: vec![batch],
            deletes: vec![],
        }))
    }

    fn restore(&mut self, batches: &[RecordBatch]) -> Result<()> {
        self.progress.clear();
        for b in batches {
            if b.num_columns() != 4 {
                return Err(Error::Checkpoint(format!(
                    "source '{}': its progress state has {} columns, expected 4",
                    self.table,
                    b.num_columns()
                )));
            }
            let paths = b.column(0).as_string::<i32>();
            let sizes = b.column(1).as_primitive::<UInt64Type>();
            let rows = b.column(2).as_primitive::<UInt64Type>();
            let done = b.column(3).as_boolean();
            for i in 0..b.num_rows() {
                if paths.is_null(i) {
                    continue;
                }
                self.progress.insert(
                    paths.value(i).to_string(),
                    FileProgress {
                        size: sizes.value(i),
                        rows_read: rows.value(i),
                        done: done.value(i),
                    },
                );
            }
        }
        self.changed.clear();
        Ok(())
    }
}
