//! Contact persistence: one transaction per write, with its outbox event and request id
//! in the same transaction. The whole contact is stored encoded in `data`; the other
//! columns are copies of what filters, sorts and lookups need.

use prost::Message as _;
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select,
};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::bulk;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::encoded::{self, KeyType, SortKey};
use crm_platform::errors::from_db;
use crm_platform::events::{self, EventFeed, NewEvent};
use crm_platform::idempotency;
use crm_platform::lookup::any_text;
use crm_platform::pagination::CursorValue;
use crm_proto::common::FieldChange;
use crm_proto::contact::{Contact, StageChange};

use crate::domain::{names, validate};

mod point_reads;
use point_reads::PointReads;

/// How long a soft-deleted contact is kept before it may be purged.
pub const SOFT_DELETE_RETENTION_US: i64 = 30 * 24 * 3_600 * 1_000_000;

pub mod contact_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contacts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub given_name: String,
        pub family_name: String,
        pub display_name: String,
        pub primary_email: String,
        pub emails_index: String,
        pub phones_index: String,
        pub tags_index: String,
        pub job_title: String,
        pub account: String,
        pub owner: String,
        pub lifecycle_stage: i32,
        pub source: String,
        pub language: String,
        pub time_zone: String,
        pub revision: i64,
        pub create_time_us: i64,
        pub update_time_us: i64,
        pub delete_time_us: Option<i64>,
        pub merged_into: Option<String>,
        pub data: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

use contact_row::{Column, Entity as Contacts};

/// A stored contact with its revision (the etag and cache version).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredContact {
    pub contact: Contact,
    pub revision: i64,
}

/// Where a walk of contacts in id order starts.
pub enum IdBound {
    /// At this id, or after it if it is gone.
    From(String),
    /// After this id.
    After(String),
}

/// What [`ContactStore::create_and_query`] did.
pub enum CreatedWithQuery {
    /// The contact is stored, and these are the rows the query read.
    Created(StoredContact, Vec<sea_orm::QueryResult>),
    /// Nothing was written, since the insert and the query cannot be one statement here
    /// (SQLite, or a contact whose rows exceed one statement): the contact, returned.
    NotOneStatement(Contact),
    /// Nothing was written, since the tenant's policy is no longer the one the guard
    /// compared (`policy::guard_postgres`).
    PolicyChanged,
}

fn list_index<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let joined: Vec<String> = values.map(str::to_lowercase).collect();
    if joined.is_empty() {
        String::new()
    } else {
        format!("|{}|", joined.join("|"))
    }
}

pub(crate) fn decode(row: &contact_row::Model) -> Result<StoredContact, ApiError> {
    decode_encoded(row.revision, &row.data)
}

fn decode_encoded(revision: i64, data: &[u8]) -> Result<StoredContact, ApiError> {
    let contact = Contact::decode(data).map_err(ApiError::internal)?;
    Ok(StoredContact { contact, revision })
}

/// The contacts of rows read by `crm_platform::encoded`.
pub(crate) fn decode_all(rows: &[(i64, Vec<u8>)]) -> Result<Vec<StoredContact>, ApiError> {
    Ok(encoded::decode(rows)?
        .into_iter()
        .map(|(revision, contact)| StoredContact { contact, revision })
        .collect())
}

/// The contacts of `select`, reading their revision and encoded form only.
async fn stored_contacts(
    db: &DatabaseConnection,
    select: Select<Contacts>,
    resource: &str,
) -> Result<Vec<StoredContact>, ApiError> {
    decode_all(&encoded::rows(db, select, [Column::Revision, Column::Data], resource).await?)
}

pub(crate) fn active_model(
    tenant: &str,
    id: &str,
    revision: i64,
    contact: &Contact,
) -> contact_row::ActiveModel {
    let micros = |ts: &Option<prost_types::Timestamp>| {
        ts.as_ref().map(crm_platform::db::timestamp_to_micros)
    };
    contact_row::ActiveModel {
        tenant_id: Set(tenant.to_owned()),
        id: Set(id.to_owned()),
        given_name: Set(contact.given_name.clone()),
        family_name: Set(contact.family_name.clone()),
        display_name: Set(contact.display_name.clone()),
        primary_email: Set(contact
            .emails
            .iter()
            .find(|e| e.primary)
            .map(|e| e.address.clone())
            .unwrap_or_default()),
        emails_index: Set(list_index(
            contact.emails.iter().map(|e| e.address.as_str()),
        )),
        phones_index: Set(list_index(contact.phones.iter().map(|p| p.number.as_str()))),
        tags_index: Set(list_index(contact.tags.iter().map(String::as_str))),
        job_title: Set(contact.job_title.clone()),
        account: Set(contact.account.clone()),
        owner: Set(contact.owner.clone()),
        lifecycle_stage: Set(contact.lifecycle_stage),
        source: Set(contact.source.clone()),
        language: Set(contact.language.clone()),
        time_zone: Set(contact.time_zone.clone()),
        revision: Set(revision),
        create_time_us: Set(micros(&contact.create_time).unwrap_or_default()),
        update_time_us: Set(micros(&contact.update_time).unwrap_or_default()),
        delete_time_us: Set(micros(&contact.delete_time)),
        // The id only: the column holds 36 characters.
        merged_into: Set((!contact.merged_into.is_empty()).then(|| {
            contact
                .merged_into
                .trim_start_matches("contacts/")
                .to_owned()
        })),
        data: Set(contact.encode_to_vec()),
    }
}

/// The rows a new contact writes: its row, its search terms, term set, vocabulary and
/// attributes, and its `ContactCreated` event.
fn new_contact_rows(
    caller: &Caller,
    contact: &Contact,
    request_id: &str,
) -> Result<Vec<bulk::Rows>, ApiError> {
    let id = names::parse(names::CONTACTS, "contact_id", &contact.name)?;
    let event = NewEvent {
        event_type: "crm.contact.v1.ContactCreated",
        resource_name: contact.name.clone(),
        changes: Vec::new(),
        payload: Some(payload(contact)),
        request_id: request_id.to_owned(),
    };
    let stored = |e| from_db(e, &contact.name);
    let mut tables = vec![
        bulk::Rows::of_models([active_model(&caller.tenant, &id, 1, contact)]).map_err(stored)?,
    ];
    tables.extend(crate::index::new_rows(&caller.tenant, &[contact]));
    tables.extend(events::event_rows(caller, [event], now_micros()).map_err(stored)?);
    Ok(tables)
}

/// The event payload: the contact as it is after the change.
pub(crate) fn payload(contact: &Contact) -> prost_types::Any {
    prost_types::Any {
        type_url: "type.googleapis.com/crm.contact.v1.Contact".into(),
        value: contact.encode_to_vec(),
    }
}

fn string_value(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
    }
}

fn list_value<'a>(items: impl Iterator<Item = &'a str>) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(
            prost_types::ListValue {
                values: items.map(string_value).collect(),
            },
        )),
    }
}

fn number_value(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}

/// The value of one field path, for the audit trail in events.
fn field_value(contact: &Contact, path: &str) -> prost_types::Value {
    use crm_proto::common::attribute_value::Kind;
    match path {
        "given_name" => string_value(&contact.given_name),
        "family_name" => string_value(&contact.family_name),
        "emails" => list_value(contact.emails.iter().map(|e| e.address.as_str())),
        "phones" => list_value(contact.phones.iter().map(|p| p.number.as_str())),
        "job_title" => string_value(&contact.job_title),
        "account" => string_value(&contact.account),
        "owner" => string_value(&contact.owner),
        "lifecycle_stage" => string_value(
            crm_proto::contact::LifecycleStage::try_from(contact.lifecycle_stage)
                .map(|s| s.as_str_name())
                .unwrap_or_default(),
        ),
        "source" => string_value(&contact.source),
        "tags" => list_value(contact.tags.iter().map(String::as_str)),
        "address" => {
            let address = contact.address.clone().unwrap_or_default();
            let mut lines = address.lines.clone();
            lines.extend([
                address.postal_code,
                address.locality,
                address.region,
                address.country_code,
            ]);
            list_value(lines.iter().map(String::as_str).filter(|s| !s.is_empty()))
        }
        "language" => string_value(&contact.language),
        "time_zone" => string_value(&contact.time_zone),
        "preferred_channel" => number_value(f64::from(contact.preferred_channel)),
        "contact_frequency" => number_value(f64::from(contact.contact_frequency)),
        other => {
            let key = other.strip_prefix("attributes.").unwrap_or(other);
            match contact.attributes.get(key).and_then(|v| v.kind.as_ref()) {
                Some(Kind::StringValue(s)) => string_value(s),
                Some(Kind::NumberValue(n)) => number_value(*n),
                Some(Kind::BoolValue(b)) => prost_types::Value {
                    kind: Some(prost_types::value::Kind::BoolValue(*b)),
                },
                Some(Kind::DateValue(d)) => {
                    string_value(&format!("{:04}-{:02}-{:02}", d.year, d.month, d.day))
                }
                None => prost_types::Value {
                    kind: Some(prost_types::value::Kind::NullValue(0)),
                },
            }
        }
    }
}

/// The changed fields between two versions, by the mask's paths.
pub fn changes(before: &Contact, after: &Contact, paths: &[String]) -> Vec<FieldChange> {
    let mut out = Vec::new();
    for path in paths {
        let expanded: Vec<String> = if path == "attributes" {
            let mut keys: Vec<&String> = before
                .attributes
                .keys()
                .chain(after.attributes.keys())
                .collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .map(|k| format!("attributes.{k}"))
                .collect()
        } else {
            vec![path.clone()]
        };
        for path in expanded {
            let old = field_value(before, &path);
            let new = field_value(after, &path);
            if old != new {
                out.push(FieldChange {
                    path,
                    old_value: Some(old),
                    new_value: Some(new),
                });
            }
        }
    }
    out
}

/// Keeps the derived lookup tables (search terms, attribute values) of the written
/// contacts in step with them, in the writer's transaction. Every write of a contact
/// row calls it (or [`after_insert`]).
pub(crate) async fn after_write<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contacts: &[&Contact],
) -> Result<(), ApiError> {
    crate::index::write(conn, tenant, contacts, crate::index::Rows::Replace).await
}

/// [`after_write`] for contacts inserted in this transaction: they have no derived
/// rows to replace yet.
pub(crate) async fn after_insert<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contacts: &[&Contact],
) -> Result<(), ApiError> {
    crate::index::write(conn, tenant, contacts, crate::index::Rows::New).await
}

/// Writes new versions of contacts inside the caller's transaction, each only if its
/// stored revision is still `previous` (else ABORTED, so a concurrent change is never
/// overwritten). Used where one transaction rewrites several contacts (merge, erasure).
pub(crate) async fn write_versions<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    versions: &[(i64, &StoredContact)],
) -> Result<(), ApiError> {
    for (previous, stored) in versions {
        let id = stored.contact.name.trim_start_matches("contacts/");
        let updated = Contacts::update_many()
            .set(active_model(tenant, id, stored.revision, &stored.contact))
            .filter(Column::TenantId.eq(tenant))
            .filter(Column::Id.eq(id))
            .filter(Column::Revision.eq(*previous))
            .exec(conn)
            .await
            .map_err(|e| from_db(e, &stored.contact.name))?;
        if updated.rows_affected != 1 {
            return Err(ApiError::Aborted {
                reason: "CONCURRENT_MODIFICATION",
                message: format!("{} was changed concurrently; retry", stored.contact.name),
            });
        }
    }
    Ok(())
}

/// The sortable fields of ListContacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    CreateTime,
    UpdateTime,
    GivenName,
    FamilyName,
    DisplayName,
    Id,
}

impl SortField {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "create_time" => Self::CreateTime,
            "update_time" => Self::UpdateTime,
            "given_name" => Self::GivenName,
            "family_name" => Self::FamilyName,
            "display_name" => Self::DisplayName,
            "name" => Self::Id,
            _ => return None,
        })
    }

    fn column(self) -> Column {
        match self {
            Self::CreateTime => Column::CreateTimeUs,
            Self::UpdateTime => Column::UpdateTimeUs,
            Self::GivenName => Column::GivenName,
            Self::FamilyName => Column::FamilyName,
            Self::DisplayName => Column::DisplayName,
            Self::Id => Column::Id,
        }
    }

    fn key(self, descending: bool) -> SortKey {
        let kind = match self {
            Self::CreateTime | Self::UpdateTime => KeyType::Int,
            Self::GivenName | Self::FamilyName | Self::DisplayName | Self::Id => KeyType::Text,
        };
        SortKey {
            expr: Expr::col((Contacts, self.column())),
            descending,
            kind,
        }
    }
}

/// One page of a listing.
pub struct ListQuery {
    pub filter: Option<Condition>,
    pub order: Vec<(SortField, bool)>,
    pub after: Option<Vec<CursorValue>>,
    pub limit: u64,
    pub show_deleted: bool,
}

#[derive(Clone)]
pub struct ContactStore {
    db: DatabaseConnection,
    feed: EventFeed,
    point_reads: PointReads,
}

/// What a write does to the stored contact: the new version, and the event to publish.
pub struct Change {
    pub contact: Contact,
    pub event_type: &'static str,
    pub changes: Vec<FieldChange>,
}

impl ContactStore {
    /// Needs a Tokio runtime: it starts the task that coalesces point reads.
    pub fn new(db: DatabaseConnection, feed: EventFeed) -> Self {
        Self {
            point_reads: PointReads::start(db.clone()),
            db,
            feed,
        }
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<StoredContact>, ApiError> {
        self.get_encoded(tenant, id)
            .await?
            .map(|(revision, data)| decode_encoded(revision, &data))
            .transpose()
    }

    /// One contact's revision and encoded form, as the cache keeps them (this is the
    /// cache's miss path): only those two columns are read, in a statement shared with
    /// the other point reads in flight.
    pub async fn get_encoded(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(i64, Vec<u8>)>, ApiError> {
        self.point_reads.get(tenant, id).await
    }

    /// Live contacts of the tenant in id order, from `start` on, at most `limit`.
    pub async fn live_in_id_order(
        &self,
        tenant: &str,
        start: Option<&IdBound>,
        limit: u64,
    ) -> Result<Vec<StoredContact>, ApiError> {
        let mut query = Contacts::find()
            .filter(Column::TenantId.eq(tenant))
            .filter(Column::DeleteTimeUs.is_null())
            .filter(Column::MergedInto.is_null());
        query = match start {
            Some(IdBound::From(id)) => query.filter(Column::Id.gte(id.as_str())),
            Some(IdBound::After(id)) => query.filter(Column::Id.gt(id.as_str())),
            None => query,
        };
        stored_contacts(
            &self.db,
            query.order_by_asc(Column::Id).limit(limit),
            "contact",
        )
        .await
    }

    pub async fn get_many(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<StoredContact>, ApiError> {
        let select = Contacts::find()
            .filter(Column::TenantId.eq(tenant))
            .filter(any_text(
                self.db.get_database_backend(),
                Expr::col(Column::Id),
                ids.iter().map(String::as_str),
            ));
        stored_contacts(&self.db, select, "contact").await
    }

    /// The contact a request id already produced, if it was used before.
    async fn replay<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        method: &str,
        request_id: &str,
        hash: &str,
    ) -> Result<Option<StoredContact>, ApiError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        let Some(resource) =
            idempotency::lookup(conn, &caller.tenant, method, request_id, hash).await?
        else {
            return Ok(None);
        };
        let id = names::parse(names::CONTACTS, "request_id", &resource)?;
        let row = Contacts::find_by_id((caller.tenant.clone(), id))
            .one(conn)
            .await
            .map_err(|e| from_db(e, "contact"))?;
        row.as_ref().map(decode).transpose()
    }

    /// Inserts a new contact (output fields already set) with its event.
    pub async fn create(
        &self,
        caller: &Caller,
        contact: Contact,
        request_id: &str,
        hash: &str,
    ) -> Result<StoredContact, ApiError> {
        let attempt = self.try_create(caller, contact, request_id, hash).await;
        self.or_replay(attempt, caller, "CreateContact", request_id, hash)
            .await
    }

    /// When a call with a request id failed, a concurrent call with the same id may have
    /// won the race (the loser waits on the key, then meets a unique violation): answer
    /// with what the winner committed.
    async fn or_replay(
        &self,
        attempt: Result<StoredContact, ApiError>,
        caller: &Caller,
        method: &str,
        request_id: &str,
        hash: &str,
    ) -> Result<StoredContact, ApiError> {
        match attempt {
            Err(err) if !request_id.is_empty() => {
                match self
                    .replay(&self.db, caller, method, request_id, hash)
                    .await?
                {
                    Some(existing) => Ok(existing),
                    None => Err(err),
                }
            }
            other => other,
        }
    }

    /// Inserts a new contact without a request id, as [`Self::create`] does, and runs
    /// `query` (Postgres text) in the same statement, where that can be one statement:
    /// the query reads the database as it was just before the insert. CreateContact
    /// reads the new contact's duplicate candidates this way, one round trip fewer.
    /// With `guard`, the statement writes nothing unless the tenant's stored policy is
    /// the one the guard holds.
    pub async fn create_and_query(
        &self,
        caller: &Caller,
        contact: Contact,
        query: bulk::FinalQuery,
        guard: Option<bulk::Guard>,
    ) -> Result<CreatedWithQuery, ApiError> {
        let tables = new_contact_rows(caller, &contact, "")?;
        let read = match bulk::insert_all_then_query(&self.db, tables, query, guard).await {
            Ok(read) => read,
            Err(err) if crate::policy::is_policy_changed(&err) => {
                return Ok(CreatedWithQuery::PolicyChanged);
            }
            Err(err) => return Err(from_db(err, &contact.name)),
        };
        Ok(match read {
            Some(rows) => CreatedWithQuery::Created(self.created(contact), rows),
            None => CreatedWithQuery::NotOneStatement(contact),
        })
    }

    /// A contact just inserted, its event announced to the relay.
    fn created(&self, contact: Contact) -> StoredContact {
        self.feed.committed();
        StoredContact {
            contact,
            revision: 1,
        }
    }

    async fn try_create(
        &self,
        caller: &Caller,
        contact: Contact,
        request_id: &str,
        hash: &str,
    ) -> Result<StoredContact, ApiError> {
        let stored = |e| from_db(e, &contact.name);
        let tables = new_contact_rows(caller, &contact, request_id)?;
        if request_id.is_empty() {
            // The row, its index rows and its event in one statement where the database
            // allows, and then without a transaction around it: one round trip
            // instead of three.
            bulk::insert_all_atomically(&self.db, tables)
                .await
                .map_err(stored)?;
        } else {
            let txn = events::begin_write(&self.db)
                .await
                .map_err(|e| from_db(e, "contact"))?;
            if let Some(existing) = self
                .replay(&txn, caller, "CreateContact", request_id, hash)
                .await?
            {
                return Ok(existing);
            }
            // The request id is claimed first, so that a concurrent duplicate waits here.
            idempotency::record(
                &txn,
                &caller.tenant,
                "CreateContact",
                request_id,
                hash,
                &contact.name,
            )
            .await
            .map_err(|e| from_db(e, "request"))?;
            bulk::insert_all(&txn, tables).await.map_err(stored)?;
            txn.commit().await.map_err(stored)?;
        }
        Ok(self.created(contact))
    }

    /// Reads, changes and writes one contact in a transaction. `change` gets the current
    /// version and returns the new one; the etag is checked against the current revision.
    pub async fn modify<F>(
        &self,
        caller: &Caller,
        id: &str,
        method: &str,
        request_id: &str,
        hash: &str,
        change: F,
    ) -> Result<StoredContact, ApiError>
    where
        F: FnOnce(StoredContact) -> Result<Option<Change>, ApiError>,
    {
        let attempt = self
            .try_modify(caller, id, method, request_id, hash, change)
            .await;
        self.or_replay(attempt, caller, method, request_id, hash)
            .await
    }

    async fn try_modify<F>(
        &self,
        caller: &Caller,
        id: &str,
        method: &str,
        request_id: &str,
        hash: &str,
        change: F,
    ) -> Result<StoredContact, ApiError>
    where
        F: FnOnce(StoredContact) -> Result<Option<Change>, ApiError>,
    {
        let name = names::contact_name(id);
        let txn = events::begin_write(&self.db)
            .await
            .map_err(|e| from_db(e, "contact"))?;
        if let Some(existing) = self.replay(&txn, caller, method, request_id, hash).await? {
            return Ok(existing);
        }
        let mut find = Contacts::find_by_id((caller.tenant.clone(), id.to_owned()));
        if txn.get_database_backend() == DbBackend::Postgres {
            find = find.lock_exclusive();
        }
        let row = find
            .one(&txn)
            .await
            .map_err(|e| from_db(e, "contact"))?
            .ok_or_else(|| ApiError::not_found(name.clone()))?;
        let current = decode(&row)?;
        let revision = current.revision;
        let Some(Change {
            mut contact,
            event_type,
            changes,
        }) = change(current.clone())?
        else {
            return Ok(current);
        };
        let new_revision = revision + 1;
        contact.etag = names::etag(new_revision);
        let updated = Contacts::update_many()
            .set(active_model(&caller.tenant, id, new_revision, &contact))
            .filter(Column::TenantId.eq(caller.tenant.as_str()))
            .filter(Column::Id.eq(id))
            .filter(Column::Revision.eq(revision))
            .exec(&txn)
            .await
            .map_err(|e| from_db(e, &name))?;
        if updated.rows_affected != 1 {
            return Err(ApiError::Aborted {
                reason: "CONCURRENT_MODIFICATION",
                message: format!("{name} was changed concurrently; retry"),
            });
        }
        after_write(&txn, &caller.tenant, &[&contact]).await?;
        if !request_id.is_empty() {
            idempotency::record(&txn, &caller.tenant, method, request_id, hash, &name)
                .await
                .map_err(|e| from_db(e, "request"))?;
        }
        events::append(
            &txn,
            caller,
            NewEvent {
                event_type,
                resource_name: name.clone(),
                changes,
                payload: Some(payload(&contact)),
                request_id: request_id.to_owned(),
            },
        )
        .await
        .map_err(|e| from_db(e, "event"))?;
        txn.commit().await.map_err(|e| from_db(e, &name))?;
        self.feed.committed();
        Ok(StoredContact {
            contact,
            revision: new_revision,
        })
    }

    /// The database the store keeps its contacts in.
    pub fn backend(&self) -> sea_orm::DbBackend {
        self.db.get_database_backend()
    }

    fn listing(
        &self,
        tenant: &str,
        filter: Option<Condition>,
        show_deleted: bool,
    ) -> Select<Contacts> {
        let mut select = Contacts::find().filter(Column::TenantId.eq(tenant));
        if !show_deleted {
            select = select.filter(Column::DeleteTimeUs.is_null());
        }
        // Merged contacts are tombstones that redirect; they are not listed.
        select = select.filter(Column::MergedInto.is_null());
        if let Some(filter) = filter {
            select = select.filter(filter);
        }
        select
    }

    /// One page in the given order (ending in the id), after the cursor; returns the
    /// rows and, when more follow, the cursor of the last one.
    pub async fn list(
        &self,
        tenant: &str,
        query: ListQuery,
    ) -> Result<(Vec<StoredContact>, Option<Vec<CursorValue>>), ApiError> {
        let select = self.listing(tenant, query.filter, query.show_deleted);
        let keys: Vec<_> = query
            .order
            .iter()
            .map(|(field, desc)| field.key(*desc))
            .collect();
        let page = encoded::page(
            &self.db,
            select,
            [Column::Revision, Column::Data],
            keys,
            query.after.as_deref(),
            query.limit,
            "contacts",
        )
        .await?;
        Ok((decode_all(&page.rows)?, page.cursor))
    }

    /// The listing's `total_size`: exact up to `db::EXACT_COUNT_LIMIT`, an estimate
    /// past it, so that a first page costs the same in a tenant of any size.
    pub async fn count(
        &self,
        tenant: &str,
        filter: Option<Condition>,
        show_deleted: bool,
    ) -> Result<u64, ApiError> {
        let select = self
            .listing(tenant, filter, show_deleted)
            .select_only()
            .column(Column::Id)
            .into_query();
        crm_platform::db::total_size(&self.db, select)
            .await
            .map_err(|e| from_db(e, "contacts"))
    }
}

/// Fills the output-only fields of a contact being created.
pub fn prepare_new(contact: &mut Contact, id: &str) {
    let now = now_micros();
    contact.name = names::contact_name(id);
    contact.display_name = validate::display_name(contact);
    contact.create_time = Some(micros_to_timestamp(now));
    contact.update_time = contact.create_time;
    contact.delete_time = None;
    contact.expire_time = None;
    contact.merged_into.clear();
    contact.etag = names::etag(1);
    contact.stage_history.clear();
    if contact.lifecycle_stage != 0 {
        contact.stage_history.push(StageChange {
            stage: contact.lifecycle_stage,
            enter_time: contact.create_time,
        });
    }
}
