//! Outbound gRPC: channels balanced over several endpoints, with periodic DNS
//! re-resolution of a headless Service (a ClusterIP Service would pin every HTTP/2 call
//! to one pod), deadlines on every call, and the caller's token and trace context
//! propagated.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tonic::transport::channel::Change;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::auth::Caller;
use crate::config::ClientsConfig;
use crate::telemetry::inject_context;
use crate::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client target {target:?}: {reason}")]
    Target { target: String, reason: String },
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

/// Where a client connects: fixed endpoints, or a DNS name re-resolved periodically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Static(Vec<String>),
    Dns {
        host: String,
        port: u16,
        scheme: String,
    },
}

impl Target {
    /// `http://a:1,http://b:2` or `dns:///name:port` (`dns://name:port` also accepted);
    /// endpoints without a scheme are plaintext.
    pub fn parse(target: &str) -> Result<Self, ClientError> {
        Self::parse_for(target, false)
    }

    /// As [`Target::parse`]; endpoints without a scheme get `https` when `tls` is true.
    pub fn parse_for(target: &str, tls: bool) -> Result<Self, ClientError> {
        let scheme = if tls { "https" } else { "http" };
        let err = |reason: &str| ClientError::Target {
            target: target.to_owned(),
            reason: reason.to_owned(),
        };
        let target = target.trim();
        if let Some(rest) = target.strip_prefix("dns:") {
            let authority = rest.trim_start_matches('/');
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| err("expected dns:///host:port"))?;
            let port = port.parse().map_err(|_| err("invalid port"))?;
            if host.is_empty() {
                return Err(err("empty host"));
            }
            return Ok(Target::Dns {
                host: host.to_owned(),
                port,
                scheme: scheme.into(),
            });
        }
        let endpoints: Vec<String> = target
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains("://") {
                    s.to_owned()
                } else {
                    format!("{scheme}://{s}")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err(err("no endpoint"));
        }
        Ok(Target::Static(endpoints))
    }
}

/// `uri` with the scheme TLS calls for: a plaintext `http://` endpoint is refused when
/// TLS is configured (and `https://` when it is not) rather than silently downgraded.
fn secured(uri: String, tls: bool) -> Result<String, ClientError> {
    let refuse = |reason: &str| ClientError::Target {
        target: uri.clone(),
        reason: reason.to_owned(),
    };
    match (uri.split_once("://").map(|(scheme, _)| scheme), tls) {
        (Some("http"), true) => Err(refuse(
            "a plaintext http:// endpoint while clients.tls_ca_file is set; use https:// or host:port",
        )),
        (Some("https"), false) => Err(refuse("an https:// endpoint needs clients.tls_ca_file")),
        (Some("http"), false) => Ok(uri),
        (Some("https"), true) => Ok(uri),
        _ => Err(refuse("the scheme must be http or https")),
    }
}

fn endpoint(
    uri: &str,
    config: &ClientsConfig,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, ClientError> {
    let target_error = |e: tonic::transport::Error| ClientError::Target {
        target: uri.to_owned(),
        reason: e.to_string(),
    };
    let mut endpoint = Endpoint::from_shared(uri.to_owned()).map_err(target_error)?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(target_error)?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms.max(1)))
        .timeout(Duration::from_millis(config.timeout_ms.max(1)))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Finds the current addresses of a service (DNS in production; tests substitute their own).
pub trait Resolve: Send + Sync + 'static {
    fn resolve(
        &self,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>>;
}

/// The system resolver (which honours the pod's DNS search path).
pub struct DnsResolver {
    pub host: String,
    pub port: u16,
}

impl Resolve for DnsResolver {
    fn resolve(
        &self,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + '_>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
                .await?
                .collect())
        })
    }
}

/// A channel balanced over `target`'s endpoints. For a DNS target, a background task
/// re-resolves the name every `dns_refresh_s` and adds and removes endpoints.
///
/// With `clients.tls_ca_file` set, every endpoint is called over TLS (`host:port` and
/// `dns:///` targets become `https`), verified against that CA, presenting
/// `clients.tls_cert_file` when set; a DNS target's certificates are checked against its
/// DNS name, since its endpoints are bare addresses.
pub fn balanced_channel(target: &str, config: &ClientsConfig) -> Result<Channel, ClientError> {
    let tls_on = !config.tls_ca_file.trim().is_empty();
    match Target::parse_for(target, tls_on)? {
        Target::Static(uris) => {
            let tls = tls::client_config(config, None)?;
            let (channel, changes) = Channel::balance_channel::<String>(64);
            for uri in uris {
                let uri = secured(uri, tls.is_some())?;
                let endpoint = endpoint(&uri, config, tls.as_ref())?;
                // The receiver lives inside the channel; try_send only fails when full.
                let _ = changes.try_send(Change::Insert(uri, endpoint));
            }
            Ok(channel)
        }
        Target::Dns { host, port, scheme } => {
            let tls = tls::client_config(config, Some(&host))?;
            Ok(resolving_channel(
                DnsResolver { host, port },
                scheme,
                config,
                tls,
            ))
        }
    }
}

/// A channel over whatever `resolver` answers, re-asked every `dns_refresh_s`: new
/// addresses are added, vanished ones removed (pods come and go). When resolution fails
/// the known endpoints are kept. `tls` applies to every endpoint (`scheme` is then
/// `https`).
pub fn resolving_channel(
    resolver: impl Resolve,
    scheme: String,
    config: &ClientsConfig,
    tls: Option<ClientTlsConfig>,
) -> Channel {
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    let config = config.clone();
    let refresh = Duration::from_secs(config.dns_refresh_s.max(1));
    tokio::spawn(async move {
        let mut known: HashSet<SocketAddr> = HashSet::new();
        loop {
            match resolver.resolve().await {
                Ok(addrs) => {
                    let current: HashSet<SocketAddr> = addrs.into_iter().collect();
                    for gone in known.difference(&current) {
                        if changes.send(Change::Remove(*gone)).await.is_err() {
                            return;
                        }
                        tracing::info!(%gone, "endpoint removed");
                    }
                    for new in current.difference(&known) {
                        match endpoint(&format!("{scheme}://{new}"), &config, tls.as_ref()) {
                            Ok(endpoint) => {
                                if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                                    return;
                                }
                                tracing::info!(%new, "endpoint added");
                            }
                            Err(err) => tracing::warn!(error = %err, "bad endpoint"),
                        }
                    }
                    known = current;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "resolution failed; keeping known endpoints")
                }
            }
            tokio::time::sleep(refresh).await;
            if changes.is_closed() {
                return;
            }
        }
    });
    channel
}

/// Wraps `message` for an outbound call: the caller's token (tenant and rights flow
/// through), the current trace context, and a deadline.
pub fn request<T>(message: T, caller: Option<&Caller>, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    if let Some(caller) = caller
        && let Ok(value) = format!("Bearer {}", caller.token).parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    inject_context(request.metadata_mut());
    request
}

/// Whether a failed call never reached a handler and may be sent again: UNAVAILABLE, or
/// a transport failure (a connection closed by `max_connection_age` or a pod going away
/// while the request was being sent).
pub fn is_retryable(status: &tonic::Status) -> bool {
    if status.code() == tonic::Code::Unavailable {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::transport::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Runs an idempotent call (a read, or a write carrying a `request_id`), retrying it at
/// most twice, after 10 and 50 ms, when it failed in a way [`is_retryable`] allows.
/// tonic clients do not retry refused streams by themselves, as gRPC C-core, Go and
/// Java clients do.
pub async fn retry_idempotent<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(10);
    for _ in 0..2 {
        match call().await {
            Err(status) if is_retryable(&status) => {
                tracing::debug!(code = ?status.code(), "retrying an idempotent call");
                tokio::time::sleep(delay).await;
                delay *= 5;
            }
            other => return other,
        }
    }
    call().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("dns:///contact.crm.svc:50051").unwrap(),
            Target::Dns {
                host: "contact.crm.svc".into(),
                port: 50051,
                scheme: "http".into()
            }
        );
        assert_eq!(
            Target::parse("127.0.0.1:1, http://b:2").unwrap(),
            Target::Static(vec!["http://127.0.0.1:1".into(), "http://b:2".into()])
        );
        assert!(Target::parse("dns:///nohost").is_err());
        assert!(Target::parse(" , ").is_err());
        assert_eq!(
            Target::parse_for("contact:50051", true).unwrap(),
            Target::Static(vec!["https://contact:50051".into()])
        );
        assert_eq!(
            Target::parse_for("dns:///contact:50051", true).unwrap(),
            Target::Dns {
                host: "contact".into(),
                port: 50051,
                scheme: "https".into()
            }
        );
    }

    #[test]
    fn schemes_match_the_tls_setting() {
        assert!(secured("http://a:1".into(), true).is_err());
        assert!(secured("https://a:1".into(), false).is_err());
        assert!(secured("ftp://a:1".into(), false).is_err());
        assert_eq!(secured("https://a:1".into(), true).unwrap(), "https://a:1");
        assert_eq!(secured("http://a:1".into(), false).unwrap(), "http://a:1");
    }
}
