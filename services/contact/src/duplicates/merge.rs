//! MergeContacts: losers folded into the winner in one transaction, their references
//! moved, the losers kept as tombstones, one ContactsMerged event.

use prost::Message as _;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crm_platform::auth::Caller;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::errors::from_db;
use crm_platform::events::{self, NewEvent};
use crm_platform::{ApiError, Violations, idempotency};
use crm_proto::contact::{Contact, MergeContactsRequest, MergeContactsResponse};

use crate::context::Context;
use crate::domain::{mask, names, validate};
use crate::store::{self, StoredContact, contact_row};

const METHOD: &str = "MergeContacts";
const EVENT_TYPE: &str = "crm.contact.v1.ContactsMerged";
const MAX_LOSERS: usize = 10;
/// List fields: always unioned, never chosen.
const LIST_FIELDS: &[&str] = &["emails", "phones", "tags"];

struct Plan {
    winner: String,
    losers: Vec<String>,
}

fn check(request: &MergeContactsRequest) -> Result<Plan, ApiError> {
    let mut violations = Violations::new();
    let winner = match names::parse(names::CONTACTS, "winner", &request.winner) {
        Ok(id) => id,
        Err(_) => {
            violations.add("winner", "must be contacts/{uuid}");
            String::new()
        }
    };
    if request.losers.is_empty() || request.losers.len() > MAX_LOSERS {
        violations.add("losers", format!("1 to {MAX_LOSERS} contacts"));
    }
    let mut losers = Vec::new();
    for (i, name) in request.losers.iter().enumerate() {
        let field = format!("losers[{i}]");
        match names::parse(names::CONTACTS, &field, name) {
            Ok(id) if id == winner => violations.add(field, "must not be the winner"),
            Ok(id) if losers.contains(&id) => violations.add(field, "appears twice"),
            Ok(id) => losers.push(id),
            Err(_) => violations.add(field, "must be contacts/{uuid}"),
        }
    }
    let mut choices: Vec<(&String, &String)> = request.field_choices.iter().collect();
    choices.sort();
    for (path, source) in choices {
        let field = format!("field_choices[{path:?}]");
        let scalar = mask::MUTABLE_FIELDS.contains(&path.as_str())
            && !LIST_FIELDS.contains(&path.as_str())
            && path != "attributes";
        let attribute = path
            .strip_prefix("attributes.")
            .is_some_and(|key| !key.is_empty());
        if !scalar && !attribute {
            violations.add(
                field.clone(),
                "must be a scalar field of Contact or attributes.<key>; lists are unioned",
            );
        }
        let id = names::parse(names::CONTACTS, &field, source).ok();
        if !id
            .as_ref()
            .is_some_and(|id| *id == winner || losers.contains(id))
        {
            violations.add(field, "must name the winner or one of the losers");
        }
    }
    violations.into_result()?;
    Ok(Plan { winner, losers })
}

/// The winner with the losers folded in: chosen fields, then unions of the lists.
fn fold_in(
    winner: &Contact,
    losers: &[Contact],
    choices: &std::collections::BTreeMap<String, String>,
) -> Result<Contact, ApiError> {
    let mut merged = winner.clone();
    for (path, source) in choices {
        if let Some(chosen) = losers.iter().find(|l| l.name == *source) {
            mask::apply(&mut merged, chosen, std::slice::from_ref(path));
        }
    }
    for loser in losers {
        for email in &loser.emails {
            if !merged.emails.iter().any(|e| e.address == email.address) {
                let mut email = email.clone();
                email.primary = false;
                merged.emails.push(email);
            }
        }
        for phone in &loser.phones {
            if !merged.phones.iter().any(|p| p.number == phone.number) {
                let mut phone = phone.clone();
                phone.primary = false;
                merged.phones.push(phone);
            }
        }
        for tag in &loser.tags {
            if !merged.tags.contains(tag) {
                merged.tags.push(tag.clone());
            }
        }
        for (key, value) in &loser.attributes {
            if !choices.contains_key(&format!("attributes.{key}")) {
                merged
                    .attributes
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
        }
        merged
            .stage_history
            .extend(loser.stage_history.iter().cloned());
    }
    let time = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map(|t| (t.seconds, t.nanos)).unwrap_or_default()
    };
    merged
        .stage_history
        .sort_by_key(|change| (time(&change.enter_time), change.stage));
    merged.stage_history.dedup();
    // Nothing may be lost: refuse a merge whose union breaks the limits.
    let mut violations = Violations::new();
    if merged.emails.len() > validate::MAX_EMAILS {
        violations.add(
            "losers",
            format!(
                "the merged contact would have more than {} emails",
                validate::MAX_EMAILS
            ),
        );
    }
    if merged.phones.len() > validate::MAX_PHONES {
        violations.add(
            "losers",
            format!(
                "the merged contact would have more than {} phones",
                validate::MAX_PHONES
            ),
        );
    }
    if merged.tags.len() > validate::MAX_TAGS {
        violations.add(
            "losers",
            format!(
                "the merged contact would have more than {} tags",
                validate::MAX_TAGS
            ),
        );
    }
    if merged.attributes.len() > validate::MAX_ATTRIBUTES {
        violations.add(
            "losers",
            format!(
                "the merged contact would have more than {} attributes",
                validate::MAX_ATTRIBUTES
            ),
        );
    }
    violations.into_result()?;
    merged.display_name = validate::display_name(&merged);
    Ok(merged)
}

/// The response of an earlier merge with this request id, from its event.
async fn replay<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    request: &MergeContactsRequest,
    hash: &str,
) -> Result<Option<MergeContactsResponse>, ApiError> {
    if request.request_id.is_empty() {
        return Ok(None);
    }
    let Some(winner) =
        idempotency::lookup(conn, &caller.tenant, METHOD, &request.request_id, hash).await?
    else {
        return Ok(None);
    };
    if let Some(response) = crate::replay::response_from_event(
        conn,
        &caller.tenant,
        &winner,
        EVENT_TYPE,
        &request.request_id,
    )
    .await?
    {
        return Ok(Some(response));
    }
    // The event is gone (retention or erasure): answer with the winner as it is now.
    let id = names::parse(names::CONTACTS, "winner", &winner)?;
    let row = contact_row::Entity::find_by_id((caller.tenant.clone(), id))
        .one(conn)
        .await
        .map_err(|e| from_db(e, &winner))?;
    Ok(Some(MergeContactsResponse {
        merged_contact: row
            .as_ref()
            .map(store::decode)
            .transpose()?
            .map(|s| s.contact),
        merged_contacts: request.losers.clone(),
        ..Default::default()
    }))
}

/// Moves every reference to the losers (interactions, episodes, consent records,
/// static segment memberships) to the winner; returns the counts moved.
async fn move_references<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    losers: &[String],
    winner: &str,
    response: &mut MergeContactsResponse,
) -> Result<(), ApiError> {
    let (interactions, episodes) =
        crate::timeline::repoint_contacts(conn, tenant, losers, winner).await?;
    response.interactions_moved = interactions as i64;
    response.episodes_moved = episodes as i64;
    response.consent_records_moved =
        crate::consent::repoint_contacts(conn, tenant, losers, winner).await? as i64;
    response.segment_memberships_moved =
        crate::segments::repoint_contacts(conn, tenant, losers, winner).await? as i64;
    Ok(())
}

pub async fn merge(
    ctx: &Context,
    caller: &Caller,
    request: MergeContactsRequest,
) -> Result<MergeContactsResponse, ApiError> {
    idempotency::validate(&request.request_id)?;
    let plan = check(&request)?;
    let hash = idempotency::request_hash(&request.encode_to_vec());
    let db = |e| from_db(e, "contacts");
    let txn = events::begin_write(&ctx.db).await.map_err(db)?;
    if let Some(response) = replay(&txn, caller, &request, &hash).await? {
        return Ok(response);
    }
    let mut ids = vec![plan.winner.clone()];
    ids.extend(plan.losers.iter().cloned());
    let mut find = contact_row::Entity::find()
        .filter(contact_row::Column::TenantId.eq(caller.tenant.as_str()))
        .filter(contact_row::Column::Id.is_in(ids.iter().map(String::as_str)))
        .order_by_asc(contact_row::Column::Id);
    if txn.get_database_backend() == DbBackend::Postgres {
        find = find.lock_exclusive();
    }
    let rows = find.all(&txn).await.map_err(db)?;
    let mut stored: Vec<StoredContact> = Vec::with_capacity(rows.len());
    for row in &rows {
        stored.push(store::decode(row)?);
    }
    let take = |id: &str| -> Result<StoredContact, ApiError> {
        let name = names::contact_name(id);
        let found = stored
            .iter()
            .find(|s| s.contact.name == name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(name.clone()))?;
        if found.contact.delete_time.is_some() {
            return Err(ApiError::FailedPrecondition {
                reason: "CONTACT_DELETED",
                message: format!("{name} is deleted; undelete it first"),
            });
        }
        if !found.contact.merged_into.is_empty() {
            return Err(ApiError::FailedPrecondition {
                reason: "CONTACT_MERGED",
                message: format!(
                    "{name} was already merged into {}",
                    found.contact.merged_into
                ),
            });
        }
        crate::grpc::ensure_may_change(caller, &found.contact.owner, None)?;
        Ok(found)
    };
    let winner = take(&plan.winner)?;
    let losers: Vec<StoredContact> = plan
        .losers
        .iter()
        .map(|id| take(id))
        .collect::<Result<_, _>>()?;
    names::check_etag(&request.etag, winner.revision, &winner.contact.name)?;

    let loser_contacts: Vec<Contact> = losers.iter().map(|l| l.contact.clone()).collect();
    let mut merged = fold_in(&winner.contact, &loser_contacts, &request.field_choices)?;
    let now = now_micros();
    let changes = store::changes(
        &winner.contact,
        &merged,
        &mask::MUTABLE_FIELDS
            .iter()
            .map(|f| (*f).to_owned())
            .collect::<Vec<_>>(),
    );
    merged.update_time = Some(micros_to_timestamp(now));
    merged.etag = names::etag(winner.revision + 1);

    let mut response = MergeContactsResponse {
        merged_contacts: losers.iter().map(|l| l.contact.name.clone()).collect(),
        changes,
        dry_run: request.dry_run,
        ..Default::default()
    };
    let mut written = vec![StoredContact {
        contact: merged.clone(),
        revision: winner.revision + 1,
    }];
    for loser in &losers {
        let mut tombstone = loser.contact.clone();
        tombstone.merged_into = merged.name.clone();
        tombstone.update_time = merged.update_time;
        tombstone.etag = names::etag(loser.revision + 1);
        written.push(StoredContact {
            contact: tombstone,
            revision: loser.revision + 1,
        });
    }
    let previous: Vec<i64> = std::iter::once(winner.revision)
        .chain(losers.iter().map(|l| l.revision))
        .collect();
    let versions: Vec<(i64, &StoredContact)> = previous.into_iter().zip(&written).collect();
    store::write_versions(&txn, &caller.tenant, &versions).await?;
    let contacts: Vec<&Contact> = written.iter().map(|s| &s.contact).collect();
    store::after_write(&txn, &caller.tenant, &contacts).await?;
    move_references(
        &txn,
        &caller.tenant,
        &plan.losers,
        &plan.winner,
        &mut response,
    )
    .await?;
    response.merged_contact = Some(merged.clone());

    if request.dry_run {
        // Everything was computed for real inside the transaction; now undo it.
        txn.rollback().await.map_err(db)?;
        let mut preview = merged;
        preview.etag = winner.contact.etag.clone();
        response.merged_contact = Some(preview);
        return Ok(response);
    }
    if !request.request_id.is_empty() {
        idempotency::record(
            &txn,
            &caller.tenant,
            METHOD,
            &request.request_id,
            &hash,
            &merged.name,
        )
        .await
        .map_err(db)?;
    }
    events::append(
        &txn,
        caller,
        NewEvent {
            event_type: EVENT_TYPE,
            resource_name: merged.name.clone(),
            changes: response.changes.clone(),
            payload: Some(prost_types::Any {
                type_url: "type.googleapis.com/crm.contact.v1.MergeContactsResponse".into(),
                value: response.encode_to_vec(),
            }),
            request_id: request.request_id.clone(),
        },
    )
    .await
    .map_err(db)?;
    txn.commit().await.map_err(db)?;
    ctx.feed.committed();
    for stored in &written {
        crate::grpc::remember(&ctx.cache, &caller.tenant, stored).await;
    }
    tracing::info!(
        tenant = %caller.tenant,
        winner = %merged.name,
        losers = losers.len(),
        "contacts merged"
    );
    Ok(response)
}
