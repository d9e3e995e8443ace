//! The simulated network and the server's processing time, over real
//! sockets on the real clock. Every lower bound is exact (a delay is never
//! shorter than configured); upper bounds leave a loaded machine hundreds of
//! milliseconds of slack.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper_util::rt::TokioIo;
use quota_mock::{MockServer, NetworkProxy, Outcome, Rule, fnv1a64};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

const CONNECT_DELAY: Duration = Duration::from_millis(300);
const LATENCY_MIN: Duration = Duration::from_millis(20);
const LATENCY_MAX: Duration = Duration::from_millis(30);
const HOUR: Duration = Duration::from_secs(3600);
const MIB: usize = 1024 * 1024;

/// One HTTP/1.1 connection, so a test knows which requests share it.
async fn connect(addr: std::net::SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

async fn request(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    body: Bytes,
) -> hyper::Result<StatusCode> {
    sender.ready().await?;
    let request = Request::builder()
        .method(method)
        .uri("/items")
        .header("host", "quota-mock")
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

async fn get(sender: &mut SendRequest<Full<Bytes>>) -> StatusCode {
    request(sender, "GET", Bytes::new()).await.unwrap()
}

/// Bytes that differ from position to position, so a reordered or lost
/// chunk changes the hash.
fn patterned(len: usize) -> Bytes {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn server_and_proxy() -> (MockServer, NetworkProxy) {
    let server = MockServer::builder().start().await.unwrap();
    let proxy = NetworkProxy::builder(server.addr())
        .connect_delay(CONNECT_DELAY)
        .latency(LATENCY_MIN, LATENCY_MAX)
        .seed(7)
        .start()
        .await
        .unwrap();
    (server, proxy)
}

#[tokio::test]
async fn a_cold_connection_pays_the_connect_delay_and_a_warm_one_only_latency() {
    let (server, proxy) = server_and_proxy().await;

    let cold_sent = Instant::now();
    let mut sender = connect(proxy.addr()).await;
    assert_eq!(get(&mut sender).await, 200);
    let cold = cold_sent.elapsed();

    let warm_sent = Instant::now();
    assert_eq!(get(&mut sender).await, 200);
    let warm = warm_sent.elapsed();

    assert!(cold >= CONNECT_DELAY + 2 * LATENCY_MIN, "cold: {cold:?}");
    assert!(warm >= 2 * LATENCY_MIN, "warm: {warm:?}");
    assert!(
        warm < CONNECT_DELAY,
        "the warm request paid set-up: {warm:?}"
    );

    // Where the provider measures: the cold request arrived a connect delay
    // and a latency after it was sent, the warm one only a latency after.
    let stats = server.stats();
    assert_eq!(stats.total, 2);
    let arrived = |index: usize| server.started_at() + stats.arrivals[index].at;
    let cold_transit = arrived(0) - cold_sent;
    let warm_transit = arrived(1) - warm_sent;
    assert!(
        cold_transit >= CONNECT_DELAY + LATENCY_MIN,
        "cold transit: {cold_transit:?}"
    );
    assert!(
        warm_transit >= LATENCY_MIN,
        "warm transit: {warm_transit:?}"
    );
    assert!(
        warm_transit < CONNECT_DELAY,
        "warm transit: {warm_transit:?}"
    );
}

#[tokio::test]
async fn every_new_connection_pays_the_connect_delay_again() {
    let (_server, proxy) = server_and_proxy().await;
    for _ in 0..2 {
        let sent = Instant::now();
        let mut sender = connect(proxy.addr()).await;
        assert_eq!(get(&mut sender).await, 200);
        let elapsed = sent.elapsed();
        assert!(elapsed >= CONNECT_DELAY + 2 * LATENCY_MIN, "{elapsed:?}");
    }
}

#[tokio::test]
async fn a_mebibyte_body_arrives_intact_and_in_order() {
    let server = MockServer::builder().start().await.unwrap();
    // Jitter as wide as the delay itself: any reordering would show.
    let proxy = NetworkProxy::builder(server.addr())
        .latency(Duration::ZERO, Duration::from_millis(3))
        .seed(11)
        .start()
        .await
        .unwrap();
    let body = patterned(MIB);
    let mut sender = connect(proxy.addr()).await;
    let status = request(&mut sender, "POST", body.clone()).await.unwrap();
    assert_eq!(status, 200);
    let arrival = &server.stats().arrivals[0];
    assert_eq!(arrival.body_len, MIB as u64);
    assert_eq!(arrival.body_hash, fnv1a64(&body));
}

#[tokio::test]
async fn bytes_cross_both_ways_intact_and_in_order() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = echo.accept().await.unwrap();
        let (mut read, mut write) = stream.into_split();
        tokio::io::copy(&mut read, &mut write).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let proxy = NetworkProxy::builder(echo_addr)
        .connect_delay(Duration::from_millis(20))
        .latency(Duration::ZERO, Duration::from_millis(3))
        .seed(3)
        .start()
        .await
        .unwrap();

    let body = patterned(MIB);
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let sent = body.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut echoed = Vec::with_capacity(MIB);
    timeout(Duration::from_secs(10), read.read_to_end(&mut echoed))
        .await
        .expect("the echo ends")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echoed bytes differ");
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_port_and_cuts_its_connections() {
    let (_server, proxy) = server_and_proxy().await;
    let addr = proxy.addr();
    let mut sender = connect(addr).await;
    assert_eq!(get(&mut sender).await, 200);

    drop(proxy);
    assert!(
        request(&mut sender, "GET", Bytes::new()).await.is_err(),
        "a relayed connection outlived the proxy"
    );
    let refused = timeout(Duration::from_secs(2), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the proxy still accepts connections");
}

#[tokio::test]
async fn an_unreachable_upstream_closes_the_connection() {
    // A port that was free a moment ago: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = NetworkProxy::builder(addr).start().await.unwrap();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buffer = Vec::new();
    let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer))
        .await
        .expect("the proxy closes the connection");
    assert!(read.is_err() || buffer.is_empty());
}

#[tokio::test]
async fn processing_time_delays_admitted_responses_after_the_arrival() {
    const PROCESSING: Duration = Duration::from_millis(400);
    let server = MockServer::builder()
        .rule(Rule::sliding_log(1, HOUR))
        .processing(PROCESSING, PROCESSING + Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let mut sender = connect(server.addr()).await;

    assert_eq!(get(&mut sender).await, 200);
    let admitted_answered = Instant::now();
    let refused_sent = Instant::now();
    assert_eq!(get(&mut sender).await, 429);
    let refused = refused_sent.elapsed();

    let stats = server.stats();
    let arrival = &stats.arrivals[0];
    assert_eq!(arrival.outcome, Outcome::Admitted);
    // Recorded when the head arrived, not when the response left.
    let processed = admitted_answered - (server.started_at() + arrival.at);
    assert!(processed >= PROCESSING, "processed for {processed:?}");
    assert!(refused < PROCESSING, "the 429 waited {refused:?}");
}
