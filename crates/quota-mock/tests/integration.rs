//! quota-mock's integration tests, one module per file beside this one,
//! built as one test binary (one link, not one per file).

mod common;

mod costs;
mod dialects;
mod faults;
mod h2c;
mod keys;
mod lifecycle;
mod network;
mod quota;
mod stats;
