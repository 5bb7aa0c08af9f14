//! `server.max_connection_age_s`: long-lived client connections are closed gracefully
//! (GOAWAY, then a grace period) so that clients reconnect, and re-spread over pods.
//! A plain tonic client may see a call refused while its connection is recycled (tonic
//! does not retry refused streams as gRPC C-core, Go and Java do); with the platform's
//! bounded retry of idempotent calls, none fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crm_platform::config::ServerConfig;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Forwards to `target` and counts the TCP connections clients open.
async fn counting_proxy(target: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_connections_are_recycled_without_failed_calls() {
    let (server_addr, stop) = common::start_empty(ServerConfig {
        max_connection_age_s: 1,
        max_connection_age_grace_s: 1,
        ..ServerConfig::default()
    })
    .await;
    let (proxy, connections) = counting_proxy(server_addr).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect_lazy();
    let client = HealthClient::new(channel);

    let started = Instant::now();
    let (mut calls, mut failures, mut slowest) = (0, Vec::new(), Duration::ZERO);
    while started.elapsed() < Duration::from_millis(4500) {
        let attempt = crm_platform::clients::retry_idempotent(|| {
            let mut client = client.clone();
            async move {
                client
                    .check(HealthCheckRequest {
                        service: "liveness".into(),
                    })
                    .await
            }
        });
        let call_started = Instant::now();
        let outcome = attempt.await;
        slowest = slowest.max(call_started.elapsed());
        match outcome {
            Ok(_) => {}
            Err(status) => failures.push(format!("{:?}: {}", status.code(), status.message())),
        }
        calls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let opened = connections.load(Ordering::SeqCst);
    println!("{calls} calls over {opened} connections; slowest {slowest:?}");
    assert!(
        failures.is_empty(),
        "calls failed while connections were recycled: {failures:?}"
    );
    assert!(
        opened >= 3,
        "connections older than a second were not recycled: {opened} opened"
    );
    let _ = stop.send(());
}
