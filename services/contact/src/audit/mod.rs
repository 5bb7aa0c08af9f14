//! Audit history, read from the outbox (the event feed): who changed which field when,
//! with old and new values (gone after an erasure).

mod query;
mod redact;

use tonic::{Request, Response, Status};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::filter::{self, FilterField};
use crm_platform::pagination::{self, KeysetPage, PageTokens};
use crm_proto::contact::*;

use crate::context::Context;
use crate::domain::names;

pub use query::{AUDIT_FIELDS, HISTORY_FIELDS};
pub use redact::{redact, redact_events};

/// The collections whose records have a history, and the tenant's singletons.
const COLLECTIONS: &[&str] = &[
    "contacts",
    "accounts",
    "interactions",
    "episodes",
    "segments",
];
const SINGLETONS: &[&str] = &["duplicateRules", "contactSettings"];

/// A record name in its canonical form (ids lower-cased), or INVALID_ARGUMENT on `name`.
/// Every event about the given records, newest first (for the GDPR export).
pub async fn events_about<C: sea_orm::ConnectionTrait>(
    conn: &C,
    tenant: &str,
    resource_names: &[String],
) -> Result<Vec<AuditEvent>, ApiError> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    let mut events = Vec::new();
    for chunk in resource_names.chunks(500) {
        let rows = crm_platform::events::outbox::Entity::find()
            .filter(crm_platform::events::outbox::Column::TenantId.eq(tenant))
            .filter(
                crm_platform::events::outbox::Column::ResourceName
                    .is_in(chunk.iter().map(String::as_str)),
            )
            .order_by_desc(crm_platform::events::outbox::Column::EventTimeUs)
            .all(conn)
            .await
            .map_err(|e| crm_platform::errors::from_db(e, "audit events"))?;
        events.extend(query::audit_events(conn, &rows).await?);
    }
    events.sort_by(|a, b| {
        let time = |e: &AuditEvent| e.event_time.as_ref().map(|t| (t.seconds, t.nanos));
        time(b).cmp(&time(a)).then_with(|| b.id.cmp(&a.id))
    });
    Ok(events)
}

pub fn record_name(name: &str) -> Result<String, ApiError> {
    if SINGLETONS.contains(&name) {
        return Ok(name.to_owned());
    }
    let invalid = || {
        ApiError::invalid(
            "name",
            format!(
                "must be {{collection}}/{{id}} with a collection of {}, or one of {}",
                COLLECTIONS.join(", "),
                SINGLETONS.join(", ")
            ),
        )
    };
    let (collection, _) = name.split_once('/').ok_or_else(invalid)?;
    if !COLLECTIONS.contains(&collection) {
        return Err(invalid());
    }
    let id = names::parse(collection, "name", name)?;
    Ok(format!("{collection}/{id}"))
}

pub struct AuditApi {
    ctx: Context,
}

/// The parts shared by both methods' requests.
struct Listing<'a> {
    kind: &'static str,
    resource_name: Option<String>,
    page_size: i32,
    page_token: &'a str,
    filter: &'a str,
    order_by: &'a str,
    fields: &'static [FilterField],
}

impl AuditApi {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    async fn list(
        &self,
        caller: &Caller,
        listing: Listing<'_>,
    ) -> Result<KeysetPage<AuditEvent>, ApiError> {
        let limit = pagination::page_size(listing.page_size, 50, 1000)?;
        let descending = query::parse_order(listing.order_by)?;
        let condition = filter::condition(
            listing.filter,
            listing.fields,
            self.ctx.filter_scope(&caller.tenant),
        )?;
        let fingerprint = PageTokens::fingerprint(&[
            listing.kind,
            listing.resource_name.as_deref().unwrap_or_default(),
            listing.filter,
            if descending { "desc" } else { "asc" },
        ]);
        let audit = query::AuditQuery {
            resource_name: listing.resource_name,
            filter: condition,
            descending,
            limit,
        };
        self.ctx
            .tokens
            .keyset_page(
                listing.page_token,
                &caller.tenant,
                &fingerprint,
                async |key| {
                    let after = key
                        .as_deref()
                        .map(pagination::parse_time_and_id_key)
                        .transpose()?;
                    let (events, last) =
                        query::page(&self.ctx.db, &caller.tenant, &audit, after).await?;
                    Ok((events, last.map(pagination::time_and_id_key)))
                },
                async || query::count(&self.ctx.db, &caller.tenant, &audit).await,
            )
            .await
    }

    pub async fn get_record_history(
        &self,
        request: Request<GetRecordHistoryRequest>,
    ) -> Result<Response<GetRecordHistoryResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let name = record_name(&request.name)?;
        let page = self
            .list(
                &caller,
                Listing {
                    kind: "history",
                    resource_name: Some(name),
                    page_size: request.page_size,
                    page_token: &request.page_token,
                    filter: &request.filter,
                    order_by: &request.order_by,
                    fields: HISTORY_FIELDS,
                },
            )
            .await?;
        Ok(Response::new(GetRecordHistoryResponse {
            total_size: page.total_size_i64(),
            audit_events: page.rows,
            next_page_token: page.next_page_token,
        }))
    }

    pub async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let caller = Caller::from_request(&request)?;
        let request = request.into_inner();
        let page = self
            .list(
                &caller,
                Listing {
                    kind: "audit",
                    resource_name: None,
                    page_size: request.page_size,
                    page_token: &request.page_token,
                    filter: &request.filter,
                    order_by: &request.order_by,
                    fields: AUDIT_FIELDS,
                },
            )
            .await?;
        Ok(Response::new(ListAuditEventsResponse {
            total_size: page.total_size_i64(),
            audit_events: page.rows,
            next_page_token: page.next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names() {
        let id = "0192f0c1-7b1e-7cc3-9a44-4d2a3f1e9b10";
        assert_eq!(
            record_name(&format!("contacts/{}", id.to_uppercase())).unwrap(),
            format!("contacts/{id}")
        );
        assert!(record_name(&format!("segments/{id}")).is_ok());
        assert_eq!(record_name("contactSettings").unwrap(), "contactSettings");
        assert!(record_name("duplicateRules").is_ok());
        assert!(record_name(&format!("tickets/{id}")).is_err());
        assert!(record_name("contacts/nope").is_err());
        assert!(record_name("").is_err());
        assert!(record_name("contactSettings/x").is_err());
    }
}
