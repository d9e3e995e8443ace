//! HTTP/2 with prior knowledge (h2c) works like HTTP/1.1.

use crate::common;

use std::time::Duration;

use common::{get, h2c_client};
use http::Version;
use quota_mock::{MockServer, Rule};

#[tokio::test]
async fn h2c_requests_are_served_and_limited() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(3, Duration::from_secs(3600)))
        .start()
        .await
        .unwrap();
    let client = h2c_client();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let reply = get(&client, &format!("{}/h2", server.url())).await;
        assert_eq!(reply.version, Version::HTTP_2);
        seen.push(reply.status.as_u16());
    }
    assert_eq!(seen, [200, 200, 200, 429]);
    assert_eq!(server.stats().total, 4);
}

#[tokio::test]
async fn concurrent_h2c_streams_never_exceed_the_quota() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(10, Duration::from_secs(3600)))
        .start()
        .await
        .unwrap();
    let client = h2c_client();
    let url = server.url();
    let requests = (0..40).map(|_| {
        let client = client.clone();
        let url = url.clone();
        tokio::spawn(async move { get(&client, &url).await.status.as_u16() })
    });
    let mut ok = 0;
    for request in requests.collect::<Vec<_>>() {
        if request.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    let stats = server.stats();
    assert_eq!(stats.count(429), 30);
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 10);
}
