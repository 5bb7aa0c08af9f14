//! The tables of the timeline. Portable between SQLite and Postgres: ids are text,
//! times are integer microseconds since the epoch. Every key and index starts with
//! `tenant_id`, so no query ever reads another tenant's rows.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0003_timeline"
    }
}

#[derive(DeriveIden)]
enum Interactions {
    Table,
    TenantId,
    Id,
    InteractionType,
    Channel,
    Direction,
    Outcome,
    Episode,
    Source,
    Creator,
    ContactId,
    Account,
    ParticipantUsers,
    InteractionTimeUs,
    CreateTimeUs,
    UpdateTimeUs,
    Revision,
    Data,
}

#[derive(DeriveIden)]
enum InteractionContacts {
    Table,
    TenantId,
    ContactId,
    InteractionId,
    LinkTimeUs,
}

#[derive(DeriveIden)]
enum Episodes {
    Table,
    TenantId,
    Id,
    DisplayName,
    Contact,
    Account,
    Creator,
    StartTimeUs,
    EndTimeUs,
    CreateTimeUs,
    UpdateTimeUs,
    Revision,
    Data,
}

fn text<T: IntoIden>(column: T, len: u32) -> ColumnDef {
    ColumnDef::new(column)
        .string_len(len)
        .not_null()
        .default("")
        .to_owned()
}

fn int<T: IntoIden>(column: T) -> ColumnDef {
    ColumnDef::new(column)
        .integer()
        .not_null()
        .default(0)
        .to_owned()
}

fn micros<T: IntoIden>(column: T) -> ColumnDef {
    ColumnDef::new(column).big_integer().not_null().to_owned()
}

async fn index<T: IntoIden>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: Vec<IndexColumn>,
) -> Result<(), DbErr> {
    let mut statement = Index::create();
    statement.if_not_exists().name(name).table(table);
    for column in columns {
        statement.col(column);
    }
    manager.create_index(statement.to_owned()).await
}

fn asc<T: IntoIden>(column: T) -> IndexColumn {
    IndexColumn::from(column.into_iden())
}

fn desc<T: IntoIden>(column: T) -> IndexColumn {
    (column.into_iden(), IndexOrder::Desc).into()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Interactions::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Interactions::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Interactions::Id).string_len(36).not_null())
                    .col(int(Interactions::InteractionType))
                    .col(int(Interactions::Channel))
                    .col(int(Interactions::Direction))
                    .col(int(Interactions::Outcome))
                    .col(text(Interactions::Episode, 64))
                    .col(text(Interactions::Source, 100))
                    .col(text(Interactions::Creator, 128))
                    .col(text(Interactions::ContactId, 36))
                    .col(text(Interactions::Account, 64))
                    .col(
                        ColumnDef::new(Interactions::ParticipantUsers)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    .col(micros(Interactions::InteractionTimeUs))
                    .col(micros(Interactions::CreateTimeUs))
                    .col(micros(Interactions::UpdateTimeUs))
                    .col(micros(Interactions::Revision))
                    .col(ColumnDef::new(Interactions::Data).blob().not_null())
                    .primary_key(
                        Index::create()
                            .col(Interactions::TenantId)
                            .col(Interactions::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // The whole-tenant listings in both sort orders, the account listing (its own
        // interactions; those of its contacts come through the contact index), and
        // the per-episode counts.
        index(
            manager,
            "interactions_by_time",
            Interactions::Table,
            vec![
                asc(Interactions::TenantId),
                desc(Interactions::InteractionTimeUs),
                desc(Interactions::Id),
            ],
        )
        .await?;
        index(
            manager,
            "interactions_by_create_time",
            Interactions::Table,
            vec![
                asc(Interactions::TenantId),
                desc(Interactions::CreateTimeUs),
                desc(Interactions::Id),
            ],
        )
        .await?;
        index(
            manager,
            "interactions_by_account",
            Interactions::Table,
            vec![
                asc(Interactions::TenantId),
                asc(Interactions::Account),
                desc(Interactions::InteractionTimeUs),
                desc(Interactions::Id),
            ],
        )
        .await?;
        index(
            manager,
            "interactions_by_contact",
            Interactions::Table,
            vec![
                asc(Interactions::TenantId),
                asc(Interactions::ContactId),
                desc(Interactions::InteractionTimeUs),
                desc(Interactions::Id),
            ],
        )
        .await?;
        index(
            manager,
            "interactions_by_episode",
            Interactions::Table,
            vec![asc(Interactions::TenantId), asc(Interactions::Episode)],
        )
        .await?;

        // Who each interaction is about: its contact and its contact participants, so
        // that a person's timeline is one range scan of this table.
        manager
            .create_table(
                Table::create()
                    .table(InteractionContacts::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(InteractionContacts::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(InteractionContacts::InteractionId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(InteractionContacts::ContactId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(micros(InteractionContacts::LinkTimeUs))
                    .primary_key(
                        Index::create()
                            .col(InteractionContacts::TenantId)
                            .col(InteractionContacts::InteractionId)
                            .col(InteractionContacts::ContactId),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "interaction_contacts_by_contact",
            InteractionContacts::Table,
            vec![
                asc(InteractionContacts::TenantId),
                asc(InteractionContacts::ContactId),
                desc(InteractionContacts::LinkTimeUs),
                desc(InteractionContacts::InteractionId),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(Episodes::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Episodes::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(Episodes::Id).string_len(36).not_null())
                    .col(text(Episodes::DisplayName, 200))
                    .col(text(Episodes::Contact, 64))
                    .col(text(Episodes::Account, 64))
                    .col(text(Episodes::Creator, 128))
                    .col(micros(Episodes::StartTimeUs))
                    .col(ColumnDef::new(Episodes::EndTimeUs).big_integer().null())
                    .col(micros(Episodes::CreateTimeUs))
                    .col(micros(Episodes::UpdateTimeUs))
                    .col(micros(Episodes::Revision))
                    .col(ColumnDef::new(Episodes::Data).blob().not_null())
                    .primary_key(Index::create().col(Episodes::TenantId).col(Episodes::Id))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("episodes_by_start_time", Episodes::StartTimeUs),
            ("episodes_by_end_time", Episodes::EndTimeUs),
            ("episodes_by_create_time", Episodes::CreateTimeUs),
        ] {
            index(
                manager,
                name,
                Episodes::Table,
                vec![asc(Episodes::TenantId), desc(column), desc(Episodes::Id)],
            )
            .await?;
        }
        for (name, column) in [
            ("episodes_by_contact", Episodes::Contact),
            ("episodes_by_account", Episodes::Account),
        ] {
            index(
                manager,
                name,
                Episodes::Table,
                vec![
                    asc(Episodes::TenantId),
                    asc(column),
                    desc(Episodes::StartTimeUs),
                ],
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Episodes::Table.into_iden(),
            InteractionContacts::Table.into_iden(),
            Interactions::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
