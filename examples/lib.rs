//! Member crate that holds the runnable examples; see the `[[example]]` targets.
//!
//! The integration examples are also modules of this library, so that the
//! test suite (`tests/tests/examples.rs`) runs each one and checks its
//! outcome: every example file has a `run(options)` that returns a summary,
//! and a `main` that parses flags, runs it and prints the summary. Built as
//! a module, that `main` is unused.

// The examples name this library `tower_quota_examples`, as a binary does.
extern crate self as tower_quota_examples;

pub mod common;

#[path = "axum_proxy.rs"]
#[allow(dead_code, reason = "`main` is the example's entry point, unused here")]
pub mod axum_proxy;
#[path = "hyper_client.rs"]
#[allow(dead_code, reason = "`main` is the example's entry point, unused here")]
pub mod hyper_client;
#[path = "ingest.rs"]
#[allow(dead_code, reason = "`main` is the example's entry point, unused here")]
pub mod ingest;
#[path = "reqwest_client.rs"]
#[allow(dead_code, reason = "`main` is the example's entry point, unused here")]
pub mod reqwest_client;
#[path = "tonic_client.rs"]
#[allow(dead_code, reason = "`main` is the example's entry point, unused here")]
pub mod tonic_client;
