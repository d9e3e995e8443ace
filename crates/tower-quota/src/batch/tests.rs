use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

use super::{Batch, BatchError, BatchLayer};
use crate::{BoxError, RequestCost};

/// One batch as the endpoint saw it: its items, its cost, when it came.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    items: Vec<u32>,
    cost: Option<u64>,
    at: Duration,
}

type Log = Arc<Mutex<Vec<Sent>>>;

/// A batch endpoint that answers each item `n` with `n * 10`, and fails a
/// batch holding 13.
fn endpoint(
    start: Instant,
) -> (
    impl Service<
        http::Request<Vec<u32>>,
        Response = http::Response<Vec<u32>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static,
    Log,
) {
    let log = Log::default();
    let seen = Arc::clone(&log);
    let service = service_fn(move |request: http::Request<Vec<u32>>| {
        let cost = request.extensions().get::<RequestCost>().map(|cost| cost.0);
        let items = request.into_body();
        seen.lock().unwrap().push(Sent {
            items: items.clone(),
            cost,
            at: start.elapsed(),
        });
        async move {
            if items.contains(&13) {
                return Err::<_, BoxError>("item 13 is refused".into());
            }
            Ok(http::Response::new(items.iter().map(|n| n * 10).collect()))
        }
    });
    (service, log)
}

type CombineFn = fn(&[u32]) -> http::Request<Vec<u32>>;
type SplitFn =
    fn(http::Response<Vec<u32>>, usize) -> std::future::Ready<Result<Vec<u32>, Infallible>>;

fn layer() -> BatchLayer<u32, CombineFn, SplitFn> {
    BatchLayer::new(
        |items: &[u32]| http::Request::new(items.to_vec()),
        |response: http::Response<Vec<u32>>, _items: usize| {
            std::future::ready(Ok(response.into_body()))
        },
    )
}

/// Sends each item from a task of its own, in order.
async fn send_all(
    batcher: &Batch<u32, u32>,
    items: impl IntoIterator<Item = u32>,
) -> Vec<tokio::task::JoinHandle<Result<u32, BoxError>>> {
    let mut tasks = Vec::new();
    for item in items {
        let mut batcher = batcher.clone();
        batcher.ready().await.unwrap();
        let answer = batcher.call(item);
        tasks.push(tokio::spawn(answer));
    }
    tasks
}

async fn outputs(tasks: Vec<tokio::task::JoinHandle<Result<u32, BoxError>>>) -> Vec<u32> {
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await.unwrap().unwrap());
    }
    outputs
}

#[tokio::test(start_paused = true)]
async fn full_batches_leave_at_once_and_the_rest_after_max_delay() {
    let start = Instant::now();
    let (service, log) = endpoint(start);
    let batcher = layer()
        .max_items(3)
        .unwrap()
        .max_delay(Duration::from_millis(50))
        .layer(service);
    let tasks = send_all(&batcher, 1..=7).await;
    assert_eq!(outputs(tasks).await, [10, 20, 30, 40, 50, 60, 70]);
    let log = log.lock().unwrap().clone();
    let batches: Vec<_> = log.iter().map(|sent| sent.items.clone()).collect();
    assert_eq!(batches, [vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    assert_eq!(log[0].at, Duration::ZERO, "a full batch does not wait");
    assert_eq!(log[1].at, Duration::ZERO);
    assert_eq!(
        log[2].at,
        Duration::from_millis(50),
        "the rest waits max_delay"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_does_not_fill_leaves_after_max_delay() {
    let start = Instant::now();
    let (service, log) = endpoint(start);
    let batcher = layer()
        .max_items(100)
        .unwrap()
        .max_delay(Duration::from_millis(20))
        .layer(service);
    let first = send_all(&batcher, [1, 2]).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(log.lock().unwrap().is_empty(), "sent before max_delay");
    let second = send_all(&batcher, [3]).await;
    assert_eq!(outputs(first).await, [10, 20]);
    assert_eq!(outputs(second).await, [30]);
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [Sent {
            items: vec![1, 2, 3],
            cost: Some(3),
            at: Duration::from_millis(20),
        }],
        "max_delay counts from the batch's first item"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_drops_its_future_leaves_the_batch() {
    let (service, log) = endpoint(Instant::now());
    let batcher = layer()
        .max_items(10)
        .unwrap()
        .max_delay(Duration::from_millis(20))
        .layer(service);
    let mut tasks = send_all(&batcher, [1, 2, 3]).await;
    let dropped = tasks.remove(1);
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    assert_eq!(outputs(tasks).await, [10, 30]);
    let batches: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.items.clone())
        .collect();
    assert_eq!(batches, [vec![1, 3]], "the dropped item was sent");
    // Its place in max_pending was given back.
    assert_eq!(batcher.available(), 10_000);
}

#[tokio::test(start_paused = true)]
async fn a_batch_costs_the_sum_of_its_items_costs() {
    let (service, log) = endpoint(Instant::now());
    let batcher = layer()
        .max_items(3)
        .unwrap()
        .item_cost(|item: &u32| u64::from(*item))
        .layer(service);
    let tasks = send_all(&batcher, [5, 6, 7, 8]).await;
    outputs(tasks).await;
    let costs: Vec<_> = log.lock().unwrap().iter().map(|s| s.cost).collect();
    assert_eq!(costs, [Some(18), Some(8)]);
}

#[tokio::test(start_paused = true)]
async fn max_bytes_closes_a_batch_before_the_item_that_would_pass_it() {
    let (service, log) = endpoint(Instant::now());
    let batcher = layer()
        .max_bytes(10, |item: &u32| *item as usize)
        .unwrap()
        .layer(service);
    let tasks = send_all(&batcher, [4, 4, 4, 2, 30, 1]).await;
    assert_eq!(outputs(tasks).await, [40, 40, 40, 20, 300, 10]);
    let batches: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.items.clone())
        .collect();
    // 4+4 then 4+2, then 30 alone (heavier than max_bytes), then 1.
    assert_eq!(batches, [vec![4, 4], vec![4, 2], vec![30], vec![1]]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_fails_each_of_its_items_with_the_batch_error() {
    let (service, log) = endpoint(Instant::now());
    let batcher = layer().max_items(3).unwrap().layer(service);
    let tasks = send_all(&batcher, [1, 13, 3]).await;
    for task in tasks {
        let error = task.await.unwrap().unwrap_err();
        match error.downcast_ref::<BatchError>() {
            Some(BatchError::Failed { items: 3, source }) => {
                assert_eq!(source.to_string(), "item 13 is refused");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(log.lock().unwrap().len(), 1, "sent once");
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_split_in_halves_fails_only_its_bad_item() {
    let (service, log) = endpoint(Instant::now());
    let batcher = layer()
        .max_items(4)
        .unwrap()
        .split_failed_batches(true)
        .layer(service);
    let tasks = send_all(&batcher, [1, 2, 13, 4]).await;
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap().ok());
    }
    assert_eq!(answers, [Some(10), Some(20), None, Some(40)]);
    let mut batches: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.items.clone())
        .collect();
    batches.sort();
    assert_eq!(
        batches,
        [
            vec![1, 2],
            vec![1, 2, 13, 4],
            vec![4],
            vec![13],
            vec![13, 4]
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_response_with_too_few_outputs_is_a_split_error() {
    let (service, _log) = endpoint(Instant::now());
    let batcher = BatchLayer::new(
        |items: &[u32]| http::Request::new(items.to_vec()),
        |_response: http::Response<Vec<u32>>, _items: usize| {
            std::future::ready(Ok::<_, Infallible>(vec![1]))
        },
    )
    .max_items(2)
    .unwrap()
    .layer(service);
    let tasks = send_all(&batcher, [1, 2]).await;
    for task in tasks {
        let error = task.await.unwrap().unwrap_err();
        assert!(
            matches!(
                error.downcast_ref::<BatchError>(),
                Some(BatchError::Split { items: 2, .. })
            ),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("split gave 1 outputs for 2 items")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn poll_ready_waits_while_max_pending_items_are_unanswered() {
    let (service, _log) = endpoint(Instant::now());
    let mut batcher = layer()
        .max_items(2)
        .unwrap()
        .max_pending(2)
        .unwrap()
        .max_delay(Duration::from_millis(10))
        .layer(service);
    let tasks = send_all(&batcher, [1]).await;
    batcher.ready().await.unwrap();
    let second = batcher.call(2);
    // Two pending: not ready, and a call without readiness is refused.
    let mut third = tokio_test::task::spawn(batcher.ready());
    tokio_test::assert_pending!(third.poll());
    drop(third);
    let refused = batcher.call(3).await.unwrap_err();
    assert!(matches!(
        refused.downcast_ref::<BatchError>(),
        Some(BatchError::QueueFull { max_pending: 2 })
    ));
    assert_eq!(second.await.unwrap(), 20);
    assert_eq!(outputs(tasks).await, [10]);
    // Answered: room again.
    batcher.ready().await.unwrap();
    assert_eq!(batcher.call(4).await.unwrap(), 40);
}

#[test]
fn settings_that_cannot_work_are_refused() {
    use super::InvalidBatch;
    assert_eq!(
        layer().max_items(0).unwrap_err(),
        InvalidBatch::ZeroMaxItems
    );
    assert_eq!(
        layer().max_items(20_000).unwrap_err(),
        InvalidBatch::MaxPendingBelowMaxItems {
            max_pending: 10_000,
            max_items: 20_000
        }
    );
    assert_eq!(
        layer().max_pending(5).unwrap_err(),
        InvalidBatch::MaxPendingBelowMaxItems {
            max_pending: 5,
            max_items: 100
        }
    );
    assert_eq!(
        layer().max_bytes(0, |_: &u32| 1).unwrap_err(),
        InvalidBatch::ZeroMaxBytes
    );
}

#[tokio::test(start_paused = true)]
async fn a_max_delay_too_long_for_the_clock_leaves_only_size_to_close_a_batch() {
    let (service, log) = endpoint(Instant::now());
    let batcher = layer()
        .max_items(2)
        .unwrap()
        .max_delay(Duration::MAX)
        .layer(service);
    let tasks = send_all(&batcher, [1, 2]).await;
    assert_eq!(outputs(tasks).await, [10, 20]);
    assert_eq!(log.lock().unwrap().len(), 1);
}
