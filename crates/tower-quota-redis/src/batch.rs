//! Coalescing: the exact admissions of one key that arrive while a script
//! call for the key is in flight wait for it, then go together in one
//! call, which admits them one after another in arrival order.
//!
//! The first admission of an idle key is sent at once by its own future
//! (no added latency at concurrency 1). When its call comes back, the
//! admissions that arrived meanwhile are sent by a spawned task, as one
//! batch, and so on while more arrive. A key's entry in [`Lanes`] exists
//! while a call for it is in flight.
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
}

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
        match lanes.get_mut(key) {
            None => {
                lanes.insert(
                    key.clone(),
                    Lane {
                        names: names.clone(),
                        waiting: Vec::new(),
                    },
                );
                Join::Lead(Flight {
                    inner: inner.clone(),
                    key: key.clone(),
                    names: names.clone(),
                })
            }
            Some(lane) if Arc::ptr_eq(&lane.names, names) || lane.names.limits == names.limits => {
                let (reply, receiver) = oneshot::channel();
                lane.waiting.push(Member { request, reply });
                Join::Wait(receiver)
            }
            Some(_) => Join::Alone,
        }
    }

    /// The call in flight for `key` is over: the requests that waited for
    /// it, or `None` (and the lane is gone) when none did.
    fn land(&self, key: &Key) -> Option<Vec<Member>> {
        let mut lanes = lock(&self.lanes);
        let lane = lanes.get_mut(key)?;
        if lane.waiting.is_empty() {
            lanes.remove(key);
            None
        } else {
            Some(std::mem::take(&mut lane.waiting))
        }
    }
}

/// The call of a request that found its key idle. Dropped when the call
/// is over, or with the request: the requests that arrived meanwhile are
/// then sent by a spawned task.
pub(crate) struct Flight {
    inner: Arc<Inner>,
    key: Key,
    names: Arc<Names>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let Some(members) = self.inner.lanes.land(&self.key) else {
            return;
        };
        // Without a runtime the members' channels close: each meets its
        // failure policy.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drive(
                self.inner.clone(),
                self.key.clone(),
                self.names.clone(),
                members,
            ));
        }
    }
}

/// Sends the waiting requests of `key`, batch after batch, until none wait.
async fn drive(inner: Arc<Inner>, key: Key, names: Arc<Names>, mut members: Vec<Member>) {
    loop {
        // Requests dropped before their batch is sent are left out.
        members.retain(|member| !member.reply.is_closed());
        while !members.is_empty() {
            let batch: Vec<Member> = members.drain(..members.len().min(MAX_BATCH)).collect();
            let requests: Vec<Request> = batch.iter().map(|member| member.request).collect();
            let outcomes = inner.decide(&key, &names, &requests).await;
            for (member, outcome) in batch.into_iter().zip(outcomes) {
                // A request dropped meanwhile: its reservation, dropped
                // here, removes what the call recorded for it.
                let _ = member.reply.send(outcome);
            }
        }
        // The requests just answered run first and may ask again: they
        // join the next batch instead of following it alone.
        tokio::task::yield_now().await;
        match inner.lanes.land(&key) {
            Some(next) => members = next,
            None => return,
        }
    }
}
