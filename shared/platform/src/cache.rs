//! Cache-aside for hot reads, behind one trait with Redis, in-memory and no-op backends.
//!
//! Values are versioned (a record's revision): a put never replaces a newer version, so
//! a read that raced a write cannot put the older value back. Redis is an accelerator,
//! never a dependency: every failure or timeout is a miss, logged, and the request goes
//! on to the database. [`CacheHandle`] adds stampede protection (concurrent misses of
//! one key load it once) and read-your-writes within the process.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::{CacheBackend, CacheConfig};

mod local;
use local::LocalCopies;

/// A cached value and the version it was stored with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedValue {
    pub version: i64,
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("cache: {0}")]
pub struct CacheError(String);

#[async_trait]
pub trait Cache: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<CachedValue>, CacheError>;
    /// Stores `bytes` at `version` unless the cache holds a newer version of `key`.
    async fn put_if_newer(&self, key: &str, version: i64, bytes: &[u8]) -> Result<(), CacheError>;
    async fn delete(&self, key: &str) -> Result<(), CacheError>;
    fn backend(&self) -> &'static str;
}

/// A value's lifetime: the configured TTL less up to a fifth, at random. Records read
/// together (a warm-up, a page, a hot list) would otherwise all expire in the same
/// instant and reach the database at once; the TTL stays the bound on staleness.
pub fn jittered(ttl: Duration) -> Duration {
    let fraction: f64 = rand::Rng::random_range(&mut rand::rng(), 0.8..=1.0);
    ttl.mul_f64(fraction)
}

/// The key of a cached record: `crm:{tenant}:{service}:{kind}:{id}`.
pub fn key(tenant: &str, service: &str, kind: &str, id: &str) -> String {
    format!("crm:{tenant}:{service}:{kind}:{id}")
}

/// No caching at all.
pub struct NoCache;

#[async_trait]
impl Cache for NoCache {
    async fn get(&self, _key: &str) -> Result<Option<CachedValue>, CacheError> {
        Ok(None)
    }
    async fn put_if_newer(&self, _: &str, _: i64, _: &[u8]) -> Result<(), CacheError> {
        Ok(())
    }
    async fn delete(&self, _key: &str) -> Result<(), CacheError> {
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "none"
    }
}

/// Makes room for `key` in a map of at most `capacity` entries: the entries no longer
/// `live` go first, and if it is still full, an arbitrary tenth (a cache holds copies,
/// so any entry may go, and this keeps an insert at full capacity cheap).
fn make_room<V>(
    entries: &mut HashMap<String, V>,
    capacity: usize,
    key: &str,
    live: impl Fn(&V) -> bool,
) {
    if entries.len() < capacity || entries.contains_key(key) {
        return;
    }
    entries.retain(|_, entry| live(entry));
    if entries.len() >= capacity {
        let evict: Vec<String> = entries.keys().take(capacity / 10 + 1).cloned().collect();
        for key in evict {
            entries.remove(&key);
        }
    }
}

/// An in-process cache with a TTL and a bounded number of entries.
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (CachedValue, Instant)>>,
    ttl: Duration,
    max_entries: usize,
}

impl MemoryCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (CachedValue, Instant)>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<CachedValue>, CacheError> {
        let entries = self.lock();
        Ok(entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(value, _)| value.clone()))
    }

    async fn put_if_newer(&self, key: &str, version: i64, bytes: &[u8]) -> Result<(), CacheError> {
        let now = Instant::now();
        let mut entries = self.lock();
        if let Some((current, expires)) = entries.get(key)
            && *expires > now
            && current.version > version
        {
            return Ok(());
        }
        make_room(&mut entries, self.max_entries, key, |(_, expires)| {
            *expires > now
        });
        entries.insert(
            key.to_owned(),
            (
                CachedValue {
                    version,
                    bytes: Bytes::copy_from_slice(bytes),
                },
                now + jittered(self.ttl),
            ),
        );
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        self.lock().remove(key);
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// Redis, single node (ConnectionManager, reconnecting by itself) or cluster.
pub struct RedisCache {
    connection: RedisConnection,
    /// Values also kept in the process (single node, `redis_local_entries` > 0).
    local: Option<Arc<LocalCopies>>,
    ttl: Duration,
    timeout: Duration,
    put_script: redis::Script,
}

enum RedisConnection {
    Single(redis::aio::ConnectionManager),
    Cluster(Box<ClusterState>),
}

struct ClusterState {
    client: redis::cluster::ClusterClient,
    connection: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
}

/// Width of the zero-padded version prefix of a stored value; zero-padding makes the
/// string comparison in Lua a numeric one.
const VERSION_WIDTH: usize = 20;

const PUT_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 20) > ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'PX', ARGV[3])
return 1
";

impl RedisCache {
    pub fn new(config: &CacheConfig) -> Result<Self, CacheError> {
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let (connection, local) = if config.redis_cluster {
            let urls: Vec<&str> = config.redis_url.split(',').map(str::trim).collect();
            let client = redis::cluster::ClusterClient::builder(urls)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(|e| CacheError(e.to_string()))?;
            let connection = RedisConnection::Cluster(Box::new(ClusterState {
                client,
                connection: tokio::sync::OnceCell::new(),
            }));
            // A cluster's invalidations come per node; local copies are single-node only.
            (connection, None)
        } else {
            let mut info =
                redis::IntoConnectionInfo::into_connection_info(config.redis_url.as_str())
                    .map_err(|e| CacheError(e.to_string()))?;
            let mut manager_config = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            let local = (config.redis_local_entries > 0).then(|| {
                Arc::new(LocalCopies::new(
                    config.redis_local_entries,
                    LOCAL_LIFETIME.min(Duration::from_secs(config.ttl_s.max(1))),
                ))
            });
            if let Some(local) = &local {
                // Invalidations are push messages, which need RESP3 on this connection.
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(redis::ProtocolVersion::RESP3);
                info = info.set_redis_settings(settings);
                let copies = local.clone();
                manager_config = manager_config.set_push_sender(
                    move |push: redis::PushInfo| -> Result<(), std::convert::Infallible> {
                        copies.handle_push(&push);
                        Ok(())
                    },
                );
            }
            let client = redis::Client::open(info).map_err(|e| CacheError(e.to_string()))?;
            // Lazy: a Redis that is down at start does not stop the service.
            let manager =
                redis::aio::ConnectionManager::new_lazy_with_config(client, manager_config)
                    .map_err(|e| CacheError(e.to_string()))?;
            (RedisConnection::Single(manager), local)
        };
        Ok(Self {
            connection,
            local,
            ttl: Duration::from_secs(config.ttl_s.max(1)),
            timeout,
            put_script: redis::Script::new(PUT_IF_NEWER),
        })
    }

    /// Reads answered from the copies kept in the process since start, when they are
    /// kept (single node, `redis_local_entries` > 0).
    pub fn local_hits(&self) -> Option<u64> {
        self.local.as_ref().map(|local| local.hits())
    }

    async fn run<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = match &self.connection {
                RedisConnection::Single(manager) => RedisConn::Single(manager.clone()),
                RedisConnection::Cluster(state) => {
                    let conn = state
                        .connection
                        .get_or_try_init(|| state.client.get_async_connection())
                        .await?;
                    RedisConn::Cluster(conn.clone())
                }
            };
            op(conn).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result.map_err(|e| CacheError(e.to_string())),
            Err(_) => Err(CacheError("timed out".into())),
        }
    }
}

/// The longest a value is answered from the process without asking Redis again. Redis
/// drops a local value when anyone changes it, and a reconnection drops them all; this
/// bounds the one case neither covers, a connection that goes silent without closing.
/// Each copy lives a random 80–100 % of it, as values in Redis do of the TTL.
const LOCAL_LIFETIME: Duration = Duration::from_secs(10);

/// One connection handle of either kind, usable by redis commands.
pub enum RedisConn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// A stored value: its zero-padded version, then its bytes; anything else is a miss.
fn decode_stored(raw: Vec<u8>) -> Option<CachedValue> {
    let version = std::str::from_utf8(raw.get(..VERSION_WIDTH)?)
        .ok()?
        .parse::<i64>()
        .ok()?;
    let mut bytes = Bytes::from(raw);
    Some(CachedValue {
        version,
        bytes: bytes.split_off(VERSION_WIDTH),
    })
}

fn encode_version(version: i64) -> String {
    format!("{:0width$}", version.max(0), width = VERSION_WIDTH)
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<CachedValue>, CacheError> {
        let Some(local) = &self.local else {
            let key = key.to_owned();
            let raw: Option<Vec<u8>> =
                self.run(|mut conn| async move {
                    redis::cmd("GET").arg(&key).query_async(&mut conn).await
                })
                .await?;
            return Ok(raw.and_then(decode_stored));
        };
        if let Some(value) = local.get(key) {
            return Ok(Some(value));
        }
        let read = local.register(key);
        // Tracking is switched on with every read that is tracked, so that a connection
        // the manager opened again has it too; CACHING YES makes Redis track the next
        // command's key. A pipeline is written whole, so no other call comes between.
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("OPTIN")
            .ignore()
            .cmd("CLIENT")
            .arg("CACHING")
            .arg("YES")
            .ignore()
            .cmd("GET")
            .arg(key);
        let (raw,): (Option<Vec<u8>>,) = self
            .run(|mut conn| async move { pipeline.query_async(&mut conn).await })
            .await?;
        let value = raw.and_then(decode_stored);
        read.store(value.clone());
        Ok(value)
    }

    async fn put_if_newer(&self, key: &str, version: i64, bytes: &[u8]) -> Result<(), CacheError> {
        let ttl_ms = (jittered(self.ttl).as_millis() as u64).max(1);
        let invocation = {
            let mut invocation = self.put_script.key(key);
            invocation
                .arg(encode_version(version))
                .arg(bytes)
                .arg(ttl_ms);
            invocation
        };
        self.run(|mut conn| async move {
            let _: i64 = invocation.invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let key = key.to_owned();
        self.run(|mut conn| async move {
            let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
            Ok(())
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// Builds the configured backend.
pub fn from_config(config: &CacheConfig) -> Result<Arc<dyn Cache>, CacheError> {
    Ok(match config.backend {
        CacheBackend::None => Arc::new(NoCache),
        CacheBackend::Memory => Arc::new(MemoryCache::new(
            Duration::from_secs(config.ttl_s.max(1)),
            config.memory_max_entries,
        )),
        CacheBackend::Redis => Arc::new(RedisCache::new(config)?),
    })
}

/// A load in progress, as its followers see it: `None` until the leader sends what it
/// loaded; the leader dropping its sender (a failed or cancelled load) ends the wait.
type Flight = tokio::sync::watch::Receiver<Option<Option<CachedValue>>>;

/// How long a follower waits for the leader before loading itself.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's hold on its key's flight: dropped, however the load ends (value,
/// error, or the call cancelled), it takes the flight off the map, so that the next
/// miss starts a new one instead of waiting on a load nobody runs.
struct Leading<'a> {
    flights: &'a Mutex<HashMap<String, Flight>>,
    key: &'a str,
    sender: tokio::sync::watch::Sender<Option<Option<CachedValue>>>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.key);
    }
}

/// The cache as services use it: failures are misses, concurrent misses of one key load
/// once, and a value older than a write this process made is never returned.
#[derive(Clone)]
pub struct CacheHandle {
    inner: Arc<dyn Cache>,
    flights: Arc<Mutex<HashMap<String, Flight>>>,
    /// The newest version this process wrote per key, kept for one TTL.
    written: Arc<Mutex<HashMap<String, (i64, Instant)>>>,
    ttl: Duration,
}

impl CacheHandle {
    pub fn new(inner: Arc<dyn Cache>, ttl: Duration) -> Self {
        Self {
            inner,
            flights: Arc::default(),
            written: Arc::default(),
            ttl,
        }
    }

    pub fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn written_floor(&self, key: &str) -> Option<i64> {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(version, _)| *version)
    }

    fn fresh(&self, key: &str, value: Option<CachedValue>) -> Option<CachedValue> {
        let value = value?;
        match self.written_floor(key) {
            Some(floor) if value.version < floor => None,
            _ => Some(value),
        }
    }

    async fn cached(&self, key: &str) -> Option<CachedValue> {
        match self.inner.get(key).await {
            Ok(value) => self.fresh(key, value),
            Err(err) => {
                tracing::warn!(cache.backend = self.inner.backend(), error = %err, "cache read failed");
                None
            }
        }
    }

    async fn put(&self, key: &str, version: i64, bytes: &[u8]) -> bool {
        match self.inner.put_if_newer(key, version, bytes).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(cache.backend = self.inner.backend(), error = %err, "cache write failed");
                false
            }
        }
    }

    /// The cached value of `key`, else the one `load` returns (stored for next time).
    /// `load` gives `(version, bytes)`, or `None` when the record does not exist.
    pub async fn get_or_load<E, F, Fut>(&self, key: &str, load: F) -> Result<Option<CachedValue>, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<(i64, Vec<u8>)>, E>>,
    {
        if let Some(value) = self.cached(key).await {
            return Ok(Some(value));
        }
        let follower = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(key) {
                Some(flight) => Ok(flight.clone()),
                None => {
                    let (sender, flight) = tokio::sync::watch::channel(None);
                    flights.insert(key.to_owned(), flight);
                    Err(sender)
                }
            }
        };
        match follower {
            Ok(mut flight) => {
                // Woken by the leader, not polling: thousands of waiters on one hot key
                // would otherwise spend the CPU the leader needs.
                let waited = tokio::time::timeout(FOLLOW_TIMEOUT, flight.wait_for(Option::is_some))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .and_then(|sent| sent.clone())
                    .flatten();
                // The leader failed, took too long, or loaded a value older than our
                // writes: load ourselves.
                if let Some(value) = self.fresh(key, waited) {
                    return Ok(Some(value));
                }
                self.load_and_store(key, &load).await
            }
            Err(sender) => {
                let leading = Leading {
                    flights: &self.flights,
                    key,
                    sender,
                };
                let result = self.load_and_store(key, &load).await;
                if let Ok(value) = &result {
                    leading.sender.send_replace(Some(value.clone()));
                }
                drop(leading);
                result
            }
        }
    }

    async fn load_and_store<E, F, Fut>(&self, key: &str, load: &F) -> Result<Option<CachedValue>, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<(i64, Vec<u8>)>, E>>,
    {
        let Some((version, bytes)) = load().await? else {
            return Ok(None);
        };
        self.put(key, version, &bytes).await;
        Ok(Some(CachedValue {
            version,
            bytes: Bytes::from(bytes),
        }))
    }

    /// Records a committed write: the new version replaces any older cached one, and
    /// this process never again returns a version older than it.
    pub async fn written(&self, key: &str, version: i64, bytes: &[u8]) {
        {
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            if written.len() > 100_000 {
                let ttl = self.ttl;
                written.retain(|_, (_, at)| at.elapsed() < ttl);
            }
            let entry = written
                .entry(key.to_owned())
                .or_insert((version, Instant::now()));
            if entry.0 <= version {
                *entry = (version, Instant::now());
            }
        }
        if !self.put(key, version, bytes).await {
            // The old value may still be there; try to remove it.
            if let Err(err) = self.inner.delete(key).await {
                tracing::warn!(cache.backend = self.inner.backend(), error = %err, "cache delete failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn lifetimes_spread_below_the_ttl() {
        let ttl = Duration::from_secs(300);
        let lifetimes: Vec<Duration> = (0..200).map(|_| jittered(ttl)).collect();
        assert!(
            lifetimes
                .iter()
                .all(|l| *l <= ttl && *l >= ttl.mul_f64(0.8))
        );
        let distinct: std::collections::HashSet<Duration> = lifetimes.into_iter().collect();
        assert!(
            distinct.len() > 100,
            "lifetimes are spread, not one instant"
        );
    }

    #[tokio::test]
    async fn older_versions_never_replace_newer() {
        let cache = MemoryCache::new(Duration::from_secs(60), 10);
        cache.put_if_newer("k", 2, b"two").await.unwrap();
        cache.put_if_newer("k", 1, b"one").await.unwrap();
        assert_eq!(
            cache.get("k").await.unwrap().unwrap().bytes.as_ref(),
            b"two"
        );
        cache.put_if_newer("k", 3, b"three").await.unwrap();
        assert_eq!(cache.get("k").await.unwrap().unwrap().version, 3);
    }

    #[tokio::test]
    async fn memory_cache_stays_bounded() {
        let cache = MemoryCache::new(Duration::from_secs(60), 10);
        for i in 0..100 {
            cache.put_if_newer(&format!("k{i}"), 1, b"v").await.unwrap();
        }
        assert!(cache.lock().len() <= 10);
    }

    /// What a test's load gives: `(version, bytes)`, or no record.
    type Loaded<E> = Result<Option<(i64, Vec<u8>)>, E>;

    /// `count` concurrent misses of one key; the n-th load to run (from 0) takes
    /// `load_ms` and gives `answer(n)`. The calls' results, and how many loads ran.
    async fn concurrent_misses<E: Send + 'static>(
        handle: &CacheHandle,
        count: usize,
        load_ms: u64,
        answer: fn(usize) -> Loaded<E>,
    ) -> (Vec<Result<Option<CachedValue>, E>>, usize) {
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..count {
            let handle = handle.clone();
            let loads = loads.clone();
            tasks.push(tokio::spawn(async move {
                handle
                    .get_or_load("k", || {
                        let loads = loads.clone();
                        async move {
                            let n = loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(load_ms)).await;
                            answer(n)
                        }
                    })
                    .await
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        (results, loads.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn concurrent_misses_load_once() {
        let handle = CacheHandle::new(
            Arc::new(MemoryCache::new(Duration::from_secs(60), 100)),
            Duration::from_secs(60),
        );
        let (results, loads) =
            concurrent_misses(&handle, 20, 50, |_| Ok::<_, ()>(Some((1, b"v".to_vec())))).await;
        for result in results {
            assert_eq!(result.unwrap().unwrap().bytes.as_ref(), b"v");
        }
        assert_eq!(loads, 1);
    }

    /// A leader whose load fails does not hold its followers for the follow timeout:
    /// they load themselves at once (on tokio's paused clock, which would otherwise
    /// jump to FOLLOW_TIMEOUT).
    #[tokio::test(start_paused = true)]
    async fn followers_of_a_failed_load_load_themselves() {
        let handle = CacheHandle::new(Arc::new(NoCache), Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        // The first load (the leader's) fails.
        let (results, loads) = concurrent_misses(&handle, 5, 10, |n| match n {
            0 => Err("database unavailable"),
            _ => Ok(Some((1, b"v".to_vec()))),
        })
        .await;
        let mut failed = 0;
        for result in results {
            match result {
                Ok(value) => assert_eq!(value.unwrap().bytes.as_ref(), b"v"),
                Err(_) => failed += 1,
            }
        }
        assert_eq!(failed, 1, "only the leader's own call fails");
        assert_eq!(loads, 5);
        assert!(
            started.elapsed() < FOLLOW_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        assert!(handle.flights.lock().unwrap().is_empty());
    }

    /// A leader cancelled mid-load (its caller went away) leaves no flight behind: the
    /// next miss of the key loads at once instead of waiting on a load nobody runs.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_load_leaves_no_flight() {
        let handle = CacheHandle::new(Arc::new(NoCache), Duration::from_secs(60));
        let leader = {
            let handle = handle.clone();
            tokio::spawn(async move {
                handle
                    .get_or_load("k", || async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok::<_, ()>(None)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(handle.flights.lock().unwrap().len(), 1);
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        assert!(handle.flights.lock().unwrap().is_empty());
        let started = tokio::time::Instant::now();
        let value = handle
            .get_or_load("k", || async { Ok::<_, ()>(Some((1, b"v".to_vec()))) })
            .await
            .unwrap();
        assert_eq!(value.unwrap().version, 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_write_hides_older_values() {
        let handle = CacheHandle::new(Arc::new(NoCache), Duration::from_secs(60));
        handle.written("k", 5, b"five").await;
        let value = handle
            .get_or_load("k", || async { Ok::<_, ()>(Some((5, b"five".to_vec()))) })
            .await
            .unwrap();
        assert_eq!(value.unwrap().version, 5);
        assert!(
            handle
                .fresh(
                    "k",
                    Some(CachedValue {
                        version: 4,
                        bytes: Bytes::new()
                    })
                )
                .is_none()
        );
    }
}
