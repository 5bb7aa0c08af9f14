//! Starts the contact service in-process on an ephemeral port against a fresh database
//! (a SQLite file, or a new Postgres database that is dropped afterwards).

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crm_platform::auth::{KeyMaterial, Role, TokenIssuer};
use crm_platform::config::{CacheBackend, Config};
use crm_platform::server::{self, ServicePlan, ServiceSet};
use crm_proto::contact::contact_service_client::ContactServiceClient;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn postgres_base() -> String {
    std::env::var("CRM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("CRM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    /// The database the service writes, for tests that inspect it directly.
    pub database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
    postgres_db: Option<String>,
}

pub struct Options {
    pub cache: CacheBackend,
    pub redis_url: String,
    pub drain_delay_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cache: CacheBackend::Memory,
            redis_url: redis_url(),
            drain_delay_ms: 50,
        }
    }
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.data_dir = dir.path().to_path_buf();
        config.server.addr = "127.0.0.1:0".into();
        config.server.shutdown_drain_delay_ms = options.drain_delay_ms;
        config.auth.hs256_secret = SECRET.into();
        config.cache.backend = options.cache;
        config.cache.redis_url = options.redis_url;
        config.events.relay_interval_ms = 50;
        let postgres_db = match backend {
            Backend::Sqlite => {
                config.database.url =
                    format!("sqlite://{}/{{service}}.db?mode=rwc", dir.path().display());
                None
            }
            Backend::Postgres => {
                let name = format!("crm_test_{}", uuid::Uuid::now_v7().simple());
                let admin = Database::connect(format!("{}/postgres", postgres_base()))
                    .await
                    .expect(
                        "Postgres must be running for the Postgres tests (CRM_TEST_POSTGRES_URL)",
                    );
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                config.database.url = format!("{}/{name}", postgres_base());
                Some(name)
            }
        };
        let keys = KeyMaterial::load(&config).expect("keys");
        let config = config;
        let authenticator = Arc::new(keys.authenticator(&config).expect("authenticator"));
        let mut services = ServiceSet::new();
        crm_contact::add_to(&mut services, &config, &keys)
            .await
            .expect("contact service");
        let mut plan = ServicePlan::new();
        plan.add(
            crm_contact::roles::SERVICE_NAME,
            crm_contact::roles::role_table(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server_config = config.server.clone();
        let task = tokio::spawn(async move {
            server::serve(
                &server_config,
                listener,
                plan,
                authenticator,
                async { services },
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("server");
        });
        let server = Self {
            addr,
            database_url: config.database.url.replace("{service}", "contact"),
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
            postgres_db,
        };
        server.wait_until_serving().await;
        server
    }

    async fn wait_until_serving(&self) {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let mut health = HealthClient::new(self.channel().await);
        for _ in 0..500 {
            let status = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status);
            if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the test server did not report SERVING");
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> ContactServiceClient<Channel> {
        ContactServiceClient::new(self.channel().await)
    }

    /// A connection of its own to the contact service's database, to read its tables.
    pub async fn database(&self) -> sea_orm::DatabaseConnection {
        let mut options = sea_orm::ConnectOptions::new(self.database_url.clone());
        if self.postgres_db.is_some() {
            options.set_schema_search_path("crm_contact");
        }
        Database::connect(options).await.expect("connect")
    }

    /// Triggers graceful shutdown; `finish` waits for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn finish(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops within 30 s")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(name) = self.postgres_db.take() {
            // Drop the database on a thread of its own: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    if let Ok(admin) =
                        Database::connect(format!("{}/postgres", postgres_base())).await
                    {
                        let _ = admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

pub fn token(tenant: &str, subject: &str, roles: &[Role]) -> String {
    TokenIssuer::new(SECRET.as_bytes(), "crm", "crm")
        .issue(subject, tenant, roles, Duration::from_secs(600))
        .expect("token")
}

/// A request carrying `token` as its bearer token.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

pub fn admin(tenant: &str) -> String {
    token(tenant, "admin", &[Role::Admin])
}

/// Runs a test body against SQLite and against Postgres, as two test functions.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::harness::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::harness::Backend::Postgres).await;
            }
        }
    };
}
