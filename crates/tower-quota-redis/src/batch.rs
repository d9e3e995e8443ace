//! Coalescing: the exact admissions of one key that arrive while a script
//! call for the key is in flight wait for it, then go together in one
//! call, which admits them one after another in arrival order.
//!
//! The first admission of an idle key is sent at once by its own future
//! (no added latency at concurrency 1). The admissions that arrive while
//! it is in flight are sent by a spawned task, as one batch: as soon as
//! [`SECOND_CALL`] of them wait (a second call in flight, so that Redis
//! decides one batch while the next is on its way and the answers of the
//! one before are read), or else when the call in flight comes back. At
//! most two calls of a key are in flight, and a call is sent only once
//! every call before it has been sent: on one connection Redis runs them
//! in that order, so the key's requests are decided in arrival order. A
//! key's entry in [`Lanes`] exists while a call for it is in flight.
//!
//! Cancellation keeps the guarantee of a single call: a request dropped
//! before its batch is sent is left out; one dropped while its batch is in
//! flight gets its decision dropped with it, and the [`Reservation`] in
//! that decision removes what the script recorded for it.

use std::sync::{Arc, Mutex};

use foldhash::HashMap;

use tokio::sync::oneshot;
use tower_quota::Key;
use tower_quota::sliding_window::Priority;

use crate::error::RedisStoreError;
use crate::names::Names;
use crate::store::{Inner, Reservation, lock};

/// The most requests sent in one call; more wait for the next. Keeps the
/// script's argument lists well within Lua's limits.
pub(crate) const MAX_BATCH: usize = 256;

/// One request of a batch, as the script takes it.
#[derive(Clone, Copy)]
pub(crate) struct Request {
    pub(crate) id: u64,
    pub(crate) cost: u64,
    /// The longest wait the request accepts, in µs; -1: none.
    pub(crate) max_wait: i64,
    /// Its priority class: what it leaves free of each quota.
    pub(crate) class: Priority,
    /// A reservation already recorded, asking to move up (never batched).
    pub(crate) move_up: bool,
}

/// What the script decided for one request: its row of the reply
/// (status, wait, queued, limiting, floor) or the error, and what to remove if
/// the request is dropped before its slot (a call that timed out may
/// still run).
pub(crate) struct Outcome {
    pub(crate) decision: Result<[i64; 5], RedisStoreError>,
    pub(crate) reservation: Reservation,
}

struct Member {
    request: Request,
    reply: oneshot::Sender<Outcome>,
}

struct Lane {
    names: Arc<Names>,
    waiting: Vec<Member>,
    /// The key's calls in flight: 1 or 2.
    in_flight: u8,
    /// Whether a spawned call has yet to send its command: no later call
    /// may go before it does.
    unsent: bool,
}

/// The fewest waiting requests sent as a second call while one is in
/// flight. Fewer wait for the call in flight to come back: a call costs
/// Redis about as much as a dozen admissions of a batch.
pub(crate) const SECOND_CALL: usize = 16;

/// The most calls of one key in flight at once.
const MAX_IN_FLIGHT: u8 = 2;

/// The keys with a call in flight, and the requests waiting for it.
#[derive(Default)]
pub(crate) struct Lanes {
    lanes: Mutex<HashMap<Key, Lane>>,
}

/// How a request goes to Redis.
pub(crate) enum Join {
    /// No call for the key is in flight: send it now, alone, and hand the
    /// lane on when the call is over (see [`Flight`]).
    Lead(Flight),
    /// Sent with the next batch: the decision comes through the channel.
    Wait(oneshot::Receiver<Outcome>),
    /// A call for the key under other limits is in flight: send it now,
    /// alone, outside the lane.
    Alone,
}

impl Lanes {
    pub(crate) fn join(
        &self,
        inner: &Arc<Inner>,
        key: &Key,
        names: &Arc<Names>,
        request: Request,
    ) -> Join {
        let mut lanes = lock(&self.lanes);
        let mut second = None;
        let join = match lanes.get_mut(key) {
            None => {
                lanes.insert(
                    key.clone(),
                    Lane {
                        names: names.clone(),
                        waiting: Vec::new(),
                        in_flight: 1,
                        unsent: false,
                    },
                );
                Join::Lead(Flight {
                    inner: inner.clone(),
                    key: key.clone(),
                })
            }
            Some(lane) if Arc::ptr_eq(&lane.names, names) || lane.names.limits == names.limits => {
                let (reply, receiver) = oneshot::channel();
                lane.waiting.push(Member { request, reply });
                if lane.in_flight < MAX_IN_FLIGHT && lane.waiting.len() >= SECOND_CALL {
                    // Else they wait for the call in flight to come back.
                    second = lane.take_batch(inner, key);
                }
                Join::Wait(receiver)
            }
            Some(_) => Join::Alone,
        };
        drop(lanes);
        if let Some(batch) = second {
            batch.spawn();
        }
        join
    }

    /// A call of `key` is over: sends what waits if it may go now (with no
    /// call left in flight, whatever waits; beside one, a second call's
    /// worth), and forgets the key once nothing is in flight or waiting.
    fn landed(&self, inner: &Arc<Inner>, key: &Key) {
        let mut lanes = lock(&self.lanes);
        let Some(lane) = lanes.get_mut(key) else {
            return;
        };
        lane.in_flight = lane.in_flight.saturating_sub(1);
        let mut next = None;
        let mut gone = None;
        if lane.in_flight > 0 {
            if lane.waiting.len() >= SECOND_CALL {
                // Else they wait for the other call to come back.
                next = lane.take_batch(inner, key);
            }
        } else if !lane.waiting.is_empty() {
            next = lane.take_batch(inner, key);
        }
        if lane.in_flight == 0 {
            // Nothing to send, or no runtime to send it: the waiting
            // requests' channels close (once the lock is released), and
            // each meets its failure policy.
            gone = lanes.remove(key);
        }
        drop(lanes);
        drop(gone);
        if let Some(batch) = next {
            batch.spawn();
        }
    }

    /// A spawned call has sent its command: later calls may go.
    fn sent(&self, key: &Key) {
        if let Some(lane) = lock(&self.lanes).get_mut(key) {
            lane.unsent = false;
        }
    }
}

impl Lane {
    /// Takes the waiting requests (up to [`MAX_BATCH`]) as the next call,
    /// counted in flight, unless a call before it is yet to send its
    /// command (that call sends them when it is over) or there is no
    /// runtime to send it from. The caller spawns it once the lanes' lock
    /// is released: a task a closing runtime drops at once ends its call
    /// in that spawn, which takes the lock.
    fn take_batch(&mut self, inner: &Arc<Inner>, key: &Key) -> Option<Batch> {
        if self.unsent {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let members: Vec<Member> = self
            .waiting
            .drain(..self.waiting.len().min(MAX_BATCH))
            .collect();
        self.in_flight += 1;
        self.unsent = true;
        let call = Call {
            inner: inner.clone(),
            key: key.clone(),
            unsent: true,
        };
        Some(Batch {
            runtime,
            call,
            names: self.names.clone(),
            members,
        })
    }
}

/// A call [`Lane::take_batch`] took, to spawn once the lanes' lock is
/// released.
struct Batch {
    runtime: tokio::runtime::Handle,
    call: Call,
    names: Arc<Names>,
    members: Vec<Member>,
}

impl Batch {
    fn spawn(self) {
        self.runtime.spawn(self.call.run(self.names, self.members));
    }
}

/// The call of a request that found its key idle. Dropped when the call
/// is over, or with the request: the requests that arrived meanwhile are
/// then sent, if no second call took them.
pub(crate) struct Flight {
    inner: Arc<Inner>,
    key: Key,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.inner.lanes.landed(&self.inner, &self.key);
    }
}

/// One spawned call of a batch. Whether it ends or is dropped (its runtime
/// shutting down), its key's lane learns that it is over, and that its
/// command went (or never will).
struct Call {
    inner: Arc<Inner>,
    key: Key,
    unsent: bool,
}

impl Call {
    async fn run(mut self, names: Arc<Names>, mut members: Vec<Member>) {
        // Requests dropped before their batch is sent are left out.
        members.retain(|member| !member.reply.is_closed());
        if members.is_empty() {
            return;
        }
        let requests: Vec<Request> = members.iter().map(|member| member.request).collect();
        let call = self.inner.decide(&self.key, &names, &requests);
        let mut call = std::pin::pin!(call);
        // Polled once before the lane hears of it: in that poll, the
        // command goes to the connection (unless it is reconnecting, when
        // calls may run in either order).
        let outcomes = std::future::poll_fn(|cx| {
            let polled = call.as_mut().poll(cx);
            if self.unsent {
                self.unsent = false;
                self.inner.lanes.sent(&self.key);
            }
            polled
        })
        .await;
        for (member, outcome) in members.into_iter().zip(outcomes) {
            // A request dropped meanwhile: its reservation, dropped here,
            // removes what the call recorded for it.
            let _ = member.reply.send(outcome);
        }
        // The requests just answered run first and may ask again: they
        // join the next batch instead of following it alone.
        tokio::task::yield_now().await;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.unsent {
            self.inner.lanes.sent(&self.key);
        }
        self.inner.lanes.landed(&self.inner, &self.key);
    }
}
