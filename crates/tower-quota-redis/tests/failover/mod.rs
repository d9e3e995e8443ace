//! Drives one key at its quota through a store while a test kills the
//! Redis master mid-run, and measures what the failover cost: how long each
//! decision took, what the failure policy did, when service resumed, and
//! the most admissions any window held.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower_quota::sliding_window::{Admission, Completion, Limits, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::{RedisStore, RedisStoreError};

/// Tasks asking for admissions at once: enough to keep the key at its quota.
const TASKS: usize = 8;
/// How long a task waits after a refusal before asking again, so that a
/// failing-closed store is not asked in a busy loop.
const AFTER_ERROR: Duration = Duration::from_millis(20);
/// How long the key is served after service resumed.
const AFTER_RECOVERY: Duration = Duration::from_millis(1_500);
/// How long after the event a run with no failure yet ends.
const NO_FAILURE_AFTER: Duration = Duration::from_secs(3);
/// The longest the run waits for service to resume.
const MAX_OUTAGE: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
pub struct Run {
    /// When each admission let its request go, since the start, and
    /// whether Redis decided it (not the local fallback).
    pub admissions: Vec<(Duration, bool)>,
    /// Store errors returned (failing closed), with their instants.
    pub errors: Vec<Duration>,
    /// Errors that were not a `RedisStoreError`.
    pub other_errors: Vec<String>,
    /// The longest any acquisition took to be decided (an admission's
    /// reserved wait not counted).
    pub slowest_decision: Duration,
    pub kill_at: Duration,
    /// The first admission by Redis asked for after the kill's first
    /// failure.
    pub resumed_at: Option<Duration>,
    /// The store errors other than suspensions, by message.
    pub error_kinds: std::collections::BTreeMap<String, usize>,
}

impl Run {
    /// The most admissions in any window of `window`.
    pub fn busiest(&self, window: Duration, redis_only: bool) -> usize {
        let mut at: Vec<Duration> = self
            .admissions
            .iter()
            .filter(|(_, by_redis)| *by_redis || !redis_only)
            .map(|(at, _)| *at)
            .collect();
        at.sort_unstable();
        (0..at.len())
            .map(|start| {
                at[start..]
                    .iter()
                    .take_while(|t| **t < at[start] + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The first failure after the kill, and the last one.
    pub fn outage(&self) -> Option<(Duration, Duration)> {
        let failures: Vec<Duration> = self
            .errors
            .iter()
            .copied()
            .chain(
                self.admissions
                    .iter()
                    .filter(|(_, by_redis)| !by_redis)
                    .map(|(at, _)| *at),
            )
            .filter(|at| *at >= self.kill_at)
            .collect();
        Some((*failures.iter().min()?, *failures.iter().max()?))
    }
}

/// Serves `key` at `max_calls` per `window` through `store` from `TASKS`
/// tasks; calls `kill` after `kill_after`; stops `AFTER_RECOVERY` after
/// Redis admits again (or `NO_FAILURE_AFTER` the kill when nothing failed).
pub async fn drive(
    store: RedisStore,
    key: Key,
    max_calls: u64,
    window: Duration,
    kill_after: Duration,
    kill: impl FnOnce() + Send + 'static,
) -> Run {
    let limits: Limits = SlidingWindowLayer::new(max_calls, window)
        .unwrap()
        .limits()
        .clone();
    let start = Instant::now();
    let run = Arc::new(Mutex::new(Run::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (store, key, limits, run, stop) = (
            store.clone(),
            key.clone(),
            limits.clone(),
            run.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let asked = Instant::now();
                let result = store.acquire(key.clone(), 1, &limits).await;
                let now = Instant::now();
                let admitted = {
                    let mut run = run.lock().unwrap();
                    record(&mut run, start, asked, now, result)
                };
                match admitted {
                    // The request is answered at once.
                    Some(admission) => store.complete(&admission, Completion::Answered, &limits),
                    None => tokio::time::sleep(AFTER_ERROR).await,
                }
            }
        });
    }
    tokio::time::sleep(kill_after).await;
    run.lock().unwrap().kill_at = start.elapsed();
    tokio::task::spawn_blocking(kill).await.unwrap();
    let event = Instant::now();
    let deadline = event + MAX_OUTAGE;
    loop {
        {
            let run = run.lock().unwrap();
            // Resumed after failures; or no failure at all by now (the
            // event cost nothing: a resharding followed by redirections).
            if run.resumed_at.is_some()
                || (run.outage().is_none() && event.elapsed() > NO_FAILURE_AFTER)
                || Instant::now() >= deadline
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(AFTER_RECOVERY).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    // A task asleep until a reserved slot is not waited for.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(run)
        .map(|run| run.into_inner().unwrap())
        .unwrap_or_else(|run| std::mem::take(&mut *run.lock().unwrap()))
}

/// Records one acquisition's outcome; the admission, if any.
fn record(
    run: &mut Run,
    start: Instant,
    asked: Instant,
    now: Instant,
    result: Result<Admission, tower_quota::BoxError>,
) -> Option<Admission> {
    match result {
        Ok(admission) => {
            let decision = (now - asked).saturating_sub(admission.waited());
            run.slowest_decision = run.slowest_decision.max(decision);
            let by_redis = admission.id() & (1 << 63) != 0;
            let since = now - start;
            run.admissions.push((since, by_redis));
            let asked = asked - start;
            let failed_before = run.kill_at > Duration::ZERO
                && run
                    .errors
                    .iter()
                    .chain(
                        run.admissions
                            .iter()
                            .filter(|(_, redis)| !redis)
                            .map(|(at, _)| at),
                    )
                    .any(|failed| *failed >= run.kill_at && *failed <= asked);
            if by_redis && run.resumed_at.is_none() && failed_before {
                run.resumed_at = Some(since);
            }
            Some(admission)
        }
        Err(error) => {
            run.slowest_decision = run.slowest_decision.max(now - asked);
            if let Some(store_error) = error.downcast_ref::<RedisStoreError>() {
                if !store_error.is_suspended() {
                    let kind = format!("{} {:?}", error, store_error.redis_error());
                    *run.error_kinds.entry(kind).or_default() += 1;
                }
                run.errors.push(now - start);
            } else {
                run.other_errors.push(error.to_string());
            }
            None
        }
    }
}
