//! Member crate that holds the runnable examples; see the `[[example]]` targets.
