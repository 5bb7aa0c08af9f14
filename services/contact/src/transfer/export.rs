//! ExportContacts: keyset pages of the contact listing, one chunk in memory at a time,
//! each chunk with a signed resume token.

use sea_orm::sea_query::Condition;

use crm_platform::ApiError;
use crm_platform::pagination::{self, CursorValue, PageTokens};
use crm_proto::contact::{Contact, ExportContactsRequest, ExportContactsResponse};

use crate::grpc::{contact_filter, parse_order};
use crate::store::{ContactStore, ListQuery, SortField};

/// Contacts per chunk when the request leaves it at 0, and the most.
const DEFAULT_CHUNK: u64 = 500;
const MAX_CHUNK: u64 = 1000;

/// The fields of Contact a read mask may name.
const READABLE: &[&str] = &[
    "name",
    "given_name",
    "family_name",
    "display_name",
    "emails",
    "phones",
    "job_title",
    "account",
    "owner",
    "lifecycle_stage",
    "stage_history",
    "source",
    "tags",
    "address",
    "language",
    "time_zone",
    "preferred_channel",
    "contact_frequency",
    "attributes",
    "create_time",
    "update_time",
    "delete_time",
    "expire_time",
    "etag",
    "merged_into",
];

/// The read mask's paths; `None` means every field (AIP-157).
pub fn read_paths(mask: Option<&prost_types::FieldMask>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(None);
    };
    let mut paths = Vec::new();
    for path in &mask.paths {
        let path = path.trim();
        if path == "*" {
            return Ok(None);
        }
        if !READABLE.contains(&path) {
            return Err(ApiError::invalid(
                "read_mask",
                format!("{path:?} is not a field of Contact"),
            ));
        }
        paths.push(path.to_owned());
    }
    paths.sort();
    paths.dedup();
    Ok(Some(paths))
}

/// The contact with only the masked fields (and always `name`).
pub fn project(contact: Contact, paths: &[String]) -> Contact {
    let keep = |field: &str| paths.iter().any(|p| p == field);
    let mut out = Contact {
        name: contact.name,
        ..Default::default()
    };
    macro_rules! copy {
        ($($field:ident),*) => {
            $(if keep(stringify!($field)) {
                out.$field = contact.$field;
            })*
        };
    }
    copy!(
        given_name,
        family_name,
        display_name,
        emails,
        phones,
        job_title,
        account,
        owner,
        lifecycle_stage,
        stage_history,
        source,
        tags,
        address,
        language,
        time_zone,
        preferred_channel,
        contact_frequency,
        attributes,
        create_time,
        update_time,
        delete_time,
        expire_time,
        etag,
        merged_into
    );
    out
}

/// The sort key of a contact in `order`: the same values the listing's columns hold.
fn cursor_of(contact: &Contact, order: &[(SortField, bool)]) -> Vec<CursorValue> {
    let micros = |ts: &Option<prost_types::Timestamp>| {
        ts.as_ref()
            .map(crm_platform::db::timestamp_to_micros)
            .unwrap_or_default()
    };
    order
        .iter()
        .map(|(field, _)| match field {
            SortField::CreateTime => CursorValue::Int(micros(&contact.create_time)),
            SortField::UpdateTime => CursorValue::Int(micros(&contact.update_time)),
            SortField::GivenName => CursorValue::Text(contact.given_name.clone()),
            SortField::FamilyName => CursorValue::Text(contact.family_name.clone()),
            SortField::DisplayName => CursorValue::Text(contact.display_name.clone()),
            SortField::Id => {
                CursorValue::Text(contact.name.trim_start_matches("contacts/").to_owned())
            }
        })
        .collect()
}

/// One export in progress: where it stands, and what it needs for the next chunk.
pub struct Export {
    store: ContactStore,
    tokens: PageTokens,
    tenant: String,
    fingerprint: String,
    filter: Option<Condition>,
    order: Vec<(SortField, bool)>,
    after: Option<Vec<CursorValue>>,
    chunk: u64,
    show_deleted: bool,
    paths: Option<Vec<String>>,
    first: bool,
    done: bool,
}

impl Export {
    /// Checks the request, naming the bad field.
    pub fn new(
        store: ContactStore,
        tokens: PageTokens,
        tenant: String,
        request: &ExportContactsRequest,
    ) -> Result<Self, ApiError> {
        let chunk = match request.chunk_size {
            n if n < 0 => return Err(ApiError::invalid("chunk_size", "must not be negative")),
            0 => DEFAULT_CHUNK,
            n => (n as u64).min(MAX_CHUNK),
        };
        let filter = contact_filter(
            &request.filter,
            crm_platform::filter::FilterScope {
                backend: store.backend(),
                tenant: &tenant,
            },
        )?;
        let order = parse_order(&request.order_by)?;
        let paths = read_paths(request.read_mask.as_ref())?;
        let mask_text = paths.as_ref().map(|p| p.join(",")).unwrap_or_default();
        // Bound to everything that shapes the rows, and marked as an export's, so a
        // ListContacts page token cannot be passed off as a resume token.
        let fingerprint = PageTokens::fingerprint(&[
            "export",
            &request.filter,
            &request.order_by,
            if request.show_deleted { "deleted" } else { "" },
            &mask_text,
        ]);
        let after = tokens
            .decode(&request.resume_token, &tenant, &fingerprint)
            .map_err(|_| {
                ApiError::invalid(
                    "resume_token",
                    "not a resume token of this export (tenant, filter, order, show_deleted and read_mask must match)",
                )
            })?;
        Ok(Self {
            store,
            tokens,
            tenant,
            fingerprint,
            filter,
            order,
            after,
            chunk,
            show_deleted: request.show_deleted,
            paths,
            first: true,
            done: false,
        })
    }

    /// The next chunk, or `None` after the last.
    pub async fn next_chunk(&mut self) -> Result<Option<ExportContactsResponse>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let resumed = self.after.is_some();
        let (stored, more) = self
            .store
            .list(
                &self.tenant,
                ListQuery {
                    filter: self.filter.clone(),
                    order: self.order.clone(),
                    after: self.after.clone(),
                    limit: self.chunk,
                    show_deleted: self.show_deleted,
                },
            )
            .await?;
        // Only the first message carries the total. A chunk that starts the listing and
        // ends it holds the whole listing; a resumed export's first chunk does not.
        let total_size = if self.first {
            let count = async || {
                let filter = self.filter.clone();
                self.store
                    .count(&self.tenant, filter, self.show_deleted)
                    .await
            };
            pagination::listing_total(None, stored.len(), resumed || more.is_some(), count)
                .await
                .map(|total| i64::try_from(total).unwrap_or(i64::MAX))?
        } else {
            0
        };
        self.done = more.is_none();
        if stored.is_empty() && !self.first {
            return Ok(None);
        }
        self.first = false;
        if let Some(last) = stored.last() {
            self.after = Some(cursor_of(&last.contact, &self.order));
        }
        let resume_token = match &self.after {
            Some(key) => self
                .tokens
                .encode(&self.tenant, &self.fingerprint, key.clone())?,
            None => String::new(),
        };
        let contacts = stored
            .into_iter()
            .map(|s| match &self.paths {
                Some(paths) => project(s.contact, paths),
                None => s.contact,
            })
            .collect();
        Ok(Some(ExportContactsResponse {
            contacts,
            resume_token,
            total_size,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(read_paths(None).unwrap(), None);
        let mask = |paths: &[&str]| prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        };
        assert_eq!(read_paths(Some(&mask(&["*"]))).unwrap(), None);
        assert!(read_paths(Some(&mask(&["password"]))).is_err());
        let paths = read_paths(Some(&mask(&["given_name", "etag"])))
            .unwrap()
            .unwrap();
        let projected = project(
            Contact {
                name: "contacts/x".into(),
                given_name: "Ana".into(),
                family_name: "López".into(),
                etag: "r1".into(),
                ..Default::default()
            },
            &paths,
        );
        assert_eq!(
            projected,
            Contact {
                name: "contacts/x".into(),
                given_name: "Ana".into(),
                etag: "r1".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn cursors_follow_the_order() {
        let contact = Contact {
            name: "contacts/abc".into(),
            family_name: "Ortiz".into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 2,
                nanos: 5_000,
            }),
            ..Default::default()
        };
        assert_eq!(
            cursor_of(
                &contact,
                &[
                    (SortField::FamilyName, true),
                    (SortField::CreateTime, false),
                    (SortField::Id, false)
                ]
            ),
            [
                CursorValue::Text("Ortiz".into()),
                CursorValue::Int(2_000_005),
                CursorValue::Text("abc".into())
            ]
        );
    }
}
