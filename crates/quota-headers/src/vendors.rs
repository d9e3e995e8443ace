//! Provider-specific dialects: OpenAI, Anthropic, Shopify.

use http::HeaderValue;

use crate::names::{self, Found};
use crate::numbers::{self, NANOS_PER_SECOND, Reference};
use crate::signal::{Counted, Labels};
use crate::{QuotaState, Source, go_duration, rfc3339};

/// OpenAI: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets as
/// Go durations (`6m0s`). A bare number without a unit is read as seconds.
pub(crate) fn openai(found: &Found<'_>, quotas: &mut Vec<QuotaState>) {
    for (kind, [limit, remaining, reset]) in names::OPENAI {
        let counted = Counted {
            limit: found.u64(limit),
            remaining: found.u64(remaining),
            reset_after: found.str(reset).and_then(|text| {
                go_duration(text).or_else(|| numbers::parse_decimal(text, NANOS_PER_SECOND))
            }),
        };
        QuotaState::push_counted(quotas, Source::OpenAi, counted, || named(kind, kind));
    }
}

/// Anthropic: `anthropic-ratelimit-{kind}-{limit,remaining,reset}`, resets as
/// RFC 3339 instants measured from `reference`.
pub(crate) fn anthropic(
    found: &Found<'_>,
    reference: &Reference<'_>,
    quotas: &mut Vec<QuotaState>,
) {
    for (kind, unit, [limit, remaining, reset]) in names::ANTHROPIC {
        let counted = Counted {
            limit: found.u64(limit),
            remaining: found.u64(remaining),
            reset_after: found
                .str(reset)
                .and_then(rfc3339)
                .map(|instant| numbers::until(instant, reference.get())),
        };
        QuotaState::push_counted(quotas, Source::Anthropic, counted, || named(kind, unit));
    }
}

/// The labels of a vendor's quota `name`, counting `unit`.
fn named(name: &'static str, unit: &'static str) -> Labels {
    Labels {
        name: Some(name.into()),
        unit: Some(unit.into()),
        partition_key: None,
    }
}

/// Parses Shopify's `X-Shopify-Shop-Api-Call-Limit: used/limit` (for example
/// `32/40`) into a quota with `limit` 40 and `remaining` 8. A used count
/// above the limit, or anything but two non-negative integers around a `/`,
/// is absent. Shopify's bucket leaks at a rate the header does not state, so
/// there is no `reset_after`.
///
/// ```
/// use http::HeaderValue;
///
/// let quota = quota_headers::shopify_call_limit(&HeaderValue::from_static("32/40")).unwrap();
/// assert_eq!((quota.limit, quota.remaining), (Some(40), Some(8)));
/// ```
pub fn shopify_call_limit(value: &HeaderValue) -> Option<QuotaState> {
    let (used, limit) = numbers::header_str(value)?.split_once('/')?;
    let used = numbers::parse_u64(numbers::trim_ows(used))?;
    let limit = numbers::parse_u64(numbers::trim_ows(limit))?;
    let mut quota = QuotaState::new(Source::Shopify);
    quota.limit = Some(limit);
    quota.remaining = Some(limit.checked_sub(used)?);
    Some(quota)
}
