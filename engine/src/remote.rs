//! Reading an epoch's input elsewhere: on a cluster's executors
//! (`weir run --cluster`), through a [`RemoteReader`] the caller supplies
//! (the `cluster` crate's, on Ballista), so the engine never depends on a
//! cluster.
//!
//! The driver keeps the protocol: it plans each epoch's offsets, writes
//! them ahead, advances the watermarks, runs the operators, stages the
//! output, checkpoints and commits, as in a local run. Only the reading and
//! decoding of the input moves: the source cuts the epoch's offset into
//! parts ([`Source::remote_parts`], one per file for a folder), executors
//! read the parts ([`read_remote_part`]) from the source's own store, and
//! the source puts the rows back together in offset order
//! ([`Source::assemble_remote`]), giving exactly the rows, and the
//! progress, a local read of the offset gives. A replayed epoch is read the
//! same way, so the output does not depend on where an epoch was read.
//!
//! [`Source::remote_parts`]: crate::source::Source::remote_parts
//! [`Source::assemble_remote`]: crate::source::Source::assemble_remote
//! [`read_remote_part`]: crate::source::read_remote_part

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use serde_json::Value;
use weir_sql::TableDecl;

use crate::Result;

/// One source's share of an epoch, to be read elsewhere.
#[derive(Clone, Debug)]
pub struct RemoteRead {
    /// The source's declaration (its options name the store; credentials
    /// among them travel to the executors, never into text).
    pub table: TableDecl,
    /// The declared columns to read, as [`crate::source::Source::set_columns`].
    pub columns: Vec<usize>,
    /// The offset's parts, from [`crate::source::Source::remote_parts`].
    pub parts: Vec<Value>,
}

/// Reads the parts of an offset somewhere else.
#[async_trait]
pub trait RemoteReader: Send + Sync {
    /// Each part's batches, in part order (an empty list for a part
    /// without rows), each part's in the order it was read.
    async fn read(&self, read: RemoteRead) -> Result<Vec<Vec<RecordBatch>>>;
    /// Where it reads, for messages (`the cluster at http://...`).
    fn describe(&self) -> String;
}
