//! Limits changed at run time, driven with explicit instants.

use std::time::Duration;

use tokio::time::Instant;

use super::{Decision, QuotaBook};
use crate::cost::Cost;
use crate::rule::Rule;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn admitted(decision: Decision) -> bool {
    matches!(decision, Decision::Admitted { .. })
}

fn admissions(book: &mut QuotaBook, now: Instant, tries: usize) -> usize {
    (0..tries)
        .filter(|_| admitted(book.check("k", Cost::ONE, now)))
        .count()
}

#[test]
fn a_raised_limit_admits_at_once_and_a_lowered_one_counts_what_was_admitted() {
    let start = Instant::now();
    let window = ms(1000);
    for rule in [
        Rule::sliding_log(3, window),
        Rule::fixed_window(3, window),
        Rule::token_bucket(3, window),
        Rule::sliding_window_counter(3, window),
    ] {
        let mut book = QuotaBook::new(vec![rule], start);
        assert_eq!(admissions(&mut book, start, 5), 3, "{rule}");
        assert_eq!(book.set_limit(0, 5, start), Ok(rule.with_limit(5)));
        // The counter also counted the two refusals: 5 of 5.
        let expected = if rule == Rule::sliding_window_counter(3, window) {
            0
        } else {
            2
        };
        assert_eq!(admissions(&mut book, start + ms(1), 5), expected, "{rule}");
        assert_eq!(
            book.set_limit(0, 1, start + ms(2)).map(|r| r.limit()),
            Ok(1)
        );
        assert_eq!(admissions(&mut book, start + ms(2), 5), 0, "{rule}");
    }
}

#[test]
fn a_bucket_refills_at_the_old_rate_until_the_change() {
    let start = Instant::now();
    // 10 per second, one token every 100ms.
    let mut book = QuotaBook::new(vec![Rule::token_bucket(10, ms(1000))], start);
    assert_eq!(admissions(&mut book, start, 10), 10);
    // 300ms at the old rate refill 3 tokens; 90 more fit in the bigger
    // bucket; then 100 per second.
    book.set_limit(0, 100, start + ms(300)).unwrap();
    assert_eq!(admissions(&mut book, start + ms(300), 100), 93);
    assert_eq!(admissions(&mut book, start + ms(310), 10), 1);
}

#[test]
fn gcra_spaces_by_the_new_interval_after_the_change() {
    let start = Instant::now();
    let mut book = QuotaBook::new(vec![Rule::no_burst(1, ms(1000))], start);
    assert!(admitted(book.check("k", Cost::ONE, start)));
    book.set_limit(0, 10, start + ms(10)).unwrap();
    // The interval already running ends at 1000ms; then one per 100ms.
    assert!(!admitted(book.check("k", Cost::ONE, start + ms(500))));
    assert!(admitted(book.check("k", Cost::ONE, start + ms(1000))));
    assert!(admitted(book.check("k", Cost::ONE, start + ms(1100))));
}

#[test]
fn an_invalid_change_changes_nothing() {
    let start = Instant::now();
    let rule = Rule::sliding_log(3, ms(1000));
    let mut book = QuotaBook::new(vec![rule], start);
    assert!(book.set_limit(1, 5, start).is_err());
    assert!(book.set_limit(0, 0, start).is_err());
    assert_eq!(book.rules(), [rule]);
}
