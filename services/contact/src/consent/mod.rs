//! Consent per channel and purpose, with its full history, the erasure suppression
//! list, and the tenant's contact settings.
//!
//! Files: `validate.rs` (rules of a statement), `effective.rs` (the least-permissive
//! answer, pure), `store.rs` (records), `suppression.rs` (salted hashes),
//! `settings.rs` (contact settings), `migration.rs` (tables).

pub mod effective;
pub mod migration;
pub mod settings;
pub mod sha256;
pub mod store;
pub mod suppression;
pub mod validate;

use tonic::{Request, Response, Status};

use crm_platform::auth::Caller;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::filter::{self, FieldKind, FilterField};
use crm_platform::idempotency;
use crm_platform::pagination;
use crm_platform::{ApiError, Violations};
use crm_proto::common::{Actor, Channel};
use crm_proto::contact::*;

use crate::context::Context;
use crate::domain::{names, validate as contact_validate};
use crate::store::contact_row;

pub use settings::default_phone_region;
pub use store::{erase_contact, history_for_contact, repoint_contacts};

/// At most this many contacts answer for one address (a shared mailbox, say); beyond,
/// the answer would not fit a response anyway.
const MAX_CONTACTS_PER_ADDRESS: u64 = 1000;

/// The fields ListConsentHistory filters on, and their columns.
pub const CONSENT_FILTER_FIELDS: &[FilterField] = &[
    FilterField {
        name: "channel",
        column: "channel",
        kind: FieldKind::Enum(parse_channel),
    },
    FilterField {
        name: "purpose",
        column: "purpose",
        kind: FieldKind::Enum(parse_purpose),
    },
    FilterField {
        name: "status",
        column: "status",
        kind: FieldKind::Enum(parse_status),
    },
    FilterField {
        name: "address",
        column: "address",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "source",
        column: "source",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "legal_basis",
        column: "legal_basis",
        kind: FieldKind::Enum(parse_legal_basis),
    },
    FilterField {
        name: "consent_time",
        column: "consent_time_us",
        kind: FieldKind::Timestamp,
    },
    FilterField {
        name: "create_time",
        column: "create_time_us",
        kind: FieldKind::Timestamp,
    },
];

fn parse_channel(name: &str) -> Option<i32> {
    Channel::from_str_name(name)
        .or_else(|| Channel::from_str_name(&format!("CHANNEL_{name}")))
        .map(|c| c as i32)
}

fn parse_purpose(name: &str) -> Option<i32> {
    ConsentPurpose::from_str_name(name)
        .or_else(|| ConsentPurpose::from_str_name(&format!("CONSENT_PURPOSE_{name}")))
        .map(|p| p as i32)
}

fn parse_status(name: &str) -> Option<i32> {
    ConsentStatus::from_str_name(name)
        .or_else(|| ConsentStatus::from_str_name(&format!("CONSENT_STATUS_{name}")))
        .map(|s| s as i32)
}

fn parse_legal_basis(name: &str) -> Option<i32> {
    LegalBasis::from_str_name(name)
        .or_else(|| LegalBasis::from_str_name(&format!("LEGAL_BASIS_{name}")))
        .map(|b| b as i32)
}

fn request_hash<M: prost::Message>(message: &M) -> String {
    idempotency::request_hash(&message.encode_to_vec())
}

/// A phone number to look up, in E.164. Numbers in international form (`+41 …` or
/// `0041 …`) are accepted; national numbers would need the tenant's default region
/// and a table of calling codes, which `domain::validate` does not have yet.
fn lookup_phone(raw: &str, region: Option<&str>) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    match trimmed.strip_prefix("00") {
        Some(rest) if !trimmed.starts_with('+') => {
            contact_validate::normalise_phone(&format!("+{rest}"))
        }
        _ => contact_validate::normalise_phone_in(trimmed, region),
    }
}

pub struct ConsentApi {
    ctx: Context,
    records: store::ConsentStore,
}

impl ConsentApi {
    pub fn new(ctx: Context) -> Self {
        let records = store::ConsentStore::new(ctx.db.clone(), ctx.feed.clone());
        Self { ctx, records }
    }

    /// The contact a request names, following merges; NOT_FOUND when it does not exist.
    async fn contact(
        &self,
        tenant: &str,
        field: &str,
        name: &str,
    ) -> Result<store::ContactRef, ApiError> {
        let id = names::parse(names::CONTACTS, field, name)?;
        store::resolve_contact(&self.ctx.db, tenant, &id)
            .await?
            .ok_or_else(|| ApiError::not_found(names::contact_name(&id)))
    }

    pub async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Result<Response<ConsentRecord>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let hash = request_hash(&request);
        let mut violations = Violations::new();
        if let Err(ApiError::InvalidArgument(found)) = idempotency::validate(&request.request_id) {
            found
                .into_iter()
                .for_each(|v| violations.add(v.field, v.description));
        }
        let Some(mut record) = request.consent_record else {
            return Err(ApiError::invalid("consent_record", "is required").into());
        };
        let checked = validate::record(&mut violations, "consent_record", &mut record);
        // The contact is checked only once its name is well formed, so a bad name is
        // reported with the other fields rather than as NOT_FOUND.
        let contact = match checked.contact_id {
            Some(id) => Some(
                store::resolve_contact(&self.ctx.db, &caller.tenant, &id)
                    .await?
                    .ok_or_else(|| ApiError::not_found(names::contact_name(&id)))?,
            ),
            None => None,
        };
        if let Some(contact) = &contact
            && checked.address_to_match
            && !validate::address_belongs(
                record.channel,
                &record.address,
                &contact.emails,
                &contact.phones,
            )
        {
            violations.add(
                "consent_record.address",
                "must be one of the contact's addresses on this channel",
            );
        }
        violations.into_result()?;
        let Some(contact) = contact else {
            return Err(ApiError::invalid("consent_record.contact", "is required").into());
        };
        let id = uuid::Uuid::now_v7().to_string();
        record.name = store::record_name(&id);
        record.contact = names::contact_name(&contact.id);
        record.recorder = Some(Actor {
            subject: caller.subject.clone(),
            roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        });
        record.create_time = Some(micros_to_timestamp(now_micros()));
        if record.consent_time.is_none() {
            record.consent_time = record.create_time;
        }
        if request.validate_only {
            return Ok(Response::new(record));
        }
        let stored = self
            .records
            .append(&caller, &contact.id, record, &request.request_id, &hash)
            .await?;
        tracing::info!(
            consent_record = %stored.name,
            tenant = %caller.tenant,
            channel = stored.channel,
            purpose = stored.purpose,
            status = stored.status,
            "consent recorded"
        );
        Ok(Response::new(stored))
    }

    pub async fn get_consent(
        &self,
        request: Request<GetConsentRequest>,
    ) -> Result<Response<GetConsentResponse>, Status> {
        use get_consent_request::Person;
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let tenant = caller.tenant.as_str();

        let mut violations = Violations::new();
        let mut channels = Vec::new();
        for (i, channel) in request.channels.iter().enumerate() {
            if !validate::is_consent_channel(*channel) {
                violations.add(
                    format!("channels[{i}]"),
                    "must be EMAIL, SMS, PHONE or POSTAL",
                );
            } else if !channels.contains(channel) {
                channels.push(*channel);
            }
        }
        if request.channels.is_empty() {
            channels = validate::CONSENT_CHANNELS
                .iter()
                .map(|c| *c as i32)
                .collect();
        }
        let mut purposes = Vec::new();
        for (i, purpose) in request.purposes.iter().enumerate() {
            if !validate::is_purpose(*purpose) {
                violations.add(
                    format!("purposes[{i}]"),
                    "must be MARKETING, TRANSACTIONAL or PROFILING",
                );
            } else if !purposes.contains(purpose) {
                purposes.push(*purpose);
            }
        }
        if request.purposes.is_empty() {
            purposes = validate::PURPOSES.iter().map(|p| *p as i32).collect();
        }
        let mut scope = effective::Scope::default();
        let person = match &request.person {
            None => {
                violations.add(
                    "contact",
                    "one of contact, email_address or phone_number is required",
                );
                None
            }
            Some(Person::Contact(name)) => match names::parse(names::CONTACTS, "contact", name) {
                Ok(id) => Some(Person::Contact(id)),
                Err(_) => {
                    violations.add("contact", "must be contacts/{uuid}");
                    None
                }
            },
            Some(Person::EmailAddress(raw)) => match contact_validate::normalise_email(raw) {
                Ok(email) => Some(Person::EmailAddress(email)),
                Err(why) => {
                    violations.add("email_address", why);
                    None
                }
            },
            Some(Person::PhoneNumber(raw)) => match lookup_phone(
                raw,
                settings::default_phone_region(&self.ctx.db, &caller.tenant)
                    .await?
                    .as_deref(),
            ) {
                Ok(phone) => Some(Person::PhoneNumber(phone)),
                Err(why) => {
                    violations.add("phone_number", why);
                    None
                }
            },
        };
        violations.into_result()?;

        let db = &self.ctx.db;
        let contacts = match person {
            Some(Person::Contact(id)) => vec![
                store::resolve_contact(db, tenant, &id)
                    .await?
                    .ok_or_else(|| ApiError::not_found(names::contact_name(&id)))?,
            ],
            Some(Person::EmailAddress(email)) => {
                let found = store::contacts_with(
                    db,
                    tenant,
                    contact_row::Column::EmailsIndex,
                    &email,
                    MAX_CONTACTS_PER_ADDRESS,
                )
                .await?;
                scope.email = Some(email);
                found
            }
            Some(Person::PhoneNumber(phone)) => {
                let found = store::contacts_with(
                    db,
                    tenant,
                    contact_row::Column::PhonesIndex,
                    &phone,
                    MAX_CONTACTS_PER_ADDRESS,
                )
                .await?;
                scope.phone = Some(phone);
                found
            }
            None => return Err(ApiError::invalid("contact", "is required").into()),
        };

        // The suppression list: asked by a suppressed address, every channel is closed;
        // a contact with a suppressed email is closed on EMAIL.
        let mut emails: Vec<String> = contacts.iter().flat_map(|c| c.emails.clone()).collect();
        if let Some(email) = &scope.email {
            emails.push(email.clone());
        }
        let on_list = suppression::suppressed(db, tenant, &emails).await?;
        if scope.email.as_ref().is_some_and(|e| on_list.contains(e)) {
            scope.suppressed_channels.clone_from(&channels);
        } else if !on_list.is_empty() {
            scope.suppressed_channels.push(Channel::Email as i32);
        }

        let ids: Vec<String> = contacts.iter().map(|c| c.id.clone()).collect();
        let records = store::records_of(db, tenant, &ids, &channels, &purposes).await?;
        let consents = effective::resolve(&records, &channels, &purposes, &scope);
        Ok(Response::new(GetConsentResponse {
            consents,
            contacts: ids.iter().map(|id| names::contact_name(id)).collect(),
        }))
    }

    pub async fn list_consent_history(
        &self,
        request: Request<ListConsentHistoryRequest>,
    ) -> Result<Response<ListConsentHistoryResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        if request.contact.is_empty() {
            violations.add("contact", "is required");
        } else if names::parse(names::CONTACTS, "contact", &request.contact).is_err() {
            violations.add("contact", "must be contacts/{uuid}");
        }
        let limit = match pagination::page_size(request.page_size, 50, 1000) {
            Ok(limit) => limit,
            Err(_) => {
                violations.add("page_size", "must not be negative");
                0
            }
        };
        let condition = match filter::condition(
            &request.filter,
            CONSENT_FILTER_FIELDS,
            self.ctx.filter_scope(&caller.tenant),
        ) {
            Ok(condition) => condition,
            Err(ApiError::InvalidArgument(found)) => {
                found
                    .into_iter()
                    .for_each(|v| violations.add(v.field, v.description));
                None
            }
            Err(other) => return Err(other.into()),
        };
        violations.into_result()?;
        let contact = self
            .contact(&caller.tenant, "contact", &request.contact)
            .await?;
        // The token is bound to the contact asked for and the filter.
        let fingerprint = pagination::PageTokens::fingerprint(&[&request.contact, &request.filter]);
        let page = self
            .ctx
            .tokens
            .keyset_page(
                &request.page_token,
                &caller.tenant,
                &fingerprint,
                async |key| {
                    let after = key
                        .as_deref()
                        .map(pagination::parse_time_and_id_key)
                        .transpose()?;
                    let (records, last) = self
                        .records
                        .page(&caller.tenant, &contact.id, condition.clone(), after, limit)
                        .await?;
                    Ok((records, last.map(pagination::time_and_id_key)))
                },
                async || {
                    let filter = condition.clone();
                    self.records
                        .count(&caller.tenant, &contact.id, filter)
                        .await
                },
            )
            .await?;
        Ok(Response::new(ListConsentHistoryResponse {
            total_size: page.total_size_i64(),
            consent_records: page.rows,
            next_page_token: page.next_page_token,
        }))
    }

    pub async fn get_contact_settings(
        &self,
        request: Request<GetContactSettingsRequest>,
    ) -> Result<Response<ContactSettings>, Status> {
        let caller = Caller::from_request(&request)?;
        let name = &request.get_ref().name;
        if !name.is_empty() && name != settings::SETTINGS_NAME {
            return Err(ApiError::invalid("name", "must be \"contactSettings\"").into());
        }
        Ok(Response::new(
            settings::get(&self.ctx.db, &caller.tenant).await?,
        ))
    }

    pub async fn update_contact_settings(
        &self,
        request: Request<UpdateContactSettingsRequest>,
    ) -> Result<Response<ContactSettings>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let hash = request_hash(&request);
        let mut violations = Violations::new();
        if let Err(ApiError::InvalidArgument(found)) = idempotency::validate(&request.request_id) {
            found
                .into_iter()
                .for_each(|v| violations.add(v.field, v.description));
        }
        let Some(mut patch) = request.contact_settings else {
            return Err(ApiError::invalid("contact_settings", "is required").into());
        };
        if patch.name != settings::SETTINGS_NAME {
            violations.add("contact_settings.name", "must be \"contactSettings\"");
        }
        let mut paths = Vec::new();
        match request.update_mask.as_ref().filter(|m| !m.paths.is_empty()) {
            None => violations.add(
                "update_mask",
                "is required; use \"*\" to replace every mutable field",
            ),
            Some(mask) => {
                for path in mask.paths.iter().map(|p| p.trim()) {
                    if path == "*" {
                        paths.extend(settings::MUTABLE_FIELDS.iter().map(|f| (*f).to_owned()));
                    } else if settings::MUTABLE_FIELDS.contains(&path) {
                        paths.push(path.to_owned());
                    } else {
                        violations.add(
                            "update_mask",
                            format!("{path:?} is not a mutable field of ContactSettings"),
                        );
                    }
                }
            }
        }
        paths.sort();
        paths.dedup();
        if paths.iter().any(|p| p == "default_phone_region") {
            match settings::normalise_region(&patch.default_phone_region) {
                Ok(region) => patch.default_phone_region = region,
                Err(why) => violations.add("contact_settings.default_phone_region", why),
            }
        }
        violations.into_result()?;
        let etag = if request.etag.is_empty() {
            patch.etag.clone()
        } else {
            request.etag.clone()
        };
        let attempt = settings::update(
            &self.ctx.db,
            &self.ctx.feed,
            &caller,
            &patch,
            &paths,
            &etag,
            (&request.request_id, &hash),
        )
        .await;
        let updated = match attempt {
            // A concurrent call with the same request id won the race: answer as it did.
            Err(err) if !request.request_id.is_empty() => {
                match idempotency::lookup(
                    &self.ctx.db,
                    &caller.tenant,
                    settings::UPDATE_SETTINGS,
                    &request.request_id,
                    &hash,
                )
                .await?
                {
                    Some(_) => settings::get(&self.ctx.db, &caller.tenant).await?,
                    None => return Err(err.into()),
                }
            }
            other => other?,
        };
        tracing::info!(tenant = %caller.tenant, etag = %updated.etag, "contact settings updated");
        Ok(Response::new(updated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_platform::filter::FilterScope;

    #[test]
    fn filter_enums_parse_with_or_without_prefix() {
        assert_eq!(parse_channel("EMAIL"), Some(Channel::Email as i32));
        assert_eq!(parse_channel("CHANNEL_SMS"), Some(Channel::Sms as i32));
        assert_eq!(
            parse_purpose("MARKETING"),
            Some(ConsentPurpose::Marketing as i32)
        );
        assert_eq!(
            parse_status("OPTED_OUT"),
            Some(ConsentStatus::OptedOut as i32)
        );
        assert_eq!(
            parse_legal_basis("CONTRACT"),
            Some(LegalBasis::Contract as i32)
        );
        assert_eq!(parse_channel("PIGEON"), None);
        let sqlite = FilterScope {
            backend: sea_orm::DbBackend::Sqlite,
            tenant: "acme",
        };
        assert!(
            filter::condition(
                "channel = \"EMAIL\" AND status = \"OPTED_IN\"",
                CONSENT_FILTER_FIELDS,
                sqlite,
            )
            .is_ok()
        );
        assert!(filter::condition("evidence = \"x\"", CONSENT_FILTER_FIELDS, sqlite).is_err());
    }

    #[test]
    fn lookup_phones_in_international_forms() {
        assert_eq!(
            lookup_phone("+41 44 668 18 00", None).as_deref(),
            Ok("+41446681800")
        );
        assert_eq!(
            lookup_phone("0041 44 668 18 00", None).as_deref(),
            Ok("+41446681800")
        );
        assert!(lookup_phone("044 668 18 00", None).is_err());
        assert_eq!(
            lookup_phone("044 668 18 00", Some("CH")).as_deref(),
            Ok("+41446681800")
        );
    }
}
