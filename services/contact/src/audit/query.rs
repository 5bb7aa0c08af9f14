//! The audit trail's reads over the outbox: filters, order and keyset pages.

use std::collections::HashMap;

use prost::Message as _;
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Select,
};

use crm_platform::ApiError;
use crm_platform::db::micros_to_timestamp;
use crm_platform::errors::from_db;
use crm_platform::events::{HEARTBEAT_TYPE, outbox};
use crm_platform::filter::{FieldKind, FilterField};
use crm_platform::pagination::{self, KeysetColumn};
use crm_proto::common::Event;
use crm_proto::contact::AuditEvent;

/// The fields of GetRecordHistory's filter, on the outbox's audit columns.
pub const HISTORY_FIELDS: &[FilterField] = &[
    FilterField {
        name: "type",
        column: "event_type",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "actor.subject",
        column: "actor_subject",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "event_time",
        column: "event_time_us",
        kind: FieldKind::Timestamp,
    },
    FilterField {
        name: "changes.path",
        column: "changed_paths",
        kind: FieldKind::List,
    },
];

/// The fields of ListAuditEvents' filter.
pub const AUDIT_FIELDS: &[FilterField] = &[
    FilterField {
        name: "type",
        column: "event_type",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "resource_name",
        column: "resource_name",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "actor.subject",
        column: "actor_subject",
        kind: FieldKind::Text,
    },
    FilterField {
        name: "actor.roles",
        column: "actor_roles",
        kind: FieldKind::List,
    },
    FilterField {
        name: "event_time",
        column: "event_time_us",
        kind: FieldKind::Timestamp,
    },
    FilterField {
        name: "changes.path",
        column: "changed_paths",
        kind: FieldKind::List,
    },
    FilterField {
        name: "request_id",
        column: "request_id",
        kind: FieldKind::Text,
    },
];

/// `order_by` of both methods: only `event_time`, newest first unless `asc` is given.
/// Returns whether the order is descending.
pub fn parse_order(order_by: &str) -> Result<bool, ApiError> {
    let words: Vec<&str> = order_by.split_whitespace().collect();
    match words.as_slice() {
        [] => Ok(true),
        ["event_time"] | ["event_time", "asc"] => Ok(false),
        ["event_time", "desc"] => Ok(true),
        _ => Err(ApiError::invalid(
            "order_by",
            "only \"event_time\" or \"event_time desc\" (the default) may be given",
        )),
    }
}

/// A listing of the tenant's audit trail; each page of it is read by [`page`].
pub struct AuditQuery {
    pub resource_name: Option<String>,
    pub filter: Option<Condition>,
    pub descending: bool,
    pub limit: u64,
}

fn base(tenant: &str, query: &AuditQuery) -> Select<outbox::Entity> {
    let mut select = outbox::Entity::find()
        .filter(outbox::Column::TenantId.eq(tenant))
        // Heartbeats are never stored, but the trail must not show one if ever they are.
        .filter(outbox::Column::EventType.ne(HEARTBEAT_TYPE));
    if let Some(resource) = &query.resource_name {
        select = select.filter(outbox::Column::ResourceName.eq(resource.as_str()));
    }
    if let Some(filter) = &query.filter {
        select = select.filter(filter.clone());
    }
    select
}

/// The trail's `total_size`, as listings give it: exact up to
/// [`crm_platform::db::EXACT_COUNT_LIMIT`] events, the planner's estimate past it on
/// Postgres, so that a tenant's first page does not count a million events.
pub async fn count(
    db: &DatabaseConnection,
    tenant: &str,
    query: &AuditQuery,
) -> Result<u64, ApiError> {
    let select = base(tenant, query)
        .select_only()
        .column(outbox::Column::Id)
        .into_query();
    crm_platform::db::total_size(db, select)
        .await
        .map_err(|e| from_db(e, "audit events"))
}

/// The page's events after `after` (the event time and id of the previous page's last
/// row) and, when more follow, the sort key of its last row.
pub async fn page(
    db: &DatabaseConnection,
    tenant: &str,
    query: &AuditQuery,
    after: Option<(i64, String)>,
) -> Result<(Vec<AuditEvent>, Option<(i64, String)>), ApiError> {
    let mut select = base(tenant, query);
    if let Some((time, id)) = &after {
        select = select.filter(pagination::keyset_after(&[
            KeysetColumn {
                column: Expr::col((outbox::Entity, outbox::Column::EventTimeUs)),
                descending: query.descending,
                value: (*time).into(),
            },
            KeysetColumn {
                column: Expr::col((outbox::Entity, outbox::Column::Id)),
                descending: query.descending,
                value: id.clone().into(),
            },
        ]));
    }
    select = if query.descending {
        select
            .order_by_desc(outbox::Column::EventTimeUs)
            .order_by_desc(outbox::Column::Id)
    } else {
        select
            .order_by_asc(outbox::Column::EventTimeUs)
            .order_by_asc(outbox::Column::Id)
    };
    let mut rows = select
        .limit(query.limit + 1)
        .all(db)
        .await
        .map_err(|e| from_db(e, "audit events"))?;
    let more = rows.len() as u64 > query.limit;
    rows.truncate(query.limit as usize);
    let cursor = match (more, rows.last()) {
        (true, Some(last)) => Some((last.event_time_us, last.id.clone())),
        _ => None,
    };
    Ok((audit_events(db, &rows).await?, cursor))
}

/// Outbox rows as audit entries, each with its feed position if it has one yet.
pub(crate) async fn audit_events<C: ConnectionTrait>(
    conn: &C,
    rows: &[outbox::Model],
) -> Result<Vec<AuditEvent>, ApiError> {
    let positions = crm_platform::events::positions_of(conn, rows.iter().map(|r| r.id.as_str()))
        .await
        .map_err(|e| from_db(e, "audit events"))?;
    Ok(rows
        .iter()
        .map(|row| audit_event(row, &positions))
        .collect())
}

/// An outbox row as an audit entry, with its feed position if it has one yet
/// (`positions` by event id). The payload is decoded for the actor and the changes;
/// should it ever fail to decode, the row's own columns still say what and who.
fn audit_event(row: &outbox::Model, positions: &HashMap<String, i64>) -> AuditEvent {
    let event = Event::decode(row.payload.as_slice()).unwrap_or_else(|err| {
        tracing::error!(event.id = %row.id, error = %err, "undecodable outbox payload in audit trail");
        Event::default()
    });
    let actor = event.actor.or_else(|| {
        Some(crm_proto::common::Actor {
            subject: row.actor_subject.clone(),
            roles: Vec::new(),
        })
    });
    AuditEvent {
        position: positions.get(&row.id).copied().unwrap_or_default(),
        id: row.id.clone(),
        r#type: row.event_type.clone(),
        resource_name: row.resource_name.clone(),
        event_time: Some(micros_to_timestamp(row.event_time_us)),
        actor,
        changes: event.changes,
        request_id: row.request_id.clone(),
        redacted: row.redacted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders() {
        assert!(parse_order("").unwrap());
        assert!(parse_order("event_time desc").unwrap());
        assert!(!parse_order("event_time").unwrap());
        assert!(!parse_order(" event_time  asc ").unwrap());
        assert!(parse_order("create_time").is_err());
        assert!(parse_order("event_time sideways").is_err());
    }
}
