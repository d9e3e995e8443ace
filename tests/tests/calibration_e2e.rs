//! A provider that announces (IETF `RateLimit-Policy`) and enforces another
//! quota than the configured one: the README stack with
//! `follow_announced_quotas` is held to the announced quota from the first
//! answer on, and follows it up again when the provider raises it. Counted
//! at the server, refused arrivals included.

use crate::support;

use std::time::Duration;

use quota_mock::{HeaderDialect, MockServer, Rule};

const SECOND: Duration = Duration::from_secs(1);

/// Configured 50/1 s, the provider enforces 20/1 s and says so; after six
/// seconds it raises its quota to 40/1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_follows_a_smaller_announced_quota_and_its_raise() {
    let _turn = crate::support::beside_others().await;
    let server = MockServer::builder()
        .rule(Rule::sliding_log(20, SECOND))
        .headers(HeaderDialect::IetfStructured)
        .start()
        .await
        .unwrap();
    let pacing = support::readme_pacing(50, SECOND).follow_announced_quotas();
    let url = server.url();
    let run = tokio::spawn(async move { support::run_stack(&url, pacing, 400, 64).await });
    tokio::time::sleep(Duration::from_secs(6)).await;
    server.set_limit(0, 40).unwrap();
    let raised_at = server.started_at().elapsed();
    let succeeded = run.await.unwrap();
    let stats = server.stats();
    server.shutdown().await;
    assert_eq!(succeeded, 400, "every request completes");

    let arrivals = &stats.arrivals;
    let first = arrivals[0].at;
    // The first requests go before any answer can announce the quota.
    let answered = first + Duration::from_millis(100);
    let late_refusals = arrivals
        .iter()
        .filter(|arrival| arrival.at > answered && arrival.status == 429)
        .count();
    let mut accepted: Vec<Duration> = arrivals
        .iter()
        .filter(|arrival| arrival.status == 200)
        .map(|arrival| arrival.at)
        .collect();
    accepted.sort_unstable();
    // The rate from the first acceptance at or after `from` to the first
    // at or after `to`: whole windows of a limiter that sends its window's
    // slots together, whatever their phase against `from` and `to` (a
    // count between fixed instants would gain or lose a whole burst).
    let rate = |from: Duration, to: Duration| {
        let start = accepted.partition_point(|at| *at < from);
        let end = accepted.partition_point(|at| *at < to);
        let (Some(first), Some(last)) = (accepted.get(start), accepted.get(end)) else {
            return 0.0;
        };
        (end - start) as f64 / (*last - *first).as_secs_f64()
    };
    // At 20/1 s, the seconds from 1 to 5 after the first answer; at 40/1 s,
    // two windows after the raise until the traffic thins out.
    let slow = rate(answered + SECOND, answered + 5 * SECOND);
    let fast = rate(raised_at + 2 * SECOND, raised_at + 4 * SECOND);
    println!(
        "{late_refusals} x 429 after the first answer; {slow:.1}/s at the announced 20/s; \
         {fast:.1}/s two windows after the raise to 40/s"
    );
    assert_eq!(late_refusals, 0, "429s after the first answer");
    assert!(slow >= 0.95 * 20.0, "{slow:.1}/s of the announced 20/s");
    assert!(fast >= 0.9 * 40.0, "{fast:.1}/s of the raised 40/s");
}
