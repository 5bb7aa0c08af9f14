//! The tenant's duplicate rules: one row per tenant. Portable between SQLite and
//! Postgres.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0007_duplicate_rules"
    }
}

#[derive(DeriveIden)]
pub enum DuplicateRulesTable {
    #[sea_orm(iden = "duplicate_rules")]
    Table,
    TenantId,
    Revision,
    UpdateTimeUs,
    Data,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DuplicateRulesTable::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(DuplicateRulesTable::TenantId)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(DuplicateRulesTable::Revision)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(DuplicateRulesTable::UpdateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(DuplicateRulesTable::Data).blob().not_null())
                    .to_owned(),
            )
            .await
    }
}
