//! Duplicate finding, merge, and the tenant duplicate rules.

pub mod matching;
mod merge;
pub mod migration;
pub mod rules;
pub mod scan;

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use crm_platform::auth::Caller;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::errors::from_db;
use crm_platform::events::{self, NewEvent};
use crm_platform::pagination::{self, PageTokens};
use crm_platform::{ApiError, Violations, idempotency};
use crm_proto::common::FieldChange;
use crm_proto::contact::*;

use crate::context::Context;
use crate::domain::{names, validate};

/// A candidate as found: (the contact it duplicates, the duplicate, score, matches).
type Found = (String, String, f64, Vec<DuplicateMatch>);

pub struct DuplicatesApi {
    ctx: Context,
}

impl DuplicatesApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    async fn contacts_by_name(
        &self,
        tenant: &str,
        names_wanted: &[String],
    ) -> Result<HashMap<String, Contact>, ApiError> {
        let ids: Vec<String> = names_wanted
            .iter()
            .map(|n| n.trim_start_matches("contacts/").to_owned())
            .collect();
        Ok(self
            .ctx
            .contacts
            .get_many(tenant, &ids)
            .await?
            .into_iter()
            .map(|s| (s.contact.name.clone(), s.contact))
            .collect())
    }

    /// The page's candidates with their stored duplicates (one read for the page); a
    /// duplicate gone meanwhile is left out.
    async fn candidates(
        &self,
        tenant: &str,
        found: Vec<Found>,
    ) -> Result<Vec<DuplicateCandidate>, ApiError> {
        let wanted: Vec<String> = found.iter().map(|(_, dup, _, _)| dup.clone()).collect();
        let contacts = self.contacts_by_name(tenant, &wanted).await?;
        Ok(found
            .into_iter()
            .filter_map(|(contact, duplicate, score, matched_fields)| {
                contacts.get(&duplicate).map(|stored| DuplicateCandidate {
                    contact,
                    duplicate: Some(stored.clone()),
                    score,
                    matched_fields,
                })
            })
            .collect())
    }

    /// One page of the tenant scan ([`scan`]): its token names the contact the next
    /// call goes on from and, within that contact's pairs, the last one returned.
    async fn scan_tenant(
        &self,
        caller: &Caller,
        page_token: &str,
        page_size: usize,
        rules: &DuplicateRules,
    ) -> Result<Response<FindDuplicatesResponse>, Status> {
        // The scan's tokens are not offsets: a token of another kind of call, or of
        // another minimum score, does not fit.
        let fingerprint = PageTokens::fingerprint(&["tenant scan", &rules.min_score.to_string()]);
        let from = self
            .ctx
            .tokens
            .decode(page_token, &caller.tenant, &fingerprint)?
            .as_deref()
            .map(scan::ScanCursor::from_token_values)
            .transpose()?;
        let page = scan::scan(
            &self.ctx,
            &caller.tenant,
            rules,
            from,
            page_size,
            scan::SCAN_BUDGET,
        )
        .await?;
        let found: Vec<Found> = page
            .pairs
            .into_iter()
            .map(|pair| (pair.older, pair.newer, pair.score, pair.matches))
            .collect();
        let candidates = self.candidates(&caller.tenant, found).await?;
        let next_page_token = match page.next {
            None => String::new(),
            Some(cursor) => {
                self.ctx
                    .tokens
                    .encode(&caller.tenant, &fingerprint, cursor.to_token_values())?
            }
        };
        Ok(Response::new(FindDuplicatesResponse {
            candidates,
            next_page_token,
        }))
    }

    pub async fn find_duplicates(
        &self,
        request: Request<FindDuplicatesRequest>,
    ) -> Result<Response<FindDuplicatesResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        if !(0.0..=1.0).contains(&request.min_score) {
            return Err(ApiError::invalid("min_score", "must be between 0 and 1").into());
        }
        let page_size = pagination::page_size(request.page_size, 50, 1000)? as usize;
        let mut rules = matching::rules(&self.ctx.db, &caller.tenant).await?;
        if request.min_score > 0.0 {
            rules.min_score = request.min_score;
        }
        let Some(target) = request.target else {
            return self
                .scan_tenant(&caller, &request.page_token, page_size, &rules)
                .await;
        };
        let target_key = match &target {
            find_duplicates_request::Target::Contact(name) => name.clone(),
            find_duplicates_request::Target::Probe(probe) => {
                idempotency::request_hash(&prost::Message::encode_to_vec(probe))
            }
        };
        let fingerprint = PageTokens::fingerprint(&[&target_key, &request.min_score.to_string()]);
        let offset =
            self.ctx
                .tokens
                .decode_offset(&request.page_token, &caller.tenant, &fingerprint)?;

        // (the contact duplicated, the duplicate, score, matches), best first.
        let found: Vec<Found> = match target {
            find_duplicates_request::Target::Contact(name) => {
                let id = names::parse(names::CONTACTS, "contact", &name)?;
                let stored = self
                    .ctx
                    .contacts
                    .get(&caller.tenant, &id)
                    .await?
                    .ok_or_else(|| ApiError::not_found(names::contact_name(&id)))?;
                let name = stored.contact.name.clone();
                matching::candidates_for_batch(
                    &self.ctx.db,
                    &caller.tenant,
                    &[stored.contact],
                    &rules,
                )
                .await?
                .into_iter()
                .flatten()
                .map(|c| (name.clone(), c.contact, c.score, c.matches))
                .collect()
            }
            find_duplicates_request::Target::Probe(mut probe) => {
                let mut violations = Violations::new();
                validate::contact(&mut violations, "probe", &mut probe);
                violations.into_result()?;
                probe.name.clear();
                matching::candidates_for_batch(&self.ctx.db, &caller.tenant, &[probe], &rules)
                    .await?
                    .into_iter()
                    .flatten()
                    .map(|c| (String::new(), c.contact, c.score, c.matches))
                    .collect()
            }
        };
        let total = found.len();
        let page: Vec<Found> = found.into_iter().skip(offset).take(page_size).collect();
        let candidates = self.candidates(&caller.tenant, page).await?;
        let next_page_token = self.ctx.tokens.encode_offset(
            &caller.tenant,
            &fingerprint,
            offset + page_size,
            total,
        )?;
        Ok(Response::new(FindDuplicatesResponse {
            candidates,
            next_page_token,
        }))
    }

    pub async fn merge_contacts(
        &self,
        request: Request<MergeContactsRequest>,
    ) -> Result<Response<MergeContactsResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let response = merge::merge(&self.ctx, &caller, request).await?;
        Ok(Response::new(response))
    }

    pub async fn get_duplicate_rules(
        &self,
        request: Request<GetDuplicateRulesRequest>,
    ) -> Result<Response<DuplicateRules>, Status> {
        let caller = Caller::from_request(&request)?;
        if request.get_ref().name != rules::NAME {
            return Err(ApiError::invalid("name", "must be \"duplicateRules\"").into());
        }
        let (mut found, revision) = rules::load(&self.ctx.db, &caller.tenant).await?;
        found.etag = names::etag(revision);
        Ok(Response::new(found))
    }

    pub async fn update_duplicate_rules(
        &self,
        request: Request<UpdateDuplicateRulesRequest>,
    ) -> Result<Response<DuplicateRules>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        idempotency::validate(&request.request_id)?;
        let hash = idempotency::request_hash(&prost::Message::encode_to_vec(&request));
        let Some(patch) = request.duplicate_rules else {
            return Err(ApiError::invalid("duplicate_rules", "is required").into());
        };
        if patch.name != rules::NAME {
            return Err(
                ApiError::invalid("duplicate_rules.name", "must be \"duplicateRules\"").into(),
            );
        }
        let paths = rule_paths(request.update_mask.as_ref())?;
        let mut violations = Violations::new();
        rules::validate(&mut violations, &patch, &paths);
        violations.into_result()?;
        let etag = if request.etag.is_empty() {
            patch.etag.clone()
        } else {
            request.etag.clone()
        };

        let db = |e| from_db(e, rules::NAME);
        let txn = events::begin_write(&self.ctx.db).await.map_err(db)?;
        if !request.request_id.is_empty()
            && idempotency::lookup(
                &txn,
                &caller.tenant,
                "UpdateDuplicateRules",
                &request.request_id,
                &hash,
            )
            .await?
            .is_some()
        {
            let (mut current, revision) = rules::load(&txn, &caller.tenant).await?;
            current.etag = names::etag(revision);
            return Ok(Response::new(current));
        }
        rules::lock(&txn, &caller.tenant).await?;
        let (current, revision) = rules::load(&txn, &caller.tenant).await?;
        names::check_etag(&etag, revision, rules::NAME)?;
        let mut updated = current.clone();
        rules::apply(&mut updated, &patch, &paths);
        let mut updated = rules::with_defaults(updated);
        let now = now_micros();
        updated.update_time = Some(micros_to_timestamp(now));
        let changes: Vec<FieldChange> = paths
            .iter()
            .filter_map(|path| {
                let old = rules::value(&current, path);
                let new = rules::value(&updated, path);
                (old != new).then(|| FieldChange {
                    path: path.clone(),
                    old_value: Some(old),
                    new_value: Some(new),
                })
            })
            .collect();
        let new_revision = revision + 1;
        updated.etag = names::etag(new_revision);
        rules::save(&txn, &caller.tenant, &updated, new_revision, now).await?;
        if !request.request_id.is_empty() {
            idempotency::record(
                &txn,
                &caller.tenant,
                "UpdateDuplicateRules",
                &request.request_id,
                &hash,
                rules::NAME,
            )
            .await
            .map_err(db)?;
        }
        events::append(
            &txn,
            &caller,
            NewEvent {
                event_type: "crm.contact.v1.DuplicateRulesUpdated",
                resource_name: rules::NAME.into(),
                changes,
                payload: Some(prost_types::Any {
                    type_url: "type.googleapis.com/crm.contact.v1.DuplicateRules".into(),
                    value: prost::Message::encode_to_vec(&updated),
                }),
                request_id: request.request_id.clone(),
            },
        )
        .await
        .map_err(db)?;
        txn.commit().await.map_err(db)?;
        self.ctx.feed.committed();
        Ok(Response::new(updated))
    }
}

fn rule_paths(mask: Option<&prost_types::FieldMask>) -> Result<Vec<String>, ApiError> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Err(ApiError::invalid(
            "update_mask",
            "is required; use \"*\" to replace every mutable field",
        ));
    };
    let mut paths = Vec::new();
    for path in &mask.paths {
        let path = path.trim();
        if path == "*" {
            paths.extend(rules::PATHS.iter().map(|p| (*p).to_owned()));
        } else if rules::PATHS.contains(&path) {
            paths.push(path.to_owned());
        } else {
            return Err(ApiError::invalid(
                "update_mask",
                format!("{path:?} is not a mutable field of DuplicateRules"),
            ));
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}
