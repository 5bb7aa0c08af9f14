//! The lengths of posting lists this process counted lately. Before a multi-word query
//! intersects two words' lists in the database it checks that none is longer than it
//! will intersect; counting a common first name's list reads it end to end, and the
//! same common lists come back in query after query. A length is kept for `TTL`, so a
//! list that grew past the limit since is intersected at most that long after: the
//! check bounds the cost of a query, never its answer (a query whose lists are too long
//! falls back to the full aggregation, which ranks the same).
//!
//! Entries are keyed by a 64-bit digest of (tenant, term, field), never by the text:
//! the terms are people's names and addresses, and erasure must not leave them here.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::index::TermField;

/// How long a counted length is trusted.
const TTL: Duration = Duration::from_secs(60);
/// The most lengths kept; past it, the expired ones are dropped, then all if need be.
const CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Counted {
    /// The list's length, counted up to the limit asked for plus one.
    length: usize,
    at: Instant,
}

/// Posting-list lengths by (tenant, term, field), shared by the calls of one process.
#[derive(Default)]
pub struct ListLengths {
    counted: Mutex<HashMap<u64, Counted>>,
}

fn key(tenant: &str, term: &str, field: TermField) -> u64 {
    let mut hasher = DefaultHasher::new();
    (tenant, term, field.code()).hash(&mut hasher);
    hasher.finish()
}

impl ListLengths {
    pub fn new() -> Self {
        Self::default()
    }

    /// The length counted for the list within `TTL`, if any.
    pub fn known(&self, tenant: &str, term: &str, field: TermField) -> Option<usize> {
        self.known_at(tenant, term, field, Instant::now())
    }

    fn known_at(&self, tenant: &str, term: &str, field: TermField, now: Instant) -> Option<usize> {
        let counted = self.counted.lock().ok()?;
        counted
            .get(&key(tenant, term, field))
            .filter(|c| now.saturating_duration_since(c.at) < TTL)
            .map(|c| c.length)
    }

    /// Keeps lengths just counted (each up to some limit plus one).
    pub fn remember<'a>(
        &self,
        tenant: &str,
        lengths: impl IntoIterator<Item = (&'a str, TermField, usize)>,
    ) {
        self.remember_at(tenant, lengths, Instant::now());
    }

    fn remember_at<'a>(
        &self,
        tenant: &str,
        lengths: impl IntoIterator<Item = (&'a str, TermField, usize)>,
        now: Instant,
    ) {
        // A poisoned lock only loses lengths, which are counted again.
        let Ok(mut counted) = self.counted.lock() else {
            return;
        };
        for (term, field, length) in lengths {
            if counted.len() >= CAPACITY {
                counted.retain(|_, c| now.saturating_duration_since(c.at) < TTL);
                if counted.len() >= CAPACITY {
                    counted.clear();
                }
            }
            counted.insert(key(tenant, term, field), Counted { length, at: now });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_is_known_for_its_tenant_term_and_field_until_it_expires() {
        let lengths = ListLengths::new();
        let now = Instant::now();
        lengths.remember_at("acme", [("anna", TermField::GivenName, 1_234)], now);
        assert_eq!(
            lengths.known_at("acme", "anna", TermField::GivenName, now),
            Some(1_234)
        );
        assert_eq!(
            lengths.known_at("acme", "anna", TermField::FamilyName, now),
            None
        );
        assert_eq!(
            lengths.known_at("other", "anna", TermField::GivenName, now),
            None
        );
        assert_eq!(
            lengths.known_at("acme", "anne", TermField::GivenName, now),
            None
        );
        let later = now + TTL;
        assert_eq!(
            lengths.known_at("acme", "anna", TermField::GivenName, later),
            None
        );
    }

    #[test]
    fn a_full_table_drops_expired_lengths_first() {
        let lengths = ListLengths::new();
        let old = Instant::now();
        let new = old + TTL;
        let terms: Vec<String> = (0..CAPACITY).map(|i| format!("t{i}")).collect();
        lengths.remember_at(
            "acme",
            terms.iter().map(|t| (t.as_str(), TermField::Tag, 1)),
            old,
        );
        lengths.remember_at("acme", [("fresh", TermField::Tag, 7)], new);
        lengths.remember_at("acme", [("fresher", TermField::Tag, 8)], new);
        assert_eq!(
            lengths.known_at("acme", "fresh", TermField::Tag, new),
            Some(7)
        );
        assert_eq!(
            lengths.known_at("acme", "fresher", TermField::Tag, new),
            Some(8)
        );
        assert_eq!(lengths.counted.lock().map(|c| c.len()).ok(), Some(2));
    }
}
