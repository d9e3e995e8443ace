//! Priority classes, reserved shares, aging, tenants and deadlines: what
//! the store admits, when, and in which order.

use super::*;
use proptest::prelude::*;

/// What became of one request: admitted (the store's admission id, and
/// when) or refused (when, and the error).
#[derive(Debug)]
enum Outcome {
    Admitted {
        id: u64,
        at: Duration,
    },
    Refused {
        at: Duration,
        error: String,
        late: Option<DeadlineUnreachable>,
    },
}

impl Outcome {
    fn admitted_at(&self) -> Option<Duration> {
        match self {
            Outcome::Admitted { at, .. } => Some(*at),
            Outcome::Refused { .. } => None,
        }
    }
}

/// One request of a plan: when it arrives, its class, tenant and deadline
/// (all from the start).
#[derive(Debug, Clone)]
struct Request {
    arrive: Duration,
    priority: Priority,
    tenant: Option<Tenant>,
    deadline: Option<Duration>,
}

impl Request {
    fn at(arrive: Duration, priority: Priority) -> Self {
        Request {
            arrive,
            priority,
            tenant: None,
            deadline: None,
        }
    }
}

/// Runs `plan` (in arrival order) against one key of `store`.
async fn run(store: &MemoryStore, limits: &Limits, plan: &[Request]) -> Vec<Outcome> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for request in plan {
        tokio::time::sleep_until(start + request.arrive).await;
        let mut place = Place::new().priority(request.priority);
        if let Some(tenant) = &request.tenant {
            place = place.tenant(tenant.clone());
        }
        if let Some(deadline) = request.deadline {
            place = place.deadline(start + deadline);
        }
        let acquire = store.acquire_placed(Key::from("k"), 1, limits, place);
        let (store, limits) = (store.clone(), limits.clone());
        tasks.push(tokio::spawn(async move {
            let result = acquire.await;
            let at = start.elapsed();
            match result {
                Ok(admission) => {
                    // Answered at once: held a window from now.
                    store.complete(&admission, Completion::Answered, &limits);
                    Outcome::Admitted {
                        id: admission.id(),
                        at,
                    }
                }
                Err(error) => Outcome::Refused {
                    at,
                    late: error.downcast_ref::<DeadlineUnreachable>().cloned(),
                    error: error.to_string(),
                },
            }
        }));
        // Each arrival is queued before the next one comes.
        tokio::task::yield_now().await;
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

/// Limits whose caller reports every answer, as the layer's services do.
fn limits(max_calls: u64, window: Duration) -> Limits {
    exact(max_calls, window)
        .limits()
        .clone()
        .reporting_answers()
}

#[tokio::test(start_paused = true)]
async fn a_deadline_before_the_earliest_slot_is_refused_at_once_with_that_slot() {
    let store = MemoryStore::new();
    let limits = limits(2, Duration::from_secs(1));
    let start = Instant::now();
    for _ in 0..2 {
        let admission = store.acquire(Key::from("k"), 1, &limits).await.unwrap();
        store.complete(&admission, Completion::Answered, &limits);
    }
    let place = Place::new().deadline(start + Duration::from_millis(500));
    let mut late = tokio_test::task::spawn(store.acquire_placed(Key::from("k"), 1, &limits, place));
    let error = match late.poll() {
        Poll::Ready(Err(error)) => error,
        other => panic!("refused at once, not {other:?}"),
    };
    let late = error
        .downcast_ref::<DeadlineUnreachable>()
        .expect("DeadlineUnreachable");
    assert_eq!(late.earliest(), Some(start + Duration::from_secs(1)));
    assert_eq!(late.deadline(), start + Duration::from_millis(500));
    // It consumed nothing: a request that can wait goes at the first slot.
    let place = Place::new().deadline(start + Duration::from_millis(1500));
    store
        .acquire_placed(Key::from("k"), 1, &limits, place)
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_request_pushed_past_its_deadline_by_a_higher_class_is_refused_and_never_admitted() {
    let store = MemoryStore::new();
    let limits = limits(1, Duration::from_secs(1));
    let plan = [
        Request::at(Duration::ZERO, Priority::Batch),
        Request {
            deadline: Some(Duration::from_millis(1500)),
            ..Request::at(Duration::from_millis(100), Priority::Interactive)
        },
        Request::at(Duration::from_millis(200), Priority::Critical),
    ];
    let outcomes = run(&store, &limits, &plan).await;
    assert_eq!(outcomes[0].admitted_at(), Some(Duration::ZERO));
    assert_eq!(outcomes[2].admitted_at(), Some(Duration::from_secs(1)));
    match &outcomes[1] {
        // Refused as soon as it is next and its slot (2 s) is past 1.5 s.
        Outcome::Refused {
            at,
            late: Some(late),
            ..
        } => {
            assert_eq!(*at, Duration::from_secs(1));
            assert!(late.earliest().is_some_and(|e| e > late.deadline()));
        }
        other => panic!("refused for its deadline, not {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn with_a_reserve_critical_requests_go_within_one_slot_while_batch_saturates() {
    let store = MemoryStore::new();
    let window = Duration::from_secs(1);
    let limits = exact(10, window)
        .reserve(Priority::Critical, 0.2)
        .unwrap()
        .limits()
        .clone()
        .reporting_answers();
    let mut plan: Vec<Request> = (0..200)
        .map(|_| Request::at(Duration::ZERO, Priority::Batch))
        .collect();
    let criticals: Vec<usize> = (0..12)
        .map(|i| {
            plan.push(Request::at(
                Duration::from_millis(500 + 1200 * i),
                Priority::Critical,
            ));
            plan.len() - 1
        })
        .collect();
    let outcomes = run(&store, &limits, &plan).await;
    let slot = window / 10;
    for &i in &criticals {
        let at = outcomes[i].admitted_at().expect("critical admitted");
        let waited = at - plan[i].arrive;
        assert!(waited <= slot, "critical {i} waited {waited:?}");
    }
    let mut batch: Vec<Duration> = outcomes[..200]
        .iter()
        .map(|o| o.admitted_at().expect("batch admitted"))
        .collect();
    // Batch keeps 2 of 10 free in every window, and still gets the rest.
    assert!(max_in_any_window(&mut batch, window) <= 8);
    let last = *batch.iter().max().unwrap();
    assert!(
        last <= Duration::from_secs(26),
        "200 batch at 8/s: {last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn aging_bounds_a_batch_request_behind_an_interactive_backlog() {
    let store = MemoryStore::new();
    let window = Duration::from_secs(1);
    let limits = limits(10, window);
    let mut plan: Vec<Request> = (0..300)
        .map(|_| Request::at(Duration::ZERO, Priority::Interactive))
        .collect();
    plan.push(Request::at(Duration::from_millis(50), Priority::Batch));
    let outcomes = run(&store, &limits, &plan).await;
    let waited = outcomes[300].admitted_at().expect("batch admitted") - plan[300].arrive;
    // The documented bound: promote_after (one window by default), then
    // the time the quota takes to have room for it: one window.
    assert!(
        waited <= limits.promote_after() + window,
        "batch waited {waited:?} behind 30 s of interactive work"
    );
    // Interactive requests kept their FIFO order.
    let ids: Vec<u64> = outcomes[..300]
        .iter()
        .map(|o| match o {
            Outcome::Admitted { id, .. } => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(start_paused = true)]
async fn tenants_weighted_1_1_2_get_25_25_50_and_absorb_an_idle_share() {
    let store = MemoryStore::new();
    let limits = limits(100, Duration::from_secs(1));
    let tenants = [Tenant::new("a"), Tenant::new("b"), Tenant::weighted("c", 2)];
    let backlog = [1500, 1500, 1000];
    let mut plan = Vec::new();
    let mut owner = Vec::new();
    for i in 0..1500 {
        for (t, tenant) in tenants.iter().enumerate() {
            if i < backlog[t] {
                plan.push(Request {
                    tenant: Some(tenant.clone()),
                    ..Request::at(Duration::ZERO, Priority::Batch)
                });
                owner.push(t);
            }
        }
    }
    // A tenant with one request, arriving behind 3,900 queued ones.
    plan.push(Request {
        tenant: Some(Tenant::new("newcomer")),
        ..Request::at(Duration::from_millis(10_050), Priority::Batch)
    });
    owner.push(3);
    let outcomes = run(&store, &limits, &plan).await;
    // Every request admitted, in the store's order of admission.
    let mut order: Vec<(u64, usize)> = outcomes
        .iter()
        .zip(&owner)
        .map(|(o, t)| match o {
            Outcome::Admitted { id, .. } => (*id, *t),
            other => panic!("{other:?}"),
        })
        .collect();
    order.sort_unstable();
    let share = |range: std::ops::Range<usize>, tenant: usize| {
        let len = range.len() as f64;
        order[range].iter().filter(|(_, t)| *t == tenant).count() as f64 / len
    };
    // Contending (past the first, unqueued window): 1:1:2.
    for (tenant, expected) in [(0, 0.25), (1, 0.25), (2, 0.5)] {
        let got = share(100..1700, tenant);
        assert!((got - expected).abs() <= 0.02, "tenant {tenant}: {got}");
    }
    // Once c's backlog is done, a and b share what it left.
    let c_done = order.iter().rposition(|(_, t)| *t == 2).unwrap();
    let after = c_done + 50..c_done + 850;
    for tenant in [0, 1] {
        let got = share(after.clone(), tenant);
        assert!((got - 0.5).abs() <= 0.02, "tenant {tenant} after c: {got}");
    }
    // The newcomer's one request went within a round of the others: at
    // most one admission per other tenant between its arrival and its own.
    let arrived = Duration::from_millis(10_050);
    let Outcome::Admitted { id: newcomer, .. } = outcomes.last().unwrap() else {
        panic!("the newcomer is admitted");
    };
    let before = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Admitted { id, at } if id < newcomer && *at >= arrived))
        .count();
    assert!(before <= 3, "{before} admissions went before the newcomer");
}

mod properties {
    use super::*;

    const UNIT: Duration = Duration::from_millis(10);

    fn plans() -> impl Strategy<Value = Vec<(u32, usize, Option<u32>)>> {
        prop::collection::vec(
            (0u32..5, 0usize..3, prop::option::weighted(0.3, 0u32..40)),
            1..50,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn classes_and_deadlines_keep_the_window_the_reserve_fifo_and_every_deadline(
            max_calls in 1u64..6,
            window in 1u32..30,
            reserve in prop::sample::select(vec![0.0, 0.2, 0.5]),
            plan in plans(),
        ) {
            let mut at = 0;
            let plan: Vec<Request> = plan
                .into_iter()
                .map(|(gap, class, deadline)| {
                    at += gap;
                    Request {
                        arrive: UNIT * at,
                        priority: Priority::ALL[class],
                        tenant: None,
                        deadline: deadline.map(|d| UNIT * (at + d)),
                    }
                })
                .collect();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let window = UNIT * window;
            let mut layer = exact(max_calls, window);
            if reserve > 0.0 {
                layer = layer.reserve(Priority::Critical, reserve).unwrap();
            }
            let limits = layer.limits().clone().reporting_answers();
            let outcomes = runtime.block_on(run(&MemoryStore::new(), &limits, &plan));

            // Never more than max_calls in any window; the classes below
            // critical never more than what the reserve leaves them.
            let mut all: Vec<Duration> = outcomes.iter().filter_map(Outcome::admitted_at).collect();
            prop_assert!(max_in_any_window(&mut all, window) <= max_calls as usize);
            let kept = limits.reserved_units(Priority::Interactive, max_calls);
            let mut below: Vec<Duration> = outcomes
                .iter()
                .zip(&plan)
                .filter(|(_, r)| r.priority != Priority::Critical)
                .filter_map(|(o, _)| o.admitted_at())
                .collect();
            prop_assert!(max_in_any_window(&mut below, window) <= (max_calls - kept) as usize);

            for (i, (outcome, request)) in outcomes.iter().zip(&plan).enumerate() {
                match (outcome, request.deadline) {
                    (Outcome::Admitted { at, .. }, Some(deadline)) => {
                        prop_assert!(*at <= deadline, "{i} admitted at {at:?} after {deadline:?}");
                    }
                    (Outcome::Admitted { .. }, None) => {}
                    (Outcome::Refused { at, late: Some(late), .. }, Some(deadline)) => {
                        // At once, because its earliest slot lies past it,
                        // or at its deadline at the latest.
                        prop_assert!(*at <= deadline, "{i} refused late");
                        if *at == request.arrive && late.earliest().is_some() {
                            prop_assert!(late.earliest() > Some(late.deadline()));
                        }
                    }
                    (Outcome::Refused { error, .. }, _) => {
                        prop_assert!(false, "{i} refused without a deadline: {error}");
                    }
                }
            }

            // FIFO within a class.
            for class in Priority::ALL {
                let ids: Vec<u64> = outcomes
                    .iter()
                    .zip(&plan)
                    .filter(|(_, r)| r.priority == class)
                    .filter_map(|(o, _)| match o {
                        Outcome::Admitted { id, .. } => Some(*id),
                        Outcome::Refused { .. } => None,
                    })
                    .collect();
                prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "{class}: {ids:?}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_layer_reads_deadlines_from_extensions_and_grpc_timeout() {
    let service = exact(1, Duration::from_secs(1))
        .place_fn(PlaceFromExtensions)
        .layer(service_fn(|_request: http::Request<()>| async {
            Ok::<_, Infallible>(Instant::now())
        }));
    let start = Instant::now();
    service
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    // The next slot is 1 s away.
    let mut late = http::Request::new(());
    late.extensions_mut()
        .insert(Deadline(start + Duration::from_millis(300)));
    let error = service.clone().oneshot(late).await.unwrap_err();
    let late = error
        .downcast_ref::<DeadlineUnreachable>()
        .expect("DeadlineUnreachable");
    assert_eq!(late.earliest(), Some(start + Duration::from_secs(1)));
    assert_eq!(Instant::now(), start, "refused at once");
    let grpc = http::Request::builder()
        .header("grpc-timeout", "500m")
        .body(())
        .unwrap();
    let error = service.clone().oneshot(grpc).await.unwrap_err();
    assert!(
        error.downcast_ref::<DeadlineUnreachable>().is_some(),
        "{error}"
    );
    let patient = http::Request::builder()
        .header("grpc-timeout", "2S")
        .body(())
        .unwrap();
    let admitted = service.oneshot(patient).await.unwrap();
    assert_eq!(admitted - start, Duration::from_secs(1));
}

/// Regression: a waiter that was not the head woke the head whenever it
/// was polled; three waiters polled by one task (`join!`) then woke each
/// other for ever, and the paused clock never moved on.
#[tokio::test(start_paused = true)]
async fn waiters_polled_by_one_task_do_not_wake_each_other_for_ever() {
    let store = MemoryStore::new();
    let limits = limits(1, Duration::from_secs(1));
    let key = || Key::from("k");
    store.acquire(key(), 1, &limits).await.unwrap();
    let (a, b, c) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            store.acquire(key(), 1, &limits),
            store.acquire(key(), 1, &limits),
            store.acquire(key(), 1, &limits),
        )
    })
    .await
    .expect("the three are admitted, one per window, without spinning");
    let waited = [a, b, c].map(|admission| admission.unwrap().waited());
    assert!(waited[0] >= Duration::from_secs(1), "{waited:?}");
    assert!(waited[0] < waited[1] && waited[1] < waited[2], "{waited:?}");
    assert!(waited[2] <= Duration::from_secs(4), "{waited:?}");
}
