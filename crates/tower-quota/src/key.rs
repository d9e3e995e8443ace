//! Keys: which quota a request draws on.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The name of a quota: one provider, one API key, one host, one tenant.
///
/// Requests with equal keys share one quota; requests with different keys
/// never affect each other. A key is cheap to clone and rarely allocates: a
/// `&'static str`, a name of up to 38 bytes or an integer kept in place, or
/// a longer name in a reference-counted string.
///
/// ```
/// use tower_quota::Key;
///
/// let global = Key::from_static("global");
/// let per_host = Key::from(String::from("api.example.com"));
/// assert_ne!(global, per_host);
/// assert_eq!(per_host.as_str(), "api.example.com");
/// // A borrowed name is copied; an integer is written out in decimal.
/// let tenant = "tenant-42".to_owned();
/// assert_eq!(Key::new(&tenant), Key::from_static("tenant-42"));
/// assert_eq!(Key::from(42u64).as_str(), "42");
/// ```
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
    /// A URI's authority that is already a host key (lowercase, no user
    /// info, no default port): shares the URI's bytes, no allocation.
    Authority(http::uri::Authority),
    /// A short name's bytes, in place: no allocation.
    Inline(Inline),
}

/// The most bytes a key keeps in place: the room a [`Key`] has anyway
/// beside the largest other form (a URI's authority), so that inline keys
/// cost no size.
const INLINE: usize = 38;

/// A name of at most [`INLINE`] bytes, copied from a whole `&str`.
#[derive(Clone, Copy)]
struct Inline {
    len: u8,
    bytes: [u8; INLINE],
}

impl Inline {
    fn new(name: &str) -> Option<Self> {
        let len = u8::try_from(name.len())
            .ok()
            .filter(|len| usize::from(*len) <= INLINE)?;
        Some(Inline {
            len,
            bytes: copied(name.as_bytes()),
        })
    }

    /// `value` in decimal: at most 20 digits, written in place.
    fn decimal(mut value: u64) -> Self {
        let len = value.checked_ilog10().map_or(1, |log| log as usize + 1);
        let mut bytes = [0; INLINE];
        for at in (0..len).rev() {
            // Truncation intended: a remainder of 10 is one digit.
            bytes[at] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        // At most 20 digits: fits a `u8`.
        Inline {
            len: len as u8,
            bytes,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .expect("an inline key holds a whole `&str` or ASCII digits")
    }
}

/// `name` (at most [`INLINE`] bytes) at the start of a zeroed array, in
/// pieces of fixed sizes, the last two of each size overlapping, so that
/// no call copies it: a key is made in each keyed layer of a request, most
/// of them from a host name of 8 to 32 bytes.
fn copied(name: &[u8]) -> [u8; INLINE] {
    /// Copies `N` bytes from `from` at `at`, where `from` has them.
    fn piece<const N: usize>(to: &mut [u8; INLINE], from: &[u8], at: usize) {
        if let (Some(to), Some(from)) = (to.get_mut(at..at + N), from.get(at..at + N)) {
            to.copy_from_slice(from);
        }
    }
    let mut bytes = [0; INLINE];
    let len = name.len().min(INLINE);
    match len {
        16.. => {
            piece::<16>(&mut bytes, name, 0);
            if len > 32 {
                piece::<16>(&mut bytes, name, 16);
            }
            piece::<16>(&mut bytes, name, len - 16);
        }
        8..16 => {
            piece::<8>(&mut bytes, name, 0);
            piece::<8>(&mut bytes, name, len - 8);
        }
        4..8 => {
            piece::<4>(&mut bytes, name, 0);
            piece::<4>(&mut bytes, name, len - 4);
        }
        _ => {
            for (to, from) in bytes.iter_mut().zip(&name[..len]) {
                *to = *from;
            }
        }
    }
    bytes
}

impl Key {
    /// The key every request shares when no key function is configured.
    pub const GLOBAL: Key = Key::from_static("global");

    /// A key from a string known at compile time; no allocation.
    pub const fn from_static(name: &'static str) -> Self {
        Key(Repr::Static(name))
    }

    /// A key with a copy of `name`: in place, with no allocation, up to 38
    /// bytes; shared behind a reference count beyond.
    pub fn new(name: &str) -> Self {
        match Inline::new(name) {
            Some(inline) => Key(Repr::Inline(inline)),
            None => Key(Repr::Shared(name.into())),
        }
    }

    /// The name's bytes: what equality, hashing and ordering compare (as
    /// they would the `&str`'s), and the keyed maps too; an inline name's
    /// without the UTF-8 check [`as_str`](Self::as_str) makes.
    pub(crate) fn name_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(inline) => &inline.bytes[..usize::from(inline.len)],
            _ => self.as_str().as_bytes(),
        }
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(name) => name,
            Repr::Shared(name) => name,
            Repr::Authority(authority) => authority.as_str(),
            Repr::Inline(inline) => inline.as_str(),
        }
    }
}

/// The most bytes a [`StoredKey`] keeps in place.
const SHORT: usize = 22;

/// A key as the keyed maps keep it: 24 bytes, where a [`Key`] takes 40 to
/// keep a URI's authority and longer names in place. A map holds one per
/// key it remembers, for as long as it remembers it, so a smaller one is
/// memory given back for every key; a key is stored once, when it is new,
/// so a name over 22 bytes that a `Key` kept in place (or in a URI's
/// bytes) is copied then into a reference-counted string. A stored key
/// also never keeps a request's URI alive.
#[derive(Clone)]
pub(crate) struct StoredKey(Stored);

#[derive(Clone)]
enum Stored {
    Static(&'static str),
    Shared(Arc<str>),
    Short { len: u8, bytes: [u8; SHORT] },
}

impl StoredKey {
    /// The name's bytes, as [`Key::name_bytes`] gives them.
    pub(crate) fn name_bytes(&self) -> &[u8] {
        match &self.0 {
            Stored::Static(name) => name.as_bytes(),
            Stored::Shared(name) => name.as_bytes(),
            Stored::Short { len, bytes } => &bytes[..usize::from(*len)],
        }
    }
}

impl Key {
    /// The key as a keyed map stores it: the same name.
    pub(crate) fn to_stored(&self) -> StoredKey {
        match &self.0 {
            Repr::Static(name) => StoredKey(Stored::Static(name)),
            Repr::Shared(name) => StoredKey(Stored::Shared(Arc::clone(name))),
            Repr::Authority(_) | Repr::Inline(_) => {
                let name = self.name_bytes();
                match u8::try_from(name.len()) {
                    Ok(len) if name.len() <= SHORT => {
                        let mut bytes = [0; SHORT];
                        bytes[..name.len()].copy_from_slice(name);
                        StoredKey(Stored::Short { len, bytes })
                    }
                    _ => StoredKey(Stored::Shared(Arc::from(self.as_str()))),
                }
            }
        }
    }
}

impl From<&'static str> for Key {
    fn from(name: &'static str) -> Self {
        Key::from_static(name)
    }
}

impl From<String> for Key {
    /// Up to 38 bytes, the name is copied in place and the `String` freed.
    fn from(name: String) -> Self {
        Key::new(&name)
    }
}

impl From<u64> for Key {
    /// The number in decimal, in place: no allocation.
    fn from(id: u64) -> Self {
        Key(Repr::Inline(Inline::decimal(id)))
    }
}

impl From<u32> for Key {
    /// The number in decimal, in place: no allocation.
    fn from(id: u32) -> Self {
        Key::from(u64::from(id))
    }
}

impl From<Arc<str>> for Key {
    fn from(name: Arc<str>) -> Self {
        Key(Repr::Shared(name))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.name_bytes() == other.name_bytes()
    }
}

impl Eq for Key {}

impl Hash for Key {
    /// As `str` hashes (its bytes, then `0xff`), which `Borrow<str>`
    /// requires: a map of keys is looked up by `&str` too.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.name_bytes());
        state.write_u8(0xff);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    /// As `str` orders: byte by byte.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name_bytes().cmp(other.name_bytes())
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Chooses the [`Key`] of a request.
///
/// Implemented for [`GlobalKey`] (every request shares one quota) and for any
/// closure `Fn(&Request) -> K` where `K: Into<Key>`, so a key function is
/// usually written inline:
///
/// ```
/// use tower_quota::{Key, KeyFn};
///
/// let by_host = |request: &http::Request<()>| -> Key {
///     request.uri().host().map(Key::new).unwrap_or(Key::GLOBAL)
/// };
/// let request = http::Request::get("https://api.example.com/v1/items").body(()).unwrap();
/// assert_eq!(by_host.key(&request).as_str(), "api.example.com");
/// ```
///
/// Keys appear in telemetry: derive them from hosts, tenants or API names,
/// never from secrets such as API keys or tokens.
pub trait KeyFn<Request> {
    /// The key of `request`.
    fn key(&self, request: &Request) -> Key;
}

impl<Request, F, K> KeyFn<Request> for F
where
    F: Fn(&Request) -> K,
    K: Into<Key>,
{
    fn key(&self, request: &Request) -> Key {
        self(request).into()
    }
}

/// The default [`KeyFn`]: every request shares [`Key::GLOBAL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalKey;

impl<Request> KeyFn<Request> for GlobalKey {
    fn key(&self, _request: &Request) -> Key {
        Key::GLOBAL
    }
}

/// A [`KeyFn`] for HTTP requests: one key per host the request is for,
/// lowercased, with its port when the port is explicit and not the scheme's
/// default (`api.example.com`, `api.example.com:8443`).
///
/// The host comes from the request's URI, or else (a relative URI, as an
/// outgoing axum or tonic request carries before its connector adds the
/// origin) from its `Host` header; a request with neither uses
/// [`Key::GLOBAL`]. It is the default key of [`RetryAfterLayer`] and
/// [`CircuitBreakerLayer`], so one host's 429 or outage never pauses the
/// others; give it to [`SlidingWindowLayer::key_fn`] for a quota per host.
///
/// ```
/// use tower_quota::{HostKey, KeyFn};
///
/// let request = http::Request::get("https://API.example.com/v1/items?token=t").body(()).unwrap();
/// assert_eq!(HostKey.key(&request).as_str(), "api.example.com");
/// let request = http::Request::get("https://api.example.com:443/").body(()).unwrap();
/// assert_eq!(HostKey.key(&request).as_str(), "api.example.com");
/// let request = http::Request::get("http://127.0.0.1:8080/").body(()).unwrap();
/// assert_eq!(HostKey.key(&request).as_str(), "127.0.0.1:8080");
/// let request = http::Request::get("/v1").header("host", "Example.COM").body(()).unwrap();
/// assert_eq!(HostKey.key(&request).as_str(), "example.com");
/// ```
///
/// [`RetryAfterLayer`]: crate::RetryAfterLayer
/// [`CircuitBreakerLayer`]: crate::CircuitBreakerLayer
/// [`SlidingWindowLayer::key_fn`]: crate::SlidingWindowLayer::key_fn
#[derive(Debug, Clone, Copy, Default)]
pub struct HostKey;

impl<B> KeyFn<http::Request<B>> for HostKey {
    fn key(&self, request: &http::Request<B>) -> Key {
        host_key(request).unwrap_or(Key::GLOBAL)
    }
}

/// [`request_host`] as a [`Key`], with no allocation when the URI's
/// authority is already in key form (the common case: a lowercase host,
/// with no user info and no default port): its bytes copied in place when
/// they fit, as most hosts do, else the authority itself, shared. A copy
/// in place costs no reference count: taking one and giving it back were
/// two atomic operations per key computed, and a stack computes a key in
/// each keyed layer.
pub(crate) fn host_key<B>(request: &http::Request<B>) -> Option<Key> {
    if let Some(authority) = authority_in_key_form(request) {
        return Some(match Inline::new(authority.as_str()) {
            Some(inline) => Key(Repr::Inline(inline)),
            None => Key(Repr::Authority(authority.clone())),
        });
    }
    request_host(request).map(Key::from)
}

/// The URI's authority, when it reads exactly as the request's host key.
fn authority_in_key_form<B>(request: &http::Request<B>) -> Option<&http::uri::Authority> {
    let uri = request.uri();
    uri.authority()
        .filter(|authority| is_host_key(authority, uri.scheme_str()))
}

/// Whether `authority` reads exactly as the host key of a request with
/// this scheme: `host` or `host:port`, the host lowercase, the port
/// explicit and not the scheme's default.
fn is_host_key(authority: &http::uri::Authority, scheme: Option<&str>) -> bool {
    // One pass over the bytes, not `host()` and `port_u16()`, which each
    // search the text again: this runs for every request of every keyed layer.
    let text = authority.as_str();
    let bytes = text.as_bytes();
    // The common case, a host name with no port.
    if is_plain_host(bytes) {
        return true;
    }
    // User info (`@`) or an uppercase host is not in key form; a port has
    // neither.
    if bytes
        .iter()
        .any(|&byte| byte == b'@' || byte.is_ascii_uppercase())
    {
        return false;
    }
    let host_end = if bytes.first() == Some(&b'[') {
        match text.find(']') {
            Some(close) => close + 1,
            None => return false,
        }
    } else {
        text.find(':').unwrap_or(text.len())
    };
    match text[host_end..].strip_prefix(':') {
        None => host_end == text.len(),
        Some(port) => port
            .parse::<u16>()
            .is_ok_and(|port| port != default_port(scheme).unwrap_or(0)),
    }
}

/// Whether `bytes` is a host name in key form (`a-z`, `0-9`, `.`, `-`
/// only): an authority made of them alone has no user info, no port and no
/// uppercase. Sixteen bytes at a time, each block checked whole with no
/// early exit (so with vector instructions): most hosts are one or two
/// blocks. The bytes past the last whole block are checked as one more
/// block ending where the host ends (over bytes checked already), or in a
/// shorter host as two pieces of 8 or 4 that overlap: never copied.
fn is_plain_host(bytes: &[u8]) -> bool {
    fn plain<const N: usize>(piece: Option<&[u8]>) -> bool {
        piece
            .and_then(|piece| <&[u8; N]>::try_from(piece).ok())
            .is_some_and(|piece| {
                piece.iter().fold(true, |plain, &byte| {
                    plain
                        & ((byte.wrapping_sub(b'a') < 26)
                            | (byte.wrapping_sub(b'0') < 10)
                            | (byte == b'.')
                            | (byte == b'-'))
                })
            })
    }
    let len = bytes.len();
    match len {
        16.. => {
            let mut blocks = bytes.chunks_exact(16);
            blocks.all(|block| plain::<16>(Some(block)))
                && (blocks.remainder().is_empty() || plain::<16>(bytes.get(len - 16..)))
        }
        8..16 => plain::<8>(bytes.get(..8)) & plain::<8>(bytes.get(len - 8..)),
        4..8 => plain::<4>(bytes.get(..4)) & plain::<4>(bytes.get(len - 4..)),
        _ => bytes.iter().all(|&byte| plain::<1>(Some(&[byte]))),
    }
}

fn default_port(scheme: Option<&str>) -> Option<u16> {
    match scheme {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }
}

/// The host a request is for, lowercased, with its port when the port is
/// explicit and not its scheme's default: from the URI, or else from the
/// `Host` header (a relative URI).
pub(crate) fn request_host<B>(request: &http::Request<B>) -> Option<String> {
    let uri = request.uri();
    let (mut host, port) = match uri.host() {
        Some(host) => (host.to_ascii_lowercase(), uri.port_u16()),
        None => {
            let header = request.headers().get(http::header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = header.parse().ok()?;
            (authority.host().to_ascii_lowercase(), authority.port_u16())
        }
    };
    let default_port = default_port(uri.scheme_str());
    if let Some(port) = port.filter(|port| Some(*port) != default_port) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = write!(host, ":{port}");
    }
    Some(host)
}

/// Chooses how much of a quota a request spends.
///
/// Implemented for [`UnitCost`] (every request costs 1) and for any closure
/// `Fn(&Request) -> u64`. A cost of 0 is admitted at once and spends nothing.
pub trait CostFn<Request> {
    /// The cost of `request`, in the units of the quotas it draws on.
    fn cost(&self, request: &Request) -> u64;
}

impl<Request, F> CostFn<Request> for F
where
    F: Fn(&Request) -> u64,
{
    fn cost(&self, request: &Request) -> u64 {
        self(request)
    }
}

/// The default [`CostFn`]: every request costs 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCost;

impl<Request> CostFn<Request> for UnitCost {
    fn cost(&self, _request: &Request) -> u64 {
        1
    }
}

/// The cost of a request, carried in its extensions: set by the layer that
/// made the request (a [`BatchLayer`](crate::batch::BatchLayer) sets the sum
/// of its items' costs) or by user code, and read by [`CostFromExtension`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCost(pub u64);

/// A [`CostFn`] that reads the [`RequestCost`] extension of an
/// `http::Request`; a request without one costs 1.
///
/// ```
/// use tower_quota::{CostFn, CostFromExtension, RequestCost};
///
/// let mut request = http::Request::post("/v1/embeddings").body(()).unwrap();
/// assert_eq!(CostFromExtension.cost(&request), 1);
/// request.extensions_mut().insert(RequestCost(100));
/// assert_eq!(CostFromExtension.cost(&request), 100);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CostFromExtension;

impl<B> CostFn<http::Request<B>> for CostFromExtension {
    fn cost(&self, request: &http::Request<B>) -> u64 {
        request
            .extensions()
            .get::<RequestCost>()
            .map_or(1, |cost| cost.0)
    }
}

/// Reads from a response how much of its quota a request really spent, so
/// that the cost charged at admission, an estimate, can be corrected.
///
/// Implemented for [`NoUsage`] (the default: no correction), for
/// [`UsageFromExtension`] (the [`Usage`] extension that user code puts on the
/// response) and for any closure `Fn(&Response) -> Option<u64>`, for example
/// one that reads a usage header:
///
/// ```
/// use tower_quota::UsageFn;
///
/// let tokens_used = |response: &http::Response<()>| -> Option<u64> {
///     response.headers().get("x-usage-tokens")?.to_str().ok()?.parse().ok()
/// };
/// let response = http::Response::builder().header("x-usage-tokens", "1234").body(()).unwrap();
/// assert_eq!(tokens_used.usage(&response), Some(1234));
/// ```
pub trait UsageFn<Response> {
    /// Whether this function ever reports usage; when `false` the layer keeps
    /// nothing per request for corrections.
    const ENABLED: bool = true;

    /// The real cost of the request this is the response to, if the response
    /// says.
    fn usage(&self, response: &Response) -> Option<u64>;

    /// Whether the provider refused the request for its rate limit (an HTTP
    /// 429). The sliding window admitted it with room in its log, so the
    /// provider's window runs later than the client's: the key's margin
    /// widens (see [`Store::refused`](crate::sliding_window::Store::refused)).
    /// The default says no.
    fn refused(&self, response: &Response) -> bool {
        let _ = response;
        false
    }

    /// The quotas the provider announced in the response, with their
    /// windows (IETF `RateLimit-Policy` `q` and `w`, and the dialects that
    /// name a window). A store compares them with the configured quotas:
    /// see [`Store::announced`](crate::sliding_window::Store::announced).
    /// The default announces none.
    fn announced(&self, response: &Response) -> Vec<Announced> {
        let _ = response;
        Vec::new()
    }

    /// Whether a layer that re-sends requests sits *below* the sliding
    /// window (the response carries what a
    /// [`RetryAfterLayer`](crate::RetryAfterLayer) puts on the responses
    /// it has something to say about, a refusal among them):
    /// its re-sent requests skip the pacing, and the layer says so once
    /// with a `layer_order` event. The default says no.
    fn resent_below(&self, response: &Response) -> bool {
        let _ = response;
        false
    }

    /// Whether [`refused`](UsageFn::refused) reports the provider's
    /// refusals. A key's first burst then goes at the pace its answers come
    /// back, and the first burst after its first full window waits for one
    /// request's answer, so that a provider that refuses bursts (GCRA, a
    /// sliding-window counter) refuses one request rather than a window's
    /// worth (see [`Store::accepted`](crate::sliding_window::Store::accepted)).
    /// Without refusals reported nothing would tell the burst was too much:
    /// the default is `false`, and the log alone decides.
    const REPORTS_REFUSALS: bool = false;

    /// The room the provider says it has left, in a response it accepted
    /// (`X-RateLimit-Remaining` and `-Limit`, the IETF `RateLimit` field's
    /// `r` with its policy's `q`, and the dialects that say both). The
    /// default says nothing.
    fn room(&self, response: &Response) -> Option<Room> {
        let _ = response;
        None
    }

    /// Marks `response` as the answer to a request that waited in the
    /// sliding window's queue and left it at `at`, for the layers above: a
    /// [`RetryAfterLayer`](crate::RetryAfterLayer) whose gate a refusal
    /// closed reopens it when the provider accepts a request that left
    /// after the refusal came back (see [`Released`]). The default marks
    /// nothing.
    fn released(&self, response: &mut Response, at: tokio::time::Instant) {
        let _ = (response, at);
    }
}

/// Put on an HTTP response by [`HttpFeedback`]: the request waited in a
/// sliding window's queue and left it at [`at`](Released::at), so it reached
/// the provider no earlier than that.
///
/// A [`RetryAfterLayer`](crate::RetryAfterLayer) above reads it. A refusal
/// closes the key's gate for the server's `Retry-After`, which a server
/// states in whole seconds; the requests already queued below the gate go
/// on at the window's pace meanwhile. When the provider accepts one that
/// left the queue after the gate closed, the provider has room again, by
/// its own count: the gate reopens at once, as after a probe, rather than
/// holding every other caller of the key for the rest of the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    at: tokio::time::Instant,
}

impl Released {
    /// A request that left the queue at `at`.
    pub fn new(at: tokio::time::Instant) -> Self {
        Released { at }
    }

    /// When the request left the queue.
    pub fn at(&self) -> tokio::time::Instant {
        self.at
    }
}

/// What a provider says it has left of a quota, right after a request it
/// accepted: `remaining` more of `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Requests the provider would accept at once, now.
    pub remaining: u64,
    /// The quota they are left of.
    pub limit: u64,
}

/// A quota a provider announced in a response: `max_calls` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Announced {
    /// The quota's size per window.
    pub max_calls: u64,
    /// The window's length.
    pub window: std::time::Duration,
    /// Whether it counts tokens (or another unit than requests), so that it
    /// matches a weighted quota, not a per-request one.
    pub weighted: bool,
}

impl Announced {
    /// `max_calls` requests per `window`.
    pub fn new(max_calls: u64, window: std::time::Duration) -> Self {
        Announced {
            max_calls,
            window,
            weighted: false,
        }
    }

    /// The same quota, counted in another unit than requests.
    #[must_use]
    pub fn weighted(mut self) -> Self {
        self.weighted = true;
        self
    }
}

impl<Response, F> UsageFn<Response> for F
where
    F: Fn(&Response) -> Option<u64>,
{
    fn usage(&self, response: &Response) -> Option<u64> {
        self(response)
    }
}

/// The default [`UsageFn`]: the cost charged at admission is final.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoUsage;

impl<Response> UsageFn<Response> for NoUsage {
    const ENABLED: bool = false;

    fn usage(&self, _response: &Response) -> Option<u64> {
        None
    }
}

/// The real cost of a request, put on its response's extensions by user code
/// (an inner service that knows, for example, how many tokens a completion
/// used), and read by [`UsageFromExtension`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage(pub u64);

/// A [`UsageFn`] that reads the [`Usage`] extension of an `http::Response`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageFromExtension;

impl<B> UsageFn<http::Response<B>> for UsageFromExtension {
    fn usage(&self, response: &http::Response<B>) -> Option<u64> {
        response.extensions().get::<Usage>().map(|usage| usage.0)
    }
}

/// The [`UsageFn`] for HTTP stacks: reads the [`Usage`] extension like
/// [`UsageFromExtension`], and reports a 429 as a
/// [refusal](UsageFn::refused), so that a sliding window whose provider
/// counts later than it does widens its margin instead of being refused
/// again. [`ServiceBuilderExt`](crate::ServiceBuilderExt) and the provider
/// config use it.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpFeedback;

impl<B> UsageFn<http::Response<B>> for HttpFeedback {
    fn usage(&self, response: &http::Response<B>) -> Option<u64> {
        response.extensions().get::<Usage>().map(|usage| usage.0)
    }

    const REPORTS_REFUSALS: bool = true;

    fn refused(&self, response: &http::Response<B>) -> bool {
        response.status() == http::StatusCode::TOO_MANY_REQUESTS
    }

    fn room(&self, response: &http::Response<B>) -> Option<Room> {
        let headers = response.headers();
        if !headers.keys().any(|name| names_a_quota(name.as_str())) {
            return None;
        }
        let signal =
            quota_headers::parse_with_clock(response.status(), headers, std::time::SystemTime::now);
        // The tightest quota of requests (not tokens) that says both.
        signal
            .quotas
            .iter()
            .filter(|quota| counts_requests(quota))
            .filter_map(|quota| {
                Some(Room {
                    remaining: quota.remaining?,
                    limit: quota.limit?.max(1),
                })
            })
            .min_by_key(|room| {
                // remaining ÷ limit, in 64-bit fixed point.
                (u128::from(room.remaining) << 64) / u128::from(room.limit)
            })
    }

    fn released(&self, response: &mut http::Response<B>, at: tokio::time::Instant) {
        response.extensions_mut().insert(Released::new(at));
    }

    fn resent_below(&self, response: &http::Response<B>) -> bool {
        response
            .extensions()
            .get::<crate::retry_after::ServerSignal>()
            .is_some()
    }

    fn announced(&self, response: &http::Response<B>) -> Vec<Announced> {
        let headers = response.headers();
        // Only a quota with a window is announced, and most responses (all
        // but the IETF dialect's) state none: skip the parse.
        if !quota_headers::states_windows(headers) {
            return Vec::new();
        }
        let signal =
            quota_headers::parse_with_clock(response.status(), headers, std::time::SystemTime::now);
        signal
            .quotas
            .iter()
            .filter_map(|quota| {
                let announced = Announced::new(quota.limit?, quota.window?);
                match quota.unit.as_deref() {
                    Some(unit) if unit.eq_ignore_ascii_case("concurrent-requests") => None,
                    _ if counts_requests(quota) => Some(announced),
                    _ => Some(announced.weighted()),
                }
            })
            .collect()
    }
}

/// Whether a quota counts requests (no unit, or `requests`), not tokens.
fn counts_requests(quota: &quota_headers::QuotaState) -> bool {
    quota
        .unit
        .as_deref()
        .is_none_or(|unit| unit.eq_ignore_ascii_case("requests"))
}

/// Whether a header's name may carry a quota (every dialect's names have
/// `ratelimit` or `rate-limit` in them): most responses of most providers
/// have none, and skip the parse.
fn names_a_quota(name: &str) -> bool {
    name.contains("ratelimit") || name.contains("rate-limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block-wise check of a plain host agrees with a byte-by-byte one
    /// for every byte at every place of hosts from 0 to 40 bytes long: the
    /// padded last block, and blocks of exactly 16.
    #[test]
    fn a_plain_host_is_checked_block_by_block_as_byte_by_byte() {
        let plain = |byte: u8| matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-');
        assert!(is_plain_host(b""));
        for len in 1..=40 {
            let mut host = vec![b'a'; len];
            for at in 0..len {
                for byte in 0..=u8::MAX {
                    host[at] = byte;
                    assert_eq!(
                        is_plain_host(&host),
                        plain(byte),
                        "{len} bytes, {byte} at {at}"
                    );
                }
                host[at] = b'a';
            }
        }
    }

    /// Keys of every form are equal (and hash alike) when their names are;
    /// names up to 38 bytes stay in place, longer ones are shared, and the
    /// in-place form costs a key no size.
    #[test]
    fn a_key_is_its_name_whatever_its_form() {
        use std::hash::BuildHasher;
        let hash = |key: &Key| foldhash::fast::FixedState::default().hash_one(key);
        let std_state = std::hash::RandomState::new();
        let short = "a".repeat(INLINE);
        let long = "a".repeat(INLINE + 1);
        // 19 two-byte characters: 38 bytes, in place whole.
        let wide = "é".repeat(INLINE / 2);
        for name in [
            short.as_str(),
            long.as_str(),
            wide.as_str(),
            "",
            "api.example.com",
        ] {
            let forms = [
                Key::new(name),
                Key::from(name.to_owned()),
                Key::from(Arc::<str>::from(name)),
                Key::from_static(Box::leak(name.to_owned().into_boxed_str())),
            ];
            for key in &forms {
                assert_eq!(key.as_str(), name);
                assert_eq!(key, &forms[0]);
                assert_eq!(hash(key), hash(&forms[0]));
                // As its `&str` hashes (`Borrow<str>`), in either hasher.
                let by_name = foldhash::fast::FixedState::default().hash_one(name);
                assert_eq!(hash(key), by_name);
                assert_eq!(std_state.hash_one(key), std_state.hash_one(name));
            }
            let inline = matches!(forms[0].0, Repr::Inline(_));
            assert_eq!(inline, name.len() <= INLINE, "{name}");
            assert_eq!(matches!(forms[1].0, Repr::Inline(_)), inline, "{name}");
        }
        assert_eq!(std::mem::size_of::<Key>(), 40);
    }

    /// Keys order as their names do, whatever their forms.
    #[test]
    fn keys_order_as_their_names() {
        let names = [
            "b",
            "",
            "a",
            "ab",
            "é",
            "z".repeat(INLINE + 1).leak(),
            "10",
            "9",
        ];
        let mut keys: Vec<Key> = names
            .iter()
            .enumerate()
            .map(|(index, name)| match index % 3 {
                0 => Key::new(name),
                1 => Key::from(Arc::<str>::from(*name)),
                _ => Key::from(name.to_string()),
            })
            .collect();
        keys.push(Key::from(100u64));
        keys.sort();
        let mut sorted: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        sorted.push("100".into());
        sorted.sort();
        let keys: Vec<&str> = keys.iter().map(Key::as_str).collect();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn an_integer_key_is_its_decimal_digits() {
        // Each count of digits, at both its ends.
        let powers = (0..20).map(|exp| 10u64.pow(exp));
        let ids = powers
            .flat_map(|power| [power - 1, power, power + 1])
            .chain([42, 1_000_000, u64::from(u32::MAX), u64::MAX - 1, u64::MAX]);
        for id in ids {
            let key = Key::from(id);
            assert_eq!(key.as_str(), id.to_string());
            assert_eq!(key, Key::new(&id.to_string()));
        }
        assert_eq!(Key::from(7u32), Key::from(7u64));
    }

    /// A name copied in place is the name, followed by zeros, at every
    /// length a key keeps in place.
    #[test]
    fn a_name_is_copied_in_place_whole_at_every_length() {
        let name: Vec<u8> = (1..=u8::try_from(INLINE).unwrap()).collect();
        for len in 0..=INLINE {
            let bytes = copied(&name[..len]);
            assert_eq!(&bytes[..len], &name[..len], "{len} bytes");
            assert!(bytes[len..].iter().all(|&byte| byte == 0), "{len} bytes");
        }
    }

    /// The path without allocation gives exactly the key the allocating
    /// one builds, and takes it only when the authority is already that
    /// key: in place up to 38 bytes, the authority shared beyond.
    #[test]
    fn host_key_matches_request_host() {
        let cases = [
            ("http://api.example.com/v1", true),
            ("https://api.example.com:8443/v1?token=t", true),
            ("https://API.example.com/v1", false),
            ("https://api.example.com:443/", false),
            ("http://api.example.com:80/", false),
            ("http://api.example.com:443/", true),
            ("http://user:pass@api.example.com/", false),
            ("http://[::1]:8080/", true),
            ("http://[::1]/", true),
            ("http://[::1]:80/", false),
            ("http://[::A]:8080/", false),
            ("http://127.0.0.1:8080/", true),
            ("grpc://svc.internal:50051/", true),
            ("http://api.example.com:/", false),
        ];
        for (uri, shared) in cases {
            let request = http::Request::get(uri).body(()).expect("a valid request");
            let key = host_key(&request).expect("a host");
            assert_eq!(
                Some(key.as_str().to_owned()),
                request_host(&request),
                "{uri}"
            );
            assert_eq!(authority_in_key_form(&request).is_some(), shared, "{uri}");
            assert!(!matches!(key.0, Repr::Shared(_)), "{uri}: no allocation");
        }
        let long = format!("http://{}.example.com/", "a".repeat(INLINE));
        let request = http::Request::get(long).body(()).expect("a valid request");
        let key = host_key(&request).expect("a host");
        assert!(
            matches!(key.0, Repr::Authority(_)),
            "shared beyond 38 bytes"
        );
        assert_eq!(Some(key.as_str().to_owned()), request_host(&request));
        let short = http::Request::get("http://api.example.com/v1")
            .body(())
            .expect("a valid request");
        let key = host_key(&short).expect("a host");
        assert!(matches!(key.0, Repr::Inline(_)), "in place up to 38 bytes");
        let relative = http::Request::get("/v1")
            .header("host", "Example.COM:8080")
            .body(())
            .expect("a valid request");
        assert_eq!(
            host_key(&relative).expect("a host").as_str(),
            "example.com:8080"
        );
        let none = http::Request::get("/v1").body(()).expect("a valid request");
        assert!(host_key(&none).is_none());
    }

    proptest::proptest! {
        /// Whatever the authority, the key without allocation is the key
        /// the allocating path builds.
        #[test]
        fn host_key_is_request_host_for_any_authority(
            authority in "[a-zA-Z0-9.:@_\\[\\]-]{1,24}",
            scheme in proptest::sample::select(vec!["http", "https", "grpc"]),
        ) {
            let Ok(request) = http::Request::get(format!("{scheme}://{authority}/")).body(()) else {
                return Ok(());
            };
            proptest::prop_assert_eq!(
                host_key(&request).map(|key| key.as_str().to_owned()),
                request_host(&request)
            );
        }
    }
}
