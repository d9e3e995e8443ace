//! The README stack with its default settings against providers that
//! enforce the configured rate in other shapes than a sliding log: no burst
//! at all (GCRA, one request per emission interval) and a sliding-window
//! counter. Counted at the server, refused arrivals included.
//!
//! `SHAPES_TIMELINE=1 cargo test -p tower-quota-tests --test e2e shapes_e2e --
//! --nocapture` prints every arrival the provider saw.

use crate::support;

use std::time::Duration;

use tokio::time::Instant;

use quota_mock::{MockServer, Rule, Stats};

/// 200 requests at concurrency 32 through the README stack configured at
/// the provider's documented 20/1 s; returns what the provider saw, the
/// requests that succeeded and the seconds the run took.
async fn run(rule: Rule) -> (Stats, usize, f64) {
    let server = MockServer::builder().rule(rule).start().await.unwrap();
    let started = Instant::now();
    let succeeded =
        support::run_readme_stack(&server.url(), 20, Duration::from_secs(1), 200, 32).await;
    let elapsed = started.elapsed().as_secs_f64();
    let stats = server.stats();
    server.shutdown().await;
    (stats, succeeded, elapsed)
}

fn report(shape: &str, stats: &Stats, succeeded: usize, elapsed: f64) -> (f64, f64) {
    if std::env::var_os("SHAPES_TIMELINE").is_some() {
        for arrival in &stats.arrivals {
            println!(
                "{:>8.1} ms {} {}",
                arrival.at.as_secs_f64() * 1e3,
                arrival.status,
                arrival.path
            );
        }
    }
    let attempts = stats.arrivals.len() as f64;
    let refused = stats.count(429) as f64;
    let goodput = stats.accepted() as f64 / elapsed / 20.0;
    println!(
        "{shape}: {succeeded}/200 succeeded in {elapsed:.1} s, {refused} x 429 of {attempts} \
         arrivals ({:.1}%), goodput {goodput:.2} x 20/s",
        100.0 * refused / attempts
    );
    (refused / attempts, goodput)
}

/// A provider that admits 20/s with no burst (one request per 50 ms,
/// `Retry-After: 1` otherwise), and says what it has left
/// (`X-RateLimit-Remaining: 0` of 20 right after a request). The fresh
/// key's first request goes alone; its answer says the provider has no
/// room for a burst, and the key is spaced from its second request on, a
/// little under the rate: 0 refused, 0.93 of the rate measured on
/// loopback. (Before the key started at the pace of its answers, its first
/// burst cost 19 refusals of 200 and the run 0.59–0.85 of the rate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_bursts_gets_spaced_requests() {
    let _turn = crate::support::beside_others().await;
    let (stats, succeeded, elapsed) = run(Rule::no_burst(20, Duration::from_secs(1))).await;
    let (refused, goodput) = report("no burst", &stats, succeeded, elapsed);
    assert_eq!(succeeded, 200, "every request completes");
    // Arrivals the network bunched may still be refused, rarely.
    assert!(
        refused <= 0.02,
        "429s are {:.1}% of arrivals",
        refused * 100.0
    );
    assert!(
        goodput >= 0.8,
        "goodput {goodput:.2} of the provider's rate"
    );
}

/// A sliding-window counter (the current period plus the previous one
/// weighted by its overlap, refused requests counted too). The first
/// window's burst is accepted (no previous period); past it, the first
/// freed slot goes alone and is refused (the first period still weighs in
/// full), and the key is spaced a little under the rate from two
/// intervals on: one refusal of 201 arrivals and 0.89–0.93 of the rate
/// measured. (Sent as the log freed it, the second window's burst was
/// refused whole, and the run lost 10–13 % of its arrivals and a third of
/// the rate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_counter_gets_spaced_requests() {
    let _turn = crate::support::beside_others().await;
    let (stats, succeeded, elapsed) =
        run(Rule::sliding_window_counter(20, Duration::from_secs(1))).await;
    let (refused, goodput) = report("sliding-window counter", &stats, succeeded, elapsed);
    assert_eq!(succeeded, 200, "every request completes");
    assert!(
        refused <= 0.02,
        "429s are {:.1}% of arrivals",
        refused * 100.0
    );
    assert!(
        goodput >= 0.8,
        "goodput {goodput:.2} of the provider's rate"
    );
}

/// A provider that enforces a third of the configured rate and does not
/// say so: 15/1 s against a client configured for 50/1 s. Spaced requests
/// that are still refused cut the key's rate to a little under what the
/// provider accepted in the window; probes raise it again, rarely. Without
/// the rate cut: 52 % of arrivals refused, 274 of 300 requests succeeded,
/// 0.75 of the provider's rate; with a cut to the share of requests
/// accepted over two windows, 23–25 %, 298 and 0.84–0.85; with the cut to
/// what the window accepted, 8.8–12.3 %, 300 and 0.90–0.93 (measured on
/// loopback; the first window's burst is most of the refusals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_stricter_than_configured_is_not_hammered() {
    let _turn = crate::support::beside_others().await;
    let server = MockServer::builder()
        .rule(Rule::sliding_log(15, Duration::from_secs(1)))
        .headers(quota_mock::HeaderDialect::None)
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let succeeded =
        support::run_readme_stack(&server.url(), 50, Duration::from_secs(1), 300, 32).await;
    let elapsed = started.elapsed().as_secs_f64();
    let stats = server.stats();
    server.shutdown().await;
    let attempts = stats.arrivals.len() as f64;
    let refused = stats.count(429) as f64 / attempts;
    let goodput = stats.accepted() as f64 / elapsed / 15.0;
    println!(
        "stricter provider: {succeeded}/300 in {elapsed:.1} s, {:.1}% of {attempts} arrivals \
         refused, goodput {goodput:.2} x 15/s",
        100.0 * refused
    );
    assert!(succeeded >= 290, "{succeeded} of 300 succeeded");
    // 11–12 % on a quiet machine, up to 15.3 % with the two cores busy
    // elsewhere (the first burst alone, 32 requests against 15 a second
    // before any answer, is about 17 of them). The bound sits between that
    // and what the earlier designs measured (52 %, then 23–25 %).
    assert!(
        refused <= 0.2,
        "429s are {:.1}% of arrivals",
        refused * 100.0
    );
    assert!(
        goodput >= 0.8,
        "goodput {goodput:.2} of the provider's rate"
    );
}

/// A provider whose undisclosed quota changes under the client: 30/1 s,
/// then 15/1 s, then 45/1 s, 30 seconds each, against a client configured
/// for 50/1 s. Each phase must reach a steady state (from some second to
/// its end, five seconds at least: at most 1 % refused and at least 0.85
/// of the provider's rate accepted), and refuse at most 2 % of the
/// arrivals of its second half. On tokio's paused clock, the server on
/// the test's runtime: the 90 s of the three phases take half a second,
/// and the provider still counts every arrival at its own instant. Measured
/// over the second halves: 0.2 % and 0.98 at 30/s, 0.5 % and 0.94 at
/// 15/s, 0.2 % and 0.96 at 45/s, converged 2, 2 and 2–3 s into the phases
/// (on the real clock over loopback: 0.2 % and 0.96, 0.5–0.9 % and
/// 0.93–0.98, 0.2–0.4 % and 0.78–0.96; 0–2 s, 2 s and 2–22 s; the `phases`
/// benchmark runs it so). A lower rate is found from the refusals at once,
/// a higher one only by probes, which a steady provider refuses, so they
/// come at most every 16 windows.
#[tokio::test(start_paused = true)]
async fn a_provider_whose_quota_changes_unannounced_is_followed() {
    // A core for a second and a half, on a clock no other test moves.
    let _turn = crate::support::beside_others().await;
    const PHASE: u64 = 30;
    let server = MockServer::builder()
        .on_caller_runtime()
        .rule(Rule::sliding_log(30, Duration::from_secs(1)))
        .headers(quota_mock::HeaderDialect::None)
        .start()
        .await
        .unwrap();
    let url = server.url();
    let run = tokio::spawn(async move {
        support::run_readme_stack(&url, 50, Duration::from_secs(1), 5_000, 32).await
    });
    tokio::time::sleep(Duration::from_secs(PHASE)).await;
    server.set_limit(0, 15).unwrap();
    tokio::time::sleep(Duration::from_secs(PHASE)).await;
    server.set_limit(0, 45).unwrap();
    tokio::time::sleep(Duration::from_secs(PHASE)).await;
    let stats = server.stats();
    run.abort();
    server.shutdown().await;
    let mut shares = Vec::new();
    for (phase, limit) in [30.0, 15.0, 45.0].into_iter().enumerate() {
        let from = Duration::from_secs(PHASE * phase as u64 + PHASE / 2);
        let to = Duration::from_secs(PHASE * (phase as u64 + 1));
        let inside: Vec<_> = stats
            .arrivals
            .iter()
            .filter(|arrival| arrival.at >= from && arrival.at < to)
            .collect();
        let refused = inside
            .iter()
            .filter(|arrival| arrival.status == 429)
            .count();
        let accepted = inside.len() - refused;
        let share = refused as f64 / inside.len().max(1) as f64;
        let goodput = accepted as f64 / (to - from).as_secs_f64() / limit;
        // Converged: the first second from which the rest of the phase (at
        // least its last five seconds) meets the goal.
        let start = Duration::from_secs(PHASE * phase as u64);
        let meets = |from: Duration| {
            let rest: Vec<_> = stats
                .arrivals
                .iter()
                .filter(|arrival| arrival.at >= from && arrival.at < to)
                .collect();
            let refused = rest.iter().filter(|arrival| arrival.status == 429).count();
            refused as f64 <= 0.01 * rest.len() as f64
                && (rest.len() - refused) as f64 >= 0.85 * (to - from).as_secs_f64() * limit
        };
        let converged = (0..PHASE - 5).find(|second| meets(start + Duration::from_secs(*second)));
        println!(
            "phase {limit}/s: {refused} of {} arrivals refused ({:.1}%), goodput {goodput:.2} \
             over its second half, converged after {}",
            inside.len(),
            100.0 * share,
            converged.map_or("not within the phase".to_owned(), |second| format!(
                "{second} s"
            ))
        );
        shares.push((limit, share, converged));
    }
    // The goal, in steady state: from some second of each phase to its end
    // (five seconds at least), at most 1 % refused and at least 0.85 of the
    // provider's rate accepted. A raise is found by a probe, and probes are
    // spaced up to 16 windows apart while the provider stays where it is:
    // 2 to 4 s to converge after the raise to 45/s in most runs, 18 s in
    // one whose last probe at 15/s was refused shortly before the raise.
    for (limit, share, converged) in shares {
        assert!(
            converged.is_some(),
            "{limit}/s: no steady state within the phase"
        );
        assert!(share <= 0.02, "{limit}/s: {:.1}% refused", share * 100.0);
    }
}
