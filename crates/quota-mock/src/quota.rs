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
    /// Some rule had no room; nothing was recorded. `retry_after` is the
    /// earliest delay after which every rule has room again.
    Refused {
        retry_after: Duration,
        view: QuotaView,
    },
    /// The declared cost is more than some weighted rule's whole limit, so
    /// no wait would ever admit it; nothing was recorded.
    TooCostly { view: QuotaView },
}

/// Quota state for every key and rule.
#[derive(Debug)]
pub(crate) struct QuotaBook {
    rules: Vec<Rule>,
    /// Fixed windows are aligned to this instant.
    origin: Instant,
    keys: HashMap<String, Vec<RuleState>>,
}

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

    /// Admits a request for `key` at `now` if every rule has room for what
    /// the declared cost spends of it, charging each rule what the actual
    /// cost spends; otherwise records nothing.
    ///
    /// `now` must not go backwards between calls (the server takes it under
    /// the same lock); if it does, the engine treats the gap as zero.
    pub(crate) fn check(&mut self, key: &str, cost: Cost, now: Instant) -> Decision {
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
        let mut too_costly = false;
        for (rule, state) in rules.iter().zip(states.iter_mut()) {
            state.advance(rule, origin, now);
            let spend = rule.spend(cost.declared);
            if spend > rule.limit() {
                too_costly = true;
            } else if let Some(rule_wait) = state.wait_for(rule, spend, origin, now) {
                wait = Some(wait.map_or(rule_wait, |w| w.max(rule_wait)));
            }
        }
        if too_costly {
            let view = quota_view(rules, states, cost.declared, origin, now);
            return Decision::TooCostly { view };
        }
        if let Some(retry_after) = wait {
            let view = quota_view(rules, states, cost.declared, origin, now);
            return Decision::Refused { retry_after, view };
        }
        for (rule, state) in rules.iter().zip(states.iter_mut()) {
            state.charge(rule, rule.spend(cost.actual), now);
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
        }
    }

    /// Brings the state up to `now`: expire log entries, roll the fixed
    /// window, refill the bucket.
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
        }
    }

    /// `None` if `spend` more units fit now, else how long until they do.
    /// `spend` must not exceed the rule's limit. Spending nothing always
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
        }
    }

    fn view(&self, rule: &Rule, origin: Instant, now: Instant) -> RuleView {
        let limit = rule.limit();
        let remaining = match self {
            RuleState::Sliding { used, .. } | RuleState::Fixed { used, .. } => {
                u64::try_from(u128::from(limit).saturating_sub(*used)).unwrap_or(0)
            }
            RuleState::Bucket { level, .. } => {
                let whole = (*level).max(0) / bucket_units(rule, 1);
                u64::try_from(whole).unwrap_or(limit).min(limit)
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

fn until_boundary(rule: &Rule, origin: Instant, now: Instant) -> Duration {
    let window = window_nanos(rule);
    let elapsed = now.saturating_duration_since(origin).as_nanos();
    nanos_to_duration(window - elapsed % window)
}

#[cfg(test)]
mod tests;
