//! Weighted quotas over a real socket: a mix of small and large costs, and
//! exactly the 429s the quotas imply. Windows are an hour long so the
//! assertions hold however slow the machine.

use crate::common;

use std::time::Duration;

use common::{HttpClient, Reply, client, get_with};
use http::HeaderName;
use quota_mock::{MockServer, Outcome, Rule};

const HOUR: Duration = Duration::from_secs(3600);

async fn costing(client: &HttpClient, url: &str, cost: u64) -> Reply {
    get_with(client, url, &[("x-cost", &cost.to_string())]).await
}

#[tokio::test]
async fn small_and_large_costs_get_exactly_the_429s_the_quotas_imply() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(10, HOUR))
        .rule(Rule::parse("1000/1h:cost").unwrap())
        .usage_header(HeaderName::from_static("x-usage"))
        .start()
        .await
        .unwrap();
    let client = client();
    let url = format!("{}/v1/complete", server.url());

    // (cost, expected status): 100 + 400 + 300 = 800, so 250 does not fit
    // but 200 does; then nothing with a cost fits.
    let plan = [
        (100, 200),
        (400, 200),
        (300, 200),
        (250, 429),
        (200, 200),
        (1, 429),
    ];
    for (cost, expected) in plan {
        let reply = costing(&client, &url, cost).await;
        assert_eq!(reply.status, expected, "cost {cost}");
        if expected == 429 {
            let retry_after = reply.header_u64("retry-after").expect("Retry-After");
            assert!((3590..=3600).contains(&retry_after), "{retry_after}");
            assert_eq!(reply.header("x-usage"), None);
        } else {
            assert_eq!(reply.header_u64("x-usage"), Some(cost));
        }
    }
    // More than the whole cost quota: refused, with no Retry-After to wait for.
    let reply = costing(&client, &url, 5000).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), None);
    assert!(
        String::from_utf8_lossy(&reply.body).contains("cost_exceeds_limit"),
        "{:?}",
        reply.body
    );
    // Free requests still spend the request quota: 4 used, 6 left.
    for _ in 0..6 {
        assert_eq!(costing(&client, &url, 0).await.status, 200);
    }
    let reply = costing(&client, &url, 0).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header_u64("x-ratelimit-limit"), Some(10));
    assert_eq!(reply.header_u64("x-ratelimit-remaining"), Some(0));

    let stats = server.stats();
    assert_eq!(stats.total, 14);
    assert_eq!(stats.count(200), 10);
    assert_eq!(stats.count(429), 4);
    assert_eq!(stats.rules[0].rule, "10/1h:sliding");
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 10);
    assert_eq!(stats.rules[1].rule, "1000/1h:sliding:cost");
    assert!(stats.rules[1].weighted);
    assert_eq!(stats.rules[1].max_accepted_in_any_window, 1000);
    assert_eq!(stats.max_cost_in_any_window(HOUR), 1000);
    let refused: Vec<u64> = stats
        .arrivals
        .iter()
        .filter(|arrival| arrival.outcome == Outcome::Refused)
        .map(|arrival| arrival.cost)
        .collect();
    assert_eq!(refused, [250, 1, 5000, 0]);
    server.shutdown().await;
}

#[tokio::test]
async fn each_mode_enforces_costs_over_loopback() {
    for rule in [
        Rule::sliding_log(100, HOUR).weighted(),
        Rule::fixed_window(100, HOUR).weighted(),
        Rule::token_bucket(100, HOUR).weighted(),
    ] {
        let server = MockServer::builder().rule(rule).start().await.unwrap();
        let client = client();
        let mut statuses = Vec::new();
        for cost in [70, 31, 30, 1] {
            statuses.push(costing(&client, &server.url(), cost).await.status.as_u16());
        }
        assert_eq!(statuses, [200, 429, 200, 429], "{rule}");
        assert_eq!(server.stats().rules[0].max_accepted_in_any_window, 100);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn actual_cost_corrects_an_estimate_and_the_stats_follow_it() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(1000, HOUR).weighted())
        .cost_header(HeaderName::from_static("x-estimated-tokens"))
        .actual_cost_header(HeaderName::from_static("x-used-tokens"))
        .usage_header(HeaderName::from_static("x-tokens-used"))
        .start()
        .await
        .unwrap();
    let client = client();
    let url = server.url();

    // Estimated 800, used 100: the 700 left unused are free again.
    let reply = get_with(
        &client,
        &url,
        &[("x-estimated-tokens", "800"), ("x-used-tokens", "100")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header_u64("x-tokens-used"), Some(100));
    assert_eq!(reply.header_u64("x-ratelimit-remaining"), Some(900));
    let reply = get_with(&client, &url, &[("x-estimated-tokens", "900")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header_u64("x-tokens-used"), Some(900));
    let reply = get_with(&client, &url, &[("x-estimated-tokens", "1")]).await;
    assert_eq!(reply.status, 429);

    let stats = server.stats();
    assert_eq!(stats.arrivals[0].declared_cost, 800);
    assert_eq!(stats.arrivals[0].cost, 100);
    assert_eq!(stats.max_cost_in_any_window(HOUR), 1000);
    server.shutdown().await;
}
