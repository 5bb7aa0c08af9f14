//! Reads of records stored whole, encoded, in one column (`data`, beside its
//! `revision`): the other columns of their tables are copies for filters, orders and
//! lookups. Decoding every column of a row cost more than decoding the record itself
//! (a contact's 22 columns: 942 M instructions against `Message::decode`'s 513 M for
//! the same rows), so an answer made of records reads those two columns only.

use sea_orm::{ConnectionTrait, DbErr, EntityTrait, QuerySelect as _, QueryTrait as _, Select};

use crate::pagination::CursorValue;

/// Each row's revision and encoded record, from `select` (filtered, ordered and
/// limited by the caller), reading only the two columns `encoded`: the revision, then
/// the record.
pub async fn rows<E, C>(
    conn: &C,
    select: Select<E>,
    encoded: [E::Column; 2],
) -> Result<Vec<(i64, Vec<u8>)>, DbErr>
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
}

/// How a sort key's column is read back into a [`CursorValue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Int,
    /// A 32-bit integer column (Postgres decodes it as nothing wider).
    Int32,
    Text,
}

/// A page of records stored encoded: each row's revision and encoded record, and, when
/// more rows follow, the sort key of the last one (the next page's cursor).
pub struct Page {
    pub rows: Vec<(i64, Vec<u8>)>,
    pub cursor: Option<Vec<CursorValue>>,
}

/// A page of at most `limit` rows of `select` (filtered and ordered by the caller),
/// reading the two columns `encoded` of each row, as [`rows`] does, and the sort `keys`
/// of the last one.
pub async fn page<E, C>(
    conn: &C,
    select: Select<E>,
    encoded: [E::Column; 2],
    keys: &[(E::Column, KeyType)],
    limit: u64,
) -> Result<Page, DbErr>
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    let [revision, data] = encoded;
    let mut select = select.select_only().column(revision).column(data);
    for (column, _) in keys {
        select = select.column(*column);
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
                .map(|(i, (_, kind))| {
                    let at = i + 2;
                    Ok(match kind {
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
