//! `rediss://` against a local `redis-server` that speaks TLS only, with a
//! certificate from a CA generated for the test: the store trusts it only
//! when given that CA.
#![cfg(feature = "tls")]

mod support;

use std::time::Duration;

use tower_quota::sliding_window::{Overloaded, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::{RedisStore, RedisStoreErrorKind};

#[tokio::test]
async fn tls_store_admits_through_a_server_signed_by_a_private_ca() {
    let Some(certificates) = support::TestCertificates::generate() else {
        return;
    };
    let Some(server) = support::RedisServer::start_tls(&certificates) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let limits = SlidingWindowLayer::new(2, Duration::from_secs(60))
        .unwrap()
        .max_wait(Duration::ZERO)
        .limits()
        .clone();
    let store = RedisStore::builder(&url)
        .tls_root_certificates(certificates.pem("ca.crt"))
        .build()
        .await
        .unwrap();
    let key = Key::from(support::unique_key("tls"));
    store.acquire(key.clone(), 1, &limits).await.unwrap();
    store.acquire(key.clone(), 1, &limits).await.unwrap();
    // The third is over the quota: Redis decided, over TLS.
    let refused = store.acquire(key, 1, &limits).await.unwrap_err();
    assert!(refused.is::<Overloaded>(), "{refused}");

    // With a client certificate as well (the server accepts one).
    let store = RedisStore::builder(&url)
        .tls_root_certificates(certificates.pem("ca.crt"))
        .tls_client_certificate(
            certificates.pem("client.crt"),
            certificates.pem("client.key"),
        )
        .build()
        .await
        .unwrap();
    store
        .acquire(Key::from(support::unique_key("tls")), 1, &limits)
        .await
        .unwrap();
}

#[tokio::test]
async fn tls_store_refuses_a_server_its_roots_do_not_trust() {
    let Some(certificates) = support::TestCertificates::generate() else {
        return;
    };
    let Some(server) = support::RedisServer::start_tls(&certificates) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", server.port());
    // The webpki roots only.
    let error = RedisStore::builder(&url).build().await.unwrap_err();
    assert!(refused_connection(error.kind()), "{error}");
    // Another private CA.
    let error = RedisStore::builder(&url)
        .tls_root_certificates(certificates.other_ca())
        .build()
        .await
        .unwrap_err();
    assert!(refused_connection(error.kind()), "{error}");
    // Plain text to a TLS port fails too.
    let error = RedisStore::builder(format!("redis://127.0.0.1:{}", server.port()))
        .build()
        .await
        .unwrap_err();
    assert!(refused_connection(error.kind()), "{error}");
}

/// A TLS failure is a failed connection (or one that never completes).
fn refused_connection(kind: RedisStoreErrorKind) -> bool {
    matches!(
        kind,
        RedisStoreErrorKind::Connection | RedisStoreErrorKind::Timeout
    )
}
