//! Shared by the suite's test binaries: all four services in-process on SQLite or on a
//! fresh Postgres database, and a raw-bytes gRPC client that can call any method named
//! by the descriptor set.

#![allow(dead_code)]

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crm_platform::auth::{KeyMaterial, Role, RoleTable, TokenIssuer};
use crm_platform::config::Config;
use crm_platform::server::{self, ServicePlan, ServiceSet};

/// Sends and receives protobuf bytes as they are, so that any method can be called.
#[derive(Clone, Default)]
pub struct RawCodec;
pub struct RawEncoder;
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

const SECRET: &str = "suite-test-secret-0123456789abcdef-xyz";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server that Postgres tests connect to (trust auth), without a database name.
pub fn postgres_base() -> String {
    std::env::var("CRM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Runs `sql` (CREATE or DROP DATABASE) on the server's `postgres` database.
async fn postgres_admin(sql: &str) {
    use sea_orm::ConnectionTrait as _;
    let admin = sea_orm::Database::connect(format!("{}/postgres", postgres_base()))
        .await
        .expect("Postgres must be running for the Postgres tests (CRM_TEST_POSTGRES_URL)");
    admin
        .execute_unprepared(sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
    admin.close().await.ok();
}

/// All four services in one in-process server on fresh SQLite files or a fresh Postgres
/// database (a schema per service), dropped by [`Suite::stop`].
pub struct Suite {
    pub channel: tonic::transport::Channel,
    pub tables: Vec<(&'static str, RoleTable)>,
    issuer: TokenIssuer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    postgres_db: Option<String>,
    _data: tempfile::TempDir,
}

impl Suite {
    pub async fn start() -> Self {
        Self::start_on(Backend::Sqlite).await
    }

    pub async fn start_on(backend: Backend) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: data.path().to_path_buf(),
            ..Config::default()
        };
        let postgres_db = match backend {
            Backend::Sqlite => {
                config.database.url =
                    format!("sqlite://{}/{{service}}.db?mode=rwc", data.path().display());
                None
            }
            Backend::Postgres => {
                let name = format!("crm_suite_{}", uuid::Uuid::now_v7().simple());
                postgres_admin(&format!("CREATE DATABASE \"{name}\"")).await;
                config.database.url = format!("{}/{name}", postgres_base());
                Some(name)
            }
        };
        config.auth.hs256_secret = SECRET.into();
        let keys = KeyMaterial::load(&config).unwrap();
        let mut services = ServiceSet::new();
        crm_contact::add_to(&mut services, &config, &keys)
            .await
            .unwrap();
        crm_pipeline::add_to(&mut services, &config, &keys)
            .await
            .unwrap();
        crm_ticket::add_to(&mut services, &config, &keys)
            .await
            .unwrap();
        crm_analytics::add_to(&mut services, &config, &keys)
            .await
            .unwrap();
        let tables = vec![
            (
                crm_contact::roles::SERVICE_NAME,
                crm_contact::roles::role_table(),
            ),
            (crm_pipeline::SERVICE_NAME, crm_pipeline::role_table()),
            (crm_ticket::SERVICE_NAME, crm_ticket::role_table()),
            (crm_analytics::SERVICE_NAME, crm_analytics::role_table()),
        ];
        let mut plan = ServicePlan::new();
        for (name, table) in &tables {
            plan.add(name, table.clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let authenticator = Arc::new(keys.authenticator(&config).unwrap());
        let server_config = config.server.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            server::serve(
                &server_config,
                listener,
                plan,
                authenticator,
                async { services },
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
        });
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let suite = Self {
            channel,
            tables,
            issuer: TokenIssuer::new(SECRET.as_bytes(), "crm", "crm"),
            stop: Some(stop),
            server: Some(server),
            postgres_db,
            _data: data,
        };
        assert!(suite.serving().await, "the suite did not report SERVING");
        suite
    }

    /// Whether overall health is SERVING (waits up to five seconds for it).
    pub async fn serving(&self) -> bool {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        for _ in 0..500 {
            let serving = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1);
            if serving {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    pub fn token(&self, tenant: &str, roles: &[Role]) -> String {
        self.issuer
            .issue("user-1", tenant, roles, Duration::from_secs(600))
            .unwrap()
    }

    /// A token for `subject` (the actor recorded in audit events).
    pub fn token_for(&self, subject: &str, tenant: &str, roles: &[Role]) -> String {
        self.issuer
            .issue(subject, tenant, roles, Duration::from_secs(600))
            .unwrap()
    }

    /// Calls `path` with one encoded request; a stream that opens counts as success.
    pub async fn call(&self, path: &str, request: Bytes, token: &str) -> Result<(), Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut call = tonic::Request::new(tokio_stream::once(request));
        call.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        call.set_timeout(Duration::from_secs(10));
        let path = http::uri::PathAndQuery::from_str(path).unwrap();
        grpc.streaming(call, path, RawCodec).await.map(|_| ())
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
        if let Some(name) = self.postgres_db.take() {
            postgres_admin(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
        }
    }
}

impl Suite {
    /// Calls `path` with `requests` as the request stream and collects the answer:
    /// every response message until the stream ends, or until `window` has passed (for
    /// streams that stay open, such as WatchEvents).
    pub async fn call_collect(
        &self,
        path: &str,
        requests: Vec<Bytes>,
        token: &str,
        window: Duration,
    ) -> Result<Vec<Bytes>, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut call = tonic::Request::new(tokio_stream::iter(requests));
        call.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        call.set_timeout(Duration::from_secs(10));
        let path = http::uri::PathAndQuery::from_str(path).unwrap();
        let mut stream = grpc.streaming(call, path, RawCodec).await?.into_inner();
        let deadline = tokio::time::Instant::now() + window;
        let mut messages = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) | Ok(Ok(None)) => break,
                Ok(Ok(Some(message))) => messages.push(message),
                Ok(Err(status)) => return Err(status),
            }
        }
        Ok(messages)
    }
}
