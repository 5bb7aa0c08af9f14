//! Request ids (AIP-155): a mutating call retried with the same `request_id` has its
//! effect once and answers with the same resource. Keys are stored in the same
//! transaction as the change, with a hash of the request, so a request id reused for a
//! different request is refused.

use sea_orm::sea_query::{Expr, Query};
use sea_orm::{ConnectionTrait, DbErr};
use sea_orm_migration::prelude::*;
use sha2::{Digest, Sha256};

use crate::db::now_micros;
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
