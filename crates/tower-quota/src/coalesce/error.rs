//! What a caller of a coalesced request gets instead of a response.

use std::fmt;
use std::sync::Arc;

/// The error of a request through [`Coalesce`](super::Coalesce), shared by
/// every caller of the call. Returned boxed; downcast to tell the cases
/// apart.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CoalesceError {
    /// The inner service failed.
    Upstream(Arc<dyn std::error::Error + Send + Sync>),
    /// The response body failed, or was longer than `max_body_bytes`.
    Body(Arc<dyn std::error::Error + Send + Sync>),
    /// The call's task ended without an answer (its runtime shut down).
    Closed,
}

impl fmt::Display for CoalesceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoalesceError::Upstream(error) => write!(f, "upstream call failed: {error}"),
            CoalesceError::Body(error) => write!(f, "response body could not be read: {error}"),
            CoalesceError::Closed => f.write_str("coalesced call ended without an answer"),
        }
    }
}

impl std::error::Error for CoalesceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CoalesceError::Upstream(error) | CoalesceError::Body(error) => {
                Some(&**error as &(dyn std::error::Error + 'static))
            }
            CoalesceError::Closed => None,
        }
    }
}
