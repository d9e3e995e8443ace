use std::time::Duration;

use quota_headers::Signal;

/// What the server said about its quota, attached to every response that
/// passes through [`RetryAfter`](super::RetryAfter) with something to say,
/// for the layers above and for users: one whose headers carry a rate-limit
/// signal, or whose request was re-sent or waited at its gate. Its absence
/// means one attempt, no wait and an empty signal.
///
/// ```
/// # fn read(response: &http::Response<()>) {
/// use tower_quota::retry_after::ServerSignal;
///
/// if let Some(server) = response.extensions().get::<ServerSignal>() {
///     if let Some(delay) = server.signal().retry_after {
///         println!("server asked for {delay:?}; {} attempts so far", server.attempts());
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSignal {
    pub(crate) signal: Signal,
    pub(crate) attempts: u32,
    pub(crate) waited: Duration,
}

impl ServerSignal {
    /// The signal parsed from the final response's status and headers.
    pub fn signal(&self) -> &Signal {
        &self.signal
    }

    /// How many attempts the layer sent, the final one included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long the request waited at its key's gate, over all attempts.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether the layer already waited out the server's delay before the
    /// final attempt: a retry layer above should not wait it again.
    pub fn delay_observed(&self) -> bool {
        self.attempts > 1
    }
}
