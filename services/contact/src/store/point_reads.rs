//! Reads of single contacts by id (the cache's miss path of GetContact), coalesced: the
//! reads that arrive while the database is busy with earlier ones go to it together,
//! as one statement, instead of one round trip each. Under concurrent load a round trip
//! (waking the service, the database backend and both ends of the socket) costs more
//! than the row it brings; a read that finds the database idle is sent at once, so at
//! low load nothing waits to be coalesced.
//!
//! On Postgres the statement in flight keeps its pooled connection from one
//! statement to the next ([`HeldConnections`]): the pool tests a connection with a
//! round trip of its own whenever one is given back (sqlx pings on release), which
//! doubled the round trips of these reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::{PgPool, PgRow};
use sea_orm::sqlx::{self, Postgres, Row as _};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement, Value,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crm_platform::errors::{ApiError, from_db};

/// A contact's revision and encoded form, if it exists.
pub type Encoded = Option<(i64, Vec<u8>)>;

/// The most ids one statement reads.
const MAX_IDS: usize = 64;

/// Statements in flight at once: while they run, new reads queue up for the next.
/// One: the reads arriving during a statement all go in the next, and under load
/// that is what the service's CPU goes to (each statement is a task, its sends and
/// wake-ups, and a Postgres execution). With 16 callers on loopback, one in flight
/// served 17,575–18,124 uncached reads/s against 14,662–15,002 with two, its p99
/// 1.7–1.8 ms against 2.3–2.4 (tests/bench/RESULTS.md, 2026-12-07, thirteenth
/// session). A read that arrives while a statement runs waits for it: at most one
/// statement's round trip more.
const IN_FLIGHT: usize = 1;

/// A held connection unused for longer goes back to the pool, which tests a connection
/// idle this long before handing it out (`db::pool_options`), so that a database
/// restart during a quiet spell costs no failed read.
const HOLD_IDLE: Duration = Duration::from_secs(1);

struct Read {
    tenant: String,
    id: String,
    reply: oneshot::Sender<Result<Encoded, ApiError>>,
}

#[derive(Clone)]
pub struct PointReads {
    queue: mpsc::UnboundedSender<Read>,
}

impl PointReads {
    /// Starts the task that sends the reads; it ends when the last handle is dropped.
    /// The queue needs no bound of its own: the server's admission limit bounds the
    /// calls that can be waiting in it.
    pub fn start(db: DatabaseConnection) -> Self {
        let (queue, reads) = mpsc::unbounded_channel();
        let database = match db.get_database_backend() {
            DbBackend::Postgres => {
                Database::Postgres(HeldConnections::new(db.get_postgres_connection_pool()))
            }
            _ => Database::Other(db),
        };
        tokio::spawn(dispatch(Arc::new(database), reads));
        Self { queue }
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Encoded, ApiError> {
        let (reply, answer) = oneshot::channel();
        let read = Read {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            reply,
        };
        // Only a runtime shutting down drops the dispatcher.
        let gone = || ApiError::Unavailable {
            dependency: "database",
        };
        self.queue.send(read).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Where the statements go.
enum Database {
    Postgres(HeldConnections),
    /// SQLite: a connection given back to its pool costs nothing to test.
    Other(DatabaseConnection),
}

/// The pooled connections of the statements in flight, kept between statements (at
/// most [`IN_FLIGHT`]) and given back to the pool after [`HOLD_IDLE`] without use.
struct HeldConnections {
    pool: PgPool,
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
}

impl HeldConnections {
    fn new(pool: &PgPool) -> Self {
        Self {
            pool: pool.clone(),
            idle: Mutex::new(Vec::with_capacity(IN_FLIGHT)),
        }
    }

    /// A held connection used within [`HOLD_IDLE`], else one from the pool.
    async fn take(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let held = self.lock().pop();
        match held {
            Some((connection, used)) if used.elapsed() < HOLD_IDLE => Ok(connection),
            // Dropped, a connection goes back to the pool (which tests it).
            _ => self.pool.acquire().await,
        }
    }

    /// Keeps a connection whose statement succeeded for the next one. A failed one is
    /// dropped instead: the pool tests it and closes it if it is broken.
    fn keep(&self, connection: PoolConnection<Postgres>) {
        self.lock().push((connection, Instant::now()));
    }

    /// Gives every held connection back to the pool.
    fn release(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<Postgres>, Instant)>> {
        // The list stays whole whatever panicked while it was locked.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn dispatch(database: Arc<Database>, mut reads: mpsc::UnboundedReceiver<Read>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let next = match tokio::time::timeout(HOLD_IDLE, reads.recv()).await {
            Ok(next) => next,
            Err(_quiet) => {
                if let Database::Postgres(held) = database.as_ref() {
                    held.release();
                }
                reads.recv().await
            }
        };
        let Some(first) = next else {
            return;
        };
        // The slot is taken before the batch is gathered, so that the reads arriving
        // while every slot is busy join the next statement.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_IDS {
            match reads.try_recv() {
                Ok(read) => batch.push(read),
                Err(_) => break,
            }
        }
        let database = database.clone();
        tokio::spawn(async move {
            answer(&database, batch).await;
            drop(slot);
        });
    }
}

/// Reads the batch's contacts, one statement per tenant in it, and answers each read.
async fn answer(database: &Database, batch: Vec<Read>) {
    let mut by_tenant: HashMap<String, Vec<Read>> = HashMap::new();
    for read in batch {
        by_tenant.entry(read.tenant.clone()).or_default().push(read);
    }
    for (tenant, reads) in by_tenant {
        let ids: Vec<&str> = reads.iter().map(|read| read.id.as_str()).collect();
        let found = match database {
            Database::Postgres(held) => select_postgres(held, &tenant, &ids).await,
            Database::Other(db) => select(db, &tenant, &ids).await,
        };
        match found {
            Ok(found) => {
                for read in reads {
                    // Two reads of one id may share the statement: each gets the row.
                    // A caller that gave up (its deadline passed) no longer listens.
                    let _ = read.reply.send(Ok(found.get(&read.id).cloned()));
                }
            }
            Err(err) => {
                for read in reads {
                    let _ = read.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// The statement reading `width` ids, with the tenant as its first parameter.
///
/// The id list is padded (repeating its last id) to a power of two, so that a few
/// statement texts serve every batch: each is prepared once per connection, and
/// Postgres settles on one generic plan for it. An array parameter (`id = ANY($2)`)
/// would be one text, but its plan is made again for every call (the cost estimated
/// for a short array always undercuts the generic plan's), which cost more than the
/// round trips saved.
fn select_sql(backend: DbBackend, width: usize) -> String {
    let marks: Vec<String> = (0..width)
        .map(|i| match backend {
            DbBackend::Postgres => format!("${}", i + 2),
            _ => "?".to_owned(),
        })
        .collect();
    let tenant_mark = match backend {
        DbBackend::Postgres => "$1",
        _ => "?",
    };
    format!(
        "SELECT id, revision, data FROM contacts WHERE tenant_id = {tenant_mark} AND id IN ({})",
        marks.join(", ")
    )
}

/// The ids padded to `ids.len().next_power_of_two()` with the last one.
fn padded<'a>(ids: &[&'a str]) -> impl Iterator<Item = &'a str> {
    let last = ids.last().copied().unwrap_or_default();
    let padding = ids.len().next_power_of_two() - ids.len();
    ids.iter()
        .copied()
        .chain(std::iter::repeat_n(last, padding))
}

/// [`select`] on a held connection of Postgres.
async fn select_postgres(
    held: &HeldConnections,
    tenant: &str,
    ids: &[&str],
) -> Result<HashMap<String, (i64, Vec<u8>)>, ApiError> {
    let as_api_error = |err: sqlx::Error| {
        from_db(
            DbErr::Query(RuntimeErr::SqlxError(Arc::new(err))),
            "contact",
        )
    };
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = select_sql(DbBackend::Postgres, ids.len().next_power_of_two());
    // The text holds placeholders only: the ids and the tenant are bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant);
    for id in padded(ids) {
        query = query.bind(id);
    }
    let mut connection = held.take().await.map_err(as_api_error)?;
    let rows: Vec<PgRow> = query
        .fetch_all(&mut *connection)
        .await
        .map_err(as_api_error)?;
    held.keep(connection);
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<String, _>(0)?,
                (row.try_get(1)?, row.try_get(2)?),
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(as_api_error)
}

/// The revision and encoded form of each of `ids` that exists.
async fn select(
    db: &DatabaseConnection,
    tenant: &str,
    ids: &[&str],
) -> Result<HashMap<String, (i64, Vec<u8>)>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let backend = db.get_database_backend();
    let sql = select_sql(backend, ids.len().next_power_of_two());
    let mut values: Vec<Value> = Vec::with_capacity(ids.len().next_power_of_two() + 1);
    values.push(tenant.into());
    values.extend(padded(ids).map(Value::from));
    let statement = Statement::from_sql_and_values(backend, sql, values);
    let rows = db
        .query_all_raw(statement)
        .await
        .map_err(|e| from_db(e, "contact"))?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get_by_index::<String>(0)?,
                (row.try_get_by_index(1)?, row.try_get_by_index(2)?),
            ))
        })
        .collect::<Result<_, sea_orm::DbErr>>()
        .map_err(|e| from_db(e, "contact"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sea_orm::Database;

    use super::*;

    async fn database() -> DatabaseConnection {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        db.execute_unprepared(
            "CREATE TABLE contacts (tenant_id TEXT NOT NULL, id TEXT NOT NULL, \
             revision INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (tenant_id, id))",
        )
        .await
        .unwrap();
        for tenant in ["a", "b"] {
            for n in 0..100 {
                db.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "INSERT INTO contacts (tenant_id, id, revision, data) VALUES (?, ?, ?, ?)",
                    [
                        tenant.into(),
                        format!("{tenant}{n}").into(),
                        Value::from(n as i64),
                        Value::from(format!("{tenant}-{n}").into_bytes()),
                    ],
                ))
                .await
                .unwrap();
            }
        }
        db
    }

    #[tokio::test]
    async fn concurrent_reads_each_get_their_own_row() {
        let reads = PointReads::start(database().await);
        // More reads than one statement takes, over two tenants, with ids that do not
        // exist and ids of the other tenant.
        let calls: Vec<_> = (0..300)
            .map(|i| {
                let reads = reads.clone();
                tokio::spawn(async move {
                    let tenant = if i % 2 == 0 { "a" } else { "b" };
                    let id = match i % 5 {
                        0 => format!("missing{i}"),
                        // The same few ids, read by many at once.
                        2 => format!("{tenant}{}", i % 4),
                        1 => format!("{}{}", if tenant == "a" { "b" } else { "a" }, i % 100),
                        _ => format!("{tenant}{}", i % 100),
                    };
                    (i, tenant, reads.get(tenant, &id).await.unwrap())
                })
            })
            .collect();
        for call in calls {
            let (i, tenant, found) = call.await.unwrap();
            match i % 5 {
                0 | 1 => assert_eq!(found, None, "read {i}: nothing of tenant {tenant}"),
                _ => {
                    let n = if i % 5 == 2 { i % 4 } else { i % 100 } as i64;
                    assert_eq!(
                        found,
                        Some((n, format!("{tenant}-{n}").into_bytes())),
                        "read {i}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_failed_statement_fails_each_read_and_the_next_ones_run() {
        let db = database().await;
        let reads = PointReads::start(db.clone());
        db.execute_unprepared("ALTER TABLE contacts RENAME TO gone")
            .await
            .unwrap();
        let failed = reads.get("a", "a1").await.unwrap_err();
        assert_eq!(failed.code(), tonic::Code::Internal);
        db.execute_unprepared("ALTER TABLE gone RENAME TO contacts")
            .await
            .unwrap();
        assert_eq!(reads.get("a", "a1").await.unwrap().map(|(r, _)| r), Some(1));
    }
}
