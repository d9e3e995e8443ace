//! Reading the clock for the layers, and instant arithmetic on durations
//! from users and servers.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

/// The clock, read once at most, and only when a path needs it: a call
/// that finds nothing time-dependent to decide reads none.
#[derive(Default)]
pub(crate) struct LazyNow(Cell<Option<Instant>>);

impl LazyNow {
    /// The instant `now`, already read.
    pub(crate) fn at(now: Instant) -> Self {
        LazyNow(Cell::new(Some(now)))
    }

    /// The instant of the first call, read then.
    pub(crate) fn get(&self) -> Instant {
        match self.0.get() {
            Some(now) => now,
            None => {
                let now = Instant::now();
                self.0.set(Some(now));
                now
            }
        }
    }

    /// Whether the clock was read (or an instant given).
    #[cfg(test)]
    pub(crate) fn is_read(&self) -> bool {
        self.0.get().is_some()
    }

    /// An instant for what may lag the clock without harm (when idle state
    /// was last used, whether an eviction may be due): the instant read, if
    /// it was; else the last reading a layer kept on this thread
    /// ([`read`]), however old; else the clock, read now. It may be far
    /// earlier than the clock (and, across runtimes with paused clocks on
    /// one thread, later): a decision that needs the time reads it with
    /// [`get`](Self::get).
    pub(crate) fn recent(&self) -> Instant {
        match self.0.get().or_else(|| LAST_READING.with(Cell::get).1) {
            Some(recent) => recent,
            None => self.get(),
        }
    }
}

thread_local! {
    /// How many readings of the clock the layers kept on this thread
    /// ([`read`]), and the last of them.
    static LAST_READING: Cell<(u64, Option<Instant>)> = const { Cell::new((0, None)) };
}

/// The point a layer starts polling its inner future from; see
/// [`read_since`].
#[derive(Clone, Copy)]
pub(crate) struct Mark(u64);

/// Marks the start of a poll of an inner future, before it.
pub(crate) fn mark() -> Mark {
    Mark(LAST_READING.with(|last| last.get().0))
}

/// Reads the clock, and keeps the reading for the layers around (see
/// [`read_since`]): a pacing admission's, an answer's.
pub(crate) fn read() -> Instant {
    let now = Instant::now();
    LAST_READING.with(|last| {
        let (count, _) = last.get();
        last.set((count.wrapping_add(1), Some(now)));
    });
    now
}

/// The last reading a layer kept ([`read`]) during the poll of an inner
/// future that followed `mark`, if one did.
///
/// Layers stacked one inside the other are polled within one poll of the
/// outermost: a reading kept since `mark` was taken during that poll, and
/// is within the time the poll took (microseconds: a poll does not block)
/// of any instant in it. So the layers around take it instead of reading
/// the clock again, where nothing needs an instant closer than that.
pub(crate) fn read_since(mark: Mark) -> Option<Instant> {
    match LAST_READING.with(Cell::get) {
        (count, Some(now)) if count != mark.0 => Some(now),
        _ => None,
    }
}

/// The instant of an answer that has just come back from the inner future
/// polled since `mark`: the last reading a layer below kept in that poll
/// ([`read_since`]), its answer's when it read one, or else the clock, read
/// now (and kept in turn).
///
/// The innermost layer reads the clock once, after its own inner future
/// answered, and the others take its reading instead of reading again. The
/// pacing of [`SlidingWindowLayer`](crate::SlidingWindowLayer), which holds
/// a slot until a window after the answer, always reads its own.
pub(crate) fn answer_since(mark: Mark) -> Instant {
    read_since(mark).unwrap_or_else(read)
}

/// As far ahead as a wait goes: 30 years, tokio's own "far future".
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `at + duration`, or 30 years on when the sum is past what an instant
/// holds: never the panic of `Instant + Duration` on overflow. A duration
/// comes from a user (`Duration::MAX` for "no limit") or a server, and no
/// wait reaches 30 years.
pub(crate) fn saturating_add(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .or_else(|| at.checked_add(FAR_FUTURE))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_lazy_clock_is_read_once_at_its_first_use() {
        let lazy = LazyNow::default();
        tokio::time::advance(Duration::from_secs(1)).await;
        let first = lazy.get();
        assert_eq!(first, Instant::now(), "read at the first use, not before");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(lazy.get(), first, "and kept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recent_instant_is_the_one_read_or_the_last_kept_and_reads_no_clock_then() {
        // Nothing kept on this thread yet: the clock, read (and then kept
        // by the lazy clock, not by the thread).
        let lazy = LazyNow::default();
        let first = lazy.recent();
        assert_eq!(first, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(lazy.get(), first, "the reading recent() took");

        // A reading kept on the thread serves, however old, and the clock
        // is left unread until a decision needs it.
        let kept = read();
        tokio::time::advance(Duration::from_secs(1)).await;
        let lazy = LazyNow::default();
        assert_eq!(lazy.recent(), kept, "the thread's last kept reading");
        assert_eq!(lazy.get(), Instant::now(), "not taken as the reading");
        assert_eq!(lazy.recent(), Instant::now(), "once read, the reading");

        // An instant given serves as both.
        let given = Instant::now() + Duration::from_secs(5);
        let lazy = LazyNow::at(given);
        assert_eq!((lazy.recent(), lazy.get()), (given, given));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_read_below_serves_the_layers_above_within_their_poll() {
        // Nothing read since the mark: the clock, read now.
        let since = mark();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(answer_since(since), Instant::now());

        // A layer below read the answer's instant since the mark: that one.
        let since = mark();
        let below = read();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(answer_since(since), below, "shared, not read again");

        // A reading from before the mark is never taken.
        let since = mark();
        let fresh = answer_since(since);
        assert_eq!(fresh, Instant::now(), "read afresh");
        assert!(fresh > below);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_kept_since_a_mark_is_the_last_one_and_only_since() {
        let since = mark();
        assert_eq!(read_since(since), None, "none kept yet");
        let first = read();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(read_since(since), Some(first));
        let second = read();
        assert_eq!(read_since(since), Some(second), "the last one");
        assert!(second > first);
        // Unlike `answer_since`, it never reads the clock itself.
        let since = mark();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(read_since(since), None);
        assert_eq!(read_since(since), None, "still none: nothing was kept");
    }

    #[test]
    fn a_sum_past_the_clock_is_thirty_years_on() {
        let now = Instant::now();
        assert_eq!(
            saturating_add(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(saturating_add(now, Duration::MAX), now + FAR_FUTURE);
    }
}
