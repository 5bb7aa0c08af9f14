//! Ranked, prefix- and typo-tolerant contact search over the terms index.
//!
//! Each query word is looked up in the tenant's vocabulary (names, email words and
//! tags) by its first characters, matched exactly, as a prefix or within a typo or
//! two, and its matching terms are looked up in `contact_terms`; email addresses and
//! phone numbers are looked up by prefix directly. A contact must match every word; its
//! score is the mean of its best match per word, weighted by the field that matched.

pub mod ranking;

use std::collections::{BTreeSet, HashMap};

use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use tonic::{Request, Response, Status};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::errors::from_db;
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
const POSTINGS_PER_WORD: u64 = 20_000;

pub struct SearchApi {
    ctx: Context,
}

/// One contact's best match for one query word.
#[derive(Debug, Clone, Copy)]
struct Hit {
    score: f64,
    field: TermField,
}

/// A ranked contact with the fields that matched.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub contact_id: String,
    pub score: f64,
    pub fields: BTreeSet<&'static str>,
}

fn field_weight(field: TermField) -> f64 {
    match field {
        TermField::Email | TermField::Phone => 1.0,
        TermField::FamilyName => 1.0,
        TermField::GivenName => 0.95,
        TermField::Tag => 0.8,
        TermField::EmailWord => 0.7,
        TermField::EmailDomain => 0.6,
        // Keys for duplicate finding, never searched.
        TermField::NameAtDomain | TermField::NameInAccount => 0.0,
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

impl SearchApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// Terms starting with `prefix`, from `contact_terms` (for addresses and numbers).
    async fn postings_by_prefix(
        &self,
        tenant: &str,
        prefix: &str,
        fields: &[TermField],
    ) -> Result<Vec<(String, TermField, String)>, ApiError> {
        let select = Query::select()
            .columns([
                ContactTerms::Term,
                ContactTerms::Field,
                ContactTerms::ContactId,
            ])
            .from(ContactTerms::Table)
            .and_where(Expr::col(ContactTerms::TenantId).eq(tenant))
            .and_where(Expr::col(ContactTerms::Term).gte(prefix))
            .and_where(Expr::col(ContactTerms::Term).lt(ranking::prefix_end(prefix)))
            .and_where(Expr::col(ContactTerms::Field).is_in(fields.iter().map(|f| f.code())))
            .limit(POSTINGS_PER_WORD)
            .to_owned();
        self.read_postings(select).await
    }

    async fn postings_of_terms(
        &self,
        tenant: &str,
        terms: &[String],
    ) -> Result<Vec<(String, TermField, String)>, ApiError> {
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let select = Query::select()
            .columns([
                ContactTerms::Term,
                ContactTerms::Field,
                ContactTerms::ContactId,
            ])
            .from(ContactTerms::Table)
            .and_where(Expr::col(ContactTerms::TenantId).eq(tenant))
            .and_where(Expr::col(ContactTerms::Term).is_in(terms.iter().map(String::as_str)))
            .and_where(
                Expr::col(ContactTerms::Field).is_in(
                    [
                        TermField::GivenName,
                        TermField::FamilyName,
                        TermField::EmailWord,
                        TermField::Tag,
                    ]
                    .map(TermField::code),
                ),
            )
            .limit(POSTINGS_PER_WORD)
            .to_owned();
        self.read_postings(select).await
    }

    async fn read_postings(
        &self,
        select: sea_orm::sea_query::SelectStatement,
    ) -> Result<Vec<(String, TermField, String)>, ApiError> {
        let rows = self
            .ctx
            .db
            .query_all(&select)
            .await
            .map_err(|e| from_db(e, "contacts"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let term: String = row.try_get_by_index(0).map_err(ApiError::internal)?;
            let code: i16 = row.try_get_by_index(1).map_err(ApiError::internal)?;
            let contact: String = row.try_get_by_index(2).map_err(ApiError::internal)?;
            if let Some(field) = TermField::from_code(code) {
                out.push((term, field, contact));
            }
        }
        Ok(out)
    }

    /// Vocabulary terms that match `word`, best first.
    async fn matching_terms(
        &self,
        tenant: &str,
        word: &str,
    ) -> Result<Vec<(String, f64)>, ApiError> {
        let anchor = ranking::anchor(word);
        let select = Query::select()
            .column(SearchVocabulary::Term)
            .from(SearchVocabulary::Table)
            .and_where(Expr::col(SearchVocabulary::TenantId).eq(tenant))
            .and_where(Expr::col(SearchVocabulary::Term).gte(anchor.as_str()))
            .and_where(Expr::col(SearchVocabulary::Term).lt(ranking::prefix_end(&anchor)))
            .limit(VOCABULARY_SCAN)
            .to_owned();
        let rows = self
            .ctx
            .db
            .query_all(&select)
            .await
            .map_err(|e| from_db(e, "contacts"))?;
        let mut matched = Vec::new();
        for row in rows {
            let term: String = row.try_get_by_index(0).map_err(ApiError::internal)?;
            if let Some(m) = ranking::match_term(word, &term) {
                matched.push((term, m.quality));
            }
        }
        matched.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        matched.truncate(TERMS_PER_WORD);
        Ok(matched)
    }

    /// The best hit per contact for one query word.
    async fn hits_for_word(
        &self,
        tenant: &str,
        word: &Word,
    ) -> Result<HashMap<String, Hit>, ApiError> {
        let mut hits: HashMap<String, Hit> = HashMap::new();
        let mut add = |contact: String, score: f64, field: TermField| {
            let entry = hits.entry(contact).or_insert(Hit { score, field });
            if score > entry.score {
                *entry = Hit { score, field };
            }
        };
        match word {
            Word::Phone(digits) => {
                for (term, field, contact) in self
                    .postings_by_prefix(tenant, digits, &[TermField::Phone])
                    .await?
                {
                    let quality = if term == *digits { 1.0 } else { 0.8 };
                    add(contact, quality * field_weight(field), field);
                }
            }
            Word::Email(address) => {
                for (term, field, contact) in self
                    .postings_by_prefix(tenant, address, &[TermField::Email])
                    .await?
                {
                    let quality = if term == *address { 1.0 } else { 0.8 };
                    add(contact, quality * field_weight(field), field);
                }
            }
            Word::Text(text) => {
                let terms = self.matching_terms(tenant, text).await?;
                let quality: HashMap<&str, f64> =
                    terms.iter().map(|(t, q)| (t.as_str(), *q)).collect();
                let names: Vec<String> = terms.iter().map(|(t, _)| t.clone()).collect();
                for (term, field, contact) in self.postings_of_terms(tenant, &names).await? {
                    let q = quality.get(term.as_str()).copied().unwrap_or(0.0);
                    add(contact, q * field_weight(field), field);
                }
                // Digits typed as text may start a phone number.
                if text.len() >= 3 && text.chars().all(|c| c.is_ascii_digit()) {
                    for (_, field, contact) in self
                        .postings_by_prefix(tenant, text, &[TermField::Phone])
                        .await?
                    {
                        add(contact, 0.8 * field_weight(field), field);
                    }
                }
            }
        }
        Ok(hits)
    }

    /// Contacts matching every word of `query`, best first (at most MAX_CANDIDATES).
    pub async fn rank(&self, tenant: &str, query: &str) -> Result<Vec<Ranked>, ApiError> {
        let words = query_words(query);
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let mut combined: Option<HashMap<String, Ranked>> = None;
        for word in &words {
            let hits = self.hits_for_word(tenant, word).await?;
            combined = Some(match combined {
                None => hits
                    .into_iter()
                    .map(|(id, hit)| {
                        let ranked = Ranked {
                            contact_id: id.clone(),
                            score: hit.score,
                            fields: BTreeSet::from([hit.field.contact_field()]),
                        };
                        (id, ranked)
                    })
                    .collect(),
                Some(mut so_far) => {
                    so_far.retain(|id, _| hits.contains_key(id));
                    for (id, ranked) in so_far.iter_mut() {
                        if let Some(hit) = hits.get(id) {
                            ranked.score += hit.score;
                            ranked.fields.insert(hit.field.contact_field());
                        }
                    }
                    so_far
                }
            });
            if combined.as_ref().is_some_and(HashMap::is_empty) {
                return Ok(Vec::new());
            }
        }
        let mut ranked: Vec<Ranked> = combined.unwrap_or_default().into_values().collect();
        let count = words.len() as f64;
        for r in &mut ranked {
            r.score /= count;
        }
        ranked.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.contact_id.cmp(&b.contact_id))
        });
        ranked.truncate(MAX_CANDIDATES);
        Ok(ranked)
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
        let condition = crate::grpc::contact_filter(&request.filter)?;
        let fingerprint = PageTokens::fingerprint(&[query, &request.filter]);
        let offset =
            self.ctx
                .tokens
                .decode_offset(&request.page_token, &caller.tenant, &fingerprint)?;

        let ranked = self.rank(&caller.tenant, query).await?;
        // Only live contacts that pass the filter count.
        let ids: Vec<&str> = ranked.iter().map(|r| r.contact_id.as_str()).collect();
        let mut select = contact_row::Entity::find()
            .select_only()
            .column(contact_row::Column::Id)
            .filter(contact_row::Column::TenantId.eq(caller.tenant.as_str()))
            .filter(contact_row::Column::Id.is_in(ids))
            .filter(contact_row::Column::DeleteTimeUs.is_null())
            .filter(contact_row::Column::MergedInto.is_null());
        if let Some(condition) = condition {
            select = select.filter(condition);
        }
        let visible: BTreeSet<String> = select
            .into_tuple::<String>()
            .all(&self.ctx.db)
            .await
            .map_err(|e| from_db(e, "contacts"))?
            .into_iter()
            .collect();
        let ranked: Vec<Ranked> = ranked
            .into_iter()
            .filter(|r| visible.contains(&r.contact_id))
            .collect();
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
                        contact: Some(contact),
                        score: (r.score * 1000.0).round() / 1000.0,
                        matched_fields: r.fields.iter().map(|f| (*f).to_owned()).collect(),
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
