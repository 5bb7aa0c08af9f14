//! `pagination::keyset_after` against a real database: the condition selects exactly
//! the rows after the key, for every mix of sort directions. (Beside the code, its unit
//! tests pin the SQL; they are compiled into the fuzz crate too, which has no database.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crm_platform::pagination::{KeysetColumn, keyset_after};

fn key(column: &str, descending: bool, value: impl Into<sea_query::Value>) -> KeysetColumn {
    KeysetColumn {
        column: sea_query::Expr::col(sea_query::Alias::new(column)),
        descending,
        value: value.into(),
    }
}

/// The row comparison selects exactly the rows the expansion does, on SQLite.
#[tokio::test]
async fn keysets_select_the_rows_after_the_key() {
    use sea_orm::{ConnectionTrait as _, Database};
    use sea_query::ExprTrait as _;
    let db = Database::connect("sqlite::memory:").await.unwrap();
    db.execute_unprepared("CREATE TABLE t (a INTEGER NOT NULL, b TEXT NOT NULL, id TEXT NOT NULL)")
        .await
        .unwrap();
    let mut rows = Vec::new();
    for a in 0..4i64 {
        for b in ["x", "y"] {
            for id in ["1", "2", "3"] {
                rows.push((a, b, id));
            }
        }
    }
    let values: Vec<String> = rows
        .iter()
        .map(|(a, b, id)| format!("({a}, '{b}', '{id}')"))
        .collect();
    db.execute_unprepared(&format!("INSERT INTO t VALUES {}", values.join(", ")))
        .await
        .unwrap();
    for directions in [
        [false, false, false],
        [true, true, true],
        [true, false, false],
        [false, true, false],
    ] {
        for &(a, b, id) in &rows {
            let condition = keyset_after(&[
                key("a", directions[0], a),
                key("b", directions[1], b),
                key("id", directions[2], id),
            ]);
            let sql = sea_query::Query::select()
                .expr(sea_query::Expr::col(sea_query::Alias::new("a")).count())
                .from(sea_query::Alias::new("t"))
                .cond_where(condition)
                .to_string(sea_query::SqliteQueryBuilder);
            let found: i64 = db
                .query_one_raw(sea_orm::Statement::from_string(
                    db.get_database_backend(),
                    sql,
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index(0)
                .unwrap();
            let after = |&(x, y, z): &(i64, &str, &str)| {
                let order = |d: bool, o: std::cmp::Ordering| if d { o.reverse() } else { o };
                order(directions[0], x.cmp(&a))
                    .then(order(directions[1], y.cmp(b)))
                    .then(order(directions[2], z.cmp(id)))
                    == std::cmp::Ordering::Greater
            };
            let expected = rows.iter().filter(|r| after(r)).count() as i64;
            assert_eq!(found, expected, "after {a} {b} {id} with {directions:?}");
        }
    }
}
