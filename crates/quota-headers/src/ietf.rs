//! IETF `RateLimit` / `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers)
//! in the current structured-field syntax and the older forms.

use std::convert::Infallible;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use sfv::visitor::{
    EntryVisitor, Ignored, InnerListVisitor, ItemVisitor, ListVisitor, ParameterVisitor,
};
use sfv::{
    BareItem, BareItemFromInput, Dictionary, Integer, KeyRef, List, ListEntry, Parser, RefBareItem,
};

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
    let mut policies = Vec::new();
    merge_policies(value, &mut policies, 0..0);
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
    let mut quotas = Vec::new();
    push_rate_limit(value, &Reference::fixed(reference), &mut quotas);
    (!quotas.is_empty()).then_some(quotas)
}

/// [`rate_limit`], appending to `quotas`, reading the reference time only
/// for an epoch reset.
pub(crate) fn push_rate_limit(
    value: &[u8],
    reference: &Reference<'_>,
    quotas: &mut Vec<QuotaState>,
) {
    let start = quotas.len();
    let items = RateLimitItems { quotas, reference };
    if Parser::new(value).parse_list_with_visitor(items).is_err() {
        quotas.truncate(start);
    }
    if quotas.len() == start {
        quotas.extend(legacy_dictionary(value, reference));
    }
}

/// Completes the `RateLimit` items `quotas[rate_limit]` with the policies of
/// a `RateLimit-Policy` value: the k-th policy of a name completes the k-th
/// item of that name (its `limit`, `window` and `unit`, and its
/// `partition_key` when the item has none); policies left over are appended
/// to `quotas`, in order. Nothing changes when `value` is not a List.
///
/// The items must have no `limit`, `window` or `unit` of their own (a
/// `RateLimit` item has none): when the List turns out to be malformed
/// after some items were completed, clearing those undoes the completion.
pub(crate) fn merge_policies(value: &[u8], quotas: &mut Vec<QuotaState>, rate_limit: Range<usize>) {
    let appended = quotas.len();
    let mut policies = Policies {
        quotas,
        rate_limit,
        completed: Completed::default(),
        completed_partition_keys: Completed::default(),
    };
    if Parser::new(value)
        .parse_list_with_visitor(&mut policies)
        .is_err()
    {
        policies.undo(appended);
    }
}

/// Reads a current-syntax `RateLimit` List: each named item becomes a quota.
struct RateLimitItems<'q, 'r, 'd> {
    quotas: &'q mut Vec<QuotaState>,
    reference: &'r Reference<'d>,
}

impl<'de> ListVisitor<'de> for RateLimitItems<'_, '_, '_> {
    type Out = ();
    type Error = Infallible;

    fn entry(&mut self) -> Result<impl EntryVisitor<'de>, Self::Error> {
        Ok(RateLimitEntry {
            quotas: &mut *self.quotas,
            reference: self.reference,
        })
    }

    fn finish(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

struct RateLimitEntry<'q, 'r, 'd> {
    quotas: &'q mut Vec<QuotaState>,
    reference: &'r Reference<'d>,
}

impl<'de> EntryVisitor<'de> for RateLimitEntry<'_, '_, '_> {
    type Error = Infallible;

    fn item(self) -> Result<impl ItemVisitor<'de>, Self::Error> {
        Ok(self)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Self::Error> {
        Ok(Ignored)
    }
}

impl<'de, 'q, 'r, 'd> ItemVisitor<'de> for RateLimitEntry<'q, 'r, 'd> {
    type Out = ();
    type Error = Infallible;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Self::Error> {
        let quota = name(RefBareItem::from(&bare_item)).and_then(|name| {
            let mut quota = QuotaState::new(Source::IetfRateLimit);
            quota.name = Some(name.to_owned().into());
            self.quotas.push(quota);
            self.quotas.last_mut()
        });
        Ok(RateLimitParams {
            quota,
            reference: self.reference,
        })
    }
}

/// `r`, `t` and `pk` of one named `RateLimit` item. When a key repeats,
/// the last one counts (RFC 9651 §4.2.3.2).
struct RateLimitParams<'q, 'r, 'd> {
    quota: Option<&'q mut QuotaState>,
    reference: &'r Reference<'d>,
}

impl<'de> ParameterVisitor<'de> for RateLimitParams<'_, '_, '_> {
    type Out = ();
    type Error = Infallible;

    fn parameter(
        &mut self,
        key: &'de KeyRef,
        value: BareItemFromInput<'de>,
    ) -> Result<(), Self::Error> {
        let Some(quota) = self.quota.as_deref_mut() else {
            return Ok(());
        };
        match key.as_str() {
            "r" => quota.remaining = non_negative(RefBareItem::from(&value)),
            "t" => {
                quota.reset_after = seconds(RefBareItem::from(&value))
                    .and_then(|reset| numbers::delta_or_epoch_from(reset, self.reference));
            }
            "pk" => quota.partition_key = owned_partition_key(value),
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Reads a current-syntax `RateLimit-Policy` List into the quotas of
/// [`merge_policies`].
struct Policies<'q> {
    quotas: &'q mut Vec<QuotaState>,
    /// The `RateLimit` items policies complete.
    rate_limit: Range<usize>,
    /// Which of them a policy completed already.
    completed: Completed,
    /// Which of those had no partition key of their own.
    completed_partition_keys: Completed,
}

impl Policies<'_> {
    /// The quota the policy `name` fills: the first item of that name no
    /// policy completed yet, else a new quota. With whether the quota keeps
    /// its own partition key.
    fn quota_for(&mut self, name: &str) -> Option<(&mut QuotaState, bool)> {
        let start = self.rate_limit.start;
        let item = self.rate_limit.clone().find(|&index| {
            !self.completed.contains(index - start)
                && self.quotas.get(index).is_some_and(|quota| {
                    quota.source == Source::IetfRateLimit && quota.name.as_deref() == Some(name)
                })
        });
        match item {
            Some(index) => {
                let quota = self.quotas.get_mut(index)?;
                let keeps_partition_key = quota.partition_key.is_some();
                self.completed.insert(index - start);
                if !keeps_partition_key {
                    self.completed_partition_keys.insert(index - start);
                }
                Some((quota, keeps_partition_key))
            }
            None => {
                let mut quota = QuotaState::new(Source::IetfRateLimit);
                quota.name = Some(name.to_owned().into());
                self.quotas.push(quota);
                Some((self.quotas.last_mut()?, false))
            }
        }
    }

    /// Takes back what a malformed List did: the policies appended from
    /// `quotas[appended]` on, and the completion of items.
    fn undo(&mut self, appended: usize) {
        self.quotas.truncate(appended);
        let start = self.rate_limit.start;
        for index in self.rate_limit.clone() {
            if !self.completed.contains(index - start) {
                continue;
            }
            let Some(quota) = self.quotas.get_mut(index) else {
                continue;
            };
            quota.limit = None;
            quota.window = None;
            quota.unit = None;
            if self.completed_partition_keys.contains(index - start) {
                quota.partition_key = None;
            }
        }
    }
}

impl<'de> ListVisitor<'de> for &mut Policies<'_> {
    type Out = ();
    type Error = Infallible;

    fn entry(&mut self) -> Result<impl EntryVisitor<'de>, Self::Error> {
        Ok(PolicyEntry(self))
    }

    fn finish(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

struct PolicyEntry<'p, 'q>(&'p mut Policies<'q>);

impl<'de> EntryVisitor<'de> for PolicyEntry<'_, '_> {
    type Error = Infallible;

    fn item(self) -> Result<impl ItemVisitor<'de>, Self::Error> {
        Ok(self)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Self::Error> {
        Ok(Ignored)
    }
}

impl<'de, 'p, 'q> ItemVisitor<'de> for PolicyEntry<'p, 'q> {
    type Out = ();
    type Error = Infallible;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Self::Error> {
        let target = name(RefBareItem::from(&bare_item)).and_then(|name| self.0.quota_for(name));
        let (quota, keeps_partition_key) = target.unzip();
        Ok(PolicyParams {
            quota,
            keeps_partition_key: keeps_partition_key.unwrap_or(false),
        })
    }
}

/// `q`, `qu`, `w` and `pk` of one named policy; the last of a repeated key
/// counts.
struct PolicyParams<'q> {
    quota: Option<&'q mut QuotaState>,
    keeps_partition_key: bool,
}

impl<'de> ParameterVisitor<'de> for PolicyParams<'_> {
    type Out = ();
    type Error = Infallible;

    fn parameter(
        &mut self,
        key: &'de KeyRef,
        value: BareItemFromInput<'de>,
    ) -> Result<(), Self::Error> {
        let Some(quota) = self.quota.as_deref_mut() else {
            return Ok(());
        };
        match key.as_str() {
            "q" => quota.limit = non_negative(RefBareItem::from(&value)),
            "qu" => quota.unit = text(RefBareItem::from(&value)).map(Into::into),
            "w" => quota.window = seconds(RefBareItem::from(&value)),
            "pk" if !self.keeps_partition_key => {
                quota.partition_key = owned_partition_key(value);
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A set of indexes: a bit each, without allocating below 64.
#[derive(Default)]
struct Completed {
    low: u64,
    high: Vec<u64>,
}

impl Completed {
    /// The word and the bit of `index`: word 0 is `low`.
    fn position(index: usize) -> (usize, u64) {
        (index / 64, 1 << (index % 64))
    }

    fn contains(&self, index: usize) -> bool {
        let (word, bit) = Self::position(index);
        let word = match word.checked_sub(1) {
            None => self.low,
            Some(high) => self.high.get(high).copied().unwrap_or(0),
        };
        word & bit != 0
    }

    fn insert(&mut self, index: usize) {
        let (word, bit) = Self::position(index);
        let Some(high) = word.checked_sub(1) else {
            self.low |= bit;
            return;
        };
        if self.high.len() <= high {
            self.high.resize(high + 1, 0);
        }
        if let Some(word) = self.high.get_mut(high) {
            *word |= bit;
        }
    }
}

/// `RateLimit: limit=100, remaining=50, reset=5` (drafts before -07).
fn legacy_dictionary(value: &[u8], reference: &Reference<'_>) -> Option<QuotaState> {
    let dictionary: Dictionary = Parser::new(value).parse().ok()?;
    let member = |key: &str| match dictionary.get(key) {
        Some(ListEntry::Item(item)) => Some(RefBareItem::from(&item.bare_item)),
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
        Some(ListEntry::Item(item)) => non_negative(RefBareItem::from(&item.bare_item)),
        _ => None,
    });
    quota.remaining = remaining
        .and_then(single_item)
        .and_then(|item| non_negative(RefBareItem::from(&item)));
    quota.reset_after = reset
        .and_then(single_item)
        .and_then(|item| seconds(RefBareItem::from(&item)))
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
                let quota = non_negative(RefBareItem::from(&item.bare_item))?;
                let window = item
                    .params
                    .get("w")
                    .and_then(|item| seconds(RefBareItem::from(item)))?;
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

/// The name of a policy item: a string or a token.
fn name(item: RefBareItem<'_>) -> Option<&str> {
    match item {
        RefBareItem::String(string) => Some(string.as_str()),
        RefBareItem::Token(token) => Some(token.as_str()),
        _ => None,
    }
}

fn non_negative(item: RefBareItem<'_>) -> Option<u64> {
    integer_to_u64(item.as_integer()?)
}

fn integer_to_u64(integer: Integer) -> Option<u64> {
    u64::try_from(i64::from(integer)).ok()
}

/// A non-negative integer or decimal number of seconds.
fn seconds(item: RefBareItem<'_>) -> Option<Duration> {
    match item {
        RefBareItem::Integer(integer) => integer_to_u64(integer).map(Duration::from_secs),
        RefBareItem::Decimal(decimal) => {
            let millis = integer_to_u64(decimal.as_integer_scaled_1000())?;
            Some(Duration::from_millis(millis))
        }
        _ => None,
    }
}

fn text(item: RefBareItem<'_>) -> Option<String> {
    name(item).map(str::to_owned)
}

/// `pk` is a byte sequence; tolerate a string or token too. The decoded
/// bytes become the key without a copy when they are UTF-8.
fn owned_partition_key(item: BareItemFromInput<'_>) -> Option<String> {
    match item {
        BareItemFromInput::ByteSequence(bytes) => Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()),
        ),
        other => text(RefBareItem::from(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_holds_any_index() {
        let mut completed = Completed::default();
        for index in [0, 63, 64, 127, 128, 1000] {
            assert!(!completed.contains(index));
            completed.insert(index);
            assert!(completed.contains(index));
        }
        assert!(!completed.contains(1));
        assert!(!completed.contains(65));
        assert!(!completed.contains(999));
    }

    #[test]
    fn policies_complete_items_in_order_past_64() {
        let names: Vec<String> = (0..100).map(|index| format!("p{}", index % 50)).collect();
        let items: Vec<String> = names.iter().map(|name| format!("{name};r=1")).collect();
        let policies: Vec<String> = (0..120)
            .map(|index| format!("p{};q={index}", index % 60))
            .collect();
        let mut quotas = Vec::new();
        push_rate_limit(
            items.join(", ").as_bytes(),
            &Reference::fixed(SystemTime::UNIX_EPOCH),
            &mut quotas,
        );
        merge_policies(policies.join(", ").as_bytes(), &mut quotas, 0..100);
        // The k-th policy of a name completes the k-th item of that name.
        let limits: Vec<Option<u64>> = quotas.iter().map(|quota| quota.limit).collect();
        let expected_items = (0..100u64).map(|index| {
            let name = index % 50;
            let nth = index / 50;
            // Policies of `name` are name, name + 60 (index < 60 only).
            [name, name + 60].get(usize::try_from(nth).ok()?).copied()
        });
        let left_over = (0..120u64).filter(|index| {
            let name = index % 60;
            let nth = index / 60;
            name >= 50 || nth >= 2
        });
        let expected: Vec<Option<u64>> = expected_items.chain(left_over.map(Some)).collect();
        assert_eq!(limits, expected);
    }

    #[test]
    fn a_malformed_policy_list_completes_nothing() {
        let mut quotas = Vec::new();
        let reference = Reference::fixed(SystemTime::UNIX_EPOCH);
        push_rate_limit(br#""a";r=1, "b";r=2;pk=:YWI=:"#, &reference, &mut quotas);
        let before = quotas.clone();
        merge_policies(
            br#""a";q=10;w=60;qu="tokens";pk=:Y2Q=:, "b";q=5;pk=:ZWY=:, "c";q=1, ;"#,
            &mut quotas,
            0..2,
        );
        assert_eq!(quotas, before);
    }
}
