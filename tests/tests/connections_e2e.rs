//! Connection telemetry against quota-mock: the tracked connector counts
//! the connections the server accepted, and a pooled client at steady
//! state opens none.

use std::collections::HashSet;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use quota_mock::MockServer;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::connect::{
    ConnectionInfo, MarkNewConnectionLayer, NewConnection, TrackConnections,
};

/// On a runtime of one thread: the pool's tasks, which put a connection
/// back once its response is read, run while the test yields. (On two
/// worker threads they ran on the other one, which the OS did not always
/// schedule within the test's yields: a warm request opened a connection
/// in 1 of about 8 runs beside other tests.)
#[tokio::test]
async fn the_connector_counts_what_the_server_accepted_and_steady_state_opens_none() {
    let _turn = crate::support::alone().await;
    let server = MockServer::builder().start().await.unwrap();
    let connector = TrackConnections::new(HttpConnector::new());
    let stats = connector.stats();
    let client = ServiceBuilder::new()
        .layer(MarkNewConnectionLayer::new())
        .service(
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(32)
                .build::<_, Empty<Bytes>>(connector),
        );
    let url = format!("{}/v1/items", server.url());
    // Sends `count` GETs at once; returns, for each, whether it was marked
    // new and its connection's id.
    let burst = |count: usize| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..count {
                let request = http::Request::get(&url).body(Empty::new()).unwrap();
                let client = client.clone();
                tasks.spawn(async move {
                    let response = client.oneshot(request).await.unwrap();
                    let new = response.extensions().get::<NewConnection>().is_some();
                    let id = response.extensions().get::<ConnectionInfo>().unwrap().id();
                    response.into_body().collect().await.unwrap();
                    (new, id)
                });
            }
            let mut answers = Vec::new();
            while let Some(answer) = tasks.join_next().await {
                answers.push(answer.unwrap());
            }
            answers
        }
    };

    let answers = burst(8).await;
    let opened = stats.opened();
    assert!(opened >= 1);
    // The server accepts on a runtime of its own: a connection the client
    // opened may not be accepted yet.
    yield_until(|| server.connections_accepted() >= opened).await;
    assert_eq!(opened, server.connections_accepted());
    // Each connection that served a response had its first one marked new,
    // and only that one. (hyper-util's pool may open a connection that an
    // idle one coming back makes unnecessary: it serves nothing.)
    let used: HashSet<u64> = answers.iter().map(|(_, id)| *id).collect();
    let marked: Vec<u64> = answers
        .iter()
        .filter(|(new, _)| *new)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(marked.len(), used.len(), "{answers:?}");
    assert_eq!(marked.iter().copied().collect::<HashSet<_>>(), used);
    assert!(used.len() as u64 <= opened);

    // Steady state: one request at a time on the warm pool. A connection
    // goes back to the pool from a task of the client once its body is
    // read: give that task its turn.
    let mut warm = 0;
    for _ in 0..40 {
        warm += burst(1).await.iter().filter(|(new, _)| *new).count();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(warm, 0, "a warm request was marked new");
    assert_eq!(stats.opened(), opened, "steady state opened connections");
    assert_eq!(server.connections_accepted(), opened);
    // Which connections hyper-util's pool keeps is its own business (one
    // it opened for a request that an idle connection took first is
    // dropped unready; a used one has been seen closed once): the count
    // of open ones is at most what was opened, and every close is
    // counted, so it falls to zero once the server closes them all.
    assert!(stats.open() <= opened, "{} open of {opened}", stats.open());
    assert_eq!(server.stats().total, 48);
    server.shutdown().await;
    yield_until(|| stats.open() == 0).await;
    assert_eq!(
        stats.open(),
        0,
        "connections the server closed still counted open"
    );
    assert_eq!(
        stats.opened(),
        opened,
        "none opened after the server closed"
    );
}

/// Gives other tasks their turn until `done` holds, 100,000 turns at most:
/// the server and the pool's connection tasks run beside the test's.
async fn yield_until(done: impl Fn() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
}
