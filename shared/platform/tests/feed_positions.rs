//! Feed positions on Postgres: the migration that moved them out of the outbox keeps
//! every stored position and every event still waiting for one, and an event whose
//! transaction commits after a relay pass gets the next position, never none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crm_platform::auth::{Caller, Role};
use crm_platform::bulk;
use crm_platform::config::EventsConfig;
use crm_platform::events::{self, EventFeed, NewEvent};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

mod support;
use support::with_postgres_database;

/// The outbox as it was before feed positions had a table of their own.
struct StampedOutbox;

#[async_trait::async_trait]
impl MigratorTrait for StampedOutbox {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(events::OutboxMigration),
            Box::new(events::OutboxAuditColumnsMigration),
            Box::new(events::OutboxUnstampedIndexMigration),
        ]
    }
}

/// The same, then feed positions moved out.
struct PositionsApart;

#[async_trait::async_trait]
impl MigratorTrait for PositionsApart {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations = StampedOutbox::migrations();
        migrations.push(Box::new(events::FeedPositionsMigration));
        migrations
    }
}

fn caller() -> Caller {
    Caller {
        subject: "feed-test".into(),
        tenant: "acme".into(),
        roles: vec![Role::System],
        token: std::sync::Arc::from(""),
    }
}

fn happened() -> NewEvent {
    NewEvent {
        event_type: "crm.test.v1.Happened",
        resource_name: "things/1".into(),
        changes: Vec::new(),
        payload: None,
        request_id: String::new(),
    }
}

async fn stamp_all(feed: &EventFeed) {
    while feed.stamp().await.unwrap() > 0 {}
}

async fn position_of(db: &DatabaseConnection, id: &str) -> Option<i64> {
    events::positions_of(db, [id])
        .await
        .unwrap()
        .get(id)
        .copied()
}

#[tokio::test]
async fn postgres_migration_keeps_stored_positions_and_waiting_events() {
    with_postgres_database(async |db| {
        crm_platform::db::migrate::<StampedOutbox>(db, "test")
            .await
            .unwrap();
        for (id, time, position) in [
            ("e1", 100_i64, Some(1_i64)),
            ("e2", 200, Some(2)),
            ("e3", 150, None),
        ] {
            db.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO outbox (id, tenant_id, event_type, resource_name, event_time_us, \
                 position, payload) VALUES ($1, 'acme', 'crm.test.v1.Happened', 'things/1', $2, \
                 $3, ''::bytea)",
                [id.into(), time.into(), position.into()],
            ))
            .await
            .unwrap();
        }
        db.execute_unprepared("UPDATE feed_state SET head_position = 2 WHERE id = 1")
            .await
            .unwrap();

        crm_platform::db::migrate::<PositionsApart>(db, "test")
            .await
            .unwrap();
        assert_eq!(events::pending_count(db).await.unwrap(), 1);
        let feed = EventFeed::new(db.clone(), "test", EventsConfig::default());
        stamp_all(&feed).await;
        assert_eq!(position_of(db, "e1").await, Some(1));
        assert_eq!(position_of(db, "e2").await, Some(2));
        assert_eq!(position_of(db, "e3").await, Some(3));
        assert_eq!(events::head_position(db).await.unwrap(), 3);
        assert_eq!(events::pending_count(db).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn postgres_event_committed_after_a_pass_gets_the_next_position() {
    with_postgres_database(async |db| {
        crm_platform::db::migrate::<PositionsApart>(db, "test")
            .await
            .unwrap();
        let feed = EventFeed::new(db.clone(), "test", EventsConfig::default());
        // Written first, committed last.
        let late = db.begin().await.unwrap();
        bulk::insert_all(
            &late,
            events::event_rows(&caller(), [happened()], 100).unwrap(),
        )
        .await
        .unwrap();
        for time in [200, 300] {
            let rows = events::event_rows(&caller(), [happened()], time).unwrap();
            bulk::insert_all(db, rows).await.unwrap();
        }
        assert_eq!(feed.stamp().await.unwrap(), 2);
        assert_eq!(events::pending_count(db).await.unwrap(), 0);
        late.commit().await.unwrap();
        assert_eq!(events::pending_count(db).await.unwrap(), 1);
        assert_eq!(feed.stamp().await.unwrap(), 1);
        assert_eq!(events::head_position(db).await.unwrap(), 3);

        let times: Vec<(i64, i64)> = db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT position, event_time_us FROM feed_positions ORDER BY position",
            ))
            .await
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row.try_get_by_index(0).unwrap(),
                    row.try_get_by_index(1).unwrap(),
                )
            })
            .collect();
        assert_eq!(times, [(1, 200), (2, 300), (3, 100)]);
    })
    .await;
}
