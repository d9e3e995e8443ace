//! Which quota a request is counted against.

use std::fmt;
use std::str::FromStr;

use http::HeaderName;

/// How requests are grouped into separate quotas.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KeyBy {
    /// One quota for everything (key `"global"`).
    #[default]
    Global,
    /// One quota per first path segment: `/users/7` and `/users` share key
    /// `"users"`; `/` has key `""`.
    PathSegment,
    /// One quota per value of this request header (an API key, a tenant id).
    /// Requests without the header share key `""`; a value that is not
    /// UTF-8 is read lossily.
    Header(HeaderName),
}

impl KeyBy {
    pub(crate) fn key_of(&self, uri: &http::Uri, headers: &http::HeaderMap) -> String {
        match self {
            KeyBy::Global => "global".to_owned(),
            KeyBy::PathSegment => uri
                .path()
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or("")
                .to_owned(),
            KeyBy::Header(name) => headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .unwrap_or_default(),
        }
    }
}

impl fmt::Display for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyBy::Global => f.write_str("global"),
            KeyBy::PathSegment => f.write_str("path"),
            KeyBy::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// A `--key-by` value that is not `global`, `path` or `header:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseKeyByError(String);

impl fmt::Display for ParseKeyByError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not global, path or header:NAME", self.0)
    }
}

impl std::error::Error for ParseKeyByError {}

impl FromStr for KeyBy {
    type Err = ParseKeyByError;

    /// Parses `global`, `path` or `header:NAME` (e.g. `header:x-api-key`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        match trimmed.to_ascii_lowercase().as_str() {
            "global" => return Ok(KeyBy::Global),
            "path" | "path-segment" | "path_segment" => return Ok(KeyBy::PathSegment),
            _ => {}
        }
        trimmed
            .split_once(':')
            .filter(|(kind, _)| kind.eq_ignore_ascii_case("header"))
            .and_then(|(_, name)| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .map(KeyBy::Header)
            .ok_or_else(|| ParseKeyByError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key_by: &KeyBy, path: &str) -> String {
        let request = http::Request::builder()
            .uri(path)
            .header("x-api-key", "alice")
            .body(())
            .unwrap();
        key_by.key_of(request.uri(), request.headers())
    }

    #[test]
    fn path_segment_is_the_first_segment() {
        assert_eq!(key(&KeyBy::PathSegment, "/users/7?x=1"), "users");
        assert_eq!(key(&KeyBy::PathSegment, "/users"), "users");
        assert_eq!(key(&KeyBy::PathSegment, "/"), "");
    }

    #[test]
    fn header_key_is_the_header_value_or_empty() {
        let by_key = KeyBy::Header(HeaderName::from_static("x-api-key"));
        assert_eq!(key(&by_key, "/"), "alice");
        let by_tenant = KeyBy::Header(HeaderName::from_static("x-tenant"));
        assert_eq!(key(&by_tenant, "/"), "");
    }

    #[test]
    fn parses_cli_forms() {
        assert_eq!("global".parse::<KeyBy>().unwrap(), KeyBy::Global);
        assert_eq!("path".parse::<KeyBy>().unwrap(), KeyBy::PathSegment);
        assert_eq!(
            "header:X-Api-Key".parse::<KeyBy>().unwrap(),
            KeyBy::Header(HeaderName::from_static("x-api-key"))
        );
        assert!("header:".parse::<KeyBy>().is_err());
        assert!("host".parse::<KeyBy>().is_err());
    }
}
