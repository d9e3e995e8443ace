//! Exact sliding-window pacing: at most `max_calls` in *any* window.
//!
//! # The problem
//!
//! A provider that allows 20 requests per second usually means it: a
//! server-side sliding log that refuses the 21st request inside any
//! one-second span. A client that paces with fixed buckets (as
//! `tower::limit::RateLimit` does) can send 20 at the end of one bucket and
//! 20 at the start of the next — 40 in a few milliseconds — and be refused.
//! A client that spaces requests evenly (one per 50 ms) never bursts, and so
//! wastes the latency a burst would have saved.
//!
//! [`SlidingWindowLayer`] admits a burst of up to `max_calls` at once, then
//! admits each next request exactly when the oldest admission leaves the
//! window. No window of the quota's length ever holds more than `max_calls`
//! admissions, under any interleaving of callers, and no request waits while
//! the window has room for it.
//!
//! # What it guarantees
//!
//! - **Shared.** The state lives in a [`Store`] shared by every clone of the
//!   layer and of its services: cloning never multiplies the limit.
//! - **Per key, several quotas.** A key function picks the quota of each
//!   request (one global key by default); a key may carry several quotas
//!   (10 per second *and* 100 per minute), all respected.
//! - **Fair.** Waiters of one key are admitted in FIFO order. Only the head
//!   of each queue holds a timer, so each admission costs one timer expiry or
//!   one wake-up however many requests wait; no thread is blocked.
//! - **Cancellation-safe.** A request dropped while it waits consumes nothing
//!   and delays nobody.
//! - **Weighted.** A [cost function](SlidingWindowLayer::cost_fn) says what a
//!   request spends (tokens, bytes, points); quotas made with
//!   [`Quota::new`] spend the cost, per-request quotas
//!   ([`and_request_quota`](SlidingWindowLayer::and_request_quota)) spend 1,
//!   so "500 requests and 200,000 tokens per minute" is one key. A request
//!   costing more than a quota's whole capacity is refused at once with
//!   [`CostTooLarge`]. When the response tells the real usage, a
//!   [usage function](SlidingWindowLayer::usage_fn) corrects the estimate in
//!   the window where the request was admitted.
//! - **Bounded.** [`max_wait`](SlidingWindowLayer::max_wait) and
//!   [`max_queue`](SlidingWindowLayer::max_queue) turn overload into an
//!   [`Overloaded`] error naming the key and the wait it would have needed.
//!   Idle keys are evicted, so memory follows the active keys.
//! - **Exact where the provider counts.** The provider counts a request when
//!   it *arrives*, somewhere between the client's admission and the answer
//!   coming back; scheduling, a pooled connection, a TLS handshake and the
//!   network lie in between. Each admission therefore holds its slot until a
//!   window after the answer (plus a small
//!   [`safety_margin`](SlidingWindowLayer::safety_margin) for clocks that
//!   tick differently), so the provider's own sliding window never counts
//!   more than `max_calls`, however long the request took to get there. A
//!   request still in flight is assumed to have arrived within
//!   [`sent_within`](SlidingWindowLayer::sent_within) of its admission (a
//!   tenth of the window, at most 100 ms), so a slow provider does not hold
//!   every slot for its processing time. During a key's first window,
//!   while connections are still being opened, the assumption is three
//!   times as long (300 ms by default), and so it is for a request beyond
//!   the most the key had in flight at once in the last 5 s, which may
//!   open a connection too ([`InFlightPeak`]). The assumption needs a client
//!   whose tasks run when woken: one admission in sixteen measures how
//!   long its own task waits to run once it has handed its request on, and
//!   a wait of half the bound or more (a process with more work than
//!   cores) holds every admission in flight until its answer, as strict
//!   mode does, until a window passes without such a wait (a
//!   `pacing_lagging` event).
//!   [`strict`](SlidingWindowLayer::strict) mode assumes nothing, ever. A 429 for a request the log had room for widens
//!   the key's margin (with [`HttpFeedback`](crate::HttpFeedback) as the
//!   usage function, which the README stack and `ServiceBuilderExt` use) and
//!   says so in a `pacing_drift` event.
//!
//! # Strict mode
//!
//! With [`strict`](SlidingWindowLayer::strict), an admission holds its slot
//! until a window after its answer (a response or an error), or after the
//! moment its future was dropped. Claim: the provider then never counts more
//! than `max_calls` arrivals in any window of its own, whatever the delays.
//!
//! Take any `k` arrivals the provider sees within one window, and let `j`
//! be the one the client admitted last, at `t_j`. Every other request `i`
//! of the `k` was admitted no later than `t_j`, and arrived at `a_i` with
//! `a_i > a_j - window ≥ t_j - window` (a request arrives no earlier than
//! its admission). It was answered (or dropped) no earlier than it arrived,
//! so its slot is held until at least `a_i + window > t_j`: at `t_j` it
//! still held its slot. So when `j` was admitted, `k - 1` slots were held,
//! and the log admits only with room: `k - 1 + 1 ≤ max_calls`. ∎
//!
//! The one assumption is about dropped requests: a request dropped after
//! admission is taken to reach the provider no later than the drop (hyper
//! aborts its connection). The cost of strict mode is one round trip per
//! slot per window: at 20 per second with 30 ms answers, utilization is
//! about 1 / 1.03 = 97%. The default mode is the same argument with
//! `min(answer, admission + sent_within)` in place of the answer, and
//! assumes that a request reaches the provider within `sent_within` of its
//! admission; the property tests in `sliding_window/tests/arrival.rs` check
//! both against a simulated provider with random delays.
//!
//! # Providers that refuse bursts
//!
//! The exact log lets a window's whole quota go at once, which a provider
//! that enforces the same rate as a sliding log accepts. Providers that
//! enforce it without bursts (a leaky bucket or GCRA, common in gateways)
//! or as a sliding-window counter refuse most of such a burst. With a usage
//! function that reports refusals ([`HttpFeedback`](crate::HttpFeedback),
//! as in the README stack), each 429 halves the burst the key may send,
//! down to one request per `window / max_calls`, in the way of GCRA under
//! the log; after a quiet spell of 8 windows the burst doubles again, and a
//! doubling that meets a refusal within a window doubles the next spell (up
//! to 64 windows), until the burst reaches the quota and spacing turns off.
//! A provider that never refuses never sees spacing. Evenly spaced
//! requests still refused mean the provider's rate is below the configured
//! one: the key's rate is cut to 95 % of what the provider accepted in the
//! window, held for a quiet spell, then probed 5 % higher (one refusal per
//! spell of 4 to 16 windows, 64 near the quota, while the provider stays
//! where it is) and grown by half every window once a probe shows the
//! provider's rate rose. Each change of the burst is a `rate_adapted`
//! event. Only ever later than the log allows: the bound
//! above holds whatever is learned. The in-process store learns per key and
//! forgets with the key once it is idle; the Redis store does not learn
//! bursts.
//!
//! A fresh key does not wait for a refusal to learn: it starts as TCP does.
//! Its first request goes alone, and one more may go for each accepted
//! answer; an answer that says what the provider has left
//! ([`UsageFn::room`](crate::UsageFn::room): `X-RateLimit-Remaining` and
//! `-Limit`, the IETF fields) sets the burst at once, and spaces the key
//! before anything is refused when the provider has no room for a burst:
//! a little under the provider's rate, two requests never closer than a
//! timer tick more than its interval (a twentieth of the interval at
//! most), so that the network can bring two together without a refusal.
//! Past the first full window, the first freed slot goes alone and the key
//! waits for its answer: accepted, the key bursts as the log allows from
//! then on; refused (a sliding-window counter still weighs the full window
//! before), the key is spaced, and widens its margin too, in case the
//! refusal came from a sliding log whose window runs late. An answer is
//! awaited a sixteenth of the window at most.
//!
//! Measured against quota-mock at 20/1 s, 200 requests at concurrency 32
//! through the README stack (`tests/tests/shapes_e2e.rs`): a no-burst
//! provider went from 0.05–0.08 of its rate and 40 % refused arrivals to
//! 0.83–0.86 and 9.1 % with refusals alone (19 of them the first burst,
//! before any refusal came back), to 0.93–0.95 and none with the start,
//! and to 0.97 and none with a timer tick of room instead of 5 %;
//! a sliding-window counter from 0.49 and 21 % to 0.68–0.70 and 10 %, and
//! to 0.93–0.95 and one refusal; a provider that enforces 15/1 s against a configured 50/1 s,
//! from 52 % refused arrivals (26 of 300 requests failed) to 9–12 % (none
//! failed, most of the refusals in the first window's burst). A provider
//! whose undisclosed rate goes 30 → 15 → 45 per second under a key
//! configured for 50, 30 s each: 0.2 %, 0.5 % and 0.2 % of arrivals
//! refused and 0.99, 0.95 and 0.95 of its rate accepted over the second
//! half of each phase (`quota-bench -- phases`).
//!
//! # Quotas a provider announces
//!
//! With a usage function that reads them
//! ([`HttpFeedback`](crate::HttpFeedback)), a response that announces a
//! size for one of a key's configured quotas (same window: IETF
//! `RateLimit-Policy` `q` and `w`, or a dialect that names its window)
//! other than the configured one is reported once per change, as a
//! `quota_mismatch` event. With
//! [`follow_announced_quotas`](SlidingWindowLayer::follow_announced_quotas)
//! the key is held to the announced size from its next admission, at most
//! the configured one: against a provider configured at 50/1 s that
//! announces and enforces 20/1 s, the README stack saw no 429 after the
//! first answer and used 0.975 of the 20/s, and followed a raise to 40/1 s
//! within two windows (`tests/tests/calibration_e2e.rs`). The in-process
//! store follows and reports; the Redis store does neither yet.
//!
//! # Priorities, tenants and deadlines
//!
//! A key has one queue of waiting requests. Without a [`Place`] every
//! request has the same one and the queue is FIFO. With places:
//!
//! - **Classes.** A waiting [`Priority::Critical`] request goes before every
//!   waiting `Interactive` one, which goes before every `Batch` one; FIFO
//!   within a class (and a tenant). A share of each quota can be reserved
//!   for the upper classes ([`SlidingWindowLayer::reserve`]): lower classes
//!   leave it free, so a critical request finds room at once even while
//!   batch work saturates the key.
//! - **No starvation: aging.** A lower class's front that has been its
//!   class's front for [`promote_after`](SlidingWindowLayer::promote_after)
//!   (by default the shortest quota's window) goes before every waiting
//!   request but critical ones (the one that has waited longest first). Its
//!   wait for its own class's backlog does not count: that is FIFO, not
//!   starvation. Aging rather than a minimum share: it costs nothing while
//!   the upper classes leave room, and it bounds the wait of a class's
//!   front by `promote_after` plus the time the quota takes to have room
//!   for it, however much interactive work arrives — unless critical
//!   requests alone fill the quota.
//! - **Fair shares between tenants.** Requests of one class and different
//!   [`Tenant`]s share the class's admissions by weight: start-time fair
//!   queuing, where each request's tag is the later of the class's virtual
//!   time and its tenant's previous finish (a tag plus cost over weight),
//!   and the smallest tag goes first.
//!   A tenant with 10,000 queued requests does not delay a newcomer's first
//!   request by more than one request per other tenant; a tenant that goes
//!   idle leaves its share to the others and gets no credit for its idle
//!   time.
//! - **Deadlines.** A request whose earliest possible slot (its quotas, the
//!   requests ahead of it, its class's reserve) lies past its deadline is
//!   refused at once with [`DeadlineUnreachable`];
//!   one that was reachable on arrival but was pushed back (by a higher
//!   class arriving later) is refused at its deadline at the latest. A
//!   request is never admitted after its deadline. `max_wait` is the same
//!   bound, relative to the request's arrival.
//!
//! [`MemoryStore`] does all of this. A store that does not
//! ([`Store::acquire_placed`]'s default) keeps deadlines as `max_wait` and
//! orders requests as it always does.
//!
//! # Where it goes in a stack
//!
//! Innermost of the tower-quota layers, just outside the per-attempt timeout:
//! every attempt, retries included, spends quota, and a timeout does not
//! count the time spent waiting for room.
//!
//! # The readiness contract
//!
//! The key of a request is known only in `call`, so the wait happens in the
//! response future, not in `poll_ready` (which is the inner service's own).
//! The inner service that `poll_ready` readied moves into the response future
//! and is called once the request is admitted; it is never swapped for an
//! unpolled clone, which keeps services such as `tower::buffer::Buffer` and
//! tonic's `Channel` correct.
//!
//! # Errors
//!
//! The service's error is [`BoxError`](crate::BoxError), like tower's own
//! middleware. Downcast it to [`Overloaded`] or [`CostTooLarge`] for the
//! limiter's refusals; the inner service's errors pass through unchanged
//! inside the box.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_quota::sliding_window::SlidingWindowLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! let limiter = SlidingWindowLayer::new(2, Duration::from_secs(1))?
//!     .safety_margin(Duration::ZERO)?
//!     .key_fn(|request: &http::Request<()>| request.uri().path().to_owned());
//! let service = ServiceBuilder::new()
//!     .layer(limiter)
//!     .service(service_fn(|_request: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(tokio::time::Instant::now())
//!     }));
//!
//! let start = tokio::time::Instant::now();
//! let mut sent = Vec::new();
//! for _ in 0..3 {
//!     let request = http::Request::get("/items").body(())?;
//!     sent.push(service.clone().oneshot(request).await? - start);
//! }
//! // A burst of two at once; the third when the first leaves the window.
//! assert_eq!(sent, [Duration::ZERO, Duration::ZERO, Duration::from_secs(1)]);
//! # Ok(())
//! # }
//! ```

mod drift;
mod error;
mod events;
mod flight;
pub(crate) use events::overloaded;
mod future;
mod lag;
mod layer;
mod log;
mod memory;
mod pacer;
mod queue;
mod quota;
mod schedule;
mod service;
mod stamp;
mod store;

pub use drift::DriftMargin;
pub use error::{ConflictingQuotas, CostTooLarge, DeadlineUnreachable, OverloadReason, Overloaded};
pub use flight::{InFlightPeak, POOL_IDLE};
pub use future::ResponseFuture;
pub use lag::LagProbe;
pub use layer::SlidingWindowLayer;
pub use memory::{Acquire, MemoryStore};
pub use quota::{
    InvalidQuota, Limits, MAX_SAFETY_MARGIN, MAX_SENT_WITHIN, MAX_WINDOW, Quota,
    default_safety_margin, default_sent_within,
};
pub use schedule::{
    Deadline, Place, PlaceFn, PlaceFromExtensions, Priority, Tenant, UnknownPriority, Unplaced,
};
pub use service::SlidingWindow;
pub use store::{Admission, Completion, QuotaChange, Store};

#[cfg(test)]
mod tests;
