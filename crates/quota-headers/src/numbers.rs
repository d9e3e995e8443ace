//! Total number parsing shared by every dialect.
//!
//! Everything here works on integers (no floats), so there is no rounding, no
//! NaN and no infinity to guard against; every step is checked.

use std::cell::OnceCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Nanoseconds in one unit.
pub(crate) const NANOS_PER_MILLI: u128 = 1_000_000;
/// Nanoseconds in one second.
pub(crate) const NANOS_PER_SECOND: u128 = NANOS_PER_SEC;

/// Fractional digits beyond this many are ignored (truncated); with 18 digits
/// and the largest unit (an hour) every product still fits in a `u128`.
const MAX_FRACTION_DIGITS: usize = 18;

/// A Retry-After-style threshold: a reset at or above this many seconds is an
/// epoch timestamp (2001-09-09T01:46:40Z), below it a delta.
pub(crate) const EPOCH_THRESHOLD_SECS: u64 = 1_000_000_000;

/// The value as `&str` with optional whitespace trimmed, or `None` when it
/// holds anything but visible ASCII (obs-text, control bytes).
pub(crate) fn header_str(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok().map(trim_ows)
}

/// `text` without the optional whitespace (spaces and horizontal tabs,
/// RFC 9110 §5.6.3) around it. Byte by byte: both are ASCII, so every cut
/// falls on a character boundary.
pub(crate) fn trim_ows(text: &str) -> &str {
    let (start, end) = ows_bounds(text.as_bytes());
    text.get(start..end).unwrap_or_default()
}

/// Where the bytes between the optional whitespace around `bytes` start
/// and end.
fn ows_bounds(bytes: &[u8]) -> (usize, usize) {
    let is_ows = |byte: &u8| matches!(byte, b' ' | b'\t');
    let start = bytes
        .iter()
        .position(|byte| !is_ows(byte))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|byte| !is_ows(byte))
        .map_or(start, |last| last + 1);
    (start, end)
}

/// `1*DIGIT` as a `u64`; `None` on anything else (sign, dot, empty, overflow).
pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    parse_u64_bytes(text.as_bytes())
}

/// [`parse_u64`] of bytes.
fn parse_u64_bytes(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |total, &byte| {
        total.checked_mul(10)?.checked_add(u64::from(digit(byte)?))
    })
}

/// A value that is `1*DIGIT` between optional whitespace, as a `u64`:
/// `parse_u64(header_str(value)?)`, in one pass over the bytes. Digits and
/// the whitespace around them are visible ASCII or tabs, so a value that
/// parses here is one `header_str` accepts, and one it refuses does not
/// parse.
pub(crate) fn header_u64(value: &HeaderValue) -> Option<u64> {
    let bytes = value.as_bytes();
    let (start, end) = ows_bounds(bytes);
    parse_u64_bytes(bytes.get(start..end)?)
}

/// The value of an ASCII digit, `None` for any other byte.
fn digit(byte: u8) -> Option<u8> {
    let value = byte.wrapping_sub(b'0');
    (value <= 9).then_some(value)
}

/// `1*DIGIT [ "." 1*DIGIT ]` interpreted in units of `unit_nanos`
/// nanoseconds. Digits past the nanosecond are truncated.
pub(crate) fn parse_decimal(text: &str, unit_nanos: u128) -> Option<Duration> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let whole = parse_digits(whole)?;
    let mut nanos = whole.checked_mul(unit_nanos)?;
    if let Some(fraction) = fraction {
        nanos = nanos.checked_add(fraction_nanos(fraction, unit_nanos)?)?;
    }
    nanos_to_duration(nanos)
}

/// `1*DIGIT` as a `u128`, `None` on overflow or a non-digit.
pub(crate) fn parse_digits(text: &str) -> Option<u128> {
    // Up to 19 digits always fit a `u64`, whose arithmetic is cheaper: the
    // common case. Longer numbers go on in `u128`.
    let split = text.len().min(19);
    let (head, tail) = text.split_at_checked(split)?;
    let head = parse_u64(head)?;
    tail.bytes().try_fold(u128::from(head), |total, byte| {
        total.checked_mul(10)?.checked_add(u128::from(digit(byte)?))
    })
}

/// The value of `0.<fraction>` units in nanoseconds. `fraction` must be
/// `1*DIGIT`; digits past [`MAX_FRACTION_DIGITS`] only have to be digits.
pub(crate) fn fraction_nanos(fraction: &str, unit_nanos: u128) -> Option<u128> {
    if fraction.is_empty() || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let kept = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
    let numerator = parse_digits(kept)?;
    let denominator = 10u128.checked_pow(u32::try_from(kept.len()).ok()?)?;
    numerator.checked_mul(unit_nanos)?.checked_div(denominator)
}

/// A nanosecond count as a `Duration`, `None` past `Duration::MAX`.
pub(crate) fn nanos_to_duration(nanos: u128) -> Option<Duration> {
    // Up to 584 years the count fits a `u64`, whose division is cheap: the
    // common case.
    if let Ok(nanos) = u64::try_from(nanos) {
        return Some(Duration::from_nanos(nanos));
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, subsec))
}

/// How long from `reference` until `instant`; zero when it already passed.
pub(crate) fn until(instant: SystemTime, reference: SystemTime) -> Duration {
    instant.duration_since(reference).unwrap_or(Duration::ZERO)
}

/// The time absolute values are measured from: the response's `Date` when
/// it holds a valid HTTP-date, else the receive time `now`.
///
/// `Date` is parsed on first use, and the clock read only when there is no
/// valid `Date`, so a response whose values are all delays (delay-seconds,
/// `t`, Go durations, small resets) does neither.
pub(crate) struct Reference<'a> {
    now: &'a dyn Fn() -> SystemTime,
    date: Option<&'a HeaderValue>,
    time: OnceCell<SystemTime>,
}

impl std::fmt::Debug for Reference<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reference")
            .field("date", &self.date)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

/// The clock of a [`Reference::fixed`], never read: its time is set.
fn fixed_clock() -> SystemTime {
    SystemTime::UNIX_EPOCH
}

impl<'a> Reference<'a> {
    /// `date` (the response's first `Date` value) when valid, else what
    /// `now` reads.
    pub(crate) fn lazy(now: &'a dyn Fn() -> SystemTime, date: Option<&'a HeaderValue>) -> Self {
        Self {
            now,
            date,
            time: OnceCell::new(),
        }
    }

    /// Exactly `time`.
    pub(crate) fn fixed(time: SystemTime) -> Self {
        Self {
            now: &fixed_clock,
            date: None,
            time: OnceCell::from(time),
        }
    }

    pub(crate) fn get(&self) -> SystemTime {
        *self.time.get_or_init(|| {
            self.date
                .and_then(|value| value.to_str().ok())
                .and_then(|text| httpdate::parse_http_date(text.trim()).ok())
                .unwrap_or_else(self.now)
        })
    }
}

/// An epoch reset read as seconds that lies further than this past the
/// reference is implausible (epoch milliseconds lie tens of thousands of
/// years ahead when read as seconds).
const IMPLAUSIBLY_FAR: Duration = Duration::from_secs(1000 * 365 * 24 * 60 * 60);

/// How far before the reference a reset read as epoch milliseconds may lie
/// and still be taken for one (clock skew, a reset that just passed).
const MILLIS_PLAUSIBLE_BEFORE: Duration = Duration::from_secs(24 * 60 * 60);

/// How far after the reference a reset read as epoch milliseconds may lie
/// and still be taken for one: no quota window is longer than a year.
const MILLIS_PLAUSIBLE_AFTER: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Interprets a reset given in (possibly fractional) seconds that is either a
/// delta or a Unix epoch timestamp, by the [`EPOCH_THRESHOLD_SECS`] rule.
/// Epoch values are measured from `reference` (the response's `Date` when it
/// has one, else the caller's `now`).
///
/// An epoch in milliseconds sent where seconds belong is read as what it is:
/// when the value as epoch seconds lies more than 1,000 years after
/// `reference` but as epoch milliseconds within a day before to a year
/// after it, it is taken as milliseconds.
pub(crate) fn delta_or_epoch(seconds: Duration, reference: SystemTime) -> Option<Duration> {
    delta_or_epoch_from(seconds, &Reference::fixed(reference))
}

/// [`delta_or_epoch`], reading the reference time only for an epoch.
pub(crate) fn delta_or_epoch_from(
    seconds: Duration,
    reference: &Reference<'_>,
) -> Option<Duration> {
    if seconds.as_secs() < EPOCH_THRESHOLD_SECS {
        return Some(seconds);
    }
    let reference = reference.get();
    let instant = UNIX_EPOCH.checked_add(seconds)?;
    let delay = until(instant, reference);
    if delay > IMPLAUSIBLY_FAR
        && let Some(delay) = epoch_millis(seconds, reference)
    {
        return Some(delay);
    }
    Some(delay)
}

/// `value` (a count of seconds) read as epoch milliseconds: the delay from
/// `reference`, when that instant is a plausible reset.
fn epoch_millis(value: Duration, reference: SystemTime) -> Option<Duration> {
    let instant = UNIX_EPOCH.checked_add(nanos_to_duration(value.as_nanos() / 1000)?)?;
    let earliest = reference
        .checked_sub(MILLIS_PLAUSIBLE_BEFORE)
        .unwrap_or(UNIX_EPOCH);
    let latest = reference.checked_add(MILLIS_PLAUSIBLE_AFTER)?;
    (earliest..=latest)
        .contains(&instant)
        .then(|| until(instant, reference))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// An integer read from the bytes is the integer of the trimmed
        /// text, for any value: digits, whitespace, signs, obs-text and
        /// control bytes alike.
        #[test]
        fn an_integer_from_bytes_is_the_integer_of_the_text(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b' '), Just(b'\t'), Just(b'+'), Just(b'.'),
                    b'0'..=b'9', any::<u8>(),
                ],
                0..24,
            ),
        ) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                prop_assert_eq!(
                    header_u64(&value),
                    header_str(&value).and_then(parse_u64)
                );
            }
        }
    }

    #[test]
    fn integers_from_bytes() {
        for (text, expected) in [
            ("0", Some(0)),
            (" \t42\t ", Some(42)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("", None),
            ("  ", None),
            ("4 2", None),
            ("+1", None),
            ("1.0", None),
        ] {
            let value = HeaderValue::from_str(text).expect("a valid header value");
            assert_eq!(header_u64(&value), expected, "{text:?}");
        }
        let obs_text = HeaderValue::from_bytes(b"1\xff").expect("obs-text is allowed");
        assert_eq!(header_u64(&obs_text), None);
    }

    #[test]
    fn nanosecond_counts_on_both_sides_of_u64() {
        let most = u128::from(u64::MAX);
        assert_eq!(nanos_to_duration(0), Some(Duration::ZERO));
        assert_eq!(
            nanos_to_duration(most),
            Some(Duration::from_nanos(u64::MAX))
        );
        assert_eq!(
            nanos_to_duration(most + 1),
            Some(Duration::from_nanos(u64::MAX) + Duration::from_nanos(1))
        );
        let max = u128::from(u64::MAX) * NANOS_PER_SEC + 999_999_999;
        assert_eq!(nanos_to_duration(max), Some(Duration::MAX));
        assert_eq!(nanos_to_duration(max + 1), None);
    }

    #[test]
    fn decimal_truncates_past_the_nanosecond() {
        assert_eq!(
            parse_decimal("1.0000000019", NANOS_PER_SECOND),
            Some(Duration::new(1, 1))
        );
    }

    #[test]
    fn decimal_rejects_half_numbers() {
        for text in ["", ".", "1.", ".5", "-1", "+1", "1e3", "1.5.5", " 1"] {
            assert_eq!(parse_decimal(text, NANOS_PER_SECOND), None, "{text:?}");
        }
    }

    #[test]
    fn decimal_overflow_is_absent() {
        let huge = "9".repeat(40);
        assert_eq!(parse_decimal(&huge, NANOS_PER_SECOND), None);
        assert_eq!(
            parse_decimal("18446744073709551616", NANOS_PER_SECOND),
            None
        );
        assert_eq!(
            parse_decimal("18446744073709551615", NANOS_PER_SECOND),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn long_fractions_are_truncated_not_rejected() {
        let text = format!("0.5{}", "9".repeat(100));
        assert_eq!(
            parse_decimal(&text, NANOS_PER_SECOND),
            Some(Duration::from_nanos(599_999_999))
        );
    }

    #[test]
    fn an_epoch_in_milliseconds_read_as_seconds_is_taken_for_milliseconds() {
        let reference = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let secs = |s: u64| Duration::from_secs(s);
        // Epoch ms 60 s ahead, 1.5 s ahead, just passed, a day ahead.
        for (value, expected) in [
            (secs(1_700_000_060_000), secs(60)),
            (
                Duration::from_millis(1_700_000_001_500_000),
                Duration::from_millis(1500),
            ),
            (secs(1_699_999_990_000), Duration::ZERO),
            (secs(1_700_086_400_000), secs(86_400)),
        ] {
            assert_eq!(
                delta_or_epoch(value, reference),
                Some(expected),
                "{value:?}"
            );
        }
        // Epoch seconds stay seconds, however far: a 2099 reset is 76 years.
        let year_2099 = secs(4_070_908_800);
        assert_eq!(
            delta_or_epoch(year_2099, reference),
            Some(secs(4_070_908_800 - 1_700_000_000))
        );
        // Implausible either way (as ms two years ahead): read as seconds.
        let two_years_as_ms = secs((1_700_000_000 + 2 * 366 * 86_400) * 1000);
        assert_eq!(
            delta_or_epoch(two_years_as_ms, reference),
            Some(two_years_as_ms - secs(1_700_000_000))
        );
        // Near the ends of the types: no panic.
        for value in [Duration::MAX, secs(u64::MAX), secs(u64::MAX / 1000)] {
            let _ = delta_or_epoch(value, reference);
            let _ = delta_or_epoch(value, UNIX_EPOCH);
        }
    }

    #[test]
    fn u64_is_strict() {
        assert_eq!(parse_u64("42"), Some(42));
        for text in ["", "-1", "+1", "4 2", "1.0", "18446744073709551616"] {
            assert_eq!(parse_u64(text), None, "{text:?}");
        }
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("00000000000000000000007"), Some(7));
        assert_eq!(parse_u64("1/"), None, "the byte after '9' and before '0'");
        assert_eq!(parse_u64(":1"), None);
    }

    /// Digits are read in `u64` up to the 19th and in `u128` past it: the
    /// same value either side of the boundary, and overflow past `u128`.
    #[test]
    fn digits_agree_with_the_standard_parser_at_every_length() {
        for len in 1..=40 {
            let text = "9".repeat(len);
            assert_eq!(
                parse_digits(&text),
                text.parse::<u128>().ok(),
                "{len} digits"
            );
            let mixed: String = (0..len)
                .map(|i| char::from(b'0' + (i * 7 % 10) as u8))
                .collect();
            assert_eq!(parse_digits(&mixed), mixed.parse::<u128>().ok(), "{mixed}");
        }
        let digits = "1".repeat(30);
        for bad in [
            format!("{digits}x"),
            format!("x{digits}"),
            format!("{}.{}", &digits[..20], 1),
        ] {
            assert_eq!(parse_digits(&bad), None, "{bad}");
        }
        assert_eq!(parse_digits(""), None);
    }

    #[test]
    fn optional_whitespace_is_spaces_and_tabs_only() {
        assert_eq!(trim_ows(" \t 12 \t"), "12");
        assert_eq!(trim_ows("1 2"), "1 2");
        assert_eq!(trim_ows(" \t "), "");
        assert_eq!(trim_ows(""), "");
        assert_eq!(trim_ows("\u{b5}s "), "\u{b5}s");
        assert_eq!(trim_ows("\n1\r"), "\n1\r", "only OWS is trimmed");
    }
}
