//! Replayable request bodies, so a retry resends exactly the same bytes.
//!
//! # The problem
//!
//! A retry sends the same request again, body included. But HTTP bodies are
//! streams, not values, and most of them cannot be cloned: hyper's
//! `Incoming` reads from a socket, tonic's `Body` is a boxed stream of encoded
//! messages, and an upload may come from a file or a channel. Once the first
//! attempt has sent the bytes, they are gone. Collecting the whole body up
//! front would make every request wait for its last byte and hold all of it
//! in memory, even the ones that are never retried.
//!
//! # How it works
//!
//! [`ReplayBody`] wraps any body with `Data = Bytes`. It is [`Clone`]: each
//! attempt sends its own clone. The first clone polled streams frames from
//! the inner body as usual and copies each data frame (a cheap reference
//! count, [`Bytes`] are shared) into a buffer shared by all clones; trailers
//! are kept too. A later clone replays the buffered frames, then continues
//! reading the inner body where the previous attempt stopped, so a retry of an
//! attempt that was cut short still sends everything. The inner body is
//! shared by the clones and read by one of them at a time; every frame read
//! goes into the buffer, so whichever clone reads next sees the same bytes in
//! the same order. A clone always starts from the first byte.
//!
//! Nothing is collected ahead of time: the first attempt streams at full
//! speed, and a request that is never retried costs one small allocation.
//!
//! # The cap
//!
//! The buffer holds at most `max_bytes` (by default
//! [`DEFAULT_MAX_REPLAY_BYTES`]). When a data frame would take it over the
//! limit, the body is *capped*: the buffer is freed, the attempt that was
//! reading keeps streaming the rest of the body (nothing is lost for it), and
//! every other clone fails with [`ReplayError::Capped`] instead of sending a
//! truncated body. A retry layer checks [`ReplayBody::is_capped`] (or
//! [`ReplayBody::is_replayable`]) before it sends another attempt, and treats
//! a capped body as not retryable. A body whose
//! [`size_hint`](Body::size_hint) already says it is bigger than the limit is
//! refused by [`ReplayBody::try_new`], which hands it back so the caller can
//! send it once without any buffering.
//!
//! If the inner body fails, the attempt reading it gets the body's error and
//! later clones fail with [`ReplayError::BodyFailed`]: the bytes after the
//! failure do not exist, and a partial body must not be resent as if it were
//! whole.
//!
//! # Concurrent attempts
//!
//! Clones may be polled at the same time, for example when a server answers
//! before it has read the whole body and the client keeps sending it while the
//! retry starts. The clone that has replayed everything buffered so far then
//! waits for the reading clone (or reads the inner body itself when the
//! reading clone is idle), and is woken when new bytes are buffered or the
//! reading clone is dropped. A clone that reaches the end of the buffer while
//! the body is capped fails with [`ReplayError::Capped`].
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower_quota::replay::{DEFAULT_MAX_REPLAY_BYTES, clone_request, replayable_request};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! let request = http::Request::post("/v1/items")
//!     .body(Full::new(Bytes::from_static(b"{\"name\":\"widget\"}")))?;
//!
//! // A body known to be too large comes back untouched: send it once, without retries.
//! let request = replayable_request(request, DEFAULT_MAX_REPLAY_BYTES)
//!     .map_err(|_too_large| "send once, no retries")?;
//!
//! // Attempt 1 sends a clone; the bytes are buffered as they go out.
//! let sent = clone_request(&request).into_body().collect().await?.to_bytes();
//!
//! // The server answered 503: before retrying, check that the body can be resent.
//! assert!(request.body().is_replayable());
//! let resent = clone_request(&request).into_body().collect().await?.to_bytes();
//! assert_eq!(sent, resent);
//! # Ok(())
//! # }
//! ```
//!
//! # Send and Sync
//!
//! `ReplayBody<B>` is `Send` and `Sync` whenever `B` is `Send`: the inner body
//! lives behind a [`Mutex`], which is never held across an `.await` (only for
//! the duration of one synchronous poll). So a `!Sync` body such as
//! `http_body_util::combinators::UnsyncBoxBody` or tonic's `Body` becomes
//! usable where `Sync` is required (reqwest's `Body::wrap`, for one).

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// The default most bytes a [`ReplayBody`] buffers for replay: 64 KiB.
///
/// Large enough for typical JSON and protobuf API requests; an upload over
/// the limit is sent once and not retried.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

/// Why a clone of a [`ReplayBody`] cannot replay the body.
///
/// Returned, boxed in a [`BoxError`], from [`Body::poll_frame`]; find it with
/// `error.downcast_ref::<ReplayError>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayError {
    /// The body grew past the replay limit while an earlier attempt sent it,
    /// so its bytes were not all kept: sending it again would send a
    /// truncated body.
    Capped,
    /// The inner body failed with an error while an earlier attempt read it,
    /// so the rest of the body does not exist.
    BodyFailed,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Capped => f.write_str(
                "request body exceeded the replay limit while it was sent; it cannot be sent again",
            ),
            ReplayError::BodyFailed => {
                f.write_str("request body failed while it was sent; it cannot be sent again")
            }
        }
    }
}

impl std::error::Error for ReplayError {}

/// A request body that can be cloned and resent, for retries.
///
/// See the [module docs](self) for how it works. Create one with
/// [`ReplayBody::try_new`] or [`replayable_request`]; send a clone with each
/// attempt.
pub struct ReplayBody<B> {
    /// `None` for a body that had ended before it was wrapped (a GET's):
    /// nothing to buffer, nothing shared, every clone sends nothing.
    shared: Option<Arc<Shared<B>>>,
    max_bytes: usize,
    cursor: Cursor,
}

/// The state every clone shares.
struct Shared<B> {
    max_bytes: usize,
    next_id: AtomicU64,
    state: Mutex<State<B>>,
}

struct State<B> {
    source: Source<B>,
    /// Data frames read so far, in order; empty once capped or failed.
    chunks: Vec<Bytes>,
    /// The sum of the lengths of `chunks`.
    buffered_bytes: usize,
    /// The trailers, once the inner body yielded them.
    trailers: Option<HeaderMap>,
    /// Clones waiting for the inner body to yield (at most one entry each).
    waiters: Vec<(u64, Waker)>,
    /// The clone whose poll of the inner body last returned `Pending`: the
    /// inner body holds its waker, so if it is dropped someone else must poll.
    last_reader: Option<u64>,
}

enum Source<B> {
    /// The inner body has more to give.
    Reading(Pin<Box<B>>),
    /// The inner body ended; everything is buffered.
    Complete,
    /// Over the limit: only the clone that went over it reads on, until it
    /// ends or is dropped (then `None`).
    Capped(Option<Pin<Box<B>>>),
    /// The inner body returned an error.
    Failed,
}

/// What one clone has sent so far.
#[derive(Debug)]
struct Cursor {
    id: u64,
    /// Index of the next buffered chunk to send.
    next_chunk: usize,
    /// Buffered bytes sent so far.
    bytes_sent: usize,
    trailers_sent: bool,
    /// This clone read the frame that went over the limit; it streams the
    /// inner body directly from then on.
    past_cap: bool,
    finished: bool,
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` so that it can be replayed, buffering at most `max_bytes`.
    ///
    /// Returns the body back, untouched, when its size hint already says it
    /// holds more than `max_bytes`: such a body cannot be replayed, so the
    /// caller should send it once, without retries.
    pub fn try_new(body: B, max_bytes: usize) -> Result<Self, B> {
        if body.size_hint().lower() > u64::try_from(max_bytes).unwrap_or(u64::MAX) {
            return Err(body);
        }
        if body.is_end_stream() {
            return Ok(ReplayBody {
                shared: None,
                max_bytes,
                cursor: Cursor::new(0),
            });
        }
        let state = State {
            source: Source::Reading(Box::pin(body)),
            chunks: Vec::new(),
            buffered_bytes: 0,
            trailers: None,
            waiters: Vec::new(),
            last_reader: None,
        };
        Ok(ReplayBody {
            shared: Some(Arc::new(Shared {
                max_bytes,
                next_id: AtomicU64::new(1),
                state: Mutex::new(state),
            })),
            max_bytes,
            cursor: Cursor::new(0),
        })
    }
}

impl<B> ReplayBody<B> {
    /// Wraps `body` to be sent once, without buffering: it is
    /// [capped](Self::is_capped) from the start, so a retry layer sees at once
    /// that it cannot be re-sent. For bodies that [`ReplayBody::try_new`]
    /// refused, so that every attempt has the same body type.
    pub fn once(body: B) -> Self {
        let state = State {
            source: Source::Capped(Some(Box::pin(body))),
            chunks: Vec::new(),
            buffered_bytes: 0,
            trailers: None,
            waiters: Vec::new(),
            last_reader: None,
        };
        let mut cursor = Cursor::new(0);
        cursor.past_cap = true;
        ReplayBody {
            shared: Some(Arc::new(Shared {
                max_bytes: 0,
                next_id: AtomicU64::new(1),
                state: Mutex::new(state),
            })),
            max_bytes: 0,
            cursor,
        }
    }

    /// Whether the body went over the replay limit. When `true`, later
    /// clones fail with [`ReplayError::Capped`]: do not retry with this body.
    ///
    /// The attempt that was reading when the limit was passed keeps streaming
    /// the whole body. When attempts overlap, the body may become capped after
    /// this returned `false`; the clone then fails instead of sending a
    /// truncated body.
    pub fn is_capped(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|shared| matches!(shared.lock().source, Source::Capped(_)))
    }

    /// Whether a new clone can still send the whole body: `false` once the
    /// body is [capped](Self::is_capped) or the inner body failed. A retry
    /// layer checks this before it sends another attempt.
    pub fn is_replayable(&self) -> bool {
        self.shared.as_ref().is_none_or(|shared| {
            matches!(shared.lock().source, Source::Reading(_) | Source::Complete)
        })
    }

    /// The most bytes this body buffers for replay.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // Every update leaves the state consistent before any call that could
        // panic (the inner body's poll), so a poisoned state is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<B> Clone for ReplayBody<B> {
    /// A new attempt: it sends the body from its first byte.
    fn clone(&self) -> Self {
        let id = self
            .shared
            .as_ref()
            .map_or(0, |shared| shared.next_id.fetch_add(1, Ordering::Relaxed));
        ReplayBody {
            shared: self.shared.clone(),
            max_bytes: self.max_bytes,
            cursor: Cursor::new(id),
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(shared) = &this.shared else {
            this.cursor.finished = true;
            return Poll::Ready(None);
        };
        let mut to_wake = Vec::new();
        let polled = {
            let mut state = shared.lock();
            this.cursor
                .poll_frame(&mut state, shared.max_bytes, cx, &mut to_wake)
        };
        // Wake outside the lock: a waker may poll synchronously.
        for waker in to_wake {
            waker.wake();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let cursor = &self.cursor;
        let Some(shared) = self.shared.as_ref().filter(|_| !cursor.finished) else {
            return true;
        };
        let state = shared.lock();
        let replayed_all = cursor.next_chunk >= state.chunks.len();
        match &state.source {
            Source::Reading(inner) => replayed_all && inner.is_end_stream(),
            Source::Complete => replayed_all && (cursor.trailers_sent || state.trailers.is_none()),
            Source::Capped(inner) => {
                cursor.past_cap && inner.as_ref().is_none_or(|inner| inner.is_end_stream())
            }
            // This clone will fail; it must be polled to say so.
            Source::Failed => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let cursor = &self.cursor;
        let Some(shared) = self.shared.as_ref().filter(|_| !cursor.finished) else {
            return SizeHint::with_exact(0);
        };
        let state = shared.lock();
        let unsent = state.buffered_bytes.saturating_sub(cursor.bytes_sent);
        match &state.source {
            Source::Reading(inner) => add_hint(unsent, &inner.size_hint()),
            Source::Complete => SizeHint::with_exact(to_u64(unsent)),
            Source::Capped(Some(inner)) if cursor.past_cap => inner.size_hint(),
            Source::Capped(None) if cursor.past_cap => SizeHint::with_exact(0),
            Source::Capped(_) | Source::Failed => SizeHint::default(),
        }
    }
}

impl Cursor {
    fn new(id: u64) -> Self {
        Cursor {
            id,
            next_chunk: 0,
            bytes_sent: 0,
            trailers_sent: false,
            past_cap: false,
            finished: false,
        }
    }

    fn poll_frame<B>(
        &mut self,
        state: &mut State<B>,
        max_bytes: usize,
        cx: &mut Context<'_>,
        to_wake: &mut Vec<Waker>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        if self.finished {
            return Poll::Ready(None);
        }
        if self.past_cap {
            return self.poll_past_cap(state, cx);
        }
        let inner = match &mut state.source {
            Source::Capped(_) => return Poll::Ready(Some(Err(ReplayError::Capped.into()))),
            Source::Failed => return Poll::Ready(Some(Err(ReplayError::BodyFailed.into()))),
            Source::Complete => {
                if let Some(chunk) = self.replay(&state.chunks) {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if !self.trailers_sent {
                    self.trailers_sent = true;
                    if let Some(trailers) = &state.trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                    }
                }
                self.finished = true;
                return Poll::Ready(None);
            }
            Source::Reading(inner) => {
                if let Some(chunk) = self.replay(&state.chunks) {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                inner
            }
        };

        // Everything buffered is sent: read on from the inner body.
        let frame = match inner.as_mut().poll_frame(cx) {
            Poll::Pending => {
                state.last_reader = Some(self.id);
                register(&mut state.waiters, self.id, cx.waker());
                return Poll::Pending;
            }
            Poll::Ready(polled) => polled,
        };
        // Whatever happened, the clones waiting for the inner body have
        // something new to look at, and someone must poll it next.
        state.last_reader = None;
        to_wake.extend(state.waiters.drain(..).map(|(_, waker)| waker));
        match frame {
            None => {
                state.source = Source::Complete;
                self.finished = true;
                Poll::Ready(None)
            }
            Some(Err(error)) => {
                state.source = Source::Failed;
                state.chunks = Vec::new();
                state.buffered_bytes = 0;
                Poll::Ready(Some(Err(error.into())))
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    self.buffer(state, max_bytes, &data);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        // Trailers end a body: the inner body is done.
                        state.trailers = Some(trailers.clone());
                        state.source = Source::Complete;
                        self.trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    // http-body 1 has no other kind of frame; pass it on.
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
            },
        }
    }

    /// The next buffered chunk this clone has not sent, if any.
    fn replay(&mut self, chunks: &[Bytes]) -> Option<Bytes> {
        let chunk = chunks.get(self.next_chunk)?.clone();
        self.next_chunk += 1;
        self.bytes_sent += chunk.len();
        Some(chunk)
    }

    /// Keeps `data`, just read from the inner body by this clone, for later
    /// clones, or caps the body when it would go over `max_bytes`.
    fn buffer<B>(&mut self, state: &mut State<B>, max_bytes: usize, data: &Bytes) {
        let buffered_bytes = state.buffered_bytes.saturating_add(data.len());
        if buffered_bytes > max_bytes {
            let source = std::mem::replace(&mut state.source, Source::Failed);
            state.source = match source {
                Source::Reading(inner) => Source::Capped(Some(inner)),
                other => other,
            };
            state.chunks = Vec::new();
            state.buffered_bytes = 0;
            self.past_cap = true;
            return;
        }
        if !data.is_empty() {
            state.chunks.push(data.clone());
        }
        state.buffered_bytes = buffered_bytes;
        self.next_chunk = state.chunks.len();
        self.bytes_sent = buffered_bytes;
    }

    /// Streams the inner body of a capped body, without buffering.
    fn poll_past_cap<B>(
        &mut self,
        state: &mut State<B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let Source::Capped(Some(inner)) = &mut state.source else {
            // Unreachable: only this clone reads a capped body, and it stops
            // at the end. Fail rather than end a body that may be incomplete.
            return Poll::Ready(Some(Err(ReplayError::Capped.into())));
        };
        match inner.as_mut().poll_frame(cx) {
            Poll::Ready(None) => {
                state.source = Source::Capped(None);
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let id = self.cursor.id;
        let (to_wake, _inner) = {
            let mut state = shared.lock();
            state.waiters.retain(|(waiter, _)| *waiter != id);
            // Nobody else can use a capped body's inner body: let it go now.
            let inner = match &mut state.source {
                Source::Capped(inner) if self.cursor.past_cap => inner.take(),
                _ => None,
            };
            // The inner body holds this clone's waker: hand the reading over.
            let to_wake: Vec<Waker> = if state.last_reader == Some(id) {
                state.last_reader = None;
                state.waiters.drain(..).map(|(_, waker)| waker).collect()
            } else {
                Vec::new()
            };
            (to_wake, inner)
        };
        for waker in to_wake {
            waker.wake();
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ReplayBody");
        debug
            .field("max_bytes", &self.max_bytes)
            .field("cursor", &self.cursor);
        let Some(shared) = &self.shared else {
            return debug.field("source", &"empty").finish();
        };
        let state = match shared.state.try_lock() {
            Ok(state) => Some(state),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if let Some(state) = state {
            let source = match state.source {
                Source::Reading(_) => "reading",
                Source::Complete => "complete",
                Source::Capped(_) => "capped",
                Source::Failed => "failed",
            };
            debug
                .field("source", &source)
                .field("buffered_bytes", &state.buffered_bytes)
                .field("has_trailers", &state.trailers.is_some());
        }
        debug.finish_non_exhaustive()
    }
}

/// Registers `waker` for clone `id`, replacing the clone's previous waker.
fn register(waiters: &mut Vec<(u64, Waker)>, id: u64, waker: &Waker) {
    match waiters.iter_mut().find(|(waiter, _)| *waiter == id) {
        Some((_, registered)) => registered.clone_from(waker),
        None => waiters.push((id, waker.clone())),
    }
}

fn to_u64(bytes: usize) -> u64 {
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// `buffered` bytes followed by a body of hint `rest`, without overflow.
fn add_hint(buffered: usize, rest: &SizeHint) -> SizeHint {
    let buffered = to_u64(buffered);
    let mut hint = SizeHint::new();
    let lower = rest.lower().saturating_add(buffered);
    hint.set_lower(lower);
    if let Some(upper) = rest.upper().and_then(|upper| upper.checked_add(buffered))
        && upper >= lower
    {
        hint.set_upper(upper);
    }
    hint
}

/// Wraps the body of `request` in a [`ReplayBody`] that buffers at most
/// `max_bytes`, or hands the request back untouched when the body's size
/// hint already says it is larger: send that one once, without retries.
#[allow(
    clippy::result_large_err,
    reason = "the request is handed back whole so it can still be sent; boxing it would cost an allocation"
)]
pub fn replayable_request<B: Body>(
    request: Request<B>,
    max_bytes: usize,
) -> Result<Request<ReplayBody<B>>, Request<B>> {
    let (parts, body) = request.into_parts();
    match ReplayBody::try_new(body, max_bytes) {
        Ok(body) => Ok(Request::from_parts(parts, body)),
        Err(body) => Err(Request::from_parts(parts, body)),
    }
}

/// `request` with its body made replayable, buffering at most `max_bytes`,
/// or sent once ([`ReplayBody::once`]) when its size hint already says it
/// is larger: a retrying layer's attempts all have the same body type.
///
/// One [`Request::map`], which the compiler keeps in place, where
/// [`replayable_request`]'s `Result` moves the whole request twice more.
pub(crate) fn replayable_or_once<B: Body>(
    request: Request<B>,
    max_bytes: usize,
) -> Request<ReplayBody<B>> {
    request.map(|body| ReplayBody::try_new(body, max_bytes).unwrap_or_else(ReplayBody::once))
}

/// A copy of `request` for one more attempt: method, URI, version, headers,
/// extensions and a clone of the body.
///
/// With a [`ReplayBody`], the clone sends the whole body from its first byte.
/// Extensions are all `Clone` in http 1, so every one is carried over; this
/// is [`Request::clone`], named for what a retry layer means by it.
pub fn clone_request<B: Clone>(request: &Request<B>) -> Request<B> {
    request.clone()
}

#[cfg(test)]
mod tests;
