//! Where a request stands in its key's queue: its priority class, its
//! tenant and its deadline.
//!
//! The rules are in the [module docs](super).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::Key;

/// A request's priority class within its key's queue.
///
/// Set it as a request extension (read by [`PlaceFromExtensions`]) or
/// return it from a [`PlaceFn`]. The default is
/// [`Interactive`](Priority::Interactive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Goes first, and may use the share of the quota reserved for it.
    Critical,
    /// A person is waiting for it.
    #[default]
    Interactive,
    /// Background work that would gladly take the whole quota.
    Batch,
}

impl Priority {
    /// Every class, from the highest.
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Interactive, Priority::Batch];

    /// The number of classes.
    pub(crate) const COUNT: usize = Self::ALL.len();

    /// 0 for the highest class.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The class's name in telemetry and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`Priority`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPriority(String);

impl fmt::Display for UnknownPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown priority class `{}`: expected critical, interactive or batch",
            self.0
        )
    }
}

impl std::error::Error for UnknownPriority {}

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|class| class.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownPriority(name.to_owned()))
    }
}

/// The tenant a request is made for, and its weight: tenants of one class
/// of one key share its admissions in proportion to their weights.
///
/// Its name appears in telemetry: derive it from an account or a team, not
/// from a secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant {
    name: Key,
    weight: u32,
}

impl Tenant {
    /// A tenant of weight 1.
    pub fn new(name: impl Into<Key>) -> Self {
        Tenant {
            name: name.into(),
            weight: 1,
        }
    }

    /// A tenant of `weight` (0 counts as 1).
    pub fn weighted(name: impl Into<Key>, weight: u32) -> Self {
        Tenant {
            name: name.into(),
            weight: weight.max(1),
        }
    }

    /// The tenant's name.
    pub fn name(&self) -> &Key {
        &self.name
    }

    /// The tenant's weight, at least 1.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

/// The instant after which a request is worthless: it is never admitted
/// later, and it is refused at once when it could not be admitted by then.
///
/// A request extension, read by [`PlaceFromExtensions`] (and by
/// [`RetryAfterLayer`](crate::RetryAfterLayer), which does not wait for a
/// gate that reopens after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        let now = Instant::now();
        Deadline(crate::time::saturating_add(now, timeout))
    }

    /// The deadline a request carries: its [`Deadline`] extension, or for a
    /// gRPC request its `grpc-timeout` header from now, whichever is
    /// sooner.
    pub fn of<B>(request: &http::Request<B>) -> Option<Instant> {
        let extension = request.extensions().get::<Deadline>().map(|d| d.0);
        let grpc = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(grpc_timeout)
            .map(|timeout| crate::time::saturating_add(Instant::now(), timeout));
        match (extension, grpc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). `None` for anything else.
pub(crate) fn grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount.saturating_mul(3600)),
        b'M' => Duration::from_secs(amount.saturating_mul(60)),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Where a request stands in its key's queue: its class, its tenant and its
/// deadline. The default is the one every request has without a
/// [`PlaceFn`]: `Interactive`, no tenant, no deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    pub(crate) priority: Priority,
    pub(crate) tenant: Option<Tenant>,
    pub(crate) deadline: Option<Instant>,
}

impl Place {
    /// The default place.
    pub fn new() -> Self {
        Self::default()
    }

    /// In class `priority`.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// For `tenant`.
    pub fn tenant(mut self, tenant: Tenant) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Worthless after `deadline`.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The request's class.
    pub fn get_priority(&self) -> Priority {
        self.priority
    }

    /// The request's tenant, if it has one.
    pub fn get_tenant(&self) -> Option<&Tenant> {
        self.tenant.as_ref()
    }

    /// The request's deadline, if it has one.
    pub fn get_deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// Tells where a request stands in its key's queue.
///
/// Implemented by closures `Fn(&Request) -> Place`, by [`Unplaced`] (the
/// default: every request in the same place) and by
/// [`PlaceFromExtensions`].
pub trait PlaceFn<Request> {
    /// The place of `request`.
    fn place(&self, request: &Request) -> Place;
}

impl<Request, F> PlaceFn<Request> for F
where
    F: Fn(&Request) -> Place,
{
    fn place(&self, request: &Request) -> Place {
        self(request)
    }
}

/// Every request in the default place: one FIFO queue per key, no deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unplaced;

impl<Request> PlaceFn<Request> for Unplaced {
    fn place(&self, _request: &Request) -> Place {
        Place::default()
    }
}

/// Reads an HTTP request's place from its extensions: a [`Priority`], a
/// [`Tenant`], a [`Deadline`] (or a gRPC request's `grpc-timeout`), each
/// optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlaceFromExtensions;

impl<B> PlaceFn<http::Request<B>> for PlaceFromExtensions {
    fn place(&self, request: &http::Request<B>) -> Place {
        let extensions = request.extensions();
        Place {
            priority: extensions.get::<Priority>().copied().unwrap_or_default(),
            tenant: extensions.get::<Tenant>().cloned(),
            deadline: Deadline::of(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_hostile_ones_are_refused() {
        let parse = |s: &'static str| grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "S1"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn priorities_order_from_critical_and_parse_by_name() {
        assert!(Priority::Critical < Priority::Interactive);
        assert!(Priority::Interactive < Priority::Batch);
        assert_eq!("BATCH".parse::<Priority>(), Ok(Priority::Batch));
        assert!("urgent".parse::<Priority>().is_err());
        assert_eq!(Tenant::weighted("a", 0).weight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sooner_of_the_extension_and_grpc_timeout_is_the_deadline() {
        let now = Instant::now();
        let mut request = http::Request::new(());
        assert_eq!(Deadline::of(&request), None);
        request
            .headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("1S"));
        assert_eq!(Deadline::of(&request), Some(now + Duration::from_secs(1)));
        request
            .extensions_mut()
            .insert(Deadline(now + Duration::from_millis(10)));
        assert_eq!(
            Deadline::of(&request),
            Some(now + Duration::from_millis(10))
        );
        let place = PlaceFromExtensions.place(&request);
        assert_eq!(place.get_priority(), Priority::Interactive);
    }
}
