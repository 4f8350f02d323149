//! Weir's engine: the micro-batch driver, sources and sinks, stateful
//! operators and watermarks.
//!
//! The `sql` crate turns a job into incremental logical plans; this crate
//! plans them physically with DataFusion (adding its own operators for the
//! streaming nodes) and runs them epoch by epoch against a checkpoint
//! (see [`driver`] for the protocol and the recovery algorithm).

pub mod admin;
pub mod compat;
pub mod dead_letter;
pub mod driver;
pub mod epoch;
pub mod error;
pub mod exec;
pub mod folders;
pub mod lease;
pub mod options;
pub mod panics;
pub mod sink;
pub mod source;

pub use driver::{BatchProgress, EpochHooks, JobOptions, RunSummary, Step, StreamingJob, Trigger};
pub use error::{Error, Result};
pub use lease::LeaseOwner;
pub use sink::{LiveBatch, LiveSender};
