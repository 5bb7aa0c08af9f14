//! Request-id expiry on Postgres: the replicas of a service take turns, so a pass
//! that finds another replica at it leaves the keys to that one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crm_platform::idempotency::{self, IdempotencyExpiryMigration, IdempotencyMigration};
use sea_orm::{ConnectionTrait as _, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

mod support;
use support::with_postgres_database;

struct RequestIds;

#[async_trait::async_trait]
impl MigratorTrait for RequestIds {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(IdempotencyMigration),
            Box::new(IdempotencyExpiryMigration),
        ]
    }
}

#[tokio::test]
async fn replicas_take_turns_at_expiring_request_ids() {
    with_postgres_database(async |db| {
        crm_platform::db::migrate::<RequestIds>(db, "test")
            .await
            .unwrap();
        for n in 0..3 {
            idempotency::record(
                db,
                "acme",
                "CreateContact",
                &format!("req-{n}"),
                "h",
                "contacts/1",
            )
            .await
            .unwrap();
        }
        let now = crm_platform::db::now_micros() + 1;
        let count = async || {
            db.query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT COUNT(*) FROM idempotency_keys",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap()
        };

        // Another replica of the service is at it: this pass leaves the keys alone.
        let other = db.begin().await.unwrap();
        assert!(
            crm_platform::db::try_lock_in_transaction(&other, "request-id-expiry:contact")
                .await
                .unwrap()
        );
        assert_eq!(
            idempotency::delete_recorded_before(db, "contact", now)
                .await
                .unwrap(),
            None
        );
        assert_eq!(count().await, 3);
        // Another service's expiry is not held up by it.
        assert_eq!(
            idempotency::delete_recorded_before(db, "ticket", 0)
                .await
                .unwrap(),
            Some(0)
        );
        other.rollback().await.unwrap();

        // The other replica done, the next pass deletes them.
        assert_eq!(
            idempotency::delete_recorded_before(db, "contact", now)
                .await
                .unwrap(),
            Some(3)
        );
        assert_eq!(count().await, 0);
    })
    .await;
}
