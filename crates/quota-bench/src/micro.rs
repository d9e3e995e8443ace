//! The micro-benchmark table, read from criterion's estimates.

use std::fmt::Write as _;
use std::path::PathBuf;

use tower_quota::BoxError;

use crate::results;

/// Criterion's output folder: `$CARGO_TARGET_DIR/criterion`, or the
/// workspace's `target/criterion`.
fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| results::crate_dir().join("../../target"))
        .join("criterion")
}

/// Mean time per iteration in ns, with its 95% confidence interval.
fn estimate(group: &str, bench: &str) -> Option<(f64, f64, f64)> {
    let path = criterion_dir()
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mean = &json["mean"];
    Some((
        mean["point_estimate"].as_f64()?,
        mean["confidence_interval"]["lower_bound"].as_f64()?,
        mean["confidence_interval"]["upper_bound"].as_f64()?,
    ))
}

/// Allocations and allocated bytes per iteration, as the bench counted them.
fn allocations(group: &str, bench: &str) -> Option<(f64, f64)> {
    let path = criterion_dir()
        .join(group)
        .join(bench)
        .join("allocations.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((json["allocations"].as_f64()?, json["bytes"].as_f64()?))
}

fn count(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn ns(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.2} µs", value / 1000.0)
    } else {
        format!("{value:.1} ns")
    }
}

/// A criterion group: its id, its title, and (bench id, row name) pairs.
type Group = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const GROUPS: [Group; 5] = [
    (
        "admit_one_task",
        "One admission, limit not hit, one task (`poll_ready` + `call` + one poll, by hand)",
        &[
            (
                "tower_quota_sliding_window",
                "tower-quota `SlidingWindowLayer`",
            ),
            (
                "tower_quota_keyed",
                "tower-quota `SlidingWindowLayer`, keyed by a `u64` from the request, 100,000 keys live",
            ),
            (
                "tower_quota_memory_store",
                "tower-quota `MemoryStore::acquire` alone",
            ),
            ("tower_rate_limit", "tower `RateLimit` (unshared)"),
            ("governor_check", "governor direct `check()`"),
            (
                "governor_keyed",
                "governor keyed `check_key()`, `u64` keys, 100,000 keys live",
            ),
            (
                "tower_resilience_sliding_log",
                "tower-resilience sliding log",
            ),
            (
                "least_exact_log",
                "reference: the least an exact sliding log does (one `Mutex`, one clock reading, a queue of instants; `benches/support/least.rs`)",
            ),
            (
                "least_exact_log_answered",
                "reference: the same, its slot held a window past the answer (a second lock and clock reading)",
            ),
            (
                "least_exact_keyed_log_answered",
                "reference: the same by key, one log per `u64` key in one map (foldhash), the keyed row's 100,000 keys in turn",
            ),
            (
                "tokio_instant_now",
                "reference: one `tokio::time::Instant::now()`",
            ),
        ],
    ),
    (
        "admit_two_tasks",
        "One limiter shared by two tasks on two worker threads (time per iteration = each task admitted once)",
        &[
            (
                "tower_quota_sliding_window",
                "tower-quota `SlidingWindowLayer`",
            ),
            (
                "tower_quota_keys_per_task",
                "tower-quota `SlidingWindowLayer`, one store, 64 keys of each task's own",
            ),
            (
                "readme_stack_own_hosts",
                "the README stack, cloned into each task, each sending to a host of its own",
            ),
            (
                "readme_stack_one_task",
                "reference: the README stack, one task alone (one request per iteration)",
            ),
            (
                "tower_rate_limit_buffered",
                "tower `RateLimit` behind `Buffer`",
            ),
            ("governor_check", "governor direct `check()`"),
            (
                "tower_resilience_sliding_log",
                "tower-resilience sliding log",
            ),
            (
                "least_exact_log_answered",
                "reference: the least an exact sliding log does, its slot held a window past the answer (`benches/support/least.rs`)",
            ),
        ],
    ),
    (
        "stack_noop_http",
        "Whole stack over a no-op HTTP service",
        &[
            (
                "tower_quota_three_layers",
                "`JitterBackoff → RetryAfter → SlidingWindow`",
            ),
            (
                "readme_stack_no_headers",
                "the README stack (backoff, breaker, Retry-After, pacing by host), response without headers",
            ),
            (
                "readme_stack_openai_headers",
                "the README stack, OpenAI-style response (8 headers, 5 of them rate-limit fields)",
            ),
            (
                "least_readme_stack",
                "reference: the least the README stack's four jobs do, response without headers (`benches/support/least_stack.rs`)",
            ),
            (
                "least_readme_stack_one_copy",
                "reference: the same, its Retry-After gate handing throttled answers up to the backoff instead of keeping a copy of the request to send them again",
            ),
            (
                "tower_retry_rate_limit",
                "tower `RateLimit → Retry` (policy with `TpsBudget`)",
            ),
        ],
    ),
    (
        "parse",
        "Reading one response's rate-limit headers (`quota_headers::parse`, every dialect; source: `benches/headers.rs`)",
        &[
            (
                "no quota headers",
                "8 ordinary headers, no rate-limit field",
            ),
            (
                "openai",
                "OpenAI-style 200 (ordinary headers and six `x-ratelimit-*`)",
            ),
            ("github", "GitHub-style `X-RateLimit-*` with an epoch reset"),
            (
                "ietf",
                "IETF `RateLimit` and `RateLimit-Policy` structured fields",
            ),
            ("429 retry-after", "429 with `Retry-After: 30`"),
        ],
    ),
    (
        "queued_waiters",
        "Per admission with N waiters always queued on one key (paused clock)",
        &[
            ("10", "10 waiters"),
            ("1000", "1,000 waiters"),
            ("10000", "10,000 waiters"),
            (
                "tokio_semaphore/10",
                "reference: 10 tasks taking turns at a tokio `Semaphore`",
            ),
            (
                "tokio_semaphore/10000",
                "reference: 10,000 tasks taking turns at a tokio `Semaphore`",
            ),
        ],
    ),
];

pub(crate) fn run() -> Result<(), BoxError> {
    let mut body = String::new();
    writeln!(
        body,
        "Mean time per iteration and criterion's 95% confidence interval \
         (warm-up 1 s, 3 s of measurement, 30 samples), and the heap allocations and bytes \
         allocated per iteration, counted over 1,000 iterations after criterion's run (a \
         counting global allocator). Source: `benches/admission.rs`. \
         Limits are never hit here: the quotas are huge, with a 1 ms window so that the \
         sliding logs stay small. A fraction of an allocation in a row of one key is that \
         key made again: idle through criterion's analysis, longer than the window, it may \
         be swept before the counted iterations, and its log grows back from one entry \
         (two allocations each time its room doubles).\n"
    )?;
    let mut missing = 0;
    for (group, title, benches) in GROUPS {
        writeln!(body, "### {title}\n")?;
        writeln!(
            body,
            "| benchmark | mean | 95% CI | allocations | bytes allocated |"
        )?;
        writeln!(body, "|---|---:|---:|---:|---:|")?;
        for (bench, name) in benches {
            let (allocated, bytes) = allocations(group, bench)
                .map_or(("—".to_owned(), "—".to_owned()), |(n, bytes)| {
                    (count(n), count(bytes))
                });
            match estimate(group, bench) {
                Some((mean, low, high)) => writeln!(
                    body,
                    "| {name} | {} | {} – {} | {allocated} | {bytes} |",
                    ns(mean),
                    ns(low),
                    ns(high)
                )?,
                None => {
                    missing += 1;
                    writeln!(body, "| {name} | not measured | |")?;
                }
            }
        }
        writeln!(body)?;
    }
    if missing > 0 {
        eprintln!(
            "{missing} benchmarks have no estimates under {}: run `cargo bench -p quota-bench` first",
            criterion_dir().display()
        );
    }

    let get = |group: &str, bench: &str| estimate(group, bench).map(|(mean, _, _)| mean);
    writeln!(body, "| goal (issue 15) | measured | met? |")?;
    writeln!(body, "|---|---:|---|")?;
    let ratio_goal = |body: &mut String,
                      goal: &str,
                      ours: Option<f64>,
                      peer: Option<f64>,
                      most: f64|
     -> std::fmt::Result {
        if let (Some(ours), Some(peer)) = (ours, peer) {
            let ratio = ours / peer;
            writeln!(
                body,
                "| {goal} | {ratio:.2}× ({} vs {}) | {} |",
                ns(ours),
                ns(peer),
                verdict(
                    ratio <= most,
                    format!("{:.1}× the goal's cost", ratio / most)
                ),
            )?;
        }
        Ok(())
    };
    let ours = get("admit_one_task", "tower_quota_sliding_window");
    ratio_goal(
        &mut body,
        "uncontended admission ≤ 2× governor's `check`",
        ours,
        get("admit_one_task", "governor_check"),
        2.0,
    )?;
    ratio_goal(
        &mut body,
        "uncontended admission ≤ 1.3× tower's `RateLimit`",
        ours,
        get("admit_one_task", "tower_rate_limit"),
        1.3,
    )?;
    if let Some(keyed) = get("admit_one_task", "tower_quota_keyed") {
        // governor's keyed limiter on the same keys: what one admission by
        // key costs on this machine with the keys out of the caches.
        let governed = get("admit_one_task", "governor_keyed")
            .map(|governed| format!("; governor keyed {}", ns(governed)))
            .unwrap_or_default();
        let least = get("admit_one_task", "least_exact_keyed_log_answered")
            .map(|least| format!(", the least exact keyed log {}", ns(least)))
            .unwrap_or_default();
        let reference = format!("{governed}{least}");
        writeln!(
            body,
            "| keyed admission (`u64` keys, 100,000 live) ≤ 50 ns | {} | {} |",
            ns(keyed),
            verdict(
                keyed <= 50.0,
                format!("{:.1}× the goal{reference}", keyed / 50.0)
            ),
        )?;
    }
    if let Some((allocated, _)) = allocations("admit_one_task", "tower_quota_keyed") {
        writeln!(
            body,
            "| keyed admission: 0 allocations | {} | {} |",
            count(allocated),
            verdict(allocated == 0.0, format!("{} over", count(allocated))),
        )?;
    }
    ratio_goal(
        &mut body,
        "two threads on one key ≤ 2× governor",
        get("admit_two_tasks", "tower_quota_sliding_window"),
        get("admit_two_tasks", "governor_check"),
        2.0,
    )?;
    let stack = get("stack_noop_http", "readme_stack_no_headers");
    ratio_goal(
        &mut body,
        "README stack ≤ 2× tower `RateLimit → Retry`",
        stack,
        get("stack_noop_http", "tower_retry_rate_limit"),
        2.0,
    )?;
    ratio_goal(
        &mut body,
        "README stack, OpenAI-style headers, ≤ 2× tower `RateLimit → Retry`",
        get("stack_noop_http", "readme_stack_openai_headers"),
        get("stack_noop_http", "tower_retry_rate_limit"),
        2.0,
    )?;
    if let Some((allocated, _)) = allocations("stack_noop_http", "readme_stack_no_headers") {
        writeln!(
            body,
            "| README stack ≤ 2 allocations per request | {} | {} |",
            count(allocated),
            verdict(allocated <= 2.0, format!("{} over", count(allocated - 2.0))),
        )?;
    }
    if let Some((allocated, _)) = allocations("stack_noop_http", "readme_stack_openai_headers") {
        // The no-op service copies its 8 headers into each response: 2
        // allocations (the map's entries and its index) of the service's own.
        writeln!(
            body,
            "| README stack, OpenAI-style headers, ≤ 2 allocations per request | {} | {} |",
            count(allocated),
            verdict(
                allocated <= 2.0,
                format!(
                    "{} over, 2 of the {} the no-op service's copy of its headers",
                    count(allocated - 2.0),
                    count(allocated)
                )
            ),
        )?;
    }
    if let (Some(many), Some(few)) = (get("queued_waiters", "10000"), get("queued_waiters", "10")) {
        let ratio = many / few;
        // tokio's semaphore with as many tasks: what waking the next of
        // them costs the runtime alone once they are out of the caches.
        let reference = match (
            get("queued_waiters", "tokio_semaphore/10000"),
            get("queued_waiters", "tokio_semaphore/10"),
        ) {
            (Some(many), Some(few)) => format!(
                "; tokio `Semaphore` {:.2}× ({} vs {})",
                many / few,
                ns(many),
                ns(few)
            ),
            _ => String::new(),
        };
        writeln!(
            body,
            "| per admission at 10,000 waiters within 1.2× of 10 | {ratio:.2}× ({} vs {}) | {} |",
            ns(many),
            ns(few),
            verdict(
                ratio <= 1.2,
                format!("{:.2}× over the goal{reference}", ratio / 1.2)
            ),
        )?;
    }
    writeln!(body)?;
    if let (Some(least), Some(answered), Some(governor), Some(ours)) = (
        get("admit_one_task", "least_exact_log"),
        get("admit_one_task", "least_exact_log_answered"),
        get("admit_one_task", "governor_check"),
        get("admit_one_task", "tower_quota_sliding_window"),
    ) {
        writeln!(
            body,
            "The floor under the uncontended goals (the reference rows above): the least \
             an exact sliding log does, one lock, one reading of tokio's clock and a queue of \
             instants, takes {} ({:.1}× governor's `check`), and {} ({:.1}×) when it holds \
             the slot a window past the answer, as tower-quota does for exactness across a \
             network. tower-quota's layer takes {:.1}× that: its keys, queue of waiters, \
             costs, what it learns from the provider, sweeps and drift measurement.",
            ns(least),
            least / governor,
            ns(answered),
            answered / governor,
            ours / answered,
        )?;
        if let (Some(least), Some(governor), Some(ours)) = (
            get("admit_one_task", "least_exact_keyed_log_answered"),
            get("admit_one_task", "governor_keyed"),
            get("admit_one_task", "tower_quota_keyed"),
        ) {
            writeln!(
                body,
                "By key, on the keyed row's 100,000 keys in turn: the same least log, one \
                 per key in one map, takes {} ({:.1}× governor's keyed `check_key`), which is \
                 {:.1}× the keyed goal of 50 ns: each key's log (about {:.0} entries here, \
                 a window of a second over 100,000 keys admitted in turn at that pace) is a \
                 buffer of its own, and an admission waits on memory for the key's slot, its \
                 log's oldest entry and its newest, where governor keeps one cell per key in \
                 its table. tower-quota takes {:.2}× that.",
                ns(least),
                least / governor,
                least / 50.0,
                // A window of 1 s, each key admitted once per 100,000 admissions.
                1e9 / (100_000.0 * least),
                ours / least,
            )?;
        }
        if let (Some(least), Some(governor), Some(ours)) = (
            get("admit_two_tasks", "least_exact_log_answered"),
            get("admit_two_tasks", "governor_check"),
            get("admit_two_tasks", "tower_quota_sliding_window"),
        ) {
            writeln!(
                body,
                "Two threads on one key: the same least log, its lock and its queue moving \
                 between the two cores, takes {} per pair ({:.1}× governor's compare-and-swap), \
                 tower-quota {:.1}× that.",
                ns(least),
                least / governor,
                ours / least,
            )?;
        }
        if let (Some(least), Some(tower), Some(ours)) = (
            get("stack_noop_http", "least_readme_stack"),
            get("stack_noop_http", "tower_retry_rate_limit"),
            get("stack_noop_http", "readme_stack_no_headers"),
        ) {
            let one_copy = get("stack_noop_http", "least_readme_stack_one_copy")
                .map(|one| {
                    format!(
                        " With one copy, the backoff's, the gate handing a throttled answer \
                         up for the backoff to send again, the same least stack takes {} \
                         ({:.2}× tower's): what a stack whose Retry-After layer keeps no copy \
                         of its own could reach at best.",
                        ns(one),
                        one / tower,
                    )
                })
                .unwrap_or_default();
            writeln!(
                body,
                "The README stack: the least its four layers do, each only its job's essential \
                 work (a copy of the request kept by each of the two that send it again, \
                 backoff and Retry-After; a map of hosts behind a lock in each of the three \
                 keyed ones, breaker, Retry-After and pacing, looked up when the request goes \
                 and when its answer comes, the Retry-After gate's only when the answer says \
                 something; an exact log with its slot held a window past the answer; the \
                 answer's rate-limit headers read; tower's `TpsBudget`; nothing allocated), \
                 takes {} ({:.2}× tower's `RateLimit → Retry`, where the goal is 2×). \
                 tower-quota's README stack takes {:.2}× that.{one_copy}",
                ns(least),
                least / tower,
                ours / least,
            )?;
        }
        writeln!(body)?;
    }
    writeln!(body, "{LIMITS}")?;
    results::write_section("micro", &body)
}

fn verdict(met: bool, by: String) -> String {
    if met {
        "yes".to_owned()
    } else {
        format!("**no**: {by}")
    }
}

const LIMITS: &str = "What limits the costs (read from the code and from a trace of every \
allocation, not profiled): one admission of tower-quota reads tokio's clock (`Instant::now()`, \
the reference row above; governor reads quanta's TSC clock instead), hashes the key once with \
foldhash, takes the shard's mutex, prunes and appends to an exact log (in the first poll of the \
response future: no admission future is built unless the request waits), then takes the \
mutex and reads the clock again when the answer comes back, to hold the slot a window past \
the answer; on one admission in 16 it measures how late its task runs. \
Keyed, with 100,000 keys live, the keys' state (about 108 bytes each with one entry, kept \
in place, and 3 or 4 bytes per further entry once they are packed) is far larger than the CPU's caches: an admission waits on memory \
for the key's slot in its shard's table, its boxed state and log, and the log's entries, and \
the shard's sweeps of idle keys examine fewer than half a key more per operation. governor's \
keyed limiter on the same keys (the row above) waits on memory too, for its table's slot and \
the cell in it: what admitting by key costs on this machine before any limiter's own work; \
the least exact keyed log (the reference row) waits besides for its log's oldest and newest \
entries, in a buffer of their own, as an exact log of that many admissions must keep them. \
tower's `RateLimit` is a per-instance counter with one clock read and no shared state (which is \
why it must sit behind a `Buffer` to be shared, at ~1 µs per admission above); governor's \
`check` is one atomic compare-and-swap on a GCRA cell. Per request, the README stack also \
creates a tracing span and its shared attempt budget (one allocation: the attempts and the \
waiting of the whole stack, which the backoff hands to the Retry-After layer below on the \
calling thread; a first attempt carries no extension), keeps a copy of the request for \
re-sending in each of its two retrying layers, looks up the key's Retry-After gate, reads \
the response's rate-limit headers (the IETF fields again only when they state a window, for \
the quota the provider announces) and, when the server said something, puts it in the \
response's extensions: 1 allocation without headers. With the OpenAI-style headers, 2 of the \
row's allocations are the no-op service's copy of its headers, 1 the budget, 1 the list of \
the quotas the headers state (`Signal::quotas`) and 3 the `ServerSignal` extension (http's \
`Extensions` allocates its map, its table and a box for a first value): fewer needs the \
signal out of the response's extensions, where users read it. Behind hyper-util's pooled \
`Client`, whose responses over TCP already carry its `HttpInfo` in their extensions, the \
signal takes 1 allocation, the box: the map and its table are there. \
The goal of at most 2 clock reads per request is not met either (no row: a benchmark cannot \
count them; read from the code and counted with callgrind): the README stack reads tokio's \
clock 3 times per request when the responses carry no quota headers (tower's `TpsBudget` on \
every deposit; pacing: the admission, whose reading the backoff takes for the request's \
start, from which its `max_elapsed` counts, and the answer, whose reading the Retry-After \
and breaker layers above take for the same answer instead of reading the clock again), and \
4 with the OpenAI-style headers: the Retry-After gate reads it only when its state depends \
on it (a pause, a probe out, a ramp, a probe interval, or a quota the provider reported, \
which it counts against its reset), and the breaker at admission only for a key that is new, \
open or half-open, or when the admission's sweep step meets a key with failures (callgrind \
counts 60,008 calls of `clock_gettime` in 20,000 requests of the `instructions` example's README \
stack, 80,007 before \
the gate read the clock only when needed). 3 is the least with tower's budget and a slot \
held a window past its answer: the admission and the answer are read a request's flight \
apart. The same two \
readings bound the layer's rows: twice the clock's reference row is more than 2× governor's \
`check` and 1.3× tower's `RateLimit` (which reads the clock once) before any other work, and \
with governor's keyed row, the cost of reaching a key among 100,000 on this machine, more \
than the keyed goal of 50 ns, which the least exact keyed log exceeds several times over. Two tasks on two threads admitting one key each take the \
shard's mutex twice per request (the admission and the answer) and move its cache lines, the \
key's state and its log from core to core each time, where governor's row is one \
compare-and-swap per admission. The README stack is four layers, three of them with state per \
key (breaker, Retry-After gate, pacing): each computes the key from the request and locks its \
own map, twice for the pacing, and the two that re-send each keep a copy of the request. \
Their response futures nest (the stack's is 1,440 bytes) and the request (272 bytes here) \
passes through each layer by value: 6,009 bytes are copied per request in 26 `memcpy` calls \
(counted with `tools/memcpy_count.c` under the `instructions` example, the harness's own \
request and future included; 12,464 bytes in 44 calls before the layers offered their budgets by a guard \
instead of around a closure and made each future and copy where it is kept), 12 % of the \
stack's samples under perf (20 % before). \
Cloned into two tasks sending to hosts of their own, the stack writes nothing of ours that \
all keys share (each keyed map in 16 shards on cache lines of their own, each shard counting \
its own operations and visiting the others in turn for sweeps), unless the two hosts fall in \
one shard of a map; the two threads still share tower's `TpsBudget` (a mutex taken at every \
deposit) and the reference counts of each layer's shared state, which every request's copies \
of the services below a retrying layer write (about ten per request); each layer's state is \
aligned to 128 bytes, so those counts are on cache lines of their own and the fields every \
request reads stay in both cores' caches. On this VM that row moves with how the two vCPUs \
run, run to run or within a run (most often about 1.9 µs, or 3.3 to 3.5 µs, per pair, and \
1.8 and 2.9 µs in two runs of the same code on 5 December, and 2.8, 1.75, 3.2 and 1.64 µs in \
four later runs that day on builds differing only in how values are copied, in which \
tower-resilience's two-task row took 1.12, 0.30, 1.19 and 0.34 µs, and 4.39 and 2.34 µs in \
two runs of the same code 20 minutes apart later that day; 2.1 µs and 3.9 to 4.2 µs \
before that alignment, the two builds' binaries run alternately), as do the least exact log's \
and tower-quota's rows of one key (0.42 and 0.93 µs, or 0.87 and 1.05 µs, or 0.65 and 1.07 µs, \
or 0.43 and 0.95 µs, or 0.61 and 1.02 µs, or 0.81 and 1.01 µs, or 0.43 and 1.10 µs, or \
0.38 and 0.92 µs, per pair), so one run says \
little of a change to it. With queued waiters, the work per admission stays flat (one timer per key, one wake-up per \
admission: 4,350 instructions per admission with 10,000 waiters and 4,359 with 10, counted by \
callgrind before the log packed its entries), but each admission polls the next waiter, queued 10,000 admissions ago: its task, \
its future (128 bytes) and its place in the queue have left the caches, about 6 data-cache \
misses per admission in callgrind's model where 10 waiters have none. tokio's semaphore, with \
as many tasks taking turns (the reference rows), shows what the wake-up of a task that cold \
costs the runtime itself.";
