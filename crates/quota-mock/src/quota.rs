//! The server-side quota engine: per-key state for every rule, decided at
//! explicit instants so it can be tested without a clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::cost::Cost;
use crate::rule::{Mode, Rule};

/// What one rule looks like to a client at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RuleView {
    /// Requests per window, or units for a weighted rule.
    pub(crate) limit: u64,
    /// Requests (units) that would be admitted now; zero while a corrected
    /// charge has overdrawn the rule.
    pub(crate) remaining: u64,
    /// Time from the decision until `remaining` grows by one: when the rule
    /// frees its next unit of quota (zero when nothing is in use).
    pub(crate) reset_after: Duration,
    pub(crate) weighted: bool,
}

/// Every rule as a client sees it at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuotaView {
    /// The rule that admits the fewest more requests of the decided one's
    /// cost (`remaining / spend`, which is `remaining` for unweighted
    /// rules); among equals, the one that takes longest to free a unit.
    pub(crate) restrictive: RuleView,
    /// Every rule, in configuration order.
    pub(crate) rules: Vec<RuleView>,
}

/// The outcome of one quota check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Every rule had room; the admission is recorded. `view` is the rules
    /// after the admission (`None` without rules).
    Admitted { view: Option<QuotaView> },
    /// Some rule had no room; nothing was charged, except that sliding
    /// window counters counted the request. `retry_after` is the earliest
    /// delay after which every rule has room again, `None` when only
    /// concurrency rules refused (nobody knows when a request in flight
    /// will finish).
    Refused {
        retry_after: Option<Duration>,
        view: QuotaView,
    },
    /// The declared cost is more than some weighted rule's whole limit, so
    /// no wait would ever admit it; nothing was charged, except that sliding
    /// window counters counted the request.
    TooCostly { view: QuotaView },
}

/// Quota state for every key and rule.
#[derive(Debug)]
pub(crate) struct QuotaBook {
    rules: Vec<Rule>,
    /// Fixed windows are aligned to this instant.
    origin: Instant,
    keys: HashMap<String, Vec<RuleState>>,
    /// Per rule, the most units one key had in flight at once (concurrency
    /// rules only).
    peaks: Vec<u128>,
    /// Counts the [`clear`](QuotaBook::clear)s, so that a request admitted
    /// before one does not release into the fresh state.
    epoch: u64,
    /// Checks since the last sweep of idle keys.
    since_sweep: usize,
}

/// A sweep of idle keys runs once the checks since the last one reach the
/// number of keys, and at least this many: amortized O(1) per check.
const SWEEP_EVERY: usize = 1024;

/// Key maps at or below this capacity are not shrunk.
const MIN_CAPACITY: usize = 64;

/// Usage is kept in `u128` and the bucket level in `i128` because a
/// corrected charge (see [`Cost::actual`]) may exceed the limit: the rule is
/// then overdrawn and admits nothing until the excess has left, as at a
/// provider that bills real usage.
#[derive(Debug)]
enum RuleState {
    /// Charged admissions still inside the window, oldest first, and the sum
    /// of their charges.
    Sliding {
        log: VecDeque<(Instant, u64)>,
        used: u128,
    },
    Fixed {
        window_index: u128,
        used: u128,
    },
    /// `level` is in units where one token is `window` nanoseconds, so a
    /// refill of `limit` tokens per `window` adds exactly `limit` units per
    /// elapsed nanosecond: integer arithmetic, no drift. Negative when
    /// overdrawn.
    Bucket {
        level: i128,
        updated: Instant,
    },
    /// The theoretical arrival time: the earliest instant the next request
    /// conforms.
    Gcra {
        tat: Instant,
    },
    /// Units admitted and not yet released.
    InFlight {
        count: u128,
    },
    /// Periods of `window` from `start` (the key's first request); `period`
    /// is the index of the current one, `previous` and `current` the units
    /// counted in the previous and the current period.
    Counter {
        start: Instant,
        period: u128,
        previous: u128,
        current: u128,
    },
}

impl QuotaBook {
    pub(crate) fn new(rules: Vec<Rule>, origin: Instant) -> Self {
        QuotaBook {
            peaks: vec![0; rules.len()],
            rules,
            origin,
            keys: HashMap::new(),
            epoch: 0,
            since_sweep: 0,
        }
    }

    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Forgets the keys whose every rule is back where a new key starts
    /// (nothing in the window or in flight, the bucket full), and gives the
    /// map's memory back once it is mostly empty: a million clients that
    /// came once leave nothing behind.
    fn sweep(&mut self, now: Instant) {
        self.since_sweep = 0;
        let (rules, origin) = (&self.rules, self.origin);
        self.keys.retain(|_, states| {
            !rules.iter().zip(states.iter_mut()).all(|(rule, state)| {
                state.advance(rule, origin, now);
                state.is_fresh(rule, now)
            })
        });
        if self.keys.capacity() > MIN_CAPACITY && self.keys.len() * 4 < self.keys.capacity() {
            let len = self.keys.len();
            self.keys.shrink_to(len * 2);
        }
    }

    /// The number of keys kept.
    #[cfg(test)]
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Forgets every admission.
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
        self.peaks.fill(0);
        self.epoch += 1;
    }

    /// Whether an admitted request must be [released](QuotaBook::release)
    /// when it ends (some rule is a concurrency rule), and the token to
    /// release it with.
    pub(crate) fn in_flight_epoch(&self) -> Option<u64> {
        self.rules
            .iter()
            .any(|rule| rule.mode() == Mode::Concurrency)
            .then_some(self.epoch)
    }

    /// Ends a request admitted for `key` in `epoch` that was charged
    /// `actual`: concurrency rules take back what it spent of them. Does
    /// nothing if the book was cleared since.
    pub(crate) fn release(&mut self, key: &str, actual: u64, epoch: u64) {
        if epoch != self.epoch {
            return;
        }
        let Some(states) = self.keys.get_mut(key) else {
            return;
        };
        for (rule, state) in self.rules.iter().zip(states.iter_mut()) {
            if let RuleState::InFlight { count } = state {
                *count = count.saturating_sub(u128::from(rule.spend(actual)));
            }
        }
    }

    /// Per rule, the most units one key had in flight at once: `Some` for
    /// concurrency rules, `None` for the others.
    pub(crate) fn peaks_in_flight(&self) -> Vec<Option<u64>> {
        self.rules
            .iter()
            .zip(&self.peaks)
            .map(|(rule, &peak)| {
                (rule.mode() == Mode::Concurrency).then(|| u64::try_from(peak).unwrap_or(u64::MAX))
            })
            .collect()
    }

    /// Changes the limit of the rule at `index` from `now` on, and returns
    /// the changed rule. Every key's state for that rule is first brought up
    /// to `now` under the old limit (a bucket refills at the old rate until
    /// now); what is in use stays in use (a bucket keeps the tokens it
    /// lacks), so a raised limit admits the difference at once and a
    /// lowered one may leave a key over it until its use has left. Fails, changing nothing,
    /// for an index out of range or a zero limit.
    pub(crate) fn set_limit(
        &mut self,
        index: usize,
        limit: u64,
        now: Instant,
    ) -> Result<Rule, String> {
        let count = self.rules.len();
        let rule = self
            .rules
            .get(index)
            .ok_or_else(|| format!("no rule {index}: the server has {count} rules"))?;
        let changed = rule.with_limit(limit);
        changed.validate().map_err(|e| e.to_string())?;
        for states in self.keys.values_mut() {
            if let Some(state) = states.get_mut(index) {
                state.advance(rule, self.origin, now);
                if let RuleState::Bucket { level, .. } = state {
                    let old = bucket_units(rule, rule.limit());
                    let new = bucket_units(&changed, changed.limit());
                    *level = level.saturating_add(new.saturating_sub(old));
                }
            }
        }
        self.rules[index] = changed;
        Ok(changed)
    }

    /// Admits a request for `key` at `now` if every rule has room for what
    /// the declared cost spends of it, charging each rule what the actual
    /// cost spends; otherwise charges nothing, except that sliding window
    /// counters count what the declared cost spends.
    ///
    /// `now` must not go backwards between calls (the server takes it under
    /// the same lock); if it does, the engine treats the gap as zero.
    pub(crate) fn check(&mut self, key: &str, cost: Cost, now: Instant) -> Decision {
        if self.rules.is_empty() {
            return Decision::Admitted { view: None };
        }
        self.since_sweep += 1;
        if self.since_sweep >= self.keys.len().max(SWEEP_EVERY) {
            self.sweep(now);
        }
        let origin = self.origin;
        let rules = &self.rules;
        let states = self
            .keys
            .entry(key.to_owned())
            .or_insert_with(|| rules.iter().map(|rule| RuleState::new(rule, now)).collect());

        let mut refused = false;
        let mut too_costly = false;
        for (rule, state) in rules.iter().zip(states.iter_mut()) {
            state.advance(rule, origin, now);
            let spend = rule.spend(cost.declared);
            if spend > rule.limit() {
                too_costly = true;
            } else if state.wait_for(rule, spend, origin, now).is_some() {
                refused = true;
            }
        }
        if too_costly || refused {
            for (rule, state) in rules.iter().zip(states.iter_mut()) {
                state.count_refused(rule.spend(cost.declared));
            }
            let view = quota_view(rules, states, cost.declared, origin, now);
            if too_costly {
                return Decision::TooCostly { view };
            }
            // Taken after the counting, which may have pushed a counter's
            // room further away. Only a concurrency rule refuses with a zero
            // wait: it cannot tell when.
            let retry_after = rules
                .iter()
                .zip(states.iter())
                .filter_map(|(rule, state)| {
                    state.wait_for(rule, rule.spend(cost.declared), origin, now)
                })
                .max()
                .filter(|wait| !wait.is_zero());
            return Decision::Refused { retry_after, view };
        }
        for ((rule, state), peak) in rules.iter().zip(states.iter_mut()).zip(&mut self.peaks) {
            state.charge(rule, rule.spend(cost.actual), now);
            if let RuleState::InFlight { count } = state {
                *peak = (*peak).max(*count);
            }
        }
        Decision::Admitted {
            view: Some(quota_view(rules, states, cost.declared, origin, now)),
        }
    }
}

/// Every rule's view, and the most restrictive one for a request of `cost`.
fn quota_view(
    rules: &[Rule],
    states: &[RuleState],
    cost: u64,
    origin: Instant,
    now: Instant,
) -> QuotaView {
    let views: Vec<RuleView> = rules
        .iter()
        .zip(states)
        .map(|(rule, state)| state.view(rule, origin, now))
        .collect();
    let fits = |rule: &Rule, view: &RuleView| view.remaining / rule.spend(cost).max(1);
    let (_, restrictive) = rules
        .iter()
        .zip(&views)
        .min_by(|(rule_a, a), (rule_b, b)| {
            fits(rule_a, a)
                .cmp(&fits(rule_b, b))
                .then(b.reset_after.cmp(&a.reset_after))
        })
        .expect("QuotaBook::check returns early when there are no rules");
    QuotaView {
        restrictive: *restrictive,
        rules: views,
    }
}

impl QuotaView {
    /// The rule with the least remaining quota among the weighted
    /// (`weighted`) or unweighted rules, which count in the same unit; among
    /// equals, the one that takes longest to free a unit.
    pub(crate) fn restrictive_among(&self, weighted: bool) -> Option<&RuleView> {
        self.rules
            .iter()
            .filter(|rule| rule.weighted == weighted)
            .min_by(|a, b| {
                a.remaining
                    .cmp(&b.remaining)
                    .then(b.reset_after.cmp(&a.reset_after))
            })
    }
}

fn window_nanos(rule: &Rule) -> u128 {
    rule.window().as_nanos()
}

/// `count` tokens in bucket units (one token is `window` nanoseconds).
fn bucket_units(rule: &Rule, count: u64) -> i128 {
    let token = i128::try_from(window_nanos(rule)).unwrap_or(i128::MAX);
    i128::from(count).saturating_mul(token)
}

fn nanos_to_duration(nanos: u128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// GCRA's emission interval for `spend` units, in nanoseconds: `spend`
/// times `window / limit`, rounded up so that no window ever holds more
/// than `limit` admissions.
fn emission_nanos(rule: &Rule, spend: u64) -> u128 {
    window_nanos(rule)
        .div_ceil(u128::from(rule.limit()))
        .saturating_mul(u128::from(spend))
}

/// `nanos` after `instant`, or about thirty years for a span too large to
/// add.
fn later(instant: Instant, nanos: u128) -> Instant {
    instant
        .checked_add(nanos_to_duration(nanos))
        .unwrap_or_else(|| instant + Duration::from_secs(30 * 365 * 86_400))
}

/// The time from `elapsed` into the current period until a counter with
/// `previous` and `current` units admits `spend` more: the estimate
/// `previous * (window - e) / window + current + spend <= limit`, kept in
/// integers by multiplying through by `window`. `None` if it admits them
/// now. `spend` must not exceed `limit`.
fn counter_wait(
    window: u128,
    limit: u128,
    previous: u128,
    current: u128,
    spend: u128,
    elapsed: u128,
) -> Option<Duration> {
    let weighed = |count: u128, left: u128| count.saturating_mul(left);
    let fits = |room: u128, count: u128, left: u128| weighed(count, left) <= weighed(room, window);
    match limit.checked_sub(current.saturating_add(spend)) {
        Some(room) if fits(room, previous, window - elapsed) => None,
        // Room in this period once enough of `previous` has slid out: at
        // `e` with `previous * (window - e) <= room * window`. `previous`
        // exceeds `room`, or the request would fit now.
        Some(room) => {
            let at = weighed(previous - room, window).div_ceil(previous);
            Some(nanos_to_duration(at.saturating_sub(elapsed)))
        }
        // No room before the next period, where `current` becomes the
        // previous count; it exceeds `limit - spend`, so it must slide out
        // in part. At worst (`spend == limit`) that takes the whole next
        // period, after which both counts are zero.
        None => {
            let room = limit - spend;
            let at = weighed(current - room, window).div_ceil(current);
            Some(nanos_to_duration((window - elapsed).saturating_add(at)))
        }
    }
}

impl RuleState {
    fn new(rule: &Rule, now: Instant) -> Self {
        match rule.mode() {
            Mode::SlidingLog => RuleState::Sliding {
                log: VecDeque::new(),
                used: 0,
            },
            Mode::FixedWindow => RuleState::Fixed {
                window_index: 0,
                used: 0,
            },
            Mode::TokenBucket => RuleState::Bucket {
                level: bucket_units(rule, rule.limit()),
                updated: now,
            },
            Mode::Gcra => RuleState::Gcra { tat: now },
            Mode::Concurrency => RuleState::InFlight { count: 0 },
            Mode::SlidingWindowCounter => RuleState::Counter {
                start: now,
                period: 0,
                previous: 0,
                current: 0,
            },
        }
    }

    /// Whether the state (brought up to `now`) is what a new key starts
    /// with, as far as any decision can tell.
    fn is_fresh(&self, rule: &Rule, now: Instant) -> bool {
        match self {
            RuleState::Sliding { log, .. } => log.is_empty(),
            RuleState::Fixed { used, .. } => *used == 0,
            RuleState::Bucket { level, .. } => *level >= bucket_units(rule, rule.limit()),
            RuleState::Gcra { tat } => *tat <= now,
            RuleState::InFlight { count } => *count == 0,
            RuleState::Counter {
                previous, current, ..
            } => *previous == 0 && *current == 0,
        }
    }

    /// Brings the state up to `now`: expire log entries, roll the fixed
    /// window, refill the bucket, roll the counter's periods.
    fn advance(&mut self, rule: &Rule, origin: Instant, now: Instant) {
        match self {
            RuleState::Sliding { log, used } => {
                // Half-open window: an admission at `t` counts at `now` while
                // `now < t + window`.
                while let Some(&(t, charged)) = log.front() {
                    if t + rule.window() > now {
                        break;
                    }
                    *used -= u128::from(charged);
                    log.pop_front();
                }
            }
            RuleState::Fixed { window_index, used } => {
                let index = now.saturating_duration_since(origin).as_nanos() / window_nanos(rule);
                if index != *window_index {
                    *window_index = index;
                    *used = 0;
                }
            }
            RuleState::Bucket { level, updated } => {
                let elapsed = now.saturating_duration_since(*updated).as_nanos();
                let refill = i128::try_from(elapsed.saturating_mul(u128::from(rule.limit())))
                    .unwrap_or(i128::MAX);
                *level = level
                    .saturating_add(refill)
                    .min(bucket_units(rule, rule.limit()));
                *updated = (*updated).max(now);
            }
            // Conformance is a comparison with `tat`, and requests in
            // flight end when released; nothing decays.
            RuleState::Gcra { .. } | RuleState::InFlight { .. } => {}
            RuleState::Counter {
                start,
                period,
                previous,
                current,
            } => {
                let index = now.saturating_duration_since(*start).as_nanos() / window_nanos(rule);
                if index > *period {
                    *previous = if index == *period + 1 { *current } else { 0 };
                    *current = 0;
                    *period = index;
                }
            }
        }
    }

    /// `None` if `spend` more units fit now, else how long until they do:
    /// zero for a concurrency rule, which cannot tell. `spend` must not
    /// exceed the rule's limit. Spending nothing always
    /// fits, even while the rule is overdrawn.
    fn wait_for(&self, rule: &Rule, spend: u64, origin: Instant, now: Instant) -> Option<Duration> {
        if spend == 0 {
            return None;
        }
        let limit = u128::from(rule.limit());
        match self {
            RuleState::Sliding { log, used } => {
                let spend = u128::from(spend);
                if used + spend <= limit {
                    return None;
                }
                // The oldest entries leave first; wait for the one whose
                // leaving frees enough.
                let must_free = used + spend - limit;
                let mut freed = 0;
                let leaving = log.iter().find(|&&(_, charged)| {
                    freed += u128::from(charged);
                    freed >= must_free
                });
                Some(leaving.map_or(rule.window(), |&(t, _)| {
                    (t + rule.window()).saturating_duration_since(now)
                }))
            }
            RuleState::Fixed { used, .. } => {
                (used + u128::from(spend) > limit).then(|| until_boundary(rule, origin, now))
            }
            RuleState::Bucket { level, .. } => {
                let need = bucket_units(rule, spend);
                (*level < need).then(|| {
                    let missing = u128::try_from(need.saturating_sub(*level)).unwrap_or(u128::MAX);
                    nanos_to_duration(missing.div_ceil(limit))
                })
            }
            RuleState::Gcra { tat } => (now < *tat).then(|| tat.duration_since(now)),
            RuleState::InFlight { count } => {
                (count.saturating_add(u128::from(spend)) > limit).then_some(Duration::ZERO)
            }
            RuleState::Counter {
                start,
                period,
                previous,
                current,
            } => {
                let window = window_nanos(rule);
                let elapsed = counter_elapsed(window, *start, *period, now);
                counter_wait(
                    window,
                    limit,
                    *previous,
                    *current,
                    u128::from(spend),
                    elapsed,
                )
            }
        }
    }

    /// Counts a refused request: only a sliding window counter does.
    fn count_refused(&mut self, spend: u64) {
        if let RuleState::Counter { current, .. } = self {
            *current = current.saturating_add(u128::from(spend));
        }
    }

    fn charge(&mut self, rule: &Rule, spend: u64, now: Instant) {
        match self {
            RuleState::Sliding { log, used } => {
                if spend > 0 {
                    log.push_back((now, spend));
                    *used += u128::from(spend);
                }
            }
            RuleState::Fixed { used, .. } => *used += u128::from(spend),
            RuleState::Bucket { level, .. } => {
                *level = level.saturating_sub(bucket_units(rule, spend));
            }
            RuleState::Gcra { tat } => {
                *tat = later((*tat).max(now), emission_nanos(rule, spend));
            }
            RuleState::Counter { current, .. } | RuleState::InFlight { count: current } => {
                *current = current.saturating_add(u128::from(spend));
            }
        }
    }

    fn view(&self, rule: &Rule, origin: Instant, now: Instant) -> RuleView {
        let limit = rule.limit();
        let remaining = match self {
            RuleState::Sliding { used, .. }
            | RuleState::Fixed { used, .. }
            | RuleState::InFlight { count: used } => {
                u64::try_from(u128::from(limit).saturating_sub(*used)).unwrap_or(0)
            }
            RuleState::Bucket { level, .. } => {
                let whole = (*level).max(0) / bucket_units(rule, 1);
                u64::try_from(whole).unwrap_or(limit).min(limit)
            }
            // No burst: one request now, or none; a weighted rule admits
            // any cost up to its limit once the interval has passed.
            RuleState::Gcra { tat } => match (now >= *tat, rule.is_weighted()) {
                (false, _) => 0,
                (true, false) => 1,
                (true, true) => limit,
            },
            RuleState::Counter {
                start,
                period,
                previous,
                current,
            } => {
                // floor(limit - estimate), in units of 1/window.
                let window = window_nanos(rule);
                let elapsed = counter_elapsed(window, *start, *period, now);
                let used = previous
                    .saturating_mul(window - elapsed)
                    .saturating_add(current.saturating_mul(window));
                let room = u128::from(limit)
                    .saturating_mul(window)
                    .saturating_sub(used)
                    / window;
                u64::try_from(room).unwrap_or(limit).min(limit)
            }
        };
        let reset_after = if remaining >= limit {
            Duration::ZERO
        } else {
            self.wait_for(rule, remaining + 1, origin, now)
                .unwrap_or(Duration::ZERO)
        };
        RuleView {
            limit,
            remaining,
            reset_after,
            weighted: rule.is_weighted(),
        }
    }
}

/// Time since the counter's current period began, in nanoseconds (below
/// `window`).
fn counter_elapsed(window: u128, start: Instant, period: u128, now: Instant) -> u128 {
    now.saturating_duration_since(start)
        .as_nanos()
        .saturating_sub(period.saturating_mul(window))
        .min(window - 1)
}

fn until_boundary(rule: &Rule, origin: Instant, now: Instant) -> Duration {
    let window = window_nanos(rule);
    let elapsed = now.saturating_duration_since(origin).as_nanos();
    nanos_to_duration(window - elapsed % window)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod shape_tests;

#[cfg(test)]
mod limit_tests;

#[cfg(test)]
mod concurrency_tests;
