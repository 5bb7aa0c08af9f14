//! Purging soft-deleted accounts whose `expire_time` has passed: the row goes for good,
//! and the contacts and child accounts that still point at it lose the link, each with
//! its update event, in the purge's transaction.

use std::sync::Arc;

use prost::Message as _;
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, QueryFilter, QuerySelect};

use crm_platform::ApiError;
use crm_platform::auth::{Caller, Role};
use crm_platform::cache;
use crm_platform::db::{micros_to_timestamp, now_micros};
use crm_platform::errors::from_db;
use crm_platform::events::{self, NewEvent};

use super::query;
use super::store::{self, Accounts, Column};
use super::validate::account_name;
use crate::context::Context;
use crate::domain::names;
use crate::store::{self as contact_store, StoredContact, contact_row};

/// The actor of the purge's events: the service itself, acting for the tenant.
fn system(tenant: &str) -> Caller {
    Caller {
        subject: "system".into(),
        tenant: tenant.to_owned(),
        roles: vec![Role::Admin],
        token: Arc::from(""),
    }
}

fn concurrent(name: &str) -> ApiError {
    ApiError::Aborted {
        reason: "CONCURRENT_MODIFICATION",
        message: format!("{name} was changed concurrently; retry"),
    }
}

/// Hard-deletes every soft-deleted account (of every tenant) whose expire time is at or
/// before `now_us`, clearing the `account` of its contacts and the `parent_account` of
/// its child accounts. Returns how many accounts were purged. An account changed
/// concurrently (e.g. undeleted) is left for the next sweep.
pub async fn purge_expired(ctx: &Context, now_us: i64) -> Result<u64, ApiError> {
    let due: Vec<(String, String)> = Accounts::find()
        .select_only()
        .column(Column::TenantId)
        .column(Column::Id)
        .filter(Column::DeleteTimeUs.is_not_null())
        .filter(Column::ExpireTimeUs.lte(now_us))
        .into_tuple()
        .all(&ctx.db)
        .await
        .map_err(|e| from_db(e, "accounts"))?;
    let mut purged = 0;
    for (tenant, id) in due {
        match purge_one(ctx, &tenant, &id, now_us).await {
            Ok(Some(contacts)) => {
                purged += 1;
                // The contacts' cache entries must not serve the old link.
                for stored in contacts {
                    let contact_id = stored.contact.name.trim_start_matches("contacts/");
                    ctx.cache
                        .written(
                            &cache::key(&tenant, crate::grpc::SERVICE, "contact", contact_id),
                            stored.revision,
                            &stored.contact.encode_to_vec(),
                        )
                        .await;
                }
            }
            Ok(None) => {}
            Err(ApiError::Aborted { .. }) => {
                tracing::info!(account = %id, "account changed during purge; left for the next sweep");
            }
            Err(err) => return Err(err),
        }
    }
    if purged > 0 {
        tracing::info!(accounts = purged, "expired accounts purged");
    }
    Ok(purged)
}

/// Purges one account in one transaction; `None` when it is no longer due. Returns the
/// contacts it unlinked, as written.
async fn purge_one(
    ctx: &Context,
    tenant: &str,
    id: &str,
    now_us: i64,
) -> Result<Option<Vec<StoredContact>>, ApiError> {
    let name = account_name(id);
    let caller = system(tenant);
    let postgres = ctx.db.get_database_backend() == DbBackend::Postgres;
    let txn = events::begin_write(&ctx.db)
        .await
        .map_err(|e| from_db(e, "account"))?;
    let mut select = Accounts::find_by_id((tenant.to_owned(), id.to_owned()));
    if postgres {
        select = select.lock_exclusive();
    }
    let Some(row) = select.one(&txn).await.map_err(|e| from_db(e, "account"))? else {
        return Ok(None);
    };
    let due = row.delete_time_us.is_some() && row.expire_time_us.is_some_and(|t| t <= now_us);
    if !due {
        return Ok(None);
    }
    let now = now_micros();

    let mut contacts_query = contact_row::Entity::find()
        .filter(contact_row::Column::TenantId.eq(tenant))
        .filter(contact_row::Column::Account.eq(name.as_str()));
    if postgres {
        contacts_query = contacts_query.lock_exclusive();
    }
    let rows = contacts_query
        .all(&txn)
        .await
        .map_err(|e| from_db(e, "contacts"))?;
    let mut unlinked = Vec::with_capacity(rows.len());
    for row in &rows {
        let current = contact_store::decode(row)?;
        let mut contact = current.contact.clone();
        contact.account.clear();
        contact.update_time = Some(micros_to_timestamp(now));
        let revision = current.revision + 1;
        contact.etag = names::etag(revision);
        let changes = contact_store::changes(&current.contact, &contact, &["account".into()]);
        let updated = contact_row::Entity::update_many()
            .set(contact_store::active_model(
                tenant, &row.id, revision, &contact,
            ))
            .filter(contact_row::Column::TenantId.eq(tenant))
            .filter(contact_row::Column::Id.eq(row.id.as_str()))
            .filter(contact_row::Column::Revision.eq(current.revision))
            .exec(&txn)
            .await
            .map_err(|e| from_db(e, &contact.name))?;
        if updated.rows_affected != 1 {
            return Err(concurrent(&contact.name));
        }
        contact_store::after_write(&txn, tenant, &[&contact]).await?;
        events::append(
            &txn,
            &caller,
            NewEvent {
                event_type: "crm.contact.v1.ContactUpdated",
                resource_name: contact.name.clone(),
                changes,
                payload: Some(contact_store::payload(&contact)),
                request_id: String::new(),
            },
        )
        .await
        .map_err(|e| from_db(e, "event"))?;
        unlinked.push(StoredContact { contact, revision });
    }

    let mut children_query = Accounts::find()
        .filter(Column::TenantId.eq(tenant))
        .filter(Column::ParentAccount.eq(name.as_str()));
    if postgres {
        children_query = children_query.lock_exclusive();
    }
    let children = children_query
        .all(&txn)
        .await
        .map_err(|e| from_db(e, "accounts"))?;
    for row in &children {
        let current = store::decode(row)?;
        let mut account = current.account.clone();
        account.parent_account.clear();
        account.update_time = Some(micros_to_timestamp(now));
        let revision = current.revision + 1;
        account.etag = names::etag(revision);
        let changes = query::changes(&current.account, &account, &["parent_account".into()]);
        let updated = Accounts::update_many()
            .set(store::active_model(tenant, &row.id, revision, &account))
            .filter(Column::TenantId.eq(tenant))
            .filter(Column::Id.eq(row.id.as_str()))
            .filter(Column::Revision.eq(current.revision))
            .exec(&txn)
            .await
            .map_err(|e| from_db(e, &account.name))?;
        if updated.rows_affected != 1 {
            return Err(concurrent(&account.name));
        }
        events::append(
            &txn,
            &caller,
            NewEvent {
                event_type: "crm.contact.v1.AccountUpdated",
                resource_name: account.name.clone(),
                changes,
                payload: Some(store::payload(&account)),
                request_id: String::new(),
            },
        )
        .await
        .map_err(|e| from_db(e, "event"))?;
    }

    Accounts::delete_many()
        .filter(Column::TenantId.eq(tenant))
        .filter(Column::Id.eq(id))
        .filter(Column::Revision.eq(row.revision))
        .exec(&txn)
        .await
        .map_err(|e| from_db(e, &name))?;
    crate::index::write_attributes(
        &txn,
        tenant,
        crate::index::RecordKind::Account,
        &[(id, &std::collections::BTreeMap::new())],
        crate::index::Rows::Replace,
    )
    .await?;
    txn.commit().await.map_err(|e| from_db(e, &name))?;
    ctx.feed.committed();
    tracing::info!(account = %name, contacts = unlinked.len(), children = children.len(), "account purged");
    Ok(Some(unlinked))
}
