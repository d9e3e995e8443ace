//! Runs each integration example (from `examples/`) against its in-process
//! servers and checks its outcome, so that the examples stay correct.
//!
//! Each example's `run` is what `cargo run -p tower-quota-examples --example NAME` runs, with a
//! smaller load here so that each test takes a few seconds; its `verify`
//! is the check the example itself makes before it exits.

use std::time::Duration;

use tower_quota_examples::{axum_proxy, hyper_client, ingest, reqwest_client, tonic_client};

/// The library's default safety margin: slots are released relative to
/// answers, so no hand-set margin is needed on a loaded machine.
const MARGIN: Option<Duration> = None;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hyper_client_succeeds_without_429s_and_reuses_pooled_connections() {
    let _turn = crate::support::beside_others().await;
    let options = hyper_client::Options {
        requests: 40,
        concurrency: 8,
        safety_margin: MARGIN,
        ..hyper_client::Options::default()
    };
    let summary = hyper_client::run(options).await.unwrap();
    println!("{summary}");
    summary.verify().unwrap();
    assert!(
        summary.server_errors > 0,
        "no 503 was injected: retries were not exercised"
    );
    assert_eq!(summary.attempts, 40 + summary.server_errors);
    assert!(
        summary.connections_opened * 4 <= summary.attempts,
        "{} connections for {} attempts",
        summary.connections_opened,
        summary.attempts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_batches_records_within_a_quota_in_items_without_429s() {
    let _turn = crate::support::beside_others().await;
    let options = ingest::Options {
        records: 3_000,
        quota: 1_000,
        window: Duration::from_secs(1),
        progress: false,
        ..ingest::Options::default()
    };
    let summary = ingest::run(options).await.unwrap();
    println!("{summary}");
    summary.verify().unwrap();
    assert_eq!(summary.refused, 0);
    // Batches of 100: at least 100x fewer requests than records, give or
    // take the batches a delay closed early.
    assert!(
        summary.requests >= 30 && summary.requests <= 33,
        "{}",
        summary.requests
    );
    // The quota was the bottleneck: some window was full.
    assert_eq!(summary.max_in_window, 1_000);
    // Each connection's first response is marked cold; hyper-util's pool
    // may open a connection that an idle one coming back makes
    // unnecessary, which then serves nothing.
    assert!(summary.cold_responses >= 1);
    assert!(summary.cold_responses <= summary.connections_opened);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reqwest_client_waits_out_retry_after_and_resends_the_same_body() {
    let _turn = crate::support::beside_others().await;
    let options = reqwest_client::Options {
        requests: 30,
        safety_margin: MARGIN,
        ..reqwest_client::Options::default()
    };
    let summary = reqwest_client::run(options).await.unwrap();
    println!("{summary}");
    summary.verify().unwrap();
    assert_eq!(summary.throttled, 2, "the opening throttle episode");
    let wait = summary
        .shortest_wait_after_throttle
        .expect("the throttled requests were resent");
    assert!(wait >= Duration::from_secs(1), "resent after {wait:?}");
    assert!(summary.server_errors > 0, "no 503 was injected");
    // Each resent request was throttled or got a 503 at least once.
    assert!(summary.resent as u64 <= summary.throttled + summary.server_errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn axum_proxy_keeps_every_upstream_under_its_quota_for_all_clients() {
    let _turn = crate::support::beside_others().await;
    let options = axum_proxy::Options {
        clients: 12,
        requests_per_client: 4,
        providers: axum_proxy::Options::default()
            .providers
            .into_iter()
            .map(|provider| axum_proxy::Provider {
                safety_margin: MARGIN,
                ..provider
            })
            .collect(),
        ..axum_proxy::Options::default()
    };
    let summary = axum_proxy::run(options).await.unwrap();
    println!("{summary}");
    summary.verify().unwrap();
    assert_eq!(summary.calls, 48);
    for provider in &summary.providers {
        assert_eq!(provider.refused, 0, "{}: 429s", provider.name);
        assert_eq!(
            provider.accepted,
            provider.calls as u64 + provider.server_errors,
            "{}: each call answered 200 once, after its 503s",
            provider.name
        );
        assert!(
            provider.max_in_window <= provider.max_calls,
            "{}",
            provider.name
        );
    }
    // The clients really competed for the tighter quota: its busiest window
    // was near full (exactly full on an idle machine).
    let beta = &summary.providers[1];
    assert!(
        beta.max_in_window * 10 >= beta.max_calls * 8,
        "{}",
        beta.max_in_window
    );
    // Prometheus scrapes the layers' documented series from `/metrics`.
    let scrape = &summary.metrics;
    let acquired: u64 = summary.providers.iter().map(|p| p.attempts).sum();
    for name in [
        tower_quota::metrics::REQUEST_TIME_IN_QUEUE_SECONDS,
        tower_quota::metrics::RATE_LIMITING_REQUESTS_TOTAL,
        tower_quota::metrics::REQUEST_RESEND_COUNT,
    ] {
        assert!(
            scrape.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics:\n{scrape}"
        );
    }
    // Every attempt the providers saw was admitted by its provider's window
    // (keyed by the provider's name), and counted.
    let counted: u64 = scrape
        .lines()
        .filter(|line| {
            line.starts_with(tower_quota::metrics::RATE_LIMITING_REQUESTS_TOTAL)
                && line.contains("result=\"acquired\"")
                && summary
                    .providers
                    .iter()
                    .any(|p| line.contains(&format!("key=\"{}\"", p.name)))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, acquired, "{scrape}");
    // One resend count per call (tests running beside this one may add
    // their own requests: at least).
    let resend_counts: u64 = scrape
        .lines()
        .find_map(|line| {
            line.strip_prefix(&format!(
                "{}_count ",
                tower_quota::metrics::REQUEST_RESEND_COUNT
            ))?
            .parse()
            .ok()
        })
        .unwrap_or(0);
    assert!(resend_counts >= summary.calls as u64, "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tonic_client_retries_resource_exhausted_to_success_after_the_pushback() {
    let _turn = crate::support::beside_others().await;
    let options = tonic_client::Options::default();
    let pushback = options.pushback;
    let summary = tonic_client::run(options).await.unwrap();
    println!("{summary}");
    summary.verify().unwrap();
    assert_eq!(summary.serving, summary.calls);
    // The server refused the first 4 attempts; a retry may itself be among them.
    assert_eq!(summary.refused, 4);
    assert!(summary.refused_calls >= 1);
    assert_eq!(summary.retried_to_success, summary.refused_calls);
    let wait = summary
        .shortest_wait_after_refusal
        .expect("refused calls were retried");
    assert!(
        wait >= pushback,
        "retried {wait:?} after the refusal, pushback {pushback:?}"
    );
    // Each attempt counts the ones before it in grpc-previous-rpc-attempts.
    for (index, arrival) in summary.arrivals.iter().enumerate() {
        let earlier = summary.arrivals[..index]
            .iter()
            .filter(|earlier| earlier.call_id == arrival.call_id)
            .count();
        assert_eq!(
            arrival.previous_attempts.unwrap_or(0) as usize,
            earlier,
            "call {} at {:?}",
            arrival.call_id,
            arrival.at
        );
    }
}
