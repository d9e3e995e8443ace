//! The innermost service of the stack: one attempt through the rest of the
//! middleware chain.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::Extensions;
use http_body::Body as _;
use reqwest::Url;
use reqwest_middleware::Next;
use tower::Service;
use tower_quota::BoxError;
use tower_quota::replay::{ReplayBody, ReplayError};
use tower_quota::retry_after::GateClosed;
use tower_quota::sliding_window::{ConflictingQuotas, CostTooLarge, Overloaded};

/// The body an attempt carries after the retrying layers made it
/// replayable: once for the backoff layer, once for the Retry-After layer.
pub type AttemptBody = ReplayBody<ReplayBody<reqwest::Body>>;

/// The request each attempt is: what the pacing layer's key, cost and the
/// Retry-After layer's inner service see.
pub type AttemptRequest = http::Request<AttemptBody>;

/// The body of the logical request, as reqwest held it.
#[derive(Clone)]
pub(crate) enum OriginalBody {
    /// The request had no body.
    None,
    /// An in-memory body: every attempt sends these bytes (a cheap clone),
    /// as a body reqwest itself can clone (for its redirects) and knows the
    /// length of.
    Bytes(Bytes),
    /// A streaming body: attempts send the layers' replayable wrapper,
    /// which buffers it while the first attempt sends it.
    Streaming,
}

impl OriginalBody {
    /// The body of `request`, kept for every attempt. An in-memory body's
    /// bytes are shared with the request, not copied: a request of a
    /// megabyte costs no second megabyte while it is in flight.
    ///
    /// # Errors
    ///
    /// When an in-memory body does not give its bytes at once, which
    /// reqwest's never fails to (checked by this crate's tests).
    pub(crate) fn take(request: &mut reqwest::Request) -> Result<Self, BodyNotInMemory> {
        let Some(body) = request.body_mut() else {
            return Ok(OriginalBody::None);
        };
        let Some(len) = body.as_bytes().map(<[u8]>::len) else {
            return Ok(OriginalBody::Streaming);
        };
        // In memory, the body is its bytes: its first frame is all of
        // them, a clone of the buffer, ready at once.
        let bytes = if len == 0 {
            Bytes::new()
        } else {
            let mut cx = Context::from_waker(Waker::noop());
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => frame.into_data().map_err(|_| BodyNotInMemory)?,
                _ => return Err(BodyNotInMemory),
            }
        };
        if bytes.len() != len {
            return Err(BodyNotInMemory);
        }
        // The request keeps them too, for the conversion to `http` (and the
        // layers' view of its length).
        *body = reqwest::Body::from(bytes.clone());
        Ok(OriginalBody::Bytes(bytes))
    }
}

/// An in-memory request body did not give its bytes at once (see
/// [`OriginalBody::take`]).
#[derive(Debug)]
pub(crate) struct BodyNotInMemory;

impl fmt::Display for BodyNotInMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tower-quota-reqwest: an in-memory request body did not give its bytes at once")
    }
}

impl StdError for BodyNotInMemory {}

/// What an attempt hands back beside its response, in the response's
/// extensions: the final URL (after reqwest's redirects) and the
/// extensions the rest of the chain left.
#[derive(Clone)]
pub(crate) struct Forwarded {
    pub(crate) url: Url,
    pub(crate) extensions: Extensions,
}

/// Sends each attempt through the middlewares after this one and reqwest's
/// client, with `next`.
///
/// `Next<'a>` borrows the client's middleware list, so this service lives no
/// longer than one call of `Middleware::handle`: the stack around it is
/// built per logical request (the layers' state is shared through `Arc`s,
/// so that costs a few reference counts).
#[derive(Clone)]
pub(crate) struct ChainService<'a> {
    next: Next<'a>,
    /// The extensions the chain was called with; every attempt gets its own
    /// copy, since an attempt's middlewares may change them.
    extensions: Arc<Extensions>,
    original: Arc<Original>,
}

/// What every attempt of one logical request starts from.
pub(crate) struct Original {
    /// The request as reqwest made it, without its headers and body (each
    /// attempt brings its own): its URL, method, version and extensions
    /// (reqwest keeps a request's timeout there).
    template: Option<reqwest::Request>,
    /// The URI the request had as an `http` request: an attempt with the
    /// same one gets the template's URL, not a URL parsed from it again.
    uri: http::Uri,
    body: OriginalBody,
}

impl Original {
    /// Splits `request` into what its attempts start from and the `http`
    /// request the layers see.
    pub(crate) fn split(
        mut request: reqwest::Request,
        body: OriginalBody,
    ) -> reqwest::Result<(Self, http::Request<reqwest::Body>)> {
        let headers = std::mem::take(request.headers_mut());
        let kept_body = request.body_mut().take();
        // Without a body, a request can always be copied.
        let template = request.try_clone();
        *request.headers_mut() = headers;
        *request.body_mut() = kept_body;
        let request = http::Request::<reqwest::Body>::try_from(request)?;
        let original = Original {
            template,
            uri: request.uri().clone(),
            body,
        };
        Ok((original, request))
    }

    /// The URL the caller asked for: a response that did not come back
    /// through the chain (none does in this crate's stack) keeps it.
    pub(crate) fn url(&self) -> Option<Url> {
        match &self.template {
            Some(template) => Some(template.url().clone()),
            None => Url::parse(&self.uri.to_string()).ok(),
        }
    }

    /// Attempt `request` as a reqwest request: a copy of the template with
    /// the attempt's headers and body, or, if a layer changed the URI (none
    /// of this crate's does), the attempt converted whole.
    fn attempt(&self, request: AttemptRequest) -> reqwest::Result<reqwest::Request> {
        let (parts, attempt_body) = request.into_parts();
        let body = match &self.body {
            OriginalBody::None => None,
            OriginalBody::Bytes(bytes) => Some(reqwest::Body::from(bytes.clone())),
            OriginalBody::Streaming => Some(reqwest::Body::wrap(attempt_body)),
        };
        let copy = self
            .template
            .as_ref()
            .filter(|_| parts.uri == self.uri)
            .and_then(reqwest::Request::try_clone);
        let mut attempt = match copy {
            Some(mut attempt) => {
                *attempt.method_mut() = parts.method;
                *attempt.version_mut() = parts.version;
                *attempt.headers_mut() = parts.headers;
                attempt
            }
            None => reqwest::Request::try_from(http::Request::from_parts(parts, Bytes::new()))?,
        };
        *attempt.body_mut() = body;
        Ok(attempt)
    }
}

impl<'a> ChainService<'a> {
    pub(crate) fn new(next: Next<'a>, extensions: Extensions, original: Arc<Original>) -> Self {
        ChainService {
            next,
            extensions: Arc::new(extensions),
            original,
        }
    }
}

impl fmt::Debug for ChainService<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainService").finish_non_exhaustive()
    }
}

impl<'a> Service<AttemptRequest> for ChainService<'a> {
    type Response = http::Response<reqwest::Body>;
    type Error = ChainError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ChainError>> + Send + 'a>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The rest of the chain is called per request and reports no
        // backpressure.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: AttemptRequest) -> Self::Future {
        let next = self.next.clone();
        let extensions = Arc::clone(&self.extensions);
        let request = self.original.attempt(request);
        Box::pin(async move {
            let request = request.map_err(|error| ChainError::new(error.into()))?;
            let mut extensions = Extensions::clone(&extensions);
            let response = next
                .run(request, &mut extensions)
                .await
                .map_err(ChainError::new)?;
            let url = response.url().clone();
            let mut response = http::Response::from(response);
            response
                .extensions_mut()
                .insert(Forwarded { url, extensions });
            Ok(response)
        })
    }
}

/// An error of the rest of the chain, carried through the layers so that
/// [`into_middleware_error`] hands it back to the caller unchanged.
///
/// Its source chain tells the layers' classifier what kind of failure it
/// was: reqwest's timeouts and connect errors are transient (retried), as
/// the same failures of any other client are.
pub(crate) struct ChainError {
    error: reqwest_middleware::Error,
    kind: Option<io::Error>,
}

impl ChainError {
    fn new(error: reqwest_middleware::Error) -> Self {
        let kind = match &error {
            reqwest_middleware::Error::Reqwest(error) if error.is_timeout() => {
                Some(io::ErrorKind::TimedOut)
            }
            reqwest_middleware::Error::Reqwest(error) if error.is_connect() => {
                Some(io::ErrorKind::NotConnected)
            }
            _ => None,
        }
        .map(io::Error::from);
        ChainError { error, kind }
    }
}

impl fmt::Debug for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl StdError for ChainError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Some(kind) => Some(kind),
            None => Some(&self.error),
        }
    }
}

/// The error the stack ended with, as reqwest-middleware's error: an error
/// of the rest of the chain unchanged, any other (the layers' own) as
/// [`reqwest_middleware::Error::Middleware`].
pub(crate) fn into_middleware_error(error: BoxError) -> reqwest_middleware::Error {
    match error.downcast::<ChainError>() {
        Ok(chain) => chain.error,
        Err(error) => reqwest_middleware::Error::Middleware(layer_error(error)),
    }
}

/// A layer's error as an `anyhow::Error` that downcasts to the layer's own
/// type: `anyhow::Error::from_boxed` alone would only downcast to the box.
fn layer_error(error: BoxError) -> anyhow::Error {
    macro_rules! as_concrete {
        ($error:ident: $($type:ty),*) => {
            $(
                let $error = match $error.downcast::<$type>() {
                    Ok(concrete) => return anyhow::Error::new(*concrete),
                    Err(other) => other,
                };
            )*
        };
    }
    as_concrete!(error: Overloaded, CostTooLarge, ConflictingQuotas, GateClosed, ReplayError);
    anyhow::Error::from_boxed(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: Option<reqwest::Body>) -> reqwest::Request {
        let url = Url::parse("https://api.example.com/v1/items").expect("a valid URL");
        let mut request = reqwest::Request::new(http::Method::POST, url);
        *request.body_mut() = body;
        request
    }

    #[test]
    fn an_in_memory_body_is_shared_not_copied() {
        let bytes = Bytes::from(vec![7u8; 64 * 1024]);
        let mut request = post(Some(reqwest::Body::from(bytes.clone())));
        let Ok(OriginalBody::Bytes(kept)) = OriginalBody::take(&mut request) else {
            panic!("an in-memory body is kept as bytes");
        };
        assert_eq!(kept, bytes);
        assert_eq!(kept.as_ptr(), bytes.as_ptr(), "the same buffer, not a copy");
        let left = request.body().and_then(reqwest::Body::as_bytes);
        assert_eq!(left.map(<[u8]>::as_ptr), Some(bytes.as_ptr()));
        assert_eq!(left.map(<[u8]>::len), Some(bytes.len()));
    }

    #[test]
    fn empty_missing_and_streaming_bodies() {
        let mut empty = post(Some(reqwest::Body::from(Bytes::new())));
        assert!(
            matches!(OriginalBody::take(&mut empty), Ok(OriginalBody::Bytes(kept)) if kept.is_empty())
        );
        assert_eq!(
            empty.body().and_then(reqwest::Body::as_bytes),
            Some(&[][..])
        );

        let mut none = post(None);
        assert!(matches!(
            OriginalBody::take(&mut none),
            Ok(OriginalBody::None)
        ));
        assert!(none.body().is_none());

        let stream = http_body_util::Full::new(Bytes::from_static(b"streamed"));
        let mut streaming = post(Some(reqwest::Body::wrap(stream)));
        assert!(matches!(
            OriginalBody::take(&mut streaming),
            Ok(OriginalBody::Streaming)
        ));
        assert!(
            streaming
                .body()
                .is_some_and(|body| body.as_bytes().is_none())
        );
    }
}
