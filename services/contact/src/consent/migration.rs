//! The tables of this module. Portable between SQLite and Postgres: ids are text,
//! times are integer microseconds since the epoch.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0004_consent"
    }
}

#[derive(DeriveIden)]
pub(crate) enum ConsentRecords {
    Table,
    TenantId,
    Id,
    ContactId,
    Channel,
    Purpose,
    Status,
    Address,
    Source,
    LegalBasis,
    ConsentTimeUs,
    CreateTimeUs,
    Data,
}

#[derive(DeriveIden)]
pub(crate) enum SuppressionSalts {
    Table,
    TenantId,
    Salt,
    CreateTimeUs,
}

#[derive(DeriveIden)]
pub(crate) enum SuppressedEmails {
    Table,
    TenantId,
    EmailHash,
    CreateTimeUs,
}

#[derive(DeriveIden)]
pub(crate) enum ContactSettings {
    Table,
    TenantId,
    DefaultPhoneRegion,
    Revision,
    UpdateTimeUs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let text = |col: ConsentRecords, len: u32| {
            ColumnDef::new(col)
                .string_len(len)
                .not_null()
                .default("")
                .to_owned()
        };
        let int = |col: ConsentRecords| ColumnDef::new(col).integer().not_null().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(ConsentRecords::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ConsentRecords::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(ConsentRecords::Id).string_len(36).not_null())
                    .col(
                        ColumnDef::new(ConsentRecords::ContactId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(int(ConsentRecords::Channel))
                    .col(int(ConsentRecords::Purpose))
                    .col(int(ConsentRecords::Status))
                    .col(text(ConsentRecords::Address, 254))
                    .col(text(ConsentRecords::Source, 200))
                    .col(int(ConsentRecords::LegalBasis))
                    .col(
                        ColumnDef::new(ConsentRecords::ConsentTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConsentRecords::CreateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ConsentRecords::Data).blob().not_null())
                    .primary_key(
                        Index::create()
                            .col(ConsentRecords::TenantId)
                            .col(ConsentRecords::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // GetConsent reads the records of a person's contacts per channel and purpose;
        // ListConsentHistory pages one contact's records newest first.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("consent_records_by_contact")
                    .table(ConsentRecords::Table)
                    .col(ConsentRecords::TenantId)
                    .col(ConsentRecords::ContactId)
                    .col(ConsentRecords::Channel)
                    .col(ConsentRecords::Purpose)
                    .col((ConsentRecords::CreateTimeUs, IndexOrder::Desc))
                    .col(ConsentRecords::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("consent_records_history")
                    .table(ConsentRecords::Table)
                    .col(ConsentRecords::TenantId)
                    .col(ConsentRecords::ContactId)
                    .col((ConsentRecords::CreateTimeUs, IndexOrder::Desc))
                    .col((ConsentRecords::Id, IndexOrder::Desc))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SuppressionSalts::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SuppressionSalts::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SuppressionSalts::Salt)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SuppressionSalts::CreateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(Index::create().col(SuppressionSalts::TenantId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SuppressedEmails::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SuppressedEmails::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SuppressedEmails::EmailHash)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SuppressedEmails::CreateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(SuppressedEmails::TenantId)
                            .col(SuppressedEmails::EmailHash),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ContactSettings::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ContactSettings::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactSettings::DefaultPhoneRegion)
                            .string_len(2)
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(ContactSettings::Revision)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactSettings::UpdateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(Index::create().col(ContactSettings::TenantId))
                    .to_owned(),
            )
            .await
    }
}
