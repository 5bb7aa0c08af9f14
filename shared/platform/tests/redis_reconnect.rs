//! Local copies across a reconnection, against the real Redis at `CRM_TEST_REDIS_URL`
//! (default 127.0.0.1:6379). A binary of its own: it kills every other client's
//! connection, which the tests of another binary, run one binary at a time, never see.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crm_platform::cache::{Cache, CachedValue, RedisCache};
use crm_platform::config::{CacheBackend, CacheConfig};

fn url() -> String {
    std::env::var("CRM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn config(local_entries: usize) -> CacheConfig {
    CacheConfig {
        backend: CacheBackend::Redis,
        redis_url: url(),
        redis_local_entries: local_entries,
        ..CacheConfig::default()
    }
}

/// The first read that does not fail: the one right after a killed connection may.
async fn read(cache: &RedisCache, key: &str) -> Option<CachedValue> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.get(key).await {
            Ok(value) => return value,
            Err(err) if Instant::now() < deadline => {
                eprintln!("read failed, retrying: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("reads kept failing: {err}"),
        }
    }
}

async fn put(cache: &RedisCache, key: &str, version: i64, bytes: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(err) = cache.put_if_newer(key, version, bytes).await {
        assert!(Instant::now() < deadline, "puts kept failing: {err}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until `version` is seen, for at most five seconds (less than a local copy's
/// lifetime, so only an invalidation can make a replaced copy go).
async fn until_seen(cache: &RedisCache, key: &str, version: i64) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = read(cache, key).await.map(|v| v.version);
        if seen == Some(version) || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn invalidations_reach_the_copies_again_after_a_reconnection() {
    let reader = RedisCache::new(&config(100)).unwrap();
    let writer = RedisCache::new(&config(0)).unwrap();
    let key = format!(
        "crm:test:platform:reconnect:{}",
        uuid::Uuid::now_v7().simple()
    );
    put(&writer, &key, 1, b"one").await;
    assert_eq!(until_seen(&reader, &key, 1).await, Some(1));

    let client = redis::Client::open(url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        killed >= 2,
        "the reader's and the writer's connections were killed"
    );

    // The copies went with the connection; the value is read again, and kept again.
    assert_eq!(read(&reader, &key).await.map(|v| v.version), Some(1));
    let hits = reader.local_hits().unwrap();
    assert_eq!(read(&reader, &key).await.map(|v| v.version), Some(1));
    assert!(
        reader.local_hits().unwrap() > hits,
        "the copy is kept again"
    );

    // The new connection tracks too: another process's write reaches the copy before
    // its lifetime would have ended it.
    put(&writer, &key, 2, b"two").await;
    assert_eq!(until_seen(&reader, &key, 2).await, Some(2));
    writer.delete(&key).await.unwrap();
}
