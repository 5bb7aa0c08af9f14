//! Copies of Redis values kept in the process, dropped when Redis says the value
//! changed (server-assisted client-side caching: RESP3 `CLIENT TRACKING` in opt-in
//! mode, whose invalidations arrive as push messages on the reading connection).
//!
//! A read's answer and an invalidation of its key travel apart: the answer goes to the
//! task that asked, the push to the connection's push handler, and either may be
//! handled first. An answer handled after the invalidation that followed it would keep
//! a replaced value (or a miss) in the process until its lifetime ends. So every read
//! that may store its answer registers first, an invalidation cancels the registrations
//! of its keys, and an answer is stored only while its registration stands (the fix
//! lettuce adopted for the same race, redis/lettuce#3481). Misses are never stored:
//! a miss is followed by a load and a put, and must not hide that put's value.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{PushInfo, PushKind, Value};

use super::{CachedValue, jittered, make_room};

pub(super) struct LocalCopies {
    state: Mutex<State>,
    capacity: usize,
    lifetime: Duration,
    hits: AtomicU64,
}

#[derive(Default)]
struct State {
    copies: HashMap<String, LocalCopy>,
    /// Reads in flight that may store their answer: key → the ticket of the newest.
    registered: HashMap<String, u64>,
    next_ticket: u64,
}

struct LocalCopy {
    value: CachedValue,
    expires: Instant,
}

impl LocalCopies {
    /// At most `capacity` copies, each answered for at most `lifetime` (the bound for a
    /// connection that goes silent without closing, when no invalidation can arrive),
    /// less up to a fifth at random.
    pub(super) fn new(capacity: usize, lifetime: Duration) -> Self {
        Self {
            state: Mutex::default(),
            capacity: capacity.max(1),
            lifetime,
            hits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads answered from the process since start.
    pub(super) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub(super) fn get(&self, key: &str) -> Option<CachedValue> {
        let mut state = self.lock();
        let copy = state.copies.get(key)?;
        if copy.expires <= Instant::now() {
            state.copies.remove(key);
            return None;
        }
        let value = copy.value.clone();
        drop(state);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(value)
    }

    /// Registers a read of `key` about to be sent; its answer may be stored through the
    /// returned registration until an invalidation of `key` (or a newer read of it)
    /// takes the registration away.
    pub(super) fn register(&self, key: &str) -> Registration<'_> {
        let mut state = self.lock();
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        state.registered.insert(key.to_owned(), ticket);
        Registration {
            copies: self,
            key: key.to_owned(),
            ticket,
        }
    }

    /// Redis's push messages: an invalidation drops the copies of its keys (all of them
    /// after a flush), and a lost connection drops everything, since invalidations sent
    /// while it was down are lost with it.
    pub(super) fn handle_push(&self, push: &PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    let mut state = self.lock();
                    for key in keys {
                        let key = match key {
                            Value::BulkString(bytes) => String::from_utf8_lossy(bytes),
                            Value::SimpleString(text) => text.as_str().into(),
                            _ => continue,
                        };
                        state.copies.remove(key.as_ref());
                        state.registered.remove(key.as_ref());
                    }
                }
                _ => self.clear(),
            },
            PushKind::Disconnection => self.clear(),
            _ => {}
        }
    }

    pub(super) fn clear(&self) {
        let mut state = self.lock();
        state.copies.clear();
        state.registered.clear();
    }

    fn store(&self, key: &str, ticket: u64, value: Option<CachedValue>) {
        let mut state = self.lock();
        if state.registered.get(key) != Some(&ticket) {
            return;
        }
        state.registered.remove(key);
        let Some(value) = value else { return };
        let now = Instant::now();
        make_room(&mut state.copies, self.capacity, key, |copy| {
            copy.expires > now
        });
        // Copies stored together (a warm-up, a hot set read after a reconnection) would
        // otherwise all expire in the same instant, and the whole hot set would be read
        // from Redis again within about a second, every lifetime (tests/bench/RESULTS.md).
        state.copies.insert(
            key.to_owned(),
            LocalCopy {
                value,
                expires: now + jittered(self.lifetime),
            },
        );
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        self.lock().registered.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().copies.len()
    }
}

/// A read in flight. Dropped without [`Registration::store`] (the read failed or its
/// call was cancelled), it withdraws itself.
pub(super) struct Registration<'a> {
    copies: &'a LocalCopies,
    key: String,
    ticket: u64,
}

impl Registration<'_> {
    /// Keeps `value` in the process, unless the key was invalidated (or read again)
    /// since the read was registered; a miss (`None`) only ends the registration.
    pub(super) fn store(self, value: Option<CachedValue>) {
        self.copies.store(&self.key, self.ticket, value);
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut state = self.copies.lock();
        if state.registered.get(&self.key) == Some(&self.ticket) {
            state.registered.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn value(version: i64) -> CachedValue {
        CachedValue {
            version,
            bytes: Bytes::from(format!("v{version}")),
        }
    }

    fn invalidation(keys: &[&str]) -> PushInfo {
        PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(
                keys.iter()
                    .map(|k| Value::BulkString(k.as_bytes().to_vec()))
                    .collect(),
            )],
        }
    }

    fn copies() -> LocalCopies {
        LocalCopies::new(100, Duration::from_secs(10))
    }

    #[test]
    fn an_answer_is_kept_and_answered_locally() {
        let copies = copies();
        copies.register("k").store(Some(value(1)));
        assert_eq!(copies.get("k"), Some(value(1)));
        assert_eq!(copies.hits(), 1);
        assert_eq!(copies.registered(), 0);
    }

    #[test]
    fn an_answer_invalidated_before_it_is_stored_is_dropped() {
        let copies = copies();
        let read = copies.register("k");
        // The write that replaced the value was handled before the read's answer.
        copies.handle_push(&invalidation(&["k"]));
        read.store(Some(value(1)));
        assert_eq!(copies.get("k"), None);
        assert_eq!(copies.len(), 0);
    }

    #[test]
    fn a_miss_is_never_kept() {
        let copies = copies();
        copies.register("k").store(None);
        assert_eq!(copies.get("k"), None);
        assert_eq!(copies.registered(), 0);
        // The put that follows a miss is seen by the next read's answer.
        copies.register("k").store(Some(value(2)));
        assert_eq!(copies.get("k"), Some(value(2)));
    }

    #[test]
    fn only_the_newest_read_of_a_key_stores() {
        let copies = copies();
        let older = copies.register("k");
        let newer = copies.register("k");
        older.store(Some(value(1)));
        assert_eq!(copies.get("k"), None);
        newer.store(Some(value(2)));
        assert_eq!(copies.get("k"), Some(value(2)));
    }

    #[test]
    fn invalidations_drop_copies_and_a_lost_connection_drops_all() {
        let copies = copies();
        for key in ["a", "b", "c"] {
            copies.register(key).store(Some(value(1)));
        }
        copies.handle_push(&invalidation(&["a"]));
        assert_eq!((copies.get("a"), copies.len()), (None, 2));
        let in_flight = copies.register("d");
        copies.handle_push(&PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        });
        in_flight.store(Some(value(1)));
        assert_eq!((copies.len(), copies.registered()), (0, 0));
        // A flush is an invalidation without keys.
        copies.register("e").store(Some(value(1)));
        copies.handle_push(&PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        });
        assert_eq!(copies.len(), 0);
    }

    #[test]
    fn an_abandoned_read_withdraws_and_copies_expire() {
        let copies = LocalCopies::new(100, Duration::ZERO);
        drop(copies.register("k"));
        assert_eq!(copies.registered(), 0);
        copies.register("k").store(Some(value(1)));
        assert_eq!(
            copies.get("k"),
            None,
            "a copy past its lifetime is not answered"
        );
    }

    #[test]
    fn copies_stay_within_capacity() {
        let copies = LocalCopies::new(16, Duration::from_secs(10));
        for i in 0..1_000 {
            copies.register(&format!("k{i}")).store(Some(value(i)));
            assert!(copies.len() <= 16);
        }
        assert_eq!(copies.get("k999"), Some(value(999)));
    }

    #[test]
    fn copies_stored_together_expire_at_different_instants() {
        let lifetime = Duration::from_secs(10);
        let copies = LocalCopies::new(1_000, lifetime);
        let before = Instant::now();
        for i in 0..200 {
            copies.register(&format!("k{i}")).store(Some(value(i)));
        }
        let after = Instant::now();
        let state = copies.lock();
        let expiries: std::collections::BTreeSet<Instant> =
            state.copies.values().map(|copy| copy.expires).collect();
        // 200 draws from a fifth of ten seconds: equal ones would be a broken jitter.
        assert!(expiries.len() > 190, "{} distinct expiries", expiries.len());
        for expires in &expiries {
            assert!(*expires >= before + lifetime.mul_f64(0.8));
            assert!(*expires <= after + lifetime);
        }
        let spread = *expiries.last().unwrap_or(&before) - *expiries.first().unwrap_or(&before);
        assert!(
            spread > Duration::from_secs(1),
            "expiries spread over {spread:?}"
        );
    }
}
