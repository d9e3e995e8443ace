//! Provider configuration: a TOML table per provider that builds a stack
//! per provider and routes each request to it by host (feature `config`).
//!
//! # The problem
//!
//! A data pipeline calls several providers, each with its own quotas,
//! retry habits and patience, and the people who run it change those
//! numbers more often than the code. They belong in a file, next to the
//! rest of the pipeline's settings, checked when the file is read: a typo
//! found at start-up, with the field and the value named, not a 429 storm
//! an hour into the run.
//!
//! # The table
//!
//! ```toml
//! unknown_hosts = "pass_through"   # or "reject": hosts no provider lists
//!
//! [providers.openai]
//! hosts = ["api.openai.com"]       # "host" or "host:port"
//! key = "global"                   # or "host", "path", "header:x-api-key" (hashed, keyed)
//! max_wait = "30s"                 # longest wait for quota or a server's pause
//! max_queue = 1000                 # most requests waiting per key
//! safety_margin = "5ms"            # held past each window for the server's clock
//! sent_within = "100ms"            # a request in flight reached the provider by then
//! strict = false                   # true: hold each slot until its answer, however long
//! follow_announced_quotas = false  # true: hold keys to a smaller quota the provider announces
//! quotas = [
//!     { max_calls = 500, window = "1m", per_request = true },
//!     { max_calls = 200000, window = "1m" },
//! ]
//!
//! [providers.openai.retry]
//! max_retries = 3                  # retries after the first attempt, every layer together
//! base = "100ms"                   # first backoff, before jitter; doubles each retry
//! cap = "10s"                      # no backoff is longer
//! strategy = "full"                # full | equal | decorrelated | none
//! max_elapsed = "60s"              # no retry later than this after the first attempt
//! all_methods = false              # retry POST and other non-idempotent requests too
//! max_pause = "5m"                 # longest pause a server's word holds a key; then a probe
//! ```
//!
//! Durations are written as [humantime](https://docs.rs/humantime) reads
//! them: `"250ms"`, `"1s"`, `"1m"`, `"1h 30m"`. Only `hosts` and `quotas`
//! are required; see [`ProviderConfig`] and [`RetryConfig`] for the
//! defaults. Unknown fields are errors, so a misspelt setting is never
//! silently ignored.
//!
//! # What it builds
//!
//! [`ProvidersConfig::layer`] builds, per provider,
//! [`JitterBackoffLayer`](crate::JitterBackoffLayer) →
//! [`RetryAfterLayer`](crate::RetryAfterLayer) →
//! [`SlidingWindowLayer`](crate::SlidingWindowLayer), keyed by the
//! provider's [`KeyConfig`] under the provider's name, and a
//! [`ProviderRouter`] that sends each request through the stack of the
//! provider listing its host. A request to another host goes to the inner
//! service unlimited, or is refused with [`UnknownHost`].
//!
//! Every key starts with the provider's name, so providers never share a
//! quota, even when every provider keeps its admissions in one shared store
//! ([`ProvidersConfig::layer_with_store`], for example Redis).
//!
//! # Errors
//!
//! A configuration that makes no sense is refused when it is read, by
//! [`ProvidersConfig::from_toml`], with a [`ConfigError`] naming the field
//! and the value:
//!
//! ```text
//! providers.openai.quotas[1].max_calls: 0 is invalid: max_calls must be at least 1
//! providers.openai.quotas[0].window: invalid value: string "1 fortnight", expected a duration (line 3, column 38)
//! ```
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_quota::config::{ProvidersConfig, RoutedBody};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! let config = ProvidersConfig::from_toml(r#"
//!     [providers.search]
//!     hosts = ["search.example.com"]
//!     quotas = [{ max_calls = 1, window = "1s" }]
//!     safety_margin = "0s"
//! "#)?;
//!
//! let client = ServiceBuilder::new()
//!     .layer(config.layer()?)
//!     .service(service_fn(|_request: http::Request<RoutedBody<Empty<Bytes>>>| async {
//!         Ok::<_, tower_quota::BoxError>(http::Response::new(tokio::time::Instant::now()))
//!     }));
//!
//! let start = tokio::time::Instant::now();
//! let get = |uri: &str| http::Request::get(uri).body(Empty::<Bytes>::new());
//! client.clone().oneshot(get("https://search.example.com/q")?).await?;
//! // The provider's quota: the second request waits a second.
//! let second = client.clone().oneshot(get("https://search.example.com/q")?).await?;
//! assert_eq!(*second.body() - start, Duration::from_secs(1));
//! // Other hosts pass through, unlimited.
//! let other = client.oneshot(get("https://other.example.com/")?).await?;
//! assert_eq!(*other.body() - start, Duration::from_secs(1));
//! # Ok(())
//! # }
//! ```

mod build;
mod error;
mod key;
mod place;
mod router;
mod schema;

pub use error::ConfigError;
pub use key::{KeyHasher, ProviderKey};
pub use place::ProviderPlace;
pub use router::{ProviderRouter, ProvidersLayer, RoutedBody, RouterFuture, UnknownHost};
pub use schema::{
    KeyConfig, ProviderConfig, ProvidersConfig, QuotaConfig, RetryConfig, Share, Strategy,
    UnknownHosts,
};

use crate::sliding_window::{MemoryStore, Store};

impl ProvidersConfig {
    /// Reads and checks a TOML document.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field and the value: TOML syntax, a
    /// value of the wrong type, an unknown field, or a value that makes no
    /// sense (see [`validate`](Self::validate)).
    pub fn from_toml(source: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(source)
            .map_err(|error| ConfigError::toml(String::new(), &error, source))?;
        let config: ProvidersConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let path = error.path().to_string();
                let path = if path == "." { String::new() } else { path };
                ConfigError::toml(path, error.inner(), source)
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes the configuration as a TOML document that
    /// [`from_toml`](Self::from_toml) reads back as it was.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if TOML cannot represent it (it always can for a
    /// configuration that was read from TOML).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self)
            .map_err(|error| ConfigError::invalid(String::new(), "configuration", error))
    }

    /// Checks every value: at least one host and one quota per provider, no
    /// host listed twice, `max_calls` at least 1, windows between zero and a
    /// year, `max_retries` at most 100, a backoff `cap` not below its
    /// `base`. [`from_toml`](Self::from_toml) calls it; call it yourself
    /// after deserializing with serde from another format.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for the first value at fault, naming its path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        build::build(self, MemoryStore::new()).map(|_| ())
    }

    /// Builds every provider's layers, keeping admissions in this process.
    /// `B` is the request body type of the callers.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] as for [`validate`](Self::validate).
    pub fn layer<B>(&self) -> Result<ProvidersLayer<B>, ConfigError> {
        self.layer_with_store(MemoryStore::new())
    }

    /// Builds every provider's layers, keeping admissions in `store`, shared
    /// by all providers (their keys start with their names, so they never
    /// share a quota): a Redis store lets many processes share each quota.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] as for [`validate`](Self::validate).
    pub fn layer_with_store<B, St: Store>(
        &self,
        store: St,
    ) -> Result<ProvidersLayer<B, St>, ConfigError> {
        let built = build::build(self, store)?;
        Ok(ProvidersLayer::new(
            built.providers,
            built.routes,
            self.unknown_hosts,
        ))
    }
}

#[cfg(test)]
mod tests;
