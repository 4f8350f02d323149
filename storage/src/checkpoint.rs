//! A query's checkpoint: metadata, the offsets and commit logs, and operator
//! state files (layout in the crate docs).

use std::collections::BTreeMap;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Decoded};
use crate::{EpochLog, Error, FORMAT_VERSION, Location, Result};

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
}

/// The checkpoint folder of one job.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    loc: Location,
    /// `offsets/`: the write-ahead log, written before an epoch reads data.
    pub offsets: EpochLog,
    /// `commits/`: an entry means the epoch is complete.
    pub commits: EpochLog,
}

const METADATA: &str = "metadata.json";

impl Checkpoint {
    /// The checkpoint at `loc` (which may be empty).
    pub fn new(loc: Location) -> Self {
        Self {
            offsets: EpochLog::new(&loc, "offsets"),
            commits: EpochLog::new(&loc, "commits"),
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

    fn state_name(operator: &str, epoch: u64) -> String {
        format!("state/{operator}/{epoch:020}.parquet")
    }

    /// Writes an operator's state as of `epoch` (a full snapshot). Replaying
    /// an epoch rewrites the same file.
    pub async fn write_state(
        &self,
        operator: &str,
        epoch: u64,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<u64> {
        let name = Self::state_name(operator, epoch);
        let url = self.loc.url_of(&name);
        let meta = BTreeMap::from([
            ("weir.operator".to_string(), operator.to_string()),
            ("weir.epoch".to_string(), epoch.to_string()),
            ("weir.kind".to_string(), "snapshot".to_string()),
        ]);
        let bytes = codec::encode(&url, schema, batches, &meta)?;
        let len = bytes.len() as u64;
        self.loc.put(&name, bytes).await?;
        Ok(len)
    }

    /// The epochs at which `operator` has a state file.
    pub async fn state_epochs(&self, operator: &str) -> Result<Vec<u64>> {
        let dir = format!("state/{operator}");
        let mut epochs = Vec::new();
        for meta in self.loc.list(&dir).await? {
            let name = self.loc.relative(&meta.location);
            let file = name.rsplit('/').next().unwrap_or(&name);
            match file.strip_suffix(".parquet").and_then(|s| s.parse::<u64>().ok()) {
                Some(e) => epochs.push(e),
                None => {
                    return Err(Error::Corrupt {
                        url: self.loc.url_of(&name),
                        epoch: None,
                        reason: "unexpected file among state files".into(),
                    });
                }
            }
        }
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// Reads the newest state of `operator` written at or before `epoch`.
    /// Files from later (uncommitted) epochs are ignored: they are rewritten
    /// when those epochs replay.
    pub async fn read_state(&self, operator: &str, epoch: u64) -> Result<Option<(u64, Decoded)>> {
        let epochs = self.state_epochs(operator).await?;
        let Some(&found) = epochs.iter().rev().find(|&&e| e <= epoch) else {
            return Ok(None);
        };
        let name = Self::state_name(operator, found);
        let url = self.loc.url_of(&name);
        let bytes = self.loc.get_required(&name).await?;
        let decoded = codec::decode(&url, Some(found), bytes)?;
        if decoded.metadata.get("weir.operator").map(String::as_str) != Some(operator) {
            return Err(Error::Corrupt {
                url,
                epoch: Some(found),
                reason: format!("the file does not belong to operator '{operator}'"),
            });
        }
        Ok(Some((found, decoded)))
    }

    /// Deletes an operator's state file for one epoch (retention, rollback).
    pub async fn delete_state(&self, operator: &str, epoch: u64) -> Result<()> {
        self.loc.delete(&Self::state_name(operator, epoch)).await
    }

    /// Deletes every operator's state file for `epoch` (an abandoned,
    /// uncommitted epoch).
    pub async fn delete_epoch_state(&self, epoch: u64) -> Result<()> {
        for op in self.state_operators().await? {
            self.delete_state(&op, epoch).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::location::Create;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[tokio::test]
    async fn state_reads_the_newest_file_not_after_the_epoch() {
        let loc = Location::open("memory://ckpt-state", &StoreOptions::default(), Create::Yes).unwrap();
        let ck = Checkpoint::new(loc);
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        for e in [1u64, 3, 5] {
            let b = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(vec![e as i64]))],
            )
            .unwrap();
            ck.write_state("agg", e, &schema, &[b]).await.unwrap();
        }
        let (e, d) = ck.read_state("agg", 4).await.unwrap().unwrap();
        assert_eq!(e, 3);
        assert_eq!(d.batches[0].num_rows(), 1);
        assert!(ck.read_state("agg", 0).await.unwrap().is_none());
        assert_eq!(ck.state_operators().await.unwrap(), vec!["agg".to_string()]);
    }
}
