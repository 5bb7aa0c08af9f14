//! Request ids (AIP-155): a mutating call retried with the same `request_id` has its
//! effect once and answers with the same resource. Keys are stored in the same
//! transaction as the change, with a hash of the request, so a request id reused for a
//! different request is refused.

use sea_orm::sea_query::{Expr, Order, Query};
use sea_orm::{ConnectionTrait, DbErr, TransactionSession, TransactionTrait};
use sea_orm_migration::prelude::*;
use sha2::{Digest, Sha256};

use crate::db::{now_micros, try_lock_in_transaction};
use crate::errors::ApiError;

pub struct IdempotencyMigration;

impl MigrationName for IdempotencyMigration {
    fn name(&self) -> &str {
        "m0000_platform_idempotency"
    }
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    TenantId,
    Method,
    RequestId,
    RequestHash,
    ResourceName,
    CreateTimeUs,
}

#[async_trait::async_trait]
impl MigrationTrait for IdempotencyMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(IdempotencyKeys::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::Method)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::RequestId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::RequestHash)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::ResourceName)
                            .string_len(160)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::CreateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::TenantId)
                            .col(IdempotencyKeys::Method)
                            .col(IdempotencyKeys::RequestId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned())
            .await
    }
}

/// An index on the keys' creation time, so that expired keys are found without a scan.
pub struct IdempotencyExpiryMigration;

impl MigrationName for IdempotencyExpiryMigration {
    fn name(&self) -> &str {
        "m0000_platform_idempotency_expiry"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for IdempotencyExpiryMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idempotency_keys_by_time")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::CreateTimeUs)
                    .to_owned(),
            )
            .await
    }
}

/// Keys deleted per statement, so that a large backlog never holds one long lock.
const EXPIRY_BATCH: u64 = 5_000;

/// Deletes the request ids recorded before `cutoff` (µs since the epoch), oldest first,
/// in batches; returns how many. A retry after that is a new request. Each batch is a
/// transaction holding the service's expiry lock, so that the replicas of a service
/// take turns instead of deleting the same keys at once: `None` if another replica
/// held it before this one deleted anything (the pass is left to that one).
pub async fn delete_recorded_before<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    service: &str,
    cutoff: i64,
) -> Result<Option<u64>, DbErr> {
    delete_in_batches(db, service, cutoff, EXPIRY_BATCH).await
}

async fn delete_in_batches<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    service: &str,
    cutoff: i64,
    batch: u64,
) -> Result<Option<u64>, DbErr> {
    let lock = format!("request-id-expiry:{service}");
    let mut deleted = 0;
    loop {
        let txn = db.begin().await?;
        if !try_lock_in_transaction(&txn, &lock).await? {
            txn.rollback().await?;
            return Ok((deleted > 0).then_some(deleted));
        }
        let n = delete_oldest(&txn, cutoff, batch).await?;
        txn.commit().await?;
        deleted += n;
        if n < batch {
            return Ok(Some(deleted));
        }
    }
}

/// Deletes the `batch` oldest request ids recorded before `cutoff`; returns how many.
async fn delete_oldest<C: ConnectionTrait>(
    conn: &C,
    cutoff: i64,
    batch: u64,
) -> Result<u64, DbErr> {
    let oldest = Query::select()
        .columns([
            IdempotencyKeys::TenantId,
            IdempotencyKeys::Method,
            IdempotencyKeys::RequestId,
        ])
        .from(IdempotencyKeys::Table)
        .and_where(Expr::col(IdempotencyKeys::CreateTimeUs).lt(cutoff))
        .order_by(IdempotencyKeys::CreateTimeUs, Order::Asc)
        .limit(batch)
        .to_owned();
    let key = Expr::tuple([
        Expr::col(IdempotencyKeys::TenantId),
        Expr::col(IdempotencyKeys::Method),
        Expr::col(IdempotencyKeys::RequestId),
    ]);
    Ok(conn
        .execute(
            &Query::delete()
                .from_table(IdempotencyKeys::Table)
                .and_where(key.in_subquery(oldest))
                .to_owned(),
        )
        .await?
        .rows_affected())
}

/// Forgets request ids older than `server.request_id_retention_hours`, once a minute,
/// until the service's feed stops (its life). Each service runs it on its own database.
pub fn spawn_expiry(
    db: sea_orm::DatabaseConnection,
    service: &'static str,
    config: &crate::config::Config,
    feed: crate::events::EventFeed,
) -> tokio::task::JoinHandle<()> {
    let retention = config
        .server
        .request_id_retention_hours
        .saturating_mul(3_600_000_000);
    let retention = <i64 as TryFrom<u64>>::try_from(retention).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = feed.stopped() => return,
                _ = every_minute.tick() => {}
            }
            let cutoff = now_micros().saturating_sub(retention);
            match delete_recorded_before(&db, service, cutoff).await {
                Ok(Some(0)) => {}
                Ok(Some(deleted)) => {
                    tracing::info!(service, deleted, "expired request ids deleted")
                }
                Ok(None) => tracing::debug!(service, "another replica is expiring request ids"),
                Err(err) => tracing::warn!(service, error = %err, "request id expiry failed"),
            }
        }
    })
}

/// A request id, checked: 1 to 128 printable ASCII characters (a UUID is typical).
pub fn validate(request_id: &str) -> Result<(), ApiError> {
    if request_id.len() > 128 || !request_id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "request_id",
            "must be at most 128 printable ASCII characters",
        ));
    }
    Ok(())
}

/// The hash of an encoded request, to tell a retry from a reuse of its id.
pub fn request_hash(encoded: &[u8]) -> String {
    let digest = Sha256::digest(encoded);
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The resource a previous call with this request id produced, if any.
pub async fn lookup<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    method: &str,
    request_id: &str,
    hash: &str,
) -> Result<Option<String>, ApiError> {
    let row = conn
        .query_one(
            &Query::select()
                .columns([IdempotencyKeys::RequestHash, IdempotencyKeys::ResourceName])
                .from(IdempotencyKeys::Table)
                .and_where(Expr::col(IdempotencyKeys::TenantId).eq(tenant))
                .and_where(Expr::col(IdempotencyKeys::Method).eq(method))
                .and_where(Expr::col(IdempotencyKeys::RequestId).eq(request_id))
                .to_owned(),
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let stored_hash: String = row.try_get_by_index(0)?;
    let resource: String = row.try_get_by_index(1)?;
    if stored_hash != hash {
        return Err(ApiError::invalid(
            "request_id",
            "was already used for a different request",
        ));
    }
    Ok(Some(resource))
}

/// Records the request id in the caller's transaction.
pub async fn record<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    method: &str,
    request_id: &str,
    hash: &str,
    resource: &str,
) -> Result<(), DbErr> {
    conn.execute(
        &Query::insert()
            .into_table(IdempotencyKeys::Table)
            .columns([
                IdempotencyKeys::TenantId,
                IdempotencyKeys::Method,
                IdempotencyKeys::RequestId,
                IdempotencyKeys::RequestHash,
                IdempotencyKeys::ResourceName,
                IdempotencyKeys::CreateTimeUs,
            ])
            .values_panic([
                tenant.into(),
                method.into(),
                request_id.into(),
                hash.into(),
                resource.into(),
                now_micros().into(),
            ])
            .to_owned(),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::DatabaseConnection;
    use sea_orm_migration::SchemaManager;

    async fn database() -> (DatabaseConnection, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/keys.db?mode=rwc", dir.path().display());
        let db = sea_orm::Database::connect(url).await.unwrap();
        let schema = SchemaManager::new(&db);
        IdempotencyMigration.up(&schema).await.unwrap();
        IdempotencyExpiryMigration.up(&schema).await.unwrap();
        (db, dir)
    }

    #[tokio::test]
    async fn expired_request_ids_are_deleted_oldest_first_in_batches() {
        let (db, _dir) = database().await;
        for n in 0..7 {
            let id = format!("req-{n}");
            record(
                &db,
                "acme",
                "CreateContact",
                &id,
                "h",
                &format!("contacts/{n}"),
            )
            .await
            .unwrap();
        }
        // Five of them were recorded long ago, at times 1 to 5.
        db.execute_unprepared(
            "UPDATE idempotency_keys SET create_time_us = CAST(substr(request_id, 5) AS INTEGER) + 1 \
             WHERE request_id IN ('req-0', 'req-1', 'req-2', 'req-3', 'req-4')",
        )
        .await
        .unwrap();
        let left = |db: &DatabaseConnection| {
            let db = db.clone();
            async move {
                let rows = db
                    .query_all(
                        &Query::select()
                            .column(IdempotencyKeys::RequestId)
                            .from(IdempotencyKeys::Table)
                            .order_by(IdempotencyKeys::RequestId, Order::Asc)
                            .to_owned(),
                    )
                    .await
                    .unwrap();
                rows.iter()
                    .map(|row| row.try_get_by_index::<String>(0).unwrap())
                    .collect::<Vec<_>>()
            }
        };
        // One batch takes the oldest two.
        assert_eq!(delete_oldest(&db, 1_000, 2).await.unwrap(), 2);
        assert_eq!(
            left(&db).await,
            ["req-2", "req-3", "req-4", "req-5", "req-6"]
        );
        assert_eq!(
            delete_in_batches(&db, "test", 1_000, 2).await.unwrap(),
            Some(3)
        );
        assert_eq!(
            delete_in_batches(&db, "test", 1_000, 2).await.unwrap(),
            Some(0)
        );
        for n in 0..5 {
            let found = lookup(&db, "acme", "CreateContact", &format!("req-{n}"), "h")
                .await
                .unwrap();
            assert_eq!(found, None, "req-{n} is forgotten");
        }
        for n in 5..7 {
            let found = lookup(&db, "acme", "CreateContact", &format!("req-{n}"), "h")
                .await
                .unwrap();
            assert_eq!(found, Some(format!("contacts/{n}")), "req-{n} is kept");
        }
        // A forgotten id is a new request: it can be recorded again.
        record(
            &db,
            "acme",
            "CreateContact",
            "req-0",
            "other",
            "contacts/new",
        )
        .await
        .unwrap();
    }
}
