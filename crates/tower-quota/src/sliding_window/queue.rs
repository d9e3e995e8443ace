//! The waiting requests of one key: priority classes, start-time fair
//! queuing between tenants, FIFO within a tenant, aging between classes.
//! See [`schedule`](super::schedule) for the rules.

use std::collections::{HashMap, VecDeque};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::Limits;
use super::schedule::{Priority, Tenant};
use crate::Key;

/// Virtual time a unit of cost takes at weight 1.
const SCALE: u64 = 1 << 16;

type Tenants = HashMap<Key, u64, foldhash::fast::RandomState>;

/// A waiting request's place: its class, its tag (start virtual time) and
/// its arrival number. Waiters of a class go in `(tag, id)` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spot {
    class: usize,
    tag: u64,
    id: u64,
}

pub(super) struct Waiter {
    cost: u64,
    waker: Option<Waker>,
}

/// Waiters cancelled in the middle of a class are compacted out once they
/// are this many and more than half of it.
const COMPACT_AT: usize = 64;

struct Entry {
    key: (u64, u64),
    waiter: Waiter,
    cancelled: bool,
}

/// A class's waiters in `(tag, id)` order. Without tenants every new
/// waiter goes at the back, and the one admitted leaves from the front:
/// O(1) whatever the length, as a plain FIFO queue. A waiter that leaves
/// from the middle is marked and swept out later. Invariant: the front,
/// if any, is not cancelled.
#[derive(Default)]
struct Waiters {
    entries: VecDeque<Entry>,
    cancelled: usize,
}

impl Waiters {
    fn len(&self) -> usize {
        self.entries.len() - self.cancelled
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn first(&self) -> Option<((u64, u64), &Waiter)> {
        self.entries.front().map(|entry| (entry.key, &entry.waiter))
    }

    fn index(&self, key: (u64, u64)) -> Option<usize> {
        // The head and the waiter just queued, without a search: a search
        // of a long queue misses the cache at every step.
        if self.entries.front().is_some_and(|entry| entry.key == key) {
            return Some(0);
        }
        let last = self.entries.len().checked_sub(1)?;
        let index = if self.entries[last].key == key {
            last
        } else {
            self.entries
                .binary_search_by_key(&key, |entry| entry.key)
                .ok()?
        };
        (!self.entries[index].cancelled).then_some(index)
    }

    fn get(&self, key: (u64, u64)) -> Option<&Waiter> {
        self.index(key).map(|index| &self.entries[index].waiter)
    }

    fn get_mut(&mut self, key: (u64, u64)) -> Option<&mut Waiter> {
        self.index(key).map(|index| &mut self.entries[index].waiter)
    }

    fn insert(&mut self, key: (u64, u64), waiter: Waiter) {
        let entry = Entry {
            key,
            waiter,
            cancelled: false,
        };
        if self.entries.back().is_none_or(|last| last.key < key) {
            self.entries.push_back(entry);
        } else {
            let index = self.entries.partition_point(|other| other.key < key);
            self.entries.insert(index, entry);
        }
    }

    /// Removes a waiter; returns its cost.
    fn remove(&mut self, key: (u64, u64)) -> Option<u64> {
        let index = self.index(key)?;
        if index == 0 {
            let cost = self
                .entries
                .pop_front()
                .map_or(0, |entry| entry.waiter.cost);
            while self.entries.front().is_some_and(|entry| entry.cancelled) {
                self.entries.pop_front();
                self.cancelled -= 1;
            }
            return Some(cost);
        }
        let entry = &mut self.entries[index];
        entry.cancelled = true;
        entry.waiter.waker = None;
        let cost = entry.waiter.cost;
        self.cancelled += 1;
        if self.cancelled >= COMPACT_AT && self.cancelled * 2 > self.entries.len() {
            self.entries.retain(|entry| !entry.cancelled);
            self.cancelled = 0;
        }
        Some(cost)
    }

    /// Whether every waiter goes before `key`.
    fn all_before(&self, key: (u64, u64)) -> bool {
        self.entries.back().is_none_or(|last| last.key < key)
    }

    /// The waiters that go before `key`.
    fn before(&self, key: (u64, u64)) -> impl Iterator<Item = &Waiter> {
        self.entries
            .iter()
            .take_while(move |entry| entry.key < key)
            .filter(|entry| !entry.cancelled)
            .map(|entry| &entry.waiter)
    }
}

#[derive(Default)]
struct Class {
    waiters: Waiters,
    /// The tag of the class's last admission.
    vtime: u64,
    /// Since when the front has been the front.
    front_since: Option<Instant>,
    /// The finish tag of requests without a tenant.
    untenanted: u64,
    /// The finish tag of each tenant that has one past `vtime`.
    tenants: Tenants,
    cost: u64,
}

impl Class {
    fn front(&self) -> Option<(Spot, &Waiter)> {
        self.waiters
            .first()
            .map(|((tag, id), waiter)| (Spot { class: 0, tag, id }, waiter))
    }
}

/// A key's waiters, allocated when the first one arrives: most keys never
/// wait, and an empty queue is a pointer.
#[derive(Default)]
pub(super) struct Queue {
    classes: Option<Box<Classes>>,
}

impl Queue {
    /// Nobody ever waited.
    pub(super) const EMPTY: Queue = Queue { classes: None };

    pub(super) fn is_empty(&self) -> bool {
        self.classes
            .as_ref()
            .is_none_or(|classes| classes.is_empty())
    }

    pub(super) fn len(&self) -> usize {
        self.classes.as_ref().map_or(0, |classes| classes.len())
    }

    /// The ticket a request of `priority` for `tenant` would get now.
    pub(super) fn spot(&self, priority: Priority, tenant: Option<&Tenant>) -> Spot {
        match &self.classes {
            Some(classes) => classes.spot(priority, tenant),
            // Nobody ever waited: the first tag and id.
            None => Spot {
                class: priority.index(),
                tag: 0,
                id: 0,
            },
        }
    }

    /// Queues the request `spot` was made for, just made by
    /// [`Queue::spot`] with the same tenant.
    pub(super) fn insert(
        &mut self,
        ticket: Spot,
        tenant: Option<&Tenant>,
        cost: u64,
        now: Instant,
        waker: &Waker,
    ) {
        self.classes
            .get_or_insert_with(Box::default)
            .insert(ticket, tenant, cost, now, waker);
    }

    /// The request that goes next (see [`Classes::head`]).
    pub(super) fn head(&self, now: Instant, promote_after: Duration) -> Option<Spot> {
        self.classes.as_ref()?.head(now, promote_after)
    }

    /// The limits' `promote_after` the key's waiters were queued under
    /// (kept with them: a key that never waits does not hold it).
    pub(super) fn promote_after(&self) -> Duration {
        self.classes
            .as_ref()
            .map_or(Duration::MAX, |classes| classes.promote_after)
    }

    /// Sets what [`promote_after`](Self::promote_after) returns to that of
    /// `limits`, if anyone ever waited (read only then: it may be a minimum
    /// over the quotas).
    pub(super) fn set_promote_after(&mut self, limits: &Limits) {
        if let Some(classes) = self.classes.as_mut() {
            classes.promote_after = limits.promote_after();
        }
    }

    /// Whether a new request of `priority` would find nobody of its class
    /// or above waiting (it may then go at once, if it fits).
    pub(super) fn none_before(&self, priority: Priority) -> bool {
        self.classes
            .as_ref()
            .is_none_or(|classes| classes.none_before(priority))
    }

    pub(super) fn get(&self, ticket: Spot) -> Option<&Waiter> {
        self.classes.as_ref()?.get(ticket)
    }

    pub(super) fn contains(&self, ticket: Spot) -> bool {
        self.get(ticket).is_some()
    }

    pub(super) fn priority(ticket: Spot) -> Priority {
        Priority::ALL[ticket.class]
    }

    pub(super) fn register(&mut self, ticket: Spot, waker: &Waker) {
        if let Some(classes) = &mut self.classes {
            classes.register(ticket, waker);
        }
    }

    /// Removes a waiter (see [`Classes::remove`]); returns whether it was
    /// there.
    pub(super) fn remove(&mut self, ticket: Spot, admitted: bool, now: Instant) -> bool {
        self.classes
            .as_mut()
            .is_some_and(|classes| classes.remove(ticket, admitted, now))
    }

    /// Wakes the waiter of `ticket` (the head, usually), if it waits.
    pub(super) fn wake(&self, ticket: Spot) {
        if let Some(classes) = &self.classes {
            classes.wake(ticket);
        }
    }

    /// The requests, and their cost, that go before the request of a
    /// ticket not yet inserted (see [`Classes::ahead`]).
    pub(super) fn ahead(&self, ticket: Spot) -> (usize, u64) {
        self.classes
            .as_ref()
            .map_or((0, 0), |classes| classes.ahead(ticket))
    }
}

/// The waiters of a key, by class.
#[derive(Default)]
pub(super) struct Classes {
    classes: [Class; Priority::COUNT],
    len: usize,
    next_id: u64,
    /// The limits' `promote_after`, for choosing the head.
    promote_after: Duration,
}

impl Classes {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The ticket a request of `priority` for `tenant` would get now.
    pub(super) fn spot(&self, priority: Priority, tenant: Option<&Tenant>) -> Spot {
        let index = priority.index();
        let class = &self.classes[index];
        let previous = match tenant {
            Some(tenant) => class.tenants.get(tenant.name()).copied().unwrap_or(0),
            None => class.untenanted,
        };
        Spot {
            class: index,
            tag: class.vtime.max(previous),
            id: self.next_id,
        }
    }

    /// Queues the request `spot` was made for, just made by
    /// [`Queue::spot`] with the same tenant.
    pub(super) fn insert(
        &mut self,
        ticket: Spot,
        tenant: Option<&Tenant>,
        cost: u64,
        now: Instant,
        waker: &Waker,
    ) {
        let class = &mut self.classes[ticket.class];
        let weight = tenant.map_or(1, Tenant::weight);
        let finish = ticket
            .tag
            .saturating_add(cost.saturating_mul(SCALE) / u64::from(weight).max(1));
        match tenant {
            Some(tenant) => {
                // Tenants whose finish has passed add nothing: keep the map
                // to about the tenants that wait.
                if class.tenants.len() > 2 * class.waiters.len() + 16 {
                    let vtime = class.vtime;
                    class.tenants.retain(|_, finish| *finish > vtime);
                    class.tenants.shrink_to_fit();
                }
                class.tenants.insert(tenant.name().clone(), finish);
            }
            None => class.untenanted = finish,
        }
        self.next_id = ticket.id + 1;
        if class.waiters.is_empty() {
            class.front_since = Some(now);
        }
        class.cost = class.cost.saturating_add(cost);
        class.waiters.insert(
            (ticket.tag, ticket.id),
            Waiter {
                cost,
                waker: Some(waker.clone()),
            },
        );
        self.len += 1;
    }

    /// The request that goes next: the front of the highest class, unless
    /// the front of another class has been its class's front for
    /// `promote_after` (it waits for other classes, not for its own
    /// backlog): then the one that has been front the longest, unless a
    /// critical request waits.
    pub(super) fn head(&self, now: Instant, promote_after: Duration) -> Option<Spot> {
        let mut first = None;
        let mut aged: Option<(Instant, Spot)> = None;
        for (index, class) in self.classes.iter().enumerate() {
            let Some((mut ticket, _)) = class.front() else {
                continue;
            };
            ticket.class = index;
            if index == Priority::Critical.index() {
                return Some(ticket);
            }
            if first.is_none() {
                // The highest class waiting goes first anyway.
                first = Some(ticket);
                continue;
            }
            let since = class.front_since.unwrap_or(now);
            if now.saturating_duration_since(since) >= promote_after
                && aged.is_none_or(|(at, _)| since < at)
            {
                aged = Some((since, ticket));
            }
        }
        aged.map(|(_, ticket)| ticket).or(first)
    }

    /// Whether a new request of `priority` would find nobody of its class
    /// or above waiting (it may then go at once, if it fits).
    pub(super) fn none_before(&self, priority: Priority) -> bool {
        self.classes[..=priority.index()]
            .iter()
            .all(|class| class.waiters.is_empty())
    }

    pub(super) fn get(&self, ticket: Spot) -> Option<&Waiter> {
        self.classes[ticket.class]
            .waiters
            .get((ticket.tag, ticket.id))
    }

    pub(super) fn register(&mut self, ticket: Spot, waker: &Waker) {
        if let Some(waiter) = self.classes[ticket.class]
            .waiters
            .get_mut((ticket.tag, ticket.id))
        {
            match &waiter.waker {
                Some(current) if current.will_wake(waker) => {}
                _ => waiter.waker = Some(waker.clone()),
            }
        }
    }

    /// Removes a waiter: admitted (the class's virtual time moves to its
    /// tag) or given up. Returns whether it was there.
    pub(super) fn remove(&mut self, ticket: Spot, admitted: bool, now: Instant) -> bool {
        let class = &mut self.classes[ticket.class];
        let was_front = class
            .waiters
            .first()
            .is_some_and(|(key, _)| key == (ticket.tag, ticket.id));
        let Some(cost) = class.waiters.remove((ticket.tag, ticket.id)) else {
            return false;
        };
        if was_front {
            class.front_since = (!class.waiters.is_empty()).then_some(now);
        }
        class.cost = class.cost.saturating_sub(cost);
        if admitted {
            class.vtime = class.vtime.max(ticket.tag);
        }
        if class.waiters.is_empty() && !class.tenants.is_empty() {
            // Nobody contends: the tenants' tags no longer matter, and the
            // memory of a crowd of tenants goes back.
            class.tenants = Tenants::default();
        }
        self.len -= 1;
        true
    }

    /// Wakes the waiter of `ticket` (the head, usually), if it waits.
    pub(super) fn wake(&self, ticket: Spot) {
        if let Some(waker) = self.get(ticket).and_then(|w| w.waker.as_ref()) {
            waker.wake_by_ref();
        }
    }

    /// The requests, and their cost, that go before the request of a
    /// ticket not yet inserted: every waiter of the classes above, and
    /// those of its own class with a smaller tag. Aging may move lower classes'
    /// fronts ahead later; they are not counted.
    pub(super) fn ahead(&self, ticket: Spot) -> (usize, u64) {
        let mut count = 0usize;
        let mut cost = 0u64;
        for class in &self.classes[..ticket.class] {
            count += class.waiters.len();
            cost = cost.saturating_add(class.cost);
        }
        let own = &self.classes[ticket.class];
        let key = (ticket.tag, ticket.id);
        if own.waiters.all_before(key) {
            // Behind every waiter of its class: the common case, O(1).
            count += own.waiters.len();
            cost = cost.saturating_add(own.cost);
        } else {
            for waiter in own.waiters.before(key) {
                count += 1;
                cost = cost.saturating_add(waiter.cost);
            }
        }
        (count, cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn push(queue: &mut Queue, priority: Priority, tenant: Option<&Tenant>, now: Instant) -> Spot {
        let ticket = queue.spot(priority, tenant);
        queue.insert(ticket, tenant, 1, now, Waker::noop());
        ticket
    }

    /// Admits the head `n` times; returns the tenants' names in order.
    fn drain(queue: &mut Queue, tickets: &[(Spot, &str)], now: Instant, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let head = queue.head(now, Duration::MAX).expect("a waiter");
                assert!(queue.remove(head, true, now));
                tickets
                    .iter()
                    .find(|(t, _)| *t == head)
                    .map(|(_, name)| (*name).to_owned())
                    .expect("a known ticket")
            })
            .collect()
    }

    #[test]
    fn classes_go_in_order_and_fifo_within_a_class() {
        let now = Instant::now();
        let mut queue = Queue::default();
        let b1 = push(&mut queue, Priority::Batch, None, now);
        let i1 = push(&mut queue, Priority::Interactive, None, now);
        let b2 = push(&mut queue, Priority::Batch, None, now);
        let c1 = push(&mut queue, Priority::Critical, None, now);
        let i2 = push(&mut queue, Priority::Interactive, None, now);
        let order: Vec<_> = (0..5)
            .map(|_| {
                let head = queue.head(now, Duration::MAX).unwrap();
                queue.remove(head, true, now);
                head
            })
            .collect();
        assert_eq!(order, [c1, i1, i2, b1, b2]);
        assert!(queue.is_empty());
    }

    #[test]
    fn an_aged_front_goes_before_interactive_but_not_before_critical() {
        let start = Instant::now();
        let mut queue = Queue::default();
        let batch = push(&mut queue, Priority::Batch, None, start);
        let interactive = push(&mut queue, Priority::Interactive, None, start);
        let _second = push(&mut queue, Priority::Interactive, None, start);
        let promote = Duration::from_secs(2);
        assert_eq!(queue.head(start, promote), Some(interactive));
        // The interactive front is replaced by its own backlog: that is no
        // wait for another class. The batch front has waited 5 s for them.
        let later = start + Duration::from_secs(5);
        assert!(queue.remove(interactive, true, later));
        assert_eq!(queue.head(later, promote), Some(batch));
        let critical = push(&mut queue, Priority::Critical, None, later);
        assert_eq!(queue.head(later, promote), Some(critical));
    }

    #[test]
    fn tenants_share_by_weight_and_a_newcomer_does_not_wait_for_a_backlog() {
        let now = Instant::now();
        let mut queue = Queue::default();
        let heavy = Tenant::weighted("heavy", 2);
        let light = Tenant::new("light");
        let mut tickets = Vec::new();
        for _ in 0..100 {
            tickets.push((
                push(&mut queue, Priority::Batch, Some(&heavy), now),
                "heavy",
            ));
            tickets.push((
                push(&mut queue, Priority::Batch, Some(&light), now),
                "light",
            ));
        }
        let order = drain(&mut queue, &tickets, now, 90);
        let heavy_count = order.iter().filter(|name| *name == "heavy").count();
        assert_eq!(heavy_count, 60, "{order:?}");
        // A newcomer's first request goes within one round of the others.
        let newcomer = Tenant::new("new");
        let ticket = push(&mut queue, Priority::Batch, Some(&newcomer), now);
        tickets.push((ticket, "new"));
        let next = drain(&mut queue, &tickets, now, 4);
        assert!(next.iter().any(|name| name == "new"), "{next:?}");
    }

    #[test]
    fn ahead_counts_classes_above_and_smaller_tags_of_its_own() {
        let now = Instant::now();
        let mut queue = Queue::default();
        push(&mut queue, Priority::Batch, None, now);
        push(&mut queue, Priority::Critical, None, now);
        let backlog = Tenant::new("backlog");
        for _ in 0..10 {
            push(&mut queue, Priority::Interactive, Some(&backlog), now);
        }
        let newcomer = queue.spot(Priority::Interactive, Some(&Tenant::new("n")));
        // The critical one and the backlog's first (same tag, earlier id).
        assert_eq!(queue.ahead(newcomer), (2, 2));
        let last = queue.spot(Priority::Interactive, Some(&backlog));
        assert_eq!(queue.ahead(last), (11, 11));
    }
}
