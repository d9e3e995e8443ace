//! Member crate that holds cross-crate integration tests; see `tests/`.
