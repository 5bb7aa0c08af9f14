//! Logs and traces: `tracing` with pretty or JSON output carrying the trace id, and
//! OpenTelemetry spans exported over OTLP/gRPC when an endpoint is configured. W3C
//! `traceparent` is extracted from every inbound call ([`TraceLayer`]) and injected into
//! every outbound call ([`inject_context`]), so one request is one trace across services.

use std::io::IsTerminal as _;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, TelemetryConfig};

/// The response header carrying the trace id of the call, for support requests.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// Keeps the tracer provider alive; flushes pending spans when dropped. Only the call
/// that installed the process's subscriber owns a provider.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("telemetry shutdown: {err}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log filter: {0}")]
    Filter(String),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Installs the global subscriber and propagator. Call once per process.
pub fn init(
    config: &TelemetryConfig,
    service_name: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler);
    if !config.otlp_endpoint.is_empty() {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    // Without an exporter the provider still creates real span contexts, so trace ids
    // appear in logs and propagate to other services.
    let provider = builder.build();
    let tracer = provider.tracer(service_name.to_owned());

    let filter =
        EnvFilter::try_new(&config.log_level).map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = match config.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    // Colours for a person at a terminal; a file or a log collector
                    // gets the text without escape codes.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_err() {
        // A second init in one process (tests) keeps the first subscriber and its
        // provider; this one was never used.
        let _ = provider.shutdown();
        return Ok(TelemetryGuard { provider: None });
    }
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Injects the current span's context as `traceparent` into outbound metadata.
pub fn inject_context(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// The trace id of the current span, as 32 hex digits (empty when there is none).
pub fn current_trace_id() -> String {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Opens a server span per call, child of the caller's `traceparent`, and returns the
/// trace id in the `x-trace-id` response header.
#[derive(Clone, Default)]
pub struct TraceLayer;

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

#[derive(Clone)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for TraceService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let span = tracing::info_span!(
            "grpc.request",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let _ = span.set_parent(parent);
        let trace_id = {
            let context = span.context();
            let otel_span = context.span();
            let span_context = otel_span.span_context();
            span_context
                .is_valid()
                .then(|| span_context.trace_id().to_string())
        };
        if let Some(trace_id) = &trace_id {
            span.record("trace_id", trace_id.as_str());
        }
        let future = self.inner.call(request);
        let record_span = span.clone();
        Box::pin(
            async move {
                let started = std::time::Instant::now();
                let mut response = future.await;
                if let Ok(response) = &mut response {
                    // Errors answered in headers (trailers-only); success is 0.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0);
                    record_span.record("rpc.grpc.status_code", code);
                    if let Some(trace_id) = trace_id
                        .as_deref()
                        .and_then(|t| http::HeaderValue::from_str(t).ok())
                    {
                        response.headers_mut().insert(TRACE_ID_HEADER, trace_id);
                    }
                    tracing::debug!(
                        grpc.status = code,
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "call finished"
                    );
                }
                response
            }
            .instrument(span),
        )
    }
}
