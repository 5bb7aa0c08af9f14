//! A feed consumer as DESIGN §6 has them: the platform's `consume` loop with a durable
//! checkpoint in its own (SQLite) database, applying each event to a projection in the
//! same transaction as the checkpoint. A run can be killed anywhere (its task aborted,
//! mid-transaction or not) and started again from the checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crm_platform::errors::ApiError;
use crm_platform::events::{self, Checkpoints, EventHandler};
use crm_proto::common::{Event, WatchEventsRequest};
use crm_proto::contact::contact_service_client::ContactServiceClient;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement};
use tonic::transport::Channel;

/// resource name → (last event type, its position, how many events applied).
pub type Projection = BTreeMap<String, (String, i64, i64)>;

/// The projection the events should give.
pub fn project(events: &[Event]) -> Projection {
    let mut projection = Projection::new();
    for event in events {
        let entry = projection
            .entry(event.resource_name.clone())
            .or_insert_with(|| (String::new(), 0, 0));
        *entry = (event.r#type.clone(), event.position, entry.2 + 1);
    }
    projection
}

/// Applies events to `projection`; `applied` has one row per event id, so applying an
/// event twice fails (and is counted) instead of passing unseen.
struct Projector {
    deliveries: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl EventHandler for Projector {
    async fn apply(&self, txn: &DatabaseTransaction, event: &Event) -> Result<(), ApiError> {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        let inserted = txn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "INSERT INTO applied (event_id, position) VALUES (?, ?)",
                [event.id.clone().into(), event.position.into()],
            ))
            .await;
        if let Err(err) = inserted {
            if matches!(
                err.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) {
                self.duplicates.fetch_add(1, Ordering::SeqCst);
                return Err(ApiError::FailedPrecondition {
                    reason: "APPLIED_TWICE",
                    message: format!("event {} at {} applied twice", event.id, event.position),
                });
            }
            return Err(err.into());
        }
        // Some work inside the transaction, so that kills land mid-transaction too.
        tokio::time::sleep(Duration::from_millis(2)).await;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO projection (resource, last_type, last_position, events) \
             VALUES (?, ?, ?, 1) ON CONFLICT (resource) DO UPDATE SET \
             last_type = excluded.last_type, last_position = excluded.last_position, \
             events = projection.events + 1",
            [
                event.resource_name.clone().into(),
                event.r#type.clone().into(),
                event.position.into(),
            ],
        ))
        .await?;
        Ok(())
    }
}

pub struct Consumer {
    db: DatabaseConnection,
    name: String,
    deliveries: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
}

impl Consumer {
    /// The consumer's own database, `consumer-{name}.db` in `dir`.
    pub async fn open(dir: &Path, name: &str) -> Self {
        let db = sea_orm::Database::connect(format!(
            "sqlite://{}/consumer-{name}.db?mode=rwc",
            dir.display()
        ))
        .await
        .expect("consumer database");
        // The platform's checkpoint table comes with any service's migrations.
        crm_platform::db::migrate::<crm_contact::migrations::Migrator>(&db, "consumer")
            .await
            .expect("consumer migrations");
        for sql in [
            "CREATE TABLE applied (event_id TEXT PRIMARY KEY, position INTEGER NOT NULL)",
            "CREATE TABLE projection (resource TEXT PRIMARY KEY, last_type TEXT NOT NULL, \
             last_position INTEGER NOT NULL, events INTEGER NOT NULL)",
        ] {
            db.execute_unprepared(sql).await.expect("consumer tables");
        }
        Self {
            db,
            name: name.to_owned(),
            deliveries: Arc::default(),
            duplicates: Arc::default(),
        }
    }

    /// Events applied (committed) so far.
    pub async fn applied(&self) -> u64 {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT count(*) FROM applied",
            ))
            .await
            .expect("count")
            .expect("a row");
        row.try_get_by_index::<i64>(0).expect("count") as u64
    }

    pub async fn projection(&self) -> Projection {
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT resource, last_type, last_position, events FROM projection",
            ))
            .await
            .expect("projection");
        rows.iter()
            .map(|row| {
                (
                    row.try_get_by_index(0).unwrap(),
                    (
                        row.try_get_by_index(1).unwrap(),
                        row.try_get_by_index(2).unwrap(),
                        row.try_get_by_index(3).unwrap(),
                    ),
                )
            })
            .collect()
    }

    /// Deliveries to the handler, including those whose transaction a kill rolled back.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::SeqCst)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::SeqCst)
    }

    /// Starts consuming from the stored checkpoint.
    pub fn spawn(&self, channel: Channel, token: String) -> Run {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let handler = Projector {
            deliveries: self.deliveries.clone(),
            duplicates: self.duplicates.clone(),
        };
        let (db, name) = (self.db.clone(), self.name.clone());
        let task = tokio::spawn(async move {
            let open = |after: i64| {
                let (channel, token) = (channel.clone(), token.clone());
                async move {
                    let mut request = tonic::Request::new(WatchEventsRequest {
                        after_position: after,
                        heartbeat_seconds: 1,
                        ..Default::default()
                    });
                    request.metadata_mut().insert(
                        "authorization",
                        format!("Bearer {token}").parse().expect("header"),
                    );
                    ContactServiceClient::new(channel)
                        .watch_events(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            };
            events::consume(&db, &name, &handler, open, stopped).await
        });
        Run { task, stop }
    }

    async fn checkpoint(&self) -> i64 {
        Checkpoints::load(&self.db, &self.name)
            .await
            .expect("checkpoint")
    }
}

/// One run of a consumer.
pub struct Run {
    task: tokio::task::JoinHandle<Result<(), ApiError>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Run {
    /// Kills the run wherever it is. A run that ended by itself must have ended well.
    pub async fn kill(self) {
        if self.task.is_finished() {
            let ended = self.task.await.expect("consumer task");
            panic!("the consumer ended by itself: {ended:?}");
        }
        self.task.abort();
        let _ = self.task.await;
    }

    /// Lets the run go on until its checkpoint reaches `position`, then stops it.
    pub async fn finish_at(self, consumer: &Consumer, position: i64) {
        let start = Instant::now();
        while consumer.checkpoint().await < position {
            if self.task.is_finished() {
                let ended = self.task.await.expect("consumer task");
                panic!("the consumer ended before position {position}: {ended:?}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the consumer did not reach position {position} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.stop.send(true);
        self.task
            .await
            .expect("consumer task")
            .expect("the consumer ends without error");
    }
}
