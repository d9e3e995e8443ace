use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Service, ServiceBuilder, ServiceExt};

use super::{
    ConnectionInfo, ConnectionStats, MarkNewConnectionLayer, NewConnection, TrackConnections,
};

/// A server that counts the connections it accepts.
async fn server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
            });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned(),
            );
        }
    });
    (addr, accepted)
}

fn client() -> (
    impl Service<
        http::Request<Empty<Bytes>>,
        Response = http::Response<hyper::body::Incoming>,
        Error = hyper_util::client::legacy::Error,
        Future: Send,
    > + Clone
    + Send
    + 'static,
    ConnectionStats,
) {
    let connector = TrackConnections::new(HttpConnector::new());
    let stats = connector.stats();
    let client = ServiceBuilder::new()
        .layer(MarkNewConnectionLayer::new())
        .service(Client::builder(TokioExecutor::new()).build(connector));
    (client, stats)
}

/// Sends a GET, reads its body to the end; returns whether it was marked
/// new, and its connection's id.
async fn get<S>(client: S, addr: SocketAddr) -> (bool, u64)
where
    S: Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = hyper_util::client::legacy::Error,
        >,
{
    let request = http::Request::get(format!("http://{addr}/v1/items?token=secret"))
        .body(Empty::new())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    let new = response.extensions().get::<NewConnection>().is_some();
    let id = response.extensions().get::<ConnectionInfo>().unwrap().id();
    response.into_body().collect().await.unwrap();
    (new, id)
}

/// Lets the client's connection tasks run until `done`.
async fn settle(done: impl Fn() -> bool) -> bool {
    for _ in 0..100_000 {
        if done() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    done()
}

#[tokio::test(flavor = "current_thread")]
async fn counts_match_the_connections_the_server_accepted() {
    let (addr, accepted) = server().await;
    let (client, stats) = client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        tasks.spawn(get(client.clone(), addr));
    }
    let mut marked = 0;
    let mut ids = std::collections::HashSet::new();
    while let Some(answer) = tasks.join_next().await {
        let (new, id) = answer.unwrap();
        marked += u64::from(new);
        ids.insert(id);
    }
    let opened = stats.opened();
    assert!(
        opened > 1,
        "the requests in flight at once shared one connection"
    );
    // The server's accept loop may not have taken a connection that served
    // nothing yet (hyper-util's pool may open one that an idle connection
    // coming back makes unnecessary).
    assert!(settle(|| accepted.load(Ordering::SeqCst) >= opened).await);
    assert_eq!(opened, accepted.load(Ordering::SeqCst));
    assert_eq!(stats.open(), opened, "pooled, none dropped yet");
    assert_eq!(
        marked,
        ids.len() as u64,
        "one response marked new per connection used"
    );
    assert!(ids.len() as u64 <= opened);
    assert_eq!(stats.failed(), 0);
    drop(client);
    assert!(
        settle(|| stats.open() == 0).await,
        "{} still open after the client was dropped",
        stats.open()
    );
    assert_eq!(stats.opened(), opened);
}

#[tokio::test(flavor = "current_thread")]
async fn a_pooled_client_at_steady_state_opens_no_new_connections() {
    let (addr, accepted) = server().await;
    let (client, stats) = client();
    assert!(get(client.clone(), addr).await.0, "the cold request");
    let mut marked = 0;
    for _ in 0..50 {
        // The connection goes back to the pool from a task of the client,
        // once its body is read.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        marked += u64::from(get(client.clone(), addr).await.0);
    }
    assert_eq!(marked, 0, "warm requests marked new");
    assert_eq!(stats.opened(), 1);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(stats.open(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_connection_counts_as_failed_not_opened() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (client, stats) = client();
    let request = http::Request::get(format!("http://{addr}/"))
        .body(Empty::new())
        .unwrap();
    assert!(client.oneshot(request).await.is_err());
    assert_eq!((stats.opened(), stats.open(), stats.failed()), (0, 0, 1));
}
