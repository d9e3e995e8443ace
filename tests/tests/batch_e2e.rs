//! Batches against quota-mock enforcing a quota in items: the batch's cost,
//! the sum of its items' costs, is what the provider charges.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Rule};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_quota::batch::BatchLayer;
use tower_quota::{BoxError, CostFromExtension, RequestCost, SlidingWindowLayer};

/// Units (tokens) per minute.
const QUOTA: u64 = 1_000;
const WINDOW: Duration = Duration::from_secs(60);
const RECORDS: u64 = 3_000;
const BATCH: usize = 100;

/// Record `n` costs 1 to 3 tokens.
fn tokens(record: &u64) -> u64 {
    record % 3 + 1
}

/// The paused clock runs the quota's minutes at once; strict pacing holds
/// each admission until its answer, so the jumps of a paused clock while a
/// request is on the socket cannot let the provider count early.
#[tokio::test(start_paused = true)]
async fn a_batch_spends_the_sum_of_its_items_costs_and_is_never_refused() {
    let _turn = crate::support::beside_others().await;
    let server = MockServer::builder()
        .on_caller_runtime()
        .rule(Rule::sliding_log(QUOTA, WINDOW).weighted())
        .cost_header(HeaderName::from_static("x-cost"))
        .start()
        .await
        .unwrap();
    let url = format!("{}/v1/embeddings", server.url());
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stack = ServiceBuilder::new()
        .layer(
            SlidingWindowLayer::new(QUOTA, WINDOW)
                .unwrap()
                .cost_fn(CostFromExtension)
                .strict(),
        )
        // The provider counts the batch's cost from a header, as a real
        // one counts the inputs of the body.
        .map_request(|mut request: http::Request<Full<Bytes>>| {
            let cost = request.extensions().get::<RequestCost>().map_or(1, |c| c.0);
            request.headers_mut().insert("x-cost", cost.into());
            request
        })
        .service(client);
    let batcher = BatchLayer::new(
        move |records: &[u64]| {
            let body: Vec<String> = records.iter().map(u64::to_string).collect();
            http::Request::post(url.as_str())
                .body(Full::new(Bytes::from(body.join(","))))
                .expect("a valid request")
        },
        |response: http::Response<hyper::body::Incoming>, items: usize| async move {
            let status = response.status();
            response.into_body().collect().await?;
            if !status.is_success() {
                return Err::<Vec<u16>, BoxError>(format!("status {status}").into());
            }
            Ok(vec![status.as_u16(); items])
        },
    )
    .max_items(BATCH)
    .unwrap()
    .max_delay(Duration::from_millis(5))
    .item_cost(tokens)
    .layer(stack);

    let mut tasks = tokio::task::JoinSet::new();
    for record in 0..RECORDS {
        let mut batcher = batcher.clone();
        batcher.ready().await.unwrap();
        let answer = tower::Service::call(&mut batcher, record);
        tasks.spawn(answer);
    }
    let mut succeeded = 0;
    while let Some(answer) = tasks.join_next().await {
        assert_eq!(answer.unwrap().unwrap(), 200);
        succeeded += 1;
    }
    assert_eq!(succeeded, RECORDS);

    let stats = server.stats();
    assert_eq!(
        stats.count(429),
        0,
        "refused batches: {:?}",
        stats.by_status
    );
    // One request per 100 records, each charged its records' tokens.
    assert_eq!(stats.total, RECORDS / BATCH as u64);
    let charged: u64 = stats.arrivals.iter().map(|arrival| arrival.cost).sum();
    assert_eq!(
        charged,
        (0..RECORDS).map(|record| tokens(&record)).sum::<u64>()
    );
    for arrival in &stats.arrivals {
        assert!((BATCH as u64..=3 * BATCH as u64).contains(&arrival.cost));
    }
    let busiest = stats.rules[0].max_accepted_in_any_window;
    assert!(busiest <= QUOTA, "{busiest} tokens in one window");
    // The quota was the bottleneck: its windows were nearly full.
    assert!(busiest > QUOTA - 3 * BATCH as u64, "{busiest}");
}
