//! The checkpoint's lease: which process may write it.
//!
//! ```text
//! <checkpoint>/lease/<generation:020>.json   {"generation": 3, "owner": "...", "host": "...",
//!                                             "pid": 4242, "expires_at_ms": ..., "released": false}
//! ```
//!
//! The lease is the file with the highest generation. A process takes it by
//! creating generation + 1 with create-if-absent, so of two successors only
//! one wins; the owner renews it by rewriting its own file (no one else
//! writes that file). Before committing an epoch the owner checks that no
//! higher generation exists: a process that lost its lease (it stalled past
//! the expiry and was replaced) stops instead of committing. This needs
//! nothing of the store but atomic puts and create-if-absent.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Checkpoint, Error, FORMAT_VERSION, Result};

/// One generation of the lease.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Format version.
    pub version: u32,
    /// The generation (its file name).
    pub generation: u64,
    /// A random id of the owning instance.
    pub owner: String,
    /// The owner's host.
    pub host: String,
    /// The owner's process id.
    pub pid: u32,
    /// When the owner took the lease (RFC 3339).
    pub acquired_at: String,
    /// When it lapses unless renewed (ms since the Unix epoch).
    pub expires_at_ms: i64,
    /// Whether the owner let go of it (a clean stop).
    pub released: bool,
}

impl Checkpoint {
    fn lease_name(generation: u64) -> String {
        format!("lease/{generation:020}.json")
    }

    /// The generations with a lease file, ascending.
    pub async fn lease_generations(&self) -> Result<Vec<u64>> {
        let mut gens = Vec::new();
        for meta in self.location().list("lease").await? {
            let name = self.location().relative(&meta.location);
            let file = name.rsplit('/').next().unwrap_or(&name);
            match file.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()) {
                Some(g) => gens.push(g),
                None => {
                    return Err(Error::Corrupt {
                        url: self.location().url_of(&name),
                        epoch: None,
                        reason:
                            "unexpected file among lease files (only NNN.json files belong there); move it \
                                 out of the folder and run again"
                                .into(),
                    });
                }
            }
        }
        gens.sort_unstable();
        Ok(gens)
    }

    /// The current lease (the highest generation), if any.
    pub async fn current_lease(&self) -> Result<Option<LeaseRecord>> {
        let Some(&g) = self.lease_generations().await?.last() else {
            return Ok(None);
        };
        let name = Self::lease_name(g);
        let url = self.location().url_of(&name);
        let Some(bytes) = self.location().get(&name).await? else {
            return Ok(None);
        };
        let rec: LeaseRecord = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            url: url.clone(),
            epoch: None,
            reason: format!(
                "not a lease record: {e}; a lease file only says which process runs the job, so when none \
                 runs on this checkpoint, delete it and run again"
            ),
        })?;
        if rec.version > FORMAT_VERSION {
            return Err(Error::FutureVersion {
                url,
                epoch: None,
                found: rec.version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(Some(rec))
    }

    fn encode_lease(&self, rec: &LeaseRecord) -> Result<Bytes> {
        serde_json::to_vec_pretty(rec)
            .map(Bytes::from)
            .map_err(|e| Error::Corrupt {
                url: self.location().url_of(&Self::lease_name(rec.generation)),
                epoch: None,
                reason: e.to_string(),
            })
    }

    /// Creates a generation of the lease; fails with
    /// [`Error::AlreadyExists`] if another process created it first.
    pub async fn create_lease(&self, rec: &LeaseRecord) -> Result<()> {
        let bytes = self.encode_lease(rec)?;
        self.location()
            .put_if_absent(&Self::lease_name(rec.generation), bytes)
            .await
    }

    /// Rewrites the owner's own generation (renewal, release).
    pub async fn write_lease(&self, rec: &LeaseRecord) -> Result<()> {
        let bytes = self.encode_lease(rec)?;
        self.location()
            .put(&Self::lease_name(rec.generation), bytes)
            .await
    }

    /// Deletes lease files of generations before `generation`.
    pub async fn prune_leases(&self, generation: u64) -> Result<()> {
        for g in self.lease_generations().await? {
            if g < generation {
                self.location().delete(&Self::lease_name(g)).await?;
            }
        }
        Ok(())
    }
}
