//! Weir's on-store layout, and nothing of SQL.
//!
//! Everything Weir persists goes through this crate, over the `object_store`
//! crate, so a local folder, S3 or an in-memory store behave the same:
//!
//! ```text
//! <checkpoint>/
//!   metadata.json                 query id, SQL (redacted), fingerprint, format version
//!   offsets/<epoch:020>.json      write-ahead log: what epoch N reads (written first)
//!   commits/<epoch:020>.json      epoch N is complete (created if absent, never replaced)
//!   state/<operator>/<epoch:020>.{snapshot,delta}[.<k>-of-<n>].parquet   operator state at epoch N (of shard k)
//!   _probe/<random>               briefly, while checking create-if-absent (below)
//!   rollback.json                 while `weir checkpoint rollback` deletes: {"to": N}
//!
//! <sink>/
//!   part-<epoch:010>-<writer>.parquet          committed output, one file per epoch and writer
//!   _weir/pending/<writer>/<file>.pending      output staged before the epoch commits
//!   _weir/manifests/<writer>/<epoch:020>.json  the files an epoch produced
//!   _weir/owner.json                           the checkpoint whose query writes here
//! ```
//!
//! The guarantees this crate needs from a store (and checks where it can):
//! a `put` is atomic (readers see the whole object or nothing), and
//! `PutMode::Create` fails when the object exists, so two writers cannot both
//! commit the same epoch. The second is checked before a checkpoint is
//! written ([`Location::verify_create_if_absent`]): a store that would
//! silently overwrite is refused rather than trusted.
//!
//! Stores fail transiently; every operation is retried with backoff
//! ([`retry`]), and [`faults`] injects failures to prove it.
//!
//! The logs' entries are typed here, beside the logs that store them
//! ([`log`]: [`OffsetsEntry`] in `offsets/`, [`CommitEntry`] in `commits/`);
//! how to reach a store (credentials, endpoint, retry limits) is
//! [`options`].

pub mod checkpoint;
pub mod codec;
pub mod durable;
pub mod faults;
pub mod lease;
pub mod location;
pub mod log;
pub mod options;
pub mod registry;
pub mod retry;
pub mod sink;
pub mod state;
#[cfg(test)]
mod testing;

pub use checkpoint::{Checkpoint, Metadata, OperatorRecord, SinkRecord, SourceRecord};
pub use location::{Location, StoreOptions};
pub use log::{CommitEntry, CommitLog, EpochLog, OffsetLog, OffsetsEntry};
pub use registry::StoreRegistry;
pub use sink::{ManifestFile, SinkLayout, SinkOwner};
pub use state::{EncodedState, RestoredState, ShardOf, StateChains, StateFile, StateKind, StateWrite};

/// The format version written into every file Weir persists. A reader refuses
/// files with a larger version instead of guessing at their meaning.
pub const FORMAT_VERSION: u32 = 1;

/// Errors from the storage layer. Messages name the object (and the epoch,
/// where there is one) so an operator can find the file in question.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed an operation on an object.
    ///
    /// The store's error is in the message, not a `source()`: its own
    /// message already holds its causes, and printing the chain of causes
    /// (as `weir` does) would repeat each of them.
    #[error("{op} {url}: {}", crate::retry::describe(.error))]
    Store {
        /// What was being done (`reading`, `writing`, `listing`, ...).
        op: &'static str,
        /// The object's URL.
        url: String,
        /// The store's error.
        error: object_store::Error,
    },
    /// A location string that cannot be opened.
    #[error("invalid location '{location}': {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A file Weir wrote earlier cannot be read back as it should be.
    #[error("corrupt {} file {url}{}: {reason}", file_kind(url), epoch_suffix(*.epoch))]
    Corrupt {
        /// The object's URL.
        url: String,
        /// The epoch the file belongs to, when it has one.
        epoch: Option<u64>,
        /// What is wrong with it.
        reason: String,
    },
    /// A file was written by a newer Weir than this one.
    #[error(
        "{url}{} has format version {found}, but this Weir reads versions up to {supported}; \
         use a newer Weir or a new checkpoint",
        epoch_suffix(*.epoch)
    )]
    FutureVersion {
        /// The object's URL.
        url: String,
        /// The epoch the file belongs to, when it has one.
        epoch: Option<u64>,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An object that must be created exactly once already exists: another
    /// writer got there first.
    #[error("{url} already exists: another writer has committed this epoch")]
    AlreadyExists {
        /// The object's URL.
        url: String,
    },
    /// A store that lacks a guarantee Weir relies on (found by checking it),
    /// refused rather than trusted.
    #[error("{url}: {reason}")]
    UnsafeStore {
        /// The location's URL.
        url: String,
        /// What is missing, why it matters, and what to do.
        reason: String,
    },
    /// Encoding or decoding Arrow data as Parquet failed.
    #[error("{url}: {reason}")]
    Parquet {
        /// The object's URL.
        url: String,
        /// The Parquet or Arrow error.
        reason: String,
    },
}

/// What kind of Weir file a URL names, for messages: a sink folder's own
/// files live under its `_weir/` (see `sink`); all others are a
/// checkpoint's.
fn file_kind(url: &str) -> &'static str {
    if url.contains("/_weir/") {
        "sink"
    } else {
        "checkpoint"
    }
}

fn epoch_suffix(epoch: Option<u64>) -> String {
    epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default()
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
