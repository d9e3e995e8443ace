//! The calls in flight, by what makes requests identical.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::CoalesceError;
use crate::Key;

/// What makes two requests the same call: method, URI and the user's key.
/// Held only as a map key, never recorded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct FlightKey {
    pub(super) method: http::Method,
    pub(super) uri: String,
    pub(super) key: Key,
}

/// A response every caller of a call gets a copy of.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) status: http::StatusCode,
    pub(super) version: http::Version,
    pub(super) headers: http::HeaderMap,
    pub(super) extensions: http::Extensions,
    pub(super) body: Bytes,
}

impl Snapshot {
    pub(super) fn response(&self) -> http::Response<http_body_util::Full<Bytes>> {
        let mut response = http::Response::new(http_body_util::Full::new(self.body.clone()));
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers.clone();
        *response.extensions_mut() = self.extensions.clone();
        response
    }
}

pub(super) type Outcome = Result<Arc<Snapshot>, CoalesceError>;

/// One call in flight: its callers, and its task.
struct Flight {
    id: u64,
    waiters: Vec<oneshot::Sender<Outcome>>,
    task: Option<AbortHandle>,
}

/// Calls in flight, shared by every clone of a layer's services.
#[derive(Debug)]
pub(super) struct Flights {
    map: Mutex<HashMap<FlightKey, Flight>>,
    max_in_flight: usize,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("id", &self.id)
            .field("waiters", &self.waiters.len())
            .finish()
    }
}

/// What `join` decided for a request.
pub(super) enum Joined {
    /// Another caller's call is in flight: wait for its answer.
    Follower(oneshot::Receiver<Outcome>, u64),
    /// A new call, registered under its key: start it with `id`.
    Leader(oneshot::Receiver<Outcome>, u64),
    /// The map is full: call alone.
    Alone,
}

impl Flights {
    pub(super) fn new(max_in_flight: usize) -> Arc<Self> {
        Arc::new(Flights {
            map: Mutex::new(HashMap::new()),
            max_in_flight,
            next_id: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<FlightKey, Flight>> {
        // Nothing panics while the lock is held; a poisoned map is still
        // consistent.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The calls in flight.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Joins the call in flight for `key`, or registers a new one, whose
    /// task `start` spawns while the map is locked, so that it cannot
    /// finish before it is registered.
    pub(super) fn join(&self, key: &FlightKey, start: impl FnOnce(u64) -> AbortHandle) -> Joined {
        let mut map = self.lock();
        let (sender, receiver) = oneshot::channel();
        if let Some(flight) = map.get_mut(key) {
            flight.waiters.push(sender);
            return Joined::Follower(receiver, flight.id);
        }
        if map.len() >= self.max_in_flight {
            return Joined::Alone;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = start(id);
        map.insert(
            key.clone(),
            Flight {
                id,
                waiters: vec![sender],
                task: Some(task),
            },
        );
        Joined::Leader(receiver, id)
    }

    /// The call `id` of `key` ended: every caller gets `outcome`.
    pub(super) fn complete(&self, key: &FlightKey, id: u64, outcome: Outcome) {
        let flight = {
            let mut map = self.lock();
            let flight = match map.get(key) {
                Some(flight) if flight.id == id => map.remove(key),
                _ => None,
            };
            shrink(&mut map);
            flight
        };
        for waiter in flight.into_iter().flat_map(|flight| flight.waiters) {
            // A caller that left wants nothing.
            let _ = waiter.send(outcome.clone());
        }
    }

    /// A caller of call `id` of `key` left: when it was the last, the call
    /// is aborted and forgotten.
    pub(super) fn leave(&self, key: &FlightKey, id: u64) {
        let mut map = self.lock();
        let Some(flight) = map.get_mut(key).filter(|flight| flight.id == id) else {
            return;
        };
        flight.waiters.retain(|waiter| !waiter.is_closed());
        if flight.waiters.is_empty() {
            if let Some(task) = flight.task.take() {
                task.abort();
            }
            map.remove(key);
            shrink(&mut map);
        }
    }
}

/// Gives back the memory of a map that emptied out.
fn shrink(map: &mut HashMap<FlightKey, Flight>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}
