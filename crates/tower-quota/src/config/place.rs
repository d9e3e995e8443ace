//! Where a configured provider's requests stand in their key's queue.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use http::{HeaderName, Request};

use super::KeyHasher;
use crate::sliding_window::{Place, PlaceFn, PlaceFromExtensions, Priority, Tenant};

/// The place of a configured provider's request: its extensions
/// ([`PlaceFromExtensions`]), and where they say nothing, the provider's
/// `class_header` and `tenant_header`.
///
/// A tenant header's value is the tenant's name when `tenant_weights`
/// names it; any other value is replaced by a keyed digest, as `header:`
/// keys are, so that a header carrying a secret never reaches telemetry.
#[derive(Clone)]
pub struct ProviderPlace {
    class_header: Option<HeaderName>,
    tenant_header: Option<HeaderName>,
    weights: Arc<HashMap<String, u32>>,
    hasher: KeyHasher,
}

impl ProviderPlace {
    pub(super) fn new(
        class_header: Option<HeaderName>,
        tenant_header: Option<HeaderName>,
        weights: HashMap<String, u32>,
        hasher: KeyHasher,
    ) -> Self {
        ProviderPlace {
            class_header,
            tenant_header,
            weights: Arc::new(weights),
            hasher,
        }
    }
}

impl fmt::Debug for ProviderPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderPlace")
            .field("class_header", &self.class_header)
            .field("tenant_header", &self.tenant_header)
            .field("tenants", &self.weights.len())
            .finish_non_exhaustive()
    }
}

impl<B> PlaceFn<Request<B>> for ProviderPlace {
    fn place(&self, request: &Request<B>) -> Place {
        let mut place = PlaceFromExtensions.place(request);
        let extensions = request.extensions();
        if let Some(name) = &self.class_header
            && extensions.get::<Priority>().is_none()
            && let Some(class) = request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<Priority>().ok())
        {
            place = place.priority(class);
        }
        if let Some(name) = &self.tenant_header
            && extensions.get::<Tenant>().is_none()
            && let Some(value) = request.headers().get(name)
        {
            let named = value
                .to_str()
                .ok()
                .and_then(|value| self.weights.get_key_value(value.trim()));
            let tenant = match named {
                Some((name, weight)) => Tenant::weighted(name.clone(), *weight),
                None => {
                    let digest = self.hasher.hash_one(value.as_bytes());
                    Tenant::new(format!("{digest:016x}"))
                }
            };
            place = place.tenant(tenant);
        }
        place
    }
}
