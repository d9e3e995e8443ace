//! Header names this crate reads, lowercase as `HeaderMap` stores them, and
//! the slot each one's value is kept in while a response is read.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::numbers;

/// Declares every name read, in [`HEADER_NAMES`] order: the [`Slot`] enum,
/// `HEADER_NAMES` itself and the `HeaderName` constant of each slot.
macro_rules! names {
    ($($slot:ident = $name:literal,)*) => {
        /// A header name read by [`parse`](crate::parse): its index in
        /// [`HEADER_NAMES`], and the bit of [`Found::present`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub(crate) enum Slot {
            $(
                #[doc = concat!("`", $name, "`")]
                $slot,
            )*
        }

        /// Every header name [`parse`](crate::parse) reads, lowercase.
        ///
        /// Useful to strip or log exactly the headers that influenced a decision,
        /// and to build fuzz and property-test inputs.
        pub const HEADER_NAMES: &[&str] = &[$($name,)*];

        impl Slot {
            /// The slot of a lowercase header name, `None` for a name no
            /// dialect reads.
            #[inline]
            pub(crate) fn of(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$slot),)*
                    _ => None,
                }
            }

            /// The name as a `HeaderName`, built at compile time: a lookup
            /// with it neither validates nor lowercases the name.
            pub(crate) fn header_name(self) -> HeaderName {
                match self {
                    $(Self::$slot => const { HeaderName::from_static($name) },)*
                }
            }
        }
    };
}

names! {
    RetryAfter = "retry-after",
    RetryAfterMs = "retry-after-ms",
    Date = "date",
    GrpcStatus = "grpc-status",
    GrpcRetryPushbackMs = "grpc-retry-pushback-ms",

    RateLimit = "ratelimit",
    RateLimitPolicy = "ratelimit-policy",
    RateLimitLimit = "ratelimit-limit",
    RateLimitRemaining = "ratelimit-remaining",
    RateLimitReset = "ratelimit-reset",

    XRateLimitLimit = "x-ratelimit-limit",
    XRateLimitRemaining = "x-ratelimit-remaining",
    XRateLimitReset = "x-ratelimit-reset",
    XRateLimitUsed = "x-ratelimit-used",
    XRateLimitResource = "x-ratelimit-resource",
    XRateLimitResetAfter = "x-ratelimit-reset-after",
    XRateLimitBucket = "x-ratelimit-bucket",
    XRateLimitScope = "x-ratelimit-scope",

    OpenAiLimitRequests = "x-ratelimit-limit-requests",
    OpenAiRemainingRequests = "x-ratelimit-remaining-requests",
    OpenAiResetRequests = "x-ratelimit-reset-requests",
    OpenAiLimitTokens = "x-ratelimit-limit-tokens",
    OpenAiRemainingTokens = "x-ratelimit-remaining-tokens",
    OpenAiResetTokens = "x-ratelimit-reset-tokens",

    AnthropicRequestsLimit = "anthropic-ratelimit-requests-limit",
    AnthropicRequestsRemaining = "anthropic-ratelimit-requests-remaining",
    AnthropicRequestsReset = "anthropic-ratelimit-requests-reset",
    AnthropicTokensLimit = "anthropic-ratelimit-tokens-limit",
    AnthropicTokensRemaining = "anthropic-ratelimit-tokens-remaining",
    AnthropicTokensReset = "anthropic-ratelimit-tokens-reset",
    AnthropicInputTokensLimit = "anthropic-ratelimit-input-tokens-limit",
    AnthropicInputTokensRemaining = "anthropic-ratelimit-input-tokens-remaining",
    AnthropicInputTokensReset = "anthropic-ratelimit-input-tokens-reset",
    AnthropicOutputTokensLimit = "anthropic-ratelimit-output-tokens-limit",
    AnthropicOutputTokensRemaining = "anthropic-ratelimit-output-tokens-remaining",
    AnthropicOutputTokensReset = "anthropic-ratelimit-output-tokens-reset",

    ShopifyCallLimit = "x-shopify-shop-api-call-limit",
}

/// How many names there are; each has a bit in a `u64`.
const COUNT: usize = HEADER_NAMES.len();
const _: () = assert!(COUNT <= 64);

impl Slot {
    pub(crate) const fn bit(self) -> u64 {
        1 << self as u8
    }

    /// The bits of `slots`, for [`Found::any`].
    pub(crate) const fn mask(slots: &[Self]) -> u64 {
        let mut mask = 0;
        let mut index = 0;
        while index < slots.len() {
            mask |= slots[index].bit();
            index += 1;
        }
        mask
    }
}

/// The slot of a header name, after a first-byte test that turns away most
/// names no dialect reads (`content-type`, `server`, `etag`, `vary`, ...)
/// without comparing them to any.
#[inline]
fn slot(name: &str) -> Option<Slot> {
    match name.as_bytes().first() {
        Some(b'a' | b'd' | b'g' | b'r' | b'x') => Slot::of(name),
        _ => None,
    }
}

/// The first value of every name read, found in one pass over a response's
/// headers: no name is hashed, validated or looked up.
#[derive(Debug)]
pub(crate) struct Found<'a> {
    headers: &'a HeaderMap,
    values: [Option<&'a HeaderValue>; COUNT],
    /// Bit `slot` set: the name is present.
    present: u64,
    /// Bit `slot` set: the name has more than one field line.
    repeated: u64,
}

impl<'a> Found<'a> {
    /// Nothing found yet in `headers`: [`fill`](Self::fill) finds it, in
    /// the place the caller keeps the table (320 bytes), where a function
    /// returning it filled copied it whole.
    pub(crate) fn none(headers: &'a HeaderMap) -> Self {
        Self {
            headers,
            values: [None; COUNT],
            present: 0,
            repeated: 0,
        }
    }

    /// Notes where each name read is, in one pass over the headers.
    pub(crate) fn fill(&mut self) {
        // `HeaderMap` yields a name's first value before its others, which
        // is the value `HeaderMap::get` gives.
        for (name, value) in self.headers {
            let Some(slot) = slot(name.as_str()) else {
                continue;
            };
            if self.present & slot.bit() != 0 {
                self.repeated |= slot.bit();
            } else if let Some(entry) = self.values.get_mut(slot as usize) {
                *entry = Some(value);
                self.present |= slot.bit();
            }
        }
    }

    /// `true` when any name of `mask` is present.
    #[inline]
    pub(crate) fn any(&self, mask: u64) -> bool {
        self.present & mask != 0
    }

    /// `true` when no name but `Date` is present.
    pub(crate) fn is_empty(&self) -> bool {
        self.present & !Slot::Date.bit() == 0
    }

    /// The first value of `slot`'s name, what `HeaderMap::get` gives.
    #[inline]
    pub(crate) fn get(&self, slot: Slot) -> Option<&'a HeaderValue> {
        self.values.get(slot as usize).copied().flatten()
    }

    /// The first value as trimmed visible ASCII ([`numbers::header_str`]).
    #[inline]
    pub(crate) fn str(&self, slot: Slot) -> Option<&'a str> {
        self.get(slot).and_then(numbers::header_str)
    }

    /// The first value as an integer ([`numbers::header_u64`]).
    #[inline]
    pub(crate) fn u64(&self, slot: Slot) -> Option<u64> {
        self.get(slot).and_then(numbers::header_u64)
    }

    /// All field lines of `slot`'s name, when it has more than one.
    pub(crate) fn all_lines(&self, slot: Slot) -> Option<http::header::GetAll<'a, HeaderValue>> {
        (self.repeated & slot.bit() != 0).then(|| self.headers.get_all(slot.header_name()))
    }
}

/// OpenAI: `(name, [limit, remaining, reset])` per quota.
pub(crate) const OPENAI: [(&str, [Slot; 3]); 2] = [
    (
        "requests",
        [
            Slot::OpenAiLimitRequests,
            Slot::OpenAiRemainingRequests,
            Slot::OpenAiResetRequests,
        ],
    ),
    (
        "tokens",
        [
            Slot::OpenAiLimitTokens,
            Slot::OpenAiRemainingTokens,
            Slot::OpenAiResetTokens,
        ],
    ),
];

/// Anthropic: `(name, unit, [limit, remaining, reset])` per quota.
pub(crate) const ANTHROPIC: [(&str, &str, [Slot; 3]); 4] = [
    (
        "requests",
        "requests",
        [
            Slot::AnthropicRequestsLimit,
            Slot::AnthropicRequestsRemaining,
            Slot::AnthropicRequestsReset,
        ],
    ),
    (
        "tokens",
        "tokens",
        [
            Slot::AnthropicTokensLimit,
            Slot::AnthropicTokensRemaining,
            Slot::AnthropicTokensReset,
        ],
    ),
    (
        "input-tokens",
        "tokens",
        [
            Slot::AnthropicInputTokensLimit,
            Slot::AnthropicInputTokensRemaining,
            Slot::AnthropicInputTokensReset,
        ],
    ),
    (
        "output-tokens",
        "tokens",
        [
            Slot::AnthropicOutputTokensLimit,
            Slot::AnthropicOutputTokensRemaining,
            Slot::AnthropicOutputTokensReset,
        ],
    ),
];

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn every_name_has_its_own_slot_and_header_name() {
        for (index, name) in HEADER_NAMES.iter().enumerate() {
            let slot = slot(name).expect("a slot");
            assert_eq!(slot as usize, index, "{name}");
            assert_eq!(slot.header_name().as_str(), *name);
            assert_eq!(HeaderName::from_static(name), slot.header_name());
        }
    }

    #[test]
    fn other_names_have_no_slot() {
        for name in [
            "",
            "content-type",
            "accept-ranges",
            "age",
            "x-request-id",
            "x-ratelimit",
            "x-ratelimit-",
            "retry-after-s",
            "ratelimit-policies",
            "anthropic-ratelimit-requests",
            "dates",
        ] {
            assert_eq!(slot(name), None, "{name:?}");
        }
    }

    /// [`Found`], filled from `headers`.
    fn scan(headers: &HeaderMap) -> Found<'_> {
        let mut found = Found::none(headers);
        found.fill();
        found
    }

    #[test]
    fn scan_keeps_the_first_value_and_notes_repeats() {
        let mut headers = HeaderMap::new();
        headers.append("ratelimit", HeaderValue::from_static("a"));
        headers.append("server", HeaderValue::from_static("s"));
        headers.append("ratelimit", HeaderValue::from_static("b"));
        headers.append("date", HeaderValue::from_static("d"));
        let found = scan(&headers);
        assert_eq!(found.get(Slot::RateLimit), headers.get("ratelimit"));
        assert_eq!(found.get(Slot::Date), headers.get("date"));
        assert_eq!(found.get(Slot::RetryAfter), None);
        assert!(!found.is_empty());
        let lines: Vec<_> = found
            .all_lines(Slot::RateLimit)
            .expect("two")
            .iter()
            .collect();
        assert_eq!(lines, ["a", "b"]);
        assert!(found.all_lines(Slot::Date).is_none());

        let mut only_date = HeaderMap::new();
        only_date.insert("date", HeaderValue::from_static("d"));
        assert!(scan(&only_date).is_empty());
    }
}
