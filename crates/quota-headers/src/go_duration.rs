//! Go `time.Duration` strings, as OpenAI sends in `x-ratelimit-reset-*`.

use std::time::Duration;

use crate::numbers;

/// Parses a Go duration string (`time.ParseDuration` syntax) such as `"1s"`,
/// `"6m0s"`, `"20ms"`, `"0.5s"` or `"1h2m3.5s"`.
///
/// Accepts a sequence of `decimal unit` pairs with units `ns`, `us`, `µs`,
/// `μs`, `ms`, `s`, `m`, `h`, an optional leading `+`, and the bare `"0"`.
/// Negative durations, unknown units, missing units, empty strings and sums
/// past `Duration::MAX` are absent. Digits past the nanosecond are truncated.
///
/// ```
/// use std::time::Duration;
///
/// assert_eq!(quota_headers::go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(quota_headers::go_duration("1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
/// assert_eq!(quota_headers::go_duration("-1s"), None);
/// ```
pub fn go_duration(text: &str) -> Option<Duration> {
    let text = numbers::trim_ows(text);
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    match whole_numbers(text) {
        Some(nanos) => Some(Duration::from_nanos(nanos)),
        None => scan(text),
    }
}

/// A sequence of `decimal unit` pairs, summed in `u128` arithmetic.
fn scan(text: &str) -> Option<Duration> {
    // Scanned byte by byte: a number is ASCII digits and dots, so each cut
    // between a number and a unit falls on a character boundary.
    let is_number = |byte: u8| byte.is_ascii_digit() || byte == b'.';
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .position(|byte| !is_number(byte))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at_checked(number_len)?;
        let unit_len = after.bytes().position(is_number).unwrap_or(after.len());
        let (unit, after) = after.split_at_checked(unit_len)?;
        let component = component_nanos(number, unit_nanos(unit)?)?;
        total = total.checked_add(component)?;
        rest = after;
    }
    numbers::nanos_to_duration(total)
}

/// The common forms (`"6ms"`, `"6m0s"`: whole numbers, each with its unit)
/// whose sum fits a `u64` of nanoseconds, summed in `u64` arithmetic, which
/// is cheaper. `None` for anything else, which [`go_duration`]'s general
/// scan decides: a fraction, a unit missing or unknown, a larger sum.
fn whole_numbers(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let mut total: u64 = 0;
    let mut at = 0;
    while at < bytes.len() {
        let number_start = at;
        let mut number: u64 = 0;
        while let Some(&byte) = bytes.get(at)
            && byte.is_ascii_digit()
        {
            number = number
                .checked_mul(10)?
                .checked_add(u64::from(byte - b'0'))?;
            at += 1;
        }
        let unit_start = at;
        // A unit ends where a number starts; a dot sends the text to the
        // general scan, as the empty unit before it does.
        while let Some(&byte) = bytes.get(at)
            && !byte.is_ascii_digit()
            && byte != b'.'
        {
            at += 1;
        }
        if number_start == unit_start {
            return None;
        }
        // Cut between ASCII digits and the unit: character boundaries.
        let unit = u64::try_from(unit_nanos(text.get(unit_start..at)?)?).ok()?;
        total = total.checked_add(number.checked_mul(unit)?)?;
    }
    Some(total)
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit.as_bytes() {
        b"ns" => 1,
        // `µs` (U+00B5) and `μs` (U+03BC), in UTF-8.
        b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
        b"ms" => 1_000_000,
        b"s" => 1_000_000_000,
        b"m" => 60_000_000_000,
        b"h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// `digits`, `digits.`, `.digits` or `digits.digits` (Go allows all four,
/// but not a lone `.`), times the unit.
fn component_nanos(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole_nanos = if whole.is_empty() {
        0
    } else {
        numbers::parse_digits(whole)?.checked_mul(unit_nanos)?
    };
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        numbers::fraction_nanos(fraction, unit_nanos)?
    };
    whole_nanos.checked_add(fraction_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The `u64` path gives what the general scan gives, wherever it
        /// answers: on numbers with and without fractions, every unit, and
        /// sums on both sides of `u64::MAX` nanoseconds.
        #[test]
        fn whole_numbers_agree_with_the_general_scan(
            parts in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::strategy::Just(String::new()),
                        "[0-9]{1,3}",
                        "[0-9]{15,21}",
                        "[0-9]{0,2}\\.[0-9]{0,3}",
                    ],
                    proptest::prop_oneof![
                        proptest::strategy::Just(""),
                        proptest::strategy::Just("ns"),
                        proptest::strategy::Just("us"),
                        proptest::strategy::Just("\u{b5}s"),
                        proptest::strategy::Just("ms"),
                        proptest::strategy::Just("s"),
                        proptest::strategy::Just("m"),
                        proptest::strategy::Just("h"),
                        proptest::strategy::Just("x"),
                    ],
                ),
                1..5,
            ),
        ) {
            let text: String = parts.iter().map(|(number, unit)| format!("{number}{unit}")).collect();
            if let Some(nanos) = whole_numbers(&text) {
                proptest::prop_assert_eq!(Some(Duration::from_nanos(nanos)), scan(&text));
            }
            if text != "0" && !text.is_empty() {
                proptest::prop_assert_eq!(go_duration(&text), scan(&text));
            }
        }
    }

    #[test]
    fn whole_numbers_take_the_common_forms() {
        assert_eq!(whole_numbers("6ms"), Some(6_000_000));
        assert_eq!(whole_numbers("6m0s"), Some(360_000_000_000));
        assert_eq!(whole_numbers("3\u{3bc}s"), Some(3_000));
        // Left to the general scan.
        for text in [
            "0.5s",
            "1.s",
            ".5s",
            "1",
            "s",
            "1x",
            "18446744073709551616ns",
            "5124095576h",
        ] {
            assert_eq!(whole_numbers(text), None, "{text:?}");
        }
        assert_eq!(go_duration("5124095576h"), scan("5124095576h"));
        assert!(go_duration("5124095576h").is_some());
    }

    #[test]
    fn go_accepts_partial_decimals() {
        assert_eq!(go_duration("1.s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("+2m"), Some(Duration::from_secs(120)));
    }

    #[test]
    fn go_rejects_malformed() {
        for text in [
            "", "s", "1", "1x", ".s", "1..2s", "1s2", "-1s", "-0", "1 s", "1.2.3s",
        ] {
            assert_eq!(go_duration(text), None, "{text:?}");
        }
    }

    #[test]
    fn micro_sign_variants() {
        assert_eq!(go_duration("3\u{b5}s"), Some(Duration::from_micros(3)));
        assert_eq!(go_duration("3\u{3bc}s"), Some(Duration::from_micros(3)));
        assert_eq!(go_duration("3us"), Some(Duration::from_micros(3)));
    }

    #[test]
    fn overflow_is_absent() {
        assert_eq!(go_duration(&format!("{}h", "9".repeat(30))), None);
        assert_eq!(go_duration("5124095576030432h"), None);
    }
}
