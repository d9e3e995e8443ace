use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::Coalesce;
use super::flights::Flights;
use crate::GlobalKey;

/// Shares one upstream call among identical requests in flight at once;
/// see the [module docs](super).
///
/// Every service this layer makes shares its calls in flight, so
/// identical requests through different clones are coalesced too.
#[derive(Clone)]
pub struct CoalesceLayer<K = GlobalKey> {
    pub(super) key_fn: K,
    pub(super) methods: Vec<http::Method>,
    pub(super) max_body_bytes: usize,
    pub(super) flights: Arc<Flights>,
}

/// The default bound on calls in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// The default bound on a coalesced response's body: 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

impl CoalesceLayer {
    /// Coalesces `GET` and `HEAD` requests with the same method and URI,
    /// at most 10,000 distinct calls in flight, bodies up to 16 MiB.
    pub fn new() -> Self {
        CoalesceLayer {
            key_fn: GlobalKey,
            methods: vec![http::Method::GET, http::Method::HEAD],
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            flights: Flights::new(DEFAULT_MAX_IN_FLIGHT),
        }
    }
}

impl Default for CoalesceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> CoalesceLayer<K> {
    /// Adds to what makes two requests identical: requests coalesce only
    /// when their [`KeyFn`](crate::KeyFn) keys are equal too (the caller's
    /// tenant, or a hash of its credentials, so that one caller never gets
    /// a response made for another's).
    pub fn key_fn<K2>(self, key_fn: K2) -> CoalesceLayer<K2> {
        CoalesceLayer {
            key_fn,
            methods: self.methods,
            max_body_bytes: self.max_body_bytes,
            flights: self.flights,
        }
    }

    /// Coalesces requests of `method` too. Only for a method that is
    /// idempotent *for this API*, such as a `POST` search that changes
    /// nothing: coalesced requests share one call whatever their bodies,
    /// so the key function must then tell bodies apart.
    pub fn allow_method(mut self, method: http::Method) -> Self {
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
        self
    }

    /// At most `max_in_flight` distinct calls are shared at once; a request
    /// beyond it is sent on its own. The default is 10,000. A new bound
    /// starts a new, empty set of calls.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.flights = Flights::new(max_in_flight);
        self
    }

    /// Fails a response whose body is longer than `max_body_bytes` (each
    /// body is read to the end once, to be copied to every caller). The
    /// default is 16 MiB.
    pub fn max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }
}

impl<S, K: Clone> Layer<S> for CoalesceLayer<K> {
    type Service = Coalesce<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce {
            inner,
            key_fn: self.key_fn.clone(),
            methods: self.methods.clone(),
            max_body_bytes: self.max_body_bytes,
            flights: Arc::clone(&self.flights),
        }
    }
}

impl<K> fmt::Debug for CoalesceLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("key_fn", &std::any::type_name::<K>())
            .field("methods", &self.methods)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("flights", &self.flights)
            .finish()
    }
}
