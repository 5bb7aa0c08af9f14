//! The tables of this module. Portable between SQLite and Postgres: ids are text,
//! times are integer microseconds since the epoch.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0005_segments"
    }
}

#[derive(DeriveIden)]
enum Segments {
    Table,
    TenantId,
    Id,
    DisplayName,
    Description,
    SegmentType,
    Filter,
    Owner,
    Revision,
    CreateTimeUs,
    UpdateTimeUs,
}

#[derive(DeriveIden)]
enum SegmentMembers {
    Table,
    TenantId,
    SegmentId,
    ContactId,
    AddTimeUs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Segments::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Segments::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Segments::Id).string_len(36).not_null())
                    .col(
                        ColumnDef::new(Segments::DisplayName)
                            .string_len(200)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Segments::Description)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(ColumnDef::new(Segments::SegmentType).integer().not_null())
                    .col(
                        ColumnDef::new(Segments::Filter)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(Segments::Owner)
                            .string_len(128)
                            .not_null()
                            .default(""),
                    )
                    .col(ColumnDef::new(Segments::Revision).big_integer().not_null())
                    .col(
                        ColumnDef::new(Segments::CreateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Segments::UpdateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(Index::create().col(Segments::TenantId).col(Segments::Id))
                    .to_owned(),
            )
            .await?;
        // The sort orders of ListSegments, each ending in the id tie-breaker.
        for (name, column) in [
            ("segments_by_create_time", Segments::CreateTimeUs),
            ("segments_by_update_time", Segments::UpdateTimeUs),
            ("segments_by_display_name", Segments::DisplayName),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(Segments::Table)
                        .col(Segments::TenantId)
                        .col(column)
                        .col(Segments::Id)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(SegmentMembers::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SegmentMembers::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SegmentMembers::SegmentId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SegmentMembers::ContactId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SegmentMembers::AddTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(SegmentMembers::TenantId)
                            .col(SegmentMembers::SegmentId)
                            .col(SegmentMembers::ContactId),
                    )
                    .to_owned(),
            )
            .await?;
        // Lookups by contact: merges re-point memberships, the GDPR export lists them.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("segment_members_by_contact")
                    .table(SegmentMembers::Table)
                    .col(SegmentMembers::TenantId)
                    .col(SegmentMembers::ContactId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SegmentMembers::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Segments::Table).to_owned())
            .await
    }
}
