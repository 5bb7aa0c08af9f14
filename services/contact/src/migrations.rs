//! The contact service's schema. Portable between SQLite and Postgres: ids are text,
//! times are integer microseconds since the epoch.

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(crm_platform::events::OutboxMigration),
            Box::new(crm_platform::events::OutboxAuditColumnsMigration),
            Box::new(crm_platform::idempotency::IdempotencyMigration),
            Box::new(CreateContacts),
            Box::new(crate::accounts::migration::Migration),
            Box::new(crate::timeline::migration::Migration),
            Box::new(crate::consent::migration::Migration),
            Box::new(crate::segments::migration::Migration),
            Box::new(crate::index::migration::Migration),
            Box::new(crate::duplicates::migration::Migration),
            Box::new(crate::index::migration::DropTermsOfDeletedContacts),
            Box::new(ContactsByStage),
            Box::new(crm_platform::events::OutboxUnstampedIndexMigration),
            Box::new(crate::index::migration::NamePairTerms),
            Box::new(crate::index::migration::TermsByContactCovering),
            Box::new(ListElementIndexes),
            Box::new(crate::index::migration::ContactTermSetsMigration),
            Box::new(crate::index::migration::TermsInCodePointOrder),
            Box::new(crm_platform::events::FeedPositionsMigration),
            Box::new(crm_platform::idempotency::IdempotencyExpiryMigration),
            Box::new(TenantListIndexes),
            Box::new(crate::policy::PolicyGuardFunction),
            Box::new(crate::index::migration::VocabularyByLength),
        ]
    }
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    TenantId,
    Id,
    GivenName,
    FamilyName,
    DisplayName,
    PrimaryEmail,
    EmailsIndex,
    PhonesIndex,
    TagsIndex,
    JobTitle,
    Account,
    Owner,
    LifecycleStage,
    Source,
    Language,
    TimeZone,
    Revision,
    CreateTimeUs,
    UpdateTimeUs,
    DeleteTimeUs,
    MergedInto,
    Data,
}

struct CreateContacts;

impl MigrationName for CreateContacts {
    fn name(&self) -> &str {
        "m0001_create_contacts"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateContacts {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let text = |col: Contacts, len: u32| {
            ColumnDef::new(col)
                .string_len(len)
                .not_null()
                .default("")
                .to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table(Contacts::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Contacts::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Contacts::Id).string_len(36).not_null())
                    .col(text(Contacts::GivenName, 200))
                    .col(text(Contacts::FamilyName, 200))
                    .col(text(Contacts::DisplayName, 420))
                    .col(text(Contacts::PrimaryEmail, 254))
                    .col(
                        ColumnDef::new(Contacts::EmailsIndex)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(Contacts::PhonesIndex)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(
                        ColumnDef::new(Contacts::TagsIndex)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(text(Contacts::JobTitle, 200))
                    .col(text(Contacts::Account, 64))
                    .col(text(Contacts::Owner, 128))
                    .col(
                        ColumnDef::new(Contacts::LifecycleStage)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(text(Contacts::Source, 100))
                    .col(text(Contacts::Language, 35))
                    .col(text(Contacts::TimeZone, 64))
                    .col(ColumnDef::new(Contacts::Revision).big_integer().not_null())
                    .col(
                        ColumnDef::new(Contacts::CreateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Contacts::UpdateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Contacts::DeleteTimeUs).big_integer().null())
                    .col(ColumnDef::new(Contacts::MergedInto).string_len(36).null())
                    .col(ColumnDef::new(Contacts::Data).blob().not_null())
                    .primary_key(Index::create().col(Contacts::TenantId).col(Contacts::Id))
                    .to_owned(),
            )
            .await?;
        // The sort orders of ListContacts, each ending in the id tie-breaker.
        for (name, column) in [
            ("contacts_by_create_time", Contacts::CreateTimeUs),
            ("contacts_by_update_time", Contacts::UpdateTimeUs),
            ("contacts_by_family_name", Contacts::FamilyName),
            ("contacts_by_given_name", Contacts::GivenName),
            ("contacts_by_display_name", Contacts::DisplayName),
            ("contacts_by_primary_email", Contacts::PrimaryEmail),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(Contacts::Table)
                        .col(Contacts::TenantId)
                        .col(column)
                        .col(Contacts::Id)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Contacts::Table).to_owned())
            .await
    }
}

/// Life-cycle stage is the most common filter of contact views ("my customers"): an
/// index on it, with the two columns that say a contact is live, lets a listing and
/// its `total_size` read index entries instead of scanning the tenant.
struct ContactsByStage;

impl MigrationName for ContactsByStage {
    fn name(&self) -> &str {
        "m0009_contacts_by_stage"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ContactsByStage {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("contacts_by_stage")
                    .table(Contacts::Table)
                    .col(Contacts::TenantId)
                    .col(Contacts::LifecycleStage)
                    .col(Contacts::DeleteTimeUs)
                    .col(Contacts::MergedInto)
                    .to_owned(),
            )
            .await
    }
}

/// On Postgres, GIN indexes on the elements of the list columns that filters compare
/// (`email`, `phone` and `tags` of contacts, `tags` of accounts), so that `email:
/// "ana@example.com"` finds its contact through the index instead of testing every
/// contact of the tenant (`crm_platform::filter::FieldKind::List`). SQLite compares
/// the lists with `LIKE` and has no such index. `TenantListIndexes` replaces them.
struct ListElementIndexes;

impl MigrationName for ListElementIndexes {
    fn name(&self) -> &str {
        "m0012_list_element_indexes"
    }
}

/// (index, table, list column) of each GIN index.
const LIST_ELEMENT_INDEXES: &[(&str, &str, &str)] = &[
    ("contacts_emails_elements", "contacts", "emails_index"),
    ("contacts_phones_elements", "contacts", "phones_index"),
    ("contacts_tags_elements", "contacts", "tags_index"),
    ("accounts_tags_elements", "accounts", "tags_index"),
];

#[async_trait::async_trait]
impl MigrationTrait for ListElementIndexes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        for (name, table, column) in LIST_ELEMENT_INDEXES {
            manager
                .get_connection()
                .execute_unprepared(&crm_platform::filter::list_index_sql(name, table, column))
                .await?;
        }
        Ok(())
    }
}

/// Replaces the GIN indexes of `ListElementIndexes` by ones keyed by tenant and element
/// (`crm_platform::filter::FieldKind::TenantList`). An element's entry in the old ones
/// held every tenant's rows, so `tags: "vip"` in a tenant of 2,000 people built a bitmap
/// of the 66,779 "vip" people of all tenants and read them: 13.7 ms beside a tenant of
/// a million.
struct TenantListIndexes;

impl MigrationName for TenantListIndexes {
    fn name(&self) -> &str {
        "m0015_tenant_list_indexes"
    }
}

/// (index, table, list column, the index it replaces) of each tenant-scoped GIN index.
const TENANT_LIST_INDEXES: &[(&str, &str, &str, &str)] = &[
    (
        "contacts_emails_by_tenant",
        "contacts",
        "emails_index",
        "contacts_emails_elements",
    ),
    (
        "contacts_phones_by_tenant",
        "contacts",
        "phones_index",
        "contacts_phones_elements",
    ),
    (
        "contacts_tags_by_tenant",
        "contacts",
        "tags_index",
        "contacts_tags_elements",
    ),
    (
        "accounts_tags_by_tenant",
        "accounts",
        "tags_index",
        "accounts_tags_elements",
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for TenantListIndexes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for (name, table, column, replaced) in TENANT_LIST_INDEXES {
            db.execute_unprepared(&crm_platform::filter::tenant_list_index_sql(
                name, table, column,
            ))
            .await?;
            db.execute_unprepared(&format!("DROP INDEX IF EXISTS \"{replaced}\""))
                .await?;
        }
        Ok(())
    }
}
