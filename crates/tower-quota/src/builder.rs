//! `ServiceBuilder` methods for this crate's layers.

use tower::ServiceBuilder;
use tower_layer::Stack;

use crate::circuit_breaker::CircuitBreakerLayer;
use crate::concurrency::ConcurrencyLayer;
use crate::{JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer};

/// Adds a method per tower-quota layer to [`tower::ServiceBuilder`], as
/// tower-http's `ServiceBuilderExt` does for its own.
///
/// Each method is `.layer(..)` with the layer named: the stack reads as what
/// it does, outermost first. Methods without arguments add the layer with its
/// defaults; the `_with` forms take a configured layer. The sliding window
/// has no default (a quota must be given), so [`sliding_window`] always takes
/// its layer.
///
/// The trait is sealed: only `ServiceBuilder` implements it, so methods can
/// be added without breaking anyone.
///
/// [`sliding_window`]: ServiceBuilderExt::sliding_window
///
/// # Example
///
/// The stack of the [crate docs](crate), in the order the layers belong:
/// retries outermost, then the server's gate, then pacing, then tower's
/// per-attempt timeout.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_quota::{ServiceBuilderExt, SlidingWindowLayer};
/// use tower_quota::replay::ReplayBody;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_quota::BoxError> {
/// // The client sees each body wrapped twice: once per layer that may re-send it.
/// type Body = ReplayBody<ReplayBody<Empty<Bytes>>>;
/// let client = ServiceBuilder::new()
///     .jitter_backoff()
///     .retry_after()
///     .sliding_window(SlidingWindowLayer::new(20, Duration::from_secs(1))?)
///     .timeout(Duration::from_secs(10))
///     .service(service_fn(|_request: http::Request<Body>| async {
///         Ok::<_, tower_quota::BoxError>(http::Response::new("ok"))
///     }));
///
/// let response = client.oneshot(http::Request::get("/v1/items").body(Empty::new())?).await?;
/// assert_eq!(*response.body(), "ok");
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Paces requests with `layer`: at most `max_calls` in any window, per
    /// key. See [`sliding_window`](crate::sliding_window).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    /// use tower_quota::{ServiceBuilderExt, SlidingWindowLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// let service = ServiceBuilder::new()
    ///     .sliding_window(SlidingWindowLayer::new(1, Duration::from_secs(1))?.safety_margin(Duration::ZERO)?)
    ///     .service(service_fn(|_request: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(tokio::time::Instant::now())
    ///     }));
    ///
    /// let start = tokio::time::Instant::now();
    /// service.clone().oneshot(http::Request::new(())).await?;
    /// let second = service.oneshot(http::Request::new(())).await?;
    /// assert_eq!(second - start, Duration::from_secs(1));
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::type_complexity)] // the layer's own five parameters
    fn sliding_window<K, C, St, U, P>(
        self,
        layer: SlidingWindowLayer<K, C, St, U, P>,
    ) -> ServiceBuilder<Stack<SlidingWindowLayer<K, C, St, U, P>, L>>;

    /// Holds each key to at most the layer's `max_in_flight` requests in
    /// flight, each slot held until its response body ends. See
    /// [`concurrency`](crate::concurrency); it goes right above the sliding
    /// window.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    /// use tower_quota::ServiceBuilderExt;
    /// use tower_quota::concurrency::ConcurrencyLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// let service = ServiceBuilder::new()
    ///     .concurrency(ConcurrencyLayer::new(2)?)
    ///     .service(service_fn(|_request: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
    ///     }));
    ///
    /// let response = service.oneshot(http::Request::new(())).await?;
    /// assert!(response.body().holds_slot());
    /// assert_eq!(response.into_body().collect().await?.to_bytes(), "ok");
    /// # Ok(())
    /// # }
    /// ```
    fn concurrency<K, St>(
        self,
        layer: ConcurrencyLayer<K, St>,
    ) -> ServiceBuilder<Stack<ConcurrencyLayer<K, St>, L>>;

    /// Obeys `Retry-After` and rate-limit headers: the README's layer,
    /// [`RetryAfterLayer::new`] with
    /// [`pace_by_quota_headers(false)`](RetryAfterLayer::pace_by_quota_headers),
    /// meant above a [`sliding_window`](Self::sliding_window) that paces to
    /// the exact quota (pacing by reset times, often in whole seconds,
    /// would hold requests up to a second longer than it needs). With
    /// nothing pacing below, use
    /// [`retry_after_with(RetryAfterLayer::new())`](Self::retry_after_with),
    /// which also paces by the quota the server reports. See
    /// [`retry_after`](crate::retry_after).
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    /// use tower_quota::ServiceBuilderExt;
    /// use tower_quota::replay::ReplayBody;
    /// use tower_quota::retry_after::ServerSignal;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// let service = ServiceBuilder::new()
    ///     .retry_after()
    ///     .service(service_fn(|_request: http::Request<ReplayBody<Empty<Bytes>>>| async {
    ///         Ok::<_, tower_quota::BoxError>(http::Response::new(()))
    ///     }));
    ///
    /// let response = service.oneshot(http::Request::new(Empty::new())).await?;
    /// // Sent once, nothing said: no signal attached.
    /// assert_eq!(response.extensions().get::<ServerSignal>(), None);
    /// # Ok(())
    /// # }
    /// ```
    fn retry_after(self) -> ServiceBuilder<Stack<RetryAfterLayer, L>>;

    /// Obeys `Retry-After` and rate-limit headers with a configured `layer`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    /// use tower_quota::{GlobalKey, RetryAfterLayer, ServiceBuilderExt};
    /// use tower_quota::replay::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// // One gate for every host (the default is one per host).
    /// let service = ServiceBuilder::new()
    ///     .retry_after_with(RetryAfterLayer::new().max_wait(Duration::from_secs(5)).key_fn(GlobalKey))
    ///     .service(service_fn(|_request: http::Request<ReplayBody<Empty<Bytes>>>| async {
    ///         Ok::<_, tower_quota::BoxError>(http::Response::new(()))
    ///     }));
    ///
    /// let request = http::Request::get("https://api.example.com/v1").body(Empty::new())?;
    /// assert_eq!(service.oneshot(request).await?.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    fn retry_after_with<K>(
        self,
        layer: RetryAfterLayer<K>,
    ) -> ServiceBuilder<Stack<RetryAfterLayer<K>, L>>;

    /// Retries transient failures with the defaults of
    /// [`JitterBackoffLayer::new`]. See [`backoff`](crate::backoff).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    /// use tower_quota::ServiceBuilderExt;
    /// use tower_quota::replay::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// // The first answer is a 503, the second a 200.
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let service = ServiceBuilder::new()
    ///     .jitter_backoff()
    ///     .service(service_fn(move |_request: http::Request<ReplayBody<Empty<Bytes>>>| {
    ///         let status = if calls.fetch_add(1, Ordering::SeqCst) == 0 { 503 } else { 200 };
    ///         async move { Ok::<_, tower_quota::BoxError>(http::Response::builder().status(status).body(())?) }
    ///     }));
    ///
    /// let response = service.oneshot(http::Request::new(Empty::new())).await?;
    /// assert_eq!(response.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    fn jitter_backoff(self) -> ServiceBuilder<Stack<JitterBackoffLayer, L>>;

    /// Retries transient failures with a configured `layer`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    /// use tower_quota::{JitterBackoffLayer, ServiceBuilderExt};
    /// use tower_quota::backoff::Jitter;
    /// use tower_quota::replay::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// let backoff = JitterBackoffLayer::new()
    ///     .backoff(Duration::from_millis(50), Duration::from_secs(5))?
    ///     .jitter(Jitter::Equal)
    ///     .max_attempts(2)?;
    /// let service = ServiceBuilder::new()
    ///     .jitter_backoff_with(backoff)
    ///     .service(service_fn(|_request: http::Request<ReplayBody<Empty<Bytes>>>| async {
    ///         Ok::<_, tower_quota::BoxError>(http::Response::builder().status(503).body(())?)
    ///     }));
    ///
    /// let start = tokio::time::Instant::now();
    /// let response = service.oneshot(http::Request::new(Empty::new())).await?;
    /// // Two attempts, one equal-jitter wait of 25 to 50 ms between them.
    /// assert_eq!(response.status(), 503);
    /// assert!(start.elapsed() >= Duration::from_millis(25) && start.elapsed() <= Duration::from_millis(50));
    /// # Ok(())
    /// # }
    /// ```
    fn jitter_backoff_with<C>(
        self,
        layer: JitterBackoffLayer<C>,
    ) -> ServiceBuilder<Stack<JitterBackoffLayer<C>, L>>;

    /// Fails fast while a provider is failing, with the defaults of
    /// [`CircuitBreakerLayer::new`]. See [`circuit_breaker`](crate::circuit_breaker).
    ///
    /// ```
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    /// use tower_quota::ServiceBuilderExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// let service = ServiceBuilder::new()
    ///     .circuit_breaker()
    ///     .service(service_fn(|_request: http::Request<()>| async {
    ///         Ok::<_, tower_quota::BoxError>(http::Response::new(()))
    ///     }));
    ///
    /// assert_eq!(service.oneshot(http::Request::new(())).await?.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    fn circuit_breaker(self) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>>;

    /// Fails fast while a provider is failing, with a configured `layer`.
    ///
    /// ```
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    /// use tower_quota::ServiceBuilderExt;
    /// use tower_quota::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// let service = ServiceBuilder::new()
    ///     .circuit_breaker_with(CircuitBreakerLayer::new().consecutive_failures(Some(1)))
    ///     .service(service_fn(|_request: http::Request<()>| async {
    ///         Ok::<_, tower_quota::BoxError>(http::Response::builder().status(503).body(())?)
    ///     }));
    ///
    /// assert_eq!(service.clone().oneshot(http::Request::new(())).await?.status(), 503);
    /// let error = service.oneshot(http::Request::new(())).await.unwrap_err();
    /// assert!(error.downcast_ref::<CircuitOpen>().is_some());
    /// # Ok(())
    /// # }
    /// ```
    fn circuit_breaker_with<K, Cl>(
        self,
        layer: CircuitBreakerLayer<K, Cl>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<K, Cl>, L>>;
}

impl<L> sealed::Sealed<L> for ServiceBuilder<L> {}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn sliding_window<K, C, St, U, P>(
        self,
        layer: SlidingWindowLayer<K, C, St, U, P>,
    ) -> ServiceBuilder<Stack<SlidingWindowLayer<K, C, St, U, P>, L>> {
        self.layer(layer)
    }

    fn concurrency<K, St>(
        self,
        layer: ConcurrencyLayer<K, St>,
    ) -> ServiceBuilder<Stack<ConcurrencyLayer<K, St>, L>> {
        self.layer(layer)
    }

    fn retry_after(self) -> ServiceBuilder<Stack<RetryAfterLayer, L>> {
        self.layer(RetryAfterLayer::new().pace_by_quota_headers(false))
    }

    fn retry_after_with<K>(
        self,
        layer: RetryAfterLayer<K>,
    ) -> ServiceBuilder<Stack<RetryAfterLayer<K>, L>> {
        self.layer(layer)
    }

    fn jitter_backoff(self) -> ServiceBuilder<Stack<JitterBackoffLayer, L>> {
        self.layer(JitterBackoffLayer::new())
    }

    fn jitter_backoff_with<C>(
        self,
        layer: JitterBackoffLayer<C>,
    ) -> ServiceBuilder<Stack<JitterBackoffLayer<C>, L>> {
        self.layer(layer)
    }

    fn circuit_breaker(self) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>> {
        self.layer(CircuitBreakerLayer::new())
    }

    fn circuit_breaker_with<K, Cl>(
        self,
        layer: CircuitBreakerLayer<K, Cl>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<K, Cl>, L>> {
        self.layer(layer)
    }
}

mod sealed {
    /// Only `ServiceBuilder` implements `ServiceBuilderExt`.
    #[allow(unreachable_pub)]
    pub trait Sealed<L> {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Empty;
    use tokio::time::Instant;
    use tower::{ServiceBuilder, ServiceExt};

    use super::ServiceBuilderExt;
    use crate::RetryAfterLayer;
    use crate::test_support::provider;

    /// A provider that says its quota is spent until a reset a second away.
    fn spent() -> http::Response<()> {
        http::Response::builder()
            .header("ratelimit-limit", "10")
            .header("ratelimit-remaining", "0")
            .header("ratelimit-reset", "1")
            .body(())
            .unwrap()
    }

    /// `.retry_after()` is the README's layer: the quota headers of a 200
    /// do not hold the next request (the sliding window below paces), while
    /// `RetryAfterLayer::new()` waits for the announced reset.
    #[tokio::test(start_paused = true)]
    async fn retry_after_is_the_readmes_layer() {
        let request = || {
            http::Request::get("/items")
                .body(Empty::<Bytes>::new())
                .unwrap()
        };

        let start = Instant::now();
        let (inner, arrivals) = provider(start, |_| spent());
        let readme = ServiceBuilder::new().retry_after().service(inner);
        readme.clone().oneshot(request()).await.unwrap();
        readme.oneshot(request()).await.unwrap();
        let at: Vec<_> = arrivals.lock().unwrap().iter().map(|a| a.at).collect();
        assert_eq!(at, [Duration::ZERO, Duration::ZERO]);

        let start = Instant::now();
        let (inner, arrivals) = provider(start, |_| spent());
        let pacing = ServiceBuilder::new()
            .retry_after_with(RetryAfterLayer::new())
            .service(inner);
        pacing.clone().oneshot(request()).await.unwrap();
        pacing.oneshot(request()).await.unwrap();
        let second = arrivals.lock().unwrap()[1].at;
        assert!(second >= Duration::from_secs(1), "{second:?}");
    }
}
