//! A bound on the calls the whole process runs at once, over all connections.
//!
//! tonic's own limit is per connection: a client with many connections (or many
//! clients) can queue hundreds of calls on each, and on a small machine the queue
//! they build grows faster than it drains; every call then waits behind it. Past this
//! bound a call is refused at once with `RESOURCE_EXHAUSTED` (reason `OVERLOADED`,
//! with a retry delay), before authentication or a span cost anything. Health checks
//! are never refused: a busy process is not a dead one, and the kubelet must not
//! restart it for being busy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::errors::ERROR_DOMAIN;

/// The gRPC path prefix of `grpc.health.v1.Health`, exempt from the bound.
const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

/// Admits at most `limit` concurrent calls into the services it wraps.
#[derive(Clone)]
pub struct ProcessLimitLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl ProcessLimitLayer {
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> tower_layer::Layer<S> for ProcessLimitLayer {
    type Service = ProcessLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProcessLimit {
            inner,
            permits: self.permits.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct ProcessLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The refusal of a call past the bound.
fn overloaded(limit: usize) -> tonic::Status {
    let mut details = ErrorDetails::with_error_info(
        "OVERLOADED",
        ERROR_DOMAIN,
        [("limit".to_owned(), limit.to_string())],
    );
    details.set_retry_info(Some(Duration::from_millis(50)));
    tonic::Status::with_error_details(
        Code::ResourceExhausted,
        "the server is running as many calls as it admits; retry shortly",
        details,
    )
}

impl<S, B> tower_service::Service<http::Request<B>> for ProcessLimit<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let permit = if request.uri().path().starts_with(HEALTH_PATH) {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let refusal: BoxError = Box::new(overloaded(self.limit));
                    return Box::pin(std::future::ready(Err(refusal)));
                }
            }
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await.map_err(Into::into);
            // Held until the response (its headers, for a stream) is ready.
            drop(permit);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _, ServiceExt as _};

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn calls_past_the_bound_are_refused_at_once_and_health_never() {
        // A service that answers when told to.
        let gate = Arc::new(tokio::sync::Notify::new());
        let inner = {
            let gate = gate.clone();
            tower::service_fn(move |_request: http::Request<()>| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    Ok::<_, BoxError>("done")
                }
            })
        };
        let layer = ProcessLimitLayer::new(2);
        // Two "connections", as tonic clones the layered service into each.
        let mut first = layer.layer(inner.clone());
        let mut second = first.clone();
        let a = first
            .ready()
            .await
            .unwrap()
            .call(request("/crm.contact.v1.ContactService/GetContact"));
        let b = second
            .ready()
            .await
            .unwrap()
            .call(request("/crm.contact.v1.ContactService/GetContact"));
        let refused = second
            .ready()
            .await
            .unwrap()
            .call(request("/crm.contact.v1.ContactService/GetContact"))
            .await
            .expect_err("a third call is refused");
        let status = refused.downcast::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "OVERLOADED"
        );
        assert!(status.get_error_details().retry_info().is_some());
        // A health check still goes through.
        let health = first
            .ready()
            .await
            .unwrap()
            .call(request("/grpc.health.v1.Health/Check"));
        let (a, b) = (tokio::spawn(a), tokio::spawn(b));
        let health = tokio::spawn(health);
        while !(a.is_finished() && b.is_finished() && health.is_finished()) {
            gate.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert_eq!(health.await.unwrap().unwrap(), "done");
        assert_eq!(a.await.unwrap().unwrap(), "done");
        assert_eq!(b.await.unwrap().unwrap(), "done");
        // The permits came back with the answers.
        let answered = first
            .ready()
            .await
            .unwrap()
            .call(request("/crm.contact.v1.ContactService/GetContact"));
        let answered = tokio::spawn(answered);
        while !answered.is_finished() {
            gate.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert_eq!(answered.await.unwrap().unwrap(), "done");
    }
}
