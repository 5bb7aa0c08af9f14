//! What one import remembers of the rows it has seen (their row ids; on a dry run, the
//! emails of the contacts it would have written), as 64-bit digests of the texts in a
//! structure that costs 8 bytes a digest plus its value.
//!
//! Hash tables of a million digests peak at ~28 MB while they grow (the old table and
//! the new one twice its size, each with slack), and a dry run kept each contact id as
//! a string: a million-row dry run took the service to 208 MB, past its 100 MB budget
//! (tests/bench/RESULTS.md). Here the digests live in one sorted vector and a small hash
//! map of the latest ones, which is sorted and merged into the vector in place whenever
//! it fills up. Digests are uniform, so a directory of where each value of their top 16
//! bits starts in the vector narrows a lookup to a handful of entries (a plain binary
//! search over the whole vector made that dry run ~15 % slower, in cache misses).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// A 64-bit digest of a text. A collision among 64-bit digests is vanishingly unlikely
/// at the size of an import.
pub fn digest(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Latest entries kept in the hash map before they are merged into the sorted vector:
/// large enough that merging (a pass over the vector) is rare, small enough to cost
/// about a megabyte.
const RECENT_LIMIT: usize = 1 << 16;

/// The top bits of a digest that the directory of the sorted vector is indexed by.
const DIRECTORY_BITS: u32 = 16;

/// An exact map from digests to small values.
pub struct DigestMap<V> {
    /// Older entries in digest order, no digest twice, none also in `recent`.
    sorted: Vec<(u64, V)>,
    /// `directory[b]..directory[b + 1]`: where the entries whose top bits are `b` lie
    /// in `sorted` (empty until the first merge).
    directory: Vec<usize>,
    recent: HashMap<u64, V>,
    recent_limit: usize,
}

/// An exact set of digests.
pub type DigestSet = DigestMap<()>;

impl<V: Copy> Default for DigestMap<V> {
    fn default() -> Self {
        Self::with_recent_limit(RECENT_LIMIT)
    }
}

impl<V: Copy> DigestMap<V> {
    fn with_recent_limit(recent_limit: usize) -> Self {
        Self {
            sorted: Vec::new(),
            directory: Vec::new(),
            recent: HashMap::new(),
            recent_limit: recent_limit.max(1),
        }
    }

    pub fn get(&self, key: u64) -> Option<V> {
        if let Some(value) = self.recent.get(&key) {
            return Some(*value);
        }
        self.position(key).map(|at| self.sorted[at].1)
    }

    /// Sets the value of `key`; true when the key was not there before.
    pub fn insert(&mut self, key: u64, value: V) -> bool {
        if let Some(at) = self.position(key) {
            self.sorted[at].1 = value;
            return false;
        }
        let new = self.recent.insert(key, value).is_none();
        if self.recent.len() >= self.recent_limit {
            self.merge_recent();
        }
        new
    }

    /// Where `key` is in the sorted vector.
    fn position(&self, key: u64) -> Option<usize> {
        let bucket = (key >> (u64::BITS - DIRECTORY_BITS)) as usize;
        let (Some(&start), Some(&end)) =
            (self.directory.get(bucket), self.directory.get(bucket + 1))
        else {
            return None;
        };
        self.sorted[start..end]
            .binary_search_by_key(&key, |(k, _)| *k)
            .ok()
            .map(|at| start + at)
    }

    /// Moves the recent entries into the sorted vector: sorted among themselves, then
    /// merged from the back, so that nothing but the recent entries is copied aside.
    fn merge_recent(&mut self) {
        let mut recent: Vec<(u64, V)> = self.recent.drain().collect();
        recent.sort_unstable_by_key(|(k, _)| *k);
        let Some(&filler) = recent.first() else {
            return;
        };
        let mut old = self.sorted.len();
        let mut new = recent.len();
        self.sorted.resize(old + new, filler);
        for write in (0..self.sorted.len()).rev() {
            if new == 0 {
                break;
            }
            if old > 0 && self.sorted[old - 1].0 > recent[new - 1].0 {
                self.sorted[write] = self.sorted[old - 1];
                old -= 1;
            } else {
                self.sorted[write] = recent[new - 1];
                new -= 1;
            }
        }
        // The map's table is kept for the next entries: it is as large as they need.
        self.index_directory();
    }

    fn index_directory(&mut self) {
        let buckets = 1usize << DIRECTORY_BITS;
        self.directory.clear();
        self.directory.reserve(buckets + 1);
        let mut at = 0;
        for bucket in 0..buckets {
            while at < self.sorted.len()
                && ((self.sorted[at].0 >> (u64::BITS - DIRECTORY_BITS)) as usize) < bucket
            {
                at += 1;
            }
            self.directory.push(at);
        }
        self.directory.push(self.sorted.len());
    }
}

impl DigestSet {
    /// Adds `key`; true when it was not there before.
    pub fn add(&mut self, key: u64) -> bool {
        self.insert(key, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<V: Copy> DigestMap<V> {
        fn len(&self) -> usize {
            self.sorted.len() + self.recent.len()
        }
    }

    /// The `n`th of `range` distinct keys, spread over the whole 64-bit range as
    /// digests are (an odd multiplier is a bijection).
    fn spread(n: u64) -> u64 {
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// A deterministic sequence of keys with repeats, drawn from `range` distinct ones
    /// by a small linear congruential generator.
    fn keys(count: usize, range: u64) -> Vec<u64> {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                spread((state >> 11) % range)
            })
            .collect()
    }

    #[test]
    fn agrees_with_a_hash_map_across_merges() {
        // A small limit, so that the entries go through many merges.
        let mut map: DigestMap<u32> = DigestMap::with_recent_limit(7);
        let mut expected: HashMap<u64, u32> = HashMap::new();
        for (n, key) in keys(5_000, 1_500).into_iter().enumerate() {
            let value = n as u32;
            assert_eq!(
                map.insert(key, value),
                expected.insert(key, value).is_none(),
                "insert #{n} of {key}"
            );
            assert_eq!(map.get(key), Some(value), "read back #{n}");
        }
        assert_eq!(map.len(), expected.len());
        for key in (0..1_600).map(spread) {
            assert_eq!(map.get(key), expected.get(&key).copied(), "key {key}");
        }
        assert!(
            map.sorted.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "the merged entries are in order, each once"
        );
        assert!(map.recent.len() < 7);
        assert_eq!(map.directory.len(), (1 << DIRECTORY_BITS) + 1);
        assert_eq!(map.directory.last(), Some(&map.sorted.len()));
    }

    #[test]
    fn a_set_reports_each_key_new_once() {
        let mut set = DigestSet::with_recent_limit(3);
        let mut seen = std::collections::HashSet::new();
        for key in keys(2_000, 400) {
            assert_eq!(set.add(key), seen.insert(key), "key {key}");
        }
        assert_eq!(set.len(), seen.len());
    }

    #[test]
    fn extreme_keys_merge_in_order() {
        let mut set = DigestSet::with_recent_limit(2);
        for key in [u64::MAX, 0, u64::MAX - 1, 1, u64::MAX, 0] {
            set.add(key);
        }
        assert_eq!(
            set.sorted.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![0, 1, u64::MAX - 1, u64::MAX]
        );
    }

    #[test]
    fn digests_are_stable_within_a_process() {
        assert_eq!(digest("row-1"), digest("row-1"));
        assert_ne!(digest("row-1"), digest("row-2"));
    }
}
