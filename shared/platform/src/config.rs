//! Typed configuration: built-in defaults < an optional TOML file (`--config`) <
//! `CRM__SECTION__KEY` environment variables. Every key is documented in README.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration of a CRM process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded default keeps its SQLite files and generated keys.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
    pub events: EventsConfig,
    pub clients: ClientsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address, `host:port`; port 0 picks a free one.
    pub addr: String,
    /// Deadline of a unary call when the client sets none (tonic's own timeout).
    pub request_timeout_ms: u64,
    /// Concurrent requests per connection; excess requests are shed with RESOURCE_EXHAUSTED.
    pub concurrency_limit_per_connection: usize,
    /// Concurrent requests in the whole process, over all connections; excess requests
    /// are shed with RESOURCE_EXHAUSTED before authentication. Bounds the queue a burst
    /// can build, so that admitted calls keep their latency.
    pub concurrency_limit: usize,
    /// How long a call past `concurrency_limit` waits for a place before it is shed;
    /// 0 sheds at once. Absorbs short stalls of the machine without refusing calls,
    /// while a sustained overload is still shed after at most this long.
    pub admission_wait_ms: u64,
    /// Calls that may wait for a place at once; past that they are shed at once.
    pub admission_queue: usize,
    /// Largest request or response message.
    pub max_message_bytes: usize,
    /// How long a `request_id` is remembered: a retry within it answers as the first
    /// call did; after it (keys are deleted once a minute) the same id is a new request.
    pub request_id_retention_hours: u64,
    /// Connections are asked to reconnect after this long (GOAWAY), so clients re-spread
    /// over pods; 0 disables.
    pub max_connection_age_s: u64,
    /// Time in-flight calls get after the GOAWAY of `max_connection_age_s`.
    pub max_connection_age_grace_s: u64,
    /// After SIGTERM: report NOT_SERVING for this long before refusing new connections.
    pub shutdown_drain_delay_ms: u64,
    /// Upper bound on draining in-flight calls after SIGTERM.
    pub shutdown_timeout_s: u64,
    /// Serve gRPC-Web (HTTP/1.1) as well as gRPC.
    pub grpc_web: bool,
    /// PEM certificate chain the server presents. With `tls_key_file` the listener
    /// speaks TLS only; empty: plaintext.
    pub tls_cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: String,
    /// PEM CA bundle. When set, every client must present a certificate signed by one of
    /// these CAs (mutual TLS); empty: clients are not asked for one.
    pub tls_client_ca_file: String,
    /// A second listener, always plaintext, that serves only `grpc.health.v1.Health`:
    /// kubelet's gRPC probes cannot speak TLS. Empty: none.
    pub health_addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`. `{service}` and `{data_dir}` are replaced. A
    /// Postgres URL without `{service}` gives each service its own schema in that database.
    pub url: String,
    /// Run pending migrations when a service starts.
    pub migrate_on_start: bool,
    pub max_connections: u32,
    pub min_connections: u32,
    pub connect_timeout_ms: u64,
    pub acquire_timeout_ms: u64,
    /// How often each service checks, over a connection of its own, that its database
    /// answers; while it does not, the service's health is NOT_SERVING.
    pub health_check_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    Memory,
    Redis,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub backend: CacheBackend,
    /// `redis://host:port/db`; several comma-separated URLs with `redis_cluster = true`.
    pub redis_url: String,
    pub redis_cluster: bool,
    /// Time to live of a cached value.
    pub ttl_s: u64,
    /// A Redis call slower than this is treated as a miss (and the request goes on).
    pub timeout_ms: u64,
    /// Capacity of the in-memory cache, in entries.
    pub memory_max_entries: usize,
    /// With the Redis backend: values kept in the process as well, up to this many,
    /// and dropped when Redis reports a change to them (server-assisted client-side
    /// caching over RESP3; single node only). 0 reads every value from Redis.
    pub redis_local_entries: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret. Empty: read (or create) `{data_dir}/signing.key`, unless `jwks_file` is set.
    pub hs256_secret: String,
    /// JWKS file with RS256/ES256 public keys (production).
    pub jwks_file: String,
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_s: u64,
    /// Secret that signs page tokens; empty derives it from the HS256 secret.
    pub page_token_secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `tracing` filter directives, e.g. `info,crm_contact=debug`.
    pub log_level: String,
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`; empty disables export.
    pub otlp_endpoint: String,
    /// Fraction of root traces sampled, 0.0 ..= 1.0.
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Events older than this are pruned from the outbox; a consumer behind it must re-sync.
    pub retention_hours: u64,
    /// How often the relay looks for newly committed outbox rows written by other replicas.
    pub relay_interval_ms: u64,
    pub heartbeat_s: u64,
    /// Events read per backlog query of `WatchEvents`.
    pub batch_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsConfig {
    /// Where the contact service is: comma-separated `http://host:port` endpoints or a
    /// `dns:///host:port` name re-resolved periodically (a headless Service).
    pub contact: String,
    pub pipeline: String,
    pub ticket: String,
    /// Deadline of each outbound call.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub dns_refresh_s: u64,
    /// PEM CA bundle. When set, outbound calls use TLS (`https`) and verify the server's
    /// certificate against these CAs; empty: plaintext.
    pub tls_ca_file: String,
    /// PEM certificate chain this process presents to the services it calls (mutual TLS).
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// The name the server certificates must carry. Empty: the host of each endpoint (for
    /// a `dns:///` target, its DNS name, not the resolved address).
    pub tls_domain: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            cache: CacheConfig::default(),
            auth: AuthConfig::default(),
            telemetry: TelemetryConfig::default(),
            events: EventsConfig::default(),
            clients: ClientsConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:50051".into(),
            request_timeout_ms: 30_000,
            concurrency_limit_per_connection: 256,
            concurrency_limit: 256,
            admission_wait_ms: 100,
            admission_queue: 1024,
            max_message_bytes: 4 * 1024 * 1024,
            request_id_retention_hours: 24,
            max_connection_age_s: 300,
            max_connection_age_grace_s: 30,
            shutdown_drain_delay_ms: 2_000,
            shutdown_timeout_s: 25,
            grpc_web: true,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
            health_addr: String::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://{data_dir}/{service}.db?mode=rwc".into(),
            migrate_on_start: true,
            max_connections: 16,
            min_connections: 1,
            connect_timeout_ms: 3_000,
            acquire_timeout_ms: 3_000,
            health_check_interval_ms: 1_000,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            backend: CacheBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster: false,
            ttl_s: 300,
            timeout_ms: 50,
            memory_max_entries: 100_000,
            redis_local_entries: 10_000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: String::new(),
            jwks_file: String::new(),
            issuer: "crm".into(),
            audience: "crm".into(),
            leeway_s: 30,
            page_token_secret: String::new(),
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_hours: 24 * 7,
            relay_interval_ms: 200,
            heartbeat_s: 10,
            batch_size: 500,
        }
    }
}

impl Default for ClientsConfig {
    fn default() -> Self {
        Self {
            contact: "http://127.0.0.1:50051".into(),
            pipeline: "http://127.0.0.1:50051".into(),
            ticket: "http://127.0.0.1:50051".into(),
            timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            dns_refresh_s: 5,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_domain: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file` if given, then `CRM__…` variables of the process.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let vars: config::Map<String, String> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with("CRM__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("CRM")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let built = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        let config: Config = built
            .try_deserialize()
            .map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err(ConfigError(
                "telemetry.sample_ratio must be 0.0 ..= 1.0".into(),
            ));
        }
        if self.server.max_message_bytes < 1024 {
            return Err(ConfigError(
                "server.max_message_bytes must be at least 1024".into(),
            ));
        }
        if self.server.concurrency_limit == 0 || self.server.concurrency_limit_per_connection == 0 {
            return Err(ConfigError(
                "server.concurrency_limit and server.concurrency_limit_per_connection must be at least 1".into(),
            ));
        }
        if self.server.request_id_retention_hours == 0 {
            return Err(ConfigError(
                "server.request_id_retention_hours must be at least 1 (a retry must find its first call)".into(),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError(
                "database.max_connections must be at least 1".into(),
            ));
        }
        if self.cache.backend == CacheBackend::Redis && self.cache.redis_url.is_empty() {
            return Err(ConfigError(
                "cache.redis_url is required with cache.backend = redis".into(),
            ));
        }
        self.validate_tls()
    }

    /// TLS settings come in pairs; a half-configured pair is refused rather than
    /// silently served in plaintext.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let set = |value: &str| !value.trim().is_empty();
        let server = &self.server;
        if set(&server.tls_cert_file) != set(&server.tls_key_file) {
            return Err(ConfigError(
                "server.tls_cert_file and server.tls_key_file must be set together".into(),
            ));
        }
        if set(&server.tls_client_ca_file) && !set(&server.tls_cert_file) {
            return Err(ConfigError(
                "server.tls_client_ca_file needs server.tls_cert_file and server.tls_key_file"
                    .into(),
            ));
        }
        let clients = &self.clients;
        if set(&clients.tls_cert_file) != set(&clients.tls_key_file) {
            return Err(ConfigError(
                "clients.tls_cert_file and clients.tls_key_file must be set together".into(),
            ));
        }
        if !set(&clients.tls_ca_file) {
            for (key, value) in [
                ("clients.tls_cert_file", &clients.tls_cert_file),
                ("clients.tls_domain", &clients.tls_domain),
            ] {
                if set(value) {
                    return Err(ConfigError(format!("{key} needs clients.tls_ca_file")));
                }
            }
        }
        Ok(())
    }

    /// The database URL of one service, with `{service}` and `{data_dir}` replaced.
    pub fn database_url(&self, service: &str) -> String {
        self.database
            .url
            .replace("{data_dir}", &self.data_dir.to_string_lossy())
            .replace("{service}", service)
    }

    /// The configuration as TOML-ready JSON with secrets redacted, for `crm config show`.
    pub fn redacted(&self) -> serde_json::Value {
        let mut shown = self.clone();
        for secret in [
            &mut shown.auth.hs256_secret,
            &mut shown.auth.page_token_secret,
        ] {
            if !secret.is_empty() {
                *secret = "<redacted>".into();
            }
        }
        shown.database.url = redact_url_password(&shown.database.url);
        shown.cache.redis_url = redact_url_password(&shown.cache.redis_url);
        serde_json::to_value(shown).unwrap_or(serde_json::Value::Null)
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:<redacted>@host/db`.
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    let credentials = &rest[..at];
    match credentials.find(':') {
        Some(colon) => format!(
            "{}{}:<redacted>{}",
            &url[..scheme_end + 3],
            &credentials[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_overrides_defaults() {
        let config = Config::load_from(
            None,
            env(&[
                ("CRM__SERVER__ADDR", "0.0.0.0:6000"),
                ("CRM__CACHE__BACKEND", "none"),
                ("CRM__EVENTS__HEARTBEAT_S", "3"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.addr, "0.0.0.0:6000");
        assert_eq!(config.cache.backend, CacheBackend::None);
        assert_eq!(config.events.heartbeat_s, 3);
        assert_eq!(config.database.max_connections, 16);
    }

    #[test]
    fn file_sits_between_defaults_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.toml");
        std::fs::write(
            &path,
            "[server]\naddr = \"127.0.0.1:7000\"\nrequest_timeout_ms = 9\n",
        )
        .unwrap();
        let config =
            Config::load_from(Some(&path), env(&[("CRM__SERVER__ADDR", "127.0.0.1:7001")]))
                .unwrap();
        assert_eq!(config.server.addr, "127.0.0.1:7001");
        assert_eq!(config.server.request_timeout_ms, 9);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::load_from(None, env(&[("CRM__SERVER__ADRESS", "x")])).unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn request_ids_are_kept_at_least_an_hour() {
        let err = Config::load_from(
            None,
            env(&[("CRM__SERVER__REQUEST_ID_RETENTION_HOURS", "0")]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("server.request_id_retention_hours"),
            "{err}"
        );
        let config = Config::load_from(
            None,
            env(&[("CRM__SERVER__REQUEST_ID_RETENTION_HOURS", "1")]),
        )
        .unwrap();
        assert_eq!(config.server.request_id_retention_hours, 1);
    }

    #[test]
    fn secrets_are_redacted() {
        let mut config = Config::default();
        config.auth.hs256_secret = "s3cret".into();
        config.database.url = "postgres://crm:hunter2@db/crm".into();
        let shown = config.redacted().to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("postgres://crm:<redacted>@db/crm"));
    }

    #[test]
    fn half_configured_tls_is_refused() {
        for (pairs, named) in [
            (
                &[("CRM__SERVER__TLS_CERT_FILE", "/tls/tls.crt")][..],
                "server.tls_key_file",
            ),
            (
                &[("CRM__SERVER__TLS_CLIENT_CA_FILE", "/tls/ca.crt")][..],
                "server.tls_client_ca_file",
            ),
            (
                &[
                    ("CRM__CLIENTS__TLS_CA_FILE", "/tls/ca.crt"),
                    ("CRM__CLIENTS__TLS_KEY_FILE", "/tls/tls.key"),
                ][..],
                "clients.tls_cert_file",
            ),
            (
                &[("CRM__CLIENTS__TLS_DOMAIN", "contact")][..],
                "clients.tls_domain",
            ),
        ] {
            let err = Config::load_from(None, env(pairs)).unwrap_err();
            assert!(err.to_string().contains(named), "{pairs:?}: {err}");
        }
        let config = Config::load_from(
            None,
            env(&[
                ("CRM__SERVER__TLS_CERT_FILE", "/tls/tls.crt"),
                ("CRM__SERVER__TLS_KEY_FILE", "/tls/tls.key"),
                ("CRM__SERVER__TLS_CLIENT_CA_FILE", "/tls/ca.crt"),
                ("CRM__SERVER__HEALTH_ADDR", "0.0.0.0:50052"),
                ("CRM__CLIENTS__TLS_CA_FILE", "/tls/ca.crt"),
                ("CRM__CLIENTS__TLS_CERT_FILE", "/tls/tls.crt"),
                ("CRM__CLIENTS__TLS_KEY_FILE", "/tls/tls.key"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.tls_client_ca_file, "/tls/ca.crt");
        assert_eq!(config.server.health_addr, "0.0.0.0:50052");
        assert_eq!(config.clients.tls_key_file, "/tls/tls.key");
    }

    #[test]
    fn database_url_names_the_service() {
        let config = Config::default();
        assert_eq!(
            config.database_url("contact"),
            "sqlite://./data/contact.db?mode=rwc"
        );
    }
}
