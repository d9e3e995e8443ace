//! Checks a configuration and builds each provider's layers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use humantime_serde::re::humantime::format_duration;

use super::{
    ConfigError, KeyHasher, ProviderConfig, ProviderKey, ProviderPlace, ProvidersConfig, Strategy,
};
use crate::backoff::{InvalidBackoff, Jitter};
use crate::sliding_window::{InvalidQuota, MAX_SAFETY_MARGIN, Priority, Quota, Store};
use crate::{HttpFeedback, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer, UnitCost};

/// The most retries a provider may configure.
pub(super) const MAX_RETRIES: u32 = 100;

/// One provider's layers, sharing state with every stack built from them.
pub(super) struct BuiltProvider<St, C> {
    pub(super) name: Arc<str>,
    pub(super) backoff: JitterBackoffLayer,
    pub(super) retry_after: RetryAfterLayer<ProviderKey>,
    pub(super) pacing: SlidingWindowLayer<ProviderKey, C, St, HttpFeedback, ProviderPlace>,
}

impl<St: Clone, C: Clone> Clone for BuiltProvider<St, C> {
    fn clone(&self) -> Self {
        BuiltProvider {
            name: self.name.clone(),
            backoff: self.backoff.clone(),
            retry_after: self.retry_after.clone(),
            pacing: self.pacing.clone(),
        }
    }
}

/// Hosts, lower-cased (`host` or `host:port`), to the index of their provider.
#[derive(Debug, Default)]
pub(super) struct Routes {
    pub(super) by_host: HashMap<String, usize>,
    /// Whether any entry names a port: only then is `host:port` looked up.
    pub(super) has_ports: bool,
}

pub(super) struct Built<St> {
    pub(super) providers: Vec<BuiltProvider<St, UnitCost>>,
    pub(super) routes: Routes,
}

/// A duration as the configuration writes it.
fn show(duration: Duration) -> String {
    format!("{:?}", format_duration(duration).to_string())
}

/// The path of provider `name`, quoted when it is not a bare TOML key.
pub(super) fn provider_path(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if bare {
        format!("providers.{name}")
    } else {
        format!("providers.{name:?}")
    }
}

pub(super) fn build<St: Store>(
    config: &ProvidersConfig,
    store: St,
) -> Result<Built<St>, ConfigError> {
    let mut routes = Routes::default();
    let mut owners: HashMap<String, &str> = HashMap::new();
    let mut providers = Vec::with_capacity(config.providers.len());
    let hasher = match &config.key_secret_env {
        None => KeyHasher::process(),
        Some(variable) => match std::env::var_os(variable) {
            Some(secret) if !secret.is_empty() => KeyHasher::secret(secret.as_encoded_bytes()),
            _ => {
                return Err(ConfigError::invalid(
                    "key_secret_env".to_owned(),
                    format!("{variable:?}"),
                    "the environment variable is not set or empty",
                ));
            }
        },
    };
    for (index, (name, provider)) in config.providers.iter().enumerate() {
        let path = provider_path(name);
        if name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "providers".to_owned(),
                format!("{name:?}"),
                "a provider name must not be empty",
            ));
        }
        if provider.hosts.is_empty() {
            return Err(ConfigError::invalid(
                format!("{path}.hosts"),
                "[]",
                "at least one host is required",
            ));
        }
        for (host_index, host) in provider.hosts.iter().enumerate() {
            let host_path = format!("{path}.hosts[{host_index}]");
            let normalized = normalize_host(host).map_err(|reason| {
                ConfigError::invalid(host_path.clone(), format!("{host:?}"), reason)
            })?;
            if let Some(owner) = owners.get(&normalized) {
                return Err(ConfigError::invalid(
                    host_path,
                    format!("{host:?}"),
                    format!("already listed by provider {owner:?}"),
                ));
            }
            routes.has_ports |= normalized.contains(':') && !normalized.ends_with(']');
            owners.insert(normalized.clone(), name);
            routes.by_host.insert(normalized, index);
        }
        providers.push(build_provider(
            name,
            &path,
            provider,
            store.clone(),
            hasher.clone(),
        )?);
    }
    Ok(Built { providers, routes })
}

/// `host` lower-cased, checked to be a host with an optional port.
fn normalize_host(host: &str) -> Result<String, &'static str> {
    if host.is_empty() {
        return Err("a host must not be empty");
    }
    if host.contains("://") || host.contains('/') || host.contains('@') {
        return Err("a host is a name with an optional port, without a scheme, path or user");
    }
    let authority: http::uri::Authority = host
        .parse()
        .map_err(|_| "not a valid host name with an optional port")?;
    if authority.host().is_empty() {
        return Err("a host must not be empty");
    }
    Ok(authority.as_str().to_ascii_lowercase())
}

fn build_provider<St: Store>(
    name: &str,
    path: &str,
    provider: &ProviderConfig,
    store: St,
    hasher: KeyHasher,
) -> Result<BuiltProvider<St, UnitCost>, ConfigError> {
    let key_fn = ProviderKey::with_hasher(name, provider.key.clone(), hasher.clone());

    if provider.quotas.is_empty() {
        return Err(ConfigError::invalid(
            format!("{path}.quotas"),
            "[]",
            "at least one quota is required",
        ));
    }
    let mut quotas = Vec::with_capacity(provider.quotas.len());
    for (index, quota) in provider.quotas.iter().enumerate() {
        let quota_path = format!("{path}.quotas[{index}]");
        let built = if quota.per_request {
            Quota::per_request(quota.max_calls, quota.window)
        } else {
            Quota::new(quota.max_calls, quota.window)
        };
        quotas.push(built.map_err(|error| match error {
            InvalidQuota::ZeroMaxCalls => ConfigError::invalid(
                format!("{quota_path}.max_calls"),
                quota.max_calls,
                "max_calls must be at least 1",
            ),
            InvalidQuota::ZeroWindow => ConfigError::invalid(
                format!("{quota_path}.window"),
                show(quota.window),
                "window must be longer than zero",
            ),
            InvalidQuota::WindowTooLong(_) => ConfigError::invalid(
                format!("{quota_path}.window"),
                show(quota.window),
                format_args!(
                    "window must be at most {} days",
                    crate::sliding_window::MAX_WINDOW.as_secs() / 86_400
                ),
            ),
            other => ConfigError::invalid(quota_path.clone(), "quota", other),
        })?);
    }
    let mut pacing = SlidingWindowLayer::with_quotas(quotas)
        .map_err(|error| ConfigError::invalid(format!("{path}.quotas"), "[]", error))?
        .key_fn(key_fn.clone())
        .store(store)
        .usage_fn(HttpFeedback);
    if let Some(margin) = provider.safety_margin {
        pacing = pacing.safety_margin(margin).map_err(|_| {
            ConfigError::invalid(
                format!("{path}.safety_margin"),
                show(margin),
                format_args!(
                    "safety_margin must be at most {}",
                    format_duration(MAX_SAFETY_MARGIN)
                ),
            )
        })?;
    }
    if let Some(bound) = provider.sent_within {
        pacing = pacing.sent_within(bound).map_err(|_| {
            ConfigError::invalid(
                format!("{path}.sent_within"),
                show(bound),
                format_args!(
                    "sent_within must be longer than zero and at most {}",
                    format_duration(crate::sliding_window::MAX_SENT_WITHIN)
                ),
            )
        })?;
    }
    if provider.follow_announced_quotas {
        pacing = pacing.follow_announced_quotas();
    }
    if provider.strict {
        pacing = pacing.strict();
    }
    if let Some(max_wait) = provider.max_wait {
        pacing = pacing.max_wait(max_wait);
    }
    if let Some(max_queue) = provider.max_queue {
        pacing = pacing.max_queue(max_queue);
    }
    let header = |field: &str, value: &Option<String>| -> Result<_, ConfigError> {
        value
            .as_deref()
            .map(|name| {
                http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                    ConfigError::invalid(
                        format!("{path}.{field}"),
                        format!("{name:?}"),
                        "not a header name",
                    )
                })
            })
            .transpose()
    };
    let class_header = header("class_header", &provider.class_header)?;
    let tenant_header = header("tenant_header", &provider.tenant_header)?;
    for (class, share) in &provider.reserve {
        let reserve_path = format!("{path}.reserve.{class}");
        let class: Priority = class
            .parse()
            .map_err(|error| ConfigError::invalid(reserve_path.clone(), share.get(), error))?;
        pacing = pacing
            .reserve(class, share.get())
            .map_err(|error| ConfigError::invalid(reserve_path, share.get(), error))?;
    }
    if let Some(after) = provider.promote_after {
        if after.is_zero() {
            return Err(ConfigError::invalid(
                format!("{path}.promote_after"),
                show(after),
                "promote_after must be longer than zero",
            ));
        }
        pacing = pacing.promote_after(after);
    }
    if let Some((tenant, _)) = provider
        .tenant_weights
        .iter()
        .find(|(_, weight)| **weight == 0)
    {
        return Err(ConfigError::invalid(
            format!("{path}.tenant_weights.{tenant}"),
            0,
            "a weight is at least 1",
        ));
    }
    if !provider.tenant_weights.is_empty() && tenant_header.is_none() {
        return Err(ConfigError::invalid(
            format!("{path}.tenant_weights"),
            "{..}",
            "tenant_weights needs a tenant_header to read tenants from",
        ));
    }
    let pacing = pacing.place_fn(ProviderPlace::new(
        class_header,
        tenant_header,
        provider
            .tenant_weights
            .iter()
            .map(|(tenant, weight)| (tenant.clone(), *weight))
            .collect(),
        hasher,
    ));

    let retry = &provider.retry;
    let retry_path = format!("{path}.retry");
    if retry.max_retries > MAX_RETRIES {
        return Err(ConfigError::invalid(
            format!("{retry_path}.max_retries"),
            retry.max_retries,
            format_args!("max_retries must be at most {MAX_RETRIES}"),
        ));
    }
    let max_attempts = retry.max_retries + 1;
    let jitter = match retry.strategy {
        Strategy::Full => Jitter::Full,
        Strategy::Equal => Jitter::Equal,
        Strategy::Decorrelated => Jitter::Decorrelated,
        Strategy::None => Jitter::None,
    };
    let backoff_error = |error: InvalidBackoff| match error {
        InvalidBackoff::ZeroBase => ConfigError::invalid(
            format!("{retry_path}.base"),
            show(retry.base),
            "base must be longer than zero",
        ),
        InvalidBackoff::MaxBelowBase { .. } => ConfigError::invalid(
            format!("{retry_path}.cap"),
            show(retry.cap),
            format_args!(
                "cap must not be below base ({})",
                format_duration(retry.base)
            ),
        ),
        InvalidBackoff::ZeroMaxElapsed => ConfigError::invalid(
            format!("{retry_path}.max_elapsed"),
            show(retry.max_elapsed),
            "max_elapsed must be longer than zero",
        ),
        other => ConfigError::invalid(retry_path.clone(), "retry", other),
    };
    let mut backoff = JitterBackoffLayer::new()
        .backoff(retry.base, retry.cap)
        .map_err(backoff_error)?
        .jitter(jitter)
        .max_attempts(max_attempts)
        .map_err(backoff_error)?
        .max_elapsed(retry.max_elapsed)
        .map_err(backoff_error)?;
    if retry.all_methods {
        backoff = backoff.retry_all_methods();
    }

    let mut retry_after = RetryAfterLayer::new()
        .max_attempts(max_attempts)
        .map_err(|error| {
            ConfigError::invalid(
                format!("{retry_path}.max_retries"),
                retry.max_retries,
                error,
            )
        })?
        .key_fn(key_fn);
    if let Some(max_wait) = provider.max_wait {
        retry_after = retry_after.max_wait(max_wait);
    }
    if retry.all_methods {
        retry_after = retry_after.resend_all_methods();
    }
    if let Some(max_pause) = retry.max_pause {
        retry_after = retry_after.max_pause(max_pause).map_err(|error| {
            ConfigError::invalid(format!("{retry_path}.max_pause"), show(max_pause), error)
        })?;
    }

    Ok(BuiltProvider {
        name: Arc::from(name),
        backoff,
        retry_after,
        pacing,
    })
}
