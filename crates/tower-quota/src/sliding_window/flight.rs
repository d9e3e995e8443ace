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
    /// [`cold_until`](Self::cold_until), the end of the key's cold start,
    /// before which every request exceeds the peak.
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
    /// connections open whatever the peak (the in-process store's keys;
    /// kept here, it costs a key no field of its own).
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
        self.exceeds_at(Stamp::of(now), more)
    }

    /// [`exceeds`](Self::exceeds) at the instant of `now`.
    pub(crate) fn exceeds_at(&mut self, now: Stamp, more: u32) -> bool {
        if now < self.peak_at {
            // Still cold.
            return true;
        }
        if now.saturating_duration_since(self.peak_at) >= POOL_IDLE {
            self.peak = self.in_flight;
            self.peak_at = now;
        }
        self.in_flight.saturating_add(more) > self.peak
    }

    /// A request was sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.sent_at(Stamp::of(now));
    }

    /// [`sent`](Self::sent) at the instant of `now`.
    pub(crate) fn sent_at(&mut self, now: Stamp) {
        self.in_flight = self.in_flight.saturating_add(1);
        if self.in_flight >= self.peak {
            self.peak = self.in_flight;
            // Never earlier: a cold start keeps its end.
            self.peak_at = self.peak_at.max(now);
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
}
