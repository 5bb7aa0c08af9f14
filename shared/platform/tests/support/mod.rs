//! What the platform's database tests share.

use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection};

fn postgres_base() -> String {
    std::env::var("CRM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Runs `run` on a Postgres database of its own, created for it and dropped after.
pub async fn with_postgres_database(run: impl AsyncFnOnce(&DatabaseConnection)) {
    let name = format!("crm_test_platform_{}", uuid::Uuid::now_v7().simple());
    let admin = Database::connect(format!("{}/postgres", postgres_base()))
        .await
        .expect("Postgres must be running for the Postgres tests (CRM_TEST_POSTGRES_URL)");
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    let db = Database::connect(format!("{}/{name}", postgres_base()))
        .await
        .unwrap();
    run(&db).await;
    db.close().await.unwrap();
    admin
        .execute_unprepared(&format!("DROP DATABASE \"{name}\""))
        .await
        .unwrap();
}
