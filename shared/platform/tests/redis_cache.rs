//! The Redis cache with values kept in the process (`cache.redis_local_entries`),
//! against the real Redis at `CRM_TEST_REDIS_URL` (default 127.0.0.1:6379): repeated
//! reads are answered in the process, and a value another process replaces or deletes
//! is not served from it once Redis has said so; a miss is never kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crm_platform::cache::{Cache, RedisCache};
use crm_platform::config::{CacheBackend, CacheConfig};

fn config(local_entries: usize) -> CacheConfig {
    CacheConfig {
        backend: CacheBackend::Redis,
        redis_url: std::env::var("CRM_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        redis_local_entries: local_entries,
        ..CacheConfig::default()
    }
}

fn unique_key() -> String {
    format!("crm:test:platform:local:{}", uuid::Uuid::now_v7().simple())
}

/// Reads `key` through `cache` until it holds `version` (or nothing, for `None`), for
/// at most five seconds: Redis's invalidation reaches the other process on its own
/// connection, a moment after the write's reply.
async fn until_seen(cache: &RedisCache, key: &str, version: Option<i64>) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = cache.get(key).await.unwrap().map(|v| v.version);
        if seen == version || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn repeated_reads_are_answered_in_the_process() {
    let cache = RedisCache::new(&config(100)).unwrap();
    let key = unique_key();
    cache.put_if_newer(&key, 1, b"one").await.unwrap();
    for _ in 0..10 {
        let value = cache.get(&key).await.unwrap().unwrap();
        assert_eq!((value.version, value.bytes.as_ref()), (1, b"one".as_ref()));
    }
    let hits = cache.local_hits().expect("local caching is on");
    assert!(hits >= 9, "only {hits} of 10 reads were local");
    cache.delete(&key).await.unwrap();

    let remote_only = RedisCache::new(&config(0)).unwrap();
    assert_eq!(remote_only.local_hits(), None);
}

#[tokio::test]
async fn another_process_s_write_replaces_the_local_value() {
    let reader = RedisCache::new(&config(100)).unwrap();
    let writer = RedisCache::new(&config(100)).unwrap();
    let key = unique_key();
    writer.put_if_newer(&key, 1, b"one").await.unwrap();
    // Twice, so that the second read is a local hit of version 1.
    assert_eq!(until_seen(&reader, &key, Some(1)).await, Some(1));
    assert_eq!(reader.get(&key).await.unwrap().unwrap().version, 1);
    assert!(reader.local_hits().unwrap() >= 1);

    writer.put_if_newer(&key, 2, b"two").await.unwrap();
    assert_eq!(until_seen(&reader, &key, Some(2)).await, Some(2));
    assert_eq!(
        reader.get(&key).await.unwrap().unwrap().bytes.as_ref(),
        b"two"
    );

    writer.delete(&key).await.unwrap();
    assert_eq!(until_seen(&reader, &key, None).await, None);
}

#[tokio::test]
async fn an_older_version_never_replaces_a_newer_one_held_locally() {
    let cache = RedisCache::new(&config(100)).unwrap();
    let key = unique_key();
    cache.put_if_newer(&key, 5, b"five").await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap().unwrap().version, 5);
    cache.put_if_newer(&key, 4, b"four").await.unwrap();
    for _ in 0..3 {
        assert_eq!(cache.get(&key).await.unwrap().unwrap().version, 5);
    }
    cache.delete(&key).await.unwrap();
}

#[tokio::test]
async fn a_miss_is_not_kept_in_the_process() {
    let reader = RedisCache::new(&config(100)).unwrap();
    let writer = RedisCache::new(&config(100)).unwrap();
    let key = unique_key();
    assert_eq!(reader.get(&key).await.unwrap(), None);
    writer.put_if_newer(&key, 1, b"one").await.unwrap();
    // No wait for an invalidation: a miss was never kept, so this read asks Redis.
    let value = reader
        .get(&key)
        .await
        .unwrap()
        .expect("the put is seen at once");
    assert_eq!((value.version, value.bytes.as_ref()), (1, b"one".as_ref()));
    writer.delete(&key).await.unwrap();
}

#[tokio::test]
async fn concurrent_first_reads_keep_the_value_put_after_them() {
    // Many readers miss the same key at once; one puts it. Whatever order their answers
    // and Redis's invalidation are handled in, reads soon come from the process and
    // give the value put, not a kept miss.
    let cache = std::sync::Arc::new(RedisCache::new(&config(100)).unwrap());
    let key = unique_key();
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let cache = cache.clone();
            let key = key.clone();
            tokio::spawn(async move { cache.get(&key).await.unwrap() })
        })
        .collect();
    cache.put_if_newer(&key, 1, b"one").await.unwrap();
    for reader in readers {
        let seen = reader.await.unwrap();
        assert!(seen.is_none() || seen.unwrap().version == 1);
    }
    assert_eq!(until_seen(&cache, &key, Some(1)).await, Some(1));
    let before = cache.local_hits().unwrap();
    for _ in 0..10 {
        assert_eq!(cache.get(&key).await.unwrap().unwrap().version, 1);
    }
    assert!(
        cache.local_hits().unwrap() >= before + 9,
        "the value is read from the process"
    );
    cache.delete(&key).await.unwrap();
}
