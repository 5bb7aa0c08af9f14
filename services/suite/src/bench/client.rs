//! Channels and the bearer token every benchmark call carries.

use std::time::Duration;

use anyhow::Context as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Authorised = InterceptedService<Channel, Bearer>;

pub fn authorised(channel: Channel, token: &str) -> anyhow::Result<Authorised> {
    let value: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .context("the token is not a valid header value")?;
    Ok(InterceptedService::new(channel, Bearer(value)))
}

/// A connected channel to `addr` (`host:port` or a URL).
pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(url.clone())
        .with_context(|| format!("bad target {addr:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// `count` separate connections, so that many callers are not all queued on one
/// HTTP/2 connection (and its per-connection concurrency limit).
pub async fn connect_many(addr: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        channels.push(connect(addr).await?);
    }
    Ok(channels)
}
