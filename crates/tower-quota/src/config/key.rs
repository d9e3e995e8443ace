//! The key function of a configured provider.

use std::borrow::Cow;
use std::sync::Arc;

use http::Request;
use http::uri::Authority;

use super::KeyConfig;
use crate::{Key, KeyFn};

/// The [`KeyFn`] of a configured provider: its name, followed by what
/// [`KeyConfig`] picks from the request.
///
/// ```
/// use tower_quota::KeyFn;
/// use tower_quota::config::{KeyConfig, ProviderKey};
///
/// let key_fn = ProviderKey::new("openai", "host".parse::<KeyConfig>()?);
/// let request = http::Request::get("https://API.openai.com/v1/models").body(())?;
/// assert_eq!(key_fn.key(&request).as_str(), "openai:api.openai.com");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ProviderKey {
    provider: Arc<str>,
    key: KeyConfig,
}

impl ProviderKey {
    /// The key function of provider `provider` keyed by `key`.
    pub fn new(provider: impl Into<Arc<str>>, key: KeyConfig) -> Self {
        ProviderKey {
            provider: provider.into(),
            key,
        }
    }
}

impl<B> KeyFn<Request<B>> for ProviderKey {
    fn key(&self, request: &Request<B>) -> Key {
        let provider = &self.provider;
        let key = match &self.key {
            KeyConfig::Global => return Key::from(provider.clone()),
            KeyConfig::Host => match request_authority(request) {
                Some((host, _port)) => format!("{provider}:{}", host.to_ascii_lowercase()),
                None => format!("{provider}:none"),
            },
            KeyConfig::Path => format!("{provider}:{}", request.uri().path()),
            KeyConfig::Header(name) => match request.headers().get(name) {
                Some(value) => format!("{provider}:{name}:{:016x}", fnv1a(value.as_bytes())),
                None => format!("{provider}:{name}:none"),
            },
        };
        Key::from(key)
    }
}

/// The host and port a request is for: from its URI, or else (a request
/// with a relative URI, as a server or proxy receives it) its `Host` header.
pub(super) fn request_authority<B>(request: &Request<B>) -> Option<(Cow<'_, str>, Option<u16>)> {
    let uri = request.uri();
    if let Some(host) = uri.host() {
        return Some((Cow::Borrowed(host), uri.port_u16()));
    }
    let header = request.headers().get(http::header::HOST)?.to_str().ok()?;
    let authority: Authority = header.parse().ok()?;
    Some((
        Cow::Owned(authority.host().to_owned()),
        authority.port_u16(),
    ))
}

/// 64-bit FNV-1a: stable across processes and Rust versions, so every
/// process sharing a store derives the same key from a header.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn header_keys_never_contain_the_header_value() {
        let key_fn = ProviderKey::new("openai", "header:x-api-key".parse().unwrap());
        let request = Request::get("https://api.openai.com/")
            .header("x-api-key", "sk-secret-123")
            .body(())
            .unwrap();
        let key = key_fn.key(&request);
        assert!(key.as_str().starts_with("openai:x-api-key:"), "{key}");
        assert!(!key.as_str().contains("sk-secret"), "{key}");
        let other = Request::get("/")
            .header("x-api-key", "sk-other")
            .body(())
            .unwrap();
        assert_ne!(key_fn.key(&other), key);
        let missing = Request::get("/").body(()).unwrap();
        assert_eq!(key_fn.key(&missing).as_str(), "openai:x-api-key:none");
    }

    #[test]
    fn host_keys_fall_back_to_the_host_header() {
        let key_fn = ProviderKey::new("p", KeyConfig::Host);
        let request = Request::get("/v1")
            .header("host", "Example.COM:8080")
            .body(())
            .unwrap();
        assert_eq!(key_fn.key(&request).as_str(), "p:example.com");
        let global = ProviderKey::new("p", KeyConfig::Global);
        assert_eq!(global.key(&request).as_str(), "p");
        let path = ProviderKey::new("p", KeyConfig::Path);
        let request = Request::get("https://x/v1/items?token=secret")
            .body(())
            .unwrap();
        assert_eq!(path.key(&request).as_str(), "p:/v1/items");
    }
}
