//! Account persistence: one transaction per write, with its outbox event and request id
//! in the same transaction. The whole account is stored encoded in `data`; the other
//! columns are copies of what filters, sorts and lookups need.

use std::collections::HashMap;

use prost::Message as _;
use sea_orm::sea_query::{Condition, Expr, Func};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    PaginatorTrait, QueryFilter, QuerySelect, Select,
};

use crate::index::{self, RecordKind};
use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::db::lock_in_transaction;
use crm_platform::encoded;
use crm_platform::errors::from_db;
use crm_platform::events::{self, EventFeed, NewEvent};
use crm_platform::idempotency;
use crm_platform::pagination::CursorValue;
use crm_proto::common::FieldChange;
use crm_proto::contact::Account;

use super::query::SortField;
use super::validate::account_name;
use crate::domain::names;
use crate::store::contact_row;

/// How long a soft-deleted account is kept before it may be purged.
pub const SOFT_DELETE_RETENTION_US: i64 = crate::store::SOFT_DELETE_RETENTION_US;

/// Ancestor walks stop here: deeper hierarchies are refused rather than walked forever.
pub const MAX_DEPTH: usize = 100;

pub mod account_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub display_name: String,
        pub domain: String,
        pub industry: String,
        pub employee_count: i32,
        pub revenue_currency: String,
        pub revenue_units: Option<i64>,
        pub tier: i32,
        pub owner: String,
        pub parent_account: String,
        pub tags_index: String,
        pub country_code: String,
        pub revision: i64,
        pub create_time_us: i64,
        pub update_time_us: i64,
        pub delete_time_us: Option<i64>,
        pub expire_time_us: Option<i64>,
        pub data: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use account_row::{Column, Entity as Accounts};

/// A stored account with its revision (the etag).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAccount {
    pub account: Account,
    pub revision: i64,
}

/// What a write does to the stored account: the new version, and the event to publish.
pub struct Change {
    pub account: Account,
    pub event_type: &'static str,
    pub changes: Vec<FieldChange>,
}

/// Who writes, under which method and request id, and whether only to validate.
pub struct Write<'a> {
    pub caller: &'a Caller,
    pub method: &'static str,
    pub request_id: &'a str,
    pub hash: &'a str,
    pub validate_only: bool,
}

pub(crate) fn micros(ts: &Option<prost_types::Timestamp>) -> Option<i64> {
    ts.as_ref().map(crm_platform::db::timestamp_to_micros)
}

pub(crate) fn decode(row: &account_row::Model) -> Result<StoredAccount, ApiError> {
    decode_encoded(row.revision, &row.data)
}

fn decode_all(rows: &[(i64, Vec<u8>)]) -> Result<Vec<StoredAccount>, ApiError> {
    Ok(encoded::decode(rows)?
        .into_iter()
        .map(|(revision, account)| StoredAccount { account, revision })
        .collect())
}

fn decode_encoded(revision: i64, data: &[u8]) -> Result<StoredAccount, ApiError> {
    let account = Account::decode(data).map_err(ApiError::internal)?;
    Ok(StoredAccount { account, revision })
}

pub(crate) fn active_model(
    tenant: &str,
    id: &str,
    revision: i64,
    account: &Account,
) -> account_row::ActiveModel {
    let tags: Vec<String> = account.tags.iter().map(|t| t.to_lowercase()).collect();
    account_row::ActiveModel {
        tenant_id: Set(tenant.to_owned()),
        id: Set(id.to_owned()),
        display_name: Set(account.display_name.clone()),
        domain: Set(account.domain.clone()),
        industry: Set(account.industry.clone()),
        employee_count: Set(account.employee_count),
        revenue_currency: Set(account
            .annual_revenue
            .as_ref()
            .map(|m| m.currency_code.clone())
            .unwrap_or_default()),
        revenue_units: Set(account.annual_revenue.as_ref().map(|m| m.units)),
        tier: Set(account.tier),
        owner: Set(account.owner.clone()),
        parent_account: Set(account.parent_account.clone()),
        tags_index: Set(if tags.is_empty() {
            String::new()
        } else {
            format!("|{}|", tags.join("|"))
        }),
        country_code: Set(account
            .address
            .as_ref()
            .map(|a| a.country_code.clone())
            .unwrap_or_default()),
        revision: Set(revision),
        create_time_us: Set(micros(&account.create_time).unwrap_or_default()),
        update_time_us: Set(micros(&account.update_time).unwrap_or_default()),
        delete_time_us: Set(micros(&account.delete_time)),
        expire_time_us: Set(micros(&account.expire_time)),
        data: Set(account.encode_to_vec()),
    }
}

/// The event payload: the account as it is after the change.
pub(crate) fn payload(account: &Account) -> prost_types::Any {
    prost_types::Any {
        type_url: "type.googleapis.com/crm.contact.v1.Account".into(),
        value: account.encode_to_vec(),
    }
}

/// The account row by id, in any state.
pub async fn find<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
) -> Result<Option<StoredAccount>, ApiError> {
    let row = Accounts::find_by_id((tenant.to_owned(), id.to_owned()))
        .one(conn)
        .await
        .map_err(|e| from_db(e, "account"))?;
    row.as_ref().map(decode).transpose()
}

pub async fn find_many<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    ids: &[String],
) -> Result<Vec<StoredAccount>, ApiError> {
    let select = Accounts::find()
        .filter(Column::TenantId.eq(tenant))
        .filter(Column::Id.is_in(ids.iter().map(String::as_str)));
    decode_all(&encoded::rows(conn, select, [Column::Revision, Column::Data], "account").await?)
}

/// The number of live contacts (not soft-deleted, not merged) linked to each of the
/// named accounts, in one grouped query. Accounts without contacts are absent.
pub async fn contact_counts<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    account_names: &[&str],
) -> Result<HashMap<String, i64>, ApiError> {
    if account_names.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64)> = contact_row::Entity::find()
        .select_only()
        .column(contact_row::Column::Account)
        .column_as(
            Expr::expr(Func::count(Expr::col(contact_row::Column::Id))),
            "n",
        )
        .filter(contact_row::Column::TenantId.eq(tenant))
        .filter(contact_row::Column::Account.is_in(account_names.iter().copied()))
        .filter(contact_row::Column::DeleteTimeUs.is_null())
        .filter(contact_row::Column::MergedInto.is_null())
        .group_by(contact_row::Column::Account)
        .into_tuple()
        .all(conn)
        .await
        .map_err(|e| from_db(e, "contacts"))?;
    Ok(rows.into_iter().collect())
}

/// Fills `contact_count` of each account (output only, never stored).
pub async fn with_counts<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    accounts: &mut [Account],
) -> Result<(), ApiError> {
    let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
    let counts = contact_counts(conn, tenant, &names).await?;
    for account in accounts.iter_mut() {
        account.contact_count = counts.get(&account.name).copied().unwrap_or(0);
    }
    Ok(())
}

/// Checks that `parent` (an "accounts/{id}" name) may be the parent of account `id`:
/// it exists in the tenant, is not deleted, is not the account itself, and the account
/// is not among its ancestors.
async fn check_parent<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
    parent: &str,
) -> Result<(), ApiError> {
    let field = "account.parent_account";
    let parent_id = names::parse(names::ACCOUNTS, field, parent)?;
    if parent_id == id {
        return Err(ApiError::invalid(
            field,
            "an account cannot be its own parent",
        ));
    }
    // Serialise hierarchy changes per tenant on Postgres: two concurrent updates (A under
    // B, B under A) would each see no cycle. SQLite writers are serialised already.
    lock_in_transaction(conn, &format!("accounts-hierarchy:{tenant}"))
        .await
        .map_err(|e| from_db(e, "account"))?;
    let Some(found) = find(conn, tenant, &parent_id).await? else {
        return Err(ApiError::invalid(field, "must name an existing account"));
    };
    if found.account.delete_time.is_some() {
        return Err(ApiError::invalid(
            field,
            "must name an account that is not deleted",
        ));
    }
    let own_name = account_name(id);
    let mut next = found.account.parent_account;
    for _ in 0..MAX_DEPTH {
        if next.is_empty() {
            return Ok(());
        }
        if next == own_name {
            return Err(ApiError::invalid(
                field,
                "would make a cycle: the account is an ancestor of this parent",
            ));
        }
        let ancestor = names::parse(names::ACCOUNTS, field, &next)?;
        next = match find(conn, tenant, &ancestor).await? {
            Some(stored) => stored.account.parent_account,
            None => String::new(),
        };
    }
    Err(ApiError::invalid(
        field,
        format!("account hierarchies are at most {MAX_DEPTH} levels deep"),
    ))
}

/// Whether the account exists in the tenant and is not deleted. `id` is the UUID, or
/// the whole "accounts/{id}" name.
pub async fn exists<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
) -> Result<bool, ApiError> {
    let id = id.strip_prefix("accounts/").unwrap_or(id);
    let Ok(id) = names::parse_id("account", id) else {
        return Ok(false);
    };
    let found = Accounts::find()
        .filter(Column::TenantId.eq(tenant))
        .filter(Column::Id.eq(id))
        .filter(Column::DeleteTimeUs.is_null())
        .count(conn)
        .await
        .map_err(|e| from_db(e, "account"))?;
    Ok(found > 0)
}

/// The account a request id already produced, if it was used before.
async fn replay<C: ConnectionTrait>(
    conn: &C,
    write: &Write<'_>,
) -> Result<Option<StoredAccount>, ApiError> {
    // A validate-only call stores nothing, so it never answers with a stored result.
    if write.request_id.is_empty() || write.validate_only {
        return Ok(None);
    }
    let Some(resource) = idempotency::lookup(
        conn,
        &write.caller.tenant,
        write.method,
        write.request_id,
        write.hash,
    )
    .await?
    else {
        return Ok(None);
    };
    let id = names::parse(names::ACCOUNTS, "request_id", &resource)?;
    find(conn, &write.caller.tenant, &id).await
}

/// When a call with a request id failed, a concurrent call with the same id may have
/// won the race (the loser waits on the key, then meets a unique violation): answer
/// with what the winner committed.
async fn or_replay(
    db: &DatabaseConnection,
    attempt: Result<StoredAccount, ApiError>,
    write: &Write<'_>,
) -> Result<StoredAccount, ApiError> {
    match attempt {
        Err(err) if !write.request_id.is_empty() && !write.validate_only => {
            match replay(db, write).await? {
                Some(existing) => Ok(existing),
                None => Err(err),
            }
        }
        other => other,
    }
}

async fn append_event<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    event_type: &'static str,
    account: &Account,
    changes: Vec<FieldChange>,
    request_id: &str,
) -> Result<(), ApiError> {
    events::append(
        conn,
        caller,
        NewEvent {
            event_type,
            resource_name: account.name.clone(),
            changes,
            payload: Some(payload(account)),
            request_id: request_id.to_owned(),
        },
    )
    .await
    .map_err(|e| from_db(e, "event"))?;
    Ok(())
}

/// Inserts a new account (output fields already set) with its event. With
/// `validate_only` every check runs, the parent's included, and nothing is stored.
pub async fn create(
    db: &DatabaseConnection,
    feed: &EventFeed,
    write: &Write<'_>,
    account: Account,
) -> Result<StoredAccount, ApiError> {
    let attempt = try_create(db, feed, write, account).await;
    or_replay(db, attempt, write).await
}

async fn try_create(
    db: &DatabaseConnection,
    feed: &EventFeed,
    write: &Write<'_>,
    account: Account,
) -> Result<StoredAccount, ApiError> {
    let tenant = write.caller.tenant.as_str();
    let id = names::parse(names::ACCOUNTS, "account_id", &account.name)?;
    let txn = events::begin_write(db)
        .await
        .map_err(|e| from_db(e, "account"))?;
    if let Some(existing) = replay(&txn, write).await? {
        return Ok(existing);
    }
    if !account.parent_account.is_empty() {
        check_parent(&txn, tenant, &id, &account.parent_account).await?;
    }
    if write.validate_only {
        return Ok(StoredAccount {
            account,
            revision: 1,
        });
    }
    // The request id is claimed first, so that a concurrent duplicate waits here.
    if !write.request_id.is_empty() {
        idempotency::record(
            &txn,
            tenant,
            write.method,
            write.request_id,
            write.hash,
            &account.name,
        )
        .await
        .map_err(|e| from_db(e, "request"))?;
    }
    Accounts::insert(active_model(tenant, &id, 1, &account))
        .exec_without_returning(&txn)
        .await
        .map_err(|e| from_db(e, &account.name))?;
    index::write_attributes(
        &txn,
        tenant,
        RecordKind::Account,
        &[(&id, &account.attributes)],
        index::Rows::New,
    )
    .await?;
    append_event(
        &txn,
        write.caller,
        "crm.contact.v1.AccountCreated",
        &account,
        Vec::new(),
        write.request_id,
    )
    .await?;
    txn.commit().await.map_err(|e| from_db(e, &account.name))?;
    feed.committed();
    Ok(StoredAccount {
        account,
        revision: 1,
    })
}

/// Reads, changes and writes one account in a transaction. `change` gets the current
/// version and returns the new one (or `None`: nothing to do). A changed parent is
/// checked (exists, no cycle) in the same transaction. With `validate_only` the new
/// version is returned and nothing is stored.
pub async fn modify<F>(
    db: &DatabaseConnection,
    feed: &EventFeed,
    write: &Write<'_>,
    id: &str,
    change: F,
) -> Result<StoredAccount, ApiError>
where
    F: FnOnce(StoredAccount) -> Result<Option<Change>, ApiError>,
{
    let attempt = try_modify(db, feed, write, id, change).await;
    or_replay(db, attempt, write).await
}

async fn try_modify<F>(
    db: &DatabaseConnection,
    feed: &EventFeed,
    write: &Write<'_>,
    id: &str,
    change: F,
) -> Result<StoredAccount, ApiError>
where
    F: FnOnce(StoredAccount) -> Result<Option<Change>, ApiError>,
{
    let tenant = write.caller.tenant.as_str();
    let name = account_name(id);
    let txn = events::begin_write(db)
        .await
        .map_err(|e| from_db(e, "account"))?;
    if let Some(existing) = replay(&txn, write).await? {
        return Ok(existing);
    }
    let mut select = Accounts::find_by_id((tenant.to_owned(), id.to_owned()));
    if txn.get_database_backend() == DbBackend::Postgres {
        select = select.lock_exclusive();
    }
    let row = select
        .one(&txn)
        .await
        .map_err(|e| from_db(e, "account"))?
        .ok_or_else(|| ApiError::not_found(name.clone()))?;
    let current = decode(&row)?;
    let revision = current.revision;
    let old_parent = current.account.parent_account.clone();
    let Some(Change {
        mut account,
        event_type,
        changes,
    }) = change(current.clone())?
    else {
        return Ok(current);
    };
    if !account.parent_account.is_empty() && account.parent_account != old_parent {
        check_parent(&txn, tenant, id, &account.parent_account).await?;
    }
    if write.validate_only {
        return Ok(StoredAccount { account, revision });
    }
    let new_revision = revision + 1;
    account.etag = names::etag(new_revision);
    account.contact_count = 0;
    let updated = Accounts::update_many()
        .set(active_model(tenant, id, new_revision, &account))
        .filter(Column::TenantId.eq(tenant))
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
    index::write_attributes(
        &txn,
        tenant,
        RecordKind::Account,
        &[(id, &account.attributes)],
        index::Rows::Replace,
    )
    .await?;
    if !write.request_id.is_empty() {
        idempotency::record(
            &txn,
            tenant,
            write.method,
            write.request_id,
            write.hash,
            &name,
        )
        .await
        .map_err(|e| from_db(e, "request"))?;
    }
    append_event(
        &txn,
        write.caller,
        event_type,
        &account,
        changes,
        write.request_id,
    )
    .await?;
    txn.commit().await.map_err(|e| from_db(e, &name))?;
    feed.committed();
    Ok(StoredAccount {
        account,
        revision: new_revision,
    })
}

/// One page of a listing.
pub struct ListQuery {
    pub filter: Option<Condition>,
    pub order: Vec<(SortField, bool)>,
    pub after: Option<Vec<CursorValue>>,
    pub limit: u64,
    pub show_deleted: bool,
}

fn listing(tenant: &str, filter: Option<Condition>, show_deleted: bool) -> Select<Accounts> {
    let mut select = Accounts::find().filter(Column::TenantId.eq(tenant));
    if !show_deleted {
        select = select.filter(Column::DeleteTimeUs.is_null());
    }
    if let Some(filter) = filter {
        select = select.filter(filter);
    }
    select
}

/// One page in the given order (ending in the id), after the cursor; returns the rows
/// and, when more follow, the cursor of the last one.
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    query: ListQuery,
) -> Result<(Vec<StoredAccount>, Option<Vec<CursorValue>>), ApiError> {
    let select = listing(tenant, query.filter, query.show_deleted);
    let keys: Vec<_> = query
        .order
        .iter()
        .map(|(field, desc)| field.key(*desc))
        .collect();
    let page = encoded::page(
        conn,
        select,
        [Column::Revision, Column::Data],
        keys,
        query.after.as_deref(),
        query.limit,
        "accounts",
    )
    .await?;
    Ok((decode_all(&page.rows)?, page.cursor))
}

pub async fn count<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    filter: Option<Condition>,
    show_deleted: bool,
) -> Result<u64, ApiError> {
    listing(tenant, filter, show_deleted)
        .count(conn)
        .await
        .map_err(|e| from_db(e, "accounts"))
}
