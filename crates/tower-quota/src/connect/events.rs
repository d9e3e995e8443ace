//! What the connection tracker reports, in one place.

use std::time::Duration;

use crate::telemetry;

/// A connection to `host` opened after `setup`: `connection_opened`.
pub(super) fn opened(host: &str, setup: Duration, open: u64) {
    tracing::debug!(
        name: telemetry::CONNECTION_OPENED,
        target: telemetry::TARGET,
        event = telemetry::CONNECTION_OPENED,
        server.address = host,
        setup_ms = setup.as_millis() as u64,
        open,
        "connection opened"
    );
    crate::metrics::connection_opened(setup, open);
}

/// A connection was dropped after `lifetime`: `connection_closed`.
pub(super) fn closed(lifetime: Duration, open: u64) {
    tracing::debug!(
        name: telemetry::CONNECTION_CLOSED,
        target: telemetry::TARGET,
        event = telemetry::CONNECTION_CLOSED,
        lifetime_ms = lifetime.as_millis() as u64,
        open,
        "connection closed"
    );
    crate::metrics::connection_closed(open);
}

/// A connection to `host` failed to open after `waited`: `connection_failed`.
pub(super) fn failed(host: &str, waited: Duration) {
    tracing::warn!(
        name: telemetry::CONNECTION_FAILED,
        target: telemetry::TARGET,
        event = telemetry::CONNECTION_FAILED,
        server.address = host,
        setup_ms = waited.as_millis() as u64,
        "connection failed"
    );
    crate::metrics::connection_failed();
}
