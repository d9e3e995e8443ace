//! Separate quotas per key, over a real socket.

use crate::common;

use std::time::Duration;

use common::{client, get, get_with};
use http::HeaderName;
use quota_mock::{KeyBy, MockServer, Rule};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn header_keys_have_separate_quotas() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(2, HOUR))
        .key_by(KeyBy::Header(HeaderName::from_static("x-api-key")))
        .start()
        .await
        .unwrap();
    let client = client();
    let url = server.url();
    let mut seen = Vec::new();
    for key in ["alice", "bob", "alice", "bob", "alice", "bob"] {
        seen.push(
            get_with(&client, &url, &[("x-api-key", key)])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(seen, [200, 200, 200, 200, 429, 429]);
    // Requests without the header share one quota of their own.
    assert_eq!(get(&client, &url).await.status, 200);

    let stats = server.stats();
    let keys: Vec<&str> = stats
        .arrivals
        .iter()
        .map(|arrival| arrival.key.as_str())
        .collect();
    assert_eq!(keys, ["alice", "bob", "alice", "bob", "alice", "bob", ""]);
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 2);
}

#[tokio::test]
async fn path_segment_keys_have_separate_quotas() {
    let server = MockServer::builder()
        .rule(Rule::fixed_window(1, HOUR))
        .key_by(KeyBy::PathSegment)
        .start()
        .await
        .unwrap();
    let client = client();
    let base = server.url();
    assert_eq!(get(&client, &format!("{base}/users/1")).await.status, 200);
    assert_eq!(get(&client, &format!("{base}/orders/1")).await.status, 200);
    assert_eq!(get(&client, &format!("{base}/users/2")).await.status, 429);
    assert_eq!(get(&client, &format!("{base}/orders")).await.status, 429);
    let body = get(&client, &format!("{base}/items")).await.body;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json, serde_json::json!({ "ok": true, "key": "items" }));
}

#[tokio::test]
async fn global_key_shares_one_quota_across_paths() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(2, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    let base = server.url();
    assert_eq!(get(&client, &format!("{base}/a")).await.status, 200);
    assert_eq!(get(&client, &format!("{base}/b")).await.status, 200);
    assert_eq!(get(&client, &format!("{base}/c")).await.status, 429);
}
