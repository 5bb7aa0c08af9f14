//! Shared by the platform's test binaries: a server with no services of its own (health
//! and reflection only), as the transport tests need.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use crm_platform::auth::Authenticator;
use crm_platform::config::ServerConfig;
use crm_platform::server::{self, ServeError, ServicePlan, ServiceSet};

pub fn authenticator() -> Arc<Authenticator> {
    Arc::new(
        Authenticator::new(
            Some(b"secret-secret-secret-secret-32b!"),
            None,
            "crm",
            "crm",
            0,
        )
        .unwrap(),
    )
}

/// Serves health and reflection with `config` on `listener` until `shutdown` resolves.
pub async fn serve_empty(
    config: &ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    server::serve(
        config,
        listener,
        ServicePlan::new(),
        authenticator(),
        async { ServiceSet::new() },
        shutdown,
    )
    .await
}

/// [`serve_empty`] on a free local port, in the background, until the sender is used or
/// dropped.
pub async fn start_empty(config: ServerConfig) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve_empty(&config, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop)
}
