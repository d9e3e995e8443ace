//! What every test here does: a provider, and a reqwest client with the
//! middleware in front of it.

use std::time::Duration;

use quota_mock::{MockServer, Rule, Scripted};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware};

/// A plain-HTTP reqwest client for loopback: no proxy from the environment.
pub(crate) fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client without TLS builds")
}

/// `reqwest_client` behind `middleware`, and nothing else.
pub(crate) fn client_with(middleware: impl Middleware) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest_client())
        .with(middleware)
        .build()
}

/// A provider that refuses more than `limit` in any `window`, and answers
/// the first requests as `scripted` says.
pub(crate) async fn provider(
    limit: u64,
    window: Duration,
    scripted: Option<Scripted>,
) -> MockServer {
    let mut builder = MockServer::builder().rule(Rule::sliding_log(limit, window));
    if let Some(scripted) = scripted {
        builder = builder.scripted(scripted);
    }
    builder.start().await.expect("the provider starts")
}
