//! Test helpers shared by the layers' unit tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Service, service_fn};

use crate::BoxError;
use crate::attempts::Attempt;
use crate::replay::ReplayBody;

/// One request as the fake provider saw it.
#[derive(Debug, Clone)]
pub(crate) struct Arrival {
    pub(crate) at: Duration,
    pub(crate) attempt: Option<u32>,
    pub(crate) header: Option<String>,
    /// How many extensions the request carried.
    pub(crate) extensions: usize,
    pub(crate) body: Bytes,
}

pub(crate) type Arrivals = Arc<Mutex<Vec<Arrival>>>;

/// A provider that answers the `n`-th request (0-based) with `answer(n)`,
/// recording every arrival.
pub(crate) fn provider<B>(
    start: Instant,
    answer: impl Fn(usize) -> Response<()> + Send + Sync + 'static,
) -> (
    impl Service<Request<ReplayBody<B>>, Response = Response<()>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static,
    Arrivals,
)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let arrivals: Arrivals = Arc::default();
    let record = arrivals.clone();
    let answer = Arc::new(answer);
    let service = service_fn(move |request: Request<ReplayBody<B>>| {
        let record = record.clone();
        let answer = answer.clone();
        async move {
            let at = Instant::now() - start;
            let attempt = Some(Attempt::of(&request).0);
            let extensions = request.extensions().len();
            let header = request
                .headers()
                .get("x-retry-attempt")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = request.into_body().collect().await?.to_bytes();
            let n = {
                let mut arrivals = record.lock().unwrap();
                arrivals.push(Arrival {
                    at,
                    attempt,
                    header,
                    extensions,
                    body,
                });
                arrivals.len() - 1
            };
            Ok::<_, BoxError>(answer(n))
        }
    });
    (service, arrivals)
}
