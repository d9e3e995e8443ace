//! The stats endpoint and the handle agree, over a real socket.

use crate::common;

use std::time::Duration;

use common::{client, get, send};
use http::Method;
use quota_mock::{MockServer, Outcome, Rule, Stats, fnv1a64};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn stats_endpoint_matches_the_handle_and_is_not_recorded() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(3, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    for _ in 0..5 {
        get(&client, &format!("{}/work", server.url())).await;
    }
    let stats_url = format!("{}/__quota/stats", server.url());
    let reply = get(&client, &stats_url).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let from_endpoint: Stats = serde_json::from_slice(&reply.body).unwrap();
    let from_handle = server.stats();
    assert_eq!(from_endpoint, from_handle);

    assert_eq!(from_handle.total, 5);
    assert_eq!(from_handle.count(200), 3);
    assert_eq!(from_handle.count(429), 2);
    assert_eq!(from_handle.accepted(), 3);
    assert_eq!(from_handle.max_in_any_window(HOUR), 3);
    assert_eq!(from_handle.rules[0].rule, "3/1h:sliding");
    assert_eq!(from_handle.rules[0].limit, 3);
    assert_eq!(from_handle.rules[0].window_ms, 3_600_000);
    assert_eq!(from_handle.rules[0].max_accepted_in_any_window, 3);
    let outcomes: Vec<Outcome> = from_handle.arrivals.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes[3..], [Outcome::Refused, Outcome::Refused]);
    assert!(
        from_handle
            .arrivals
            .windows(2)
            .all(|pair| pair[0].at <= pair[1].at)
    );

    // Asking again records nothing.
    get(&client, &stats_url).await;
    assert_eq!(server.stats().total, 5);
}

#[tokio::test]
async fn arrivals_record_method_path_attempt_and_body_hash() {
    let server = MockServer::builder().start().await.unwrap();
    let client = client();
    let url = format!("{}/orders/7?token=secret", server.url());
    let body = b"{\"item\":42}";
    let headers = [
        ("x-retry-attempt", "2"),
        ("content-type", "application/json"),
    ];
    let reply = send(&client, Method::POST, &url, &headers, body)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);

    let stats = server.stats();
    let arrival = &stats.arrivals[0];
    assert_eq!(arrival.method, "POST");
    assert_eq!(arrival.path, "/orders/7");
    assert_eq!(arrival.attempt, Some(2));
    assert_eq!(arrival.body_len, body.len() as u64);
    assert_eq!(arrival.body_hash, fnv1a64(body));
    assert_eq!(arrival.status, 200);
}

#[tokio::test]
async fn reset_endpoint_clears_log_and_quota() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(1, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(get(&client, &server.url()).await.status, 200);
    assert_eq!(get(&client, &server.url()).await.status, 429);
    let reset_url = format!("{}/__quota/reset", server.url());
    let reply = send(&client, Method::POST, &reset_url, &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(server.stats().total, 0);
    assert_eq!(get(&client, &server.url()).await.status, 200);
}
