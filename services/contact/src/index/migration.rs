//! The derived lookup tables of contacts. Portable between SQLite and Postgres.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0006_contact_index"
    }
}

#[derive(DeriveIden)]
pub enum ContactTerms {
    Table,
    TenantId,
    Term,
    Field,
    ContactId,
}

#[derive(DeriveIden)]
pub enum SearchVocabulary {
    Table,
    TenantId,
    Term,
}

#[derive(DeriveIden)]
pub enum ContactAttributes {
    Table,
    TenantId,
    ContactId,
    Key,
    TextValue,
    NumberValue,
    BoolValue,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ContactTerms::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ContactTerms::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTerms::Term)
                            .string_len(254)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTerms::Field)
                            .small_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTerms::ContactId)
                            .string_len(36)
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ContactTerms::TenantId)
                            .col(ContactTerms::Term)
                            .col(ContactTerms::Field)
                            .col(ContactTerms::ContactId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("contact_terms_by_contact")
                    .table(ContactTerms::Table)
                    .col(ContactTerms::TenantId)
                    .col(ContactTerms::ContactId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SearchVocabulary::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SearchVocabulary::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SearchVocabulary::Term)
                            .string_len(254)
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(SearchVocabulary::TenantId)
                            .col(SearchVocabulary::Term),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ContactAttributes::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ContactAttributes::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactAttributes::ContactId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactAttributes::Key)
                            .string_len(63)
                            .not_null(),
                    )
                    .col(ColumnDef::new(ContactAttributes::TextValue).text().null())
                    .col(
                        ColumnDef::new(ContactAttributes::NumberValue)
                            .double()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ContactAttributes::BoolValue)
                            .boolean()
                            .null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ContactAttributes::TenantId)
                            .col(ContactAttributes::ContactId)
                            .col(ContactAttributes::Key),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("contact_attributes_by_text", ContactAttributes::TextValue),
            (
                "contact_attributes_by_number",
                ContactAttributes::NumberValue,
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(ContactAttributes::Table)
                        .col(ContactAttributes::TenantId)
                        .col(ContactAttributes::Key)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
