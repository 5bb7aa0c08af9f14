//! Feed positions, kept apart from the outbox rows they order.
//!
//! Why apart: the relay used to stamp a position on the outbox row itself. The position
//! is indexed, so Postgres could not update the row in place: every event was written
//! twice, its payload and every outbox index entry included, and the first copy left
//! for vacuum. Now a writer adds a narrow `outbox_pending` row beside each event (in the
//! same statement on Postgres, the same transaction on SQLite), and the relay moves
//! pending rows to `feed_positions`: the outbox row is written once, and a position
//! costs two small inserts and a delete.

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, Order, Query};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use sea_orm_migration::prelude::*;

use super::outbox;

pub mod outbox_pending {
    //! The `outbox_pending` table: the events committed or being written that have no
    //! position yet, in the order the relay gives them positions.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox_pending")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_time_us: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(DeriveIden)]
enum OutboxPending {
    Table,
    EventTimeUs,
    Id,
    TenantId,
}

#[derive(DeriveIden)]
enum FeedPositions {
    Table,
    Position,
    TenantId,
    EventId,
    EventTimeUs,
}

/// Moves the outbox's positions to `feed_positions` and its unstamped events to
/// `outbox_pending`, then drops the outbox's position column and its indexes. Each
/// service lists it after the other outbox migrations.
///
/// A process of the release before it cannot write once it has run (it sets the
/// column this drops): stop the old release's pods before running it (k8s/README.md).
pub struct FeedPositionsMigration;

impl MigrationName for FeedPositionsMigration {
    fn name(&self) -> &str {
        "m0000_platform_feed_positions"
    }
}

/// The statements that move what the outbox held to the new tables, then drop it.
const MOVE_OUT_OF_THE_OUTBOX: [&str; 6] = [
    "INSERT INTO feed_positions (position, tenant_id, event_id, event_time_us) \
     SELECT position, tenant_id, id, event_time_us FROM outbox WHERE position IS NOT NULL",
    "INSERT INTO outbox_pending (event_time_us, id, tenant_id) \
     SELECT event_time_us, id, tenant_id FROM outbox WHERE position IS NULL",
    "DROP INDEX IF EXISTS outbox_unstamped",
    "DROP INDEX IF EXISTS outbox_position",
    "DROP INDEX IF EXISTS outbox_tenant_position",
    "ALTER TABLE outbox DROP COLUMN position",
];

#[async_trait::async_trait]
impl MigrationTrait for FeedPositionsMigration {
    /// All or nothing on SQLite too: a half-moved outbox could not be moved again.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        if postgres {
            // Each statement below reads its own snapshot: an event written or stamped
            // by another process between two of them would be moved by neither.
            manager
                .get_connection()
                .execute_unprepared("LOCK TABLE outbox IN EXCLUSIVE MODE")
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(OutboxPending::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(OutboxPending::EventTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(OutboxPending::Id).string_len(36).not_null())
                    .col(
                        ColumnDef::new(OutboxPending::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(OutboxPending::EventTimeUs)
                            .col(OutboxPending::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(FeedPositions::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(FeedPositions::Position)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(FeedPositions::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(FeedPositions::EventId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(FeedPositions::EventTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // The indexes after the rows: built once instead of grown row by row.
        let conn = manager.get_connection();
        for statement in MOVE_OUT_OF_THE_OUTBOX {
            conn.execute_unprepared(statement).await?;
        }
        // A tenant's feed, and an audit entry's position.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("feed_positions_tenant")
                    .table(FeedPositions::Table)
                    .col(FeedPositions::TenantId)
                    .col(FeedPositions::Position)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("feed_positions_event")
                    .table(FeedPositions::Table)
                    .col(FeedPositions::EventId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        if postgres {
            // The pending rows are a queue: each is deleted within moments of its
            // insert, and the relay's scan starts where the dead ones gather.
            conn.execute_unprepared(
                "ALTER TABLE outbox_pending SET (autovacuum_vacuum_scale_factor = 0, \
                 autovacuum_vacuum_threshold = 1000)",
            )
            .await?;
            conn.execute_unprepared("ANALYZE feed_positions, outbox_pending")
                .await?;
        }
        Ok(())
    }
}

/// The pending row of a new event, written with its outbox row.
pub(super) fn pending_row(id: &str, tenant: &str, now: i64) -> outbox_pending::ActiveModel {
    outbox_pending::ActiveModel {
        event_time_us: sea_orm::Set(now),
        id: sea_orm::Set(id.to_owned()),
        tenant_id: sea_orm::Set(tenant.to_owned()),
    }
}

fn parameters(backend: DbBackend) -> (&'static str, &'static str) {
    match backend {
        DbBackend::Postgres => ("$1", "$2"),
        _ => ("?1", "?2"),
    }
}

/// Gives the next `batch` pending events, in event time then id order, the positions
/// after `head`, and removes them from the pending ones; returns how many. The caller
/// holds the relay's lock, in a transaction. Run after nearly every write, so each
/// statement's text is fixed and the connection keeps it prepared.
pub(super) async fn stamp_batch<C: ConnectionTrait>(
    txn: &C,
    head: i64,
    batch: i64,
) -> Result<u64, DbErr> {
    let backend = txn.get_database_backend();
    let (head_param, batch_param) = parameters(backend);
    let stamped = txn
        .execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "INSERT INTO feed_positions (position, tenant_id, event_id, event_time_us) \
                 SELECT {head_param} + ROW_NUMBER() OVER (ORDER BY event_time_us, id), \
                 tenant_id, id, event_time_us \
                 FROM (SELECT event_time_us, id, tenant_id FROM outbox_pending \
                 ORDER BY event_time_us, id LIMIT {batch_param}) AS next"
            ),
            [head.into(), batch.into()],
        ))
        .await?
        .rows_affected();
    if stamped > 0 {
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "DELETE FROM outbox_pending WHERE (event_time_us, id) IN \
                 (SELECT event_time_us, event_id FROM feed_positions \
                 WHERE position > {head_param} AND position <= {head_param} + {batch_param})"
            ),
            [head.into(), batch.into()],
        ))
        .await?;
    }
    Ok(stamped)
}

/// (position, event time) of the first `limit` events after position `through`.
pub(super) async fn oldest_after<C: ConnectionTrait>(
    conn: &C,
    through: i64,
    limit: u64,
) -> Result<Vec<(i64, i64)>, DbErr> {
    let rows = conn
        .query_all(
            &Query::select()
                .columns([FeedPositions::Position, FeedPositions::EventTimeUs])
                .from(FeedPositions::Table)
                .and_where(Expr::col(FeedPositions::Position).gt(through))
                .order_by(FeedPositions::Position, Order::Asc)
                .limit(limit)
                .to_owned(),
        )
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?)))
        .collect()
}

/// Deletes the events at positions after `after` up to `through`, with their positions;
/// returns how many events.
pub(super) async fn delete_range<C: ConnectionTrait>(
    conn: &C,
    after: i64,
    through: i64,
) -> Result<u64, DbErr> {
    let in_range = Expr::col(FeedPositions::Position)
        .gt(after)
        .and(Expr::col(FeedPositions::Position).lte(through));
    let deleted = conn
        .execute(
            &Query::delete()
                .from_table(outbox::Entity)
                .and_where(
                    Expr::col(outbox::Column::Id).in_subquery(
                        Query::select()
                            .column(FeedPositions::EventId)
                            .from(FeedPositions::Table)
                            .cond_where(in_range.clone())
                            .to_owned(),
                    ),
                )
                .to_owned(),
        )
        .await?
        .rows_affected();
    conn.execute(
        &Query::delete()
            .from_table(FeedPositions::Table)
            .cond_where(in_range)
            .to_owned(),
    )
    .await?;
    Ok(deleted)
}

/// A page of the feed: (position, payload) of the events after `cursor` and at or
/// before `through`, in position order, of one tenant or all, of some types or all.
pub(super) async fn page_after<C: ConnectionTrait>(
    conn: &C,
    cursor: i64,
    through: i64,
    tenant: Option<&str>,
    types: &[String],
    limit: u64,
) -> Result<Vec<(i64, Vec<u8>)>, DbErr> {
    let mut query = Query::select();
    query
        .column((FeedPositions::Table, FeedPositions::Position))
        .column((outbox::Entity, outbox::Column::Payload))
        .from(FeedPositions::Table)
        .inner_join(
            outbox::Entity,
            Expr::col((outbox::Entity, outbox::Column::Id))
                .equals((FeedPositions::Table, FeedPositions::EventId)),
        )
        .and_where(Expr::col((FeedPositions::Table, FeedPositions::Position)).gt(cursor))
        .and_where(Expr::col((FeedPositions::Table, FeedPositions::Position)).lte(through))
        .order_by((FeedPositions::Table, FeedPositions::Position), Order::Asc)
        .limit(limit);
    if let Some(tenant) = tenant {
        query.and_where(Expr::col((FeedPositions::Table, FeedPositions::TenantId)).eq(tenant));
    }
    if !types.is_empty() {
        query.and_where(
            Expr::col((outbox::Entity, outbox::Column::EventType))
                .is_in(types.iter().map(String::as_str)),
        );
    }
    let rows = conn.query_all(&query).await?;
    rows.iter()
        .map(|row| Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?)))
        .collect()
}

/// The positions of the events `ids` that have one.
pub async fn positions_of<C: ConnectionTrait>(
    conn: &C,
    ids: impl IntoIterator<Item = &str>,
) -> Result<HashMap<String, i64>, DbErr> {
    let ids: Vec<&str> = ids.into_iter().collect();
    let mut positions = HashMap::with_capacity(ids.len());
    // Bounded lists: SQLite caps the parameters of one statement.
    for chunk in ids.chunks(500) {
        let of_chunk = crate::lookup::any_text(
            conn.get_database_backend(),
            Expr::col(FeedPositions::EventId),
            chunk.iter().copied(),
        );
        let rows = conn
            .query_all(
                &Query::select()
                    .columns([FeedPositions::EventId, FeedPositions::Position])
                    .from(FeedPositions::Table)
                    .and_where(of_chunk)
                    .to_owned(),
            )
            .await?;
        for row in rows {
            positions.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
        }
    }
    Ok(positions)
}

/// How many events wait for a position.
pub async fn pending_count<C: ConnectionTrait>(conn: &C) -> Result<i64, DbErr> {
    let row = conn
        .query_one(
            &Query::select()
                .expr(Expr::col(OutboxPending::Id).count())
                .from(OutboxPending::Table)
                .to_owned(),
        )
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("outbox_pending".into()))?;
    row.try_get_by_index(0)
}
