//! The retry decision for one logical request.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tower::retry::budget::Budget;

use super::events::{self, Failure, GiveUp, RetryReason};
use super::service::Shared;
use crate::BoxError;
use crate::attempts::AttemptBudget;
pub(super) use crate::classify::is_idempotent;
use crate::classify::{Classify, Outcome, error_kind};
use crate::replay::ReplayBody;
use crate::retry_after::ServerSignal;

/// What one logical request knows about its retries.
pub(super) struct Policy<C> {
    /// The layer's settings and retry budget.
    shared: Arc<Shared>,
    classifier: C,
    /// The attempts and the waiting left to the logical request, shared
    /// with the layers below.
    attempts: AttemptBudget,
    /// When the first attempt went: set at the future's first poll
    /// ([`start`](Self::start)).
    started: Option<Instant>,
    /// Seed of this request's random stream, when the layer is seeded.
    seed: Option<u64>,
    /// Drawn at the first retry: a request that never fails costs nothing.
    rng: Option<SmallRng>,
    retries: u32,
    previous_delay: Duration,
}

impl<C> Policy<C> {
    pub(super) fn new(
        shared: Arc<Shared>,
        classifier: C,
        attempts: AttemptBudget,
        seed: Option<u64>,
    ) -> Self {
        Policy {
            shared,
            classifier,
            attempts,
            started: None,
            seed,
            rng: None,
            retries: 0,
            previous_delay: Duration::ZERO,
        }
    }

    /// Whether the first attempt's start is still to be set.
    pub(super) fn unstarted(&self) -> bool {
        self.started.is_none()
    }

    /// The first attempt went at `at`: `max_elapsed` counts from it.
    pub(super) fn start(&mut self, at: Instant) {
        self.started = Some(at);
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
        let failure = Failure {
            attempt: self.attempts.used(),
            status: result
                .as_ref()
                .ok()
                .map(|response| response.status().as_u16()),
            error_kind: result
                .as_ref()
                .err()
                .map(|error| error_kind(error).as_str()),
            retry_after: server_delay,
        };
        let give_up = |reason| {
            events::gave_up(reason, &failure);
            None
        };
        // A request that may not be retried (a POST without an
        // Idempotency-Key) goes back, said so rather than silently.
        let Some(request) = request else {
            return give_up(GiveUp::NotIdempotent);
        };
        if !request.body().is_replayable() {
            return give_up(GiveUp::BodyNotReplayable);
        }
        if self.attempts.remaining() == 0 {
            return give_up(GiveUp::MaxAttempts);
        }

        self.retries += 1;
        let rng = self.rng.get_or_insert_with(|| match self.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        });
        let backoff = self
            .shared
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
        let waits = self.attempts.waits();
        if !waits.allows(wait) {
            return give_up(GiveUp::MaxWait);
        }
        // Set at the first poll, before any result: the clock, should it not be.
        let started = *self.started.get_or_insert_with(Instant::now);
        if started.elapsed().saturating_add(wait) > self.shared.config.max_elapsed {
            return give_up(GiveUp::MaxElapsed);
        }
        if let Some(budget) = &self.shared.budget
            && !budget.withdraw()
        {
            return give_up(GiveUp::BudgetExhausted);
        }
        if self.attempts.try_begin(request).is_none() {
            return give_up(GiveUp::MaxAttempts);
        }
        // The kept copy was taken before the budget could go in its
        // extensions: a retry carries it there, for a layer below that is
        // called later, on another task (the first attempt may have handed
        // it on the thread only).
        request.extensions_mut().insert(self.attempts.clone());

        let reason = match outcome {
            Outcome::Throttled(_) => RetryReason::Throttled,
            _ => RetryReason::Transient,
        };
        waits.spend(wait);
        events::retry_scheduled(reason, wait, &failure);
        Some(wait)
    }
}
