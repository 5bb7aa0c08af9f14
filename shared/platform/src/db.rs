//! Database connections (SQLite or Postgres) and migrations.
//!
//! Each service owns its database. A Postgres URL with `{service}` gives each service
//! its own database (created if missing); without it, each service gets its own schema
//! in the one database (created if missing, and put first on the `search_path`).
//! Migrations take a Postgres advisory lock, so several pods may start at once.

use std::time::Duration;

/// Which database a connection speaks to; what filters and key lookups are written for.
pub use sea_orm::DbBackend;
use sea_orm::sea_query::{Alias, Expr, Query, SelectStatement};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, Statement,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("unsupported database URL scheme (use sqlite:// or postgres://)")]
    UnsupportedScheme,
    #[error("creating the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("connecting to the database: {0}")]
    Connect(DbErr),
    #[error("migrating the {service} database: {source}")]
    Migrate { service: String, source: DbErr },
}

/// Connects the database of `service` as configured, creating what is missing.
pub async fn connect(config: &Config, service: &str) -> Result<DatabaseConnection, DbSetupError> {
    let raw_url = config.database.url.clone();
    let url = config.database_url(service);
    if url.starts_with("sqlite:") {
        ensure_sqlite_dir(&url)?;
        let options = pool_options(config, &url);
        let db = Database::connect(options)
            .await
            .map_err(DbSetupError::Connect)?;
        // WAL lets readers proceed during a write; busy_timeout makes writers queue
        // instead of failing with SQLITE_BUSY.
        for pragma in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA busy_timeout = 5000",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
        ] {
            db.execute_unprepared(pragma)
                .await
                .map_err(DbSetupError::Connect)?;
        }
        Ok(db)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        if raw_url.contains("{service}") {
            ensure_postgres_database(config, &url).await?;
            Database::connect(pool_options(config, &url))
                .await
                .map_err(DbSetupError::Connect)
        } else {
            let schema = schema_name(service);
            let admin = Database::connect(single_connection(config, &url))
                .await
                .map_err(DbSetupError::Connect)?;
            let created = admin
                .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .await;
            // Two pods may race to create it; the loser sees a unique violation.
            if let Err(err) = created
                && !matches!(
                    err.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                )
            {
                return Err(DbSetupError::Connect(err));
            }
            admin.close().await.map_err(DbSetupError::Connect)?;
            let mut options = pool_options(config, &url);
            options.set_schema_search_path(schema);
            Database::connect(options)
                .await
                .map_err(DbSetupError::Connect)
        }
    } else {
        Err(DbSetupError::UnsupportedScheme)
    }
}

/// Asks whether a service's database answers, over a connection of its own: a busy
/// service pool (every connection taken, callers queueing) must not read as a database
/// that is down. Health reports the service NOT_SERVING while the probe fails (see
/// `ServiceSet::watch_database`); the probe costs one more database connection.
#[derive(Clone)]
pub struct DatabaseProbe {
    db: DatabaseConnection,
    interval: Duration,
    timeout: Duration,
}

/// Why the database did not answer a probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the database did not answer: {0}")]
    Failed(DbErr),
    #[error("the database did not answer within {0:?}")]
    TimedOut(Duration),
}

impl DatabaseProbe {
    /// A lazily connected one-connection pool to the database of `service`; nothing is
    /// connected until the first check.
    pub async fn open(config: &Config, service: &str) -> Result<Self, DbSetupError> {
        let url = config.database_url(service);
        let connect = Duration::from_millis(config.database.connect_timeout_ms.max(1));
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(1)
            .min_connections(0)
            .connect_timeout(connect)
            .acquire_timeout(connect)
            .connect_lazy(true)
            .sqlx_logging(false);
        let db = Database::connect(options)
            .await
            .map_err(DbSetupError::Connect)?;
        Ok(Self {
            db,
            interval: Duration::from_millis(config.database.health_check_interval_ms.max(10)),
            // The pool gives up acquiring after `connect`; the margin covers a query on a
            // connection whose peer vanished without closing it.
            timeout: connect + Duration::from_secs(1),
        })
    }

    /// How often health checks the database.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// `Ok` when the database answers a ping in time.
    pub async fn check(&self) -> Result<(), ProbeError> {
        match tokio::time::timeout(self.timeout, self.db.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(ProbeError::Failed(err)),
            Err(_) => Err(ProbeError::TimedOut(self.timeout)),
        }
    }
}

/// The Postgres schema of a service in a shared database.
pub fn schema_name(service: &str) -> String {
    format!("crm_{service}")
}

fn pool_options(config: &Config, url: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(config.database.max_connections)
        .min_connections(
            config
                .database
                .min_connections
                .min(config.database.max_connections),
        )
        .connect_timeout(Duration::from_millis(config.database.connect_timeout_ms))
        .acquire_timeout(Duration::from_millis(config.database.acquire_timeout_ms))
        // A connection used within the last second is handed out as it is: pinging it
        // on every acquire costs a round trip per statement. One idle for longer is
        // checked first, so that a database restart is noticed before a call fails.
        .test_before_acquire_if_idle_for(Duration::from_secs(1))
        .sqlx_logging(false);
    options
}

fn single_connection(config: &Config, url: &str) -> ConnectOptions {
    let mut options = pool_options(config, url);
    options.max_connections(1).min_connections(0);
    options
}

fn ensure_sqlite_dir(url: &str) -> Result<(), DbSetupError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|source| DbSetupError::DataDir {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Creates the Postgres database `url` names if it does not exist (for `{service}`
/// URLs, and for tools such as `crm bench` that start services on a new database).
pub async fn ensure_postgres_database(config: &Config, url: &str) -> Result<(), DbSetupError> {
    let (base, rest) = url
        .rsplit_once('/')
        .ok_or(DbSetupError::UnsupportedScheme)?;
    let name = rest.split('?').next().unwrap_or_default();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbSetupError::UnsupportedScheme);
    }
    let admin = Database::connect(single_connection(config, &format!("{base}/postgres")))
        .await
        .map_err(DbSetupError::Connect)?;
    let exists = admin
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [name.into()],
        ))
        .await
        .map_err(DbSetupError::Connect)?
        .is_some();
    if !exists {
        let created = admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await;
        if let Err(err) = created
            && !matches!(
                err.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            )
            && !err.to_string().contains("already exists")
        {
            return Err(DbSetupError::Connect(err));
        }
    }
    admin.close().await.map_err(DbSetupError::Connect)
}

/// Runs the pending migrations of `M`. On Postgres an advisory lock keyed by the
/// service name serialises concurrent runs, so every pod may call it on start.
pub async fn migrate<M: MigratorTrait>(
    db: &DatabaseConnection,
    service: &str,
) -> Result<(), DbSetupError> {
    let wrap = |source: DbErr| DbSetupError::Migrate {
        service: service.to_owned(),
        source,
    };
    match db.get_database_backend() {
        DbBackend::Postgres => {
            // A transaction pins one connection: the transaction-level advisory lock is
            // held on it until commit, and the migrations run on it too.
            let txn = db.begin().await.map_err(wrap)?;
            lock_in_transaction(&txn, &format!("migrate:{service}"))
                .await
                .map_err(wrap)?;
            M::up(&txn, None).await.map_err(wrap)?;
            txn.commit().await.map_err(wrap)
        }
        _ => M::up(db, None).await.map_err(wrap),
    }
}

/// Connects the database of `service` and, when configured, migrates it.
pub async fn open<M: MigratorTrait>(
    config: &Config,
    service: &str,
) -> Result<DatabaseConnection, DbSetupError> {
    let db = connect(config, service).await?;
    if config.database.migrate_on_start {
        migrate::<M>(&db, service).await?;
    }
    Ok(db)
}

/// Connects the database of `service` and runs its pending migrations (`crm migrate`).
pub async fn migrate_service<M: MigratorTrait>(
    config: &Config,
    service: &str,
) -> Result<(), DbSetupError> {
    let db = connect(config, service).await?;
    migrate::<M>(&db, service).await
}

/// Takes the transaction-level advisory lock `name` on Postgres (held until the
/// transaction ends), so that only one holder at a time runs what follows. Elsewhere it
/// does nothing: SQLite serialises writers already.
pub async fn lock_in_transaction<C: ConnectionTrait>(conn: &C, name: &str) -> Result<(), DbErr> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [advisory_key(name).into()],
    ))
    .await
    .map(|_| ())
}

/// Tries the transaction-level advisory lock `name` on Postgres: false if another
/// transaction holds it (the caller leaves the work to that one). Elsewhere it always
/// succeeds: SQLite serialises writers already.
pub async fn try_lock_in_transaction<C: ConnectionTrait>(
    conn: &C,
    name: &str,
) -> Result<bool, DbErr> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(true);
    }
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock($1)",
            [advisory_key(name).into()],
        ))
        .await?;
    match row {
        Some(row) => row.try_get_by_index(0),
        None => Ok(false),
    }
}

/// A stable 63-bit key for Postgres advisory locks.
pub fn advisory_key(name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(bytes) >> 1) as i64
}

/// Microseconds since the Unix epoch, the suite's stored time format (portable across
/// SQLite and Postgres, and sortable as an integer).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// A protobuf timestamp as microseconds since the Unix epoch (sub-microsecond digits
/// dropped), the inverse of [`micros_to_timestamp`].
pub fn timestamp_to_micros(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1_000)
}

pub fn micros_to_timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Rows a listing's `total_size` counts exactly; past this it is an estimate.
pub const EXACT_COUNT_LIMIT: u64 = 10_000;

/// Past this many rows expected by the planner, `total_size` does not count to
/// [`EXACT_COUNT_LIMIT`]: its estimate would be given anyway, and counting that far
/// reads 10,000 rows (for a tag a tenth of a million people share, 23 ms of heap pages
/// behind a bitmap of all of them). Four times the limit leaves room for the planner to
/// be off by that much before a listing of at most [`EXACT_COUNT_LIMIT`] rows is
/// reported as an estimate.
const TRUSTED_ESTIMATE: u64 = 4 * EXACT_COUNT_LIMIT;

/// The `total_size` of a listing (AIP-158 lets it be an estimate). SQLite, the
/// embedded default for small tenants, counts exactly. On Postgres a total of at most
/// [`EXACT_COUNT_LIMIT`] is exact and a larger one is the planner's estimate, so that a
/// first page costs about the same in a tenant of any size:
/// - when the planner expects more than [`TRUSTED_ESTIMATE`] rows, its estimate is the
///   total, without a count;
/// - otherwise up to [`EXACT_COUNT_LIMIT`] rows are counted, and past them the estimate
///   is the total, or an exact count when the estimate is evidently stale (a bulk load
///   that no `ANALYZE` has seen yet).
///
/// The planner is asked first, not after a short count, because a short count of a
/// filter on a list column (tags, emails) still builds the bitmap of every match.
/// `select` should yield one narrow column.
pub async fn total_size<C: ConnectionTrait>(
    conn: &C,
    select: SelectStatement,
) -> Result<u64, DbErr> {
    let backend = conn.get_database_backend();
    if backend != DbBackend::Postgres {
        return count_rows(conn, select, None).await;
    }
    let estimate = planner_estimate(conn, &select).await?;
    if estimate > TRUSTED_ESTIMATE {
        return Ok(estimate);
    }
    let counted = count_rows(conn, select.clone(), Some(EXACT_COUNT_LIMIT + 1)).await?;
    if counted <= EXACT_COUNT_LIMIT {
        return Ok(counted);
    }
    if estimate <= EXACT_COUNT_LIMIT {
        // More rows than the limit exist, so the statistics behind the estimate are
        // stale: count exactly instead.
        return count_rows(conn, select, None).await;
    }
    Ok(estimate)
}

/// The number of rows `select` yields, reading at most `at_most` of them.
async fn count_rows<C: ConnectionTrait>(
    conn: &C,
    mut select: SelectStatement,
    at_most: Option<u64>,
) -> Result<u64, DbErr> {
    if let Some(at_most) = at_most {
        select.limit(at_most);
    }
    let counted = Query::select()
        .expr_as(Expr::cust("COUNT(*)"), Alias::new("n"))
        .from_subquery(select, Alias::new("listed"))
        .to_owned();
    let n: i64 = match conn.query_one(&counted).await? {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or_default())
}

/// The rows the Postgres planner expects `select` to yield.
async fn planner_estimate<C: ConnectionTrait>(
    conn: &C,
    select: &SelectStatement,
) -> Result<u64, DbErr> {
    let backend = conn.get_database_backend();
    let built = backend.build(select);
    let explain = Statement::from_sql_and_values(
        backend,
        format!("EXPLAIN (FORMAT JSON) {}", built.sql),
        built.values.map(|v| v.0).unwrap_or_default(),
    );
    let plan: Option<serde_json::Value> = match conn.query_one_raw(explain).await? {
        Some(row) => Some(row.try_get_by_index(0)?),
        None => None,
    };
    Ok(plan
        .as_ref()
        .and_then(|plan| plan.get(0)?.get("Plan")?.get("Plan Rows")?.as_f64())
        .unwrap_or_default() as u64)
}
