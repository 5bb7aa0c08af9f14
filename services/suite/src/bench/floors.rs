//! The floors a scenario is held against, measured in the same run at the same
//! concurrency: the server stack without work (`echo`), the database without the
//! service (`postgres_point_select`, `postgres_insert`), and the cache without the
//! service (`redis_get`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use prost::Message as _;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use tonic::transport::Channel;

use crm_platform::config::Config;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::load::{Call, Workload};

/// `grpc.health.v1.Health/Check` of the contact service: the same listener, HTTP/2,
/// timeout, load shedding and tracing layers as every RPC, and no work behind them.
pub fn echo(channels: &[Channel]) -> Arc<dyn Workload> {
    let clients: Vec<HealthClient<Channel>> =
        channels.iter().cloned().map(HealthClient::new).collect();
    Arc::new(move |worker: usize, _seq: u64| -> Call {
        let mut client = clients[worker % clients.len()].clone();
        Box::pin(async move {
            client
                .check(HealthCheckRequest {
                    service: "crm.contact.v1.ContactService".into(),
                })
                .await
                .map(|_| 1)
                .map_err(|status| format!("{:?}", status.code()))
        })
    })
}

/// One connection per caller, each its own pool of one: the floor is the database's
/// speed, not a shared pool's hand-over between many callers.
pub async fn connections(config: &Config, count: usize) -> anyhow::Result<Vec<DatabaseConnection>> {
    let mut single = config.clone();
    single.database.max_connections = 1;
    single.database.min_connections = 1;
    let mut connections = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        connections.push(
            crm_platform::db::connect(&single, "contact")
                .await
                .context("connecting to the contact database for the floors")?,
        );
    }
    Ok(connections)
}

/// The statement GetContact runs on a cache miss, on the same rows.
pub fn postgres_point_select(
    connections: Vec<DatabaseConnection>,
    tenant: String,
    ids: Arc<Vec<String>>,
) -> Arc<dyn Workload> {
    let tenant = Arc::new(tenant);
    Arc::new(move |worker: usize, seq: u64| -> Call {
        let db = connections[worker % connections.len()].clone();
        let id = ids[(seq as usize * 7919 + worker * 104_729) % ids.len()].clone();
        let tenant = tenant.clone();
        Box::pin(async move {
            let row = db
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT data FROM contacts WHERE tenant_id = $1 AND id = $2",
                    [tenant.as_str().into(), id.into()],
                ))
                .await
                .map_err(|e| format!("postgres: {e}"))?;
            row.map(|_| 1).ok_or_else(|| "NotFound".to_owned())
        })
    })
}

/// Tables shaped like `contacts` and `outbox` (same columns and indexes), so that the
/// insert floor writes the same two rows as CreateContact without touching its data.
pub async fn prepare_insert_tables(db: &DatabaseConnection) -> anyhow::Result<()> {
    for sql in [
        "DROP TABLE IF EXISTS bench_floor_contacts",
        "DROP TABLE IF EXISTS bench_floor_outbox",
        "CREATE TABLE bench_floor_contacts (LIKE contacts INCLUDING ALL)",
        "CREATE TABLE bench_floor_outbox (LIKE outbox INCLUDING ALL)",
    ] {
        db.execute_unprepared(sql)
            .await
            .with_context(|| format!("preparing the insert floor: {sql}"))?;
    }
    Ok(())
}

pub async fn drop_insert_tables(db: &DatabaseConnection) {
    for sql in [
        "DROP TABLE IF EXISTS bench_floor_contacts",
        "DROP TABLE IF EXISTS bench_floor_outbox",
    ] {
        if let Err(err) = db.execute_unprepared(sql).await {
            tracing::warn!(error = %err, "dropping an insert floor table");
        }
    }
}

/// One contact row and one outbox row in one transaction: what CreateContact must at
/// least write.
pub fn postgres_insert(connections: Vec<DatabaseConnection>, tenant: String) -> Arc<dyn Workload> {
    let tenant = Arc::new(tenant);
    let counter = Arc::new(AtomicU64::new(0));
    Arc::new(move |worker: usize, _seq: u64| -> Call {
        let db = connections[worker % connections.len()].clone();
        let tenant = tenant.clone();
        let n = counter.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let person = crate::seed::person(n, None);
            let data = person.encode_to_vec();
            let id = uuid::Uuid::now_v7().to_string();
            let now = crm_platform::db::now_micros();
            let txn = db.begin().await.map_err(|e| format!("postgres: {e}"))?;
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO bench_floor_contacts (tenant_id, id, given_name, family_name, \
                 display_name, primary_email, emails_index, phones_index, revision, \
                 create_time_us, update_time_us, data) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $9, $10)",
                [
                    tenant.as_str().into(),
                    id.clone().into(),
                    person.given_name.clone().into(),
                    person.family_name.clone().into(),
                    format!("{} {}", person.given_name, person.family_name).into(),
                    person.emails[0].address.clone().into(),
                    person.emails[0].address.clone().into(),
                    person.phones[0].number.clone().into(),
                    now.into(),
                    data.clone().into(),
                ],
            ))
            .await
            .map_err(|e| format!("postgres: {e}"))?;
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO bench_floor_outbox (id, tenant_id, event_type, resource_name, \
                 event_time_us, payload) VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    uuid::Uuid::now_v7().to_string().into(),
                    tenant.as_str().into(),
                    "crm.contact.v1.ContactCreated".into(),
                    format!("contacts/{id}").into(),
                    now.into(),
                    data.into(),
                ],
            ))
            .await
            .map_err(|e| format!("postgres: {e}"))?;
            txn.commit().await.map_err(|e| format!("postgres: {e}"))?;
            Ok(1)
        })
    })
}

/// A GET of a value the size of a cached contact, on a multiplexed connection like the
/// service's.
pub async fn redis_get(url: &str) -> anyhow::Result<Arc<dyn Workload>> {
    let client = redis::Client::open(url).context("the redis URL")?;
    let mut connection = redis::aio::ConnectionManager::new(client)
        .await
        .context("connecting to redis")?;
    let value = crate::seed::person(1, Some(("accounts/x", "x.example"))).encode_to_vec();
    redis::cmd("SET")
        .arg("crm-bench:floor")
        .arg(value)
        .arg("EX")
        .arg(3600)
        .query_async::<()>(&mut connection)
        .await
        .context("redis SET")?;
    Ok(Arc::new(move |_worker: usize, _seq: u64| -> Call {
        let mut connection = connection.clone();
        Box::pin(async move {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg("crm-bench:floor")
                .query_async(&mut connection)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            value.map(|_| 1).ok_or_else(|| "redis: missing".to_owned())
        })
    }))
}
