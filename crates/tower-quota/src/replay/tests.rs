use std::convert::Infallible;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::sync::mpsc;
use tokio_test::task;

use super::*;
use crate::BoxError;

type FrameResult = Result<Frame<Bytes>, BoxError>;

/// `len` bytes of a recognizable pattern.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|index| (index % 251) as u8).collect()
}

fn trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// A body of `len` bytes in frames of `chunk` bytes, then `trailers`; its
/// size hint is unknown, as for any streamed body.
fn streamed(
    len: usize,
    chunk: usize,
    trailers: Option<HeaderMap>,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin> {
    let data = Bytes::from(pattern(len));
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = data
        .chunks(chunk)
        .map(|part| Ok(Frame::data(data.slice_ref(part))))
        .collect();
    frames.extend(trailers.map(|trailers| Ok(Frame::trailers(trailers))));
    StreamBody::new(stream::iter(frames))
}

/// A body fed by the test through a channel, like a socket.
fn channel() -> (
    mpsc::UnboundedSender<FrameResult>,
    StreamBody<impl futures_util::Stream<Item = FrameResult> + Unpin>,
) {
    let (sender, mut receiver) = mpsc::unbounded_channel::<FrameResult>();
    let body = StreamBody::new(stream::poll_fn(move |cx| receiver.poll_recv(cx)));
    (sender, body)
}

async fn collect<B>(body: B) -> (Bytes, Option<HeaderMap>)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

fn data(bytes: &'static [u8]) -> FrameResult {
    Ok(Frame::data(Bytes::from_static(bytes)))
}

fn poll<B>(spawned: &mut task::Spawn<()>, body: &mut ReplayBody<B>) -> Poll<Option<FrameResult>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    spawned.enter(|cx, _| Pin::new(&mut *body).poll_frame(cx))
}

fn data_of(polled: Poll<Option<FrameResult>>) -> Bytes {
    match polled {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap(),
        other => panic!("expected a data frame, got {other:?}"),
    }
}

fn replay_error(polled: Poll<Option<FrameResult>>) -> ReplayError {
    match polled {
        Poll::Ready(Some(Err(error))) => *error.downcast_ref::<ReplayError>().unwrap(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn replayable<B: Body>(body: B, max_bytes: usize) -> ReplayBody<B> {
    match ReplayBody::try_new(body, max_bytes) {
        Ok(body) => body,
        Err(_) => panic!("body refused"),
    }
}

fn assert_exact(hint: SizeHint, len: u64) {
    assert_eq!((hint.lower(), hint.upper()), (len, Some(len)));
}

#[tokio::test]
async fn clone_replays_a_fully_read_streamed_body_byte_for_byte() {
    let body = replayable(streamed(10 * 1024, 100, Some(trailers())), 64 * 1024);

    let (first, first_trailers) = collect(body.clone()).await;
    assert_eq!(first.as_ref(), pattern(10 * 1024).as_slice());
    assert_eq!(first_trailers, Some(trailers()));

    let second = body.clone();
    assert_exact(second.size_hint(), 10 * 1024);
    let (second, second_trailers) = collect(second).await;
    assert_eq!(second, first);
    assert_eq!(second_trailers, Some(trailers()));
    assert!(!body.is_capped());
    assert!(body.is_replayable());
}

#[tokio::test]
async fn retry_of_a_partly_read_attempt_sends_the_whole_body() {
    let body = replayable(streamed(10 * 1024, 100, Some(trailers())), 64 * 1024);

    let mut first = body.clone();
    for _ in 0..7 {
        first.frame().await.unwrap().unwrap();
    }
    drop(first);

    let (second, second_trailers) = collect(body.clone()).await;
    assert_eq!(second.as_ref(), pattern(10 * 1024).as_slice());
    assert_eq!(second_trailers, Some(trailers()));
}

#[tokio::test]
async fn retry_continues_a_socket_like_body_where_the_dropped_attempt_stopped() {
    let (sender, inner) = channel();
    let body = replayable(inner, 1024);
    sender.send(data(b"hello ")).unwrap();
    sender.send(data(b"wide ")).unwrap();

    let mut first = body.clone();
    assert_eq!(
        first.frame().await.unwrap().unwrap().into_data().unwrap(),
        "hello "
    );
    drop(first);

    sender.send(data(b"world")).unwrap();
    sender.send(Ok(Frame::trailers(trailers()))).unwrap();
    drop(sender);
    let (second, second_trailers) = collect(body.clone()).await;
    assert_eq!(second, "hello wide world");
    assert_eq!(second_trailers, Some(trailers()));

    // And once more, now entirely from the buffer.
    let third = body.clone();
    assert_exact(third.size_hint(), 16);
    assert_eq!(
        collect(third).await,
        (Bytes::from("hello wide world"), Some(trailers()))
    );
}

#[tokio::test]
async fn body_over_the_limit_streams_once_then_refuses_to_replay() {
    let body = replayable(streamed(4096, 100, Some(trailers())), 1024);

    let (first, first_trailers) = collect(body.clone()).await;
    assert_eq!(first.as_ref(), pattern(4096).as_slice());
    assert_eq!(first_trailers, Some(trailers()));
    assert!(body.is_capped());
    assert!(!body.is_replayable());

    let mut second = body.clone();
    assert!(
        !second.is_end_stream(),
        "a capped clone must be polled to fail"
    );
    let mut spawned = task::spawn(());
    assert_eq!(
        replay_error(poll(&mut spawned, &mut second)),
        ReplayError::Capped
    );
}

#[tokio::test]
async fn clone_tailing_the_buffer_fails_when_the_reader_goes_over_the_limit() {
    let (sender, inner) = channel();
    let body = replayable(inner, 8);
    let (mut reader, mut tail) = (body.clone(), body.clone());
    let (mut reader_task, mut tail_task) = (task::spawn(()), task::spawn(()));

    sender.send(data(b"12345")).unwrap();
    assert_eq!(data_of(poll(&mut reader_task, &mut reader)), "12345");
    assert_eq!(data_of(poll(&mut tail_task, &mut tail)), "12345");
    assert!(poll(&mut tail_task, &mut tail).is_pending());
    assert!(poll(&mut reader_task, &mut reader).is_pending());

    sender.send(data(b"67890")).unwrap();
    assert!(reader_task.is_woken());
    assert_eq!(data_of(poll(&mut reader_task, &mut reader)), "67890");
    assert!(body.is_capped());
    assert!(tail_task.is_woken(), "the tailing clone learns of the cap");
    assert_eq!(
        replay_error(poll(&mut tail_task, &mut tail)),
        ReplayError::Capped
    );

    // The reader still gets the rest of the body.
    sender.send(data(b"abc")).unwrap();
    drop(sender);
    assert_eq!(data_of(poll(&mut reader_task, &mut reader)), "abc");
    assert!(matches!(
        poll(&mut reader_task, &mut reader),
        Poll::Ready(None)
    ));
    assert!(reader.is_end_stream());
}

#[tokio::test]
async fn body_of_exactly_the_limit_is_replayable() {
    let body = replayable(streamed(1024, 100, None), 1024);
    let (first, _) = collect(body.clone()).await;
    assert_eq!(first.len(), 1024);
    assert!(!body.is_capped());
    assert_eq!(collect(body.clone()).await.0, first);
}

#[test]
fn try_new_refuses_a_body_whose_lower_bound_exceeds_the_limit() {
    let Err(refused) = ReplayBody::try_new(Full::new(Bytes::from(pattern(2000))), 1999) else {
        panic!("a body over the limit must be refused");
    };
    assert_exact(refused.size_hint(), 2000);
    assert!(ReplayBody::try_new(Full::new(Bytes::from(pattern(2000))), 2000).is_ok());

    let request = Request::post("/upload")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(pattern(2000))))
        .unwrap();
    let refused = replayable_request(request, 1000).unwrap_err();
    assert_eq!(refused.uri(), "/upload");
    assert_eq!(
        refused.headers()["content-type"],
        "application/octet-stream"
    );
    assert_exact(refused.body().size_hint(), 2000);
}

#[tokio::test]
async fn works_with_boxed_bodies() {
    let inner: UnsyncBoxBody<Bytes, BoxError> = streamed(3000, 64, Some(trailers()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let body = replayable(inner, DEFAULT_MAX_REPLAY_BYTES);
    let first = collect(body.clone()).await;
    assert_eq!(first.0.as_ref(), pattern(3000).as_slice());
    assert_eq!(collect(body.clone()).await, first);
}

#[test]
fn is_send_and_sync_for_a_send_inner_body() {
    fn assert_send_sync_body<T: Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static>() {}
    // `UnsyncBoxBody` is not `Sync`; the replay body is anyway.
    assert_send_sync_body::<ReplayBody<UnsyncBoxBody<Bytes, BoxError>>>();
    assert_send_sync_body::<ReplayBody<http_body_util::combinators::BoxBody<Bytes, Infallible>>>();
    assert_send_sync_body::<ReplayBody<hyper::body::Incoming>>();
    assert_send_sync_body::<ReplayBody<Full<Bytes>>>();
}

#[tokio::test]
async fn empty_body_is_end_of_stream_with_an_exact_zero_hint() {
    let body = replayable(Empty::<Bytes>::new(), 16);
    assert!(body.is_end_stream());
    assert_exact(body.size_hint(), 0);

    let mut first = body.clone();
    assert!(first.frame().await.is_none());
    assert!(first.is_end_stream());
    assert_exact(first.size_hint(), 0);

    let replay = body.clone();
    assert!(replay.is_end_stream());
    assert_exact(replay.size_hint(), 0);
    assert_eq!(collect(replay).await, (Bytes::new(), None));
}

#[tokio::test]
async fn size_hint_and_end_of_stream_track_each_clone() {
    let body = replayable(Full::new(Bytes::from_static(b"hello")), 16);
    // Known size before any attempt: the inner hint passes through.
    assert_exact(body.size_hint(), 5);
    assert!(!body.is_end_stream());

    let mut first = body.clone();
    assert_eq!(
        first.frame().await.unwrap().unwrap().into_data().unwrap(),
        "hello"
    );
    assert_exact(first.size_hint(), 0);
    assert!(first.is_end_stream());

    let mut second = body.clone();
    assert_exact(second.size_hint(), 5);
    assert!(!second.is_end_stream());
    assert_eq!(
        second.frame().await.unwrap().unwrap().into_data().unwrap(),
        "hello"
    );
    assert_exact(second.size_hint(), 0);
    assert!(second.is_end_stream());
    assert!(second.frame().await.is_none());

    // A streamed body with trailers: exact once replayed, ends after the trailers.
    let body = replayable(streamed(300, 100, Some(trailers())), 1024);
    assert_eq!(body.size_hint().upper(), None);
    collect(body.clone()).await;
    let mut replay = body.clone();
    assert_exact(replay.size_hint(), 300);
    for remaining in [200, 100, 0] {
        replay.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_exact(replay.size_hint(), remaining);
        assert!(!replay.is_end_stream(), "trailers are still to come");
    }
    let last = replay.frame().await.unwrap().unwrap();
    assert_eq!(last.into_trailers().unwrap(), trailers());
    assert!(replay.is_end_stream());
    assert!(replay.frame().await.is_none());
}

#[tokio::test]
async fn size_hint_of_a_partly_buffered_body_adds_the_rest() {
    let body = replayable(Full::new(Bytes::from_static(b"hello")), 16);
    // `Full` yields one frame, so read it with one clone and look from another.
    let mut first = body.clone();
    first.frame().await.unwrap().unwrap();
    // The inner body is exhausted but not yet polled to its end.
    let second = body.clone();
    assert_exact(second.size_hint(), 5);
    assert!(!second.is_end_stream());
}

#[tokio::test]
async fn dropping_the_reading_clone_wakes_a_clone_waiting_for_the_inner_body() {
    let (sender, inner) = channel();
    let body = replayable(inner, 1024);
    let (mut waiting, mut reader) = (body.clone(), body.clone());
    let (mut waiting_task, mut reader_task) = (task::spawn(()), task::spawn(()));

    assert!(poll(&mut waiting_task, &mut waiting).is_pending());
    // The inner body now holds the reader's waker, not the waiting clone's.
    assert!(poll(&mut reader_task, &mut reader).is_pending());
    drop(reader);
    assert!(waiting_task.is_woken());

    assert!(poll(&mut waiting_task, &mut waiting).is_pending());
    sender.send(data(b"late")).unwrap();
    assert!(waiting_task.is_woken());
    assert_eq!(data_of(poll(&mut waiting_task, &mut waiting)), "late");
}

#[tokio::test]
async fn inner_body_error_fails_later_attempts() {
    let (sender, inner) = channel();
    let body = replayable(inner, 1024);
    sender.send(data(b"part")).unwrap();
    sender.send(Err("connection reset".into())).unwrap();

    let mut first = body.clone();
    assert_eq!(
        first.frame().await.unwrap().unwrap().into_data().unwrap(),
        "part"
    );
    let error = first.frame().await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "connection reset");
    assert!(!body.is_replayable());
    assert!(!body.is_capped());

    let mut second = body.clone();
    assert!(!second.is_end_stream());
    let mut spawned = task::spawn(());
    assert_eq!(
        replay_error(poll(&mut spawned, &mut second)),
        ReplayError::BodyFailed
    );
}

#[tokio::test]
async fn clone_request_copies_every_part_and_replays_the_body() {
    #[derive(Debug, Clone, PartialEq)]
    struct Attempt(u32);

    let mut request = Request::put("http://api.example/v1/items/7?dry_run=1")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"id\":7}")))
        .unwrap();
    request.extensions_mut().insert(Attempt(1));
    let request = replayable_request(request, DEFAULT_MAX_REPLAY_BYTES).unwrap();
    assert_eq!(request.body().max_bytes(), DEFAULT_MAX_REPLAY_BYTES);

    for _ in 0..3 {
        let attempt = clone_request(&request);
        assert_eq!(attempt.method(), http::Method::PUT);
        assert_eq!(attempt.uri(), "http://api.example/v1/items/7?dry_run=1");
        assert_eq!(attempt.version(), http::Version::HTTP_2);
        assert_eq!(attempt.headers()["content-type"], "application/json");
        assert_eq!(attempt.extensions().get::<Attempt>(), Some(&Attempt(1)));
        assert_eq!(
            collect(attempt.into_body()).await,
            (Bytes::from_static(b"{\"id\":7}"), None)
        );
    }
}

#[tokio::test]
async fn debug_shows_the_state_without_the_inner_body() {
    struct Opaque(Full<Bytes>);
    impl Body for Opaque {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Pin::new(&mut self.0).poll_frame(cx)
        }
    }

    let body = replayable(Opaque(Full::new(Bytes::from_static(b"abc"))), 16);
    collect(body.clone()).await;
    let debug = format!("{body:?}");
    assert!(debug.contains("ReplayBody"), "{debug}");
    assert!(debug.contains("complete"), "{debug}");
    assert!(debug.contains("buffered_bytes: 3"), "{debug}");
}

#[tokio::test]
async fn replays_over_a_real_http1_connection_and_wraps_hyper_incoming() {
    use hyper::client::conn::http1 as client;
    use hyper::server::conn::http1 as server;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let echo = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async {
            let content_length = request
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .cloned()
                .unwrap_or(HeaderValue::from_static("none"));
            // hyper's `Incoming` cannot be cloned; wrapped, it is read twice.
            let body = replayable(request.into_body(), DEFAULT_MAX_REPLAY_BYTES);
            let (first, _) = collect(body.clone()).await;
            let (second, _) = collect(body.clone()).await;
            let equal = HeaderValue::from_static(if first == second { "yes" } else { "no" });
            let mut response = http::Response::new(Full::new(first));
            response
                .headers_mut()
                .insert("x-content-length", content_length);
            response.headers_mut().insert("x-replayed-equal", equal);
            Ok::<_, Infallible>(response)
        });
        server::Builder::new()
            .serve_connection(TokioIo::new(stream), echo)
            .await
            .unwrap();
    });

    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = client::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);

    let request = Request::post("/upload")
        .body(streamed(10 * 1024, 1000, None))
        .unwrap();
    let Ok(request) = replayable_request(request, DEFAULT_MAX_REPLAY_BYTES) else {
        panic!("a streamed body is replayable");
    };
    // The first attempt streams (chunked); the retry knows its exact length.
    for expected_length in ["none", "10240"] {
        sender.ready().await.unwrap();
        let response = sender.send_request(clone_request(&request)).await.unwrap();
        assert_eq!(response.headers()["x-content-length"], expected_length);
        assert_eq!(response.headers()["x-replayed-equal"], "yes");
        let echoed = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed.as_ref(), pattern(10 * 1024).as_slice());
    }
}

#[tokio::test]
async fn a_body_sent_once_streams_everything_and_cannot_be_replayed() {
    let body = ReplayBody::once(Full::new(Bytes::from_static(b"upload")));
    assert!(body.is_capped());
    assert!(!body.is_replayable());
    let retry = body.clone();
    let sent = body.collect().await.unwrap().to_bytes();
    assert_eq!(&sent[..], b"upload");
    let error = retry.collect().await.unwrap_err();
    assert_eq!(
        error.downcast_ref::<ReplayError>(),
        Some(&ReplayError::Capped)
    );
}

#[tokio::test]
async fn an_ended_body_is_replayable_without_buffering() {
    let body = ReplayBody::try_new(Empty::<Bytes>::new(), 16).expect("an empty body fits");
    assert!(body.shared.is_none(), "nothing to buffer, nothing shared");
    assert!(body.is_replayable() && !body.is_capped());
    assert_eq!(body.max_bytes(), 16);
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    let again = body.clone();
    assert!(
        body.collect()
            .await
            .expect("no error")
            .to_bytes()
            .is_empty()
    );
    assert!(
        again
            .collect()
            .await
            .expect("no error")
            .to_bytes()
            .is_empty()
    );
    // Wrapped twice (two retrying layers), still nothing shared.
    let twice = ReplayBody::try_new(
        ReplayBody::try_new(Empty::<Bytes>::new(), 16).expect("fits"),
        16,
    )
    .expect("fits");
    assert!(twice.shared.is_none());
}
