//! The server-side quota engine: per-key state for every rule, decided at
//! explicit instants so it can be tested without a clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::rule::{Mode, Rule};

/// What one rule looks like to a client at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RuleView {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    /// Time from the decision until the rule frees its next unit of quota
    /// (zero when nothing is in use).
    pub(crate) reset_after: Duration,
}

/// Every rule as a client sees it at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuotaView {
    /// The rule with the least remaining quota; among equals, the one that
    /// takes longest to free a unit.
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
    /// Some rule had no room; nothing was recorded. `retry_after` is the
    /// earliest delay after which every rule has room again.
    Refused {
        retry_after: Duration,
        view: QuotaView,
    },
}

/// Quota state for every key and rule.
#[derive(Debug)]
pub(crate) struct QuotaBook {
    rules: Vec<Rule>,
    /// Fixed windows are aligned to this instant.
    origin: Instant,
    keys: HashMap<String, Vec<RuleState>>,
}

#[derive(Debug)]
enum RuleState {
    /// Admission instants still inside the window, oldest first.
    Sliding(VecDeque<Instant>),
    Fixed {
        window_index: u128,
        count: u64,
    },
    /// `level` is in units where one token is `window` nanoseconds, so a
    /// refill of `limit` tokens per `window` adds exactly `limit` units per
    /// elapsed nanosecond: integer arithmetic, no drift.
    Bucket {
        level: u128,
        updated: Instant,
    },
}

impl QuotaBook {
    pub(crate) fn new(rules: Vec<Rule>, origin: Instant) -> Self {
        QuotaBook {
            rules,
            origin,
            keys: HashMap::new(),
        }
    }

    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Forgets every admission.
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
    }

    /// Admits a request for `key` at `now` if every rule has room, recording
    /// it in all of them; otherwise records nothing.
    ///
    /// `now` must not go backwards between calls (the server takes it under
    /// the same lock); if it does, the engine treats the gap as zero.
    pub(crate) fn check(&mut self, key: &str, now: Instant) -> Decision {
        if self.rules.is_empty() {
            return Decision::Admitted { view: None };
        }
        let origin = self.origin;
        let rules = &self.rules;
        let states = self
            .keys
            .entry(key.to_owned())
            .or_insert_with(|| rules.iter().map(|rule| RuleState::new(rule, now)).collect());

        let mut wait: Option<Duration> = None;
        for (rule, state) in rules.iter().zip(states.iter_mut()) {
            state.advance(rule, origin, now);
            if let Some(rule_wait) = state.wait_for_room(rule, origin, now) {
                wait = Some(wait.map_or(rule_wait, |w| w.max(rule_wait)));
            }
        }
        if let Some(retry_after) = wait {
            let view = quota_view(rules, states, origin, now);
            return Decision::Refused { retry_after, view };
        }
        for (rule, state) in rules.iter().zip(states.iter_mut()) {
            state.admit(rule, now);
        }
        Decision::Admitted {
            view: Some(quota_view(rules, states, origin, now)),
        }
    }
}

/// Every rule's view, and the most restrictive one: the least remaining
/// quota, and among equals the one that takes longest to free a unit.
fn quota_view(rules: &[Rule], states: &[RuleState], origin: Instant, now: Instant) -> QuotaView {
    let rules: Vec<RuleView> = rules
        .iter()
        .zip(states)
        .map(|(rule, state)| state.view(rule, origin, now))
        .collect();
    let restrictive = *rules
        .iter()
        .min_by(|a, b| {
            a.remaining
                .cmp(&b.remaining)
                .then(b.reset_after.cmp(&a.reset_after))
        })
        .expect("QuotaBook::check returns early when there are no rules");
    QuotaView { restrictive, rules }
}

fn window_nanos(rule: &Rule) -> u128 {
    rule.window().as_nanos()
}

fn nanos_to_duration(nanos: u128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn div_ceil(numerator: u128, denominator: u128) -> u128 {
    numerator.div_ceil(denominator)
}

impl RuleState {
    fn new(rule: &Rule, now: Instant) -> Self {
        match rule.mode() {
            Mode::SlidingLog => RuleState::Sliding(VecDeque::new()),
            Mode::FixedWindow => RuleState::Fixed {
                window_index: 0,
                count: 0,
            },
            Mode::TokenBucket => RuleState::Bucket {
                level: u128::from(rule.limit()).saturating_mul(window_nanos(rule)),
                updated: now,
            },
        }
    }

    /// Brings the state up to `now`: expire log entries, roll the fixed
    /// window, refill the bucket.
    fn advance(&mut self, rule: &Rule, origin: Instant, now: Instant) {
        match self {
            RuleState::Sliding(log) => {
                // Half-open window: an admission at `t` counts at `now` while
                // `now < t + window`.
                while log.front().is_some_and(|&t| t + rule.window() <= now) {
                    log.pop_front();
                }
            }
            RuleState::Fixed {
                window_index,
                count,
            } => {
                let index = now.saturating_duration_since(origin).as_nanos() / window_nanos(rule);
                if index != *window_index {
                    *window_index = index;
                    *count = 0;
                }
            }
            RuleState::Bucket { level, updated } => {
                let capacity = u128::from(rule.limit()).saturating_mul(window_nanos(rule));
                let elapsed = now.saturating_duration_since(*updated).as_nanos();
                *level = level
                    .saturating_add(elapsed.saturating_mul(u128::from(rule.limit())))
                    .min(capacity);
                *updated = (*updated).max(now);
            }
        }
    }

    /// `None` if one more admission fits now, else how long until it does.
    fn wait_for_room(&self, rule: &Rule, origin: Instant, now: Instant) -> Option<Duration> {
        match self {
            RuleState::Sliding(log) => {
                let len = log.len() as u64;
                if len < rule.limit() {
                    return None;
                }
                // `len - limit + 1` entries must leave; the last of them is
                // at index `len - limit`.
                let index = usize::try_from(len - rule.limit()).unwrap_or(usize::MAX);
                let leaving = log.get(index).copied().unwrap_or(now);
                Some((leaving + rule.window()).saturating_duration_since(now))
            }
            RuleState::Fixed { count, .. } => {
                (*count >= rule.limit()).then(|| until_boundary(rule, origin, now))
            }
            RuleState::Bucket { level, .. } => {
                let token = window_nanos(rule);
                (*level < token)
                    .then(|| nanos_to_duration(div_ceil(token - level, u128::from(rule.limit()))))
            }
        }
    }

    fn admit(&mut self, rule: &Rule, now: Instant) {
        match self {
            RuleState::Sliding(log) => log.push_back(now),
            RuleState::Fixed { count, .. } => *count += 1,
            RuleState::Bucket { level, .. } => *level = level.saturating_sub(window_nanos(rule)),
        }
    }

    fn view(&self, rule: &Rule, origin: Instant, now: Instant) -> RuleView {
        let (remaining, reset_after) = match self {
            RuleState::Sliding(log) => {
                let remaining = rule.limit().saturating_sub(log.len() as u64);
                let reset_after = log.front().map_or(Duration::ZERO, |&t| {
                    (t + rule.window()).saturating_duration_since(now)
                });
                (remaining, reset_after)
            }
            RuleState::Fixed { count, .. } => (
                rule.limit().saturating_sub(*count),
                until_boundary(rule, origin, now),
            ),
            RuleState::Bucket { level, .. } => {
                let token = window_nanos(rule);
                let capacity = u128::from(rule.limit()).saturating_mul(token);
                let whole = *level / token;
                let reset_after = if *level >= capacity {
                    Duration::ZERO
                } else {
                    let next = (whole + 1) * token;
                    nanos_to_duration(div_ceil(next - level, u128::from(rule.limit())))
                };
                (u64::try_from(whole).unwrap_or(u64::MAX), reset_after)
            }
        };
        RuleView {
            limit: rule.limit(),
            remaining,
            reset_after,
        }
    }
}

fn until_boundary(rule: &Rule, origin: Instant, now: Instant) -> Duration {
    let window = window_nanos(rule);
    let elapsed = now.saturating_duration_since(origin).as_nanos();
    nanos_to_duration(window - elapsed % window)
}

#[cfg(test)]
mod tests;
