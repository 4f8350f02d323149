//! A query's checkpoint: metadata, the offsets and commit logs, and operator
//! state files (layout in the crate docs).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::log::{CommitLog, OffsetLog};
use crate::{Error, FORMAT_VERSION, Location, Result};

/// `metadata.json`: who the checkpoint belongs to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Metadata {
    /// Format version of the checkpoint.
    pub version: u32,
    /// A random id chosen when the checkpoint was created; names sink files.
    pub query_id: String,
    /// The job's statements, with secrets redacted.
    pub sql: String,
    /// A hash of the normalized (redacted) statements; a checkpoint is only
    /// resumed by the query that made it.
    pub fingerprint: String,
    /// When the checkpoint was created (RFC 3339).
    pub created_at: String,
    /// The Weir version that created it.
    pub weir_version: String,
    /// The stateful operators whose state the checkpoint holds.
    #[serde(default)]
    pub operators: Vec<OperatorRecord>,
    /// The sources whose progress it holds.
    #[serde(default)]
    pub sources: Vec<SourceRecord>,
    /// Where the job writes, so tools (rollback) can find its output.
    #[serde(default)]
    pub sinks: Vec<SinkRecord>,
    /// State tables dropped by `--fresh-state` (a changed query), and the
    /// last commit then. That commit names their files, which are gone: as
    /// of it, and of any commit before it, they restore as empty. The
    /// next commit names only what the changed query wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_state: Option<DroppedState>,
}

/// See [`Metadata::dropped_state`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DroppedState {
    /// The last commit when they were dropped.
    pub as_of: u64,
    /// The tables (operator ids and `source-<name>`).
    pub tables: Vec<String>,
}

impl Metadata {
    /// The state files that commit `epoch` names, less the tables dropped
    /// since (see [`Metadata::dropped_state`]). `None` when the commit
    /// names none (written before commits named their files).
    pub fn state_listing(
        &self,
        epoch: u64,
        commit: &crate::CommitEntry,
    ) -> Option<std::collections::BTreeMap<String, crate::StateChains>> {
        let mut listed = commit.state.clone()?;
        if let Some(d) = &self.dropped_state
            && epoch <= d.as_of
        {
            listed.retain(|table, _| !d.tables.contains(table));
        }
        Some(listed)
    }
}

/// A stateful operator, as a checkpoint knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperatorRecord {
    /// Its id (the state folder's name).
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// What its state holds and means; a different signature means the
    /// stored state cannot be read by the operator.
    pub signature: String,
    /// Key columns of its state, for messages.
    pub keys: Vec<String>,
    /// Value columns of its state, for messages.
    pub values: Vec<String>,
    /// What removes its state's rows (for `weir checkpoint inspect`;
    /// empty in checkpoints of a Weir before it was recorded).
    #[serde(default)]
    pub evicted_by: String,
}

/// A source, as a checkpoint knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceRecord {
    /// The table.
    pub name: String,
    /// What its progress refers to (connector, location, format).
    pub signature: String,
}

/// A sink, as a checkpoint knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SinkRecord {
    /// The table.
    pub table: String,
    /// Its `'path'` as the job gives it (what a changed query is compared
    /// on, so that moving a job's folder is not a change).
    #[serde(default)]
    pub path: String,
    /// Its folder's URL as last resolved (what tools such as rollback use).
    pub url: String,
    /// The writer id in its file names.
    pub writer: String,
}

/// The checkpoint folder of one job.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    loc: Location,
    /// `offsets/`: the write-ahead log, written before an epoch reads data.
    pub offsets: OffsetLog,
    /// `commits/`: an entry means the epoch is complete.
    pub commits: CommitLog,
}

const METADATA: &str = "metadata.json";

/// Whether a local folder holds a checkpoint (without opening a store: for
/// quick questions, such as whether a table has a query writing it).
pub fn is_local_checkpoint(dir: &std::path::Path) -> bool {
    dir.join(METADATA).is_file()
}

impl Checkpoint {
    /// The checkpoint at `loc` (which may be empty).
    pub fn new(loc: Location) -> Self {
        Self {
            offsets: OffsetLog::new(&loc, "offsets"),
            commits: CommitLog::new(&loc, "commits"),
            loc,
        }
    }

    /// The checkpoint's location.
    pub fn location(&self) -> &Location {
        &self.loc
    }

    /// Reads `metadata.json`; `None` for a new checkpoint.
    pub async fn read_metadata(&self) -> Result<Option<Metadata>> {
        let url = self.loc.url_of(METADATA);
        let Some(bytes) = self.loc.get(METADATA).await? else {
            return Ok(None);
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            url: url.clone(),
            epoch: None,
            reason: format!("not valid JSON ({e})"),
        })?;
        if let Some(v) = value.get("version").and_then(|v| v.as_u64())
            && v > u64::from(FORMAT_VERSION)
        {
            return Err(Error::FutureVersion {
                url,
                epoch: None,
                found: v as u32,
                supported: FORMAT_VERSION,
            });
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                url,
                epoch: None,
                reason: e.to_string(),
            })
    }

    /// Creates `metadata.json`; fails if another process created it first.
    pub async fn create_metadata(&self, meta: &Metadata) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| Error::Corrupt {
            url: self.loc.url_of(METADATA),
            epoch: None,
            reason: e.to_string(),
        })?;
        self.loc.put_if_absent(METADATA, Bytes::from(bytes)).await
    }

    /// Replaces `metadata.json` (an operator's explicit choice, e.g. starting
    /// a changed query afresh).
    pub async fn replace_metadata(&self, meta: &Metadata) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| Error::Corrupt {
            url: self.loc.url_of(METADATA),
            epoch: None,
            reason: e.to_string(),
        })?;
        self.loc.put(METADATA, Bytes::from(bytes)).await
    }

    /// Deletes every operator's state file for `epoch` (an abandoned,
    /// uncommitted epoch).
    pub async fn delete_epoch_state(&self, epoch: u64) -> Result<()> {
        for op in self.state_operators().await? {
            self.delete_state(&op, epoch).await?;
        }
        Ok(())
    }

    /// Finds state files that the epoch protocol cannot have left: any of an
    /// epoch after the last commit, except the one uncommitted epoch whose
    /// offsets are logged (`pending`; a crash before its commit leaves its
    /// state, which its replay rewrites). Such a file is reported, never
    /// skipped: it means the folder was changed by hand or by another tool.
    pub async fn check_orphan_state(&self, committed: Option<u64>, pending: Option<u64>) -> Result<()> {
        let last = committed.unwrap_or(0);
        for op in self.state_operators().await? {
            for f in self.state_files(&op).await? {
                if f.epoch > last && Some(f.epoch) != pending {
                    return Err(Error::Corrupt {
                        url: self.loc.url_of(&f.name),
                        epoch: Some(f.epoch),
                        reason: format!(
                            "an orphan state file: the last commit is {}, and epoch {} was never started \
                             (it has no offsets entry). Delete it, or roll back with `weir checkpoint rollback`",
                            committed.map_or("none".to_string(), |c| format!("epoch {c}")),
                            f.epoch
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The operators that have state files.
    pub async fn state_operators(&self) -> Result<Vec<String>> {
        let mut ops: Vec<String> = self
            .loc
            .list("state")
            .await?
            .iter()
            .filter_map(|m| {
                let rel = self.loc.relative(&m.location);
                let mut parts = rel.split('/');
                parts.next(); // "state"
                parts.next().map(str::to_string)
            })
            .collect();
        ops.dedup();
        Ok(ops)
    }
}
