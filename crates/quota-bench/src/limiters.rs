//! The limiters under comparison, each over the same hyper-util client, as
//! a user of each would set it up.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::limit::RateLimit;
use tower::limit::rate::Rate;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_quota::{BoxError, SlidingWindowLayer};
use tower_resilience::ratelimiter::{RateLimiterLayer, WindowType};

pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;
pub(crate) type Limited = BoxCloneService<Request<Empty<Bytes>>, Response<Incoming>, BoxError>;

pub(crate) fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limiter {
    /// `SlidingWindowLayer` with its defaults, in process.
    TowerQuota,
    /// `tower::limit::RateLimit`, shared behind a `tower::buffer::Buffer`.
    TowerRateLimit,
    /// governor's direct limiter, burst = N, `until_ready` before each call.
    GovernorBurstN,
    /// governor's direct limiter, burst = 1.
    GovernorBurst1,
    /// tower-resilience's rate limiter in sliding-log mode.
    TowerResilience,
}

impl Limiter {
    pub(crate) const ALL: [Limiter; 5] = [
        Limiter::TowerQuota,
        Limiter::TowerRateLimit,
        Limiter::GovernorBurstN,
        Limiter::GovernorBurst1,
        Limiter::TowerResilience,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Limiter::TowerQuota => "tower-quota SlidingWindowLayer",
            Limiter::TowerRateLimit => "tower RateLimit (Buffer)",
            Limiter::GovernorBurstN => "governor, burst = N",
            Limiter::GovernorBurst1 => "governor, burst = 1",
            Limiter::TowerResilience => "tower-resilience sliding log",
        }
    }

    /// The limiter, configured for `max_calls` per `window`, over `client`.
    /// Must be called inside the runtime (tower's `Buffer` spawns a worker).
    pub(crate) fn build(
        self,
        max_calls: u64,
        window: Duration,
        client: HttpClient,
    ) -> Result<Limited, BoxError> {
        Ok(match self {
            Limiter::TowerQuota => BoxCloneService::new(
                ServiceBuilder::new()
                    .layer(SlidingWindowLayer::new(max_calls, window)?)
                    .service(client),
            ),
            Limiter::TowerRateLimit => BoxCloneService::new(tower::buffer::Buffer::new(
                RateLimit::new(client, Rate::new(max_calls, window)),
                1024,
            )),
            Limiter::GovernorBurstN | Limiter::GovernorBurst1 => {
                let calls = u32::try_from(max_calls)?;
                let period = window / calls;
                let burst = if self == Limiter::GovernorBurstN {
                    calls
                } else {
                    1
                };
                let quota = governor::Quota::with_period(period)
                    .ok_or("a zero period")?
                    .allow_burst(NonZeroU32::new(burst).ok_or("a zero burst")?);
                let limiter = Arc::new(governor::RateLimiter::direct(quota));
                BoxCloneService::new(service_fn(move |request: Request<Empty<Bytes>>| {
                    let limiter = limiter.clone();
                    let client = client.clone();
                    async move {
                        limiter.until_ready().await;
                        client.request(request).await.map_err(BoxError::from)
                    }
                }))
            }
            Limiter::TowerResilience => {
                let layer = RateLimiterLayer::builder()
                    .limit_for_period(usize::try_from(max_calls)?)
                    .refresh_period(window)
                    .window_type(WindowType::SlidingLog)
                    // Wait as long as it takes, like the others.
                    .timeout_duration(Duration::from_secs(600))
                    .build()
                    .map_err(|error| format!("{error:?}"))?;
                BoxCloneService::new(ServiceBuilder::new().layer(layer).service(client).map_err(
                    |error| -> BoxError {
                        match error.into_inner() {
                            Some(inner) => inner.into(),
                            None => "tower-resilience: rate limited".into(),
                        }
                    },
                ))
            }
        })
    }
}
