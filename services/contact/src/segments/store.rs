//! Segment persistence: one transaction per write, with its outbox event and request id
//! in the same transaction.

use sea_orm::sea_query::{Condition, Expr, ExprTrait as _, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crm_platform::ApiError;
use crm_platform::auth::Caller;
use crm_platform::db::micros_to_timestamp;
use crm_platform::errors::from_db;
use crm_platform::events::{self, EventFeed, NewEvent};
use crm_platform::idempotency;
use crm_platform::pagination::{self, CursorValue, KeysetColumn};
use crm_proto::common::FieldChange;
use crm_proto::contact::Segment;

use crate::domain::names;
use crate::store::contact_row;

pub const SEGMENTS: &str = "segments";

pub mod segment_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "segments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub display_name: String,
        pub description: String,
        pub segment_type: i32,
        pub filter: String,
        pub owner: String,
        pub revision: i64,
        pub create_time_us: i64,
        pub update_time_us: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod member_row {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "segment_members")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub segment_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub add_time_us: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

use segment_row::{Column, Entity as Segments};

pub fn segment_name(id: &str) -> String {
    format!("{SEGMENTS}/{id}")
}

/// The stored segment as the API shows it (without its member count).
pub fn to_proto(row: &segment_row::Model) -> Segment {
    Segment {
        name: segment_name(&row.id),
        display_name: row.display_name.clone(),
        description: row.description.clone(),
        r#type: row.segment_type,
        filter: row.filter.clone(),
        owner: row.owner.clone(),
        member_count: 0,
        member_count_time: None,
        create_time: Some(micros_to_timestamp(row.create_time_us)),
        update_time: Some(micros_to_timestamp(row.update_time_us)),
        etag: names::etag(row.revision),
    }
}

fn payload(row: &segment_row::Model) -> prost_types::Any {
    use prost::Message as _;
    prost_types::Any {
        type_url: "type.googleapis.com/crm.contact.v1.Segment".into(),
        value: to_proto(row).encode_to_vec(),
    }
}

fn active(row: &segment_row::Model) -> segment_row::ActiveModel {
    segment_row::ActiveModel {
        tenant_id: Set(row.tenant_id.clone()),
        id: Set(row.id.clone()),
        display_name: Set(row.display_name.clone()),
        description: Set(row.description.clone()),
        segment_type: Set(row.segment_type),
        filter: Set(row.filter.clone()),
        owner: Set(row.owner.clone()),
        revision: Set(row.revision),
        create_time_us: Set(row.create_time_us),
        update_time_us: Set(row.update_time_us),
    }
}

fn string_value(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
    }
}

fn list_value(items: &[String]) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(
            prost_types::ListValue {
                values: items.iter().map(|s| string_value(s)).collect(),
            },
        )),
    }
}

/// The changed fields between two versions, for the audit trail.
pub fn changes(before: &segment_row::Model, after: &segment_row::Model) -> Vec<FieldChange> {
    [
        ("display_name", &before.display_name, &after.display_name),
        ("description", &before.description, &after.description),
        ("filter", &before.filter, &after.filter),
        ("owner", &before.owner, &after.owner),
    ]
    .into_iter()
    .filter(|(_, old, new)| old != new)
    .map(|(path, old, new)| FieldChange {
        path: path.to_owned(),
        old_value: Some(string_value(old)),
        new_value: Some(string_value(new)),
    })
    .collect()
}

/// The condition on the contacts table for a static segment's members.
pub fn static_members(tenant: &str, segment_id: &str) -> Condition {
    let members = Query::select()
        .column((member_row::Entity, member_row::Column::ContactId))
        .from(member_row::Entity)
        .and_where(Expr::col((member_row::Entity, member_row::Column::TenantId)).eq(tenant))
        .and_where(Expr::col((member_row::Entity, member_row::Column::SegmentId)).eq(segment_id))
        .to_owned();
    Condition::all()
        .add(Expr::col((contact_row::Entity, contact_row::Column::Id)).in_subquery(members))
}

/// The sortable fields of ListSegments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    CreateTime,
    UpdateTime,
    DisplayName,
    Id,
}

impl SortField {
    fn column(self) -> Column {
        match self {
            Self::CreateTime => Column::CreateTimeUs,
            Self::UpdateTime => Column::UpdateTimeUs,
            Self::DisplayName => Column::DisplayName,
            Self::Id => Column::Id,
        }
    }

    fn value(self, row: &segment_row::Model) -> CursorValue {
        match self {
            Self::CreateTime => CursorValue::Int(row.create_time_us),
            Self::UpdateTime => CursorValue::Int(row.update_time_us),
            Self::DisplayName => CursorValue::Text(row.display_name.clone()),
            Self::Id => CursorValue::Text(row.id.clone()),
        }
    }
}

/// Parses ListSegments' `order_by`; the id ends every order.
pub fn parse_order(order_by: &str) -> Result<Vec<(SortField, bool)>, ApiError> {
    let mut order: Vec<(SortField, bool)> = Vec::new();
    for part in order_by.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (name, descending) = match words.as_slice() {
            [name] | [name, "asc"] => (*name, false),
            [name, "desc"] => (*name, true),
            _ => {
                return Err(ApiError::invalid(
                    "order_by",
                    format!("cannot read {part:?}"),
                ));
            }
        };
        let field = match name {
            "create_time" => SortField::CreateTime,
            "update_time" => SortField::UpdateTime,
            "display_name" => SortField::DisplayName,
            "name" => SortField::Id,
            _ => {
                return Err(ApiError::invalid(
                    "order_by",
                    format!(
                        "cannot sort by {name:?}; use display_name, create_time or update_time"
                    ),
                ));
            }
        };
        if order.iter().any(|(f, _)| *f == field) {
            return Err(ApiError::invalid(
                "order_by",
                format!("{name} appears twice"),
            ));
        }
        order.push((field, descending));
    }
    if order.is_empty() {
        order.push((SortField::CreateTime, false));
    }
    if !order.iter().any(|(f, _)| *f == SortField::Id) {
        order.push((SortField::Id, false));
    }
    Ok(order)
}

fn keyset_after(order: &[(SortField, bool)], after: &[CursorValue]) -> Result<Condition, ApiError> {
    let misfit = || ApiError::invalid("page_token", "page token does not fit this order");
    if order.len() != after.len() {
        return Err(misfit());
    }
    let mut columns = Vec::with_capacity(order.len());
    for ((field, descending), value) in order.iter().zip(after) {
        let value: sea_orm::Value = match (value, field) {
            (CursorValue::Int(n), SortField::CreateTime | SortField::UpdateTime) => (*n).into(),
            (CursorValue::Text(s), SortField::DisplayName | SortField::Id) => s.clone().into(),
            _ => return Err(misfit()),
        };
        columns.push(KeysetColumn {
            column: Expr::col((Segments, field.column())),
            descending: *descending,
            value,
        });
    }
    Ok(pagination::keyset_after(&columns))
}

/// What a membership call did: the count it reports and the contacts it touched.
pub struct MembershipChange {
    pub count: i32,
    pub segment: segment_row::Model,
}

#[derive(Clone)]
pub struct SegmentStore {
    db: DatabaseConnection,
    feed: EventFeed,
}

/// The reserved request-id resource of membership calls: the segment name and the
/// count, so that a retry answers with the count of the first call.
fn membership_resource(id: &str, count: i32) -> String {
    format!("{}#{count}", segment_name(id))
}

fn parse_membership_resource(resource: &str) -> Result<(String, i32), ApiError> {
    let (name, count) = resource
        .split_once('#')
        .ok_or_else(|| ApiError::internal("membership request id without a count"))?;
    let id = names::parse(SEGMENTS, "request_id", name)?;
    let count = count.parse().map_err(ApiError::internal)?;
    Ok((id, count))
}

impl SegmentStore {
    pub fn new(db: DatabaseConnection, feed: EventFeed) -> Self {
        Self { db, feed }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn get(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<segment_row::Model>, ApiError> {
        Segments::find_by_id((tenant.to_owned(), id.to_owned()))
            .one(&self.db)
            .await
            .map_err(|e| from_db(e, "segment"))
    }

    async fn begin(&self) -> Result<DatabaseTransaction, ApiError> {
        events::begin_write(&self.db)
            .await
            .map_err(|e| from_db(e, "segment"))
    }

    /// The segment row of `id`, locked for the rest of the transaction on Postgres
    /// (SQLite's IMMEDIATE transaction already holds the write lock).
    async fn locked(
        txn: &DatabaseTransaction,
        tenant: &str,
        id: &str,
    ) -> Result<segment_row::Model, ApiError> {
        let mut find = Segments::find_by_id((tenant.to_owned(), id.to_owned()));
        if txn.get_database_backend() == DbBackend::Postgres {
            find = find.lock_exclusive();
        }
        find.one(txn)
            .await
            .map_err(|e| from_db(e, "segment"))?
            .ok_or_else(|| ApiError::not_found(segment_name(id)))
    }

    async fn lookup<C: ConnectionTrait>(
        conn: &C,
        caller: &Caller,
        method: &str,
        request_id: &str,
        hash: &str,
    ) -> Result<Option<String>, ApiError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        idempotency::lookup(conn, &caller.tenant, method, request_id, hash).await
    }

    async fn record(
        txn: &DatabaseTransaction,
        caller: &Caller,
        method: &str,
        request_id: &str,
        hash: &str,
        resource: &str,
    ) -> Result<(), ApiError> {
        if request_id.is_empty() {
            return Ok(());
        }
        idempotency::record(txn, &caller.tenant, method, request_id, hash, resource)
            .await
            .map_err(|e| from_db(e, "request"))
    }

    async fn append(
        txn: &DatabaseTransaction,
        caller: &Caller,
        event_type: &'static str,
        row: &segment_row::Model,
        changes: Vec<FieldChange>,
        request_id: &str,
    ) -> Result<(), ApiError> {
        events::append(
            txn,
            caller,
            NewEvent {
                event_type,
                resource_name: segment_name(&row.id),
                changes,
                payload: Some(payload(row)),
                request_id: request_id.to_owned(),
            },
        )
        .await
        .map_err(|e| from_db(e, "event"))
    }

    async fn commit(&self, txn: DatabaseTransaction, name: &str) -> Result<(), ApiError> {
        txn.commit().await.map_err(|e| from_db(e, name))?;
        self.feed.committed();
        Ok(())
    }

    /// The segment a request id produced, when the id was used before. A failed attempt
    /// with a request id may have lost a race to a concurrent duplicate: the winner's
    /// result is the answer then.
    async fn replayed(
        &self,
        caller: &Caller,
        method: &str,
        request_id: &str,
        hash: &str,
    ) -> Result<Option<segment_row::Model>, ApiError> {
        let Some(resource) = Self::lookup(&self.db, caller, method, request_id, hash).await? else {
            return Ok(None);
        };
        let id = names::parse(SEGMENTS, "request_id", &resource)?;
        self.get(&caller.tenant, &id).await
    }

    /// Inserts a new segment (output fields set) with its SegmentCreated event.
    pub async fn create(
        &self,
        caller: &Caller,
        row: segment_row::Model,
        request_id: &str,
        hash: &str,
    ) -> Result<segment_row::Model, ApiError> {
        match self.try_create(caller, row, request_id, hash).await {
            Err(err) if !request_id.is_empty() => self
                .replayed(caller, "CreateSegment", request_id, hash)
                .await?
                .ok_or(err),
            other => other,
        }
    }

    async fn try_create(
        &self,
        caller: &Caller,
        row: segment_row::Model,
        request_id: &str,
        hash: &str,
    ) -> Result<segment_row::Model, ApiError> {
        let name = segment_name(&row.id);
        let txn = self.begin().await?;
        if let Some(resource) =
            Self::lookup(&txn, caller, "CreateSegment", request_id, hash).await?
        {
            let id = names::parse(SEGMENTS, "request_id", &resource)?;
            return Self::locked(&txn, &caller.tenant, &id).await;
        }
        // The request id is claimed first, so that a concurrent duplicate waits here.
        Self::record(&txn, caller, "CreateSegment", request_id, hash, &name).await?;
        Segments::insert(active(&row))
            .exec_without_returning(&txn)
            .await
            .map_err(|e| from_db(e, &name))?;
        Self::append(
            &txn,
            caller,
            "crm.contact.v1.SegmentCreated",
            &row,
            Vec::new(),
            request_id,
        )
        .await?;
        self.commit(txn, &name).await?;
        Ok(row)
    }

    /// Reads, changes and writes one segment. `change` gets the current row and returns
    /// the new one, or `None` when nothing changes.
    pub async fn update<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        change: F,
    ) -> Result<segment_row::Model, ApiError>
    where
        F: FnOnce(&segment_row::Model) -> Result<Option<segment_row::Model>, ApiError>,
    {
        match self.try_update(caller, id, request_id, hash, change).await {
            Err(err) if !request_id.is_empty() => self
                .replayed(caller, "UpdateSegment", request_id, hash)
                .await?
                .ok_or(err),
            other => other,
        }
    }

    async fn try_update<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        change: F,
    ) -> Result<segment_row::Model, ApiError>
    where
        F: FnOnce(&segment_row::Model) -> Result<Option<segment_row::Model>, ApiError>,
    {
        let name = segment_name(id);
        let txn = self.begin().await?;
        if Self::lookup(&txn, caller, "UpdateSegment", request_id, hash)
            .await?
            .is_some()
        {
            return Self::locked(&txn, &caller.tenant, id).await;
        }
        let current = Self::locked(&txn, &caller.tenant, id).await?;
        let Some(mut next) = change(&current)? else {
            return Ok(current);
        };
        next.revision = current.revision + 1;
        Segments::update(active(&next))
            .exec(&txn)
            .await
            .map_err(|e| from_db(e, &name))?;
        Self::record(&txn, caller, "UpdateSegment", request_id, hash, &name).await?;
        let changes = changes(&current, &next);
        Self::append(
            &txn,
            caller,
            "crm.contact.v1.SegmentUpdated",
            &next,
            changes,
            request_id,
        )
        .await?;
        self.commit(txn, &name).await?;
        Ok(next)
    }

    /// Deletes a segment and its memberships. `check` sees the current row first (etag,
    /// owner).
    pub async fn delete<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        check: F,
    ) -> Result<(), ApiError>
    where
        F: FnOnce(&segment_row::Model) -> Result<(), ApiError>,
    {
        let attempt = self.try_delete(caller, id, request_id, hash, check).await;
        match attempt {
            Err(err) if !request_id.is_empty() => {
                match Self::lookup(&self.db, caller, "DeleteSegment", request_id, hash).await? {
                    Some(_) => Ok(()),
                    None => Err(err),
                }
            }
            other => other,
        }
    }

    async fn try_delete<F>(
        &self,
        caller: &Caller,
        id: &str,
        request_id: &str,
        hash: &str,
        check: F,
    ) -> Result<(), ApiError>
    where
        F: FnOnce(&segment_row::Model) -> Result<(), ApiError>,
    {
        let name = segment_name(id);
        let txn = self.begin().await?;
        if Self::lookup(&txn, caller, "DeleteSegment", request_id, hash)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let current = Self::locked(&txn, &caller.tenant, id).await?;
        check(&current)?;
        member_row::Entity::delete_many()
            .filter(member_row::Column::TenantId.eq(caller.tenant.as_str()))
            .filter(member_row::Column::SegmentId.eq(id))
            .exec(&txn)
            .await
            .map_err(|e| from_db(e, &name))?;
        Segments::delete_many()
            .filter(Column::TenantId.eq(caller.tenant.as_str()))
            .filter(Column::Id.eq(id))
            .exec(&txn)
            .await
            .map_err(|e| from_db(e, &name))?;
        Self::record(&txn, caller, "DeleteSegment", request_id, hash, &name).await?;
        Self::append(
            &txn,
            caller,
            "crm.contact.v1.SegmentDeleted",
            &current,
            Vec::new(),
            request_id,
        )
        .await?;
        self.commit(txn, &name).await
    }

    /// Adds (`add`) or removes contacts of a static segment. `check` sees the segment
    /// first (type, owner). Returns how many memberships changed; a retry with the same
    /// request id returns the first call's count.
    pub async fn change_members<F>(
        &self,
        caller: &Caller,
        id: &str,
        contact_ids: &[String],
        add: bool,
        (request_id, hash): (&str, &str),
        check: F,
    ) -> Result<MembershipChange, ApiError>
    where
        F: FnOnce(&segment_row::Model) -> Result<(), ApiError>,
    {
        let method = if add {
            "AddSegmentMembers"
        } else {
            "RemoveSegmentMembers"
        };
        let attempt = self
            .try_change_members(
                caller,
                id,
                contact_ids,
                add,
                method,
                (request_id, hash),
                check,
            )
            .await;
        match attempt {
            Err(err) if !request_id.is_empty() => {
                match Self::lookup(&self.db, caller, method, request_id, hash).await? {
                    Some(resource) => {
                        let (id, count) = parse_membership_resource(&resource)?;
                        let segment = self
                            .get(&caller.tenant, &id)
                            .await?
                            .ok_or_else(|| ApiError::not_found(segment_name(&id)))?;
                        Ok(MembershipChange { count, segment })
                    }
                    None => Err(err),
                }
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_change_members<F>(
        &self,
        caller: &Caller,
        id: &str,
        contact_ids: &[String],
        add: bool,
        method: &str,
        (request_id, hash): (&str, &str),
        check: F,
    ) -> Result<MembershipChange, ApiError>
    where
        F: FnOnce(&segment_row::Model) -> Result<(), ApiError>,
    {
        let name = segment_name(id);
        let tenant = caller.tenant.as_str();
        let txn = self.begin().await?;
        if let Some(resource) = Self::lookup(&txn, caller, method, request_id, hash).await? {
            let (_, count) = parse_membership_resource(&resource)?;
            let segment = Self::locked(&txn, tenant, id).await?;
            return Ok(MembershipChange { count, segment });
        }
        let segment = Self::locked(&txn, tenant, id).await?;
        check(&segment)?;
        let existing: Vec<String> = member_row::Entity::find()
            .select_only()
            .column(member_row::Column::ContactId)
            .filter(member_row::Column::TenantId.eq(tenant))
            .filter(member_row::Column::SegmentId.eq(id))
            .filter(member_row::Column::ContactId.is_in(contact_ids.iter().map(String::as_str)))
            .into_tuple()
            .all(&txn)
            .await
            .map_err(|e| from_db(e, &name))?;
        let touched: Vec<String> = if add {
            ensure_contacts_exist(&txn, tenant, contact_ids).await?;
            let fresh: Vec<String> = contact_ids
                .iter()
                .filter(|c| !existing.contains(c))
                .cloned()
                .collect();
            if !fresh.is_empty() {
                let now = crm_platform::db::now_micros();
                member_row::Entity::insert_many(fresh.iter().map(|contact| {
                    member_row::ActiveModel {
                        tenant_id: Set(tenant.to_owned()),
                        segment_id: Set(id.to_owned()),
                        contact_id: Set(contact.clone()),
                        add_time_us: Set(now),
                    }
                }))
                .exec_without_returning(&txn)
                .await
                .map_err(|e| from_db(e, &name))?;
            }
            fresh
        } else {
            if !existing.is_empty() {
                member_row::Entity::delete_many()
                    .filter(member_row::Column::TenantId.eq(tenant))
                    .filter(member_row::Column::SegmentId.eq(id))
                    .filter(
                        member_row::Column::ContactId.is_in(existing.iter().map(String::as_str)),
                    )
                    .exec(&txn)
                    .await
                    .map_err(|e| from_db(e, &name))?;
            }
            existing
        };
        let count = touched.len() as i32;
        Self::record(
            &txn,
            caller,
            method,
            request_id,
            hash,
            &membership_resource(id, count),
        )
        .await?;
        if !touched.is_empty() {
            let names: Vec<String> = touched.iter().map(|c| names::contact_name(c)).collect();
            let (event_type, change) = if add {
                (
                    "crm.contact.v1.SegmentMembersAdded",
                    FieldChange {
                        path: "members".into(),
                        old_value: None,
                        new_value: Some(list_value(&names)),
                    },
                )
            } else {
                (
                    "crm.contact.v1.SegmentMembersRemoved",
                    FieldChange {
                        path: "members".into(),
                        old_value: Some(list_value(&names)),
                        new_value: None,
                    },
                )
            };
            Self::append(&txn, caller, event_type, &segment, vec![change], request_id).await?;
        }
        self.commit(txn, &name).await?;
        Ok(MembershipChange { count, segment })
    }

    /// One page of the tenant's segments and, when more follow, the last row's key.
    pub async fn list(
        &self,
        tenant: &str,
        filter: Option<Condition>,
        order: &[(SortField, bool)],
        after: Option<Vec<CursorValue>>,
        limit: u64,
    ) -> Result<(Vec<segment_row::Model>, Option<Vec<CursorValue>>), ApiError> {
        let mut select = Segments::find().filter(Column::TenantId.eq(tenant));
        if let Some(filter) = filter {
            select = select.filter(filter);
        }
        if let Some(after) = &after {
            select = select.filter(keyset_after(order, after)?);
        }
        for (field, descending) in order {
            select = if *descending {
                select.order_by_desc(field.column())
            } else {
                select.order_by_asc(field.column())
            };
        }
        let mut rows = select
            .limit(limit + 1)
            .all(&self.db)
            .await
            .map_err(|e| from_db(e, "segments"))?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let cursor = match (more, rows.last()) {
            (true, Some(last)) => Some(order.iter().map(|(f, _)| f.value(last)).collect()),
            _ => None,
        };
        Ok((rows, cursor))
    }

    pub async fn count(&self, tenant: &str, filter: Option<Condition>) -> Result<u64, ApiError> {
        let mut select = Segments::find().filter(Column::TenantId.eq(tenant));
        if let Some(filter) = filter {
            select = select.filter(filter);
        }
        select
            .count(&self.db)
            .await
            .map_err(|e| from_db(e, "segments"))
    }
}

/// Every id must name a contact of the tenant that was not merged away; NOT_FOUND names
/// the first missing one.
async fn ensure_contacts_exist(
    txn: &DatabaseTransaction,
    tenant: &str,
    ids: &[String],
) -> Result<(), ApiError> {
    let found: Vec<(String, Option<String>)> = contact_row::Entity::find()
        .select_only()
        .column(contact_row::Column::Id)
        .column(contact_row::Column::MergedInto)
        .filter(contact_row::Column::TenantId.eq(tenant))
        .filter(contact_row::Column::Id.is_in(ids.iter().map(String::as_str)))
        .into_tuple()
        .all(txn)
        .await
        .map_err(|e| from_db(e, "contacts"))?;
    for id in ids {
        match found.iter().find(|(found_id, _)| found_id == id) {
            None => return Err(ApiError::not_found(names::contact_name(id))),
            Some((_, Some(winner))) if !winner.is_empty() => {
                return Err(ApiError::FailedPrecondition {
                    reason: "CONTACT_MERGED",
                    message: format!("{} was merged into {winner}", names::contact_name(id)),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}
