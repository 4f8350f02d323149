//! The engine's integration tests, in-process against the public API.
//!
//! They are modules of one test binary, not one binary per file: each test
//! binary links all of DataFusion (about 250 MB in a debug build), so one
//! binary instead of six saves CI a gigabyte of disk and five link steps.
//! Run one group with a filter: `cargo test -p weir-engine --test engine --
//! conformance::`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod aggregates;
mod common;
mod conformance;
mod lease;
mod live;
mod panics;
mod random_queries;
