//! What other modules ask of static memberships: merges re-point them, the GDPR export
//! lists them.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
};

use crm_platform::ApiError;
use crm_platform::errors::from_db;

use super::store::{member_row, segment_name};

/// Moves the static memberships of `losers` to `winner` (ids, not names), without
/// duplicates: a segment that already holds the winner just loses the losers. Returns
/// how many memberships moved to the winner. Run it in the merge's transaction.
pub async fn repoint_contacts<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    losers: &[String],
    winner: &str,
) -> Result<u64, ApiError> {
    let losers: Vec<&str> = losers
        .iter()
        .map(String::as_str)
        .filter(|loser| *loser != winner)
        .collect();
    if losers.is_empty() {
        return Ok(0);
    }
    let loser_rows: Vec<(String, i64)> = member_row::Entity::find()
        .select_only()
        .column(member_row::Column::SegmentId)
        .column(member_row::Column::AddTimeUs)
        .filter(member_row::Column::TenantId.eq(tenant))
        .filter(member_row::Column::ContactId.is_in(losers.iter().copied()))
        .into_tuple()
        .all(conn)
        .await
        .map_err(|e| from_db(e, "segment members"))?;
    if loser_rows.is_empty() {
        return Ok(0);
    }
    let mut held: Vec<String> = member_row::Entity::find()
        .select_only()
        .column(member_row::Column::SegmentId)
        .filter(member_row::Column::TenantId.eq(tenant))
        .filter(member_row::Column::ContactId.eq(winner))
        .into_tuple()
        .all(conn)
        .await
        .map_err(|e| from_db(e, "segment members"))?;
    let mut moved = Vec::new();
    for (segment_id, add_time_us) in loser_rows {
        if held.contains(&segment_id) {
            continue;
        }
        held.push(segment_id.clone());
        moved.push(member_row::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            segment_id: Set(segment_id),
            contact_id: Set(winner.to_owned()),
            // The winner joined the list when the first of the merged people did.
            add_time_us: Set(add_time_us),
        });
    }
    member_row::Entity::delete_many()
        .filter(member_row::Column::TenantId.eq(tenant))
        .filter(member_row::Column::ContactId.is_in(losers.iter().copied()))
        .exec(conn)
        .await
        .map_err(|e| from_db(e, "segment members"))?;
    let count = moved.len() as u64;
    if !moved.is_empty() {
        member_row::Entity::insert_many(moved)
            .exec_without_returning(conn)
            .await
            .map_err(|e| from_db(e, "segment members"))?;
    }
    Ok(count)
}

/// The static segments (`segments/{id}`) that list the contact `contact_id` (an id).
pub async fn static_segments_for<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contact_id: &str,
) -> Result<Vec<String>, ApiError> {
    let ids: Vec<String> = member_row::Entity::find()
        .select_only()
        .column(member_row::Column::SegmentId)
        .filter(member_row::Column::TenantId.eq(tenant))
        .filter(member_row::Column::ContactId.eq(contact_id))
        .into_tuple()
        .all(conn)
        .await
        .map_err(|e| from_db(e, "segment members"))?;
    Ok(ids.iter().map(|id| segment_name(id)).collect())
}
