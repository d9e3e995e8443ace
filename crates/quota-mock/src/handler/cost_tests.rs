//! Costs through the whole request path, on tokio's paused clock: which
//! requests weighted rules refuse, what the responses say, what is recorded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::{Instant, advance};

use super::{Shared, handle};
use crate::cost::CostConfig;
use crate::headers::{HeaderConfig, HeaderDialect};
use crate::key::KeyBy;
use crate::rule::Rule;
use crate::stats::Outcome;

fn server(rules: Vec<Rule>, dialect: HeaderDialect) -> Arc<Shared> {
    let costs = CostConfig {
        usage_header: Some(HeaderName::from_static("x-usage")),
        ..CostConfig::default()
    };
    Arc::new(
        Shared::new(
            Instant::now(),
            rules,
            KeyBy::Global,
            HeaderConfig {
                dialect,
                ..HeaderConfig::default()
            },
            Vec::new(),
            Vec::new(),
            StdRng::seed_from_u64(0),
        )
        .with_costs(costs),
    )
}

async fn send(shared: &Arc<Shared>, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut request = Request::get("/v1/chat");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    handle(Arc::clone(shared), request)
        .await
        .expect("a response, not a reset")
}

async fn costing(shared: &Arc<Shared>, cost: u64) -> Response<Full<Bytes>> {
    send(shared, &[("x-cost", &cost.to_string())]).await
}

fn header<'a>(response: &'a Response<Full<Bytes>>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
}

async fn body_json(response: Response<Full<Bytes>>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

#[tokio::test(start_paused = true)]
async fn quota_headers_count_units_for_a_weighted_rule() {
    let shared = server(
        vec![Rule::sliding_log(100, secs(10)).weighted()],
        HeaderDialect::XRateLimitDelta,
    );
    let response = costing(&shared, 60).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-ratelimit-limit"), Some("100"));
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("40"));
    assert_eq!(header(&response, "x-ratelimit-used"), Some("60"));
    assert_eq!(header(&response, "x-ratelimit-reset"), Some("10"));
    assert_eq!(header(&response, "x-usage"), Some("60"));

    advance(secs(4)).await;
    let refused = costing(&shared, 41).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), Some("6"));
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("40"));
    assert_eq!(header(&refused, "x-usage"), None);
    assert_eq!(body_json(refused).await["error"], "rate_limited");
    assert_eq!(costing(&shared, 40).await.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn cost_above_the_limit_gets_429_without_retry_after_and_consumes_nothing() {
    let shared = server(
        vec![
            Rule::sliding_log(10, secs(60)),
            Rule::sliding_log(100, secs(60)).weighted(),
        ],
        HeaderDialect::XRateLimit,
    );
    let refused = costing(&shared, 101).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), None);
    // The quota headers still describe the untouched rule that refused it.
    assert_eq!(header(&refused, "x-ratelimit-limit"), Some("100"));
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("100"));
    let body = body_json(refused).await;
    assert_eq!(body["error"], "cost_exceeds_limit");
    assert!(body.get("retry_after").is_none());

    assert_eq!(costing(&shared, 100).await.status(), StatusCode::OK);
    let stats = shared.stats();
    assert_eq!(stats.arrivals[0].outcome, Outcome::Refused);
    assert_eq!(stats.arrivals[0].cost, 101);
    assert_eq!(stats.accepted(), 1);
}

#[tokio::test(start_paused = true)]
async fn actual_cost_header_corrects_the_charge_and_is_echoed_as_usage() {
    let shared = server(
        vec![Rule::sliding_log(100, secs(10)).weighted()],
        HeaderDialect::XRateLimit,
    );
    // Estimated 60, really 20: 80 units remain.
    let response = send(&shared, &[("x-cost", "60"), ("x-actual-cost", "20")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-usage"), Some("20"));
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("80"));
    let response = costing(&shared, 80).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-usage"), Some("80"));
    assert_eq!(costing(&shared, 1).await.status(), 429);

    // Estimated 5, really 30: the rule is overdrawn until both leave.
    advance(secs(10)).await;
    let response = send(&shared, &[("x-cost", "5"), ("x-actual-cost", "130")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-usage"), Some("130"));
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&response, "x-ratelimit-used"), Some("100"));
    advance(secs(3)).await;
    let refused = costing(&shared, 0).await;
    // Zero cost spends nothing, so it is admitted even now.
    assert_eq!(refused.status(), StatusCode::OK);
    let refused = costing(&shared, 1).await;
    assert_eq!(header(&refused, "retry-after"), Some("7"));

    let stats = shared.stats();
    let charged: Vec<(u64, u64)> = stats
        .arrivals
        .iter()
        .map(|arrival| (arrival.declared_cost, arrival.cost))
        .collect();
    assert_eq!(
        charged,
        [(60, 20), (80, 80), (1, 1), (5, 130), (0, 0), (1, 1)]
    );
    // The overdrawn window is what the stats report, not the estimates.
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 130);
    assert_eq!(stats.max_cost_in_any_window(secs(10)), 130);
}

#[tokio::test(start_paused = true)]
async fn openai_and_anthropic_report_requests_and_tokens_apart() {
    let rules = vec![
        Rule::sliding_log(10, secs(60)),
        Rule::sliding_log(1000, secs(60)).weighted(),
    ];
    let shared = server(rules.clone(), HeaderDialect::OpenAi);
    let response = costing(&shared, 300).await;
    assert_eq!(header(&response, "x-ratelimit-limit-requests"), Some("10"));
    assert_eq!(
        header(&response, "x-ratelimit-remaining-requests"),
        Some("9")
    );
    assert_eq!(header(&response, "x-ratelimit-limit-tokens"), Some("1000"));
    assert_eq!(
        header(&response, "x-ratelimit-remaining-tokens"),
        Some("700")
    );
    assert_eq!(header(&response, "x-ratelimit-reset-tokens"), Some("1m0s"));

    let shared = server(rules, HeaderDialect::Anthropic);
    let response = costing(&shared, 300).await;
    assert_eq!(
        header(&response, "anthropic-ratelimit-requests-remaining"),
        Some("9")
    );
    assert_eq!(
        header(&response, "anthropic-ratelimit-tokens-limit"),
        Some("1000")
    );
    assert_eq!(
        header(&response, "anthropic-ratelimit-tokens-remaining"),
        Some("700")
    );
    assert!(header(&response, "anthropic-ratelimit-tokens-reset").is_some());

    // Only weighted rules: no requests headers at all.
    let shared = server(
        vec![Rule::token_bucket(50, secs(1)).weighted()],
        HeaderDialect::OpenAi,
    );
    let response = costing(&shared, 20).await;
    assert_eq!(header(&response, "x-ratelimit-limit-requests"), None);
    assert_eq!(
        header(&response, "x-ratelimit-remaining-tokens"),
        Some("30")
    );
    // One token refills every 20ms.
    assert_eq!(header(&response, "x-ratelimit-reset-tokens"), Some("20ms"));
}

#[tokio::test(start_paused = true)]
async fn single_value_dialects_report_the_rule_that_refused_a_costly_request() {
    let shared = server(
        vec![
            Rule::sliding_log(10, secs(60)),
            Rule::sliding_log(1000, secs(60)).weighted(),
        ],
        HeaderDialect::XRateLimitDelta,
    );
    assert_eq!(costing(&shared, 900).await.status(), StatusCode::OK);
    let refused = costing(&shared, 200).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // 9 requests remain but no 200-unit one: the cost rule is reported.
    assert_eq!(header(&refused, "x-ratelimit-limit"), Some("1000"));
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("100"));
    assert_eq!(header(&refused, "retry-after"), Some("60"));
    // A cheap request is told about the request rule.
    let response = costing(&shared, 1).await;
    assert_eq!(header(&response, "x-ratelimit-limit"), Some("10"));
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("8"));
}

#[tokio::test(start_paused = true)]
async fn usage_header_is_off_by_default_and_cost_header_name_is_configurable() {
    let shared = Arc::new(
        Shared::new(
            Instant::now(),
            vec![Rule::fixed_window(10, secs(60)).weighted()],
            KeyBy::Global,
            HeaderConfig::default(),
            Vec::new(),
            Vec::new(),
            StdRng::seed_from_u64(0),
        )
        .with_costs(CostConfig {
            cost_header: HeaderName::from_static("x-tokens"),
            ..CostConfig::default()
        }),
    );
    let response = send(&shared, &[("x-tokens", "6"), ("x-cost", "1")]).await;
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("4"));
    assert_eq!(header(&response, "x-usage"), None);
    // `x-cost` is not the cost header here: this one costs 1.
    let response = send(&shared, &[("x-cost", "9")]).await;
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("3"));
}
