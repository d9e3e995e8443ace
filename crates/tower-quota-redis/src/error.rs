//! Errors of the Redis store.
//!
//! Like every store error they reach the caller inside the service's
//! [`BoxError`](tower_quota::BoxError); tell them apart with `downcast_ref`.
//! The limiter's own refusals are the same types as with the in-process
//! store: `tower_quota::sliding_window::Overloaded` (the wait Redis reserved
//! exceeds `max_wait`, or `max_queue` requests already wait) and
//! `CostTooLarge`, so callers handle one set of errors whichever store is
//! used.

use std::fmt;
use std::time::Duration;

use tower_quota::Key;

/// What went wrong between the store and Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisStoreErrorKind {
    /// Redis did not answer within the store's timeout.
    Timeout,
    /// The connection failed or was refused, or the server is not (or no
    /// longer) the writable master of the key: `READONLY`, `MASTERDOWN`,
    /// `CLUSTERDOWN`, `TRYAGAIN` and redirections left after the retries,
    /// as during a failover. The store reconnects (and, with a cluster or
    /// Sentinels, finds the new master) by itself.
    Connection,
    /// Redis answered with an error (a script error, an ACL refusal).
    Response,
    /// The builder's settings or the URL were rejected.
    Config,
}

impl RedisStoreErrorKind {
    /// A short stable name, recorded as `error.kind` in `store_error` events.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisStoreErrorKind::Timeout => "timeout",
            RedisStoreErrorKind::Connection => "connection",
            RedisStoreErrorKind::Response => "response",
            RedisStoreErrorKind::Config => "config",
        }
    }
}

impl fmt::Display for RedisStoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The store could not reach a decision through Redis.
///
/// Returned by [`RedisStoreBuilder::build`](crate::RedisStoreBuilder::build),
/// and by admissions under [`FailurePolicy::FailClosed`](crate::FailurePolicy::FailClosed).
/// Its message never contains the URL or the password.
#[derive(Debug)]
pub struct RedisStoreError {
    kind: RedisStoreErrorKind,
    key: Option<Key>,
    detail: String,
    source: Option<redis::RedisError>,
    suspended: bool,
}

impl RedisStoreError {
    pub(crate) fn timeout(key: Option<Key>, timeout: Duration) -> Self {
        RedisStoreError {
            kind: RedisStoreErrorKind::Timeout,
            key,
            detail: format!("no answer within {timeout:?}"),
            source: None,
            suspended: false,
        }
    }

    pub(crate) fn config(detail: impl Into<String>) -> Self {
        RedisStoreError {
            kind: RedisStoreErrorKind::Config,
            key: None,
            detail: detail.into(),
            source: None,
            suspended: false,
        }
    }

    pub(crate) fn redis(key: Option<Key>, error: redis::RedisError) -> Self {
        let kind = if error.is_timeout() {
            RedisStoreErrorKind::Timeout
        } else if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error()
            || is_failover(&error)
        {
            RedisStoreErrorKind::Connection
        } else if key.is_none() && error.kind() == redis::ErrorKind::InvalidClientConfig {
            RedisStoreErrorKind::Config
        } else {
            RedisStoreErrorKind::Response
        };
        RedisStoreError {
            kind,
            key,
            // The error's category only: redis-rs's messages may quote a
            // client configuration, which can hold a password.
            detail: format!("{:?}", error.kind()),
            source: Some(error),
            suspended: false,
        }
    }

    pub(crate) fn suspended(key: Key) -> Self {
        RedisStoreError {
            kind: RedisStoreErrorKind::Connection,
            key: Some(key),
            detail: "not asked: Redis failed moments ago and is not waited on again yet".into(),
            source: None,
            suspended: true,
        }
    }

    /// Whether Redis was not asked at all, because it failed moments ago
    /// (within one timeout period).
    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// The same error, for another request of the same batch.
    pub(crate) fn duplicate(&self) -> Self {
        RedisStoreError {
            kind: self.kind,
            key: self.key.clone(),
            detail: self.detail.clone(),
            source: self.source.clone(),
            suspended: self.suspended,
        }
    }

    pub(crate) fn unexpected_reply(key: Key, detail: impl Into<String>) -> Self {
        RedisStoreError {
            kind: RedisStoreErrorKind::Response,
            key: Some(key),
            detail: detail.into(),
            source: None,
            suspended: false,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> RedisStoreErrorKind {
        self.kind
    }

    /// The key of the admission that failed; `None` for errors of
    /// [`build`](crate::RedisStoreBuilder::build).
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// The Redis error behind this one, if any.
    pub fn redis_error(&self) -> Option<&redis::RedisError> {
        self.source.as_ref()
    }
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis store {} error", self.kind)?;
        if let Some(key) = &self.key {
            write!(f, " for key `{key}`")?;
        }
        write!(f, ": {}", self.detail)
    }
}

impl std::error::Error for RedisStoreError {}

/// Whether the server said it cannot take writes for the key now: a
/// failover or resharding in progress, not a fault of the call.
fn is_failover(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
    )
}
