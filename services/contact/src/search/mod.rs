//! Ranked, prefix- and typo-tolerant contact search over the terms index.
//!
//! Each query word is looked up in the tenant's vocabulary (names, email words and
//! tags) by its first characters, matched exactly, as a prefix or within a typo or
//! two; email addresses and phone numbers are matched by prefix directly. A contact
//! must match every word; its score is the mean of its best match per word, weighted by
//! the field that matched. The database ranks: one statement takes each word's best
//! score per contact from `contact_terms` and joins the words, so only the top ids
//! leave it, however many people share a common name.

mod lengths;
mod postings;
pub mod ranking;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sea_orm::sea_query::{
    Alias, CaseStatement, Condition, Expr, ExprTrait, Func, JoinType, Order, Query,
    SelectStatement, SimpleExpr, UnionType,
};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QuerySelect};
use tonic::{Request, Response, Status};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::errors::from_db;
use crm_platform::lookup::any_text;
use crm_platform::pagination::{self, PageTokens};
use crm_proto::contact::*;

use crate::context::Context;
use crate::index::migration::{ContactTerms, SearchVocabulary};
use crate::index::{self, TermField};
use crate::store::contact_row;

/// At most this many query words count.
const MAX_WORDS: usize = 8;
const MAX_QUERY_CHARS: usize = 200;
/// The ranked candidates a query considers; pages beyond them are empty.
const MAX_CANDIDATES: usize = 1_000;
/// Vocabulary terms a typo-tolerant lookup reads for one word.
const VOCABULARY_SCAN: u64 = 20_000;
/// Terms per query word whose postings are read (the best ones).
const TERMS_PER_WORD: usize = 64;

pub struct SearchApi {
    ctx: Context,
    /// Posting-list lengths counted lately, shared by this process's searches.
    lengths: lengths::ListLengths,
}

/// A ranked contact.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub contact_id: String,
    pub score: f64,
}

fn field_weight(field: TermField) -> f64 {
    match field {
        TermField::Email | TermField::Phone => 1.0,
        TermField::FamilyName => 1.0,
        TermField::GivenName => 0.95,
        TermField::Tag => 0.8,
        TermField::EmailWord => 0.7,
        TermField::EmailDomain => 0.6,
        // Keys for duplicate finding and name pairs, never matched one word at a time.
        TermField::NameAtDomain
        | TermField::NameInAccount
        | TermField::GivenGivenPair
        | TermField::GivenFamilyPair
        | TermField::FamilyGivenPair
        | TermField::FamilyFamilyPair => 0.0,
    }
}

/// What kind of lookup a query word needs.
enum Word {
    /// Digits of a phone number (at least 3).
    Phone(String),
    /// An email address or its start.
    Email(String),
    Text(String),
}

/// Splits a query into words: a query that looks like a phone number is one word of
/// digits; otherwise words are split as the index splits them.
fn query_words(query: &str) -> Vec<Word> {
    let phone_like = query
        .chars()
        .all(|c| c.is_ascii_digit() || " +-()./".contains(c));
    let digits = index::phone_digits(query);
    if phone_like && digits.len() >= 3 {
        return vec![Word::Phone(digits)];
    }
    let mut words = Vec::new();
    for raw in query.split_whitespace() {
        if raw.contains('@') {
            words.push(Word::Email(index::fold(raw)));
            continue;
        }
        words.extend(index::words(raw).map(Word::Text));
    }
    words.truncate(MAX_WORDS);
    words
}

/// How one query word finds and scores `contact_terms` rows, in SQL (to rank) and in
/// Rust (to tell which fields of a shown contact matched); both give the same scores.
#[derive(Debug, Clone)]
enum WordPlan {
    /// Vocabulary terms with their match quality, in the name, email-word and tag
    /// fields; digits typed as text may also start a phone number.
    Terms {
        /// The word as typed (folded): every match that is not a typo starts with it.
        typed: String,
        /// Ordered, so that the same query gives the same SQL (and a cached statement).
        quality: BTreeMap<String, f64>,
        /// The terms of `quality` that matched only within a typo.
        typos: BTreeSet<String>,
        phone_prefix: Option<String>,
    },
    /// Terms of one field starting with `start` (email addresses, phone digits).
    Prefix { start: String, field: TermField },
}

/// The fields a text word is looked up in.
const TEXT_FIELDS: [TermField; 4] = [
    TermField::GivenName,
    TermField::FamilyName,
    TermField::EmailWord,
    TermField::Tag,
];

/// Quality of a prefix (not exact) match on an address or number.
const PREFIX_QUALITY: f64 = 0.8;

impl WordPlan {
    /// The plan without its typo matches, when it has others; `None` when it would be
    /// the same plan.
    fn without_typos(&self) -> Option<WordPlan> {
        let Self::Terms {
            typed,
            quality,
            typos,
            phone_prefix,
        } = self
        else {
            return None;
        };
        if typos.is_empty() || typos.len() == quality.len() {
            return None;
        }
        Some(Self::Terms {
            typed: typed.clone(),
            quality: quality
                .iter()
                .filter(|(term, _)| !typos.contains(*term))
                .map(|(term, q)| (term.clone(), *q))
                .collect(),
            typos: BTreeSet::new(),
            phone_prefix: phone_prefix.clone(),
        })
    }

    /// The score of one term of a contact for this word, if it matches.
    fn score(&self, term: &str, field: TermField) -> Option<f64> {
        match self {
            Self::Terms {
                quality,
                phone_prefix,
                ..
            } => {
                if field == TermField::Phone {
                    return phone_prefix
                        .as_deref()
                        .filter(|prefix| term.starts_with(prefix))
                        .map(|_| PREFIX_QUALITY * field_weight(field));
                }
                if !TEXT_FIELDS.contains(&field) {
                    return None;
                }
                quality.get(term).map(|q| q * field_weight(field))
            }
            Self::Prefix { start, field: own } => {
                (field == *own && term.starts_with(start.as_str())).then(|| {
                    let quality = if term == start { 1.0 } else { PREFIX_QUALITY };
                    quality * field_weight(field)
                })
            }
        }
    }

    /// Whether a word can match anything at all.
    fn is_empty(&self) -> bool {
        matches!(self, Self::Terms { quality, phone_prefix, .. } if quality.is_empty() && phone_prefix.is_none())
    }

    /// The rows of `contact_terms` this word matches.
    fn condition(&self) -> Condition {
        match self {
            Self::Terms {
                quality,
                phone_prefix,
                ..
            } => {
                let mut any = Condition::any();
                if !quality.is_empty() {
                    any = any.add(
                        Condition::all()
                            .add(term_column().is_in(quality.keys().map(String::as_str)))
                            .add(field_column().is_in(TEXT_FIELDS.map(TermField::code))),
                    );
                }
                if let Some(prefix) = phone_prefix {
                    any = any.add(prefix_condition(prefix, TermField::Phone));
                }
                any
            }
            Self::Prefix { start, field } => Condition::all().add(prefix_condition(start, *field)),
        }
    }

    /// The SQL expression of [`WordPlan::score`] over the matched rows.
    fn score_expr(&self) -> SimpleExpr {
        match self {
            Self::Terms {
                quality,
                phone_prefix,
                ..
            } => {
                let mut qualities = CaseStatement::new();
                for (text, q) in quality {
                    qualities = qualities.case(term_column().eq(text.as_str()), *q);
                }
                let mut weights = CaseStatement::new();
                for f in TEXT_FIELDS {
                    weights = weights.case(field_column().eq(f.code()), field_weight(f));
                }
                let qualities: SimpleExpr = qualities.finally(0.0).into();
                let weights: SimpleExpr = weights.finally(0.0).into();
                let text_score = qualities.mul(weights);
                if phone_prefix.is_some() {
                    let phone = PREFIX_QUALITY * field_weight(TermField::Phone);
                    CaseStatement::new()
                        .case(field_column().eq(TermField::Phone.code()), phone)
                        .finally(text_score)
                        .into()
                } else {
                    text_score
                }
            }
            Self::Prefix { start, field: own } => CaseStatement::new()
                .case(term_column().eq(start.as_str()), field_weight(*own))
                .finally(PREFIX_QUALITY * field_weight(*own))
                .into(),
        }
    }

    /// Per contact, its best score for this word: `(contact_id, s)`.
    fn best_per_contact(&self, tenant: &str) -> SelectStatement {
        Query::select()
            .column(ContactTerms::ContactId)
            .expr_as(Func::max(self.score_expr()), Alias::new("s"))
            .from(ContactTerms::Table)
            .and_where(Expr::col(ContactTerms::TenantId).eq(tenant))
            .cond_where(self.condition())
            .group_by_col(ContactTerms::ContactId)
            .to_owned()
    }
}

fn term_column() -> SimpleExpr {
    Expr::col(ContactTerms::Term)
}

fn field_column() -> SimpleExpr {
    Expr::col(ContactTerms::Field)
}

/// `term` starts with `prefix`, in `field`: a range scan of the terms index.
fn prefix_condition(prefix: &str, field: TermField) -> Condition {
    Condition::all()
        .add(term_column().gte(prefix))
        .add(term_column().lt(ranking::prefix_end(prefix)))
        .add(field_column().eq(field.code()))
}

impl SearchApi {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            lengths: lengths::ListLengths::new(),
        }
    }

    /// Vocabulary terms that match `word`, best first.
    async fn matching_terms(
        &self,
        tenant: &str,
        word: &str,
    ) -> Result<Vec<(String, ranking::TermMatch)>, ApiError> {
        let term = || Expr::col(SearchVocabulary::Term);
        let terms_where = |condition: Condition, alias: &str| {
            Query::select()
                .column(SearchVocabulary::Term)
                .from_subquery(
                    Query::select()
                        .column(SearchVocabulary::Term)
                        .from(SearchVocabulary::Table)
                        .and_where(Expr::col(SearchVocabulary::TenantId).eq(tenant))
                        .cond_where(condition)
                        .limit(VOCABULARY_SCAN)
                        .to_owned(),
                    Alias::new(alias),
                )
                .to_owned()
        };
        let starting_with = |start: &str| {
            Condition::all()
                .add(term().gte(start))
                .add(term().lt(ranking::prefix_end(start)))
        };
        let chars = word.chars().count();
        let budget = ranking::typo_budget(chars);
        // The word itself and its completions; with a typo budget, also the terms
        // under the anchor whose length a typo (or a typo in a completion) allows, one
        // range of `search_vocabulary_by_length` per length: most terms under a letter
        // are longer words that a scan of the letter would read only to drop.
        let mut select = terms_where(starting_with(word), "completions");
        if budget > 0 {
            let lengths = (chars - budget)..=(chars + budget.max(ranking::PREFIX_TYPO_REACH));
            let length = SimpleExpr::from(Func::cust(Alias::new("length")).arg(term()));
            let near =
                starting_with(&ranking::anchor(word)).add(length.is_in(lengths.map(|n| n as i64)));
            select.union(UnionType::All, terms_where(near, "near"));
        }
        let rows = self
            .ctx
            .db
            .query_all(&select)
            .await
            .map_err(|e| from_db(e, "contacts"))?;
        let mut matched = Vec::new();
        let mut seen = BTreeSet::new();
        for row in rows {
            let term: String = row.try_get_by_index(0).map_err(ApiError::internal)?;
            // A completion of the length a typo allows is in both ranges.
            if !seen.insert(term.clone()) {
                continue;
            }
            if let Some(m) = ranking::match_term(word, &term) {
                matched.push((term, m));
            }
        }
        matched.sort_by(|a, b| {
            b.1.quality
                .total_cmp(&a.1.quality)
                .then_with(|| a.0.cmp(&b.0))
        });
        matched.truncate(TERMS_PER_WORD);
        Ok(matched)
    }

    /// How each word of the query is looked up.
    async fn plans(&self, tenant: &str, words: &[Word]) -> Result<Vec<WordPlan>, ApiError> {
        let mut plans = Vec::with_capacity(words.len());
        for word in words {
            plans.push(match word {
                Word::Phone(digits) => WordPlan::Prefix {
                    start: digits.clone(),
                    field: TermField::Phone,
                },
                Word::Email(address) => WordPlan::Prefix {
                    start: address.clone(),
                    field: TermField::Email,
                },
                Word::Text(text) => {
                    let matched = self.matching_terms(tenant, text).await?;
                    WordPlan::Terms {
                        typed: text.clone(),
                        typos: matched
                            .iter()
                            .filter(|(_, m)| m.typo)
                            .map(|(term, _)| term.clone())
                            .collect(),
                        quality: matched
                            .into_iter()
                            .map(|(term, m)| (term, m.quality))
                            .collect(),
                        phone_prefix: (text.len() >= 3 && text.chars().all(|c| c.is_ascii_digit()))
                            .then(|| text.clone()),
                    }
                }
            });
        }
        Ok(plans)
    }

    /// Contacts matching every word, best first (at most MAX_CANDIDATES), and the plans
    /// that ranked them. Typo matches are looked at only when the words as typed (and
    /// their completions) find fewer than MAX_CANDIDATES people: in a large tenant a
    /// short word's near misses are many common names, each with a long postings list,
    /// and would all be read to rank people below those the word already found.
    ///
    /// With two or more words the two rankings run at once, each on its own
    /// connection: people must match every word as typed, so the strict ranking rarely
    /// fills MAX_CANDIDATES and the one with typos is the answer; waiting for the strict
    /// one first made these the slowest searches ("Rosa Romano", whose words reach each
    /// other's names within a typo). One word's strict ranking often fills it (a common
    /// first name), so it still runs first and alone.
    async fn rank(
        &self,
        tenant: &str,
        plans: Vec<WordPlan>,
        wanted: usize,
    ) -> Result<(Vec<Ranked>, Vec<WordPlan>), ApiError> {
        if self.ctx.db.get_database_backend() == DbBackend::Postgres
            && let Some(found) =
                postings::rank(&self.ctx.db, &self.lengths, tenant, &plans, wanted).await?
        {
            return Ok((found, plans));
        }
        let without_typos: Vec<Option<WordPlan>> =
            plans.iter().map(WordPlan::without_typos).collect();
        if without_typos.iter().any(Option::is_some) {
            let strict: Vec<WordPlan> = without_typos
                .into_iter()
                .zip(&plans)
                .map(|(strict, plan)| strict.unwrap_or_else(|| plan.clone()))
                .collect();
            if plans.len() > 1 {
                let (found_strict, found) = futures::try_join!(
                    self.rank_with(tenant, &strict),
                    self.rank_with(tenant, &plans),
                )?;
                return Ok(if found_strict.len() >= MAX_CANDIDATES {
                    (found_strict, strict)
                } else {
                    (found, plans)
                });
            }
            let found = self.rank_with(tenant, &strict).await?;
            if found.len() >= MAX_CANDIDATES {
                return Ok((found, strict));
            }
        }
        let found = self.rank_with(tenant, &plans).await?;
        Ok((found, plans))
    }

    /// [`SearchApi::rank`] with the given plans, by the database: per word the best
    /// score of each contact, joined across the words, so that only the ranked ids leave
    /// it, whatever the number of postings.
    async fn rank_with(&self, tenant: &str, plans: &[WordPlan]) -> Result<Vec<Ranked>, ApiError> {
        if plans.is_empty() || plans.iter().any(WordPlan::is_empty) {
            return Ok(Vec::new());
        }
        let alias = |i: usize| Alias::new(format!("w{i}"));
        let column = |i: usize, name: &str| Expr::col((alias(i), Alias::new(name)));
        let mut total: SimpleExpr = column(0, "s");
        for i in 1..plans.len() {
            total = total.add(column(i, "s"));
        }
        let mut select = Query::select();
        select
            .expr_as(column(0, "contact_id"), Alias::new("contact_id"))
            .expr_as(total.clone(), Alias::new("score"))
            .from_subquery(plans[0].best_per_contact(tenant), alias(0));
        for (i, plan) in plans.iter().enumerate().skip(1) {
            select.join_subquery(
                JoinType::InnerJoin,
                plan.best_per_contact(tenant),
                alias(i),
                column(i, "contact_id").equals((alias(0), Alias::new("contact_id"))),
            );
        }
        select
            .order_by_expr(total, Order::Desc)
            .order_by_expr(column(0, "contact_id"), Order::Asc)
            .limit(MAX_CANDIDATES as u64);
        let rows = self
            .ctx
            .db
            .query_all(&select)
            .await
            .map_err(|e| from_db(e, "contacts"))?;
        let count = plans.len() as f64;
        rows.iter()
            .map(|row| {
                let contact_id: String = row.try_get_by_index(0).map_err(ApiError::internal)?;
                let score: f64 = row.try_get_by_index(1).map_err(ApiError::internal)?;
                Ok(Ranked {
                    contact_id,
                    score: score / count,
                })
            })
            .collect()
    }

    /// The Contact fields of the best match of each word, as the ranking scored them.
    fn matched_fields(contact: &Contact, plans: &[WordPlan]) -> BTreeSet<&'static str> {
        let terms = index::terms(contact);
        plans
            .iter()
            .filter_map(|plan| {
                terms
                    .iter()
                    .filter_map(|(term, field)| plan.score(term, *field).map(|s| (s, *field)))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, field)| field.contact_field())
            })
            .collect()
    }

    pub async fn search_contacts(
        &self,
        request: Request<SearchContactsRequest>,
    ) -> Result<Response<SearchContactsResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let query = request.query.trim();
        if query.is_empty() {
            return Err(ApiError::invalid("query", "is required").into());
        }
        if query.chars().count() > MAX_QUERY_CHARS || query.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "query",
                format!("at most {MAX_QUERY_CHARS} characters, no control characters"),
            )
            .into());
        }
        let page_size = pagination::page_size(request.page_size, 20, 100)? as usize;
        let condition =
            crate::grpc::contact_filter(&request.filter, self.ctx.filter_scope(&caller.tenant))?;
        let fingerprint = PageTokens::fingerprint(&[query, &request.filter]);
        let offset =
            self.ctx
                .tokens
                .decode_offset(&request.page_token, &caller.tenant, &fingerprint)?;

        let plans = self.plans(&caller.tenant, &query_words(query)).await?;
        // Without a filter the ranking needs this page and one more to tell whether a
        // next page exists; a filter drops ranked ids, so it ranks all candidates.
        let wanted = if condition.is_some() {
            MAX_CANDIDATES
        } else {
            (offset + page_size + 1).min(MAX_CANDIDATES)
        };
        let (ranked, plans) = self.rank(&caller.tenant, plans, wanted).await?;
        // Only live contacts have terms, so the ranking holds no others; a filter is
        // checked on the ranked ids.
        let ranked: Vec<Ranked> = match condition {
            None => ranked,
            Some(condition) => {
                let ids: Vec<&str> = ranked.iter().map(|r| r.contact_id.as_str()).collect();
                let visible: BTreeSet<String> = contact_row::Entity::find()
                    .select_only()
                    .column(contact_row::Column::Id)
                    .filter(contact_row::Column::TenantId.eq(caller.tenant.as_str()))
                    .filter(any_text(
                        self.ctx.db.get_database_backend(),
                        Expr::col(contact_row::Column::Id),
                        ids,
                    ))
                    .filter(condition)
                    .into_tuple::<String>()
                    .all(&self.ctx.db)
                    .await
                    .map_err(|e| from_db(e, "contacts"))?
                    .into_iter()
                    .collect();
                ranked
                    .into_iter()
                    .filter(|r| visible.contains(&r.contact_id))
                    .collect()
            }
        };
        let page: Vec<&Ranked> = ranked.iter().skip(offset).take(page_size).collect();
        let page_ids: Vec<String> = page.iter().map(|r| r.contact_id.clone()).collect();
        let stored = self
            .ctx
            .contacts
            .get_many(&caller.tenant, &page_ids)
            .await?;
        let mut by_id: HashMap<String, Contact> = stored
            .into_iter()
            .map(|s| {
                let id = s.contact.name.trim_start_matches("contacts/").to_owned();
                (id, s.contact)
            })
            .collect();
        let results = page
            .iter()
            .filter_map(|r| {
                by_id
                    .remove(&r.contact_id)
                    .map(|contact| SearchContactsResult {
                        matched_fields: Self::matched_fields(&contact, &plans)
                            .into_iter()
                            .map(str::to_owned)
                            .collect(),
                        contact: Some(contact),
                        score: (r.score * 1000.0).round() / 1000.0,
                    })
            })
            .collect();
        let next_page_token = self.ctx.tokens.encode_offset(
            &caller.tenant,
            &fingerprint,
            offset + page_size,
            ranked.len(),
        )?;
        Ok(Response::new(SearchContactsResponse {
            results,
            next_page_token,
        }))
    }
}
