//! The key function of a configured provider.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, DefaultHasher, Hasher, RandomState};
use std::sync::{Arc, OnceLock};

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
///
/// # Header keys
///
/// With [`KeyConfig::Header`], the key holds a 64-bit digest of the
/// header's value (typically an API key), never the value: keys appear in
/// telemetry and metric labels. The digest is keyed (SipHash with a secret
/// key, by default std's [`RandomState`] drawn once per process), so that
/// nobody who lacks the secret can confirm a guessed value from a log line
/// or build two values that share a quota on purpose. The secret changes
/// with every process: processes that share a store and must agree on the
/// key give each one the same secret ([`KeyHasher::secret`], or the
/// configuration's `key_secret_env`), or the same keyed hasher with
/// [`with_hasher`](Self::with_hasher).
#[derive(Clone)]
pub struct ProviderKey<H = KeyHasher> {
    provider: Arc<str>,
    key: KeyConfig,
    hasher: H,
}

impl ProviderKey {
    /// The key function of provider `provider` keyed by `key`; header
    /// values are hashed with this process's secret.
    pub fn new(provider: impl Into<Arc<str>>, key: KeyConfig) -> Self {
        ProviderKey::with_hasher(provider, key, KeyHasher::process())
    }
}

/// The keyed hash of header values in [`ProviderKey`]s: SipHash keyed with
/// this process's random secret, or prefixed with a secret that the
/// processes sharing a store share (so they agree on every key).
#[derive(Clone)]
pub struct KeyHasher(Secret);

#[derive(Clone)]
enum Secret {
    Process(RandomState),
    Shared(Arc<[u8]>),
}

impl KeyHasher {
    /// This process's secret, drawn once.
    pub fn process() -> Self {
        static PROCESS_SECRET: OnceLock<RandomState> = OnceLock::new();
        KeyHasher(Secret::Process(
            PROCESS_SECRET.get_or_init(RandomState::new).clone(),
        ))
    }

    /// A secret shared by the processes that must agree on keys: SipHash
    /// over the secret, then the value. Use at least 16 random bytes.
    pub fn secret(secret: impl AsRef<[u8]>) -> Self {
        KeyHasher(Secret::Shared(Arc::from(secret.as_ref())))
    }
}

impl BuildHasher for KeyHasher {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        match &self.0 {
            Secret::Process(state) => state.build_hasher(),
            Secret::Shared(secret) => {
                let mut hasher = DefaultHasher::new();
                hasher.write(secret);
                hasher
            }
        }
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.write_str(match self.0 {
            Secret::Process(_) => "KeyHasher::process()",
            Secret::Shared(_) => "KeyHasher::secret(..)",
        })
    }
}

impl<H: BuildHasher> ProviderKey<H> {
    /// The key function of provider `provider` keyed by `key`; header
    /// values are hashed with `hasher`, which must be keyed with a secret
    /// (a [`RandomState`], or a SipHash or MAC keyed with a secret shared by
    /// the processes that must agree on keys).
    pub fn with_hasher(provider: impl Into<Arc<str>>, key: KeyConfig, hasher: H) -> Self {
        ProviderKey {
            provider: provider.into(),
            key,
            hasher,
        }
    }
}

impl<H> fmt::Debug for ProviderKey<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderKey")
            .field("provider", &self.provider)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<B, H: BuildHasher> KeyFn<Request<B>> for ProviderKey<H> {
    fn key(&self, request: &Request<B>) -> Key {
        let provider = &self.provider;
        let key = match &self.key {
            KeyConfig::Global => return Key::from(provider.clone()),
            KeyConfig::Host => match crate::key::request_host(request) {
                Some(host) => format!("{provider}:{host}"),
                None => format!("{provider}:none"),
            },
            KeyConfig::Path => {
                // Keys reach telemetry: a path that carries an id or a token
                // is keyed by its template and a keyed digest of the path.
                let path = request.uri().path();
                match crate::telemetry::path_template(path) {
                    Cow::Borrowed(path) => format!("{provider}:{path}"),
                    Cow::Owned(template) => {
                        let digest = self.hasher.hash_one(path.as_bytes());
                        format!("{provider}:{template}:{digest:016x}")
                    }
                }
            }
            KeyConfig::Header(name) => match request.headers().get(name) {
                Some(value) => {
                    let digest = self.hasher.hash_one(value.as_bytes());
                    format!("{provider}:{name}:{digest:016x}")
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 64-bit FNV-1a, the unkeyed hash header keys used to be made with.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    fn with_api_key(value: &str) -> Request<()> {
        Request::get("https://api.openai.com/")
            .header("x-api-key", value)
            .body(())
            .unwrap()
    }

    #[test]
    fn processes_with_one_shared_secret_agree_on_header_keys() {
        let config: KeyConfig = "header:x-api-key".parse().unwrap();
        let request = with_api_key("sk-secret");
        let key = |hasher: KeyHasher| {
            ProviderKey::with_hasher("openai", config.clone(), hasher).key(&request)
        };
        assert_eq!(
            key(KeyHasher::secret("shared secret, 16+ bytes")),
            key(KeyHasher::secret("shared secret, 16+ bytes"))
        );
        assert_ne!(
            key(KeyHasher::secret("shared secret, 16+ bytes")),
            key(KeyHasher::secret("another secret, 16+ bytes"))
        );
        assert!(!format!("{:?}", KeyHasher::secret("hidden")).contains("hidden"));
    }

    #[test]
    fn regression_header_keys_are_a_keyed_digest_not_public_fnv1a() {
        // Before: the label was the public FNV-1a of the value, so anyone
        // could confirm a guessed API key from a log line, or build values
        // that collide with another tenant's key on purpose.
        let config: KeyConfig = "header:x-api-key".parse().unwrap();
        let request = with_api_key("sk-secret-123");
        let public = format!("{:016x}", fnv1a(b"sk-secret-123"));
        let key = ProviderKey::new("openai", config.clone()).key(&request);
        assert!(!key.as_str().contains(&public), "{key}");

        // Two secrets, two labels for the same value.
        let first = ProviderKey::with_hasher("openai", config.clone(), RandomState::new());
        let second = ProviderKey::with_hasher("openai", config.clone(), RandomState::new());
        assert_ne!(first.key(&request), second.key(&request));
        // One secret, one label: every layer of the process agrees.
        assert_eq!(
            ProviderKey::new("openai", config.clone()).key(&request),
            key
        );
        assert_eq!(
            first.key(&request),
            first.key(&with_api_key("sk-secret-123"))
        );
        // A short digest: 16 hex digits after the header name.
        let digest = key.as_str().strip_prefix("openai:x-api-key:").unwrap();
        assert_eq!(digest.len(), 16, "{key}");
        assert!(digest.bytes().all(|byte| byte.is_ascii_hexdigit()), "{key}");
    }

    #[test]
    fn header_values_never_appear_in_the_key_display_or_debug() {
        let key_fn = ProviderKey::new("openai", "header:x-api-key".parse().unwrap());
        let key = key_fn.key(&with_api_key("sk-secret-123"));
        for shown in [
            key.to_string(),
            format!("{key:?}"),
            key.as_str().to_owned(),
            format!("{key_fn:?}"),
        ] {
            assert!(!shown.contains("sk-secret"), "{shown}");
        }
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
        assert_eq!(key_fn.key(&request).as_str(), "p:example.com:8080");
        let global = ProviderKey::new("p", KeyConfig::Global);
        assert_eq!(global.key(&request).as_str(), "p");
        let path = ProviderKey::new("p", KeyConfig::Path);
        let request = Request::get("https://x/v1/items?token=secret")
            .body(())
            .unwrap();
        assert_eq!(path.key(&request).as_str(), "p:/v1/items");
    }

    #[test]
    fn path_keys_never_carry_a_token_and_keep_distinct_paths_apart() {
        let key_fn = ProviderKey::new("tg", KeyConfig::Path);
        let key = |path: &str| {
            let request = Request::post(format!("https://api.telegram.org{path}"))
                .body(())
                .unwrap();
            key_fn.key(&request).as_str().to_owned()
        };
        let one = key("/bot123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage");
        let other = key("/bot654321:BBHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage");
        for key in [&one, &other] {
            assert!(key.starts_with("tg:/{}/sendMessage:"), "{key}");
            assert!(!key.contains("123456") && !key.contains("AAHdq"), "{key}");
        }
        assert_ne!(one, other, "two bots keep two quotas");
        assert_eq!(
            one,
            key("/bot123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage")
        );
    }
}
