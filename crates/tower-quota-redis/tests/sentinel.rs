//! The store on the master that Redis Sentinels name (a master, one
//! replica and three Sentinels, started by the test support): admissions
//! go through the master, and after the master is killed they go through
//! the local fallback until the Sentinels promote the replica, then through
//! the new master, without a restart.
#![cfg(feature = "sentinel")]

#[path = "failover/mod.rs"]
mod failover;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_quota::Key;
use tower_quota_redis::{FailurePolicy, RedisStore, RedisStoreErrorKind};

const MAX_CALLS: u64 = 50;
const WINDOW: Duration = Duration::from_secs(1);
const SHARE: f64 = 0.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_master_falls_back_locally_and_service_resumes_after_sentinel_promotion() {
    let Some(setup) = support::SentinelSetup::start() else {
        return;
    };
    let master = setup.master_port().expect("the Sentinels name a master");
    let timeout = Duration::from_millis(250);
    let store = RedisStore::sentinel_builder(setup.sentinel_urls(), support::SENTINEL_MASTER)
        .prefix(support::unique_key("tq"))
        .timeout(timeout)
        .failure_policy(FailurePolicy::LocalFallback { share: SHARE })
        .build()
        .await
        .unwrap();
    let setup = Arc::new(Mutex::new(setup));
    let run = failover::drive(
        store,
        Key::from("failover"),
        MAX_CALLS,
        WINDOW,
        Duration::from_millis(1_500),
        {
            // Shared: the set-up must outlive the kill.
            let setup = setup.clone();
            move || setup.lock().unwrap().kill(master)
        },
    )
    .await;
    let promoted = setup.lock().unwrap().master_port();
    let (failed_from, failed_until) = run.outage().expect("the kill was noticed");
    let fallback = run.admissions.iter().filter(|(_, redis)| !redis).count();
    let excess = run
        .busiest(WINDOW, false)
        .saturating_sub(MAX_CALLS as usize);
    println!(
        "sentinel failover (local fallback, share {SHARE}, timeout {timeout:?}): killed {master} at \
         {:?}, promoted {promoted:?}; fallback from {:?} to {:?} ({fallback} admissions, \
         {} refusals), service resumed at {:?}; slowest decision {:?}; {} admissions, max in \
         any window {} (over quota by {excess}; Redis alone: {})",
        run.kill_at,
        failed_from,
        failed_until,
        run.errors.len(),
        run.resumed_at,
        run.slowest_decision,
        run.admissions.len(),
        run.busiest(WINDOW, false),
        run.busiest(WINDOW, true),
    );
    println!("store errors: {:?}", run.error_kinds);
    assert!(run.other_errors.is_empty(), "{:?}", run.other_errors);
    assert_ne!(promoted, Some(master), "the replica was promoted");
    // No request waited on Redis past the timeout (twice for one that
    // joined a call in flight; plus scheduling on a loaded machine).
    assert!(
        run.slowest_decision <= timeout * 2 + Duration::from_millis(250),
        "{:?}",
        run.slowest_decision
    );
    // The policy: the local fallback admitted while the master was away
    // (the fallback never refuses with a store error).
    assert!(fallback > 0, "the fallback admitted");
    assert!(run.errors.is_empty(), "{} store errors", run.errors.len());
    let resumed = run.resumed_at.expect("service resumed without a restart");
    assert!(resumed > failed_from);
    let after = run
        .admissions
        .iter()
        .filter(|(at, redis)| *at > resumed && *redis)
        .count();
    assert!(
        after >= 40,
        "{after} admissions by Redis after service resumed"
    );
    // The documented bound: the fallback's share (25 per window for one
    // process) on top of the quota, plus what the old master acknowledged
    // but had not replicated (on loopback well under 10).
    let share = (MAX_CALLS as f64 * SHARE) as usize;
    assert!(excess <= share + 10, "over quota by {excess}");
}

#[tokio::test]
async fn sentinel_set_up_without_master_name_or_sentinels_is_a_config_error() {
    let error = RedisStore::sentinel_builder(["redis://127.0.0.1:26379"], "")
        .build()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), RedisStoreErrorKind::Config);
    assert!(error.to_string().contains("name of its master"), "{error}");
    let error = RedisStore::sentinel_builder(Vec::<String>::new(), "quota")
        .build()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), RedisStoreErrorKind::Config);
    assert!(
        error.to_string().contains("at least one Sentinel"),
        "{error}"
    );
    let error = RedisStore::sentinel_builder(["redis://:hunter2@127.0.0.1:notaport"], "quota")
        .build()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), RedisStoreErrorKind::Config);
    assert!(!error.to_string().contains("hunter2"), "{error}");
}
