//! Erasure of personal values from the audit trail (the outbox payloads).

use prost::Message as _;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crm_platform::ApiError;
use crm_platform::errors::from_db;
use crm_platform::events::outbox;
use crm_proto::common::Event;

/// Resource names per query, to keep the `IN` list small.
const CHUNK: usize = 500;
/// What replaces a text field that held a personal value.
const REDACTED: &str = "[redacted]";

fn null_value() -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NullValue(0)),
    }
}

/// Whether `text` contains any of the (lower-cased) personal `values`.
fn mentions(text: &str, values: &[String]) -> bool {
    if text.is_empty() {
        return false;
    }
    let lower = text.to_lowercase();
    values.iter().any(|value| lower.contains(value.as_str()))
}

/// The event with every personal value gone: field changes keep their paths but lose
/// their values, the resource snapshot in `payload` is dropped, and any other text that
/// mentions a personal value is replaced.
pub fn redact(mut event: Event, values: &[String]) -> Event {
    for change in &mut event.changes {
        change.old_value = Some(null_value());
        change.new_value = Some(null_value());
        if mentions(&change.path, values) {
            change.path = REDACTED.to_owned();
        }
    }
    event.payload = None;
    if let Some(actor) = &mut event.actor
        && mentions(&actor.subject, values)
    {
        actor.subject = REDACTED.to_owned();
    }
    if mentions(&event.request_id, values) {
        event.request_id = REDACTED.to_owned();
    }
    event
}

/// Rewrites every outbox row of `resource_names` in `tenant` (see [`redact`]) and marks
/// it redacted; returns the number of rows rewritten. `personal_values` are the
/// person's names, emails and phones, matched case-insensitively. Run it in the
/// erasure's transaction.
pub async fn redact_events<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    resource_names: &[String],
    personal_values: &[String],
) -> Result<u64, ApiError> {
    let values: Vec<String> = personal_values
        .iter()
        .map(|v| v.trim().to_lowercase())
        .filter(|v| !v.is_empty())
        .collect();
    let mut rewritten = 0;
    for chunk in resource_names.chunks(CHUNK) {
        let rows = outbox::Entity::find()
            .filter(outbox::Column::TenantId.eq(tenant))
            .filter(outbox::Column::ResourceName.is_in(chunk.iter().map(String::as_str)))
            .all(conn)
            .await
            .map_err(|e| from_db(e, "audit events"))?;
        for row in rows {
            let event = Event::decode(row.payload.as_slice()).unwrap_or_else(|_| {
                // An undecodable payload may hold anything: keep only what the columns say.
                tracing::warn!(event.id = %row.id, "undecodable outbox payload replaced on erasure");
                Event {
                    id: row.id.clone(),
                    r#type: row.event_type.clone(),
                    tenant: row.tenant_id.clone(),
                    resource_name: row.resource_name.clone(),
                    ..Event::default()
                }
            });
            let event = redact(event, &values);
            let subject = event
                .actor
                .as_ref()
                .map(|a| a.subject.clone())
                .unwrap_or_default();
            let changed_paths =
                crm_platform::events::list_column(event.changes.iter().map(|c| c.path.as_str()));
            outbox::Entity::update_many()
                .col_expr(outbox::Column::Payload, Expr::value(event.encode_to_vec()))
                .col_expr(outbox::Column::ActorSubject, Expr::value(subject))
                .col_expr(outbox::Column::ChangedPaths, Expr::value(changed_paths))
                .col_expr(
                    outbox::Column::RequestId,
                    Expr::value(event.request_id.clone()),
                )
                .col_expr(outbox::Column::Redacted, Expr::value(true))
                .filter(outbox::Column::TenantId.eq(tenant))
                .filter(outbox::Column::Id.eq(row.id.as_str()))
                .exec(conn)
                .await
                .map_err(|e| from_db(e, "audit events"))?;
            rewritten += 1;
        }
    }
    tracing::info!(
        tenant,
        resources = resource_names.len(),
        rewritten,
        "audit events redacted"
    );
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_proto::common::{Actor, FieldChange};

    #[test]
    fn redaction_keeps_paths_and_drops_values() {
        let event = Event {
            id: "e1".into(),
            actor: Some(Actor {
                subject: "ana@example.com".into(),
                roles: vec!["admin".into()],
            }),
            changes: vec![FieldChange {
                path: "given_name".into(),
                old_value: Some(prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("Ana".into())),
                }),
                new_value: None,
            }],
            payload: Some(prost_types::Any {
                type_url: "x".into(),
                value: b"Ana".to_vec(),
            }),
            request_id: "plain".into(),
            ..Event::default()
        };
        let out = redact(event, &["ana@example.com".into(), "ana".into()]);
        assert_eq!(out.changes[0].path, "given_name");
        assert_eq!(out.changes[0].old_value, Some(null_value()));
        assert_eq!(out.changes[0].new_value, Some(null_value()));
        assert!(out.payload.is_none());
        assert_eq!(out.actor.unwrap().subject, REDACTED);
        assert_eq!(out.request_id, "plain");
    }
}
