//! Key lookups of one statement shape whatever the number of keys.
//!
//! `column IN ($1, $2, …)` is a new statement for every list length: Postgres parses
//! and plans each afresh, and the driver keeps each prepared statement in its cache per
//! connection, so an import of varying batch sizes fills every connection's cache with
//! lists of thousands of parameters. On Postgres the keys go in as one array,
//! `column = ANY($1)`, a single prepared statement; SQLite has no arrays, so there the
//! keys stay an `IN` list.

use sea_orm::DbBackend;
use sea_orm::sea_query::extension::postgres::PgFunc;
use sea_orm::sea_query::{Expr, ExprTrait};

/// `column = ANY($1::text[])` on Postgres, `column IN (…)` elsewhere; false for no keys.
pub fn any_text<I, S>(backend: DbBackend, column: Expr, keys: I) -> Expr
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
    match backend {
        DbBackend::Postgres => column.eq(PgFunc::any(Expr::val(keys))),
        _ => column.is_in(keys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::{PostgresQueryBuilder, Query, SqliteQueryBuilder};

    #[test]
    fn postgres_binds_one_array_whatever_the_key_count() {
        for keys in [vec!["a"], vec!["a", "b", "c"]] {
            let (sql, values) = Query::select()
                .column("id")
                .from("contacts")
                .and_where(any_text(DbBackend::Postgres, Expr::col("id"), keys.clone()))
                .build(PostgresQueryBuilder);
            assert_eq!(sql, r#"SELECT "id" FROM "contacts" WHERE "id" = ANY($1)"#);
            assert_eq!(values.0.len(), 1, "one parameter for {keys:?}");
        }
    }

    #[test]
    fn sqlite_lists_the_keys() {
        let (sql, values) = Query::select()
            .column("id")
            .from("contacts")
            .and_where(any_text(DbBackend::Sqlite, Expr::col("id"), ["a", "b"]))
            .build(SqliteQueryBuilder);
        assert_eq!(sql, r#"SELECT "id" FROM "contacts" WHERE "id" IN (?, ?)"#);
        assert_eq!(values.0.len(), 2);
    }

    #[test]
    fn no_keys_match_nothing() {
        let sql = Query::select()
            .column("id")
            .from("contacts")
            .and_where(any_text(
                DbBackend::Sqlite,
                Expr::col("id"),
                Vec::<String>::new(),
            ))
            .to_string(SqliteQueryBuilder);
        assert!(sql.ends_with("WHERE 1 = 2"), "{sql}");
    }
}
