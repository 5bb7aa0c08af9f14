//! The floors a scenario is held against, measured in the same run at the same
//! concurrency: the server stack without work (`echo`), the database without the
//! service (`postgres_point_select`, `postgres_insert`, and `postgres_bulk_insert` for
//! imports), and the cache without the service (`redis_get`).

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
/// insert floor writes CreateContact's contact and event rows (DESIGN.md §10: "the same
/// two rows") without touching its data. What else CreateContact writes (search terms,
/// the event's pending position) the floor leaves out.
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

/// Rows per transaction of `postgres_bulk_insert`: one ImportContacts request message,
/// which the service writes in one transaction.
const BULK_BATCH_ROWS: u64 = 1_000;

/// What an import must at least write, without its checks: each batch of new people as
/// contact rows, their search-index rows and their outbox rows, with the service's own
/// write functions, into the real tables of the same tenant (so the B-trees are as deep
/// as the import's), in a transaction that is rolled back so that the tenant keeps no
/// trace. A call is `rows` people; its units are rows, like `import_contacts`.
pub fn postgres_bulk_insert(
    connections: Vec<DatabaseConnection>,
    tenant: String,
    first_person: u64,
    rows: u64,
) -> Arc<dyn Workload> {
    let caller = Arc::new(crm_platform::auth::Caller {
        subject: "crm-bench".into(),
        tenant,
        roles: vec![crm_platform::auth::Role::Admin],
        token: Arc::from(""),
    });
    let counter = Arc::new(AtomicU64::new(first_person));
    Arc::new(move |worker: usize, _seq: u64| -> Call {
        let db = connections[worker % connections.len()].clone();
        let caller = caller.clone();
        let first = counter.fetch_add(rows, Ordering::Relaxed);
        Box::pin(async move {
            let end = first + rows;
            for start in (first..end).step_by(BULK_BATCH_ROWS as usize) {
                write_rolled_back(&db, &caller, start..(start + BULK_BATCH_ROWS).min(end))
                    .await
                    .map_err(|e| format!("postgres: {e}"))?;
            }
            Ok(rows)
        })
    })
}

async fn write_rolled_back(
    db: &DatabaseConnection,
    caller: &crm_platform::auth::Caller,
    people: std::ops::Range<u64>,
) -> Result<(), crm_platform::ApiError> {
    use crm_contact::transfer::store::{PendingEvent, append_events, insert_contacts};
    let mut contacts = Vec::with_capacity(people.clone().count());
    for n in people {
        let mut contact = crate::seed::person(n, None);
        let id = uuid::Uuid::now_v7().to_string();
        crm_contact::store::prepare_new(&mut contact, &id);
        contacts.push((id, contact));
    }
    let rows: Vec<(&str, i64, &crm_proto::contact::Contact)> = contacts
        .iter()
        .map(|(id, contact)| (id.as_str(), 1, contact))
        .collect();
    let events: Vec<PendingEvent> = contacts
        .iter()
        .map(|(_, contact)| PendingEvent {
            event_type: "crm.contact.v1.ContactCreated",
            resource_name: contact.name.clone(),
            changes: Vec::new(),
            contact: contact.clone(),
        })
        .collect();
    let txn = db
        .begin()
        .await
        .map_err(|e| crm_platform::errors::from_db(e, "bench"))?;
    insert_contacts(&txn, &caller.tenant, &rows).await?;
    let inserted: Vec<&crm_proto::contact::Contact> = contacts.iter().map(|(_, c)| c).collect();
    crm_contact::index::write(
        &txn,
        &caller.tenant,
        &inserted,
        crm_contact::index::Rows::New,
    )
    .await?;
    append_events(&txn, caller, &events).await?;
    txn.rollback()
        .await
        .map_err(|e| crm_platform::errors::from_db(e, "bench"))
}
