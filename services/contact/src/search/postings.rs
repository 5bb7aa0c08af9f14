//! Ranking on Postgres that reads a bounded number of postings, however common the
//! words: a tenant of a million people has ~15,000 with the same first name, and
//! aggregating all their postings per query is what made search slow.
//!
//! - One word: the score of a contact is the best of its matching (term, field)
//!   "branches", each worth a fixed score. The first `n` contacts by id of every branch
//!   hold the top `n` overall (a contact missing from its best branch's first `n` has
//!   `n` others ahead of it there), so each branch is read only to `n` rows, by the
//!   index order, and the best branches first.
//! - Two to four words: a contact matching them all has two of them on two name words,
//!   and so a name-pair term ("anna muller"), or matches one of them only through its
//!   other postings (email words, tags, weaker completions). A pair list's people, and
//!   those the database finds in a word's other postings and another word's at once,
//!   are scored exactly from their terms; the first `n` of the pair lists (two words)
//!   or the shortest pair list (three or four) often settle the page alone (see
//!   `rank_text_words`).
//!
//! Both give the ranking `SearchApi::rank_with` gives; `None` means "read everything"
//! (the caller falls back to it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crm_platform::ApiError;
use crm_platform::errors::from_db;
use crm_platform::lookup::any_text;

use super::lengths::ListLengths;
use super::{PREFIX_QUALITY, Ranked, TEXT_FIELDS, WordPlan, field_weight, ranking};
use crate::index::migration::{ContactTermSets, ContactTerms};
use crate::index::{self, TermField};

/// Branches of one word read in the first round; the rest only when the first round
/// cannot tell the top contacts.
const FIRST_ROUND: usize = 32;
/// Completions of each word combined into name-pair terms.
const PAIR_TERMS: usize = 8;
/// The most postings a multi-word query reads to find its people, and the most people
/// it then scores; above it the query falls back to the full aggregation.
const CANDIDATE_POSTINGS: usize = 1_000;
/// The longest posting list the database intersects for a multi-word query.
const REST_POSTINGS: usize = 50_000;
/// Postings of an address or number prefix read in the index order.
const PREFIX_POSTINGS: usize = 1_000;

/// The postings of one (term, field), each worth `score` to a word.
#[derive(Debug, Clone)]
struct Branch {
    term: String,
    field: TermField,
    score: f64,
}

/// The branches of a word's vocabulary matches, best first.
fn text_branches(quality: &BTreeMap<String, f64>) -> Vec<Branch> {
    let mut branches: Vec<Branch> = quality
        .iter()
        .flat_map(|(term, q)| {
            TEXT_FIELDS.iter().map(move |field| Branch {
                term: term.clone(),
                field: *field,
                score: q * field_weight(*field),
            })
        })
        .collect();
    sort_best_first(&mut branches);
    branches
}

fn sort_best_first(branches: &mut [Branch]) {
    branches.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.term.cmp(&b.term))
            .then_with(|| a.field.cmp(&b.field))
    });
}

fn sort_ranked(ranked: &mut [Ranked]) {
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.contact_id.cmp(&b.contact_id))
    });
}

fn db_error(e: sea_orm::DbErr) -> ApiError {
    from_db(e, "contacts")
}

/// `(term, field[, score])` rows of a VALUES list, binding from `$first`.
fn values_rows(count: usize, first: usize, with_score: bool) -> String {
    let per_row = if with_score { 3 } else { 2 };
    (0..count)
        .map(|i| {
            let at = first + i * per_row;
            if with_score {
                format!("(${at}::text, ${}::int2, ${}::float8)", at + 1, at + 2)
            } else {
                format!("(${at}::text, ${}::int2)", at + 1)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a Postgres statement with its parameters.
async fn query_postgres<C: ConnectionTrait>(
    db: &C,
    sql: String,
    values: Vec<sea_orm::Value>,
) -> Result<Vec<sea_orm::QueryResult>, ApiError> {
    db.query_all_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await
    .map_err(db_error)
}

/// Runs a statement whose parameters are `leading`, then each branch's term and field.
async fn query_branches<C: ConnectionTrait>(
    db: &C,
    sql: String,
    leading: Vec<sea_orm::Value>,
    branches: &[(String, TermField)],
) -> Result<Vec<sea_orm::QueryResult>, ApiError> {
    let mut values = leading;
    for (term, field) in branches {
        values.push(term.as_str().into());
        values.push(field.code().into());
    }
    query_postgres(db, sql, values).await
}

/// The contact ids of the rows' first column, or `None` when there are more than
/// `limit` (a statement asks for one more row than it wants).
fn contact_ids_up_to(
    rows: &[sea_orm::QueryResult],
    limit: usize,
) -> Result<Option<BTreeSet<String>>, ApiError> {
    if rows.len() > limit {
        return Ok(None);
    }
    contact_ids(rows).map(Some)
}

/// The contact ids of the rows' first column.
fn contact_ids(rows: &[sea_orm::QueryResult]) -> Result<BTreeSet<String>, ApiError> {
    rows.iter()
        .map(|row| {
            row.try_get_by_index::<String>(0)
                .map_err(ApiError::internal)
        })
        .collect()
}

/// The best `n` contacts of the branches (score, then id), each branch read to `n`.
async fn best_of_branches<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    branches: &[Branch],
    n: usize,
) -> Result<Vec<Ranked>, ApiError> {
    if branches.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT p.contact_id, MAX(b.s) AS score FROM (VALUES {}) AS b(term, field, s) \
         CROSS JOIN LATERAL (SELECT t.contact_id FROM contact_terms t \
         WHERE t.tenant_id = $1 AND t.term = b.term AND t.field = b.field \
         ORDER BY t.contact_id LIMIT $2) AS p \
         GROUP BY p.contact_id ORDER BY score DESC, p.contact_id LIMIT $2",
        values_rows(branches.len(), 3, true)
    );
    let mut values: Vec<sea_orm::Value> = vec![tenant.into(), (n as i64).into()];
    for branch in branches {
        values.push(branch.term.as_str().into());
        values.push(branch.field.code().into());
        values.push(branch.score.into());
    }
    let rows = query_postgres(db, sql, values).await?;
    rows.iter()
        .map(|row| {
            Ok(Ranked {
                contact_id: row.try_get_by_index(0).map_err(ApiError::internal)?,
                score: row.try_get_by_index(1).map_err(ApiError::internal)?,
            })
        })
        .collect()
}

/// The contacts of the branches, each branch read to `limit` and all of them to
/// `limit` in total; `None` when a limit was reached (the set may be incomplete).
async fn contacts_of_branches<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    branches: &[(String, TermField)],
    limit: usize,
) -> Result<Option<BTreeSet<String>>, ApiError> {
    if branches.is_empty() {
        return Ok(Some(BTreeSet::new()));
    }
    let sql = format!(
        "SELECT p.contact_id FROM (VALUES {}) AS b(term, field) \
         CROSS JOIN LATERAL (SELECT t.contact_id FROM contact_terms t \
         WHERE t.tenant_id = $1 AND t.term = b.term AND t.field = b.field \
         LIMIT $2) AS p LIMIT $2",
        values_rows(branches.len(), 3, false)
    );
    let rows = query_branches(
        db,
        sql,
        vec![tenant.into(), (limit as i64 + 1).into()],
        branches,
    )
    .await?;
    contact_ids_up_to(&rows, limit)
}

/// The (term, field) branches that have a posting at all: bounds computed from the
/// branches a query could match would otherwise count fields a word never occurs in.
/// Each term's fields are found by skipping through its postings from one field to the
/// next, not by probing every field asked for: a term occurs in one or two of them, so
/// this descends the index about half as often.
async fn existing_branches<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    branches: &[(String, TermField)],
) -> Result<BTreeSet<(String, TermField)>, ApiError> {
    let terms: BTreeSet<&str> = branches.iter().map(|(term, _)| term.as_str()).collect();
    let codes = branches.iter().map(|(_, field)| field.code());
    let (Some(lowest), Some(highest)) = (codes.clone().min(), codes.max()) else {
        return Ok(BTreeSet::new());
    };
    // One array parameter, so that every call is the same statement, planned once per
    // connection.
    let sql = "SELECT b.term, f.field FROM unnest($4::text[]) AS b(term) \
         CROSS JOIN LATERAL (WITH RECURSIVE f(field) AS ( \
         (SELECT t.field FROM contact_terms t WHERE t.tenant_id = $1 AND t.term = b.term \
         AND t.field >= $2 AND t.field <= $3 ORDER BY t.field LIMIT 1) \
         UNION ALL SELECT (SELECT t.field FROM contact_terms t WHERE t.tenant_id = $1 \
         AND t.term = b.term AND t.field > f.field AND t.field <= $3 \
         ORDER BY t.field LIMIT 1) FROM f WHERE f.field IS NOT NULL) \
         SELECT field FROM f WHERE field IS NOT NULL) AS f"
        .to_owned();
    let terms: Vec<String> = terms.into_iter().map(str::to_owned).collect();
    let values: Vec<sea_orm::Value> =
        vec![tenant.into(), lowest.into(), highest.into(), terms.into()];
    let rows = query_postgres(db, sql, values).await?;
    // The fields between those asked for are found too; only the branches asked for
    // are kept.
    let asked: BTreeSet<&(String, TermField)> = branches.iter().collect();
    let mut existing = BTreeSet::new();
    for row in rows {
        let term: String = row.try_get_by_index(0).map_err(ApiError::internal)?;
        let code: i16 = row.try_get_by_index(1).map_err(ApiError::internal)?;
        if let Some(branch) = TermField::from_code(code).map(|field| (term, field))
            && asked.contains(&branch)
        {
            existing.insert(branch);
        }
    }
    Ok(existing)
}

/// The first `n` contacts by id of each branch.
async fn first_contacts_of_branches<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    branches: &[(String, TermField)],
    n: usize,
) -> Result<BTreeSet<String>, ApiError> {
    if branches.is_empty() {
        return Ok(BTreeSet::new());
    }
    let sql = format!(
        "SELECT p.contact_id FROM (VALUES {}) AS b(term, field) \
         CROSS JOIN LATERAL (SELECT t.contact_id FROM contact_terms t \
         WHERE t.tenant_id = $1 AND t.term = b.term AND t.field = b.field \
         ORDER BY t.contact_id LIMIT $2) AS p",
        values_rows(branches.len(), 3, false)
    );
    let rows = query_branches(db, sql, vec![tenant.into(), (n as i64).into()], branches).await?;
    contact_ids(&rows)
}

/// Postings of terms of `field` starting with `prefix`, in the index order, up to
/// `limit`: `(contact_id, term)`, and whether the limit cut them.
async fn prefix_postings<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    prefix: &str,
    field: TermField,
    limit: usize,
) -> Result<(Vec<(String, String)>, bool), ApiError> {
    let select = Query::select()
        .columns([ContactTerms::ContactId, ContactTerms::Term])
        .from(ContactTerms::Table)
        .and_where(Expr::col(ContactTerms::TenantId).eq(tenant))
        .and_where(Expr::col(ContactTerms::Term).gte(prefix))
        .and_where(Expr::col(ContactTerms::Term).lt(ranking::prefix_end(prefix)))
        .and_where(Expr::col(ContactTerms::Field).eq(field.code()))
        .order_by(ContactTerms::Term, Order::Asc)
        .order_by(ContactTerms::Field, Order::Asc)
        .order_by(ContactTerms::ContactId, Order::Asc)
        .limit(limit as u64)
        .to_owned();
    let rows = db.query_all(&select).await.map_err(db_error)?;
    let postings = rows
        .iter()
        .map(|row| {
            Ok((
                row.try_get_by_index(0).map_err(ApiError::internal)?,
                row.try_get_by_index(1).map_err(ApiError::internal)?,
            ))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let cut = postings.len() >= limit;
    Ok((postings, cut))
}

/// The best of each contact's postings under a prefix plan.
fn score_prefix_postings(
    plan: &WordPlan,
    field: TermField,
    postings: &[(String, String)],
) -> Vec<Ranked> {
    let mut best: HashMap<&str, f64> = HashMap::new();
    for (contact_id, term) in postings {
        if let Some(score) = plan.score(term, field) {
            let entry = best.entry(contact_id.as_str()).or_insert(score);
            *entry = entry.max(score);
        }
    }
    best.into_iter()
        .map(|(contact_id, score)| Ranked {
            contact_id: contact_id.to_owned(),
            score,
        })
        .collect()
}

/// The top `n` contacts for one word.
async fn rank_one_word<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    plan: &WordPlan,
    n: usize,
) -> Result<Option<Vec<Ranked>>, ApiError> {
    match plan {
        WordPlan::Prefix { start, field } => {
            // Beyond PREFIX_POSTINGS the addresses or numbers are taken in their order:
            // all score the same as a prefix, so no ranking is lost, only the order of
            // equals differs.
            let (postings, _) = prefix_postings(db, tenant, start, *field, PREFIX_POSTINGS).await?;
            let mut ranked = score_prefix_postings(plan, *field, &postings);
            sort_ranked(&mut ranked);
            ranked.truncate(n);
            Ok(Some(ranked))
        }
        WordPlan::Terms {
            quality,
            phone_prefix,
            ..
        } => {
            let mut phone = Vec::new();
            if let Some(prefix) = phone_prefix {
                let (postings, _) =
                    prefix_postings(db, tenant, prefix, TermField::Phone, PREFIX_POSTINGS).await?;
                phone = score_prefix_postings(plan, TermField::Phone, &postings);
            }
            let branches = text_branches(quality);
            let mut read = branches.len().min(FIRST_ROUND);
            loop {
                let mut ranked = best_of_branches(db, tenant, &branches[..read], n).await?;
                ranked = merge_best(ranked, &phone);
                ranked.truncate(n);
                let settled = read == branches.len()
                    || (ranked.len() >= n && ranked[n - 1].score > branches[read].score);
                if settled {
                    return Ok(Some(ranked));
                }
                read = branches.len();
            }
        }
    }
}

/// The union of two rankings, each contact at its better score, best first.
fn merge_best(ranked: Vec<Ranked>, more: &[Ranked]) -> Vec<Ranked> {
    if more.is_empty() {
        return ranked;
    }
    let mut best: HashMap<String, f64> = HashMap::new();
    for r in ranked.into_iter().chain(more.iter().cloned()) {
        let entry = best.entry(r.contact_id).or_insert(r.score);
        *entry = entry.max(r.score);
    }
    let mut merged: Vec<Ranked> = best
        .into_iter()
        .map(|(contact_id, score)| Ranked { contact_id, score })
        .collect();
    sort_ranked(&mut merged);
    merged
}

/// How a text word of a multi-word query is looked up: its best completions combine
/// with the other words' into name-pair terms; every other posting of the word (other
/// fields, weaker completions, terms another word pairs too, phone digits) is its rest.
struct TextWord {
    paired: BTreeSet<String>,
    /// Every (term, field) of the word that has postings.
    all: Vec<(String, TermField)>,
    rest: Vec<(String, TermField)>,
    /// The score each (term, field) of `all` gives the word.
    scores: BTreeMap<(String, TermField), f64>,
    phone_prefix: Option<String>,
    /// The best score any posting of the word can give.
    best: f64,
    /// The best score a posting of its rest can give.
    best_rest: f64,
}

const NAME_FIELDS: [TermField; 2] = [TermField::GivenName, TermField::FamilyName];

/// Every (term, field) a text word could match.
fn word_branches(plan: &WordPlan) -> Vec<(String, TermField)> {
    match plan {
        WordPlan::Terms { quality, .. } => quality
            .keys()
            .flat_map(|term| TEXT_FIELDS.iter().map(move |field| (term.clone(), *field)))
            .collect(),
        WordPlan::Prefix { .. } => Vec::new(),
    }
}

/// A word's completions that occur in a name, best first; without its typo matches
/// when `as_typed`.
fn name_completions<'q>(
    quality: &'q BTreeMap<String, f64>,
    typos: &BTreeSet<String>,
    existing: &BTreeSet<(String, TermField)>,
    as_typed: bool,
) -> Vec<&'q String> {
    let mut terms: Vec<(&String, f64)> = quality
        .iter()
        .filter(|(term, _)| !(as_typed && typos.contains(*term)))
        .filter(|(term, _)| {
            NAME_FIELDS
                .iter()
                .any(|field| existing.contains(&((*term).clone(), *field)))
        })
        .map(|(term, q)| (term, *q))
        .collect();
    terms.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(y.0)));
    terms.into_iter().map(|(term, _)| term).collect()
}

/// The text words of `plans`, when every plan is one, from the (term, field) branches
/// that exist. Word `ranged`, when given, pairs every completion of the word as typed
/// (its pair terms are read by prefix ranges, see `rank_two_words_by_ranges`); the
/// others pair their eight best.
fn text_words(
    plans: &[WordPlan],
    existing: &BTreeSet<(String, TermField)>,
    ranged: Option<usize>,
) -> Option<Vec<TextWord>> {
    let phone_score = PREFIX_QUALITY * field_weight(TermField::Phone);
    let exists = |term: &String, field: TermField| existing.contains(&(term.clone(), field));
    let mut words = Vec::with_capacity(plans.len());
    let mut best_terms: Vec<BTreeSet<String>> = Vec::with_capacity(plans.len());
    for (i, plan) in plans.iter().enumerate() {
        let WordPlan::Terms { quality, typos, .. } = plan else {
            return None;
        };
        let ranged = ranged == Some(i);
        let terms = name_completions(quality, typos, existing, ranged);
        let take = if ranged { terms.len() } else { PAIR_TERMS };
        best_terms.push(terms.into_iter().take(take).cloned().collect());
    }
    for (i, plan) in plans.iter().enumerate() {
        let WordPlan::Terms {
            quality,
            phone_prefix,
            ..
        } = plan
        else {
            return None;
        };
        // Two words on one name word ("ann anna") have no pair term: such a term is
        // looked up as the rest of both, unless a word is ranged (its caller reads the
        // term's people as a branch of both words at once).
        let paired: BTreeSet<String> = best_terms[i]
            .iter()
            .filter(|term| {
                ranged.is_some()
                    || !best_terms
                        .iter()
                        .enumerate()
                        .any(|(j, other)| j != i && other.contains(*term))
            })
            .cloned()
            .collect();
        let mut word = TextWord {
            paired,
            all: Vec::new(),
            rest: Vec::new(),
            scores: BTreeMap::new(),
            phone_prefix: phone_prefix.clone(),
            best: 0.0,
            best_rest: 0.0,
        };
        if phone_prefix.is_some() {
            word.best = phone_score;
            word.best_rest = phone_score;
        }
        for (term, q) in quality {
            for field in TEXT_FIELDS {
                if !exists(term, field) {
                    continue;
                }
                let score = q * field_weight(field);
                word.best = word.best.max(score);
                word.all.push((term.clone(), field));
                word.scores.insert((term.clone(), field), score);
                if !(NAME_FIELDS.contains(&field) && word.paired.contains(term)) {
                    word.rest.push((term.clone(), field));
                    word.best_rest = word.best_rest.max(score);
                }
            }
        }
        words.push(word);
    }
    Some(words)
}

/// The name-pair terms of two words' paired completions.
fn pair_branches_of(first: &TextWord, second: &TextWord) -> Vec<(String, TermField)> {
    let mut branches = Vec::new();
    for term_a in &first.paired {
        for term_b in &second.paired {
            for field_a in NAME_FIELDS {
                for field_b in NAME_FIELDS {
                    if let Some(pair) = TermField::name_pair(field_a, field_b) {
                        branches.push((index::pair_term(term_a, term_b), pair));
                    }
                }
            }
        }
    }
    branches
}

/// A phone prefix has no rest to intersect: the full ranking answers it.
fn has_phone_prefix(words: &[TextWord]) -> bool {
    words.iter().any(|word| word.phone_prefix.is_some())
}

/// The best score of a contact that matches at least one of the words only through
/// its rest (every other word at its best).
fn best_with_a_rest(words: &[TextWord]) -> f64 {
    let total: f64 = words.iter().map(|word| word.best).sum();
    words
        .iter()
        .map(|word| total - word.best + word.best_rest)
        .fold(f64::NEG_INFINITY, f64::max)
}

/// What the name pairs of three or four words settle.
enum NamePairs {
    /// The top `n`, made of the shortest pair's people.
    Settled(Vec<Ranked>),
    /// Not settled: the two words of the shortest pair list, and its people with their
    /// exact scores, so that they are not read again.
    Open {
        pair: (usize, usize),
        scored: BTreeSet<String>,
        ranked: Vec<Ranked>,
    },
    /// Every pair list was longer than CANDIDATE_POSTINGS.
    Cut,
}

/// The top `n` for three or four words when it is made of people with every word on a
/// paired name word ("Nikolai O'Brien", "Xenia de Vries"). Such a person has the pair
/// term of every two of the words, so is in the shortest pair's list, whatever the
/// length of the others ("o brien" and "de vries" are whole families). Those people
/// are scored exactly; they are the top `n` when the `n`-th scores above the best
/// anyone matching a word only through its rest can.
async fn rank_on_names<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    plans: &[WordPlan],
    words: &[TextWord],
    n: usize,
) -> Result<NamePairs, ApiError> {
    let mut shortest: Option<((usize, usize), BTreeSet<String>)> = None;
    for (i, first) in words.iter().enumerate() {
        for (j, second) in words.iter().enumerate().skip(i + 1) {
            let pair = pair_branches_of(first, second);
            let Some(people) = contacts_of_branches(db, tenant, &pair, CANDIDATE_POSTINGS).await?
            else {
                continue;
            };
            if shortest
                .as_ref()
                .is_none_or(|(_, s)| people.len() < s.len())
            {
                shortest = Some(((i, j), people));
            }
        }
    }
    let Some((pair, scored)) = shortest else {
        return Ok(NamePairs::Cut);
    };
    let mut ranked = score_people(db, tenant, &scored, plans).await?;
    sort_ranked(&mut ranked);
    if let Some(top) = top_if_settled(&ranked, n, best_with_a_rest(words)) {
        return Ok(NamePairs::Settled(top));
    }
    Ok(NamePairs::Open {
        pair,
        scored,
        ranked,
    })
}

/// The people in word `w`'s rest who have a posting of another word, found through the
/// first other word whose lists the database can intersect with it; `None` when none
/// can be. `others` orders the other words, the likeliest short first.
async fn rest_with_another<C: ConnectionTrait>(
    db: &C,
    lengths: &ListLengths,
    tenant: &str,
    words: &[TextWord],
    w: usize,
    others: &[usize],
) -> Result<Option<BTreeSet<String>>, ApiError> {
    if words[w].rest.is_empty() {
        return Ok(Some(BTreeSet::new()));
    }
    for &other in others {
        if let Some(found) =
            people_in_both(db, lengths, tenant, &words[w].rest, &words[other].all).await?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The contacts with a posting in `left` and one in `right` (lists of (term, field)),
/// when no list is longer than REST_POSTINGS and they are few.
async fn people_in_both<C: ConnectionTrait>(
    db: &C,
    lengths: &ListLengths,
    tenant: &str,
    left: &[(String, TermField)],
    right: &[(String, TermField)],
) -> Result<Option<BTreeSet<String>>, ApiError> {
    if left.is_empty() || right.is_empty() {
        return Ok(Some(BTreeSet::new()));
    }
    let both: Vec<(String, TermField)> = left.iter().chain(right).cloned().collect();
    if any_longer_than(db, lengths, tenant, &both, REST_POSTINGS).await?
        || too_many_in_common(lengths, tenant, left, right)
    {
        return Ok(None);
    }
    intersection(db, tenant, left, right).await
}

/// Whether the people with a posting in `left` and one in `right` are sure to be more
/// than [`intersection`] returns: a branch on both sides brings its whole list into
/// the intersection. Two words that complete to the same name ("Rosa Romano", whose
/// words both reach "romano") have such a branch; the statement would read every
/// list only to report too many people.
fn too_many_in_common(
    lengths: &ListLengths,
    tenant: &str,
    left: &[(String, TermField)],
    right: &[(String, TermField)],
) -> bool {
    left.iter()
        .filter(|branch| right.contains(branch))
        .any(|(term, field)| {
            lengths
                .known(tenant, term, *field)
                .is_some_and(|length| length > CANDIDATE_POSTINGS)
        })
}

/// The contacts with a posting in `left` and one in `right`, when they are few; the
/// lists' lengths are the caller's to check. The database intersects the lists, so
/// only the common contacts leave it. `INTERSECT` hashes both sides whatever the
/// planner guesses of them; a semi-join (`WHERE contact_id IN (…)`) was quicker on
/// long lists, but where a side is one list the planner guesses one row for it and
/// loops over the other side once per posting (RESULTS.md, fifteenth session).
async fn intersection<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    left: &[(String, TermField)],
    right: &[(String, TermField)],
) -> Result<Option<BTreeSet<String>>, ApiError> {
    if left.is_empty() || right.is_empty() {
        return Ok(Some(BTreeSet::new()));
    }
    let both: Vec<(String, TermField)> = left.iter().chain(right).cloned().collect();
    let side = |first: usize, count: usize, alias: &str| {
        format!(
            "SELECT {alias}p.contact_id FROM (VALUES {}) AS {alias}(term, field) \
             CROSS JOIN LATERAL (SELECT t.contact_id FROM contact_terms t \
             WHERE t.tenant_id = $1 AND t.term = {alias}.term AND t.field = {alias}.field) \
             AS {alias}p",
            values_rows(count, first, false)
        )
    };
    let sql = format!(
        "SELECT contact_id FROM ({} INTERSECT {}) AS common LIMIT $2",
        side(3, left.len(), "u"),
        side(3 + 2 * left.len(), right.len(), "v"),
    );
    let rows = query_branches(
        db,
        sql,
        vec![tenant.into(), (CANDIDATE_POSTINGS as i64 + 1).into()],
        &both,
    )
    .await?;
    contact_ids_up_to(&rows, CANDIDATE_POSTINGS)
}

/// Whether a branch has more than `limit` postings. A length counted lately is taken
/// from `lengths`; the others are counted, each up to `limit + 1`, and kept there.
async fn any_longer_than<C: ConnectionTrait>(
    db: &C,
    lengths: &ListLengths,
    tenant: &str,
    branches: &[(String, TermField)],
    limit: usize,
) -> Result<bool, ApiError> {
    let mut unknown: Vec<(String, TermField)> = Vec::new();
    for (term, field) in branches {
        match lengths.known(tenant, term, *field) {
            Some(length) if length > limit => return Ok(true),
            Some(_) => {}
            None => unknown.push((term.clone(), *field)),
        }
    }
    if unknown.is_empty() {
        return Ok(false);
    }
    let sql = format!(
        "SELECT b.term, b.field, (SELECT count(*) FROM (SELECT 1 FROM contact_terms t \
         WHERE t.tenant_id = $1 AND t.term = b.term AND t.field = b.field LIMIT $2) AS p) \
         FROM (VALUES {}) AS b(term, field)",
        values_rows(unknown.len(), 3, false)
    );
    let rows = query_branches(
        db,
        sql,
        vec![tenant.into(), (limit as i64 + 1).into()],
        &unknown,
    )
    .await?;
    let mut counted: Vec<(String, TermField, usize)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let term: String = row.try_get_by_index(0).map_err(ApiError::internal)?;
        let code: i16 = row.try_get_by_index(1).map_err(ApiError::internal)?;
        let length: i64 = row.try_get_by_index(2).map_err(ApiError::internal)?;
        if let Some(field) = TermField::from_code(code) {
            counted.push((term, field, usize::try_from(length).unwrap_or(usize::MAX)));
        }
    }
    lengths.remember(
        tenant,
        counted
            .iter()
            .map(|(term, field, length)| (term.as_str(), *field, *length)),
    );
    Ok(counted.iter().any(|(_, _, length)| *length > limit))
}

/// The best score of a contact matching one of two words only through its rest.
fn outside_pairs(a: &TextWord, b: &TextWord) -> f64 {
    (a.best_rest + b.best).max(a.best + b.best_rest)
}

/// The top `n` of `ranked` (best first) when its `n`-th scores above `bound`, the best
/// anyone not ranked can score.
fn top_if_settled(ranked: &[Ranked], n: usize, bound: f64) -> Option<Vec<Ranked>> {
    (n > 0 && ranked.len() >= n && ranked[n - 1].score > bound).then(|| ranked[..n].to_vec())
}

/// The people in one of two words' rest with any posting of the other, among those
/// who can score at least `floor` (the `n`-th score already known, or -∞); `None` when
/// a list is too long to intersect. The lists of both intersections are checked in one
/// statement (they share most branches), then the two run at once, each on its own
/// connection: this is the slow end of a search, and it waits for the longer of them
/// rather than for both.
async fn rest_matches<C: ConnectionTrait>(
    db: &C,
    lengths: &ListLengths,
    tenant: &str,
    a: &TextWord,
    b: &TextWord,
    floor: f64,
) -> Result<Option<BTreeSet<String>>, ApiError> {
    // Someone matching `a` only through its rest scores at most their best rest
    // posting of `a` plus `b.best`, and their best posting of `b` plus `a.best_rest`:
    // a posting that cannot reach the floor either way is not read (a weak typo's
    // completion beside a page of exact name pairs).
    let a_rest = reaching(&a.rest, &a.scores, b.best, floor);
    let b_all = reaching(&b.all, &b.scores, a.best_rest, floor);
    let a_all = reaching(&a.all, &a.scores, b.best_rest, floor);
    let b_rest = reaching(&b.rest, &b.scores, a.best, floor);
    let sides = [(&a_rest, &b_all), (&a_all, &b_rest)];
    let checked: BTreeSet<&(String, TermField)> = sides
        .iter()
        .filter(|(left, right)| !left.is_empty() && !right.is_empty())
        .flat_map(|(left, right)| left.iter().chain(right.iter()))
        .collect();
    let checked: Vec<(String, TermField)> = checked.into_iter().cloned().collect();
    if !checked.is_empty() && any_longer_than(db, lengths, tenant, &checked, REST_POSTINGS).await? {
        return Ok(None);
    }
    if sides
        .iter()
        .any(|(left, right)| too_many_in_common(lengths, tenant, left, right))
    {
        return Ok(None);
    }
    let [(a_rest, b_all), (a_all, b_rest)] = sides;
    let (a_rest, b_rest) = futures::try_join!(
        intersection(db, tenant, a_rest, b_all),
        intersection(db, tenant, a_all, b_rest),
    )?;
    Ok(a_rest.zip(b_rest).map(|(mut people, more)| {
        people.extend(more);
        people
    }))
}

/// The branches whose score, plus at most `others` from the other word, reaches
/// `floor`. Scores are sums of products of the same constants, so a small tolerance
/// keeps a tie at the floor.
fn reaching(
    branches: &[(String, TermField)],
    scores: &BTreeMap<(String, TermField), f64>,
    others: f64,
    floor: f64,
) -> Vec<(String, TermField)> {
    branches
        .iter()
        .filter(|branch| {
            scores
                .get(*branch)
                .is_some_and(|score| score + others >= floor - 1e-9)
        })
        .cloned()
        .collect()
}

/// The `n`-th best score of `ranked` (sorted best first), or -∞ when it has fewer.
fn nth_score(ranked: &[Ranked], n: usize) -> f64 {
    match n.checked_sub(1).and_then(|i| ranked.get(i)) {
        Some(r) => r.score,
        None => f64::NEG_INFINITY,
    }
}

/// `ranked` (the exact scores of `scored`) with every other candidate of `people`
/// scored, the top `n`; `None` when the candidates are too many.
async fn complete_ranking<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    plans: &[WordPlan],
    mut people: BTreeSet<String>,
    scored: &BTreeSet<String>,
    mut ranked: Vec<Ranked>,
    n: usize,
) -> Result<Option<Vec<Ranked>>, ApiError> {
    if people.len() > CANDIDATE_POSTINGS {
        return Ok(None);
    }
    people.retain(|id| !scored.contains(id));
    ranked.extend(score_people(db, tenant, &people, plans).await?);
    sort_ranked(&mut ranked);
    ranked.truncate(n);
    Ok(Some(ranked))
}

/// The word of a two-word query whose name pairs are read by prefix ranges: the one
/// with more completions in a name (not typos), when one has more than `PAIR_TERMS`
/// ("jonas jo", "anna mu", as a person types) or the two share one ("jamal ja": every
/// Jamal matches both words on one name word, which pairs cannot find).
fn ranged_word(plans: &[WordPlan], existing: &BTreeSet<(String, TermField)>) -> Option<usize> {
    let [first, second] = plans else {
        return None;
    };
    let in_names = |plan: &WordPlan| -> Option<BTreeSet<String>> {
        let WordPlan::Terms { quality, typos, .. } = plan else {
            return None;
        };
        Some(
            name_completions(quality, typos, existing, true)
                .into_iter()
                .cloned()
                .collect(),
        )
    };
    let (first, second) = (in_names(first)?, in_names(second)?);
    let many = first.len().max(second.len()) > PAIR_TERMS;
    let shared = !first.is_disjoint(&second);
    (many || shared).then_some(if second.len() > first.len() { 1 } else { 0 })
}

/// The contacts with a name-pair term starting with one of `starts`, up to `limit`;
/// `None` when there are more.
async fn contacts_in_pair_ranges<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    starts: &[String],
    limit: usize,
) -> Result<Option<BTreeSet<String>>, ApiError> {
    if starts.is_empty() {
        return Ok(Some(BTreeSet::new()));
    }
    let ranges = (0..starts.len())
        .map(|i| {
            let at = 3 + 2 * i;
            format!("(${at}::text, ${}::text)", at + 1)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let pair_fields = NAME_FIELDS
        .iter()
        .flat_map(|first| {
            NAME_FIELDS
                .iter()
                .filter_map(|second| TermField::name_pair(*first, *second))
        })
        .map(|field| field.code().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT p.contact_id FROM (VALUES {ranges}) AS b(start, stop) \
         CROSS JOIN LATERAL (SELECT t.contact_id FROM contact_terms t \
         WHERE t.tenant_id = $1 AND t.term >= b.start AND t.term < b.stop \
         AND t.field IN ({pair_fields}) LIMIT $2) AS p LIMIT $2"
    );
    let mut values: Vec<sea_orm::Value> = vec![tenant.into(), (limit as i64 + 1).into()];
    for start in starts {
        values.push(start.as_str().into());
        values.push(ranking::prefix_end(start).into());
    }
    let rows = query_postgres(db, sql, values).await?;
    contact_ids_up_to(&rows, limit)
}

/// The top `n` for two text words, one of which is read by ranges (`ranged_word`).
/// Pairing only eight completions would leave most people with both words on two name
/// words to the intersection of long lists ("jonas jo": every Jonas and every name
/// starting with "jo"), and a name word both words match has no pair term. Instead, the pair terms of the other word's
/// eight best completions followed by any completion of the typed word are prefix
/// ranges of the pair index ("jonas jo…"), read whole: everyone with both words on
/// two name words that way is scored exactly, and so are the first `n` of each name
/// word both words match ("jamal" for "jamal ja"); anyone else matches a word through
/// its rest (typos, other fields, weaker completions of the other word), which bounds
/// them as in `rank_text_words`. `None` when no word is ranged or the candidates are
/// more than CANDIDATE_POSTINGS.
async fn rank_two_words_by_ranges<C: ConnectionTrait>(
    db: &C,
    lengths: &ListLengths,
    tenant: &str,
    plans: &[WordPlan],
    existing: &BTreeSet<(String, TermField)>,
    n: usize,
) -> Result<Option<Vec<Ranked>>, ApiError> {
    let Some(r) = ranged_word(plans, existing) else {
        return Ok(None);
    };
    let WordPlan::Terms { typed, .. } = &plans[r] else {
        return Ok(None);
    };
    let Some(words) = text_words(plans, existing, Some(r)) else {
        return Ok(None);
    };
    if has_phone_prefix(&words) {
        return Ok(None);
    }
    let (a, b) = (&words[1 - r], &words[r]);
    let starts: Vec<String> = a
        .paired
        .iter()
        .map(|term| index::pair_term(term, typed))
        .collect();
    // A paired completion of both words ("jamal" for "jamal ja") matches both on one
    // name word: each (term, name field) is a branch of fixed score, whose first `n`
    // contacts by id hold its share of the top `n` (as for one word).
    let shared: Vec<(String, TermField)> = a
        .paired
        .intersection(&b.paired)
        .flat_map(|term| NAME_FIELDS.map(|field| (term.clone(), field)))
        .filter(|branch| existing.contains(branch))
        .collect();
    // Independent reads, at once on two connections.
    let (in_ranges, of_shared) = futures::try_join!(
        contacts_in_pair_ranges(db, tenant, &starts, CANDIDATE_POSTINGS),
        first_contacts_of_branches(db, tenant, &shared, n),
    )?;
    let Some(mut people) = in_ranges else {
        return Ok(None);
    };
    people.extend(of_shared);
    if people.len() > CANDIDATE_POSTINGS {
        return Ok(None);
    }
    let mut ranked = score_people(db, tenant, &people, plans).await?;
    sort_ranked(&mut ranked);
    if let Some(top) = top_if_settled(&ranked, n, outside_pairs(a, b)) {
        return Ok(Some(top));
    }
    let scored = people.clone();
    let floor = nth_score(&ranked, n);
    let Some(in_rest) = rest_matches(db, lengths, tenant, a, b, floor).await? else {
        return Ok(None);
    };
    people.extend(in_rest);
    complete_ranking(db, tenant, plans, people, &scored, ranked, n).await
}

/// The top `n` for two to four text words. A contact matching them all either has
/// two of them on two different name words (and so a pair term of their paired
/// completions) or matches one of them only through its rest:
/// - two words: the people of the pairs, scored exactly, are the top `n` when the
///   `n`-th scores above the best a contact matching a word only through its rest can
///   score; else those in one word's rest and any posting of the other are added;
/// - three or four words: the people of the shortest pair list when they settle the
///   page (`rank_on_names`); else those people and, for each of that pair's two words,
///   the people in its rest with a posting of another word.
async fn rank_text_words<C: ConnectionTrait>(
    db: &C,
    lengths: &ListLengths,
    tenant: &str,
    plans: &[WordPlan],
    words: &[TextWord],
    n: usize,
) -> Result<Option<Vec<Ranked>>, ApiError> {
    // Every candidate, those of them scored so far, and their scores.
    let (people, scored, ranked) = if let [a, b] = words {
        // A contact whose best match of both words is on two name words has the score
        // of that pair's branch; one missing from the first `n` of its branch has `n`
        // others ahead of it there. So the first `n` of each pair, scored exactly, hold
        // the top `n` of everyone but those matching a word only outside the pairs.
        let pairs = pair_branches_of(a, b);
        let scored = first_contacts_of_branches(db, tenant, &pairs, n).await?;
        let mut ranked = score_people(db, tenant, &scored, plans).await?;
        sort_ranked(&mut ranked);
        if let Some(top) = top_if_settled(&ranked, n, outside_pairs(a, b)) {
            return Ok(Some(top));
        }
        if has_phone_prefix(words) {
            return Ok(None);
        }
        // A contact outside the pairs matches one of the words through its rest.
        let (in_pairs, in_rest) = futures::try_join!(
            contacts_of_branches(db, tenant, &pairs, CANDIDATE_POSTINGS),
            rest_matches(db, lengths, tenant, a, b, nth_score(&ranked, n)),
        )?;
        let (Some(mut people), Some(in_rest)) = (in_pairs, in_rest) else {
            return Ok(None);
        };
        people.extend(in_rest);
        (people, scored, ranked)
    } else {
        if has_phone_prefix(words) {
            return Ok(None);
        }
        let (pair, scored, ranked) = match rank_on_names(db, tenant, plans, words, n).await? {
            NamePairs::Settled(ranked) => return Ok(Some(ranked)),
            NamePairs::Cut => return Ok(None),
            NamePairs::Open {
                pair,
                scored,
                ranked,
            } => (pair, scored, ranked),
        };
        // Someone outside the shortest pair's list has one of its two words off a
        // paired name word, so in that word's rest, and a posting of every other word.
        let (a, b) = pair;
        let others = |partner: usize| -> Vec<usize> {
            std::iter::once(partner)
                .chain((0..words.len()).filter(|&o| o != a && o != b))
                .collect()
        };
        let (others_of_a, others_of_b) = (others(b), others(a));
        let (a_rest, b_rest) = futures::try_join!(
            rest_with_another(db, lengths, tenant, words, a, &others_of_a),
            rest_with_another(db, lengths, tenant, words, b, &others_of_b),
        )?;
        let (Some(a_rest), Some(b_rest)) = (a_rest, b_rest) else {
            return Ok(None);
        };
        let mut people = scored.clone();
        people.extend(a_rest);
        people.extend(b_rest);
        (people, scored, ranked)
    };
    complete_ranking(db, tenant, plans, people, &scored, ranked, n).await
}

/// Every contact matching a prefix word, when they are few.
async fn people_matching_prefix<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    plan: &WordPlan,
) -> Result<Option<BTreeSet<String>>, ApiError> {
    let WordPlan::Prefix { start, field } = plan else {
        return Ok(None);
    };
    let (postings, cut) = prefix_postings(db, tenant, start, *field, CANDIDATE_POSTINGS).await?;
    Ok((!cut).then(|| postings.into_iter().map(|(id, _)| id).collect()))
}

/// The given people scored on every word from their terms; those missing a word are
/// left out.
async fn score_people<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    people: &BTreeSet<String>,
    plans: &[WordPlan],
) -> Result<Vec<Ranked>, ApiError> {
    if people.is_empty() {
        return Ok(Vec::new());
    }
    let select = Query::select()
        .columns([ContactTermSets::ContactId, ContactTermSets::Terms])
        .from(ContactTermSets::Table)
        .and_where(Expr::col(ContactTermSets::TenantId).eq(tenant))
        .and_where(any_text(
            db.get_database_backend(),
            Expr::col(ContactTermSets::ContactId),
            people.iter().map(String::as_str),
        ))
        .to_owned();
    let rows = db.query_all(&select).await.map_err(db_error)?;
    // One term set per contact: its best score of each word, summed.
    let mut ranked = Vec::with_capacity(rows.len());
    for row in rows {
        let contact_id: String = row.try_get_by_index(0).map_err(ApiError::internal)?;
        let terms: String = row.try_get_by_index(1).map_err(ApiError::internal)?;
        let mut best = vec![None; plans.len()];
        for (term, field) in index::decode_term_set(&terms)? {
            for (plan, best_score) in plans.iter().zip(best.iter_mut()) {
                if let Some(score) = plan.score(&term, field) {
                    *best_score = Some(best_score.map_or(score, |b: f64| b.max(score)));
                }
            }
        }
        if let Some(score) = best.into_iter().sum::<Option<f64>>() {
            ranked.push(Ranked { contact_id, score });
        }
    }
    Ok(ranked)
}

/// The top `n` contacts for the plans, scored as sums over the words; `None` when
/// this would read too many postings.
pub(super) async fn rank<C: ConnectionTrait>(
    db: &C,
    lengths: &ListLengths,
    tenant: &str,
    plans: &[WordPlan],
    n: usize,
) -> Result<Option<Vec<Ranked>>, ApiError> {
    if plans.is_empty() || plans.iter().any(WordPlan::is_empty) {
        return Ok(Some(Vec::new()));
    }
    if let [plan] = plans {
        return rank_one_word(db, tenant, plan, n).await;
    }
    let mut ranked = if let Some(prefix) = plans
        .iter()
        .find(|plan| matches!(plan, WordPlan::Prefix { .. }))
    {
        let Some(people) = people_matching_prefix(db, tenant, prefix).await? else {
            return Ok(None);
        };
        let mut ranked = score_people(db, tenant, &people, plans).await?;
        sort_ranked(&mut ranked);
        ranked.truncate(n);
        ranked
    } else {
        // Beyond four words the pairs of every two would be many statements' worth.
        if plans.len() > 4 {
            return Ok(None);
        }
        let branches: Vec<(String, TermField)> = plans.iter().flat_map(word_branches).collect();
        let existing = existing_branches(db, tenant, &branches).await?;
        if let Some(ranked) =
            rank_two_words_by_ranges(db, lengths, tenant, plans, &existing, n).await?
        {
            ranked
        } else {
            let Some(words) = text_words(plans, &existing, None) else {
                return Ok(None);
            };
            let Some(ranked) = rank_text_words(db, lengths, tenant, plans, &words, n).await? else {
                return Ok(None);
            };
            ranked
        }
    };
    // The mean over the words, as `SearchApi::rank_with` gives it.
    let count = plans.len() as f64;
    for r in &mut ranked {
        r.score /= count;
    }
    Ok(Some(ranked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_are_best_first() {
        let quality: BTreeMap<String, f64> =
            [("anna".to_owned(), 1.0), ("annabel".to_owned(), 0.8)].into();
        let branches = text_branches(&quality);
        assert_eq!(branches.len(), 2 * TEXT_FIELDS.len());
        assert_eq!(branches[0].term, "anna");
        assert_eq!(branches[0].field, TermField::FamilyName);
        assert!(branches.windows(2).all(|w| w[0].score >= w[1].score));
    }

    fn word(best: f64, best_rest: f64) -> TextWord {
        TextWord {
            paired: BTreeSet::new(),
            all: Vec::new(),
            rest: Vec::new(),
            scores: BTreeMap::new(),
            phone_prefix: None,
            best,
            best_rest,
        }
    }

    #[test]
    fn a_long_list_on_both_sides_settles_an_intersection_unread() {
        let lengths = ListLengths::new();
        let branch = |term: &str, field| (term.to_owned(), field);
        lengths.remember(
            "t",
            [
                ("romano", TermField::FamilyName, CANDIDATE_POSTINGS + 1),
                ("rosa", TermField::GivenName, CANDIDATE_POSTINGS),
                ("rossi", TermField::FamilyName, REST_POSTINGS + 1),
            ],
        );
        let left = [
            branch("romano", TermField::FamilyName),
            branch("rosa", TermField::GivenName),
            branch("rossi", TermField::FamilyName),
            branch("romanoli", TermField::EmailWord),
        ];
        let cases = [
            // On both sides and longer than an intersection returns.
            ("t", vec![branch("romano", TermField::FamilyName)], true),
            // On both sides, but short enough, or of unknown length.
            (
                "t",
                vec![
                    branch("rosa", TermField::GivenName),
                    branch("romanoli", TermField::EmailWord),
                ],
                false,
            ),
            // The same term in another field is another list.
            ("t", vec![branch("rossi", TermField::EmailWord)], false),
            // Another tenant's lengths say nothing.
            ("u", vec![branch("romano", TermField::FamilyName)], false),
        ];
        for (tenant, right, settled) in cases {
            assert_eq!(
                too_many_in_common(&lengths, tenant, &left, &right),
                settled,
                "{tenant}: {right:?}"
            );
        }
    }

    #[test]
    fn only_postings_that_can_reach_the_floor_are_read() {
        let branches = vec![
            ("vera".to_owned(), TermField::EmailWord),
            ("vertex".to_owned(), TermField::EmailWord),
            ("verena".to_owned(), TermField::Tag),
        ];
        let scores: BTreeMap<(String, TermField), f64> =
            branches.iter().cloned().zip([0.9, 0.45, 0.95]).collect();
        // With the other word at best 1.0, a floor of 1.9 keeps 0.9 (a tie) and 0.95.
        let kept = reaching(&branches, &scores, 1.0, 1.9);
        assert_eq!(kept, vec![branches[0].clone(), branches[2].clone()]);
        // Without a floor every posting is read.
        assert_eq!(
            reaching(&branches, &scores, 0.0, f64::NEG_INFINITY),
            branches
        );
    }

    #[test]
    fn the_floor_is_the_nth_score_once_there_are_n() {
        let ranked: Vec<Ranked> = [1.95, 1.9, 1.5]
            .iter()
            .enumerate()
            .map(|(i, score)| Ranked {
                contact_id: format!("c{i}"),
                score: *score,
            })
            .collect();
        assert_eq!(nth_score(&ranked, 2), 1.9);
        assert_eq!(nth_score(&ranked, 3), 1.5);
        assert_eq!(nth_score(&ranked, 4), f64::NEG_INFINITY);
        assert_eq!(nth_score(&ranked, 0), f64::NEG_INFINITY);
    }

    #[test]
    fn a_rest_costs_the_word_it_is_cheapest_for() {
        // Best on names 0.95 + 1 + 1; through a rest at best 0.7, 0.8 or nothing.
        let words = [word(0.95, 0.7), word(1.0, 0.8), word(1.0, 0.0)];
        let bound = best_with_a_rest(&words);
        assert!((bound - (0.95 + 0.8 + 1.0)).abs() < 1e-9, "{bound}");
    }

    fn typed(word: &str, completions: &[&str], typos: &[&str]) -> WordPlan {
        WordPlan::Terms {
            typed: word.into(),
            quality: completions
                .iter()
                .chain(typos)
                .map(|t| ((*t).to_owned(), 0.7))
                .collect(),
            typos: typos.iter().map(|t| (*t).to_owned()).collect(),
            phone_prefix: None,
        }
    }

    #[test]
    fn the_ranged_word_has_many_name_completions_or_shares_one() {
        let many: Vec<String> = (0..10).map(|i| format!("jo{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut existing: BTreeSet<(String, TermField)> = many
            .iter()
            .map(|t| ((*t).to_owned(), TermField::GivenName))
            .collect();
        existing.insert(("jonas".into(), TermField::FamilyName));
        let jonas = typed("jonas", &["jonas"], &[]);
        let jo = typed("jo", &many, &[]);
        assert_eq!(
            ranged_word(&[jonas.clone(), jo.clone()], &existing),
            Some(1)
        );
        assert_eq!(
            ranged_word(&[jo.clone(), jonas.clone()], &existing),
            Some(0)
        );
        // Typo matches and completions outside the names do not count.
        let few = typed("jo", &many[..PAIR_TERMS], &many[PAIR_TERMS..]);
        assert_eq!(ranged_word(&[jonas.clone(), few], &existing), None);
        let unnamed = typed(
            "jo",
            &[
                "joa", "job", "joc", "jod", "joe", "jof", "jog", "joh", "joi",
            ],
            &[],
        );
        assert_eq!(ranged_word(&[jonas.clone(), unnamed], &existing), None);
        // A completion both words share.
        existing.insert(("jamal".into(), TermField::GivenName));
        existing.insert(("janssen".into(), TermField::FamilyName));
        let jamal = typed("jamal", &["jamal"], &[]);
        let ja = typed("ja", &["jamal", "janssen"], &[]);
        assert_eq!(ranged_word(&[jamal.clone(), ja], &existing), Some(1));
        let janssen = typed("janssen", &["janssen"], &[]);
        assert_eq!(ranged_word(&[jamal, janssen], &existing), None);
        // Only two-word queries.
        assert_eq!(
            ranged_word(&[jonas.clone(), jo.clone(), jonas], &existing),
            None
        );
    }

    #[test]
    fn values_lists_number_their_parameters() {
        assert_eq!(
            values_rows(2, 3, true),
            "($3::text, $4::int2, $5::float8), ($6::text, $7::int2, $8::float8)"
        );
        assert_eq!(values_rows(1, 3, false), "($3::text, $4::int2)");
    }

    #[test]
    fn merging_keeps_each_contact_at_its_best() {
        let ranked = vec![
            Ranked {
                contact_id: "b".into(),
                score: 0.5,
            },
            Ranked {
                contact_id: "a".into(),
                score: 0.4,
            },
        ];
        let more = [Ranked {
            contact_id: "a".into(),
            score: 0.9,
        }];
        let merged = merge_best(ranked, &more);
        assert_eq!(merged[0].contact_id, "a");
        assert_eq!(merged[0].score, 0.9);
        assert_eq!(merged.len(), 2);
    }
}
