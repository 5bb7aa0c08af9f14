//! GDPR access (everything held on a person) and erasure (the person's personal data
//! removed everywhere this service keeps it, irreversibly).

mod references;

use prost::Message as _;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use tonic::{Request, Response, Status};

use crm_platform::auth::Caller;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::errors::from_db;
use crm_platform::events::{self, NewEvent};
use crm_platform::{ApiError, Violations, idempotency};
use crm_proto::common::FieldChange;
use crm_proto::contact::*;

use crate::context::Context;
use crate::domain::names;
use crate::index;
use crate::store::{self, StoredContact, contact_row};

const ERASE_METHOD: &str = "ErasePersonalData";
const ERASED_EVENT: &str = "crm.contact.v1.PersonalDataErased";
const MAX_REASON: usize = 500;
/// What an erased contact is called from then on.
const ERASED_DISPLAY_NAME: &str = "(erased)";

pub struct PrivacyApi {
    ctx: Context,
}

/// The contact and the tombstones of contacts merged into it, locked for the rest of
/// the transaction on Postgres.
async fn person<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    field: &str,
    name: &str,
    lock: bool,
) -> Result<(StoredContact, Vec<StoredContact>), ApiError> {
    let id = names::parse(names::CONTACTS, field, name)?;
    let postgres = conn.get_database_backend() == DbBackend::Postgres;
    let mut find = contact_row::Entity::find_by_id((tenant.to_owned(), id.clone()));
    if lock && postgres {
        find = find.lock_exclusive();
    }
    let row = find
        .one(conn)
        .await
        .map_err(|e| from_db(e, "contact"))?
        .ok_or_else(|| ApiError::not_found(names::contact_name(&id)))?;
    let mut contact = store::decode(&row)?;
    // A merged contact's data lives on in the one it was merged into.
    if let Some(winner) = row.merged_into.as_deref() {
        let mut find = contact_row::Entity::find_by_id((tenant.to_owned(), winner.to_owned()));
        if lock && postgres {
            find = find.lock_exclusive();
        }
        if let Some(row) = find.one(conn).await.map_err(|e| from_db(e, "contact"))? {
            contact = store::decode(&row)?;
        }
    }
    let winner_id = contact
        .contact
        .name
        .trim_start_matches("contacts/")
        .to_owned();
    let mut find = contact_row::Entity::find()
        .filter(contact_row::Column::TenantId.eq(tenant))
        .filter(contact_row::Column::MergedInto.eq(winner_id.as_str()))
        .order_by_asc(contact_row::Column::Id);
    if lock && postgres {
        find = find.lock_exclusive();
    }
    let merged = find
        .all(conn)
        .await
        .map_err(|e| from_db(e, "contact"))?
        .iter()
        .map(store::decode)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((contact, merged))
}

/// The personal values of a contact: what must not survive an erasure anywhere.
fn personal_values(contact: &Contact) -> Vec<String> {
    let mut values = vec![
        contact.given_name.clone(),
        contact.family_name.clone(),
        contact.display_name.clone(),
        contact.job_title.clone(),
    ];
    for email in &contact.emails {
        values.push(email.address.clone());
    }
    for phone in &contact.phones {
        values.push(phone.number.clone());
        values.push(index::phone_digits(&phone.number));
    }
    if let Some(address) = &contact.address {
        values.extend(address.lines.iter().cloned());
    }
    values.retain(|v| v.chars().count() >= 2 && v != ERASED_DISPLAY_NAME);
    values.sort();
    values.dedup();
    values
}

/// Clears the personal fields of a contact; returns the paths that held something.
fn erase_fields(contact: &mut Contact) -> Vec<String> {
    let mut erased = Vec::new();
    let mut clear = |path: &str, had: bool| {
        if had {
            erased.push(path.to_owned());
        }
    };
    clear("given_name", !contact.given_name.is_empty());
    clear("family_name", !contact.family_name.is_empty());
    clear("emails", !contact.emails.is_empty());
    clear("phones", !contact.phones.is_empty());
    clear("job_title", !contact.job_title.is_empty());
    clear("address", contact.address.is_some());
    clear("language", !contact.language.is_empty());
    clear("time_zone", !contact.time_zone.is_empty());
    clear("tags", !contact.tags.is_empty());
    clear("attributes", !contact.attributes.is_empty());
    clear("preferred_channel", contact.preferred_channel != 0);
    clear("contact_frequency", contact.contact_frequency != 0);
    contact.given_name.clear();
    contact.family_name.clear();
    contact.emails.clear();
    contact.phones.clear();
    contact.job_title.clear();
    contact.address = None;
    contact.language.clear();
    contact.time_zone.clear();
    contact.tags.clear();
    contact.attributes.clear();
    contact.preferred_channel = 0;
    contact.contact_frequency = 0;
    contact.display_name = ERASED_DISPLAY_NAME.into();
    erased
}

impl PrivacyApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    pub async fn export_personal_data(
        &self,
        request: Request<ExportPersonalDataRequest>,
    ) -> Result<Response<ExportPersonalDataResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let (contact, merged) = person(
            &self.ctx.db,
            &caller.tenant,
            "contact",
            &request.contact,
            false,
        )
        .await?;
        let mut ids = vec![
            contact
                .contact
                .name
                .trim_start_matches("contacts/")
                .to_owned(),
        ];
        ids.extend(
            merged
                .iter()
                .map(|m| m.contact.name.trim_start_matches("contacts/").to_owned()),
        );
        let held = references::held(&self.ctx.db, &caller.tenant, &ids).await?;
        tracing::info!(tenant = %caller.tenant, contact = %contact.contact.name, "personal data exported");
        Ok(Response::new(ExportPersonalDataResponse {
            contact: Some(contact.contact),
            merged_contacts: merged.into_iter().map(|m| m.contact).collect(),
            interactions: held.interactions,
            episodes: held.episodes,
            consent_records: held.consent_records,
            segments: held.segments,
            audit_events: held.audit_events,
            export_time: Some(micros_to_timestamp(now_micros())),
        }))
    }

    pub async fn erase_personal_data(
        &self,
        request: Request<ErasePersonalDataRequest>,
    ) -> Result<Response<ErasePersonalDataResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        if names::parse(names::CONTACTS, "contact", &request.contact).is_err() {
            violations.add("contact", "must be contacts/{uuid}");
        }
        let reason = request.reason.trim();
        if reason.is_empty() {
            violations.add("reason", "is required");
        } else if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
            violations.add(
                "reason",
                format!("at most {MAX_REASON} characters, no control characters"),
            );
        }
        if let Err(ApiError::InvalidArgument(found)) = idempotency::validate(&request.request_id) {
            found
                .into_iter()
                .for_each(|v| violations.add(v.field, v.description));
        }
        violations.into_result()?;
        let hash = idempotency::request_hash(&request.encode_to_vec());

        let db = |e| from_db(e, "contact");
        let txn = events::begin_write(&self.ctx.db).await.map_err(db)?;
        if !request.request_id.is_empty()
            && let Some(resource) = idempotency::lookup(
                &txn,
                &caller.tenant,
                ERASE_METHOD,
                &request.request_id,
                &hash,
            )
            .await?
        {
            let earlier = crate::replay::response_from_event(
                &txn,
                &caller.tenant,
                &resource,
                ERASED_EVENT,
                &request.request_id,
            )
            .await?
            .unwrap_or(ErasePersonalDataResponse {
                contact: resource,
                ..Default::default()
            });
            return Ok(Response::new(earlier));
        }
        let (contact, merged) =
            person(&txn, &caller.tenant, "contact", &request.contact, true).await?;
        let now = now_micros();
        let mut values = personal_values(&contact.contact);
        let mut emails: Vec<String> = contact
            .contact
            .emails
            .iter()
            .map(|e| e.address.to_lowercase())
            .collect();
        let mut erased_fields = Vec::new();
        let mut written = Vec::new();
        for (i, stored) in std::iter::once(&contact).chain(merged.iter()).enumerate() {
            if i > 0 {
                values.extend(personal_values(&stored.contact));
                emails.extend(
                    stored
                        .contact
                        .emails
                        .iter()
                        .map(|e| e.address.to_lowercase()),
                );
            }
            let mut erased = stored.contact.clone();
            let fields = erase_fields(&mut erased);
            if i == 0 {
                erased_fields = fields;
            }
            erased.update_time = Some(micros_to_timestamp(now));
            erased.etag = names::etag(stored.revision + 1);
            written.push((
                stored.revision,
                StoredContact {
                    contact: erased,
                    revision: stored.revision + 1,
                },
            ));
        }
        let versions: Vec<(i64, &StoredContact)> =
            written.iter().map(|(previous, s)| (*previous, s)).collect();
        store::write_versions(&txn, &caller.tenant, &versions).await?;
        let contacts: Vec<&Contact> = written.iter().map(|(_, s)| &s.contact).collect();
        store::after_write(&txn, &caller.tenant, &contacts).await?;
        let stale_terms: Vec<String> = std::iter::once(&contact)
            .chain(merged.iter())
            .flat_map(|s| {
                // A tombstone has no terms of its own, but its words may linger in the
                // vocabulary from before the merge.
                let mut as_it_was = s.contact.clone();
                as_it_was.merged_into.clear();
                index::terms(&as_it_was).into_iter().map(|(term, _)| term)
            })
            .collect();
        index::prune_vocabulary(&txn, &caller.tenant, &stale_terms).await?;

        emails.sort();
        emails.dedup();
        values.sort();
        values.dedup();
        let ids: Vec<String> = written
            .iter()
            .map(|(_, s)| s.contact.name.trim_start_matches("contacts/").to_owned())
            .collect();
        let mut response = ErasePersonalDataResponse {
            contact: contact.contact.name.clone(),
            merged_contacts: merged.iter().map(|m| m.contact.name.clone()).collect(),
            erased_fields,
            erase_time: Some(micros_to_timestamp(now)),
            ..Default::default()
        };
        references::erase(&txn, &caller.tenant, &ids, &emails, &values, &mut response).await?;

        if !request.request_id.is_empty() {
            idempotency::record(
                &txn,
                &caller.tenant,
                ERASE_METHOD,
                &request.request_id,
                &hash,
                &response.contact,
            )
            .await
            .map_err(db)?;
        }
        events::append(
            &txn,
            &caller,
            NewEvent {
                event_type: ERASED_EVENT,
                resource_name: response.contact.clone(),
                changes: vec![FieldChange {
                    path: "erasure_reason".into(),
                    old_value: None,
                    new_value: Some(prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(reason.to_owned())),
                    }),
                }],
                payload: Some(prost_types::Any {
                    type_url: "type.googleapis.com/crm.contact.v1.ErasePersonalDataResponse".into(),
                    value: response.encode_to_vec(),
                }),
                request_id: request.request_id.clone(),
            },
        )
        .await
        .map_err(db)?;
        txn.commit().await.map_err(db)?;
        self.ctx.feed.committed();
        for (_, stored) in &written {
            crate::grpc::remember(&self.ctx.cache, &caller.tenant, stored).await;
        }
        tracing::info!(tenant = %caller.tenant, contact = %response.contact, "personal data erased");
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erasure_clears_every_personal_field() {
        let mut contact = Contact {
            name: "contacts/x".into(),
            given_name: "Anna".into(),
            family_name: "Müller".into(),
            emails: vec![EmailAddress {
                address: "anna@acme.ch".into(),
                ..Default::default()
            }],
            owner: "rep-1".into(),
            lifecycle_stage: LifecycleStage::Customer as i32,
            ..Default::default()
        };
        let values = personal_values(&contact);
        assert!(values.contains(&"anna@acme.ch".to_owned()));
        let erased = erase_fields(&mut contact);
        assert_eq!(erased, ["given_name", "family_name", "emails"]);
        assert!(contact.given_name.is_empty() && contact.emails.is_empty());
        assert_eq!(contact.owner, "rep-1", "not personal: kept");
        assert_eq!(contact.lifecycle_stage, LifecycleStage::Customer as i32);
    }
}
