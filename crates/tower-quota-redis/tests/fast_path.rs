//! `exact_acquire.lua` decides its common call (one quota, unit costs,
//! room for every request, no reservations), sent in a compact form, on a
//! short path. These tests check that the store's calls take it, and that
//! it decides every call exactly as the general path does: the same script
//! with the short path cut out runs the same calls, in the general form,
//! on a twin key, and the replies and the keys' state are compared (which
//! also checks the compact form's expansion, for the calls the short path
//! leaves to the general path).

mod support;

use std::time::Duration;

use redis::{Connection, Script, Value};
use tower_quota::sliding_window::{Quota, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

const SOURCE: &str = include_str!("../src/lua/exact_acquire.lua");

/// The script without its short path: the general path alone.
fn general_only() -> String {
    let start = SOURCE
        .find("-- The common call first")
        .expect("the short path's opening comment");
    let end_marker = "end -- the common call\n";
    let end = SOURCE.find(end_marker).expect("the short path's end") + end_marker.len();
    format!("{}{}", &SOURCE[..start], &SOURCE[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_with_room_take_the_short_path() {
    // A server of its own: its command counts are this test's alone.
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let store = RedisStore::builder(server.url()).build().await.unwrap();
    // A request that would wait is refused at once.
    let limiter =
        SlidingWindowLayer::with_quotas([Quota::new(205, Duration::from_secs(60)).unwrap()])
            .unwrap()
            .max_wait(Duration::from_millis(1));
    let key = Key::from("short-path");
    // The first call loads the script and records the key's signature: the
    // general path.
    store
        .acquire(key.clone(), 1, limiter.limits())
        .await
        .unwrap();

    let before = support::command_calls(&server);
    let admissions = 200;
    for _ in 0..admissions {
        let admission = store
            .acquire(key.clone(), 1, limiter.limits())
            .await
            .unwrap();
        assert_eq!(admission.waited(), Duration::ZERO);
    }
    let after = support::command_calls(&server);
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    // EXISTS is the short path's own (the general path never runs it), and
    // ZRANGEBYSCORE the general path's (its read of the signature).
    assert_eq!(delta("exists"), admissions);
    assert_eq!(
        delta("zrangebyscore"),
        0,
        "no call went on to the general path"
    );
    assert_eq!(delta("zadd"), admissions);
    let in_script: u64 = after
        .keys()
        .filter(|name| {
            !["evalsha", "info", "hello", "ping", "client|setinfo"].contains(&name.as_str())
        })
        .map(|name| delta(name))
        .sum();
    // EXISTS, ZRANK, TIME, ZREMRANGEBYSCORE, ZADD, PTTL, and a PEXPIRE
    // when the key's expiry needs extending.
    assert!(
        in_script <= 7 * admissions,
        "{in_script} commands run by the script for {admissions} admissions"
    );

    // Four more fill the quota (205 in all); the next one finds no room
    // and is decided by the general path: it would wait a window.
    for _ in 0..4 {
        store
            .acquire(key.clone(), 1, limiter.limits())
            .await
            .unwrap();
    }
    let before = support::command_calls(&server);
    let result = store.acquire(key.clone(), 1, limiter.limits()).await;
    let after = support::command_calls(&server);
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    assert!(
        delta("zrangebyscore") >= 1,
        "a full log goes on to the general path"
    );
    let Err(error) = result else {
        panic!("a full quota refuses a request that may not wait");
    };
    assert!(
        error.to_string().contains("wait"),
        "refused for its wait: {error}"
    );
}

/// One call of the script for one quota of `most` per `span_us`, with
/// `ids` as one run of new requests of unit cost.
struct Call<'a> {
    max_queue: &'a str,
    sent_within: &'a str,
    span_us: i64,
    most: &'a str,
    signature: &'a str,
    ids: Vec<String>,
}

impl Call<'_> {
    /// Runs the call in its compact form (four keys), as the store sends
    /// a call of this shape, or in the general form.
    fn run(
        &self,
        script: &Script,
        connection: &mut Connection,
        prefix: &str,
        compact: bool,
    ) -> Value {
        let log = format!("{{{prefix}}}:log");
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&log)
            .key(format!("{{{prefix}}}:costs"))
            .key(format!("{{{prefix}}}:queue"))
            .key(format!("{{{prefix}}}:floors"));
        if compact {
            invocation
                .arg(self.max_queue)
                .arg(self.sent_within)
                .arg(0)
                .arg(self.span_us)
                .arg(self.most)
                .arg(self.signature)
                .arg(-1);
        } else {
            invocation
                .key(&log)
                .arg(self.max_queue)
                .arg(self.sent_within)
                .arg(0)
                .arg(1)
                .arg(self.span_us)
                .arg(self.most)
                .arg(self.signature)
                .arg(self.ids.len())
                .arg(self.ids.len())
                .arg(-1)
                .arg(0)
                .arg(1)
                .arg(0);
        }
        for id in &self.ids {
            invocation.arg(id);
        }
        match invocation.invoke::<Value>(connection) {
            Ok(value) => value,
            Err(error) => Value::SimpleString(format!("error: {:?}", error.kind())),
        }
    }
}

/// A call of `ids` under a quota of 8 a minute, not strict, no queue bound.
fn eight_a_minute(ids: Vec<String>) -> Call<'static> {
    Call {
        max_queue: "-1",
        sent_within: "100000",
        span_us: 60_000_000,
        most: "8",
        signature: "sig-8",
        ids,
    }
}

/// A reply of `count` requests: their statuses, queue places and limiting
/// quotas, with their waits rounded to seconds (the twin calls run
/// microseconds apart). An empty reply admits every request now.
fn shape(reply: &Value, count: usize) -> Vec<i64> {
    let Value::Array(items) = reply else {
        return vec![-1];
    };
    if items.is_empty() {
        return vec![0; 5 * count];
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let Value::Int(value) = item else {
                return i64::MIN;
            };
            if index % 5 == 1 || index % 5 == 4 {
                (value + 500_000) / 1_000_000
            } else {
                *value
            }
        })
        .collect()
}

/// The key's state: the log's members in order (scores left out: they hold
/// the call's instant), whether a queue exists, and its expiry in seconds.
fn state(connection: &mut Connection, prefix: &str) -> (Vec<String>, bool, i64) {
    let log = format!("{{{prefix}}}:log");
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&log)
        .arg(0)
        .arg(-1)
        .query(connection)
        .unwrap();
    let queue: bool = redis::cmd("EXISTS")
        .arg(format!("{{{prefix}}}:queue"))
        .query(connection)
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(&log).query(connection).unwrap();
    (members, queue, (ttl + 500) / 1000)
}

/// `call` changed by `edit`.
fn edited<'a>(mut call: Call<'a>, edit: impl FnOnce(&mut Call<'a>)) -> Call<'a> {
    edit(&mut call);
    call
}

/// The shipped script and the general path alone, run on twin keys.
struct Twins<'a> {
    shipped: &'a Script,
    general: &'a Script,
}

impl Twins<'_> {
    /// Runs `call` through each script on its own key of `keys` (the
    /// shipped script in the compact form the store sends, the general
    /// path in the general form), checks that they replied and wrote
    /// alike, and returns the shipped script's reply.
    fn run(
        &self,
        call: &Call<'_>,
        connection: &mut Connection,
        keys: (&str, &str),
        what: &str,
    ) -> Value {
        let from_shipped = call.run(self.shipped, connection, keys.0, true);
        let from_general = call.run(self.general, connection, keys.1, false);
        assert_eq!(
            shape(&from_shipped, call.ids.len()),
            shape(&from_general, call.ids.len()),
            "replies at {what}"
        );
        assert_eq!(
            state(connection, keys.0),
            state(connection, keys.1),
            "state after {what}"
        );
        from_shipped
    }
}

/// Moves every entry of the key's log `by_us` into the past (the
/// signature, scored `+inf`, stays).
fn age_log(connection: &mut Connection, prefix: &str, by_us: i64) {
    let log = format!("{{{prefix}}}:log");
    let entries: Vec<(String, i64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(&log)
        .arg("-inf")
        .arg("(+inf")
        .arg("WITHSCORES")
        .query(connection)
        .unwrap();
    for (member, score) in entries {
        let _: i64 = redis::cmd("ZADD")
            .arg(&log)
            .arg("XX")
            .arg(score - by_us)
            .arg(member)
            .query(connection)
            .unwrap();
    }
}

#[test]
fn the_short_path_decides_as_the_general_path() {
    let Some(server) = support::shared() else {
        return;
    };
    let mut connection = server.connection();
    let shipped = Script::new(SOURCE);
    let general = Script::new(&general_only());
    assert_ne!(shipped.get_hash(), general.get_hash());
    let suffix = support::unique_key("twin");
    let (a, b) = (format!("a-{suffix}"), format!("b-{suffix}"));

    let ids = |from: usize, count: usize| (from..from + count).map(|id| id.to_string()).collect();
    let call = eight_a_minute;
    let calls = [
        // A new key: the general path records the signature.
        call(ids(1, 1)),
        // Room for all: the short path (2, 3 and 2 more: 8 in the log).
        call(ids(2, 2)),
        call(ids(4, 3)),
        call(ids(7, 2)),
        // Full: reserved a window ahead, then behind that reservation.
        call(ids(9, 1)),
        call(ids(10, 2)),
        // Another signature: refused (status 4), nothing recorded.
        edited(call(ids(12, 1)), |call| call.signature = "sig-other"),
        // Strict, an unknown queue bound, a count that does not parse.
        edited(call(ids(13, 1)), |call| call.sent_within = "-1"),
        edited(call(ids(14, 1)), |call| call.max_queue = "x"),
        edited(call(ids(15, 1)), |call| call.most = "many"),
    ];
    let twins = Twins {
        shipped: &shipped,
        general: &general,
    };
    for (step, call) in calls.iter().enumerate() {
        twins.run(call, &mut connection, (&a, &b), &format!("step {step}"));
    }
    let (members, queue, ttl) = state(&mut connection, &a);
    // Requests 1 to 11 and the strict one (13), reserved behind them, and
    // the signature.
    assert_eq!(members.len(), 13, "{members:?}");
    assert!(queue);
    assert!(ttl >= 120, "{ttl}");

    // Room again in a fresh pair of keys, in batches up to the quota's
    // edge, with a window of 100 ms (held 100 ms more while unanswered):
    // once it has passed (the logs' entries moved 300 ms into the past,
    // instead of waiting on Redis's clock), the short path prunes the log
    // and finds room.
    let (a, b) = (format!("c-{suffix}"), format!("d-{suffix}"));
    for (step, count) in [1, 7, 0, 3, 5].into_iter().enumerate() {
        if count == 0 {
            for key in [&a, &b] {
                age_log(&mut connection, key, 300_000);
            }
            continue;
        }
        let call = edited(call(ids(100 * (step + 1), count)), |call| {
            call.span_us = 100_000;
        });
        let from_shipped = twins.run(&call, &mut connection, (&a, &b), &format!("batch {step}"));
        if step > 0 {
            assert_eq!(from_shipped, Value::Array(Vec::new()), "batch {step}");
        }
    }
}

#[test]
fn a_compact_call_without_ids_is_refused_and_writes_nothing() {
    let Some(server) = support::shared() else {
        return;
    };
    let mut connection = server.connection();
    let shipped = Script::new(SOURCE);
    let prefix = support::unique_key("compact-empty");
    let call = eight_a_minute(Vec::new());
    let reply = call.run(&shipped, &mut connection, &prefix, true);
    let Value::SimpleString(error) = reply else {
        panic!("a compact call without ids is an error reply: {reply:?}");
    };
    assert!(error.starts_with("error:"), "{error}");
    let (members, queue, _) = state(&mut connection, &prefix);
    assert!(members.is_empty(), "{members:?}");
    assert!(!queue);

    // With one id, the same call is admitted (a new key: the general path,
    // through the expansion), and recorded with the signature.
    let call = eight_a_minute(vec!["1".to_owned()]);
    assert_eq!(
        shape(&call.run(&shipped, &mut connection, &prefix, true), 1),
        vec![0; 5]
    );
    let (members, _, _) = state(&mut connection, &prefix);
    assert_eq!(members, ["1", "sig-8"]);
}
