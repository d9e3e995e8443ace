//! The retry decision for one logical request.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tower::retry::budget::Budget;

use super::RetryBudget;
use super::layer::Config;
use crate::attempts::{AttemptBudget, WaitBudget};
pub(super) use crate::classify::is_idempotent;
use crate::classify::{Classify, Outcome, error_kind};
use crate::replay::ReplayBody;
use crate::retry_after::ServerSignal;
use crate::{BoxError, telemetry};

/// What one logical request knows about its retries.
pub(super) struct Policy<C> {
    config: Arc<Config>,
    classifier: C,
    budget: Option<RetryBudget>,
    attempts: AttemptBudget,
    /// The waiting left to the logical request, shared with the layers below.
    waits: WaitBudget,
    started: Instant,
    /// Seed of this request's random stream, when the layer is seeded.
    seed: Option<u64>,
    /// Drawn at the first retry: a request that never fails costs nothing.
    rng: Option<SmallRng>,
    retries: u32,
    previous_delay: Duration,
}

impl<C> Policy<C> {
    pub(super) fn new(
        config: Arc<Config>,
        classifier: C,
        budget: Option<RetryBudget>,
        attempts: AttemptBudget,
        waits: WaitBudget,
        seed: Option<u64>,
    ) -> Self {
        Policy {
            config,
            classifier,
            budget,
            attempts,
            waits,
            started: Instant::now(),
            seed,
            rng: None,
            retries: 0,
            previous_delay: Duration::ZERO,
        }
    }

    /// Attempts begun so far, by this layer and the layers below.
    pub(super) fn attempts(&self) -> u32 {
        self.attempts.used()
    }

    /// How long to wait before the next attempt, or `None` to return
    /// `result` to the caller. `request` is the request kept for retries
    /// (`None` when it may not be retried); when a retry is decided, it is
    /// numbered as the next attempt.
    pub(super) fn decide<B, ResBody>(
        &mut self,
        request: Option<&mut Request<ReplayBody<B>>>,
        result: &Result<Response<ResBody>, BoxError>,
    ) -> Option<Duration>
    where
        C: Classify<Response<ResBody>>,
    {
        let outcome = self.classifier.classify(result.as_ref());
        let server_delay = match outcome {
            Outcome::Success | Outcome::Permanent => return None,
            Outcome::Throttled(delay) => delay,
            Outcome::Transient => None,
        };
        let attempt = self.attempts.used();
        let status = result
            .as_ref()
            .ok()
            .map(|response| response.status().as_u16());
        let kind = result
            .as_ref()
            .err()
            .map(|error| error_kind(error).as_str());
        let retry_after_ms = server_delay.map(millis);
        let exhausted = |reason: &'static str| {
            crate::metrics::retries_exhausted(reason);
            let message = match reason {
                "not_idempotent" => {
                    "retryable failure returned: the request's method is not idempotent and it has no Idempotency-Key"
                }
                "body_not_replayable" => {
                    "retryable failure returned: the request body is too large to replay"
                }
                "max_wait" => "retryable failure returned: the wait left is too short",
                "max_elapsed" => "retryable failure returned: max_elapsed would pass",
                _ => "retryable failure returned: no attempts left",
            };
            tracing::warn!(
                name: telemetry::RETRIES_EXHAUSTED,
                target: telemetry::TARGET,
                event = telemetry::RETRIES_EXHAUSTED,
                attempt,
                reason,
                http.response.status_code = status,
                error.kind = kind,
                retry_after_ms,
                "{message}"
            );
        };
        // A request that may not be retried (a POST without an
        // Idempotency-Key) goes back, said so rather than silently.
        let Some(request) = request else {
            exhausted("not_idempotent");
            return None;
        };
        if !request.body().is_replayable() {
            exhausted("body_not_replayable");
            return None;
        }
        if self.attempts.remaining() == 0 {
            exhausted("max_attempts");
            return None;
        }

        self.retries += 1;
        let rng = self.rng.get_or_insert_with(|| match self.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        });
        let backoff = self
            .config
            .backoff
            .delay(self.retries, self.previous_delay, rng);
        self.previous_delay = backoff;
        // A layer below that already waited out the server's delay (and
        // whose gate holds back the next attempt until it passes) has done
        // the floor's job: do not wait it twice.
        let observed = result
            .as_ref()
            .ok()
            .and_then(|response| response.extensions().get::<ServerSignal>())
            .is_some_and(ServerSignal::delay_observed);
        let floor = if observed { None } else { server_delay };
        let wait = floor.map_or(backoff, |floor| floor.max(backoff));

        // One budget of waiting for the stack: a server delay above what is
        // left (a RetryAfterLayer below sets it to its `max_wait`) is not
        // slept through here either.
        if !self.waits.allows(wait) {
            exhausted("max_wait");
            return None;
        }
        if self.started.elapsed().saturating_add(wait) > self.config.max_elapsed {
            exhausted("max_elapsed");
            return None;
        }
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            crate::metrics::retries_exhausted("budget_exhausted");
            tracing::warn!(
                name: telemetry::BUDGET_EXHAUSTED,
                target: telemetry::TARGET,
                event = telemetry::BUDGET_EXHAUSTED,
                attempt,
                http.response.status_code = status,
                error.kind = kind,
                "retryable failure returned: the retry budget is spent"
            );
            return None;
        }
        if self.attempts.try_begin(request).is_none() {
            exhausted("max_attempts");
            return None;
        }

        let reason = match outcome {
            Outcome::Throttled(_) => "throttled",
            _ => "transient",
        };
        self.waits.spend(wait);
        let backoff_ms = millis(wait);
        crate::metrics::retry_scheduled(reason, wait);
        if status.is_some_and(|status| status >= 500) {
            tracing::info!(
                name: telemetry::SERVER_ERROR_RETRY,
                target: telemetry::TARGET,
                event = telemetry::SERVER_ERROR_RETRY,
                attempt,
                backoff_ms,
                reason,
                http.response.status_code = status,
                "server error: retrying after a backoff"
            );
        } else {
            tracing::info!(
                name: telemetry::RETRY_SCHEDULED,
                target: telemetry::TARGET,
                event = telemetry::RETRY_SCHEDULED,
                attempt,
                backoff_ms,
                reason,
                http.response.status_code = status,
                error.kind = kind,
                "retrying after a backoff"
            );
        }
        Some(wait)
    }
}

/// Milliseconds for telemetry, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
