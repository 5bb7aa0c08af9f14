//! Answers for retried calls whose response is not a stored record (merge, erasure):
//! the first call's response is the payload of the event it published, found by the
//! request id.

use prost::Message;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

use crm_platform::ApiError;
use crm_platform::errors::from_db;
use crm_platform::events::outbox;
use crm_proto::common::Event;

/// The payload of the `event_type` event about `resource` that carried `request_id`.
pub async fn response_from_event<M: Message + Default, C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    resource: &str,
    event_type: &str,
    request_id: &str,
) -> Result<Option<M>, ApiError> {
    let rows = outbox::Entity::find()
        .filter(outbox::Column::TenantId.eq(tenant))
        .filter(outbox::Column::ResourceName.eq(resource))
        .filter(outbox::Column::EventType.eq(event_type))
        .order_by_desc(outbox::Column::EventTimeUs)
        .all(conn)
        .await
        .map_err(|e| from_db(e, "event"))?;
    for row in rows {
        let Ok(event) = Event::decode(row.payload.as_slice()) else {
            continue;
        };
        if event.request_id == request_id
            && let Some(payload) = event.payload
            && let Ok(response) = M::decode(payload.value.as_slice())
        {
            return Ok(Some(response));
        }
    }
    Ok(None)
}
