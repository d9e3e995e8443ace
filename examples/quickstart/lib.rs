//! Member crate that holds the quickstart, the README's first command:
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! It is a package of its own, apart from `tower-quota-examples`, so that
//! its first build compiles only what the quickstart uses.
