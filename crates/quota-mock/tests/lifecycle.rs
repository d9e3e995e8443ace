//! Stopping the server: dropping the handle or shutting it down leaves no
//! listener and no task behind.

use crate::common;

use std::time::Duration;

use common::{client, get, h2c_client, send};
use http::Method;
use quota_mock::{Fault, Latency, MockServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until `done` holds, up to 10 s: the runtime runs aborted tasks
/// to completion, and a server on quota-mock's runtime answers from its
/// threads. Checks every millisecond; returns at once when it holds.
async fn settle(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..10_000 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    done()
}

/// A server started from `builder` with a request stuck in an hour of
/// injected latency, sent over a raw socket so the client side spawns no
/// tasks; returns once the server has recorded it.
async fn stuck_request(builder: quota_mock::MockServerBuilder) -> (MockServer, TcpStream) {
    let server = builder
        .fault(Fault::Latency(Latency::Fixed(Duration::from_secs(3600))))
        .start()
        .await
        .unwrap();
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: mock\r\n\r\n")
        .await
        .unwrap();
    assert!(
        settle(|| server.stats().total == 1).await,
        "the request never arrived"
    );
    (server, stream)
}

#[tokio::test]
async fn dropping_the_server_closes_the_listener_and_aborts_every_task() {
    let before = alive_tasks();
    let (server, mut stream) = stuck_request(MockServer::builder().on_caller_runtime()).await;
    let addr = server.addr();
    assert!(
        alive_tasks() >= before + 2,
        "accept loop and connection task should be running"
    );

    drop(server);
    assert!(
        settle(|| alive_tasks() == before).await,
        "{} tasks left behind",
        alive_tasks() - before
    );
    let mut buffer = Vec::new();
    let read = stream.read_to_end(&mut buffer).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "got a response after drop: {buffer:?}"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is still open"
    );
}

#[tokio::test]
async fn dropping_the_server_fails_in_flight_h2c_requests() {
    let server = MockServer::builder()
        .fault(Fault::Latency(Latency::Fixed(Duration::from_secs(3600))))
        .start()
        .await
        .unwrap();
    let client = h2c_client();
    let url = server.url();
    let request = tokio::spawn(async move {
        send(&client, Method::GET, &url, &[], b"")
            .await
            .map(|r| r.status)
    });
    assert!(
        settle(|| server.stats().total == 1).await,
        "the request never arrived"
    );
    drop(server);
    let result = request.await.unwrap();
    assert!(
        result.is_err(),
        "expected the stream to fail, got {result:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_and_closes_the_listener() {
    let server = MockServer::builder().start().await.unwrap();
    let addr = server.addr();
    // A kept-alive idle connection must not hold shutdown up.
    let client = client();
    assert_eq!(get(&client, &server.url()).await.status, 200);
    server.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is still open"
    );
}

/// On quota-mock's own runtime (the default), a dropped server aborts its
/// tasks there: its connections are cut and its listener is closed.
#[tokio::test]
async fn dropping_a_server_on_quota_mocks_runtime_cuts_its_connections() {
    let before = alive_tasks();
    let (server, mut stream) = stuck_request(MockServer::builder()).await;
    let addr = server.addr();
    assert_eq!(
        alive_tasks(),
        before,
        "nothing runs on the caller's runtime"
    );
    drop(server);
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buffer))
        .await
        .expect("the connection stays open after drop");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "got a response after drop: {buffer:?}"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is still open"
    );
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let server = MockServer::builder()
        .on_caller_runtime()
        .fault(Fault::Latency(Latency::Fixed(Duration::from_secs(2))))
        .start()
        .await
        .unwrap();
    let client = client();
    let url = server.url();
    let request = tokio::spawn(async move { get(&client, &url).await.status });
    while server.stats().total == 0 {
        tokio::task::yield_now().await;
    }
    server.shutdown().await;
    assert_eq!(request.await.unwrap(), 200);
}
