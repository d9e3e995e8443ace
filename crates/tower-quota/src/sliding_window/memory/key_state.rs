//! The state of one key in a [`MemoryStore`](super::MemoryStore): its
//! logs, its queue of waiters and what it learns from its provider.

use std::time::Duration;

use tokio::time::Instant;

use crate::sliding_window::drift::{self, DriftMargin};
use crate::sliding_window::events::{self, Adaptation};
use crate::sliding_window::flight::InFlightPeak;
use crate::sliding_window::log::{Counted, WindowLog};
use crate::sliding_window::pacer::{Adapted, Pacer};
use crate::sliding_window::queue::{Queue, Spot};
use crate::sliding_window::schedule::Priority;
use crate::sliding_window::stamp::Stamp;
use crate::sliding_window::store::{Admission, Completion, QuotaChange};
use crate::sliding_window::{Limits, Quota};
use crate::{Announced, Room};

/// The state of one key. The store's map holds it boxed together with its
/// key ([`Boxed`](crate::keymap::Boxed)): the map keeps room for a third
/// more entries than it holds, and that room then costs a pointer, not a
/// key and a state. What only some keys need is boxed again, behind one
/// pointer ([`Aside`]).
pub(super) struct KeyState {
    /// The limits its logs were made for: only their quotas and safety
    /// margin are read here, once for all the logs, which keep no copy.
    /// Other limits with the same quotas and margin count in the same logs
    /// (`conform`), whatever else they set.
    limits: Limits,
    /// One log per quota of `limits`, in their order.
    pub(super) windows: Logs,
    /// Its waiters' queue and what it learns from its provider, boxed
    /// together: made with the first waiter or the first thing learned,
    /// and kept for the key's life, as the queue's classes are.
    aside: Option<Box<Aside>>,
    /// Its requests in flight, and the most in flight at once lately; until
    /// a window after the key was made, the key is cold (its admissions get
    /// the cold bound).
    pub(super) flight: InFlightPeak,
}

/// A key's logs, one per quota: the one of a key with a single quota (most
/// keys) kept in place, without an allocation of its own.
pub(super) enum Logs {
    One(WindowLog),
    Many(Box<[WindowLog]>),
}

impl std::ops::Deref for Logs {
    type Target = [WindowLog];

    fn deref(&self) -> &[WindowLog] {
        match self {
            Logs::One(log) => std::slice::from_ref(log),
            Logs::Many(logs) => logs,
        }
    }
}

impl std::ops::DerefMut for Logs {
    fn deref_mut(&mut self) -> &mut [WindowLog] {
        match self {
            Logs::One(log) => std::slice::from_mut(log),
            Logs::Many(logs) => logs,
        }
    }
}

impl<'a> IntoIterator for &'a Logs {
    type Item = &'a WindowLog;
    type IntoIter = std::slice::Iter<'a, WindowLog>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut Logs {
    type Item = &'a mut WindowLog;
    type IntoIter = std::slice::IterMut<'a, WindowLog>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

/// What only some keys need: most never wait, and only those whose
/// provider refuses or announces (or whose caller reports refusals) learn.
/// One box for both: a key that learns (the README stack's, from its first
/// admission) pays for the queue's pointer, and a key that waits and learns
/// nothing for the room of what it would learn (176 bytes), where two
/// boxes would cost every key a pointer.
#[derive(Default)]
struct Aside {
    /// Its waiters (and the limits' `promote_after`), boxed with the first.
    queue: Queue,
    /// What the key learns from its provider: made with the key when its
    /// caller reports refusals, otherwise with the first announcement or
    /// refusal. `None` is a pacer that never spaces and no drift.
    learned: Option<Learned>,
}

/// The queue of a key that never had a waiter.
static NO_WAITERS: Queue = Queue::EMPTY;

/// What a key learns from its provider.
#[derive(Default)]
pub(super) struct Learned {
    pub(super) drift: DriftMargin,
    /// The burst and rate the key's provider tolerates, learned from its
    /// refusals.
    pub(super) pacer: Pacer,
    /// What the provider last announced for each window's quota; empty
    /// until its first announcement.
    pub(super) announced: Box<[Option<u64>]>,
}

impl KeyState {
    pub(super) fn new(limits: &Limits, now: Instant) -> Self {
        let shortest = drift::shortest_window(limits);
        KeyState {
            flight: InFlightPeak::cold_until(Stamp::of(now).saturating_add(shortest)),
            windows: Self::windows_for(limits),
            limits: limits.clone(),
            aside: limits.reports_refusals().then(|| {
                Box::new(Aside {
                    queue: Queue::default(),
                    learned: Some(Learned {
                        pacer: Pacer::new(true),
                        ..Learned::default()
                    }),
                })
            }),
        }
    }

    /// Its waiters.
    pub(super) fn queue(&self) -> &Queue {
        self.aside
            .as_deref()
            .map_or(&NO_WAITERS, |aside| &aside.queue)
    }

    /// Its waiters, to change: its [`Aside`] is made if it had none.
    pub(super) fn queue_mut(&mut self) -> &mut Queue {
        &mut self.aside.get_or_insert_with(Box::default).queue
    }

    /// What it learned, if anything.
    pub(super) fn learned_ref(&self) -> Option<&Learned> {
        self.aside.as_deref()?.learned.as_ref()
    }

    /// What it learned, if anything, to change.
    pub(super) fn learned_mut(&mut self) -> Option<&mut Learned> {
        self.aside.as_deref_mut()?.learned.as_mut()
    }

    /// The id the key's next admission takes, when its first log knows it
    /// (see [`WindowLog::next_id`]): every admission of the key is
    /// recorded in each of its logs, as an entry or as an id skipped.
    pub(super) fn next_id(&self) -> Option<u64> {
        self.windows.first()?.next_id()
    }

    /// What the key learned, made now if it had nothing to learn yet.
    pub(super) fn learned(&mut self) -> &mut Learned {
        self.aside
            .get_or_insert_with(Box::default)
            .learned
            .get_or_insert_with(Learned::default)
    }

    pub(super) fn pacer(&self) -> Option<&Pacer> {
        self.learned_ref().map(|learned| &learned.pacer)
    }

    fn windows_for(limits: &Limits) -> Logs {
        match limits.quotas() {
            [_] => Logs::One(WindowLog::new()),
            quotas => Logs::Many(quotas.iter().map(|_| WindowLog::new()).collect()),
        }
    }

    /// Each log with what it counts against.
    fn counted(&self) -> impl Iterator<Item = (&WindowLog, Counted)> {
        let margin = self.limits.safety_margin();
        self.windows
            .iter()
            .zip(self.limits.quotas())
            .map(move |(window, quota)| (window, Counted::new(quota, margin)))
    }

    /// [`counted`](Self::counted), each log to change.
    fn counted_mut(&mut self) -> impl Iterator<Item = (&mut WindowLog, Counted)> {
        let margin = self.limits.safety_margin();
        self.windows
            .iter_mut()
            .zip(self.limits.quotas())
            .map(move |(window, quota)| (window, Counted::new(quota, margin)))
    }

    /// One key has one set of quotas. A layer with other quotas may take
    /// over an idle key; a busy one is not replaced (its admissions would go
    /// uncounted): returns `false`.
    pub(super) fn conform(&mut self, limits: &Limits) -> bool {
        if !self.limits.same_windows(limits) {
            if !self.is_idle() {
                return false;
            }
            self.windows = Self::windows_for(limits);
            self.limits = limits.clone();
            if let Some(learned) = self.learned_mut() {
                learned.announced = Box::default();
            }
        }
        if let Some(aside) = self.aside.as_deref_mut() {
            aside.queue.set_promote_after(limits);
        }
        true
    }

    /// The provider announced `announced`: compares it with each window's
    /// quota, remembers it, and with `follow` holds the window to it.
    pub(super) fn announce(&mut self, announced: &[Announced], follow: bool) -> Vec<QuotaChange> {
        let mut changes = Vec::new();
        for quota in announced {
            // Requests and tokens announced for one window (OpenAI, Anthropic)
            // go to a per-request and a weighted quota; a lone announcement
            // goes to the window's quota, unless it counts tokens and the
            // quota counts only requests.
            let shared_window = announced
                .iter()
                .filter(|other| other.window == quota.window)
                .count()
                > 1;
            let quotas_of_window = self
                .limits
                .quotas()
                .iter()
                .filter(|configured| configured.window() == quota.window)
                .count();
            if shared_window && quotas_of_window < 2 {
                // Which of the two the one quota counts is not known.
                continue;
            }
            let mut candidates =
                self.limits
                    .quotas()
                    .iter()
                    .enumerate()
                    .filter(|(_, configured)| {
                        let kind = if shared_window {
                            quota.weighted != configured.is_per_request()
                        } else {
                            !quota.weighted || !configured.is_per_request()
                        };
                        configured.window() == quota.window && kind
                    });
            // One quota per window, or the announcement is ambiguous.
            let (Some((index, _)), None) = (candidates.next(), candidates.next()) else {
                continue;
            };
            let windows = self.windows.len();
            let announced = &mut self.learned().announced;
            if announced.len() < windows {
                let mut grown = announced.to_vec();
                grown.resize(windows, None);
                *announced = grown.into_boxed_slice();
            }
            if announced[index] == Some(quota.max_calls) {
                continue;
            }
            let first = announced[index].is_none();
            announced[index] = Some(quota.max_calls);
            let configured = self.limits.quotas()[index];
            let counted = Counted::new(&configured, self.limits.safety_margin());
            let window = &mut self.windows[index];
            let before = window.size(&counted);
            let held_to = if follow {
                window.resize(&counted, quota.max_calls)
            } else {
                configured.max_calls()
            };
            if held_to > before {
                self.wake_head();
            }
            // A first announcement that matches the configuration is no news.
            if !(first && quota.max_calls == configured.max_calls()) {
                changes.push(QuotaChange {
                    configured,
                    announced: quota.max_calls,
                    held_to,
                });
            }
        }
        changes
    }

    pub(super) fn shortest_window(&self) -> Duration {
        drift::shortest_window(&self.limits)
    }

    /// Whether a log of the shortest window holds nine tenths of its size
    /// or more: about a whole quota went out in the window.
    pub(super) fn log_near_quota(&self) -> bool {
        let shortest = self.shortest_window();
        self.counted()
            .filter(|(_, counted)| counted.quota().window() == shortest)
            .any(|(window, counted)| {
                window.held().saturating_mul(10) >= u128::from(window.size(&counted)) * 9
            })
    }

    pub(super) fn extra_margin(&self, now: Instant) -> Duration {
        self.learned_ref().map_or(Duration::ZERO, |learned| {
            learned.drift.extra(now, self.shortest_window())
        })
    }

    pub(super) fn prune(&mut self, now: Instant) {
        self.prune_at(Stamp::of(now));
    }

    /// [`prune`](Self::prune), with the stamp of the instant.
    pub(super) fn prune_at(&mut self, now: Stamp) {
        for window in &mut self.windows {
            window.prune(now);
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.queue().is_empty() && self.windows.iter().all(WindowLog::is_empty)
    }

    /// Whether a request of `cost` in `class` fits at `now`, whose stamp
    /// is `stamp`.
    pub(super) fn has_room(
        &self,
        (now, stamp): (Instant, Stamp),
        cost: u64,
        limits: &Limits,
        class: Priority,
    ) -> bool {
        self.counted()
            .all(|(w, counted)| w.has_room(&counted, cost, w.keep(&counted, limits, class, cost)))
            && self.pacer().is_none_or(|pacer| {
                pacer.earliest(cost, limits).is_none_or(|at| at <= now)
                    && pacer.awaits_answer_at(stamp, limits).is_none()
            })
    }

    /// Records an admission at `now`, whose stamp is `stamp`; returns the
    /// pacer's new burst if it changed.
    #[must_use]
    pub(super) fn record(
        &mut self,
        now: Instant,
        stamp: Stamp,
        cost: u64,
        id: u64,
        limits: &Limits,
        lagging: bool,
    ) -> Option<Adapted> {
        // A cold key (its first window) is opening connections and growing
        // pools, perhaps under a burst of work, and so is a key with more
        // requests in flight than it had at once lately: its requests may
        // take longer to get out, so its slots wait for their answers or
        // for Limits::cold_sent_within. Only a caller that reports answers
        // gets one (and counts its requests in flight).
        let answers = limits.reports_answers();
        let warm = !answers || !self.flight.exceeds_at(stamp, 1);
        if answers {
            self.flight.sent_at(stamp);
        }
        let sent_within = if warm {
            limits.sent_within()
        } else {
            limits.cold_sent_within()
        };
        // A client that lags cannot promise the bound: until answered.
        let until_answered = limits.is_strict() || (lagging && answers);
        let sent_by = (!until_answered).then(|| stamp.saturating_add(sent_within));
        let extra = self.extra_margin(now);
        for (window, counted) in self.counted_mut() {
            window.record(&counted, cost, id, sent_by, extra, answers);
        }
        let learned = self.learned_mut()?;
        learned.pacer.admitted_at(stamp, id, cost, limits)
    }

    /// The earliest instant the head fits (`None`: once an answer comes
    /// back), and the quota that decides it.
    pub(super) fn earliest(
        &self,
        now: Instant,
        cost: u64,
        limits: &Limits,
        class: Priority,
    ) -> (Option<Instant>, Option<Quota>) {
        let pacer = self.pacer();
        if let Some(until) = pacer.and_then(|pacer| pacer.awaits_answer(now, limits)) {
            // At the answer, or when the key stops waiting for it.
            return (Some(until), None);
        }
        let paced = pacer.and_then(|pacer| pacer.earliest(cost, limits));
        let mut latest: (Option<Instant>, Option<Quota>) =
            (Some(paced.map_or(now, |at| at.max(now))), None);
        for (window, counted) in self.counted() {
            let keep = window.keep(&counted, limits, class, cost);
            let at = window.earliest(&counted, now, cost, keep);
            let later = match (at, latest.0) {
                (None, Some(_)) => true,
                (Some(at), Some(current)) => at > current,
                (_, None) => false,
            };
            if later {
                latest = (at, Some(counted.quota()));
            }
        }
        latest
    }

    pub(super) fn projected_wait(
        &self,
        now: Instant,
        cost: u64,
        requests: u64,
        limits: &Limits,
        class: Priority,
    ) -> Duration {
        self.counted()
            .map(|(w, counted)| {
                let keep = w.keep(&counted, limits, class, cost);
                w.projected_wait(&counted, now, cost, requests, keep)
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The request that goes next.
    pub(super) fn head(&self, now: Instant) -> Option<Spot> {
        let queue = self.queue();
        queue.head(now, queue.promote_after())
    }

    pub(super) fn wake_head(&self) {
        if self.queue().is_empty() {
            // Nobody to wake: no clock read.
            return;
        }
        if let Some(head) = self.head(Instant::now()) {
            self.queue().wake(head);
        }
    }

    /// The provider accepted `admission`; `now` is read only while the key
    /// is in its start. Returns whether a waiting request may now go.
    pub(super) fn accepted(
        &mut self,
        admission: &Admission,
        room: &dyn Fn() -> Option<Room>,
        limits: &Limits,
        now: impl FnOnce() -> Instant,
    ) -> bool {
        let Some(learned) = self
            .learned_mut()
            .filter(|learned| learned.pacer.starting())
        else {
            return false;
        };
        let (adapted, opened) = learned.pacer.accepted(now(), admission.id(), room, limits);
        if let Some(adapted) = adapted {
            events::rate_adapted(admission.key(), adapted, Adaptation::Announced);
        }
        opened
    }

    /// `admission` ended at `now`, answered or dropped. Returns whether
    /// anything changed that a waiting request may look at.
    pub(super) fn answered(
        &mut self,
        admission: &Admission,
        completion: Completion,
        limits: &Limits,
        now: Instant,
    ) -> bool {
        // A dropped request may still be on its way: it keeps its bound, if
        // it has one (strict mode assumes a drop stops it).
        let dropped = (completion == Completion::Dropped && !limits.is_strict())
            .then(|| limits.sent_within());
        if limits.reports_answers() {
            self.flight.ended();
        }
        let extra = self.extra_margin(now);
        let at = Stamp::of(now);
        let mut changed = self
            .learned_mut()
            .is_some_and(|learned| learned.pacer.answered(admission.id()));
        for (window, counted) in self.counted_mut() {
            changed |= window.answer(&counted, admission.id(), at, extra, dropped);
        }
        changed
    }

    /// Changes the cost of admission `id` to `actual` in the logs of the
    /// quotas that count costs; returns whether anything changed.
    pub(super) fn correct(&mut self, id: u64, actual: u64) -> bool {
        let mut changed = false;
        for (window, quota) in self.windows.iter_mut().zip(self.limits.quotas()) {
            if !quota.is_per_request() {
                changed |= window.correct(id, actual);
            }
        }
        changed
    }

    /// Removes a waiter (admitted or given up) and wakes the one that goes
    /// next.
    pub(super) fn leave(&mut self, spot: Spot, admitted: bool, now: Instant) {
        if self.queue_mut().remove(spot, admitted, now)
            && let Some(head) = self.head(now)
        {
            self.queue().wake(head);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sliding_window::Quota;

    /// Every key of a store holds one: its limits, one log in place (with
    /// its first entry), its requests in flight, and a pointer to what only
    /// some keys need.
    #[test]
    fn a_key_state_is_72_bytes() {
        assert_eq!(std::mem::size_of::<KeyState>(), 72);
    }

    /// A key that never waits and learns nothing allocates nothing aside;
    /// one whose caller reports refusals learns from its first admission,
    /// and a waiter or a refusal makes the box of any other.
    #[test]
    fn only_a_key_that_waits_or_learns_has_anything_aside() {
        let quota = Quota::new(10, Duration::from_secs(1)).unwrap();
        let limits = Limits::new(vec![quota]).unwrap().reporting_answers();
        let now = Instant::now();
        let mut state = KeyState::new(&limits, now);
        assert!(state.aside.is_none());
        assert!(state.queue().is_empty() && state.pacer().is_none());
        assert!(state.conform(&limits));
        assert!(state.aside.is_none(), "conforming reads, makes nothing");
        state.learned();
        assert!(state.aside.is_some() && state.pacer().is_some());

        let mut state = KeyState::new(&limits, now);
        state.queue_mut();
        assert!(state.aside.is_some() && state.pacer().is_none());

        let feedback = KeyState::new(&limits.reporting_refusals(), now);
        assert!(feedback.pacer().is_some());
    }

    /// A key whose caller reports refusals holds one from its first
    /// admission on.
    #[test]
    fn what_a_key_learns_is_176_bytes() {
        assert_eq!(std::mem::size_of::<Learned>(), 176);
    }
}
