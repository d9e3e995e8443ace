//! The attempts of one logical request, counted once for the whole stack.
//!
//! Two layers of this crate re-send requests: [`JitterBackoffLayer`] retries
//! transient failures, and [`RetryAfterLayer`] below it re-sends a throttled
//! request once the server's delay has passed. Each has its own
//! `max_attempts`; stacked, their limits would multiply (3 backoff attempts,
//! each re-sent 3 times, is 9 requests). So the outermost retry layer puts an
//! [`AttemptBudget`] in the request's extensions, and every layer that sends
//! another attempt first takes one from it with
//! [`AttemptBudget::try_begin`]. One logical request then makes at most the
//! outermost layer's `max_attempts` attempts in total, whichever layer sends
//! them.
//!
//! Taking an attempt also numbers it: the [`Attempt`] extension, an optional
//! header (for example `x-retry-attempt: 2`) and, for gRPC requests,
//! `grpc-previous-rpc-attempts`, so servers and telemetry can tell attempts
//! apart.
//!
//! Waiting is counted once too. Each layer may wait before an attempt (the
//! backoff layer sleeps a jittered delay, the RetryAfter gate waits for a
//! server's pause to end), and a server delay above the stack's `max_wait`
//! must not be slept through by any of them. So the outermost layer also
//! puts a [`WaitBudget`] in the request's extensions; a
//! [`RetryAfterLayer`] lowers it to its own `max_wait`, and every layer
//! checks it before a wait and spends from it after. A wait that does not
//! fit goes back to the caller at once instead.
//!
//! # How the budgets reach the layers below
//!
//! A layer hands the budgets to the service it calls on the calling
//! thread, for the length of that `Service::call`, and a
//! [`RetryAfterLayer`] takes them in its own `call` (and hands them on in
//! turn, to a `RetryAfterLayer` below it). In a
//! [`ServiceBuilder`](tower::ServiceBuilder) stack each layer's `call` runs
//! within the one above, so the first attempt goes without an extension: a
//! request that is never retried costs no allocation for them. Where a
//! layer in between calls later, on another task (a
//! [`Buffer`](https://docs.rs/tower/latest/tower/buffer/)), the budgets
//! travel in the request's extensions instead: [`JitterBackoffLayer`] puts
//! its [`AttemptBudget`] there until it has seen a layer below take it
//! from the thread, and on every attempt after the first. Only a service
//! that routes some requests directly and others through a task (a
//! `Steer` with a `Buffer` on one branch) would have the first attempts on
//! that branch counted by the layer below alone.
//!
//! [`JitterBackoffLayer`]: crate::JitterBackoffLayer
//! [`RetryAfterLayer`]: crate::RetryAfterLayer

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use http::Request;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};

/// The gRPC header counting the attempts before this one (gRPC retry design, A6).
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

/// The number of an attempt of a logical request, the first being 1; a
/// request extension set by [`AttemptBudget::try_begin`] on every attempt
/// after the first. A request without one is a first attempt (as a gRPC
/// request without `grpc-previous-rpc-attempts` is): [`Attempt::of`] says
/// so, and a first attempt costs no allocation.
///
/// ```
/// use tower_quota::attempts::{Attempt, AttemptBudget};
///
/// let budget = AttemptBudget::new(3);
/// let mut request = http::Request::get("/items").body(()).unwrap();
/// budget.try_begin(&mut request);
/// assert_eq!(request.extensions().get::<Attempt>(), None);
/// assert_eq!(Attempt::of(&request), Attempt(1));
/// budget.try_begin(&mut request);
/// assert_eq!(Attempt::of(&request), Attempt(2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(pub u32);

impl Attempt {
    /// The attempt `request` is: its [`Attempt`] extension, or the first.
    pub fn of<B>(request: &Request<B>) -> Attempt {
        request
            .extensions()
            .get::<Attempt>()
            .copied()
            .unwrap_or(Attempt(1))
    }
}

/// Says on the logical request's span (`jitter_backoff`, when it is the
/// current span) that `attempt` is being sent, so that every event from
/// here on (in a JSON log, for example) names the attempt it belongs to.
pub(crate) fn sending(attempt: u32) {
    // The span starts at attempt 1: the first attempt, on every request's
    // path, costs no span lookup.
    if attempt <= 1 {
        return;
    }
    let span = tracing::Span::current();
    if span
        .metadata()
        .is_some_and(|meta| meta.name() == crate::telemetry::JITTER_BACKOFF_SPAN)
    {
        span.record(crate::telemetry::field::ATTEMPT, attempt);
    }
}

/// The attempts one logical request may still make, shared by every layer
/// that re-sends it; see the [module docs](self).
///
/// Cheap to clone: clones share one counter.
///
/// ```
/// use tower_quota::attempts::{Attempt, AttemptBudget};
///
/// let budget = AttemptBudget::new(2).with_header(http::HeaderName::from_static("x-retry-attempt"));
/// let mut request = http::Request::get("/items").body(()).unwrap();
/// assert_eq!(budget.try_begin(&mut request), Some(1));
/// assert_eq!(budget.try_begin(&mut request), Some(2));
/// assert_eq!(budget.try_begin(&mut request), None, "two attempts in all");
/// assert_eq!(request.extensions().get::<Attempt>(), Some(&Attempt(2)));
/// assert_eq!(request.headers()["x-retry-attempt"], "2");
/// ```
#[derive(Debug, Clone)]
pub struct AttemptBudget {
    shared: Arc<Shared>,
}

/// One logical request's accounts: its attempts and its waiting, in one
/// allocation that an [`AttemptBudget`] and its [`WaitBudget`] share.
#[derive(Debug)]
struct Shared {
    used: AtomicU32,
    max: u32,
    header: Option<HeaderName>,
    spent_nanos: AtomicU64,
    max_nanos: AtomicU64,
    /// No wait may end after it: the request's deadline.
    deadline: Mutex<Option<Instant>>,
}

impl Shared {
    fn new(max_attempts: u32, header: Option<HeaderName>, max_wait: Duration) -> Arc<Self> {
        Arc::new(Shared {
            used: AtomicU32::new(0),
            max: max_attempts,
            header,
            spent_nanos: AtomicU64::new(0),
            max_nanos: AtomicU64::new(nanos(max_wait)),
            deadline: Mutex::new(None),
        })
    }
}

impl AttemptBudget {
    /// A budget of `max_attempts` attempts, none used yet.
    pub fn new(max_attempts: u32) -> Self {
        AttemptBudget {
            shared: Shared::new(max_attempts, None, Duration::MAX),
        }
    }

    /// A budget of `max_attempts` attempts that numbers each in the header
    /// `name` when `Some`: [`new`](Self::new) and
    /// [`with_header`](Self::with_header) in one allocation.
    pub(crate) fn numbered(max_attempts: u32, header: Option<HeaderName>) -> Self {
        AttemptBudget {
            shared: Shared::new(max_attempts, header, Duration::MAX),
        }
    }

    /// Also writes each attempt's number into the header `name`.
    pub fn with_header(self, name: HeaderName) -> Self {
        let shared = Shared::new(self.shared.max, Some(name), Duration::MAX);
        shared.used.store(self.used(), Ordering::Release);
        AttemptBudget { shared }
    }

    /// The request's [`WaitBudget`], unlimited until a layer lowers it:
    /// it shares this budget's allocation, and
    /// [`WaitBudget::shared_by`] finds it through this budget.
    pub fn waits(&self) -> WaitBudget {
        WaitBudget {
            shared: self.shared.clone(),
        }
    }

    /// The attempts made (begun) so far.
    pub fn used(&self) -> u32 {
        self.shared.used.load(Ordering::Acquire)
    }

    /// The most attempts in all.
    pub fn max(&self) -> u32 {
        self.shared.max
    }

    /// The attempts left.
    pub fn remaining(&self) -> u32 {
        self.max().saturating_sub(self.used())
    }

    /// Takes one attempt and numbers `request` as that attempt: the
    /// [`Attempt`] extension (none on the first attempt: one left from
    /// elsewhere is removed), the configured header, and
    /// `grpc-previous-rpc-attempts` for gRPC requests. Returns the attempt's
    /// number, or `None` (leaving `request` untouched) when every attempt is
    /// used.
    pub fn try_begin<B>(&self, request: &mut Request<B>) -> Option<u32> {
        let max = self.shared.max;
        let previous = self
            .shared
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < max).then_some(used + 1)
            })
            .ok()?;
        let attempt = previous + 1;
        if previous == 0 {
            // Removing from extensions that hold nothing allocates nothing.
            request.extensions_mut().remove::<Attempt>();
        } else {
            request.extensions_mut().insert(Attempt(attempt));
        }
        if let Some(name) = &self.shared.header {
            request
                .headers_mut()
                .insert(name.clone(), HeaderValue::from(attempt));
        }
        if is_grpc(request) {
            if previous == 0 {
                request.headers_mut().remove(GRPC_PREVIOUS_RPC_ATTEMPTS);
            } else {
                request
                    .headers_mut()
                    .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(previous));
            }
        }
        Some(attempt)
    }
}

/// The time one logical request may still spend waiting before its
/// attempts, shared by every layer that waits; see the [module docs](self).
///
/// Cheap to clone: clones share one account. Durations are kept in whole
/// nanoseconds, saturating: a limit of about 584 years or more is unlimited.
///
/// ```
/// use std::time::Duration;
/// use tower_quota::attempts::WaitBudget;
///
/// let budget = WaitBudget::unlimited();
/// // A RetryAfterLayer below allows 2 s of waiting in all.
/// budget.limit_to(Duration::from_secs(2));
/// budget.spend(Duration::from_millis(1500));
/// assert_eq!(budget.remaining(), Duration::from_millis(500));
/// // A server that asks for 30 s more gets the response back, not a sleep.
/// assert!(!budget.allows(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone)]
pub struct WaitBudget {
    shared: Arc<Shared>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl WaitBudget {
    /// A budget of `max` waiting in all, none spent yet.
    pub fn new(max: Duration) -> Self {
        WaitBudget {
            shared: Shared::new(0, None, max),
        }
    }

    /// A budget without a limit, until a layer sets one with
    /// [`limit_to`](Self::limit_to).
    pub fn unlimited() -> Self {
        Self::new(Duration::MAX)
    }

    /// Lowers the limit to `max` when it is higher; never raises it.
    pub fn limit_to(&self, max: Duration) {
        self.shared
            .max_nanos
            .fetch_min(nanos(max), Ordering::AcqRel);
    }

    /// No wait may end after `deadline` (lowered, never raised): the waiting
    /// left is at most the time until it.
    pub fn limit_until(&self, deadline: Instant) {
        let mut current = self
            .shared
            .deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.is_none_or(|current| deadline < current) {
            *current = Some(deadline);
        }
    }

    /// The deadline no wait may end after, if one was set.
    pub fn deadline(&self) -> Option<Instant> {
        *self
            .shared
            .deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most waiting in all; `Duration::MAX` when unlimited.
    pub fn max(&self) -> Duration {
        match self.shared.max_nanos.load(Ordering::Acquire) {
            u64::MAX => Duration::MAX,
            max => Duration::from_nanos(max),
        }
    }

    /// The waiting spent so far.
    pub fn spent(&self) -> Duration {
        Duration::from_nanos(self.shared.spent_nanos.load(Ordering::Acquire))
    }

    /// The waiting left: what the limit leaves of it, and no more than
    /// the time until the deadline.
    pub fn remaining(&self) -> Duration {
        let left = self.max().saturating_sub(self.spent());
        match self.deadline() {
            Some(deadline) => left.min(deadline.saturating_duration_since(Instant::now())),
            None => left,
        }
    }

    /// Whether a wait of `wait` fits in what is left.
    pub fn allows(&self, wait: Duration) -> bool {
        wait <= self.remaining()
    }

    /// The budget of the logical request `request` belongs to, put in its
    /// extensions first if it has none: the one account every layer of the
    /// stack spends from. A retry layer above hands it on the calling
    /// thread (see [how the budgets reach the layers
    /// below](self#how-the-budgets-reach-the-layers-below)) or in the
    /// request's [`AttemptBudget`], which carries it with no extension of
    /// its own.
    pub fn shared_by<B>(request: &mut http::Request<B>) -> Self {
        if let Some(budgets) = offered().or_else(|| Budgets::in_extensions(request)) {
            return budgets.waits();
        }
        let waits = WaitBudget::unlimited();
        request.extensions_mut().insert(waits.clone());
        waits
    }

    /// Records `waited` as spent (saturating).
    pub fn spend(&self, waited: Duration) {
        let waited = nanos(waited);
        let _ =
            self.shared
                .spent_nanos
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |spent| {
                    Some(spent.saturating_add(waited))
                });
    }
}

/// The budgets a layer hands to the layers it calls; see the
/// [module docs](self#how-the-budgets-reach-the-layers-below).
#[derive(Clone)]
pub(crate) enum Budgets {
    /// A retry layer's attempts, and the waiting they carry.
    Attempts(AttemptBudget),
    /// Only waiting: a [`RetryAfterLayer`](crate::RetryAfterLayer) with no
    /// retry layer above.
    Waits(WaitBudget),
}

impl Budgets {
    /// The budgets a layer above put in `request`'s extensions: an
    /// [`AttemptBudget`] (which carries the waiting), or a [`WaitBudget`]
    /// of its own.
    pub(crate) fn in_extensions<B>(request: &Request<B>) -> Option<Budgets> {
        let extensions = request.extensions();
        if let Some(attempts) = extensions.get::<AttemptBudget>() {
            return Some(Budgets::Attempts(attempts.clone()));
        }
        extensions.get::<WaitBudget>().cloned().map(Budgets::Waits)
    }

    /// The waiting: carried by the attempts, or on its own.
    pub(crate) fn waits(&self) -> WaitBudget {
        match self {
            Budgets::Attempts(attempts) => attempts.waits(),
            Budgets::Waits(waits) => waits.clone(),
        }
    }
}

thread_local! {
    /// The budgets the layer calling on this thread offers to the layers it
    /// calls ([`Offer`]), until one of them takes them ([`take_offered`]).
    static OFFERED: Cell<Option<Budgets>> = const { Cell::new(None) };
    /// Whether a layer took them during the current [`Offer`].
    static TAKEN: Cell<bool> = const { Cell::new(false) };
}

/// The budgets a layer offers to the layers it calls on this thread, from
/// [`Offer::new`] until the offer is dropped: the first layer below to ask
/// takes them ([`take_offered`]). What was offered before is offered again
/// after, even when the call panics; whether a layer took this offer goes
/// to the [`HandedOn`] given, if any.
///
/// A guard, not a function taking the call as a closure: the request a
/// closure captures is copied into it, and what it returns (a response
/// future, often the largest value a layer makes) copied out, where the
/// layer's call can build its own future around the inner one in place
/// (and return it before the offer ends).
#[must_use = "the offer ends when it is dropped"]
pub(crate) struct Offer<'a> {
    previous: Option<Budgets>,
    taken_before: bool,
    handed_on: Option<&'a HandedOn>,
}

impl<'a> Offer<'a> {
    #[inline(always)]
    pub(crate) fn new(budgets: Budgets, handed_on: Option<&'a HandedOn>) -> Self {
        Offer {
            previous: OFFERED.replace(Some(budgets)),
            taken_before: TAKEN.replace(false),
            handed_on,
        }
    }
}

impl Drop for Offer<'_> {
    /// Notes whether a layer took the budgets, and puts back the offer from
    /// before, dropping this one if nobody took it.
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(handed_on) = self.handed_on
            && TAKEN.get()
        {
            handed_on.see();
        }
        // `replace`, not `set`: `set` goes through the key's lazy
        // initialization, a call on every use.
        drop(OFFERED.replace(self.previous.take()));
        TAKEN.replace(self.taken_before);
    }
}

/// The budgets the layer above offers on this thread ([`Offer`]), taken:
/// the first layer below to ask has them.
pub(crate) fn take_offered() -> Option<Budgets> {
    let offered = OFFERED.take();
    if offered.is_some() {
        TAKEN.replace(true);
    }
    offered
}

/// The budgets the layer above offers on this thread, left for the layer
/// that takes them.
fn offered() -> Option<Budgets> {
    let offered = OFFERED.take();
    drop(OFFERED.replace(offered.clone()));
    offered
}

/// Whether a layer's calls have been seen to hand its budgets on the
/// thread ([`Offer`]): until then, they go in the request's extensions
/// too. Shared by the clones of one service.
#[derive(Debug, Clone, Default)]
pub(crate) struct HandedOn(Arc<AtomicBool>);

impl HandedOn {
    /// Whether a layer below has taken the budgets from the thread.
    pub(crate) fn seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A layer below took the budgets from the thread.
    pub(crate) fn see(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether `request` is a gRPC call: its content type is `application/grpc`
/// or `application/grpc+<codec>`.
pub(crate) fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .get(..16)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("application/grpc"))
                && matches!(value.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_carry_the_count_of_previous_attempts() {
        let budget = AttemptBudget::new(3);
        let mut request = Request::post("/pkg.Service/Method")
            .header(CONTENT_TYPE, "application/grpc+proto")
            .body(())
            .unwrap();
        assert_eq!(budget.try_begin(&mut request), Some(1));
        assert!(!request.headers().contains_key(GRPC_PREVIOUS_RPC_ATTEMPTS));
        assert_eq!(budget.try_begin(&mut request), Some(2));
        assert_eq!(request.headers()[GRPC_PREVIOUS_RPC_ATTEMPTS], "1");
        assert_eq!(budget.remaining(), 1);
    }

    #[test]
    fn a_wait_budget_is_shared_lowered_never_raised_and_saturates() {
        let budget = WaitBudget::unlimited();
        assert!(budget.allows(Duration::MAX));
        let below = budget.clone();
        below.limit_to(Duration::from_secs(2));
        below.limit_to(Duration::from_secs(60));
        assert_eq!(budget.max(), Duration::from_secs(2), "shared, never raised");
        budget.spend(Duration::from_secs(1));
        assert_eq!(below.remaining(), Duration::from_secs(1));
        assert!(!below.allows(Duration::from_secs(30)));
        budget.spend(Duration::MAX);
        budget.spend(Duration::MAX);
        assert_eq!(budget.remaining(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_lowered_never_raised_and_bounds_the_waiting_left() {
        let budget = WaitBudget::unlimited();
        assert_eq!(budget.deadline(), None);
        assert_eq!(budget.remaining(), Duration::MAX);
        let now = Instant::now();
        let below = budget.clone();
        below.limit_until(now + Duration::from_secs(5));
        below.limit_until(now + Duration::from_secs(9));
        assert_eq!(budget.deadline(), Some(now + Duration::from_secs(5)));
        assert_eq!(budget.remaining(), Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(budget.remaining(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(budget.remaining(), Duration::ZERO);
        assert!(!budget.allows(Duration::from_nanos(1)));
    }

    #[test]
    fn an_offer_goes_to_the_first_taker_within_the_call_and_the_one_before_comes_back() {
        let outer = AttemptBudget::new(3);
        let inner = AttemptBudget::new(5);
        assert!(take_offered().is_none(), "nothing offered outside a call");
        let (outer_seen, inner_seen) = (HandedOn::default(), HandedOn::default());
        let outer_offer = Offer::new(Budgets::Attempts(outer.clone()), Some(&outer_seen));
        let inner_offer = Offer::new(Budgets::Attempts(inner.clone()), Some(&inner_seen));
        let taken = match take_offered() {
            Some(Budgets::Attempts(attempts)) => Some(attempts.max()),
            _ => None,
        };
        assert_eq!(taken, Some(5), "the innermost offer");
        assert!(take_offered().is_none(), "taken once");
        drop(inner_offer);
        assert!(inner_seen.seen());
        drop(outer_offer);
        assert!(!outer_seen.seen(), "the outer offer was not taken");
        assert!(take_offered().is_none(), "nothing left after the call");

        // A call that panics puts the offer from before back all the same.
        let seen = HandedOn::default();
        let offer = Offer::new(Budgets::Waits(WaitBudget::unlimited()), Some(&seen));
        let caught = std::panic::catch_unwind(|| {
            let _offer = Offer::new(Budgets::Attempts(inner.clone()), None);
            panic!("a service panicked")
        });
        assert!(caught.is_err());
        assert!(
            matches!(take_offered(), Some(Budgets::Waits(_))),
            "the offer from before is back after the panic"
        );
        drop(offer);
        assert!(seen.seen());
    }

    #[test]
    fn shared_by_finds_the_budget_handed_on_the_thread_and_leaves_it_offered() {
        let attempts = AttemptBudget::new(3);
        attempts.waits().limit_to(Duration::from_secs(2));
        let mut request = Request::get("/items").body(()).unwrap();
        let seen = HandedOn::default();
        let offer = Offer::new(Budgets::Attempts(attempts.clone()), Some(&seen));
        let waits = WaitBudget::shared_by(&mut request);
        assert_eq!(waits.max(), Duration::from_secs(2), "the offered account");
        waits.spend(Duration::from_secs(1));
        assert!(take_offered().is_some(), "still there for the layer below");
        drop(offer);
        assert!(seen.seen());
        assert!(
            request.extensions().is_empty(),
            "nothing put in the request"
        );
        assert_eq!(attempts.waits().spent(), Duration::from_secs(1));
        // Outside any call: a budget of its own, in the request.
        let waits = WaitBudget::shared_by(&mut request);
        assert_eq!(waits.max(), Duration::MAX);
        assert!(request.extensions().get::<WaitBudget>().is_some());
    }

    #[test]
    fn other_content_types_are_not_grpc() {
        let request = |content_type: &str| {
            Request::post("/")
                .header(CONTENT_TYPE, content_type)
                .body(())
                .unwrap()
        };
        assert!(is_grpc(&request("application/grpc")));
        assert!(is_grpc(&request("Application/GRPC;charset=x")));
        assert!(!is_grpc(&request("application/grpc-web")));
        assert!(!is_grpc(&request("application/json")));
    }
}
