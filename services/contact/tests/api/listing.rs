//! `total_size` of listings (`db::total_size`): exact up to the limit on both backends;
//! past it on Postgres the planner's estimate, never below the limit; and a listing the
//! planner expects to be far past the limit is not counted at all.

use sea_orm::sea_query::{Alias, Expr, ExprTrait as _, Query};
use sea_orm::{ConnectionTrait, Database};

use crate::harness::{Backend, TestServer};
use crate::on_both_backends;

const ROWS: u64 = 12_000;

async fn total_size_is_exact_then_estimated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let db = Database::connect(&server.database_url).await.unwrap();
    db.execute_unprepared("CREATE TABLE numbers (n INTEGER NOT NULL)")
        .await
        .unwrap();
    let fill = match backend {
        Backend::Postgres => format!("INSERT INTO numbers SELECT generate_series(1, {ROWS})"),
        Backend::Sqlite => format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {ROWS}) \
             INSERT INTO numbers SELECT n FROM s"
        ),
    };
    db.execute_unprepared(&fill).await.unwrap();
    db.execute_unprepared("ANALYZE numbers").await.unwrap();
    let numbers = |at_most: Option<i64>| {
        let mut select = Query::select();
        select.column(Alias::new("n")).from(Alias::new("numbers"));
        if let Some(at_most) = at_most {
            select.and_where(Expr::col(Alias::new("n")).lte(at_most));
        }
        select
    };

    let small = crm_platform::db::total_size(&db, numbers(Some(500)))
        .await
        .unwrap();
    assert_eq!(small, 500, "below the limit the count is exact");
    let at_limit = crm_platform::db::total_size(
        &db,
        numbers(Some(crm_platform::db::EXACT_COUNT_LIMIT as i64)),
    )
    .await
    .unwrap();
    assert_eq!(at_limit, crm_platform::db::EXACT_COUNT_LIMIT);

    let all = crm_platform::db::total_size(&db, numbers(None))
        .await
        .unwrap();
    match backend {
        Backend::Sqlite => assert_eq!(all, ROWS, "SQLite counts exactly"),
        Backend::Postgres => {
            assert!(
                all > crm_platform::db::EXACT_COUNT_LIMIT,
                "an estimate is never below the limit: {all}"
            );
            assert!(
                (ROWS * 3 / 4..=ROWS * 5 / 4).contains(&all),
                "the planner's estimate of {ROWS} rows: {all}"
            );
        }
    }
    db.close().await.unwrap();
    server.finish().await;
}
on_both_backends!(total_size_is_exact_then_estimated);

/// A listing the planner expects to hold more than four times the limit gets its
/// estimate without a count, so a first page of a long filtered listing does not read
/// 10,000 rows. The price, shown here with statistics made stale on purpose: the
/// estimate stands even when most of those rows are gone, until `ANALYZE` (autovacuum
/// in a deployed database) sees it, and the count is exact again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_expected_far_past_the_limit_is_not_counted() {
    const CROWD: u64 = 60_000;
    const KEPT: u64 = 5_000;
    let server = TestServer::start(Backend::Postgres).await;
    let db = Database::connect(&server.database_url).await.unwrap();
    // Autovacuum would refresh the statistics this test makes stale.
    db.execute_unprepared(
        "CREATE TABLE crowd (n INTEGER NOT NULL) WITH (autovacuum_enabled = false)",
    )
    .await
    .unwrap();
    db.execute_unprepared(&format!(
        "INSERT INTO crowd SELECT generate_series(1, {CROWD})"
    ))
    .await
    .unwrap();
    db.execute_unprepared("ANALYZE crowd").await.unwrap();
    let crowd = || {
        Query::select()
            .column(Alias::new("n"))
            .from(Alias::new("crowd"))
            .to_owned()
    };

    let fresh = crm_platform::db::total_size(&db, crowd()).await.unwrap();
    assert!(
        (CROWD * 3 / 4..=CROWD * 5 / 4).contains(&fresh),
        "the planner's estimate of {CROWD} rows: {fresh}"
    );

    db.execute_unprepared(&format!("DELETE FROM crowd WHERE n > {KEPT}"))
        .await
        .unwrap();
    let stale = crm_platform::db::total_size(&db, crowd()).await.unwrap();
    assert!(
        stale > 4 * crm_platform::db::EXACT_COUNT_LIMIT,
        "with statistics from before the delete the estimate is trusted, not counted: {stale}"
    );

    db.execute_unprepared("ANALYZE crowd").await.unwrap();
    let analysed = crm_platform::db::total_size(&db, crowd()).await.unwrap();
    assert_eq!(analysed, KEPT, "with current statistics the count is exact");
    db.close().await.unwrap();
    server.finish().await;
}
