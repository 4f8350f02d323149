//! End-to-end tests: each drives the real `weir` binary (and, for some, a
//! moto S3 server, a Kafka-protocol broker or a Ballista cluster on
//! loopback).
//!
//! They are modules of one test binary, not one binary per file: each test
//! binary links all of DataFusion and Ballista (about 300 MB in a debug
//! build), so one binary instead of twelve saves CI over 3 GB of disk and
//! eleven link steps. Run one group with a filter, e.g.
//! `cargo test -p weir-cli --test end_to_end -- crash::`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod bad_records;
mod checkpoints;
mod cluster;
mod common;
mod crash;
mod day_one;
mod e2e;
mod faults;
mod kafka;
mod metrics;
mod nexmark;
mod s3;
mod shell;
