use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::BoxError;

const FULL: &str = r#"
unknown_hosts = "reject"

[providers.openai]
hosts = ["api.openai.com"]
key = "header:x-api-key"
max_wait = "30s"
max_queue = 1000
safety_margin = "5ms"
follow_announced_quotas = true
quotas = [ { max_calls = 500, window = "1m", per_request = true }, { max_calls = 200000, window = "1m" } ]

[providers.openai.retry]
max_retries = 3
base = "100ms"
cap = "10s"
strategy = "decorrelated"
max_elapsed = "2m"
all_methods = true
max_pause = "90s"

[providers.search]
hosts = ["search.example.com", "127.0.0.1:8080"]
key = "host"
quotas = [ { max_calls = 10, window = "1s" } ]
"#;

fn error(source: &str) -> String {
    match ProvidersConfig::from_toml(source) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(error) => error.to_string(),
    }
}

/// A provider table with one line replaced, to test one bad value at a time.
fn with(line: &str) -> String {
    format!("[providers.openai]\nhosts = [\"api.openai.com\"]\n{line}\n")
}

#[test]
fn full_example_is_read_as_written() {
    let config = ProvidersConfig::from_toml(FULL).unwrap();
    assert_eq!(config.unknown_hosts, UnknownHosts::Reject);
    let openai = &config.providers["openai"];
    assert_eq!(openai.hosts, ["api.openai.com"]);
    assert_eq!(
        openai.key,
        KeyConfig::Header(http::HeaderName::from_static("x-api-key"))
    );
    assert_eq!(openai.max_wait, Some(Duration::from_secs(30)));
    assert_eq!(openai.max_queue, Some(1000));
    assert_eq!(openai.safety_margin, Some(Duration::from_millis(5)));
    assert!(openai.follow_announced_quotas);
    assert_eq!(openai.quotas.len(), 2);
    assert_eq!(openai.quotas[0].max_calls, 500);
    assert_eq!(openai.quotas[0].window, Duration::from_secs(60));
    assert!(openai.quotas[0].per_request);
    assert!(!openai.quotas[1].per_request);
    assert_eq!(openai.retry.max_retries, 3);
    assert_eq!(openai.retry.base, Duration::from_millis(100));
    assert_eq!(openai.retry.cap, Duration::from_secs(10));
    assert_eq!(openai.retry.strategy, Strategy::Decorrelated);
    assert_eq!(openai.retry.max_elapsed, Duration::from_secs(120));
    assert!(openai.retry.all_methods);
    assert_eq!(openai.retry.max_pause, Some(Duration::from_secs(90)));
    let search = &config.providers["search"];
    assert_eq!(search.key, KeyConfig::Host);
    assert_eq!(search.retry, RetryConfig::default());
    assert_eq!(search.max_wait, None);
}

#[test]
fn full_example_round_trips_through_toml() {
    let config = ProvidersConfig::from_toml(FULL).unwrap();
    let written = config.to_toml().unwrap();
    let read_back =
        ProvidersConfig::from_toml(&written).unwrap_or_else(|error| panic!("{error}\n{written}"));
    assert_eq!(read_back, config, "{written}");
}

#[test]
fn an_empty_document_is_an_empty_configuration() {
    let config = ProvidersConfig::from_toml("").unwrap();
    assert_eq!(config, ProvidersConfig::default());
    assert_eq!(config.unknown_hosts, UnknownHosts::PassThrough);
}

#[test]
fn zero_max_calls_names_field_and_value() {
    let source =
        with(r#"quotas = [ { max_calls = 5, window = "1s" }, { max_calls = 0, window = "1m" } ]"#);
    assert_eq!(
        error(&source),
        "providers.openai.quotas[1].max_calls: 0 is invalid: max_calls must be at least 1"
    );
}

#[test]
fn zero_window_names_field_and_value() {
    let source = with(r#"quotas = [ { max_calls = 5, window = "0s" } ]"#);
    assert_eq!(
        error(&source),
        r#"providers.openai.quotas[0].window: "0s" is invalid: window must be longer than zero"#
    );
}

#[test]
fn window_over_a_year_names_field_and_value() {
    let message = error(&with(
        r#"quotas = [ { max_calls = 5, window = "1000years" } ]"#,
    ));
    assert!(
        message.starts_with("providers.openai.quotas[0].window: \""),
        "{message}"
    );
    assert!(message.contains("window must be at most"), "{message}");
}

#[test]
fn unknown_duration_unit_names_field_and_value() {
    let message = error(&with(
        r#"quotas = [ { max_calls = 5, window = "1 fortnight" } ]"#,
    ));
    assert!(
        message.starts_with("providers.openai.quotas[0].window: "),
        "{message}"
    );
    assert!(message.contains("\"1 fortnight\""), "{message}");
    assert!(message.contains("line 3"), "{message}");
}

#[test]
fn unknown_strategy_names_field_and_value() {
    let source = format!(
        "{}[providers.openai.retry]\nstrategy = \"fastest\"\n",
        with(r#"quotas = [ { max_calls = 5, window = "1s" } ]"#)
    );
    let message = error(&source);
    assert!(
        message.starts_with("providers.openai.retry.strategy: "),
        "{message}"
    );
    assert!(message.contains("fastest"), "{message}");
    assert!(message.contains("full"), "{message}");
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let message = error(&with(
        r#"quotas = [ { max_calls = 5, window = "1s", max_call = 3 } ]"#,
    ));
    assert!(
        message.starts_with("providers.openai.quotas[0]"),
        "{message}"
    );
    assert!(message.contains("unknown field `max_call`"), "{message}");

    let message = error(&with("max_wiat = \"1s\"\nquotas = []"));
    assert!(message.starts_with("providers.openai"), "{message}");
    assert!(message.contains("unknown field `max_wiat`"), "{message}");

    let message = error("unknown_host = \"reject\"\n");
    assert!(
        message.contains("unknown field `unknown_host`"),
        "{message}"
    );
}

#[test]
fn negative_numbers_name_field_and_value() {
    let message = error(&with(r#"quotas = [ { max_calls = -5, window = "1s" } ]"#));
    assert!(
        message.starts_with("providers.openai.quotas[0].max_calls: "),
        "{message}"
    );
    assert!(message.contains("-5"), "{message}");

    let message = error(&with("max_queue = -1\nquotas = []"));
    assert!(
        message.starts_with("providers.openai.max_queue: "),
        "{message}"
    );
    assert!(message.contains("-1"), "{message}");
}

#[test]
fn huge_numbers_name_field_and_value() {
    // Beyond TOML's 64-bit integers: a syntax error, with the line quoted.
    let message = error(&with(
        r#"quotas = [ { max_calls = 99999999999999999999, window = "1s" } ]"#,
    ));
    assert!(message.contains("99999999999999999999"), "{message}");
    assert!(message.contains("line 3"), "{message}");

    // Beyond the field's type.
    let source = format!(
        "{}[providers.openai.retry]\nmax_retries = 4294967296\n",
        with(r#"quotas = [ { max_calls = 5, window = "1s" } ]"#)
    );
    let message = error(&source);
    assert!(
        message.starts_with("providers.openai.retry.max_retries: "),
        "{message}"
    );
    assert!(message.contains("4294967296"), "{message}");

    // Beyond what makes sense.
    let source = format!(
        "{}[providers.openai.retry]\nmax_retries = 1000\n",
        with(r#"quotas = [ { max_calls = 5, window = "1s" } ]"#)
    );
    assert_eq!(
        error(&source),
        "providers.openai.retry.max_retries: 1000 is invalid: max_retries must be at most 100"
    );
}

#[test]
fn wrong_types_name_field_and_value() {
    let message = error(&with(
        r#"quotas = [ { max_calls = "500", window = "1s" } ]"#,
    ));
    assert!(
        message.starts_with("providers.openai.quotas[0].max_calls: "),
        "{message}"
    );
    assert!(message.contains("500"), "{message}");
}

#[test]
fn bad_keys_name_field_and_value() {
    let message = error(&with(
        "key = \"tenant\"\nquotas = [ { max_calls = 5, window = \"1s\" } ]",
    ));
    assert!(message.starts_with("providers.openai.key: "), "{message}");
    assert!(message.contains("\"tenant\" is invalid"), "{message}");

    let message = error(&with(
        "key = \"header:bad header\"\nquotas = [ { max_calls = 5, window = \"1s\" } ]",
    ));
    assert!(message.starts_with("providers.openai.key: "), "{message}");
    assert!(message.contains("bad header"), "{message}");
}

#[test]
fn bad_hosts_name_field_and_value() {
    let quota = "quotas = [ { max_calls = 5, window = \"1s\" } ]";
    let message = error(&format!("[providers.a]\nhosts = []\n{quota}\n"));
    assert_eq!(
        message,
        "providers.a.hosts: [] is invalid: at least one host is required"
    );

    let message = error(&format!(
        "[providers.a]\nhosts = [\"https://api.x.com\"]\n{quota}\n"
    ));
    assert!(
        message.starts_with("providers.a.hosts[0]: \"https://api.x.com\" is invalid"),
        "{message}"
    );

    let message = error(&format!(
        "[providers.a]\nhosts = [\"api.x.com\"]\n{quota}\n[providers.b]\nhosts = [\"API.x.com\"]\n{quota}\n"
    ));
    assert_eq!(
        message,
        r#"providers.b.hosts[0]: "API.x.com" is invalid: already listed by provider "a""#
    );
}

#[test]
fn missing_quotas_and_required_fields_are_named() {
    let message = error(&with("quotas = []"));
    assert_eq!(
        message,
        "providers.openai.quotas: [] is invalid: at least one quota is required"
    );

    let message = error("[providers.openai]\nquotas = [ { max_calls = 5, window = \"1s\" } ]\n");
    assert!(message.starts_with("providers.openai"), "{message}");
    assert!(message.contains("missing field `hosts`"), "{message}");
}

#[test]
fn backoff_cap_below_base_names_field_and_value() {
    let source = format!(
        "{}[providers.openai.retry]\nbase = \"1s\"\ncap = \"500ms\"\n",
        with(r#"quotas = [ { max_calls = 5, window = "1s" } ]"#)
    );
    assert_eq!(
        error(&source),
        r#"providers.openai.retry.cap: "500ms" is invalid: cap must not be below base (1s)"#
    );
    let source = format!(
        "{}[providers.openai.retry]\nbase = \"0s\"\n",
        with(r#"quotas = [ { max_calls = 5, window = "1s" } ]"#)
    );
    assert_eq!(
        error(&source),
        r#"providers.openai.retry.base: "0s" is invalid: base must be longer than zero"#
    );
    let source = format!(
        "{}[providers.openai.retry]\nmax_pause = \"0s\"\n",
        with(r#"quotas = [ { max_calls = 5, window = "1s" } ]"#)
    );
    assert_eq!(
        error(&source),
        r#"providers.openai.retry.max_pause: "0s" is invalid: invalid retry-after setting: max_pause must be above zero"#
    );
}

#[test]
fn syntax_errors_give_the_line_and_quote_it() {
    let message = error("[providers.openai]\nhosts = [\"api.openai.com\"]\nmax_wait 5\n");
    assert!(message.starts_with("line 3, column "), "{message}");
    assert!(message.contains("`max_wait 5`"), "{message}");
}

#[test]
fn errors_expose_path_message_and_location() {
    let error =
        ProvidersConfig::from_toml(&with(r#"quotas = [ { max_calls = 0, window = "1s" } ]"#))
            .unwrap_err();
    assert_eq!(error.path(), "providers.openai.quotas[0].max_calls");
    assert_eq!(
        error.message(),
        "0 is invalid: max_calls must be at least 1"
    );
    assert_eq!(error.location(), None);
}

// Routing.

type Body = RoutedBody<Empty<Bytes>>;

/// A provider whose `n`-th call (from 0) is answered by `answer(n)`, and
/// the count of its calls.
fn scripted(
    answer: fn(usize) -> http::Response<()>,
) -> (
    impl tower::Service<
        http::Request<Body>,
        Response = http::Response<()>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
    + Send,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = service_fn(move |_request: http::Request<Body>| {
        let call = counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(answer(call)) }
    });
    (service, calls)
}

/// A response with `status` and, if given, `Retry-After: seconds`.
fn answer(status: u16, retry_after: Option<&str>) -> http::Response<()> {
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
    if let Some(seconds) = retry_after {
        let value = http::HeaderValue::from_str(seconds).expect("a valid header value");
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value);
    }
    response
}

/// A client whose inner service answers with the instant it was called.
fn client(source: &str) -> ProviderRouter<Empty<Bytes>, Instant> {
    let config = ProvidersConfig::from_toml(source).unwrap();
    ServiceBuilder::new()
        .layer(config.layer().unwrap())
        .service(service_fn(|_request: http::Request<Body>| async {
            Ok::<_, BoxError>(http::Response::new(Instant::now()))
        }))
}

fn get(uri: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri).body(Empty::new()).unwrap()
}

const TWO_PROVIDERS: &str = r#"
[providers.a]
hosts = ["a.example.com"]
safety_margin = "0s"
quotas = [ { max_calls = 2, window = "1s" } ]

[providers.b]
hosts = ["b.example.com"]
safety_margin = "0s"
quotas = [ { max_calls = 2, window = "1s" } ]
"#;

/// When each request was sent, from `start`, in milliseconds.
async fn sent_at(client: &ProviderRouter<Empty<Bytes>, Instant>, uris: &[&str]) -> Vec<u128> {
    let start = Instant::now();
    let calls = uris.iter().map(|uri| client.clone().oneshot(get(uri)));
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|response| (*response.unwrap().body() - start).as_millis())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn routed_stack_paces_two_hosts_independently() {
    let client = client(TWO_PROVIDERS);
    let a = "https://a.example.com/v1";
    let b = "https://b.example.com/v1";
    let sent = sent_at(&client, &[a, a, a, b, b, b]).await;
    // Each provider: a burst of two, the third a window later; neither
    // provider's requests delay the other's.
    assert_eq!(sent, [0, 0, 1000, 0, 0, 1000]);
}

#[tokio::test(start_paused = true)]
async fn providers_in_one_shared_store_keep_their_own_quotas() {
    let config = ProvidersConfig::from_toml(TWO_PROVIDERS).unwrap();
    let store = crate::sliding_window::MemoryStore::new();
    let client = ServiceBuilder::new()
        .layer(config.layer_with_store(store.clone()).unwrap())
        .service(service_fn(|_request: http::Request<Body>| async {
            Ok::<_, BoxError>(http::Response::new(Instant::now()))
        }));
    let a = "https://a.example.com/v1";
    let b = "https://b.example.com/v1";
    assert_eq!(sent_at(&client, &[a, a, b, b]).await, [0, 0, 0, 0]);
    assert_eq!(store.key_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn unknown_hosts_pass_through_unlimited_by_default() {
    let client = client(TWO_PROVIDERS);
    let other = "https://other.example.com/";
    assert_eq!(
        sent_at(&client, &[other, other, other, other]).await,
        [0, 0, 0, 0]
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_hosts_are_refused_with_a_typed_error_when_configured() {
    let client = client(&format!("unknown_hosts = \"reject\"\n{TWO_PROVIDERS}"));
    let error = client
        .clone()
        .oneshot(get("https://other.example.com/"))
        .await
        .unwrap_err();
    let unknown = error.downcast_ref::<UnknownHost>().expect("an UnknownHost");
    assert_eq!(unknown.host(), Some("other.example.com"));
    let error = client.clone().oneshot(get("/relative")).await.unwrap_err();
    assert_eq!(error.downcast_ref::<UnknownHost>().unwrap().host(), None);
    // Known hosts still go through, whatever the case of the URI.
    assert!(client.oneshot(get("https://A.example.com/")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn hosts_with_a_port_route_by_port_and_relative_uris_by_host_header() {
    let client = client(
        r#"
        unknown_hosts = "reject"
        [providers.local]
        hosts = ["127.0.0.1:8080"]
        safety_margin = "0s"
        quotas = [ { max_calls = 1, window = "1s" } ]
        [providers.any_port]
        hosts = ["localhost"]
        quotas = [ { max_calls = 100, window = "1s" } ]
        "#,
    );
    let error = client
        .clone()
        .oneshot(get("http://127.0.0.1:9090/"))
        .await
        .unwrap_err();
    assert!(error.downcast_ref::<UnknownHost>().is_some(), "{error}");
    assert!(
        client
            .clone()
            .oneshot(get("http://localhost:9090/"))
            .await
            .is_ok()
    );

    let relative = || {
        http::Request::get("/v1")
            .header("host", "127.0.0.1:8080")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let start = Instant::now();
    client.clone().oneshot(relative()).await.unwrap();
    let second = client.oneshot(relative()).await.unwrap();
    assert_eq!(*second.body() - start, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_provider_stack_obeys_retry_after_and_retries_server_errors() {
    let config = ProvidersConfig::from_toml(
        r#"
        [providers.api]
        hosts = ["api.example.com"]
        quotas = [ { max_calls = 100, window = "1s" } ]
        [providers.api.retry]
        max_retries = 3
        base = "10ms"
        cap = "10ms"
        strategy = "none"
        "#,
    )
    .unwrap();
    let (provider, calls) = scripted(|call| match call {
        0 => answer(429, Some("2")),
        1 => answer(503, None),
        _ => answer(200, None),
    });
    let client = ServiceBuilder::new()
        .layer(config.layer().unwrap())
        .service(provider);
    let start = Instant::now();
    let response = client
        .oneshot(get("https://api.example.com/v1"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The server's 2 s, then one 10 ms backoff (plus at most the gate's spread).
    assert!(
        start.elapsed() >= Duration::from_millis(2010),
        "{:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() <= Duration::from_millis(2200),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn max_pause_bounds_how_long_a_servers_claim_holds_the_key() {
    let config = ProvidersConfig::from_toml(
        r#"
        [providers.api]
        hosts = ["api.example.com"]
        max_wait = "500ms"
        quotas = [ { max_calls = 100, window = "1s" } ]
        [providers.api.retry]
        max_retries = 0
        max_pause = "1s"
        "#,
    )
    .unwrap();
    let (provider, calls) = scripted(|call| match call {
        0 => answer(429, Some("3600")),
        _ => answer(200, None),
    });
    let client = ServiceBuilder::new()
        .layer(config.layer().unwrap())
        .service(provider);
    let response = client
        .clone()
        .oneshot(get("https://api.example.com/v1"))
        .await
        .unwrap();
    assert_eq!(response.status(), 429, "an hour is past max_wait");
    // The server claimed an hour; the gate holds the key for max_pause only.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = client
        .oneshot(get("https://api.example.com/v1"))
        .await
        .expect("the probe after max_pause goes through");
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cost_function_spends_token_quotas_and_per_request_quotas_spend_one() {
    let config = ProvidersConfig::from_toml(
        r#"
        [providers.llm]
        hosts = ["llm.example.com"]
        safety_margin = "0s"
        quotas = [ { max_calls = 10, window = "1s", per_request = true }, { max_calls = 100, window = "1s" } ]
        "#,
    )
    .unwrap();
    let tokens = |_request: &http::Request<Body>| -> u64 { 60 };
    let client = ServiceBuilder::new()
        .layer(config.layer().unwrap().cost_fn(tokens))
        .service(service_fn(|_request: http::Request<Body>| async {
            Ok::<_, BoxError>(http::Response::new(Instant::now()))
        }));
    let uri = "https://llm.example.com/v1";
    // 60 tokens each: the second waits for the first to leave the token window.
    assert_eq!(sent_at(&client, &[uri, uri]).await, [0, 1000]);
}

#[test]
fn the_layer_names_its_providers() {
    let config = ProvidersConfig::from_toml(TWO_PROVIDERS).unwrap();
    let layer = config.layer::<Empty<Bytes>>().unwrap();
    assert_eq!(layer.provider_names().collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn a_key_secret_variable_that_is_not_set_is_an_error_naming_it() {
    let source = r#"
key_secret_env = "TOWER_QUOTA_TEST_SECRET_THAT_IS_NEVER_SET"

[providers.openai]
hosts = ["api.openai.com"]
key = "header:x-api-key"
quotas = [{ max_calls = 10, window = "1s" }]
"#;
    let message = error(source);
    assert!(message.contains("key_secret_env"), "{message}");
    assert!(
        message.contains("TOWER_QUOTA_TEST_SECRET_THAT_IS_NEVER_SET"),
        "{message}"
    );
}

const CLASSES: &str = r#"
[providers.p]
hosts = ["p.example.com"]
safety_margin = "0s"
class_header = "x-priority"
reserve = { interactive = 0.5 }
promote_after = "10s"
tenant_header = "x-team"
tenant_weights = { search = 2 }
quotas = [ { max_calls = 2, window = "1s" } ]
"#;

#[test]
fn classes_reserve_and_tenants_are_read_and_round_trip() {
    let config = ProvidersConfig::from_toml(CLASSES).unwrap();
    let p = &config.providers["p"];
    assert_eq!(p.class_header.as_deref(), Some("x-priority"));
    assert_eq!(p.reserve["interactive"].get(), 0.5);
    assert_eq!(p.promote_after, Some(Duration::from_secs(10)));
    assert_eq!(p.tenant_weights["search"], 2);
    let written = config.to_toml().unwrap();
    assert_eq!(
        ProvidersConfig::from_toml(&written).unwrap(),
        config,
        "{written}"
    );
}

#[test]
fn bad_classes_reserves_and_tenants_name_field_and_value() {
    let cases = [
        (
            "reserve = { urgent = 0.1 }\nquotas = [ { max_calls = 1, window = \"1s\" } ]",
            [
                "providers.openai.reserve.urgent",
                "unknown priority class `urgent`",
            ],
        ),
        (
            "reserve = { batch = 0.1 }\nquotas = [ { max_calls = 1, window = \"1s\" } ]",
            ["providers.openai.reserve.batch", "no class is below it"],
        ),
        (
            "reserve = { critical = 1.5 }\nquotas = [ { max_calls = 1, window = \"1s\" } ]",
            ["reserve", "from 0 up to (not including) 1"],
        ),
        (
            "class_header = \"bad header\"\nquotas = [ { max_calls = 1, window = \"1s\" } ]",
            ["providers.openai.class_header", "not a header name"],
        ),
        (
            "tenant_weights = { a = 2 }\nquotas = [ { max_calls = 1, window = \"1s\" } ]",
            ["providers.openai.tenant_weights", "needs a tenant_header"],
        ),
        (
            "tenant_header = \"x-team\"\ntenant_weights = { a = 0 }\nquotas = [ { max_calls = 1, window = \"1s\" } ]",
            ["providers.openai.tenant_weights.a", "at least 1"],
        ),
        (
            "promote_after = \"0s\"\nquotas = [ { max_calls = 1, window = \"1s\" } ]",
            ["providers.openai.promote_after", "longer than zero"],
        ),
    ];
    for (line, wanted) in cases {
        let message = error(&with(line));
        for part in wanted {
            assert!(message.contains(part), "{line}: {message}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_class_header_puts_a_request_ahead_and_the_reserve_keeps_room_for_it() {
    let client = client(CLASSES);
    let start = Instant::now();
    let request = |class: &str| {
        let mut request = get("https://p.example.com/v1");
        request
            .headers_mut()
            .insert("x-priority", http::HeaderValue::from_str(class).unwrap());
        request
    };
    // Batch leaves half the quota (1 of 2) free: one batch request goes,
    // the second waits, and an interactive request still goes at once.
    let first = client.clone().oneshot(request("batch")).await.unwrap();
    assert_eq!(*first.body() - start, Duration::ZERO);
    let waiting = tokio::spawn(client.clone().oneshot(request("batch")));
    tokio::task::yield_now().await;
    let interactive = client
        .clone()
        .oneshot(request("interactive"))
        .await
        .unwrap();
    assert_eq!(*interactive.body() - start, Duration::ZERO);
    let second = waiting.await.unwrap().unwrap();
    assert_eq!(*second.body() - start, Duration::from_secs(1));
}

#[test]
fn tenant_header_values_not_named_in_weights_are_digests() {
    use crate::sliding_window::PlaceFn;
    let place = ProviderPlace::new(
        None,
        Some(http::HeaderName::from_static("x-team")),
        [("search".to_owned(), 2)].into_iter().collect(),
        KeyHasher::process(),
    );
    let mut request = get("https://p.example.com/v1");
    request
        .headers_mut()
        .insert("x-team", http::HeaderValue::from_static("search"));
    let named = place.place(&request);
    let tenant = named.get_tenant().unwrap();
    assert_eq!((tenant.name().as_str(), tenant.weight()), ("search", 2));
    request
        .headers_mut()
        .insert("x-team", http::HeaderValue::from_static("sk-secret-token"));
    let hidden = place.place(&request);
    let tenant = hidden.get_tenant().unwrap();
    assert!(!tenant.name().as_str().contains("secret"), "{tenant:?}");
    assert_eq!(tenant.weight(), 1);
}
