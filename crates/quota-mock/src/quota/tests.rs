//! The quota engine driven with explicit instants: exact, no clock involved.

use std::time::Duration;

use tokio::time::Instant;

use super::{Decision, QuotaBook, QuotaView, RuleView};
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

#[test]
fn sliding_log_refuses_the_sixth_until_the_oldest_leaves() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::sliding_log(5, ms(1000))], start);
    for i in 0..5 {
        assert!(
            admitted(book.check("k", Cost::ONE, start + ms(i * 100))),
            "request {i}"
        );
    }
    // At 450ms the oldest (0ms) leaves at 1000ms.
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(450))),
        ms(550)
    );
    // Still inside the half-open window one nanosecond before.
    let just_before = start + ms(1000) - Duration::from_nanos(1);
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, just_before)),
        Duration::from_nanos(1)
    );
    assert!(admitted(book.check("k", Cost::ONE, start + ms(1000))));
    // Now the 100ms entry is oldest.
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(1000))),
        ms(100)
    );
}

#[test]
fn sliding_log_never_holds_more_than_limit_in_any_window() {
    let start = Instant::now();
    let window = ms(1000);
    let mut book = QuotaBook::new(vec![Rule::sliding_log(7, window)], start);
    let mut accepted = Vec::new();
    // A request every 37ms for 20s.
    for i in 0..540u64 {
        let at = ms(i * 37);
        if admitted(book.check("k", Cost::ONE, start + at)) {
            accepted.push(at);
        }
    }
    for (i, &t) in accepted.iter().enumerate() {
        let in_window = accepted[i..]
            .iter()
            .take_while(|&&u| u < t + window)
            .count();
        assert!(
            in_window <= 7,
            "{in_window} admissions in the window starting at {t:?}"
        );
    }
    // 20s at 7/s, give or take the edges.
    assert!(accepted.len() >= 7 * 19, "only {} admitted", accepted.len());
}

#[test]
fn fixed_window_allows_a_double_burst_across_a_boundary() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::fixed_window(5, ms(1000))], start);
    for i in 0..5 {
        assert!(admitted(book.check(
            "k",
            Cost::ONE,
            start + ms(990) + Duration::from_micros(i)
        )));
    }
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(995))),
        ms(5)
    );
    for i in 0..5 {
        assert!(admitted(book.check(
            "k",
            Cost::ONE,
            start + ms(1000) + Duration::from_micros(i)
        )));
    }
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(1010))),
        ms(990)
    );
}

#[test]
fn token_bucket_refills_continuously() {
    let start = Instant::now();
    // 10 tokens, 10 per second: one token every 100ms.
    let mut book = QuotaBook::new(vec![Rule::token_bucket(10, ms(1000))], start);
    for _ in 0..10 {
        assert!(admitted(book.check("k", Cost::ONE, start)));
    }
    assert_eq!(retry_after(book.check("k", Cost::ONE, start)), ms(100));
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(30))),
        ms(70)
    );
    assert!(admitted(book.check("k", Cost::ONE, start + ms(100))));
    assert!(!admitted(book.check("k", Cost::ONE, start + ms(100))));
    // 250ms later: two and a half tokens, so two admissions.
    assert!(admitted(book.check("k", Cost::ONE, start + ms(350))));
    assert!(admitted(book.check("k", Cost::ONE, start + ms(350))));
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(350))),
        ms(50)
    );
    // The bucket never holds more than its capacity.
    let later = start + ms(60_000);
    for _ in 0..10 {
        assert!(admitted(book.check("k", Cost::ONE, later)));
    }
    assert!(!admitted(book.check("k", Cost::ONE, later)));
}

#[test]
fn every_rule_must_have_room_and_a_refusal_consumes_nothing() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(3, ms(1000)),
        Rule::sliding_log(5, ms(10_000)),
    ];
    let mut book = QuotaBook::new(rules, start);
    for _ in 0..3 {
        assert!(admitted(book.check("k", Cost::ONE, start)));
    }
    // Many refusals by the short rule must not fill the long one.
    for _ in 0..100 {
        assert!(!admitted(book.check("k", Cost::ONE, start + ms(10))));
    }
    assert!(admitted(book.check("k", Cost::ONE, start + ms(1000))));
    assert!(admitted(book.check("k", Cost::ONE, start + ms(1000))));
    // The long rule is now full (5 in 10s): wait until its oldest leaves.
    assert_eq!(
        retry_after(book.check("k", Cost::ONE, start + ms(1000))),
        ms(9000)
    );
}

#[test]
fn retry_after_is_the_longest_wait_among_refusing_rules() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(1, ms(1000)),
        Rule::fixed_window(1, ms(60_000)),
    ];
    let mut book = QuotaBook::new(rules, start);
    assert!(admitted(book.check("k", Cost::ONE, start + ms(500))));
    match book.check("k", Cost::ONE, start + ms(600)) {
        Decision::Refused { retry_after, view } => {
            assert_eq!(retry_after, Some(ms(59_400)));
            assert_eq!(
                view.restrictive,
                RuleView {
                    limit: 1,
                    remaining: 0,
                    reset_after: ms(59_400),
                    weighted: false,
                }
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn keys_have_separate_quotas() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::sliding_log(2, ms(1000))], start);
    assert!(admitted(book.check("a", Cost::ONE, start)));
    assert!(admitted(book.check("a", Cost::ONE, start)));
    assert!(!admitted(book.check("a", Cost::ONE, start)));
    assert!(admitted(book.check("b", Cost::ONE, start)));
    assert!(admitted(book.check("b", Cost::ONE, start)));
    assert!(!admitted(book.check("b", Cost::ONE, start)));
}

#[test]
fn view_reports_the_most_restrictive_rule() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(10, ms(1000)),
        Rule::sliding_log(3, ms(60_000)),
    ];
    let mut book = QuotaBook::new(rules, start);
    match book.check("k", Cost::ONE, start) {
        Decision::Admitted { view: Some(view) } => {
            assert_eq!(view.rules.len(), 2);
            assert_eq!(view.rules[1], view.restrictive);
            assert_eq!(
                view.restrictive,
                RuleView {
                    limit: 3,
                    remaining: 2,
                    reset_after: ms(60_000),
                    weighted: false,
                }
            );
        }
        other => panic!("expected an admission with a view, got {other:?}"),
    }
}

#[test]
fn no_rules_admits_everything() {
    let start = Instant::now();
    let mut book = QuotaBook::new(Vec::new(), start);
    for _ in 0..1000 {
        assert_eq!(
            book.check("k", Cost::ONE, start),
            Decision::Admitted { view: None }
        );
    }
}

fn costs(declared: u64, actual: u64) -> Cost {
    Cost { declared, actual }
}

fn view_of(decision: Decision) -> QuotaView {
    match decision {
        Decision::Admitted { view: Some(view) }
        | Decision::Refused { view, .. }
        | Decision::TooCostly { view } => view,
        Decision::Admitted { view: None } => panic!("no rules, no view"),
    }
}

#[test]
fn weighted_sliding_log_refuses_what_would_overfill_the_window() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::sliding_log(100, ms(1000)).weighted()], start);
    assert!(admitted(book.check("k", Cost::exact(60), start)));
    let view = view_of(book.check("k", Cost::exact(30), start + ms(100)));
    assert_eq!(view.restrictive.remaining, 10);
    // 20 more would make 110: wait until the 60 leaves at 1000ms.
    assert_eq!(
        retry_after(book.check("k", Cost::exact(20), start + ms(200))),
        ms(800)
    );
    // 10 fits exactly.
    assert!(admitted(book.check("k", Cost::exact(10), start + ms(200))));
    assert_eq!(
        retry_after(book.check("k", Cost::exact(1), start + ms(300))),
        ms(700)
    );
    // At 1000ms the 60 has left: 40 in use, so 60 fits and 61 does not.
    assert_eq!(
        retry_after(book.check("k", Cost::exact(61), start + ms(1000))),
        ms(100)
    );
    assert!(admitted(book.check("k", Cost::exact(60), start + ms(1000))));
}

#[test]
fn weighted_fixed_window_refuses_until_the_boundary() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::fixed_window(100, ms(1000)).weighted()], start);
    assert!(admitted(book.check("k", Cost::exact(70), start)));
    assert_eq!(
        retry_after(book.check("k", Cost::exact(40), start + ms(500))),
        ms(500)
    );
    assert!(admitted(book.check("k", Cost::exact(30), start + ms(500))));
    assert_eq!(
        retry_after(book.check("k", Cost::exact(1), start + ms(999))),
        ms(1)
    );
    assert!(admitted(book.check(
        "k",
        Cost::exact(100),
        start + ms(1000)
    )));
    assert!(!admitted(book.check("k", Cost::exact(1), start + ms(1000))));
}

#[test]
fn weighted_token_bucket_waits_until_enough_tokens_refill() {
    let start = Instant::now();
    // 100 tokens, 100 per second: one every 10ms.
    let mut book = QuotaBook::new(vec![Rule::token_bucket(100, ms(1000)).weighted()], start);
    assert!(admitted(book.check("k", Cost::exact(100), start)));
    assert_eq!(
        retry_after(book.check("k", Cost::exact(30), start)),
        ms(300)
    );
    // At 100ms 10 tokens are back: 25 needs 150ms more, 10 fits.
    assert_eq!(
        retry_after(book.check("k", Cost::exact(25), start + ms(100))),
        ms(150)
    );
    assert!(admitted(book.check("k", Cost::exact(10), start + ms(100))));
    assert!(!admitted(book.check("k", Cost::exact(1), start + ms(100))));
    // The bucket never holds more than its capacity.
    let later = start + ms(60_000);
    assert!(admitted(book.check("k", Cost::exact(100), later)));
    assert!(!admitted(book.check("k", Cost::exact(1), later)));
}

#[test]
fn cost_above_a_weighted_limit_is_too_costly_and_consumes_nothing() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(10, ms(1000)),
        Rule::sliding_log(100, ms(1000)).weighted(),
    ];
    let mut book = QuotaBook::new(rules, start);
    for _ in 0..20 {
        match book.check("k", Cost::exact(101), start) {
            Decision::TooCostly { view } => {
                assert_eq!(view.rules[0].remaining, 10);
                assert_eq!(view.rules[1].remaining, 100);
            }
            other => panic!("expected TooCostly, got {other:?}"),
        }
    }
    assert!(admitted(book.check("k", Cost::exact(100), start)));

    // An unweighted rule spends 1 whatever the cost.
    let mut book = QuotaBook::new(vec![Rule::fixed_window(2, ms(1000))], start);
    assert!(admitted(book.check("k", Cost::exact(1_000_000), start)));
    assert!(admitted(book.check("k", Cost::exact(1_000_000), start)));
    assert!(!admitted(book.check("k", Cost::exact(1), start)));
}

#[test]
fn request_limit_and_cost_limit_each_bind() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(10, ms(1000)),
        Rule::sliding_log(100, ms(1000)).weighted(),
    ];
    let mut book = QuotaBook::new(rules, start);

    // Cheap requests run into the request limit with units to spare.
    for i in 0..10 {
        assert!(admitted(book.check("cheap", Cost::exact(5), start + ms(i))));
    }
    match book.check("cheap", Cost::exact(5), start + ms(10)) {
        Decision::Refused { retry_after, view } => {
            assert_eq!(retry_after, Some(ms(990)));
            assert_eq!(view.rules[1].remaining, 50);
            assert_eq!(view.restrictive, view.rules[0]);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Costly requests run into the cost limit with requests to spare.
    assert!(admitted(book.check("costly", Cost::exact(50), start)));
    assert!(admitted(book.check(
        "costly",
        Cost::exact(45),
        start + ms(10)
    )));
    match book.check("costly", Cost::exact(6), start + ms(20)) {
        Decision::Refused { retry_after, view } => {
            assert_eq!(retry_after, Some(ms(980)));
            assert_eq!(view.rules[0].remaining, 8);
            // 5 units left admit no request of cost 6: the cost rule is the
            // restrictive one although 5 < 8 is not what decides it.
            assert_eq!(view.restrictive, view.rules[1]);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(admitted(book.check(
        "costly",
        Cost::exact(5),
        start + ms(20)
    )));
    // Both limits bind at once: the request rule frees a request at
    // 1000ms, the cost rule 51 units at 1010ms; wait for the later.
    for i in 0..7 {
        assert!(admitted(book.check(
            "costly",
            Cost::exact(0),
            start + ms(30 + i)
        )));
    }
    assert_eq!(
        retry_after(book.check("costly", Cost::exact(51), start + ms(40))),
        ms(970)
    );
}

#[test]
fn restrictive_rule_is_the_one_that_admits_fewest_requests_of_this_cost() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(10, ms(1000)),
        Rule::sliding_log(1000, ms(1000)).weighted(),
    ];
    let mut book = QuotaBook::new(rules, start);
    // 9 requests left, 100 units left: 0 more requests of cost 900.
    let view = view_of(book.check("k", Cost::exact(900), start));
    assert_eq!(view.restrictive, view.rules[1]);
    assert_eq!(view.restrictive.remaining, 100);
    // For cost-1 requests the request rule runs out first.
    let view = view_of(book.check("k", Cost::exact(1), start));
    assert_eq!(view.restrictive, view.rules[0]);
    assert_eq!(view.restrictive.remaining, 8);
}

#[test]
fn zero_cost_is_admitted_even_when_a_weighted_rule_is_full() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(3, ms(1000)),
        Rule::token_bucket(10, ms(1000)).weighted(),
    ];
    let mut book = QuotaBook::new(rules, start);
    assert!(admitted(book.check("k", Cost::exact(10), start)));
    assert!(!admitted(book.check("k", Cost::exact(1), start)));
    // Zero spends nothing of the weighted rule but 1 of the request rule.
    assert!(admitted(book.check("k", Cost::exact(0), start)));
    assert!(admitted(book.check("k", Cost::exact(0), start)));
    assert_eq!(
        retry_after(book.check("k", Cost::exact(0), start)),
        ms(1000)
    );
}

#[test]
fn actual_cost_is_charged_instead_of_the_declared_one() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::sliding_log(100, ms(1000)).weighted()], start);
    // Declared 80, used 20: 80 remain, so another 80 fits.
    let view = view_of(book.check("under", costs(80, 20), start));
    assert_eq!(view.restrictive.remaining, 80);
    assert!(admitted(book.check("under", Cost::exact(80), start)));
    assert!(!admitted(book.check("under", Cost::exact(1), start)));

    // Declared 10, used 150: the rule is overdrawn until the charge leaves.
    let view = view_of(book.check("over", costs(10, 150), start));
    assert_eq!(view.restrictive.remaining, 0);
    assert_eq!(view.restrictive.reset_after, ms(1000));
    assert_eq!(
        retry_after(book.check("over", Cost::exact(1), start + ms(400))),
        ms(600)
    );
    assert!(admitted(book.check(
        "over",
        Cost::exact(100),
        start + ms(1000)
    )));
}

#[test]
fn actual_cost_overdraws_fixed_windows_and_buckets_too() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::fixed_window(100, ms(1000)).weighted()], start);
    assert!(admitted(book.check("k", costs(10, 250), start)));
    assert_eq!(
        retry_after(book.check("k", Cost::exact(1), start + ms(300))),
        ms(700)
    );
    // A new window forgets the debt.
    assert!(admitted(book.check(
        "k",
        Cost::exact(100),
        start + ms(1000)
    )));

    // One token per 10ms; 150 used of 100 leaves the bucket 50 tokens short.
    let mut book = QuotaBook::new(vec![Rule::token_bucket(100, ms(1000)).weighted()], start);
    let view = view_of(book.check("k", costs(100, 150), start));
    assert_eq!(view.restrictive.remaining, 0);
    assert_eq!(view.restrictive.reset_after, ms(510));
    assert_eq!(retry_after(book.check("k", Cost::exact(1), start)), ms(510));
    assert!(admitted(book.check("k", Cost::exact(1), start + ms(510))));
}

#[test]
fn weighted_reset_is_when_the_next_unit_frees_and_retry_after_when_the_cost_fits() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::sliding_log(100, ms(1000)).weighted()], start);
    assert!(admitted(book.check("k", Cost::exact(30), start)));
    assert!(admitted(book.check("k", Cost::exact(50), start + ms(200))));
    assert!(admitted(book.check("k", Cost::exact(20), start + ms(250))));
    match book.check("k", Cost::exact(60), start + ms(300)) {
        Decision::Refused { retry_after, view } => {
            // 60 units need the 30 and the 50 gone: 1200ms.
            assert_eq!(retry_after, Some(ms(900)));
            // The next unit frees when the 30 leaves: 1000ms.
            assert_eq!(
                view.restrictive,
                RuleView {
                    limit: 100,
                    remaining: 0,
                    reset_after: ms(700),
                    weighted: true,
                }
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn keys_that_went_idle_are_forgotten_and_the_map_shrinks() {
    let start = Instant::now();
    let mut book = QuotaBook::new(
        vec![
            Rule::sliding_log(5, ms(1000)),
            Rule::token_bucket(5, ms(1000)),
            Rule::no_burst(5, ms(1000)),
            Rule::sliding_window_counter(5, ms(1000)),
        ],
        start,
    );
    for i in 0..10_000u64 {
        assert!(admitted(book.check(
            &format!("client-{i}"),
            Cost::ONE,
            start
        )));
    }
    assert_eq!(book.key_count(), 10_000);
    // One busy key, long after the others went idle: they are swept.
    let later = start + ms(3_000);
    for i in 0..10_000u64 {
        book.check("busy", Cost::ONE, later + Duration::from_micros(i));
    }
    assert_eq!(book.key_count(), 1, "only the busy key is kept");
    assert!(book.keys.capacity() < 1_000, "{}", book.keys.capacity());
    // A forgotten key starts over as a new one.
    assert!(admitted(book.check("client-1", Cost::ONE, later + ms(100))));
}
