//! The tenant scan of `FindDuplicates` (no `contact`, no `probe`): every likely pair of
//! the tenant, found the way one contact's candidates are found, contact after contact
//! in id order, a bounded number of contacts per call.
//!
//! Holding every pair of a large tenant at once is not an option: at a million people
//! the contacts sharing an account or an email domain make millions of candidate pairs.
//! A call reads at most [`SCAN_BUDGET`] contacts and returns the pairs found so far, so
//! its cost does not grow with the tenant; the page token says where the next call
//! goes on.

use std::cmp::Ordering;

use crm_platform::ApiError;
use crm_platform::pagination::CursorValue;
use crm_proto::contact::{Contact, DuplicateMatch, DuplicateRules};

use super::matching::{self, Candidate};
use crate::context::Context;
use crate::store::IdBound;

/// Contacts whose candidates are looked up together (one round of queries).
const SCAN_BATCH: usize = 250;

/// The most contacts one call looks at: a page may come back short, or empty, with a
/// token to go on from.
pub const SCAN_BUDGET: usize = 1_000;

/// Where a scan goes on.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanCursor {
    /// The pairs of this contact and of those before it are done.
    After { contact_id: String },
    /// Of this contact's pairs, in [`in_contact_order`], those up to the one with
    /// `score` and `other_id` (the other contact's id) were returned.
    Within {
        contact_id: String,
        score: f64,
        other_id: String,
    },
}

impl ScanCursor {
    /// The cursor as a page token holds it: the contact id, then for a cursor within
    /// its pairs the score and the other contact's id. The score goes as text: Rust
    /// prints the shortest form that parses back to the same f64, so the cursor's pair
    /// is found exactly.
    pub fn to_token_values(&self) -> Vec<CursorValue> {
        match self {
            Self::After { contact_id } => vec![CursorValue::Text(contact_id.clone())],
            Self::Within {
                contact_id,
                score,
                other_id,
            } => vec![
                CursorValue::Text(contact_id.clone()),
                CursorValue::Text(score.to_string()),
                CursorValue::Text(other_id.clone()),
            ],
        }
    }

    /// The cursor a page token's values name ([`Self::to_token_values`]).
    pub fn from_token_values(values: &[CursorValue]) -> Result<Self, ApiError> {
        let malformed = || ApiError::invalid("page_token", "page token is malformed");
        match values {
            [CursorValue::Text(contact_id)] => Ok(Self::After {
                contact_id: contact_id.clone(),
            }),
            [
                CursorValue::Text(contact_id),
                CursorValue::Text(score),
                CursorValue::Text(other_id),
            ] => Ok(Self::Within {
                contact_id: contact_id.clone(),
                score: score.parse().map_err(|_| malformed())?,
                other_id: other_id.clone(),
            }),
            _ => Err(malformed()),
        }
    }
}

/// A likely duplicate pair: the older contact first.
#[derive(Debug, Clone)]
pub struct Pair {
    pub older: String,
    pub newer: String,
    pub score: f64,
    pub matches: Vec<DuplicateMatch>,
    /// The id of the contact of the pair that was not scanned (the higher id).
    other_id: String,
}

/// One call's pairs, best first, and where the next call goes on (none at the end).
pub struct ScanPage {
    pub pairs: Vec<Pair>,
    pub next: Option<ScanCursor>,
}

/// The pairs of the contacts from `from` on, up to `page_size` of them, looking at no
/// more than `budget` contacts. Each pair is found from its contact of lower id, so it
/// comes once in the whole scan.
pub async fn scan(
    ctx: &Context,
    tenant: &str,
    rules: &DuplicateRules,
    from: Option<ScanCursor>,
    page_size: usize,
    budget: usize,
) -> Result<ScanPage, ApiError> {
    let mut pairs = Vec::new();
    let mut looked_at = 0;
    let (mut start, mut resume) = match from {
        None => (None, None),
        Some(ScanCursor::After { contact_id }) => (Some(IdBound::After(contact_id)), None),
        Some(ScanCursor::Within {
            contact_id,
            score,
            other_id,
        }) => (
            Some(IdBound::From(contact_id.clone())),
            Some((contact_id, score, other_id)),
        ),
    };
    loop {
        let batch_size = SCAN_BATCH.min(budget.saturating_sub(looked_at).max(1));
        let contacts: Vec<Contact> = ctx
            .contacts
            .live_in_id_order(tenant, start.as_ref(), batch_size as u64)
            .await?
            .into_iter()
            .map(|s| s.contact)
            .collect();
        let found = matching::candidates_of_each(&ctx.db, tenant, &contacts, rules).await?;
        for (contact, candidates) in contacts.iter().zip(found) {
            let id = contact.name.trim_start_matches("contacts/");
            let mut own = pairs_of(contact, id, candidates);
            // The contact the cursor names returned its pairs up to the cursor's; it
            // may be gone, and then the scan simply goes on after it.
            if let Some((_, score, other_id)) = resume.take().filter(|(at, _, _)| at == id) {
                own.retain(|pair| after_cursor(pair, score, &other_id));
            }
            let room = page_size - pairs.len();
            let all_fit = own.len() <= room;
            own.truncate(room);
            let last = own.last().map(|pair| (pair.score, pair.other_id.clone()));
            pairs.extend(own);
            looked_at += 1;
            if !all_fit {
                let (score, other_id) = last.unwrap_or_default();
                let next = ScanCursor::Within {
                    contact_id: id.to_owned(),
                    score,
                    other_id,
                };
                return Ok(page(pairs, Some(next)));
            }
            if pairs.len() == page_size || looked_at >= budget {
                let next = ScanCursor::After {
                    contact_id: id.to_owned(),
                };
                return Ok(page(pairs, Some(next)));
            }
        }
        match contacts.last() {
            Some(last) if contacts.len() == batch_size => {
                let last_id = last.name.trim_start_matches("contacts/");
                start = Some(IdBound::After(last_id.to_owned()));
            }
            _ => return Ok(page(pairs, None)),
        }
    }
}

fn page(mut pairs: Vec<Pair>, next: Option<ScanCursor>) -> ScanPage {
    pairs.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.older.cmp(&b.older))
            .then_with(|| a.newer.cmp(&b.newer))
    });
    ScanPage { pairs, next }
}

/// The order of one contact's pairs, which a cursor within them follows: best first,
/// then by the other contact's id.
fn in_contact_order(a: &Pair, b: &Pair) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then_with(|| a.other_id.cmp(&b.other_id))
}

/// Whether `pair` comes after the cursor's pair (`score`, `other_id`) in
/// [`in_contact_order`]. Keyed by the pair, not counted, so that a pair gone or added
/// between two calls neither hides another nor repeats one.
fn after_cursor(pair: &Pair, score: f64, other_id: &str) -> bool {
    score
        .total_cmp(&pair.score)
        .then_with(|| pair.other_id.as_str().cmp(other_id))
        == Ordering::Greater
}

/// The pairs a contact makes with the candidates of higher id, in
/// [`in_contact_order`].
fn pairs_of(contact: &Contact, id: &str, candidates: Vec<Candidate>) -> Vec<Pair> {
    let created = matching::create_time_us(contact);
    let mut pairs: Vec<Pair> = candidates
        .into_iter()
        .filter(|c| c.contact.trim_start_matches("contacts/") > id)
        .map(|c| {
            let other_id = c.contact.trim_start_matches("contacts/").to_owned();
            let (older, newer) = if (created, id) <= (c.create_time_us, other_id.as_str()) {
                (contact.name.clone(), c.contact.clone())
            } else {
                (c.contact.clone(), contact.name.clone())
            };
            Pair {
                older,
                newer,
                score: c.score,
                matches: c.matches,
                other_id,
            }
        })
        .collect();
    pairs.sort_by(in_contact_order);
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(score: f64, other_id: &str) -> Pair {
        Pair {
            older: String::new(),
            newer: String::new(),
            score,
            matches: Vec::new(),
            other_id: other_id.into(),
        }
    }

    #[test]
    fn a_cursor_within_a_contact_resumes_after_its_pair() {
        let mut pairs = [
            pair(0.9, "c"),
            pair(1.0, "b"),
            pair(0.9, "a"),
            pair(1.0, "d"),
        ];
        pairs.sort_by(in_contact_order);
        let order: Vec<&str> = pairs.iter().map(|p| p.other_id.as_str()).collect();
        assert_eq!(order, ["b", "d", "a", "c"]);
        let after: Vec<&str> = pairs
            .iter()
            .filter(|p| after_cursor(p, 1.0, "d"))
            .map(|p| p.other_id.as_str())
            .collect();
        assert_eq!(after, ["a", "c"]);
        // The cursor's own pair gone (it no longer scores 1.0): the rest still follow.
        let after: Vec<&str> = pairs
            .iter()
            .filter(|p| after_cursor(p, 1.0, "bb"))
            .map(|p| p.other_id.as_str())
            .collect();
        assert_eq!(after, ["d", "a", "c"]);
    }
}
