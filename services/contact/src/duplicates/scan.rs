//! The tenant scan of `FindDuplicates` (no `contact`, no `probe`): every likely pair of
//! the tenant, found the way one contact's candidates are found, contact after contact
//! in id order, a bounded number of contacts per call.
//!
//! Holding every pair of a large tenant at once is not an option: at a million people
//! the contacts sharing an account or an email domain make millions of candidate pairs.
//! A call reads at most [`SCAN_BUDGET`] contacts and returns the pairs found so far, so
//! its cost does not grow with the tenant; the page token says where the next call
//! goes on.

use crm_platform::ApiError;
use crm_proto::contact::{Contact, DuplicateMatch, DuplicateRules};
use sea_orm::ConnectionTrait;

use super::matching::{self, Candidate, Profile};
use crate::store::{ContactStore, IdBound};

/// Contacts whose candidates are looked up together (one round of queries).
const SCAN_BATCH: u64 = 250;

/// The most contacts one call looks at: a page may come back short, or empty, with a
/// token to go on from.
pub const SCAN_BUDGET: usize = 1_000;

/// Where a scan goes on: the pairs of contacts before `contact_id` are done, and of the
/// pairs of `contact_id` itself the first `returned` were returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    pub contact_id: String,
    pub returned: usize,
}

/// A likely duplicate pair: the older contact first.
#[derive(Debug, Clone)]
pub struct Pair {
    pub older: String,
    pub newer: String,
    pub score: f64,
    pub matches: Vec<DuplicateMatch>,
}

/// One call's pairs, best first, and where the next call goes on (none at the end).
pub struct ScanPage {
    pub pairs: Vec<Pair>,
    pub next: Option<ScanCursor>,
}

/// The pairs of the contacts from `from` on, up to `page_size` of them, looking at no
/// more than `budget` contacts. Each pair is found from its contact of lower id, so it
/// comes once in the whole scan.
pub async fn scan<C: ConnectionTrait>(
    conn: &C,
    store: &ContactStore,
    tenant: &str,
    rules: &DuplicateRules,
    from: Option<ScanCursor>,
    page_size: usize,
    budget: usize,
) -> Result<ScanPage, ApiError> {
    let mut pairs = Vec::new();
    let mut looked_at = 0;
    // The cursor's contact is looked at again (to skip the pairs it returned); the
    // next batches start after the last contact of the one before.
    let mut start = from.as_ref().map(|c| IdBound::From(c.contact_id.clone()));
    loop {
        let batch_size = SCAN_BATCH.min((budget - looked_at).max(1) as u64);
        let batch = store
            .live_in_id_order(tenant, start.as_ref(), batch_size)
            .await?;
        let contacts: Vec<_> = batch.into_iter().map(|s| s.contact).collect();
        let found = matching::candidates_for_batch(conn, tenant, &contacts, rules).await?;
        for (contact, candidates) in contacts.iter().zip(found) {
            let id = contact.name.trim_start_matches("contacts/");
            let own = pairs_of(contact, id, candidates);
            // Only the contact the cursor names had pairs returned already; it may be gone.
            let skip = match &from {
                Some(cursor) if cursor.contact_id == id => cursor.returned.min(own.len()),
                _ => 0,
            };
            let room = page_size - pairs.len();
            let rest = own.len() - skip;
            pairs.extend(own.into_iter().skip(skip).take(room));
            looked_at += 1;
            if rest > room || pairs.len() == page_size || looked_at >= budget {
                let returned = skip + rest.min(room);
                return Ok(page(
                    pairs,
                    Some(ScanCursor {
                        contact_id: id.to_owned(),
                        returned,
                    }),
                ));
            }
        }
        match contacts.last() {
            Some(last) if contacts.len() as u64 == batch_size => {
                let last_id = last.name.trim_start_matches("contacts/");
                start = Some(IdBound::After(last_id.to_owned()));
            }
            _ => return Ok(page(pairs, None)),
        }
    }
}

fn page(mut pairs: Vec<Pair>, next: Option<ScanCursor>) -> ScanPage {
    pairs.sort_by(best_first);
    ScanPage { pairs, next }
}

fn best_first(a: &Pair, b: &Pair) -> std::cmp::Ordering {
    b.score
        .total_cmp(&a.score)
        .then_with(|| a.older.cmp(&b.older))
        .then_with(|| a.newer.cmp(&b.newer))
}

/// The pairs a contact makes with the candidates of higher id, in a fixed order (best
/// first, then by name), so that a cursor can count how many were returned.
fn pairs_of(contact: &Contact, id: &str, candidates: Vec<Candidate>) -> Vec<Pair> {
    let own = Profile::of_contact(contact);
    let mut pairs: Vec<Pair> = candidates
        .into_iter()
        .filter(|c| c.contact.trim_start_matches("contacts/") > id)
        .map(|c| {
            let other_id = c.contact.trim_start_matches("contacts/");
            let (older, newer) = if (own.create_time_us, id) <= (c.create_time_us, other_id) {
                (contact.name.clone(), c.contact.clone())
            } else {
                (c.contact.clone(), contact.name.clone())
            };
            Pair {
                older,
                newer,
                score: c.score,
                matches: c.matches,
            }
        })
        .collect();
    pairs.sort_by(best_first);
    pairs
}
