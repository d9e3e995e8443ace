//! The breaker of one key: closed, open or half-open.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::config::{Config, Window};
use crate::time::LazyNow;

/// The state of one key's breaker, as telemetry and errors report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls fail at once until the open period ends.
    Open,
    /// A bounded number of probe calls pass; the rest fail at once.
    HalfOpen,
}

impl CircuitState {
    /// The state as it appears in telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// One key's breaker: its state, and the generation of the current period.
///
/// Every change of state starts a new generation. A call carries the
/// generation it was admitted in, and its outcome counts only in that
/// period: a slow probe from an earlier half-open period, or a call sent
/// before the breaker opened, is stale once the state moved on.
pub(super) struct Breaker {
    generation: u64,
    state: State,
}

enum State {
    Closed {
        /// The calls in the window, oldest first: when each ended, and
        /// whether it failed.
        outcomes: VecDeque<(Instant, bool)>,
        /// Failures among `outcomes`.
        failures: usize,
        /// Failures in a row, up to the last call.
        consecutive: u32,
        /// When the newest failure among `outcomes` ended.
        last_failure: Instant,
        /// Calls of this period not finished yet.
        in_flight: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        /// Probes that may still start.
        permits: u32,
        /// Probes that succeeded.
        successes: u32,
        /// The last probe that started or finished.
        last_active: Instant,
    },
}

impl State {
    fn closed(now: Instant) -> Self {
        State::Closed {
            outcomes: VecDeque::new(),
            failures: 0,
            consecutive: 0,
            last_failure: now,
            in_flight: 0,
        }
    }
}

/// What a call may do.
pub(crate) enum Admit {
    /// Go; report the outcome with this `generation`.
    Go {
        generation: u64,
        transition: Option<Transition>,
    },
    /// Fail at once: the breaker is open for `retry_in` more (zero when
    /// half-open and every probe is taken).
    Reject {
        retry_in: Duration,
        state: CircuitState,
    },
}

/// A change of state, for telemetry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Transition {
    Opened {
        failure_rate: f64,
        open_for: Duration,
    },
    HalfOpened,
    Closed,
}

impl Breaker {
    /// A closed breaker with no history, in period `generation`.
    pub(super) fn new(generation: u64, now: Instant) -> Self {
        Breaker {
            generation,
            state: State::closed(now),
        }
    }

    /// Whether the breaker holds nothing worth its memory, so that its key
    /// may be forgotten (a forgotten key behaves as a closed breaker with no
    /// history): closed with no call in flight and no failure left in its
    /// window, or open or half-open with nothing happening for
    /// `forget_after` past its open period.
    pub(super) fn is_idle(&self, config: &Config, now: &LazyNow) -> bool {
        match &self.state {
            State::Closed {
                failures,
                last_failure,
                in_flight,
                ..
            } => {
                *in_flight == 0
                    && (*failures == 0
                        || now.get().saturating_duration_since(*last_failure) >= config.horizon())
            }
            State::Open { until } => {
                now.get().saturating_duration_since(*until) >= config.forget_after
            }
            State::HalfOpen { last_active, .. } => {
                now.get().saturating_duration_since(*last_active) >= config.forget_after
            }
        }
    }

    pub(super) fn admit(
        &mut self,
        config: &Config,
        now: &LazyNow,
        next_generation: impl Fn() -> u64,
    ) -> Admit {
        let mut transition = None;
        if let State::Open { until } = self.state {
            let now = now.get();
            if now < until {
                return Admit::Reject {
                    retry_in: until.saturating_duration_since(now),
                    state: CircuitState::Open,
                };
            }
            self.generation = next_generation();
            self.state = State::HalfOpen {
                permits: config.half_open_probes,
                successes: 0,
                last_active: now,
            };
            transition = Some(Transition::HalfOpened);
        }
        let generation = self.generation;
        match &mut self.state {
            State::Closed { in_flight, .. } => {
                *in_flight = in_flight.saturating_add(1);
                Admit::Go {
                    generation,
                    transition,
                }
            }
            State::HalfOpen { permits: 0, .. } => Admit::Reject {
                retry_in: Duration::ZERO,
                state: CircuitState::HalfOpen,
            },
            State::HalfOpen {
                permits,
                last_active,
                ..
            } => {
                *permits -= 1;
                *last_active = now.get();
                Admit::Go {
                    generation,
                    transition,
                }
            }
            // Past its period, an open breaker became half-open above.
            State::Open { .. } => Admit::Reject {
                retry_in: Duration::ZERO,
                state: CircuitState::Open,
            },
        }
    }

    /// Records the outcome of a call admitted in `generation`; `failure` is
    /// `None` for an outcome that does not count (a throttled response by
    /// default, or a cancelled call). An outcome from another generation
    /// than the current one is stale and changes nothing.
    pub(super) fn record(
        &mut self,
        config: &Config,
        generation: u64,
        failure: Option<bool>,
        now: Instant,
        next_generation: impl Fn() -> u64,
    ) -> Option<Transition> {
        if self.generation != generation {
            return None;
        }
        match &mut self.state {
            State::HalfOpen {
                permits,
                successes,
                last_active,
            } => {
                *last_active = now;
                match failure {
                    Some(true) => Some(self.open(config, None, now, next_generation)),
                    Some(false) => {
                        *successes = successes.saturating_add(1);
                        if *successes >= config.half_open_probes {
                            self.generation = next_generation();
                            self.state = State::closed(now);
                            Some(Transition::Closed)
                        } else {
                            None
                        }
                    }
                    // A probe that did not count gives its place back.
                    None => {
                        *permits = permits.saturating_add(1).min(config.half_open_probes);
                        None
                    }
                }
            }
            State::Closed {
                outcomes,
                failures,
                consecutive,
                last_failure,
                in_flight,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                let failed = failure?;
                // Forget the calls too old to count; a streak ends with its
                // failures.
                let horizon = config.horizon();
                while let Some(&(at, old)) = outcomes.front() {
                    if now.saturating_duration_since(at) < horizon {
                        break;
                    }
                    outcomes.pop_front();
                    *failures = failures.saturating_sub(usize::from(old));
                }
                if *failures == 0 {
                    *consecutive = 0;
                }
                outcomes.push_back((now, failed));
                if failed {
                    *failures += 1;
                    *consecutive = consecutive.saturating_add(1);
                    *last_failure = now;
                } else {
                    *consecutive = 0;
                }
                if let Window::Count(size) = config.window {
                    while outcomes.len() > size {
                        if let Some((_, old)) = outcomes.pop_front() {
                            *failures = failures.saturating_sub(usize::from(old));
                        }
                    }
                }
                // A burst long past leaves no large buffer behind.
                if outcomes.capacity() > 64 && outcomes.len() < outcomes.capacity() / 4 {
                    outcomes.shrink_to(outcomes.len() * 2);
                }
                let calls = outcomes.len();
                let failure_rate = if calls == 0 {
                    0.0
                } else {
                    *failures as f64 / calls as f64
                };
                let by_rate = calls >= config.minimum_calls && failure_rate >= config.failure_rate;
                let by_streak = config
                    .consecutive_failures
                    .is_some_and(|limit| *consecutive >= limit);
                (by_rate || by_streak)
                    .then(|| self.open(config, Some(failure_rate), now, next_generation))
            }
            // Nobody holds the generation of an open period.
            State::Open { .. } => None,
        }
    }

    fn open(
        &mut self,
        config: &Config,
        failure_rate: Option<f64>,
        now: Instant,
        next_generation: impl Fn() -> u64,
    ) -> Transition {
        let open_for = config.open_duration_with_jitter();
        self.generation = next_generation();
        self.state = State::Open {
            until: crate::time::saturating_add(now, open_for),
        };
        Transition::Opened {
            failure_rate: failure_rate.unwrap_or(1.0),
            open_for,
        }
    }
}
