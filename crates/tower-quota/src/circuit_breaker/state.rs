//! The breaker of each key: closed, open or half-open.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::layer::{Config, Window};
use crate::Key;

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

/// The breakers of every key, shared by all clones of a layer.
#[derive(Clone)]
pub(crate) struct Breakers {
    inner: Arc<Mutex<HashMap<Key, Breaker>>>,
    /// The number of keys after the last sweep.
    swept: Arc<AtomicUsize>,
    /// The next generation: every period of every breaker gets its own.
    generations: Arc<AtomicU64>,
}

impl Default for Breakers {
    fn default() -> Self {
        Breakers {
            inner: Arc::default(),
            swept: Arc::default(),
            generations: Arc::new(AtomicU64::new(FIRST_GENERATION)),
        }
    }
}

/// Keys are swept when there are this many, or twice as many as after the
/// last sweep: amortized O(1) per call, memory bounded by the keys in trouble.
const SWEEP_AT: usize = 1024;

/// Generations start here; 0 belongs to no period.
const FIRST_GENERATION: u64 = 1;

/// One key's breaker: its state, and the generation of the current period.
///
/// Every change of state starts a new generation. A call carries the
/// generation it was admitted in, and its outcome counts only in that
/// period: a slow probe from an earlier half-open period, or a call sent
/// before the breaker opened, is stale once the state moved on.
struct Breaker {
    generation: u64,
    state: State,
}

enum State {
    Closed {
        outcomes: VecDeque<(Instant, bool)>,
        failures: usize,
        consecutive: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        /// Probes that may still start.
        permits: u32,
        /// Probes that succeeded.
        successes: u32,
    },
}

impl State {
    fn closed() -> Self {
        State::Closed {
            outcomes: VecDeque::new(),
            failures: 0,
            consecutive: 0,
        }
    }
}

/// What a call may do.
pub(crate) enum Admit {
    /// Go; report the outcome with [`Breakers::record`], with this
    /// `generation`.
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

impl Breakers {
    fn swept_len(&self) -> usize {
        self.swept.load(Ordering::Relaxed)
    }

    fn set_swept_len(&self, len: usize) {
        self.swept.store(len, Ordering::Relaxed);
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Breaker>> {
        // Every update leaves the map consistent; a poisoned lock is safe.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn admit(&self, key: &Key, config: &Config, now: Instant) -> Admit {
        let mut map = self.lock();
        if map.len() >= SWEEP_AT.max(2 * self.swept_len()) {
            // Closed breakers that hold no failure hold nothing worth keeping.
            map.retain(|_, breaker| !matches!(breaker.state, State::Closed { failures: 0, .. }));
            self.set_swept_len(map.len());
        }
        let breaker = map.entry(key.clone()).or_insert_with(|| Breaker {
            generation: self.next_generation(),
            state: State::closed(),
        });
        let mut transition = None;
        if let State::Open { until } = breaker.state {
            if now < until {
                return Admit::Reject {
                    retry_in: until.saturating_duration_since(now),
                    state: CircuitState::Open,
                };
            }
            breaker.generation = self.next_generation();
            breaker.state = State::HalfOpen {
                permits: config.half_open_probes,
                successes: 0,
            };
            transition = Some(Transition::HalfOpened);
        }
        match &mut breaker.state {
            State::Closed { .. } => Admit::Go {
                generation: breaker.generation,
                transition,
            },
            State::HalfOpen { permits: 0, .. } => Admit::Reject {
                retry_in: Duration::ZERO,
                state: CircuitState::HalfOpen,
            },
            State::HalfOpen { permits, .. } => {
                *permits -= 1;
                Admit::Go {
                    generation: breaker.generation,
                    transition,
                }
            }
            State::Open { .. } => {
                unreachable!("an open breaker past its period became half-open above")
            }
        }
    }

    /// Records the outcome of a call that [`admit`](Self::admit) let go in
    /// `generation`; `failure` is `None` for an outcome that does not count
    /// (a throttled response by default, or a cancelled call). An outcome
    /// from another generation than the breaker's current one is stale and
    /// changes nothing.
    pub(crate) fn record(
        &self,
        key: &Key,
        config: &Config,
        generation: u64,
        failure: Option<bool>,
        now: Instant,
    ) -> Option<Transition> {
        let mut map = self.lock();
        let breaker = map.get_mut(key)?;
        if breaker.generation != generation {
            return None;
        }
        match &mut breaker.state {
            State::HalfOpen { permits, successes } => match failure {
                Some(true) => Some(self.open(breaker, config, None, now)),
                Some(false) => {
                    *successes += 1;
                    if *successes >= config.half_open_probes {
                        breaker.generation = self.next_generation();
                        breaker.state = State::closed();
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
            },
            State::Closed {
                outcomes,
                failures,
                consecutive,
            } => {
                let failed = failure?;
                outcomes.push_back((now, failed));
                *failures += usize::from(failed);
                *consecutive = if failed {
                    consecutive.saturating_add(1)
                } else {
                    0
                };
                // Forget what left the window.
                while let Some((at, _)) = outcomes.front() {
                    let expired = match config.window {
                        Window::Count(size) => outcomes.len() > size,
                        Window::Time(span) => now.saturating_duration_since(*at) >= span,
                    };
                    if !expired {
                        break;
                    }
                    if let Some((_, failed)) = outcomes.pop_front() {
                        *failures -= usize::from(failed);
                    }
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
                (by_rate || by_streak).then(|| self.open(breaker, config, Some(failure_rate), now))
            }
            // Nobody holds the generation of an open period.
            State::Open { .. } => None,
        }
    }

    fn open(
        &self,
        breaker: &mut Breaker,
        config: &Config,
        failure_rate: Option<f64>,
        now: Instant,
    ) -> Transition {
        let open_for = config.open_duration_with_jitter();
        breaker.generation = self.next_generation();
        breaker.state = State::Open {
            until: saturating_add(now, open_for),
        };
        Transition::Opened {
            failure_rate: failure_rate.unwrap_or(1.0),
            open_for,
        }
    }
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("keys", &self.lock().len())
            .finish()
    }
}

/// `now + duration`, or as far ahead as the clock can go: never the panic
/// of `Instant + Duration` on overflow.
pub(super) fn saturating_add(now: Instant, duration: Duration) -> Instant {
    // tokio's own "far future": 30 years.
    const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);
    now.checked_add(duration)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}
