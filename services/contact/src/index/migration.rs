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

/// Typed custom attributes of contacts and accounts, for `attributes.<key>` filters.
#[derive(DeriveIden)]
pub enum RecordAttributes {
    Table,
    TenantId,
    /// What the record is: see `index::RecordKind`.
    RecordKind,
    RecordId,
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
                    .table(RecordAttributes::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(RecordAttributes::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RecordAttributes::RecordKind)
                            .small_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RecordAttributes::RecordId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RecordAttributes::Key)
                            .string_len(63)
                            .not_null(),
                    )
                    .col(ColumnDef::new(RecordAttributes::TextValue).text().null())
                    .col(
                        ColumnDef::new(RecordAttributes::NumberValue)
                            .double()
                            .null(),
                    )
                    .col(ColumnDef::new(RecordAttributes::BoolValue).boolean().null())
                    .primary_key(
                        Index::create()
                            .col(RecordAttributes::TenantId)
                            .col(RecordAttributes::RecordKind)
                            .col(RecordAttributes::RecordId)
                            .col(RecordAttributes::Key),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("record_attributes_by_text", RecordAttributes::TextValue),
            (
                "contact_attributes_by_number",
                RecordAttributes::NumberValue,
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(RecordAttributes::Table)
                        .col(RecordAttributes::TenantId)
                        .col(RecordAttributes::RecordKind)
                        .col(RecordAttributes::Key)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// Soft-deleted contacts keep no search terms (they are found by neither search nor
/// duplicate finding, and undeleting writes their terms again): drops the terms that
/// contacts deleted before this rule still have.
pub struct DropTermsOfDeletedContacts;

impl MigrationName for DropTermsOfDeletedContacts {
    fn name(&self) -> &str {
        "m0008_drop_terms_of_deleted_contacts"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for DropTermsOfDeletedContacts {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DELETE FROM contact_terms WHERE EXISTS (SELECT 1 FROM contacts \
                 WHERE contacts.tenant_id = contact_terms.tenant_id \
                 AND contacts.id = contact_terms.contact_id \
                 AND contacts.delete_time_us IS NOT NULL)",
            )
            .await?;
        Ok(())
    }
}

/// The name-pair terms of the stored name terms. Field codes: given 1, family 2; a
/// pair's code is 10 + 2 (first - 1) + (second - 1), as `TermField::name_pair` gives.
pub const NAME_PAIR_BACKFILL: &str = "INSERT INTO contact_terms \
     (tenant_id, term, field, contact_id) \
     SELECT a.tenant_id, a.term || ' ' || b.term, 7 + 2 * a.field + b.field, a.contact_id \
     FROM contact_terms a JOIN contact_terms b \
     ON b.tenant_id = a.tenant_id AND b.contact_id = a.contact_id \
     AND b.field IN (1, 2) AND NOT (b.term = a.term AND b.field = a.field) \
     WHERE a.field IN (1, 2) AND length(a.term) + length(b.term) < 254 \
     ON CONFLICT DO NOTHING";

/// Writes the name-pair terms (`TermField::GivenGivenPair` … `FamilyFamilyPair`) of the
/// contacts stored before them, from their name terms: every ordered pair of two
/// distinct (word, field) entries of the given and family names, as `index::terms`
/// derives them.
pub struct NamePairTerms;

impl MigrationName for NamePairTerms {
    fn name(&self) -> &str {
        "m0010_name_pair_terms"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for NamePairTerms {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(NAME_PAIR_BACKFILL)
            .await?;
        Ok(())
    }
}

/// Replaces the index of each contact's terms by one that holds the field and term too,
/// so that scoring a search's candidates, which reads all their terms, is an index-only
/// scan instead of a heap read per term.
pub struct TermsByContactCovering;

impl MigrationName for TermsByContactCovering {
    fn name(&self) -> &str {
        "m0011_terms_by_contact_covering"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for TermsByContactCovering {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("contact_terms_of_contact")
                    .table(ContactTerms::Table)
                    .col(ContactTerms::TenantId)
                    .col(ContactTerms::ContactId)
                    .col(ContactTerms::Field)
                    .col(ContactTerms::Term)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("contact_terms_by_contact")
                    .table(ContactTerms::Table)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// The search terms of each contact in one row, as `index::write` stored them: what its
/// postings are, so that rewriting or scoring a contact reads one row instead of a
/// second index over every posting.
#[derive(DeriveIden)]
pub enum ContactTermSets {
    Table,
    TenantId,
    ContactId,
    /// JSON `[[field, "term"], …]`: see `index::encode_term_set`.
    Terms,
}

/// Replaces the index of the postings by contact (`contact_terms_of_contact`, one entry
/// per posting) by one row of terms per contact (`contact_term_sets`), written from the
/// postings stored. A person's ~17 postings no longer cost a second B-tree entry each
/// (at 1 M contacts the term sets take 657 MB, the index took 2.0 GB).
pub struct ContactTermSetsMigration;

impl MigrationName for ContactTermSetsMigration {
    fn name(&self) -> &str {
        "m0013_contact_term_sets"
    }
}

/// The term sets of the stored postings, per backend.
pub const TERM_SETS_BACKFILL_POSTGRES: &str = "INSERT INTO contact_term_sets \
     (tenant_id, contact_id, terms) \
     SELECT tenant_id, contact_id, \
     json_agg(json_build_array(field, term) ORDER BY term, field)::text \
     FROM contact_terms GROUP BY tenant_id, contact_id";
pub const TERM_SETS_BACKFILL_SQLITE: &str = "INSERT INTO contact_term_sets \
     (tenant_id, contact_id, terms) \
     SELECT tenant_id, contact_id, json_group_array(json_array(field, term)) \
     FROM contact_terms GROUP BY tenant_id, contact_id";

#[async_trait::async_trait]
impl MigrationTrait for ContactTermSetsMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ContactTermSets::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ContactTermSets::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ContactTermSets::ContactId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(ColumnDef::new(ContactTermSets::Terms).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(ContactTermSets::TenantId)
                            .col(ContactTermSets::ContactId),
                    )
                    .to_owned(),
            )
            .await?;
        let backfill = match manager.get_database_backend() {
            sea_orm::DbBackend::Postgres => TERM_SETS_BACKFILL_POSTGRES,
            _ => TERM_SETS_BACKFILL_SQLITE,
        };
        manager
            .get_connection()
            .execute_unprepared(backfill)
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("contact_terms_of_contact")
                    .table(ContactTerms::Table)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// Puts the terms of the index in code point order (`COLLATE "C"`) on Postgres. A
/// prefix is looked up as the range from it to `ranking::prefix_end`, which is right in
/// code point order only: under a language's collation (`en_US.UTF-8`, the default of
/// many servers) spaces and punctuation sort apart, so a range could miss pair terms
/// and addresses that start with the prefix. It also makes every comparison of the
/// terms' B-trees a byte comparison instead of a locale's. SQLite compares bytes
/// already.
pub struct TermsInCodePointOrder;

impl MigrationName for TermsInCodePointOrder {
    fn name(&self) -> &str {
        "m0014_terms_in_code_point_order"
    }
}

/// The statements of [`TermsInCodePointOrder`]: each rebuilds the indexes on the column,
/// not the table.
pub const TERMS_IN_CODE_POINT_ORDER: [&str; 2] = [
    "ALTER TABLE contact_terms ALTER COLUMN term TYPE varchar(254) COLLATE \"C\"",
    "ALTER TABLE search_vocabulary ALTER COLUMN term TYPE varchar(254) COLLATE \"C\"",
];

#[async_trait::async_trait]
impl MigrationTrait for TermsInCodePointOrder {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        for statement in TERMS_IN_CODE_POINT_ORDER {
            manager
                .get_connection()
                .execute_unprepared(statement)
                .await?;
        }
        Ok(())
    }
}

/// Indexes the vocabulary by term length within a tenant. A typo-tolerant word looks up
/// the terms under its first letter or two whose length a typo allows; by the terms
/// alone that is a scan of every term under the letter, most of them longer words
/// (company and address words with numbers): at 1 M contacts 4,000–9,000 of them under
/// one letter, of which often only a hundred or so have the lengths sought.
pub struct VocabularyByLength;

impl MigrationName for VocabularyByLength {
    fn name(&self) -> &str {
        "m0017_vocabulary_by_length"
    }
}

/// The index of [`VocabularyByLength`]; both backends index expressions.
const VOCABULARY_BY_LENGTH: &str = "CREATE INDEX IF NOT EXISTS search_vocabulary_by_length \
     ON search_vocabulary (tenant_id, length(term), term)";

#[async_trait::async_trait]
impl MigrationTrait for VocabularyByLength {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(VOCABULARY_BY_LENGTH)
            .await?;
        Ok(())
    }
}
