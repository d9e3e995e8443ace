//! The scenario runner of `quota-bench`: tower-quota side by side with
//! tower, governor and tower-resilience, measured where a provider measures
//! it.
//!
//! ```text
//! cargo run --release -p quota-bench -- scenarios   # saturation, bursts, Redis workers, retry spread
//! cargo run --release -p quota-bench -- network     # the README stack across a simulated network, per admission mode
//! cargo run --release -p quota-bench -- shapes      # every provider shape × every limiter, at 20/s and 100/s
//! cargo run --release -p quota-bench -- phases      # a provider's rate changes 30 → 15 → 45/s unannounced
//! cargo run --release -p quota-bench -- memory      # bytes per key, in process and in Redis
//! cargo run --release -p quota-bench -- idle-memory # a million keys in each keyed map, given back after idleness
//! cargo bench -p quota-bench                        # criterion micro-benchmarks, then:
//! cargo run --release -p quota-bench -- micro       # their table, from target/criterion
//! ```
//!
//! Each command writes its section under `crates/quota-bench/results/` and
//! rebuilds `crates/quota-bench/RESULTS.md` from every section present; the
//! scenarios also draw `timeline.svg` and `retry_cdf.svg` beside it, and
//! `shapes` draws `shapes.svg`.

use std::process::ExitCode;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tower_quota::BoxError;

mod idle_memory;
mod limiters;
mod memory;
mod micro;
mod network;
mod phases;
mod plot;
mod poll;
mod priority;
mod redis_server;
mod results;
mod scenarios;
mod shapes;
mod spread;

// Counts every allocation, so `memory` can tell bytes per key.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const USAGE: &str = "usage: quota-bench scenarios | network | shapes | phases | priority | memory | idle-memory | micro";

fn main() -> Result<ExitCode, BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("scenarios") => runtime.block_on(scenarios::run())?,
        Some("memory") => runtime.block_on(memory::run())?,
        Some("micro") => micro::run()?,
        Some("idle-memory") => runtime.block_on(idle_memory::run())?,
        Some("network") => runtime.block_on(network::run())?,
        Some("shapes") => runtime.block_on(shapes::run())?,
        Some("phases") => runtime.block_on(phases::run())?,
        Some("priority") => runtime.block_on(priority::run())?,
        // A Redis worker process, started by `scenarios`.
        Some("worker") => runtime.block_on(scenarios::worker(&args[1..]))?,
        _ => {
            eprintln!("{USAGE}");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}
