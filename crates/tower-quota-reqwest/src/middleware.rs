//! [`QuotaMiddleware`]: the layers, built once, run per request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Extensions;
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::sliding_window::{InvalidQuota, MemoryStore, Store};
use tower_quota::{
    CostFn, HostKey, HttpFeedback, JitterBackoffLayer, KeyFn, RetryAfterLayer, SlidingWindowLayer,
    UnitCost, UsageFn,
};

use crate::chain::{
    AttemptRequest, ChainService, Forwarded, Original, OriginalBody, into_middleware_error,
};

/// The pacing layer of [`QuotaMiddleware::new`]: one quota per host, with
/// feedback from the provider's answers.
pub type DefaultPacing = SlidingWindowLayer<HostKey, UnitCost, MemoryStore, HttpFeedback>;

/// Runs tower-quota's stack around the rest of a reqwest-middleware chain:
///
/// ```text
/// JitterBackoffLayer → RetryAfterLayer → SlidingWindowLayer → (next middlewares → reqwest::Client)
/// ```
///
/// Every attempt, retries included, is paced and then sent through the
/// middlewares registered after this one and the client, so those run once
/// per attempt. See the [crate docs](crate) for bodies, errors and
/// extensions.
///
/// The layers are built once, in the constructor, and every request shares
/// their state (the sliding window's store, the Retry-After gates, the retry
/// budget). Cloning the middleware shares it too: two clones never pace
/// separately.
#[derive(Clone)]
pub struct QuotaMiddleware<K = HostKey, C = UnitCost, St = MemoryStore, U = HttpFeedback> {
    backoff: JitterBackoffLayer,
    retry_after: RetryAfterLayer,
    pacing: SlidingWindowLayer<K, C, St, U>,
}

impl QuotaMiddleware {
    /// At most `max_calls` requests in any window of `window`, per host,
    /// with the defaults of the README's stack:
    ///
    /// - pacing: [`HostKey`] keys, [`HttpFeedback`] usage (a 429 the local
    ///   log had room for widens the key's margin), `max_wait` 30 s;
    /// - [`RetryAfterLayer::new`] with `pace_by_quota_headers(false)`: the
    ///   exact quota given here paces, the server's headers only close the
    ///   gate on a refusal;
    /// - [`JitterBackoffLayer::new`] with 4 attempts in all.
    ///
    /// Add quotas with [`and_quota`](Self::and_quota); replace a layer with
    /// [`pacing`](Self::pacing), [`retry_after`](Self::retry_after) or
    /// [`backoff`](Self::backoff).
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] when `max_calls` or `window` is zero, or `window` is
    /// too long, as for [`SlidingWindowLayer::new`].
    pub fn new(max_calls: u64, window: Duration) -> Result<Self, InvalidQuota> {
        let pacing = SlidingWindowLayer::new(max_calls, window)?
            .key_fn(HostKey)
            .usage_fn(HttpFeedback)
            .max_wait(Duration::from_secs(30));
        Ok(QuotaMiddleware {
            backoff: JitterBackoffLayer::new()
                .max_attempts(4)
                .unwrap_or_default(),
            retry_after: RetryAfterLayer::new().pace_by_quota_headers(false),
            pacing,
        })
    }
}

impl<K, C, St, U> QuotaMiddleware<K, C, St, U> {
    /// The three layers as given, outermost first.
    pub fn from_layers(
        backoff: JitterBackoffLayer,
        retry_after: RetryAfterLayer,
        pacing: SlidingWindowLayer<K, C, St, U>,
    ) -> Self {
        QuotaMiddleware {
            backoff,
            retry_after,
            pacing,
        }
    }

    /// Adds a quota of `max_calls` per `window` to the pacing layer; every
    /// quota is respected.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] as for [`SlidingWindowLayer::and_quota`].
    pub fn and_quota(mut self, max_calls: u64, window: Duration) -> Result<Self, InvalidQuota> {
        self.pacing = self.pacing.and_quota(max_calls, window)?;
        Ok(self)
    }

    /// Replaces the pacing layer: another key, a cost function, a shared
    /// store such as tower-quota-redis's.
    pub fn pacing<K2, C2, St2, U2>(
        self,
        pacing: SlidingWindowLayer<K2, C2, St2, U2>,
    ) -> QuotaMiddleware<K2, C2, St2, U2> {
        QuotaMiddleware {
            backoff: self.backoff,
            retry_after: self.retry_after,
            pacing,
        }
    }

    /// Replaces the Retry-After layer.
    pub fn retry_after(mut self, retry_after: RetryAfterLayer) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Replaces the backoff layer.
    pub fn backoff(mut self, backoff: JitterBackoffLayer) -> Self {
        self.backoff = backoff;
        self
    }

    /// The pacing layer.
    pub fn pacing_layer(&self) -> &SlidingWindowLayer<K, C, St, U> {
        &self.pacing
    }
}

impl<K, C, St: fmt::Debug, U> fmt::Debug for QuotaMiddleware<K, C, St, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaMiddleware")
            .field("backoff", &self.backoff)
            .field("retry_after", &self.retry_after)
            .field("pacing", &self.pacing)
            .finish()
    }
}

#[async_trait::async_trait]
impl<K, C, St, U> Middleware for QuotaMiddleware<K, C, St, U>
where
    K: KeyFn<AttemptRequest> + Clone + Send + Sync + 'static,
    C: CostFn<AttemptRequest> + Clone + Send + Sync + 'static,
    St: Store,
    U: UsageFn<http::Response<reqwest::Body>> + Clone + Send + Sync + 'static,
{
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let body = OriginalBody::take(&mut request)
            .map_err(|error| reqwest_middleware::Error::Middleware(error.into()))?;
        let (original, request) = Original::split(request, body)?;
        let original = Arc::new(original);
        let chain = ChainService::new(next, extensions.clone(), Arc::clone(&original));
        let stack = ServiceBuilder::new()
            .layer(self.backoff.clone())
            .layer(self.retry_after.clone())
            .layer(self.pacing.clone())
            .service(chain);
        let response = stack
            .oneshot(request)
            .await
            .map_err(into_middleware_error)?;

        let (mut parts, body) = response.into_parts();
        let url = match parts.extensions.remove::<Forwarded>() {
            Some(forwarded) => {
                // What the middlewares after this one left for those before it.
                extensions.extend(forwarded.extensions);
                Some(forwarded.url)
            }
            None => original.url(),
        };
        // reqwest keeps a response's URL in a private extension that only
        // its response builder sets.
        if let Some(Ok(with_url)) = url.map(|url| http::Response::builder().url(url).body(())) {
            parts.extensions.extend(with_url.into_parts().0.extensions);
        }
        Ok(reqwest::Response::from(http::Response::from_parts(
            parts, body,
        )))
    }
}
