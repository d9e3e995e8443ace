//! Concurrency rules: units in flight, released by the caller.

use std::time::Duration;

use tokio::time::Instant;

use super::{Decision, QuotaBook};
use crate::cost::Cost;
use crate::rule::Rule;

fn admitted(decision: Decision) -> bool {
    matches!(decision, Decision::Admitted { .. })
}

#[test]
fn at_most_limit_in_flight_and_a_release_frees_a_slot() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::concurrency(2)], start);
    let epoch = book.in_flight_epoch().expect("a concurrency rule");
    assert!(admitted(book.check("k", Cost::ONE, start)));
    assert!(admitted(book.check("k", Cost::ONE, start)));
    match book.check("k", Cost::ONE, start) {
        Decision::Refused { retry_after, view } => {
            assert_eq!(retry_after, None, "nobody knows when one finishes");
            assert_eq!(view.restrictive.remaining, 0);
            assert_eq!(view.restrictive.reset_after, Duration::ZERO);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Other keys have their own slots.
    assert!(admitted(book.check("other", Cost::ONE, start)));
    book.release("k", 1, epoch);
    assert!(admitted(book.check("k", Cost::ONE, start)));
    assert!(!admitted(book.check("k", Cost::ONE, start)));
    assert_eq!(book.peaks_in_flight(), [Some(2)]);
}

#[test]
fn a_release_from_before_a_clear_does_not_free_a_new_slot() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::concurrency(1)], start);
    let before = book.in_flight_epoch().unwrap();
    assert!(admitted(book.check("k", Cost::ONE, start)));
    book.clear();
    assert_eq!(book.peaks_in_flight(), [Some(0)]);
    assert!(admitted(book.check("k", Cost::ONE, start)));
    book.release("k", 1, before);
    assert!(!admitted(book.check("k", Cost::ONE, start)));
}

#[test]
fn a_time_rule_beside_a_concurrency_rule_states_its_retry_after() {
    let start = Instant::now();
    let rules = vec![
        Rule::concurrency(1),
        Rule::sliding_log(1, Duration::from_secs(10)),
    ];
    let mut book = QuotaBook::new(rules, start);
    assert!(book.in_flight_epoch().is_some());
    assert!(admitted(book.check("k", Cost::ONE, start)));
    match book.check("k", Cost::ONE, start + Duration::from_secs(1)) {
        Decision::Refused { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(9)));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(book.peaks_in_flight(), [Some(1), None]);
}

#[test]
fn weighted_concurrency_counts_units_in_flight() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::concurrency(100).weighted()], start);
    let epoch = book.in_flight_epoch().unwrap();
    assert!(admitted(book.check("k", Cost::exact(60), start)));
    assert!(!admitted(book.check("k", Cost::exact(50), start)));
    assert!(admitted(book.check("k", Cost::exact(40), start)));
    book.release("k", 60, epoch);
    assert!(admitted(book.check("k", Cost::exact(50), start)));
    assert_eq!(book.peaks_in_flight(), [Some(100)]);
    assert!(matches!(
        book.check("k", Cost::exact(101), start),
        Decision::TooCostly { .. }
    ));
}

#[test]
fn rules_without_concurrency_need_no_release() {
    let start = Instant::now();
    let book = QuotaBook::new(vec![Rule::sliding_log(1, Duration::from_secs(1))], start);
    assert_eq!(book.in_flight_epoch(), None);
    assert_eq!(book.peaks_in_flight(), [None]);
}
