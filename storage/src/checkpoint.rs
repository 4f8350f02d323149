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
    /// Per state table (operator id, `source-<name>`), how many times
    /// `--fresh-state` has dropped its state (absent: never). A commit's
    /// list of a table's files ([`crate::StateChains::generation`]) counts
    /// only if written in the table's current generation: an older list
    /// names files that were deleted, whichever epoch it is of and whatever
    /// rollbacks came since.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub state_generations: std::collections::BTreeMap<String, u64>,
}

impl Metadata {
    /// A state table's generation (see [`Metadata::state_generations`]).
    pub fn state_generation(&self, table: &str) -> u64 {
        self.state_generations.get(table).copied().unwrap_or(0)
    }

    /// The state files a commit names, less those of an earlier
    /// generation of their table (dropped since). `None` when the commit
    /// names none (written before commits named their files).
    pub fn state_listing(
        &self,
        commit: &crate::CommitEntry,
    ) -> Option<std::collections::BTreeMap<String, crate::StateChains>> {
        let mut listed = commit.state.clone()?;
        listed.retain(|table, chains| chains.generation == self.state_generation(table));
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
    /// The columns the query writes there, `name type` each, in order
    /// (empty for a late-row or dead-letter table, and in checkpoints of
    /// an earlier Weir): a changed query may not change a column's type,
    /// since the folder's files would then not read as one table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// A hash of the `INSERT` statement that writes it (empty for a
    /// late-row or dead-letter table, and in checkpoints of an earlier
    /// Weir): when several INSERTs write one table, what tells a changed
    /// query that they swapped places (each would take up the other's
    /// state; see `compat::incompatibilities`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub statement: String,
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
        self.loc.put_if_absent(METADATA, Bytes::from(bytes)).await?;
        // On the disk before any epoch: an empty `metadata.json` after a
        // power cut would refuse every later run.
        self.loc.sync().await
    }

    /// Replaces `metadata.json` (an operator's explicit choice, e.g. starting
    /// a changed query afresh).
    pub async fn replace_metadata(&self, meta: &Metadata) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| Error::Corrupt {
            url: self.loc.url_of(METADATA),
            epoch: None,
            reason: e.to_string(),
        })?;
        self.loc.put(METADATA, Bytes::from(bytes)).await?;
        self.loc.sync().await
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
    /// A file named after an attempt (a cluster task's) is not one: a task
    /// of an abandoned epoch may finish after the driver cleared the
    /// epoch's files, and such a file is read only when a commit names it.
    pub async fn check_orphan_state(&self, committed: Option<u64>, pending: Option<u64>) -> Result<()> {
        let last = committed.unwrap_or(0);
        for op in self.state_operators().await? {
            for f in self.state_files(&op).await? {
                if f.epoch > last && Some(f.epoch) != pending && f.attempt.is_none() {
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

    /// [`Self::check_orphan_state`] on a checkpoint that a running job is
    /// writing (`weir checkpoint inspect` while the lease is held): the
    /// state files are listed first, then the offsets log and the commits.
    /// A job writes an epoch's offsets entry before its state files, so a
    /// state file written since the commits were last read is seen with its
    /// entry; read the other way round, every epoch the job ran meanwhile
    /// looked orphaned.
    pub async fn check_orphan_state_running(&self) -> Result<()> {
        let mut files = Vec::new();
        for op in self.state_operators().await? {
            files.extend(self.state_files(&op).await?);
        }
        let offsets: std::collections::BTreeSet<u64> = self.offsets.epochs().await?.into_iter().collect();
        let committed = self.commits.epochs().await?.last().copied();
        for f in files {
            if f.epoch > committed.unwrap_or(0) && f.attempt.is_none() && !offsets.contains(&f.epoch) {
                return Err(Error::Corrupt {
                    url: self.loc.url_of(&f.name),
                    epoch: Some(f.epoch),
                    reason: format!(
                        "an orphan state file: the last commit is {}, and epoch {} was never started (it has no \
                         offsets entry). Stop the job, then delete it or roll back with `weir checkpoint rollback`",
                        committed.map_or("none".to_string(), |c| format!("epoch {c}")),
                        f.epoch
                    ),
                });
            }
        }
        Ok(())
    }

    /// The temporaries that kills left in the middle of writes to this
    /// (local) checkpoint: in the folders Weir writes, and beside its own
    /// top-level files; nothing else a user keeps in the folder.
    pub fn interrupted_writes(&self) -> Vec<std::path::PathBuf> {
        let mut found: Vec<std::path::PathBuf> = [
            "commits",
            "offsets",
            "state",
            "lookups",
            "lease",
            "_probe",
            "kafka-sinks",
        ]
        .iter()
        .flat_map(|dir| self.loc.child(dir).interrupted_writes(true))
        .collect();
        found.extend(self.loc.interrupted_writes(false).into_iter().filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(crate::location::temporary_of)
                .is_some_and(|base| matches!(base, "metadata.json" | "rollback.json"))
        }));
        found
    }

    /// Deletes [`Self::interrupted_writes`]; only for the holder of the
    /// lease. Returns how many it deleted.
    pub fn remove_interrupted_writes(&self) -> usize {
        remove_all(self.interrupted_writes())
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

/// Deletes the files; how many went.
pub fn remove_all(files: Vec<std::path::PathBuf>) -> usize {
    files
        .into_iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommitEntry, StateChains};
    use std::collections::BTreeMap;

    /// A state file of an epoch after the last commit is an orphan (the
    /// folder was changed by hand), unless it is named after an attempt: a
    /// cluster task of an abandoned epoch may write it after the driver
    /// cleared the epoch, and no commit names it.
    #[tokio::test]
    async fn a_late_attempts_state_file_is_not_an_orphan() {
        use crate::location::Create;
        use crate::{ShardOf, StateKind, StateWrite, StoreOptions};
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let loc = Location::open("memory://orphan-attempts", &StoreOptions::default(), Create::Yes).unwrap();
        let ck = Checkpoint::new(loc);
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let rows = [datafusion::arrow::array::RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap()];
        let write = |attempt: Option<&'static str>| {
            let (ck, schema, rows) = (&ck, &schema, &rows);
            async move {
                let w = StateWrite {
                    kind: StateKind::Snapshot,
                    shard: ShardOf::new(0, 2),
                    schema,
                    unit_key_len: 1,
                    upserts: rows,
                    deletes: &[],
                    attempt,
                };
                ck.write_state("op", 5, w).await.unwrap();
            }
        };
        write(Some("late1")).await;
        ck.check_orphan_state(Some(3), None).await.unwrap();
        write(None).await;
        let err = ck
            .check_orphan_state(Some(3), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("an orphan state file"), "{err}");
        // Read while a job runs: epoch 5 was started (its offsets entry
        // precedes its state), so its state file is in flight.
        let err = ck.check_orphan_state_running().await.unwrap_err().to_string();
        assert!(err.contains("Stop the job, then delete it"), "{err}");
        let entry: crate::OffsetsEntry =
            serde_json::from_str(r#"{"sources": {}, "watermarks_in": {}, "drain": false}"#).unwrap();
        ck.offsets.create(5, &entry).await.unwrap();
        ck.check_orphan_state_running().await.unwrap();
    }

    /// A commit's list of a table's files counts only in the table's
    /// current generation, whatever the commit's epoch: a list written
    /// before `--fresh-state` dropped the table is void, and one written
    /// after it (even at a lower epoch, after a rollback) is not.
    #[test]
    fn a_list_of_an_earlier_generation_is_void() {
        let meta = Metadata {
            version: FORMAT_VERSION,
            query_id: "q".into(),
            sql: String::new(),
            fingerprint: String::new(),
            created_at: String::new(),
            weir_version: String::new(),
            operators: vec![],
            sources: vec![],
            sinks: vec![],
            state_generations: BTreeMap::from([("agg".to_string(), 1)]),
        };
        let chains = |generation| StateChains {
            shards: vec![vec![3]],
            generation,
            attempts: BTreeMap::new(),
        };
        let commit = |agg_generation| CommitEntry {
            watermarks: BTreeMap::new(),
            rows_in: 0,
            rows_out: 0,
            late_rows: 0,
            bad_rows: 0,
            committed_at: String::new(),
            last_data_ms: BTreeMap::new(),
            pipeline_watermarks: BTreeMap::new(),
            state: Some(BTreeMap::from([
                ("agg".to_string(), chains(agg_generation)),
                ("source-s".to_string(), chains(0)),
            ])),
        };
        let before = meta.state_listing(&commit(0)).unwrap();
        assert_eq!(before.keys().collect::<Vec<_>>(), vec!["source-s"]);
        let after = meta.state_listing(&commit(1)).unwrap();
        assert_eq!(after.keys().collect::<Vec<_>>(), vec!["agg", "source-s"]);
        let old = CommitEntry {
            state: None,
            ..commit(0)
        };
        assert!(meta.state_listing(&old).is_none());
    }
}
