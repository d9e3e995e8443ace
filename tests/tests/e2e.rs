//! The end-to-end tests of the workspace, one module per file beside this
//! one, built as one test binary: each file built as a binary of its own
//! linked the whole HTTP stack again. The stack's fuzz test
//! (`fuzz_stack.rs`) stays a binary of its own: `scripts/fuzz` runs it, and
//! its saved cases are kept by its path.

mod support;

mod backoff_e2e;
mod batch_e2e;
mod calibration_e2e;
mod circuit_breaker_e2e;
mod coalesce_e2e;
mod concurrency_e2e;
mod connections_e2e;
mod examples;
mod json_log;
mod network_e2e;
mod retry_after_e2e;
mod scripts;
mod shapes_e2e;
mod sliding_window_e2e;
mod telemetry;
mod weighted_e2e;
