//! Reads of single contacts by id (the cache's miss path of GetContact), coalesced: the
//! reads that arrive while the database is busy with earlier ones go to it together,
//! as one statement, instead of one round trip each. Under concurrent load a round trip
//! (waking the service, the database backend and both ends of the socket) costs more
//! than the row it brings; a read that finds the database idle is sent at once, so at
//! low load nothing waits to be coalesced.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crm_platform::errors::{ApiError, from_db};

/// A contact's revision and encoded form, if it exists.
pub type Encoded = Option<(i64, Vec<u8>)>;

/// The most ids one statement reads.
const MAX_IDS: usize = 64;

/// Statements in flight at once: while they run, new reads queue up for the next.
const IN_FLIGHT: usize = 2;

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
        tokio::spawn(dispatch(db, reads));
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

async fn dispatch(db: DatabaseConnection, mut reads: mpsc::UnboundedReceiver<Read>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = reads.recv().await {
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
        let db = db.clone();
        tokio::spawn(async move {
            answer(&db, batch).await;
            drop(slot);
        });
    }
}

/// Reads the batch's contacts, one statement per tenant in it, and answers each read.
async fn answer(db: &DatabaseConnection, batch: Vec<Read>) {
    let mut by_tenant: HashMap<String, Vec<Read>> = HashMap::new();
    for read in batch {
        by_tenant.entry(read.tenant.clone()).or_default().push(read);
    }
    for (tenant, reads) in by_tenant {
        let ids: Vec<&str> = reads.iter().map(|read| read.id.as_str()).collect();
        match select(db, &tenant, &ids).await {
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

/// The revision and encoded form of each of `ids` that exists.
///
/// The id list is padded (repeating its last id) to a power of two, so that a few
/// statement texts serve every batch: each is prepared once per connection, and
/// Postgres settles on one generic plan for it. An array parameter (`id = ANY($2)`)
/// would be one text, but its plan is made again for every call (the cost estimated
/// for a short array always undercuts the generic plan's), which cost more than the
/// round trips saved.
async fn select(
    db: &DatabaseConnection,
    tenant: &str,
    ids: &[&str],
) -> Result<HashMap<String, (i64, Vec<u8>)>, ApiError> {
    let Some(last) = ids.last() else {
        return Ok(HashMap::new());
    };
    let width = ids.len().next_power_of_two();
    let backend = db.get_database_backend();
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
    let sql = format!(
        "SELECT id, revision, data FROM contacts WHERE tenant_id = {tenant_mark} AND id IN ({})",
        marks.join(", ")
    );
    let mut values: Vec<Value> = Vec::with_capacity(width + 1);
    values.push(tenant.into());
    values.extend(ids.iter().map(|id| Value::from(*id)));
    values.extend((ids.len()..width).map(|_| Value::from(*last)));
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
