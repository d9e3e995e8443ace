//! JitterBackoffLayer against quota-mock over loopback.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{Fault, MockServer};
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::JitterBackoffLayer;
use tower_quota::replay::ReplayBody;
use tower_quota::telemetry;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[tokio::test]
async fn with_five_percent_injected_503s_every_request_succeeds_and_attempts_match_telemetry() {
    let _turn = crate::support::alone().await;
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));

    let server = MockServer::builder()
        .fault(Fault::ErrorRate {
            fraction: 0.05,
            statuses: vec![http::StatusCode::SERVICE_UNAVAILABLE],
        })
        .seed(4)
        .start()
        .await
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>();
    let service = ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .backoff(Duration::from_millis(5), Duration::from_millis(50))
                .unwrap()
                .max_attempts(6)
                .unwrap()
                .attempt_header("x-retry-attempt")
                .unwrap(),
        )
        .service(client);

    let requests: u64 = 400;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests {
        let request = http::Request::get(format!("{}/items/{}", server.url(), word(i)))
            .body(Empty::new())
            .unwrap();
        let service = service.clone();
        tasks.spawn(async move {
            let response = service.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            response.into_body().collect().await.unwrap();
            status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let stats = server.stats();
    server.shutdown().await;

    let refused = stats.count(503);
    assert!(refused > 0, "no 503 was injected: nothing was tested");
    assert_eq!(stats.count(200), requests);

    // What the server saw: per path, (attempt, status) in arrival order.
    let mut seen = AttemptsByPath::new();
    for arrival in &stats.arrivals {
        let attempt = arrival.attempt.expect("every attempt is numbered");
        seen.entry(arrival.path.clone())
            .or_default()
            .push((attempt, arrival.status));
    }
    assert_eq!(seen.len(), requests as usize);

    // What the telemetry said: per path, the attempts that were retried
    // after a 503, and the resend count of the request's span.
    let retried = capture.retried();
    let resends = capture.resends();
    assert_eq!(resends.len(), requests as usize);
    for (path, attempts) in &seen {
        let numbers: Vec<u32> = attempts.iter().map(|(attempt, _)| *attempt).collect();
        let expected: Vec<u32> = (1..=u32::try_from(attempts.len()).unwrap()).collect();
        assert_eq!(numbers, expected, "{path}: attempts numbered 1, 2, ...");
        let (failed, last) = attempts.split_at(attempts.len() - 1);
        assert_eq!(last[0].1, 200, "{path}");
        assert!(failed.iter().all(|(_, status)| *status == 503), "{path}");
        let failed_numbers: Vec<(u32, u16)> = failed.to_vec();
        assert_eq!(
            retried.get(path).cloned().unwrap_or_default(),
            failed_numbers,
            "{path}: a server_error_retry event for each refused attempt"
        );
        assert_eq!(
            resends.get(path).copied(),
            Some(u32::try_from(failed.len()).unwrap()),
            "{path}: http.request.resend_count"
        );
    }
    let events_total: usize = retried.values().map(Vec::len).sum();
    assert_eq!(events_total as u64, refused);
}

/// `i` written in letters (`a`, `b`, …, `ba`, …): a path segment that
/// telemetry's path template keeps, so that each request's span can be told
/// from the others by its `url.template`.
fn word(mut i: u64) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + u8::try_from(i % 26).unwrap());
        i /= 26;
        if i == 0 {
            break;
        }
    }
    letters.reverse();
    String::from_utf8(letters).unwrap()
}

/// Per request path, the `(attempt, status)` of each attempt.
type AttemptsByPath = BTreeMap<String, Vec<(u32, u16)>>;

/// Records `server_error_retry` events and closed `jitter_backoff` spans,
/// by the request path of their span.
#[derive(Clone, Default)]
struct Capture {
    retried: Arc<Mutex<AttemptsByPath>>,
    resends: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Capture {
    fn retried(&self) -> AttemptsByPath {
        self.retried.lock().unwrap().clone()
    }

    fn resends(&self) -> BTreeMap<String, u32> {
        self.resends.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Fields {
    fn number(&self, name: &str) -> Option<u32> {
        self.0.get(name)?.parse().ok()
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        if span.name() != telemetry::JITTER_BACKOFF_SPAN {
            return;
        }
        let extensions = span.extensions();
        let Some(fields) = extensions.get::<Fields>() else {
            return;
        };
        let path = fields.0[telemetry::field::URL_TEMPLATE].clone();
        if let Some(resends) = fields.number(telemetry::field::HTTP_REQUEST_RESEND_COUNT) {
            self.resends.lock().unwrap().insert(path, resends);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if metadata.target() != telemetry::TARGET
            || metadata.name() != telemetry::SERVER_ERROR_RETRY
        {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(span) = ctx.event_span(event) else {
            panic!("a retry event outside its request's span");
        };
        let extensions = span.extensions();
        let path = extensions.get::<Fields>().unwrap().0[telemetry::field::URL_TEMPLATE].clone();
        let attempt = fields.number(telemetry::field::ATTEMPT).unwrap();
        let status = fields
            .number(telemetry::field::HTTP_RESPONSE_STATUS_CODE)
            .unwrap();
        self.retried
            .lock()
            .unwrap()
            .entry(path)
            .or_default()
            .push((attempt, u16::try_from(status).unwrap()));
    }
}
