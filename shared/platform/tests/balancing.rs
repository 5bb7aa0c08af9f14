//! Client-side balancing as Kubernetes needs it: a channel over a headless Service's
//! addresses spreads calls over every pod, and follows the DNS answer as pods come and go.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crm_platform::clients::{Resolve, resolving_channel};
use crm_platform::config::ClientsConfig;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A resolver whose answer the test changes, like DNS of a headless Service.
#[derive(Clone, Default)]
struct FakeDns(Arc<Mutex<Vec<SocketAddr>>>);

impl FakeDns {
    fn answer(&self, addrs: &[SocketAddr]) {
        *self.0.lock().unwrap() = addrs.to_vec();
    }
}

impl Resolve for FakeDns {
    fn resolve(
        &self,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>> {
        let addrs = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(addrs) })
    }
}

/// Counts the calls a server receives.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    hits: Arc<AtomicUsize>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Counted<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.hits.fetch_add(1, Ordering::SeqCst);
        self.inner.call(request)
    }
}

struct Pod {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn start_pod() -> Pod {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let (_, health) = tonic_health::server::health_reporter();
    let counter = hits.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(move |inner| Counted {
                inner,
                hits: counter.clone(),
            }))
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    Pod { addr, hits }
}

async fn call_many(client: &mut HealthClient<tonic::transport::Channel>, count: usize) {
    for _ in 0..count {
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("call");
    }
}

fn hits(pods: &[Pod]) -> Vec<usize> {
    pods.iter()
        .map(|p| p.hits.swap(0, Ordering::SeqCst))
        .collect()
}

async fn settle(client: &mut HealthClient<tonic::transport::Channel>, pods: &[Pod]) {
    // Resolution runs every second; give it two rounds, then forget warm-up calls.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    call_many(client, 20).await;
    hits(pods);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_follow_the_dns_answer() {
    let pods = [start_pod().await, start_pod().await, start_pod().await];
    let dns = FakeDns::default();
    dns.answer(&[pods[0].addr, pods[1].addr]);
    let config = ClientsConfig {
        dns_refresh_s: 1,
        ..ClientsConfig::default()
    };
    let mut client =
        HealthClient::new(resolving_channel(dns.clone(), "http".into(), &config, None));

    settle(&mut client, &pods).await;
    call_many(&mut client, 300).await;
    let first = hits(&pods);
    assert!(
        first[0] > 30 && first[1] > 30,
        "both pods take calls: {first:?}"
    );
    assert_eq!(first[2], 0, "a pod not in DNS gets nothing: {first:?}");

    // A pod is added and one goes away.
    dns.answer(&[pods[1].addr, pods[2].addr]);
    settle(&mut client, &pods).await;
    call_many(&mut client, 300).await;
    let second = hits(&pods);
    assert_eq!(second[0], 0, "a removed pod gets nothing: {second:?}");
    assert!(
        second[1] > 30 && second[2] > 30,
        "the new pod takes calls: {second:?}"
    );

    // The answer shrinks to one pod: every call goes there.
    dns.answer(&[pods[0].addr]);
    settle(&mut client, &pods).await;
    call_many(&mut client, 50).await;
    assert_eq!(hits(&pods), [50, 0, 0]);
}
