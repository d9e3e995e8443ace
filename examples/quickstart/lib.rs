//! Member crate that holds the quickstart, the README's first command:
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! It is a package of its own, apart from `tower-quota-examples`, so that
//! its first build compiles only what the quickstart uses. The library holds
//! what the quickstart and the other examples share: how they show a
//! measured duration.

use std::time::Duration;

/// `duration` in humantime's format (`2s 13ms`, `850us`), rounded to the
/// millisecond from 1 ms up and to the microsecond below, so that a measured
/// duration does not print as `2.013590425s`.
///
/// ```
/// use std::time::Duration;
/// use tower_quota_quickstart::human;
///
/// assert_eq!(human(Duration::from_nanos(2_013_590_425)).to_string(), "2s 14ms");
/// assert_eq!(human(Duration::from_nanos(850_400)).to_string(), "850us");
/// ```
pub fn human(duration: Duration) -> humantime::FormattedDuration {
    let unit = if duration >= Duration::from_millis(1) {
        Duration::from_millis(1)
    } else {
        Duration::from_micros(1)
    };
    humantime::format_duration(round(duration, unit))
}

/// `duration` rounded to the nearest multiple of `unit`, saturating.
fn round(duration: Duration, unit: Duration) -> Duration {
    let unit_ns = unit.as_nanos();
    let units = (duration.as_nanos() + unit_ns / 2) / unit_ns;
    let nanos = units.saturating_mul(unit_ns);
    Duration::new(
        u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX),
        (nanos % 1_000_000_000) as u32,
    )
}
