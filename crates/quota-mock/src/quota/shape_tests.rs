//! GCRA without burst and the sliding window counter, driven with explicit
//! instants.

use std::time::Duration;

use tokio::time::Instant;

use super::{Decision, QuotaBook, QuotaView, RuleView, counter_wait};
use crate::cost::Cost;
use crate::rule::Rule;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn admitted(decision: Decision) -> bool {
    matches!(decision, Decision::Admitted { .. })
}

fn retry_after(decision: Decision) -> Duration {
    match decision {
        Decision::Refused { retry_after, .. } => retry_after.expect("a Retry-After"),
        Decision::Admitted { .. } | Decision::TooCostly { .. } => {
            panic!("expected a refusal, got {decision:?}")
        }
    }
}

fn view_of(decision: Decision) -> QuotaView {
    match decision {
        Decision::Admitted { view: Some(view) }
        | Decision::Refused { view, .. }
        | Decision::TooCostly { view } => view,
        Decision::Admitted { view: None } => panic!("no rules, no view"),
    }
}

/// The first rule's view of key `k` at `now`, without a request.
fn peek(book: &mut QuotaBook, now: Instant) -> RuleView {
    let rule = book.rules[0];
    let state = &mut book.keys.get_mut("k").expect("key k was seen")[0];
    state.advance(&rule, book.origin, now);
    state.view(&rule, book.origin, now)
}

#[test]
fn gcra_admits_one_request_per_emission_interval_and_no_burst() {
    let start = Instant::now();
    // 5 per second: one every 200ms.
    let mut book = QuotaBook::new(vec![Rule::no_burst(5, ms(1000))], start);
    assert!(admitted(book.check("k", Cost::ONE, start)));
    assert_eq!(retry_after(book.check("k", Cost::ONE, start)), ms(200));
    let just_before = start + ms(200) - Duration::from_nanos(1);
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, just_before)),
        Duration::from_nanos(1)
    );
    assert!(admitted(book.check("k", Cost::ONE, start + ms(200))));
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(250))),
        ms(150)
    );
    // A long idle spell earns no burst.
    assert!(admitted(book.check("k", Cost::ONE, start + ms(5000))));
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(5000))),
        ms(200)
    );
}

#[test]
fn gcra_refusals_consume_nothing() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::no_burst(5, ms(1000))], start);
    let mut accepted = Vec::new();
    // A request every millisecond for a second.
    for i in 0..1000 {
        if admitted(book.check("k", Cost::ONE, start + ms(i))) {
            accepted.push(i);
        }
    }
    assert_eq!(accepted, [0, 200, 400, 600, 800]);
}

#[test]
fn gcra_interval_is_rounded_up_so_no_window_holds_more_than_limit() {
    let start = Instant::now();
    let window = ms(1000);
    // 1s / 3 is not a whole number of nanoseconds.
    let mut book = QuotaBook::new(vec![Rule::no_burst(3, window)], start);
    let mut now = start;
    let mut accepted = Vec::new();
    while accepted.len() < 30 {
        match book.check("k", Cost::ONE, now) {
            Decision::Admitted { .. } => accepted.push(now),
            Decision::Refused { retry_after, .. } => now += retry_after.unwrap(),
            Decision::TooCostly { .. } => unreachable!(),
        }
    }
    for pair in accepted.windows(2) {
        assert_eq!(pair[1] - pair[0], Duration::from_nanos(333_333_334));
    }
    for group in accepted.windows(4) {
        assert!(group[3] - group[0] >= window);
    }
}

#[test]
fn weighted_gcra_holds_the_next_request_off_for_cost_intervals() {
    let start = Instant::now();
    // 10 units per second: one unit every 100ms.
    let mut book = QuotaBook::new(vec![Rule::no_burst(10, ms(1000)).weighted()], start);
    assert!(admitted(book.check("k", Cost::exact(3), start)));
    assert_eq!(
        retry_after(book.check("k", Cost::exact(1), start + ms(100))),
        ms(200)
    );
    // Any cost up to the limit conforms once the interval has passed.
    assert!(admitted(book.check("k", Cost::exact(10), start + ms(300))));
    assert_eq!(
        retry_after(book.check("k", Cost::exact(1), start + ms(300))),
        ms(1000)
    );
    assert!(matches!(
        book.check("k", Cost::exact(11), start + ms(5000)),
        Decision::TooCostly { .. }
    ));
}

#[test]
fn gcra_view_offers_one_request_or_none() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::no_burst(5, ms(1000))], start);
    let view = view_of(book.check("k", Cost::ONE, start));
    assert_eq!(
        view.restrictive,
        RuleView {
            limit: 5,
            remaining: 0,
            reset_after: ms(200),
            weighted: false,
        }
    );
    let view = view_of(book.check("k", Cost::ONE, start + ms(50)));
    assert_eq!(view.restrictive.remaining, 0);
    assert_eq!(view.restrictive.reset_after, ms(150));
    // Admitted at 200ms; by 400ms one more may go, and only one.
    book.check("k", Cost::ONE, start + ms(200));
    let view = peek(&mut book, start + ms(400));
    assert_eq!(view.remaining, 1);
    assert_eq!(view.reset_after, Duration::ZERO);
}

#[test]
fn counter_weighs_the_previous_period_and_counts_refusals() {
    let start = Instant::now();
    // Periods [0, 1s), [1s, 2s), ... from the key's first request.
    let mut book = QuotaBook::new(vec![Rule::sliding_window_counter(10, ms(1000))], start);
    for _ in 0..10 {
        assert!(admitted(book.check("k", Cost::ONE, start)));
    }
    // Estimate 10 * (1 - 0) + 0 = 10: refused, and counted (current 1).
    // Room for one more when 10 * (1 - e) + 1 + 1 <= 10: e = 200ms.
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(1000))),
        ms(200)
    );
    // 10 * 0.8 + 1 = 9: admitted (current 2).
    assert!(admitted(book.check("k", Cost::ONE, start + ms(1200))));
    // 8 + 2 = 10: refused (current 3); room at 10 * (1 - e) + 4 <= 10.
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(1200))),
        ms(200)
    );
    // 7 + 3 = 10: refused (current 4), which pushes the room to 500ms.
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(1300))),
        ms(200)
    );
    assert!(!admitted(book.check("k", Cost::ONE, start + ms(1499))));
    // The refusal at 1499ms counted too: 5 + 5 + 1 > 10 at 1500ms.
    assert!(!admitted(book.check("k", Cost::ONE, start + ms(1500))));
    // 10 * 0.3 + 6 + 1 = 10 at 1700ms.
    assert!(admitted(book.check("k", Cost::ONE, start + ms(1700))));
}

#[test]
fn counter_retry_after_may_reach_into_the_next_period() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::sliding_window_counter(4, ms(1000))], start);
    for _ in 0..4 {
        assert!(admitted(book.check("k", Cost::ONE, start)));
    }
    // Refused at 500ms (current 5): the next period starts with previous
    // 5, and 5 * (1 - e) + 1 <= 4 at e = 400ms.
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(500))),
        ms(900)
    );
    assert!(admitted(book.check("k", Cost::ONE, start + ms(1400))));
}

#[test]
fn counter_forgets_everything_after_an_idle_period() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::sliding_window_counter(10, ms(1000))], start);
    for _ in 0..5 {
        book.check("k", Cost::ONE, start);
    }
    // In [2s, 3s) the previous period [1s, 2s) was empty.
    let view = peek(&mut book, start + ms(2500));
    assert_eq!(view.remaining, 10);
    assert_eq!(view.reset_after, Duration::ZERO);
    // In [1s, 2s) the 5 of [0, 1s) weigh by what still overlaps.
    let mut book = QuotaBook::new(vec![Rule::sliding_window_counter(10, ms(1000))], start);
    for _ in 0..5 {
        book.check("k", Cost::ONE, start);
    }
    let view = peek(&mut book, start + ms(1500));
    // 10 - 2.5 = 7.5 rounds down; the 8th unit frees at 1600ms.
    assert_eq!(view.remaining, 7);
    assert_eq!(view.reset_after, ms(100));
}

#[test]
fn hammering_a_counter_stays_refused_where_a_log_admits_the_limit() {
    let start = Instant::now();
    let window = ms(1000);
    let mut counter = QuotaBook::new(vec![Rule::sliding_window_counter(5, window)], start);
    let mut log = QuotaBook::new(vec![Rule::sliding_log(5, window)], start);
    let (mut by_counter, mut by_log) = (0, 0);
    // Twice the limit, for five seconds.
    for i in 0..50 {
        let now = start + ms(i * 100);
        by_counter += u32::from(admitted(counter.check("k", Cost::ONE, now)));
        by_log += u32::from(admitted(log.check("k", Cost::ONE, now)));
    }
    assert_eq!(by_log, 25);
    assert_eq!(by_counter, 5);
}

#[test]
fn a_client_that_obeys_the_counter_retry_after_is_admitted() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::sliding_window_counter(7, ms(1000))], start);
    let mut now = start;
    let mut accepted = 0;
    while now < start + ms(20_000) {
        match book.check("k", Cost::ONE, now) {
            Decision::Admitted { .. } => {
                accepted += 1;
                now += ms(13);
            }
            Decision::Refused { retry_after, .. } => {
                now += retry_after.unwrap();
                assert!(
                    admitted(book.check("k", Cost::ONE, now)),
                    "refused at Retry-After"
                );
                accepted += 1;
            }
            Decision::TooCostly { .. } => unreachable!(),
        }
    }
    // After the first burst each admission follows a refusal that was
    // counted too, so about half the limit gets through.
    assert!((3 * 19..=7 * 20).contains(&accepted), "{accepted} admitted");
}

#[test]
fn weighted_counter_counts_refused_and_too_costly_costs() {
    let start = Instant::now();
    let mut book = QuotaBook::new(
        vec![Rule::sliding_window_counter(100, ms(1000)).weighted()],
        start,
    );
    assert!(admitted(book.check("k", Cost::exact(60), start)));
    // 60 + 50 > 100: refused, and the 50 counted (110).
    assert!(!admitted(book.check("k", Cost::exact(50), start + ms(10))));
    // 110 + 1 > 100 now, though 60 + 1 would have fitted.
    assert!(!admitted(book.check("k", Cost::exact(1), start + ms(20))));
    // A cost above the whole limit is refused for good, and counted too.
    let mut book = QuotaBook::new(
        vec![Rule::sliding_window_counter(100, ms(1000)).weighted()],
        start,
    );
    assert!(matches!(
        book.check("k", Cost::exact(150), start),
        Decision::TooCostly { .. }
    ));
    assert!(!admitted(book.check("k", Cost::exact(1), start)));
}

#[test]
fn a_counter_counts_what_another_rule_refused() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(1, ms(1000)),
        Rule::sliding_window_counter(3, ms(1000)),
    ];
    let mut book = QuotaBook::new(rules, start);
    assert!(admitted(book.check("k", Cost::ONE, start)));
    // The log refuses these; the counter counts them (current 3).
    assert!(!admitted(book.check("k", Cost::ONE, start + ms(100))));
    assert!(!admitted(book.check("k", Cost::ONE, start + ms(200))));
    // The log has room at 1000ms but the counter (3 * 1.0 + 0 + 1 > 3)
    // does not, and counts this refusal too (current 1); Retry-After is
    // the counter's: 3 * (1 - e) + 1 + 1 <= 3 at e = 2/3 s, rounded up to
    // the nanosecond.
    let wait = retry_after(book.check("k", Cost::ONE, start + ms(1000)));
    assert_eq!(wait, Duration::from_nanos(666_666_667));
}

/// The earliest elapsed time, on a grid of whole nanoseconds, at which the
/// estimate admits `spend`, found by walking forward a nanosecond at a
/// time.
fn counter_wait_by_walking(
    window: u128,
    limit: u128,
    previous: u128,
    current: u128,
    spend: u128,
    elapsed: u128,
) -> u128 {
    let fits = |previous: u128, current: u128, e: u128| {
        previous * (window - e) + (current + spend) * window <= limit * window
    };
    for t in 0..3 * window {
        let at = elapsed + t;
        let admits = match at / window {
            0 => fits(previous, current, at),
            1 => fits(current, 0, at - window),
            _ => fits(0, 0, 0),
        };
        if admits {
            return t;
        }
    }
    unreachable!("two periods later both counts are zero")
}

#[test]
fn counter_wait_agrees_with_walking_the_clock() {
    let window = 40;
    for limit in 1..=5 {
        for previous in 0..=9 {
            for current in 0..=9 {
                for spend in 1..=limit {
                    for elapsed in (0..window).step_by(3) {
                        let walked = counter_wait_by_walking(
                            window, limit, previous, current, spend, elapsed,
                        );
                        let computed =
                            counter_wait(window, limit, previous, current, spend, elapsed)
                                .map_or(0, |wait| wait.as_nanos());
                        assert_eq!(
                            computed, walked,
                            "limit {limit}, previous {previous}, current {current}, \
                             spend {spend}, elapsed {elapsed}"
                        );
                    }
                }
            }
        }
    }
}
