//! Persistence of imports: batched lookups, one bulk insert per batch, updates with
//! the revision check, and the batch's outbox rows in one bulk insert.

use sea_orm::sea_query::{Condition, Expr, ExprTrait, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::bulk;
use crm_platform::db::now_micros;
use crm_platform::encoded;
use crm_platform::errors::from_db;
use crm_platform::events::{self, NewEvent};
use crm_platform::lookup::any_text;
use crm_proto::common::FieldChange;
use crm_proto::contact::Contact;

use crate::index::TermField;
use crate::index::migration::ContactTerms;
use crate::store::{self, StoredContact, contact_row};

/// An outbox event of a batch, appended when the batch is written.
pub struct PendingEvent {
    pub event_type: &'static str,
    pub resource_name: String,
    pub changes: Vec<FieldChange>,
    /// The contact after the change: the payload.
    pub contact: Contact,
}

/// The live contacts having any of `emails` (primary or not, through the terms index),
/// and the contacts with the given ids (whatever their state). On Postgres within a
/// write, the rows are locked so that the batch's updates cannot lose a concurrent
/// write. Two key lookups (the terms, then the contacts by primary key) rather than one
/// query with a subquery: their plans do not depend on the tables' statistics, so a
/// large tenant whose statistics lag behind never gets a scan of all its contacts.
pub async fn load<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    emails: &[String],
    ids: &[String],
    lock: bool,
) -> Result<Vec<StoredContact>, ApiError> {
    use contact_row::{Column, Entity as Contacts};
    let backend = conn.get_database_backend();
    let mut by_email: Vec<String> = Vec::new();
    if !emails.is_empty() {
        let rows = conn
            .query_all(
                &Query::select()
                    .distinct()
                    .column(ContactTerms::ContactId)
                    .from(ContactTerms::Table)
                    .and_where(Expr::col(ContactTerms::TenantId).eq(tenant))
                    .and_where(any_text(
                        backend,
                        Expr::col(ContactTerms::Term),
                        emails.iter().map(String::as_str),
                    ))
                    .and_where(Expr::col(ContactTerms::Field).eq(TermField::Email.code()))
                    .to_owned(),
            )
            .await
            .map_err(|e| from_db(e, "contacts"))?;
        for row in rows {
            by_email.push(row.try_get_by_index(0).map_err(ApiError::internal)?);
        }
    }
    if by_email.is_empty() && ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut any = Condition::any();
    if !by_email.is_empty() {
        // The terms say who had the address when they were read; the row decides.
        any = any.add(
            Condition::all()
                .add(any_text(backend, Expr::col(Column::Id), by_email))
                .add(Column::DeleteTimeUs.is_null())
                .add(Column::MergedInto.is_null()),
        );
    }
    if !ids.is_empty() {
        any = any.add(any_text(
            backend,
            Expr::col(Column::Id),
            ids.iter().map(String::as_str),
        ));
    }
    let mut select = Contacts::find()
        .filter(Column::TenantId.eq(tenant))
        .filter(any);
    if lock {
        select = select.lock_exclusive();
    }
    store::decode_all(
        &encoded::rows(conn, select, [Column::Revision, Column::Data], "contacts").await?,
    )
}

/// Inserts new contacts in bulk (`crm_platform::bulk`).
pub async fn insert_contacts<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    contacts: &[(&str, i64, &Contact)],
) -> Result<(), ApiError> {
    let models = contacts
        .iter()
        .map(|(id, revision, contact)| store::active_model(tenant, id, *revision, contact));
    let rows = bulk::Rows::of_models(models).map_err(|e| from_db(e, "contacts"))?;
    bulk::insert(conn, rows)
        .await
        .map_err(|e| from_db(e, "contacts"))
}

/// Writes a changed contact if it is still at `stored_revision`; a concurrent write
/// fails the batch with ABORTED.
pub async fn update_contact<C: ConnectionTrait>(
    conn: &C,
    tenant: &str,
    id: &str,
    stored_revision: i64,
    revision: i64,
    contact: &Contact,
) -> Result<(), ApiError> {
    use contact_row::{Column, Entity as Contacts};
    let updated = Contacts::update_many()
        .set(store::active_model(tenant, id, revision, contact))
        .filter(Column::TenantId.eq(tenant))
        .filter(Column::Id.eq(id))
        .filter(Column::Revision.eq(stored_revision))
        .exec(conn)
        .await
        .map_err(|e| from_db(e, &contact.name))?;
    if updated.rows_affected != 1 {
        return Err(ApiError::Aborted {
            reason: "CONCURRENT_MODIFICATION",
            message: format!(
                "{} was changed during the import; re-send the batch",
                contact.name
            ),
        });
    }
    Ok(())
}

/// Appends the batch's events to the outbox, as `events::append` does one by one.
pub async fn append_events<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    events: &[PendingEvent],
) -> Result<(), ApiError> {
    let new_events = events.iter().map(|event| NewEvent {
        event_type: event.event_type,
        resource_name: event.resource_name.clone(),
        changes: event.changes.clone(),
        payload: Some(store::payload(&event.contact)),
        request_id: String::new(),
    });
    let tables =
        events::event_rows(caller, new_events, now_micros()).map_err(|e| from_db(e, "event"))?;
    bulk::insert_all(conn, tables)
        .await
        .map_err(|e| from_db(e, "event"))
}
