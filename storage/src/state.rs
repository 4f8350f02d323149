//! Operator state files: snapshots and deltas.
//!
//! An operator's state is a table of *units* (a window, a slice, a session,
//! a group, a source file): rows whose first `unit_key_len` columns are
//! equal belong to one unit. Each epoch that changes the state writes one
//! file for that operator, or one per shard when the operator keeps its
//! state split across threads and checkpoints each part on its own:
//!
//! ```text
//! state/<op>/<epoch:020>.snapshot.parquet          every row of the state
//! state/<op>/<epoch:020>.delta.parquet             changed units, whole (they replace the old rows),
//!                                                  and deleted units' keys (__weir_delete = true)
//! state/<op>/<epoch:020>.<kind>.<k>-of-<n>.parquet the same, for shard k of n (k from 0)
//! state/<op>/<epoch:020>.<kind>.<k>-of-<n>.<attempt>.parquet
//!                                                  the same, written by one attempt of a task that
//!                                                  may run twice (on a cluster): n may be 1
//! ```
//!
//! A shard's state at epoch C is the newest snapshot at or before C with
//! the deltas after it, up to C, applied in order; the operator's state is
//! the union of its shards'. So the bytes an epoch writes follow what
//! changed, not the size of the state. The driver writes a snapshot of
//! every shard now and then (and when the deltas since the last one
//! outgrow it, or when the number of shards changed), and
//! [`Checkpoint::prune_state`] deletes files no retained epoch needs.
//!
//! Which files make up the state as of commit C is written in `commits/C`
//! ([`StateChains`]): a restore reads those names and never lists the
//! folder, where a crashed attempt or another shard count may have left
//! other files. A file named after an attempt is part of the state only
//! when a commit names that attempt (`attempts`), so a task that ran twice,
//! or an executor that wrote late, leaves a file no restore reads. Commits written before the files were named there are
//! restored from a listing, as they were written (one file per epoch).
//!
//! Files carry key-value metadata: `weir.operator`, `weir.epoch`,
//! `weir.kind`, `weir.unit_key_len`, `weir.shard` (`k/n`) for a shard's
//! file, and `weir.crc32`, the checksum of the file's pages
//! ([`crate::codec::CHECKSUM_KEY`]), checked whenever it is read.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, interleave, not};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

use crate::checkpoint::Checkpoint;
use crate::codec::{self, Decoded};
use crate::{Error, Result};

/// A whole state or the change since the previous file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// Every row.
    Snapshot,
    /// Changed units and deleted units.
    Delta,
}

impl StateKind {
    fn suffix(self) -> &'static str {
        match self {
            StateKind::Snapshot => "snapshot",
            StateKind::Delta => "delta",
        }
    }
}

/// Which shard of how many a state file holds. `count == 1` is the one
/// file of a table checkpointed whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardOf {
    /// The shard, from 0.
    pub index: u32,
    /// How many shards the table was split into when the file was written.
    pub count: u32,
}

impl ShardOf {
    /// The one file of a table checkpointed whole.
    pub const WHOLE: ShardOf = ShardOf { index: 0, count: 1 };

    /// Shard `index` of `count`.
    pub fn new(index: usize, count: usize) -> Self {
        Self {
            index: index as u32,
            count: count as u32,
        }
    }
}

/// An operator's state files as of one commit, as `commits/N.json` names
/// them: per shard, the epochs of its snapshot and of the deltas after it,
/// in order. The file names follow from (operator, epoch, kind, shard):
/// the first epoch of a chain is a snapshot, the rest are deltas.
///
/// On disk: `{"shards": [[3, 4, 6], [3, 5]]}` (shard 1 of 2 did not change
/// in epochs 4 and 6), with `"generation": g` once `--fresh-state` has
/// dropped the table's state g times, and `"attempts": {"1/5": "k3v9"}`
/// when shard 1's file of epoch 5 is the one attempt `k3v9` wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateChains {
    /// Shard k's epochs; the number of chains is the number of shards.
    pub shards: Vec<Vec<u64>>,
    /// The table's generation when written ([`crate::Metadata::state_generations`]):
    /// a list of an earlier generation names deleted files and is ignored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// The files named after an attempt ([`attempt_key`] of shard and
    /// epoch to the attempt id); every other file has the plain name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attempts: BTreeMap<String, String>,
}

/// The key of a file in [`StateChains::attempts`]: `"<shard>/<epoch>"`.
pub fn attempt_key(shard: usize, epoch: u64) -> String {
    format!("{shard}/{epoch}")
}

/// Whether `id` may name an attempt in a state file's name: 1 to 32
/// ASCII letters and digits.
pub fn valid_attempt(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StateChains {
    /// The files, shard by shard, each chain in epoch order, with the
    /// attempt a file is named after.
    pub fn files(&self) -> impl Iterator<Item = (ShardOf, u64, StateKind, Option<&str>)> + '_ {
        let n = self.shards.len();
        self.shards.iter().enumerate().flat_map(move |(k, chain)| {
            chain.iter().enumerate().map(move |(i, &e)| {
                let kind = if i == 0 {
                    StateKind::Snapshot
                } else {
                    StateKind::Delta
                };
                let attempt = self.attempts.get(&attempt_key(k, e)).map(String::as_str);
                (ShardOf::new(k, n), e, kind, attempt)
            })
        })
    }
}

/// What to write for one operator and epoch.
pub struct StateWrite<'a> {
    /// Snapshot or delta.
    pub kind: StateKind,
    /// The shard whose rows these are ([`ShardOf::WHOLE`] for all of them).
    pub shard: ShardOf,
    /// The state's schema; its first `unit_key_len` columns key units.
    pub schema: &'a SchemaRef,
    /// How many leading columns identify a unit.
    pub unit_key_len: usize,
    /// Rows of new or changed units (whole units), or every row (snapshot).
    pub upserts: &'a [RecordBatch],
    /// Deleted units: their key columns only (deltas only).
    pub deletes: &'a [RecordBatch],
    /// The attempt the file is named after ([`valid_attempt`]), for a task
    /// that may run twice; `None`: the plain name.
    pub attempt: Option<&'a str>,
}

/// A state file encoded by [`Checkpoint::encode_state`], to be written by
/// [`Checkpoint::put_state`].
pub struct EncodedState {
    /// Its name relative to the checkpoint.
    name: String,
    payload: object_store::PutPayload,
}

impl EncodedState {
    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.payload.content_length() as u64
    }
}

/// Below this many rows in all, an epoch's small state files are encoded
/// one after another: threads would cost more than they save.
const SIDE_BY_SIDE_MIN_ROWS: usize = 16_384;

/// One state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFile {
    /// Its epoch.
    pub epoch: u64,
    /// Snapshot or delta.
    pub kind: StateKind,
    /// The shard it holds.
    pub shard: ShardOf,
    /// Its name relative to the checkpoint.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The attempt it is named after, if any.
    pub attempt: Option<String>,
}

/// An operator's state as of an epoch, rebuilt from its files.
#[derive(Debug)]
pub struct RestoredState {
    /// The rows, shard by shard; within a shard, units in the order they
    /// first appeared in its files (so a snapshot alone comes back in its
    /// own order). A unit with rows in several shards comes in one run per
    /// shard.
    pub batches: Vec<RecordBatch>,
    /// The schema of the rows.
    pub schema: SchemaRef,
    /// The snapshot it started from (the oldest, if shards differ).
    pub snapshot_epoch: u64,
    /// The deltas applied after it, over all shards.
    pub deltas: usize,
    /// The files it was rebuilt from: what the next commit lists for the
    /// operator until a checkpoint of it adds to them.
    pub chains: StateChains,
}

/// The marker column of deleted units in a delta.
const DELETE: &str = "__weir_delete";

fn nullable(schema: &Schema) -> Vec<Field> {
    schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect()
}

impl Checkpoint {
    fn state_dir(operator: &str) -> String {
        format!("state/{operator}")
    }

    fn state_file_name(
        operator: &str,
        epoch: u64,
        kind: StateKind,
        shard: ShardOf,
        attempt: Option<&str>,
    ) -> String {
        if let Some(a) = attempt {
            return format!(
                "state/{operator}/{epoch:020}.{}.{}-of-{}.{a}.parquet",
                kind.suffix(),
                shard.index,
                shard.count
            );
        }
        if shard.count == 1 {
            format!("state/{operator}/{epoch:020}.{}.parquet", kind.suffix())
        } else {
            format!(
                "state/{operator}/{epoch:020}.{}.{}-of-{}.parquet",
                kind.suffix(),
                shard.index,
                shard.count
            )
        }
    }

    /// Parses a state file's name (the part after `state/<op>/`).
    fn parse_state_file_name(file: &str) -> Option<(u64, StateKind, ShardOf, Option<String>)> {
        let stem = file.strip_suffix(".parquet")?;
        let mut parts = stem.split('.');
        let epoch = parts.next()?.parse::<u64>().ok()?;
        let kind = match parts.next()? {
            "snapshot" => StateKind::Snapshot,
            "delta" => StateKind::Delta,
            _ => return None,
        };
        let shard_part = parts.next();
        let attempt = parts.next();
        if parts.next().is_some() || attempt.is_some_and(|a| !valid_attempt(a)) {
            return None;
        }
        let shard = match shard_part {
            None => ShardOf::WHOLE,
            Some(s) => {
                let (k, n) = s.split_once("-of-")?;
                let shard = ShardOf {
                    index: k.parse().ok()?,
                    count: n.parse().ok()?,
                };
                // A plain name of one shard has no shard part.
                let least = if attempt.is_some() { 1 } else { 2 };
                if shard.count < least || shard.index >= shard.count {
                    return None;
                }
                shard
            }
        };
        Some((epoch, kind, shard, attempt.map(str::to_string)))
    }

    /// Writes an operator's state (snapshot or delta, of one shard or of
    /// all) for an epoch. A replay of the epoch writes the same file again;
    /// a file of the other kind for the same epoch and shard (from an
    /// attempt that crashed) is removed first.
    pub async fn write_state(&self, operator: &str, epoch: u64, w: StateWrite<'_>) -> Result<u64> {
        let encoded = self.encode_state(operator, epoch, &w, 1)?;
        self.put_state(encoded).await
    }

    /// Encodes several operators' state files of one epoch on up to
    /// `threads` threads, in the order given; [`Checkpoint::put_state`]
    /// writes each. A file of at least [`codec::PARALLEL_MIN_ROWS`] rows is
    /// encoded alone, its columns spread over the threads; the smaller
    /// files are encoded side by side, one per thread, when together they
    /// are worth starting threads for. Either way each file is the one
    /// [`Checkpoint::write_state`] writes, byte for byte.
    pub fn encode_states(
        &self,
        epoch: u64,
        writes: &[(&str, StateWrite<'_>)],
        threads: usize,
    ) -> Result<Vec<EncodedState>> {
        let rows = |w: &StateWrite<'_>| -> usize {
            w.upserts.iter().chain(w.deletes).map(RecordBatch::num_rows).sum()
        };
        // (index in `writes`, its file), put back in order at the end.
        let mut done: Vec<(usize, Result<EncodedState>)> = Vec::with_capacity(writes.len());
        let mut small = Vec::new();
        for (i, (operator, w)) in writes.iter().enumerate() {
            if threads > 1 && rows(w) >= codec::PARALLEL_MIN_ROWS {
                done.push((i, self.encode_state(operator, epoch, w, threads)));
            } else {
                small.push(i);
            }
        }
        let small_rows: usize = small.iter().map(|&i| rows(&writes[i].1)).sum();
        if threads > 1 && small.len() > 1 && small_rows >= SIDE_BY_SIDE_MIN_ROWS {
            let next = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads.min(small.len()))
                    .map(|_| {
                        scope.spawn(|| {
                            let mut mine = Vec::new();
                            loop {
                                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(&i) = small.get(k) else { break };
                                let (operator, w) = &writes[i];
                                mine.push((i, self.encode_state(operator, epoch, w, 1)));
                            }
                            mine
                        })
                    })
                    .collect();
                for worker in workers {
                    match worker.join() {
                        Ok(mine) => done.extend(mine),
                        // A panic in the encoder goes on as the caller's.
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
            });
        } else {
            for &i in &small {
                let (operator, w) = &writes[i];
                done.push((i, self.encode_state(operator, epoch, w, 1)));
            }
        }
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, e)| e).collect()
    }

    /// Encodes one operator's state file for an epoch (its columns on up
    /// to `threads` threads), without writing it.
    pub fn encode_state(
        &self,
        operator: &str,
        epoch: u64,
        w: &StateWrite<'_>,
        threads: usize,
    ) -> Result<EncodedState> {
        if let Some(a) = w.attempt
            && !valid_attempt(a)
        {
            return Err(Error::InvalidLocation {
                location: self.location().url_of(&Self::state_dir(operator)),
                reason: format!("'{a}' cannot name an attempt's state file (1 to 32 letters and digits)"),
            });
        }
        let name = Self::state_file_name(operator, epoch, w.kind, w.shard, w.attempt);
        let url = self.location().url_of(&name);
        let mut meta = BTreeMap::from([
            ("weir.operator".to_string(), operator.to_string()),
            ("weir.epoch".to_string(), epoch.to_string()),
            ("weir.kind".to_string(), w.kind.suffix().to_string()),
            ("weir.unit_key_len".to_string(), w.unit_key_len.to_string()),
        ]);
        if w.shard.count > 1 {
            meta.insert(
                "weir.shard".to_string(),
                format!("{}/{}", w.shard.index, w.shard.count),
            );
        }
        let payload = match w.kind {
            StateKind::Snapshot => codec::encode_state_parallel(&url, w.schema, w.upserts, &meta, threads)?,
            StateKind::Delta => {
                let mut fields = nullable(w.schema);
                fields.push(Field::new(DELETE, DataType::Boolean, false));
                let schema = Arc::new(Schema::new(fields));
                let parquet_err = |e: &dyn std::fmt::Display| Error::Parquet {
                    url: url.clone(),
                    reason: e.to_string(),
                };
                let mut rows = Vec::new();
                for b in w.upserts {
                    let mut cols = b.columns().to_vec();
                    cols.push(Arc::new(BooleanArray::from(vec![false; b.num_rows()])));
                    rows.push(RecordBatch::try_new(Arc::clone(&schema), cols).map_err(|e| parquet_err(&e))?);
                }
                for d in w.deletes {
                    let n = d.num_rows();
                    let mut cols: Vec<ArrayRef> = d.columns()[..w.unit_key_len].to_vec();
                    for f in &schema.fields()[w.unit_key_len..schema.fields().len() - 1] {
                        cols.push(datafusion::arrow::array::new_null_array(f.data_type(), n));
                    }
                    cols.push(Arc::new(BooleanArray::from(vec![true; n])));
                    rows.push(RecordBatch::try_new(Arc::clone(&schema), cols).map_err(|e| parquet_err(&e))?);
                }
                codec::encode_state_parallel(&url, &schema, &rows, &meta, threads)?
            }
        };
        Ok(EncodedState { name, payload })
    }

    /// Checks a state file another process (a cluster's executor) reported
    /// writing, before a commit names it: it is in this checkpoint, under
    /// its attempt's name, with the size reported. An executor that writes
    /// to another store than this process (a checkpoint folder mounted
    /// elsewhere) otherwise left commits naming files no restore could
    /// find, every epoch after it damaged too.
    #[allow(clippy::too_many_arguments)]
    pub async fn check_reported_state(
        &self,
        operator: &str,
        epoch: u64,
        kind: StateKind,
        shard: ShardOf,
        attempt: &str,
        bytes: u64,
    ) -> Result<()> {
        let name = Self::state_file_name(
            operator,
            epoch,
            kind,
            shard,
            Some(attempt).filter(|a| !a.is_empty()),
        );
        let bad = |reason: String| Error::Corrupt {
            url: self.location().url_of(&name),
            epoch: Some(epoch),
            reason,
        };
        match self.location().size(&name).await? {
            Some(size) if size == bytes => Ok(()),
            Some(size) => Err(bad(format!(
                "shard {} of {operator}'s state has {size} bytes where its executor reported {bytes}",
                shard.index
            ))),
            None => Err(bad(format!(
                "shard {} of {operator}'s state was reported written by an executor but is not in this \
                 checkpoint (does every executor reach the same store as this process?)",
                shard.index
            ))),
        }
    }

    /// Writes an encoded state file. Returns its bytes.
    ///
    /// The file of the other kind for its epoch and shard, if an earlier
    /// attempt left one, stays: a restore reads what its commit names, and
    /// retention deletes it with its epoch. (Deleting it here deleted the
    /// file a replacement had committed, when this process had stalled past
    /// its lease between its check and this write: the replacement, fresh,
    /// snapshots where this one wrote a delta.)
    pub async fn put_state(&self, encoded: EncodedState) -> Result<u64> {
        let len = encoded.bytes();
        self.location().put(&encoded.name, encoded.payload).await?;
        Ok(len)
    }

    /// An operator's state files found by listing its folder, in epoch
    /// order (then shard order). For tools, retention and damage checks: a
    /// restore reads the files its commit names instead.
    pub async fn state_files(&self, operator: &str) -> Result<Vec<StateFile>> {
        let mut out = Vec::new();
        for meta in self.location().list(&Self::state_dir(operator)).await? {
            let name = self.location().relative(&meta.location);
            let file = name.rsplit('/').next().unwrap_or(&name);
            let Some((epoch, kind, shard, attempt)) = Self::parse_state_file_name(file) else {
                return Err(Error::Corrupt {
                    url: self.location().url_of(&name),
                    epoch: None,
                    reason: "unexpected file among state files".into(),
                });
            };
            out.push(StateFile {
                epoch,
                kind,
                shard,
                name,
                bytes: meta.size,
                attempt,
            });
        }
        // Several attempts may have written one shard's file of an epoch,
        // and one of each kind (see `put_state`): the snapshot first.
        out.sort_by(|a, b| {
            (a.epoch, a.shard, &a.attempt, a.kind != StateKind::Snapshot).cmp(&(
                b.epoch,
                b.shard,
                &b.attempt,
                b.kind != StateKind::Snapshot,
            ))
        });
        Ok(out)
    }

    async fn read_state_file(&self, operator: &str, f: &StateFile) -> Result<(Decoded, usize)> {
        let url = self.location().url_of(&f.name);
        let bytes = self.location().get_required(&f.name).await?;
        let decoded = codec::decode(&url, Some(f.epoch), bytes)?;
        let corrupt = |reason: String| Error::Corrupt {
            url: url.clone(),
            epoch: Some(f.epoch),
            reason,
        };
        if decoded.metadata.get("weir.operator").map(String::as_str) != Some(operator) {
            return Err(corrupt(format!(
                "the file does not belong to operator '{operator}'"
            )));
        }
        let key_len = decoded
            .metadata
            .get("weir.unit_key_len")
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| corrupt("no weir.unit_key_len in the file's metadata".into()))?;
        Ok((decoded, key_len))
    }

    /// Rebuilds an operator's state as of the committed `epoch`: from the
    /// files `commits/<epoch>` names for it, or, for a commit written
    /// before commits named them (or no commit, for tools), from a listing:
    /// the newest snapshot at or before `epoch` and the deltas after it.
    /// Files of later epochs (uncommitted) are ignored; they are rewritten
    /// when those replay.
    pub async fn restore_state(&self, operator: &str, epoch: u64) -> Result<Option<RestoredState>> {
        let listed = match (self.commits.read(epoch).await?, self.read_metadata().await?) {
            (Some(c), Some(meta)) => meta.state_listing(&c),
            (Some(c), None) => c.state,
            (None, _) => None,
        };
        self.restore_state_listed(operator, epoch, listed.as_ref()).await
    }

    /// [`Checkpoint::restore_state`] given the commit's list of state files
    /// (`None`: the commit has none, so list the folder).
    pub async fn restore_state_listed(
        &self,
        operator: &str,
        epoch: u64,
        listed: Option<&BTreeMap<String, StateChains>>,
    ) -> Result<Option<RestoredState>> {
        let chains: Vec<Vec<StateFile>> = match listed {
            Some(map) => {
                let Some(chains) = map.get(operator) else {
                    return Ok(None);
                };
                Self::chain_files(operator, chains)
            }
            None => {
                // Before commits named their files, a table was one file
                // per epoch; files of a shard count are a later attempt's.
                let files: Vec<StateFile> = self
                    .state_files(operator)
                    .await?
                    .into_iter()
                    .filter(|f| f.epoch <= epoch && f.shard == ShardOf::WHOLE && f.attempt.is_none())
                    .collect();
                let Some(start) = files.iter().rposition(|f| f.kind == StateKind::Snapshot) else {
                    if let Some(first) = files.first() {
                        return Err(Error::Corrupt {
                            url: self.location().url_of(&first.name),
                            epoch: Some(first.epoch),
                            reason: format!("a delta with no snapshot before it for operator '{operator}'"),
                        });
                    }
                    return Ok(None);
                };
                vec![files[start..].to_vec()]
            }
        };
        // Each shard's rows as they come, one shard after another: a unit
        // with rows in several shards comes in one run per shard (not
        // gathered into one, which would copy the whole state once more).
        let mut restored: Option<RestoredState> = None;
        let mut key_len = 0;
        for chain in &chains {
            let (schema, k, batches) = self.restore_chain(operator, chain).await?;
            let other_key_len = std::mem::replace(&mut key_len, k);
            match &mut restored {
                None => {
                    restored = Some(RestoredState {
                        batches,
                        schema,
                        snapshot_epoch: chain[0].epoch,
                        deltas: chain.len() - 1,
                        chains: StateChains::default(),
                    })
                }
                Some(r) => {
                    if r.schema.fields() != schema.fields() || other_key_len != k {
                        return Err(Error::Corrupt {
                            url: self.location().url_of(&chain[0].name),
                            epoch: Some(chain[0].epoch),
                            reason: "its columns differ from the other shards' files".into(),
                        });
                    }
                    r.batches.extend(batches);
                    r.snapshot_epoch = r.snapshot_epoch.min(chain[0].epoch);
                    r.deltas += chain.len() - 1;
                }
            }
        }
        if let Some(r) = &mut restored {
            r.chains = StateChains {
                shards: chains
                    .iter()
                    .map(|c| c.iter().map(|f| f.epoch).collect())
                    .collect(),
                generation: listed.and_then(|m| m.get(operator)).map_or(0, |c| c.generation),
                attempts: chains
                    .iter()
                    .flatten()
                    .filter_map(|f| Some((attempt_key(f.shard.index as usize, f.epoch), f.attempt.clone()?)))
                    .collect(),
            };
        }
        Ok(restored)
    }

    /// The names of the files `chains` names (relative to the checkpoint,
    /// as [`StateFile::name`]): what a restore from them reads.
    pub fn chain_file_names(operator: &str, chains: &StateChains) -> Vec<String> {
        Self::chain_files(operator, chains)
            .into_iter()
            .flatten()
            .map(|f| f.name)
            .collect()
    }

    /// The files `chains` names, shard by shard.
    fn chain_files(operator: &str, chains: &StateChains) -> Vec<Vec<StateFile>> {
        let mut out: Vec<Vec<StateFile>> = vec![Vec::new(); chains.shards.len()];
        for (shard, e, kind, attempt) in chains.files() {
            out[shard.index as usize].push(StateFile {
                epoch: e,
                kind,
                shard,
                name: Self::state_file_name(operator, e, kind, shard, attempt),
                bytes: 0,
                attempt: attempt.map(str::to_string),
            });
        }
        out
    }

    /// Shard `shard`'s rows of an operator's state, from the files a
    /// commit's `chains` name for that shard alone (its snapshot and the
    /// deltas after it): for a task that runs one shard (a cluster's
    /// stage-2 task, `docs/cluster-operators.md`), which reads no other
    /// shard's files. Under another shard count a shard's rows are spread
    /// over every old shard's files: restore them all then
    /// ([`Checkpoint::restore_state_listed`]) and deal the rows by hash.
    pub async fn restore_shard(
        &self,
        operator: &str,
        chains: &StateChains,
        shard: usize,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let mut files = Self::chain_files(operator, chains);
        if shard >= files.len() {
            return Err(Error::Corrupt {
                url: self.location().url_of(&Self::state_dir(operator)),
                epoch: None,
                reason: format!(
                    "shard {shard} asked for, but the commit lists {} shard(s) of operator '{operator}'",
                    files.len()
                ),
            });
        }
        let (schema, _, batches) = self.restore_chain(operator, &files.swap_remove(shard)).await?;
        Ok((schema, batches))
    }

    /// One shard's state from its snapshot (`files[0]`) and the deltas
    /// after it, in order.
    async fn restore_chain(
        &self,
        operator: &str,
        files: &[StateFile],
    ) -> Result<(SchemaRef, usize, Vec<RecordBatch>)> {
        let Some(first) = files.first() else {
            return Err(Error::Corrupt {
                url: self.location().url_of(&Self::state_dir(operator)),
                epoch: None,
                reason: "a commit names a shard with no state files".into(),
            });
        };
        if first.kind != StateKind::Snapshot {
            return Err(Error::Corrupt {
                url: self.location().url_of(&first.name),
                epoch: Some(first.epoch),
                reason: format!("a delta with no snapshot before it for operator '{operator}'"),
            });
        }
        let (snapshot, key_len) = self.read_state_file(operator, first).await?;
        // The rows as the operator wrote them, without the file's metadata.
        let schema = Arc::new(Schema::new(snapshot.schema.fields().clone()));
        let mut table = UnitTable::new(&schema, key_len).map_err(|e| Error::Corrupt {
            url: self.location().url_of(&first.name),
            epoch: Some(first.epoch),
            reason: e,
        })?;
        table.upsert(&snapshot.batches).map_err(|e| Error::Corrupt {
            url: self.location().url_of(&first.name),
            epoch: Some(first.epoch),
            reason: e,
        })?;
        for f in &files[1..] {
            let corrupt = |reason: String| Error::Corrupt {
                url: self.location().url_of(&f.name),
                epoch: Some(f.epoch),
                reason,
            };
            let (delta, k) = self.read_state_file(operator, f).await?;
            if k != key_len || delta.schema.fields().len() != schema.fields().len() + 1 {
                return Err(corrupt("the delta's columns do not match the snapshot's".into()));
            }
            let mut deletes = Vec::new();
            let mut upserts = Vec::new();
            for b in &delta.batches {
                let flag = b
                    .column(b.num_columns() - 1)
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| corrupt(format!("{DELETE} is not a boolean column")))?
                    .clone();
                let data = RecordBatch::try_new(
                    Arc::new(Schema::new(nullable(&schema))),
                    b.columns()[..b.num_columns() - 1].to_vec(),
                )
                .map_err(|e| corrupt(e.to_string()))?;
                deletes.push(filter_record_batch(&data, &flag).map_err(|e| corrupt(e.to_string()))?);
                let kept = not(&flag).map_err(|e| corrupt(e.to_string()))?;
                upserts.push(filter_record_batch(&data, &kept).map_err(|e| corrupt(e.to_string()))?);
            }
            table.delete(&deletes).map_err(corrupt)?;
            table.upsert(&upserts).map_err(corrupt)?;
        }
        let last = &files[files.len() - 1];
        let batches = table.rows(&schema).map_err(|e| Error::Corrupt {
            url: self.location().url_of(&last.name),
            epoch: Some(last.epoch),
            reason: e,
        })?;
        Ok((schema, key_len, batches))
    }

    /// Deletes an operator's files that restoring any epoch from
    /// `keep_from` on does not need: everything before the newest snapshot
    /// at or before `keep_from` (every shard snapshots in the same epoch,
    /// and a new shard count starts with a snapshot of every shard).
    /// Returns how many files were deleted.
    pub async fn prune_state(&self, operator: &str, keep_from: u64) -> Result<usize> {
        let files = self.state_files(operator).await?;
        let Some(base) = files
            .iter()
            .filter(|f| f.epoch <= keep_from && f.kind == StateKind::Snapshot && f.attempt.is_none())
            .map(|f| f.epoch)
            .max()
        else {
            return Ok(0);
        };
        self.delete_state_files(files.iter().filter(|f| f.epoch < base))
            .await
    }

    /// Deletes an operator's files of epochs before `base`. Given as `base`
    /// the oldest epoch that commit `keep_from` names for the table (every
    /// later commit's files start at that epoch or after), it keeps what
    /// restoring any epoch from `keep_from` on needs, whatever a crashed
    /// attempt left. Returns how many files were deleted.
    pub async fn prune_state_before(&self, operator: &str, base: u64) -> Result<usize> {
        let files = self.state_files(operator).await?;
        self.delete_state_files(files.iter().filter(|f| f.epoch < base))
            .await
    }

    async fn delete_state_files(&self, files: impl Iterator<Item = &StateFile>) -> Result<usize> {
        let mut n = 0;
        for f in files {
            self.location().delete(&f.name).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes every state file of an operator (its state is dropped, e.g.
    /// when a changed query starts with fresh state). Lists the folder
    /// rather than parsing names, so stray files go too.
    pub async fn drop_state(&self, operator: &str) -> Result<()> {
        for meta in self.location().list(&Self::state_dir(operator)).await? {
            let name = self.location().relative(&meta.location);
            self.location().delete(&name).await?;
        }
        Ok(())
    }

    /// Deletes an operator's state files for one epoch: every kind and
    /// shard.
    pub async fn delete_state(&self, operator: &str, epoch: u64) -> Result<()> {
        for f in self.state_files(operator).await? {
            if f.epoch == epoch {
                self.location().delete(&f.name).await?;
            }
        }
        Ok(())
    }

    /// Deletes one state file.
    pub async fn delete_state_file(&self, f: &StateFile) -> Result<()> {
        self.location().delete(&f.name).await
    }
}

/// Rows grouped into units by their key columns. Rows stay in the batches
/// they were read in, and a unit is the list of its rows' places, so a
/// state of millions of one-row units (an update aggregate's groups or its
/// distinct values) costs no batch per unit.
///
/// A unit is 24 bytes and an index slot: its key's hash and its rows'
/// places, not its key. Two keys with the same 64-bit hash are told apart
/// by their rows: the keys of the units a batch's rows may belong to
/// (those with the same hash) are encoded again from the rows held, in one
/// pass per read batch, and compared. (The table kept each unit's key in
/// Arrow's row format before: ~58 bytes a unit for q16's (channel, day,
/// argument, value), 0.6 GB of its 11M distinct values' restore.) Units sit
/// in a `Vec` in the order they first appeared, so the restored order needs
/// no sort. A row whose key is the row before it's (a unit written as one
/// run: the usual case) is added without a lookup.
struct UnitTable {
    key_len: usize,
    converter: Option<RowConverter>,
    /// Every batch read (rows of replaced or deleted units stay here,
    /// unreferenced): a unit's key is read back from its first row.
    batches: Vec<RecordBatch>,
    /// The live units, by their keys' hashes: positions in `units`.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Every hash is masked with this: all bits in use; tests keep a few,
    /// so that different keys share hashes and must be told apart by rows.
    hash_mask: u64,
    /// Units in the order they first appeared; a deleted one stays, dead
    /// (a later upsert of its key makes a new unit, at the end).
    units: Vec<Unit>,
    /// The second and later rows of units that have more than one.
    more: Vec<Vec<(u32, u32)>>,
    /// Upserts so far (one per file).
    upserts: u32,
}

struct Unit {
    /// Its key's hash (masked by `UnitTable::hash_mask`).
    hash: u64,
    /// (batch, row) of its first row, in file order. Its key is that row's.
    first: (u32, u32),
    /// Its further rows: a position in `UnitTable::more`, or [`NO_MORE`].
    more: u32,
    /// The upsert that wrote it (0: deleted): a later upsert replaces its
    /// rows; the same one adds to them (one file's unit may span read
    /// batches).
    upsert: u32,
}

const NO_MORE: u32 = u32::MAX;

/// At most this many rows per restored batch that is gathered from several.
const RESTORED_BATCH_ROWS: usize = 1 << 20;

/// Rows side by side in one read batch from which the restored rows are a
/// slice of it instead of a copy.
const SLICE_RUN_ROWS: usize = 256;

impl UnitTable {
    fn new(schema: &SchemaRef, key_len: usize) -> std::result::Result<Self, String> {
        if key_len > schema.fields().len() {
            return Err(format!(
                "unit key of {key_len} columns, but the state has {}",
                schema.fields().len()
            ));
        }
        let converter = if key_len == 0 {
            None
        } else {
            Some(
                RowConverter::new(
                    schema.fields()[..key_len]
                        .iter()
                        .map(|f| SortField::new(f.data_type().clone()))
                        .collect(),
                )
                .map_err(|e| e.to_string())?,
            )
        };
        Ok(Self {
            key_len,
            converter,
            batches: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            hash_mask: u64::MAX,
            units: Vec::new(),
            more: Vec::new(),
            upserts: 0,
        })
    }

    /// A batch's unit keys (`None` when units have no key: one unit).
    fn convert(&self, batch: &RecordBatch) -> std::result::Result<Option<Rows>, String> {
        self.converter
            .as_ref()
            .map(|c| c.convert_columns(&batch.columns()[..self.key_len]))
            .transpose()
            .map_err(|e| e.to_string())
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key) & self.hash_mask
    }

    /// The live units whose hash is `hash`, each paired with `row`.
    fn candidates(&self, row: usize, hash: u64, out: &mut Vec<(usize, u32)>) {
        out.extend(
            self.index
                .iter_hash(hash)
                .filter(|&&u| self.units[u as usize].hash == hash)
                .map(|&u| (row, u)),
        );
    }

    /// For each (row of `rows`, unit) pair, whether the unit's key is the
    /// row's: the units' first rows' keys, gathered from the batches held
    /// and encoded in one go.
    fn keys_equal(
        &self,
        rows: Option<&Rows>,
        pairs: &[(usize, u32)],
    ) -> std::result::Result<Vec<bool>, String> {
        let (Some(converter), Some(rows)) = (&self.converter, rows) else {
            // No key columns: every row is the one unit's.
            return Ok(vec![true; pairs.len()]);
        };
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let places: Vec<(usize, usize)> = pairs
            .iter()
            .map(|&(_, u)| {
                let (b, r) = self.units[u as usize].first;
                (b as usize, r as usize)
            })
            .collect();
        let columns = (0..self.key_len)
            .map(|c| {
                let arrays: Vec<&dyn Array> = self.batches.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, &places)
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()
            .map_err(|e| e.to_string())?;
        let theirs = converter.convert_columns(&columns).map_err(|e| e.to_string())?;
        Ok(pairs
            .iter()
            .enumerate()
            .map(|(j, &(i, _))| theirs.row(j) == rows.row(i))
            .collect())
    }

    /// Replaces each unit that `batches` (one file's rows) has with its rows
    /// there. A file is read back in batches, so one unit's rows may span
    /// several: rows of the same upsert add to the unit instead of
    /// replacing its earlier ones.
    ///
    /// Per read batch, two passes: the first finds, for each run of rows
    /// with one key, the unit already held that has its key (candidates by
    /// hash, confirmed by `keys_equal` in bulk); the second adds the rows,
    /// making a unit for each key that has none, found again within the
    /// batch through a small table of the units it made.
    fn upsert(&mut self, batches: &[RecordBatch]) -> std::result::Result<(), String> {
        self.upserts += 1;
        let upsert = self.upserts;
        // Units made from the batch being added, by hash.
        let mut made: HashTable<u32> = HashTable::new();
        let mut pairs = Vec::new();
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            let rows = self.convert(b)?;
            let key = |i: usize| -> &[u8] { rows.as_ref().map_or(&[], |r| r.row(i).data()) };
            // Pass 1: runs of one key (first row, hash) and their candidates.
            let mut runs: Vec<(usize, u64)> = Vec::new();
            pairs.clear();
            for i in 0..b.num_rows() {
                if i > 0 && key(i - 1) == key(i) {
                    continue;
                }
                let hash = self.hash(key(i));
                self.candidates(runs.len(), hash, &mut pairs);
                runs.push((i, hash));
            }
            let first_rows: Vec<(usize, u32)> = pairs.iter().map(|&(run, u)| (runs[run].0, u)).collect();
            let equal = self.keys_equal(rows.as_ref(), &first_rows)?;
            let mut held: Vec<Option<u32>> = vec![None; runs.len()];
            for (&(run, u), eq) in pairs.iter().zip(equal) {
                if eq {
                    held[run] = Some(u);
                }
            }
            // Pass 2: add the rows.
            let at = u32::try_from(self.batches.len())
                .map_err(|_| "more than 4,294,967,295 read batches".to_string())?;
            self.batches.push(b.clone());
            made.clear();
            for (run, &(start, hash)) in runs.iter().enumerate() {
                let end = runs.get(run + 1).map_or(b.num_rows(), |r| r.0);
                let found = held[run].or_else(|| {
                    let units = &self.units;
                    made.find(hash, |&u| {
                        let unit = &units[u as usize];
                        unit.hash == hash && key(unit.first.1 as usize) == key(start)
                    })
                    .copied()
                });
                let u = match found {
                    Some(u) => u,
                    None => {
                        let u = u32::try_from(self.units.len())
                            .map_err(|_| "more than 4,294,967,295 units in one state".to_string())?;
                        self.units.push(Unit {
                            hash,
                            first: (at, start as u32),
                            more: NO_MORE,
                            upsert,
                        });
                        let units = &self.units;
                        self.index.insert_unique(hash, u, |&u| units[u as usize].hash);
                        made.insert_unique(hash, u, |&u| units[u as usize].hash);
                        self.add_rows(u, upsert, at, start + 1..end);
                        continue;
                    }
                };
                self.add_rows(u, upsert, at, start..end);
            }
        }
        Ok(())
    }

    /// Adds rows `rows` of batch `at` to unit `u`, written by `upsert`:
    /// after its rows if the same upsert wrote them, else in their place.
    fn add_rows(&mut self, u: u32, upsert: u32, at: u32, rows: std::ops::Range<usize>) {
        let mut rows = rows.map(|r| (at, r as u32));
        let unit = &mut self.units[u as usize];
        if unit.upsert != upsert {
            let Some(first) = rows.next() else { return };
            unit.first = first;
            unit.upsert = upsert;
            if unit.more != NO_MORE {
                self.more[unit.more as usize].clear();
            }
        }
        let mut rows = rows.peekable();
        if rows.peek().is_none() {
            return;
        }
        if unit.more == NO_MORE {
            unit.more = self.more.len() as u32;
            self.more.push(Vec::new());
        }
        self.more[unit.more as usize].extend(rows);
    }

    fn delete(&mut self, batches: &[RecordBatch]) -> std::result::Result<(), String> {
        let mut pairs = Vec::new();
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            let rows = self.convert(b)?;
            pairs.clear();
            for i in 0..b.num_rows() {
                let key: &[u8] = rows.as_ref().map_or(&[], |r| r.row(i).data());
                self.candidates(i, self.hash(key), &mut pairs);
            }
            let equal = self.keys_equal(rows.as_ref(), &pairs)?;
            for (&(_, u), eq) in pairs.iter().zip(equal) {
                let hash = self.units[u as usize].hash;
                // A key deleted twice in one batch: gone the first time.
                if eq && let Ok(entry) = self.index.find_entry(hash, |&x| x == u) {
                    entry.remove();
                    self.units[u as usize].upsert = 0;
                }
            }
        }
        Ok(())
    }

    /// The rows, units in the order they first appeared.
    ///
    /// A run of at least [`SLICE_RUN_ROWS`] rows that sit side by side in
    /// one read batch is handed out as a slice of it (no copy); shorter runs
    /// (units rewritten row by row over many files) are gathered into new
    /// batches. Restoring a large state therefore holds one copy of it, not
    /// two: most units are written once, in one file, in order.
    fn rows(self, schema: &SchemaRef) -> std::result::Result<Vec<RecordBatch>, String> {
        let places = self.units.iter().filter(|u| u.upsert != 0).flat_map(|u| {
            let more: &[(u32, u32)] = if u.more == NO_MORE {
                &[]
            } else {
                &self.more[u.more as usize]
            };
            std::iter::once(&u.first).chain(more)
        });
        // Runs of consecutive rows: (batch, first row, rows).
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for &(b, r) in places {
            let (b, r) = (b as usize, r as usize);
            match runs.last_mut() {
                Some((lb, lr, n)) if *lb == b && *lr + *n == r => *n += 1,
                _ => runs.push((b, r, 1)),
            }
        }
        let fits = |columns: Vec<ArrayRef>| {
            RecordBatch::try_new(Arc::clone(schema), columns)
                .map_err(|e| format!("the restored rows do not fit the state's columns: {e}"))
        };
        let mut out = Vec::new();
        let mut gather: Vec<(usize, usize)> = Vec::new();
        let flush = |gather: &mut Vec<(usize, usize)>, out: &mut Vec<RecordBatch>| {
            if gather.is_empty() {
                return Ok(());
            }
            let columns = (0..schema.fields().len())
                .map(|c| {
                    let arrays: Vec<&dyn Array> = self.batches.iter().map(|b| b.column(c).as_ref()).collect();
                    interleave(&arrays, gather)
                })
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()
                .map_err(|e| e.to_string())?;
            gather.clear();
            out.push(fits(columns)?);
            Ok::<(), String>(())
        };
        for (b, r, n) in runs {
            if n >= SLICE_RUN_ROWS {
                flush(&mut gather, &mut out)?;
                out.push(fits(self.batches[b].slice(r, n).columns().to_vec())?);
            } else {
                gather.extend((r..r + n).map(|r| (b, r)));
                if gather.len() >= RESTORED_BATCH_ROWS {
                    flush(&mut gather, &mut out)?;
                }
            }
        }
        flush(&mut gather, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use crate::location::{Create, Location};
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Int64Type;
    use std::collections::BTreeSet;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    fn rows(pairs: &[(&str, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(pairs.iter().map(|p| p.0).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(pairs.iter().map(|p| p.1).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn keys(ks: &[&str]) -> RecordBatch {
        let s = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        RecordBatch::try_new(s, vec![Arc::new(StringArray::from(ks.to_vec()))]).unwrap()
    }

    fn as_pairs(r: &RestoredState) -> Vec<(String, i64)> {
        r.batches
            .iter()
            .flat_map(|b| {
                let k = b.column(0).as_string::<i32>().clone();
                let v = b.column(1).as_primitive::<Int64Type>().clone();
                (0..b.num_rows()).map(move |i| (k.value(i).to_string(), v.value(i)))
            })
            .collect()
    }

    async fn write(
        ck: &Checkpoint,
        epoch: u64,
        kind: StateKind,
        up: &[RecordBatch],
        del: &[RecordBatch],
    ) -> u64 {
        let s = schema();
        ck.write_state(
            "op",
            epoch,
            StateWrite {
                kind,
                shard: ShardOf::WHOLE,
                schema: &s,
                unit_key_len: 1,
                upserts: up,
                deletes: del,
                attempt: None,
            },
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_unit_larger_than_a_read_batch_is_restored_whole() {
        // Files are read back in batches of at most 65,536 rows: unit "a"
        // spans two of them, in the snapshot and again in a delta that
        // replaces it.
        let loc = Location::open("memory://state-big-unit", &StoreOptions::default(), Create::Yes).unwrap();
        let ck = Checkpoint::new(loc);
        let big = |v: i64| -> Vec<(&'static str, i64)> {
            let mut r: Vec<(&str, i64)> = (0..70_000).map(|_| ("a", v)).collect();
            r.push(("b", v));
            r
        };
        write(&ck, 1, StateKind::Snapshot, &[rows(&big(1))], &[]).await;
        let restored = as_pairs(&ck.restore_state("op", 1).await.unwrap().unwrap());
        assert_eq!(restored.len(), 70_001);
        write(&ck, 2, StateKind::Delta, &[rows(&big(2))], &[]).await;
        let restored = as_pairs(&ck.restore_state("op", 2).await.unwrap().unwrap());
        assert_eq!(restored.len(), 70_001);
        assert!(
            restored.iter().all(|(_, v)| *v == 2),
            "the delta replaced every row of both units"
        );
    }

    /// Long runs of rows come back as slices of the batches read (one copy
    /// of a large state in memory, not two); short runs, such as units a
    /// delta replaced, are gathered into one batch between them, in the
    /// units' order.
    #[tokio::test]
    async fn long_runs_are_sliced_and_short_ones_gathered() {
        let loc = Location::open("memory://state-runs", &StoreOptions::default(), Create::Yes).unwrap();
        let ck = Checkpoint::new(loc);
        let names: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
        let mut snapshot: Vec<(&str, i64)> = (0..1000).map(|i| ("a", i)).collect();
        snapshot.extend(names.iter().map(|n| (n.as_str(), 1)));
        write(&ck, 1, StateKind::Snapshot, &[rows(&snapshot)], &[]).await;
        let mut delta: Vec<(&str, i64)> = vec![("b3", 2)];
        delta.extend((0..500).map(|i| ("c", i)));
        write(&ck, 2, StateKind::Delta, &[rows(&delta)], &[]).await;
        let restored = ck.restore_state("op", 2).await.unwrap().unwrap();
        let sizes: Vec<usize> = restored.batches.iter().map(|b| b.num_rows()).collect();
        // a's rows and b0..b2 (next to them in the snapshot's batch) are one
        // slice; b3 (from the delta) and b4..b9 are too short to slice.
        assert_eq!(sizes, vec![1003, 7, 500]);
        let mut expected: Vec<(String, i64)> = (0..1000).map(|i| ("a".into(), i)).collect();
        expected.extend(names.iter().map(|n| (n.clone(), if n == "b3" { 2 } else { 1 })));
        expected.extend((0..500).map(|i| ("c".into(), i)));
        assert_eq!(as_pairs(&restored), expected);
    }

    /// The unit table against a plain model, over random files: units of
    /// one to 300 rows (some long enough to be sliced), replaced, deleted
    /// and made again, each file cut into read batches at random places.
    #[test]
    fn unit_table_matches_a_model_over_random_files() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // All of a hash's bits, then two and none: keys that share a hash
        // must still be told apart by their rows.
        for round in 0..30 {
            let mut table = UnitTable::new(&schema(), 1).unwrap();
            table.hash_mask = [u64::MAX, 3, 0][round as usize % 3];
            // The model: (key, rows) in the order units first appeared.
            let mut model: Vec<(String, Vec<i64>)> = Vec::new();
            for file in 0..6 {
                let mut pairs: Vec<(String, i64)> = Vec::new();
                let mut in_file = BTreeSet::new();
                for _ in 0..1 + next(8) {
                    let key = format!("k{}", next(12));
                    if !in_file.insert(key.clone()) {
                        continue;
                    }
                    let n = if next(4) == 0 { 1 + next(300) } else { 1 + next(3) };
                    let rows: Vec<i64> = (0..n as i64).map(|r| round * 10_000 + file * 1000 + r).collect();
                    pairs.extend(rows.iter().map(|&v| (key.clone(), v)));
                    match model.iter_mut().find(|(k, _)| *k == key) {
                        Some(unit) => unit.1 = rows,
                        None => model.push((key, rows)),
                    }
                }
                let mut batches = Vec::new();
                let mut start = 0;
                while start < pairs.len() {
                    let end = (start + 1 + next(200) as usize).min(pairs.len());
                    let cut: Vec<(&str, i64)> =
                        pairs[start..end].iter().map(|(k, v)| (k.as_str(), *v)).collect();
                    batches.push(rows(&cut));
                    start = end;
                }
                table.upsert(&batches).unwrap();
                let gone: Vec<String> = (0..next(3)).map(|_| format!("k{}", next(12))).collect();
                let gone_refs: Vec<&str> = gone.iter().map(String::as_str).collect();
                table.delete(&[keys(&gone_refs)]).unwrap();
                model.retain(|(k, _)| !gone.contains(k));
            }
            let restored = RestoredState {
                batches: table.rows(&schema()).unwrap(),
                schema: schema(),
                snapshot_epoch: 0,
                deltas: 0,
                chains: StateChains::default(),
            };
            let expected: Vec<(String, i64)> = model
                .iter()
                .flat_map(|(k, rows)| rows.iter().map(move |&v| (k.clone(), v)))
                .collect();
            assert_eq!(as_pairs(&restored), expected, "round {round}");
        }
    }

    /// A key that comes back later in the same file (not next to its
    /// earlier rows) adds to its unit, whether the unit was held before or
    /// made earlier in the same read batch, however the file is cut.
    #[test]
    fn a_key_repeated_within_one_file_adds_to_its_unit() {
        let file = [("a", 1), ("b", 2), ("a", 3)];
        for mask in [u64::MAX, 3, 0] {
            for held in [false, true] {
                for cut in [&[3][..], &[1, 2], &[2, 1]] {
                    let mut table = UnitTable::new(&schema(), 1).unwrap();
                    table.hash_mask = mask;
                    if held {
                        table.upsert(&[rows(&[("a", 0), ("c", 9)])]).unwrap();
                    }
                    let mut batches = Vec::new();
                    let mut at = 0;
                    for &n in cut {
                        batches.push(rows(&file[at..at + n]));
                        at += n;
                    }
                    table.upsert(&batches).unwrap();
                    let restored = RestoredState {
                        batches: table.rows(&schema()).unwrap(),
                        schema: schema(),
                        snapshot_epoch: 0,
                        deltas: 0,
                        chains: StateChains::default(),
                    };
                    let mut expected = vec![("a".to_string(), 1), ("a".to_string(), 3)];
                    if held {
                        expected.push(("c".to_string(), 9));
                    }
                    expected.push(("b".to_string(), 2));
                    assert_eq!(
                        as_pairs(&restored),
                        expected,
                        "mask {mask}, held {held}, cut {cut:?}"
                    );
                }
            }
        }
    }

    /// Keys of two nullable columns (NULL is a value of a key like any
    /// other), and a table without key columns (one unit).
    #[test]
    fn nullable_two_column_keys_and_keyless_tables() {
        let s = Arc::new(Schema::new(vec![
            Field::new("k1", DataType::Utf8, true),
            Field::new("k2", DataType::Int64, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let b = |r: &[(Option<&str>, Option<i64>, i64)]| {
            RecordBatch::try_new(
                Arc::clone(&s),
                vec![
                    Arc::new(StringArray::from(r.iter().map(|x| x.0).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(r.iter().map(|x| x.1).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(r.iter().map(|x| x.2).collect::<Vec<_>>())),
                ],
            )
            .unwrap()
        };
        let values = |t: UnitTable| -> Vec<i64> {
            t.rows(&s)
                .unwrap()
                .iter()
                .flat_map(|b| b.column(2).as_primitive::<Int64Type>().values().to_vec())
                .collect()
        };
        for mask in [u64::MAX, 3, 0] {
            let mut t = UnitTable::new(&s, 2).unwrap();
            t.hash_mask = mask;
            // (NULL, 1) is in both read batches of one file: rows 1 and 4.
            t.upsert(&[
                b(&[(None, Some(1), 1), (Some("a"), None, 2)]),
                b(&[(None, None, 3), (None, Some(1), 4)]),
            ])
            .unwrap();
            t.upsert(&[b(&[(None, None, 5)])]).unwrap();
            let keys = RecordBatch::try_new(
                Arc::new(Schema::new(s.fields()[..2].to_vec())),
                vec![
                    Arc::new(StringArray::from(vec![Some("a"), Some("a")])),
                    Arc::new(Int64Array::from(vec![None::<i64>, None])),
                ],
            )
            .unwrap();
            t.delete(&[keys]).unwrap();
            assert_eq!(values(t), vec![1, 4, 5], "mask {mask}");

            let mut t = UnitTable::new(&s, 0).unwrap();
            t.hash_mask = mask;
            t.upsert(&[b(&[(None, None, 1)]), b(&[(Some("x"), Some(2), 2)])])
                .unwrap();
            t.upsert(&[b(&[(Some("y"), None, 3)]), b(&[(None, None, 4)])])
                .unwrap();
            assert_eq!(values(t), vec![3, 4], "mask {mask}");
        }
    }

    #[tokio::test]
    async fn snapshots_and_deltas_restore_every_epoch() {
        let loc = Location::open("memory://state-deltas", &StoreOptions::default(), Create::Yes).unwrap();
        let ck = Checkpoint::new(loc);
        write(&ck, 1, StateKind::Snapshot, &[rows(&[("a", 1), ("b", 2)])], &[]).await;
        write(&ck, 2, StateKind::Delta, &[rows(&[("b", 20), ("c", 3)])], &[]).await;
        write(&ck, 3, StateKind::Delta, &[], &[keys(&["a"])]).await;
        let at = |e| {
            let ck = ck.clone();
            async move { as_pairs(&ck.restore_state("op", e).await.unwrap().unwrap()) }
        };
        assert_eq!(at(1).await, vec![("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(
            at(2).await,
            vec![("a".into(), 1), ("b".into(), 20), ("c".into(), 3)]
        );
        assert_eq!(at(3).await, vec![("b".into(), 20), ("c".into(), 3)]);
        write(&ck, 4, StateKind::Delta, &[rows(&[("d", 4)])], &[]).await;
        assert_eq!(at(4).await.len(), 3);
        // Pruning keeps what epochs from 2 on need.
        assert_eq!(ck.prune_state("op", 2).await.unwrap(), 0);
        write(&ck, 5, StateKind::Snapshot, &[rows(&[("e", 5)])], &[]).await;
        assert_eq!(ck.prune_state("op", 5).await.unwrap(), 4);
        assert_eq!(at(5).await, vec![("e".into(), 5)]);
    }

    /// An epoch's state files encoded together on several threads (one
    /// large file by columns, small ones side by side) are the files
    /// `write_state` writes one by one, in the order given, and restore.
    #[tokio::test]
    async fn state_files_encoded_on_several_threads_are_the_same_files() {
        let loc = Location::open("memory://state-threads", &StoreOptions::default(), Create::Yes).unwrap();
        let ck = Checkpoint::new(loc);
        let s = schema();
        let many = |from: i64, n: i64| -> RecordBatch {
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        (from..from + n).map(|i| format!("k{i}")),
                    )),
                    Arc::new(Int64Array::from_iter_values(from..from + n)),
                ],
            )
            .unwrap()
        };
        let large = [many(0, codec::PARALLEL_MIN_ROWS as i64 + 5)];
        let (a, b, c) = ([many(0, 9_000)], [many(9_000, 9_000)], [many(7, 3)]);
        let gone = [keys(&["k1", "k2"])];
        let specs: Vec<(&str, StateKind, &[RecordBatch], &[RecordBatch])> = vec![
            ("small-a", StateKind::Snapshot, &a[..], &[][..]),
            ("large", StateKind::Snapshot, &large[..], &[][..]),
            ("small-b", StateKind::Delta, &b[..], &gone[..]),
            ("small-c", StateKind::Snapshot, &c[..], &[][..]),
        ];
        let writes: Vec<(&str, StateWrite<'_>)> = specs
            .iter()
            .map(|(op, kind, up, del)| {
                (
                    *op,
                    StateWrite {
                        kind: *kind,
                        shard: ShardOf::WHOLE,
                        schema: &s,
                        unit_key_len: 1,
                        upserts: up,
                        deletes: del,
                        attempt: None,
                    },
                )
            })
            .collect();
        let one = ck.encode_states(3, &writes, 1).unwrap();
        for threads in [2, 3, 8] {
            let together = ck.encode_states(3, &writes, threads).unwrap();
            assert_eq!(together.len(), writes.len());
            for (x, y) in one.iter().zip(&together) {
                assert_eq!(x.name, y.name, "{threads} threads");
                assert!(
                    codec::contiguous(&x.payload) == codec::contiguous(&y.payload),
                    "{threads} threads wrote another {}",
                    x.name
                );
            }
        }
        for e in ck.encode_states(3, &writes, 2).unwrap() {
            ck.put_state(e).await.unwrap();
        }
        let large_rows = ck
            .restore_state("large", 3)
            .await
            .unwrap()
            .unwrap()
            .batches
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>();
        assert_eq!(large_rows, codec::PARALLEL_MIN_ROWS + 5);
        let restored = as_pairs(&ck.restore_state("small-c", 3).await.unwrap().unwrap());
        assert_eq!(
            restored,
            vec![("k7".into(), 7), ("k8".into(), 8), ("k9".into(), 9)]
        );
    }

    /// Operator `op` restored as of `epoch` from `listed`: its (key,
    /// value) pairs sorted, and the restored state.
    async fn restored_pairs(
        ck: &Checkpoint,
        epoch: u64,
        listed: &BTreeMap<String, StateChains>,
    ) -> (Vec<(String, i64)>, RestoredState) {
        let r = ck
            .restore_state_listed("op", epoch, Some(listed))
            .await
            .unwrap()
            .unwrap();
        let mut got = as_pairs(&r);
        got.sort();
        (got, r)
    }

    /// Why restoring operator `op` as of `epoch` from `listed` fails.
    async fn restore_error(ck: &Checkpoint, epoch: u64, listed: &BTreeMap<String, StateChains>) -> String {
        ck.restore_state_listed("op", epoch, Some(listed))
            .await
            .unwrap_err()
            .to_string()
    }

    async fn write_shard(ck: &Checkpoint, epoch: u64, kind: StateKind, shard: ShardOf, up: &[RecordBatch]) {
        let s = schema();
        let w = StateWrite {
            kind,
            shard,
            schema: &s,
            unit_key_len: 1,
            upserts: up,
            deletes: &[],
            attempt: None,
        };
        ck.write_state("op", epoch, w).await.unwrap();
    }

    /// A state file an executor reported is checked before a commit names
    /// it: there at its size, or the commit is refused (an executor writing
    /// to another store left commits naming files no restore could find).
    #[tokio::test]
    async fn a_reported_state_file_must_be_in_the_checkpoint_at_its_size() {
        let loc = Location::open("memory://state-reported", &StoreOptions::default(), Create::Yes).unwrap();
        let ck = Checkpoint::new(loc);
        let s = schema();
        let up = vec![rows(&[("a", 1)])];
        let w = StateWrite {
            kind: StateKind::Delta,
            shard: ShardOf::new(1, 2),
            schema: &s,
            unit_key_len: 1,
            upserts: &up,
            deletes: &[],
            attempt: Some("a1"),
        };
        let bytes = ck.write_state("op", 5, w).await.unwrap();
        let check = |epoch: u64, shard: usize, attempt: &'static str, bytes: u64| {
            let ck = &ck;
            async move {
                ck.check_reported_state(
                    "op",
                    epoch,
                    StateKind::Delta,
                    ShardOf::new(shard, 2),
                    attempt,
                    bytes,
                )
                .await
            }
        };
        check(5, 1, "a1", bytes).await.unwrap();
        for (epoch, shard, attempt) in [(5, 0, "a1"), (5, 1, "a2"), (6, 1, "a1")] {
            let e = check(epoch, shard, attempt, bytes).await.unwrap_err().to_string();
            assert!(e.contains("does every executor reach the same store"), "{e}");
        }
        let e = check(5, 1, "a1", bytes + 1).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "has {bytes} bytes where its executor reported {}",
                bytes + 1
            )),
            "{e}"
        );
    }

    /// Files named after attempts: two attempts of one shard's task may
    /// both write its file of an epoch; the commit names one, and only
    /// that one is read back (the other, and a late write by a third, stay
    /// unread until pruned).
    #[tokio::test]
    async fn a_commit_names_the_attempt_whose_state_file_counts() {
        let loc = Location::open("memory://state-attempts", &StoreOptions::default(), Create::Yes).unwrap();
        let ck = Checkpoint::new(loc);
        let s = schema();
        let put =
            |epoch: u64, kind: StateKind, shard: ShardOf, attempt: &'static str, up: Vec<RecordBatch>| {
                let (ck, s) = (&ck, &s);
                async move {
                    let w = StateWrite {
                        kind,
                        shard,
                        schema: s,
                        unit_key_len: 1,
                        upserts: &up,
                        deletes: &[],
                        attempt: Some(attempt),
                    };
                    ck.write_state("op", epoch, w).await.unwrap();
                }
            };
        let (s0, s1) = (ShardOf::new(0, 2), ShardOf::new(1, 2));
        put(3, StateKind::Snapshot, s0, "a1", vec![rows(&[("a", 1)])]).await;
        put(3, StateKind::Snapshot, s1, "b1", vec![rows(&[("b", 2)])]).await;
        put(4, StateKind::Delta, s1, "c1", vec![rows(&[("b", 20)])]).await;
        put(4, StateKind::Delta, s1, "c2", vec![rows(&[("b", 21)])]).await;
        // One shard of one, named after its attempt.
        put(
            4,
            StateKind::Snapshot,
            ShardOf::WHOLE,
            "d1",
            vec![rows(&[("q", 0)])],
        )
        .await;
        let files = ck.state_files("op").await.unwrap();
        let attempts: Vec<&str> = files.iter().filter_map(|f| f.attempt.as_deref()).collect();
        assert_eq!(attempts, ["a1", "b1", "d1", "c1", "c2"], "{files:?}");
        let chains = |delta_attempt: &str| StateChains {
            shards: vec![vec![3], vec![3, 4]],
            generation: 0,
            attempts: BTreeMap::from([
                (attempt_key(0, 3), "a1".to_string()),
                (attempt_key(1, 3), "b1".to_string()),
                (attempt_key(1, 4), delta_attempt.to_string()),
            ]),
        };
        for (attempt, b) in [("c1", 20), ("c2", 21)] {
            let listed = BTreeMap::from([("op".to_string(), chains(attempt))]);
            let (got, r) = restored_pairs(&ck, 4, &listed).await;
            assert_eq!(got, vec![("a".into(), 1), ("b".into(), b)], "{attempt}");
            // The restored chains name the same files, attempts and all.
            assert_eq!(r.chains, chains(attempt));
        }
        // An attempt no file has is a named file gone.
        let listed = BTreeMap::from([("op".to_string(), chains("c3"))]);
        let err = restore_error(&ck, 4, &listed).await;
        assert!(
            err.contains("00000000000000000004.delta.1-of-2.c3.parquet"),
            "{err}"
        );
        // One shard alone, from its own files only: shard 1 restores with
        // shard 0's file gone, and a shard the commit does not list is an
        // error.
        let pairs = |b: &[RecordBatch]| {
            let s = schema();
            let r = RestoredState {
                batches: b.to_vec(),
                schema: s,
                snapshot_epoch: 0,
                deltas: 0,
                chains: StateChains::default(),
            };
            as_pairs(&r)
        };
        let (_, b) = ck.restore_shard("op", &chains("c2"), 0).await.unwrap();
        assert_eq!(pairs(&b), vec![("a".into(), 1)]);
        let shard0 = Checkpoint::state_file_name("op", 3, StateKind::Snapshot, s0, Some("a1"));
        let moved = format!("{shard0}.away");
        ck.location().rename(&shard0, &moved).await.unwrap();
        let (_, b) = ck.restore_shard("op", &chains("c2"), 1).await.unwrap();
        assert_eq!(pairs(&b), vec![("b".into(), 21)]);
        let err = ck
            .restore_shard("op", &chains("c2"), 0)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("0-of-2.a1.parquet"), "{err}");
        let err = ck
            .restore_shard("op", &chains("c2"), 2)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shard 2 asked for, but the commit lists 2 shard(s)"),
            "{err}"
        );
        ck.location().rename(&moved, &shard0).await.unwrap();
        // The chains as `commits/N.json` holds them.
        let json = serde_json::to_string(&chains("c2")).unwrap();
        assert_eq!(
            json,
            r#"{"shards":[[3],[3,4]],"attempts":{"0/3":"a1","1/3":"b1","1/4":"c2"}}"#
        );
        assert_eq!(serde_json::from_str::<StateChains>(&json).unwrap(), chains("c2"));
        // A name that is not an attempt's is refused before anything is written.
        let up = [rows(&[("x", 1)])];
        let w = StateWrite {
            kind: StateKind::Delta,
            shard: s0,
            schema: &s,
            unit_key_len: 1,
            upserts: &up,
            deletes: &[],
            attempt: Some("../x"),
        };
        assert!(ck.write_state("op", 5, w).await.is_err());
        assert_eq!(ck.state_files("op").await.unwrap().len(), 5);
    }

    /// Shards' chains named by a commit are restored by name and unioned;
    /// files the commit does not name (a crashed attempt's, another shard
    /// count's) are not read, and a named file that is gone is reported.
    #[tokio::test]
    async fn shard_chains_named_by_a_commit_are_what_restores() {
        let loc = Location::open("memory://state-shards", &StoreOptions::default(), Create::Yes).unwrap();
        let ck = Checkpoint::new(loc);
        let (s0, s1) = (ShardOf::new(0, 2), ShardOf::new(1, 2));
        write_shard(&ck, 3, StateKind::Snapshot, s0, &[rows(&[("a", 1)])]).await;
        write_shard(&ck, 3, StateKind::Snapshot, s1, &[rows(&[("b", 2)])]).await;
        write_shard(&ck, 4, StateKind::Delta, s1, &[rows(&[("b", 20), ("c", 3)])]).await;
        // Never committed: a later attempt under three threads.
        write_shard(
            &ck,
            5,
            StateKind::Snapshot,
            ShardOf::new(0, 3),
            &[rows(&[("z", 9)])],
        )
        .await;
        write(&ck, 5, StateKind::Snapshot, &[rows(&[("y", 8)])], &[]).await;
        let names: Vec<String> = ck
            .state_files("op")
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(
            names,
            vec![
                "state/op/00000000000000000003.snapshot.0-of-2.parquet",
                "state/op/00000000000000000003.snapshot.1-of-2.parquet",
                "state/op/00000000000000000004.delta.1-of-2.parquet",
                "state/op/00000000000000000005.snapshot.parquet",
                "state/op/00000000000000000005.snapshot.0-of-3.parquet",
            ]
        );
        let chains = StateChains {
            shards: vec![vec![3], vec![3, 4]],
            generation: 0,
            attempts: BTreeMap::new(),
        };
        let listed = BTreeMap::from([("op".to_string(), chains.clone())]);
        let (got, r) = restored_pairs(&ck, 4, &listed).await;
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 20), ("c".into(), 3)]);
        assert_eq!((r.snapshot_epoch, r.deltas, r.chains), (3, 1, chains));
        // An operator the commit does not name has no state.
        let none = BTreeMap::new();
        assert!(
            ck.restore_state_listed("op", 4, Some(&none))
                .await
                .unwrap()
                .is_none()
        );
        // Pruning from epoch 5 keeps only epoch 5's snapshots.
        assert_eq!(ck.prune_state("op", 5).await.unwrap(), 3);
        let err = restore_error(&ck, 4, &listed).await;
        assert!(
            err.contains("00000000000000000003.snapshot.0-of-2.parquet"),
            "{err}"
        );
    }

    #[test]
    fn state_file_names_parse_back() {
        for shard in [ShardOf::WHOLE, ShardOf::new(0, 2), ShardOf::new(6, 7)] {
            for kind in [StateKind::Snapshot, StateKind::Delta] {
                for attempt in [None, Some("k3v9"), Some("Z")] {
                    let name = Checkpoint::state_file_name("op", 42, kind, shard, attempt);
                    let file = name.rsplit('/').next().unwrap();
                    assert_eq!(
                        Checkpoint::parse_state_file_name(file),
                        Some((42, kind, shard, attempt.map(str::to_string))),
                        "{name}"
                    );
                }
            }
        }
        // One shard's file named after an attempt keeps its shard part.
        assert!(
            Checkpoint::state_file_name("op", 7, StateKind::Delta, ShardOf::WHOLE, Some("a1"))
                .ends_with("00000000000000000007.delta.0-of-1.a1.parquet")
        );
        for bad in [
            "7.snapshot.2-of-2.parquet",
            "7.snapshot.0-of-1.parquet",
            "7.delta.x.parquet",
            "7.delta.0-of-2.extra-.parquet",
            "7.delta.0-of-2.a.b.parquet",
            "7.delta.1-of-1.a.parquet",
            "7.delta.0-of-0.a.parquet",
            "7.full.parquet",
        ] {
            assert_eq!(Checkpoint::parse_state_file_name(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_delta_without_a_snapshot_is_reported() {
        let loc = Location::open(
            "memory://state-orphan-delta",
            &StoreOptions::default(),
            Create::Yes,
        )
        .unwrap();
        let ck = Checkpoint::new(loc);
        write(&ck, 7, StateKind::Delta, &[rows(&[("a", 1)])], &[]).await;
        let err = ck.restore_state("op", 7).await.unwrap_err().to_string();
        assert!(
            err.contains("00000000000000000007.delta.parquet") && err.contains("epoch 7"),
            "{err}"
        );
    }
}
