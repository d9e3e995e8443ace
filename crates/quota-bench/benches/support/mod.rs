//! What every bench binary shares: a counting global allocator, and the
//! allocations of a row written beside criterion's estimates.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::Criterion;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// Every allocation counted, so that each row also reports allocations and
/// bytes per iteration.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Every group's settings, which `quota-bench micro` states above its
/// tables: warm-up 1 s, 3 s of measurement, 30 samples.
pub(crate) fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// Iterations over which allocations are averaged.
const COUNTED: u32 = 1_000;

/// Runs `routine` [`COUNTED`] times (after a few to warm caches and maps
/// up), prints the allocations and allocated bytes per run, and writes
/// them to `criterion/<group>/<bench>/allocations.json`, which
/// `quota-bench micro` puts beside the time.
pub(crate) fn count_allocations<O>(group: &str, bench: &str, mut routine: impl FnMut() -> O) {
    for _ in 0..16 {
        black_box(routine());
    }
    let region = Region::new(GLOBAL);
    for _ in 0..COUNTED {
        black_box(routine());
    }
    let change = region.change();
    let per_run =
        |count: usize| f64::from(u32::try_from(count).unwrap_or(u32::MAX)) / f64::from(COUNTED);
    let (allocations, bytes) = (per_run(change.allocations), per_run(change.bytes_allocated));
    println!("{group}/{bench}: {allocations} allocations, {bytes} bytes per iteration");
    let dir = criterion_dir().join(group).join(bench);
    let json = format!("{{\"allocations\": {allocations}, \"bytes\": {bytes}}}\n");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("allocations.json"), json);
    }
}

/// Where criterion writes: `$CARGO_TARGET_DIR/criterion`, or the
/// workspace's `target/criterion`.
fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("criterion")
}
