//! Reads of records stored whole, encoded, in one column (`data`, beside its
//! `revision`): the other columns of their tables are copies for filters, orders and
//! lookups. Decoding every column of a row cost more than decoding the record itself
//! (a contact's 22 columns: 942 M instructions against `Message::decode`'s 513 M for
//! the same rows), so an answer made of records reads those two columns only.

use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{
    ConnectionTrait, DbErr, EntityTrait, Order, QueryFilter as _, QueryOrder as _,
    QuerySelect as _, QueryTrait as _, Select,
};

use crate::errors::{ApiError, from_db};
use crate::pagination::{self, CursorValue, KeysetColumn};

/// Each row's revision and encoded record, from `select` (filtered, ordered and
/// limited by the caller) of `resource`, reading only the two columns `encoded`: the
/// revision, then the record.
pub async fn rows<E, C>(
    conn: &C,
    select: Select<E>,
    encoded: [E::Column; 2],
    resource: &str,
) -> Result<Vec<(i64, Vec<u8>)>, ApiError>
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    let [revision, data] = encoded;
    select
        .select_only()
        .column(revision)
        .column(data)
        .into_tuple()
        .all(conn)
        .await
        .map_err(|e| from_db(e, resource))
}

/// The records of rows read here, each with its revision. The service wrote every
/// record, so one that does not decode is an internal error.
pub fn decode<M: prost::Message + Default>(
    rows: &[(i64, Vec<u8>)],
) -> Result<Vec<(i64, M)>, ApiError> {
    rows.iter()
        .map(|(revision, data)| {
            M::decode(data.as_slice())
                .map(|record| (*revision, record))
                .map_err(ApiError::internal)
        })
        .collect()
}

/// How a sort key's column is read back into a [`CursorValue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Int,
    /// A 32-bit integer column (Postgres decodes it as nothing wider).
    Int32,
    Text,
}

/// One key of a listing's order: its expression (a column, qualified by its table, or
/// an expression over the tables the listing joins), direction, and how it is read back.
#[derive(Debug, Clone)]
pub struct SortKey {
    pub expr: Expr,
    pub descending: bool,
    pub kind: KeyType,
}

/// The rows after `cursor` (the last row's keys, from a page token) in the order of
/// `keys`; a cursor of another order is refused on `page_token`.
fn after(keys: &[SortKey], cursor: &[CursorValue]) -> Result<Condition, ApiError> {
    let misfit = || ApiError::invalid("page_token", "page token does not fit this order");
    if keys.len() != cursor.len() {
        return Err(misfit());
    }
    let mut columns = Vec::with_capacity(keys.len());
    for (key, value) in keys.iter().zip(cursor) {
        let value: sea_orm::Value = match (value, key.kind) {
            (CursorValue::Int(n), KeyType::Int | KeyType::Int32) => (*n).into(),
            (CursorValue::Text(s), KeyType::Text) => s.clone().into(),
            _ => return Err(misfit()),
        };
        columns.push(KeysetColumn {
            column: key.expr.clone(),
            descending: key.descending,
            value,
        });
    }
    Ok(pagination::keyset_after(&columns))
}

/// A page of records stored encoded: each row's revision and encoded record, and, when
/// more rows follow, the sort key of the last one (the next page's cursor).
pub struct Page {
    pub rows: Vec<(i64, Vec<u8>)>,
    pub cursor: Option<Vec<CursorValue>>,
}

/// A page of a listing of `resource`: at most `limit` rows of `select` (filtered by
/// the caller) after `cursor` (the last row's keys, from a page token), in the order
/// of `keys`, reading the two columns `encoded` of each row, as [`rows`] does, and the
/// keys of the last one.
pub async fn page<E, C>(
    conn: &C,
    select: Select<E>,
    encoded: [E::Column; 2],
    keys: Vec<SortKey>,
    cursor: Option<&[CursorValue]>,
    limit: u64,
    resource: &str,
) -> Result<Page, ApiError>
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    let mut select = select;
    if let Some(cursor) = cursor {
        select = select.filter(after(&keys, cursor)?);
    }
    read_page(conn, select, encoded, &keys, limit)
        .await
        .map_err(|e| from_db(e, resource))
}

async fn read_page<E, C>(
    conn: &C,
    select: Select<E>,
    encoded: [E::Column; 2],
    keys: &[SortKey],
    limit: u64,
) -> Result<Page, DbErr>
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    let [revision, data] = encoded;
    let mut select = select.select_only().column(revision).column(data);
    for key in keys {
        let order = if key.descending {
            Order::Desc
        } else {
            Order::Asc
        };
        select = select
            .order_by(key.expr.clone(), order)
            .expr(key.expr.clone());
    }
    let mut rows = conn
        .query_all(&select.limit(limit + 1).into_query())
        .await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let cursor = match (more, rows.last()) {
        (true, Some(last)) => Some(
            keys.iter()
                .enumerate()
                .map(|(i, key)| {
                    let at = i + 2;
                    Ok(match key.kind {
                        KeyType::Int => CursorValue::Int(last.try_get_by_index(at)?),
                        KeyType::Int32 => {
                            CursorValue::Int(i64::from(last.try_get_by_index::<i32>(at)?))
                        }
                        KeyType::Text => CursorValue::Text(last.try_get_by_index(at)?),
                    })
                })
                .collect::<Result<_, DbErr>>()?,
        ),
        _ => None,
    };
    let rows = rows
        .iter()
        .map(|row| Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?)))
        .collect::<Result<_, DbErr>>()?;
    Ok(Page { rows, cursor })
}
