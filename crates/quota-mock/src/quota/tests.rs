//! The quota engine driven with explicit instants: exact, no clock involved.

use std::time::Duration;

use tokio::time::Instant;

use super::{Decision, QuotaBook, RuleView};
use crate::rule::Rule;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn admitted(decision: Decision) -> bool {
    matches!(decision, Decision::Admitted { .. })
}

fn retry_after(decision: Decision) -> Duration {
    match decision {
        Decision::Refused { retry_after, .. } => retry_after,
        Decision::Admitted { .. } => panic!("expected a refusal, got {decision:?}"),
    }
}

#[test]
fn sliding_log_refuses_the_sixth_until_the_oldest_leaves() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::sliding_log(5, ms(1000))], start);
    for i in 0..5 {
        assert!(
            admitted(book.check("k", start + ms(i * 100))),
            "request {i}"
        );
    }
    // At 450ms the oldest (0ms) leaves at 1000ms.
    assert_eq!(retry_after(book.check("k", start + ms(450))), ms(550));
    // Still inside the half-open window one nanosecond before.
    let just_before = start + ms(1000) - Duration::from_nanos(1);
    assert_eq!(
        retry_after(book.check("k", just_before)),
        Duration::from_nanos(1)
    );
    assert!(admitted(book.check("k", start + ms(1000))));
    // Now the 100ms entry is oldest.
    assert_eq!(retry_after(book.check("k", start + ms(1000))), ms(100));
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
        if admitted(book.check("k", start + at)) {
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
        assert!(admitted(
            book.check("k", start + ms(990) + Duration::from_micros(i))
        ));
    }
    assert_eq!(retry_after(book.check("k", start + ms(995))), ms(5));
    for i in 0..5 {
        assert!(admitted(
            book.check("k", start + ms(1000) + Duration::from_micros(i))
        ));
    }
    assert_eq!(retry_after(book.check("k", start + ms(1010))), ms(990));
}

#[test]
fn token_bucket_refills_continuously() {
    let start = Instant::now();
    // 10 tokens, 10 per second: one token every 100ms.
    let mut book = QuotaBook::new(vec![Rule::token_bucket(10, ms(1000))], start);
    for _ in 0..10 {
        assert!(admitted(book.check("k", start)));
    }
    assert_eq!(retry_after(book.check("k", start)), ms(100));
    assert_eq!(retry_after(book.check("k", start + ms(30))), ms(70));
    assert!(admitted(book.check("k", start + ms(100))));
    assert!(!admitted(book.check("k", start + ms(100))));
    // 250ms later: two and a half tokens, so two admissions.
    assert!(admitted(book.check("k", start + ms(350))));
    assert!(admitted(book.check("k", start + ms(350))));
    assert_eq!(retry_after(book.check("k", start + ms(350))), ms(50));
    // The bucket never holds more than its capacity.
    let later = start + ms(60_000);
    for _ in 0..10 {
        assert!(admitted(book.check("k", later)));
    }
    assert!(!admitted(book.check("k", later)));
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
        assert!(admitted(book.check("k", start)));
    }
    // Many refusals by the short rule must not fill the long one.
    for _ in 0..100 {
        assert!(!admitted(book.check("k", start + ms(10))));
    }
    assert!(admitted(book.check("k", start + ms(1000))));
    assert!(admitted(book.check("k", start + ms(1000))));
    // The long rule is now full (5 in 10s): wait until its oldest leaves.
    assert_eq!(retry_after(book.check("k", start + ms(1000))), ms(9000));
}

#[test]
fn retry_after_is_the_longest_wait_among_refusing_rules() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(1, ms(1000)),
        Rule::fixed_window(1, ms(60_000)),
    ];
    let mut book = QuotaBook::new(rules, start);
    assert!(admitted(book.check("k", start + ms(500))));
    match book.check("k", start + ms(600)) {
        Decision::Refused { retry_after, view } => {
            assert_eq!(retry_after, ms(59_400));
            assert_eq!(
                view.restrictive,
                RuleView {
                    limit: 1,
                    remaining: 0,
                    reset_after: ms(59_400)
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
    assert!(admitted(book.check("a", start)));
    assert!(admitted(book.check("a", start)));
    assert!(!admitted(book.check("a", start)));
    assert!(admitted(book.check("b", start)));
    assert!(admitted(book.check("b", start)));
    assert!(!admitted(book.check("b", start)));
}

#[test]
fn view_reports_the_most_restrictive_rule() {
    let start = Instant::now();
    let rules = vec![
        Rule::sliding_log(10, ms(1000)),
        Rule::sliding_log(3, ms(60_000)),
    ];
    let mut book = QuotaBook::new(rules, start);
    match book.check("k", start) {
        Decision::Admitted { view: Some(view) } => {
            assert_eq!(view.rules.len(), 2);
            assert_eq!(view.rules[1], view.restrictive);
            assert_eq!(
                view.restrictive,
                RuleView {
                    limit: 3,
                    remaining: 2,
                    reset_after: ms(60_000)
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
        assert_eq!(book.check("k", start), Decision::Admitted { view: None });
    }
}
