//! A bound on the calls the whole process runs at once, over all connections.
//!
//! tonic's own limit is per connection: a client with many connections (or many
//! clients) can queue hundreds of calls on each, and on a small machine the queue
//! they build grows faster than it drains; every call then waits behind it. Past this
//! bound a call waits a short, bounded time for a place (a stall of the machine's
//! cores fills the bound for a few milliseconds without the load being too high),
//! in a queue of bounded length; a call that finds the queue full, or that is not
//! admitted within the wait, is refused with `RESOURCE_EXHAUSTED` (reason
//! `OVERLOADED`, with a retry delay), before authentication or a span cost anything.
//! Because the wait is bounded, a sustained overload cannot build the queue that
//! every call waits behind: the excess is refused after at most the wait. Health
//! checks are never held or refused: a busy process is not a dead one, and the
//! kubelet must not restart it for being busy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::errors::ERROR_DOMAIN;

/// The gRPC path prefix of `grpc.health.v1.Health`, exempt from the bound.
const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

/// How many calls run at once, and how calls past that wait.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Calls running at once (at least 1).
    pub limit: usize,
    /// Calls that may wait for a place at once; past that a call is refused at once.
    pub queue: usize,
    /// The longest a call waits for a place; zero refuses at once.
    pub wait: Duration,
}

/// What every connection's copy of the layer shares.
struct Shared {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    admission: Admission,
}

/// Admits at most `limit` concurrent calls into the services it wraps.
#[derive(Clone)]
pub struct ProcessLimitLayer {
    shared: Arc<Shared>,
}

impl ProcessLimitLayer {
    pub fn new(admission: Admission) -> Self {
        let admission = Admission {
            limit: admission.limit.max(1),
            ..admission
        };
        Self {
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(admission.limit)),
                waiting: AtomicUsize::new(0),
                admission,
            }),
        }
    }
}

/// A place in the queue, given back however the wait ends (admitted, timed out, or
/// the call cancelled by its client).
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(waiting: &'a AtomicUsize, queue: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < queue).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(waiting))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// A place among the running calls, after a bounded wait in a bounded queue (for a
    /// call that found none free).
    async fn wait_for_place(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let _place = QueuePlace::take(&self.waiting, self.admission.queue)?;
        // The semaphore queues its waiters in arrival order.
        tokio::time::timeout(self.admission.wait, self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

impl<S> tower_layer::Layer<S> for ProcessLimitLayer {
    type Service = ProcessLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProcessLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ProcessLimit<S> {
    inner: S,
    shared: Arc<Shared>,
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
    S: Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PATH) {
            let response = self.inner.call(request);
            return Box::pin(async move { response.await.map_err(Into::into) });
        }
        if let Ok(permit) = self.shared.permits.clone().try_acquire_owned() {
            let response = self.inner.call(request);
            return Box::pin(async move {
                let response = response.await.map_err(Into::into);
                // Held until the response (its headers, for a stream) is ready.
                drop(permit);
                response
            });
        }
        if self.shared.admission.wait.is_zero() {
            let refusal: BoxError = Box::new(overloaded(self.shared.admission.limit));
            return Box::pin(std::future::ready(Err(refusal)));
        }
        // The call waits for its turn: it takes the service that `poll_ready` made
        // ready, and leaves a clone for the next call (tower's pattern for a call
        // that runs later).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some(permit) = shared.wait_for_place().await else {
                let refusal: BoxError = Box::new(overloaded(shared.admission.limit));
                return Err(refusal);
            };
            let response = inner.call(request).await.map_err(Into::into);
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
        let layer = ProcessLimitLayer::new(Admission {
            limit: 2,
            queue: 8,
            wait: Duration::ZERO,
        });
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

    /// A service whose calls answer one by one, as `release` lets them.
    fn gated() -> (
        Arc<Semaphore>,
        impl tower_service::Service<
            http::Request<()>,
            Response = &'static str,
            Error = BoxError,
            Future = impl Future<Output = Result<&'static str, BoxError>> + Send,
        > + Clone
        + Send
        + 'static,
    ) {
        let release = Arc::new(Semaphore::new(0));
        let inner = {
            let release = release.clone();
            tower::service_fn(move |_request: http::Request<()>| {
                let release = release.clone();
                async move {
                    release.acquire().await.map(|p| p.forget())?;
                    Ok::<_, BoxError>("done")
                }
            })
        };
        (release, inner)
    }

    fn refusal_code(result: Result<&'static str, BoxError>) -> Code {
        let error = result.expect_err("refused");
        error.downcast::<tonic::Status>().expect("a status").code()
    }

    #[tokio::test(start_paused = true)]
    async fn calls_past_the_bound_wait_in_a_bounded_queue_for_a_bounded_time() {
        let (release, inner) = gated();
        let layer = ProcessLimitLayer::new(Admission {
            limit: 1,
            queue: 1,
            wait: Duration::from_millis(100),
        });
        let mut service = layer.layer(inner);
        let path = "/crm.contact.v1.ContactService/GetContact";
        let running = tokio::spawn(service.ready().await.unwrap().call(request(path)));
        let waiting = tokio::spawn(service.ready().await.unwrap().call(request(path)));
        tokio::task::yield_now().await;
        // The queue holds one: a third call is refused without waiting.
        let started = tokio::time::Instant::now();
        let third = service.ready().await.unwrap().call(request(path)).await;
        assert_eq!(refusal_code(third), Code::ResourceExhausted);
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Health is neither queued nor refused.
        let health = tokio::spawn(
            service
                .ready()
                .await
                .unwrap()
                .call(request("/grpc.health.v1.Health/Check")),
        );
        // The running call answers within the wait: the waiting one takes its place.
        tokio::time::sleep(Duration::from_millis(60)).await;
        release.add_permits(3);
        assert_eq!(running.await.unwrap().unwrap(), "done");
        assert_eq!(waiting.await.unwrap().unwrap(), "done");
        assert_eq!(health.await.unwrap().unwrap(), "done");

        // A call that is not admitted within the wait is refused when it ends.
        let running = tokio::spawn(service.ready().await.unwrap().call(request(path)));
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let late = service.ready().await.unwrap().call(request(path)).await;
        assert_eq!(refusal_code(late), Code::ResourceExhausted);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        // Its place in the queue was given back: the next one waits again.
        let next = tokio::spawn(service.ready().await.unwrap().call(request(path)));
        tokio::task::yield_now().await;
        release.add_permits(2);
        assert_eq!(running.await.unwrap().unwrap(), "done");
        assert_eq!(next.await.unwrap().unwrap(), "done");
    }
}
