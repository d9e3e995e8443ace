//! The most requests of a key a client had in flight at once lately.

use std::time::Duration;

use tokio::time::Instant;

use super::stamp::Stamp;

/// How long a connection pool keeps an idle connection, at the least: a
/// server may close an idle keep-alive connection after 5 s (Node.js's
/// default). The most requests in flight at once is forgotten after it.
pub const POOL_IDLE: Duration = Duration::from_secs(5);

/// The requests of one key a client has in flight (sent, not yet
/// answered), and the most it had in flight at once lately. Stores keep one
/// per key; the in-process and the Redis store share this logic.
///
/// A connection pool holds about as many connections to the provider as
/// the client had requests in flight at once: a request beyond them opens a
/// new connection, and reaches the provider a handshake later than a warm
/// connection would take it there (three round trips for TCP and TLS 1.2).
/// Such a request gets the cold bound
/// ([`Limits::cold_sent_within`](super::Limits::cold_sent_within)) instead of
/// `sent_within`. The peak is forgotten when it has not been reached for
/// [`POOL_IDLE`]: the pool may have closed the connections idle since.
///
/// ```
/// use tokio::time::Instant;
/// use tower_quota::sliding_window::InFlightPeak;
///
/// let now = Instant::now();
/// let mut flight = InFlightPeak::new(now);
/// // Nothing was ever in flight: a first request may open a connection.
/// assert!(flight.exceeds(now, 1));
/// flight.sent(now);
/// flight.ended();
/// // One at a time from then on reuses that connection.
/// assert!(!flight.exceeds(now, 1));
/// flight.sent(now);
/// assert!(flight.exceeds(now, 1), "a second one at once");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct InFlightPeak {
    in_flight: u32,
    peak: u32,
    /// When the peak was last reached; or, made by
    /// [`cold_until`](Self::cold_until) and until the peak is reached
    /// later, the end of the key's cold start.
    peak_at: Stamp,
}

impl InFlightPeak {
    /// Nothing in flight, ever: any request may open a connection.
    pub fn new(now: Instant) -> Self {
        InFlightPeak {
            in_flight: 0,
            peak: 0,
            peak_at: Stamp::of(now),
        }
    }

    /// Nothing in flight, ever, and every request counted as beyond the
    /// peak until `until`: a key's cold start, in which the pool grows and
    /// connections open whatever the peak. For the in-process store, whose
    /// keys ask with the increasing stamps of their shard's lock
    /// ([`exceeds_at`](Self::exceeds_at), [`sent_at`](Self::sent_at)); kept
    /// here, the cold start costs a key no field of its own.
    pub(crate) fn cold_until(until: Stamp) -> Self {
        InFlightPeak {
            in_flight: 0,
            peak: 0,
            peak_at: until,
        }
    }

    /// Whether `more` requests besides those in flight are more than the
    /// most in flight at once in the last [`POOL_IDLE`].
    pub fn exceeds(&mut self, now: Instant, more: u32) -> bool {
        self.exceeds_since_peak(Stamp::of(now), more)
    }

    /// [`exceeds`](Self::exceeds) at the stamp `now`, or `true` before the
    /// end of a cold start ([`cold_until`](Self::cold_until)): `now` is
    /// never earlier than a stamp given before, but in a cold start.
    pub(crate) fn exceeds_at(&mut self, now: Stamp, more: u32) -> bool {
        now < self.peak_at || self.exceeds_since_peak(now, more)
    }

    fn exceeds_since_peak(&mut self, now: Stamp, more: u32) -> bool {
        if now.saturating_duration_since(self.peak_at) >= POOL_IDLE {
            self.peak = self.in_flight;
            self.peak_at = now;
        }
        self.in_flight.saturating_add(more) > self.peak
    }

    /// A request was sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.count_sent(Stamp::of(now), false);
    }

    /// [`sent`](Self::sent) at the stamp `now`, during a cold start too
    /// ([`exceeds_at`](Self::exceeds_at)): the peak's instant stays the
    /// start's end until the peak is reached after it.
    pub(crate) fn sent_at(&mut self, now: Stamp) {
        self.count_sent(now, true);
    }

    /// Counts a request sent at `now`; with `keep_cold_end`, a peak reached
    /// in a cold start keeps the start's end as its instant.
    fn count_sent(&mut self, now: Stamp, keep_cold_end: bool) {
        self.in_flight = self.in_flight.saturating_add(1);
        if self.in_flight >= self.peak {
            self.peak = self.in_flight;
            self.peak_at = if keep_cold_end {
                self.peak_at.max(now)
            } else {
                now
            };
        }
    }

    /// A request sent earlier ended: answered, failed or dropped.
    pub fn ended(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's cold start: every request exceeds the peak until its end;
    /// then the peak reached during it counts, until [`POOL_IDLE`] after the
    /// end.
    #[test]
    fn a_cold_start_exceeds_until_its_end_then_keeps_its_peak() {
        let start = Stamp::of(Instant::now());
        let at = |millis| start.saturating_add(Duration::from_millis(millis));
        let mut flight = InFlightPeak::cold_until(at(1_000));
        for _ in 0..3 {
            assert!(flight.exceeds_at(at(0), 1));
            flight.sent_at(at(0));
        }
        assert!(flight.exceeds_at(at(999), 0), "cold, whatever is in flight");
        for _ in 0..3 {
            flight.ended();
        }
        assert!(!flight.exceeds_at(at(1_000), 3), "three at once were seen");
        assert!(flight.exceeds_at(at(1_000), 4));
        assert!(!flight.exceeds_at(at(5_999), 3));
        assert!(
            flight.exceeds_at(at(6_000), 1),
            "forgotten after the pool's idle time"
        );
    }

    /// The public methods, which the Redis store calls with instants read
    /// by several tasks (not always in order), know no cold start: an
    /// instant before the last peak's is judged by the peak alone.
    #[test]
    fn an_earlier_instant_is_judged_by_the_peak() {
        let start = Instant::now();
        let mut flight = InFlightPeak::new(start);
        flight.sent(start + Duration::from_millis(10));
        flight.ended();
        assert!(!flight.exceeds(start, 1), "one was in flight at once");
        assert!(flight.exceeds(start, 2));
    }
}
