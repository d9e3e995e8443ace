//! A small total RFC 3339 timestamp parser (Anthropic's reset headers).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::numbers;

/// Parses an RFC 3339 `date-time` into a `SystemTime`:
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm)`.
///
/// `T` may also be `t` or a space, `Z` may be `z`. The date must exist
/// (`2023-02-29` does not); a leap second (`:60`) is accepted and counts as
/// the next second. Fraction digits past the nanosecond are truncated.
/// Anything else is absent.
///
/// ```
/// use std::time::{Duration, SystemTime};
///
/// let instant = quota_headers::rfc3339("1970-01-01T00:01:00.5+00:01");
/// assert_eq!(instant, Some(SystemTime::UNIX_EPOCH + Duration::from_millis(500)));
/// assert_eq!(quota_headers::rfc3339("2024-13-01T00:00:00Z"), None);
/// ```
pub fn rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = numbers::trim_ows(text).as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let year = fixed_digits(bytes, 0, 4)?;
    let month = fixed_digits(bytes, 5, 2)?;
    let day = fixed_digits(bytes, 8, 2)?;
    let hour = fixed_digits(bytes, 11, 2)?;
    let minute = fixed_digits(bytes, 14, 2)?;
    let second = fixed_digits(bytes, 17, 2)?;
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }

    let mut rest = &bytes[19..];
    let mut nanos = 0u32;
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let digits = after_dot
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        let fraction = std::str::from_utf8(&after_dot[..digits]).ok()?;
        let fraction = numbers::fraction_nanos(fraction, numbers::NANOS_PER_SECOND)?;
        nanos = u32::try_from(fraction).ok()?;
        rest = &after_dot[digits..];
    }
    let offset_secs = offset_seconds(rest)?;

    let days = days_from_civil(year, month, day);
    let local_secs = days * 86_400 + i64::from(hour * 3_600 + minute * 60 + second);
    let utc_secs = local_secs - offset_secs;
    let base = if utc_secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(utc_secs.unsigned_abs()))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(utc_secs.unsigned_abs()))?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// `Z`, `z`, or `+hh:mm` / `-hh:mm`, as seconds east of UTC.
fn offset_seconds(rest: &[u8]) -> Option<i64> {
    match rest {
        b"Z" | b"z" => Some(0),
        [sign @ (b'+' | b'-'), ..] if rest.len() == 6 && rest[3] == b':' => {
            let hours = fixed_digits(rest, 1, 2)?;
            let minutes = fixed_digits(rest, 4, 2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let secs = i64::from(hours * 3_600 + minutes * 60);
            Some(if *sign == b'-' { -secs } else { secs })
        }
        _ => None,
    }
}

/// Exactly `len` ASCII digits at `start`.
fn fixed_digits(bytes: &[u8], start: usize, len: usize) -> Option<u32> {
    let field = bytes.get(start..start.checked_add(len)?)?;
    field.iter().try_fold(0u32, |total, byte| {
        byte.is_ascii_digit()
            .then(|| total * 10 + u32::from(byte - b'0'))
    })
}

fn is_leap_year(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`). Years are 0..=9999, so nothing here can overflow.
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_secs(text: &str) -> Option<i64> {
        let instant = rfc3339(text)?;
        Some(match instant.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).ok()?,
            Err(before) => -i64::try_from(before.duration().as_secs()).ok()?,
        })
    }

    #[test]
    fn known_instants() {
        assert_eq!(epoch_secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_secs("2024-05-01T12:00:30Z"), Some(1_714_564_830));
        assert_eq!(epoch_secs("2024-05-01T14:00:30+02:00"), Some(1_714_564_830));
        assert_eq!(epoch_secs("2024-05-01t09:30:30-02:30"), Some(1_714_564_830));
        assert_eq!(epoch_secs("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(epoch_secs("1969-12-31T23:59:59Z"), Some(-1));
        assert_eq!(epoch_secs("0000-01-01T00:00:00Z"), Some(-62_167_219_200));
        assert!(epoch_secs("9999-12-31T23:59:60.999999999999Z").is_some());
    }

    #[test]
    fn rejects_malformed() {
        for text in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:30",
            "2024-05-01T12:00:30+0200",
            "2024-05-01T12:00:30.Z",
            "2024-05-01T24:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-05-01T12:00:30+24:00",
            "2024-05-01T12:00:30ZZ",
            "+024-05-01T12:00:30Z",
            "2024-05-01T12:00:30\u{e9}",
        ] {
            assert_eq!(rfc3339(text), None, "{text:?}");
        }
    }
}
