//! Injected faults over a real socket; the RNG is seeded, so every run
//! meets the same faults.

use crate::common;

use std::time::Duration;

use common::{client, get, send, statuses};
use http::{Method, StatusCode};
use quota_mock::{Fault, MockServer, Outcome, Rule, Scripted};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn scripted_503s_answer_the_next_three_requests() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(10, HOUR))
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(get(&client, &server.url()).await.status, 200);
    server.script(
        Scripted::new(3, StatusCode::SERVICE_UNAVAILABLE).retry_after(Duration::from_secs(2)),
    );
    for _ in 0..3 {
        let reply = get(&client, &server.url()).await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("retry-after"), Some("2"));
    }
    let after = get(&client, &server.url()).await;
    assert_eq!(after.status, 200);
    // Scripted responses consumed no quota: this is the second admission.
    assert_eq!(after.header_u64("x-ratelimit-remaining"), Some(8));
    let stats = server.stats();
    assert_eq!(stats.count(503), 3);
    assert_eq!(
        stats
            .arrivals
            .iter()
            .filter(|a| a.outcome == Outcome::Scripted)
            .count(),
        3
    );
}

#[tokio::test]
async fn scripted_responses_can_be_set_on_the_builder() {
    let server = MockServer::builder()
        .scripted(Scripted::new(1, StatusCode::BAD_GATEWAY))
        .scripted(
            Scripted::new(1, StatusCode::TOO_MANY_REQUESTS)
                .retry_after(Duration::from_millis(1500)),
        )
        .start()
        .await
        .unwrap();
    let client = client();
    assert_eq!(get(&client, &server.url()).await.status, 502);
    let throttled = get(&client, &server.url()).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), Some("2"));
    assert_eq!(get(&client, &server.url()).await.status, 200);
}

async fn error_statuses(seed: u64) -> Vec<u16> {
    let server = MockServer::builder()
        .fault(Fault::ErrorRate {
            fraction: 0.3,
            statuses: vec![
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::SERVICE_UNAVAILABLE,
            ],
        })
        .seed(seed)
        .start()
        .await
        .unwrap();
    statuses(&client(), &server.url(), 300).await
}

#[tokio::test]
async fn error_rate_fraction_is_respected_and_seeded() {
    let first = error_statuses(42).await;
    let errors = first.iter().filter(|&&status| status != 200).count();
    // 30% of 300 is 90; the seed makes this exact run repeatable.
    assert!((60..=120).contains(&errors), "{errors} errors in 300");
    assert!(first.iter().all(|status| [200, 500, 503].contains(status)));
    assert_eq!(error_statuses(42).await, first);
}

#[tokio::test]
async fn unavailable_with_retry_after_fault() {
    let server = MockServer::builder()
        .fault(Fault::ServiceUnavailableRetryAfter {
            fraction: 1.0,
            retry_after: Duration::from_millis(2500),
        })
        .start()
        .await
        .unwrap();
    let reply = get(&client(), &server.url()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("3"));
}

#[tokio::test]
async fn connection_reset_closes_without_a_response() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(5, HOUR))
        .fault(Fault::ConnectionReset { fraction: 1.0 })
        .start()
        .await
        .unwrap();
    let result = send(&client(), Method::GET, &server.url(), &[], b"").await;
    assert!(result.is_err(), "expected no response, got {result:?}");
    let stats = server.stats();
    assert_eq!(stats.total, 1);
    assert_eq!(stats.count(0), 1);
    assert_eq!(stats.accepted(), 1);
}

#[tokio::test]
async fn faults_can_be_replaced_at_runtime() {
    let server = MockServer::builder().start().await.unwrap();
    let client = client();
    assert_eq!(get(&client, &server.url()).await.status, 200);
    let all_fail = Fault::ErrorRate {
        fraction: 1.0,
        statuses: vec![StatusCode::BAD_GATEWAY],
    };
    server.set_faults(vec![all_fail]).unwrap();
    assert_eq!(get(&client, &server.url()).await.status, 502);
    let invalid = Fault::ConnectionReset { fraction: 1.5 };
    assert_eq!(
        server.set_faults(vec![invalid]).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    // The invalid set changed nothing.
    assert_eq!(get(&client, &server.url()).await.status, 502);
    server.set_faults(Vec::new()).unwrap();
    assert_eq!(get(&client, &server.url()).await.status, 200);
}

#[tokio::test]
async fn invalid_fault_fraction_fails_to_start() {
    let result = MockServer::builder()
        .fault(Fault::ConnectionReset { fraction: f64::NAN })
        .start()
        .await;
    assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
}
