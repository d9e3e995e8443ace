//! What a request costs: read from request headers, spent by weighted rules.

use http::{HeaderMap, HeaderName};

/// The request header that declares a request's cost, by default.
pub(crate) const DEFAULT_COST_HEADER: HeaderName = HeaderName::from_static("x-cost");

/// The request header that states what the request really cost, by default.
pub(crate) const DEFAULT_ACTUAL_COST_HEADER: HeaderName = HeaderName::from_static("x-actual-cost");

/// A request's cost: the declared one decides admission, the actual one is
/// what an admitted request is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cost {
    pub(crate) declared: u64,
    pub(crate) actual: u64,
}

impl Cost {
    /// A request without cost headers.
    #[cfg(test)]
    pub(crate) const ONE: Cost = Cost::exact(1);

    /// A cost that is charged as declared.
    #[cfg(test)]
    pub(crate) const fn exact(cost: u64) -> Cost {
        Cost {
            declared: cost,
            actual: cost,
        }
    }
}

/// Which headers carry costs, as the builder collects them.
#[derive(Debug, Clone)]
pub(crate) struct CostConfig {
    pub(crate) cost_header: HeaderName,
    pub(crate) actual_cost_header: HeaderName,
    /// Where admitted responses state the amount charged, if anywhere.
    pub(crate) usage_header: Option<HeaderName>,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            cost_header: DEFAULT_COST_HEADER,
            actual_cost_header: DEFAULT_ACTUAL_COST_HEADER,
            usage_header: None,
        }
    }
}

impl CostConfig {
    /// The cost a request declares (1 if the header is missing or not a
    /// whole number) and what it really costs (the declared cost unless the
    /// actual-cost header holds a whole number).
    pub(crate) fn cost_of(&self, headers: &HeaderMap) -> Cost {
        let declared = number(headers, &self.cost_header).unwrap_or(1);
        let actual = number(headers, &self.actual_cost_header).unwrap_or(declared);
        Cost { declared, actual }
    }
}

fn number(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn missing_or_unparseable_cost_is_one() {
        let config = CostConfig::default();
        assert_eq!(config.cost_of(&headers(&[])), Cost::ONE);
        for bad in ["", "ten", "-3", "1.5", "18446744073709551616"] {
            assert_eq!(
                config.cost_of(&headers(&[("x-cost", bad)])),
                Cost::ONE,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn declared_cost_is_charged_unless_an_actual_cost_is_given() {
        let config = CostConfig::default();
        assert_eq!(
            config.cost_of(&headers(&[("x-cost", " 250 ")])),
            Cost::exact(250)
        );
        assert_eq!(config.cost_of(&headers(&[("x-cost", "0")])), Cost::exact(0));
        assert_eq!(
            config.cost_of(&headers(&[("x-cost", "250"), ("x-actual-cost", "180")])),
            Cost {
                declared: 250,
                actual: 180
            }
        );
        assert_eq!(
            config.cost_of(&headers(&[("x-cost", "250"), ("x-actual-cost", "lots")])),
            Cost::exact(250)
        );
        assert_eq!(
            config.cost_of(&headers(&[("x-actual-cost", "7")])),
            Cost {
                declared: 1,
                actual: 7
            }
        );
    }

    #[test]
    fn header_names_are_configurable() {
        let config = CostConfig {
            cost_header: HeaderName::from_static("x-tokens"),
            ..CostConfig::default()
        };
        assert_eq!(
            config.cost_of(&headers(&[("x-tokens", "9"), ("x-cost", "5")])),
            Cost::exact(9)
        );
    }
}
