//! W3C trace context crosses the wire: the caller's trace continues in the service.

use std::time::Duration;

use crm_platform::config::TelemetryConfig;
use crm_platform::telemetry::{self, TRACE_ID_HEADER};
use crm_proto::contact::*;
use tracing::Instrument as _;

use crate::harness::{Backend, TestServer, admin};
use crate::on_both_backends;

async fn one_trace_across_caller_and_service(backend: Backend) {
    // This test process plays the calling service: the same telemetry stack, its own span.
    // Installed once for the whole test binary and kept, as a process would.
    static TELEMETRY: std::sync::OnceLock<telemetry::TelemetryGuard> = std::sync::OnceLock::new();
    TELEMETRY
        .get_or_init(|| telemetry::init(&TelemetryConfig::default(), "calling-service").unwrap());
    let server = TestServer::start(backend).await;
    let token = admin("acme");
    let mut client = server.client().await;
    let span = tracing::info_span!("calling_service_operation");
    let (caller_trace, service_trace) = async {
        let caller_trace = telemetry::current_trace_id();
        let mut request = crm_platform::clients::request(
            ListContactsRequest::default(),
            None,
            Duration::from_secs(5),
        );
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let response = client.list_contacts(request).await.unwrap();
        let service_trace = response
            .metadata()
            .get(TRACE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (caller_trace, service_trace)
    }
    .instrument(span)
    .await;
    assert_eq!(caller_trace.len(), 32, "the caller has a trace");
    assert_eq!(
        service_trace, caller_trace,
        "the service continued the caller's trace"
    );

    // Without a traceparent the service starts a trace of its own.
    let mut request = tonic::Request::new(ListContactsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let response = client.list_contacts(request).await.unwrap();
    let own = response
        .metadata()
        .get(TRACE_ID_HEADER)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(own.len(), 32);
    assert_ne!(own, caller_trace);
    server.finish().await;
}
on_both_backends!(one_trace_across_caller_and_service);
