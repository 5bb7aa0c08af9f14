//! The tables of this module. Portable between SQLite and Postgres: ids are text,
//! times are integer microseconds since the epoch.
//!
//! The whole account is stored encoded in `data`; the other columns are copies of what
//! filters, sorts and lookups need. Custom attributes live only in `data`: attribute
//! filtering comes from a shared mechanism, not from columns here.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0002_accounts"
    }
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    TenantId,
    Id,
    DisplayName,
    Domain,
    Industry,
    EmployeeCount,
    RevenueCurrency,
    RevenueUnits,
    Tier,
    Owner,
    ParentAccount,
    TagsIndex,
    CountryCode,
    Revision,
    CreateTimeUs,
    UpdateTimeUs,
    DeleteTimeUs,
    ExpireTimeUs,
    Data,
}

#[derive(DeriveIden)]
enum Contacts {
    Table,
    TenantId,
    Account,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let text = |col: Accounts, len: u32| {
            ColumnDef::new(col)
                .string_len(len)
                .not_null()
                .default("")
                .to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Accounts::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Accounts::Id).string_len(36).not_null())
                    .col(text(Accounts::DisplayName, 200))
                    .col(text(Accounts::Domain, 253))
                    .col(text(Accounts::Industry, 200))
                    .col(
                        ColumnDef::new(Accounts::EmployeeCount)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(text(Accounts::RevenueCurrency, 3))
                    .col(ColumnDef::new(Accounts::RevenueUnits).big_integer().null())
                    .col(
                        ColumnDef::new(Accounts::Tier)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(text(Accounts::Owner, 128))
                    .col(text(Accounts::ParentAccount, 64))
                    .col(
                        ColumnDef::new(Accounts::TagsIndex)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(text(Accounts::CountryCode, 2))
                    .col(ColumnDef::new(Accounts::Revision).big_integer().not_null())
                    .col(
                        ColumnDef::new(Accounts::CreateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Accounts::UpdateTimeUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Accounts::DeleteTimeUs).big_integer().null())
                    .col(ColumnDef::new(Accounts::ExpireTimeUs).big_integer().null())
                    .col(ColumnDef::new(Accounts::Data).blob().not_null())
                    .primary_key(Index::create().col(Accounts::TenantId).col(Accounts::Id))
                    .to_owned(),
            )
            .await?;
        // The sort orders of ListAccounts, each ending in the id tie-breaker; the parent
        // lookup (children of an account, ancestor walks); the purge sweep.
        for (name, column) in [
            ("accounts_by_create_time", Accounts::CreateTimeUs),
            ("accounts_by_update_time", Accounts::UpdateTimeUs),
            ("accounts_by_display_name", Accounts::DisplayName),
            ("accounts_by_domain", Accounts::Domain),
            ("accounts_by_employee_count", Accounts::EmployeeCount),
            ("accounts_by_parent", Accounts::ParentAccount),
            ("accounts_by_expire_time", Accounts::ExpireTimeUs),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(Accounts::Table)
                        .col(Accounts::TenantId)
                        .col(column)
                        .col(Accounts::Id)
                        .to_owned(),
                )
                .await?;
        }
        // contact_count groups the contacts of a page of accounts by `account`, and the
        // purge finds an account's contacts: both need this index on the contacts table.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("contacts_by_account")
                    .table(Contacts::Table)
                    .col(Contacts::TenantId)
                    .col(Contacts::Account)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("contacts_by_account")
                    .table(Contacts::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Accounts::Table).to_owned())
            .await
    }
}
