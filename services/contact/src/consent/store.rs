//! Consent record persistence. Records are append-only: the whole record is stored
//! encoded in `data`; the other columns are copies of what filters, sorts and lookups
//! need. Only merge (re-pointing) and erasure (removing personal content) rewrite rows.

use prost::Message as _;
use sea_orm::IdenStatic as _;
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::errors::from_db;
use crm_platform::events::{self, EventFeed, NewEvent};
use crm_platform::filter::tenant_list_holds;
use crm_platform::idempotency;
use crm_platform::pagination::{self, KeysetColumn};
use crm_proto::contact::ConsentRecord;

use crate::domain::names;
use crate::store::contact_row;

pub const RECORD_COLLECTION: &str = "consentRecords";
pub const RECORD_CONSENT: &str = "RecordConsent";
pub const CONSENT_RECORDED: &str = "crm.contact.v1.ConsentRecorded";
/// How many merge redirects are followed before giving up (merges are not chained
/// deeper in practice; this only bounds a corrupt cycle).
const MAX_REDIRECTS: usize = 8;

pub mod consent_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "consent_records")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub contact_id: String,
        pub channel: i32,
        pub purpose: i32,
        pub status: i32,
        pub address: String,
        pub source: String,
        pub legal_basis: i32,
        pub consent_time_us: i64,
        pub create_time_us: i64,
        pub data: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

use consent_row::{Column, Entity as Records};

pub fn record_name(id: &str) -> String {
    format!("{RECORD_COLLECTION}/{id}")
}

pub(crate) fn decode(row: &consent_row::Model) -> Result<ConsentRecord, ApiError> {
    ConsentRecord::decode(row.data.as_slice()).map_err(ApiError::internal)
}

fn micros(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map(|t| t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos / 1_000))
        .unwrap_or_default()
}

fn active_model(
    tenant: &str,
    id: &str,
    contact_id: &str,
    record: &ConsentRecord,
) -> consent_row::ActiveModel {
    consent_row::ActiveModel {
        tenant_id: Set(tenant.to_owned()),
        id: Set(id.to_owned()),
        contact_id: Set(contact_id.to_owned()),
        channel: Set(record.channel),
        purpose: Set(record.purpose),
        status: Set(record.status),
        address: Set(record.address.clone()),
        source: Set(record.source.clone()),
        legal_basis: Set(record.legal_basis),
        consent_time_us: Set(micros(record.consent_time.as_ref())),
        create_time_us: Set(micros(record.create_time.as_ref())),
        data: Set(record.encode_to_vec()),
    }
}

/// A contact as consent sees it: where it redirects to, and its addresses.
#[derive(Debug, Clone)]
pub struct ContactRef {
    pub id: String,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
}

fn split_index(index: &str) -> Vec<String> {
    index
        .split('|')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn contact_ref(row: &contact_row::Model) -> ContactRef {
    ContactRef {
        id: row.id.clone(),
        emails: split_index(&row.emails_index),
        phones: split_index(&row.phones_index),
    }
}

/// The contact by id, following merge redirects to the surviving contact.
pub async fn resolve_contact<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
) -> Result<Option<ContactRef>, ApiError> {
    let mut id = id.to_owned();
    for _ in 0..MAX_REDIRECTS {
        let Some(row) = contact_row::Entity::find_by_id((tenant.to_owned(), id.clone()))
            .one(conn)
            .await
            .map_err(|e| from_db(e, "contact"))?
        else {
            return Ok(None);
        };
        match row.merged_into.as_deref() {
            Some(winner) if !winner.is_empty() => {
                id = names::parse(names::CONTACTS, "contact", winner)
                    .or_else(|_| names::parse_id("contact", winner))?;
            }
            _ => return Ok(Some(contact_ref(&row))),
        }
    }
    Err(ApiError::internal("contact merge redirects form a cycle"))
}

/// The contacts, not merged away, whose list index (`|a|b|`) holds `value`: on
/// Postgres through the list's GIN index (a `GetConsent` by address read the whole
/// tenant: 200 ms at 1 M).
pub async fn contacts_with<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    column: contact_row::Column,
    value: &str,
    limit: u64,
) -> Result<Vec<ContactRef>, ApiError> {
    let holds = tenant_list_holds(conn.get_database_backend(), tenant, column.as_str(), value);
    let rows = contact_row::Entity::find()
        .filter(contact_row::Column::TenantId.eq(tenant))
        .filter(contact_row::Column::MergedInto.is_null())
        .filter(holds)
        .order_by_asc(contact_row::Column::Id)
        .limit(limit)
        .all(conn)
        .await
        .map_err(|e| from_db(e, "contacts"))?;
    Ok(rows.iter().map(contact_ref).collect())
}

/// Every record of the given contacts on the given channels and purposes: one query.
pub async fn records_of<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contact_ids: &[String],
    channels: &[i32],
    purposes: &[i32],
) -> Result<Vec<ConsentRecord>, ApiError> {
    if contact_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = Records::find()
        .filter(Column::TenantId.eq(tenant))
        .filter(Column::ContactId.is_in(contact_ids.iter().map(String::as_str)))
        .filter(Column::Channel.is_in(channels.iter().copied()))
        .filter(Column::Purpose.is_in(purposes.iter().copied()))
        .all(conn)
        .await
        .map_err(|e| from_db(e, "consent records"))?;
    rows.iter().map(decode).collect()
}

#[derive(Clone)]
pub struct ConsentStore {
    db: DatabaseConnection,
    feed: EventFeed,
}

impl ConsentStore {
    pub fn new(db: DatabaseConnection, feed: EventFeed) -> Self {
        Self { db, feed }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    async fn replay<C: ConnectionTrait>(
        &self,
        conn: &C,
        caller: &Caller,
        request_id: &str,
        hash: &str,
    ) -> Result<Option<ConsentRecord>, ApiError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        let Some(resource) =
            idempotency::lookup(conn, &caller.tenant, RECORD_CONSENT, request_id, hash).await?
        else {
            return Ok(None);
        };
        let id = resource
            .strip_prefix(RECORD_COLLECTION)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| ApiError::internal("stored request id names another resource"))?;
        let row = Records::find_by_id((caller.tenant.clone(), id.to_owned()))
            .one(conn)
            .await
            .map_err(|e| from_db(e, "consent record"))?;
        row.as_ref().map(decode).transpose()
    }

    /// Appends a complete record (output fields set) with its event; a retry with the
    /// same request id answers with the record the first call made.
    pub async fn append(
        &self,
        caller: &Caller,
        contact_id: &str,
        record: ConsentRecord,
        request_id: &str,
        hash: &str,
    ) -> Result<ConsentRecord, ApiError> {
        let attempt = self
            .try_append(caller, contact_id, record, request_id, hash)
            .await;
        match attempt {
            // A concurrent call with the same id may have won the race: its record is
            // the answer.
            Err(err) if !request_id.is_empty() => {
                match self.replay(&self.db, caller, request_id, hash).await? {
                    Some(existing) => Ok(existing),
                    None => Err(err),
                }
            }
            other => other,
        }
    }

    async fn try_append(
        &self,
        caller: &Caller,
        contact_id: &str,
        record: ConsentRecord,
        request_id: &str,
        hash: &str,
    ) -> Result<ConsentRecord, ApiError> {
        let id = record
            .name
            .strip_prefix(RECORD_COLLECTION)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| ApiError::internal("consent record has no name"))?
            .to_owned();
        let txn = events::begin_write(&self.db)
            .await
            .map_err(|e| from_db(e, "consent record"))?;
        if let Some(existing) = self.replay(&txn, caller, request_id, hash).await? {
            return Ok(existing);
        }
        // The request id is claimed first, so that a concurrent duplicate waits here.
        if !request_id.is_empty() {
            idempotency::record(
                &txn,
                &caller.tenant,
                RECORD_CONSENT,
                request_id,
                hash,
                &record.name,
            )
            .await
            .map_err(|e| from_db(e, "request"))?;
        }
        Records::insert(active_model(&caller.tenant, &id, contact_id, &record))
            .exec_without_returning(&txn)
            .await
            .map_err(|e| from_db(e, &record.name))?;
        events::append(
            &txn,
            caller,
            NewEvent {
                event_type: CONSENT_RECORDED,
                resource_name: record.name.clone(),
                changes: Vec::new(),
                payload: Some(prost_types::Any {
                    type_url: "type.googleapis.com/crm.contact.v1.ConsentRecord".into(),
                    value: record.encode_to_vec(),
                }),
                request_id: request_id.to_owned(),
            },
        )
        .await
        .map_err(|e| from_db(e, "event"))?;
        txn.commit().await.map_err(|e| from_db(e, &record.name))?;
        self.feed.committed();
        Ok(record)
    }

    /// How many records of the contact match the filter.
    pub async fn count(
        &self,
        tenant: &str,
        contact_id: &str,
        filter: Option<Condition>,
    ) -> Result<u64, ApiError> {
        let mut select = Records::find()
            .filter(Column::TenantId.eq(tenant))
            .filter(Column::ContactId.eq(contact_id));
        if let Some(filter) = filter {
            select = select.filter(filter);
        }
        select
            .count(&self.db)
            .await
            .map_err(|e| from_db(e, "consent records"))
    }

    /// One page of the contact's history, newest first, after the cursor
    /// (create time, id); returns the records and, when more follow, the next cursor.
    pub async fn page(
        &self,
        tenant: &str,
        contact_id: &str,
        filter: Option<Condition>,
        after: Option<(i64, String)>,
        limit: u64,
    ) -> Result<(Vec<ConsentRecord>, Option<(i64, String)>), ApiError> {
        let mut select = Records::find()
            .filter(Column::TenantId.eq(tenant))
            .filter(Column::ContactId.eq(contact_id));
        if let Some(filter) = filter {
            select = select.filter(filter);
        }
        if let Some((time, id)) = after {
            select = select.filter(pagination::keyset_after(&[
                KeysetColumn {
                    column: Expr::col((Records, Column::CreateTimeUs)),
                    descending: true,
                    value: time.into(),
                },
                KeysetColumn {
                    column: Expr::col((Records, Column::Id)),
                    descending: true,
                    value: id.into(),
                },
            ]));
        }
        let mut rows = select
            .order_by_desc(Column::CreateTimeUs)
            .order_by_desc(Column::Id)
            .limit(limit + 1)
            .all(&self.db)
            .await
            .map_err(|e| from_db(e, "consent records"))?;
        let more = rows.len() as u64 > limit;
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let cursor = match (more, rows.last()) {
            (true, Some(last)) => Some((last.create_time_us, last.id.clone())),
            _ => None,
        };
        let records = rows.iter().map(decode).collect::<Result<_, _>>()?;
        Ok((records, cursor))
    }
}

/// The rows of the contacts, for rewriting in place.
async fn rows_of<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contact_ids: &[String],
) -> Result<Vec<consent_row::Model>, ApiError> {
    if contact_ids.is_empty() {
        return Ok(Vec::new());
    }
    Records::find()
        .filter(Column::TenantId.eq(tenant))
        .filter(Column::ContactId.is_in(contact_ids.iter().map(String::as_str)))
        .order_by_desc(Column::CreateTimeUs)
        .order_by_desc(Column::Id)
        .all(conn)
        .await
        .map_err(|e| from_db(e, "consent records"))
}

async fn rewrite<C: ConnectionTrait>(
    conn: &C,
    row: &consent_row::Model,
    contact_id: &str,
    record: &ConsentRecord,
) -> Result<(), ApiError> {
    Records::update_many()
        .set(active_model(&row.tenant_id, &row.id, contact_id, record))
        .filter(Column::TenantId.eq(row.tenant_id.as_str()))
        .filter(Column::Id.eq(row.id.as_str()))
        .exec(conn)
        .await
        .map_err(|e| from_db(e, "consent record"))?;
    Ok(())
}

/// Merge: re-points the consent records of the losers (contact ids) to the winner, in
/// the caller's transaction; returns how many records moved.
pub async fn repoint_contacts<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    losers: &[String],
    winner: &str,
) -> Result<u64, ApiError> {
    let losers: Vec<String> = losers
        .iter()
        .filter(|l| l.as_str() != winner)
        .cloned()
        .collect();
    let winner_name = names::contact_name(winner);
    let mut moved = 0;
    for row in rows_of(conn, tenant, &losers).await? {
        let mut record = decode(&row)?;
        record.contact.clone_from(&winner_name);
        rewrite(conn, &row, winner, &record).await?;
        moved += 1;
    }
    Ok(moved)
}

/// Erasure: removes the address and evidence of the contact's consent records (the
/// channel, purpose, status and times stay, as the proof that consent was honoured),
/// in the caller's transaction; returns how many records were erased.
pub async fn erase_contact<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contact_id: &str,
) -> Result<u64, ApiError> {
    let mut erased = 0;
    for row in rows_of(conn, tenant, &[contact_id.to_owned()]).await? {
        let mut record = decode(&row)?;
        record.address.clear();
        record.evidence.clear();
        rewrite(conn, &row, contact_id, &record).await?;
        erased += 1;
    }
    Ok(erased)
}

/// The contact's whole consent history, newest first (for the GDPR export).
pub async fn history_for_contact<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contact_id: &str,
) -> Result<Vec<ConsentRecord>, ApiError> {
    rows_of(conn, tenant, &[contact_id.to_owned()])
        .await?
        .iter()
        .map(decode)
        .collect()
}
