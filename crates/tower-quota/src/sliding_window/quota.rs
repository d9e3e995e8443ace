//! Quotas and the limits a layer enforces.

use std::fmt;
use std::sync::Arc;

use super::Priority;
use crate::Key;
use std::time::Duration;

/// The longest window a quota may have. Longer windows are rejected at
/// construction so that no instant arithmetic can overflow later.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The largest safety margin a layer accepts.
pub const MAX_SAFETY_MARGIN: Duration = Duration::from_secs(60 * 60);

/// The longest [`sent_within`](Limits::sent_within) bound a layer accepts.
pub const MAX_SENT_WITHIN: Duration = Duration::from_secs(60 * 60);

/// One quota: at most `max_calls` units in *any* window of `window` length.
///
/// A quota made with [`Quota::new`] spends the request's cost: 1 unless the
/// layer has a cost function, in which case it is whatever the cost counts
/// (tokens, bytes, points). A quota made with [`Quota::per_request`] spends 1
/// per request whatever the cost, so one key can carry "500 requests and
/// 200,000 tokens per minute".
///
/// ```
/// use std::time::Duration;
/// use tower_quota::sliding_window::{InvalidQuota, Quota};
///
/// let quota = Quota::new(500, Duration::from_secs(60))?;
/// assert_eq!(quota.max_calls(), 500);
/// assert!(matches!(Quota::new(0, Duration::from_secs(1)), Err(InvalidQuota::ZeroMaxCalls)));
/// # Ok::<(), InvalidQuota>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    max_calls: u64,
    /// The window in nanoseconds: [`MAX_WINDOW`] fits, and a key's log,
    /// which keeps its quota, is 8 bytes smaller than with a `Duration`.
    window_nanos: u64,
    per_request: bool,
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("max_calls", &self.max_calls)
            .field("window", &self.window())
            .field("per_request", &self.per_request)
            .finish()
    }
}

impl Quota {
    /// A quota of `max_calls` in any `window`.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] when `max_calls` is 0, `window` is zero, or `window`
    /// is longer than [`MAX_WINDOW`].
    pub fn new(max_calls: u64, window: Duration) -> Result<Self, InvalidQuota> {
        Self::build(max_calls, window, false)
    }

    /// A quota that every request spends 1 of, whatever its cost: the
    /// requests-per-minute beside a tokens-per-minute quota.
    ///
    /// # Errors
    ///
    /// As for [`Quota::new`].
    pub fn per_request(max_calls: u64, window: Duration) -> Result<Self, InvalidQuota> {
        Self::build(max_calls, window, true)
    }

    fn build(max_calls: u64, window: Duration, per_request: bool) -> Result<Self, InvalidQuota> {
        if max_calls == 0 {
            return Err(InvalidQuota::ZeroMaxCalls);
        }
        if window.is_zero() {
            return Err(InvalidQuota::ZeroWindow);
        }
        if window > MAX_WINDOW {
            return Err(InvalidQuota::WindowTooLong(window));
        }
        let window_nanos =
            u64::try_from(window.as_nanos()).map_err(|_| InvalidQuota::WindowTooLong(window))?;
        Ok(Quota {
            max_calls,
            window_nanos,
            per_request,
        })
    }

    /// The most units admitted in any window.
    pub fn max_calls(&self) -> u64 {
        self.max_calls
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_nanos)
    }

    /// Whether every request spends 1 of this quota, whatever its cost.
    pub fn is_per_request(&self) -> bool {
        self.per_request
    }

    /// What a request of `cost` spends of this quota.
    pub fn units(&self, cost: u64) -> u64 {
        if self.per_request { 1 } else { cost }
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.max_calls, self.window())?;
        if self.per_request {
            f.write_str(" per request")?;
        }
        Ok(())
    }
}

/// Why a quota or a limiter setting was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidQuota {
    /// `max_calls` was 0: nothing could ever be admitted.
    ZeroMaxCalls,
    /// The window was zero: the limit would mean nothing.
    ZeroWindow,
    /// The window was longer than [`MAX_WINDOW`].
    WindowTooLong(Duration),
    /// No quota was given.
    NoQuota,
    /// The safety margin was longer than [`MAX_SAFETY_MARGIN`].
    SafetyMarginTooLong(Duration),
    /// The `sent_within` bound was zero or longer than [`MAX_SENT_WITHIN`].
    SentWithinOutOfRange(Duration),
    /// A reserved share was not a number from 0 up to (not including) 1,
    /// or was reserved for [`Priority::Batch`](super::Priority::Batch),
    /// which has no class below it.
    InvalidReserve(String),
}

impl fmt::Display for InvalidQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidQuota::ZeroMaxCalls => {
                f.write_str("invalid quota: max_calls must be at least 1")
            }
            InvalidQuota::ZeroWindow => {
                f.write_str("invalid quota: window must be longer than zero")
            }
            InvalidQuota::WindowTooLong(window) => {
                write!(
                    f,
                    "invalid quota: window {window:?} is longer than the maximum {MAX_WINDOW:?}"
                )
            }
            InvalidQuota::NoQuota => f.write_str("invalid limiter: at least one quota is required"),
            InvalidQuota::SafetyMarginTooLong(margin) => write!(
                f,
                "invalid limiter: safety margin {margin:?} is longer than the maximum {MAX_SAFETY_MARGIN:?}"
            ),
            InvalidQuota::InvalidReserve(why) => write!(f, "invalid reserved share: {why}"),
            InvalidQuota::SentWithinOutOfRange(bound) => write!(
                f,
                "invalid limiter: sent_within {bound:?} must be longer than zero and at most {MAX_SENT_WITHIN:?}"
            ),
        }
    }
}

impl std::error::Error for InvalidQuota {}

/// Everything a [`Store`](super::Store) needs to decide one admission: the
/// quotas of the key, the safety margin, and the overload bounds.
///
/// Built by [`SlidingWindowLayer`](super::SlidingWindowLayer); cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Limits {
    inner: Arc<LimitsInner>,
}

#[derive(Clone, PartialEq, Eq)]
struct LimitsInner {
    quotas: Vec<Quota>,
    safety_margin: Duration,
    sent_within: Duration,
    strict: bool,
    /// Quotas follow what the provider announces, up to the configured ones.
    follow_announced: bool,
    /// The caller reports every admission's answer (`Store::complete`).
    answers: bool,
    /// The caller reports refusals and acceptances too (`Store::refused`,
    /// `Store::accepted`).
    refusals: bool,
    max_wait: Option<Duration>,
    max_queue: Option<usize>,
    /// The share of each quota, in parts per million, that requests of each
    /// class leave free for the classes above it.
    reserved: [u32; Priority::COUNT],
    /// How long the front of a lower class waits before it goes first.
    promote_after: Option<Duration>,
}

/// Parts per million in a whole.
const MILLION: u32 = 1_000_000;

impl Limits {
    pub(crate) fn new(quotas: Vec<Quota>) -> Result<Self, InvalidQuota> {
        if quotas.is_empty() {
            return Err(InvalidQuota::NoQuota);
        }
        let safety_margin = default_safety_margin(&quotas);
        let sent_within = default_sent_within(&quotas);
        Ok(Limits {
            inner: Arc::new(LimitsInner {
                quotas,
                safety_margin,
                sent_within,
                strict: false,
                follow_announced: false,
                answers: false,
                refusals: false,
                max_wait: None,
                max_queue: None,
                reserved: [0; Priority::COUNT],
                promote_after: None,
            }),
        })
    }

    fn edit(&mut self, f: impl FnOnce(&mut LimitsInner)) {
        f(Arc::make_mut(&mut self.inner));
    }

    pub(crate) fn push_quota(&mut self, quota: Quota) {
        self.edit(|inner| inner.quotas.push(quota));
    }

    pub(crate) fn set_safety_margin(&mut self, margin: Duration) -> Result<(), InvalidQuota> {
        if margin > MAX_SAFETY_MARGIN {
            return Err(InvalidQuota::SafetyMarginTooLong(margin));
        }
        self.edit(|inner| inner.safety_margin = margin);
        Ok(())
    }

    pub(crate) fn set_sent_within(&mut self, bound: Duration) -> Result<(), InvalidQuota> {
        if bound.is_zero() || bound > MAX_SENT_WITHIN {
            return Err(InvalidQuota::SentWithinOutOfRange(bound));
        }
        self.edit(|inner| inner.sent_within = bound);
        Ok(())
    }

    pub(crate) fn set_strict(&mut self, strict: bool) {
        self.edit(|inner| inner.strict = strict);
    }

    pub(crate) fn set_follow_announced(&mut self, follow: bool) {
        self.edit(|inner| inner.follow_announced = follow);
    }

    /// Whether a key's quotas follow the sizes its provider announces, at
    /// most the configured ones (see
    /// [`SlidingWindowLayer::follow_announced_quotas`](super::SlidingWindowLayer::follow_announced_quotas)).
    pub fn follows_announced_quotas(&self) -> bool {
        self.inner.follow_announced
    }

    pub(crate) fn set_max_wait(&mut self, max_wait: Option<Duration>) {
        self.edit(|inner| inner.max_wait = max_wait);
    }

    pub(crate) fn set_max_queue(&mut self, max_queue: Option<usize>) {
        self.edit(|inner| inner.max_queue = max_queue);
    }

    /// Reserves `share` of every quota for requests of `class` and above:
    /// requests of the classes below leave it free.
    pub(crate) fn set_reserve(&mut self, class: Priority, share: f64) -> Result<(), InvalidQuota> {
        if !(0.0..1.0).contains(&share) {
            return Err(InvalidQuota::InvalidReserve(format!(
                "{share} for {class}: a share is from 0 up to (not including) 1"
            )));
        }
        if class == Priority::Batch {
            return Err(InvalidQuota::InvalidReserve(
                "for batch: no class is below it to leave it free".to_owned(),
            ));
        }
        // Rounded up: a reserve is at least what was asked.
        let ppm = (share * f64::from(MILLION)).ceil() as u32;
        self.edit(|inner| {
            for below in &mut inner.reserved[class.index() + 1..] {
                *below = (*below).max(ppm.min(MILLION - 1));
            }
        });
        Ok(())
    }

    pub(crate) fn set_promote_after(&mut self, after: Duration) {
        self.edit(|inner| inner.promote_after = Some(after));
    }

    /// The share of every quota (0 to 1) that requests of `class` leave
    /// free for the classes above it.
    pub fn reserved_share(&self, class: Priority) -> f64 {
        f64::from(self.inner.reserved[class.index()]) / f64::from(MILLION)
    }

    /// The units of a quota of `max_calls` that a request of `class`
    /// leaves free: the class's reserved share of `max_calls`, rounded up,
    /// and at most `max_calls - 1` (a reserve never shuts a class out).
    pub fn reserved_units(&self, class: Priority, max_calls: u64) -> u64 {
        let ppm = u128::from(self.inner.reserved[class.index()]);
        if ppm == 0 {
            return 0;
        }
        let reserved = (u128::from(max_calls) * ppm).div_ceil(u128::from(MILLION));
        u64::try_from(reserved)
            .unwrap_or(u64::MAX)
            .min(max_calls.saturating_sub(1))
    }

    /// Whether some class leaves a share free.
    pub fn reserves(&self) -> bool {
        self.inner.reserved.iter().any(|&ppm| ppm > 0)
    }

    /// How long the front of a class waits before it goes before the
    /// waiting requests of every class but the top one: the configured
    /// bound, or by default the shortest quota's window.
    pub fn promote_after(&self) -> Duration {
        self.inner.promote_after.unwrap_or_else(|| {
            self.quotas()
                .iter()
                .map(Quota::window)
                .min()
                .unwrap_or(Duration::ZERO)
        })
    }

    /// The quotas; a request is admitted only when every one has room.
    pub fn quotas(&self) -> &[Quota] {
        &self.inner.quotas
    }

    /// Whether `other` has the same quotas and safety margin: what a key's
    /// logs are built for. Limits shared by one layer's requests are one
    /// allocation, so the common case compares a pointer.
    pub(crate) fn same_windows(&self, other: &Limits) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.quotas() == other.quotas() && self.safety_margin() == other.safety_margin())
    }

    /// Extra time an admission is held in the window past `window`, so that a
    /// server which sees arrivals a little later than the client admits them
    /// never counts more than `max_calls` in its own window.
    pub fn safety_margin(&self) -> Duration {
        self.inner.safety_margin
    }

    /// How long after its admission a request is assumed to have reached the
    /// provider when its answer has not come back by then.
    ///
    /// A request reaches the provider between its admission and its answer.
    /// An admission is held in the window until a window after its answer,
    /// or a window after `admitted + sent_within` if that comes first — unless
    /// the limits are [strict](Limits::is_strict).
    pub fn sent_within(&self) -> Duration {
        self.inner.sent_within
    }

    /// The [`sent_within`](Limits::sent_within) bound of a cold key, in
    /// its first window in this process, and of a request beyond the most
    /// the key had in flight at once lately
    /// ([`InFlightPeak`](super::InFlightPeak)): three times as long (300 ms
    /// by default). It leaves room for connections still being opened (TCP
    /// and TLS 1.2 across a continent take three round trips), while a
    /// slow provider's answers do not hold those slots for their whole
    /// processing time. Only limits whose caller
    /// [reports answers](Limits::reports_answers) use it.
    pub fn cold_sent_within(&self) -> Duration {
        self.inner.sent_within.saturating_mul(3)
    }

    /// Whether an admission is held until its answer comes back, however
    /// long that takes, instead of at most [`sent_within`](Limits::sent_within):
    /// strict mode, with limits whose caller
    /// [reports the answers](Limits::reports_answers).
    pub fn is_strict(&self) -> bool {
        self.inner.strict && self.inner.answers
    }

    /// Whether the caller of [`Store::acquire`](super::Store::acquire) with
    /// these limits reports every admission's answer with
    /// [`Store::complete`](super::Store::complete), as the layer's services
    /// do: only then may a store hold an admission until its answer (strict
    /// mode) or give a cold key's first window a longer bound. Limits taken from
    /// [`SlidingWindowLayer::limits`](super::SlidingWindowLayer::limits) to
    /// call a store directly do not (unless made with
    /// [`reporting_answers`](Limits::reporting_answers)), and their
    /// admissions are always held for the `sent_within` bound at most.
    pub fn reports_answers(&self) -> bool {
        self.inner.answers
    }

    /// These limits, for a caller of a store that reports every admission's
    /// answer with [`Store::complete`](super::Store::complete) (the layer's
    /// services use it; a caller that forgets an answer leaves a strict
    /// admission held forever).
    #[must_use]
    pub fn reporting_answers(mut self) -> Self {
        self.edit(|inner| inner.answers = true);
        self
    }

    /// Whether the caller also tells the store of every answer whether the
    /// provider refused it ([`Store::refused`](super::Store::refused)) or
    /// accepted it ([`Store::accepted`](super::Store::accepted)): the
    /// layer's services do when their [`UsageFn`](crate::UsageFn)
    /// [reports refusals](crate::UsageFn::REPORTS_REFUSALS). Only then does
    /// a [`MemoryStore`](super::MemoryStore) pace a fresh key's first burst
    /// by its answers.
    pub fn reports_refusals(&self) -> bool {
        self.inner.answers && self.inner.refusals
    }

    /// These limits, for a caller that reports every answer, refusals and
    /// acceptances included (see [`reports_refusals`](Limits::reports_refusals)).
    #[must_use]
    pub fn reporting_refusals(mut self) -> Self {
        self.edit(|inner| {
            inner.answers = true;
            inner.refusals = true;
        });
        self
    }

    /// These limits, with `max_wait` lowered to `wait` when it is longer
    /// (or unset): a store's way to keep a request's deadline as its
    /// `max_wait` (see [`Store::acquire_placed`](super::Store::acquire_placed)).
    #[must_use]
    pub fn waiting_at_most(mut self, wait: Duration) -> Self {
        let max_wait = self.max_wait().map_or(wait, |max| max.min(wait));
        self.set_max_wait(Some(max_wait));
        self
    }

    /// The longest a request may wait for admission before it is refused.
    pub fn max_wait(&self) -> Option<Duration> {
        self.inner.max_wait
    }

    /// The most requests that may wait on one key.
    pub fn max_queue(&self) -> Option<usize> {
        self.inner.max_queue
    }

    /// Refuses a request of `key` costing `cost` when a quota could never
    /// hold it: it would wait forever.
    ///
    /// # Errors
    ///
    /// [`CostTooLarge`](super::CostTooLarge) naming the first such quota.
    pub fn check_cost(&self, key: &Key, cost: u64) -> Result<(), super::CostTooLarge> {
        self.check_cost_for(key, cost, None)
    }

    /// Refuses a request of `key` costing `cost` in `class` when a quota
    /// could never hold it beside the share its class leaves free (`None`:
    /// no share).
    ///
    /// # Errors
    ///
    /// [`CostTooLarge`](super::CostTooLarge) naming the first such quota,
    /// with the part of it the class may use as its `max_calls`.
    pub fn check_cost_for(
        &self,
        key: &Key,
        cost: u64,
        class: Option<Priority>,
    ) -> Result<(), super::CostTooLarge> {
        // A unit fits every quota: a class's reserve leaves at least one.
        if cost <= 1 {
            return Ok(());
        }
        let usable = |quota: &Quota| {
            let kept = class.map_or(0, |class| self.reserved_units(class, quota.max_calls()));
            quota.max_calls() - kept
        };
        match self
            .quotas()
            .iter()
            .find(|quota| quota.units(cost) > usable(quota))
        {
            Some(quota) => Err(super::CostTooLarge::new(
                key.clone(),
                cost,
                usable(quota),
                quota.window(),
            )),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("quotas", &self.inner.quotas)
            .field("safety_margin", &self.inner.safety_margin)
            .field("sent_within", &self.inner.sent_within)
            .field("strict", &self.inner.strict)
            .field("answers", &self.inner.answers)
            .field("refusals", &self.inner.refusals)
            .field("max_wait", &self.inner.max_wait)
            .field("max_queue", &self.inner.max_queue)
            .field("reserved", &self.inner.reserved)
            .field("promote_after", &self.inner.promote_after)
            .finish()
    }
}

/// The default safety margin: 0.01% of the shortest window (100 ppm), at
/// least 1 ms and at most 25 ms.
///
/// An admission is held until a window after its answer (or its
/// `sent_within` bound), and the request reached the provider by then: the
/// margin covers only what that argument leaves out. A provider whose
/// window boundary is inclusive (an arrival exactly one window later still
/// counts) needs a tick more: 1 ms. A provider whose clock runs at another
/// rate than the client's sees a window of a slightly different length:
/// 100 ppm is ten times what an NTP-disciplined clock drifts, 6 ms over a
/// minute and 25 ms (the cap) over an hour. A provider whose window runs
/// later than that is learned from its 429s (a `pacing_drift`), or set a
/// larger margin with
/// [`SlidingWindowLayer::safety_margin`](super::SlidingWindowLayer::safety_margin).
pub fn default_safety_margin(quotas: &[Quota]) -> Duration {
    let shortest = quotas
        .iter()
        .map(Quota::window)
        .min()
        .unwrap_or(Duration::ZERO);
    (shortest / 10_000).clamp(Duration::from_millis(1), Duration::from_millis(25))
}

/// The default [`sent_within`](Limits::sent_within) bound: a tenth of the
/// shortest window, at least 1 ms and at most 100 ms.
///
/// It matters only for requests whose answer has not come back a window
/// after their admission; every other admission is released a window after
/// its answer, which is exact whatever the network did. A tenth of a window
/// covers a cold connection's set-up (a TCP and TLS handshake across a
/// continent is 50–100 ms) and costs a slow provider's pipelined callers at
/// most 100 ms per window.
pub fn default_sent_within(quotas: &[Quota]) -> Duration {
    let shortest = quotas
        .iter()
        .map(Quota::window)
        .min()
        .unwrap_or(Duration::ZERO);
    (shortest / 10).clamp(Duration::from_millis(1), Duration::from_millis(100))
}
