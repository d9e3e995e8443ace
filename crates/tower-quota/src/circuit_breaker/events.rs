//! What the circuit breaker reports: each event beside its metric, in one
//! place, so that a state is named once.

use super::CircuitState;
use super::state::Transition;
use crate::{Key, telemetry};

impl Transition {
    /// The state the breaker changed to.
    fn to(self) -> CircuitState {
        match self {
            Transition::Opened { .. } => CircuitState::Open,
            Transition::HalfOpened => CircuitState::HalfOpen,
            Transition::Closed => CircuitState::Closed,
        }
    }
}

/// A call of `key` fails fast: its breaker is open.
pub(super) fn refused(key: &Key) {
    crate::metrics::refused(key, "circuit_open");
}

/// The breaker of `key` changed state: `circuit_opened`,
/// `circuit_half_open` or `circuit_closed`, and the transition counter.
pub(super) fn transition(key: &Key, transition: Transition) {
    crate::metrics::circuit_transition(key, transition.to().as_str());
    match transition {
        Transition::Opened {
            failure_rate,
            open_for,
        } => tracing::warn!(
            name: telemetry::CIRCUIT_OPENED,
            target: telemetry::TARGET,
            event = telemetry::CIRCUIT_OPENED,
            key = %key,
            failure_rate,
            open_ms = open_for.as_millis() as u64,
            "provider failing: calls fail fast until the next probe"
        ),
        Transition::HalfOpened => tracing::info!(
            name: telemetry::CIRCUIT_HALF_OPEN,
            target: telemetry::TARGET,
            event = telemetry::CIRCUIT_HALF_OPEN,
            key = %key,
            "probing whether the provider recovered"
        ),
        Transition::Closed => tracing::info!(
            name: telemetry::CIRCUIT_CLOSED,
            target: telemetry::TARGET,
            event = telemetry::CIRCUIT_CLOSED,
            key = %key,
            "provider recovered: calls pass again"
        ),
    }
}
