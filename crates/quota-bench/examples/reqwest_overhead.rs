//! What `tower-quota-reqwest`'s `QuotaMiddleware` costs per request, with
//! no network: a reqwest-middleware chain whose last middleware answers
//! 200 itself, with and without `QuotaMiddleware::new` (a huge quota, a
//! 1 ms window) in front of it, one request at a time.
//!
//! ```text
//! cargo build --release -p quota-bench --example reqwest_overhead
//! target/release/examples/reqwest_overhead quota-post 20000   # time per request
//! for n in 10000 20000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/reqwest_overhead quota-post $n 2>&1 | grep refs
//! done
//! ```
//!
//! Modes: `bare` and `quota` (GETs), `bare-post` and `quota-post` (POSTs
//! of a 16 KiB in-memory body). The difference of two callgrind totals
//! divided by 10,000 is the instructions per request; `quota` less `bare`
//! is the middleware's part: the stack, the conversions between reqwest's
//! and `http`'s requests and responses, and the stack built per request.

use std::time::Duration;

use bytes::Bytes;
use http::Extensions;
use reqwest_middleware::{ClientBuilder, Middleware, Next};
use tower_quota_reqwest::QuotaMiddleware;

/// The end of the chain: 200, and the request dropped.
struct Answer;

#[async_trait::async_trait]
impl Middleware for Answer {
    async fn handle(
        &self,
        request: reqwest::Request,
        _: &mut Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        drop(request);
        Ok(reqwest::Response::from(http::Response::new(
            reqwest::Body::from(Bytes::new()),
        )))
    }
}

fn main() -> Result<(), tower_quota::BoxError> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "quota".to_owned());
    let requests: u32 = args.next().map_or(Ok(10_000), |n| n.parse())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let mut builder = ClientBuilder::new(reqwest::Client::builder().no_proxy().build()?);
    if mode.starts_with("quota") {
        builder = builder.with(QuotaMiddleware::new(1 << 40, Duration::from_millis(1))?);
    }
    let client = builder.with(Answer).build();
    let body = Bytes::from(vec![b'x'; 16 * 1024]);
    let post = mode.ends_with("post");
    let elapsed = runtime.block_on(async {
        let start = tokio::time::Instant::now();
        for _ in 0..requests {
            let request = if post {
                client
                    .post("http://api.example.com/v1/items?page=2")
                    .body(body.clone())
            } else {
                client.get("http://api.example.com/v1/items?page=2")
            };
            let response = request.send().await?;
            if !response.status().is_success() {
                return Err(tower_quota::BoxError::from("the chain's answer is 200"));
            }
        }
        Ok(start.elapsed())
    })?;
    println!("{mode}: {:?} per request", elapsed / requests.max(1));
    Ok(())
}
