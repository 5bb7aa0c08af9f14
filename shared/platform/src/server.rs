//! The gRPC server every service runs on: per-service health, reflection v1 and v1alpha,
//! gRPC-Web, tonic's own timeout, a per-connection concurrency limit with load shedding,
//! `max_connection_age` with a grace period, authentication, tracing, and graceful
//! shutdown (NOT_SERVING first, then drain, then exit).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;

use crate::auth::{AuthLayer, Authenticator, RoleTable};
use crate::config::ServerConfig;
use crate::events::EventFeed;
use crate::telemetry::TraceLayer;

/// The services one process serves, with their role tables and event feeds.
#[derive(Default)]
pub struct ServiceSet {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    roles: RoleTable,
    feeds: Vec<EventFeed>,
}

impl ServiceSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic server with the roles of its RPCs and its event feed.
    pub fn add<S>(&mut self, service: S, roles: RoleTable, feed: Option<EventFeed>) -> &mut Self
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
        self.names.push(S::NAME);
        self.roles.merge(roles);
        self.feeds.extend(feed);
        self
    }

    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `services` on `listener` until `shutdown` resolves, then drains and returns.
pub async fn serve(
    config: &ServerConfig,
    listener: tokio::net::TcpListener,
    services: ServiceSet,
    authenticator: Arc<Authenticator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let ServiceSet {
        mut routes,
        names,
        roles,
        feeds,
    } = services;

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in &names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    health.set_service_status("", ServingStatus::Serving).await;

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
    routes.add_service(health_service);
    routes.add_service(
        reflection_v1
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?,
    );
    routes.add_service(
        reflection_v1alpha
            .build_v1alpha()
            .map_err(|e| ServeError::Reflection(e.to_string()))?,
    );

    let auth = AuthLayer::new(authenticator, Arc::new(roles));
    let max_age =
        (config.max_connection_age_s > 0).then(|| Duration::from_secs(config.max_connection_age_s));
    let mut builder = tonic::transport::Server::builder()
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
    let builder = builder
        .layer(tower::util::option_layer(
            config.grpc_web.then(tonic_web::GrpcWebLayer::new),
        ))
        .layer(TraceLayer)
        .layer(auth);

    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let drain_delay = Duration::from_millis(config.shutdown_drain_delay_ms);
    let shutdown_timeout = Duration::from_secs(config.shutdown_timeout_s.max(1));
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let health_on_shutdown = health.clone();
    let names_on_shutdown = names.clone();
    let feeds_on_shutdown = feeds.clone();
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutdown requested; reporting NOT_SERVING");
        for name in &names_on_shutdown {
            health_on_shutdown
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        health_on_shutdown
            .set_service_status("", ServingStatus::NotServing)
            .await;
        // Load balancers and Kubernetes need a moment to stop sending new calls.
        tokio::time::sleep(drain_delay).await;
        // Long-lived feeds end so that their connections can drain.
        for feed in &feeds_on_shutdown {
            feed.shut_down();
        }
        tracing::info!("draining in-flight calls");
        let _ = drained_tx.send(());
    };
    let server = builder.serve_with_incoming_shutdown(routes.routes(), incoming, graceful);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        _ = async {
            let _ = drained_rx.await;
            tokio::time::sleep(shutdown_timeout).await;
        } => {
            tracing::warn!(timeout_s = shutdown_timeout.as_secs(), "drain timed out; closing remaining connections");
        }
    }
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
