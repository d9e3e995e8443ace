//! The README stack with its default settings, across quota-mock's simulated
//! network: cold connections that cost a handshake, jittered one-way delays,
//! a thousand requests in flight, a provider that takes its time. Every claim
//! is checked where the provider checks it: at the server, counting every
//! arrival, refused ones included.

use crate::support;

use std::time::Duration;

use quota_mock::{MockServer, NetworkProxy, Rule};

/// A network in front of `server`: connections cost 30 ms to open (a
/// handshake), one-way delays vary between 5 and 25 ms.
async fn across_the_network(server: &MockServer, seed: u64) -> NetworkProxy {
    with_handshakes_of(Duration::from_millis(30), server, seed).await
}

/// As [`across_the_network`], with connections that cost `handshake` to
/// open.
async fn with_handshakes_of(handshake: Duration, server: &MockServer, seed: u64) -> NetworkProxy {
    NetworkProxy::builder(server.addr())
        .connect_delay(handshake)
        .latency(Duration::from_millis(5), Duration::from_millis(25))
        .seed(seed)
        .start()
        .await
        .unwrap()
}

/// Twenty cold starts, five at a time, each a fresh client and stack
/// reaching its own provider through a network whose connections cost 30 ms
/// to open and whose one-way delays vary between 5 and 25 ms: the provider
/// refuses nothing, counts at most the quota in any window, and is kept
/// busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cold_starts_across_a_network_are_never_refused() {
    let _turn = crate::support::beside_others().await;
    let mut utilizations = Vec::new();
    for batch in 0..4 {
        utilizations.extend(cold_starts(batch * 5..batch * 5 + 5).await);
    }
    utilizations.sort_by(f64::total_cmp);
    println!(
        "utilization over 20 cold starts: min {:.3}, median {:.3}",
        utilizations[0], utilizations[10]
    );
    // Each window starts a round trip after the last one's answers: with
    // round trips of 10 to 50 ms, at least 1 / 1.05 = 0.952 for one client
    // alone (0.965 measured). Five cold starts at once in an unoptimized
    // build on two cores add their own scheduling to each round trip:
    // 0.945 measured, at a server on quota-mock's own runtime, whose count
    // the clients' tasks do not delay. The release figures are in
    // quota-bench's RESULTS.md.
    assert!(
        utilizations[10] >= 0.94,
        "median utilization {:.3}",
        utilizations[10]
    );
}

async fn cold_starts(seeds: std::ops::Range<u64>) -> Vec<f64> {
    let (quota, window, requests) = (20, Duration::from_secs(1), 200);
    let mut runs = tokio::task::JoinSet::new();
    for seed in seeds {
        runs.spawn(async move {
            let server = MockServer::builder()
                .rule(Rule::sliding_log(quota, window))
                .seed(seed)
                .start()
                .await
                .unwrap();
            let network = across_the_network(&server, seed).await;
            let succeeded =
                support::run_readme_stack(&network.url(), quota, window, requests, 32).await;
            let stats = server.stats();
            server.shutdown().await;
            (seed, succeeded, stats)
        });
    }
    let mut utilizations = Vec::new();
    while let Some(run) = runs.join_next().await {
        let (seed, succeeded, stats) = run.unwrap();
        let refused = stats.count(429);
        let most = stats.max_arrivals_in_any_window(window);
        let used = stats.utilization(quota, window);
        assert_eq!(refused, 0, "cold start {seed}: {refused} × 429");
        assert!(
            most <= quota,
            "cold start {seed}: {most} arrivals in one window"
        );
        assert_eq!(succeeded, requests, "cold start {seed}");
        // One run may share the two cores with more than its neighbours
        // (a machine busy with other work): exactness above holds whatever
        // the load; the use of the quota only degrades.
        assert!(used >= 0.9, "cold start {seed}: utilization {used:.3}");
        utilizations.push(used);
    }
    utilizations
}

/// 20,000 requests, 1,000 in flight, a quota of 2,000 per second: a cold
/// pool opening hundreds of connections at once, and tasks that reach the
/// server long after their admission. The server sees no more than its
/// quota in any window and refuses nothing, even when the machine is too
/// busy for the client's tasks to run in time (held to one core shared
/// with a busy loop: 0 × 429, where the `sent_within` bound alone let 15
/// to 178 requests in past the quota).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_in_flight_are_never_refused() {
    let _turn = crate::support::alone().await;
    let (quota, window, requests) = (2_000, Duration::from_secs(1), 20_000);
    let server = MockServer::builder()
        .rule(Rule::sliding_log(quota, window))
        .start()
        .await
        .unwrap();
    let succeeded = support::run_readme_stack(&server.url(), quota, window, requests, 1_000).await;
    let stats = server.stats();
    server.shutdown().await;
    let refused = stats.count(429);
    let most = stats.max_arrivals_in_any_window(window);
    let used = stats.utilization(quota, window);
    println!("1,000 in flight: {refused} × 429, at most {most} in a window, utilization {used:.3}");
    assert_eq!(refused, 0, "{refused} × 429");
    assert!(most <= quota, "{most} arrivals in one window");
    assert_eq!(succeeded, requests);
}

/// A slow provider (0.2–0.8 s to answer, 30 per 3 s) behind the network:
/// slots are not held for its processing time (but in the key's first
/// window, which waits for answers), and nothing is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_is_used_fully_without_refusals() {
    let _turn = crate::support::beside_others().await;
    let (quota, window, requests) = (30, Duration::from_secs(3), 240);
    let server = MockServer::builder()
        .rule(Rule::sliding_log(quota, window))
        .processing(Duration::from_millis(200), Duration::from_millis(800))
        .seed(3)
        .start()
        .await
        .unwrap();
    let network = across_the_network(&server, 3).await;
    let succeeded = support::run_readme_stack(&network.url(), quota, window, requests, 32).await;
    let stats = server.stats();
    server.shutdown().await;
    let refused = stats.count(429);
    let most = stats.max_arrivals_in_any_window(window);
    let used = stats.utilization(quota, window);
    println!("slow provider: {refused} × 429, at most {most} in a window, utilization {used:.3}");
    assert_eq!(refused, 0, "{refused} × 429");
    assert!(most <= quota, "{most} arrivals in one window");
    assert_eq!(succeeded, requests);
    // The key's first window holds each slot for its answer or 300 ms,
    // whichever is sooner (answers take 0.2–0.8 s here), and each later one
    // for its 100 ms `sent_within` bound: about 0.96 over eight windows.
    assert!(used >= 0.95, "utilization {used:.3}");
}

/// A client that sends a few requests at a time for three windows, then
/// many: its pool holds a few connections, and the next window's requests
/// open dozens, each a 200 ms handshake (TCP and TLS across a continent)
/// before it reaches the provider. Requests beyond the most the key had in
/// flight at once are held for the cold bound (300 ms) rather than
/// `sent_within` (100 ms), so the provider refuses nothing: held for
/// `sent_within` past the key's first window, 1 to 3 of them were refused
/// in each of 6 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_outgrows_its_pool_is_never_refused() {
    let _turn = crate::support::beside_others().await;
    let (quota, window) = (50, Duration::from_secs(1));
    let server = MockServer::builder()
        .rule(Rule::sliding_log(quota, window))
        .start()
        .await
        .unwrap();
    let network = with_handshakes_of(Duration::from_millis(200), &server, 11).await;
    let phases = [(150, 4), (250, 50)];
    let succeeded = support::run_stack_phases(
        &network.url(),
        support::readme_pacing(quota, window),
        &phases,
    )
    .await;
    let stats = server.stats();
    server.shutdown().await;
    let refused = stats.count(429);
    let most = stats.max_arrivals_in_any_window(window);
    println!("outgrown pool: {refused} × 429, at most {most} in a window");
    assert_eq!(refused, 0, "{refused} × 429");
    assert!(most <= quota, "{most} arrivals in one window");
    assert_eq!(succeeded, 400);
}
