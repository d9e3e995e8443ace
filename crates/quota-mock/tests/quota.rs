//! Each quota mode over a real socket. Windows are long (an hour) so the
//! assertions hold however slow the machine; exact timing is covered by the
//! paused-clock unit tests.

use crate::common;

use std::time::Duration;

use common::{client, get, send, statuses};
use http::Method;
use quota_mock::{MockServer, Rule};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn sliding_log_refuses_exactly_the_excess_with_retry_after_rounded_up() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(5, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    let url = format!("{}/things", server.url());

    for remaining in (0..5).rev() {
        let reply = get(&client, &url).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header_u64("x-ratelimit-limit"), Some(5));
        assert_eq!(reply.header_u64("x-ratelimit-remaining"), Some(remaining));
    }
    for _ in 0..3 {
        let reply = get(&client, &url).await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header_u64("x-ratelimit-remaining"), Some(0));
        let retry_after = reply
            .header_u64("retry-after")
            .expect("a numeric Retry-After");
        // The oldest admission leaves an hour after it arrived, moments ago.
        assert!(
            (3590..=3600).contains(&retry_after),
            "Retry-After: {retry_after}"
        );
        let reset = reply
            .header_u64("x-ratelimit-reset")
            .expect("a numeric reset");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            reset >= now + 3590 && reset <= now + 3601,
            "reset {reset}, now {now}"
        );
    }

    let stats = server.stats();
    assert_eq!(stats.total, 8);
    assert_eq!(stats.count(200), 5);
    assert_eq!(stats.count(429), 3);
    assert_eq!(stats.accepted(), 5);
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 5);
}

#[tokio::test]
async fn fixed_window_refuses_until_the_boundary() {
    let server = MockServer::builder()
        .rule(Rule::fixed_window(4, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(
        statuses(&client, &server.url(), 6).await,
        [200, 200, 200, 200, 429, 429]
    );
    let reply = get(&client, &server.url()).await;
    let retry_after = reply
        .header_u64("retry-after")
        .expect("a numeric Retry-After");
    assert!(
        (3590..=3600).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
}

#[tokio::test]
async fn token_bucket_refuses_until_the_next_token() {
    // Capacity 6, one token every 10 minutes.
    let server = MockServer::builder()
        .rule(Rule::token_bucket(6, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(
        statuses(&client, &server.url(), 7).await,
        [200, 200, 200, 200, 200, 200, 429]
    );
    let reply = get(&client, &server.url()).await;
    let retry_after = reply
        .header_u64("retry-after")
        .expect("a numeric Retry-After");
    assert!(
        (590..=600).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
}

#[tokio::test]
async fn gcra_admits_no_burst_and_refusals_cost_nothing() {
    // One request every 20 minutes, however long the key was idle.
    let server = MockServer::builder()
        .rule("3/1h:gcra".parse().unwrap())
        .start()
        .await
        .unwrap();
    let client = client();
    let first = get(&client, &server.url()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header_u64("x-ratelimit-remaining"), Some(0));
    for _ in 0..3 {
        let reply = get(&client, &server.url()).await;
        assert_eq!(reply.status, 429);
        let retry_after = reply
            .header_u64("retry-after")
            .expect("a numeric Retry-After");
        assert!(
            (1190..=1200).contains(&retry_after),
            "Retry-After: {retry_after}"
        );
    }
    let stats = server.stats();
    assert_eq!(stats.rules[0].rule, "3/1h:gcra");
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 1);
    assert_eq!(stats.rules[0].max_arrivals_in_any_window, 4);
}

#[tokio::test]
async fn sliding_window_counter_counts_refused_requests() {
    let server = MockServer::builder()
        .rule(Rule::sliding_window_counter(2, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(
        statuses(&client, &server.url(), 4).await,
        [200, 200, 429, 429]
    );
    // Counted: 2 admitted and 2 refused, so the next hour starts with a
    // previous count of 4 (plus this refusal), and one more request fits
    // once 5 * (1 - e) + 1 <= 2, at e = 0.8 h: 48 minutes into the next
    // hour.
    let reply = get(&client, &server.url()).await;
    assert_eq!(reply.status, 429);
    let retry_after = reply
        .header_u64("retry-after")
        .expect("a numeric Retry-After");
    assert!(
        (3600 + 2870..=3600 + 2880).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let stats = server.stats();
    assert_eq!(stats.rules[0].rule, "2/1h:counter");
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 2);
    assert_eq!(stats.rules[0].max_arrivals_in_any_window, 5);
    assert_eq!(stats.max_arrivals_in_any_window(HOUR), 5);
}

#[tokio::test]
async fn the_tightest_of_several_rules_decides() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(10, HOUR))
        .rule(Rule::fixed_window(3, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    let first = get(&client, &server.url()).await;
    assert_eq!(first.header_u64("x-ratelimit-limit"), Some(3));
    assert_eq!(first.header_u64("x-ratelimit-remaining"), Some(2));
    assert_eq!(
        statuses(&client, &server.url(), 4).await,
        [200, 200, 429, 429]
    );
    let stats = server.stats();
    assert_eq!(stats.rules.len(), 2);
    assert_eq!(stats.rules[0].rule, "10/1h:sliding");
    assert_eq!(stats.rules[1].rule, "3/1h:fixed");
    assert!(
        stats
            .rules
            .iter()
            .all(|rule| rule.max_accepted_in_any_window == 3)
    );
}

#[tokio::test]
async fn invalid_rules_fail_to_start() {
    let zero_limit = MockServer::builder()
        .rule(Rule::sliding_log(0, HOUR))
        .start()
        .await;
    assert_eq!(
        zero_limit.unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    let zero_window = MockServer::builder()
        .rule(Rule::token_bucket(1, Duration::ZERO))
        .start()
        .await;
    assert_eq!(
        zero_window.unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
}

#[tokio::test]
async fn limits_change_at_run_time_through_the_handle_and_the_control_path() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(100, HOUR))
        .rule(Rule::fixed_window(2, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    let url = server.url();
    assert_eq!(statuses(&client, &url, 3).await, [200, 200, 429]);

    let raised = server.set_limit(1, 4).unwrap();
    assert_eq!(raised, Rule::fixed_window(4, HOUR));
    assert_eq!(statuses(&client, &url, 3).await, [200, 200, 429]);

    let control = format!("{url}/__quota/limit?rule=1&limit=5");
    let reply = send(&client, Method::POST, &control, &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["rule"], "5/1h:fixed");
    assert_eq!(statuses(&client, &url, 2).await, [200, 429]);
    assert_eq!(server.stats().rules[1].rule, "5/1h:fixed");

    for bad in [
        "rule=2&limit=5",
        "rule=1&limit=0",
        "rule=1",
        "limit=five&rule=1",
    ] {
        let control = format!("{url}/__quota/limit?{bad}");
        let reply = send(&client, Method::POST, &control, &[], b"")
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{bad}");
    }
    let reply = get(&client, &format!("{url}/__quota/limit?rule=1&limit=9")).await;
    assert_eq!(reply.status, 405);
    assert!(server.set_limit(7, 1).is_err());
    assert_eq!(server.stats().rules[1].limit, 5);
}

#[tokio::test]
async fn a_concurrency_rule_refuses_requests_beyond_those_in_flight() {
    // Long enough that three concurrent requests overlap on a busy machine.
    let processing = Duration::from_millis(800);
    let server = MockServer::builder()
        .rule("2:concurrency".parse().unwrap())
        .processing(processing, processing)
        .start()
        .await
        .unwrap();
    let client = client();
    let url = server.url();
    let (a, b, c) = tokio::join!(get(&client, &url), get(&client, &url), get(&client, &url));
    let mut replies = [a, b, c];
    replies.sort_by_key(|reply| reply.status);
    let statuses: Vec<u16> = replies.iter().map(|reply| reply.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(replies[2].header("retry-after"), None);
    // The slots were handed back with the responses.
    assert_eq!(get(&client, &url).await.status, 200);
    let stats = server.stats();
    assert_eq!(stats.rules[0].rule, "2:concurrency");
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 2);
    assert_eq!(stats.accepted(), 3);
}
