//! Weir's engine: the micro-batch driver, sources and sinks, stateful
//! operators and watermarks.
//!
//! The `sql` crate turns a job into incremental logical plans; this crate
//! plans them physically with DataFusion (adding its own operators for the
//! streaming nodes) and runs them epoch by epoch against a checkpoint
//! (see [`driver`] for the protocol and the recovery algorithm).
//!
//! Contract: the engine reads no environment and prints nothing; what it
//! has to say goes out through [`EpochHooks`] and [`RunSummary`] (the `cli`
//! crate prints). It depends on `sql` (plans) and `storage` (everything
//! persisted), never the other way.
//!
//! ```text
//!  driver/     one file per stage of the epoch protocol:
//!              options (Trigger, JobOptions, progress), open (a job from its
//!              SQL), recovery, epoch (run_epoch's named steps), retention,
//!              explain (EXPLAIN's rendering)
//!  compat/     a changed query against its checkpoint: the rules, operators'
//!              signatures, checkpoint claims and job records
//!  exec/       physical operators; stateful ones are an EpochOperator inside
//!              the one OperatorExec node (exec/operator.rs), checkpointed
//!              through StatefulOperator
//!  source/     replayable sources: files (formats/: conform, Parquet, CSV,
//!              JSON), the Nexmark generator; bad-record handling
//!  sink.rs     idempotent Parquet sinks (staged, published on commit), live
//!              output; dead_letter.rs: rows a source could not read
//!  folders.rs  who owns a sink folder; lease.rs: one running job per
//!              checkpoint; options.rs: table options shared by sources and
//!              sinks; admin.rs: `weir checkpoint` inspect and rollback
//! ```

pub mod admin;
pub mod compat;
pub mod dead_letter;
pub mod driver;
pub mod epoch;
pub mod error;
pub mod exec;
pub mod folders;
pub mod kafka_sink;
pub mod lease;
pub mod options;
pub mod panics;
pub mod remote;
pub mod sink;
pub mod source;

pub use driver::{
    BatchProgress, EpochHooks, JobOptions, OperatorProgress, RunSummary, SinkProgress, SourceProgress,
    Standing, Step, StreamingJob, Trigger,
};
pub use error::{Error, Result};
pub use lease::LeaseOwner;
pub use sink::{LiveBatch, LiveSender};
pub use source::{Amount, Backlog};
