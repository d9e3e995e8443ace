//! Instants in 8 bytes, for state kept per key and per admission.
//!
//! A `tokio::time::Instant` takes 16 bytes (seconds and nanoseconds); a
//! [`Stamp`] is the signed count of nanoseconds from one instant of the
//! process, which spans 292 years either side of it. Logs keep one per
//! admission, so this halves what time costs them. Stamps are signed because
//! an instant may come before the epoch: a runtime with a paused clock
//! counts from when it was built, which can precede the first stamp taken.
//! An `Option<Stamp>` takes 8 bytes too: the count is kept offset by 2⁶³,
//! so that its least value, which no stamp takes, is the niche.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds from the process's epoch; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Stamp(NonZeroU64);

/// The instant stamps count from: the first one taken (any instant serves,
/// stamps being signed).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The most nanoseconds a stamp counts before or after the epoch.
const MOST: i64 = i64::MAX - 1;

/// `duration` in nanoseconds, exactly: a `Duration` holds at most about
/// 2⁹⁴ of them, far inside `i128`.
fn wide_nanos(duration: Duration) -> i128 {
    i128::try_from(duration.as_nanos()).unwrap_or(i128::MAX)
}

/// `duration` in nanoseconds, `u64::MAX` past them: no stamp is that far
/// from another.
#[inline]
fn narrow_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A count of nanoseconds from the epoch, clamped to [`MOST`] either side.
/// Sums are taken wide and clamped once, so that a stamp before the epoch
/// plus a duration longer than `MOST` still reaches the latest stamp.
fn clamped(nanos: i128) -> i64 {
    // Within ±MOST after the clamp, so the conversion cannot fail.
    i64::try_from(nanos.clamp(-i128::from(MOST), i128::from(MOST))).unwrap_or(MOST)
}

impl Stamp {
    /// Later than every stamp of an instant: what is held until something
    /// happens, never by the clock alone.
    pub(crate) const NEVER: Stamp = Stamp::from_nanos(i64::MAX);
    /// The latest stamp an instant or a sum can have: sums saturate here,
    /// below [`NEVER`](Self::NEVER).
    #[cfg(test)]
    pub(crate) const LATEST: Stamp = Stamp::from_nanos(MOST);
    /// Earlier than every stamp of an instant.
    pub(crate) const EARLIEST: Stamp = Stamp::from_nanos(-MOST);

    /// The stamp `nanos` after the epoch; `nanos` is above `i64::MIN`
    /// (every count is clamped to [`MOST`] either side, or is `NEVER`).
    const fn from_nanos(nanos: i64) -> Stamp {
        // The bias maps i64's order onto u64's, and only i64::MIN, which
        // no count reaches, to 0.
        match NonZeroU64::new(nanos.cast_unsigned() ^ (1 << 63)) {
            Some(biased) => Stamp(biased),
            None => Stamp(NonZeroU64::MIN),
        }
    }

    const fn nanos(self) -> i64 {
        (self.0.get() ^ (1 << 63)).cast_signed()
    }

    /// The stamp as a `u64` that orders as stamps do, and is never 0.
    pub(crate) const fn to_bits(self) -> u64 {
        self.0.get()
    }

    /// The stamp of `instant`.
    pub(crate) fn of(instant: Instant) -> Stamp {
        let epoch = epoch();
        match instant.checked_duration_since(epoch) {
            Some(after) => Stamp::from_nanos(0).plus_nanos(narrow_nanos(after)),
            None => Stamp::from_nanos(clamped(-wide_nanos(epoch.duration_since(instant)))),
        }
    }

    /// The instant of this stamp. A stamp centuries away that the
    /// platform's `Instant` cannot hold (Linux's can) gives one 30 years
    /// after the epoch, or the epoch itself for one centuries before.
    pub(crate) fn instant(self) -> Instant {
        let epoch = epoch();
        let magnitude = Duration::from_nanos(self.nanos().unsigned_abs());
        if self.nanos() >= 0 {
            crate::time::saturating_add(epoch, magnitude)
        } else {
            epoch.checked_sub(magnitude).unwrap_or(epoch)
        }
    }

    /// `self + duration`, saturating 292 years after the epoch (and
    /// [`NEVER`](Self::NEVER) stays itself).
    #[inline]
    pub(crate) fn saturating_add(self, duration: Duration) -> Stamp {
        if self == Stamp::NEVER {
            return self;
        }
        // A duration past `u64::MAX` nanoseconds (584 years) takes any
        // stamp past the latest, as `plus_nanos` saturates.
        self.plus_nanos(narrow_nanos(duration))
    }

    /// `self - duration`, saturating at [`EARLIEST`](Self::EARLIEST)
    /// ([`NEVER`](Self::NEVER) stays itself).
    pub(crate) fn saturating_sub(self, duration: Duration) -> Stamp {
        if self == Stamp::NEVER {
            return self;
        }
        Stamp::from_nanos(clamped(
            i128::from(self.nanos()).saturating_sub(wide_nanos(duration)),
        ))
    }

    /// The stamp of bits from [`to_bits`](Self::to_bits); `None` for 0,
    /// which no stamp has.
    pub(crate) const fn from_bits(bits: u64) -> Option<Stamp> {
        match NonZeroU64::new(bits) {
            Some(bits) => Some(Stamp(bits)),
            None => None,
        }
    }

    /// The nanoseconds from `base` to this stamp; `None` when it is earlier.
    /// (The bias keeps differences: those of the bits are those of the
    /// counts.)
    #[inline]
    pub(crate) fn nanos_since(self, base: Stamp) -> Option<u64> {
        self.0.get().checked_sub(base.0.get())
    }

    /// This stamp `nanos` nanoseconds later, saturating as
    /// [`saturating_add`](Self::saturating_add) does (and below `NEVER`,
    /// which it is not applied to).
    #[inline]
    pub(crate) fn plus_nanos(self, nanos: u64) -> Stamp {
        Stamp(self.0.saturating_add(nanos).min(Stamp::from_nanos(MOST).0))
    }

    /// How long after `earlier` this is; zero when it is not later.
    pub(crate) fn saturating_duration_since(self, earlier: Stamp) -> Duration {
        u64::try_from(self.nanos().saturating_sub(earlier.nanos()))
            .map_or(Duration::ZERO, Duration::from_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_keeps_its_instant_to_the_nanosecond_either_side_of_the_epoch() {
        let now = Instant::now();
        for instant in [
            now,
            now + Duration::from_nanos(1),
            now + Duration::from_secs(86_400 * 365),
            epoch(),
        ] {
            assert_eq!(Stamp::of(instant).instant(), instant);
        }
        // Before the epoch (a paused clock that started earlier).
        if let Some(before) = epoch().checked_sub(Duration::from_millis(1500)) {
            let stamp = Stamp::of(before);
            assert!(stamp < Stamp::of(epoch()));
            assert_eq!(stamp.instant(), before);
            assert_eq!(
                Stamp::of(epoch()).saturating_duration_since(stamp),
                Duration::from_millis(1500)
            );
        }
    }

    #[test]
    fn a_stamp_and_an_optional_one_take_8_bytes() {
        assert_eq!(std::mem::size_of::<Stamp>(), 8);
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
        assert!(Stamp::EARLIEST < Stamp::from_nanos(-1));
        assert!(Stamp::from_nanos(-1) < Stamp::from_nanos(0));
        assert!(Stamp::from_nanos(0) < Stamp::from_nanos(1));
        assert_eq!(Stamp::from_nanos(-5).nanos(), -5);
    }

    /// The distances packed logs count in: exact either side of the
    /// epoch, none to an earlier stamp, sums saturating below `NEVER`.
    #[test]
    fn distances_in_nanoseconds_are_exact_and_saturate() {
        for nanos in [-MOST, -5, 0, 7, MOST - 10] {
            let stamp = Stamp::from_nanos(nanos);
            assert_eq!(stamp.plus_nanos(10).nanos_since(stamp), Some(10));
            assert_eq!(stamp.nanos_since(stamp.plus_nanos(1)), None);
            assert_eq!(stamp.saturating_sub(Duration::ZERO), stamp);
            assert_eq!(Stamp::from_bits(stamp.to_bits()), Some(stamp));
        }
        assert_eq!(Stamp::from_bits(0), None);
        assert_eq!(
            Stamp::LATEST.nanos_since(Stamp::EARLIEST),
            Some(u64::MAX - 3),
            "the widest distance fits"
        );
        assert_eq!(Stamp::LATEST.plus_nanos(u64::MAX), Stamp::LATEST);
        assert_eq!(Stamp::from_nanos(-5).plus_nanos(u64::MAX), Stamp::LATEST);
        assert_eq!(
            Stamp::EARLIEST.saturating_sub(Duration::from_nanos(u64::MAX)),
            Stamp::EARLIEST
        );
        assert_eq!(
            Stamp::from_nanos(3).saturating_sub(Duration::from_nanos(5)),
            Stamp::from_nanos(-2)
        );
    }

    #[test]
    fn sums_saturate_below_never_and_order_is_kept() {
        let now = Stamp::of(Instant::now());
        assert_eq!(now.saturating_add(Duration::MAX), Stamp::LATEST);
        // Either side of the epoch (the first stamp a process takes may be
        // of an instant read before the epoch was set).
        for nanos in [-MOST, -1, 0, 1, MOST] {
            let stamp = Stamp::from_nanos(nanos);
            assert_eq!(stamp.saturating_add(Duration::MAX), Stamp::LATEST);
            assert_eq!(stamp.saturating_sub(Duration::MAX), Stamp::EARLIEST);
        }
        assert!(Stamp::LATEST < Stamp::NEVER);
        assert_eq!(
            Stamp::NEVER.saturating_add(Duration::from_secs(1)),
            Stamp::NEVER
        );
        assert_eq!(
            Stamp::from_nanos(-5).saturating_sub(Duration::MAX),
            Stamp::EARLIEST
        );
        assert_eq!(
            now.saturating_add(Duration::from_millis(3))
                .saturating_sub(Duration::from_millis(3)),
            now
        );
        assert!(Stamp::EARLIEST < now && now < now.saturating_add(Duration::from_nanos(1)));
        assert_eq!(
            now.saturating_duration_since(now.saturating_add(Duration::from_secs(1))),
            Duration::ZERO
        );
        assert_eq!(
            now.saturating_add(Duration::from_millis(7))
                .saturating_duration_since(now),
            Duration::from_millis(7)
        );
        // The latest stamps give an instant rather than a panic.
        let _ = Stamp::NEVER.instant();
        let _ = Stamp::EARLIEST.instant();
    }
}
