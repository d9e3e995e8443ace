//! What the coalescing layer reports, in one place.

use crate::telemetry;

/// A request joined an identical call in flight: `request_coalesced`.
pub(super) fn coalesced(method: &http::Method, path: &str) {
    tracing::debug!(
        name: telemetry::REQUEST_COALESCED,
        target: telemetry::TARGET,
        event = telemetry::REQUEST_COALESCED,
        http.request.method = method.as_str(),
        url.template = %telemetry::path_template(path),
        "request joined an identical call in flight"
    );
    crate::metrics::coalesced();
}
