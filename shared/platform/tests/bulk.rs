//! `bulk::insert_all_atomically` against real databases: every table's rows are written,
//! or, when any row is refused, none. On Postgres the rows go in one statement without a
//! transaction around it; on SQLite, table by table in a write transaction. And
//! `bulk::insert_all_then_query`: on Postgres the query is the statement's last part and
//! sees the tables as they were before it; a guard that raises stops the whole
//! statement; where that cannot be one statement, nothing is written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crm_platform::bulk::{FinalQuery, Guard, Rows, insert_all_atomically, insert_all_then_query};
use sea_orm::sea_query::Alias;
use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection, Statement};

mod support;
use support::with_postgres_database;

/// Two tables; `second` already holds the id "taken".
async fn prepare(db: &DatabaseConnection) {
    for sql in [
        "CREATE TABLE first (id TEXT PRIMARY KEY, note TEXT)",
        "CREATE TABLE second (id TEXT PRIMARY KEY)",
        "INSERT INTO second (id) VALUES ('taken')",
    ] {
        db.execute_unprepared(sql).await.unwrap();
    }
}

fn tables(first_ids: &[&str], second_ids: &[&str]) -> Vec<Rows> {
    let mut first = Rows::new(Alias::new("first"), [Alias::new("id"), Alias::new("note")]);
    for id in first_ids {
        first.push(vec![(*id).into(), format!("note of {id}").into()]);
    }
    let mut second = Rows::new(Alias::new("second"), [Alias::new("id")]);
    for id in second_ids {
        second.push(vec![(*id).into()]);
    }
    vec![first, second]
}

async fn ids(db: &DatabaseConnection, table: &str) -> Vec<String> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT id FROM {table} ORDER BY id"),
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|row| row.try_get_by_index::<String>(0).unwrap())
        .collect()
}

async fn all_or_nothing(db: &DatabaseConnection) {
    prepare(db).await;
    // A refused row in the last table: the first table's rows must not stay.
    let refused = insert_all_atomically(db, tables(&["a", "b"], &["new", "taken"])).await;
    assert!(refused.is_err(), "a duplicate key is refused");
    assert!(
        ids(db, "first").await.is_empty(),
        "nothing of the refused write"
    );
    assert_eq!(ids(db, "second").await, ["taken"]);

    insert_all_atomically(db, tables(&["a", "b"], &["new"]))
        .await
        .unwrap();
    assert_eq!(ids(db, "first").await, ["a", "b"]);
    assert_eq!(ids(db, "second").await, ["new", "taken"]);
}

#[tokio::test]
async fn sqlite_writes_every_table_or_none() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    all_or_nothing(&db).await;
}

/// `SELECT id FROM second WHERE id <> $n ORDER BY id`, numbered as the statement asks.
fn ids_of_second_but(skipped: &str) -> FinalQuery {
    let skipped = skipped.to_owned();
    Box::new(move |first| {
        (
            format!("SELECT id FROM second WHERE id <> ${first} ORDER BY id"),
            vec![skipped.into()],
        )
    })
}

/// The ids the query read after writing `first_ids` and `second_ids`.
async fn read_after_inserts(
    db: &DatabaseConnection,
    first_ids: &[&str],
    second_ids: &[&str],
    skipped: &str,
) -> Vec<String> {
    insert_all_then_query(
        db,
        tables(first_ids, second_ids),
        ids_of_second_but(skipped),
        None,
    )
    .await
    .unwrap()
    .expect("one statement on Postgres")
    .iter()
    .map(|row| row.try_get_by_index(0).unwrap())
    .collect()
}

async fn query_after_inserts(db: &DatabaseConnection) {
    // The query reads the tables as they were before the statement: not "new".
    assert_eq!(
        read_after_inserts(db, &["a"], &["new"], "none").await,
        ["taken"]
    );
    assert_eq!(ids(db, "first").await, ["a"]);
    assert_eq!(ids(db, "second").await, ["new", "taken"]);
    // Its parameters follow the inserts': "taken" is skipped by its own parameter.
    assert_eq!(
        read_after_inserts(db, &["b"], &["newer"], "taken").await,
        ["new"]
    );
    // A refused row: an error, and nothing of the statement stays.
    let refused = insert_all_then_query(
        db,
        tables(&["c"], &["taken"]),
        ids_of_second_but("none"),
        None,
    )
    .await;
    assert!(refused.is_err());
    assert_eq!(ids(db, "first").await, ["a", "b"]);
    // Rows past one statement's bound: not one statement, so nothing is written.
    let many: Vec<String> = (0..10_001).map(|i| format!("m{i:05}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let declined = insert_all_then_query(
        db,
        tables(&many, &["last"]),
        ids_of_second_but("taken"),
        None,
    )
    .await;
    assert!(declined.unwrap().is_none());
    assert_eq!(ids(db, "first").await, ["a", "b"]);
    assert_eq!(ids(db, "second").await, ["new", "newer", "taken"]);
}

#[tokio::test]
async fn postgres_writes_every_table_or_none() {
    with_postgres_database(all_or_nothing).await;
}

#[tokio::test]
async fn postgres_query_after_inserts_sees_the_tables_before_them() {
    with_postgres_database(async |db| {
        prepare(db).await;
        query_after_inserts(db).await;
    })
    .await;
}

#[tokio::test]
async fn sqlite_declines_a_query_after_inserts() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    prepare(&db).await;
    let declined = insert_all_then_query(
        &db,
        tables(&["a"], &["new"]),
        ids_of_second_but("none"),
        None,
    )
    .await;
    assert!(declined.unwrap().is_none(), "not one statement on SQLite");
    assert!(ids(&db, "first").await.is_empty(), "and nothing written");
}

/// A guard holding while `second` has `rows` rows, else raising SQLSTATE CRM99 (a
/// function, so that no plan evaluates the raise ahead of the `CASE`).
fn second_has(rows: i64) -> Guard {
    Box::new(move |first| {
        (
            format!(
                "CASE WHEN (SELECT count(*) FROM second) = ${first} THEN true ELSE refuse() END"
            ),
            vec![rows.into()],
        )
    })
}

#[tokio::test]
async fn postgres_guard_stops_every_insert_of_the_statement() {
    with_postgres_database(async |db| {
        prepare(db).await;
        db.execute_unprepared(
            "CREATE FUNCTION refuse() RETURNS boolean LANGUAGE plpgsql VOLATILE AS \
             $$ BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = 'CRM99'; END $$",
        )
        .await
        .unwrap();
        // Holding: everything written, the query's parameter numbered after the guard's.
        let read = insert_all_then_query(
            db,
            tables(&["a"], &["new"]),
            ids_of_second_but("taken"),
            Some(second_has(1)),
        )
        .await
        .unwrap()
        .expect("one statement on Postgres");
        assert!(
            read.is_empty(),
            "only \"taken\" was there, and it is skipped"
        );
        assert_eq!(ids(db, "first").await, ["a"]);
        assert_eq!(ids(db, "second").await, ["new", "taken"]);
        // Stale: the guard raises, and neither table gets a row.
        let err = insert_all_then_query(
            db,
            tables(&["b"], &["newer"]),
            ids_of_second_but("none"),
            Some(second_has(1)),
        )
        .await
        .expect_err("the guard raises");
        assert!(err.to_string().contains("refused"), "{err}");
        assert_eq!(ids(db, "first").await, ["a"]);
        assert_eq!(ids(db, "second").await, ["new", "taken"]);
    })
    .await;
}
