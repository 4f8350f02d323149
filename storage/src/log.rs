//! The epoch logs: one small JSON file per epoch, created once, and the
//! entries they hold.
//!
//! One type serves the write-ahead offsets log and the commit log (as Spark's
//! `HDFSMetadataLog` serves both `OffsetSeqLog` and `CommitLog`), typed by
//! its entry: [`OffsetLog`] holds [`OffsetsEntry`]s, [`CommitLog`] holds
//! [`CommitEntry`]s. Each entry is `<dir>/<epoch:020>.json`; the zero
//! padding makes a listing come back in epoch order. Entries are created
//! with `PutMode::Create`, so an entry, once written, is never silently
//! replaced: a second writer gets [`Error::AlreadyExists`].
//!
//! On disk an entry is its JSON object with two more fields:
//! `{"version": 1, "epoch": 7, ...body}`.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{Error, FORMAT_VERSION, Location, Result};

/// `offsets/N.json`, the write-ahead log: what epoch N reads, written
/// before it reads anything, so that a replay after a crash reads exactly
/// the same.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OffsetsEntry {
    /// Per source, the offset of what this epoch reads (in the source's own
    /// form: see each source's docs).
    pub sources: BTreeMap<String, Value>,
    /// Per watermarked source, its watermark before this epoch (ms).
    pub watermarks_in: BTreeMap<String, i64>,
    /// The drain epoch: no input; every watermark moves to the end of time.
    pub drain: bool,
    /// Processing time when the epoch was planned (ms since the Unix epoch):
    /// what processing-time features (state TTL) use, so a replay agrees.
    #[serde(default)]
    pub processing_time_ms: i64,
    /// Sources idle this epoch (`'watermark.idle_timeout'`): they do not
    /// hold back the watermark of queries that read other sources too.
    #[serde(default)]
    pub idle: BTreeSet<String>,
    /// Per bounded table (lookup join), the version this epoch joins with:
    /// the name of its snapshot, `lookups/<table>/<version>.parquet` in the
    /// checkpoint, written before this entry. A replay joins the same one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lookups: BTreeMap<String, String>,
}

/// `commits/N.json`: epoch N is complete, with its statistics.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommitEntry {
    /// Per watermarked source, its watermark after this epoch (ms).
    pub watermarks: BTreeMap<String, i64>,
    /// Rows read from sources.
    pub rows_in: u64,
    /// Rows written to sinks.
    pub rows_out: u64,
    /// Late rows dropped.
    pub late_rows: u64,
    /// Bad input records set aside this epoch.
    #[serde(default)]
    pub bad_rows: u64,
    /// When the commit was made (RFC 3339).
    pub committed_at: String,
    /// Per source, the processing time of its last epoch with rows (for
    /// idleness).
    #[serde(default)]
    pub last_data_ms: BTreeMap<String, i64>,
    /// Per pipeline, the highest watermark its operators were run to
    /// (before their own lag): never lower than the commit before's, though
    /// the pipeline's own watermark (the least of its active sources') can
    /// fall back when an idle source wakes. Operators restore from it.
    #[serde(default)]
    pub pipeline_watermarks: BTreeMap<usize, i64>,
    /// Per operator (and source) with state, the state files that restore
    /// it as of this epoch, shard by shard. A restore reads exactly these
    /// names, never a listing of the state folder. `None` in commits of a
    /// Weir before the files were named here: their state is found by
    /// listing `state/<operator>/` (one file per epoch then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BTreeMap<String, crate::state::StateChains>>,
}

/// The write-ahead offsets log.
pub type OffsetLog = EpochLog<OffsetsEntry>;
/// The commit log.
pub type CommitLog = EpochLog<CommitEntry>;

/// A log of per-epoch JSON entries of type `T` under one folder.
#[derive(Debug)]
pub struct EpochLog<T> {
    loc: Location,
    dir: &'static str,
    entry: PhantomData<fn() -> T>,
}

impl<T> Clone for EpochLog<T> {
    fn clone(&self) -> Self {
        Self {
            loc: self.loc.clone(),
            dir: self.dir,
            entry: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> EpochLog<T> {
    /// The log in `<loc>/<dir>/`.
    pub fn new(loc: &Location, dir: &'static str) -> Self {
        Self {
            loc: loc.clone(),
            dir,
            entry: PhantomData,
        }
    }

    /// The entry's name relative to the checkpoint.
    pub fn name(&self, epoch: u64) -> String {
        format!("{}/{epoch:020}.json", self.dir)
    }

    /// The entry's URL, for messages.
    pub fn url(&self, epoch: u64) -> String {
        self.loc.url_of(&self.name(epoch))
    }

    /// Creates the entry for `epoch`; fails if it exists. Returns the
    /// bytes written.
    pub async fn create(&self, epoch: u64, body: &T) -> Result<u64> {
        let bytes = self.encode(epoch, body)?;
        let n = bytes.len() as u64;
        self.loc.put_if_absent(&self.name(epoch), bytes).await?;
        Ok(n)
    }

    /// Writes the entry for `epoch`, replacing an existing one. Only for
    /// operator tools (rollback), never on the epoch path.
    pub async fn overwrite(&self, epoch: u64, body: &T) -> Result<()> {
        let bytes = self.encode(epoch, body)?;
        self.loc.put(&self.name(epoch), bytes).await
    }

    fn encode(&self, epoch: u64, body: &T) -> Result<Bytes> {
        let corrupt = |reason: String| Error::Corrupt {
            url: self.url(epoch),
            epoch: Some(epoch),
            reason,
        };
        let mut value = serde_json::to_value(body).map_err(|e| corrupt(e.to_string()))?;
        let Value::Object(map) = &mut value else {
            return Err(corrupt("a log entry must be a JSON object".into()));
        };
        map.insert("version".into(), FORMAT_VERSION.into());
        map.insert("epoch".into(), epoch.into());
        let text = serde_json::to_vec_pretty(&value).map_err(|e| corrupt(e.to_string()))?;
        Ok(Bytes::from(text))
    }

    /// Reads the entry for `epoch`, or `None` if there is none. A file that is
    /// there but unreadable (truncated, wrong epoch, newer format) is an error
    /// naming the file and epoch.
    pub async fn read(&self, epoch: u64) -> Result<Option<T>> {
        let Some(bytes) = self.loc.get(&self.name(epoch)).await? else {
            return Ok(None);
        };
        self.decode(epoch, &bytes).map(Some)
    }

    fn decode(&self, epoch: u64, bytes: &[u8]) -> Result<T> {
        let url = self.url(epoch);
        let corrupt = |reason: String| Error::Corrupt {
            url: url.clone(),
            epoch: Some(epoch),
            reason,
        };
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("not valid JSON ({e}); the file may be truncated")))?;
        let version = value
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt("no format version".into()))?;
        if version > u64::from(FORMAT_VERSION) {
            return Err(Error::FutureVersion {
                url,
                epoch: Some(epoch),
                found: version as u32,
                supported: FORMAT_VERSION,
            });
        }
        let found = value.get("epoch").and_then(Value::as_u64);
        if found != Some(epoch) {
            return Err(corrupt(match found {
                Some(n) => format!("the entry says epoch {n}"),
                None => "the entry names no epoch".to_string(),
            }));
        }
        serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
    }

    /// Every epoch with an entry, ascending. Files whose names are not
    /// `<digits>.json` are reported, not skipped: nothing else belongs here.
    pub async fn epochs(&self) -> Result<Vec<u64>> {
        let mut epochs = Vec::new();
        for meta in self.loc.list(self.dir).await? {
            let name = self.loc.relative(&meta.location);
            let file = name.rsplit('/').next().unwrap_or(&name);
            match file.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()) {
                Some(e) => epochs.push(e),
                None => {
                    return Err(Error::Corrupt {
                        url: self.loc.url_of(&name),
                        epoch: None,
                        reason: format!(
                            "unexpected file in the {} log (Weir names its entries <epoch>.json, 20 digits; \
                             move this file out of the checkpoint if it is not one)",
                            self.dir
                        ),
                    });
                }
            }
        }
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// The newest epoch with an entry.
    pub async fn latest(&self) -> Result<Option<u64>> {
        Ok(self.epochs().await?.last().copied())
    }

    /// Deletes the entry for `epoch` (retention and rollback).
    pub async fn delete(&self, epoch: u64) -> Result<()> {
        self.loc.delete(&self.name(epoch)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::location::Create;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Entry {
        rows: u64,
    }

    fn log(name: &str) -> (Location, EpochLog<Entry>) {
        let loc = Location::open(&format!("memory://{name}"), &StoreOptions::default(), Create::Yes).unwrap();
        let log = EpochLog::new(&loc, "commits");
        (loc, log)
    }

    #[tokio::test]
    async fn entries_round_trip_and_are_created_once() {
        let (_, log) = log("log-roundtrip");
        log.create(3, &Entry { rows: 5 }).await.unwrap();
        log.create(10, &Entry { rows: 6 }).await.unwrap();
        assert!(log.create(3, &Entry { rows: 9 }).await.is_err());
        assert_eq!(log.read(3).await.unwrap(), Some(Entry { rows: 5 }));
        assert_eq!(log.read(4).await.unwrap(), None);
        assert_eq!(log.epochs().await.unwrap(), vec![3, 10]);
        assert_eq!(log.latest().await.unwrap(), Some(10));
    }

    #[tokio::test]
    async fn damaged_entries_name_the_file_and_epoch() {
        let (loc, log) = log("log-damaged");
        loc.put(
            "commits/00000000000000000001.json",
            Bytes::from_static(b"{\"vers"),
        )
        .await
        .unwrap();
        let err = log.read(1).await.unwrap_err().to_string();
        assert!(
            err.contains("00000000000000000001.json") && err.contains("epoch 1"),
            "{err}"
        );

        loc.put(
            "commits/00000000000000000002.json",
            Bytes::from_static(b"{\"version\": 99, \"epoch\": 2, \"rows\": 1}"),
        )
        .await
        .unwrap();
        let err = log.read(2).await.unwrap_err().to_string();
        assert!(err.contains("format version 99"), "{err}");

        // An entry copied to another epoch's name says the epoch it holds.
        loc.put(
            "commits/00000000000000000003.json",
            Bytes::from_static(b"{\"version\": 1, \"epoch\": 10}"),
        )
        .await
        .unwrap();
        let err = log.read(3).await.unwrap_err().to_string();
        assert!(err.ends_with("(epoch 3): the entry says epoch 10"), "{err}");

        loc.put("commits/junk.txt", Bytes::from_static(b"x"))
            .await
            .unwrap();
        let err = log.epochs().await.unwrap_err().to_string();
        assert!(err.contains("junk.txt"), "{err}");
    }
}
