//! IETF `RateLimit` / `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers)
//! in the current structured-field syntax and the older forms.

use std::time::{Duration, SystemTime};

use sfv::{BareItem, Dictionary, Integer, List, ListEntry, Parameters, Parser};

use crate::numbers::{self, Reference};
use crate::{QuotaState, Source};

/// Parses `RateLimit-Policy` in the current draft's syntax (-08 and later):
/// a structured-field List of policies, each a string or token naming the
/// policy with parameters `q` (quota), `qu` (quota unit), `w` (window
/// seconds) and `pk` (partition key, a byte sequence).
///
/// ```text
/// RateLimit-Policy: "burst";q=100;w=60,"daily";q=1000;w=86400
/// ```
///
/// `value` is the whole field value (several field lines joined with `", "`).
/// Members that are not named policies are skipped; `None` when the value is
/// not a List or names no policy. Each policy becomes a [`QuotaState`] with
/// `source` [`Source::IetfRateLimit`] and `limit`, `window`, `unit`,
/// `partition_key`, `name` filled from the policy.
///
/// ```
/// let policies = quota_headers::rate_limit_policy(br#""burst";q=100;w=60"#).unwrap();
/// assert_eq!(policies[0].name.as_deref(), Some("burst"));
/// assert_eq!(policies[0].limit, Some(100));
/// ```
pub fn rate_limit_policy(value: &[u8]) -> Option<Vec<QuotaState>> {
    let list: List = Parser::new(value).parse().ok()?;
    let policies: Vec<QuotaState> = named_items(&list)
        .map(|(name, params)| {
            let mut quota = QuotaState::new(Source::IetfRateLimit);
            quota.name = Some(name);
            quota.limit = params.get("q").and_then(non_negative);
            quota.unit = params.get("qu").and_then(text);
            quota.window = params.get("w").and_then(seconds);
            quota.partition_key = params.get("pk").and_then(partition_key);
            quota
        })
        .collect();
    (!policies.is_empty()).then_some(policies)
}

/// Parses `RateLimit` in either syntax:
///
/// - current drafts (-08 and later): a List of policy names with `r`
///   (remaining) and `t` (seconds until reset) and `pk`, for example
///   `"default";r=50;t=30`; each item becomes a [`QuotaState`] with `source`
///   [`Source::IetfRateLimit`];
/// - older drafts: a Dictionary `limit=100, remaining=50, reset=5`, which
///   becomes one [`QuotaState`] with `source` [`Source::IetfLegacy`].
///
/// Resets follow the crate's epoch rule (a value of at least 1,000,000,000
/// is an epoch timestamp, measured from `reference`), so a server that
/// sends an epoch by mistake is not read as a 50-year delay.
///
/// ```
/// use std::time::{Duration, SystemTime};
///
/// let now = SystemTime::UNIX_EPOCH;
/// let quotas = quota_headers::rate_limit(br#""default";r=0;t=30"#, now).unwrap();
/// assert_eq!(quotas[0].remaining, Some(0));
/// assert_eq!(quotas[0].reset_after, Some(Duration::from_secs(30)));
/// ```
pub fn rate_limit(value: &[u8], reference: SystemTime) -> Option<Vec<QuotaState>> {
    rate_limit_from(value, &Reference::fixed(reference))
}

/// [`rate_limit`], reading the reference time only for an epoch reset.
pub(crate) fn rate_limit_from(value: &[u8], reference: &Reference<'_>) -> Option<Vec<QuotaState>> {
    if let Ok(list) = Parser::new(value).parse::<List>() {
        let quotas: Vec<QuotaState> = named_items(&list)
            .map(|(name, params)| {
                let mut quota = QuotaState::new(Source::IetfRateLimit);
                quota.name = Some(name);
                quota.remaining = params.get("r").and_then(non_negative);
                quota.reset_after = params
                    .get("t")
                    .and_then(seconds)
                    .and_then(|reset| numbers::delta_or_epoch_from(reset, reference));
                quota.partition_key = params.get("pk").and_then(partition_key);
                quota
            })
            .collect();
        if !quotas.is_empty() {
            return Some(quotas);
        }
    }
    legacy_dictionary(value, reference).map(|quota| vec![quota])
}

/// `RateLimit: limit=100, remaining=50, reset=5` (drafts before -07).
fn legacy_dictionary(value: &[u8], reference: &Reference<'_>) -> Option<QuotaState> {
    let dictionary: Dictionary = Parser::new(value).parse().ok()?;
    let member = |key: &str| match dictionary.get(key) {
        Some(ListEntry::Item(item)) => Some(&item.bare_item),
        _ => None,
    };
    let mut quota = QuotaState::new(Source::IetfLegacy);
    quota.limit = member("limit").and_then(non_negative);
    quota.remaining = member("remaining").and_then(non_negative);
    quota.reset_after = member("reset")
        .and_then(seconds)
        .and_then(|reset| numbers::delta_or_epoch_from(reset, reference));
    (!quota.is_empty()).then_some(quota)
}

/// The separate legacy fields `RateLimit-Limit`, `RateLimit-Remaining` and
/// `RateLimit-Reset` (drafts -00 to -06), with the window taken from a `w`
/// parameter on `RateLimit-Limit` (`100, 100;w=60`) or from an old-style
/// `RateLimit-Policy` of integers (`100;w=60`).
pub(crate) fn legacy_fields(
    limit: Option<&[u8]>,
    remaining: Option<&[u8]>,
    reset: Option<&[u8]>,
    old_policy: Option<&[u8]>,
    reference: &Reference<'_>,
) -> Option<QuotaState> {
    let mut quota = QuotaState::new(Source::IetfLegacy);
    let limit_list = limit.and_then(|value| Parser::new(value).parse::<List>().ok());
    quota.limit = limit_list.as_ref().and_then(|list| match list.first() {
        Some(ListEntry::Item(item)) => non_negative(&item.bare_item),
        _ => None,
    });
    quota.remaining = remaining
        .and_then(single_item)
        .and_then(|item| non_negative(&item));
    quota.reset_after = reset
        .and_then(single_item)
        .and_then(|item| seconds(&item))
        .and_then(|reset| numbers::delta_or_epoch_from(reset, reference));
    if quota.is_empty() {
        return None;
    }
    let old_policy_list = old_policy.and_then(|value| Parser::new(value).parse::<List>().ok());
    quota.window = [limit_list.as_ref(), old_policy_list.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|list| integer_policy_window(list, quota.limit));
    Some(quota)
}

/// The `w` of the integer policy equal to `limit`, else of the first integer
/// policy that has one. Named (current-draft) policies are not considered.
fn integer_policy_window(list: &List, limit: Option<u64>) -> Option<Duration> {
    let windows = || {
        list.iter().filter_map(|entry| match entry {
            ListEntry::Item(item) => {
                let quota = non_negative(&item.bare_item)?;
                let window = item.params.get("w").and_then(seconds)?;
                Some((quota, window))
            }
            ListEntry::InnerList(_) => None,
        })
    };
    windows()
        .find(|(quota, _)| Some(*quota) == limit)
        .or_else(|| windows().next())
        .map(|(_, window)| window)
}

fn single_item(value: &[u8]) -> Option<BareItem> {
    Parser::new(value)
        .parse::<sfv::Item>()
        .ok()
        .map(|item| item.bare_item)
}

/// Named members (string or token) of a List, with their parameters.
fn named_items(list: &List) -> impl Iterator<Item = (String, &Parameters)> {
    list.iter().filter_map(|entry| match entry {
        ListEntry::Item(item) => Some((text(&item.bare_item)?, &item.params)),
        ListEntry::InnerList(_) => None,
    })
}

fn non_negative(item: &BareItem) -> Option<u64> {
    integer_to_u64(item.as_integer()?)
}

fn integer_to_u64(integer: Integer) -> Option<u64> {
    u64::try_from(i64::from(integer)).ok()
}

/// A non-negative integer or decimal number of seconds.
fn seconds(item: &BareItem) -> Option<Duration> {
    match item {
        BareItem::Integer(integer) => integer_to_u64(*integer).map(Duration::from_secs),
        BareItem::Decimal(decimal) => {
            let millis = integer_to_u64(decimal.as_integer_scaled_1000())?;
            Some(Duration::from_millis(millis))
        }
        _ => None,
    }
}

fn text(item: &BareItem) -> Option<String> {
    match item {
        BareItem::String(string) => Some(string.as_str().to_owned()),
        BareItem::Token(token) => Some(token.as_str().to_owned()),
        _ => None,
    }
}

/// `pk` is a byte sequence; tolerate a string or token too.
fn partition_key(item: &BareItem) -> Option<String> {
    match item {
        BareItem::ByteSequence(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        other => text(other),
    }
}
