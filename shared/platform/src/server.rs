//! The gRPC server every service runs on: per-service health, reflection v1 and v1alpha,
//! gRPC-Web, tonic's own timeout, a per-connection concurrency limit with load shedding,
//! `max_connection_age` with a grace period, optional TLS and mutual TLS (with a
//! plaintext health-only listener for probes), authentication, tracing, and graceful
//! shutdown (NOT_SERVING first, then drain, then exit).
//!
//! A service's health is SERVING once it is built, while its database answers (checked
//! by a [`DatabaseProbe`] over a connection of its own), and never again once shutdown
//! has begun.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceExt as _;

use crate::admission::{Admission, ProcessLimitLayer};
use crate::auth::{AuthLayer, Authenticator, RoleTable, is_open_path};
use crate::config::ServerConfig;
use crate::db::DatabaseProbe;
use crate::errors::ApiError;
use crate::events::EventFeed;
use crate::telemetry::TraceLayer;

/// The health entry that is SERVING for as long as the process runs, for liveness and
/// startup probes: a service waiting for its database is not ready, but alive.
pub const LIVENESS_SERVICE: &str = "liveness";

/// What a process will serve, known before any database answers: the service names (for
/// health and reflection) and their role tables.
#[derive(Default)]
pub struct ServicePlan {
    names: Vec<&'static str>,
    roles: RoleTable,
}

impl ServicePlan {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, name: &'static str, roles: RoleTable) -> &mut Self {
        self.names.push(name);
        self.roles.merge(roles);
        self
    }

    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

/// The built services of one process, with their event feeds. Dropping a set that was
/// never served stops its feeds' relays.
#[derive(Default)]
pub struct ServiceSet {
    routes: RoutesBuilder,
    feeds: Vec<EventFeed>,
    probes: Vec<(&'static str, DatabaseProbe)>,
}

impl ServiceSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic server and its event feed.
    pub fn add<S>(&mut self, service: S, feed: Option<EventFeed>) -> &mut Self
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.feeds.extend(feed);
        self
    }

    /// Makes the health of `service` (its full name, e.g. `crm.contact.v1.ContactService`)
    /// follow `probe`: NOT_SERVING while its database does not answer, SERVING again when
    /// it does. Calls still reach the service meanwhile and fail with UNAVAILABLE.
    pub fn watch_database(&mut self, service: &'static str, probe: DatabaseProbe) -> &mut Self {
        self.probes.push((service, probe));
        self
    }
}

/// What health reports for the served services, changed only under one lock so that
/// nothing turns SERVING again once shutdown has begun.
struct Readiness {
    reporter: HealthReporter,
    names: Vec<&'static str>,
    state: tokio::sync::Mutex<ReadinessState>,
    stopping: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct ReadinessState {
    built: bool,
    stopping: bool,
    /// Services whose database does not answer.
    database_down: BTreeSet<&'static str>,
}

impl Readiness {
    fn new(reporter: HealthReporter, names: Vec<&'static str>) -> Self {
        Self {
            reporter,
            names,
            state: tokio::sync::Mutex::default(),
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Publishes `state` to the health service: each service, and "" for all of them.
    async fn publish(&self, state: &ReadinessState) {
        let status = |serving: bool| {
            if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let up = state.built && !state.stopping;
        for name in &self.names {
            let serving = up && !state.database_down.contains(name);
            self.reporter
                .set_service_status(*name, status(serving))
                .await;
        }
        self.reporter
            .set_service_status("", status(up && state.database_down.is_empty()))
            .await;
    }

    /// Reports everything NOT_SERVING (at start, before the services are built).
    async fn start(&self) {
        let state = self.state.lock().await;
        self.publish(&state).await;
    }

    /// The services are built; false when shutdown came first.
    async fn built(&self) -> bool {
        let mut state = self.state.lock().await;
        if state.stopping {
            return false;
        }
        state.built = true;
        self.publish(&state).await;
        true
    }

    /// Records whether the database of `service` answers; true when that changed.
    async fn database_answers(&self, service: &'static str, answers: bool) -> bool {
        let mut state = self.state.lock().await;
        let changed = if answers {
            state.database_down.remove(service)
        } else {
            state.database_down.insert(service)
        };
        if changed && !state.stopping {
            self.publish(&state).await;
        }
        changed
    }

    /// Shutdown has begun: NOT_SERVING for good, and the database checks end.
    async fn stop(&self) {
        let mut state = self.state.lock().await;
        state.stopping = true;
        self.stopping.send_replace(true);
        self.publish(&state).await;
    }
}

/// Checks the database of `service` every probe interval until shutdown, and reports
/// the service NOT_SERVING while it does not answer.
async fn watch_database(readiness: Arc<Readiness>, service: &'static str, probe: DatabaseProbe) {
    let mut stopping = readiness.stopping.subscribe();
    loop {
        let checked = async {
            tokio::time::sleep(probe.interval()).await;
            probe.check().await
        };
        let answered = tokio::select! {
            answered = checked => answered,
            _ = stopping.wait_for(|stopping| *stopping) => return,
        };
        let answers = answered.is_ok();
        if readiness.database_answers(service, answers).await {
            match answered {
                Ok(()) => tracing::info!(service, "database answers again; reporting serving"),
                Err(err) => {
                    tracing::warn!(service, error = %err, "database does not answer; reporting not serving")
                }
            }
        }
    }
}

impl Drop for ServiceSet {
    fn drop(&mut self) {
        for feed in &self.feeds {
            feed.shut_down();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("server.health_addr = {addr:?}: {source}")]
    HealthListener {
        addr: String,
        source: std::io::Error,
    },
}

type GateFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

/// Health and reflection answer from the start; the services' routes are attached once
/// they are built (their databases answer). Until then their calls get UNAVAILABLE.
#[derive(Clone)]
struct Gate {
    open: Routes,
    services: Arc<OnceLock<Routes>>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Gate {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = GateFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let routes = if is_open_path(request.uri().path()) {
            Some(self.open.clone())
        } else {
            self.services.get().cloned()
        };
        match routes {
            Some(routes) => Box::pin(routes.oneshot(request)),
            None => {
                let status: tonic::Status = ApiError::Unavailable {
                    dependency: "database",
                }
                .into();
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains and returns. Health
/// reports NOT_SERVING until `ready` yields the built services, SERVING after, and
/// NOT_SERVING again from the moment shutdown begins.
pub async fn serve(
    config: &ServerConfig,
    listener: tokio::net::TcpListener,
    plan: ServicePlan,
    authenticator: Arc<Authenticator>,
    ready: impl Future<Output = ServiceSet> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let ServicePlan { names, roles } = plan;
    // Read before anything is served: a bad certificate stops the process at start.
    let tls = crate::tls::server_config(config)?;
    let health_listener = if config.health_addr.trim().is_empty() {
        None
    } else {
        let addr = config.health_addr.trim();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::HealthListener {
                addr: addr.to_owned(),
                source,
            })?;
        if let Ok(local) = listener.local_addr() {
            tracing::info!(addr = %local, "health listening (plaintext)");
        }
        Some(listener)
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    let readiness = Arc::new(Readiness::new(health, names.clone()));
    readiness.start().await;

    let mut reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crm_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crm_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for name in &names {
        reflection_v1 = reflection_v1.with_service_name(*name);
        reflection_v1alpha = reflection_v1alpha.with_service_name(*name);
    }
    // Health alone, in plaintext, for probes that cannot present a client certificate;
    // it answers until the main server has drained.
    let (health_stop, health_stopped) = tokio::sync::oneshot::channel::<()>();
    let health_server = health_listener.map(|listener| {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let health_service = health_service.clone();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = health_stopped.await;
                })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "health listener failed");
            }
        })
    });
    let mut open = RoutesBuilder::default();
    open.add_service(health_service);
    open.add_service(
        reflection_v1
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?,
    );
    open.add_service(
        reflection_v1alpha
            .build_v1alpha()
            .map_err(|e| ServeError::Reflection(e.to_string()))?,
    );
    let gate = Gate {
        open: open.routes(),
        services: Arc::new(OnceLock::new()),
    };

    // Attaches the services once built, then reports SERVING, unless shutdown came first,
    // and from then on follows each watched database.
    let feeds: Arc<Mutex<Vec<EventFeed>>> = Arc::default();
    let attach = {
        let (gate, readiness, feeds) = (gate.clone(), readiness.clone(), feeds.clone());
        tokio::spawn(async move {
            let mut set = ready.await;
            let routes = std::mem::take(&mut set.routes).routes();
            feeds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(std::mem::take(&mut set.feeds));
            let probes = std::mem::take(&mut set.probes);
            let _ = gate.services.set(routes);
            if !readiness.built().await {
                return;
            }
            tracing::info!("serving");
            for (service, probe) in probes {
                tokio::spawn(watch_database(readiness.clone(), service, probe));
            }
        })
    };

    let auth = AuthLayer::new(authenticator, Arc::new(roles));
    let max_age =
        (config.max_connection_age_s > 0).then(|| Duration::from_secs(config.max_connection_age_s));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
        tracing::info!(
            client_certificates = !config.tls_client_ca_file.trim().is_empty(),
            "tls on"
        );
    }
    let mut builder = builder
        .accept_http1(config.grpc_web)
        .timeout(Duration::from_millis(config.request_timeout_ms.max(1)))
        .concurrency_limit_per_connection(config.concurrency_limit_per_connection.max(1))
        .load_shed(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Some(age) = max_age {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(Duration::from_secs(config.max_connection_age_grace_s));
    }
    // Outermost, so that a refused call costs no authentication or span. tonic applies
    // user layers once and clones the result into every connection, so all of them
    // share its permits.
    let builder = builder
        .layer(ProcessLimitLayer::new(Admission {
            limit: config.concurrency_limit,
            queue: config.admission_queue,
            wait: Duration::from_millis(config.admission_wait_ms),
        }))
        .layer(tower::util::option_layer(
            config.grpc_web.then(tonic_web::GrpcWebLayer::new),
        ))
        .layer(TraceLayer)
        .layer(auth);

    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let drain_delay = Duration::from_millis(config.shutdown_drain_delay_ms);
    let shutdown_timeout = Duration::from_secs(config.shutdown_timeout_s.max(1));
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutdown requested; reporting not serving");
        readiness.stop().await;
        attach.abort();
        // Load balancers and Kubernetes need a moment to stop sending new calls.
        tokio::time::sleep(drain_delay).await;
        // Long-lived feeds end so that their connections can drain.
        for feed in feeds.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            feed.shut_down();
        }
        tracing::info!("draining in-flight calls");
        let _ = drained_tx.send(());
    };
    let server = builder.serve_with_incoming_shutdown(gate, incoming, graceful);
    tokio::pin!(server);
    let served = tokio::select! {
        result = &mut server => result,
        _ = async {
            let _ = drained_rx.await;
            tokio::time::sleep(shutdown_timeout).await;
        } => {
            tracing::warn!(timeout_s = shutdown_timeout.as_secs(), "drain timed out; closing remaining connections");
            Ok(())
        }
    };
    let _ = health_stop.send(());
    if let Some(health_server) = health_server {
        let _ = health_server.await;
    }
    served?;
    tracing::info!("server stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not
/// when the future is first polled, so a SIGTERM right after start-up is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        let terminate = async {
            match terminate {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate => {}
        }
    }
}
